"""LoRC: ZeroQuant-V2's low-rank compensation of the weight quantization error.

For a QLinear of any scheme (w8a8, fp8, w4a8-fp, w4a8, w4a8-floatscale, w8a8-group) quantized
from the float weight W [N, K], the error E = W - deq(Wq) (deq(Wq): ``dequantize`` of the layer's
weight_q / weight_scale / weight_group_scale in its format, unpacking INT4 / FP4; the value the
kernels multiply) is approximated by its rank-r truncated SVD
E ~ U_r S_r V_r^T, and the layer computes ``y = QLinear(x) + (x @ A) @ B`` with

    A = V_r          [K, r]   (orthonormal columns: x @ A keeps x's scale, no fp16 overflow)
    B = S_r U_r^T    [r, N]   (all of S goes to B: B carries the error's magnitude)

so that A @ B = E_r^T and x @ E_r^T is the missing part of x @ W^T. By Eckart-Young,
||E - (A B)^T||_F = sqrt(sum_{i>r} s_i^2), the smallest possible for rank r. The factors are
stored in bf16 by default (issue 9: "factors in bf16"; or `dtype=`) as the QLinear buffers
``lorc_a`` / ``lorc_b``; their cost is (K + N) r elements per layer (reported by ``lorc``, next
to the bytes of the quantized weights and of their scales). LoRC composes with any weight
quantizer (RTN or GPTQ): it factors whatever error the stored weights have.

Fused blocks (nn/blocks.py) merge linears (QKV, gate-up), which then have no float counterpart
by name: ``lorc`` refuses QLinears inside a fused block (NotImplementedError); quantize with
``fused_blocks=False`` first. A QLinear given factors by hand still works inside a block: its
``forward_quantized`` applies the LoRC term to deq(xq).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .linear import QLinear, is_conv1d

__all__ = ["lorc_factors", "apply_lorc", "lorc", "LoRCReport"]


def _deq_fmt(q: QLinear) -> Optional[str]:
    """dequantize's fmt for the layer's weights (None: a scheme LoRC does not know)."""
    f = q._handler.weight_format(q)
    if f is None:
        return None
    if "fmt" in f:
        return f["fmt"]
    return "int4" if f.get("bits") == 4 else "int8"


def _deq_weight(q: QLinear) -> torch.Tensor:
    """deq(Wq) [out_features, in_features] in float32 (padded rows dropped): ``dequantize`` of the
    layer's buffers in its scheme's format (the weight the kernels multiply)."""
    from ..ops.quantize import dequantize

    fmt = _deq_fmt(q)
    if fmt is None:
        raise NotImplementedError(f"LoRC: scheme {q.scheme!r} has no weight_format (cannot dequantize its weights)")
    n, k = q.out_features, q.in_features
    b = q._buffers
    wq, sw, sg = b["weight_q"], b["weight_scale"], b.get("weight_group_scale")
    if wq.shape[1] == k:  # not packed: padded rows (zero) may follow out_features
        wq, sw = wq[:n], sw[:n]
        sg = None if sg is None else sg[:n]
    deq = dequantize(wq, sw, sg, fmt=fmt)
    return deq[:n]


def _weight_bytes(q: QLinear) -> tuple[int, int]:
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
    qlinear: QLinear, weight_float: torch.Tensor, rank: int = 8, dtype: Optional[torch.dtype] = None
) -> dict[str, Any]:
    """Give `qlinear` LoRC factors of `rank` for the float weight it was quantized from
    (``weight_float`` [out_features, in_features], nn.Linear layout; any device). Replaces factors
    already there. Any scheme. Returns {"rank", "scheme", "bytes" (of the factors), "weight_bytes"
    (weight_q: int8, fp8 or packed 4-bit), "scale_bytes" (weight_scale + weight_group_scale),
    "rel_err_before", "rel_err_after"} (Frobenius errors of the weight, relative to ||W||)."""
    op = "apply_lorc"
    if not isinstance(qlinear, QLinear):
        raise TypeError(f"{op}: qlinear must be a QLinear, got {type(qlinear).__name__}")
    if _deq_fmt(qlinear) is None:
        raise NotImplementedError(
            f"{op}: LoRC needs the scheme's weight_format to dequantize its weights; scheme {qlinear.scheme!r} has none"
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


@dataclass
class LoRCReport:
    """What ``lorc`` did: one dict per layer given factors ({"module", "rank", "scheme", "bytes",
    "weight_bytes", "scale_bytes", "rel_err_before", "rel_err_after"}) and the QLinears it skipped (no float
    counterpart by name, with why)."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r["bytes"] for r in self.layers)

    @property
    def weight_bytes(self) -> int:
        return sum(r["weight_bytes"] for r in self.layers)

    @property
    def scale_bytes(self) -> int:
        return sum(r.get("scale_bytes", 0) for r in self.layers)

    @property
    def relative(self) -> float:
        """Added bytes / quantized weight bytes (weight_q) of the layers given factors."""
        return self.total_bytes / self.weight_bytes if self.weight_bytes else 0.0

    def __str__(self) -> str:
        lines = [f"{'module':40s} {'rank':>4s} {'bytes':>10s} {'rel':>7s} {'err before':>10s} {'err after':>10s}"]
        for r in self.layers:
            lines.append(
                f"{r['module']:40s} {r['rank']:4d} {r['bytes']:10d} {r['bytes'] / r['weight_bytes']:7.2%} "
                f"{r['rel_err_before']:10.3e} {r['rel_err_after']:10.3e}"
            )
        lines.append(
            f"LoRC: {len(self.layers)} layers, {self.total_bytes} bytes added "
            f"({self.relative:.2%} of {self.weight_bytes} quantized weight bytes, {self.scale_bytes} scale bytes); "
            f"{len(self.skipped)} skipped"
        )
        return "\n".join(lines + [f"  skipped {m}: {why}" for m, why in self.skipped])


