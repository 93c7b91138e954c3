"""``python -m zqkernels [info | bench | demo | quantize | eval | generate-bench]`` (also installed as the ``zqkernels`` command).

info      what this install can do (zqkernels.info()) as JSON
bench     a quick W8A8 GEMM benchmark against torch peers (needs a GPU with the kernels); the full
          benchmark is benchmarks/bench_w8a8.py in the source tree
demo      quantize a small transformer built in code and report the accuracy cost
quantize  quantize a local HF model (directory or .gguf file) and save it (``cli/quantize.py``)
eval      perplexity of the float and the quantized model, per-layer error plot (``cli/evaluate.py``)
generate-bench  HF generate (static cache) on the float and the quantized model: prefill ms, decode
          tokens/s, memory (``cli/generate.py``)

Without a subcommand: bench where the GPU can run the kernels, otherwise the CPU demo (with a note).
Asking explicitly for what this machine cannot run (``bench``, ``demo --device cuda``) prints a
one-line error to stderr and exits with status 2; so do usage errors and the errors of ``quantize`` /
``eval`` / ``generate-bench`` a user can fix (missing directory, remote model id, unsupported scheme).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn, Optional, Sequence


def _cannot(what: str, why: str) -> int:
    print(f"zqkernels {what}: needs a CUDA GPU that runs the zqkernels kernels; {why}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), like the commands' own errors."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _Parser(
        prog="python -m zqkernels",
        description="zqkernels: quantized transformer kernels (W8A8, FP8, W4A8, ...); without a command: "
        "bench on a GPU, else the CPU demo",
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,demo,quantize,eval,generate-bench}")
    sub.add_parser("info", help="print zqkernels.info() as JSON",
                   description="Print zqkernels.info() as JSON: version, whether the CUDA kernels are built, "
                   "their archs, the GEMM tiles, torch and the GPU.")
    bench = sub.add_parser("bench", help="quick W8A8 GEMM benchmark (GPU only)",
                           description="A quick W8A8 GEMM benchmark against torch on this GPU (a few shapes; "
                           "benchmarks/ has the full ones).")
    bench.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    demo = sub.add_parser("demo", help="quantize a small transformer and report its accuracy",
                          description="Quantize a small random transformer with W8A8 and report how close its "
                          "outputs stay to the float model's (CPU or GPU).")
    demo.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if it can run the kernels")
    from . import cli

    cli.add_parsers(sub)
    args = parser.parse_args(argv)

    import torch

    from . import _demo, info

    if args.command in ("quantize", "eval", "generate-bench"):
        return cli.run(args)

    if args.command == "info":
        print(json.dumps(info(), indent=2))
        return 0
    if args.command in ("bench", None):
        ready, why = _demo.gpu_ready()
        if ready:
            from . import _quickbench

            _quickbench.run(out_json=getattr(args, "json", None))
            return 0
        if args.command == "bench":
            return _cannot("bench", why)
        print(f"zqkernels: no GPU benchmark here ({why}); running the CPU demo instead.\n")
        _demo.run(device="cpu", dtype=torch.bfloat16)
        return 0
    if args.device == "cuda":
        ready, why = _demo.gpu_ready()
        if not ready:
            return _cannot("demo --device cuda", why)
    _demo.run(device=args.device, dtype=torch.bfloat16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
