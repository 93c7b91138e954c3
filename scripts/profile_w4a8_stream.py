"""The W4A8 decode kernels under a profiler (issue 18: the streaming kernels reach 1.3-1.8 TB/s of
weight bandwidth against a 2.4 TB/s target). Runs each case a few times on fresh inputs so that
`ncu` (or any kernel profiler) sees one steady launch per case; prints the graph-replay time and the
weight bandwidth of each case too, so the run is useful without a profiler.

    ncu --clock-control none -k regex:stream --launch-skip 2 --launch-count 1 ... \
        python scripts/profile_w4a8_stream.py --cases 8b.gateup:1
    python scripts/profile_w4a8_stream.py            # timings only

A case is SHAPE:M with SHAPE one of benchmarks/bench_w4a8.SHAPES or NxK; formats: int (INT4,
integer scales, alpha 16, g 128), float (INT4, float scales), fp4 (FP4 m2 scales x FP8), mixed (int's
weights through the mixed-input mainloop, path="mixed", instead of the streaming kernel), int8
(int8_gemm, the W8A8 reference). --variant N sets the streaming kernels' loading schedule first
(_C._debug_set_w4a8_variant: 1..5 in ZQ_EXPERIMENT_TILES builds; 6 in any build: FP4 at M <= 8 on
register batches, not the shared-memory ring; 7 in any build: INT4 at M <= 8 capped at 80 registers,
3 CTAs an SM); --sweep NAME=V[,V...] times every case once per value
of one of the extension's switches, _C._debug_set_NAME(V), in one process: `w4a8_rows_per_cta=1,2,4,8`
(16-row tiles per CTA instead of the wave heuristic), `w4a8_early_weights=1,0` (the weights requested
before griddepcontrol.wait or after it), `pdl=1,0`. --quant puts the activation quantization (the row
op a layer runs before each GEMM) in every timed call, so that what programmatic dependent launch
overlaps is what a model overlaps; the bandwidth column still counts the weight bytes only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as cm  # noqa: E402
from bench_w4a8 import SHAPES  # noqa: E402

DEFAULT = "8b.gateup:1,8b.gateup:16,8b.down:1,8b.down:16,8b.o:1,8b.gateup:64"


def weights(fmt: str, N: int, K: int, dev: torch.device):
    import zqkernels as zq

    w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * 0.02
    kw = {"int": {"fmt": "int4", "scale": "int", "group_size": 128, "alpha": 16},
          "mixed": {"fmt": "int4", "scale": "int", "group_size": 128, "alpha": 16},
          "float": {"fmt": "int4", "scale": "float", "group_size": 128},
          "fp4": {"fmt": "fp4", "group_size": 128}, "int8": {}}[fmt]
    return zq.quantize_weight(w, **kw)


def call(fmt: str, W, M: int, K: int, dev: torch.device, quant: bool = False):
    """One timed call: the GEMM on quantized activations, or (quant) the quantization and the GEMM."""
    import zqkernels as zq

    x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    if fmt == "fp4":
        gemm = lambda xq, sx: zq.w4a8_fp_gemm(xq, W[0], sx, W[1], W[2], path="stream")  # noqa: E731
        dtype = torch.float8_e4m3fn
    elif fmt == "int8":
        gemm = lambda xq, sx: zq.int8_gemm(xq, W[0], sx, W[1])  # noqa: E731
        dtype = torch.int8
    else:
        extra = {"max_scale": 16} if fmt in ("int", "mixed") else {}
        path = "mixed" if fmt == "mixed" else "stream"
        gemm = lambda xq, sx: zq.w4a8_gemm(xq, W[0], sx, W[1], W[2], path=path, **extra)  # noqa: E731
        dtype = torch.int8
    if quant:
        return lambda: gemm(*zq.quantize_per_token(x, dtype))
    xq, sx = zq.quantize_per_token(x, dtype)
    return lambda: gemm(xq, sx)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT)
    ap.add_argument("--formats", default="int,float,fp4,int8")
    ap.add_argument("--no-time", action="store_true", help="only the profiled launches (3 per case)")
    ap.add_argument("--variant", type=int, default=None,
                    help="zqkernels._ext._C._debug_set_w4a8_variant(N) first (the streaming kernels' loading "
                         "schedule)")
    ap.add_argument("--sweep", default=None, metavar="NAME=V[,V...]",
                    help="zqkernels._ext._C._debug_set_NAME(V) for each value in turn, e.g. w4a8_rows_per_cta=1,2,4,8 "
                         "or w4a8_early_weights=1,0")
    ap.add_argument("--quant", action="store_true", help="time quantize_per_token + the GEMM (a layer's pair)")
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    from zqkernels import _ext

    if args.variant is not None:
        _ext._C._debug_set_w4a8_variant(args.variant)
    knob, values = None, [None]
    if args.sweep is not None:
        knob, _, vals = args.sweep.partition("=")
        setter = getattr(_ext._C, f"_debug_set_{knob}", None)
        if setter is None or not vals:
            ap.error(f"--sweep: no switch _C._debug_set_{knob} or no values (NAME=V[,V...])")
        values = [int(v) for v in vals.split(",")]
    if not args.no_time:
        print(f"copy bandwidth {cm.copy_bandwidth(dev) / 1e12:.2f} TB/s (read + write)")
    for v in values:
        if v is not None:
            try:
                setter(v)
            except TypeError:  # an on / off switch takes a bool
                setter(bool(v))
            print(f"== {knob} = {v}" + (" (with quantize_per_token)" if args.quant else ""))
        print(f"{'case':>16} {'fmt':>6} {'us':>8} {'TB/s':>6}")
        for case in args.cases.split(","):
            shape, m = case.split(":")
            N, K = SHAPES[shape] if shape in SHAPES else (int(v) for v in shape.split("x"))
            M = int(m)
            for fmt in args.formats.split(","):
                wbytes = N * K if fmt == "int8" else N * K // 2
                copies = 1 if args.no_time else cm.rotation_copies(wbytes, cm.device_rotate_bytes(dev))
                fns = [call(fmt, weights(fmt, N, K, dev), M, K, dev, args.quant) for _ in range(copies)]
                for _ in range(3):  # the profiled launches: the third is steady
                    fns[0]()
                torch.cuda.synchronize()
                if args.no_time:
                    continue
                t = cm.time_calls(fns, dev)
                print(f"{case:>16} {fmt:>6} {t['us']:8.2f} {wbytes / t['us'] / 1e6:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
