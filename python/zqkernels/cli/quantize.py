"""``python -m zqkernels quantize MODEL_DIR --scheme S --out DIR``: load a float model (a local HF
directory, or a .gguf file), convert it with ``quantize_`` (smoothing / GPTQ / LoRC / LKD on request)
and save it with ``save_quantized``.

Before any weight is read, the checkpoint check runs the whole pipeline (smooth, convert, GPTQ / LoRC /
one LKD step, save, load) on a one-layer copy of the model's architecture, built from its config, so an
unsupported combination fails in seconds, whatever the library supports at the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .common import (
    CONVERSION_FILE,
    DTYPES,
    CLIError,
    add_command,
    conversion_options,
    default_device,
    device_options,
    fmt_s,
    say,
)
from .convert import Conversion, calibration
from .load import load_float, local_source, model_class, read_text


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


# -- the checkpoint check, before any conversion work ---------------------------------------------


class _ProbeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.o_proj = nn.Linear(256, 256)
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.up_proj(self.self_attn.o_proj(x))


class _ProbeModel(nn.Module):
    """The stand-in for a model whose one-layer copy cannot be built: two Linears in one block."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_ProbeBlock()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x)


def _small_copy(root: Path, kw: dict[str, Any], dtype: str) -> Optional[nn.Module]:
    """The model's architecture (from its config alone: no weights read) with one layer and a small
    vocabulary, random weights, on the CPU; None if it cannot be built."""
    import transformers

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = transformers.AutoConfig.from_pretrained(root, local_files_only=True, **kw)
        cfg.num_hidden_layers = 1
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:1]
    except Exception:  # noqa: BLE001 - no one-layer copy: the caller uses the stand-in
        return None
    cls = model_class(root, kw, causal=False)
    build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
    dt = DTYPES[dtype]
    if dt == "auto":
        dt = getattr(cfg, "dtype", None) if "gguf_file" not in kw else torch.float32
        dt = dt if isinstance(dt, torch.dtype) else torch.float32
    specials = []
    for a in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id"):
        v = getattr(cfg, a, None)
        specials += [x for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, int)]
    vocab = getattr(cfg, "vocab_size", None)
    for v in ([max([256, *[t + 1 for t in specials]])] if isinstance(vocab, int) else []) + [None]:
        c = copy.deepcopy(cfg)
        if v is not None and v < vocab:
            c.vocab_size = v
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build(c, dtype=dt).eval()
        except Exception:  # noqa: BLE001 - try the next variant
            continue
    return None


def check_checkpoint(root: Path, kw: dict[str, Any], dtype: str, conv: Conversion) -> str:
    """Convert (GPTQ / LoRC / LKD as asked), save and load a one-layer copy of the model (built from
    its config; or a two-Linear stand-in) the way the real run will, before the model's weights are
    read; raises CLIError if the conversion would fail or the checkpoint cannot be written or read
    back. -> what was checked."""
    import zqkernels

    probe, what = _small_copy(root, kw, dtype), "a one-layer copy of the model"
    if probe is None:
        probe, what = _ProbeModel(), "a two-Linear stand-in"
    # the same steps (smoothing / GPTQ / LoRC / LKD) on the small copy: LoRC's rank capped to its
    # layers, one LKD step, random token ids as calibration data
    small = copy.copy(conv)
    stand_in = isinstance(probe, _ProbeModel)
    if conv.lorc_rank:
        dims = [min(m.weight.shape) for m in probe.modules() if isinstance(m, nn.Linear)]
        small.lorc_rank = min([conv.lorc_rank, *dims])
    if conv.lkd_steps:
        small.lkd_steps = None if stand_in else 1  # LKD needs the model's transformer blocks
    if stand_in:
        small.smooth = None  # so does smoothing
    calib = None
    if small.calibrated:
        g = torch.Generator().manual_seed(0)
        if stand_in:
            calib = [torch.randn(2, 8, 256, generator=g)]
        else:
            vocab = getattr(getattr(probe, "config", None), "vocab_size", 256)
            calib = [{"input_ids": torch.randint(0, min(vocab, 256), (1, 16), generator=g)}]
    try:
        small.convert(probe, calib, False, lambda s: None)
    except CLIError as e:
        raise CLIError(f"scheme {conv.label}: {e} (found on {what}, before reading the weights)") from e
    with tempfile.TemporaryDirectory(prefix="zq_ckpt_check_") as d:
        try:
            zqkernels.save_quantized(probe, d)
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"scheme {conv.label} cannot be saved as a checkpoint yet: {e}") from e
        try:
            zqkernels.load_quantized(d, model=_ProbeModel() if stand_in else None)
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
    (out / CONVERSION_FILE).write_text(json.dumps({"conversion": conv.label, "smooth": conv.smooth}, indent=2) + "\n")
    times["save"] = time.perf_counter() - t
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    say(f"saved to {out} ({size / 2**20:.1f} MiB of safetensors" + (", tokenizer" if tok is not None else ", no tokenizer") + ")")
    parts = ", ".join(f"{k} {fmt_s(v)}" for k, v in times.items())
    say(f"time: load {fmt_s(t_load)}, {parts}; total {fmt_s(time.perf_counter() - t0)}")
    return 0
