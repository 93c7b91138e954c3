"""What benchmarks/accuracy_w4a8.py keeps apart (it is long enough): the perplexity windows and their
paired statistics, and the text tables of its results (its JSON -> the .txt report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import accuracy_fp as afp
import torch
import torch.nn.functional as F
from zqkernels.cli.stats import paired_nll_diff

WINDOW = 512  # accuracy_fp.py's perplexity window

COMPARE_TOKENS = 32768  # accuracy_w4a8.COMPARE_TOKENS (accuracy_fp.py's full-mode perplexity tokens)


@torch.no_grad()
def batch_nll(model, x: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    logits = model(input_ids=x).logits.float()
    lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
    return float(lp), x[:, 1:].numel(), logits


@torch.no_grad()
def window_nlls(model, ids: torch.Tensor, window: int, batch: int) -> torch.Tensor:
    """accuracy_fp.perplexity's windows and batches, with the NLL sum of each window kept (float64 [n])."""
    n = ids.numel() // window
    chunks = ids[: n * window].reshape(n, window)
    out = []
    for i in range(0, n, batch):
        x = chunks[i: i + batch]
        logits = model(input_ids=x).logits.float()
        lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        out.append(lp.reshape(x.shape[0], -1).double().sum(1))
    return torch.cat(out)


def ppl_at(nll: torch.Tensor, windows: int) -> float:
    return math.exp(float(nll[:windows].sum()) / (windows * (WINDOW - 1)))


def paired(nll_a: torch.Tensor, nll_b: torch.Tensor) -> dict:
    """b against a, window by window (cli/stats.paired_nll_diff on the per-token mean NLLs): ppl(b) /
    ppl(a) - 1, the mean NLL difference and its standard error, and how many windows b is worse on."""
    a, b = (nll_a / (WINDOW - 1)).tolist(), (nll_b / (WINDOW - 1)).tolist()
    st = paired_nll_diff(a, b)
    return {"ppl_ratio_minus_1": st["ppl_ratio"] - 1, "mean_nll_diff": st["mean_diff"],
            "se_nll_diff": float("nan") if st["se"] is None else st["se"],
            "windows_worse": sum(y > x for x, y in zip(a, b)), "windows": st["windows"]}


def write_text(res: dict, path: Path) -> None:
    txt = render(res)
    path.write_text(txt)
    print(txt)


