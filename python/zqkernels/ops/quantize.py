"""Quantization ops: ``quantize_per_token`` (kernel: src/cuda/quantize.cu) and ``quantize_weight``.

``quantize_per_token`` is the ``torch.library`` custom op ``zqkernels::quantize_per_token`` with a
fake implementation (torch.compile, export, opcheck); eager calls on plain tensors take the direct
path (``_common.eager``). CPU tensors run ``zqkernels.reference``; CUDA tensors the kernel.
"""

from __future__ import annotations

import torch

from .. import _ext
from ..reference.quantize import quantize_per_token_ref, quantize_weight_ref
from . import _common as c

__all__ = ["quantize_per_token", "quantize_weight"]

_cuda_ready: set[int] = set()  # device indices that passed require_cuda_kernels


def _check_quantize_args(x: torch.Tensor) -> None:
    op = "quantize_per_token"
    if x.dtype not in c.DTYPE_CODE:
        raise TypeError(f"{op}: x must be bfloat16, float16 or float32 [M, K], got {c.desc(x)}")
    if x.dim() != 2:
        raise ValueError(
            f"{op}: x must be 2-D [M, K] (flatten leading dims with x.reshape(-1, x.shape[-1])), "
            f"got {c.desc(x)}"
        )
    c.check_rows(op, "x", x)
    M, K = x.shape
    c.check_int32_sizes(op, M=M, K=K)


def _quantize_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on CUDA; x already checked (2-D, row layout, supported dtype)."""
    idx = x.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels("quantize_per_token", x.device)
        _cuda_ready.add(idx)
    M, K = x.shape
    xq = x.new_empty((M, K), dtype=torch.int8)
    sx = x.new_empty((M,), dtype=torch.float32)
    if M == 0:
        return xq, sx
    if K == 0:  # max over an empty row is 0: scale 0, as for an all-zero row
        return xq, sx.zero_()
    _ext._C.quantize_per_token(
        x.data_ptr(), c.DTYPE_CODE[x.dtype], x.stride(0), xq.data_ptr(), sx.data_ptr(), M, K, idx,
        c.current_stream(idx),
    )
    return xq, sx


_CODES = c.DTYPE_CODE


def _quantize_impl(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.is_cuda and x.dtype in _CODES and x.dim() == 2 and c.has_row_layout(x):
        # The common call in a few reads; anything unusual takes the full checks (precise errors).
        M, K = x.shape
        if M <= c.INT32_MAX and K <= c.INT32_MAX:
            return _quantize_cuda(x)
    _check_quantize_args(x)
    if x.is_cuda:
        return _quantize_cuda(x)
    if x.is_meta:  # shape inference only
        M, K = x.shape
        return x.new_empty((M, K), dtype=torch.int8), x.new_empty((M,), dtype=torch.float32)
    if x.device.type != "cpu":
        c.require_cuda_kernels("quantize_per_token", x.device)  # raises: names the device type
    return quantize_per_token_ref(x)


@torch.library.custom_op("zqkernels::quantize_per_token", mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)")
def _quantize_per_token_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_impl(x)


@_quantize_per_token_op.register_fake
def _quantize_per_token_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_quantize_args(x)
    if x.device.type not in ("cpu", "meta"):
        c.require_cuda_kernels("quantize_per_token", x.device)
    M, K = x.shape
    return x.new_empty((M, K), dtype=torch.int8), x.new_empty((M,), dtype=torch.float32)


_op = torch.ops.zqkernels.quantize_per_token.default


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise symmetric INT8 quantization: x [M, K] -> (xq int8 [M, K], sx float32 [M]).

    ``sx = amax / 127`` and ``xq = clamp(rint(x * (127 / amax)), -127, 127)`` per row, in fp32
    (docs/SCALES.md); an all-zero row gives sx = 0, xq = 0; rows with amax < 2^-64 are scaled by
    2^64 first (exact), so tiny rows quantize like any other. x is bf16, fp16 or fp32; its rows may
    be strided but K must have unit stride. CPU tensors run the reference, CUDA tensors the kernel.
    A NaN/Inf in a row gives a NaN/Inf sx for that row (see ``set_debug_checks``).
    """
    if c._debug_checks:
        c.check_finite("quantize_per_token", "x", x)
    if c.eager(x):
        return _quantize_impl(x)  # eager: no custom-op dispatch (ops/_common.py)
    return _op(x)


def quantize_weight(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise symmetric quantization of a weight [N, K] -> (wq int8 [N, K], sw float32 [N]).

    bits=8 gives values in [-127, 127]; bits=4 gives [-7, 7] in an int8 container. Weights are
    quantized once, offline: this runs the reference math with torch ops on w's device, and it
    always checks that w is finite (a sync; a NaN would poison a whole output channel). The results
    are constants: no gradient flows back to w.
    """
    op = "quantize_weight"
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: w must be a torch.Tensor [N, K], got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{op}: w must be a floating-point tensor [N, K], got {c.desc(w)}")
    if w.dim() != 2:
        raise ValueError(f"{op}: w must be 2-D [N, K] (nn.Linear.weight layout), got {c.desc(w)}")
    if bits not in (8, 4):
        raise ValueError(f"{op}: bits must be 8 or 4, got {bits!r}")
    wq, sw = quantize_weight_ref(w.detach(), bits)  # constants: no gradient flows to w
    # A NaN/Inf anywhere in a row makes that row's scale NaN/Inf: checking the N scales is
    # checking the N*K weights.
    bad = ~torch.isfinite(sw)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{op}: w has NaN/Inf values in {len(rows)} rows (output channels {rows[:8]}"
            f"{' ...' if len(rows) > 8 else ''}); a quantized channel would be NaN"
        )
    return wq, sw
