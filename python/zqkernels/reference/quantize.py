"""Reference of the quantization kernels (src/cuda/row_quant.cu, the conversions of src/cuda/w4a8_gemm.cu and w4a8_int_gemm.cu).

Two torch details matter for bit-exactness, and both are avoided on purpose here:
- ``127.0 / t`` is evaluated by torch as ``t.reciprocal() * 127`` (two roundings), not as an IEEE
  division; the kernels divide. So the divisions below divide two tensors.
- a tensor divided by a Python scalar may be computed as a multiply by the scalar's reciprocal
  (CUDA does this), so the scalar is materialised as a tensor first.

The FP8 and FP4 (ZeroQuant-FP) formats are defined in docs/FP8.md; the functions below follow it
line by line. FP4 weights are quantized offline only (no kernel), so their reference is the
definition; ``pack_fp4`` is the byte layout the W4A8-FP kernel reads and ``fp4_lut_convert_model``
a pure-Python model of that kernel's integer FP4 -> FP8 conversion.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats import E2M1_VALUES, FP8_E4M3_MAX
from .common import (
    QMAX,
    _check_2d,
    _check_packable,
    _divide_groups,
    _pack_nibbles,
    _unpack_nibbles,
    expand_groups,
)

_E2M1_MAX = E2M1_VALUES[-1]

__all__ = [
    "quantize_per_token_ref",
    "quantize_weight_ref",
    "quantize_per_token_fp8_ref",
    "quantize_weight_fp8_ref",
    "e2m1_encode",
    "e2m1_decode",
    "quantize_fp4_ref",
    "pack_fp4",
    "unpack_fp4",
    "expand_groups",
    "quantize_int4_group_ref",
    "pack_int4",
    "unpack_int4",
    "w4a8_int_flush_steps",
    "w4a8_stream_flush_steps",
    "quantize_int8_group_ref",
    "group_max_scale",
    "group_alpha_max",
    "INT8_MAX_GROUP",
    "INT4_ALPHA_RANGE",
    "INT4_HEURISTIC_RANGE",
    "INT4_MAX_SCALE",
    "fp4_to_fp8_ref",
    "fp4_to_fp8_float_ref",
    "fp4_lut_convert_model",
    "FP4_POLICIES",
    "FP4_EXP_MIN",
    "FP4_EXP_MAX",
    "QMAX",
]


FP4_POLICIES = ("free", "m1", "m2")
# Group exponents of the power-of-two policies: the kernel's exponent arithmetic is exact for
# e in [-5, 0] (see fp4_lut_convert_model); r = 2^e <= 1 because sw is the channel's largest scale.
FP4_EXP_MIN, FP4_EXP_MAX = -5, 0

# Rows whose amax is below 2^-64 are multiplied by 2^64 (exact) before dividing, so qmax / amax
# cannot overflow fp32 (it did for amax < ~3.7e-37: every value became qmax).
_TINY = 2.0**-64
_TINY_SCALE = 2.0**64


def _quantize_rows(v: torch.Tensor, qmax: float, fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization: returns (q [R, C], scale float32 [R]).

    q is int8 (``fp8=False``: round half to even, clamp to +-qmax) or float8_e4m3fn (``fp8=True``,
    qmax 448: the fp32 product is clamped to +-448, then cast; torch's cast rounds to nearest even,
    and clamping first makes it saturate whatever the cast does with out-of-range values). The
    scale, the 2^-64 prescale of tiny rows and the zero-row convention are shared: the INT8 and FP8
    kernels compute them the same way (docs/SCALES.md, docs/FP8.md).
    """
    vf = v.float()
    rows, cols = vf.shape
    # max over an empty row is 0 by convention (torch's amax refuses an empty reduction).
    amax = vf.abs().amax(dim=1) if cols > 0 else vf.new_zeros(rows)
    qmax_t = torch.full_like(amax, float(qmax))
    scale = amax / qmax_t  # fp32 IEEE division (NaN/Inf in a row propagate into its scale)
    pre = torch.where(amax < _TINY, torch.full_like(amax, _TINY_SCALE), torch.ones_like(amax))
    inv = qmax_t / (amax * pre)  # fp32 IEEE division; inf for an all-zero row, replaced next
    inv = torch.where(amax == 0, torch.zeros_like(inv), inv)
    q = (vf * pre[:, None]) * inv[:, None]  # fp32 multiplies
    if not fp8:
        q = torch.round(q)  # round half to even
    q = q.clamp_(-qmax, qmax)
    # A row holding NaN/Inf has a NaN/Inf scale (visible); its q values are unspecified in the
    # kernels. Map NaN to 0 here so the reference itself is deterministic.
    q = torch.nan_to_num_(q, nan=0.0)
    return q.to(torch.float8_e4m3fn if fp8 else torch.int8).contiguous(), scale.contiguous()


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise symmetric INT8 quantization of activations.

    x: [M, K] float (bf16 / fp16 / fp32). Returns (xq int8 [M, K], sx float32 [M]) with
    ``sx = amax / 127`` and ``xq = clamp(round_half_even(x * (127 / amax)), -127, 127)``, all in
    fp32; a row with amax == 0 gives sx = 0 and xq = 0. M == 0 and K == 0 are allowed.
    """
    _check_2d("quantize_per_token_ref", "x", x, "M, K")
    return _quantize_rows(x, QMAX[8])


def quantize_weight_ref(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise symmetric quantization of a weight [N, K] (one scale per output row).

    bits=8: values in [-127, 127]; bits=4: values in [-7, 7], stored in an int8 container.
    Returns (wq int8 [N, K], sw float32 [N]); same rounding as ``quantize_per_token_ref``.
    """
    if bits not in QMAX:
        raise ValueError(f"quantize_weight_ref: bits must be one of {sorted(QMAX)}, got {bits!r}")
    _check_2d("quantize_weight_ref", "w", w, "N, K")
    return _quantize_rows(w, QMAX[bits])


