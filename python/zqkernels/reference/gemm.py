"""Reference of the GEMM kernels (src/cuda/*_gemm_*.cuh)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["int8_gemm_ref"]


def int8_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """y[m, n] = sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n]), rounded once to out_dtype.

    sx is [M] or a single per-tensor value, sw [N] or a single value (any shape holding that many
    elements). The int8 products are summed in float64, which is exact (|acc| <= K * 128^2 << 2^53);
    scales and bias are applied in float64 too, so the only rounding is the final cast.
    """
    acc = xq.double() @ wq.double().t()
    sxd = sx.double().reshape(-1)
    swd = sw.double().reshape(-1)
    y = acc * (sxd[:, None] * swd[None, :])
    if bias is not None:
        y = y + bias.double()
    return y.to(out_dtype)
