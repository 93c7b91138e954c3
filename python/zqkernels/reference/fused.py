"""Reference of the fused row-op + quantization kernels (src/cuda/row_quant.cu), in torch.

Same three stages as the kernel (docs/FUSED.md):
1. the op's input value per element, rounded to x's dtype as the unfused torch sequence stores it
   (the residual sum, GeLU(x + bias), SiLU(gate) * up; plain x otherwise);
2. RMS / layer normalisation in fp32 with fp32 weight and bias (norm ops only);
3. token-wise INT8 quantization of the fp32 result, exactly as ``quantize_per_token_ref``.

Returns ``(q int8 [M, K], s float32 [M], r)`` where r is the residual output (the sum, or the
normalised row rounded to x's dtype) or None.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..formats import FP8_E4M3_MAX
from .quantize import QMAX, _quantize_rows

__all__ = ["row_quant_ref", "row_output_ref", "ROW_OPS", "GATED_OPS", "RESIDUAL_MODES"]

# Codes shared with zq::RowOp / zq::ResidualMode (src/cuda/zq_kernels.h).
ROW_OPS = {"identity": 0, "rmsnorm": 1, "layernorm": 2, "gelu": 3, "gelu_tanh": 4, "silu_mul": 5, "gelu_mul": 6,
           "gelu_tanh_mul": 7}
#: The gated ops: x = [gate | up] (2K wide) -> act(gate) * up (SwiGLU; GeGLU with erf or tanh GeLU).
GATED_OPS = frozenset({"silu_mul", "gelu_mul", "gelu_tanh_mul"})
RESIDUAL_MODES = {"none": 0, "sum": 1, "normed": 2}


def _gelu_erf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * (1.0 + torch.erf(v * (1.0 / math.sqrt(2.0))))


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v * v * v)))


def row_quant_ref(
    op: str,
    x: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 0.0,
    residual_mode: str = "none",
    *,
    dtype: torch.dtype = torch.int8,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """op: one of ROW_OPS; x [M, K] (the GATED_OPS: [M, 2K]); residual [M, K] (norm ops); weight / bias
    [K] (any float dtype, used in fp32); residual_mode: 'none' | 'sum' | 'normed'; dtype: the
    quantized output, int8 (qmax 127) or float8_e4m3fn (qmax 448, docs/FP8.md)."""
    y, r_out = row_output_ref(op, x, residual, weight, bias, eps, residual_mode)
    if dtype == torch.float8_e4m3fn:
        q, s = _quantize_rows(y, FP8_E4M3_MAX, fp8=True)
    elif dtype == torch.int8:
        q, s = _quantize_rows(y, QMAX[8])
    else:
        raise TypeError(f"row_quant_ref: dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype!r}")
    return q, s, r_out


def row_output_ref(
    op: str,
    x: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 0.0,
    residual_mode: str = "none",
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Stages 1 and 2 of ``row_quant_ref`` (same arguments): (y float32 [M, K], the row the
    quantizer reads, unrounded; the residual output or None). The per-token-group quantization
    (reference/token_group.py) quantizes this y by groups."""
    if op not in ROW_OPS:
        raise ValueError(f"row_quant_ref: op must be one of {sorted(ROW_OPS)}, got {op!r}")
    dt = x.dtype
    xf = x.float()
    if op in GATED_OPS:
        K = x.shape[1] // 2
        g, u = xf[:, :K], xf[:, K:]
        a = g * torch.sigmoid(g) if op == "silu_mul" else _gelu_erf(g) if op == "gelu_mul" else _gelu_tanh(g)
        v = (a * u).to(dt)
    elif op in ("gelu", "gelu_tanh"):
        t = xf + (bias.float() if bias is not None else 0.0)
        v = (_gelu_erf(t) if op == "gelu" else _gelu_tanh(t)).to(dt)
    elif residual is not None:
        v = (xf + residual.float()).to(dt)
    else:
        v = x
    vf = v.float()
    r_out: Optional[torch.Tensor] = v if residual_mode == "sum" else None
    if op in ("rmsnorm", "layernorm"):
        K = vf.shape[1]
        w = weight.float()
        if op == "layernorm":
            mean = vf.sum(dim=1, keepdim=True) / K
            d = vf - mean
            rstd = torch.rsqrt((d * d).sum(dim=1, keepdim=True) / K + eps)
            y = d * rstd * w + (bias.float() if bias is not None else 0.0)
        else:
            rstd = torch.rsqrt((vf * vf).sum(dim=1, keepdim=True) / K + eps)
            y = vf * rstd * w
        if residual_mode == "normed":
            r_out = y.to(dt)
    else:
        y = vf
    return y, r_out
