"""Scheme "w8a8-group": INT8 group-wise weights x INT8 per-token activations (``w8a8_group_gemm``;
docs/W4A8.md, "Group-wise W8A8"). Options: ``group_size``, ``scale`` "int" (default) or "float",
``alpha`` (integer scales; a power of two up to the INT8 bound of the group size: 32 -> 2048, 64 ->
1024, 128 -> 512, 256 -> 256). The weights are not packed: any out_features (rows padded to a
multiple of 8 as for w8a8); in_features % 16 == 0 and group_size dividing it (per channel:
in_features % 32 == 0, the GEMM's group size being a multiple of 32). The state is described in
schemes/int_group.py.
"""

from __future__ import annotations

import torch

from ..reference.quantize import INT8_MAX_GROUP, quantize_int8_group_ref
from .base import register
from .compressed import FORMAT_INT
from .int_group import GROUP_SIZES, IntGroupScheme


@register
class W8A8Group(IntGroupScheme):
    name = "w8a8-group"
    description = "int8 per-token activations x int8 group-wise weights"
    ct_layout = "int8 group weights, format int-quantized"
    option_names = ("group_size", "scale", "alpha")
    loaded = ("alpha", "max_scale")
    bits = 8

    @classmethod
    def _check_shape(cls, op, N, K, g):
        if K % 16 != 0:
            raise ValueError(
                f"{op}: scheme 'w8a8-group' needs in_features % 16 == 0 (16-byte rows), got a layer "
                f"[out_features, in_features] = [{N}, {K}]; leave this layer in float (quantize_model(skip=...), "
                "quantize_(module_configs={name: None})) or use another scheme"
            )
        super()._check_shape(op, N, K, g)
        if g == K and (K % 32 != 0 or K > INT8_MAX_GROUP):
            raise ValueError(
                f"{op}: scheme 'w8a8-group' per channel (group_size == in_features) needs in_features % 32 "
                f"== 0 and at most {INT8_MAX_GROUP} (the GEMM's group size is a multiple of 32 whose int32 sums "
                f"cannot overflow), got a layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in GROUP_SIZES if K % s == 0]}"
            )

    def _weight_layout(self, rows, K):
        return (rows, K), torch.int8

    def _quantize_ref(self, w, g, alpha):
        return quantize_int8_group_ref(w, g, self.scale_kind, alpha)

    def _ct_weight(self, m, n):
        return {"weight": m.weight_q[:n].detach().cpu().contiguous()}, FORMAT_INT
