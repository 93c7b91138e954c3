"""Argument checks of the GEMM op, one function per recipe family, one property at a time.

Shared by the eager paths and the fake implementation of ``zqkernels::gemm`` (ops/gemm.py), so a
traced call and an eager call raise the same error. Every message names the public op (``int8_gemm``,
``fp8_gemm``, ``w4a8_fp_gemm``, ``w4a8_gemm``, ``w8a8_group_gemm``), the argument, what was expected and
what came (ops/_common.py says which exception type goes with which mistake).

    rowwise      int8_rowwise, fp8_rowwise, fp8_rowwise_fastacc     check_rowwise_args
    w4a8_fp      FP8 activations x packed FP4 weights               check_w4a8_fp_args
    w4a8_int     INT8 activations x packed INT4 weights             check_w4a8_int_args
    int8_group   INT8 activations x INT8 weights, group scales      check_group_args

The "debug" checks read tensor values (a device sync): they run only under ``set_debug_checks(True)``.
The eager fast paths' few-attribute-read recognition of the common valid CUDA call is in
ops/gemm_fast.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from ..formats import ACTIVATIONS
from ..reference.quantize import INT4_ALPHA_RANGE, INT4_MAX_SCALE, INT8_MAX_GROUP, group_max_scale
from ..reference.zero_point import ZP_GROUP_DTYPE, check_scale_zero, check_zp_k, check_zp_values
from . import _common as c

__all__ = [
    "BACKENDS",
    "W4A8_PATHS",
    "W4A8_FP_PATHS",
    "INT8_MAX_K",
    "W4A8_INT_MAX_GROUP",
    "W8A8_GROUP_MAX_GROUP",
    "ACCUMULATE",
]

BACKENDS = ("auto", "sm90", "sm80")
W4A8_PATHS = ("auto", "stream", "mixed", "convert")
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.int8)
_FLOAT_OUT = (torch.bfloat16, torch.float16, torch.float32)
# zq::DType codes of the output types (zq_kernels.h); int8 is an output type of the GEMMs only.
OUT_CODE = {**c.DTYPE_CODE, torch.int8: 3}
# zq::GemmActivation codes (zq_kernels.h), in formats.ACTIVATIONS order.
ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
assert tuple(ACT_CODE) == ("none", "gelu", "gelu_tanh", "silu")
# out_scale reaches the kernels as a float32: it must stay a normal, finite float32 > 0.
_F32_TINY = torch.finfo(torch.float32).tiny
_F32_MAX = torch.finfo(torch.float32).max
# The int32 accumulator holds any sum of K products of int8 values (which may include -128, as in
# compressed-tensors checkpoints) while K * 128 * 128 <= 2^31 - 1 (docs/SCALES.md). Enforced on
# every device, so CPU and GPU accept the same calls; src/cuda/gemm_registry.h checks it again.
INT8_MAX_K = (2**31 - 1) // (128 * 128)  # 131,071
_FP8 = torch.float8_e4m3fn
_I8 = torch.int8
_F32 = torch.float32
# fp8_gemm's accumulation modes -> recipes (docs/FP8.md: errors measured at K = 4096 and 16384).
ACCUMULATE = {"accurate": "fp8_rowwise", "fast": "fp8_rowwise_fastacc"}
# The float-scale W4A8 variant converts each group's int32 P (|P| <= g * 128 * 8) to float: a group
# must stay below 2^31 / 1024 elements (only per-channel scales, g = K, come near it). The integer
# variant needs no K bound: its int32 accumulator is flushed every F steps (w4a8_int_flush_steps).
W4A8_INT_MAX_GROUP = (2**31 - 1) // (128 * 8)  # 2,097,151
# Group-wise W8A8: one group's int32 P (|P| <= g * 128 * 128) must not overflow, for both scale
# kinds (131071; only per-channel scales, g = K, come near it).
W8A8_GROUP_MAX_GROUP = INT8_MAX_GROUP
_INT_SG, _FLOAT_SG = torch.int32, torch.float32
# Without max_scale= the host assumes the largest integer scale quantize_weight can produce for
# INT4 (alpha <= 2^15, the group scales <= alpha): F = 1. Reading max(sg) would cost a device sync.
W4A8_DEFAULT_MAX_SCALE = INT4_ALPHA_RANGE[1]
_POW2_RANGE = (-5, 0)  # FP4 group exponents the quantizer produces (docs/FP8.md); exact there
_GROUP_WMAX = 128  # the largest weight magnitude the group kernel's overflow bound assumes (int8 -128)


class Family(NamedTuple):
    """What distinguishes the row-wise 8-bit GEMMs (int8_gemm, fp8_gemm); everything else is shared."""

    op: str                  # public name, used in every message
    operand: torch.dtype     # xq and wq
    out_dtypes: tuple        # accepted output dtypes
    max_k: int               # K bound (int32 accumulator for int8)


INT8 = Family("int8_gemm", _I8, _OUT_DTYPES, INT8_MAX_K)
FP8 = Family("fp8_gemm", _FP8, (torch.bfloat16, torch.float16), 2**31 - 1)


# ------------------------------------------------------------------------------------------------
# Shared pieces: scales, epilogue options, tuning knobs.


def check_scale(op: str, name: str, s: torch.Tensor, n: int, what: str, dim: str) -> None:
    """s: float32 with n elements ([n], [n, 1] or [1, n]) or one element (per-tensor)."""
    if s.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32 [{dim}] ({what}) or [1] (per-tensor), got {c.desc(s)}")
    numel = s.numel()
    if s.dim() > 2 or (numel != n and numel != 1) or (s.dim() == 2 and s.shape[0] != 1 and s.shape[1] != 1):
        raise ValueError(
            f"{op}: {name} must be float32 [{dim}] with {dim} == {n} ({what}) or hold one per-tensor "
            f"value ([1]), got {c.desc(s)}"
        )


def check_epilogue(activation, out_dtype, out_scale, op: str = "int8_gemm") -> tuple[int, float]:
    """(activation code, out_scale as passed to the kernel) of valid epilogue options, else raise."""
    code = ACT_CODE.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(
            f"{op}: activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}"
        )
    if out_dtype is not torch.int8:
        if out_scale is not None:
            raise ValueError(
                f"{op}: out_scale is the static scale of an int8 output and needs out_dtype=torch.int8, "
                f"got out_scale={out_scale!r} with out_dtype={out_dtype}"
            )
        return code, 1.0
    if out_scale is None:
        raise ValueError(
            f"{op}: out_dtype=torch.int8 needs out_scale, the static per-tensor output scale "
            "(q = clamp(rint(y / out_scale), -127, 127)), got out_scale=None"
        )
    if isinstance(out_scale, torch.Tensor):
        raise TypeError(
            f"{op}: out_scale must be a Python float (a static scale, passed to the kernel by value), "
            "got a torch.Tensor; pass float(out_scale) once, outside the model's forward (reading a "
            "device tensor's value synchronizes)"
        )
    if isinstance(out_scale, bool) or not isinstance(out_scale, (float, int)):
        raise TypeError(
            f"{op}: out_scale must be a Python float (a static scale, passed to the kernel by value), "
            f"got {type(out_scale).__name__} {out_scale!r}"
        )
    s = float(out_scale)
    if not (math.isfinite(s) and _F32_TINY <= s <= _F32_MAX):
        raise ValueError(
            f"{op}: out_scale must be a finite float > 0 that float32 represents as a normal number "
            f"([{_F32_TINY:.3g}, {_F32_MAX:.3g}]), got {out_scale!r}"
        )
    return code, s


def check_options(backend: str, tile: Optional[str], op: str = "int8_gemm") -> None:
    """The tuning knobs of the row-wise GEMMs (set through gemm_options or the wrappers' arguments)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if tile is not None and not isinstance(tile, str):
        raise ValueError(f"{op}: tile must be None (automatic) or a tile name (str), got {tile!r}")


W4A8_FP_PATHS = W4A8_PATHS  # FP4 weights: the same paths (the mixed-input mainloop serves both formats)


def check_path(op: str, path: str, paths: tuple = W4A8_PATHS) -> None:
    """The W4A8 GEMMs' path knob (paths: the ones this GEMM has)."""
    if path not in paths:
        raise ValueError(f"{op}: path must be one of {paths}, got {path!r}")


def check_accumulate(accumulate) -> str:
    """fp8_gemm's accumulate= -> its recipe."""
    recipe = ACCUMULATE.get(accumulate) if isinstance(accumulate, str) else None
    if recipe is None:
        raise ValueError(
            f"fp8_gemm: accumulate must be 'accurate' (fp32 promotion every 128 of K, the default) or "
            f"'fast' (Hopper's FP8 accumulator throughout), got {accumulate!r}"
        )
    return recipe


def _check_bias(op: str, bias: Optional[torch.Tensor], out_dtype, N: int) -> None:
    if bias is None:
        return
    if out_dtype == torch.int8:
        if bias.dtype != torch.float32:
            raise TypeError(
                f"{op}: bias must be float32 for int8 output (it is added in fp32 before the "
                f"quantization), got {c.desc(bias)}; pass bias.float()"
            )
    elif bias.dtype != out_dtype:
        raise TypeError(
            f"{op}: bias must have the output dtype ({c.dtype_name(out_dtype)}), got {c.desc(bias)}; "
            "pass bias.to(out_dtype)"
        )
    if bias.dim() != 1 or bias.shape[0] != N:
        raise ValueError(f"{op}: bias must be [N] with N == wq.shape[0] ({N}), got {c.desc(bias)}")


def check_finite_inputs(op: str, sx, sw, sg, bias) -> None:
    """Debug checks (a sync): NaN/Inf in the scales or the bias."""
    for name, t in (("sx", sx), ("sw", sw), ("sg", sg), ("bias", bias)):
        c.check_finite(op, name, t)


# ------------------------------------------------------------------------------------------------
# Row-wise 8-bit GEMMs: int8_gemm, fp8_gemm.


def check_rowwise_args(xq, wq, sx, sw, bias, out_dtype, fam: Family = INT8) -> None:
    op = fam.op
    ty = c.dtype_name(fam.operand)
    if out_dtype not in fam.out_dtypes:
        names = [f"torch.{c.dtype_name(d)}" for d in fam.out_dtypes]
        allowed = ", ".join(names[:-1]) + " or " + names[-1]
        raise TypeError(
            f"{op}: out_dtype must be {allowed}{' (with out_scale)' if torch.int8 in fam.out_dtypes else ''}, "
            f"got {out_dtype}"
        )
    hint = "quantize_per_token" + ("" if fam.operand == torch.int8 else f"(x, dtype=torch.{ty})")
    if xq.dtype != fam.operand:
        raise TypeError(f"{op}: xq must be {ty} [M, K] (from {hint}), got {c.desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D {ty} [M, K], got {c.desc(xq)}")
    M, K = xq.shape
    if wq.dtype != fam.operand:
        raise TypeError(f"{op}: wq must be {ty} [N, K] (from quantize_weight), got {c.desc(wq)}")
    if wq.dim() != 2:
        raise ValueError(f"{op}: wq must be 2-D {ty} [N, K], got {c.desc(wq)}")
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be {ty} [N, K] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    N = wq.shape[0]
    check_scale(op, "sx", sx, M, "one scale per row of xq", "M")
    check_scale(op, "sw", sw, N, "one scale per row of wq", "N")
    _check_bias(op, bias, out_dtype, N)
    c.check_same_device(op, "xq", xq, wq=wq, sx=sx, sw=sw, bias=bias)
    c.check_rows(op, "xq", xq)
    c.check_rows(op, "wq", wq)
    c.check_contiguous(op, sx=sx, sw=sw, bias=bias)
    c.check_int32_sizes(op, M=M, N=N, K=K)
    if K > fam.max_k:
        raise ValueError(
            f"{op}: K must be <= {INT8_MAX_K} (K * 128 * 128 must fit the int32 accumulator: int8 "
            f"values may be -128), got K={K}; split K and add the partial outputs"
        )
    if xq.is_cuda:
        if K % 16 != 0:
            raise ValueError(
                f"{op}: K must be a multiple of 16 on CUDA (TMA and the 16-byte vector loads read rows "
                f"of xq and wq in 16-byte pieces), got K={K}; pad x's columns and w's columns with "
                f"zeros to K={-(-K // 16) * 16}"
            )
        if N % 8 != 0:
            raise ValueError(
                f"{op}: N must be a multiple of 8 on CUDA (output rows are stored in 16-byte vectors), "
                f"got N={N}; pad w with zero rows (and sw, bias) to N={-(-N // 8) * 8}"
            )
        if out_dtype == torch.int8 and N % 16 != 0:
            raise ValueError(
                f"{op}: N must be a multiple of 16 on CUDA for int8 output (output rows are stored in "
                f"16-byte vectors of int8), got N={N}; pad w with zero rows (and sw, bias) to "
                f"N={-(-N // 16) * 16}"
            )
        for name, t in (("xq", xq), ("wq", wq)):
            if t.shape[0] > 1 and K > 0 and t.stride(0) % 16 != 0:
                raise ValueError(
                    f"{op}: the row stride of {name} must be a multiple of 16 elements on CUDA (TMA), got "
                    f"{name}.stride(0) == {t.stride(0)}; pass {name}.contiguous()"
                )


# ------------------------------------------------------------------------------------------------
# W4A8 and group-wise W8A8: the checks after the operand formats (scales, bias, devices, layouts).


def _check_group_common(op, xq, wq, sx, sw, sg, bias, out_dtype) -> None:
    M, K = xq.shape
    N = wq.shape[0]
    check_scale(op, "sx", sx, M, "one scale per row of xq", "M")
    check_scale(op, "sw", sw, N, "one scale per output channel", "N")
    _check_bias(op, bias, out_dtype, N)  # out_dtype is a float type here (checked first)
    c.check_same_device(op, "xq", xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=bias)
    c.check_rows(op, "xq", xq)
    c.check_contiguous(op, wq=wq, sg=sg, sx=sx, sw=sw, bias=bias)
    c.check_int32_sizes(op, M=M, N=N, K=K)
    if xq.is_cuda and xq.shape[0] > 1 and xq.stride(0) % 16 != 0:
        raise ValueError(
            f"{op}: the row stride of xq must be a multiple of 16 elements on CUDA (16-byte loads), got "
            f"xq.stride(0) == {xq.stride(0)}; pass xq.contiguous()"
        )


def _check_out_float(op: str, out_dtype) -> None:
    if out_dtype not in _FLOAT_OUT:
        raise TypeError(f"{op}: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {out_dtype}")


def _check_int8_xq(op: str, xq) -> int:
    if xq.dtype != torch.int8:
        raise TypeError(f"{op}: xq must be int8 [M, K] (from quantize_per_token(x)), got {c.desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D int8 [M, K], got {c.desc(xq)}")
    return xq.shape[1]


def _check_packed_wq(op: str, wq, K: int, what: str) -> int:
    if wq.dtype != torch.uint8 or wq.dim() != 2:
        raise TypeError(f"{op}: wq must be uint8 [N, K // 2] ({what}), got {c.desc(wq)}")
    if 2 * wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be uint8 [N, K // 2] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    return wq.shape[0]


def _group_columns(op: str, sg: torch.Tensor, K: int, multiple: int, why: str) -> int:
    """G = sg.shape[1], checked: the group size K // G divides K and is a multiple of `multiple`."""
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % multiple != 0:
        raise ValueError(
            f"{op}: sg must have K // group_size columns for a group size that divides K ({K}) and is a "
            f"multiple of {multiple}{why}; got {G} columns"
        )
    return G


def check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype) -> int:
    """All checks of a w4a8_fp_gemm call; returns the group size."""
    _check_out_float(op, out_dtype)
    if xq.dtype != _FP8:
        raise TypeError(
            f"{op}: xq must be float8_e4m3fn [M, K] (from quantize_per_token(x, dtype=torch.float8_e4m3fn)), "
            f"got {c.desc(xq)}"
        )
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D float8_e4m3fn [M, K], got {c.desc(xq)}")
    K = xq.shape[1]
    N = _check_packed_wq(op, wq, K, "FP4 codes packed by quantize_weight(w, fmt='fp4')")
    if N % 16 != 0 or K % 64 != 0:
        raise ValueError(
            f"{op}: the packed FP4 layout needs N % 16 == 0 and K % 64 == 0 (docs/FP8.md), got N={N}, K={K}; "
            f"pad w with zero rows to N={-(-N // 16) * 16} and zero columns to K={-(-K // 64) * 64} before quantizing"
        )
    if sg.dtype not in (torch.int8, torch.float32) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(
            f"{op}: sg must be the group scales [N, K // group_size] from quantize_weight: int8 exponents "
            f"(policies 'm1' / 'm2') or float32 ratios (policy 'free'), with N == {N}; got {c.desc(sg)}"
        )
    G = _group_columns(op, sg, K, 16, "")
    _check_group_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return K // G


def check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale) -> int:
    """All checks of a w4a8_gemm call; returns the group size."""
    _check_out_float(op, out_dtype)
    K = _check_int8_xq(op, xq)
    N = _check_packed_wq(
        op, wq, K, "INT4 codes packed by quantize_weight(w, fmt='int4', scale=..., group_size=g)"
    )
    if N % 16 != 0 or K % 64 != 0:
        raise ValueError(
            f"{op}: the packed INT4 layout m16k32 needs N % 16 == 0 and K % 64 == 0 (docs/W4A8.md), got N={N}, "
            f"K={K}; pad w with zero rows to N={-(-N // 16) * 16} and zero columns to K={-(-K // 64) * 64} "
            "before quantizing"
        )
    if sg.dtype not in (_INT_SG, _FLOAT_SG, ZP_GROUP_DTYPE) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(
            f"{op}: sg must be the group scales [N, K // group_size] from quantize_weight(w, fmt='int4', ...): "
            f"int32 (scale='int'), float32 (scale='float') or int16 (scale='zp': scales and zero points), with "
            f"N == {N}; got {c.desc(sg)}"
        )
    if sg.dtype == ZP_GROUP_DTYPE:
        check_zp_k(op, K)
    G = _group_columns(op, sg, K, 32, " (one MMA step of 32 k lies inside a group)")
    if sg.dtype == _FLOAT_SG and K // G > W4A8_INT_MAX_GROUP:
        raise ValueError(
            f"{op}: float group scales need group_size <= {W4A8_INT_MAX_GROUP} (each group's int32 sum "
            f"must not overflow), got group_size {K // G}; use integer scales or smaller groups"
        )
    if max_scale is not None:
        if sg.dtype != _INT_SG:
            raise ValueError(f"{op}: max_scale applies to integer scales (int32 sg) only, got sg {c.desc(sg)}")
        if isinstance(max_scale, bool) or not isinstance(max_scale, int) or not 1 <= max_scale <= INT4_MAX_SCALE:
            raise ValueError(
                f"{op}: max_scale must be an int in [1, {INT4_MAX_SCALE}] (the largest integer group scale, "
                f"e.g. quantize_weight's alpha), got {max_scale!r}"
            )
    _check_group_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return K // G


