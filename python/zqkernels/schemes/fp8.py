"""Scheme "fp8": FP8 E4M3 per-token dynamic activations x FP8 E4M3 per-channel weights (docs/FP8.md).

Forward: ``quantize_per_token(x, dtype=torch.float8_e4m3fn)`` then ``fp8_gemm`` (accurate
accumulation) with the output in x's dtype (fp32 x: the GEMM writes bf16, widened to fp32, and the
bias is added in fp32; ops/linear.py). State: schemes/per_channel.py (weight_q float8_e4m3fn, whose
dtype Module.to(dtype) must not change).
"""

from __future__ import annotations

import torch

from ..reference.quantize import quantize_weight_fp8_ref
from .base import register
from .compressed import FORMAT_FLOAT, FORMAT_NAIVE
from .per_channel import PerChannelScheme


@register
class FP8(PerChannelScheme):
    name = "fp8"
    description = "fp8 e4m3 per-token activations x fp8 e4m3 per-channel weights"
    ct_layout = "fp8 e4m3 per-channel weights, format float-quantized"
    act_dtype = torch.float8_e4m3fn
    act_fmt = "fp8"
    fixed_dtype_buffers = ("weight_q", "weight_scale")
    fmt = "fp8"
    weight_dtype = torch.float8_e4m3fn
    ct_kind = "float"
    ct_formats = (FORMAT_FLOAT, FORMAT_NAIVE)
    reference = staticmethod(quantize_weight_fp8_ref)
