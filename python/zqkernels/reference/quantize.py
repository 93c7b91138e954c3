"""Reference of the quantization kernels (src/cuda/quantize.cu).

Two torch details matter for bit-exactness, and both are avoided on purpose here:
- ``127.0 / t`` is evaluated by torch as ``t.reciprocal() * 127`` (two roundings), not as an IEEE
  division; the kernels divide. So the divisions below divide two tensors.
- a tensor divided by a Python scalar may be computed as a multiply by the scalar's reciprocal
  (CUDA does this), so the scalar is materialised as a tensor first.
"""

from __future__ import annotations

import torch

__all__ = ["quantize_per_token_ref", "quantize_weight_ref", "QMAX"]

# Largest quantized magnitude per bit width (symmetric grid, -qmax .. qmax).
QMAX = {8: 127, 4: 7}

# Rows whose amax is below 2^-64 are multiplied by 2^64 (exact) before dividing, so qmax / amax
# cannot overflow fp32 (it did for amax < ~3.7e-37: every value became qmax).
_TINY = 2.0**-64
_TINY_SCALE = 2.0**64


def _quantize_rows(v: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization: returns (q int8 [R, C], scale float32 [R])."""
    vf = v.float()
    rows, cols = vf.shape
    # max over an empty row is 0 by convention (torch's amax refuses an empty reduction).
    amax = vf.abs().amax(dim=1) if cols > 0 else vf.new_zeros(rows)
    qmax_t = torch.full_like(amax, float(qmax))
    scale = amax / qmax_t  # fp32 IEEE division (NaN/Inf in a row propagate into its scale)
    pre = torch.where(amax < _TINY, torch.full_like(amax, _TINY_SCALE), torch.ones_like(amax))
    inv = qmax_t / (amax * pre)  # fp32 IEEE division; inf for an all-zero row, replaced next
    inv = torch.where(amax == 0, torch.zeros_like(inv), inv)
    q = torch.round((vf * pre[:, None]) * inv[:, None])  # fp32 multiplies, round half to even
    q = q.clamp_(-qmax, qmax)
    # A row holding NaN/Inf has a NaN/Inf scale (visible); its q values are unspecified in the
    # kernels. Map NaN to 0 here so the reference itself is deterministic.
    q = torch.nan_to_num_(q, nan=0.0)
    return q.to(torch.int8).contiguous(), scale.contiguous()


def quantize_per_token_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise symmetric INT8 quantization of activations.

    x: [M, K] float (bf16 / fp16 / fp32). Returns (xq int8 [M, K], sx float32 [M]) with
    ``sx = amax / 127`` and ``xq = clamp(round_half_even(x * (127 / amax)), -127, 127)``, all in
    fp32; a row with amax == 0 gives sx = 0 and xq = 0. M == 0 and K == 0 are allowed.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_per_token_ref: x must be 2-D [M, K], got shape {list(x.shape)}")
    return _quantize_rows(x, QMAX[8])


def quantize_weight_ref(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise symmetric quantization of a weight [N, K] (one scale per output row).

    bits=8: values in [-127, 127]; bits=4: values in [-7, 7], stored in an int8 container.
    Returns (wq int8 [N, K], sw float32 [N]); same rounding as ``quantize_per_token_ref``.
    """
    if bits not in QMAX:
        raise ValueError(f"quantize_weight_ref: bits must be one of {sorted(QMAX)}, got {bits!r}")
    if w.dim() != 2:
        raise ValueError(f"quantize_weight_ref: w must be 2-D [N, K], got shape {list(w.shape)}")
    return _quantize_rows(w, QMAX[bits])
