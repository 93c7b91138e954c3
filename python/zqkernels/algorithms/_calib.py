"""Running calibration batches through a model: one definition for GPTQ, LKD and smoothing."""

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
