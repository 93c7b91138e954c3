"""The collective the tensor-parallel modules run (nn/tp.py's RowwiseQLinear, the fused blocks' rowwise
GEMMs once split): partial outputs summed over the ranks in float32."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["all_reduce_sum"]


def all_reduce_sum(t: torch.Tensor, group: Any) -> torch.Tensor:
    """t summed over the ranks of `group` (None: the default group) in float32, returned in t's dtype
    (a new tensor; t is not written)."""
    import torch.distributed as dist

    acc = t.to(torch.float32)
    dist.all_reduce(acc, group=group)
    return acc.to(t.dtype)
