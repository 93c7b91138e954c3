"""Weight-quantization algorithms that produce weights for the existing schemes: GPTQ, LKD (with the
fake-quant straight-through paths it trains through), SmoothQuant smoothing and LoRC."""

from __future__ import annotations

from .fakequant import FakeQuantLinear, fake_quant_act, fake_quant_weight
from .gptq import HessianAccumulator, gptq, gptq_quantize_weight
from .lkd import lkd
from .lorc import LoRCReport, apply_lorc, lorc
from .smooth import SmoothReport, smooth_

__all__ = [
    "gptq",
    "gptq_quantize_weight",
    "HessianAccumulator",
    "lkd",
    "lorc",
    "LoRCReport",
    "apply_lorc",
    "smooth_",
    "SmoothReport",
    "fake_quant_weight",
    "fake_quant_act",
    "FakeQuantLinear",
]
