"""Temporary bridge to the eager W8A8 fast paths of ops (replaced by the ops layer's public seam)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..ops import _common as c
from ..ops.gemm import _int8_gemm_cuda, _plan
from ..ops.quantize import _cuda_ready, _quantize_cuda


def w8a8_linear_eager(x2, wq, sw, bias, shapes_ok: bool) -> Optional[torch.Tensor]:
    """quantize_per_token + int8_gemm on CUDA without dispatch, or None (caller takes the op path)."""
    if not (x2.is_cuda and shapes_ok and x2.shape[0] <= c.INT32_MAX and c.eager(x2, wq)):
        return None
    y = _scratch(x2, wq, sw, bias)
    if y is not None:
        return y
    xq, sx = _quantize_cuda(x2)
    return _int8_gemm_cuda(xq, wq, sx, sw, bias, x2.dtype, "auto", None)


def w8a8_gemm_eager(xq, wq, sx, sw, bias, dtype) -> Optional[torch.Tensor]:
    if xq.is_cuda and c.eager(xq, sx, wq):
        return _int8_gemm_cuda(xq, wq, sx, sw, bias, dtype, "auto", None)
    return None


def _scratch(x2, wq, sw, bias):
    M, K = x2.shape
    if M == 0 or K == 0:
        return None
    index = x2.get_device()
    if index not in _cuda_ready:
        return None
    stream = c.current_stream(index)
    N = wq.shape[0]
    dtype = x2.dtype
    kid, ws = _plan(index, x2, "auto", None, dtype, M, N, K)
    off_sx = (M * K + 15) // 16 * 16
    off_ws = off_sx + (4 * M + 15) // 16 * 16
    base = c.scratch_ptr(index, stream, off_ws + ws, x2)
    if base == 0:
        return None
    C = _ext._C
    C.quantize_per_token(x2.data_ptr(), c.DTYPE_CODE[dtype], x2.stride(0), base, base + off_sx, M, K, index, stream)
    out = x2.new_empty((M, N), dtype=dtype)
    C.gemm_run(
        kid, base, K, wq.data_ptr(), K, base + off_sx, sw.data_ptr(),
        0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        base + off_ws if ws > 0 else 0, ws, index, stream,
    )
    return out