def quantize_per_token_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise FP8 E4M3 quantization of activations (docs/FP8.md).

    x: [M, K] float. Returns (xq float8_e4m3fn [M, K], sx float32 [M]) with ``sx = amax / 448``,
    ``xq = fp8(x * (448 / amax))`` (fp32 product, round to nearest even, saturated to +-448); a row
    with amax == 0 gives sx = 0, xq = 0, and rows with amax < 2^-64 are prescaled by 2^64 as for
    INT8. A NaN/Inf row has a NaN/Inf sx; its xq values are 0 here (unspecified in the kernel).
    """
    _check_2d("quantize_per_token_fp8_ref", "x", x, "M, K")
    return _quantize_rows(x, FP8_E4M3_MAX, fp8=True)


def quantize_weight_fp8_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise FP8 E4M3 quantization of a weight [N, K]: the per-token math on the rows of w.

    Returns (wq float8_e4m3fn [N, K], sw float32 [N]).
    """
    _check_2d("quantize_weight_fp8_ref", "w", w, "N, K")
    return _quantize_rows(w, FP8_E4M3_MAX, fp8=True)


# ------------------------------------------------------------------------------------------------
# FP4 E2M1 (docs/FP8.md, "FP4 E2M1 weights")

# Rounding |v| to the nearest E2M1 magnitude: the code is the number of decision points passed.
# Each point is the midpoint of two neighbouring magnitudes; at a tie the value goes to the even
# code, so a midpoint whose upper neighbour has an even code (0.75 -> 1.0 code 2, 1.75 -> 2.0
# code 4, 3.5 -> 4.0 code 6) is passed when |v| >= it, the others (0.25, 1.25, 2.5, 5.0: upper
# neighbour odd) only when |v| > it. Above 5 everything is code 7 (6.0): the encoder saturates.
_E2M1_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def e2m1_encode(v: torch.Tensor) -> torch.Tensor:
    """Round values (already divided by their scale) to E2M1 codes: uint8 0..15, same shape.

    Nearest magnitude, ties to the even code (see _E2M1_MIDPOINTS), saturating at 6; code 8 + c is
    -e2m1(c). Zero (of either sign) and values rounding to magnitude 0 give code 0 (never the -0
    code 8), and NaN gives code 0: the callers reject non-finite weights before encoding.
    """
    if not v.is_floating_point():
        raise TypeError(f"e2m1_encode: v must be a floating-point tensor, got {v.dtype}")
    a = v.abs()
    mag = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
    for point, tie_up in _E2M1_MIDPOINTS:
        mag += (a >= point if tie_up else a > point).to(torch.uint8)
    sign = ((v < 0) & (mag > 0)).to(torch.uint8) << 3
    return mag | sign


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) -> float32 values. Code 8 decodes to -0.0 (the FP8 conversion of the
    kernel keeps that sign: byte 0x80), which equals 0 in every computation."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"e2m1_decode: codes must be uint8 (values 0..15), got {codes.dtype}")
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    mag = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def _ceil_log2(t: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(t)) of positive float32 values, as int32 (frexp: t = m * 2^E, m in [0.5, 1);
    t is a power of two exactly when m == 0.5, then log2 t = E - 1). No log rounding involved."""
    m, ex = torch.frexp(t)
    return ex - (m == 0.5).to(ex.dtype)


def quantize_fp4_ref(
    w: torch.Tensor, group_size: Optional[int] = None, policy: str = "m2"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FP4 E2M1 weight quantization with group scales, ZeroQuant-FP (docs/FP8.md).

    w: [N, K] float, finite (callers check). group_size g divides K (None: g = K, one group per
    row). policy: "free" (float ratios), "m1" or "m2" (power-of-two ratios). Returns
    (codes uint8 [N, K] UNPACKED (``pack_fp4`` gives the kernel's layout), sw float32 [N], sg) with
    ``w[n, k] ~ sw[n] * r[n, k // g] * e2m1(codes[n, k])``; sg is int8 exponents e in [-5, 0]
    (r = 2^e) for m1 / m2 and float32 ratios r in (0, 1] for free.

    Degenerate inputs give finite, harmless values rather than NaN: an all-zero group gets e = 0 /
    r = 1 (any ratio would do: its codes are all 0), an all-zero row sw = 0 with e = 0 / r = 1.
    Scales are computed in fp32 from amax / 6; the power-of-two rounding is exact (frexp), and for
    m2 ``sw * 2^e >= s`` is checked exactly (and e raised where the fp32 ratio fell short): no weight
    clips. Under free ``sw * r`` can fall one fp32 ulp under s (|w| / (sw r) <= 6 (1 + 2^-23)); the
    encoder saturates at 6, so that is no clip either. Rows with amax below ~6 * 2^-126 have
    subnormal fp32 scales and lose precision (as any fp32 scale would).
    """
    op = "quantize_fp4_ref"
    _check_2d(op, "w", w, "N, K")
    if policy not in FP4_POLICIES:
        raise ValueError(f"{op}: policy must be one of {FP4_POLICIES}, got {policy!r}")
    N, K = w.shape
    g = K if group_size is None else group_size
    if not isinstance(g, int) or g <= 0 or K % g != 0:
        raise ValueError(f"{op}: group_size must be a positive divisor of K == {K}, got {group_size!r}")
    G = K // g
    wf = w.float()
    amax = wf.abs().reshape(N, G, g).amax(dim=2)  # [N, G]
    s = amax / torch.full_like(amax, _E2M1_MAX)  # real group scales, fp32 IEEE division
    zero_group = s == 0
    if policy == "m1":
        c = _ceil_log2(torch.where(zero_group, torch.ones_like(s), s))
        c = torch.where(zero_group, torch.full_like(c, -(2**20)), c)  # loses every max below
        cmax = c.amax(dim=1, keepdim=True)  # G >= 1: g divides K > 0
        row_zero = zero_group.all(dim=1, keepdim=True)
        cmax = torch.where(row_zero, torch.zeros_like(cmax), cmax)
        sw = torch.ldexp(torch.ones_like(cmax, dtype=torch.float32), cmax).reshape(N)
        sw = torch.where(row_zero.reshape(N), torch.zeros_like(sw), sw)
        e = (c - cmax).clamp(FP4_EXP_MIN, FP4_EXP_MAX)
        e = torch.where(zero_group, torch.zeros_like(e), e)
    else:
        sw = s.amax(dim=1)
        safe_sw = torch.where(sw == 0, torch.ones_like(sw), sw)
        ratio = s / safe_sw[:, None]  # fp32 IEEE division, in [0, 1]
        if policy == "free":
            r = torch.where(zero_group, torch.ones_like(ratio), ratio)
            return _encode_groups(wf, sw, r, g), sw.contiguous(), r.contiguous()
        e = _ceil_log2(torch.where(zero_group, torch.ones_like(ratio), ratio))
        e = e.clamp(FP4_EXP_MIN, FP4_EXP_MAX)
        # Safety net: for normal fp32 s and sw the rounded ratio s / sw never falls onto a power of
        # two from above (a ratio above 2^-k exceeds it by more than half an ulp), but with
        # subnormal scales it can; check sw * 2^e >= s exactly (float64 holds both sides exactly)
        # and go one up where it fails (never past 0: sw >= s).
        short = sw.double()[:, None] * torch.ldexp(torch.ones_like(s, dtype=torch.float64), e) < s.double()
        e = e + short.to(e.dtype)
        e = torch.where(zero_group, torch.zeros_like(e), e)
    r = torch.ldexp(torch.ones_like(s), e)
    return _encode_groups(wf, sw, r, g), sw.contiguous(), e.to(torch.int8).contiguous()


