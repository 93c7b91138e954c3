"""Probe: threads per row of the row-op + quantization kernels at small M (decode), through the
experiment knob ``_C._debug_set_quantize_threads`` (0 = the library's choice). The decode step of a
Llama-3-8B (docs/PERF_NOTES.md) spends ~15 % of its kernel time in these ops at M = 1: the default
picks the smallest CTA holding the row with <= 4 vectors per thread (128 threads for a 4096-wide
bf16 row), which suits large M (occupancy) but leaves one row's latency chain on 4 warps.

    python benchmarks/probe_row_threads.py [--ms 1,4,16,64] [--json F]

CUDA graph of 16 back-to-back calls on one input set (the input was just written by the previous
GEMM in a model, so it is L2-hot there too); median us per call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

THREADS = (0, 256, 512, 1024)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,4,16,64")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("probe_row_threads: needs a CUDA device")
        return 1
    import zqkernels as zq
    from zqkernels import _ext

    dev = torch.device("cuda")
    ops = {
        "rmsnorm_quant K4096": (4096, lambda x, r, w: zq.rmsnorm_quant(x, w, 1e-5)),
        "add_rmsnorm_quant K4096": (4096, lambda x, r, w: zq.add_rmsnorm_quant(x, r, w, 1e-5, inplace=True)),
        "silu_mul_quant K14336": (14336, lambda x, r, w: zq.silu_mul_quant(x)),
        "add_rmsnorm_quant K8192": (8192, lambda x, r, w: zq.add_rmsnorm_quant(x, r, w, 1e-5, inplace=True)),
    }
    rows = []
    print(f"{'op':<26} {'M':>4} " + " ".join(f"{('auto' if t == 0 else t):>8}" for t in THREADS))
    for name, (K, fn) in ops.items():
        for M in map(int, args.ms.split(",")):
            width = 2 * K if name.startswith("silu") else K
            x = torch.randn(M, width, device=dev, dtype=torch.bfloat16)
            r = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            r_keep = r.clone()
            w = torch.rand(K, device=dev, dtype=torch.float32) + 0.5
            row = {"op": name, "M": M}
            ref = None
            for t in THREADS:
                _ext._C._debug_set_quantize_threads(t)
                try:
                    q = fn(x, r.clone(), w)[0]  # r itself drifts under the timed in-place calls: compare on a copy
                    if ref is None:
                        ref = q.clone()
                    row[f"mismatch_{t}"] = int((q.int() - ref.int()).abs().gt(1).sum())
                    res = bc.time_calls([lambda: fn(x, r, w)] * 16, dev)
                    row[f"us_{t}"] = res["us"]
                    r.copy_(r_keep)
                finally:
                    _ext._C._debug_set_quantize_threads(0)
            rows.append(row)
            print(f"{name:<26} {M:>4} " + " ".join(f"{row[f'us_{t}']:>8.2f}" for t in THREADS), flush=True)
    if args.json:
        bc.write_json(args.json, {"probe": "row_threads", "env": bc.environment(dev), "commit": bc.git_commit(),
                                  "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