def fmt_opt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(res: dict) -> str:
    m = res["meta"]
    parts = [f"accuracy_w4a8  commit {m['commit']}  cpu ({m['threads']} threads)  torch {m['torch']}  "
             f"transformers {m['transformers']}  {'quick' if m['quick'] else 'full'}  {m['seconds']} s\n"
             f"command: {m.get('command', '?')}\n"]
    for bits, ws in res["weights"].items():
        if "skipped" in ws:
            parts.append(f"A. {bits.upper()} group weights: {ws['skipped']}\n")
            continue
        rows = []
        for g, r in ws.items():
            if g.startswith("_"):
                continue
            rows.append((g, "float", r["layers"], f"{r['mse_float']:.4e}", *[""] * 9, f"min r {r['min_group_ratio']:.2e}"))
            for tag, v in ((k, v) for k, v in r.items() if k == "heur" or k[0] == "a" and k[1:].isdigit()):
                rows.append((g, "int heuristic" if tag == "heur" else f"int {tag}", r["layers"], f"{v['mse_int']:.4e}",
                             f"{v['ratio_of_means']:.6f}", f"{v['ratio_min']:.5f}..{v['ratio_max']:.5f}",
                             f"{v['mse_int_vs_float']:.3e}", f"{v['max_rel_int_vs_float']:.3e}",
                             f"{v['max_abs_int_vs_float']:.2e}", f"{v['scale_rel_err_mean']:.2e}",
                             f"{v['groups_raised_frac']:.2e}", fmt_opt(v.get("codes_changed_frac"), ".2e"), v["max_int_scale"],
                             " ".join(f"{a}:{n}" for a, n in v["alpha_layers"].items())))
        parts.append(afp.fmt_table(
            f"A. {bits.upper()} symmetric group weights, SmolLM2-135M (means over layers): integer group scales "
            "(alpha 1024, the default heuristic, --alphas) vs float ones. ratio: MSE(int) / MSE(float); scale err: "
            "|sg / alpha - r| / r over non-zero groups; raised: groups with rint(r * alpha) = 0 (scale 1); codes chg: codes unlike the float-scale ones "
            "(mean over layers; - : not measured)", rows,
            ("g", "scales", "layers", "MSE vs w", "ratio", "ratio range", "MSE(int-float)", "max|int-float|/|float|",
             "max|int-float|", "scale err", "raised", "codes chg", "max sg", "alpha(:layers)")))
        parts.append(f"checks: {json.dumps(ws['_checks'])}\n")
    rows = [(s, v["layers"], v["tokens"], f"{v['max_abs_rel_to_max']:.2e}", f"{v['max_rel_fro']:.2e}",
             f"{v['float32_differing']}/{v['outputs']}", f"{v['float32_max_abs_diff']:.1e}",
             f"{v['float32_max_abs_rel_to_max']:.1e}")
            for s, v in res["verify"]["layers"].items() if "layers" in v]
    parts.append(afp.fmt_table(
        "verify: float64 formulation vs the library GEMM (CPU reference, float32 output) on real hidden "
        "states; d before / after rounding the float64 result to float32", rows,
        ("scheme", "layers", "tokens", "max|d|/max|y|", "rel fro", "f32 differing", "f32 max|d|",
         "f32 max|d|/max|y|")))
    rows = [(s, v["tokens"], f"{v['ppl_library_gemm']:.6f}", f"{v['ppl_float64']:.6f}",
             f"{v['max_logit_diff']:.2e}", f"{v['seconds_library_gemm']}", f"{v['seconds_float64']}")
            for s, v in res["verify"]["model"].items()]
    parts.append(afp.fmt_table(
        "verify: whole model on the first perplexity batch, library GEMMs vs float64", rows,
        ("scheme", "tokens", "ppl library", "ppl float64", "max logit diff", "s library", "s float64")))
    t = res["ppl"]["_tokens"]
    marks = [str(x) for x in t["marks_tokens"]]
    base = res["ppl"]["fp32"]["ppl"]
    rows = []
    for s, v in res["ppl"].items():
        if s.startswith("_"):
            continue
        cells = []
        for k in marks:
            cells += [f"{v['ppl'][k]:.4f}", f"{v['ppl'][k] / base[k] - 1:+.2%}"]
        rows.append((s, *cells, v["seconds"]))
    head = [c for k in marks for c in (f"ppl {k} tok", "vs fp32")]
    same = f"; the first {COMPARE_TOKENS} = accuracy_fp.py's full-mode text" if str(COMPARE_TOKENS) in marks else ""
    parts.append(afp.fmt_table(
        f"B. SmolLM2-135M perplexity, {t['text']} (non-overlapping windows of {t['window']}, "
        f"{t['windows']} windows{same})", rows, ("scheme", *head, "s")))
    rows = [(k, f"{v['ppl_ratio_minus_1']:+.3%}", f"{v['mean_nll_diff']:+.5f}", f"{v['se_nll_diff']:.5f}",
             f"{v['mean_nll_diff'] / v['se_nll_diff']:+.1f}" if v["se_nll_diff"] > 0 else "",
             f"{v['windows_worse']}/{v['windows']}") for k, v in res["ppl"]["_paired"].items()]
    parts.append(afp.fmt_table(
        f"B. paired by window ({t['tokens']} tokens): ppl ratio - 1, mean per-token NLL difference and "
        "its standard error (windows as samples), windows where the first is worse", rows,
        ("pair", "ppl ratio - 1", "dNLL/token", "s.e.", "z", "worse")))
    if "_note" in res["ppl"]:
        parts.append(res["ppl"]["_note"] + "\n")
    return "\n".join(parts)
