"""``python -m zqkernels [info | bench | demo]`` (also installed as the ``zqkernels`` command).

info   what this install can do (zqkernels.info()) as JSON
bench  the W8A8 GEMM benchmark against torch peers (needs a GPU with the kernels; otherwise
       says so and runs the demo); the default subcommand
demo   quantize a small transformer built in code and report the accuracy cost
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zqkernels", description="zqkernels: W8A8 INT8 kernels; the default command is bench"
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,demo}")
    sub.add_parser("info", help="print zqkernels.info() as JSON")
    bench = sub.add_parser("bench", help="benchmark the W8A8 GEMM (GPU); the default")
    bench.add_argument("--full", action="store_true", help="the whole shape grid (default: the short one)")
    bench.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    demo = sub.add_parser("demo", help="quantize a small transformer and report its accuracy")
    demo.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if it can run the kernels")
    args = parser.parse_args(argv)

    import torch  # after argparse, so --help is instant

    from . import _demo, info

    command = args.command or "bench"
    if command == "info":
        print(json.dumps(info(), indent=2))
        return 0
    if command == "bench":
        ready, why = _demo.gpu_ready()
        if ready:
            from . import _bench

            _bench.run(short=not getattr(args, "full", False), out_json=getattr(args, "json", None))
            return 0
        print(
            f"zqkernels bench needs a CUDA GPU that runs the zqkernels kernels ({why}); "
            "running the CPU demo instead.\n"
        )
        _demo.run(device="cpu", dtype=torch.bfloat16)
        return 0
    _demo.run(device=args.device, dtype=torch.bfloat16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
