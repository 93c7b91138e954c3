"""What the CLI's commands share: CLIError, output helpers, argument types and the shared options."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, Optional

import torch

from .schemes import (
    AUTO,
    CHOICE_OPTIONS,
    DEFAULT_GROUP_SIZE,
    GROUPED,
    LM_HEAD,
    SCHEME_HELP,
    flag,
    option_default,
    taking,
)

UNSET: Any = object()  # --group-size not given (None means per channel)
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CALIB_WINDOW, CALIB_SAMPLES, ERROR_WINDOWS = 512, 16, 1  # defaults of --calib-window / --calib-samples / --error-windows
#: written by `quantize` next to the checkpoint: the conversion it ran ({"conversion": label, "smooth": alpha
#: or null, and "lm_head": the --lm-head value unless skip}); eval reads it (a smoothed checkpoint's Linears expect smoothed inputs, which a --float model
#: does not give them)
CONVERSION_FILE = "zqkernels_cli.json"


class CLIError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


def verb(flags: list[str]) -> str:
    """The verb for "FLAG[ / FLAG ...] applies / apply ..." messages."""
    return "applies" if len(flags) == 1 else "apply"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s * 1000:.0f} ms"


def one_line(e: BaseException) -> str:
    """An exception as "Type: message" on one line."""
    s = " ".join(str(e).split())
    return f"{type(e).__name__}: {s}" if s else type(e).__name__


def default_device(device: Optional[str]) -> str:
    from .. import _demo

    ready, why = _demo.gpu_ready()
    if device == "cuda" and not ready:
        raise CLIError(f"--device cuda: needs a CUDA GPU that runs the zqkernels kernels; {why}")
    return device or ("cuda" if ready else "cpu")


# ------------------------------------------------------------------------------------------------
# argument types and the options quantize and eval share


def _group_size(v: str) -> Any:
    if v.lower() in ("channel", "per-channel", "none"):
        return None
    if v.lower() == AUTO:
        return AUTO
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, 'channel' or 'auto', got {v!r}") from None


def positive(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {v!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {v!r}")
    return n


def _alpha(v: str) -> float:
    try:
        a = float(v)
    except ValueError:
        a = float("nan")
    if not 0.0 <= a <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] (the migration strength), got {v!r}")
    return a


def _lkd_default(name: str) -> str:
    """zqkernels.lkd's default for `name` (lr, loss), for the help."""
    try:
        import inspect

        from ..algorithms import lkd

        return str(inspect.signature(lkd).parameters[name].default)
    except Exception:  # noqa: BLE001 - the help still reads without it
        return "lkd's default"


_WIDTH = 79


