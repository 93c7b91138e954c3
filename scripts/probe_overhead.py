"""Where the eager host time of int8_gemm / quantize_per_token / QLinear goes: each piece of the
call timed alone (2000 back-to-back calls, one sync, median of 5), at M=32 N=K=256.

    python scripts/probe_overhead.py
The product benchmark is benchmarks/bench_overhead.py; this is the breakdown behind it.
"""

from __future__ import annotations

import statistics
import time

import torch
import zqkernels
from zqkernels import _ext
from zqkernels.ops import _common as c
from zqkernels.ops import gemm_checks as gc
from zqkernels.ops import gemm_cuda
from zqkernels.ops import quantize as q


def t(fn, calls=2000, reps=5):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    s = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        s.append((time.perf_counter() - t0) * 1e6 / calls)
    return statistics.median(s)


def main():
    dev = torch.device("cuda", 0)
    M, N, K = 32, 256, 256
    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x)
    wq, sw = zqkernels.quantize_weight(torch.randn(N, K, device=dev))
    out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
    kid, ws = gemm_cuda.plan(0, xq, "auto", None, torch.bfloat16, M, N, K)
    C = _ext._C
    stream = c.current_stream(0)
    lin = torch.nn.Linear(K, N, device=dev, dtype=torch.bfloat16)
    ql = zqkernels.QLinear.from_linear(lin)
    rows = {
        "torch._int_mm": lambda: torch._int_mm(xq, wq.t()),
        "torch.empty(M,N) bf16": lambda: torch.empty((M, N), dtype=torch.bfloat16, device=dev),
        "torch.empty(M,N) device=xq.device": lambda: torch.empty((M, N), dtype=torch.bfloat16, device=xq.device),
        "xq.new_empty": lambda: xq.new_empty((M, N), dtype=torch.bfloat16),
        "eager() predicate": lambda: c.eager(xq, wq, sx, sw, None),
        "is_compiling": torch.compiler.is_compiling,
        "current_stream": lambda: c.current_stream(0),
        "_check_int8_gemm_args": lambda: gc.check_rowwise_args(xq, wq, sx, sw, None, torch.bfloat16),
        "_fast_ok_cuda": lambda: gc.fast_ok_cuda(xq, wq, sx, sw, None, torch.bfloat16),
        "plan (cached)": lambda: gemm_cuda.plan(0, xq, "auto", None, torch.bfloat16, M, N, K),
        "data_ptr x6": lambda: (xq.data_ptr(), wq.data_ptr(), sx.data_ptr(), sw.data_ptr(), out.data_ptr(), xq.data_ptr()),
        "_C.gemm_run (launch only)": lambda: C.gemm_run(
            kid, xq.data_ptr(), K, wq.data_ptr(), K, sx.data_ptr(), sw.data_ptr(), 0, out.data_ptr(), M, N, K, 0, 0, 0, stream
        ),
        "rowwise_gemm_cuda": lambda: gemm_cuda.rowwise_gemm_cuda(xq, wq, sx, sw, None, torch.bfloat16, "auto", None),
        "int8_gemm (public)": lambda: zqkernels.int8_gemm(xq, wq, sx, sw),
        "int8_gemm (custom op)": lambda: torch.ops.zqkernels.gemm(xq, wq, sx, sw, None, None, "int8_rowwise", torch.bfloat16),
        "_check_quantize_args": lambda: q._check_quantize_args(x),
        "_C.quantize_per_token (launch only)": lambda: C.quantize_per_token(
            x.data_ptr(), 0, K, xq.data_ptr(), sx.data_ptr(), M, K, 0, stream
        ),
        "_quantize_cuda": lambda: q._quantize_cuda(x),
        "quantize_per_token (public)": lambda: zqkernels.quantize_per_token(x),
    }
    with torch.no_grad():
        rows["QLinear no_grad"] = None
        res = {k: t(f) for k, f in rows.items() if f is not None}
        res["QLinear no_grad"] = t(lambda: ql(x))
        res["nn.Linear no_grad"] = t(lambda: lin(x))
        res["x.reshape(-1,K)"] = t(lambda: x.reshape(-1, K))
        res["y.view(M,N)"] = t(lambda: out.view(M, N))
    for k, v in res.items():
        print(f"{k:40s} {v:8.2f} us")


if __name__ == "__main__":
    main()
