"""Quantization ops: ``quantize_per_token`` (kernel: src/cuda/row_quant.cu), ``quantize_weight`` and
``dequantize``.

``quantize_per_token`` is the ``torch.library`` custom op ``zqkernels::quantize_per_token`` with a
fake implementation (torch.compile, export, opcheck); eager calls on plain tensors take the direct
path (``_common.eager``). CPU tensors run ``zqkernels.reference``; CUDA tensors the kernel. It
quantizes to INT8 (default) or FP8 E4M3 (docs/FP8.md). Weights are quantized offline with torch
ops on their device: INT8 / INT4 / FP8 per channel, FP4 E2M1 with ZeroQuant-FP group scales, INT4
and INT8 with integer or float group scales (docs/W4A8.md); each format has one spelling, ``fmt=``
plus the options it takes (``resolve_weight_format``; the old ``bits=`` spellings warn).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _ext
from ..reference.block import dequantize_fp8_block_ref, quantize_weight_fp8_block_ref
from ..reference.quantize import (
    FP4_EXP_MAX,
    FP4_EXP_MIN,
    e2m1_decode,
    expand_groups,
    fp4_to_fp8_float_ref,
    pack_fp4,
    pack_int4,
    quantize_fp4_ref,
    quantize_int4_group_ref,
    quantize_int8_group_ref,
    quantize_per_token_fp8_ref,
    quantize_per_token_ref,
    quantize_weight_fp8_ref,
    quantize_weight_ref,
    unpack_fp4,
    unpack_int4,
)
from ..reference.zero_point import (
    ZP_GROUP_DTYPE,
    check_scale_zero,
    dequantize_int4_zp_ref,
    quantize_int4_zp_ref,
)
from . import _common as c
from .weight_format import (  # noqa: F401 - re-exported: ops.quantize is where they were defined
    _WEIGHT_FMTS,
    WeightFormat,
    _check_finite_rows,
    _check_fp4_shape,
    _check_int4_shape,
    _check_int8_group_shape,
    _check_weight,
    _resolve_fmt,
    check_fp8_block,
    resolve_weight_format,
)

__all__ = ["quantize_per_token", "quantize_weight", "dequantize", "resolve_weight_format", "WeightFormat"]

_cuda_ready: set[int] = set()  # device indices that passed require_cuda_kernels

_I8 = torch.int8
_F8 = torch.float8_e4m3fn
_OUT_FMT = {_I8: 0, _F8: 1}  # out_fmt of _C.quantize_per_token


def _check_out_dtype(dtype: object) -> None:
    if dtype not in _OUT_FMT:
        raise TypeError(
            f"quantize_per_token: dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype!r}"
        )


def _check_quantize_args(x: torch.Tensor) -> None:
    op = "quantize_per_token"
    if x.dtype not in c.DTYPE_CODE:
        raise TypeError(f"{op}: x must be bfloat16, float16 or float32 [M, K], got {c.desc(x)}")
    if x.dim() != 2:
        raise ValueError(
            f"{op}: x must be 2-D [M, K] (flatten leading dims with x.reshape(-1, x.shape[-1])), "
            f"got {c.desc(x)}"
        )
    c.check_rows(op, "x", x)
    M, K = x.shape
    c.check_int32_sizes(op, M=M, K=K)


def _quantize_cuda(x: torch.Tensor, dtype: torch.dtype = _I8) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on CUDA; x already checked (2-D, row layout, supported dtype), dtype int8 or fp8."""
    idx = x.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels("quantize_per_token", x.device)
        _cuda_ready.add(idx)
    M, K = x.shape
    xq = x.new_empty((M, K), dtype=dtype)
    sx = x.new_empty((M,), dtype=torch.float32)
    if M == 0:
        return xq, sx
    if K == 0:  # max over an empty row is 0: scale 0, as for an all-zero row
        return xq, sx.zero_()
    if dtype is _I8:  # the int8 call stays as it was (out_fmt defaults to 0)
        _ext._C.quantize_per_token(
            x.data_ptr(), c.DTYPE_CODE[x.dtype], x.stride(0), xq.data_ptr(), sx.data_ptr(), M, K, idx,
            c.current_stream(idx),
        )
    else:
        _ext._C.quantize_per_token(
            x.data_ptr(), c.DTYPE_CODE[x.dtype], x.stride(0), xq.data_ptr(), sx.data_ptr(), M, K, idx,
            c.current_stream(idx), _OUT_FMT[dtype],
        )
    return xq, sx


