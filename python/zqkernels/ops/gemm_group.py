"""The group-scaled recipes of the GEMM op (w4a8_fp, w4a8_int, int8_group_*): checks, then the CUDA
launch (ops/gemm_cuda.py) or the CPU reference. ops/gemm.py dispatches to them by spec."""

from __future__ import annotations

from typing import Optional

import torch

from ..reference.gemm import w4a8_fp_gemm_ref, w4a8_gemm_ref, w8a8_group_gemm_ref
from . import _common as c
from .gemm_checks import (
    W4A8_FP_PATHS,
    check_epilogue,
    check_group_args,
    check_path,
    check_w4a8_fp_args,
    check_w4a8_int_args,
    debug_pow2_range,
)
from .gemm_cuda import group_gemm_cuda, w4a8_fp_cuda, w4a8_int_cuda
from .gemm_fast import fast_ok_w4a8

_FP4_SG = (torch.int8, torch.float32)  # exponents (m1 / m2) or ratios (free)
_INT4_SG = (torch.int32, torch.float32, torch.int16)  # integer scales, float ratios, scales + zero points


__all__ = ["w4a8_fp_impl", "w4a8_int_impl", "group_impl"]


def _meta_or_cpu(op: str, xq: torch.Tensor, N: int, out_dtype) -> Optional[torch.Tensor]:
    """A checked call whose tensors are not on CUDA: the (empty) result on the meta device, None on
    the CPU (the caller runs its reference), the error for any other device type."""
    if xq.device.type == "meta":
        return xq.new_empty((xq.shape[0], N), dtype=out_dtype)
    if xq.device.type != "cpu":
        c.require_cuda_kernels(op, xq.device)
    return None


def w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", path="auto", tile=None) -> torch.Tensor:
    op = "w4a8_fp_gemm"
    check_path(op, path, W4A8_FP_PATHS)
    act = 0 if activation == "none" else check_epilogue(activation, out_dtype, None, op)[0]
    if fast_ok_w4a8(xq, wq, sx, sw, sg, bias, out_dtype, torch.float8_e4m3fn, _FP4_SG):
        g = xq.shape[1] // sg.shape[1]  # the common CUDA call, recognised in a few attribute reads
    else:
        g = check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype)
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, wq.shape[0], out_dtype)
        return meta if meta is not None else w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, g, bias, out_dtype,
                                                               activation=activation)
    if c._debug_checks:
        debug_pow2_range(op, sg)
    return w4a8_fp_cuda(op, xq, wq, sx, sw, sg, bias, out_dtype, act, g, path, tile)


def w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None,
                   path="auto", tile=None) -> torch.Tensor:
    op = "w4a8_gemm"
    check_path(op, path)
    act = 0 if activation == "none" else check_epilogue(activation, out_dtype, None, op)[0]
    if fast_ok_w4a8(xq, wq, sx, sw, sg, bias, out_dtype, torch.int8, _INT4_SG, max_scale):
        g = xq.shape[1] // sg.shape[1]  # the common CUDA call, recognised in a few attribute reads
    else:
        g = check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, wq.shape[0], out_dtype)
        return meta if meta is not None else w4a8_gemm_ref(xq, wq, sx, sw, sg, bias, out_dtype, activation=activation)
    return w4a8_int_cuda(op, xq, wq, sx, sw, sg, bias, out_dtype, act, g, max_scale, path, tile)


def group_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None) -> torch.Tensor:
    op = "w8a8_group_gemm"
    act = 0 if activation == "none" else check_epilogue(activation, out_dtype, None, op)[0]
    check_group_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, wq.shape[0], out_dtype)
        if meta is not None:
            return meta
        return w8a8_group_gemm_ref(xq, wq, sx, sw, sg, bias, out_dtype, activation=activation)
    return group_gemm_cuda(op, xq, wq, sx, sw, sg, bias, out_dtype, act, max_scale, wmax=128)
