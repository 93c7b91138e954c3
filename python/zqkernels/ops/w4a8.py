"""W4A8 GEMMs: ``w4a8_fp_gemm`` (ZeroQuant-FP: FP4 E2M1 weights x FP8 E4M3 activations; kernel:
src/cuda/w4a8_gemm.cu), ``fp4_to_fp8`` (the kernel's weight conversion on its own) and ``w4a8_gemm``
(INT4 weights with integer or float group scales x INT8 activations, Integer Scale; kernel:
src/cuda/w4a8_int_gemm.cu; contract: docs/W4A8.md).

Formats and the packed layout: docs/FP8.md. The group scales say which kernel runs: int8
exponents (policies "m1" / "m2": power-of-two ratios, converted by integer operations) or float32
ratios (policy "free": convert, multiply in fp32, round to E4M3, the baseline).

Paths by M (``path="auto"``):
  M <= _STREAM_MAX_M  "stream": one kernel streams the packed weights once per 64 tokens, converts
                      them in registers and runs FP8 mma.sync (decode is weight-bandwidth bound)
  larger M            "convert": fp4_to_fp8 writes the FP8 weights [N, K] into a temporary, then the
                      FP8 GEMM (``fp8_gemm``, accurate accumulation) runs on wgmma; the conversion
                      costs ~1.5 N K bytes of traffic, small against 2 M N K flops at large M
Both compute the same products; they differ only in how the fp32 partial sums are grouped.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..reference.gemm import w4a8_fp_gemm_ref, w4a8_gemm_ref
from ..reference.quantize import (
    INT4_ALPHA_RANGE,
    INT4_MAX_SCALE,
    fp4_to_fp8_float_ref,
    fp4_to_fp8_ref,
    unpack_fp4,
    w4a8_int_flush_steps,
)
from . import _common as c
from .gemm import _OUT_CODE, _check_epilogue, _check_scale, fp8_gemm

__all__ = ["w4a8_fp_gemm", "fp4_to_fp8", "w4a8_gemm", "W4A8_PATHS", "W4A8_INT_MAX_GROUP"]

W4A8_PATHS = ("auto", "stream", "convert")
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_FP8 = torch.float8_e4m3fn
# Largest M the streaming kernel serves under path="auto": measured on an H100 (docs/FP8.md,
# benchmarks/results/fp8_*): at M = 32 streaming beat converting + fp8_gemm at every shape, at
# M = 64 converting won (e.g. 22016 x 4096: ~72 against 102 us).
_STREAM_MAX_M = 32
_POW2_RANGE = (-5, 0)  # exponents the quantizer produces (docs/FP8.md); the kernel is exact there


def _check_path(op: str, path: str) -> None:
    if path not in W4A8_PATHS:
        raise ValueError(f"{op}: path must be one of {W4A8_PATHS}, got {path!r}")


def _check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype) -> int:
    """All checks of a call; returns the group size."""
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {out_dtype}")
    if xq.dtype != _FP8:
        raise TypeError(
            f"{op}: xq must be float8_e4m3fn [M, K] (from quantize_per_token(x, dtype=torch.float8_e4m3fn)), "
            f"got {c.desc(xq)}"
        )
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D float8_e4m3fn [M, K], got {c.desc(xq)}")
    M, K = xq.shape
    if wq.dtype != torch.uint8 or wq.dim() != 2:
        raise TypeError(
            f"{op}: wq must be uint8 [N, K // 2] (FP4 codes packed by quantize_weight(w, fmt='fp4')), "
            f"got {c.desc(wq)}"
        )
    N = wq.shape[0]
    if 2 * wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be uint8 [N, K // 2] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
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
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % 16 != 0:
        raise ValueError(
            f"{op}: sg must have K // group_size columns for a group size that divides K ({K}) and is a "
            f"multiple of 16; got {G} columns"
        )
    _check_w4a8_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return K // G


def _check_w4a8_common(op, xq, wq, sx, sw, sg, bias, out_dtype) -> None:
    """The checks both W4A8 GEMMs share, after the operand formats: scales, bias, devices, layouts."""
    M, K = xq.shape
    N = wq.shape[0]
    _check_scale(op, "sx", sx, M, "one scale per row of xq", "M")
    _check_scale(op, "sw", sw, N, "one scale per output channel", "N")
    if bias is not None:
        if bias.dtype != out_dtype:
            raise TypeError(
                f"{op}: bias must have the output dtype ({c.dtype_name(out_dtype)}), got {c.desc(bias)}; "
                "pass bias.to(out_dtype)"
            )
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"{op}: bias must be [N] with N == wq.shape[0] ({N}), got {c.desc(bias)}")
    c.check_same_device(op, "xq", xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=bias)
    c.check_rows(op, "xq", xq)
    c.check_contiguous(op, wq=wq, sg=sg, sx=sx, sw=sw, bias=bias)
    c.check_int32_sizes(op, M=M, N=N, K=K)
    if xq.is_cuda and xq.shape[0] > 1 and xq.stride(0) % 16 != 0:
        raise ValueError(
            f"{op}: the row stride of xq must be a multiple of 16 elements on CUDA (16-byte loads), got "
            f"xq.stride(0) == {xq.stride(0)}; pass xq.contiguous()"
        )


def _check_pow2_range(op: str, sg: torch.Tensor) -> None:
    """Exponents outside the kernel's exact range (a sync: debug checks and offline paths only)."""
    if sg.dtype == torch.int8 and sg.numel() > 0:
        lo, hi = int(sg.min()), int(sg.max())
        if lo < _POW2_RANGE[0] or hi > _POW2_RANGE[1]:
            raise ValueError(
                f"{op}: sg exponents must lie in [{_POW2_RANGE[0]}, {_POW2_RANGE[1]}] (power-of-two group "
                f"ratios 2^e <= 1, docs/FP8.md), got [{lo}, {hi}]"
            )


