"""Eager host time per call (us) of the group-scaled ops next to torch's equivalents: back-to-back
calls at a tiny shape (M = 1, N = K = 256, g = 64), one synchronize (benchmarks/_common.back_to_back).

    python scripts/probe_group_overhead.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as cm  # noqa: E402
import zqkernels  # noqa: E402


def main() -> int:
    dev = torch.device("cuda", 0)
    M, N, K, g = 1, 256, 256, 64
    w = torch.randn(N, K, device=dev) * 0.05
    x = torch.randn(M, K, device=dev)
    xq, sx = zqkernels.quantize_per_token(x)
    w4, sw4, sg4 = zqkernels.quantize_weight(w, bits=4, group_size=g, scale="int", alpha=1024)
    w8, sw8, sg8 = zqkernels.quantize_weight(w, bits=8, group_size=g, scale="int")
    ms8 = int(sg8.max())
    wb, xb = w.to(torch.bfloat16), x.to(torch.bfloat16)
    xq32 = torch.randint(-128, 127, (32, K), dtype=torch.int8, device=dev)
    wq8, _ = zqkernels.quantize_weight(w)
    calls = {
        "w4a8_gemm (stream, M=1)": lambda: zqkernels.w4a8_gemm(xq, w4, sx, sw4, sg4, max_scale=1024),
        "w8a8_group_gemm (M=1)": lambda: zqkernels.w8a8_group_gemm(xq, w8, sx, sw8, sg8, max_scale=ms8),
        "torch.matmul bf16": lambda: torch.matmul(xb, wb.t()),
        "torch._int_mm (M=32)": lambda: torch._int_mm(xq32, wq8.t()),
        "torch.nn.functional.linear bf16": lambda: torch.nn.functional.linear(xb, wb),
    }
    res = cm.back_to_back(calls, cm.sync_for(dev))
    for name, r in res.items():
        print(json.dumps({"op": name, **{k: v for k, v in r.items() if isinstance(v, (int, float, str))}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