def _encode_groups(wf: torch.Tensor, sw: torch.Tensor, r: torch.Tensor, g: int) -> torch.Tensor:
    """codes = e2m1(w / (sw[n] * r[n, j])) (fp32); a zero scale (all-zero row) divides by 1."""
    return e2m1_encode(_divide_groups(wf, sw[:, None] * r, g)).contiguous()  # sw * r exact for pow2 r


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes uint8 [N, K] -> uint8 [N, K // 2] in the kernel's m16k64 layout (docs/FP8.md).

    The result's bytes are the flat stream of the layout; the [N, K // 2] shape only says how big it
    is (row n of it is not the codes of row n). N % 16 == 0 and K % 64 == 0.
    """
    op = "pack_fp4"
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise TypeError(f"{op}: codes must be uint8 [N, K] (values 0..15), got {codes.dtype} {list(codes.shape)}")
    _check_packable(op, *codes.shape)
    return _pack_nibbles(codes, "m16k64")


def unpack_fp4(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Inverse of ``pack_fp4``: uint8 [N, K // 2] in layout m16k64 -> codes uint8 [N, K]."""
    return _unpack_nibbles("unpack_fp4", packed, N, K, "m16k64")


def _per_weight(op: str, name: str, t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """t [N, K] or group values [N, G] -> [N, K]."""
    if codes.dim() != 2:
        raise ValueError(f"{op}: codes must be 2-D [N, K], got shape {list(codes.shape)}")
    N, K = codes.shape
    if t.shape == codes.shape:
        return t
    if t.dim() == 2 and t.shape[0] == N and t.shape[1] > 0 and K % t.shape[1] == 0:
        return expand_groups(t, K)
    raise ValueError(f"{op}: {name} must be [N, K] == {[N, K]} or [N, G] with G dividing K, got {list(t.shape)}")


def fp4_to_fp8_ref(codes: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The FP8 E4M3 weights of the power-of-two policies: ``fp8(e2m1(code) * 2^e)``, exact.

    codes uint8 [N, K]; e integer exponents in [-5, 0], [N, K] or per group [N, G]. Every product
    is an E4M3 normal number (or 0), so the cast does not round; code 8 gives -0 (byte 0x80), as
    the kernel's conversion (fp4_lut_convert_model).
    """
    op = "fp4_to_fp8_ref"
    if e.is_floating_point() or e.is_complex():
        raise TypeError(f"{op}: e must be an integer tensor (group exponents), got {e.dtype}")
    if e.numel() and not bool(((e >= FP4_EXP_MIN) & (e <= FP4_EXP_MAX)).all()):
        raise ValueError(
            f"{op}: e must lie in [{FP4_EXP_MIN}, {FP4_EXP_MAX}], got values in [{int(e.min())}, {int(e.max())}]"
        )
    e_full = _per_weight(op, "e", e, codes)
    v = torch.ldexp(e2m1_decode(codes), e_full.to(torch.int32))
    return v.to(torch.float8_e4m3fn)


def fp4_to_fp8_float_ref(codes: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The FP8 E4M3 weights of the float policy: ``fp8(float32(e2m1(code)) * float32(r))``.

    The fp32 product is rounded once to E4M3, nearest even, saturating (|product| <= 6 for r <= 1,
    so saturation never triggers for valid ratios). r float32 [N, K] or per group [N, G]. Ratios
    under 2^-5 land in E4M3's subnormal range and lose mantissa bits (below 2^-11 whole groups
    flush to 0): the float baseline's own limit, which the power-of-two policies avoid by
    clamping e at -5.
    """
    op = "fp4_to_fp8_float_ref"
    if r.dtype != torch.float32:
        raise TypeError(f"{op}: r must be float32 (group ratios), got {r.dtype}")
    v = e2m1_decode(codes) * _per_weight(op, "r", r, codes)
    return v.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


# ------------------------------------------------------------------------------------------------
# A pure-Python model (ints only, no torch) of the kernel's FP4 -> FP8 conversion (docs/FP8.md,
# "FP4 -> FP8 by exponent arithmetic"). tests/test_fp_formats.py proves it equal to
# fp8(e2m1(code) * 2^e) for all 16 codes and every e in [-5, 0].
#
# Why e is limited to [-5, 0] (wider e would break the byte arithmetic):
# - e = -6: code 1 (0.5) has exponent field 6 + e = 0, which E4M3 reads as a subnormal with
#   mantissa 0, i.e. +0, while 0.5 * 2^-6 = 2^-7 needs the subnormal byte 0x04 (a mantissa shift,
#   not an exponent add). e <= -7 also borrows across bytes (0x30 - 0x38 < 0).
# - e >= 7: code 7's field 9 + e reaches 16 and carries into the byte's sign bit (and e = 6 would
#   make code 7 field 15, still finite, but r = 2^e > 1 never occurs: sw is the channel maximum).

_POS_TABLE_E0 = (0x00, 0x30, 0x38, 0x3C, 0x40, 0x44, 0x48, 0x4C)  # fp8 bytes of 0, .5, 1, 1.5, 2, 3, 4, 6
_MASK32 = 0xFFFFFFFF


def prmt(a: int, b: int, selector: int) -> int:
    """PTX ``prmt.b32`` default mode: result byte i picks byte (selector nibble i & 7) of the 8 bytes
    {b, a} (a holds bytes 0..3); when the nibble's bit 3 is set, the picked byte's sign bit is
    replicated over the 8 bits instead. Only the low 16 bits of the selector are read."""
    src = ((b & _MASK32) << 32) | (a & _MASK32)
    out = 0
    for i in range(4):
        nib = (selector >> (4 * i)) & 0xF
        byte = (src >> (8 * (nib & 7))) & 0xFF
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0x00
        out |= byte << (8 * i)
    return out


def fp4_lut_tables(e: int) -> tuple[int, int, int, int]:
    """The per-group tables (pos_lo, pos_hi, neg_lo, neg_hi) as 32-bit words, built from e with two
    integer additions (adding e << 3 to the exponent fields of bytes 1..7; 32-bit wrap-around, so
    a negative e subtracts from every byte, with no borrow while each field stays >= 1) and two ORs."""
    base_lo = sum(b << (8 * i) for i, b in enumerate(_POS_TABLE_E0[:4]))  # 0x3C383000
    base_hi = sum(b << (8 * i) for i, b in enumerate(_POS_TABLE_E0[4:]))  # 0x4C484440
    pos_lo = (base_lo + (e << 3) * 0x01010100) & _MASK32  # byte 0 (code 0 -> +0) stays 0
    pos_hi = (base_hi + (e << 3) * 0x01010101) & _MASK32
    return pos_lo, pos_hi, pos_lo | 0x80808080, pos_hi | 0x80808080


def fp4_lut_convert_model(codes4, e: int) -> list[int]:
    """Convert 4 E2M1 codes (one 16-bit half of a weight register) to their 4 FP8 E4M3 bytes.

    codes4: 4 ints 0..15 (k order: code i in bits 4i..4i+3). Three byte permutes and two logic
    operations per register half: ``sel = x & 0x7777`` (magnitude indices; the sign bits must go,
    they would switch prmt to sign-replication), the magnitudes from the positive and the negative
    table, then ``choose = ((x >> 1) & 0x4444) | 0x3210`` picks per byte the positive (i) or the
    negative (4 + i) result by the code's sign. Returns the 4 bytes, byte i for code i.
    """
    pos_lo, pos_hi, neg_lo, neg_hi = fp4_lut_tables(e)
    x = 0
    for i, code in enumerate(codes4):
        x |= (code & 0xF) << (4 * i)
    sel = x & 0x7777
    mag = prmt(pos_lo, pos_hi, sel)
    neg = prmt(neg_lo, neg_hi, sel)
    choose = ((x >> 1) & 0x4444) | 0x3210
    out = prmt(mag, neg, choose)
    return [(out >> (8 * i)) & 0xFF for i in range(4)]


# The Integer Scale formats live in reference/int_group.py; their names stay importable from here.
from .int_group import (  # noqa: E402
    _INT32_MAX,  # noqa: F401
    INT4_ALPHA_RANGE,  # noqa: F401
    INT4_HEURISTIC_RANGE,  # noqa: F401
    INT4_MAX_SCALE,  # noqa: F401
    INT4_SCALES,  # noqa: F401
    INT8_HEURISTIC_MIN,  # noqa: F401
    INT8_MAX_GROUP,  # noqa: F401
    _alpha_heuristic,  # noqa: F401
    _check_alpha,  # noqa: F401
    _check_alpha8,  # noqa: F401
    _check_group_args,  # noqa: F401
    _group_scales,  # noqa: F401
    group_alpha_max,  # noqa: F401
    group_max_scale,  # noqa: F401
    pack_int4,  # noqa: F401
    quantize_int4_group_ref,  # noqa: F401
    quantize_int8_group_ref,  # noqa: F401
    unpack_int4,  # noqa: F401
    w4a8_int_flush_steps,  # noqa: F401
    w4a8_stream_flush_steps,  # noqa: F401
)
