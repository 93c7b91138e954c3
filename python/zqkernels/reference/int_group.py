"""Reference of the Integer Scale weight formats (docs/W4A8.md): INT4 and INT8 weights with group
scales, integer (with the amplifier alpha) or float; the INT4 packed layout m16k32; the overflow
bounds of the integer accumulation. Re-exported by reference/quantize.py."""

from __future__ import annotations

from typing import Optional

import torch

from .common import QMAX, _check_2d, _check_packable, _divide_groups, _pack_nibbles, _unpack_nibbles

# ------------------------------------------------------------------------------------------------
# INT4 weights with group scales, integer or float (docs/W4A8.md)

# alpha (the integer scales' multiplier) is a power of two in INT4_ALPHA_RANGE; the default heuristic
# clamps into INT4_HEURISTIC_RANGE. The largest integer scale is alpha (the channel's largest group),
# and it must keep one MMA step's product s_int * P within int32 for |P| <= 2^15 (docs/W4A8.md,
# "Overflow"): 2^15 * s_int <= 2^31 - 1 allows s_int <= 2^16 - 1 (INT4_MAX_SCALE), so alpha <= 2^15.
INT4_ALPHA_RANGE = (2**0, 2**15)
INT4_HEURISTIC_RANGE = (2**10, 2**15)
_STEP_MAX = 32 * 128 * 8  # |P| of one MMA step (32 k): activations may hold -128, weights -8
INT4_MAX_SCALE = (2**31 - 1) // _STEP_MAX  # 65535: the largest integer scale one step tolerates
INT4_SCALES = ("int", "float")
# INT8 weights with group scales: one group's int32 sum P (|P| <= g * 128 * 128, activations and
# weights -128) must not overflow, for integer and float scales alike: g <= 131071.
INT8_MAX_GROUP = (2**31 - 1) // (128 * 128)
_INT32_MAX = 2**31 - 1


def group_max_scale(group_size: int, wmax: int) -> int:
    """The largest integer group scale s for which ``s * P`` of one group of ``group_size`` k fits
    int32 for any inputs: ``floor((2^31 - 1) / (group_size * 128 * wmax))``, with |P| <= group_size *
    128 * wmax (activations may hold -128, weights -wmax: 128 for INT8, 8 for INT4). For INT4 the
    kernel's unit is one MMA step of 32 k, so ``group_max_scale(32, 8)`` == INT4_MAX_SCALE (65535).
    Raises ValueError when even s = 1 does not fit (a group of more than 131071 INT8 k)."""
    _check_group_bound_args("group_max_scale", group_size, wmax)
    s = _INT32_MAX // (group_size * 128 * wmax)
    if s < 1:
        raise ValueError(
            f"group_max_scale: a group of {group_size} k with weights up to {wmax} in magnitude can sum to "
            f"{group_size} * 128 * {wmax} = {group_size * 128 * wmax} > 2^31 - 1: no integer scale fits int32"
        )
    return s


def group_alpha_max(group_size: int, wmax: int) -> int:
    """The largest power of two alpha with ``group_size * 128 * wmax * alpha <= 2^31 - 1``: the largest
    alpha quantize_weight accepts (the largest integer scale is alpha, the channel's largest group).
    INT8 (wmax 128): g = 32 -> 2048, 64 -> 1024, 128 -> 512, 256 -> 256; INT4 per MMA step (g = 32,
    wmax 8) -> 2^15 (INT4_ALPHA_RANGE's top)."""
    return 1 << (group_max_scale(group_size, wmax).bit_length() - 1)


