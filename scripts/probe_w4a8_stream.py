"""w4a8_fp_gemm streaming kernel: the loading schedules against each other (needs a build with
-DZQ_EXPERIMENT_TILES=ON, which compiles the experimental schedules of src/cuda/w4a8_gemm.cu).

    python scripts/probe_w4a8_stream.py [--out FILE]

Variant 0 is the default (kBatch 4, pipelined); 1: (4, not pipelined), 2: (8, not pipelined),
3: (2, pipelined); 4 / 5: a shared-memory ring of 8 / 4 chunks per warp filled by cp.async (M <= 16;
for larger M they run the default). Each is timed on the stream path (benchmarks/_common.time_calls: rotated
inputs, CUDA graphs, median) and must give bit-identical outputs to variant 0.
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

F8 = torch.float8_e4m3fn
SHAPES = [(24576, 14336), (22016, 4096), (8192, 8192)]
MS = [1, 16]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    C = _ext._C
    rows = []
    for N, K in SHAPES:
        ws = []
        for _ in range(2):
            w = torch.randn(N, K, device=dev) * 0.02
            ws.append({p: zqkernels.quantize_weight(w, fmt="fp4", group_size=128, scale=p) for p in ("m2", "free")})
        for M in MS:
            xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=dev), dtype=F8)
            for pol in ("m2", "free"):
                row = {"M": M, "N": N, "K": K, "policy": pol}
                ref = None
                for v in range(6):
                    C._debug_set_w4a8_variant(v)
                    fns = [lambda d=d: zqkernels.w4a8_fp_gemm(xq, d[pol][0], sx, d[pol][1], d[pol][2], path="stream")
                           for d in ws]
                    out = fns[0]()
                    if ref is None:
                        ref = out
                    row[f"v{v}_identical"] = bool(torch.equal(out, ref))
                    t = cm.time_calls(fns, dev)
                    nbytes = N * K // 2 + ws[0][pol][2].numel() * ws[0][pol][2].element_size() + 4 * N
                    row[f"v{v}_us"] = t["us"]
                    row[f"v{v}_GBps"] = nbytes / t["us"] / 1e3
                C._debug_set_w4a8_variant(0)
                rows.append(row)
                print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if args.out:
        cm.write_json(args.out, {"environment": cm.environment(dev), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