_CODES = c.DTYPE_CODE


def _quantize_impl(x: torch.Tensor, dtype: torch.dtype = _I8) -> tuple[torch.Tensor, torch.Tensor]:
    """dtype already checked (int8 or float8_e4m3fn)."""
    if x.is_cuda and x.dtype in _CODES and x.dim() == 2 and c.has_row_layout(x):
        # The common call in a few reads; anything unusual takes the full checks (precise errors).
        M, K = x.shape
        if M <= c.INT32_MAX and K <= c.INT32_MAX:
            return _quantize_cuda(x, dtype)
    _check_quantize_args(x)
    if x.is_cuda:
        return _quantize_cuda(x, dtype)
    if x.is_meta:  # shape inference only
        M, K = x.shape
        return x.new_empty((M, K), dtype=dtype), x.new_empty((M,), dtype=torch.float32)
    if x.device.type != "cpu":
        c.require_cuda_kernels("quantize_per_token", x.device)  # raises: names the device type
    return quantize_per_token_ref(x) if dtype is _I8 else quantize_per_token_fp8_ref(x)


# dtype has a default so that the int8 calls (and graphs traced before FP8 existed) keep their form.
@torch.library.custom_op(
    "zqkernels::quantize_per_token",
    mutates_args=(),
    schema="(Tensor x, ScalarType dtype=int8) -> (Tensor, Tensor)",
)
def _quantize_per_token_op(x: torch.Tensor, dtype: torch.dtype = _I8) -> tuple[torch.Tensor, torch.Tensor]:
    _check_out_dtype(dtype)
    return _quantize_impl(x, dtype)


@_quantize_per_token_op.register_fake
def _quantize_per_token_fake(x: torch.Tensor, dtype: torch.dtype = _I8) -> tuple[torch.Tensor, torch.Tensor]:
    _check_out_dtype(dtype)
    _check_quantize_args(x)
    if x.device.type not in ("cpu", "meta"):
        c.require_cuda_kernels("quantize_per_token", x.device)
    M, K = x.shape
    return x.new_empty((M, K), dtype=dtype), x.new_empty((M,), dtype=torch.float32)


_op = torch.ops.zqkernels.quantize_per_token.default


