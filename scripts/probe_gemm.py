"""Tuning probe: every int8 GEMM tile config of every backend, straight through zqkernels._C.

Checks each config against a float64 reference on random data, then times it on the benchmark
shape grid (inputs rotated past L2, CUDA-graph replays, median) next to torch._int_mm and
torch._scaled_mm FP8 row-wise from the same run. Its output picks the M-bucket dispatch in
src/cuda/*_dispatch.cu; the product benchmark is benchmarks/bench_w8a8.py.

    python scripts/probe_gemm.py [--json out.json] [--backend sm90] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

try:
    from zqkernels import _C
except ImportError:  # a bare CMake build tree on PYTHONPATH
    import _C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import time_graph  # noqa: E402  (the benchmarks' one timer)

L2_BYTES = 50 * 2**20


def rand_int8(shape, kind, dev):
    """uniform: every int8 value equally likely (worst case for power); gauss: a Gaussian
    quantized symmetrically per row, i.e. what QLinear really feeds the GEMM (|q| ~ 30 typical)."""
    if kind == "uniform":
        return torch.randint(-127, 128, shape, dtype=torch.int8, device=dev)
    x = torch.randn(shape, device=dev)
    s = x.abs().amax(-1, keepdim=True) / 127
    return torch.round(x / s).clamp(-127, 127).to(torch.int8)


def large_inputs(M, N, K, kind, dev):
    """Two input sets (2 x the operands of a large problem is already far past L2) for the
    large-M experiments: activations, weights, scales, outputs."""
    xs = [rand_int8((M, K), kind, dev) for _ in range(2)]
    wl = [rand_int8((N, K), kind, dev) for _ in range(2)]
    sx = torch.rand(M, device=dev) + 0.5
    sw = torch.rand(N, device=dev) + 0.5
    outs = [torch.empty(M, N, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    return xs, wl, sx, sw, outs


def ref(xq, wq, sx, sw):
    acc = xq.double() @ wq.double().t()
    return (acc * sx.double()[:, None] * sw.double()[None, :]).to(torch.bfloat16)


def call(backend, cfg, xq, wq, sx, sw, out, ws):
    M, K = xq.shape
    N = wq.shape[0]
    _C.int8_gemm(
        backend,
        cfg,
        xq.data_ptr(),
        wq.data_ptr(),
        sx.data_ptr(),
        sw.data_ptr(),
        0,
        out.data_ptr(),
        M,
        N,
        K,
        0,
        ws.data_ptr() if ws is not None else 0,
        ws.numel() if ws is not None else 0,
        xq.device.index,
        torch.cuda.current_stream().cuda_stream,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--backend", action="append")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default="gauss", choices=["gauss", "uniform"])
    ap.add_argument("--configs", default="", help="comma-separated config names to time (default all)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument(
        "--interleave",
        default="",
        help="comma-separated config ids: time them round-robin on the large problems",
    )
    ap.add_argument(
        "--swizzle-sweep",
        action="store_true",
        help="time config 0/1 on the large problems under each scheduler swizzle/raster",
    )
    args = ap.parse_args()
    dev = torch.device("cuda")
    backends = args.backend or [b for b in ("sm90", "sm80") if _C.has_backend(b)]
    Ms = [1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    if args.quick:
        Ms = [16, 64, 256, 2048, 8192]
    NKs = [(4096, 4096), (22016, 4096), (4096, 11008)]
    problems = [(M, N, K) for (N, K) in NKs for M in Ms] + [(8192, 8192, 8192)]
    rows = []
    torch.manual_seed(0)

    # Correctness of every config on awkward shapes first.
    bad = 0
    for be in backends if not args.no_check else []:
        for cfg, name in enumerate(_C.int8_gemm_configs(be)):
            for M, N, K in [(1, 4104, 4112), (37, 24, 16), (128, 4096, 4096), (1000, 264, 1040)]:
                xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=dev)
                wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=dev)
                sx = torch.rand(M, device=dev) * 1e-2 + 1e-3
                sw = torch.rand(N, device=dev) * 1e-2 + 1e-3
                out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=dev)
                n = _C.int8_gemm_workspace_size(be, cfg, M, N, K, 0)
                ws = torch.empty(max(n, 1), dtype=torch.uint8, device=dev) if n else None
                call(be, cfg, xq, wq, sx, sw, out, ws)
                torch.cuda.synchronize()
                r = ref(xq, wq, sx, sw).float()
                err = ((out.float() - r).norm() / r.norm()).item()
                ok = err < 1e-2 and not out.isnan().any().item()
                bad += not ok
                print(f"check {be}/{name} M={M} N={N} K={K}: rel err {err:.2e} {'ok' if ok else 'FAIL'}")

    if args.interleave:
        ids = [int(c) for c in args.interleave.split(",")]
        names = _C.int8_gemm_configs("sm90")
        for M, N, K in [(8192, 8192, 8192), (8192, 22016, 4096), (8192, 4096, 11008), (4096, 4096, 4096)]:
            xs, wl, sx, sw, outs = large_inputs(M, N, K, args.data, dev)
            res = {c: [] for c in ids}
            for _ in range(5):  # round-robin so every config sees the same thermal history
                for c in ids:
                    fns = [
                        lambda i=i, c=c: call("sm90", c, xs[i], wl[i], sx, sw, outs[i], None)
                        for i in range(2)
                    ]
                    res[c].append(2 * M * N * K / time_graph(fns, reps=8) / 1e12)
            cells = [
                f"{names[c]}={statistics.median(v):5.0f}T[{min(v):.0f}-{max(v):.0f}]" for c, v in res.items()
            ]
            print(f"interleave M={M} N={N} K={K}: " + "  ".join(cells), flush=True)
        return

    if args.swizzle_sweep:
        for M, N, K in [(8192, 8192, 8192), (8192, 22016, 4096), (4096, 4096, 11008), (2048, 22016, 4096)]:
            xs, wl, sx, sw, outs = large_inputs(M, N, K, args.data, dev)
            cells = []
            for cfg in (0, 1):
                for sz, ra in [(0, 0), (2, 0), (4, 0), (8, 0), (4, 1), (4, 2), (8, 2)]:
                    _C.set_scheduler_tuning(sz, ra)
                    fns = [
                        lambda i=i, cfg=cfg: call("sm90", cfg, xs[i], wl[i], sx, sw, outs[i], None)
                        for i in range(2)
                    ]
                    t = time_graph(fns, reps=10)
                    cells.append(f"c{cfg}/s{sz}r{ra}={2 * M * N * K / t / 1e12:5.0f}T")
            _C.set_scheduler_tuning(0, 0)
            print(f"swizzle M={M} N={N} K={K}: " + " ".join(cells), flush=True)
        return

    for M, N, K in problems:
        per_call = M * K + N * K + 2 * M * N
        copies = max(2, math.ceil(2 * L2_BYTES / per_call))
        copies = min(copies, 64)
        xs = [rand_int8((M, K), args.data, dev) for _ in range(copies)]
        ws_ = [rand_int8((N, K), args.data, dev) for _ in range(copies)]
        sx = torch.rand(M, device=dev) + 0.5
        sw = torch.rand(N, device=dev) + 0.5
        outs = [torch.empty(M, N, dtype=torch.bfloat16, device=dev) for _ in range(copies)]
        row = {"M": M, "N": N, "K": K}
        for be in backends:
            for cfg, name in enumerate(_C.int8_gemm_configs(be)):
                if args.configs and name not in args.configs.split(","):
                    continue
                n = _C.int8_gemm_workspace_size(be, cfg, M, N, K, 0)
                wsp = torch.empty(max(n, 1), dtype=torch.uint8, device=dev) if n else None
                fns = [lambda i=i: call(be, cfg, xs[i], ws_[i], sx, sw, outs[i], wsp) for i in range(copies)]
                try:
                    row[f"{be}/{name}"] = time_graph(fns)
                except RuntimeError as e:
                    row[f"{be}/{name}"] = None
                    print("  fail", be, name, str(e)[:200])
        if be_auto := ("sm90" if _C.has_backend("sm90") else None):
            if M <= 256 and hasattr(_C, "set_pdl"):
                cfg = _C.int8_gemm_auto_config(be_auto, M, N, K)
                n = _C.int8_gemm_workspace_size(be_auto, cfg, M, N, K, 0)
                wsp = torch.empty(max(n, 1), dtype=torch.uint8, device=dev) if n else None
                for pdl in (True, False):
                    _C.set_pdl(pdl)
                    fns = [
                        lambda i=i: call(be_auto, cfg, xs[i], ws_[i], sx, sw, outs[i], wsp)
                        for i in range(copies)
                    ]
                    row[f"auto_pdl{int(pdl)}"] = time_graph(fns)
                _C.set_pdl(True)
        if M > 16:
            wts = [w.t() for w in ws_]
            row["int_mm"] = time_graph([lambda i=i: torch._int_mm(xs[i], wts[i]) for i in range(copies)])
        # fp8 operands from the same values (int8 magnitudes <= 127 are exact... up to e4m3's 3-bit
        # mantissa): the same data distribution, hence the same power draw, as the int8 runs.
        xf = [x.to(torch.float8_e4m3fn) for x in xs]
        wf = [w.to(torch.float8_e4m3fn) for w in ws_]
        sa = torch.rand(M, 1, device=dev) + 0.5
        sb = torch.rand(1, N, device=dev) + 0.5
        row["fp8row"] = time_graph(
            [
                lambda i=i: torch._scaled_mm(
                    xf[i], wf[i].t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16
                )
                for i in range(copies)
            ]
        )
        xb = [torch.randn(M, K, dtype=torch.bfloat16, device=dev) for _ in range(min(copies, 8))]
        wb = [torch.randn(N, K, dtype=torch.bfloat16, device=dev) for _ in range(min(copies, 8))]
        row["bf16"] = time_graph([lambda i=i: torch.matmul(xb[i], wb[i].t()) for i in range(len(xb))])
        rows.append(row)
        flops = 2 * M * N * K
        cells = []
        best = None
        for k, v in row.items():
            if k in ("M", "N", "K") or v is None:
                continue
            cells.append(f"{k.split('/')[-1][:22]}={v * 1e6:7.1f}us/{flops / v / 1e12:6.0f}T")
            if "/" in k and (best is None or v < row[best]):
                best = k
        print(f"M={M:5d} N={N:5d} K={K:5d} best={best} | " + "  ".join(cells), flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("config check failures:", bad)


if __name__ == "__main__":
    main()