def _require_sm90(op: str, device: torch.device, what: str) -> None:
    cc = c.require_cuda_kernels(op, device)
    if cc != (9, 0):
        raise RuntimeError(
            f"{op}: {what} compiled for sm_90a only: "
            f"compute capability 9.0 (H100 / H200) required, {device} has {cc[0]}.{cc[1]}"
        )
    if "sm_90a" not in list(_ext._C.compiled_archs()):
        raise RuntimeError(f"{op}: this build has no sm_90a kernels; rebuild with ZQ_CUDA_ARCHS including 90a")


_ready: set[tuple[str, int]] = set()  # (op, device index) that passed _require_sm90


def _meta_or_cpu(op: str, xq: torch.Tensor, N: int, out_dtype) -> Optional[torch.Tensor]:
    """A checked call whose tensors are not on CUDA: the (empty) result on the meta device, None on
    the CPU (the caller runs its reference), the error for any other device type."""
    if xq.device.type == "meta":
        return xq.new_empty((xq.shape[0], N), dtype=out_dtype)
    if xq.device.type != "cpu":
        c.require_cuda_kernels(op, xq.device)
    return None


def _cuda_operands(op: str, xq, wq, sx, sw, what: str, binding: str = ""):
    """What both W4A8 GEMMs do on CUDA before launching (arguments checked): the sm_90a check once
    per device, per-tensor scales expanded to vectors, 16-byte alignment of xq / wq (both kernels and
    fp4_to_fp8 read them in 16-byte pieces; nothing is read when M == 0). Returns (device index,
    sx, sw). binding: the _C function the op launches, checked once with the device (a build from
    before it existed lacks it)."""
    idx = xq.get_device()
    if (op, idx) not in _ready:
        _require_sm90(op, xq.device, what)
        if binding and not hasattr(_ext._C, binding):
            raise RuntimeError(f"{op}: this build of zqkernels._C has no {binding} (built before it existed); rebuild")
        _ready.add((op, idx))
    M, N = xq.shape[0], wq.shape[0]
    if sx.numel() != M:
        sx = sx.reshape(1).expand(M).contiguous()
    if sw.numel() != N:
        sw = sw.reshape(1).expand(N).contiguous()
    if M and (xq.data_ptr() % 16 or wq.data_ptr() % 16):
        c.check_aligned_ptr(op, "xq", xq)
        c.check_aligned_ptr(op, "wq", wq)
    return idx, sx, sw


_FP_KERNELS = "needs FP8 tensor cores and this build's W4A8-FP kernels are"


def _fp4_to_fp8_cuda(wq: torch.Tensor, sg: torch.Tensor, K: int) -> torch.Tensor:
    N = wq.shape[0]
    out = torch.empty((N, K), dtype=_FP8, device=wq.device)
    idx = wq.get_device()
    _ext._C.fp4_to_fp8(wq.data_ptr(), sg.data_ptr(), sg.dtype == torch.int8, K // sg.shape[1], N, K,
                       out.data_ptr(), idx, c.current_stream(idx))
    return out


