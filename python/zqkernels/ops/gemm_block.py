"""The block-scaled FP8 GEMM (recipe "fp8_blockwise": DeepSeek-V3 / Qwen3-FP8 / compressed-tensors FP8
block): its argument checks, its CUDA launch and its CPU reference, behind ``fp8_block_gemm`` (ops/gemm.py).

    y[m, n] = act(sum_j sx[m, j] * sw[n // 128, j] * sum_{k in K-block j} xq[m, k] * wq[n, k] + bias[n])

xq float8_e4m3fn [M, K] and wq float8_e4m3fn [N, K] (nn.Linear layout), K % 128 == 0; sx float32
[M, K // 128] (one scale per token per K-block of 128: ``quantize_per_token_group``), sw float32
[ceil(N / 128), K // 128] (one per 128 x 128 weight block: ``quantize_weight(w, fmt="fp8",
block_size=128)``). M and N need not be multiples of 128 (N % 8 == 0 on CUDA: 16-byte output rows).

The kernel (src/cuda/sm90_fp8_promote_mainloop.cuh) applies the scales when it promotes each K-block's
partial sum to fp32, and reads them in its own layouts, which this module builds when needed:
sx M-major (storage [K // 128, Mp], Mp = round_up(M, 4): what ``quantize_per_token_group`` returns on
CUDA, taken as is; any other layout is copied once per call), and sw transposed and replicated 4x
([K // 128, ceil(N / 128), 4], built once per weight-scale tensor and cached like the group GEMMs'
transposed scales).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..reference.block import fp8_block_gemm_ref
from . import _common as c
from .gemm_checks import FP8, _check_bias, check_epilogue
from .gemm_cuda import plan, require_sm90
from .layout_cache import cached_layout

__all__ = ["BLOCK", "check_block_args", "fp8_block_impl"]

BLOCK = 128  # K-block of the activation scales, edge of the weight blocks
_OP = "fp8_block_gemm"
_RECIPE = "fp8_blockwise"
_FP8 = torch.float8_e4m3fn
_F32 = torch.float32


def check_block_args(xq, wq, sx, sw, bias, out_dtype, activation: str = "none") -> int:
    """Every check of one call (eager and traced); returns the activation code."""
    act, _ = check_epilogue(activation, out_dtype, None, _OP)
    if out_dtype not in FP8.out_dtypes:
        raise TypeError(f"{_OP}: out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
    for name, t, what in (("xq", xq, "[M, K] (from quantize_per_token_group)"),
                          ("wq", wq, "[N, K] (from quantize_weight(w, fmt='fp8', block_size=128))")):
        if not isinstance(t, torch.Tensor) or t.dtype != _FP8 or t.dim() != 2:
            raise TypeError(f"{_OP}: {name} must be a 2-D float8_e4m3fn tensor {what}, got {c.desc(t)}")
    M, K = xq.shape
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"{_OP}: wq must be float8_e4m3fn [N, K] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    if K % BLOCK != 0:
        raise ValueError(
            f"{_OP}: K must be a multiple of {BLOCK} (the scales cover K-blocks of {BLOCK}), got K={K}; "
            f"pad x's and w's columns with zeros to K={-(-K // BLOCK) * BLOCK}"
        )
    kb, nb = K // BLOCK, -(-N // BLOCK)
    for name, t, shape, what in (("sx", sx, (M, kb), "[M, K // 128]: one scale per token per K-block"),
                                 ("sw", sw, (nb, kb), "[ceil(N / 128), K // 128]: one scale per weight block")):
        if not isinstance(t, torch.Tensor) or t.dtype != _F32:
            raise TypeError(f"{_OP}: {name} must be float32 {what}, got {c.desc(t)}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{_OP}: {name} must be float32 {what} = {list(shape)}, got {c.desc(t)}")
    _check_bias(_OP, bias, out_dtype, N)
    c.check_same_device(_OP, "xq", xq, wq=wq, sx=sx, sw=sw, bias=bias)
    c.check_rows(_OP, "xq", xq)
    c.check_rows(_OP, "wq", wq)
    c.check_contiguous(_OP, bias=bias)
    c.check_int32_sizes(_OP, M=M, N=N, K=K)
    if xq.is_cuda:
        if N % 8 != 0:
            raise ValueError(
                f"{_OP}: N must be a multiple of 8 on CUDA (output rows are stored in 16-byte vectors), got "
                f"N={N}; pad w with zero rows (and bias) to N={-(-N // 8) * 8}"
            )
        for name, t in (("xq", xq), ("wq", wq)):
            if t.shape[0] > 1 and t.stride(0) % 16 != 0:
                raise ValueError(
                    f"{_OP}: the row stride of {name} must be a multiple of 16 elements on CUDA (TMA), got "
                    f"{name}.stride(0) == {t.stride(0)}; pass {name}.contiguous()"
                )
    return act


# ------------------------------------------------------------------------------------------------
# The kernel's scale layouts.


def act_scales_mmajor(sx: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(storage, row stride) of sx [M, KB] M-major with the row stride a multiple of 4 >= round_up(M, 4)
    and 16-byte aligned: sx itself when it already is (quantize_per_token_group's CUDA output), else
    a copy."""
    M, kb = sx.shape
    ld = sx.stride(1)
    if (sx.stride(0) == 1 or M == 1) and ld % 4 == 0 and ld >= (M + 3) // 4 * 4 and sx.data_ptr() % 16 == 0:
        return sx, ld
    mp = (M + 3) // 4 * 4
    t = sx.new_zeros((kb, mp))
    t[:, :M] = sx.t()
    return t, mp


