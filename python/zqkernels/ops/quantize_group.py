"""Per-token-group FP8 E4M3 quantization: ``quantize_per_token_group`` (kernel: src/cuda/row_quant.cu,
its group output; reference: ``zqkernels.reference.token_group``).

Block-scaled FP8 activations as DeepSeek-V3 / Qwen3-FP8 use them: each row of x [M, K] is cut into
groups of ``group_size`` consecutive channels, and each group is quantized as
``quantize_per_token(x, dtype=torch.float8_e4m3fn)`` quantizes a row (docs/FP8.md). The scales come
M-major, the layout the blockwise FP8 GEMMs read (DeepGEMM, torch's blockwise ``_scaled_mm``):
float32 [M, K // group_size] with strides (1, Mp), Mp = round_up(M, 4), padding rows 0
(docs/FUSED.md, "Per-token-group FP8").

The ``torch.library`` custom op ``zqkernels::quantize_per_token_group`` has a fake implementation
(torch.compile, export, opcheck) returning the same strides; eager calls on plain tensors skip the
dispatcher (``_common.eager``). CPU tensors run the reference, CUDA tensors the kernel. The fused
row ops take the same option (``group_size=`` of ``zqkernels.ops.fused``).
"""

from __future__ import annotations

import torch

from .. import _ext
from ..reference.token_group import (
    TOKEN_GROUP_SIZES,
    empty_group_scales,
    quantize_per_token_group_ref,
    scale_rows_padded,
)
from . import _common as c

__all__ = ["quantize_per_token_group"]

_OP = "quantize_per_token_group"
_F8 = torch.float8_e4m3fn
_cuda_ready: set[int] = set()  # device indices that passed require_cuda_kernels


def _check_args(x: object, group_size: object, dtype: object) -> None:
    """Every check, one property at a time (precise errors)."""
    if dtype != _F8:
        raise TypeError(
            f"{_OP}: dtype must be torch.float8_e4m3fn (per-token-group scales are an FP8 recipe; "
            f"quantize_per_token gives int8 per token), got {dtype!r}"
        )
    if type(group_size) is not int or group_size not in TOKEN_GROUP_SIZES:
        raise ValueError(f"{_OP}: group_size must be one of {TOKEN_GROUP_SIZES}, got {group_size!r}")
    c.check_act_matrix(_OP, x)
    M, K = x.shape
    c.check_int32_sizes(_OP, M=M, K=K)
    if K % group_size != 0:
        raise ValueError(
            f"{_OP}: group_size {group_size} must divide K == {K} (K % {group_size} == {K % group_size}); pad x "
            f"with zero channels to a multiple of {group_size}"
        )


def _quantize_cuda(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on CUDA; x and group_size already checked."""
    idx = x.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels(_OP, x.device)
        _cuda_ready.add(idx)
    M, K = x.shape
    xq = x.new_empty((M, K), dtype=_F8)
    sx = empty_group_scales(x, M, K // group_size)
    if M == 0 or K == 0:
        return xq, sx
    _ext._C.quantize_per_token(
        x.data_ptr(), c.DTYPE_CODE[x.dtype], x.stride(0), xq.data_ptr(), sx.data_ptr(), M, K, idx,
        c.current_stream(idx), 1, group_size, scale_rows_padded(M),
    )
    return xq, sx


def _impl(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dtype already checked."""
    if (
        x.is_cuda and x.dtype in c.DTYPE_CODE and x.dim() == 2 and c.has_row_layout(x)
        and type(group_size) is int and group_size in TOKEN_GROUP_SIZES and x.shape[1] % group_size == 0
        and x.shape[0] <= c.INT32_MAX and x.shape[1] <= c.INT32_MAX
    ):  # the common call in a few reads; anything unusual takes the full checks (precise errors)
        return _quantize_cuda(x, group_size)
    _check_args(x, group_size, _F8)
    if x.is_cuda:
        return _quantize_cuda(x, group_size)
    if x.is_meta:  # shape inference only
        M, K = x.shape
        return x.new_empty((M, K), dtype=_F8), empty_group_scales(x, M, K // group_size)
    if x.device.type != "cpu":
        c.require_cuda_kernels(_OP, x.device)  # raises: names the device type
    return quantize_per_token_group_ref(x, group_size)


@torch.library.custom_op(
    "zqkernels::quantize_per_token_group",
    mutates_args=(),
    schema="(Tensor x, int group_size=128, ScalarType dtype=float8_e4m3fn) -> (Tensor, Tensor)",
)
def _quantize_per_token_group_op(
    x: torch.Tensor, group_size: int = 128, dtype: torch.dtype = _F8
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(x, group_size, dtype)
    return _impl(x, group_size)


@_quantize_per_token_group_op.register_fake
def _quantize_per_token_group_fake(
    x: torch.Tensor, group_size: int = 128, dtype: torch.dtype = _F8
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_args(x, group_size, dtype)
    if x.device.type not in ("cpu", "meta"):
        c.require_cuda_kernels(_OP, x.device)
    M, K = x.shape
    return x.new_empty((M, K), dtype=_F8), empty_group_scales(x, M, K // group_size)


_op = torch.ops.zqkernels.quantize_per_token_group.default


def quantize_per_token_group(
    x: torch.Tensor, group_size: int = 128, dtype: torch.dtype = _F8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group FP8 E4M3 quantization: x [M, K] -> (xq float8_e4m3fn [M, K], sx float32
    [M, K // group_size]).

    Group j of row m is ``x[m, j*g:(j+1)*g]`` (g = group_size, one of 32, 64, 128, dividing K):
    ``sx[m, j] = amax / 448`` and ``xq = fp8(x * (448 / amax))``, the fp32 product rounded to
    nearest even and saturated to +-448, exactly ``quantize_per_token(..., dtype=torch.float8_e4m3fn)``
    per group (an all-zero group gives sx = 0 and xq = 0; groups with amax < 2^-64 are prescaled by
    2^64 first). sx is M-major: strides (1, Mp) with Mp = round_up(M, 4), a view of a [K // g, Mp]
    buffer whose padding rows are 0 (the blockwise FP8 GEMMs' layout). x is bf16, fp16 or fp32 with
    unit stride along K (rows may be strided). A NaN/Inf in a group gives a NaN/Inf scale for that
    group (its codes are unspecified). CPU tensors run ``quantize_per_token_group_ref``.
    """
    if c._debug_checks:
        c.check_finite(_OP, "x", x)
    if dtype is not _F8 or not isinstance(x, torch.Tensor):
        _check_args(x, group_size, dtype)  # raises
    if c.eager(x):
        return _impl(x, group_size)
    return _op(x, group_size, dtype)
