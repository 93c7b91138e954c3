"""Scheme "fp8": FP8 E4M3 per-token dynamic activations x FP8 E4M3 per-channel weights (docs/FP8.md).

State: ``weight_q`` float8_e4m3fn [Np, K], ``weight_scale`` float32 [Np], ``bias`` [Np] in the
model's dtype (or None). Forward: ``quantize_per_token(x, dtype=torch.float8_e4m3fn)`` then
``fp8_gemm`` (accurate accumulation) with the output in x's dtype (fp32 x: the GEMM writes bf16,
widened to fp32, and the bias is added in fp32). Rows padded to a multiple of 8 as for w8a8.
"""

from __future__ import annotations

import torch

from ..formats import GemmSpec
from ..ops import fp8_gemm
from ..reference.quantize import quantize_weight_fp8_ref
from .base import Scheme, register
from .compressed import ACT_FP8, FORMAT_FLOAT, ct_args, per_channel_tensors

_FP8 = torch.float8_e4m3fn
_SPEC = GemmSpec(act="fp8_e4m3", weight="fp8_e4m3", act_scale="token", weight_scale="channel")


@register
class FP8(Scheme):
    name = "fp8"
    description = "fp8 e4m3 per-token activations x fp8 e4m3 per-channel weights"
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

    def apply_quantized(self, m, xq, sx, dtype):
        buffers = m._buffers
        wq, sw, bias = buffers["weight_q"], buffers["weight_scale"], buffers["bias"]
        if dtype == torch.float32:
            # fp8_gemm writes bf16 / fp16 only: an fp32 model gets the bf16 GEMM output widened, with
            # the bias added in fp32. bf16's rounding (2^-9 relative) is far below the fp8 operands'
            # quantization error (E4M3: 2^-4 relative per element).
            y = fp8_gemm(xq, wq, sx, sw, None, out_dtype=torch.bfloat16).float()
            return y if bias is None else y.add_(bias.float())
        if bias is not None and bias.dtype != dtype:
            bias = bias.to(dtype)
        return fp8_gemm(xq, wq, sx, sw, bias, out_dtype=dtype)

    def fake_weight(self, w):
        q, s = quantize_weight_fp8_ref(w)
        return q.float() * s.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        spec = {"format": FORMAT_FLOAT, "weights": ct_args(8, "float", "channel"), "input_activations": ACT_FP8}
        return per_channel_tensors(m), spec, {"scheme": self.name}
