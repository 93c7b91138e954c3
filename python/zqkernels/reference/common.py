"""What the quantization references share (reference/quantize.py, reference/int_group.py): the
symmetric integer grids, shape checks, group-scale expansion and the packed 4-bit weight layouts."""

from __future__ import annotations

import torch

__all__ = ["QMAX", "expand_groups"]

# Largest quantized magnitude per bit width (symmetric grid, -qmax .. qmax).
QMAX = {8: 127, 4: 7}


def _check_2d(op: str, name: str, t: torch.Tensor, dims: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [{dims}], got shape {list(t.shape)}")


def expand_groups(t: torch.Tensor, K: int) -> torch.Tensor:
    """Group values [N, G] (G divides K) -> one per weight [N, K] (column k gets group k // (K // G))."""
    if t.dim() != 2 or t.shape[1] == 0 or K % t.shape[1] != 0:
        raise ValueError(f"expand_groups: need group values [N, G] with G dividing K == {K}, got shape {list(t.shape)}")
    return t.repeat_interleave(K // t.shape[1], dim=1)


# The packed layouts: n = 16 nt + 8 hi + r and a chunk of 64 k; a lane (4 r + t) holds 16 bytes of a
# chunk, 32 nibbles. The layouts differ in how k splits and in the nibble order inside a lane:
# - m16k64 (FP4, docs/FP8.md):   k = 64 kc + 16 t + 8 s + 4 q + j (an MMA step of 32 k is s, t, q, j
#   with t outermost: each lane's 16 consecutive k span both steps); nibble 8 (2 s + q) + 4 hi + j,
#   i.e. the flat stream in the order of the axes (nt, kc, r, t, s, q, hi, j)
# - m16k32 (INT4, docs/W4A8.md): k = 64 kc + 32 s + 16 q + 4 t + j (a step of 32 consecutive k
#   each, lane t holding the int8 MMA's natural A fragment: k 4t..4t+3 and 16+4t..16+4t+3, so that
#   the wgmma mainloop can feed it against activations in their natural order); nibble
#   8 (2 s + q) + 2 j + hi (byte j of word 2 s + q holds rows r and r + 8 of one k: the kernels
#   sign-extend the low and the high nibbles of a word into two registers with a few logic ops),
#   i.e. the axes (nt, kc, r, t, s, q, j, hi)
# Each is a reshape of codes [N, K] to (nt, hi, r, kc, <k axes>, j) and one permute.
_LAYOUTS = {
    # name: (k split of a 64-chunk below kc, permutation to the layout's axis order)
    "m16k64": ((4, 2, 2, 4), (0, 3, 2, 4, 5, 6, 1, 7)),  # codes.reshape(NT, hi, r, KC, t, s, q, j)
    "m16k32": ((2, 2, 4, 4), (0, 3, 2, 6, 4, 5, 7, 1)),  # codes.reshape(NT, hi, r, KC, s, q, t, j)
}


def _check_packable(op: str, N: int, K: int, layout: str = "m16k64") -> None:
    if N % 16 != 0:
        raise ValueError(f"{op}: the {layout} layout needs N % 16 == 0, got N == {N} (pad the output channels)")
    if K % 64 != 0:
        raise ValueError(f"{op}: the {layout} layout needs K % 64 == 0, got K == {K} (pad K with zero weights)")


def _pack_nibbles(nibbles: torch.Tensor, layout: str) -> torch.Tensor:
    """uint8 nibbles [N, K] (values 0..15) -> uint8 [N, K // 2] in `layout` (shape already checked)."""
    N, K = nibbles.shape
    split, axes = _LAYOUTS[layout]
    v = nibbles.reshape(N // 16, 2, 8, K // 64, *split).permute(*axes).reshape(-1, 2)
    packed = (v[:, 0] & 0xF) | ((v[:, 1] & 0xF) << 4)  # even nibble low, odd nibble high
    return packed.reshape(N, K // 2).contiguous()


def _unpack_nibbles(op: str, packed: torch.Tensor, N: int, K: int, layout: str) -> torch.Tensor:
    """Inverse of _pack_nibbles: uint8 [N, K // 2] -> uint8 nibbles [N, K] (values 0..15)."""
    _check_packable(op, N, K, layout)
    if packed.dtype != torch.uint8 or tuple(packed.shape) != (N, K // 2):
        raise TypeError(
            f"{op}: packed must be uint8 [N, K // 2] == [{N}, {K // 2}], got {packed.dtype} {list(packed.shape)}"
        )
    split, axes = _LAYOUTS[layout]
    shape = (N // 16, 2, 8, K // 64, *split)
    b = packed.reshape(-1)
    v = torch.stack((b & 0xF, b >> 4), dim=1)
    v = v.reshape([shape[a] for a in axes]).permute(*[axes.index(i) for i in range(8)])
    return v.reshape(N, K).contiguous()


def _divide_groups(wf: torch.Tensor, scale: torch.Tensor, g: int) -> torch.Tensor:
    """w[n, k] / scale[n, k // g] (fp32 IEEE division); a zero scale (all-zero group) divides by 1."""
    N, K = wf.shape
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (wf.reshape(N, -1, g) / scale[:, :, None]).reshape(N, K)
