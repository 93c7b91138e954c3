"""Reference of block-scaled FP8 (DeepSeek-V3 / Qwen3-FP8 checkpoints; compressed-tensors' "FP8 block";
docs/FP8.md, "Block-scaled FP8"): weights quantized per 128 x 128 block, activations per token per
group of 128 channels, and the GEMM that applies both scales per K-block.

- ``quantize_weight_fp8_block_ref(w)``: w [N, K] (K % 128 == 0, any N) -> (q float8_e4m3fn [N, K],
  sw float32 [ceil(N / 128), K / 128]). Block (i, j) covers rows [128 i, 128 i + 128) (clipped at N)
  and columns [128 j, 128 j + 128); its scale is the per-channel FP8 rule (``quantize_weight_fp8_ref``)
  applied to the block's values as one row: ``s = amax / 448``, ``q = fp8(w * (448 / amax))`` (fp32,
  round to nearest even, saturated to +-448; all-zero block: s = 0, q = 0; amax < 2^-64 prescaled).
- ``dequantize_fp8_block_ref(q, sw)``: ``q[n, k] * sw[n // 128, k // 128]`` in float32 (one rounding:
  the product of two floats with 4 and 24 significant bits is exact in float64).
- ``fp8_block_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation)``:
  ``y[m, n] = act(sum_j sx[m, j] sw[n // 128, j] sum_{k in block j} xq[m, k] wq[n, k] + bias[n])``:
  each block's sum of FP8 products is exact in float64 (multiples of 2^-18 below 2^18 * 128), the
  scales and the sum over blocks are float64, the epilogue is ``fp8_gemm_ref``'s (bias, then the
  activation), and the result is rounded once to out_dtype.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import _check_2d
from .gemm import _check_activation, _epilogue
from .quantize import quantize_weight_fp8_ref

__all__ = ["BLOCK", "quantize_weight_fp8_block_ref", "dequantize_fp8_block_ref", "fp8_block_gemm_ref"]

BLOCK = 128  # the only block size (weights: 128 x 128; activations: groups of 128 channels)
_F8 = torch.float8_e4m3fn


def _check_block(op: str, block: object) -> int:
    if isinstance(block, bool) or block != BLOCK:
        raise ValueError(f"{op}: block must be {BLOCK} (128 x 128 weight blocks), got {block!r}")
    return BLOCK


def _check_k(op: str, name: str, K: int, block: int) -> None:
    if K % block != 0:
        raise ValueError(
            f"{op}: {name} needs K % {block} == 0 (whole {block}-wide blocks of input channels), got K == {K}; "
            f"pad K with {-K % block} zero columns (and the activations with as many zeros)"
        )


def quantize_weight_fp8_block_ref(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 quantization of a weight [N, K] per 128 x 128 block (module docstring).

    Returns (q float8_e4m3fn [N, K], sw float32 [ceil(N / 128), K / 128], both contiguous)."""
    op = "quantize_weight_fp8_block_ref"
    b = _check_block(op, block)
    _check_2d(op, "w", w, "N, K")
    N, K = w.shape
    _check_k(op, "w", K, b)
    nb, kb = -(-N // b), K // b
    wf = w.float()
    if nb * b != N:  # zero rows do not change a block's amax
        wf = torch.cat([wf, wf.new_zeros(nb * b - N, K)])
    # each block becomes one row of 128 * 128 values: the per-channel FP8 rule on those rows
    rows = wf.reshape(nb, b, kb, b).permute(0, 2, 1, 3).reshape(nb * kb, b * b)
    q, s = quantize_weight_fp8_ref(rows)
    q = q.reshape(nb, kb, b, b).permute(0, 2, 1, 3).reshape(nb * b, K)[:N]
    return q.contiguous(), s.reshape(nb, kb).contiguous()


def _check_block_scales(op: str, sw: torch.Tensor, N: int, K: int, block: int) -> None:
    want = (-(-N // block), K // block)
    if not isinstance(sw, torch.Tensor) or sw.dtype != torch.float32 or tuple(sw.shape) != want:
        got = f"{sw.dtype} {list(sw.shape)}" if isinstance(sw, torch.Tensor) else type(sw).__name__
        raise ValueError(
            f"{op}: sw must be float32 [ceil(N / {block}), K / {block}] == {list(want)} (one scale per "
            f"{block} x {block} block of wq [{N}, {K}]), got {got}"
        )


def _expand_blocks(sw: torch.Tensor, N: int, block: int) -> torch.Tensor:
    """sw [ceil(N / b), K / b] -> one scale per weight [N, K]."""
    return sw.repeat_interleave(block, 0)[:N].repeat_interleave(block, 1)


def dequantize_fp8_block_ref(q: torch.Tensor, sw: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """The float32 weight [N, K] of block-scaled FP8: ``q[n, k] * sw[n // 128, k // 128]``."""
    op = "dequantize_fp8_block_ref"
    b = _check_block(op, block)
    _check_2d(op, "q", q, "N, K")
    if q.dtype != _F8:
        raise TypeError(f"{op}: q must be float8_e4m3fn [N, K], got {q.dtype} {list(q.shape)}")
    N, K = q.shape
    _check_k(op, "q", K, b)
    _check_block_scales(op, sw, N, K, b)
    return (q.double() * _expand_blocks(sw.double(), N, b)).float()


def fp8_block_gemm_ref(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    activation: str = "none",
) -> torch.Tensor:
    """Block-scaled FP8 GEMM (module docstring): xq float8_e4m3fn [M, K] with sx float32 [M, K / 128]
    (per token per group of 128 channels; any strides), wq float8_e4m3fn [N, K] with sw float32
    [ceil(N / 128), K / 128]; bias [N] or None. float64 math, one rounding to out_dtype."""
    op = "fp8_block_gemm_ref"
    _check_activation(op, activation)
    b = BLOCK
    for name, t in (("xq", xq), ("wq", wq)):
        if not isinstance(t, torch.Tensor) or t.dtype != _F8 or t.dim() != 2:
            got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{op}: {name} must be float8_e4m3fn 2-D, got {got}")
    M, K = xq.shape
    N = wq.shape[0]
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be [N, K] with K == xq.shape[1] ({K}), got {list(wq.shape)}")
    _check_k(op, "xq", K, b)
    if not isinstance(sx, torch.Tensor) or sx.dtype != torch.float32 or tuple(sx.shape) != (M, K // b):
        got = f"{sx.dtype} {list(sx.shape)}" if isinstance(sx, torch.Tensor) else type(sx).__name__
        raise ValueError(
            f"{op}: sx must be float32 [M, K / {b}] == [{M}, {K // b}] (one scale per token per group of {b} "
            f"channels), got {got}"
        )
    _check_block_scales(op, sw, N, K, b)
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"{op}: bias must be [N] == [{N}], got {list(bias.shape)}")
    kb = K // b
    x = xq.double().reshape(M, kb, b)
    w = wq.double().reshape(N, kb, b)
    part = torch.einsum("mjk,njk->jmn", x, w)  # exact per-block sums [kb, M, N]
    scale = sx.double().t()[:, :, None] * sw.double().repeat_interleave(b, 0)[:N].t()[:, None, :]
    acc = (part * scale).sum(0) if kb else x.new_zeros(M, N)
    one = torch.ones(1, dtype=torch.float64)
    return _epilogue(acc, one, one, bias, activation).to(out_dtype)
