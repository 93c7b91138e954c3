"""Layouts the kernels read, derived from a tensor once and cached per tensor (ops/gemm_cuda.py's
transposed group scales, kernel scale words; ops/gemm_block.py's replicated block scales)."""

from __future__ import annotations

import weakref

import torch

__all__ = ["cached_layout"]

# Layouts the kernels read, derived from a scale tensor once and cached per tensor (by identity,
# checked through a weak reference) and its version counter: a QLinear's scales are converted once
# (inference tensors, which have no version counter, every call). One cache per derivation, each
# bounded: cleared when it grows past _CACHE_MAX entries.
_derived: dict[str, dict[int, tuple["weakref.ref[torch.Tensor]", int, torch.Tensor]]] = {}
_CACHE_MAX = 4096


def cached_layout(name: str, t: torch.Tensor, build) -> torch.Tensor:
    """build(t), cached under `name` for this tensor and its version (see above)."""
    cache = _derived.setdefault(name, {})
    hit = cache.get(id(t))
    if hit is not None and hit[0]() is t:  # a cached tensor is never an inference tensor (below)
        if hit[1] == t._version:
            return hit[2]
    elif t.is_inference():
        # Inference tensors (a QLinear built under torch.inference_mode) have no version counter,
        # so an in-place update (load_state_dict under inference_mode) could not be seen: no cache.
        return build(t)
    out = build(t)
    if torch.cuda.is_current_stream_capturing():
        return out  # no cache writes while capturing a graph (out lives in the graph's memory pool)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[id(t)] = (weakref.ref(t), t._version, out)
    return out
