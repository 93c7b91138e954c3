"""Reference of the two-level INT4 format with group zero points (QServe-style progressive
quantization; docs/W4A8.md, "Zero-point INT4"): the quantizer, the value of a weight, the GEMM.

A weight row n is quantized twice. Level 1: symmetric INT8 per channel in the protective range
[-119, 119], ``sw[n] = amax / 119`` (float32, rounded up to 19 significant bits so that every real
group scale ``sw * s`` is exact in float32: what a compressed-tensors checkpoint stores). Level 2, per group of the INT8 values ``v``: an
integer scale ``s`` in 1..16 and a zero point ``z`` in 0..15, and unsigned 4-bit codes ``u`` in
0..15, with ``s * (u - z)`` the group's approximation of ``v``:

    w[n, k] ~ sw[n] * s[n, j] * (u[n, k] - z[n, j])          (j = k // group_size)

``s * (u - z)`` always lies in [-127, 127] (below), so a kernel turns every code into an exact int8
in registers, ``u * s + (128 - z * s)`` bytewise then an XOR of 0x80 (the symmetric fused mode's
instruction with z = 8), and the GEMM is one plain int8 product sum: no per-group fold, no float
work per group.

Storage (what ``quantize_weight(w, fmt="int4", scale="zp", group_size=g)`` returns): ``wq`` uint8
[N, K // 2], the codes as ``q = u - 8`` (-8..7) packed by ``pack_int4`` (layout m16k32, the symmetric
format's); ``sw`` float32 [N]; ``sz`` int16 [N, K // g], ``s | z << 8`` (the dtype tells this format
from the integer-scale one, whose sg is int32).

The level-2 rule: ``lo, hi`` the group's smallest and largest v, widened to hold 0 (``lo <= 0 <= hi``:
a one-sided group keeps its whole range, from 0), ``s = max(1, ceil((hi - lo) / 15))``, ``z = clamp(rint(-lo / s), 0, 15)``, ``u = clamp(rint(v / s) + z,
0, 15)``. Why in range: |v| <= 119 and hi - lo <= 238 give s <= 16, and ``s * (u - z)`` is
``s * rint(v / s)`` moved towards 0 by the clamp, at most 119 + s / 2 <= 127 in magnitude.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import _check_2d
from .int_group import INT8_MAX_GROUP, unpack_int4

ZP_LEVEL1_MAX = 119  # the protective INT8 range of level 1 (QServe's): keeps s * (u - z) in int8
ZP_MAX_SCALE = 16
ZP_MAX_ZERO = 15
ZP_GROUP_DTYPE = torch.int16  # sz: s | z << 8
ZP_MAX_K = INT8_MAX_GROUP  # |x| <= 128 and |s (u - z)| <= 128: int8 x int8 products, one exact int32 sum


def pack_scale_zero(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Integer scales s (1..16) and zero points z (0..15) [N, G] -> sz int16 ``s | z << 8``."""
    return (s.to(torch.int16) | (z.to(torch.int16) << 8)).contiguous()


