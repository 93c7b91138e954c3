"""Modules: QLinear (a drop-in nn.Linear replacement that delegates to its scheme object, zqkernels.schemes), the
fused quantized transformer blocks, and whole-model conversion (quantize_model, and
the torchao-style quantize_ with config objects). Nothing here imports ``zqkernels.algorithms``
(the model-level LoRC, ``lorc``, is ``zqkernels.algorithms.lorc``; ``apply_lorc`` is per layer)."""

from __future__ import annotations

from . import config as _config
from .blocks import LEVELS, ROLES, QBertLayer, QGPT2Block, QLlamaDecoderLayer, QuantizedBlock
from .checkpoint import load_quantized, save_quantized
from .config import *  # noqa: F403 - quantize_, its config classes and summary (config.__all__)
from .convert import conversion_report, quantize_model
from .linear import SCHEMES, QLinear
from .lorc import apply_lorc

__all__ = [
    "QLinear",
    "apply_lorc",
    "quantize_model",
    "conversion_report",
    "save_quantized",
    "load_quantized",
    *_config.__all__,
    "SCHEMES",
    "LEVELS",
    "ROLES",
    "QuantizedBlock",
    "QBertLayer",
    "QLlamaDecoderLayer",
    "QGPT2Block",
]
