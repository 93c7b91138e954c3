"""The functional ops, one module per op stem (kernel source, binding, reference and tests share it).

    quantize     quantize_per_token, quantize_weight, dequantize
    quantize_group  quantize_per_token_group (per-token-group FP8, M-major scales)
    gemm         the one GEMM op zqkernels::gemm keyed by the spec, its named wrappers (int8_gemm,
                 fp8_gemm, w4a8_fp_gemm, w4a8_gemm, w8a8_group_gemm) and gemm_options (tuning knobs);
                 gemm_checks (argument checks per recipe), gemm_cuda (CUDA launches)
    w4a8         fp4_to_fp8
    fused        the row ops fused with quantization (norms, activations)
    linear       the seam for the layers above: quantized_linear, gemm_quantized, activation_dtype
"""

from __future__ import annotations

from . import fused
from ._common import has_row_layout, set_debug_checks
from .attention import decode_attention
from .fused import *  # noqa: F403 - the fused row ops, listed once in fused.__all__
from .gemm import (
    BACKENDS,
    GEMM_SPECS,
    INT8_MAX_K,
    current_gemm_options,
    fp8_block_gemm,
    fp8_gemm,
    gemm_options,
    gemm_tiles,
    int8_gemm,
    resolve_gemm_backend,
    run_gemm,
    w4a8_fp_gemm,
    w4a8_gemm,
    w8a8_group_gemm,
)
from .linear import activation_dtype, gemm_quantized, quantized_linear
from .quantize import dequantize, quantize_per_token, quantize_weight
from .quantize_group import quantize_per_token_group
from .rope import rope_qkv
from .w4a8 import fp4_to_fp8

__all__ = [
    "quantize_per_token",
    "quantize_per_token_group",
    "quantize_weight",
    "dequantize",
    "int8_gemm",
    "fp8_block_gemm",
    "fp8_gemm",
    "w4a8_fp_gemm",
    "w4a8_gemm",
    "w8a8_group_gemm",
    "run_gemm",
    "fp4_to_fp8",
    "rope_qkv",
    "decode_attention",
    *fused.__all__,
    "quantized_linear",
    "gemm_quantized",
    "activation_dtype",
    "gemm_options",
    "current_gemm_options",
    "resolve_gemm_backend",
    "gemm_tiles",
    "set_debug_checks",
    "has_row_layout",
    "GEMM_SPECS",
    "BACKENDS",
    "INT8_MAX_K",
]
