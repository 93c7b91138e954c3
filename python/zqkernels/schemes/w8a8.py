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
from ..ops import int8_gemm, quantize_per_token
from ..reference.quantize import quantize_weight_ref
from . import _fast as lin_ops
from .base import Scheme, register
from .compressed import ACT_INT8, FORMAT_INT, ct_args, per_channel_tensors

_SPEC = GemmSpec(act="int8", weight="int8", act_scale="token", weight_scale="channel")


def _bias_in(b: Any, dtype: torch.dtype) -> Any:
    return b if b is None or b.dtype == dtype else b.to(dtype)


@register
class W8A8(Scheme):
    name = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"

    def spec(self) -> GemmSpec:
        return _SPEC

    def weight_format(self) -> dict[str, Any]:
        return {"fmt": "int8"}

    def dequant_format(self) -> str:
        return "int8"

    def buffer_layout(self, rows, in_features):
        return {"weight_q": ((rows, in_features), torch.int8), "weight_scale": ((rows,), torch.float32)}

    def apply(self, m, x2):
        # Read straight from _buffers (Module.__getattr__ costs ~0.5 us per buffer).
        buffers = m._buffers
        wq = buffers["weight_q"]
        bias = _bias_in(buffers["bias"], x2.dtype)
        y = lin_ops.w8a8_linear_eager(x2, wq, buffers["weight_scale"], bias, m._cuda_shapes_ok)
        if y is not None:
            return y
        xq, sx = quantize_per_token(x2)
        return int8_gemm(xq, wq, sx, buffers["weight_scale"], bias, out_dtype=x2.dtype)

    def apply_quantized(self, m, xq, sx, dtype):
        buffers = m._buffers
        wq, sw = buffers["weight_q"], buffers["weight_scale"]
        bias = _bias_in(buffers["bias"], dtype)
        if m._cuda_shapes_ok:
            y = lin_ops.w8a8_gemm_eager(xq, wq, sx, sw, bias, dtype)
            if y is not None:
                return y
        return int8_gemm(xq, wq, sx, sw, bias, out_dtype=dtype)

    def fake_weight(self, w):
        q, s = quantize_weight_ref(w, 8)
        return q.float() * s.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        tensors = per_channel_tensors(m)
        spec = {"format": FORMAT_INT, "weights": ct_args(8, "int", "channel"), "input_activations": ACT_INT8}
        return tensors, spec, {"scheme": self.name}
