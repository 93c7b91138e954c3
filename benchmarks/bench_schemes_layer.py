"""Every scheme's converted LLaMA layer, fused blocks against its per-Linear path and against bf16,
best mode against best mode, in one run on one GPU.

    python benchmarks/bench_schemes_layer.py [--json FILE] [--schemes w8a8,fp8,...] [--cases prefill,b1]

The layer, its inputs and the timing are bench_models.py's (one LLaMA-7B-shaped ``LlamaDecoderLayer``:
hidden 4096, intermediate 11008, 32 heads; prefill 2048 tokens without cache; decode batch 1 / 16 at a
1024-token StaticCache context; medians of back-to-back rounds, modes alternating round by round).
Sides: bf16 in eager, CUDA graph, torch.compile and reduce-overhead; each scheme converted with
``quantize_(layer, SchemeConfig(<scheme with its defaults>))`` (fused block) and with
``fused_blocks=False`` (every Linear a QLinear), each in eager and CUDA graph (the zq side's best
mode in bench_models' runs; compiling 2 x 6 variants per case would not fit a device call). Per case:
each side's best, ``x bf16`` = bf16 best / side best, ``x fused`` = per-Linear best / fused best,
and the cosine of each eager output against bf16-eager's.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models as bm  # noqa: E402
from _common import cosine_f32, environment  # noqa: E402

SCHEMES = ("w8a8", "fp8", "fp8-block", "w4a8", "w4a8-floatscale", "w8a8-group", "w4a8-fp")
CASES = {
    "prefill": bm.Case("llama-layer", "llama-layer prefill 2048", "prefill", 1, 2048, quick=True),
    "b1": bm.Case("llama-layer", "llama-layer decode b1 ctx1024", "decode", 1, 1, bm.CTX, quick=True),
    "b16": bm.Case("llama-layer", "llama-layer decode b16 ctx1024", "decode", 16, 1, bm.CTX, quick=True),
}
BF16 = ("bf16-eager", "bf16-graph", "bf16-compile", "bf16-ro")


def convert(net: torch.nn.Module, scheme: str, fused: bool) -> torch.nn.Module:
    import zqkernels
    from zqkernels.schemes import get_scheme

    holder = bm.Holder(copy.deepcopy(net))
    name, _, opts = scheme.partition("@")  # "w4a8@alpha=16+group_size=64": a scheme with options
    options = {k: int(v) if v.isdigit() else v for k, v in (o.split("=", 1) for o in opts.split("+") if o)}
    cfg = zqkernels.SchemeConfig(get_scheme("bench", name, **options).with_defaults(), fused_blocks=fused)
    zqkernels.quantize_(holder, cfg)
    kinds = {type(m).__name__ for m in holder.modules()}
    assert ("QLlamaDecoderLayer" in kinds) == fused, (scheme, fused, kinds)
    return holder.net


def torchao_fp8_rowwise(net: torch.nn.Module) -> torch.nn.Module:
    """The bf16 layer with torchao's FP8 row-wise dynamic quantization (the peer of scheme fp8)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    ao = copy.deepcopy(net)
    quantize_(ao, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return ao


def run_case(case: bm.Case, schemes: list[str], st: bm.Settings, dry: bool = False, compile_bf16: bool = True,
             torchao: bool = False) -> dict:
    dev = st.device
    net, cfg = bm.build_bf16("llama-layer", dev, dry)
    ms = bm.ModelSet("llama-layer", cfg, {"bf16": net}, {}, {}, {})
    x, kw = bm.case_inputs(case, ms, dev)
    row: dict = {"case": case.name, "ms": {}, "cos": {}, "errors": {}, "stats": {}, "compile_s": {}}
    runners = {"bf16": bm.Runner(net, case.kind, **kw).eval()}
    with st.context():
        ref = runners["bf16"](x)
        for scheme in schemes:
            for fused in (True, False):
                v = f"{scheme}{'' if fused else '-unfused'}"
                try:
                    with torch.inference_mode(False), torch.no_grad():
                        runners[v] = bm.Runner(convert(net, scheme, fused), case.kind, **kw).eval()
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    row["errors"][v] = bm.error_text(e)
        fns = {}
        keep = []
        for v, r in runners.items():
            modes = BF16[:2] if v == "bf16" else ("zq-eager", "zq-graph")
            for mode in modes:
                name = f"{v}:{bm.TAG[bm.MODE_SPEC[mode][1]]}"
                try:
                    fn, out, _ = bm.prepare(mode, r, x, st, None)
                except bm.Skip:
                    continue
                except Exception as e:  # noqa: BLE001
                    row["errors"][name] = bm.error_text(e)
                    continue
                if mode.endswith("eager"):
                    row["cos"][v] = cosine_f32(out, ref)
                fns[name] = fn
                keep.append(out)
        bm.measure(fns, row, st)
        fns.clear()
        sides = [("bf16", runners["bf16"], BF16[2:])] if compile_bf16 and not dry else []
        if torchao and not dry:
            try:
                with torch.inference_mode(False), torch.no_grad():
                    ao = bm.Runner(torchao_fp8_rowwise(net), case.kind, **kw).eval()
                sides.append(("ao-fp8row", ao, BF16[1:]))
            except Exception as e:  # noqa: BLE001
                row["errors"]["ao-fp8row"] = bm.error_text(e)
        for v, runner, mode in ((v, r, m) for v, r, ms_ in sides for m in ms_):
            name = f"{v}:{bm.TAG[bm.MODE_SPEC[mode][1]]}"
            try:
                fn, out, cs = bm.prepare(mode, runner, x, st, None)
                fns[name] = fn
                keep.append(out)
                row["compile_s"][name] = cs
            except Exception as e:  # noqa: BLE001
                row["errors"][name] = bm.error_text(e)
        bm.measure(fns, row, st)
    torch._dynamo.reset()
    best = {}
    for name, t in row["ms"].items():
        v = name.split(":")[0]
        if v not in best or t < best[v][1]:
            best[v] = (name.split(":")[1], t)
    row["best"] = {v: {"mode": m, "ms": t} for v, (m, t) in best.items()}
    return row


def table(rows: list[dict], schemes: list[str]) -> list[str]:
    out = [f"{'case':<32} {'scheme':<16} {'bf16 best':>10} {'fused best':>12} {'unfused best':>13} "
           f"{'x bf16':>7} {'x fused':>8} {'cos':>7}"]
    for r in rows:
        b = r["best"].get("bf16")
        for s in schemes:
            f, u = r["best"].get(s), r["best"].get(f"{s}-unfused")

            def cell(v):
                return f"{v['ms']:.3f} {v['mode']:>2}" if v else "ERR"

            xb = f"{b['ms'] / f['ms']:.2f}x" if b and f else "-"
            xf = f"{u['ms'] / f['ms']:.2f}x" if u and f else "-"
            cos = r["cos"].get(s)
            ao = r["best"].get("ao-fp8row")
            if ao and s.startswith("fp8") and f:
                cos = f"{cos if cos is None else round(cos, 4)} vs torchao fp8 row-wise {cell(ao)}: {ao['ms'] / f['ms']:.2f}x"
            out.append(f"{r['case']:<32} {s:<16} {cell(b):>10} {cell(f):>12} {cell(u):>13} {xb:>7} {xf:>8} "
                       f"{cos if cos is None or isinstance(cos, str) else round(cos, 4)!s:>7}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--cases", default="prefill,b1,b16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-compile", action="store_true", help="bf16 in eager and graph only (no torch.compile)")
    ap.add_argument("--torchao", action="store_true", help="also torchao's FP8 row-wise layer (graph, compile, reduce-overhead)")
    ap.add_argument("--decode-attention", choices=("auto", "gqa", "packed", "kernel", "hf"), default=None,
                    help="fused blocks' one-token attention (nn.blocks_base.DECODE_ATTENTION; default: the library's)")
    ap.add_argument("--torch-rope", action="store_true",
                    help="fused blocks take the torch RoPE + cache.update instead of rope_qkv (one kernel; A/B)")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke test: a tiny layer, 32 tokens, eager only")
    args = ap.parse_args()
    from zqkernels.nn import blocks_base

    blocks_base.FUSED_ROPE = not args.torch_rope
    if args.decode_attention is not None:
        blocks_base.DECODE_ATTENTION = args.decode_attention
    schemes = [s for s in args.schemes.split(",") if s]
    dev = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    st = bm.Settings(dev, 1 if args.dry_run else args.rounds, 0.05, 0.0 if args.dry_run else 0.1)
    rows = []
    for c in ["prefill"] if args.dry_run else args.cases.split(","):
        case = bm.Case("llama-layer", "tiny prefill 32", "prefill", 1, 32) if args.dry_run else CASES[c]
        rows.append(run_case(case, schemes, st, args.dry_run, not args.no_compile, args.torchao))
        for line in table(rows[-1:], schemes):
            print(line, flush=True)
        for k, e in rows[-1]["errors"].items():
            print(f"   {k}: {e}")
    print("\n".join(table(rows, schemes)))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(st.device), "rope": "torch" if args.torch_rope
                                               else "rope_qkv",
                                               "decode_attention": blocks_base.DECODE_ATTENTION, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
