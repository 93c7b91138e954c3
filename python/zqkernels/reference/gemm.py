"""Reference of the GEMM kernels (src/cuda/*_gemm_*.cuh).

Every reference decodes its operands to the exact values the kernel multiplies, sums the products
in float64 and applies scales, bias and activation in float64 (``_scaled_gemm``), so the only
rounding is the final cast. The sums are exact: int8 products are integers below 2^14, and FP8
E4M3 products (also FP8 x FP4-as-FP8) are multiples of 2^-18 below 2^18, so float64 holds every
partial sum exactly while K < 2^17. The references with integer group scales (``w4a8_gemm_ref``,
``w8a8_group_gemm_ref``) sum in int64 instead (exact for any K), then convert once.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .quantize import fp4_to_fp8_float_ref, fp4_to_fp8_ref, unpack_fp4, unpack_int4
from .zero_point import ZP_GROUP_DTYPE, zp_int8_values

__all__ = ["int8_gemm_ref", "fp8_gemm_ref", "w4a8_fp_gemm_ref", "w4a8_gemm_ref", "w8a8_group_gemm_ref", "ACTIVATIONS"]


# The epilogue activations in float64, in forms without cancellation (docs/SCALES.md). The textbook
# forms 0.5 v (1 + erf(v / sqrt(2))) and 0.5 v (1 + tanh(u)) cancel for negative v even in float64:
# 1 + erf(x) and 1 + tanh(u) are differences of numbers near 1 with a 1.1e-16 ulp, so they round
# to 0 for v < -8.3 (gelu) and v < -6.1 (gelu_tanh), and lose all their digits before that, while
# the true results (gelu(-10) = -7.6e-23, gelu_tanh(-8) = -3e-21, down to ~1e-40) are representable
# in bf16 and fp32 and the kernels compute them: a reference that returns 0 there disagreed with the
# kernels' bf16 outputs on 2-6% of the values of the GPU tests. Here gelu uses erfc(-v / sqrt(2))
# (== 1 + erf(v / sqrt(2))) and gelu_tanh sigmoid(2u) (== 0.5 (1 + tanh(u))), accurate to a few
# float64 ulps over the whole range, far below any output rounding. silu is v * sigmoid(v) (torch's
# sigmoid is 1 / (1 + exp(-v)): no cancellation). tests/test_gemm.py checks them against mpmath.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * torch.special.erfc(-v / math.sqrt(2.0))


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(2.0 * _SQRT_2_OVER_PI * (v + 0.044715 * v**3))


def _silu(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(v)


ACTIVATIONS = {"none": lambda v: v, "gelu": _gelu, "gelu_tanh": _gelu_tanh, "silu": _silu}


def _check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")


def _scaled_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
) -> torch.Tensor:
    """act(sx[m] * sw[n] * sum_k a[m, k] * b[n, k] (+ bias[n])) in float64, before the final rounding.

    a, b hold the exact operand values (int8, float8 or float32 tensors); sx, sw have M / N elements
    or one (per tensor)."""
    return _epilogue(a.double() @ b.double().t(), sx, sw, bias, activation)


def _epilogue(
    acc: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor], activation: str
) -> torch.Tensor:
    """act(acc[m, n] * sx[m] * sw[n] (+ bias[n])) in float64 (acc float64 [M, N], exact sums)."""
    sxd = sx.double().reshape(-1)
    swd = sw.double().reshape(-1)
    y = acc * (sxd[:, None] * swd[None, :])
    if bias is not None:
        y = y + bias.double()
    return ACTIVATIONS[activation](y)


def int8_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    out_scale: Optional[float] = None,
) -> torch.Tensor:
    """y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n])), rounded once to out_dtype.

    sx is [M] or a single per-tensor value, sw [N] or a single value (any shape holding that many
    elements). The int8 products are summed in float64, which is exact (|acc| <= K * 128^2 << 2^53);
    scales, bias and the activation ('none', 'gelu', 'gelu_tanh', 'silu') are applied in float64
    too, so the only rounding is the final cast.

    out_dtype=torch.int8 quantizes with the static per-tensor scale out_scale (a float, taken as the
    float32 the kernels receive): q = clamp(rint(y / out_scale), -127, 127), round half to even,
    NaN -> 0 (as the kernels' float-to-int conversion), +-inf -> +-127.
    """
    _check_activation("int8_gemm_ref", activation)
    if (out_dtype == torch.int8) != (out_scale is not None):
        raise ValueError(
            f"int8_gemm_ref: out_scale goes with out_dtype=torch.int8 and only there, got "
            f"out_dtype={out_dtype}, out_scale={out_scale!r}"
        )
    y = _scaled_gemm(xq, wq, sx, sw, bias, activation)
    if out_dtype != torch.int8:
        return y.to(out_dtype)
    s = float(torch.tensor(out_scale, dtype=torch.float32))  # the kernels' float32 scale
    q = torch.round(y / s)  # half to even
    q = torch.nan_to_num(q, nan=0.0).clamp(-127, 127)  # +-inf clamps to +-127
    return q.to(torch.int8)


def fp8_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
) -> torch.Tensor:
    """FP8 E4M3 x FP8 E4M3: y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n])).

    xq float8_e4m3fn [M, K], wq float8_e4m3fn [N, K] (decoded exactly); sx [M] or one value, sw [N]
    or one value. Sums, scales, bias and activation in float64; one rounding to out_dtype.
    """
    op = "fp8_gemm_ref"
    _check_activation(op, activation)
    for name, t in (("xq", xq), ("wq", wq)):
        if t.dtype != torch.float8_e4m3fn:
            raise TypeError(f"{op}: {name} must be float8_e4m3fn, got {t.dtype}")
    return _scaled_gemm(xq, wq, sx, sw, bias, activation).to(out_dtype)


def w4a8_fp_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    sx: torch.Tensor,
    group_size: int,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
) -> torch.Tensor:
    """FP8 E4M3 activations x FP4 E2M1 weights with group scales (ZeroQuant-FP W4A8, docs/FP8.md).

    xq float8_e4m3fn [M, K]; wq uint8 [N, K // 2] packed in layout m16k64 (``pack_fp4``); sw float32
    [N]; sg the group ratios [N, K // group_size]: int8 exponents (power-of-two policies m1 / m2,
    weights ``fp8(e2m1 * 2^e)``, exact) or float32 ratios (policy free, weights
    ``fp8(float32(e2m1) * r)``, rounded as the kernel rounds); sx [M] or one value. The weights are
    decoded to exactly the FP8 values the kernel multiplies, then the float64 GEMM of fp8_gemm_ref:
    ``y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * w8[n, k] (+ bias[n]))``, one final rounding.
    """
    op = "w4a8_fp_gemm_ref"
    _check_activation(op, activation)
    if xq.dtype != torch.float8_e4m3fn or xq.dim() != 2:
        raise TypeError(f"{op}: xq must be float8_e4m3fn [M, K], got {xq.dtype} {list(xq.shape)}")
    K = xq.shape[1]
    N = wq.shape[0]
    if sg.dim() != 2 or group_size <= 0 or K % group_size != 0 or tuple(sg.shape) != (N, K // group_size):
        raise ValueError(
            f"{op}: sg must be [N, K // group_size] == [{N}, {K // group_size if group_size > 0 else '?'}] "
            f"(K == {K}, group_size == {group_size}), got {list(sg.shape)}"
        )
    codes = unpack_fp4(wq, N, K)
    if sg.dtype == torch.int8:
        w8 = fp4_to_fp8_ref(codes, sg)
    elif sg.dtype == torch.float32:
        w8 = fp4_to_fp8_float_ref(codes, sg)
    else:
        raise TypeError(f"{op}: sg must be int8 (exponents, m1 / m2) or float32 (ratios, free), got {sg.dtype}")
    return _scaled_gemm(xq, w8, sx, sw, bias, activation).to(out_dtype)


def w4a8_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
) -> torch.Tensor:
    """INT8 activations x INT4 weights with group scales (docs/W4A8.md, "The GEMM").

    xq int8 [M, K], sx float32 [M] (or one value); wq uint8 [N, K // 2] packed in layout m16k32
    (``pack_int4``), sw float32 [N] (or one value), sg [N, G] with the group size K // G:

    - int32 sg (integer scales): ``acc[m, n] = sum_j sg[n, j] * P[m, n, j]`` exactly in int64, with
      ``P[m, n, j] = sum_{k in group j} xq[m, k] * q[n, k]``; then float64 ``acc * sx[m] * sw[n]``
      (acc < 2^53 for K < 2^21), bias, activation, one rounding to out_dtype. The kernel computes
      the same integer (int32 steps flushed before they can overflow) and rounds in its fp32
      epilogue.
    - float32 sg (float scales, the baseline): P exact, ``sum_j float64(sg[n, j]) * P`` in float64 (each
      product exact, the sum rounded to float64). The kernel multiplies each group's P by sg in fp32
      (an FMA into an fp32 accumulator), so it differs by those fp32 roundings: ~G * 2^-24 relative
      to the largest group term, far below a bf16 / fp16 output ulp but visible in fp32 outputs.
    - int16 sg (the zero-point format, ``quantize_weight(w, fmt="int4", scale="zp")``; sz = s | z << 8,
      reference/zero_point.py): every weight's int8 value ``s * (q + 8 - z)``, ``acc = sum_k xq * value``
      exactly (float64 sums of integers below 2^53), then as above.
    """
    op = "w4a8_gemm_ref"
    _check_group_operands(op, xq, wq.shape[0], sg, activation, zero_point=True)
    q = unpack_int4(wq, wq.shape[0], xq.shape[1])
    if sg.dtype == ZP_GROUP_DTYPE:
        return _epilogue(xq.double() @ zp_int8_values(q, sg).double().t(), sx, sw, bias, activation).to(out_dtype)
    return _group_gemm(xq, q, sx, sw, sg, bias, activation).to(out_dtype)


def w8a8_group_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
) -> torch.Tensor:
    """INT8 activations x INT8 weights with group scales (docs/W4A8.md, "Group-wise W8A8"): the math
    of ``w4a8_gemm_ref`` with wq int8 [N, K] (plain row-major, ``quantize_weight(w, fmt="int8",
    scale=..., group_size=g)``) instead of packed INT4 codes.

    int32 sg: ``acc = sum_j sg[n, j] * P[m, n, j]`` exactly in int64, then float64 ``acc * sx[m] *
    sw[n]``, bias, activation, one rounding; float32 sg: ``sum_j float64(sg[n, j]) * P`` in float64.
    """
    op = "w8a8_group_gemm_ref"
    if wq.dtype != torch.int8 or wq.dim() != 2:
        raise TypeError(f"{op}: wq must be int8 [N, K], got {wq.dtype} {list(wq.shape)}")
    _check_group_operands(op, xq, wq.shape[0], sg, activation)
    if wq.shape[1] != xq.shape[1]:
        raise ValueError(f"{op}: wq must be [N, K] with K == xq.shape[1] ({xq.shape[1]}), got {list(wq.shape)}")
    return _group_gemm(xq, wq, sx, sw, sg, bias, activation).to(out_dtype)


def _check_group_operands(op: str, xq: torch.Tensor, N: int, sg: torch.Tensor, activation: str,
                          zero_point: bool = False) -> None:
    _check_activation(op, activation)
    if xq.dtype != torch.int8 or xq.dim() != 2:
        raise TypeError(f"{op}: xq must be int8 [M, K], got {xq.dtype} {list(xq.shape)}")
    K = xq.shape[1]
    kinds = (torch.int32, torch.float32, ZP_GROUP_DTYPE) if zero_point else (torch.int32, torch.float32)
    if sg.dtype not in kinds:
        zp = ", or int16 (scales and zero points)" if zero_point else ""
        raise TypeError(f"{op}: sg must be int32 (integer scales) or float32 (float scales){zp}, got {sg.dtype}")
    if sg.dim() != 2 or sg.shape[0] != N or sg.shape[1] == 0 or K % sg.shape[1] != 0:
        raise ValueError(f"{op}: sg must be [N, G] == [{N}, G] with G dividing K == {K}, got {list(sg.shape)}")


def _group_gemm(
    xq: torch.Tensor,
    q: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation: str,
) -> torch.Tensor:
    """The group-scaled GEMM of integer codes q [N, K] (int8 tensor, any values in [-128, 127]), in
    float64 before the final rounding (operands checked). P per group is computed by a float64 bmm:
    exact, as every product is an integer below 2^14 and every partial sum below 2^53 (|P| <= K *
    2^14), whatever the summation order; then int64 for integer scales (the products sg * P and
    their sum are exact integers), float64 for float scales."""
    M, K = xq.shape
    N = q.shape[0]
    G = sg.shape[1]
    g = K // G
    # P[j, m, n] per group
    P = torch.bmm(xq.double().reshape(M, G, g).transpose(0, 1), q.double().reshape(N, G, g).permute(1, 2, 0))
    if sg.dtype == torch.int32:
        acc = (P.long() * sg.long().t()[:, None, :]).sum(dim=0).double()  # exact int64 sum, one conversion
    else:
        acc = (P * sg.double().t()[:, None, :]).sum(dim=0)
    return _epilogue(acc, sx, sw, bias, activation)
