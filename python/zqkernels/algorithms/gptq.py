"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", 2022) as a weight quantizer for the W8A8 scheme.

GPTQ quantizes a weight [N, K] one input column at a time and, after each column, moves that
column's rounding error onto the columns not quantized yet, weighted by the inverse Hessian of the
layer's squared output error ``H = 2 X^T X / n`` (X: the layer's calibration inputs). The weight
format is unchanged: symmetric per-output-channel int8 with ``scale = amax / qmax``, the same grid
as round-to-nearest (``quantize_weight``); only the integer values differ.

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
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

__all__ = ["gptq_quantize_weight", "gptq", "HessianAccumulator"]

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


def _check_options(op: str, block_size: Any, damp: Any, act_order: Any) -> None:
    """The GPTQ options shared by gptq_quantize_weight and gptq."""
    if not _is_int(block_size) or block_size <= 0:
        raise ValueError(f"{op}: block_size must be a positive int, got {block_size!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ValueError(f"{op}: damp must be a finite number >= 0, got {damp!r}")
    if not isinstance(act_order, bool):
        raise TypeError(f"{op}: act_order must be a bool, got {type(act_order).__name__}")


def gptq_quantize_weight(
    w: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: int = 8,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ-quantize one weight w [N, K] given its layer's Hessian H [K, K] (``2 X^T X / n`` of the
    layer inputs X [n, K]). Returns (wq int8 [N, K], scale float32 [N]) on w's device: symmetric
    per-output-channel, ``w ~= wq * scale[:, None]``, values in [-qmax, qmax] with
    ``qmax = 2^(bits-1) - 1``.

    - Scales are fixed from w before any update, ``scale = amax / qmax`` per row: the RTN grid of
      ``quantize_weight`` (bits 8 and 4 give the same scales as it).
    - Dead columns (H_ii == 0: an input feature that was always 0 in calibration) get H_ii = 1, so
      they are rounded to nearest and pass no error on (any value is exact on the calibration data).
    - Dampening: ``damp * mean(diag H)`` is added to the diagonal (raised automatically if H is
      still not positive definite).
    - The error feedback uses the upper Cholesky factor of H^-1 and lazy batch updates over blocks
      of `block_size` columns (the result does not depend on block_size beyond float rounding).
    - act_order: quantize columns in order of decreasing H_ii (the permutation is undone in wq).
    - bits: 2..8; anything but 8 is for studying the algorithm (values in an int8 container); the
      W8A8 kernels use bits=8.

    An identity H gives exactly the RTN result of ``quantize_weight(w, bits)``.
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
    if not _is_int(bits) or not 2 <= bits <= 8:
        raise ValueError(f"{op}: bits must be an int in 2..8, got {bits!r}")
    _check_options(op, block_size, damp, act_order)
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
    qmax = 2 ** (bits - 1) - 1
    scale, pre, inv = _row_grid(W, qmax)
    if N == 0 or K == 0:
        return torch.zeros((N, K), dtype=torch.int8, device=w.device), scale.contiguous()

    dead = torch.diagonal(Hd) == 0
    if bool(dead.any()):
        idx = torch.nonzero(dead).flatten()
        Hd[idx, idx] = 1.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(Hd), descending=True, stable=True)
        W = W[:, perm]
        Hd = Hd[perm][:, perm]
    U = _inverse_hessian_chol(Hd, float(damp), op).to(torch.float32)
    del Hd

    pre_c, inv_c, scale_c = pre[:, None], inv[:, None], scale[:, None]
    Q = torch.zeros((N, K), dtype=torch.float32, device=w.device)
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = W1[:, i : i + 1]
            q = torch.round((col * pre_c) * inv_c).clamp_(-qmax, qmax)
            Q[:, i1 + i : i1 + i + 1] = q
            err = (col - q * scale_c) / U1[i, i]
            W1[:, i + 1 :] -= err * U1[i : i + 1, i + 1 :]
            Err1[:, i : i + 1] = err
        if i2 < K:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.int8).contiguous(), scale.contiguous()


# ------------------------------------------------------------------------------------------------
# Whole-model calibration.


class HessianAccumulator:
    """Running ``H = 2 X^T X / n`` over all the rows (tokens) of the inputs it is given, in float32
    on the inputs' device."""

    def __init__(self) -> None:
        self.H: Optional[torch.Tensor] = None
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        m = x.shape[0]
        if m == 0:
            return
        if self.H is None:
            self.H = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float32, device=x.device)
        total = self.n + m
        self.H.mul_(self.n / total)
        self.H.addmm_(x.t(), x, alpha=2.0 / total)
        self.n = total