def check_group_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale) -> int:
    """All checks of a w8a8_group_gemm call; returns the group size."""
    _check_out_float(op, out_dtype)
    K = _check_int8_xq(op, xq)
    if wq.dtype != torch.int8 or wq.dim() != 2:
        raise TypeError(
            f"{op}: wq must be int8 [N, K] (from quantize_weight(w, fmt='int8', scale=..., group_size=g)), "
            f"got {c.desc(wq)}"
        )
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be int8 [N, K] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    if sg.dtype not in (_INT_SG, _FLOAT_SG) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(
            f"{op}: sg must be the group scales [N, K // group_size] from quantize_weight(w, fmt='int8', ...): "
            f"int32 (scale='int') or float32 (scale='float'), with N == {N}; got {c.desc(sg)}"
        )
    G = _group_columns(op, sg, K, 32, " (one INT8 MMA k-step lies inside a group)")
    g = K // G
    if g > W8A8_GROUP_MAX_GROUP:
        raise ValueError(
            f"{op}: group_size must be at most {W8A8_GROUP_MAX_GROUP} (each group's int32 sum of products, up "
            f"to group_size * 128 * 128, must not overflow), got group_size {g}; use smaller groups"
        )
    if max_scale is not None:
        if sg.dtype != _INT_SG:
            raise ValueError(f"{op}: max_scale applies to integer scales (int32 sg) only, got sg {c.desc(sg)}")
        hi = c.INT32_MAX // (g * 128 * _GROUP_WMAX)  # group_max_scale(g, 128), also for symbolic g (torch.compile)
        if isinstance(max_scale, bool) or not isinstance(max_scale, int) or not 1 <= max_scale <= hi:
            raise ValueError(
                f"{op}: max_scale must be an int in [1, {hi}] for group_size {g} (the largest integer group "
                f"scale, e.g. quantize_weight's alpha; one group's |P| * scale must fit int32), got {max_scale!r}"
            )
    _check_group_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return g