def quantize_per_token(x: torch.Tensor, dtype: torch.dtype = _I8) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise symmetric quantization: x [M, K] -> (xq [M, K] of ``dtype``, sx float32 [M]).

    dtype=torch.int8 (default): ``sx = amax / 127`` and ``xq = clamp(rint(x * (127 / amax)), -127,
    127)`` per row, in fp32 (docs/SCALES.md). dtype=torch.float8_e4m3fn: ``sx = amax / 448`` and
    ``xq = fp8(x * (448 / amax))``, the fp32 product rounded to nearest even and saturated to +-448
    (docs/FP8.md). Both: an all-zero row gives sx = 0, xq = 0; rows with amax < 2^-64 are scaled by
    2^64 first (exact), so tiny rows quantize like any other. x is bf16, fp16 or fp32; its rows may
    be strided but K must have unit stride. CPU tensors run the reference, CUDA tensors the kernel.
    A NaN/Inf in a row gives a NaN/Inf sx for that row (see ``set_debug_checks``).
    """
    if c._debug_checks:
        c.check_finite("quantize_per_token", "x", x)
    if dtype is _I8:  # the hot path: nothing else to check
        if c.eager(x):
            return _quantize_impl(x)  # eager: no custom-op dispatch (ops/_common.py)
        return _op(x)
    _check_out_dtype(dtype)
    if c.eager(x):
        return _quantize_impl(x, dtype)
    return _op(x, dtype)




def quantize_weight(
    w: torch.Tensor,
    bits: Optional[int] = None,
    *,
    fmt: Optional[str] = None,
    group_size: Optional[int] = None,
    scale: Optional[str] = None,
    alpha: Optional[int] = None,
    block_size: Optional[int] = None,
) -> Union[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Quantize a weight w [N, K] offline into a format of the GEMMs: ``fmt`` names the element
    format; ``scale`` names the group-scale kind (it is what gives a weight group scales, sg);
    ``group_size`` the group (None: one group per row, g = K); ``alpha`` the integer scales'
    multiplier. Each format has one spelling:

    - ``fmt="int8"`` (the default): symmetric INT8, one float scale per row -> (wq int8 [N, K] in
      [-127, 127], sw float32 [N]); for ``int8_gemm``. No options.
    - ``fmt="int8", scale="int" | "float", group_size=32 | 64 | 128 | 256 | None, alpha=``: INT8 with
      group scales (docs/W4A8.md, "Group-wise W8A8") -> (wq int8 [N, K] plain row-major, sw float32
      [N], sg [N, K // g] int32 (scale "int": rint(r * alpha)) or float32 (scale "float": ratios));
      for ``w8a8_group_gemm``. alpha (scale "int" only) a power of two in [1, group_alpha_max(g,
      128)] (g = 32: 2048, 64: 1024, 128: 512, 256: 256), default the bound for g >= 64 (the
      heuristic clamped to [1024, 2048] for g = 32) and 1 per channel. K % g == 0 (per channel:
      K % 32 == 0).
    - ``fmt="int4"``: INT4 values, one float scale per row, in an int8 container -> (wq int8 [N, K]
      in [-7, 7], sw float32 [N]); runs on ``int8_gemm`` (4-bit accuracy on the W8A8 kernel). No
      options.
    - ``fmt="int4", scale="int" | "float", group_size=32 | 64 | 128 | 256 | None, alpha=``: packed
      INT4 with group scales for ``w4a8_gemm`` (docs/W4A8.md) -> (wq uint8 [N, K // 2] in layout
      m16k32, sw float32 [N], sg [N, K // g] int32 or float32); alpha (scale "int" only) a power of
      two in [2^0, 2^15], default the heuristic. Needs N % 16 == 0 and K % 64 == 0.
    - ``fmt="int4", scale="zp", group_size=32 | 64 | 128 | 256 | None``: the two-level format with
      group zero points (docs/W4A8.md, "Zero-point INT4"): INT8 per channel in [-119, 119], then per
      group an integer scale s in 1..16, a zero point z in 0..15 and unsigned codes u in 0..15 ->
      (wq uint8 [N, K // 2] (the codes u - 8, layout m16k32), sw float32 [N], sz int16 [N, K // g]
      = s | z << 8); ``w ~ sw * s * (u - z)``, for ``w4a8_gemm``. No alpha. Same shape rules.
    - ``fmt="fp8"``: FP8 E4M3, one float scale per row -> (wq float8_e4m3fn [N, K], sw float32 [N]),
      the math of ``quantize_per_token(..., torch.float8_e4m3fn)`` on the rows (docs/FP8.md); for
      ``fp8_gemm``. No options.
    - ``fmt="fp8", block_size=128``: FP8 E4M3 with one float scale per 128 x 128 block (DeepSeek-V3 /
      Qwen3-FP8, compressed-tensors' FP8 block; docs/FP8.md, "Block-scaled FP8") -> (wq
      float8_e4m3fn [N, K], sw float32 [ceil(N / 128), K / 128] row-major), the per-channel rule on
      each block's values (an all-zero block: sw = 0, wq = 0). K % 128 == 0, any N (the last row
      block may be partial).
    - ``fmt="fp4", scale="m2" (default) | "m1" | "free", group_size=32 | 64 | 128 | None``: FP4 E2M1
      with ZeroQuant-FP group scales -> (wq uint8 [N, K // 2] in layout m16k64, sw float32 [N], sg:
      int8 exponents in [-5, 0] for "m1" / "m2" (power-of-two ratios), float32 ratios in (0, 1] for
      "free"); for ``w4a8_fp_gemm``. Needs N % 16 == 0 and K % 64 == 0. No alpha.

    An option a format does not take raises ValueError naming it. Deprecated spellings (the same
    results, with a DeprecationWarning naming the new one): ``bits=8`` / ``bits=4`` (fmt="int8" /
    "int4"; with fmt, bits may only repeat its width), and ``group_size`` (or ``alpha``) on an
    integer format without ``scale`` (which meant scale="int").

    This runs the reference math with torch ops on w's device and always checks that w is finite (a
    sync; a NaN would poison a whole output channel). The results are constants: no gradient flows
    back to w.
    """
    op = "quantize_weight"
    _check_weight(op, w)
    N, K = w.shape
    f = resolve_weight_format(op, N, K, bits, fmt, group_size, scale, alpha, block_size=block_size, stacklevel=2)
    _check_finite_rows(op, w)
    w = w.detach()  # constants: no gradient flows to w
    if f.block_size is not None:
        return quantize_weight_fp8_block_ref(w, f.block_size)
    if f.fmt == "fp8":
        return quantize_weight_fp8_ref(w)
    if f.fmt == "fp4":
        codes, sw, sg = quantize_fp4_ref(w, f.group_size, f.scale)
        return pack_fp4(codes), sw, sg
    if f.scale is None:
        return quantize_weight_ref(w, _WEIGHT_FMTS[f.fmt])
    if f.fmt == "int4":
        if f.scale == "zp":
            codes, sw, sz = quantize_int4_zp_ref(w, f.group_size)
            return pack_int4(codes), sw, sz
        codes, sw, sg = quantize_int4_group_ref(w, f.group_size, f.scale, f.alpha)
        return pack_int4(codes), sw, sg
    return quantize_int8_group_ref(w, f.group_size, f.scale, f.alpha)


