"""``python -m zqkernels quantize`` and ``python -m zqkernels eval``: whole HF models from local files.

quantize MODEL_DIR --scheme S --out DIR   load a float model (a local HF directory, or a .gguf file),
                                          convert it with ``quantize_`` (smoothing / GPTQ / LoRC / LKD on
                                          request) and save it with ``save_quantized``
eval MODEL_DIR --text FILE                perplexity of the float model and the quantized one over
                                          non-overlapping windows of FILE, the time each took, and the
                                          relative output error of every quantized Linear (PNG plot)

Models load from local paths only (``local_files_only=True``; a path that does not exist is refused,
never looked up on the Hub). Errors a user can fix (missing directory, remote id, a scheme whose
checkpoint cannot be written yet, bad options) raise ``CLIError``: one line on stderr, exit status 2.
`quantize`'s checkpoint check runs the whole pipeline (smooth, convert, GPTQ / LoRC / one LKD step, save,
load) on a one-layer copy of the model's architecture, built from its config, before any weight is
read, so an unsupported combination fails in seconds, whatever the library supports at the time.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

#: --scheme -> what it is (the help text); "w4/8" is ZeroQuant's mixed W4/8 preset.
SCHEMES: dict[str, str] = {
    "w8a8": "int8 per-token activations x int8 per-channel weights (W8A8Config; fused blocks)",
    "fp8": "FP8 E4M3 activations and per-channel weights (FP8Config)",
    "w4a8": "int4 group-wise weights, integer group scales x int8 activations (W4A8Config)",
    "w4a8-floatscale": "int4 group-wise weights, float group scales x int8 activations (W4A8Config(scale='float'))",
    "w4a8-fp": "FP4 E2M1 group-wise weights x FP8 activations (W4A8FPConfig)",
    "w8a8-group": "int8 group-wise weights x int8 activations (W8A8GroupConfig)",
    "w4/8": "ZeroQuant's W4/8 mixed preset: w4a8 in the MLP (*.mlp.*), w8a8 elsewhere",
}
_GROUPED = ("w4a8", "w4a8-floatscale", "w4a8-fp", "w8a8-group", "w4/8")
_UNSET: Any = object()  # --group-size not given (None means per channel)
_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CALIB_WINDOW, CALIB_SAMPLES, ERROR_WINDOWS = 512, 16, 1  # defaults of --calib-window / --calib-samples / --error-windows
#: written by `quantize` next to the checkpoint: the conversion it ran ({"conversion": label, "smooth": alpha
#: or null}); eval reads it (a smoothed checkpoint's Linears expect smoothed inputs, which a --float model
#: does not give them)
CONVERSION_FILE = "zqkernels_cli.json"


class CLIError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


def _verb(flags: list[str]) -> str:
    return "applies" if len(flags) == 1 else "apply"


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s * 1000:.0f} ms"


# ------------------------------------------------------------------------------------------------
# argument parsing


def _group_size(v: str) -> Optional[int]:
    if v.lower() in ("channel", "per-channel", "none"):
        return None
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'channel', got {v!r}") from None


def _positive(v: str) -> int:
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


def _conversion_options(p: argparse.ArgumentParser, default_scheme: Optional[str]) -> None:
    g = p.add_argument_group("conversion")
    g.add_argument(
        "--scheme", default=default_scheme, metavar="S",
        help="one of: " + "; ".join(f"{k}: {v}" for k, v in SCHEMES.items()) + f" (default: {default_scheme or 'w8a8 for a float MODEL_DIR'})",
    )
    g.add_argument("--group-size", type=_group_size, default=_UNSET, metavar="G",
                   help="group size of the grouped schemes (32, 64, 128, 256 or 'channel'; default 128)")
    g.add_argument("--level", default=None, choices=("int8", "balanced", "accuracy"),
                   help="w8a8 / w4/8: precision of the fused blocks' GEMM roles (default int8)")
    g.add_argument("--smooth", type=_alpha, default=None, metavar="ALPHA",
                   help="SmoothQuant activation smoothing of the float model with migration strength ALPHA in "
                   "[0, 1] (zqkernels.smooth_; 0.5 is typical; runs first, before GPTQ / RTN; LKD's teacher is "
                   "the smoothed float model; needs --calib)")
    g.add_argument("--gptq", action="store_true", help="GPTQ weights (zqkernels.gptq; needs --calib)")
    g.add_argument("--lorc-rank", type=_positive, default=None, metavar="R",
                   help="LoRC low-rank compensation of rank R per quantized GEMM (zqkernels.lorc; a fused "
                   "block's merged QKV / gate|up GEMM gets one rank-R correction; applied after GPTQ / LKD)")
    g.add_argument("--lkd-steps", type=_positive, default=None, metavar="S",
                   help="layer-by-layer knowledge distillation, S steps per layer (zqkernels.lkd; needs --calib)")
    g.add_argument("--lkd-lr", type=float, default=None, metavar="LR",
                   help="LKD learning rate (with --lkd-steps; lkd's default)")
    g.add_argument("--lkd-loss", default=None, choices=("mse", "kl"), help="LKD loss (with --lkd-steps; lkd's default)")
    g.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text (only used by --smooth, --gptq and --lkd-steps, which need it)")
    g.add_argument("--calib-window", type=_positive, default=None, metavar="T",
                   help=f"tokens per calibration sample (with --calib; {CALIB_WINDOW})")
    g.add_argument("--calib-samples", type=_positive, default=None, metavar="N",
                   help=f"calibration samples (with --calib; {CALIB_SAMPLES})")


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=tuple(_DTYPES),
                   help="float model dtype (auto: as saved; a .gguf loads as float32)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="default: cuda where the kernels run, else cpu (reference ops)")


def add_parsers(sub: Any) -> None:
    """Register the quantize and eval subcommands on the subparsers action `sub`."""
    q = sub.add_parser(
        "quantize", help="quantize a local HF model (directory or .gguf) and save it (compressed-tensors)",
        description="Load a float model from a local directory (or a .gguf file), convert it with "
        "zqkernels.quantize_ (smoothing / GPTQ / LoRC / LKD on request) and save it with zqkernels.save_quantized.",
    )
    q.add_argument("model_dir", metavar="MODEL_DIR", help="local HF model directory, or a .gguf file")
    q.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    q.add_argument("--overwrite", action="store_true", help="allow a non-empty --out directory")
    _conversion_options(q, default_scheme="w8a8")
    _common_options(q)

    e = sub.add_parser(
        "eval", help="perplexity float vs quantized, per-layer error plot",
        description="Perplexity of the float model and the quantized one on FILE (non-overlapping "
        "windows), with the time taken, and the relative output error of every quantized Linear on the "
        "float model's inputs (--plot PNG). MODEL_DIR is a float model (quantized here with --scheme ...) "
        "or a directory written by `quantize` (then --float DIR gives the float reference).",
    )
    e.add_argument("model_dir", metavar="MODEL_DIR", help="float model dir / .gguf, or a `quantize` output dir")
    e.add_argument("--text", required=True, metavar="FILE", help="evaluation text (UTF-8)")
    e.add_argument("--float", dest="float_dir", default=None, metavar="MODEL_DIR",
                   help="float reference when MODEL_DIR is a quantized checkpoint")
    e.add_argument("--window", type=_positive, default=1024, metavar="T", help="tokens per window (1024)")
    e.add_argument("--max-windows", type=_positive, default=None, metavar="N", help="evaluate the first N windows")
    e.add_argument("--batch", type=_positive, default=1, metavar="B", help="windows per forward (1)")
    e.add_argument("--error-windows", type=_positive, default=None, metavar="N",
                   help=f"windows the per-layer error is measured on (needs the float model; {ERROR_WINDOWS})")
    e.add_argument("--plot", default=None, metavar="PATH.png", help="write the per-layer error plot here")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    _conversion_options(e, default_scheme=None)
    _common_options(e)


# ------------------------------------------------------------------------------------------------
# loading (local files only)


def _local_source(path: str, what: str = "MODEL_DIR") -> tuple[Path, dict[str, Any]]:
    """-> (directory, extra from_pretrained kwargs) for a local model directory or .gguf file."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise CLIError(f"{what} {path!r} is a file but not a .gguf file; give a model directory or a .gguf file")
        return p.parent, {"gguf_file": p.name}
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CLIError(f"{what} {path!r} has no config.json (not a transformers model directory)")
        return p, {}
    first = path.split("/")[0]
    looks_remote = (
        not os.path.isabs(path) and not path.startswith((".", "~")) and path.count("/") == 1
        and all(path.split("/")) and not Path(first).exists()
    )
    if looks_remote:
        raise CLIError(
            f"{what} {path!r} is not a local directory; it looks like a Hub model id, and models load from "
            "local directories only (download it first, then pass the directory)"
        )
    raise CLIError(f"{what} {path!r} does not exist (models load from local directories or .gguf files only)")


