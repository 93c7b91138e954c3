"""The base of the per-channel 8-bit schemes (w8a8.py, fp8.py): 8-bit weights with one float scale
per output channel, per-token dynamic activations of the same kind. A subclass declares its element
format; everything else (buffers, quantization, fake-quant, the compressed-tensors layout) is here.

State: ``weight_q`` [Np, K] of ``weight_dtype``, ``weight_scale`` float32 [Np], ``bias`` [Np] in the
model's dtype (or None); Np = out_features padded to a multiple of 8 (zero rows)."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..formats import GemmSpec
from .base import Scheme
from .compressed import (
    ACT_FP8,
    ACT_INT8,
    CTLayer,
    accepts_args,
    ct_args,
    per_channel_from_ct,
    per_channel_tensors,
)

__all__ = ["PerChannelScheme"]


class PerChannelScheme(Scheme):
    fmt: ClassVar[str] = ""                    # quantize_weight's / dequantize's fmt ("int8", "fp8")
    weight_dtype: ClassVar[torch.dtype] = torch.int8
    ct_kind: ClassVar[str] = "int"             # compressed-tensors' "type" of weights and activations
    ct_formats: ClassVar[tuple[str, ...]] = ()  # the layouts it reads; the first is what it writes
    # the reference quantizer of a weight: w -> (q, per-row scale)
    reference: ClassVar[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]

    def spec(self) -> GemmSpec:
        f = "int8" if self.fmt == "int8" else "fp8_e4m3"
        return GemmSpec(act=f, weight=f, act_scale="token", weight_scale="channel")

    def weight_format(self) -> dict[str, Any]:
        return {"fmt": self.fmt}

    def dequant_format(self) -> str:
        return self.fmt

    def buffer_layout(self, rows, in_features):
        return {"weight_q": ((rows, in_features), self.weight_dtype), "weight_scale": ((rows,), torch.float32)}

    def fake_weight(self, w):
        q, s = type(self).reference(w)
        return q.float() * s.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        acts = ACT_INT8 if self.ct_kind == "int" else ACT_FP8
        spec = {"format": self.ct_formats[0], "weights": ct_args(8, self.ct_kind, "channel"), "input_activations": acts}
        return per_channel_tensors(m), spec, {"scheme": self.name}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """8-bit per-channel (or per-tensor) weights of the scheme's kind in one of its layouts, with
        activations of the same kind or none (weight-only)."""
        return accepts_args(group, fmt, bits=8, kind=cls.ct_kind, strategies=("channel", "tensor"),
                            formats=cls.ct_formats, act_kind=cls.ct_kind)

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        w, s = per_channel_from_ct(name, tensors, cls.weight_dtype)
        N, K = w.shape
        return CTLayer(cls().for_layer("QLinear", N, K), N, K, {"weight_q": w, "weight_scale": s}, tensors.get("bias"))
