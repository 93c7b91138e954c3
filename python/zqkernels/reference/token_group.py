"""Reference of per-token-group FP8 E4M3 quantization (src/cuda/row_quant.cu, group output), in torch.

Block-scaled FP8 activations as DeepSeek-V3 / Qwen3-FP8 use them (docs/FUSED.md, "Per-token-group
FP8"): x [M, K] is cut into groups of ``group_size`` (g) consecutive channels per row; group j of
row m is ``x[m, j*g:(j+1)*g]`` and is quantized exactly as ``quantize_per_token(x, dtype=
torch.float8_e4m3fn)`` quantizes a row (docs/FP8.md): ``s = amax / 448`` (fp32 IEEE division),
``xq = e4m3(x * (448 / amax))`` (fp32 product, nearest even, saturated to +-448), an all-zero group
gives s = 0 and xq = 0, a group with amax < 2^-64 is prescaled by 2^64 (exact) first. The math is
``reference.quantize._quantize_rows`` applied to the [M * K / g, g] view: the same function the
per-token references use.

Scale layout (what the blockwise FP8 GEMMs read, like DeepGEMM and torch's blockwise
``_scaled_mm``): sx has shape [M, K // g] but is stored M-major, as the transpose of a [K // g, Mp]
buffer with Mp = round_up(M, 4): strides (1, Mp). The padding rows M .. Mp - 1 of each group's
column are 0 (``group_scale_layout`` / ``empty_group_scales`` build it; the kernel writes the same).

NaN / Inf: a group holding NaN or Inf gets a NaN / Inf scale (visible, like the per-token path);
its codes are 0 here and unspecified in the kernel (it writes the E4M3 NaN byte for those values).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import FP8_E4M3_MAX
from .fused import row_output_ref
from .quantize import _quantize_rows

__all__ = [
    "quantize_per_token_group_ref",
    "row_quant_group_ref",
    "quantize_groups_ref",
    "group_scale_layout",
    "empty_group_scales",
    "scale_rows_padded",
    "TOKEN_GROUP_SIZES",
]

# Group sizes the kernel takes: a group's channels sit on adjacent lanes of one warp (<= 32 vectors
# of 16 bytes: 128 bf16 / fp16 values need 16 lanes, 128 fp32 values 32). 128 is the DeepSeek-V3 /
# Qwen3-FP8 recipe; 32 and 64 come for free.
TOKEN_GROUP_SIZES = (32, 64, 128)


def scale_rows_padded(M: int) -> int:
    """Mp = round_up(M, 4): the column length of the M-major scale storage (16-byte TMA rows)."""
    return (M + 3) // 4 * 4


def empty_group_scales(like: torch.Tensor, M: int, groups: int) -> torch.Tensor:
    """An uninitialised float32 scale tensor [M, groups] in the M-major layout, strides (1, Mp), on
    like's device: a view of a [groups, Mp] buffer (the padding rows are inside the storage)."""
    Mp = scale_rows_padded(M)
    return like.new_empty((groups * Mp,), dtype=torch.float32).as_strided((M, groups), (1, Mp))


def group_scale_layout(s: torch.Tensor) -> torch.Tensor:
    """Scales [M, G] (any layout) -> the same values in the M-major layout, padding rows 0."""
    M, G = s.shape
    Mp = scale_rows_padded(M)
    buf = torch.zeros((G * Mp,), dtype=torch.float32, device=s.device)
    out = buf.as_strided((M, G), (1, Mp))
    out.copy_(s)
    return out


def quantize_groups_ref(y: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The group quantization of an fp32 (or any float) y [M, K] with group_size dividing K, unchecked:
    (q float8_e4m3fn [M, K], s float32 [M, K // group_size] M-major)."""
    M, K = y.shape
    G = K // group_size
    q, s = _quantize_rows(y.reshape(M * G, group_size), FP8_E4M3_MAX, fp8=True)
    return q.reshape(M, K), group_scale_layout(s.reshape(M, G))


def _check_group_size(op: str, group_size: object, K: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in TOKEN_GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be one of {TOKEN_GROUP_SIZES}, got {group_size!r}")
    if K % group_size != 0:
        raise ValueError(
            f"{op}: group_size {group_size} must divide K == {K} (K % {group_size} == {K % group_size}); "
            f"pad x with zero channels to a multiple of {group_size}"
        )
    return group_size


def _check_fp8(op: str, dtype: object) -> None:
    if dtype != torch.float8_e4m3fn:
        raise TypeError(
            f"{op}: per-token-group quantization is FP8 E4M3 only: dtype must be torch.float8_e4m3fn, "
            f"got {dtype!r}"
        )


def quantize_per_token_group_ref(
    x: torch.Tensor, group_size: int = 128, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group FP8 E4M3 quantization of activations (module docstring).

    x: [M, K] float (bf16 / fp16 / fp32), any device; group_size one of ``TOKEN_GROUP_SIZES``
    (32, 64, 128) dividing K; dtype torch.float8_e4m3fn (the only format). Returns (xq
    float8_e4m3fn [M, K] contiguous, sx float32 [M, K // group_size] with strides (1, Mp), Mp =
    round_up(M, 4), padding rows 0). M == 0 and K == 0 are allowed.
    """
    op = "quantize_per_token_group_ref"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor [M, K], got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise TypeError(f"{op}: x must be a bfloat16, float16 or float32 tensor [M, K], got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"{op}: x must be 2-D [M, K] (flatten leading dims with x.reshape(-1, x.shape[-1])), got shape "
            f"{list(x.shape)}"
        )
    _check_fp8(op, dtype)
    g = _check_group_size(op, group_size, x.shape[1])
    return quantize_groups_ref(x.float(), g)


def row_quant_group_ref(
    op: str,
    x: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 0.0,
    residual_mode: str = "none",
    *,
    group_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``row_quant_ref`` (reference/fused.py, same arguments) with per-token-group FP8 output: the
    row op's fp32 output, quantized by groups. Returns (q float8_e4m3fn [M, K], s float32
    [M, K // group_size] M-major, the residual output or None)."""
    y, r = row_output_ref(op, x, residual, weight, bias, eps, residual_mode)
    g = _check_group_size("row_quant_group_ref", group_size, y.shape[1])
    q, s = quantize_groups_ref(y, g)
    return q, s, r
