"""Scheme "fp8": FP8 E4M3 per-token dynamic activations x FP8 E4M3 per-channel weights (docs/FP8.md).

State: ``weight_q`` float8_e4m3fn [Np, K], ``weight_scale`` float32 [Np], ``bias`` [Np] in the
model's dtype (or None). Forward: ``quantize_per_token(x, dtype=torch.float8_e4m3fn)`` then
``fp8_gemm`` (accurate accumulation) with the output in x's dtype (fp32 x: the GEMM writes bf16,
widened to fp32, and the bias is added in fp32). Rows padded to a multiple of 8 as for w8a8.
"""

from __future__ import annotations

import torch

from ..formats import GemmSpec
from ..reference.quantize import quantize_weight_fp8_ref
from .base import Scheme, register
from .compressed import (
    ACT_FP8,
    FORMAT_FLOAT,
    FORMAT_NAIVE,
    CTLayer,
    accepts_args,
    ct_args,
    per_channel_from_ct,
    per_channel_tensors,
)

_FP8 = torch.float8_e4m3fn
_SPEC = GemmSpec(act="fp8_e4m3", weight="fp8_e4m3", act_scale="token", weight_scale="channel")


@register
class FP8(Scheme):
    name = "fp8"
    description = "fp8 e4m3 per-token activations x fp8 e4m3 per-channel weights"
    ct_layout = "fp8 e4m3 per-channel weights, format float-quantized"
    act_dtype = _FP8
    act_fmt = "fp8"
    fixed_dtype_buffers = ("weight_q", "weight_scale")

    def spec(self):
        return _SPEC

    def weight_format(self):
        return {"fmt": "fp8"}

    def dequant_format(self):
        return "fp8"

    def buffer_layout(self, rows, in_features):
        return {"weight_q": ((rows, in_features), _FP8), "weight_scale": ((rows,), torch.float32)}

    def fake_weight(self, w):
        q, s = quantize_weight_fp8_ref(w)
        return q.float() * s.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        spec = {"format": FORMAT_FLOAT, "weights": ct_args(8, "float", "channel"), "input_activations": ACT_FP8}
        return per_channel_tensors(m), spec, {"scheme": self.name}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """fp8 per-channel (or per-tensor) weights, float-quantized, fp8 or no activations."""
        return accepts_args(group, fmt, bits=8, kind="float", strategies=("channel", "tensor"),
                            formats=(FORMAT_FLOAT, FORMAT_NAIVE), act_kind="float")

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        w, s = per_channel_from_ct(name, tensors, _FP8)
        N, K = w.shape
        return CTLayer(cls().for_layer("QLinear", N, K), N, K, {"weight_q": w, "weight_scale": s}, tensors.get("bias"))
