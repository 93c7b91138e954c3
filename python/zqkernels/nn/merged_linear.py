"""The merged Linear of a fused block (QKV, gate + up): one layer over the concatenated output
features of the HF Linears that share an input, quantized part by part with the conversion's weight
quantizer (GPTQ, checkpoint loading) or rounded to nearest."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..schemes import Scheme
from .linear import QLinear, run_weight_quantizer

# Set by the conversion (convert._convert) while blocks are built: callable(linear[, weight_format])
# -> the part's quantized tensors or None, the weight quantizer of each part of a merged linear
# (None: round to nearest). Checkpoint loading sets it to hand over each part's exact tensors.
_WEIGHT_QUANTIZER: ContextVar[Optional[Callable[[nn.Module], Any]]] = ContextVar("_WEIGHT_QUANTIZER", default=None)


def _merge_linears(op: str, linears: list[nn.Linear], quantized: bool, qscheme: Scheme) -> nn.Module:
    """One linear over the concatenated output features of `linears` (same input): a QLinear of
    `qscheme`, or a float nn.Linear when the role stays in float. A missing bias of one part becomes
    zeros."""
    w = torch.cat([lin.weight.detach() for lin in linears], 0)
    has_bias = any(lin.bias is not None for lin in linears)
    b = None
    if has_bias:
        b = torch.cat(
            [
                lin.bias.detach() if lin.bias is not None else w.new_zeros(lin.out_features)
                for lin in linears
            ]
        )
    merged = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device="meta")
    merged.training = linears[0].training  # the parts' train / eval mode (QLinear.from_linear keeps it)
    merged.weight = nn.Parameter(w, requires_grad=False)
    merged.bias = nn.Parameter(b, requires_grad=False) if b is not None else None
    if not quantized:
        return merged
    quantizer = _WEIGHT_QUANTIZER.get()
    try:
        if quantizer is not None:
            # Each part quantized on its own (channel and group scales: the rows are independent), then
            # concatenated row-wise (packed layouts too: they pack whole tiles of 16 rows, and every
            # part has out_features % 16 == 0 there); the parts share their input, so e.g. GPTQ uses
            # the same Hessian for all.
            parts = []
            for lin in linears:
                part = qscheme.for_layer(op, lin.out_features, lin.in_features)
                parts.append(run_weight_quantizer(op, quantizer, lin, part) or part.quantize(lin.weight.detach()))
            q = tuple(torch.cat(ts, 0) for ts in zip(*parts))
            return QLinear.from_linear(merged, qscheme, weight_quantizer=lambda _lin: q)
        return QLinear.from_linear(merged, qscheme)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{op}: {e}") from e
