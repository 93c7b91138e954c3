"""Group-wise W8A8 (``w8a8_group_gemm``: INT8 per-token activations x INT8 weights with integer or
float group scales, Integer Scale; contract: docs/W4A8.md, "Group-wise W8A8"): a recipe of the one
GEMM op (ops/gemm.py; specs "int8_group_int" / "int8_group_float"), re-exported here under its old
import path with its group-size bound.

    y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))
    P[m, n, j] = sum_{k in group j} xq[m, k] * wq[n, k]          (exact int32)
"""

from __future__ import annotations

from .gemm import w8a8_group_gemm
from .gemm_checks import W8A8_GROUP_MAX_GROUP

__all__ = ["w8a8_group_gemm", "W8A8_GROUP_MAX_GROUP"]
