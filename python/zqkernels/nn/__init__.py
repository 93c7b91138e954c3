"""Modules: QLinear (a drop-in nn.Linear replacement that delegates to a per-scheme handler), the
fused quantized transformer blocks, and whole-model conversion (quantize_model, and
the torchao-style quantize_ with config objects)."""

from __future__ import annotations

from .blocks import LEVELS, ROLES, QBertLayer, QGPT2Block, QLlamaDecoderLayer, QuantizedBlock
from .checkpoint import load_quantized, save_quantized
from .config import (
    ZEROQUANT_W4_8,
    ConversionSummary,
    FP8Config,
    QuantConfig,
    W4A8Config,
    W4A8FPConfig,
    W8A8Config,
    W8A8GroupConfig,
    quantize_,
)
from .convert import conversion_report, quantize_model
from .linear import SCHEMES, QLinear
from .lorc import LoRCReport, apply_lorc, lorc

__all__ = [
    "QLinear",
    "lorc",
    "apply_lorc",
    "LoRCReport",
    "quantize_model",
    "conversion_report",
    "save_quantized",
    "load_quantized",
    "quantize_",
    "QuantConfig",
    "W8A8Config",
    "W8A8GroupConfig",
    "FP8Config",
    "W4A8Config",
    "W4A8FPConfig",
    "ZEROQUANT_W4_8",
    "ConversionSummary",
    "SCHEMES",
    "LEVELS",
    "ROLES",
    "QuantizedBlock",
    "QBertLayer",
    "QLlamaDecoderLayer",
    "QGPT2Block",
]
