"""Group-wise W8A8: ``w8a8_group_gemm``, INT8 per-token activations x INT8 weights with integer or
float group scales (Integer Scale; contract: docs/W4A8.md, "Group-wise W8A8"; CUDA launch:
ops/_group_cuda.py).

    y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))
    P[m, n, j] = sum_{k in group j} xq[m, k] * wq[n, k]          (exact int32)

The weights come from ``quantize_weight(w, bits=8, group_size=g, scale="int" | "float")``: wq int8
[N, K] (plain row-major), sw float32 [N], sg [N, K // g] int32 (integer scales: each group's P times
its scale, summed in int32 and flushed to fp32 before it can overflow) or float32 (each group's P
converted and scaled in fp32, the baseline). CPU tensors run ``w8a8_group_gemm_ref``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..reference.gemm import w8a8_group_gemm_ref
from ..reference.quantize import INT8_MAX_GROUP, group_max_scale
from . import _common as c
from .gemm import _check_epilogue
from .w4a8 import _check_w4a8_common, _meta_or_cpu

__all__ = ["w8a8_group_gemm", "W8A8_GROUP_MAX_GROUP"]

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_INT_SG, _FLOAT_SG = torch.int32, torch.float32
# The largest group: one group's int32 P (|P| <= g * 128 * 128) must not overflow, for both scale
# kinds (131071; only per-channel scales, g = K, come near it).
W8A8_GROUP_MAX_GROUP = INT8_MAX_GROUP
_WMAX = 128  # the largest weight magnitude the kernel's overflow bound assumes (int8 -128)
_OP = "w8a8_group_gemm"
_INT32_MAX = 2**31 - 1


def _check_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale) -> int:
    """All checks of a w8a8_group_gemm call; returns the group size."""
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {out_dtype}")
    if xq.dtype != torch.int8:
        raise TypeError(f"{op}: xq must be int8 [M, K] (from quantize_per_token(x)), got {c.desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D int8 [M, K], got {c.desc(xq)}")
    K = xq.shape[1]
    if wq.dtype != torch.int8 or wq.dim() != 2:
        raise TypeError(
            f"{op}: wq must be int8 [N, K] (from quantize_weight(w, bits=8, group_size=g)), got {c.desc(wq)}"
        )
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be int8 [N, K] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    if sg.dtype not in (_INT_SG, _FLOAT_SG) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(
            f"{op}: sg must be the group scales [N, K // group_size] from quantize_weight(w, bits=8, ...): "
            f"int32 (scale='int') or float32 (scale='float'), with N == {N}; got {c.desc(sg)}"
        )
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % 32 != 0:
        raise ValueError(
            f"{op}: sg must have K // group_size columns for a group size that divides K ({K}) and is a "
            f"multiple of 32 (one INT8 MMA k-step lies inside a group); got {G} columns"
        )
    g = K // G
    if g > W8A8_GROUP_MAX_GROUP:
        raise ValueError(
            f"{op}: group_size must be at most {W8A8_GROUP_MAX_GROUP} (each group's int32 sum of products, up "
            f"to group_size * 128 * 128, must not overflow), got group_size {g}; use smaller groups"
        )
    if max_scale is not None:
        if sg.dtype != _INT_SG:
            raise ValueError(f"{op}: max_scale applies to integer scales (int32 sg) only, got sg {c.desc(sg)}")
        hi = _INT32_MAX // (g * 128 * _WMAX)  # group_max_scale(g, 128), also for symbolic g (torch.compile)
        if isinstance(max_scale, bool) or not isinstance(max_scale, int) or not 1 <= max_scale <= hi:
            raise ValueError(
                f"{op}: max_scale must be an int in [1, {hi}] for group_size {g} (the largest integer group "
                f"scale, e.g. quantize_weight's alpha; one group's |P| * scale must fit int32), got {max_scale!r}"
            )
    _check_w4a8_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return g


def _impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None) -> torch.Tensor:
    op = _OP
    act, _ = (0, 1.0) if activation == "none" else _check_epilogue(activation, out_dtype, None, op)
    _check_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    N = wq.shape[0]
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, N, out_dtype)
        if meta is not None:
            return meta
        return w8a8_group_gemm_ref(xq, wq, sx, sw, sg, bias, out_dtype, activation=activation)
    from ._group_cuda import group_gemm_cuda  # lazily: a CPU build works without the CUDA launcher

    return group_gemm_cuda(op, xq, wq, sx, sw, sg, bias, out_dtype, act, max_scale, wmax=_WMAX)


@torch.library.custom_op(
    "zqkernels::w8a8_group_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor sg, Tensor? bias, ScalarType out_dtype, "
    "str activation=\"none\", int? max_scale=None) -> Tensor",
)
def _group_op(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None):
    return _impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale)


@_group_op.register_fake
def _group_fake(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None):
    op = _OP
    if activation != "none":
        _check_epilogue(activation, out_dtype, None, op)
    _check_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_op = torch.ops.zqkernels.w8a8_group_gemm.default


def w8a8_group_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    max_scale: Optional[int] = None,
) -> torch.Tensor:
    """Group-wise W8A8 GEMM (docs/W4A8.md, "Group-wise W8A8"):
    ``y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))``, P the exact int
    dot product of xq and wq over group j.

    xq int8 [M, K] with per-token sx float32 [M] or one value (``quantize_per_token(x)``); wq, sw, sg
    from ``quantize_weight(w, bits=8, group_size=g, scale="int" | "float")``: wq int8 [N, K], sw
    float32 [N] (or one value), sg [N, K // g] int32 (integer scales: summed in int32, converted to
    float at the flushes and the end) or float32 (each group's P converted and scaled in fp32, the
    baseline). The group size is K // sg.shape[1], a multiple of 32 dividing K, at most
    W8A8_GROUP_MAX_GROUP. bias [N] of out_dtype (bf16, fp16 or fp32). activation: 'none', 'gelu',
    'gelu_tanh', 'silu' after the bias. On CUDA: compute capability 9.0 (ops/_group_cuda.py checks
    it and the alignment).

    max_scale (integer scales only): an upper bound of sg (a Python int in [1, group_max_scale(g,
    128)], e.g. quantize_weight's alpha), from which the kernel computes how many groups it may add
    into its int32 accumulator before flushing, without reading sg on the host (a sync). None: the
    largest scale one group tolerates, i.e. a flush after every group. Scales above the bound can
    overflow int32: ``set_debug_checks(True)`` checks 0 <= sg <= bound. CPU tensors run the exact
    reference (``w8a8_group_gemm_ref``).
    """
    if c._debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("sg", sg), ("bias", bias)):
            c.check_finite(_OP, name, t)
        _debug_int_scales(xq, sg, max_scale)
    if c.eager(xq, wq, sx, sw, sg, bias):
        return _impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale)
    return _op(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale)


def _debug_int_scales(xq: torch.Tensor, sg: torch.Tensor, max_scale: Optional[int]) -> None:
    """Integer scales outside [0, bound] (a sync: debug checks only), bound = max_scale or, without
    it, the largest scale one group tolerates (group_max_scale). A negative scale is never produced
    (zero only for an all-zero group); one above the bound could overflow int32. Malformed shapes are
    left to the argument checks."""
    if sg.dtype != _INT_SG or sg.dim() != 2 or sg.numel() == 0 or xq.dim() != 2:
        return
    K, G = xq.shape[1], sg.shape[1]
    if max_scale is None:
        if K % G or K // G < 1 or K // G > W8A8_GROUP_MAX_GROUP:
            return
        hi = group_max_scale(K // G, _WMAX)
    else:
        hi = max_scale
    lo_v, hi_v = int(sg.min()), int(sg.max())
    if lo_v < 0 or (isinstance(hi, int) and hi_v > hi):
        raise ValueError(
            f"{_OP}: sg (integer scales) must lie in [0, {hi}] (max_scale, or the largest scale one group of "
            f"{K // G} tolerates; docs/W4A8.md), got values in [{lo_v}, {hi_v}]"
        )
