"""The per-format quantize-dequantize grids GPTQ sweeps over (algorithms/gptq.py): one ``_Grid``
subclass per weight format of ``quantize_weight`` (per channel int / FP8, 128 x 128 FP8 blocks,
INT4 / INT8 groups with integer or float scales, INT4 with zero points, FP4 groups), and the resolution of
``quantize_weight``'s format arguments to a grid."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..reference.int_group import SMALL_ALPHA, _small_scales

__all__ = []  # private to algorithms/gptq.py


# Rows whose amax is below 2^-64 are scaled by 2^64 before dividing (as the RTN reference does).
_TINY = 2.0**-64
_TINY_SCALE = 2.0**64


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _row_grid(w: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (scale, pre, inv) of the symmetric grid, computed exactly as the RTN reference
    (reference/quantize.py) does, so that q = round((v * pre) * inv) reproduces RTN bit for bit."""
    rows, cols = w.shape
    amax = w.abs().amax(dim=1) if cols > 0 else w.new_zeros(rows)
    qmax_t = torch.full_like(amax, float(qmax))
    scale = amax / qmax_t
    pre = torch.where(amax < _TINY, torch.full_like(amax, _TINY_SCALE), torch.ones_like(amax))
    inv = qmax_t / (amax * pre)
    inv = torch.where(amax == 0, torch.zeros_like(inv), inv)
    return scale, pre, inv


# ------------------------------------------------------------------------------------------------
# Per-format quantize-dequantize of one column (the grids of quantize_weight).
#
# A grid is built from the original weight (the per-row quantities: scale, sw, alpha), is told
# when the loop reaches a group's first column (start_group: the group's scales from the current,
# already error-corrected values of its columns, as the GPTQ reference's groupwise mode does), and
# maps one column to (codes, dequantized value). result() turns the codes into exactly what
# quantize_weight returns for the format (packed layouts included). With an identity Hessian no
# error is passed on, the group scales see the original weight, and the result is quantize_weight's
# bit for bit (tested for every format).


