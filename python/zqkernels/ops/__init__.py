"""The functional ops, one module per op stem (kernel source, binding, reference and tests share it)."""

from __future__ import annotations

from ._common import has_row_layout, set_debug_checks
from .fused import (
    add_layernorm_quant,
    add_rmsnorm_quant,
    bias_gelu_quant,
    layernorm_quant,
    rmsnorm_quant,
    silu_mul_quant,
)
from .gemm import BACKENDS, INT8_MAX_K, gemm_tiles, int8_gemm, resolve_gemm_backend
from .quantize import quantize_per_token, quantize_weight

__all__ = [
    "quantize_per_token",
    "quantize_weight",
    "int8_gemm",
    "rmsnorm_quant",
    "layernorm_quant",
    "add_rmsnorm_quant",
    "add_layernorm_quant",
    "bias_gelu_quant",
    "silu_mul_quant",
    "resolve_gemm_backend",
    "gemm_tiles",
    "set_debug_checks",
    "has_row_layout",
    "BACKENDS",
    "INT8_MAX_K",
]