def _w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", path="auto") -> torch.Tensor:
    op = "w4a8_fp_gemm"
    _check_path(op, path)
    act, _ = (0, 1.0) if activation == "none" else _check_epilogue(activation, out_dtype, None, op)
    g = _check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype)
    M, K = xq.shape
    N = wq.shape[0]
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, N, out_dtype)
        return meta if meta is not None else w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, g, bias, out_dtype,
                                                               activation=activation)
    idx, sx, sw = _cuda_operands(op, xq, wq, sx, sw, _FP_KERNELS)
    if c._debug_checks:
        _check_pow2_range(op, sg)
    if M == 0:
        return xq.new_empty((0, N), dtype=out_dtype)
    if path == "convert" or (path == "auto" and M > _STREAM_MAX_M):
        if out_dtype == torch.float32:
            raise ValueError(f"{op}: float32 output is served by the streaming path only (path='stream')")
        wf = _fp4_to_fp8_cuda(wq, sg, K)
        return fp8_gemm(xq, wf, sx, sw, bias, out_dtype, activation=activation)
    out = xq.new_empty((M, N), dtype=out_dtype)
    _ext._C.w4a8_fp_gemm_run(
        xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), sg.data_ptr(), sg.dtype == torch.int8, g,
        sx.data_ptr(), sw.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        _OUT_CODE[out_dtype], act, idx, c.current_stream(idx),
    )
    return out


@torch.library.custom_op(
    "zqkernels::w4a8_fp_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor sg, Tensor? bias, ScalarType out_dtype, "
    "str activation=\"none\", str path=\"auto\") -> Tensor",
)
def _w4a8_fp_op(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", path="auto"):
    return _w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, path)


@_w4a8_fp_op.register_fake
def _w4a8_fp_fake(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", path="auto"):
    op = "w4a8_fp_gemm"
    _check_path(op, path)
    if activation != "none":
        _check_epilogue(activation, out_dtype, None, op)
    _check_w4a8_fp_args(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_op = torch.ops.zqkernels.w4a8_fp_gemm.default


def w4a8_fp_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    path: str = "auto",
) -> torch.Tensor:
    """W4A8-FP GEMM (ZeroQuant-FP): y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wf[n, k] (+ bias[n])).

    xq float8_e4m3fn [M, K] with per-token sx float32 [M] (``quantize_per_token(x,
    dtype=torch.float8_e4m3fn)``); wq, sw, sg from ``quantize_weight(w, fmt="fp4", group_size=g,
    scale=policy)``: wq uint8 [N, K // 2] (FP4 codes, layout m16k64), sw float32 [N], sg [N, K // g]
    int8 exponents (m1 / m2: wf = e2m1 * 2^e, converted with integer operations) or float32 ratios
    (free: wf = e4m3(e2m1 * r), the float-scale baseline). The group size is K // sg.shape[1].
    bias [N] of out_dtype (bf16, fp16 or fp32). On CUDA: compute capability 9.0, N % 16 == 0,
    K % 64 == 0. activation: 'none', 'gelu', 'gelu_tanh', 'silu' after the bias, in fp32.
    path: 'auto' (by M), 'stream' or 'convert' (see the module docstring; for tests and benchmarks).
    CPU tensors run the float64 reference.
    """
    if c._debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("sg", sg), ("bias", bias)):
            c.check_finite("w4a8_fp_gemm", name, t)
        _check_pow2_range("w4a8_fp_gemm", sg)
    if c.eager(xq, wq, sx, sw, sg, bias):
        return _w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, path)
    return _op(xq, wq, sx, sw, sg, bias, out_dtype, activation, path)


