"""Modules: QLinear (a drop-in nn.Linear replacement that delegates to a per-scheme handler), the
fused quantized transformer blocks, and whole-model conversion (quantize_model)."""

from __future__ import annotations

from .blocks import LEVELS, ROLES, QBertLayer, QGPT2Block, QLlamaDecoderLayer, QuantizedBlock
from .convert import conversion_report, quantize_model
from .linear import SCHEMES, QLinear

__all__ = [
    "QLinear",
    "quantize_model",
    "conversion_report",
    "SCHEMES",
    "LEVELS",
    "ROLES",
    "QuantizedBlock",
    "QBertLayer",
    "QLlamaDecoderLayer",
    "QGPT2Block",
]
