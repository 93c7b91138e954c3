"""zqkernels: fast W8A8 / FP8 / W4A8 kernels for post-training-quantized transformers on NVIDIA GPUs
(the default scheme: INT8 per-token activations x INT8 per-channel weights; every scheme is listed in
``zqkernels.SCHEMES``), with a pure-torch reference for every kernel.

    import zqkernels
    qlin = zqkernels.QLinear.from_linear(linear)         # or zqkernels.quantize_model(model)
    summary = zqkernels.quantize_(model, zqkernels.W8A8Config())  # torchao-style, with filter_fn=...
    xq, sx = zqkernels.quantize_per_token(x)              # x [M, K] -> int8 [M, K], float32 [M]
    wq, sw = zqkernels.quantize_weight(w)                 # w [N, K] -> int8 [N, K], float32 [N]
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=128)  # FP4 E2M1 (docs/FP8.md)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int8", scale="int", group_size=128)  # INT8 groups
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=128)  # W4A8 (docs/W4A8.md)
    y = zqkernels.int8_gemm(xq, wq, sx, sw, bias, torch.bfloat16)

CUDA tensors run the compiled kernels (``zqkernels._C``); CPU tensors run ``zqkernels.reference``.
A build without CUDA kernels raises on CUDA tensors instead of falling back. ``python -m zqkernels
info`` shows what this install can do.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _ext
from . import nn as _nn
from ._ext import _C as _C  # the compiled module, or None in a CPU-only build
from .algorithms import LoRCReport, gptq, gptq_quantize_weight, lkd, lorc, smooth_
from .formats import GemmSpec
from .nn import *  # noqa: F403 - modules, conversion, checkpoints, apply_lorc (nn.__all__)
from .ops import (
    decode_attention,
    dequantize,
    fp4_to_fp8,
    fp8_block_gemm,
    fp8_gemm,
    gemm_tiles,
    int8_gemm,
    quantize_per_token,
    quantize_per_token_group,
    quantize_weight,
    resolve_gemm_backend,
    rope_qkv,
    set_debug_checks,
    w4a8_fp_gemm,
    w4a8_gemm,
    w8a8_group_gemm,
)
from .ops import fused as _fused
from .ops.fused import *  # noqa: F403 - the fused row ops (ops/fused.py __all__)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "info",
    "int8_gemm",
    "fp8_block_gemm",
    "fp8_gemm",
    "w4a8_fp_gemm",
    "w4a8_gemm",
    "w8a8_group_gemm",
    "fp4_to_fp8",
    "rope_qkv",
    "decode_attention",
    "quantize_per_token",
    "quantize_per_token_group",
    "quantize_weight",
    "dequantize",
    *_fused.__all__,
    *_nn.__all__,
    "gptq",
    "gptq_quantize_weight",
    "lkd",
    "lorc",
    "LoRCReport",
    "smooth_",
    "set_debug_checks",
    "GemmSpec",
]


def info() -> dict[str, Any]:
    """What this install can do, as a dict (prints nothing; ``python -m zqkernels info`` prints it).

    Keys: version, cuda_kernels (is ``_C`` present), compiled_archs, backends, gemm_tiles (tile
    names per kernel family, e.g. "sm90_int8_rowwise"), torch, gpu (name and compute capability of
    cuda:0, or None), note.
    """
    C = _ext._C
    tiles = gemm_tiles()
    backends = sorted({k[0] for k in C.gemm_kernels()}) if C is not None else []
    gpu = None
    if torch.cuda.is_available():
        cc = torch.cuda.get_device_capability(0)
        gpu = {"name": torch.cuda.get_device_name(0), "capability": f"{cc[0]}.{cc[1]}"}
    if C is None:
        if _ext.import_error is not None:
            note = _ext.no_kernels_reason()
        else:
            why = getattr(_ext.build_config, "build_reason", "") if _ext.build_config is not None else ""
            note = (
                f"built without CUDA kernels ({why or 'no CUDA toolkit at build time'}): ops run the "
                "pure-torch reference on CPU tensors; CUDA tensors raise"
            )
    elif gpu is None:
        note = (
            "CUDA kernels built, but torch sees no CUDA GPU: ops run the pure-torch reference on CPU tensors"
        )
    else:
        try:
            note = (
                f"int8_gemm on cuda:0 runs backend {resolve_gemm_backend(torch.device('cuda', 0))!r} (auto)"
            )
        except RuntimeError as e:
            note = str(e)
    return {
        "version": __version__,
        "cuda_kernels": C is not None,
        "compiled_archs": list(C.compiled_archs()) if C is not None else [],
        "backends": backends,
        "gemm_tiles": tiles,
        "torch": torch.__version__,
        "gpu": gpu,
        "note": note,
    }