def _weight_key(linear: nn.Module) -> int:
    # An nn.Linear and the nn.Linear view of an HF Conv1D (linear_from_conv1d) share the weight's
    # storage; the key is the weight's data pointer, so the Hessian is found for either.
    return linear.weight.data_ptr()


def gptq(
    model: nn.Module,
    calib_batches: Iterable[Any],
    *,
    config: Any = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    progress: bool = False,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    module_configs: Optional[Mapping[str, Any]] = None,
):
    """Quantize `model` in place for W8A8 with GPTQ weights; returns quantize_'s ConversionSummary.

    calib_batches: an iterable of model inputs: dicts (``model(**batch)``) or tensors / tuples
    (``model(batch)`` / ``model(*batch)``); tensors are moved to the model's device. The float model
    runs once over them under torch.no_grad(), with forward hooks on every nn.Linear / HF Conv1D
    (outside nn.MultiheadAttention) accumulating the Hessian of its inputs (all tokens, float32, on
    the layer's device). Then the model is converted exactly as ``quantize_(model, config,
    filter_fn=..., module_configs=...)`` would convert it (same modules, fused blocks, levels), each
    converted Linear getting ``gptq_quantize_weight(w, H, block_size=..., damp=..., act_order=...)``
    instead of round-to-nearest. In a fused block's merged GEMM (QKV, gate|up) every part is GPTQ'd
    with its own Hessian (identical: the parts share their input) and the results concatenated. A
    Linear that never ran during calibration is rounded to nearest (as quantize_ would).

    One pass: all Hessians come from the float model's activations (not the sequential variant
    that feeds each layer the outputs of the already quantized layers before it).
    """
    from ..nn.config import W8A8Config, quantize_
    from ..nn.convert import _convertible

    op = "gptq"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    if config is None:
        config = W8A8Config()
    if not isinstance(config, W8A8Config):
        raise TypeError(f"{op}: config must be a W8A8Config (the scheme with kernels), got {type(config).__name__}")
    if isinstance(calib_batches, (torch.Tensor, Mapping)) or not isinstance(calib_batches, Iterable):
        raise TypeError(
            f"{op}: calib_batches must be a list (or iterable) of batches (dicts of model inputs or "
            f"tensors), got {type(calib_batches).__name__}"
        )
    _check_options(op, block_size, damp, act_order)

    stats: dict[int, HessianAccumulator] = {}
    handles = []
    hooked: set[int] = set()
    for prefix, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for _name, child in parent._modules.items():
            if child is None or not _convertible(child) or getattr(child, "weight", None) is None:
                continue
            key = _weight_key(child)
            if key in stats:
                acc = stats[key]
            else:
                acc = stats[key] = HessianAccumulator()

            def hook(_m, inputs, _out, acc=acc):
                if inputs and isinstance(inputs[0], torch.Tensor):
                    acc.add(inputs[0])

            if id(child) not in hooked:  # a module registered in several places: one hook
                hooked.add(id(child))
                handles.append(child.register_forward_hook(hook))

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = None

    def move(v: Any) -> Any:
        return v.to(device) if isinstance(v, torch.Tensor) and device is not None else v

    batches = 0
    try:
        with torch.no_grad():
            for batch in calib_batches:
                if isinstance(batch, Mapping):
                    model(**{k: move(v) for k, v in batch.items()})
                elif isinstance(batch, (tuple, list)):
                    model(*[move(v) for v in batch])
                elif isinstance(batch, torch.Tensor):
                    model(move(batch))
                else:
                    raise TypeError(
                        f"{op}: each calibration batch must be a dict of model inputs, a tensor or a "
                        f"tuple of tensors, got {type(batch).__name__}"
                    )
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError(f"{op}: calib_batches is empty; give at least one calibration batch")

    def quantizer(linear: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        acc = stats.get(_weight_key(linear))
        if acc is None or acc.H is None:
            return None  # never ran in calibration: round to nearest
        return gptq_quantize_weight(
            linear.weight.detach(), acc.H, bits=8, block_size=block_size, damp=damp, act_order=act_order
        )

    return quantize_(
        model, config, filter_fn=filter_fn, module_configs=module_configs, progress=progress,
        weight_quantizer=quantizer,
    )