def _check_group_bound_args(op: str, group_size: object, wmax: object) -> None:
    for name, v in (("group_size", group_size), ("wmax", wmax)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")


def _check_alpha(op: str, alpha: object) -> int:
    lo, hi = INT4_ALPHA_RANGE
    if isinstance(alpha, bool) or not isinstance(alpha, int) or not lo <= alpha <= hi or alpha & (alpha - 1):
        raise ValueError(f"{op}: alpha must be a power of two int in [2^0, 2^15] (docs/W4A8.md), got {alpha!r}")
    return alpha


def _check_alpha8(op: str, alpha: object, g: int) -> int:
    """alpha of INT8 group scales: a power of two in [1, group_alpha_max(g, 128)] (g: the group size,
    K for per channel)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1 or alpha & (alpha - 1):
        raise ValueError(f"{op}: alpha must be a power of two int >= 1 (docs/W4A8.md), got {alpha!r}")
    hi = group_alpha_max(g, 128)
    if alpha > hi:
        raise ValueError(
            f"{op}: alpha={alpha} exceeds {hi}, the INT8 bound for group_size {g}: the largest integer scale "
            f"is alpha, and one group's |P| * alpha (up to {g} * 128 * 128 * alpha, activations and weights "
            f"-128) must fit int32 (docs/W4A8.md, 'Group-wise W8A8')"
        )
    return alpha


def _alpha_heuristic(r: torch.Tensor, nonzero: torch.Tensor, lo: int = INT4_HEURISTIC_RANGE[0],
                     hi: int = INT4_HEURISTIC_RANGE[1]) -> int:
    """The smallest 2^n with min(r) 2^n >= 1 over the non-zero groups, clamped to [lo, hi]
    (INT4_HEURISTIC_RANGE by default). For r = m 2^E (frexp, m in [0.5, 1)) that n is exactly 1 - E
    (also for m == 0.5: 0.5 * 2^(E + n) >= 1 <=> n >= 1 - E). A ratio that underflowed to 0 counts as
    the smallest normal (it takes the upper clamp); a tensor without non-zero groups gets the lower one."""
    if not bool(nonzero.any()):
        return lo
    rmin = r[nonzero].min().clamp_min(torch.finfo(torch.float32).tiny)
    n = 1 - int(torch.frexp(rmin).exponent)
    return min(max(2**n, lo), hi) if n >= 0 else lo


def _group_scales(
    w: torch.Tensor, g: int, qmax: int, scale: str, alpha_of
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric group quantization shared by INT4 and INT8 (docs/W4A8.md): per group ``s = amax /
    qmax``, ``q = clamp(rint(w / s), -qmax, qmax)``, ``r = s / s_max[n]``; float: (q, s_max, r); int:
    (q, s_max / alpha, max(rint(r * alpha), 1)), alpha = alpha_of(r, nonzero). All-zero groups get
    sg = 0, all-zero rows sw = 0. w [N, K] float, K % g == 0 (checked by the caller)."""
    N, K = w.shape
    wf = w.float()
    amax = wf.abs().reshape(N, K // g, g).amax(dim=2)  # [N, G]
    s = amax / torch.full_like(amax, float(qmax))  # fp32 IEEE division
    q = torch.round(_divide_groups(wf, s, g)).clamp_(-qmax, qmax)
    codes = torch.nan_to_num_(q, nan=0.0).to(torch.int8).contiguous()
    s_max = s.amax(dim=1)
    nonzero = s > 0
    r = s / torch.where(s_max == 0, torch.ones_like(s_max), s_max)[:, None]  # fp32, in [0, 1]
    if scale == "float":
        return codes, s_max.contiguous(), torch.where(nonzero, r, torch.zeros_like(r)).contiguous()
    alpha = alpha_of(r, nonzero)
    a = torch.full_like(r, float(alpha))
    sw = s_max / torch.full_like(s_max, float(alpha))
    if qmax == QMAX[4] and alpha < SMALL_ALPHA:
        codes, sg = _small_scales(wf, g, qmax, r * a, sw)
    else:
        sg = torch.round(r * a).clamp_(min=1)  # r * alpha exact (power of two); <= alpha since r <= 1
    sg = torch.where(nonzero, sg, torch.zeros_like(sg)).to(torch.int32)
    return codes, sw.contiguous(), sg.contiguous()


# INT4 with alpha below this (integer scales of a few bits, e.g. alpha = 16: the fused GEMM mode,
# docs/W4A8.md): rounding r * alpha moves a group's scale by up to 1 / (2 r alpha) of itself, so the
# codes are chosen against the scale actually stored, and each group's integer scale is the better
# (smaller squared error) of floor and ceil of r * alpha. At alpha >= 2^10 the codes are rint(w / s)
# as the paper defines them (the scale rounding is below 2^-11 there).
SMALL_ALPHA = 2**10


def _small_scales(wf: torch.Tensor, g: int, qmax: int, ra: torch.Tensor, sw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [N, K], sg float [N, G]) for small alpha: per group the integer scale c in
    {floor(r alpha), ceil(r alpha)} (at least 1) whose codes clamp(rint(w / (sw c)), -qmax, qmax)
    give the smaller sum of squared errors (ties: floor), and those codes."""
    N, K = wf.shape
    wg = wf.reshape(N, K // g, g)
    best_err = best_q = best_c = None
    for c in (torch.floor(ra).clamp_(min=1), torch.ceil(ra).clamp_(min=1)):
        se = sw[:, None] * c  # fp32: the scale the GEMM applies
        q = torch.round(wg / torch.where(se == 0, torch.ones_like(se), se)[:, :, None]).clamp_(-qmax, qmax)
        err = (q * se[:, :, None] - wg).square().sum(dim=2)
        if best_err is None:
            best_err, best_q, best_c = err, q, c
        else:
            take = err < best_err
            best_err = torch.where(take, err, best_err)
            best_q = torch.where(take[:, :, None], q, best_q)
            best_c = torch.where(take, c, best_c)
    codes = torch.nan_to_num_(best_q, nan=0.0).reshape(N, K).to(torch.int8).contiguous()
    return codes, best_c


def _check_group_args(op: str, w: torch.Tensor, group_size: object, scale: object, alpha: object) -> int:
    """The group size (K for None) after the checks both group quantizers share."""
    _check_2d(op, "w", w, "N, K")
    if scale not in INT4_SCALES:
        raise ValueError(f"{op}: scale must be one of {INT4_SCALES}, got {scale!r}")
    if alpha is not None and scale != "int":
        raise ValueError(f"{op}: alpha applies to scale='int' only, got alpha={alpha!r} with scale={scale!r}")
    K = w.shape[1]
    g = K if group_size is None else group_size
    if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or K % g != 0:
        raise ValueError(f"{op}: group_size must be a positive divisor of K == {K}, got {group_size!r}")
    return g


def quantize_int4_group_ref(
    w: torch.Tensor, group_size: Optional[int] = None, scale: str = "int", alpha: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric INT4 weight quantization with group scales (docs/W4A8.md, Integer Scale).

    w: [N, K] float, finite (callers check). group_size g divides K (None: g = K, one group per row).
    Per group ``s = amax / 7`` (fp32), ``q = clamp(rint(w / s), -7, 7)`` (half to even, fp32
    division), ``s_max[n]`` the row's largest s and ``r = s / s_max`` (fp32) in (0, 1]. Returns
    (codes int8 [N, K] UNPACKED, values -7..7 (``pack_int4`` gives the kernel's layout), sw float32
    [N], sg):

    - scale="int": sg int32 [N, K // g] = max(rint(r * alpha), 1), sw = s_max / alpha (exact: a
      power-of-two division). alpha: a power of two in [2^0, 2^15], default the heuristic (the
      smallest 2^n with min(r) 2^n >= 1 over the tensor's non-zero groups, clamped to [2^10, 2^15]).
      Below alpha = 2^10 (SMALL_ALPHA; alpha = 16 is the GEMM's fused mode) each group's sg is the
      better of floor / ceil(r * alpha) (at least 1) and its codes are rint(w / (sw * sg)), chosen
      against the scale actually stored (smaller squared error per group; ties: floor).
    - scale="float": sg float32 [N, K // g] = r, sw = s_max.

    So ``w[n, k] ~ sw[n] * sg[n, k // g] * q[n, k]``. Degenerate inputs: an all-zero group gets
    sg = 0 (int and float: its codes are all 0, so the group contributes exactly 0 whatever the
    activations), an all-zero row sw = 0 and sg = 0; nothing is NaN or Inf. Rows with amax below
    ~7 * 2^-126 have subnormal fp32 scales and lose precision (as any fp32 scale would).
    """
    op = "quantize_int4_group_ref"
    g = _check_group_args(op, w, group_size, scale, alpha)
    if alpha is not None:
        _check_alpha(op, alpha)

    def alpha_of(r, nonzero):
        return alpha if alpha is not None else _alpha_heuristic(r, nonzero)

    return _group_scales(w, g, QMAX[4], scale, alpha_of)


# INT8 weights with group scales (docs/W4A8.md, "Group-wise W8A8"): the default alpha's lower clamp.
# The heuristic alone (smallest 2^n with min(r) 2^n >= 1) gives alpha = 2 for ratios in [0.5, 1],
# which rounds r to steps of 1/2 (up to 33 % scale error); 2^10 as for INT4, capped by the bound.
INT8_HEURISTIC_MIN = 2**10


def quantize_int8_group_ref(
    w: torch.Tensor, group_size: Optional[int] = None, scale: str = "int", alpha: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric INT8 weight quantization with group scales for ``w8a8_group_gemm`` (docs/W4A8.md,
    "Group-wise W8A8"): the math of ``quantize_int4_group_ref`` with qmax 127.

    w: [N, K] float, finite (callers check); group_size g divides K (None: g = K). Per group ``s =
    amax / 127``, ``q = clamp(rint(w / s), -127, 127)``, ``r = s / s_max[n]`` in (0, 1]. Returns (wq
    int8 [N, K] (plain row-major: the kernel reads it as it is), sw float32 [N], sg):

    - scale="int": sg int32 [N, K // g] = max(rint(r * alpha), 1) (0 for all-zero groups), sw =
      s_max / alpha. alpha: a power of two in [1, group_alpha_max(g, 128)] (one group's |P| * alpha
      must fit int32: g = 32 -> 2048, 64 -> 1024, 128 -> 512, 256 -> 256; larger raises ValueError).
      Default: per channel (g == K, every ratio is 1) alpha = 1, exact; otherwise the heuristic
      (smallest 2^n with min(r) 2^n >= 1) clamped to [min(2^10, bound), bound], i.e. the bound for
      g >= 64.
    - scale="float": sg float32 = r, sw = s_max.
    """
    op = "quantize_int8_group_ref"
    g = _check_group_args(op, w, group_size, scale, alpha)
    K = w.shape[1]
    if g > INT8_MAX_GROUP:
        raise ValueError(
            f"{op}: group_size must be at most {INT8_MAX_GROUP} (a group's sum of products, up to group_size * "
            f"128 * 128, must fit int32), got {g}"
        )
    hi = group_alpha_max(g, 128)
    if alpha is not None:
        _check_alpha8(op, alpha, g)

    def alpha_of(r, nonzero):
        if alpha is not None:
            return alpha
        if g == K:
            return 1  # per channel: r == 1 for every non-zero row, so sg = 1 is exact
        return _alpha_heuristic(r, nonzero, min(INT8_HEURISTIC_MIN, hi), hi)

    return _group_scales(w, g, QMAX[8], scale, alpha_of)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """INT4 codes int8 [N, K] (values -8..7) -> uint8 [N, K // 2] in the kernel's m16k32 layout
    (docs/W4A8.md): two's complement nibbles, even nibble low. N % 16 == 0 and K % 64 == 0. As for
    ``pack_fp4`` the result's bytes are the layout's flat stream, not rows of codes."""
    op = "pack_int4"
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(f"{op}: codes must be int8 [N, K] (values -8..7), got {codes.dtype} {list(codes.shape)}")
    N, K = codes.shape
    _check_packable(op, N, K, "m16k32")
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError(f"{op}: codes must lie in [-8, 7], got values in [{int(codes.min())}, {int(codes.max())}]")
    return _pack_nibbles(codes.view(torch.uint8) & 0xF, "m16k32")


def unpack_int4(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: uint8 [N, K // 2] in layout m16k32 -> codes int8 [N, K] (-8..7)."""
    nib = _unpack_nibbles("unpack_int4", packed, N, K, "m16k32")
    return (nib.view(torch.int8) ^ 8) - 8  # sign-extend the nibble: 8..15 -> -8..-1


def w4a8_int_flush_steps(max_sint: int) -> int:
    """F of docs/W4A8.md ("Overflow"): the number of MMA steps the kernel may add ``s_int * P`` into
    its int32 accumulator before flushing it to fp32, ``floor((2^31 - 1) / (2^15 max_sint))``, so
    that ``F * 2^15 * max_sint < 2^31`` for any inputs. max_sint: the largest integer group scale
    (an int in [1, 2^16 - 1]; alpha bounds it). Raises ValueError outside: at 2^16 one step's
    ``2^16 * 2^15 = 2^31`` already overflows int32, so no F exists."""
    if isinstance(max_sint, bool) or not isinstance(max_sint, int) or not 1 <= max_sint <= INT4_MAX_SCALE:
        raise ValueError(
            f"w4a8_int_flush_steps: max_sint must be an int in [1, {INT4_MAX_SCALE}] (2^15 * max_sint must "
            f"stay below 2^31), got {max_sint!r}"
        )
    return (2**31 - 1) // (_STEP_MAX * max_sint)


#: The streaming kernel checks its overflow bound once a batch of this many MMA steps (4 chunks of 2).
W4A8_STREAM_FLUSH_BATCH = 8


def w4a8_stream_flush_steps(max_sint: int) -> int:
    """The streaming kernel's F (docs/W4A8.md, "Overflow"): it multiplies 16 q (a nibble in the high
    half of its byte, w4_convert.cuh) so one step's |P16| <= 2^19, and may add ``s_int * P16`` into its
    int32 accumulator ``floor((2^31 - 1) / (2^19 max_sint))`` times before flushing it to fp32; it checks
    once a batch of W4A8_STREAM_FLUSH_BATCH steps, so F is that bound rounded down to whole batches. 0
    when not one batch fits (max_sint >= 2^9): the host then runs the float-scale variant on
    float(s_int), one exact product and one fp32 rounding per step. Raises ValueError as
    ``w4a8_int_flush_steps`` does."""
    w4a8_int_flush_steps(max_sint)  # the argument checks
    f = (2**31 - 1) // (16 * _STEP_MAX * max_sint)
    return f - f % W4A8_STREAM_FLUSH_BATCH
