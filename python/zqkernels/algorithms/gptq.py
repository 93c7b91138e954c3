"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", 2022) as a weight quantizer for every weight format of ``quantize_weight`` (hence
every QLinear scheme: w8a8, fp8, fp8-block, w4a8-fp, w4a8, w4a8-floatscale, w4a8-zp, w8a8-group).

GPTQ quantizes a weight [N, K] one input column at a time and, after each column, moves that
column's rounding error onto the columns not quantized yet, weighted by the inverse Hessian of the
layer's squared output error ``H = 2 X^T X / n`` (X: the layer's calibration inputs). The weight
format is unchanged: the column quantize-dequantize is the format's own (the ``_Grid`` subclasses of
gptq_grids.py, the math of ``quantize_weight``), per-channel and 128 x 128 block scales are RTN's, group scales are
computed when the loop reaches a group's first column; the result is ``quantize_weight``'s tuple for
the format.

- ``gptq_quantize_weight(w, H, ...)``: one layer, given its Hessian.
- ``gptq(model, calib_batches, ...)``: a whole model. Runs the float model once over the calibration
  batches with forward hooks that accumulate every Linear's Hessian from its inputs, then converts
  the model exactly as ``quantize_(model, config)`` would, with GPTQ weights instead of RTN ones.
  This is the one-pass variant: all Hessians come from the float model's activations (not the
  sequential layer-by-layer variant that re-runs each layer on the already quantized layers'
  outputs).

Plain torch: runs where the weights (and the model) are, CPU or GPU.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from ._calib import HessianAccumulator, check_batches, collect_hessians, weight_key
from .gptq_grids import _is_int, _make_grid, _resolve_format

__all__ = ["gptq_quantize_weight", "gptq", "HessianAccumulator"]