def _replicate(sw: torch.Tensor) -> torch.Tensor:
    return sw.t().unsqueeze(-1).expand(sw.shape[1], sw.shape[0], 4).contiguous()


def weight_scales_replicated(sw: torch.Tensor) -> torch.Tensor:
    """sw [NB, KB] -> [KB, NB, 4] contiguous, each scale 4 times (a 16-byte copy in the kernel lands it
    at a known place), cached per scale tensor like the group GEMMs' transposed scales
    (layout_cache.cached_layout)."""
    return cached_layout("block_scales_replicated", sw, _replicate)


def _fast_ok(xq, wq, sx, sw, bias, out_dtype) -> bool:
    """The common valid CUDA call, recognised in a few attribute reads (what quantize_per_token_group
    and quantize_weight(fmt="fp8", block_size=128) return, contiguous operands). False means "run
    the full checks", which raise the precise error or accept a rarer valid layout."""
    if xq.dtype is not _FP8 or wq.dtype is not _FP8 or sx.dtype is not _F32 or sw.dtype is not _F32:
        return False
    if out_dtype is not torch.bfloat16 and out_dtype is not torch.float16:
        return False
    xs, ws = xq.shape, wq.shape
    if len(xs) != 2 or len(ws) != 2 or sx.dim() != 2 or sw.dim() != 2:
        return False
    M, K = xs
    N = ws[0]
    kb = K // BLOCK
    if ws[1] != K or K % BLOCK or K == 0 or N % 8 or M > c.INT32_MAX or N > c.INT32_MAX:
        return False
    if tuple(sx.shape) != (M, kb) or tuple(sw.shape) != (-(-N // BLOCK), kb):
        return False
    xst, wst = xq.stride(), wq.stride()
    if xst[1] != 1 or wst[1] != 1 or xst[0] < K or wst[0] < K or xst[0] % 16 or wst[0] % 16:
        return False
    d = xq.get_device()
    if d < 0 or wq.get_device() != d or sx.get_device() != d or sw.get_device() != d:
        return False
    if bias is not None and (bias.dtype is not out_dtype or bias.dim() != 1 or bias.shape[0] != N
                             or bias.stride(0) != 1 or bias.get_device() != d):
        return False
    return True


# ------------------------------------------------------------------------------------------------
# One call.

_ready: set[int] = set()


def fp8_block_impl(xq, wq, sx, sw, bias, out_dtype, activation: str = "none", tile: Optional[str] = None):
    """Checks (a few attribute reads for the common CUDA call), then the CUDA kernel or (CPU) the
    float64 reference."""
    if _fast_ok(xq, wq, sx, sw, bias, out_dtype):
        act = 0 if activation == "none" else check_epilogue(activation, out_dtype, None, _OP)[0]
    else:
        act = check_block_args(xq, wq, sx, sw, bias, out_dtype, activation)
    if xq.device.type == "meta":
        return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)
    if not xq.is_cuda:
        return fp8_block_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation)
    M, K = xq.shape
    N = wq.shape[0]
    idx = xq.get_device()
    if idx not in _ready:
        require_sm90(_OP, xq.device, "the block-scaled FP8 GEMM kernels are")
        _ready.add(idx)
    out = xq.new_empty((M, N), dtype=out_dtype)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(fp8_block_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation))
    if (xq.data_ptr() | wq.data_ptr()) & 15:
        c.check_aligned_ptr(_OP, "xq", xq)
        c.check_aligned_ptr(_OP, "wq", wq)
    kid, ws = plan(idx, xq, "sm90", tile, out_dtype, M, N, K, _RECIPE)
    sa, ld = act_scales_mmajor(sx)
    sb = weight_scales_replicated(sw)
    workspace = xq.new_empty((ws,), dtype=torch.uint8) if ws > 0 else None
    _ext._C.gemm_run(
        kid, xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), wq.stride(0) if N > 1 else K,
        sa.data_ptr(), sb.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        0 if workspace is None else workspace.data_ptr(), ws, idx, c.current_stream(idx), act, 1.0,
        0, 0, 0, 0, ld,
    )
    return out
