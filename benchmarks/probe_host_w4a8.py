"""Probe: where the eager host time of a W4A8 GEMM call goes (issue 18: w4a8_gemm's host time is
1.5-2.0x torch._int_mm's against a 1.3x target). Each row times one layer of the call stack with the
layers above it removed, back to back with one sync per round (bench_w4a8.py --host's method), at a
tiny shape (M = 32 / 128 -> the mixed path, M = 16 -> the streaming kernel, N = K = 256; torch._int_mm
needs M > 16: M = 16 is compared with torch.matmul):

    op           zqkernels.w4a8_gemm / w4a8_fp_gemm / int8_gemm as a user calls them
    impl         the eager implementation (checks, path choice, launch)
    launch       ops/gemm_cuda.py's launcher (scale layouts, intervals, plan, output allocation)
    gemm_run     the _C binding alone with every argument precomputed (output reused)
    torch.empty  one allocation, for scale
    QLinear      the W4A8 layer a converted model runs (alpha 16), against nn.Linear in bf16, both
                 under torch.inference_mode (the layer quantizes its bf16 input: one more kernel)

    python benchmarks/probe_host_w4a8.py [--json F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402


def _inference(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return layer(x)


def rows(M: int, N: int, K: int, dev: torch.device) -> dict:
    import zqkernels as zq
    from zqkernels import _ext
    from zqkernels.ops import _common as oc
    from zqkernels.ops import gemm_cuda as gc
    from zqkernels.ops.gemm_group import w4a8_fp_impl, w4a8_int_impl

    torch.manual_seed(M)
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
    xi, sxi = zq.quantize_per_token(x)
    x8, sx8 = zq.quantize_per_token(x, torch.float8_e4m3fn)
    wi, swi = zq.quantize_weight(w)
    w4, sw4, sg4 = zq.quantize_weight(w, fmt="int4", scale="int", group_size=128, alpha=16)
    fp4, swf, sgf = zq.quantize_weight(w, fmt="fp4", group_size=128)
    bf = torch.bfloat16
    idx = xi.get_device()
    stream = oc.current_stream(idx)
    fns = {
        "torch.matmul": lambda: torch.matmul(x, w.t()),
        "torch.empty": lambda: torch.empty((M, N), device=dev, dtype=bf),
        "int8_gemm op": lambda: zq.int8_gemm(xi, wi, sxi, swi),
        "w4a8_gemm a16 op": lambda: zq.w4a8_gemm(xi, w4, sxi, sw4, sg4, max_scale=16),
        "w4a8_gemm a16 impl": lambda: w4a8_int_impl(xi, w4, sxi, sw4, sg4, None, bf, "none", 16),
        "w4a8_fp_gemm op": lambda: zq.w4a8_fp_gemm(x8, fp4, sx8, swf, sgf),
        "w4a8_fp_gemm impl": lambda: w4a8_fp_impl(x8, fp4, sx8, swf, sgf, None, bf),
    }
    path = gc.w4a8_int_path(M, N, idx, gc.w4a8_fused(True, 16, K), True)
    out = torch.empty((M, N), device=dev, dtype=bf)
    if path == "mixed":
        fns["w4a8 a16 group_gemm_cuda"] = lambda: gc.group_gemm_cuda(
            "w4a8_gemm", xi, w4, sxi, sw4, sg4, None, bf, 0, 16, wmax=8, int4=True)
        sg_t = gc._scales_t(sg4)
        g = K // sg4.shape[1]
        pb, flush = gc.group_gemm_intervals(g, 8, 16)
        recipe = "w4a8_mixed_fused"
        fns["w4a8 a16 _group_launch"] = lambda: gc._group_launch(recipe, xi, w4, sxi, sw4, sg_t, g, pb, flush,
                                                                 None, bf, 0, None)
        kid, ws = gc.plan(idx, xi, "sm90", None, bf, M, N, K, recipe)
        wsb = torch.empty((max(ws, 1),), device=dev, dtype=torch.uint8)
        args = (kid, xi.data_ptr(), K, w4.data_ptr(), K, sxi.data_ptr(), sw4.data_ptr(), 0, out.data_ptr(),
                M, N, K, wsb.data_ptr() if ws else 0, ws, idx, stream, 0, 1.0, sg_t.data_ptr(), g, pb, flush)
        fns["w4a8 a16 _C.gemm_run"] = lambda: _ext._C.gemm_run(*args)
    kid8, ws8 = gc.plan(idx, xi, "auto", None, bf, M, N, K)
    out8 = torch.empty((M, N), device=dev, dtype=bf)
    wsb8 = torch.empty((max(ws8, 1),), device=dev, dtype=torch.uint8)
    args8 = (kid8, xi.data_ptr(), K, wi.data_ptr(), K, sxi.data_ptr(), swi.data_ptr(), 0, out8.data_ptr(),
             M, N, K, wsb8.data_ptr() if ws8 else 0, ws8, idx, stream, 0, 1.0)
    try:
        _ext._C.gemm_run(*args8)
        fns["int8 _C.gemm_run"] = lambda: _ext._C.gemm_run(*args8)
    except TypeError as e:  # the binding's signature differs: say so instead of guessing
        print(f"probe_host_w4a8: int8 gemm_run row skipped: {cm.error_text(e)}")
    # The layer a user calls (QLinear: trusted shapes, no per-call checks) against nn.Linear, both
    # under inference_mode, input bf16 (QLinear's time includes quantizing the activations).
    lin = torch.nn.Linear(K, N, bias=False, device=dev, dtype=bf)
    qlin = zq.QLinear.from_linear(lin, "w4a8", group_size=128, alpha=16).eval()
    fns["nn.Linear bf16 (inference)"] = lambda: _inference(lin, x)
    fns["QLinear w4a8 a16 (inference)"] = lambda: _inference(qlin, x)
    if M > 16:  # torch._int_mm takes M > 16 only
        fns = {"torch._int_mm": lambda: torch._int_mm(xi, wi.t()), **fns}
    res = cm.back_to_back(fns, cm.sync_for(dev))
    peer = "torch._int_mm" if "torch._int_mm" in res else "torch.matmul"
    base = res[peer]["s"]
    print(f"\nM={M} N={N} K={K} (w4a8 a16 path: {path}); eager host us per call, x {peer}")
    for k, v in res.items():
        print(f"  {k:>26} {v['s'] * 1e6:8.2f}  x{v['s'] / base:.2f}")
    return {"path": path, **{k: {"us": v["s"] * 1e6, "spread": v["spread"]} for k, v in res.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe_host_w4a8: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    doc = {"env": cm.environment(dev), "cases": {}}
    for M in (16, 32, 128):
        doc["cases"][f"M{M}"] = rows(M, 256, 256, dev)
    if args.json:
        cm.write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
