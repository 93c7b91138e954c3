"""Reference of the GEMM kernels (src/cuda/*_gemm_*.cuh)."""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["int8_gemm_ref", "ACTIVATIONS"]


# The epilogue activations in float64, in forms without cancellation (docs/SCALES.md). The textbook
# forms 0.5 v (1 + erf(v / sqrt(2))) and 0.5 v (1 + tanh(u)) cancel for negative v even in float64:
# 1 + erf(x) and 1 + tanh(u) are differences of numbers near 1 with a 1.1e-16 ulp, so they round
# to 0 for v < -8.3 (gelu) and v < -6.1 (gelu_tanh), and lose all their digits before that, while
# the true results (gelu(-10) = -7.6e-23, gelu_tanh(-8) = -3e-21, down to ~1e-40) are representable
# in bf16 and fp32 and the kernels compute them: a reference that returns 0 there disagreed with the
# kernels' bf16 outputs on 2-6% of the values of the GPU tests. Here gelu uses erfc(-v / sqrt(2))
# (== 1 + erf(v / sqrt(2))) and gelu_tanh sigmoid(2u) (== 0.5 (1 + tanh(u))), accurate to a few
# float64 ulps over the whole range, far below any output rounding. silu is v * sigmoid(v) (torch's
# sigmoid is 1 / (1 + exp(-v)): no cancellation). tests/test_gemm.py checks them against mpmath.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * torch.special.erfc(-v / math.sqrt(2.0))


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(2.0 * _SQRT_2_OVER_PI * (v + 0.044715 * v**3))


def _silu(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(v)


ACTIVATIONS = {"none": lambda v: v, "gelu": _gelu, "gelu_tanh": _gelu_tanh, "silu": _silu}


def int8_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    out_scale: Optional[float] = None,
) -> torch.Tensor:
    """y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n])), rounded once to out_dtype.

    sx is [M] or a single per-tensor value, sw [N] or a single value (any shape holding that many
    elements). The int8 products are summed in float64, which is exact (|acc| <= K * 128^2 << 2^53);
    scales, bias and the activation ('none', 'gelu', 'gelu_tanh', 'silu') are applied in float64
    too, so the only rounding is the final cast.

    out_dtype=torch.int8 quantizes with the static per-tensor scale out_scale (a float, taken as the
    float32 the kernels receive): q = clamp(rint(y / out_scale), -127, 127), round half to even,
    NaN -> 0 (as the kernels' float-to-int conversion), +-inf -> +-127.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"int8_gemm_ref: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if (out_dtype == torch.int8) != (out_scale is not None):
        raise ValueError(
            f"int8_gemm_ref: out_scale goes with out_dtype=torch.int8 and only there, got "
            f"out_dtype={out_dtype}, out_scale={out_scale!r}"
        )
    acc = xq.double() @ wq.double().t()
    sxd = sx.double().reshape(-1)
    swd = sw.double().reshape(-1)
    y = acc * (sxd[:, None] * swd[None, :])
    if bias is not None:
        y = y + bias.double()
    y = ACTIVATIONS[activation](y)
    if out_dtype != torch.int8:
        return y.to(out_dtype)
    s = float(torch.tensor(out_scale, dtype=torch.float32))  # the kernels' float32 scale
    q = torch.round(y / s)  # half to even
    q = torch.nan_to_num(q, nan=0.0).clamp(-127, 127)  # +-inf clamps to +-127
    return q.to(torch.int8)
