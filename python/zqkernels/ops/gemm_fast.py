"""The eager fast paths' check: the common valid CUDA call of a GEMM, recognised in a few attribute
reads instead of the full checks of ops/gemm_checks.py. False means "run the full checks", which
then either raise the precise error or accept a rarer valid layout; True must imply that the full
checks would pass.

    fast_ok_cuda    the row-wise GEMMs (int8_gemm, fp8_gemm)
    fast_ok_w4a8    the W4A8 GEMMs (w4a8_gemm, w4a8_fp_gemm)
"""

from __future__ import annotations

import torch

from . import _common as c
from .gemm_checks import INT4_MAX_SCALE, INT8_MAX_K, W4A8_INT_MAX_GROUP

__all__ = ["fast_ok_cuda", "fast_ok_w4a8"]

_I8 = torch.int8
_U8 = torch.uint8
_F32 = torch.float32
_FLOAT_SG = torch.float32
_INT_SG = torch.int32


def fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype, operand=_I8, max_k=INT8_MAX_K) -> bool:
    """The common valid CUDA call of a row-wise GEMM, recognised in a few attribute reads (1-D scales,
    contiguous operands or 16-aligned row strides). False means "run the full checks", which then
    either raise the precise error or accept a rarer valid layout."""
    if xq.dtype is not operand or wq.dtype is not operand or sx.dtype is not _F32 or sw.dtype is not _F32:
        return False
    if out_dtype is torch.bfloat16 or out_dtype is torch.float16 or out_dtype is _F32:
        bias_dtype, n_align = out_dtype, 8
    elif out_dtype is _I8 and operand is _I8:
        bias_dtype, n_align = _F32, 16  # int8 output: float32 bias, 16-byte rows of int8
    else:
        return False
    xs = xq.shape
    ws = wq.shape
    if len(xs) != 2 or len(ws) != 2:
        return False
    M, K = xs
    N = ws[0]
    if ws[1] != K or K % 16 or N % n_align or K > max_k or M > c.INT32_MAX or N > c.INT32_MAX or K == 0:
        return False
    xst = xq.stride()
    wst = wq.stride()
    if xst[1] != 1 or wst[1] != 1 or xst[0] < K or wst[0] < K or xst[0] % 16 or wst[0] % 16:
        return False
    return _fast_ok_rest(xq, wq, sx, sw, bias, bias_dtype, M, N)


def _fast_ok_rest(xq, wq, sx, sw, bias, bias_dtype, M: int, N: int) -> bool:
    """fast_ok_cuda's checks after the operands: 1-D contiguous scales of M / N (or one) values, a
    matching bias, everything on xq's CUDA device."""
    if sx.dim() != 1 or sw.dim() != 1 or sx.stride(0) != 1 or sw.stride(0) != 1:
        return False
    sn = sx.shape[0]
    wn = sw.shape[0]
    if (sn != M and sn != 1) or (wn != N and wn != 1):
        return False
    d = xq.get_device()
    if d < 0 or wq.get_device() != d or sx.get_device() != d or sw.get_device() != d:
        return False
    if bias is not None:
        if bias.dtype is not bias_dtype or bias.dim() != 1 or bias.shape[0] != N or bias.stride(0) != 1:
            return False
        if bias.get_device() != d:
            return False
    return True


def fast_ok_w4a8(xq, wq, sx, sw, sg, bias, out_dtype, operand, sg_dtypes: tuple, max_scale=None) -> bool:
    """The common valid CUDA call of a W4A8 GEMM (contiguous operands, group scales [N, G] of a group
    size that is a multiple of 32 dividing K, sg contiguous on the same device), recognised in a few
    attribute reads; False: run the full checks (check_w4a8_int_args / check_w4a8_fp_args). max_scale
    (w4a8_gemm's integer-scale bound) passes as a plain int in [1, INT4_MAX_SCALE] with int32 sg."""
    if out_dtype is not torch.bfloat16 and out_dtype is not torch.float16 and out_dtype is not _F32:
        return False
    if xq.dtype is not operand or wq.dtype is not _U8 or sx.dtype is not _F32 or sw.dtype is not _F32:
        return False
    if sg.dtype not in sg_dtypes:
        return False
    if max_scale is not None and (type(max_scale) is not int or sg.dtype is not _INT_SG
                                  or not 1 <= max_scale <= INT4_MAX_SCALE):
        return False  # the full checks raise the precise error (a bool, a float, float scales...)
    xs, ws, gs = xq.shape, wq.shape, sg.shape
    if len(xs) != 2 or len(ws) != 2 or len(gs) != 2:
        return False
    M, K = xs
    N, G = gs
    if ws[0] != N or 2 * ws[1] != K or N % 16 or K % 64 or not (0 < N <= c.INT32_MAX and 0 < K) or M > c.INT32_MAX:
        return False
    if G == 0 or K % G or (K // G) % 32 or (sg.dtype is _FLOAT_SG and K // G > W4A8_INT_MAX_GROUP):
        return False
    xst = xq.stride()
    if xst[1] != 1 or xst[0] < K or (M > 1 and xst[0] % 16) or not wq.is_contiguous() or not sg.is_contiguous():
        return False
    if sg.get_device() != xq.get_device():
        return False
    return _fast_ok_rest(xq, wq, sx, sw, bias, out_dtype, M, N)
