"""The conversion check quantize and eval run before reading any weight: the conversion asked for
(smoothing / GPTQ / LoRC / one LKD step) on a one-layer copy of the model's architecture, built from
its config alone (config.json, or a .gguf file's metadata through transformers' config loading), with
random weights; a two-Linear stand-in where no such copy can be built. An option the library or the
architecture does not support (e.g. --smooth on a model with no block smooth_ knows, a group size
that does not divide a layer) then fails in seconds, not after the model has loaded."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .common import DTYPES, CLIError
from .convert import Conversion
from .load import model_class

__all__ = ["ProbeModel", "check_conversion"]


class ProbeBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.o_proj = nn.Linear(256, 256)
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.up_proj(self.self_attn.o_proj(x))


class ProbeModel(nn.Module):
    """The stand-in for a model whose one-layer copy cannot be built: two Linears in one block, and
    an lm_head (float unless --lm-head selects it)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ProbeBlock()])
        self.lm_head = nn.Linear(256, 256, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.layers[0](x))


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


def check_conversion(root: Path, kw: dict[str, Any], dtype: str, conv: Conversion) -> tuple[nn.Module, str]:
    """Run `conv` on a one-layer copy of the model (root, kw: ``load.local_source``'s) or the
    stand-in; raises CLIError naming the scheme and what it was found on. -> (the converted copy,
    what it is in words)."""
    probe, what = _small_copy(root, kw, dtype), "a one-layer copy of the model"
    if probe is None:
        probe, what = ProbeModel(), "a two-Linear stand-in"
    # the same steps (smoothing / GPTQ / LoRC / LKD) on the small copy: LoRC's rank capped to its
    # layers, one LKD step, random token ids as calibration data
    small = copy.copy(conv)
    stand_in = isinstance(probe, ProbeModel)
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
    return probe, what
