"""The functional ops, one module per op stem (kernel source, binding, reference and tests share it)."""

from __future__ import annotations

from . import fused
from ._common import has_row_layout, set_debug_checks
from .fused import *  # noqa: F403 - the fused row ops, listed once in fused.__all__
from .gemm import BACKENDS, INT8_MAX_K, fp8_gemm, gemm_tiles, int8_gemm, resolve_gemm_backend
from .group import w8a8_group_gemm
from .quantize import dequantize, quantize_per_token, quantize_weight
from .w4a8 import fp4_to_fp8, w4a8_fp_gemm, w4a8_gemm

__all__ = [
    "quantize_per_token",
    "quantize_weight",
    "dequantize",
    "int8_gemm",
    "fp8_gemm",
    "w4a8_fp_gemm",
    "w4a8_gemm",
    "w8a8_group_gemm",
    "fp4_to_fp8",
    *fused.__all__,
    "resolve_gemm_backend",
    "gemm_tiles",
    "set_debug_checks",
    "has_row_layout",
    "BACKENDS",
    "INT8_MAX_K",
]