def is_quantized_dir(path: str) -> bool:
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("quantization_config"))


def _model_class(root: Path, kw: dict[str, Any], causal: bool):
    import transformers

    if causal or "gguf_file" in kw:
        return transformers.AutoModelForCausalLM
    try:
        cfg = transformers.AutoConfig.from_pretrained(root, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - any config error is the user's file
        raise CLIError(f"cannot read the model config in {str(root)!r}: {_one_line(e)}") from e
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return cls if cls is not None else transformers.AutoModel


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return f"{type(e).__name__}: {s}" if s else type(e).__name__


def load_float(path: str, dtype: str, device: str, causal: bool, what: str = "MODEL_DIR") -> tuple[nn.Module, Any]:
    """(model in eval mode on `device`, tokenizer or None) from a local directory or .gguf file."""
    root, kw = _local_source(path, what)
    cls = _model_class(root, kw, causal)
    dt = _DTYPES[dtype]
    if dt == "auto" and "gguf_file" in kw:
        dt = torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cls.from_pretrained(root, local_files_only=True, dtype=dt, **kw)
        except Exception as e:  # noqa: BLE001 - report what transformers said, in one line
            raise CLIError(f"cannot load a model from {path!r}: {_one_line(e)}") from e
        tok = load_tokenizer(root, kw)
    return model.to(device).eval(), tok


def load_tokenizer(root: Path, kw: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(root, local_files_only=True, **kw)
    except Exception:  # noqa: BLE001 - no tokenizer is fine until one is needed
        return None


def _default_device(device: Optional[str]) -> str:
    from . import _demo

    ready, why = _demo.gpu_ready()
    if device == "cuda" and not ready:
        raise CLIError(f"--device cuda: needs a CUDA GPU that runs the zqkernels kernels; {why}")
    return device or ("cuda" if ready else "cpu")


def _read_text(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CLIError(f"{what} {path!r} is not a file")
    return p.read_text(encoding="utf-8", errors="replace")


def _token_ids(tok: Any, text: str) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _windows(ids: torch.Tensor, window: int, limit: Optional[int], what: str) -> torch.Tensor:
    n = ids.numel() // window
    if n == 0:
        raise CLIError(f"{what} has {ids.numel()} tokens, fewer than one window of {window} (lower --window)")
    if limit is not None:
        n = min(n, limit)
    return ids[: n * window].reshape(n, window)


# ------------------------------------------------------------------------------------------------
# conversion


class Conversion:
    """What --scheme and friends ask for: quantize_'s config and module_configs, and the extras."""

    def __init__(self, args: argparse.Namespace) -> None:
        from . import nn as zn

        scheme = args.scheme
        if scheme not in SCHEMES:
            raise CLIError(f"--scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
        g_given = args.group_size is not _UNSET
        if g_given and scheme not in _GROUPED:
            raise CLIError(f"--group-size applies to the grouped schemes ({', '.join(_GROUPED)}), not {scheme!r}")
        if args.level is not None and scheme not in ("w8a8", "w4/8"):
            raise CLIError(f"--level applies to w8a8 and w4/8 (fused blocks), not {scheme!r}")
        g = args.group_size if g_given else 128
        self.scheme, self.group_size = scheme, g
        self.gptq, self.lorc_rank, self.lkd_steps = args.gptq, args.lorc_rank, args.lkd_steps
        self.lkd_lr, self.lkd_loss = args.lkd_lr, args.lkd_loss
        self.smooth: Optional[float] = args.smooth  # None: off (0.0 is a valid alpha)
        # options that would be silently ignored are errors (no static-activation scheme calibrates)
        lkd_opts = [f for f, v in (("--lkd-lr", self.lkd_lr), ("--lkd-loss", self.lkd_loss)) if v is not None]
        if lkd_opts and self.lkd_steps is None:
            raise CLIError(f"{' / '.join(lkd_opts)} {_verb(lkd_opts)} only with --lkd-steps (LKD), which was not given")
        if args.calib is not None and not self.calibrated:
            raise CLIError("--calib is only used by --smooth, --gptq and --lkd-steps (none was given)")
        calib_opts = [f for f, v in (("--calib-window", args.calib_window), ("--calib-samples", args.calib_samples))
                      if v is not None]
        if calib_opts and args.calib is None:
            raise CLIError(f"{' / '.join(calib_opts)} {_verb(calib_opts)} only with --calib FILE (for --smooth / "
                           "--gptq / --lkd-steps)")
        self.calib_window = args.calib_window or CALIB_WINDOW
        self.calib_samples = args.calib_samples or CALIB_SAMPLES
        # the w8a8 blocks are fused, with LoRC too (one factor pair per merged GEMM: zqkernels.lorc)
        level = args.level or "int8"
        self.module_configs: Optional[dict[str, Any]] = None
        try:
            if scheme == "w8a8":
                self.config: Any = zn.W8A8Config(level=level)
            elif scheme == "fp8":
                self.config = zn.FP8Config()
            elif scheme in ("w4a8", "w4a8-floatscale"):
                self.config = zn.W4A8Config(group_size=g, scale="int" if scheme == "w4a8" else "float")
            elif scheme == "w4a8-fp":
                self.config = zn.W4A8FPConfig(group_size=g)
            elif scheme == "w8a8-group":
                self.config = zn.W8A8GroupConfig(group_size=g)
            else:  # w4/8: ZEROQUANT_W4_8 with this group size / level
                w8 = zn.W8A8Config(level=level)
                self.config = w8
                self.module_configs = {"*.mlp.*": zn.W4A8Config(group_size=g), "*": w8}
        except (ValueError, TypeError) as e:
            raise CLIError(str(e)) from e
        if self.calibrated and not args.calib:
            which = "--smooth" if self.smooth is not None else "--gptq" if self.gptq else "--lkd-steps"
            raise CLIError(f"{which} needs calibration text: --calib FILE")
        if self.lkd_steps is not None:
            import zqkernels

            if not callable(getattr(zqkernels, "lkd", None)):
                raise CLIError(
                    "--lkd-steps needs zqkernels.lkd (layer-by-layer knowledge distillation, issue 9 item 4), "
                    "which this zqkernels does not have yet"
                )

    @property
    def calibrated(self) -> bool:
        """Whether a step that needs calibration data (smoothing, GPTQ, LKD) is on."""
        return self.smooth is not None or bool(self.gptq) or bool(self.lkd_steps)

    @property
    def label(self) -> str:
        s = self.scheme
        if s in _GROUPED:
            s += f" g{self.group_size if self.group_size is not None else '=channel'}"
        # in the order they run
        extras = [f"smooth a={self.smooth:g}"] if self.smooth is not None else []
        extras += [n for n, on in (("GPTQ", self.gptq), (f"LKD {self.lkd_steps} steps", self.lkd_steps),
                                    (f"LoRC r{self.lorc_rank}", self.lorc_rank)) if on]
        return s + (" + " + " + ".join(extras) if extras else "")

    def smooth_float(self, model: nn.Module, calib: Optional[list[Any]], log: Callable[[str], None]) -> float:
        """Smooth the float `model` in place (zqkernels.smooth_ with alpha --smooth); -> seconds.
        smooth_'s errors (e.g. a model with no block it supports) become CLIError."""
        import zqkernels

        t = time.perf_counter()
        try:
            rep = zqkernels.smooth_(model, calib, alpha=self.smooth)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise CLIError(f"smoothing failed: {e}") from e
        groups = rep.groups
        if groups:
            before = sorted(g["act_ratio_before"] for g in groups)
            after = sorted(g["act_ratio_after"] for g in groups)
            log(f"smooth_: alpha {rep.alpha:g}, {len(groups)} groups (a norm or Linear folded into the Linears it "
                f"feeds); activation max/median channel ratio: median {before[len(before) // 2]:.1f} -> "
                f"{after[len(after) // 2]:.1f}, max {before[-1]:.1f} -> {after[-1]:.1f}")
        else:
            log(str(rep))
        return time.perf_counter() - t

    def convert(
        self, model: nn.Module, calib: Optional[list[Any]], progress: bool, log: Callable[[str], None],
        float_model: Optional[nn.Module] = None,
    ) -> dict[str, float]:
        """Convert `model` in place; -> seconds per step. Library errors become CLIError.

        Smoothing (--smooth) runs first, on the float `model`; LKD's teacher and LoRC's reference are
        then a float copy of the smoothed model (its weights are what the quantized ones approximate).
        float_model: the caller's float model that `model` is a copy of, already smoothed by
        ``smooth_float`` when --smooth is on; then smoothing is not redone here and it serves as LKD's
        teacher / LoRC's reference (both leave it unchanged) instead of a new copy."""
        import zqkernels

        times: dict[str, float] = {}
        if self.smooth is not None and float_model is None:
            times["smooth"] = self.smooth_float(model, calib, log)
        model_float = None
        if self.lorc_rank or self.lkd_steps:
            model_float = float_model if float_model is not None else copy.deepcopy(model)
        t = time.perf_counter()
        try:
            if self.gptq:
                summary = zqkernels.gptq(
                    model, calib, config=self.config, module_configs=self.module_configs, progress=progress
                )
            else:
                summary = zqkernels.quantize_(model, self.config, module_configs=self.module_configs, progress=progress)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise CLIError(f"conversion failed: {e}") from e
        times["gptq" if self.gptq else "rtn"] = time.perf_counter() - t
        log(str(summary))
        # LKD first: it refuses layers with LoRC factors, and LoRC then factors the error of the
        # distilled weights
        if self.lkd_steps:
            t = time.perf_counter()
            lkd = zqkernels.lkd
            params = inspect.signature(lkd).parameters
            kw: dict[str, Any] = {}
            if "steps" in params:
                kw["steps"] = self.lkd_steps
            for flag, key, value in (("--lkd-lr", "lr", self.lkd_lr), ("--lkd-loss", "loss", self.lkd_loss)):
                if value is not None:
                    if key not in params:
                        raise CLIError(f"{flag}: this zqkernels.lkd takes no {key!r} argument")
                    kw[key] = value
            if "progress" in params:
                kw["progress"] = progress
            try:
                res = lkd(model_float, model, calib, **kw)
            except (ValueError, TypeError, NotImplementedError) as e:
                raise CLIError(f"LKD failed: {e}") from e
            times["lkd"] = time.perf_counter() - t
            _log_lkd(res, log)
        if self.lorc_rank:
            t = time.perf_counter()
            try:
                rep = zqkernels.lorc(model, model_float, rank=self.lorc_rank)
            except (ValueError, TypeError, NotImplementedError) as e:
                raise CLIError(f"LoRC failed: {e}") from e
            times["lorc"] = time.perf_counter() - t
            merged = sum(1 for r in rep.layers if len(r.get("parts", ())) > 1)
            log(
                f"LoRC rank {self.lorc_rank}: {len(rep.layers)} layers"
                + (f" ({merged} of them merged fused-block GEMMs, one rank-{self.lorc_rank} pair each)" if merged else "")
                + f", {rep.total_bytes} bytes added ({rep.relative:.2%} of {rep.weight_bytes} quantized weight "
                f"bytes, {rep.scale_bytes} scale bytes), {len(rep.skipped)} skipped"
            )
        del model_float
        return times


def _log_lkd(res: Any, log: Callable[[str], None]) -> None:
    """One line per distilled block (lkd returns a list of dicts), else whatever it returned."""
    if isinstance(res, list) and res and all(isinstance(r, dict) for r in res):
        log(f"LKD: {len(res)} blocks")
        for r in res:
            b, a = r.get("loss_before"), r.get("loss_after")
            loss = f"loss {b:.4g} -> {a:.4g}" if isinstance(b, float) and isinstance(a, float) else ""
            extra = " (reverted: worse after training)" if r.get("reverted") else ""
            secs = f", {_fmt_s(r['seconds'])}" if isinstance(r.get("seconds"), (int, float)) else ""
            log(f"  {r.get('name', r.get('layer', '?'))}: {loss}{extra}{secs}")
    elif res is not None:
        log(f"LKD: {res}")


def _calibration(conv: Conversion, args: argparse.Namespace, tok: Any, device: str) -> Optional[list[Any]]:
    if not conv.calibrated:
        return None
    if tok is None:
        raise CLIError("--calib needs the model's tokenizer, and none loads from MODEL_DIR")
    ids = _token_ids(tok, _read_text(args.calib, "--calib"))
    win = _windows(ids, conv.calib_window, conv.calib_samples, f"--calib {args.calib!r}")
    return [{"input_ids": w[None].to(device)} for w in win]


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
    cls = _model_class(root, kw, causal=False)
    build = cls.from_config if cls.__name__.startswith("Auto") else cls._from_config
    dt = _DTYPES[dtype]
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
    read; raises
    CLIError if the conversion would fail or the checkpoint cannot be written or read back. -> what
    was checked."""
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
            zqkernels.load_quantized(d, model=_ProbeModel() if isinstance(probe, _ProbeModel) else None)
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"scheme {conv.label}: the saved checkpoint cannot be loaded back yet: {e}") from e
    return what


# ------------------------------------------------------------------------------------------------
# quantize


def cmd_quantize(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    conv = Conversion(args)
    root, kw = _local_source(args.model_dir)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--out {args.out!r} is not empty (pass --overwrite to write into it)")
    if out.resolve() == root.resolve():
        raise CLIError("--out must not be the model's own directory")
    if args.calib:
        _read_text(args.calib, "--calib")  # fail now, not after loading
    device = _default_device(args.device)
    progress = sys.stderr.isatty()

    t = time.perf_counter()
    what = check_checkpoint(root, kw, args.dtype, conv)
    _say(f"checkpoint check ({conv.label}, on {what}): ok in {_fmt_s(time.perf_counter() - t)}")

    t = time.perf_counter()
    model, tok = load_float(args.model_dir, args.dtype, device, causal=False)
    t_load = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    _say(f"loaded {type(model).__name__} from {args.model_dir} ({n_params / 1e6:.1f}M parameters, "
         f"{str(dtype).replace('torch.', '')}, {device}) in {_fmt_s(t_load)}")

    calib = _calibration(conv, args, tok, device)
    _say(f"converting: {conv.label}" + (f" ({len(calib)} calibration samples of {conv.calib_window} tokens)" if calib else ""))
    times = conv.convert(model, calib, progress, _say)

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
    _say(f"saved to {out} ({size / 2**20:.1f} MiB of safetensors" + (", tokenizer" if tok is not None else ", no tokenizer") + ")")
    parts = ", ".join(f"{k} {_fmt_s(v)}" for k, v in times.items())
    _say(f"time: load {_fmt_s(t_load)}, {parts}; total {_fmt_s(time.perf_counter() - t0)}")
    return 0


# ------------------------------------------------------------------------------------------------
# eval


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch: int, device: str) -> tuple[float, int, float]:
    """(perplexity, predicted tokens, seconds) over non-overlapping windows (no context carried)."""
    import torch.nn.functional as F

    t = time.perf_counter()
    nll, count = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        x = windows[i : i + batch].to(device)
        out = model(input_ids=x)
        logits = getattr(out, "logits", None)
        if logits is None:
            raise CLIError(f"{type(model).__name__} returns no logits: eval needs a causal language model")
        logits = logits.float()
        nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    return math.exp(nll / count), count, time.perf_counter() - t


def _out_features(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return int(m.weight.shape[1])  # HF Conv1D: [in, out]


def _quantized_gemms(model_q: nn.Module) -> tuple[list[tuple[Any, list[str]]], list[str]]:
    """[(QLinear, [float module names whose outputs it computes, in row order])], notes."""
    from .algorithms.lkd import _FUSED_PARTS  # role -> the float modules merged into it, in row order
    from .nn import QLinear, QuantizedBlock

    out: list[tuple[Any, list[str]]] = []
    notes: list[str] = []
    blocks: list[str] = []
    for name, mod in model_q.named_modules():
        if any(name.startswith(b + ".") for b in blocks):
            continue
        pre = f"{name}." if name else ""
        if isinstance(mod, QuantizedBlock):
            blocks.append(name)
            parts = _FUSED_PARTS.get(type(mod).__name__)
            if parts is None:
                notes.append(f"{name}: fused {type(mod).__name__} not mapped to float modules")
                continue
            for role, subs in parts.items():
                lin = getattr(mod, role, None)
                if isinstance(lin, QLinear):
                    out.append((lin, [pre + s for s in subs]))
        elif isinstance(mod, QLinear):
            out.append((mod, [name]))
    return out, notes


@torch.no_grad()
def layer_errors(model_f: nn.Module, model_q: nn.Module, windows: torch.Tensor, device: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Relative output error ||Q(x) - F(x)|| / ||F(x)|| of every quantized Linear, on the inputs x
    the float model gives that Linear (hooks on the float model). One row per float Linear name, in
    the float model's module order."""
    gemms, notes = _quantized_gemms(model_q)
    floats = dict(model_f.named_modules())
    acc: dict[str, list[float]] = {}
    handles = []
    for qlin, names in gemms:
        mods = [floats.get(n) for n in names]
        if any(m is None or not hasattr(m, "weight") for m in mods):
            notes.append(f"{' | '.join(names)}: not found in the float model")
            continue
        sizes = [_out_features(m) for m in mods]
        if sum(sizes) != qlin.out_features:
            notes.append(f"{' | '.join(names)}: {sum(sizes)} float rows vs {qlin.out_features} quantized")
            continue
        state: dict[str, Any] = {"pending": None, "left": 0}
        for i, (n, m) in enumerate(zip(names, mods)):
            acc[n] = [0.0, 0.0]

            def hook(_m, inp, y, i=i, n=n, qlin=qlin, sizes=sizes, state=state):
                if state["left"] == 0:  # first part of this GEMM in this forward: run the quantized one
                    state["pending"] = list(qlin(inp[0]).split(sizes, dim=-1))
                    state["left"] = len(sizes)
                yq = state["pending"][i].float()
                state["left"] -= 1
                yf = y.float()
                acc[n][0] += float(((yq - yf) ** 2).sum())
                acc[n][1] += float((yf**2).sum())

            handles.append(m.register_forward_hook(hook))
    try:
        for w in windows:
            model_f(input_ids=w[None].to(device))
    finally:
        for h in handles:
            h.remove()
    scheme_of = {n: q.scheme for q, names in gemms for n in names}
    order = {n: i for i, n in enumerate(floats)}
    rows = [
        {"module": n, "scheme": scheme_of[n], "rel_err": math.sqrt(e / r) if r > 0 else 0.0}
        for n, (e, r) in sorted(acc.items(), key=lambda kv: order.get(kv[0], 0))
    ]
    return rows, notes


def plot_errors(rows: list[dict[str, Any]], path: str, title: str) -> Optional[str]:
    """Write a PNG bar chart of the per-layer errors; -> None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot written"
    kinds = sorted({r["module"].rsplit(".", 1)[-1] for r in rows})
    cmap = plt.get_cmap("tab10")
    color = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(min(max(7.0, 0.06 * len(rows) + 4), 30), 4.5))
    xs = range(len(rows))
    ax.bar(xs, [max(r["rel_err"], 1e-12) for r in rows], color=[color[r["module"].rsplit(".", 1)[-1]] for r in rows], width=0.85)
    ax.set_yscale("log")
    # one x tick per transformer layer: at its first quantized Linear, labelled by the layer index
    ticks, labels, seen = [], [], set()
    for i, r in enumerate(rows):
        idx = next((p for p in r["module"].split(".") if p.isdigit()), None)
        if idx is not None and idx not in seen:
            seen.add(idx)
            ticks.append(i)
            labels.append(idx)
    if ticks:
        step = max(1, len(ticks) // 32)
        ax.set_xticks(ticks[::step], labels[::step], fontsize=7)
        ax.set_xlabel("quantized Linears in model order (ticks: the first Linear of each layer, by index)")
    else:
        ax.set_xlabel("quantized Linears in model order")
    ax.set_ylabel("relative output error")
    ax.set_title(title + "\n||Q(x) - F(x)|| / ||F(x)|| on the float model's inputs to each Linear", fontsize=9)
    ax.set_xlim(-1, len(rows))
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=color[k]) for k in kinds], labels=kinds,
              fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _conversion_of_checkpoint(path: str) -> dict[str, Any]:
    """What `quantize` recorded in CONVERSION_FILE ({} for a checkpoint written otherwise)."""
    try:
        d = json.loads((Path(path) / CONVERSION_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _scheme_of_checkpoint(model: nn.Module, smoothed: Optional[float] = None) -> str:
    """The schemes of the loaded model's QLinears, e.g. "w4a8+w8a8 (checkpoint)", or
    "w8a8 + smooth a=0.5 (checkpoint)" for one `quantize --smooth 0.5` wrote."""
    from .nn import QLinear

    schemes = sorted({m.scheme for m in model.modules() if isinstance(m, QLinear)})
    smooth = f" + smooth a={smoothed:g}" if smoothed is not None else ""
    return ("+".join(schemes) or "no QLinear") + smooth + " (checkpoint)"


def cmd_eval(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    text = _read_text(args.text, "--text")
    quantized_dir = is_quantized_dir(args.model_dir)
    if quantized_dir:
        conversion = [f for f, given in (
            ("--scheme", args.scheme is not None), ("--group-size", args.group_size is not _UNSET),
            ("--level", args.level is not None), ("--smooth", args.smooth is not None), ("--gptq", args.gptq),
            ("--lorc-rank", args.lorc_rank is not None),
            ("--lkd-steps", args.lkd_steps is not None), ("--lkd-lr", args.lkd_lr is not None),
            ("--lkd-loss", args.lkd_loss is not None), ("--calib", args.calib is not None),
            ("--calib-window", args.calib_window is not None), ("--calib-samples", args.calib_samples is not None),
        ) if given]
        if conversion:
            raise CLIError(f"MODEL_DIR {args.model_dir!r} is already quantized: {' / '.join(conversion)} "
                           f"{_verb(conversion)} to a float MODEL_DIR (converted here)")
        if args.float_dir is not None:
            _local_source(args.float_dir, "--float")
        else:
            # what only the float reference uses
            if args.dtype != "auto":
                raise CLIError("--dtype applies to the float model (a float MODEL_DIR or --float), and none is given")
            if args.error_windows is not None:
                raise CLIError("--error-windows: the per-layer error needs the float model (--float MODEL_DIR)")
        conv = None
    else:
        _local_source(args.model_dir)
        if args.float_dir is not None:
            raise CLIError("--float applies when MODEL_DIR is a quantized checkpoint (written by `quantize`)")
        if args.scheme is None:
            args.scheme = "w8a8"
        conv = Conversion(args)
    device = _default_device(args.device)
    progress = sys.stderr.isatty()
    res: dict[str, Any] = {"model_dir": str(args.model_dir), "text": str(args.text), "window": args.window, "device": device}

    # the tokenizer and the windows first: a text too short fails before any model is loaded
    if quantized_dir:
        tok = load_tokenizer(Path(args.model_dir), {})
        if tok is None and args.float_dir is not None:
            tok = load_tokenizer(*_local_source(args.float_dir, "--float"))
    else:
        tok = load_tokenizer(*_local_source(args.model_dir))
    if tok is None:
        raise CLIError("no tokenizer loads from MODEL_DIR" + (" or --float" if quantized_dir else ""))
    ids = _token_ids(tok, text)
    windows = _windows(ids, args.window, args.max_windows, f"--text {args.text!r}")
    error_windows = args.error_windows or ERROR_WINDOWS
    if error_windows > windows.shape[0]:
        raise CLIError(f"--error-windows {error_windows} is more than the {windows.shape[0]} windows evaluated")
    res["tokens"] = int(ids.numel())
    res["windows"] = int(windows.shape[0])

    model_f = None
    smoothed = None
    if quantized_dir:
        import zqkernels

        t = time.perf_counter()
        try:
            model_q = zqkernels.load_quantized(args.model_dir)
        except (NotImplementedError, ValueError) as e:
            raise CLIError(f"load_quantized: {e}") from e
        model_q = model_q.to(device).eval()
        smoothed = _conversion_of_checkpoint(args.model_dir).get("smooth")
        if isinstance(smoothed, bool) or not isinstance(smoothed, (int, float)):
            smoothed = None
        label = _scheme_of_checkpoint(model_q, smoothed)
        _say(f"loaded quantized {type(model_q).__name__} from {args.model_dir} in {_fmt_s(time.perf_counter() - t)}")
        if args.float_dir is not None:
            t = time.perf_counter()
            model_f, _ = load_float(args.float_dir, args.dtype, device, causal=True, what="--float")
            _say(f"loaded float {type(model_f).__name__} from {args.float_dir} in {_fmt_s(time.perf_counter() - t)}")
        res["convert_s"] = None
    else:
        t = time.perf_counter()
        model_f, _ = load_float(args.model_dir, args.dtype, device, causal=True)
        _say(f"loaded {type(model_f).__name__} from {args.model_dir} in {_fmt_s(time.perf_counter() - t)}")
        calib = _calibration(conv, args, tok, device)
        if calib is not None and Path(args.calib).resolve() == Path(args.text).resolve():
            _say("note: the calibration text is the evaluation text (not held out)")
        # with --smooth: a smoothed float copy, quantized copy of that; it is LKD's teacher / LoRC's
        # reference and the per-layer error's reference (its Linears' inputs are the smoothed ones the
        # quantized Linears expect); the perplexity reference stays the model as loaded
        t = time.perf_counter()
        times: dict[str, float] = {}
        model_ref = model_f
        if conv.smooth is not None:
            model_ref = copy.deepcopy(model_f)
            times["smooth"] = conv.smooth_float(model_ref, calib, lambda s: None)
        model_q = copy.deepcopy(model_ref)
        times.update(conv.convert(model_q, calib, progress, lambda s: None, float_model=model_ref))
        res["convert_s"] = time.perf_counter() - t
        label = conv.label
        what = "smoothed and quantized a copy" if conv.smooth is not None else "quantized a copy"
        _say(f"{what}: {label} in {_fmt_s(res['convert_s'])} ({', '.join(f'{k} {_fmt_s(v)}' for k, v in times.items())})")
    res["scheme"] = label
    _say(f"text: {ids.numel()} tokens; {windows.shape[0]} non-overlapping windows of {args.window}")

    table = []
    if model_f is not None:
        ppl, cnt, s = perplexity(model_f, windows, args.batch, device)
        table.append(("float", ppl, s))
        res["float"] = {"ppl": ppl, "seconds": s}
    ppl, cnt, s = perplexity(model_q, windows, args.batch, device)
    table.append((label, ppl, s))
    res["quantized"] = {"ppl": ppl, "seconds": s}
    res["predicted_tokens"] = cnt
    _say("")
    vs = model_f is not None
    _say(f"{'model':<36} {'perplexity':>10} " + (f"{'vs float':>9} " if vs else "") + f"{'time':>9}")
    for name, p, s in table:
        rel = f"{(p / table[0][1] - 1) * 100:+.2f}%" if vs and name != "float" else ""
        _say(f"{name:<36} {p:10.3f} " + (f"{rel:>9} " if vs else "") + f"{_fmt_s(s):>9}")
    _say(f"({cnt} predicted tokens per model)")

    if model_f is not None and quantized_dir and smoothed is not None:
        # its Linears' weights carry the smoothing factors: the --float model's inputs to them are not the
        # (smoothed) inputs they expect, so the per-layer error would be meaningless
        _say("")
        _say(f"per-layer error: skipped (the checkpoint was smoothed, quantize --smooth {smoothed:g}, and the --float "
             "model's Linear inputs are not smoothed; eval the float MODEL_DIR with --smooth --calib instead)")
        if args.plot:
            _say("plot: skipped (no per-layer error)")
    elif model_f is not None:
        t = time.perf_counter()
        ew = windows[:error_windows]
        ref = model_f if quantized_dir else model_ref
        rows, notes = layer_errors(ref, model_q, ew, device)
        res["layer_errors"] = rows
        res["layer_error_tokens"] = int(ew.numel())
        if rows:
            errs = sorted(r["rel_err"] for r in rows)
            worst = sorted(rows, key=lambda r: -r["rel_err"])[:5]
            _say("")
            src = "smoothed float" if ref is not model_f else "float"
            _say(f"per-layer relative output error ({len(rows)} quantized Linears, {ew.numel()} tokens of {src} "
                 f"inputs): median {errs[len(errs) // 2]:.4f}, max {errs[-1]:.4f} ({_fmt_s(time.perf_counter() - t)})")
            for r in worst:
                _say(f"  {r['module']:<50} {r['scheme']:<16} {r['rel_err']:.4f}")
        for n in notes:
            _say(f"  note: {n}")
        if args.plot:
            why = plot_errors(rows, args.plot, f"{Path(args.model_dir).name}: {label}, per-layer relative error") if rows else "no quantized Linear to plot"
            _say(f"plot: {why}" if why else f"plot written to {args.plot}")
    elif args.plot:
        _say("plot: skipped (the per-layer error needs the float model: --float MODEL_DIR)")
    res["total_s"] = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    _say(f"total time {_fmt_s(res['total_s'])}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run `quantize` or `eval`; a CLIError becomes one line on stderr and exit status 2.
    transformers' progress bars are off unless stderr is a terminal."""
    hf_log = None
    if not sys.stderr.isatty():
        try:
            import transformers.utils.logging as hf_log

            was = hf_log.is_progress_bar_enabled()
            hf_log.disable_progress_bar()
        except ImportError:
            hf_log = None
    try:
        return cmd_quantize(args) if args.command == "quantize" else cmd_eval(args)
    except CLIError as e:
        print(f"zqkernels {args.command}: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return 2
    finally:
        if hf_log is not None and was:
            hf_log.enable_progress_bar()