def fp4_to_fp8(wq: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    """The FP8 E4M3 weights [N, K] a W4A8-FP GEMM multiplies: e2m1 * 2^e (int8 sg) or e4m3(e2m1 * r)
    (float32 sg), by the kernels' integer conversion on CUDA (bit for bit what the GEMM uses) or the
    reference on CPU. wq uint8 [N, K // 2] (layout m16k64), sg [N, K // g]."""
    op = "fp4_to_fp8"
    if wq.dtype != torch.uint8 or wq.dim() != 2:
        raise TypeError(f"{op}: wq must be uint8 [N, K // 2] (packed FP4 codes), got {c.desc(wq)}")
    N, K = wq.shape[0], 2 * wq.shape[1]
    if N % 16 != 0 or K % 64 != 0:
        raise ValueError(f"{op}: the packed layout needs N % 16 == 0 and K % 64 == 0, got N={N}, K={K}")
    if sg.dtype not in (torch.int8, torch.float32) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(f"{op}: sg must be int8 or float32 [N, K // group_size] with N == {N}, got {c.desc(sg)}")
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % 16 != 0:
        raise ValueError(f"{op}: sg must have K // group_size columns (group size a multiple of 16 dividing {K}), got {G}")
    c.check_same_device(op, "wq", wq, sg=sg)
    c.check_contiguous(op, wq=wq, sg=sg)
    if wq.is_cuda:
        _require_sm90(op, wq.device, _FP_KERNELS)
        return _fp4_to_fp8_cuda(wq, sg, K)
    codes = unpack_fp4(wq, N, K)
    return fp4_to_fp8_ref(codes, sg) if sg.dtype == torch.int8 else fp4_to_fp8_float_ref(codes, sg)



# ------------------------------------------------------------------------------------------------
# w4a8_gemm: INT8 activations x INT4 weights with integer or float group scales (docs/W4A8.md)

# The float-scale variant converts each group's int32 P (|P| <= g * 128 * 8) to float: a group must
# stay below 2^31 / 1024 elements (only per-channel scales, g = K, come near it). The integer
# variant needs no K bound: its int32 accumulator is flushed every F steps (w4a8_int_flush_steps).
W4A8_INT_MAX_GROUP = (2**31 - 1) // (128 * 8)  # 2,097,151
_INT_SG, _FLOAT_SG = torch.int32, torch.float32
# Without max_scale= the host assumes the largest integer scale quantize_weight can produce (alpha
# <= 2^15, the group scales <= alpha): F = 1. Reading max(sg) would cost a device sync per call.
_DEFAULT_MAX_SCALE = INT4_ALPHA_RANGE[1]


def _check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale) -> int:
    """All checks of a w4a8_gemm call; returns the group size."""
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got {out_dtype}")
    if xq.dtype != torch.int8:
        raise TypeError(f"{op}: xq must be int8 [M, K] (from quantize_per_token(x)), got {c.desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D int8 [M, K], got {c.desc(xq)}")
    K = xq.shape[1]
    if wq.dtype != torch.uint8 or wq.dim() != 2:
        raise TypeError(
            f"{op}: wq must be uint8 [N, K // 2] (INT4 codes packed by quantize_weight(w, bits=4, "
            f"group_size=g)), got {c.desc(wq)}"
        )
    N = wq.shape[0]
    if 2 * wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be uint8 [N, K // 2] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    if N % 16 != 0 or K % 64 != 0:
        raise ValueError(
            f"{op}: the packed INT4 layout m16k32 needs N % 16 == 0 and K % 64 == 0 (docs/W4A8.md), got N={N}, "
            f"K={K}; pad w with zero rows to N={-(-N // 16) * 16} and zero columns to K={-(-K // 64) * 64} "
            "before quantizing"
        )
    if sg.dtype not in (_INT_SG, _FLOAT_SG) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(
            f"{op}: sg must be the group scales [N, K // group_size] from quantize_weight(w, bits=4, ...): "
            f"int32 (scale='int') or float32 (scale='float'), with N == {N}; got {c.desc(sg)}"
        )
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % 32 != 0:
        raise ValueError(
            f"{op}: sg must have K // group_size columns for a group size that divides K ({K}) and is a "
            f"multiple of 32 (one MMA step of 32 k lies inside a group); got {G} columns"
        )
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
    _check_w4a8_common(op, xq, wq, sx, sw, sg, bias, out_dtype)
    return K // G


def _check_int_scales(op: str, sg: torch.Tensor, max_scale: Optional[int]) -> None:
    """Integer scales outside [0, max_scale] (a sync: debug checks only). A negative scale is never
    produced (zero only for an all-zero group); one above the bound could overflow int32."""
    if sg.dtype == _INT_SG and sg.numel() > 0:
        hi = _DEFAULT_MAX_SCALE if max_scale is None else max_scale
        lo_v, hi_v = int(sg.min()), int(sg.max())
        if lo_v < 0 or hi_v > hi:
            raise ValueError(
                f"{op}: sg (integer scales) must lie in [0, {hi}] (max_scale; docs/W4A8.md), got values in "
                f"[{lo_v}, {hi_v}]"
            )


# Largest M the integer-scale streaming kernel serves under path="auto"; above it the INT4 codes
# are converted to int8 (int4_to_int8) and the group-scaled wgmma GEMM runs. Measured on an H100
# (scripts/probe_group_gemm.py, benchmarks/results/group_gemm_*, docs/W4A8.md): streaming wins up
# to M = 64 (24576 x 14336: 345 against 392 us; 4096 x 4096: 22 against 37 us), converting from
# M = 128 (390 against 816 us; 38 against 38 us).
_INT_STREAM_MAX_M = 64


def _w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None,
                   path="auto") -> torch.Tensor:
    op = "w4a8_gemm"
    _check_path(op, path)
    act, _ = (0, 1.0) if activation == "none" else _check_epilogue(activation, out_dtype, None, op)
    g = _check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    M, K = xq.shape
    N = wq.shape[0]
    if not xq.is_cuda:
        meta = _meta_or_cpu(op, xq, N, out_dtype)
        return meta if meta is not None else w4a8_gemm_ref(xq, wq, sx, sw, sg, bias, out_dtype, activation=activation)
    idx, sx, sw = _cuda_operands(op, xq, wq, sx, sw, "this build's W4A8 integer-scale kernels are",
                                 "w4a8_int_gemm_run")
    if M == 0:
        return xq.new_empty((0, N), dtype=out_dtype)
    if path == "convert" or (path == "auto" and M > _INT_STREAM_MAX_M):
        from ._group_cuda import group_gemm_cuda, int4_to_int8_cuda  # noqa: PLC0415

        return group_gemm_cuda(op, xq, int4_to_int8_cuda(wq, K), sx, sw, sg, bias, out_dtype, act, max_scale, wmax=8)
    int_scales = sg.dtype == _INT_SG
    flush = w4a8_int_flush_steps(_DEFAULT_MAX_SCALE if max_scale is None else max_scale) if int_scales else 0
    out = xq.new_empty((M, N), dtype=out_dtype)
    _ext._C.w4a8_int_gemm_run(
        xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), sg.data_ptr(), int_scales, g,
        sx.data_ptr(), sw.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        _OUT_CODE[out_dtype], act, flush, idx, c.current_stream(idx),
    )
    return out