def split_scale_zero(sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sz int16 [N, G] -> (s, z) int32 [N, G]."""
    v = sz.to(torch.int32)
    return v & 0xFF, (v >> 8) & 0xFF


ZP_SW_BITS = 19  # sw's significant bits: sw * s (s <= 16) is exact in float32 (a checkpoint's real scale)


def zp_channel_scale(w: torch.Tensor) -> torch.Tensor:
    """Level 1's sw [N] of w [N, K] (float32): amax / 119 rounded UP to ZP_SW_BITS significant bits,
    so that |w| / sw <= 119 still and every real group scale sw * s is exact in float32. 0 for an
    all-zero row."""
    amax = w.detach().to(torch.float32).abs().amax(dim=1).double() / ZP_LEVEL1_MAX
    m, e = torch.frexp(amax)  # amax = m 2^e, m in [0.5, 1)
    return torch.ldexp(torch.ceil(m * 2.0**ZP_SW_BITS) / 2.0**ZP_SW_BITS, e).to(torch.float32)


def zp_level1(w: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
    """Level 1's INT8 values rint(w / sw) in [-119, 119] (float32 [N, K]; 0 on an all-zero row)."""
    safe = torch.where(sw > 0, sw, torch.ones_like(sw))
    return torch.clamp(torch.round(w.to(torch.float32) / safe[:, None]), -ZP_LEVEL1_MAX, ZP_LEVEL1_MAX)


def zp_group_params(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level 2's (s, z) of groups of INT8 values v [..., g] (float32): with lo = min(min v, 0) and hi =
    max(max v, 0) (the range always holds 0, so a one-sided group is not clipped), s = max(1, ceil((hi
    - lo) / 15)), z = clamp(rint(-lo / s), 0, 15), each [...]."""
    lo, hi = v.amin(dim=-1).clamp(max=0), v.amax(dim=-1).clamp(min=0)
    s = torch.clamp(torch.ceil((hi - lo) / ZP_MAX_ZERO), min=1)
    return s, torch.clamp(torch.round(-lo / s), 0, ZP_MAX_ZERO)


def zp_codes(v: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Level 2's unsigned codes u = clamp(rint(v / s) + z, 0, 15) (float32, s and z broadcast to v)."""
    return torch.clamp(torch.round(v / s) + z, 0, ZP_MAX_ZERO)


def zp_canonical(sw: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's integer scales s [N, G] divided by their greatest common divisor d and sw [N] times d
    (exact in float32: sw has ZP_SW_BITS significant bits, d < 2^4): the same real scales sw * s and
    weights, and the factorization a checkpoint loader recovers from those real scales alone (the
    largest per-channel scale that leaves integers; schemes/w4a8_zp.py, ``factor_scales``)."""
    si = s.to(torch.int64)
    d = si[:, 0].clone() if si.shape[1] else torch.ones(si.shape[0], dtype=torch.int64, device=s.device)
    for j in range(1, si.shape[1]):
        d = torch.gcd(d, si[:, j])
    d = d.clamp(min=1)
    return (sw.double() * d.double()).to(torch.float32), (si // d[:, None]).to(s.dtype)


def quantize_int4_zp_ref(w: torch.Tensor, group_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-level zero-point INT4 format of w [N, K] (finite; callers check), group size g
    dividing K (None: per channel). Returns (codes int8 [N, K] UNPACKED, ``u - 8`` in -8..7, sw
    float32 [N], sz int16 [N, K // g]); the module docstring has the rule; then ``zp_canonical``. An
    all-zero row gets sw = 0 and u = z = 0, s = 1: value exactly 0."""
    op = "quantize_int4_zp_ref"
    _check_2d(op, "w", w, "N, K")
    N, K = w.shape
    g = K if group_size is None else group_size
    if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or K % g != 0:
        raise ValueError(f"{op}: group_size must be a positive divisor of K == {K}, got {group_size!r}")
    sw = zp_channel_scale(w)
    v = zp_level1(w, sw).reshape(N, K // g, g)
    s, z = zp_group_params(v)
    u = zp_codes(v, s[..., None], z[..., None])
    codes = (u - 8).reshape(N, K).to(torch.int8).contiguous()
    sw, s = zp_canonical(sw, s)
    return codes, sw.contiguous(), pack_scale_zero(s, z)


def zp_int8_values(codes: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """The exact int8 values ``s * (u - z)`` [N, K] (int16 tensor) of codes ``u - 8`` int8 [N, K] and
    sz int16 [N, G]: what the kernels feed the int8 MMA."""
    N, K = codes.shape
    s, z = split_scale_zero(sz)
    g = K // sz.shape[1]
    u = codes.to(torch.int32) + 8
    return ((u - z.repeat_interleave(g, dim=1)) * s.repeat_interleave(g, dim=1)).to(torch.int16)


def check_zp_k(op: str, K: int) -> None:
    """ValueError when K is past the zero-point GEMM's exact int32 sum (ZP_MAX_K)."""
    if K > ZP_MAX_K:
        raise ValueError(f"{op}: K must be <= {ZP_MAX_K} for the zero-point format (one exact int32 sum), got {K}")


def check_scale_zero(op: str, sz: torch.Tensor) -> None:
    """ValueError unless every s is in 1..16 and every z in 0..15 (a sync: debug checks and loading)."""
    if sz.numel() == 0:
        return
    s, z = split_scale_zero(sz)
    bad = (s < 1) | (s > ZP_MAX_SCALE) | (z > ZP_MAX_ZERO) | (sz.to(torch.int32) >> 12 != 0)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise ValueError(
            f"{op}: sz must hold s | z << 8 with s in 1..{ZP_MAX_SCALE} and z in 0..{ZP_MAX_ZERO} "
            f"(quantize_weight(w, fmt='int4', scale='zp')), got {int(sz.flatten()[i])} at flat index {i}"
        )


def check_zp_values(op: str, wq: torch.Tensor, sz: torch.Tensor, K: int) -> None:
    """check_scale_zero, and every code's value s (u - z) inside int8 (what the kernels' bytewise
    conversion needs; quantize_weight guarantees it). A sync: debug checks and loading."""
    check_scale_zero(op, sz)
    if sz.numel() == 0 or wq.numel() == 0:
        return
    v = zp_int8_values(unpack_int4(wq, wq.shape[0], K), sz)
    lo, hi = int(v.min()), int(v.max())
    if lo < -128 or hi > 127:
        raise ValueError(
            f"{op}: the zero-point weights' values s * (u - z) must lie in [-128, 127] (the kernels convert each "
            f"code to an int8), got values in [{lo}, {hi}]"
        )


def zp_weight64(codes: torch.Tensor, sw: torch.Tensor, sz: torch.Tensor) -> torch.Tensor:
    """The weight [N, K] the kernels multiply, ``sw[n] * s * (u - z)``, exactly in float64, of codes
    ``u - 8`` int8 [N, K] (unpacked), sw [N] and sz int16 [N, G]."""
    return zp_int8_values(codes, sz).double() * sw.double().reshape(-1, 1)


def dequantize_int4_zp_ref(wq: torch.Tensor, sw: torch.Tensor, sz: torch.Tensor, K: int) -> torch.Tensor:
    """float32 [N, K]: ``sw[n] * s * (u - z)``, computed in float64 and rounded once."""
    return zp_weight64(unpack_int4(wq, wq.shape[0], K), sw, sz).to(torch.float32)