def _inverse_hessian_chol(H: torch.Tensor, damp: float, op: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, in float64. If H is not positive
    definite after dampening (rank-deficient calibration data), the dampening is raised 10x, up to
    4 times, before giving up."""
    K = H.shape[0]
    mean_diag = float(torch.diagonal(H).mean()) if K else 0.0
    ident = torch.eye(K, dtype=H.dtype, device=H.device)
    d = damp
    for _ in range(5):
        L, info = torch.linalg.cholesky_ex(H + (d * mean_diag) * ident)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return U
        d = d * 10 if d > 0 else 1e-6
    raise ValueError(
        f"{op}: the Hessian is not positive definite even with dampening {d / 10:g} * mean(diag H); "
        "check it is a covariance of finite inputs (2 X^T X / n), or raise damp"
    )


def _column_block(op: str, column_block: Any, block_size: Any, stacklevel: int = 3) -> Any:
    """GPTQ's lazy-update column block: `column_block`, or the deprecated spelling block_size= (which
    now means the FP8 block-scale size of quantize_weight), with a DeprecationWarning."""
    if block_size is None:
        return 128 if column_block is None else column_block
    if column_block is not None:
        raise ValueError(
            f"{op}: pass GPTQ's column block as column_block= only, got column_block={column_block!r} and the "
            f"deprecated block_size={block_size!r}"
        )
    warnings.warn(
        f"{op}: block_size= for GPTQ's column blocks is deprecated, pass column_block={block_size!r} (block_size "
        "is quantize_weight's FP8 block-scale size: gptq_quantize_weight(w, H, fmt='fp8', block_size=128))",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return block_size


def _check_options(op: str, column_block: Any, damp: Any, act_order: Any) -> None:
    """The GPTQ options shared by gptq_quantize_weight and gptq."""
    if not _is_int(column_block) or column_block <= 0:
        raise ValueError(f"{op}: column_block must be a positive int, got {column_block!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ValueError(f"{op}: damp must be a finite number >= 0, got {damp!r}")
    if not isinstance(act_order, bool):
        raise TypeError(f"{op}: act_order must be a bool, got {type(act_order).__name__}")


def gptq_quantize_weight(
    w: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: Optional[int] = None,
    fmt: Optional[str] = None,
    group_size: Optional[int] = None,
    scale: Optional[str] = None,
    alpha: Optional[int] = None,
    block_size: Optional[int] = None,
    column_block: Optional[int] = None,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple:
    """GPTQ-quantize one weight w [N, K] given its layer's Hessian H [K, K] (``2 X^T X / n`` of the
    layer inputs X [n, K]), into any format of ``quantize_weight``: the format arguments (fmt, scale,
    group_size, alpha, block_size; bits) mean what they mean there, and the result is what
    ``quantize_weight(w, fmt=..., scale=..., group_size=..., alpha=..., block_size=...)`` returns for
    them (same dtypes, shapes and packed layouts; only the values differ), on w's device:

    - default / fmt="int8": (wq int8 [N, K], sw float32 [N]) per channel; fmt="int4" without scale:
      values in [-7, 7] in an int8 container; bits 2..8 alone (no other format argument): the same
      grid with qmax = 2^(bits-1) - 1, for studying the algorithm. bits= with other format arguments
      is quantize_weight's deprecated spelling (it warns the same way).
    - fmt="fp8": (wq float8_e4m3fn [N, K], sw float32 [N]); with block_size=128 (scheme fp8-block):
      (wq float8_e4m3fn [N, K], sw float32 [ceil(N / 128), K / 128]), one scale per 128 x 128 block.
    - fmt="fp4" (group_size 32 / 64 / 128 / None, scale "m2" / "m1" / "free"): (wq uint8 [N, K // 2]
      packed m16k64, sw, sg).
    - fmt="int4" with scale ("int" / "float", group_size, alpha): (wq uint8 [N, K // 2] packed m16k32,
      sw, sg); fmt="int8" with scale: (wq int8 [N, K], sw, sg).

    Scales: per-channel and block (fp8 block_size=128) grids are fixed from w before any update (the
    RTN scales; a value pushed past its block's amax saturates at +-448). Group formats
    keep the per-row quantities of w (sw, for m1 the row exponent, alpha) and compute a group's
    scales when the loop reaches the group's first column, from the group's current (error-
    corrected) values, as the GPTQ reference's groupwise mode does; a group's scale is capped at
    the row's (ratio <= 1: what the formats and the integer-scale overflow bounds assume). Codes
    are rounded as quantize_weight rounds them; the error passed on is w minus the value
    ``dequantize`` gives (integer scales: sw * rint(r * alpha) * q).

    - Dead columns (H_ii == 0: an input feature that was always 0 in calibration) get H_ii = 1, so
      they are rounded to nearest and pass no error on (any value is exact on the calibration data).
    - Dampening: ``damp * mean(diag H)`` is added to the diagonal (raised automatically if H is
      still not positive definite).
    - The error feedback uses the upper Cholesky factor of H^-1 and lazy batch updates over blocks
      of `column_block` columns (default 128; the result does not depend on it beyond float rounding;
      a group's scales see the exact current values, pending block updates included). Passing it as
      block_size= without fmt="fp8" is the deprecated spelling (DeprecationWarning): block_size is
      quantize_weight's FP8 block-scale size.
    - act_order: quantize columns in order of decreasing H_ii (the permutation is undone in the
      result; groups stay the format's contiguous groups, their scales computed when the first of
      their columns is reached in that order).

    An identity H gives exactly ``quantize_weight``'s result for the format.
    """
    op = "gptq_quantize_weight"
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: w must be a torch.Tensor [N, K], got {type(w).__name__}")
    if not w.is_floating_point() or w.dim() != 2:
        raise ValueError(f"{op}: w must be a 2-D floating-point tensor [N, K], got {w.dtype} of shape {list(w.shape)}")
    if not isinstance(H, torch.Tensor):
        raise TypeError(f"{op}: H must be a torch.Tensor [K, K], got {type(H).__name__}")
    N, K = w.shape
    if not H.is_floating_point() or tuple(H.shape) != (K, K):
        raise ValueError(
            f"{op}: H must be a floating-point [K, K] tensor with K = w.shape[1] = {K}, "
            f"got {H.dtype} of shape {list(H.shape)}"
        )
    if fmt != "fp8":  # block_size has a format meaning for fmt="fp8" only: otherwise the old spelling
        column_block, block_size = _column_block(op, column_block, block_size), None
    elif column_block is None:
        column_block = 128
    kind, args = _resolve_format(op, w, bits, fmt, group_size, scale, alpha, block_size)
    _check_options(op, column_block, damp, act_order)
    if w.is_meta or H.is_meta:
        raise ValueError(f"{op}: w and H must hold values (not on the meta device)")
    W = w.detach().to(torch.float32).clone()
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{op}: w has NaN or Inf values")
    Hd = H.detach().to(device=w.device, dtype=torch.float64).clone()
    if not bool(torch.isfinite(Hd).all()):
        raise ValueError(f"{op}: H has NaN or Inf values")
    if bool((torch.diagonal(Hd) < 0).any()):
        raise ValueError(f"{op}: H has negative diagonal entries (not a covariance 2 X^T X / n)")
    grid = _make_grid(kind, args, W)
    if N == 0 or K == 0:
        return grid.result(torch.zeros((N, K), dtype=torch.float32, device=w.device))

    dead = torch.diagonal(Hd) == 0
    if bool(dead.any()):
        idx = torch.nonzero(dead).flatten()
        Hd[idx, idx] = 1.0
    g = grid.group
    if act_order:
        perm = torch.argsort(torch.diagonal(Hd), descending=True, stable=True)
        W = W[:, perm]
        Hd = Hd[perm][:, perm]
        order = perm.tolist()  # position -> original column
    else:
        perm = None
        order = list(range(K))
    U = _inverse_hessian_chol(Hd, float(damp), op).to(torch.float32)
    del Hd
    # The position where each group's first column is reached, and the positions of its columns.
    pos_of = [0] * K
    for p, k in enumerate(order):
        pos_of[k] = p
    grouped = grid.lazy_scales
    starts: dict[int, int] = {}
    if grouped:
        for j in range(K // g):
            starts[min(pos_of[j * g : (j + 1) * g])] = j
    group_pos = {
        j: torch.tensor(pos_of[j * g : (j + 1) * g], device=w.device) for j in starts.values()
    }

    Q = torch.zeros((N, K), dtype=torch.float32, device=w.device)
    for i1 in range(0, K, column_block):
        i2 = min(i1 + column_block, K)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            p = i1 + i
            k = order[p]
            j = k // g
            if p in starts:
                # The group's current values: in-block columns from W1, later ones from W minus
                # the updates this block has not applied to them yet.
                pos = group_pos[j]
                inblock = pos < i2
                vals = torch.empty((N, pos.numel()), dtype=torch.float32, device=w.device)
                if bool(inblock.any()):
                    vals[:, inblock] = W1[:, pos[inblock] - i1]
                later = pos[~inblock]
                if later.numel():
                    v = W[:, later]
                    if i > 0:
                        v = v - Err1[:, :i] @ U[i1:p, later]
                    vals[:, ~inblock] = v
                grid.start_group(j, vals)
            col = W1[:, i : i + 1]
            q, deq = grid.quant(col, j)
            Q[:, p : p + 1] = q
            err = (col - deq) / U1[i, i]
            W1[:, i + 1 :] -= err * U1[i : i + 1, i + 1 :]
            Err1[:, i : i + 1] = err
        if i2 < K:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return grid.result(Q)


# ------------------------------------------------------------------------------------------------
# Whole-model calibration.


def gptq(
    model: nn.Module,
    calib_batches: Iterable[Any],
    *,
    config: Any = None,
    column_block: Optional[int] = None,
    damp: float = 0.01,
    act_order: bool = False,
    progress: bool = False,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    module_configs: Optional[Mapping[str, Any]] = None,
    block_size: Optional[int] = None,
):
    """Quantize `model` in place with GPTQ weights; returns quantize_'s ConversionSummary.

    config: any quantize_ config (W8A8Config (default), FP8Config, W4A8FPConfig, W4A8Config,
    W8A8GroupConfig); module_configs may mix them. Each converted Linear's weight is GPTQ'd into
    its scheme's format (``QLinear.from_linear`` hands the quantizer the layer's weight_format).

    calib_batches: an iterable of model inputs: dicts (``model(**batch)``) or tensors / tuples
    (``model(batch)`` / ``model(*batch)``); tensors are moved to the model's device. The float model
    runs once over them under torch.no_grad(), with forward hooks on every nn.Linear / HF Conv1D
    (outside nn.MultiheadAttention) accumulating the Hessian of its inputs (all tokens, float32, on
    the layer's device). Then the model is converted exactly as ``quantize_(model, config,
    filter_fn=..., module_configs=...)`` would convert it (same modules, fused blocks, levels), each
    converted Linear getting ``gptq_quantize_weight(w, H, column_block=..., damp=..., act_order=...)``
    in its scheme's format instead of round-to-nearest (column_block: GPTQ's lazy-update column
    blocks, default 128; block_size= is its deprecated spelling, DeprecationWarning). In a fused block's merged GEMM (QKV, gate|up) every part is GPTQ'd
    with its own Hessian (identical: the parts share their input) and the results concatenated. A
    Linear that never ran during calibration is rounded to nearest (as quantize_ would).

    One pass: all Hessians come from the float model's activations (not the sequential variant
    that feeds each layer the outputs of the already quantized layers before it).
    """
    from ..nn.config import QuantConfig, W8A8Config, quantize_

    op = "gptq"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    if config is None:
        config = W8A8Config()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"{op}: config must be a quantization config (e.g. W8A8Config()), got {type(config).__name__}")
    check_batches(op, calib_batches)
    column_block = _column_block(op, column_block, block_size)
    _check_options(op, column_block, damp, act_order)

    stats = collect_hessians(op, model, calib_batches)

    def quantizer(linear: nn.Module, weight_format: Optional[Mapping[str, Any]] = None) -> Optional[tuple]:
        # weight_format: the layer's quantize_weight arguments (QLinear.from_linear passes them);
        # None (a fused block's merged GEMM parts): int8 per channel.
        acc = stats.get(weight_key(linear))
        if acc is None or acc.H is None:
            return None  # never ran in calibration: round to nearest
        fmt = dict(weight_format) if weight_format is not None else {"fmt": "int8"}
        # fmt may hold block_size (fp8-block's 128 x 128 scales): a format argument, not GPTQ's columns
        return gptq_quantize_weight(
            linear.weight.detach(), acc.H, column_block=column_block, damp=damp, act_order=act_order, **fmt
        )

    return quantize_(
        model, config, filter_fn=filter_fn, module_configs=module_configs, progress=progress,
        weight_quantizer=quantizer,
    )
