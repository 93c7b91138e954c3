"""The CUDA launch of the group-scaled int8 wgmma GEMM (recipes ``int8_group_int`` /
``int8_group_float``: src/cuda/sm90_group_mainloop.cuh; contract: docs/W4A8.md), shared by
``w8a8_group_gemm`` (int8 weights) and the large-M path of ``w4a8_gemm`` (INT4 weights converted to
int8 by ``int4_to_int8`` first).

The kernel sums each span of ``promote_blocks`` k-blocks of 32 exactly in int32, then folds it in:
integer scales ``iacc += s_int * P`` (flushed to fp32 every ``flush`` spans), float scales
``acc += r * float(P)``. ``group_gemm_intervals`` derives both intervals from the operand ranges
and the largest integer scale so that no int32 can overflow for any input.
"""

from __future__ import annotations

import functools
import weakref
from typing import Optional

import torch

from .. import _ext
from . import _common as c

__all__ = ["group_gemm_intervals", "group_gemm_cuda", "int4_to_int8_cuda"]

_INT32_MAX = 2**31 - 1
_BLOCK_K = 32  # one int8 wgmma k-block
_ACT_MAX = 128  # |xq| <= 128 (int8 activations may hold -128)
_SPANS = (4, 2, 1)  # k-blocks per span the kernel takes (a span lies inside one 128-wide k-tile)


@functools.lru_cache(maxsize=256)
def group_gemm_intervals(group_size: int, wmax: int, max_scale: Optional[int]) -> tuple[int, int]:
    """(promote_blocks, flush) for the group-scaled kernel.

    One k-block's exact sum obeys ``|P| <= 32 * 128 * wmax`` (wmax: the largest |weight code|, 8 for
    INT4, 128 for INT8; activations may hold -128). Integer scales add ``s * P`` for a span of
    ``pb`` k-blocks into int32, so ``pb * 32 * 128 * wmax * max_scale <= 2^31 - 1``; pb is the
    largest of 4, 2, 1 dividing ``group_size / 32`` within that bound (a span lies inside one k-tile
    of 128 and never crosses a group), and the
    int32 sum is flushed to fp32 every ``flush = floor((2^31 - 1) / (pb * 32 * 128 * wmax *
    max_scale))`` spans. Float scales (max_scale None) take the longest span and never flush.
    Raises ValueError when not even one k-block fits (max_scale too large for wmax).
    """
    if group_size <= 0 or group_size % _BLOCK_K:
        raise ValueError(f"group_gemm_intervals: group_size must be a positive multiple of 32, got {group_size}")
    blocks = group_size // _BLOCK_K
    if max_scale is None:
        return max(d for d in _SPANS if blocks % d == 0), 0
    per_block = _BLOCK_K * _ACT_MAX * wmax * max_scale
    if per_block > _INT32_MAX:
        raise ValueError(
            f"group_gemm_intervals: integer scales up to {max_scale} with weights up to |{wmax}| can overflow "
            f"int32 within one k-block of 32 (32 * 128 * {wmax} * {max_scale} = {per_block} > 2^31 - 1); "
            f"use scales <= {_INT32_MAX // (_BLOCK_K * _ACT_MAX * wmax)} (a smaller alpha)"
        )
    cap = _INT32_MAX // per_block
    pb = max(d for d in _SPANS if d <= cap and blocks % d == 0)
    return pb, _INT32_MAX // (pb * per_block)


# sg [N, G] -> sg_t [G, N] contiguous (the kernel's layout: one 16-byte aligned row per group),
# cached per scale tensor (by identity, checked through a weak reference) and its version counter:
# a QLinear's scales are transposed once (inference tensors, which have no version counter, every call). Bounded: cleared when it grows past _CACHE_MAX entries.
_transposed: dict[int, tuple["weakref.ref[torch.Tensor]", int, torch.Tensor]] = {}
_CACHE_MAX = 4096


def _scales_t(sg: torch.Tensor) -> torch.Tensor:
    if sg.is_inference():
        # Inference tensors (a QLinear built under torch.inference_mode) have no version counter,
        # so an in-place update (load_state_dict under inference_mode) could not be seen: no cache.
        return sg.t().contiguous()
    hit = _transposed.get(id(sg))
    if hit is not None and hit[0]() is sg and hit[1] == sg._version:
        return hit[2]
    t = sg.t().contiguous()
    if torch.cuda.is_current_stream_capturing():
        return t  # no cache writes while capturing a graph (t lives in the graph's memory pool)
    if len(_transposed) >= _CACHE_MAX:
        _transposed.clear()
    _transposed[id(sg)] = (weakref.ref(sg), sg._version, t)
    return t


