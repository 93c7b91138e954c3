"""Scheme "w8a8": int8 per-token dynamic activations x int8 per-channel weights (ZeroQuant's W8A8).

Forward: ``quantize_per_token`` then ``int8_gemm`` (the eager path of ops/linear.py: two launches)
with the output in x's dtype; the int8 dot products are exact (int32), scales and bias are applied
in fp32 and rounded once to bf16 / fp16 / fp32. State: schemes/per_channel.py.
"""

from __future__ import annotations

import torch

from ..reference.quantize import quantize_weight_ref
from .base import register
from .compressed import FORMAT_INT, FORMAT_NAIVE, FORMAT_PACKED
from .per_channel import PerChannelScheme


@register
class W8A8(PerChannelScheme):
    name = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"
    ct_layout = "int8 per-channel weights, format int-quantized"
    fmt = "int8"
    weight_dtype = torch.int8
    ct_kind = "int"
    ct_formats = (FORMAT_INT, FORMAT_PACKED, FORMAT_NAIVE)  # packed: 8-bit packed weights (W8A16)
    reference = staticmethod(lambda w: quantize_weight_ref(w, 8))
