"""W8A8 INT8 GEMM benchmark: zqkernels against torch (bf16, _int_mm, FP8 row-wise, unfused W8A8).

Thin command line over ``zqkernels._bench.run``; the method and the columns are described in
benchmarks/README.md and in the docstring of python/zqkernels/_bench.py.

    python benchmarks/bench_w8a8.py                     # full grid (~2 min on an H100)
    python benchmarks/bench_w8a8.py --short             # 9 problems (< 1 min)
    python benchmarks/bench_w8a8.py --configs           # + zq_gemm per tile config (adds ~1-2 min)
    python benchmarks/bench_w8a8.py --shapes 4096x4096 --ms 1,8,16,24,32     # N x K over chosen M
    python benchmarks/bench_w8a8.py --shapes 8192x8192x8192 --no-json
    python benchmarks/bench_w8a8.py --selftest          # CPU only: formatting + pipeline self-test

Exit status: 0 when every row ran and passed its correctness check, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _int_list(s: str) -> list:
    try:
        out = [int(v) for v in s.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{s}'") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{s}'")
    return out


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{s}'")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Columns and method: benchmarks/README.md",
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="reduced grid: M in {16,128,2048,8192} x (N,K) in {(4096,4096),(22016,4096)} + 8192^3",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        metavar="PATH",
        help="write the JSON here (default: benchmarks/results/w8a8_<gpu-slug>_<commit>.json)",
    )
    out.add_argument("--no-json", action="store_true", help="print only, write no JSON")
    p.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help="problems instead of the grid: MxNxK, or NxK to sweep the M list (see --ms)",
    )
    p.add_argument(
        "--ms",
        type=_int_list,
        metavar="M1,M2,...",
        help="M values for the grid's / --shapes' NxK pairs (default: the full or --short list)",
    )
    p.add_argument(
        "--configs",
        action="store_true",
        help="also time zq_gemm for every tile config of every compiled backend",
    )
    p.add_argument(
        "--eager-above",
        type=int,
        metavar="M",
        default=None,
        help="time plain launches instead of CUDA graphs for M above this (default: graphs for all M)",
    )
    p.add_argument(
        "--target-s",
        type=_positive_float,
        default=None,
        metavar="S",
        help="measuring time per column and problem, seconds (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random data seed (default 0)")
    p.add_argument("--no-quant", action="store_true", help="skip the quantize_per_token bandwidth table")
    p.add_argument(
        "--selftest",
        action="store_true",
        help="run the CPU self-tests of the harness (no GPU, no built zqkernels needed) and exit",
    )
    return p


def _load_bench_from_source():
    """python/zqkernels/_bench.py without importing the zqkernels package (whose _C may not exist)."""
    path = REPO / "python" / "zqkernels" / "_bench.py"
    spec = importlib.util.spec_from_file_location("zqkernels_bench_source", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    if args.selftest:
        bench = _load_bench_from_source()
        bench._selftest_format()
        bench._selftest_cpu()
        return 0

    try:
        from zqkernels import _bench as bench
    except ImportError as e:
        print(f"bench_w8a8: cannot import zqkernels ({e}); install it first: pip install .", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print(
            "bench_w8a8: no CUDA device visible (torch.cuda.is_available() is False); "
            "--selftest runs without one",
            file=sys.stderr,
        )
        return 2

    try:
        problems = bench.problems(args.short, args.shapes, args.ms)
    except ValueError as e:
        print(f"bench_w8a8: --shapes: {e}", file=sys.stderr)
        return 2
    if not problems:
        print("bench_w8a8: no problems to run", file=sys.stderr)
        return 2

    out_json = None
    if not args.no_json:
        out_json = (
            Path(args.json)
            if args.json
            else bench.default_json_path(RESULTS, commit=bench.git_commit([REPO]))
        )

    kwargs = {}
    if args.target_s is not None:
        kwargs["target_s"] = args.target_s
    rows = bench.run(
        short=args.short,
        out_json=out_json,
        shapes=args.shapes,
        configs=args.configs,
        ms=args.ms,
        eager_above=args.eager_above,
        seed=args.seed,
        quant=not args.no_quant,
        **kwargs,
    )
    bad = [r for r in rows if not bench.row_ok(r)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
