"""Modules: QLinear (a drop-in nn.Linear replacement that delegates to a per-scheme handler) and
whole-model conversion (quantize_model)."""

from __future__ import annotations

from .convert import quantize_model
from .linear import SCHEMES, QLinear

__all__ = ["QLinear", "quantize_model", "SCHEMES"]
