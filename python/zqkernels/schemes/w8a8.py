"""Scheme "w8a8": int8 per-token dynamic activations x int8 per-channel weights (ZeroQuant's W8A8).

State: ``weight_q`` int8 [Np, K], ``weight_scale`` float32 [Np], ``bias`` [Np] in the model's dtype
(or None); Np = out_features padded to a multiple of 8. Forward: ``quantize_per_token`` then
``int8_gemm`` with the output in x's dtype; the int8 dot products are exact (int32), scales and
bias are applied in fp32 and rounded once to bf16 / fp16 / fp32.
"""

from __future__ import annotations

from typing import Any

import torch

from ..formats import GemmSpec
from ..reference.quantize import quantize_weight_ref
from .base import Scheme, register
from .compressed import (
    ACT_INT8,
    FORMAT_INT,
    FORMAT_NAIVE,
    FORMAT_PACKED,
    CTLayer,
    accepts_args,
    ct_args,
    per_channel_from_ct,
    per_channel_tensors,
)

_SPEC = GemmSpec(act="int8", weight="int8", act_scale="token", weight_scale="channel")


@register
class W8A8(Scheme):
    name = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"
    ct_layout = "int8 per-channel weights, format int-quantized"

    def spec(self) -> GemmSpec:
        return _SPEC

    def weight_format(self) -> dict[str, Any]:
        return {"fmt": "int8"}

    def dequant_format(self) -> str:
        return "int8"

    def buffer_layout(self, rows, in_features):
        return {"weight_q": ((rows, in_features), torch.int8), "weight_scale": ((rows,), torch.float32)}

    def fake_weight(self, w):
        q, s = quantize_weight_ref(w, 8)
        return q.float() * s.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        tensors = per_channel_tensors(m)
        spec = {"format": FORMAT_INT, "weights": ct_args(8, "int", "channel"), "input_activations": ACT_INT8}
        return tensors, spec, {"scheme": self.name}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """int8 per-channel (or per-tensor) weights, int-quantized (or packed: W8A16), int8 or no activations."""
        return accepts_args(group, fmt, bits=8, kind="int", strategies=("channel", "tensor"),
                            formats=(FORMAT_INT, FORMAT_PACKED, FORMAT_NAIVE), act_kind="int")

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        w, s = per_channel_from_ct(name, tensors, torch.int8)
        N, K = w.shape
        return CTLayer(cls().for_layer("QLinear", N, K), N, K, {"weight_q": w, "weight_scale": s}, tensors.get("bias"))
