"""Pure-torch references of every zqkernels kernel (docs/SCALES.md holds the math).

They run on any device, share no code with the kernels, and round exactly where the kernels round,
so tests can compare kernel against reference bit for bit (quantization) or to one output ulp
(GEMM). CPU tensors passed to the public ops run these very functions. One module per op stem,
mirroring ``zqkernels.ops``.
"""

from __future__ import annotations

from .fused import row_quant_ref
from .gemm import int8_gemm_ref
from .quantize import QMAX, quantize_per_token_ref, quantize_weight_ref

__all__ = ["quantize_per_token_ref", "quantize_weight_ref", "int8_gemm_ref", "row_quant_ref", "QMAX"]
