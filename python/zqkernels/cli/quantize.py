"""``python -m zqkernels quantize MODEL_DIR --scheme S --out DIR``: load a float model (a local HF
directory, or a .gguf file), convert it with ``quantize_`` (smoothing / GPTQ / LoRC / LKD on request)
and save it with ``save_quantized``.

Before any weight is read, the checkpoint check runs the whole pipeline (smooth, convert, GPTQ / LoRC /
one LKD step: precheck.py; then save, load) on a one-layer copy of the model's architecture, built from
its config, so an unsupported combination fails in seconds, whatever the library supports at the time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import (
    CONVERSION_FILE,
    CLIError,
    add_command,
    conversion_options,
    default_device,
    device_options,
    fmt_s,
    say,
)
from .convert import Conversion, calibration
from .load import load_float, local_source, read_text
from .precheck import ProbeModel, check_conversion


def add_parser(sub: Any) -> None:
    """Register the quantize subcommand on the subparsers action `sub`."""
    q = add_command(
        sub, "quantize", help="quantize a local model and save it as a checkpoint",
        description="Load a float model from a local directory (or a .gguf file), convert it with "
        "zqkernels.quantize_ (smoothing / GPTQ / LoRC / LKD on request) and save it with zqkernels.save_quantized "
        "(compressed-tensors layout, with the tokenizer), printing what each module became and the time of each "
        "step. `eval` measures the result.", default_scheme="w8a8",
    )
    q.add_argument("model_dir", metavar="MODEL_DIR", help="the float model: a local transformers model directory or "
                   "a .gguf file")
    q.add_argument("--out", required=True, metavar="DIR", help="output directory, new or empty (required)")
    q.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    conversion_options(q, default_scheme="w8a8")
    device_options(q)


def check_checkpoint(root: Path, kw: dict[str, Any], dtype: str, conv: Conversion) -> str:
    """Convert (smoothing / GPTQ / LoRC / LKD as asked), save and load a one-layer copy of the model
    (built from its config; or a two-Linear stand-in) the way the real run will, before the model's
    weights are read; raises CLIError if the conversion would fail or the checkpoint cannot be written
    or read back. -> what was checked."""
    import zqkernels

    probe, what = check_conversion(root, kw, dtype, conv)
    with tempfile.TemporaryDirectory(prefix="zq_ckpt_check_") as d:
        try:
            zqkernels.save_quantized(probe, d)
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"scheme {conv.label} cannot be saved as a checkpoint yet: {e}") from e
        try:
            zqkernels.load_quantized(d, model=ProbeModel() if isinstance(probe, ProbeModel) else None)
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"scheme {conv.label}: the saved checkpoint cannot be loaded back yet: {e}") from e
    return what


# -- the command ---------------------------------------------------------------------------------


def cmd_quantize(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    conv = Conversion(args)
    root, kw = local_source(args.model_dir)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--out {args.out!r} is not empty (pass --overwrite to write into it)")
    if out.resolve() == root.resolve():
        raise CLIError("--out must not be the model's own directory")
    if args.calib:
        read_text(args.calib, "--calib")  # fail now, not after loading
    device = default_device(args.device)
    progress = sys.stderr.isatty()

    t = time.perf_counter()
    what = check_checkpoint(root, kw, args.dtype, conv)
    say(f"checkpoint check ({conv.label}, on {what}): ok in {fmt_s(time.perf_counter() - t)}")

    t = time.perf_counter()
    model, tok = load_float(args.model_dir, args.dtype, device, causal=False)
    t_load = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    say(f"loaded {type(model).__name__} from {args.model_dir} ({n_params / 1e6:.1f}M parameters, "
        f"{str(dtype).replace('torch.', '')}, {device}) in {fmt_s(t_load)}")

    calib = calibration(conv, args, tok, device)
    say(f"converting: {conv.label}" + (f" ({len(calib)} calibration samples of {conv.calib_window} tokens)" if calib else ""))
    times = conv.convert(model, calib, progress, say)

    t = time.perf_counter()
    try:
        import zqkernels

        zqkernels.save_quantized(model, out)
    except NotImplementedError as e:
        raise CLIError(f"save_quantized: {e}") from e
    if tok is not None:
        tok.save_pretrained(out)
    record = {"conversion": conv.label, "smooth": conv.smooth}
    if conv.lm_head != "skip":
        record["lm_head"] = conv.lm_head
    (out / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    times["save"] = time.perf_counter() - t
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    say(f"saved to {out} ({size / 2**20:.1f} MiB of safetensors" + (", tokenizer" if tok is not None else ", no tokenizer") + ")")
    parts = ", ".join(f"{k} {fmt_s(v)}" for k, v in times.items())
    say(f"time: load {fmt_s(t_load)}, {parts}; total {fmt_s(time.perf_counter() - t0)}")
    return 0