def lorc(
    model_quant: nn.Module, model_float: nn.Module, rank: int = 8, dtype: Optional[torch.dtype] = None
) -> LoRCReport:
    """Apply LoRC to every QLinear of `model_quant` whose name names an nn.Linear (or HF Conv1D)
    in `model_float` (the unquantized model, same architecture; any device). Returns a
    ``LoRCReport`` (bytes per layer and in total, absolute and relative to the quantized weights).
    Any scheme (and mixes of them, e.g. ZEROQUANT_W4_8).

    Raises NotImplementedError for QLinears inside fused blocks (convert with
    ``fused_blocks=False``); a rank above a layer's min(N, K) raises ValueError."""
    from .blocks import QuantizedBlock

    floats = dict(model_float.named_modules())
    blocks = [n for n, m in model_quant.named_modules() if isinstance(m, QuantizedBlock)]
    report = LoRCReport()
    with torch.no_grad():
        for name, mod in model_quant.named_modules():
            if not isinstance(mod, QLinear):
                continue
            if any(name.startswith(p + ".") for p in blocks):
                raise NotImplementedError(
                    f"lorc: {name!r} is inside a fused block (merged QKV / gate-up linears have no float "
                    "counterpart by name); LoRC with fused blocks is not supported yet: quantize with "
                    "fused_blocks=False"
                )
            f = floats.get(name)
            if isinstance(f, nn.Linear):
                w = f.weight
            elif f is not None and is_conv1d(f):
                w = f.weight.t()  # Conv1D stores [in, out]
            else:
                why = "not in the float model" if f is None else f"a {type(f).__name__} in the float model"
                report.skipped.append((name, why))
                continue
            if w.is_meta:
                raise ValueError(f"lorc: the float weight of {name!r} is on the meta device")
            r = apply_lorc(mod, w, rank, dtype)
            report.layers.append({"module": name, **r})
    return report
