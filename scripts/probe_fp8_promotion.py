"""fp8_gemm accurate mode: speed and error against the promotion interval (GemmTuning::fp8_promote_k).

    python scripts/probe_fp8_promotion.py [--out FILE]

For each interval (elements of K between promotions of the wgmma partial sums to fp32): median time
of fp8_gemm at three shapes (rotated inputs, CUDA graphs; benchmarks/_common.time_calls), the fast
mode's time, and the error against the float64 reference at K = 4096 and 16384 (relative
Frobenius error of fp16 outputs). docs/FP8.md records the result and the chosen default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as cm  # noqa: E402
import zqkernels  # noqa: E402
from zqkernels import _ext  # noqa: E402
from zqkernels.reference import fp8_gemm_ref  # noqa: E402

F8 = torch.float8_e4m3fn
SHAPES = [(8192, 8192, 8192), (2048, 24576, 14336), (256, 22016, 4096), (16, 22016, 4096)]
INTERVALS = [128, 256, 512, 1024, 2048]


def operands(M, N, K, dev, mean=0.0):
    x = torch.randn(M, K, device=dev) + mean
    w = torch.randn(N, K, device=dev) * 0.02 + mean * 0.02
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    return xq, wq, sx, sw


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--tiles", action="store_true", help="also time every fp8_rowwise tile at the default interval")
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    C = _ext._C
    default = C._debug_set_fp8_promotion(512)
    C._debug_set_fp8_promotion(default)
    ops = {s: [operands(*s, dev) for _ in range(2)] for s in SHAPES}
    errs_in = {K: operands(1024, 1024, K, dev, mean=0.5) for K in (4096, 16384)}
    refs = {K: fp8_gemm_ref(*errs_in[K], None, torch.float32).double() for K in errs_in}
    rows = []

    def measure(label, acc):
        row = {"interval": label}
        for s in SHAPES:
            t = cm.time_calls([lambda o=o: zqkernels.fp8_gemm(*o, accumulate=acc) for o in ops[s]], dev)
            row[f"{s[0]}x{s[1]}x{s[2]}_us"] = t["us"]
            row[f"{s[0]}x{s[1]}x{s[2]}_tflops"] = 2 * s[0] * s[1] * s[2] / t["us"] / 1e6
        for K, o in errs_in.items():
            y = zqkernels.fp8_gemm(*o, None, torch.float16, accumulate=acc).double()
            row[f"err_K{K}"] = float((y - refs[K]).norm() / refs[K].norm())
        rows.append(row)
        print(json.dumps(row), flush=True)

    for k in INTERVALS:
        C._debug_set_fp8_promotion(k)
        measure(k, "accurate")
    C._debug_set_fp8_promotion(default)
    measure("fast", "fast")
    if args.tiles:
        tiles = sorted({k[2] for k in C.gemm_kernels() if k[1] == "fp8_rowwise"})
        for tile in tiles:
            row = {"tile": tile}
            for s in SHAPES[:2]:
                try:
                    t = cm.time_calls([lambda o=o: zqkernels.fp8_gemm(*o, tile=tile) for o in ops[s]], dev)
                    row[f"{s[0]}x{s[1]}x{s[2]}_tflops"] = 2 * s[0] * s[1] * s[2] / t["us"] / 1e6
                except Exception as e:  # noqa: BLE001 - a tile that cannot run says why
                    row[f"{s[0]}x{s[1]}x{s[2]}_error"] = cm.error_text(e)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        cm.write_json(args.out, {"environment": cm.environment(dev), "default_k": default, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
