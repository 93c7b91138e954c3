"""Running calibration batches through a model: one definition for GPTQ, LKD and smoothing; GPTQ's
Hessians of every Linear's inputs (collect_hessians)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn


def check_batches(op: str, calib_batches: Any) -> None:
    """TypeError naming `op` unless calib_batches is an iterable of batches (a tensor or a dict is one
    batch, not a list of them)."""
    if isinstance(calib_batches, (torch.Tensor, Mapping)) or not isinstance(calib_batches, Iterable):
        raise TypeError(
            f"{op}: calib_batches must be a list (or iterable) of batches (dicts of model inputs or tensors), got "
            f"{type(calib_batches).__name__}"
        )


def model_device(model: nn.Module) -> Optional[torch.device]:
    """The device of the model's first parameter (else first buffer); None for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def call_batch(op: str, model: nn.Module, batch: Any, device: Optional[torch.device]) -> Any:
    """model(batch) for one calibration batch: a dict of model inputs (``model(**b)``), a tuple / list
    of positional inputs or one tensor, its tensors moved to `device`; another type raises TypeError
    naming `op`."""

    def move(v: Any) -> Any:
        return v.to(device) if isinstance(v, torch.Tensor) and device is not None else v

    if isinstance(batch, Mapping):
        return model(**{k: move(v) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return model(*[move(v) for v in batch])
    if isinstance(batch, torch.Tensor):
        return model(move(batch))
    raise TypeError(
        f"{op}: each calibration batch must be a dict of model inputs, a tensor or a tuple of tensors, "
        f"got {type(batch).__name__}"
    )


def run_batches(op: str, model: nn.Module, calib_batches: Iterable[Any]) -> int:
    """Every calibration batch through `model` under no_grad (hooks do the collecting); returns the
    count, and raises ValueError naming `op` when there was none."""
    device = model_device(model)
    n = 0
    with torch.no_grad():
        for batch in calib_batches:
            call_batch(op, model, batch, device)
            n += 1
    if n == 0:
        raise ValueError(f"{op}: calib_batches is empty; give at least one calibration batch")
    return n


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


def weight_key(linear: nn.Module) -> int:
    """The key of a Linear's Hessian: its weight's data pointer (an nn.Linear and the nn.Linear view of
    an HF Conv1D, linear_from_conv1d, share the weight's storage, so either finds it)."""
    return linear.weight.data_ptr()


def collect_hessians(op: str, model: nn.Module, calib_batches: Iterable[Any]) -> dict[int, HessianAccumulator]:
    """Run the calibration batches through `model` with forward hooks on every convertible Linear /
    HF Conv1D (outside nn.MultiheadAttention) accumulating the Hessian of its inputs (all tokens);
    returns {weight_key: accumulator}. The hooks are removed afterwards."""
    from ..nn.convert import _convertible

    stats: dict[int, HessianAccumulator] = {}
    handles = []
    hooked: set[int] = set()
    for _prefix, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for _name, child in parent._modules.items():
            if child is None or not _convertible(child) or getattr(child, "weight", None) is None:
                continue
            key = weight_key(child)
            acc = stats.setdefault(key, HessianAccumulator())

            def hook(_m, inputs, _out, acc=acc):
                if inputs and isinstance(inputs[0], torch.Tensor):
                    acc.add(inputs[0])

            if id(child) not in hooked:  # a module registered in several places: one hook
                hooked.add(id(child))
                handles.append(child.register_forward_hook(hook))
    try:
        run_batches(op, model, calib_batches)
    finally:
        for h in handles:
            h.remove()
    return stats