def int4_to_int8_cuda(wq: torch.Tensor, K: int) -> torch.Tensor:
    """INT4 codes packed in layout m16k32 (uint8 [N, K // 2]) -> int8 [N, K] row-major."""
    N = wq.shape[0]
    out = torch.empty((N, K), dtype=torch.int8, device=wq.device)
    idx = wq.get_device()
    _ext._C.int4_to_int8(wq.data_ptr(), N, K, out.data_ptr(), idx, c.current_stream(idx))
    return out


def group_gemm_cuda(op: str, xq, wq, sx, sw, sg, bias, out_dtype, act: int, max_scale: Optional[int],
                    wmax: int, tile: Optional[str] = None) -> torch.Tensor:
    """Launch the group-scaled GEMM on CUDA. Arguments already checked by the op: xq int8 [M, K]
    (M >= 1), wq int8 [N, K] row-major, sx float32 [M] or one element, sw float32 [N] or one
    element, sg [N, G] int32 (integer scales, bounded by max_scale; None: the largest the quantizer
    produces for wmax) or float32, bias [N] or None; act: the activation code. tile: a tile name of
    the recipe (experiments; None: the dispatch table's)."""
    M, K = xq.shape
    N = wq.shape[0]
    idx = xq.get_device()
    if (op, idx) not in _ready:
        from .w4a8 import _require_sm90  # noqa: PLC0415 (imported late: w4a8 imports this module)

        _require_sm90(op, xq.device, "the group-scaled int8 GEMM kernels are")
        _ready.add((op, idx))
    if N % 8 or K % 16:
        raise ValueError(
            f"{op}: the CUDA kernel needs N % 8 == 0 (16-byte output rows) and K % 16 == 0, got N={N}, K={K}"
        )
    out = xq.new_empty((M, N), dtype=out_dtype)
    if M == 0:
        return out
    if xq.data_ptr() % 16 or wq.data_ptr() % 16 or xq.stride(0) % 16:
        c.check_aligned_ptr(op, "xq", xq)
        c.check_aligned_ptr(op, "wq", wq)
        if xq.stride(0) % 16:
            raise ValueError(f"{op}: xq's row stride must be a multiple of 16 bytes, got {xq.stride(0)}")
    int_scales = sg.dtype == torch.int32
    G = sg.shape[1]
    g = K // G
    if int_scales and max_scale is None:
        max_scale = _default_max_scale(g, wmax)
    pb, flush = group_gemm_intervals(g, wmax, max_scale if int_scales else None)
    recipe = "int8_group_int" if int_scales else "int8_group_float"
    kid, ws = _gemm()._plan(idx, xq, "sm90", tile, out_dtype, M, N, K, recipe)
    if sx.numel() != M:
        sx = sx.reshape(1).expand(M).contiguous()
    if sw.numel() != N:
        sw = sw.reshape(1).expand(N).contiguous()
    sg_t = _scales_t(sg)
    workspace = xq.new_empty((ws,), dtype=torch.uint8) if ws > 0 else None
    _ext._C.gemm_run(
        kid, xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), K, sx.data_ptr(), sw.data_ptr(),
        0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        0 if workspace is None else workspace.data_ptr(), ws, idx, c.current_stream(idx), act, 1.0,
        sg_t.data_ptr(), g, pb, flush,
    )
    return out


_ready: set[tuple[str, int]] = set()


@functools.lru_cache(maxsize=None)
def _gemm():
    from . import gemm  # noqa: PLC0415 (imported late: gemm's users import this module)

    return gemm


@functools.lru_cache(maxsize=256)
def _default_max_scale(g: int, wmax: int) -> int:
    """Without max_scale: the largest integer scale the quantizer can produce for the weights. INT4:
    alpha <= 2^15 (docs/W4A8.md); INT8: one group's |P| * scale must fit int32 (the op's bound,
    ``group_max_scale(g, 128)``), at most 4095 (what one k-block of 32 allows)."""
    if wmax == 8:
        return 2**15
    return max(1, min(_INT32_MAX // (g * _ACT_MAX * wmax), _INT32_MAX // (_BLOCK_K * _ACT_MAX * wmax)))