def dequantize(
    wq: torch.Tensor,
    sw: torch.Tensor,
    sg: Optional[torch.Tensor] = None,
    *,
    fmt: str,
    group_size: Optional[int] = None,
    shape: Optional[tuple[int, int]] = None,
    block_size: Optional[int] = None,
) -> torch.Tensor:
    """The float32 weight [N, K] a quantized weight stands for: ``sw[n] * value(wq)[n, k]``.

    fmt "int8" / "int4" (wq int8 [N, K]) and "fp8" (float8_e4m3fn [N, K]): ``wq * sw[n]``. fmt
    "fp4": wq uint8 [N, K // 2] in layout m16k64, sg the group exponents (int8) or ratios (float32)
    [N, K // g]; the value is the FP8 weight the W4A8-FP kernel multiplies, ``e2m1 * 2^e`` (exact)
    or ``fp8(e2m1 * r)`` (free: rounded as the kernel rounds), so dequantize + a float GEMM is the
    kernel's math. fmt "int4" WITH sg: wq uint8 [N, K // 2] in layout m16k32 (``quantize_weight(w,
    fmt="int4", scale=..., group_size=g)``), sg int32 integer scales or float32 ratios [N, K // g]; the
    value is ``sw[n] * sg[n, k // g] * q[n, k]``, computed in float64 and rounded once to float32; sg
    int16 (scale "zp": s | z << 8): ``sw[n] * s * (q + 8 - z)``, likewise.
    fmt "int8" WITH sg: wq int8 [N, K] (``quantize_weight(w, fmt="int8", scale=..., group_size=g)``), sg
    int32 or float32 [N, K // g], the same value ``sw[n] * sg[n, k // g] * q[n, k]``.
    group_size (fp4, int4, int8 with sg) is inferred from sg when None; shape, when given, is checked against the
    [N, K] the arguments imply. sw has N values (or one: per tensor).
    fmt "fp8" with block_size=128 (``quantize_weight(w, fmt="fp8", block_size=128)``): wq float8_e4m3fn
    [N, K], sw float32 [ceil(N / 128), K / 128]; the value is ``wq[n, k] * sw[n // 128, k // 128]``.
    """
    op = "dequantize"
    if fmt not in _WEIGHT_FMTS:
        raise ValueError(f"{op}: fmt must be one of {tuple(_WEIGHT_FMTS)}, got {fmt!r}")
    if block_size is not None:
        return _dequantize_fp8_block(op, wq, sw, sg, fmt, shape, block_size)
    if not isinstance(wq, torch.Tensor) or wq.dim() != 2:
        got = c.desc(wq) if isinstance(wq, torch.Tensor) else type(wq).__name__
        raise ValueError(f"{op}: wq must be a 2-D tensor, got {got}")
    packed = fmt == "fp4" or (fmt == "int4" and sg is not None)
    want = {"int8": torch.int8, "int4": torch.int8, "fp8": _F8, "fp4": torch.uint8}[fmt]
    want = torch.uint8 if packed else want
    if wq.dtype != want:
        with_sg = " with sg (packed INT4 with group scales)" if fmt == "int4" and packed else ""
        raise TypeError(f"{op}: wq must be {c.dtype_name(want)} for fmt={fmt!r}{with_sg}, got {c.desc(wq)}")
    N = wq.shape[0]
    K = 2 * wq.shape[1] if packed else wq.shape[1]
    if shape is not None and tuple(shape) != (N, K):
        raise ValueError(f"{op}: shape {tuple(shape)} does not match wq {c.desc(wq)} for fmt={fmt!r} ([{N}, {K}])")
    if not isinstance(sw, torch.Tensor) or sw.dtype != torch.float32 or sw.numel() not in (N, 1):
        got = c.desc(sw) if isinstance(sw, torch.Tensor) else type(sw).__name__
        raise ValueError(f"{op}: sw must be float32 with N == {N} values (or 1), got {got}")
    swc = sw.reshape(-1, 1)
    if not packed:
        if sg is not None:
            if fmt == "int8":
                return _dequantize_int_group(op, wq.double(), swc, sg, N, K, group_size, "int8",
                                             _check_int8_group_shape)
            raise ValueError(
                f"{op}: sg applies to fmt='fp4' only (and to 'int4' / 'int8' group scales), got sg with fmt={fmt!r}"
            )
        return wq.float() * swc
    if fmt == "int4":
        return _dequantize_int_group(op, None, swc, sg, N, K, group_size, "int4", _check_int4_shape, wq)
    if not isinstance(sg, torch.Tensor):
        raise ValueError(f"{op}: fmt='fp4' needs sg (group exponents or ratios [N, K // g]), got {sg!r}")
    if sg.dtype not in (torch.int8, torch.float32):
        raise TypeError(f"{op}: sg must be int8 (m1 / m2 exponents) or float32 (free ratios), got {c.desc(sg)}")
    _sg_group_size(op, sg, N, K, group_size, _check_fp4_shape)
    if sg.dtype == torch.int8 and sg.numel() and not bool(((sg >= FP4_EXP_MIN) & (sg <= FP4_EXP_MAX)).all()):
        raise ValueError(
            f"{op}: sg (int8 exponents) must lie in [{FP4_EXP_MIN}, {FP4_EXP_MAX}], got values in "
            f"[{int(sg.min())}, {int(sg.max())}]"
        )
    codes = unpack_fp4(wq, N, K)
    if sg.dtype == torch.int8:
        v = torch.ldexp(e2m1_decode(codes), expand_groups(sg, K).to(torch.int32))  # exact
    else:
        v = fp4_to_fp8_float_ref(codes, sg).float()
    return v * swc