@torch.library.custom_op(
    "zqkernels::w4a8_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor sg, Tensor? bias, ScalarType out_dtype, "
    "str activation=\"none\", int? max_scale=None, str path=\"auto\") -> Tensor",
)
def _w4a8_int_op(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None, path="auto"):
    return _w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale, path)


@_w4a8_int_op.register_fake
def _w4a8_int_fake(xq, wq, sx, sw, sg, bias, out_dtype, activation="none", max_scale=None, path="auto"):
    op = "w4a8_gemm"
    _check_path(op, path)
    if activation != "none":
        _check_epilogue(activation, out_dtype, None, op)
    _check_w4a8_int_args(op, xq, wq, sx, sw, sg, bias, out_dtype, max_scale)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_int_op = torch.ops.zqkernels.w4a8_gemm.default


def w4a8_gemm(
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
    path: str = "auto",
) -> torch.Tensor:
    """W4A8 GEMM with INT4 group scales (Integer Scale, docs/W4A8.md):
    ``y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))``, P the exact int
    dot product of xq and the INT4 codes over group j.

    xq int8 [M, K] with per-token sx float32 [M] (``quantize_per_token(x)``); wq, sw, sg from
    ``quantize_weight(w, bits=4, group_size=g, scale="int" | "float")``: wq uint8 [N, K // 2] (layout
    m16k32), sw float32 [N], sg [N, K // g] int32 (integer scales: summed in int32, one conversion
    to float at the end) or float32 (each group's P converted and scaled in fp32, the baseline). The
    group size is K // sg.shape[1], a multiple of 32 dividing K (float scales: at most
    W4A8_INT_MAX_GROUP). bias [N] of out_dtype (bf16, fp16 or fp32). On CUDA: compute capability
    9.0, N % 16 == 0, K % 64 == 0. activation: 'none', 'gelu', 'gelu_tanh', 'silu' after the bias.

    max_scale (integer scales only): an upper bound of sg, from which the kernel's int32 flush
    interval is computed (``w4a8_int_flush_steps``) without reading sg on the host (a sync). None:
    2^15, the largest scale quantize_weight produces (its alpha bound), giving F = 1; passing the
    alpha actually used (e.g. 1024: F = 63) lets the kernel convert less often. Scales above the
    bound can overflow int32: ``set_debug_checks(True)`` checks 0 <= sg <= bound (negative scales
    raise). CPU tensors run the exact reference (``w4a8_gemm_ref``).

    path (CUDA): "stream" (the decode kernel: streams the packed weights, INT8 mma.sync), "convert"
    (int4_to_int8 into a temporary int8 [N, K], then the group-scaled wgmma GEMM, also behind
    ``w8a8_group_gemm``), or "auto" (stream for M <= 64, else convert). Both compute the same sums.
    """
    if c._debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("sg", sg), ("bias", bias)):
            c.check_finite("w4a8_gemm", name, t)
        _check_int_scales("w4a8_gemm", sg, max_scale)
    if c.eager(xq, wq, sx, sw, sg, bias):
        return _w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale, path)
    return _int_op(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale, path)
