"""LoRC's math on one QLinear: ZeroQuant-V2's low-rank compensation of the weight quantization error.

For a QLinear of any scheme (w8a8, fp8, w4a8-fp, w4a8, w4a8-floatscale, w4a8-zp, w8a8-group) quantized
from the float weight W [N, K], the error E = W - deq(Wq) (deq(Wq): ``dequantize`` of the layer's
weight_q / weight_scale / weight_group_scale in its format, unpacking INT4 / FP4; the value the
kernels multiply) is approximated by its rank-r truncated SVD
E ~ U_r S_r V_r^T, and the layer computes ``y = QLinear(x) + (x @ A) @ B`` with

    A = V_r          [K, r]   (orthonormal columns: x @ A keeps x's scale, no fp16 overflow)
    B = S_r U_r^T    [r, N]   (all of S goes to B: B carries the error's magnitude)

so that A @ B = E_r^T and x @ E_r^T is the missing part of x @ W^T. By Eckart-Young,
||E - (A B)^T||_F = sqrt(sum_{i>r} s_i^2), the smallest possible for rank r. The factors are
stored in bf16 by default (issue 9: "factors in bf16"; or `dtype=`) as the QLinear buffers
``lorc_a`` / ``lorc_b``; their cost is (K + N) r elements per layer. LoRC composes with any weight
quantizer (RTN or GPTQ): it factors whatever error the stored weights have.

This module is the per-layer part (``lorc_factors``, ``apply_lorc``; ``QLinear.add_lorc`` calls it)
and imports nothing of zqkernels (not even ``nn.linear``, which imports it; dequantizing is the
layer's scheme's ``dequantize``); the model-level ``lorc`` (every QLinear of a model, the merged
GEMMs of fused blocks against their float parts) and ``LoRCReport`` are in ``algorithms/lorc.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["lorc_factors", "apply_lorc"]

# QLinear (nn/linear.py) imports this module (QLinear.add_lorc), so this one does not import it back:
# a layer is recognised by what it holds (its scheme object and its weight / LoRC buffers).


def _is_qlinear(m: Any) -> bool:
    return isinstance(m, nn.Module) and hasattr(m, "qscheme") and "weight_q" in m._buffers and "lorc_a" in m._buffers


def _deq_fmt(q: nn.Module) -> Optional[str]:
    """dequantize's fmt for the layer's weights (None: a scheme that cannot dequantize)."""
    try:
        return q.qscheme.dequant_format()
    except NotImplementedError:
        return None


def _deq_weight(q: nn.Module) -> torch.Tensor:
    """deq(Wq) [out_features, in_features] in float32 (padded rows dropped): the layer's scheme's
    ``dequantize`` of its buffers (the weight the kernels multiply)."""
    if _deq_fmt(q) is None:
        raise NotImplementedError(f"LoRC: scheme {q.scheme!r} has no dequant_format (cannot dequantize its weights)")
    return q.qscheme.dequantize(q)


def _weight_bytes(q: nn.Module) -> tuple[int, int]:
    """(bytes of weight_q, bytes of weight_scale + weight_group_scale), padded rows included."""
    b = q._buffers
    wq = b["weight_q"]
    scales = sum(t.numel() * t.element_size() for t in (b["weight_scale"], b.get("weight_group_scale")) if t is not None)
    return wq.numel() * wq.element_size(), scales


def _check_rank(op: str, rank: Any, n: int, k: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{op}: rank must be an int, got {type(rank).__name__}")
    if not 1 <= rank <= min(n, k):
        raise ValueError(f"{op}: rank must be in [1, min(out_features, in_features)] = [1, {min(n, k)}], got {rank}")
    return rank


def lorc_factors(
    weight_float: torch.Tensor, weight_deq: torch.Tensor, rank: int, dtype: Optional[torch.dtype] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [K, r], B [r, N]) with A @ B the rank-r truncated SVD of (weight_float - weight_deq)^T
    (both [N, K]); computed in float32 on weight_deq's device, returned in `dtype` (default
    torch.bfloat16; the forward casts them to the activations' dtype)."""
    op = "lorc_factors"
    if weight_float.dim() != 2 or weight_float.shape != weight_deq.shape:
        raise ValueError(
            f"{op}: weight_float must be [out_features, in_features] = {list(weight_deq.shape)}, "
            f"got {list(weight_float.shape)}"
        )
    if not weight_float.is_floating_point():
        raise TypeError(f"{op}: weight_float must be a floating-point tensor, got {weight_float.dtype}")
    n, k = weight_deq.shape
    rank = _check_rank(op, rank, n, k)
    dtype = dtype or torch.bfloat16
    err = weight_float.detach().to(device=weight_deq.device, dtype=torch.float32) - weight_deq.float()
    u, s, vh = torch.linalg.svd(err, full_matrices=False)  # err = u diag(s) vh
    a = vh[:rank].t()  # V_r [K, r]
    b = s[:rank, None] * u[:, :rank].t()  # S_r U_r^T [r, N]
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


def apply_lorc(
    qlinear: nn.Module, weight_float: torch.Tensor, rank: int = 8, dtype: Optional[torch.dtype] = None
) -> dict[str, Any]:
    """Give `qlinear` LoRC factors of `rank` for the float weight it was quantized from
    (``weight_float`` [out_features, in_features], nn.Linear layout; any device). Replaces factors
    already there. Any scheme. Returns {"rank", "scheme", "bytes" (of the factors), "weight_bytes"
    (weight_q: int8, fp8 or packed 4-bit), "scale_bytes" (weight_scale + weight_group_scale),
    "rel_err_before", "rel_err_after"} (Frobenius errors of the weight, relative to ||W||)."""
    op = "apply_lorc"
    if not _is_qlinear(qlinear):
        raise TypeError(f"{op}: qlinear must be a QLinear, got {type(qlinear).__name__}")
    if _deq_fmt(qlinear) is None:
        raise NotImplementedError(
            f"{op}: LoRC needs the scheme's dequant_format to dequantize its weights; scheme {qlinear.scheme!r} has none"
        )
    if not isinstance(weight_float, torch.Tensor):
        raise TypeError(f"{op}: weight_float must be a torch.Tensor, got {type(weight_float).__name__}")
    deq = _deq_weight(qlinear)
    a, b = lorc_factors(weight_float, deq, rank, dtype)
    qlinear.lorc_a = a
    qlinear.lorc_b = b
    w = weight_float.detach().to(device=deq.device, dtype=torch.float32)
    wn = float(torch.linalg.norm(w)) or 1.0
    after = deq + (a.float() @ b.float()).t()
    weight_bytes, scale_bytes = _weight_bytes(qlinear)
    return {
        "rank": rank,
        "scheme": qlinear.scheme,
        "bytes": a.numel() * a.element_size() + b.numel() * b.element_size(),
        "weight_bytes": weight_bytes,
        "scale_bytes": scale_bytes,
        "rel_err_before": float(torch.linalg.norm(w - deq)) / wn,
        "rel_err_after": float(torch.linalg.norm(w - after)) / wn,
    }
