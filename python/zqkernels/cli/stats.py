"""eval's statistics: the difference of two models' mean NLL over the same windows, paired.

Each window i gives both models a mean NLL per predicted token (``perplexity``'s per-window numbers):
f_i (the float model), q_i (the quantized one). Paired over the n windows, d_i = q_i - f_i,

    mean  d  = (1 / n) sum_i d_i                       (nats per token)
    SE(d)    = sd(d_i, ddof = 1) / sqrt(n)             (undefined for n = 1)
    ppl ratio = exp(mean d),  95% interval  exp(mean d -+ 1.96 SE)

Windows of equal token counts (eval's non-overlapping windows all predict window - 1 tokens) make
exp(mean d) the ratio of the two perplexities exactly; the pairing removes the text's own window to
window variation, which dominates each model's perplexity alone. The windows are treated as
independent samples (they are adjacent stretches of one text, so the interval is a guide, not exact).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

__all__ = ["Z95", "paired_nll_diff"]

Z95 = 1.96


def paired_nll_diff(ref: Sequence[float], other: Sequence[float], z: float = Z95) -> dict[str, Optional[float]]:
    """Statistics of other - ref over paired windows (mean NLL per token of each window, same order).

    -> {"windows": n, "mean_diff": mean d, "se": SE of mean d (None for n < 2), "ppl_ratio":
    exp(mean d), "ratio_low" / "ratio_high": exp(mean d -+ z SE) (None for n < 2)}. ValueError for
    lists of different lengths or empty ones."""
    if len(ref) != len(other):
        raise ValueError(f"paired_nll_diff: ref and other must have one value per window each, got {len(ref)} and "
                         f"{len(other)}")
    n = len(ref)
    if n == 0:
        raise ValueError("paired_nll_diff: no windows")
    d = [float(b) - float(a) for a, b in zip(ref, other)]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else None
    return {
        "windows": n,
        "mean_diff": mean,
        "se": se,
        "ppl_ratio": math.exp(mean),
        "ratio_low": math.exp(mean - z * se) if se is not None else None,
        "ratio_high": math.exp(mean + z * se) if se is not None else None,
    }
