"""Pure-torch references of every zqkernels kernel (docs/SCALES.md holds the math).

They run on any device, share no code with the kernels, and round exactly where the kernels round,
so tests can compare kernel against reference bit for bit (quantization) or to one output ulp
(GEMM). CPU tensors passed to the public ops run these very functions. One module per op stem,
mirroring ``zqkernels.ops``.
"""

from __future__ import annotations

from .block import dequantize_fp8_block_ref, fp8_block_gemm_ref, quantize_weight_fp8_block_ref
from .fused import row_quant_ref
from .gemm import fp8_gemm_ref, int8_gemm_ref, w4a8_fp_gemm_ref, w4a8_gemm_ref, w8a8_group_gemm_ref
from .quantize import (
    QMAX,
    e2m1_decode,
    e2m1_encode,
    fp4_lut_convert_model,
    fp4_to_fp8_float_ref,
    fp4_to_fp8_ref,
    group_alpha_max,
    group_max_scale,
    pack_fp4,
    pack_int4,
    quantize_fp4_ref,
    quantize_int4_group_ref,
    quantize_int8_group_ref,
    quantize_per_token_fp8_ref,
    quantize_per_token_ref,
    quantize_weight_fp8_ref,
    quantize_weight_ref,
    unpack_fp4,
    unpack_int4,
    w4a8_int_flush_steps,
    w4a8_stream_flush_steps,
)
from .token_group import quantize_per_token_group_ref, row_quant_group_ref
from .zero_point import dequantize_int4_zp_ref, pack_scale_zero, quantize_int4_zp_ref, split_scale_zero

__all__ = [
    "quantize_per_token_ref",
    "quantize_weight_ref",
    "quantize_per_token_fp8_ref",
    "quantize_weight_fp8_ref",
    "quantize_fp4_ref",
    "e2m1_encode",
    "e2m1_decode",
    "pack_fp4",
    "unpack_fp4",
    "fp4_to_fp8_ref",
    "fp4_to_fp8_float_ref",
    "fp4_lut_convert_model",
    "quantize_int4_group_ref",
    "pack_int4",
    "unpack_int4",
    "w4a8_int_flush_steps",
    "w4a8_stream_flush_steps",
    "quantize_int8_group_ref",
    "group_max_scale",
    "group_alpha_max",
    "int8_gemm_ref",
    "fp8_gemm_ref",
    "w4a8_fp_gemm_ref",
    "w4a8_gemm_ref",
    "w8a8_group_gemm_ref",
    "row_quant_ref",
    "row_quant_group_ref",
    "quantize_per_token_group_ref",
    "QMAX",
    "quantize_weight_fp8_block_ref",
    "dequantize_fp8_block_ref",
    "fp8_block_gemm_ref",
    "quantize_int4_zp_ref",
    "dequantize_int4_zp_ref",
    "pack_scale_zero",
    "split_scale_zero",
]
