"""Tuning probe for quantize_per_token: threads per row vs row width, in GB/s and % of copy.

Checks every setting bit-exactly against the reference first, then times M=8192 rows of bf16
(inputs rotated past L2, CUDA-graph replays, median). Picks the automatic CTA size in
src/cuda/row_quant.cu.

    python scripts/probe_quant.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import zqkernels as zq
from zqkernels import _C

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import time_graph  # noqa: E402  (the benchmarks' one timer)


def copy_bw():
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_graph([lambda: dst.copy_(src)], reps=10)
    return 2 * src.numel() / t


def main():
    dev = "cuda"
    bw = copy_bw()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    for K in (1024, 4096, 8192, 11008, 14336, 28672):
        M = 8192
        copies = max(2, -(-256 * 2**20 // (3 * M * K)))
        xs = [torch.randn(M, K, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
        cells = []
        for threads in (0, 128, 256, 512, 1024):
            _C._debug_set_quantize_threads(threads)
            xq, sx = zq.quantize_per_token(xs[0][:64])
            rq, rs = zq.quantize_per_token(xs[0][:64].cpu())  # CPU tensors run the reference
            exact = torch.equal(xq.cpu(), rq) and torch.equal(sx.cpu(), rs)
            t = time_graph([lambda i=i: zq.quantize_per_token(xs[i]) for i in range(copies)])
            gbs = (3 * M * K + 4 * M) / t
            cells.append(
                f"t{threads or 'auto'}={t * 1e6:6.1f}us {100 * gbs / bw:3.0f}%{'' if exact else ' MISMATCH'}"
            )
        _C._debug_set_quantize_threads(0)
        print(f"K={K:6d}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