# ------------------------------------------------------------------------------------------------
# Debug checks of scale values (a sync each: set_debug_checks(True) only).


def debug_pow2_range(op: str, sg: torch.Tensor) -> None:
    """FP4 group exponents outside the kernel's exact range."""
    if sg.dtype == torch.int8 and sg.numel() > 0:
        lo, hi = int(sg.min()), int(sg.max())
        if lo < _POW2_RANGE[0] or hi > _POW2_RANGE[1]:
            raise ValueError(
                f"{op}: sg exponents must lie in [{_POW2_RANGE[0]}, {_POW2_RANGE[1]}] (power-of-two group "
                f"ratios 2^e <= 1, docs/FP8.md), got [{lo}, {hi}]"
            )


def debug_w4a8_int_scales(op: str, sg: torch.Tensor, max_scale: Optional[int]) -> None:
    """INT4 integer scales outside [0, max_scale]. A negative scale is never produced (zero only for
    an all-zero group); one above the bound could overflow int32."""
    if sg.dtype == _INT_SG and sg.numel() > 0:
        hi = W4A8_DEFAULT_MAX_SCALE if max_scale is None else max_scale
        lo_v, hi_v = int(sg.min()), int(sg.max())
        if lo_v < 0 or hi_v > hi:
            raise ValueError(
                f"{op}: sg (integer scales) must lie in [0, {hi}] (max_scale; docs/W4A8.md), got values in "
                f"[{lo_v}, {hi_v}]"
            )