def _sg_group_size(op: str, sg: torch.Tensor, N: int, K: int, group_size: Optional[int], check_shape) -> int:
    """dequantize's group size: group_size, or inferred from sg [N, K // g]; checked (check_shape)."""
    if group_size is None:  # infer g from sg [N, K // g]
        if sg.dim() != 2 or sg.shape[0] != N or sg.shape[1] == 0 or K % sg.shape[1] != 0:
            raise ValueError(
                f"{op}: sg must be [N, G] == [{N}, G] with G dividing K == {K} (G = K // group_size), "
                f"got {c.desc(sg)}"
            )
        group_size = K // sg.shape[1]
        if group_size == K:
            group_size = None
    g = check_shape(op, N, K, group_size)
    if tuple(sg.shape) != (N, K // g):
        raise ValueError(f"{op}: sg must be [N, K // group_size] == [{N}, {K // g}] (group_size {g}), got {c.desc(sg)}")
    return g


def _dequantize_int_group(op, q, swc, sg, N, K, group_size, fmt, check_shape, packed=None) -> torch.Tensor:
    """fmt 'int4' / 'int8' with group scales: sw[n] * sg[n, k // g] * q[n, k], float64, one rounding.
    q: the codes as float64 [N, K], or None to unpack `packed` (INT4, layout m16k32) after the checks."""
    zp = fmt == "int4" and isinstance(sg, torch.Tensor) and sg.dtype == ZP_GROUP_DTYPE
    if not isinstance(sg, torch.Tensor) or (sg.dtype not in (torch.int32, torch.float32) and not zp):
        got = c.desc(sg) if isinstance(sg, torch.Tensor) else type(sg).__name__
        also = ", or int16 (scales and zero points, scale='zp')" if fmt == "int4" else ""
        raise TypeError(f"{op}: sg must be int32 (integer scales) or float32 (float scales){also} for fmt={fmt!r}, got {got}")
    _sg_group_size(op, sg, N, K, group_size, check_shape)
    if zp:
        check_scale_zero(op, sg)
        return dequantize_int4_zp_ref(packed, swc.reshape(-1).expand(N), sg, K)
    if q is None:
        q = unpack_int4(packed, N, K).double()
    return (q * expand_groups(sg.double(), K) * swc.double()).float()


def _dequantize_fp8_block(op, wq, sw, sg, fmt, shape, block_size) -> torch.Tensor:
    """dequantize's fmt 'fp8' with block_size: wq [N, K] * sw[n // b, k // b] (float32)."""
    if fmt != "fp8":
        raise ValueError(f"{op}: block_size applies to fmt='fp8' only, got fmt={fmt!r} with block_size={block_size!r}")
    if sg is not None:
        raise ValueError(f"{op}: fmt='fp8' with block_size takes no sg (one scale per block, in sw), got sg")
    if not isinstance(wq, torch.Tensor) or wq.dim() != 2 or wq.dtype != _F8:
        got = c.desc(wq) if isinstance(wq, torch.Tensor) else type(wq).__name__
        raise TypeError(f"{op}: wq must be float8_e4m3fn [N, K] for fmt='fp8' with block_size, got {got}")
    N, K = wq.shape
    if shape is not None and tuple(shape) != (N, K):
        raise ValueError(f"{op}: shape {tuple(shape)} does not match wq {c.desc(wq)} ([{N}, {K}])")
    return dequantize_fp8_block_ref(wq, sw, check_fp8_block(op, N, K, block_size))
