"""Probe: threads or CTAs per row of the row-op + quantization kernels at small M (decode), through an
experiment knob: ``_C._debug_set_quantize_threads`` (0 = the library's choice; the default knob) or
``_C._debug_set_row_cluster`` (CTAs per row, a cluster splitting the row: -1 the library's choice, 0
never, 2 / 4 / 8 forced). The decode step of a
Llama-3-8B (docs/PERF_NOTES.md) spends ~15 % of its kernel time in these ops at M = 1: the default
picks the smallest CTA holding the row with <= 4 vectors per thread (128 threads for a 4096-wide
bf16 row), which suits large M (occupancy) but leaves one row's latency chain on 4 warps.

    python benchmarks/probe_row_threads.py [--ms 1,4,16,64] [--knob row_cluster=0,-1,2,4,8] [--json F]

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

#: knob -> (the library's default value, the values swept unless --knob names others)
KNOBS = {"quantize_threads": (0, (0, 256, 512, 1024)), "row_cluster": (-1, (0, -1, 2, 4, 8))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", default="1,4,16,64")
    ap.add_argument("--knob", default="quantize_threads",
                    help="quantize_threads or row_cluster, optionally =V1,V2,... (default: every value of KNOBS)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    knob, _, vals = args.knob.partition("=")
    if knob not in KNOBS:
        ap.error(f"--knob must be one of {list(KNOBS)}, got {knob!r}")
    default, values = KNOBS[knob]
    values = tuple(int(v) for v in vals.split(",")) if vals else values
    if not torch.cuda.is_available():
        print("probe_row_threads: needs a CUDA device")
        return 1
    import zqkernels as zq
    from zqkernels import _ext

    dev = torch.device("cuda")
    ops = {
        "rmsnorm_quant K4096": (4096, lambda x, r, w: zq.rmsnorm_quant(x, w, 1e-5)),
        "add_rmsnorm_quant K4096": (4096, lambda x, r, w: zq.add_rmsnorm_quant(x, r, w, 1e-5, inplace=True)),
        "quantize_per_token K4096": (4096, lambda x, r, w: zq.quantize_per_token(x)),
        "silu_mul_quant K14336": (14336, lambda x, r, w: zq.silu_mul_quant(x)),
        "add_rmsnorm_quant K8192": (8192, lambda x, r, w: zq.add_rmsnorm_quant(x, r, w, 1e-5, inplace=True)),
    }
    rows = []
    setter = getattr(_ext._C, f"_debug_set_{knob}")
    print(f"{knob}: " + ", ".join(f"{v}{' (default)' if v == default else ''}" for v in values))
    print(f"{'op':<26} {'M':>4} " + " ".join(f"{v:>8}" for v in values))
    for name, (K, fn) in ops.items():
        for M in map(int, args.ms.split(",")):
            width = 2 * K if name.startswith("silu") else K
            x = torch.randn(M, width, device=dev, dtype=torch.bfloat16)
            r = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            r_keep = r.clone()
            w = torch.rand(K, device=dev, dtype=torch.float32) + 0.5
            row = {"op": name, "M": M}
            ref = None
            for t in values:
                setter(t)
                try:
                    q = fn(x, r.clone(), w)[0]  # r itself drifts under the timed in-place calls: compare on a copy
                    if ref is None:
                        ref = q.clone()
                    row[f"mismatch_{t}"] = int((q.int() - ref.int()).abs().gt(1).sum())
                    res = bc.time_calls([lambda: fn(x, r, w)] * 16, dev)
                    row[f"us_{t}"] = res["us"]
                    r.copy_(r_keep)
                finally:
                    setter(default)
            rows.append(row)
            print(f"{name:<26} {M:>4} " + " ".join(f"{row[f'us_{t}']:>8.2f}" for t in values), flush=True)
    if args.json:
        bc.write_json(args.json, {"probe": "row_threads", "knob": knob, "env": bc.environment(dev), "commit": bc.git_commit(),
                                  "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
