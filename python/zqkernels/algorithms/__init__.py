"""Weight-quantization algorithms that produce weights for the existing schemes (W8A8)."""

from __future__ import annotations

from .gptq import HessianAccumulator, gptq, gptq_quantize_weight

__all__ = ["gptq", "gptq_quantize_weight", "HessianAccumulator"]