class _Grid:
    group = 0  # columns per group (K: per channel)
    lazy_scales = True  # scales computed at a group's first column (start_group); False: fixed up front

    def start_group(self, j: int, values: torch.Tensor) -> None:
        """values [N, g]: the current values of group j's columns (in original column order)."""

    def quant(self, col: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """col [N, 1] float32 of group j -> (codes [N, 1] float32, dequantized [N, 1] float32)."""
        raise NotImplementedError

    def result(self, codes: torch.Tensor) -> tuple:
        raise NotImplementedError


class _ChannelGrid(_Grid):
    """INT8 / INT4 per channel (int8 container) and FP8 E4M3 per channel: _quantize_rows's math
    (reference/quantize.py), scale = amax / qmax per row fixed from the original weight."""

    lazy_scales = False

    def __init__(self, W: torch.Tensor, qmax: float, fp8: bool) -> None:
        self.group = W.shape[1]
        self.qmax, self.fp8 = qmax, fp8
        self.scale, pre, inv = _row_grid(W, qmax)
        self.pre, self.inv, self.scale_c = pre[:, None], inv[:, None], self.scale[:, None]

    def quant(self, col, j):
        q = (col * self.pre) * self.inv
        if self.fp8:
            q = q.clamp_(-self.qmax, self.qmax).to(torch.float8_e4m3fn).float()
        else:
            q = torch.round(q).clamp_(-self.qmax, self.qmax)
        return q, q * self.scale_c

    def result(self, codes):
        dtype = torch.float8_e4m3fn if self.fp8 else torch.int8
        return codes.to(dtype).contiguous(), self.scale.contiguous()


class _FP8BlockGrid(_Grid):
    """FP8 E4M3 with one scale per b x b block (quantize_weight(w, fmt="fp8", block_size=b);
    reference/block.py): each block's scale is the per-channel FP8 rule on the block's values, fixed
    from the original weight before the sweep, like the per-channel grids (so an identity Hessian gives
    RTN bit for bit); a column's codes are fp8((v * pre) * inv) of its row block, saturated to +-448;
    the error fed back is v - q * s, the value dequantize gives. Group j of the sweep is K-block j."""

    lazy_scales = False

    def __init__(self, W: torch.Tensor, b: int) -> None:
        N, K = W.shape
        nb, kb = -(-N // b), K // b
        self.group, self.b = b, b
        wf = W if nb * b == N else torch.cat([W, W.new_zeros(nb * b - N, K)])  # zero rows: amax unchanged
        blocks = wf.reshape(nb, b, kb, b).permute(0, 2, 1, 3).reshape(nb * kb, b * b)
        scale, pre, inv = _row_grid(blocks, 448)
        self.scale = scale.reshape(nb, kb)

        def rows(t: torch.Tensor) -> torch.Tensor:  # [nb * kb] -> one value per (row, K-block) [N, kb]
            return t.reshape(nb, kb).repeat_interleave(b, 0)[:N].contiguous()

        self.pre, self.inv, self.scale_r = rows(pre), rows(inv), rows(scale)

    def quant(self, col, j):
        q = (col * self.pre[:, j : j + 1]) * self.inv[:, j : j + 1]
        q = q.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn).float()
        return q, q * self.scale_r[:, j : j + 1]

    def result(self, codes):
        return codes.to(torch.float8_e4m3fn).contiguous(), self.scale.contiguous()


class _IntGroupGrid(_Grid):
    """INT4 (packed, layout m16k32) / INT8 weights with integer or float group scales: the math of
    _group_scales (reference/quantize.py). Per row, s_max (hence sw) and alpha come from the
    original weight; a group's s = amax / qmax from its current values when the loop reaches it
    (kept <= s_max, so r <= 1 and the integer scale <= alpha, the overflow bound), q = rint(w / s)
    as quantize_weight rounds, sg = max(rint(r * alpha), 1) (int) or r (float), and the error fed
    back is w - sw * sg * q, the value dequantize gives (float64, one rounding). INT4 with alpha
    below SMALL_ALPHA picks each group's integer scale and divides by the stored scale, as
    quantize_weight does there."""

    def __init__(self, W: torch.Tensor, bits: int, g: int, kind: str, alpha: Optional[int]) -> None:
        from ..reference.quantize import (
            INT8_HEURISTIC_MIN,
            QMAX,
            _alpha_heuristic,
            group_alpha_max,
        )

        N, K = W.shape
        self.group, self.bits, self.kind = g, bits, kind
        self.qmax = QMAX[bits]
        amax = W.abs().reshape(N, K // g, g).amax(dim=2)
        s = amax / torch.full_like(amax, float(self.qmax))
        self.s_max = s.amax(dim=1)
        safe = torch.where(self.s_max == 0, torch.ones_like(self.s_max), self.s_max)
        self.safe_max = safe[:, None]
        r = s / self.safe_max
        nonzero = s > 0
        if kind == "int":
            if alpha is None:  # quantize_int4_group_ref's / quantize_int8_group_ref's default
                if bits == 4:
                    alpha = _alpha_heuristic(r, nonzero)
                elif g == K:
                    alpha = 1
                else:
                    hi = group_alpha_max(g, 128)
                    alpha = _alpha_heuristic(r, nonzero, min(INT8_HEURISTIC_MIN, hi), hi)
            self.alpha = alpha
            self.sw = self.s_max / torch.full_like(self.s_max, float(alpha))
            self.sg = torch.zeros((N, K // g), dtype=torch.int32, device=W.device)
        else:
            self.sw = self.s_max
            self.sg = torch.zeros((N, K // g), dtype=torch.float32, device=W.device)
        self.sw64 = self.sw.double()[:, None]
        self.s = torch.zeros((N, K // g), dtype=torch.float32, device=W.device)
        self.deq_scale = torch.zeros((N, K // g), dtype=torch.float64, device=W.device)

    def start_group(self, j, values):
        amax = values.abs().amax(dim=1)
        s = amax / torch.full_like(amax, float(self.qmax))
        s = torch.minimum(s, self.s_max)
        nonzero = s > 0
        r = s / self.safe_max[:, 0]
        if self.kind == "int":
            a = torch.full_like(r, float(self.alpha))
            if self.bits == 4 and self.alpha < SMALL_ALPHA:  # as _small_scales: codes against the stored scale
                _, c = _small_scales(values.float(), values.shape[1], self.qmax, (r * a)[:, None], self.sw)
                sg = c[:, 0]
                s = torch.where(nonzero, self.sw * sg, s)
            else:
                sg = torch.round(r * a).clamp_(min=1)
            sg = torch.where(nonzero, sg, torch.zeros_like(sg))
            self.sg[:, j] = sg.to(torch.int32)
        else:
            sg = torch.where(nonzero, r, torch.zeros_like(r))
            self.sg[:, j] = sg
        self.s[:, j] = s
        self.deq_scale[:, j] = sg.double() * self.sw64[:, 0]

    def quant(self, col, j):
        s = self.s[:, j : j + 1]
        q = torch.round(col / torch.where(s == 0, torch.ones_like(s), s)).clamp_(-self.qmax, self.qmax)
        q = torch.where(s == 0, torch.zeros_like(q), q)  # an all-zero group: sg = 0, codes 0
        return q, (q.double() * self.deq_scale[:, j : j + 1]).float()

    def result(self, codes):
        from ..reference.quantize import pack_int4

        wq = codes.to(torch.int8).contiguous()
        if self.bits == 4:
            wq = pack_int4(wq)
        return wq, self.sw.contiguous(), self.sg.contiguous()


class _FP4Grid(_Grid):
    """FP4 E2M1 (packed, layout m16k64) with ZeroQuant-FP group scales: the math of
    quantize_fp4_ref. sw (and for m1 the row exponent cmax) from the original weight; a group's
    exponent e (m1 / m2, in [-5, 0]) or ratio r (free, <= 1) from its current values when the loop
    reaches it; codes = e2m1(w / (sw r)); the error fed back is w - the value dequantize gives
    (e2m1 * 2^e * sw exactly, or fp8(e2m1 * r) * sw for free, as the kernel rounds)."""

    def __init__(self, W: torch.Tensor, g: int, policy: str) -> None:
        from ..reference.quantize import _E2M1_MAX, _ceil_log2

        N, K = W.shape
        self.group, self.policy = g, policy
        self._E2M1_MAX, self._ceil_log2 = _E2M1_MAX, _ceil_log2
        amax = W.abs().reshape(N, K // g, g).amax(dim=2)
        s = amax / torch.full_like(amax, _E2M1_MAX)
        zero = s == 0
        if policy == "m1":
            c = _ceil_log2(torch.where(zero, torch.ones_like(s), s))
            c = torch.where(zero, torch.full_like(c, -(2**20)), c)
            cmax = c.amax(dim=1, keepdim=True)
            row_zero = zero.all(dim=1, keepdim=True)
            self.cmax = torch.where(row_zero, torch.zeros_like(cmax), cmax)
            sw = torch.ldexp(torch.ones_like(self.cmax, dtype=torch.float32), self.cmax).reshape(N)
            self.sw = torch.where(row_zero.reshape(N), torch.zeros_like(sw), sw)
        else:
            self.sw = s.amax(dim=1)
        self.safe_sw = torch.where(self.sw == 0, torch.ones_like(self.sw), self.sw)
        sg_dtype = torch.float32 if policy == "free" else torch.int8
        self.sg = torch.zeros((N, K // g), dtype=sg_dtype, device=W.device)
        self.r = torch.ones((N, K // g), dtype=torch.float32, device=W.device)

    def start_group(self, j, values):
        from ..reference.quantize import FP4_EXP_MAX, FP4_EXP_MIN

        amax = values.abs().amax(dim=1)
        s = amax / torch.full_like(amax, self._E2M1_MAX)
        zero = s == 0
        if self.policy == "m1":
            c = self._ceil_log2(torch.where(zero, torch.ones_like(s), s))
            e = (c - self.cmax[:, 0]).clamp(FP4_EXP_MIN, FP4_EXP_MAX)
            e = torch.where(zero, torch.zeros_like(e), e)
        else:
            ratio = s / self.safe_sw
            if self.policy == "free":
                r = torch.where(zero, torch.ones_like(ratio), ratio).clamp_(max=1.0)
                self.sg[:, j] = r
                self.r[:, j] = r
                return
            e = self._ceil_log2(torch.where(zero, torch.ones_like(ratio), ratio)).clamp(FP4_EXP_MIN, FP4_EXP_MAX)
            short = self.sw.double() * torch.ldexp(torch.ones_like(s, dtype=torch.float64), e) < s.double()
            e = (e + short.to(e.dtype)).clamp(max=FP4_EXP_MAX)
            e = torch.where(zero, torch.zeros_like(e), e)
        self.sg[:, j] = e.to(torch.int8)
        self.r[:, j] = torch.ldexp(torch.ones_like(s), e)

    def quant(self, col, j):
        from ..reference.quantize import e2m1_decode, e2m1_encode, fp4_to_fp8_float_ref

        r = self.r[:, j : j + 1]
        scale = self.sw[:, None] * r  # exact for power-of-two r
        codes = e2m1_encode(col / torch.where(scale == 0, torch.ones_like(scale), scale))
        if self.policy == "free":
            v = fp4_to_fp8_float_ref(codes, r).float()
        else:
            v = e2m1_decode(codes) * r  # e2m1 * 2^e, exact
        return codes.float(), v * self.sw[:, None]

    def result(self, codes):
        from ..reference.quantize import pack_fp4

        return pack_fp4(codes.to(torch.uint8)), self.sw.contiguous(), self.sg.contiguous()


class _ZeroPointGrid(_Grid):
    """The zero-point INT4 format (quantize_weight(w, fmt="int4", scale="zp"); reference/zero_point.py):
    level 1's sw per row from the original weight; a group's integer scale s and zero point z from the
    level-1 values of its current columns when the loop reaches it; codes u = clamp(rint(v / s) + z, 0,
    15) of v = rint(w / sw) in [-119, 119]; the error fed back is w - sw * s * (u - z) (the value the
    kernels use, float64, one rounding)."""

    def __init__(self, W: torch.Tensor, g: int) -> None:
        from ..reference.zero_point import zp_channel_scale

        N, K = W.shape
        self.group = g
        self.sw = zp_channel_scale(W)
        self.s = torch.ones((N, K // g), dtype=torch.float32, device=W.device)
        self.z = torch.zeros((N, K // g), dtype=torch.float32, device=W.device)

    def start_group(self, j, values):
        from ..reference.zero_point import zp_group_params, zp_level1

        self.s[:, j], self.z[:, j] = zp_group_params(zp_level1(values, self.sw))

    def quant(self, col, j):
        from ..reference.zero_point import zp_codes, zp_level1

        s, z = self.s[:, j : j + 1], self.z[:, j : j + 1]
        u = zp_codes(zp_level1(col, self.sw), s, z)
        return u - 8, ((u - z).double() * s.double() * self.sw.double()[:, None]).float()

    def result(self, codes):
        from ..reference.quantize import pack_int4
        from ..reference.zero_point import pack_scale_zero, zp_canonical

        sw, s = zp_canonical(self.sw, self.s)
        return pack_int4(codes.to(torch.int8).contiguous()), sw.contiguous(), pack_scale_zero(s, self.z)


def _resolve_format(
    op: str, w: torch.Tensor, bits: Optional[int], fmt: Optional[str], group_size: Optional[int],
    scale: Optional[str], alpha: Optional[int], block_size: Optional[int] = None,
) -> tuple[str, Any]:
    """(kind, args) of the grid quantize_weight(w, fmt=, scale=, group_size=, alpha=, block_size=) uses
    (bits: see gptq_quantize_weight); the arguments are checked by quantize_weight's own checks (same
    errors, naming `op`)."""
    from ..ops.quantize import resolve_weight_format

    N, K = w.shape
    if fmt is None and group_size is None and scale is None and alpha is None and block_size is None:
        b = 8 if bits is None else bits
        if not _is_int(b) or not 2 <= b <= 8:
            raise ValueError(f"{op}: bits must be an int in 2..8, got {bits!r}")
        return "channel", (2 ** (b - 1) - 1, False)
    # quantize_weight's own resolution and checks (same errors, naming `op`; old spellings warn)
    f = resolve_weight_format(op, N, K, bits, fmt, group_size, scale, alpha, block_size=block_size, stacklevel=3)
    if f.block_size is not None:
        return "fp8_block", (f.block_size,)
    if f.fmt == "fp8":
        return "channel", (448.0, True)
    if f.fmt == "fp4":
        return "fp4", (f.group_size, f.scale)
    if f.scale is None:  # per channel, one float scale per row
        return "channel", (2 ** (_WEIGHT_BITS[f.fmt] - 1) - 1, False)
    if f.scale == "zp":
        return "zero_point", (f.group_size or K,)
    return "int_group", (_WEIGHT_BITS[f.fmt], f.group_size, f.scale, f.alpha)


_WEIGHT_BITS = {"int8": 8, "int4": 4}


def _make_grid(kind: str, args: Any, W: torch.Tensor) -> _Grid:
    if kind == "channel":
        return _ChannelGrid(W, *args)
    if kind == "fp4":
        return _FP4Grid(W, *args)
    if kind == "fp8_block":
        return _FP8BlockGrid(W, *args)
    if kind == "zero_point":
        return _ZeroPointGrid(W, *args)
    return _IntGroupGrid(W, *args)