def debug_group_int_scales(op: str, xq: torch.Tensor, sg: torch.Tensor, max_scale: Optional[int]) -> None:
    """INT8-group integer scales outside [0, bound], bound = max_scale or, without it, the largest
    scale one group tolerates (group_max_scale). Malformed shapes are left to the argument checks."""
    if sg.dtype != _INT_SG or sg.dim() != 2 or sg.numel() == 0 or xq.dim() != 2:
        return
    K, G = xq.shape[1], sg.shape[1]
    if max_scale is None:
        if K % G or K // G < 1 or K // G > W8A8_GROUP_MAX_GROUP:
            return
        hi = group_max_scale(K // G, _GROUP_WMAX)
    else:
        hi = max_scale
    lo_v, hi_v = int(sg.min()), int(sg.max())
    if lo_v < 0 or (isinstance(hi, int) and hi_v > hi):
        raise ValueError(
            f"{op}: sg (integer scales) must lie in [0, {hi}] (max_scale, or the largest scale one group of "
            f"{K // G} tolerates; docs/W4A8.md), got values in [{lo_v}, {hi_v}]"
        )


# ------------------------------------------------------------------------------------------------
# The spec key of zqkernels::gemm: which recipe a call runs, and which optional arguments it takes.


class Recipe(NamedTuple):
    """What the GEMM op needs to know about a spec key before its per-recipe checks."""

    op: str           # the public wrapper's name, used in every message
    sg: bool          # takes group scales (required then, None otherwise)
    out_scale: bool   # takes out_scale (int8 output)
    max_scale: bool   # takes max_scale (integer group scales)
    act_dtype: torch.dtype  # the activation format (quantize_per_token's dtype)


# Keys = the kernel registry's recipes (formats.GemmSpec.recipe), plus fp8_gemm's fast accumulation.
RECIPES = {
    "int8_rowwise": Recipe("int8_gemm", False, True, False, _I8),
    "fp8_rowwise": Recipe("fp8_gemm", False, False, False, _FP8),
    "fp8_rowwise_fastacc": Recipe("fp8_gemm", False, False, False, _FP8),
    "fp8_blockwise": Recipe("fp8_block_gemm", False, False, False, _FP8),  # checks: ops/gemm_block.py
    "w4a8_fp": Recipe("w4a8_fp_gemm", True, False, False, _FP8),
    "w4a8_int": Recipe("w4a8_gemm", True, False, True, _I8),
    "int8_group_int": Recipe("w8a8_group_gemm", True, False, True, _I8),
    "int8_group_float": Recipe("w8a8_group_gemm", True, False, True, _I8),
}
GEMM_SPECS = tuple(RECIPES)
_GROUP_SG = {"int8_group_int": _INT_SG, "int8_group_float": _FLOAT_SG}


def check_spec(spec, sg, out_scale, max_scale) -> Recipe:
    """The Recipe of a spec key after checking which optional arguments the call passes."""
    r = RECIPES.get(spec) if isinstance(spec, str) else None
    if r is None:
        raise ValueError(f"gemm: spec must be one of {GEMM_SPECS}, got {spec!r}")
    if r.sg:
        if sg is None:
            raise TypeError(f"{r.op}: sg (the group scales [N, K // group_size]) is required for spec {spec!r}, got None")
    elif sg is not None:
        raise ValueError(f"{r.op}: sg must be None for spec {spec!r} (no group scales), got {c.desc(sg)}")
    if out_scale is not None and not r.out_scale:
        raise ValueError(
            f"{r.op}: out_scale applies to int8 output of spec 'int8_rowwise' only, got out_scale={out_scale!r} "
            f"with spec {spec!r}"
        )
    if max_scale is not None and not r.max_scale:
        raise ValueError(
            f"{r.op}: max_scale applies to integer group scales (specs 'w4a8_int', 'int8_group_int') only, got "
            f"max_scale={max_scale!r} with spec {spec!r}"
        )
    want = _GROUP_SG.get(spec)
    if want is not None and sg.dtype != want and sg.dtype in (_INT_SG, _FLOAT_SG):
        other = "int8_group_float" if want is _INT_SG else "int8_group_int"
        raise TypeError(
            f"{r.op}: spec {spec!r} takes {c.dtype_name(want)} sg, got {c.desc(sg)}; spec {other!r} takes those"
        )
    return r


def check_gemm(spec, xq, wq, sx, sw, sg, bias, out_dtype, activation, out_scale, max_scale, knobs) -> Recipe:
    """Every check of one call of the GEMM op (the fake implementation's body; the eager paths run
    the same checks per recipe). knobs: (backend, tile, path) of gemm_options."""
    r = check_spec(spec, sg, out_scale, max_scale)
    op = r.op
    backend, tile, path = knobs
    if spec == "int8_rowwise" or spec == "fp8_rowwise" or spec == "fp8_rowwise_fastacc":
        check_options(backend, tile, op)
        check_epilogue(activation, out_dtype, out_scale, op)
        check_rowwise_args(xq, wq, sx, sw, bias, out_dtype, INT8 if spec == "int8_rowwise" else FP8)
        return r
    if spec == "w4a8_fp" or spec == "w4a8_int":
        check_path(op, path)
    if activation != "none":
        check_epilogue(activation, out_dtype, None, op)
    if spec == "w4a8_fp":
        check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype)
    elif spec == "w4a8_int":
        check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    else:
        check_group_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    return r


def debug_checks(spec: str, op: str, xq, sx, sw, sg, bias, max_scale, wq=None) -> None:
    """The value checks of set_debug_checks(True) (a sync each). wq: the weights, for the formats whose
    validity depends on them (the zero-point format's values)."""
    check_finite_inputs(op, sx, sw, sg, bias)
    if sg is None:
        return
    if spec == "w4a8_fp":
        debug_pow2_range(op, sg)
    elif spec == "w4a8_int":
        if sg.dtype != ZP_GROUP_DTYPE:
            debug_w4a8_int_scales(op, sg, max_scale)
        elif wq is not None and wq.dim() == 2 and xq.dim() == 2:
            check_zp_values(op, wq, sg, xq.shape[1])  # s in 1..16, z in 0..15, every value an int8
        else:
            check_scale_zero(op, sg)
    elif spec in _GROUP_SG:
        debug_group_int_scales(op, xq, sg, max_scale)
