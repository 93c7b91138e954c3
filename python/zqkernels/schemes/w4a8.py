"""Schemes "w4a8" and "w4a8-floatscale": INT4 group-wise weights x INT8 per-token activations
(Integer Scale, ``w4a8_gemm``; docs/W4A8.md). "w4a8" keeps integer group scales (the group sums are
combined in int32, one conversion to float at the end), "w4a8-floatscale" float32 ratios (the
baseline). Options: ``group_size`` and, for "w4a8", ``alpha`` (a power of two in [1, 2^15]). Shape
rules of the packed layout m16k32: out_features % 16 == 0, in_features % 64 == 0 and group_size
dividing in_features. The state is described in schemes/int_group.py.
"""

from __future__ import annotations

import torch

from ..reference.quantize import pack_int4, quantize_int4_group_ref, unpack_int4
from .base import register
from .compressed import FORMAT_PACKED, pack_ct
from .int_group import IntGroupScheme


class _W4A8Base(IntGroupScheme):
    bits = 4
    pads_rows = False  # packed rows: out_features % 16 == 0
    packed = ("INT4", "m16k32")

    def _weight_layout(self, rows, K):
        return (rows, K // 2), torch.uint8

    def _quantize_ref(self, w, g, alpha):
        return quantize_int4_group_ref(w, g, self.scale_kind, alpha)

    def _ct_weight(self, m, n):
        K = m.in_features
        codes = self.unpack_weight(m.weight_q.detach().cpu(), n, K)
        return {"weight_packed": pack_ct(codes), "weight_shape": torch.tensor([n, K], dtype=torch.int64)}, FORMAT_PACKED

    def unpack_weight(self, wq, out_features, in_features):
        return unpack_int4(wq, wq.shape[0], in_features)[:out_features]

    @classmethod
    def pack_weight(cls, codes):
        return pack_int4(codes)  # our layout m16k32

    ct_strategies = ("channel", "group")  # int4 per channel too


@register
class W4A8(_W4A8Base):
    name = "w4a8"
    description = "int8 per-token activations x int4 group-wise weights, int group scales"
    ct_layout = "int4 group / per-channel weights, format pack-quantized or int-quantized"
    fixed_scale = "int"
    loaded = ("alpha", "max_scale")


class _W4A8NoAlpha(_W4A8Base):
    """The INT4 formats without the integer scales' alpha option (float scales, zero points)."""

    option_names = ("group_size",)
    loaded = ()
    alpha = None


@register
class W4A8FloatScale(_W4A8NoAlpha):
    name = "w4a8-floatscale"
    description = "int8 per-token activations x int4 group-wise weights, float group scales"
    ct_layout = "int4 group / per-channel weights loaded with group_scales='float'"
    fixed_scale = "float"
