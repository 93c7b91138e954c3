"""``fp4_to_fp8``: the W4A8-FP kernel's weight conversion on its own (kernel: src/cuda/w4a8_gemm.cu).

The W4A8 GEMMs themselves (``w4a8_fp_gemm``: FP4 E2M1 weights x FP8 E4M3 activations, ZeroQuant-FP;
``w4a8_gemm``: INT4 weights with integer or float group scales x INT8 activations, Integer Scale)
are recipes of the one GEMM op (ops/gemm.py), re-exported here under their old import path.
Formats and the packed layout: docs/FP8.md, docs/W4A8.md.
"""

from __future__ import annotations

import torch

from ..reference.quantize import fp4_to_fp8_float_ref, fp4_to_fp8_ref, unpack_fp4
from . import _common as c
from .gemm import w4a8_fp_gemm, w4a8_gemm
from .gemm_checks import W4A8_INT_MAX_GROUP, W4A8_PATHS
from .gemm_cuda import FP_KERNELS, fp4_to_fp8_cuda, require_sm90

__all__ = ["w4a8_fp_gemm", "fp4_to_fp8", "w4a8_gemm", "W4A8_PATHS", "W4A8_INT_MAX_GROUP"]


def fp4_to_fp8(wq: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    """The FP8 E4M3 weights [N, K] a W4A8-FP GEMM multiplies: e2m1 * 2^e (int8 sg) or e4m3(e2m1 * r)
    (float32 sg), by the kernels' integer conversion on CUDA (bit for bit what the GEMM uses) or the
    reference on CPU. wq uint8 [N, K // 2] (layout m16k64), sg [N, K // g]."""
    op = "fp4_to_fp8"
    if wq.dtype != torch.uint8 or wq.dim() != 2:
        raise TypeError(f"{op}: wq must be uint8 [N, K // 2] (packed FP4 codes), got {c.desc(wq)}")
    N, K = wq.shape[0], 2 * wq.shape[1]
    if N % 16 != 0 or K % 64 != 0:
        raise ValueError(f"{op}: the packed layout needs N % 16 == 0 and K % 64 == 0, got N={N}, K={K}")
    if sg.dtype not in (torch.int8, torch.float32) or sg.dim() != 2 or sg.shape[0] != N:
        raise TypeError(f"{op}: sg must be int8 or float32 [N, K // group_size] with N == {N}, got {c.desc(sg)}")
    G = sg.shape[1]
    if G == 0 or K % G != 0 or (K // G) % 16 != 0:
        raise ValueError(f"{op}: sg must have K // group_size columns (group size a multiple of 16 dividing {K}), got {G}")
    c.check_same_device(op, "wq", wq, sg=sg)
    c.check_contiguous(op, wq=wq, sg=sg)
    if wq.is_cuda:
        require_sm90(op, wq.device, FP_KERNELS)
        return fp4_to_fp8_cuda(wq, sg, K)
    codes = unpack_fp4(wq, N, K)
    return fp4_to_fp8_ref(codes, sg) if sg.dtype == torch.int8 else fp4_to_fp8_float_ref(codes, sg)
