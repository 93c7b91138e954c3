"""Diagnose quantize_per_token -> int8_gemm (the W8A8 forward) against the float64 reference,
with programmatic dependent launch on and off, eagerly and under a CUDA graph.

    python scripts/debug_linear.py
"""

from __future__ import annotations

import torch
import zqkernels as zq
from zqkernels import _C


def rows_bad(y, ref, tol=2e-2):
    err = (y.float() - ref.float()).norm(dim=1) / ref.float().norm(dim=1).clamp_min(1e-30)
    return [int(i) for i in torch.nonzero(err > tol).flatten().tolist()], float(err.max())


def main():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    bad_total = 0
    for M, N, K in [
        (16, 22016, 4096),
        (128, 22016, 4096),
        (16, 4096, 4096),
        (64, 22016, 4096),
        (1, 22016, 4096),
        (37, 22016, 4096),
    ]:
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        wq, sw = zq.quantize_weight(w)
        for pdl in (True, False):
            _C._debug_set_pdl(pdl)
            for trial in range(4):
                x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
                # CPU tensors run the pure-torch reference (zqkernels.reference) through the same API.
                xq_r, sx_r = zq.quantize_per_token(x.cpu())
                ref = zq.int8_gemm(xq_r, wq.cpu(), sx_r, sw.cpu())
                xq, sx = zq.quantize_per_token(x)
                y = zq.int8_gemm(xq, wq, sx, sw)
                torch.cuda.synchronize()
                q_mis = int((xq.cpu() != xq_r).sum())
                s_mis = int((sx.cpu() != sx_r).sum())
                bad, emax = rows_bad(y.cpu(), ref)
                # Same GEMM on the reference's quantization (no quant kernel before it).
                y2 = zq.int8_gemm(xq_r.to(dev), wq, sx_r.to(dev), sw)
                bad2, emax2 = rows_bad(y2.cpu(), ref)
                # Graph: quant + gemm captured together.
                g = torch.cuda.CUDAGraph()
                xs = x.clone()
                xq0, sx0 = zq.quantize_per_token(xs)
                zq.int8_gemm(xq0, wq, sx0, sw)  # warm
                torch.cuda.synchronize()
                with torch.cuda.graph(g):
                    a, b = zq.quantize_per_token(xs)
                    y3 = zq.int8_gemm(a, wq, b, sw)
                g.replay()
                torch.cuda.synchronize()
                bad3, emax3 = rows_bad(y3.cpu(), ref)
                n_bad = len(bad) + len(bad2) + len(bad3) + q_mis + s_mis
                bad_total += n_bad
                if n_bad or trial == 0:
                    print(
                        f"M={M} N={N} K={K} pdl={int(pdl)} t={trial}: quant mismatches q={q_mis} s={s_mis}; "
                        f"eager bad rows {bad[:8]} (max {emax:.1e}); ref-quant bad {bad2[:8]} (max {emax2:.1e}); "
                        f"graph bad {bad3[:8]} (max {emax3:.1e})",
                        flush=True,
                    )
    _C._debug_set_pdl(True)
    print("debug_linear: total bad", bad_total)


if __name__ == "__main__":
    main()
