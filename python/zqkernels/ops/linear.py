"""The seam between the ops and the layers above (schemes/, nn/): a quantized linear layer's forward,
keyed by the GEMM spec, so that no layer touches ``zqkernels._C`` or a private ``ops._*`` name.

    quantized_linear(spec, x2, wq, sw, sg=None, bias=None, max_scale=None, *, trusted=False)
        x2 [M, K] bf16 / fp16 / fp32 -> quantize_per_token (the spec's activation format) -> the
        spec's GEMM -> y [M, N] in x2's dtype
    gemm_quantized(spec, xq, wq, sx, sw, sg=None, bias=None, out_dtype=torch.bfloat16, max_scale=None,
                   *, trusted=False)
        activations already quantized (quantize_per_token, or a fused row op of ops/fused.py) ->
        the spec's GEMM -> y [M, N] in out_dtype
    activation_dtype(spec)
        the activation format the spec's GEMM takes: torch.int8 or torch.float8_e4m3fn

``spec`` is a key of ``GEMM_SPECS`` (``GemmSpec.recipe``, e.g. "int8_rowwise", "fp8_rowwise",
"w4a8_fp", "w4a8_int", "int8_group_int"); a layer computes it once. ``sg`` (group scales) goes with
the group recipes, ``max_scale`` with integer group scales (ops/gemm.py).

``trusted=True``: the caller vouches for what QLinear checks once when built and on each forward:
x2 / xq is 2-D with rows in place (``_common.has_row_layout``) on wq's device, x2 is bf16 / fp16 /
fp32, K % 16 == 0, and wq, sw, bias are valid CUDA operands of the spec (a layer's own buffers:
wq contiguous, N % 8 == 0, sw float32 [N], bias [N] in the output dtype). For "int8_rowwise" an
eager CUDA call then skips the argument checks and runs two launches with xq / sx (and any GEMM
workspace) in per-stream scratch (``_common.scratch_ptr``): one allocation, the output. Every
other call takes the public ops' own paths (their eager fast paths, or the custom ops when traced),
with their full checks. ``gemm_options`` (ops/gemm.py) is honoured: while a setting is in effect the
scratch path is not taken, so that its knobs reach the GEMM.

fp32 output of the FP8 recipes: their kernels write bf16 / fp16 only, so a float32 request gets the
bf16 GEMM output widened and the bias added in fp32 (bf16's rounding, 2^-9 relative, is far below
the FP8 operands' quantization error, E4M3: 2^-4 relative per element).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from . import _common as c
from . import gemm as g
from .gemm import int8_gemm, run_gemm
from .gemm_checks import GEMM_SPECS, RECIPES
from .gemm_cuda import plan, rowwise_gemm_cuda
from .quantize import _cuda_ready, _quantize_cuda, quantize_per_token
from .quantize_group import quantize_per_token_group

__all__ = ["quantized_linear", "gemm_quantized", "activation_dtype", "ACT_GROUP"]

_I8 = torch.int8
_F32 = torch.float32
_BF16 = torch.bfloat16
_FP8_SPECS = ("fp8_rowwise", "fp8_rowwise_fastacc", "fp8_blockwise")
# Specs whose activations are quantized per token per group of K (the group size), not per token.
ACT_GROUP = {"fp8_blockwise": 128}
_ACT_DTYPE = {spec: r.act_dtype for spec, r in RECIPES.items()}


def activation_dtype(spec: str) -> torch.dtype:
    """The dtype of the activations the GEMM of `spec` takes (quantize_per_token's dtype=)."""
    dtype = _ACT_DTYPE.get(spec) if isinstance(spec, str) else None
    if dtype is None:
        raise ValueError(f"activation_dtype: spec must be one of {GEMM_SPECS}, got {spec!r}")
    return dtype


def quantized_linear(
    spec: str,
    x2: torch.Tensor,
    wq: torch.Tensor,
    sw: torch.Tensor,
    sg: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    max_scale: Optional[int] = None,
    *,
    trusted: bool = False,
) -> torch.Tensor:
    """Token-wise dynamic quantization of x2 [M, K] in the spec's activation format, then the spec's
    GEMM with the weights (wq, sw, sg) and bias: y [M, N] in x2's dtype (see the module docstring for
    ``trusted`` and the FP8 recipes' float32 output)."""
    if spec == "int8_rowwise":
        if trusted and x2.is_cuda and x2.shape[0] <= c.INT32_MAX and not g._active and c.eager(x2, wq):
            # Eager fast path: the layer's buffers are known-good; x2 was checked by the layer.
            y = _w8a8_scratch(x2, wq, sw, bias)
            if y is not None:
                return y
            xq, sx = _quantize_cuda(x2)
            return rowwise_gemm_cuda(xq, wq, sx, sw, bias, x2.dtype, "auto", None)
        xq, sx = quantize_per_token(x2)
        return int8_gemm(xq, wq, sx, sw, bias, out_dtype=x2.dtype)
    group = ACT_GROUP.get(spec)
    if group is not None:
        xq, sx = quantize_per_token_group(x2, group, activation_dtype(spec))
    else:
        xq, sx = quantize_per_token(x2, activation_dtype(spec))
    return gemm_quantized(spec, xq, wq, sx, sw, sg, bias, x2.dtype, max_scale)


def gemm_quantized(
    spec: str,
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    max_scale: Optional[int] = None,
    *,
    trusted: bool = False,
) -> torch.Tensor:
    """The spec's GEMM on activations already quantized in its format (xq, sx [M]): y [M, N] in
    out_dtype (see the module docstring for ``trusted`` and the FP8 recipes' float32 output)."""
    if spec == "int8_rowwise":
        if trusted and xq.is_cuda and not g._active and c.eager(xq, sx, wq):
            # xq / sx come from our own quantization kernels (right dtype, layout and device).
            return rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, "auto", None)
        return int8_gemm(xq, wq, sx, sw, bias, out_dtype=out_dtype)
    if out_dtype is _F32 and spec in _FP8_SPECS:
        y = run_gemm(spec, xq, wq, sx, sw, sg, None, _BF16, max_scale=max_scale).float()
        return y if bias is None else y.add_(bias.float())
    return run_gemm(spec, xq, wq, sx, sw, sg, bias, out_dtype, max_scale=max_scale)


def _w8a8_scratch(
    x2: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor]
) -> Optional[torch.Tensor]:
    """The eager W8A8 forward with xq / sx (and any GEMM workspace) in per-stream scratch
    (ops/_common.scratch_ptr): two launches and one allocation (the output). None when scratch
    may not be used (graph capture, large M); the caller then allocates them."""
    M, K = x2.shape
    if M == 0 or K == 0:
        return None
    index = x2.get_device()
    if index not in _cuda_ready:
        return None  # the first call on a device goes through the checked path
    stream = c.current_stream(index)
    N = wq.shape[0]
    dtype = x2.dtype
    kid, ws = plan(index, x2, "auto", None, dtype, M, N, K)
    off_sx = (M * K + 15) // 16 * 16
    off_ws = off_sx + (4 * M + 15) // 16 * 16
    base = c.scratch_ptr(index, stream, off_ws + ws, x2)
    if base == 0:
        return None
    C = _ext._C
    C.quantize_per_token(x2.data_ptr(), c.DTYPE_CODE[dtype], x2.stride(0), base, base + off_sx, M, K, index, stream)
    out = x2.new_empty((M, N), dtype=dtype)
    C.gemm_run(
        kid, base, K, wq.data_ptr(), K, base + off_sx, sw.data_ptr(),
        0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        base + off_ws if ws > 0 else 0, ws, index, stream,
    )
    return out