def add_command(sub: Any, name: str, help: str, description: str, default_scheme: str) -> argparse.ArgumentParser:
    """A subcommand parser: `help` (one line, in ``python -m zqkernels --help``), `description`
    (wrapped), and an epilog listing the --scheme values and what a .gguf file needs."""
    lines = ["schemes (--scheme S):"]
    for k, v in SCHEME_HELP.items():
        head = f"  {k:<16}"
        note = (" (default" + (f" {default_scheme}" if default_scheme != k else "") + ")") if k == "w8a8" else ""
        note += f" [--group-size, default {DEFAULT_GROUP_SIZE}]" if k in GROUPED else ""
        note += "".join(f" [{flag(o)}]" for o in CHOICE_OPTIONS if k in taking(o))
        lines += textwrap.wrap(v + note, _WIDTH, initial_indent=head, subsequent_indent=" " * len(head))
    lines += [""] + textwrap.wrap(
        "MODEL_DIR is a local transformers model directory or a .gguf file (nothing is downloaded); a .gguf file "
        "needs the packages gguf and accelerate: pip install gguf accelerate", _WIDTH)
    return sub.add_parser(
        name, help=help, description="\n".join(textwrap.wrap(description, _WIDTH)), epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def conversion_options(p: argparse.ArgumentParser, default_scheme: Optional[str]) -> None:
    g = p.add_argument_group("conversion")
    g.add_argument(
        "--scheme", default=default_scheme, metavar="S",
        help=f"quantization scheme, one of {', '.join(SCHEME_HELP)} (listed below; default: "
        f"{default_scheme or 'w8a8 for a float MODEL_DIR'})",
    )
    g.add_argument("--group-size", type=_group_size, default=UNSET, metavar="G",
                   help="group size of the grouped schemes: 32, 64, 128, 256, 'channel' or 'auto' (default: auto, "
                   "per layer the largest of 128 / 64 / 32 that divides its in_features and fits the scheme's "
                   "layout; a size given explicitly must fit every converted layer)")
    for option, values in CHOICE_OPTIONS.items():
        g.add_argument(flag(option), dest=option, default=None, choices=values,
                       help=f"the {option} option of {', '.join(taking(option))} (default: "
                       f"{option_default(option)})")
    g.add_argument("--level", default=None, choices=("int8", "balanced", "accuracy"),
                   help="which GEMMs of a fused transformer block are quantized, any scheme: int8: all of them "
                   "(default); balanced: the MLP's output projection (fc2) in float; accuracy: fc2 and the "
                   "attention output projection in float")
    g.add_argument("--lm-head", dest="lm_head", default=None, choices=tuple(LM_HEAD),
                   help="quantize the output projection (lm_head): " + "; ".join(f"{k}: {v}" for k, v in LM_HEAD.items())
                   + ". A tied lm_head (its weight the input embedding's) is untied: the embedding stays float")
    g.add_argument("--smooth", type=_alpha, default=None, metavar="ALPHA",
                   help="SmoothQuant activation smoothing of the float model with migration strength ALPHA in "
                   "[0, 1] (zqkernels.smooth_; 0.5 is typical; runs first, before GPTQ / RTN; LKD's teacher is "
                   "the smoothed float model; needs --calib; default: off)")
    g.add_argument("--gptq", action="store_true",
                   help="GPTQ weights instead of round-to-nearest (zqkernels.gptq; needs --calib)")
    g.add_argument("--lorc-rank", type=positive, default=None, metavar="R",
                   help="LoRC low-rank compensation of rank R per quantized GEMM (zqkernels.lorc; a fused "
                   "block's merged QKV / gate|up GEMM gets one rank-R correction; applied after GPTQ / LKD; "
                   "default: off)")
    g.add_argument("--lkd-steps", type=positive, default=None, metavar="S",
                   help="layer-by-layer knowledge distillation, S steps per layer (zqkernels.lkd; needs --calib; "
                   "default: off)")
    g.add_argument("--lkd-lr", type=float, default=None, metavar="LR",
                   help=f"LKD learning rate (with --lkd-steps; default: {_lkd_default('lr')})")
    g.add_argument("--lkd-loss", default=None, choices=("mse", "kl"),
                   help=f"LKD loss (with --lkd-steps; default: {_lkd_default('loss')})")
    g.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text, UTF-8 (used by --smooth, --gptq and --lkd-steps, which need it)")
    g.add_argument("--calib-window", type=positive, default=None, metavar="T",
                   help=f"tokens per calibration sample (with --calib; default: {CALIB_WINDOW})")
    g.add_argument("--calib-samples", type=positive, default=None, metavar="N",
                   help=f"calibration samples (with --calib; default: {CALIB_SAMPLES})")


def device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=tuple(DTYPES),
                   help="dtype of the float model (default: auto, as saved; a .gguf file loads as float32)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where the model runs (default: cuda where the zqkernels kernels run, else cpu, "
                   "with the pure-torch reference ops)")


def conversion_flags_given(args: argparse.Namespace) -> list[str]:
    """The conversion options (conversion_options') given on the command line, as flags: they are
    errors where MODEL_DIR is already quantized."""
    return [f for f, given in (
        ("--scheme", args.scheme is not None), ("--group-size", args.group_size is not UNSET),
        ("--level", args.level is not None), ("--lm-head", getattr(args, "lm_head", None) is not None),
        ("--smooth", args.smooth is not None), ("--gptq", args.gptq),
        ("--lorc-rank", args.lorc_rank is not None),
        ("--lkd-steps", args.lkd_steps is not None), ("--lkd-lr", args.lkd_lr is not None),
        ("--lkd-loss", args.lkd_loss is not None), ("--calib", args.calib is not None),
        ("--calib-window", args.calib_window is not None), ("--calib-samples", args.calib_samples is not None),
        *((flag(o), getattr(args, o, None) is not None) for o in CHOICE_OPTIONS),
    ) if given]
