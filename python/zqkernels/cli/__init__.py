"""``python -m zqkernels quantize`` / ``eval`` / ``generate-bench``: whole HF models from local files.

quantize MODEL_DIR --scheme S --out DIR   load a float model (a local HF directory, or a .gguf file),
                                          convert it with ``quantize_`` (smoothing / GPTQ / LoRC / LKD on
                                          request) and save it with ``save_quantized`` (quantize.py)
eval MODEL_DIR --text FILE                perplexity of the float model and the quantized one over
                                          non-overlapping windows of FILE, the time each took, and the
                                          relative output error of every quantized Linear (PNG plot),
                                          with the paired per-window statistics vs float
                                          (evaluate.py, perplexity.py, stats.py, plot.py)
generate-bench MODEL_DIR                  HF generate with a static KV cache on the float and the quantized
                                          model: prefill ms, decode tokens/s, memory (generate.py)

All three check every option before reading a weight: the conversion asked for runs first on a one-layer
copy of the architecture, built from its config (precheck.py).

Models load from local paths only (``local_files_only=True``; a path that does not exist is refused,
never looked up on the Hub: load.py). --scheme maps to quantize_ configs in schemes.py only; the
conversion both commands run (smoothing / GPTQ / LKD / LoRC) is convert.py. Errors a user can fix
(missing directory, remote id, a scheme whose checkpoint cannot be written yet, bad options) raise
``CLIError``: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import evaluate, generate, quantize
from .common import CLIError
from .convert import Conversion
from .load import require_packages

__all__ = ["CLIError", "Conversion", "add_parsers", "run"]


def add_parsers(sub: Any) -> None:
    """Register the quantize, eval and generate-bench subcommands on the subparsers action `sub`."""
    quantize.add_parser(sub)
    evaluate.add_parser(sub)
    generate.add_parser(sub)


def run(args: argparse.Namespace) -> int:
    """Run `quantize`, `eval` or `generate-bench`; a CLIError becomes one line on stderr and exit status 2.
    First, before anything slow, the packages the models given need (``load.require_packages``);
    transformers' progress bars are off unless stderr is a terminal."""
    try:
        require_packages({"MODEL_DIR": args.model_dir, "--float": getattr(args, "float_dir", None)})
    except CLIError as e:
        return _error(args, e)
    hf_log = None
    if not sys.stderr.isatty():
        try:
            import transformers.utils.logging as hf_log

            was = hf_log.is_progress_bar_enabled()
            hf_log.disable_progress_bar()
        except ImportError:
            hf_log = None
    try:
        cmd = {"quantize": quantize.cmd_quantize, "eval": evaluate.cmd_eval,
               "generate-bench": generate.cmd_generate_bench}[args.command]
        return cmd(args)
    except CLIError as e:
        return _error(args, e)
    finally:
        if hf_log is not None and was:
            hf_log.enable_progress_bar()


def _error(args: argparse.Namespace, e: CLIError) -> int:
    print(f"zqkernels {args.command}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
