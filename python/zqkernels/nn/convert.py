"""Whole-model conversion: quantize_model."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Union

from torch import nn

from .linear import QLinear, _handler

__all__ = ["quantize_model"]


def _skipped(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def quantize_model(model: nn.Module, scheme: str = "w8a8", skip: Union[str, Iterable[str]] = ()) -> nn.Module:
    """Replace every nn.Linear in `model` with ``QLinear.from_linear`` in place; returns the model.

    skip: module names to leave in float, as fnmatch patterns on the qualified name ('lm_head',
    '*.mlp.*'); a pattern naming a module also skips everything inside it ('encoder'). A Linear used
    in several places (also twice within one parent) becomes one shared QLinear everywhere.
    All or nothing: every layer is quantized first and the model is changed only if all succeed,
    so a failure leaves it untouched. Linears inside nn.MultiheadAttention stay float: that module
    reads their weights directly instead of calling them. If `model` is itself an nn.Linear, the
    QLinear is returned.
    """
    _handler("quantize_model", scheme)
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)

    def convert(name: str, linear: nn.Linear) -> QLinear:
        try:
            return QLinear.from_linear(linear, scheme)
        except (ValueError, TypeError) as e:
            raise type(e)(f"quantize_model: layer {name!r}: {e}") from e

    if isinstance(model, nn.Linear):
        return model if _skipped("", patterns) else convert("", model)
    # Phase 1: find every (parent, attribute) slot holding a Linear to convert. _modules lists a
    # module once per attribute, so a Linear registered twice in one parent is found twice.
    slots: list[tuple[nn.Module, str, nn.Linear]] = []
    names: dict[int, str] = {}
    for prefix, parent in model.named_modules(remove_duplicate=False):
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for child_name, child in parent._modules.items():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Linear) and not isinstance(child, QLinear) and not _skipped(name, patterns):
                slots.append((parent, child_name, child))
                names.setdefault(id(child), name)
    # Phase 2: quantize each distinct Linear once (nothing in the model changes yet).
    done: dict[int, QLinear] = {}
    for _parent, _attr, linear in slots:
        if id(linear) not in done:
            done[id(linear)] = convert(names[id(linear)], linear)
    # Phase 3: install.
    for parent, attr, linear in slots:
        setattr(parent, attr, done[id(linear)])
    return model
