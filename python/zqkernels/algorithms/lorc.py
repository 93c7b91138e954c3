"""LoRC over a model: ZeroQuant-V2's low-rank compensation of the weight quantization error.

The per-layer math (the rank-r SVD of W - deq(Wq), the factors A = V_r [K, r] and B = S_r U_r^T
[r, N], stored as the QLinear's ``lorc_a`` / ``lorc_b``, bf16 by default) is ``nn/lorc.py``'s; this
module applies it to every QLinear of a model and reports the cost ((K + N) r elements per layer,
next to the bytes of the quantized weights and of their scales).

Fused blocks (nn/blocks.py: QLlamaDecoderLayer, QGPT2Block, QBertLayer) merge linears that share
an input: ``qkv`` = q|k|v (GPT-2: c_attn), ``fc1`` = gate|up (LLaMA), concatenated along
out_features in that order; ``attn_out`` and ``fc2`` are single linears. ``lorc`` gives each
quantized role one pair of factors, computed from the error of the merged weight: the float parts
of the float layer of the same name (the block class's part map ``PARTS``, ``nn.blocks.parts_of``, shared
with LKD and checkpoints) concatenated in the block's row order, minus deq of the merged QLinear. The rank is the rank of
the merged GEMM's correction, not per part: q, k and v share one rank-r A (and B's columns split
by part); the per-part error never grows (E_r = E V_r V_r^T projects every row of E). The block
hands its GEMMs only the quantized activations, so ``forward_quantized`` applies the LoRC term to
deq(xq) = xq * sx: it differs from the float-input term by E_r (x - deq(xq)), a second-order
error. Roles kept in float (``level``) have no QLinear and get no factors.

The per-layer math (``lorc_factors``, ``apply_lorc``) is ``nn/lorc.py`` (QLinear.add_lorc uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..nn.blocks import QuantizedBlock, parts_of
from ..nn.linear import QLinear, is_conv1d
from ..nn.lorc import apply_lorc

__all__ = ["lorc", "LoRCReport", "apply_lorc"]


@dataclass
class LoRCReport:
    """What ``lorc`` did: one dict per layer given factors ({"module", "rank", "scheme", "bytes",
    "weight_bytes", "scale_bytes", "rel_err_before", "rel_err_after"}; a fused block's merged
    QLinear, e.g. "model.layers.0.qkv", also has "parts": the float Linears it was built from, in
    row order, and its errors are those of the merged weight) and the QLinears it skipped (no float
    counterpart, with why)."""

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


def _float_weight(f: Optional[nn.Module]) -> Optional[torch.Tensor]:
    """The float weight [out_features, in_features] of an nn.Linear or HF Conv1D; None otherwise."""
    if isinstance(f, nn.Linear):
        return f.weight
    if f is not None and is_conv1d(f):
        return f.weight.t()  # Conv1D stores [in, out]
    return None


def _block_targets(
    name: str, block: nn.Module, fblock: Optional[nn.Module]
) -> list[tuple[str, QLinear, list[str], Optional[torch.Tensor], str]]:
    """The quantized roles of the fused `block` named `name`: [(QLinear name, QLinear, float part names,
    merged float weight [out_features, in_features] in float32 or None, why None)]; `fblock` is the
    float layer of the same name (None: the float model has none)."""
    try:
        roles = parts_of(block)  # role -> float Linears, in the block's row order
    except NotImplementedError:
        raise NotImplementedError(
            f"lorc: fused block {name!r} ({type(block).__name__}) has no role -> float Linear map (PARTS)"
        ) from None
    pre = f"{name}." if name else ""
    owned = {id(getattr(block, r, None)) for r in roles}
    for sub, m in block.named_modules():
        if isinstance(m, QLinear) and id(m) not in owned:
            raise NotImplementedError(
                f"lorc: {pre + sub!r} in fused block {name!r} is not one of its roles {list(roles)}"
            )
    out = []
    for role, parts in roles.items():
        q = getattr(block, role, None)
        if not isinstance(q, QLinear):
            continue  # a role kept in float (level): nothing to compensate
        full = [pre + p for p in parts]
        if fblock is None:
            out.append((pre + role, q, full, None, "not in the float model"))
            continue
        ws, why = [], ""
        for p in parts:
            try:
                f = fblock.get_submodule(p)
            except AttributeError:
                f = None
            w = _float_weight(f)
            if w is None:
                what = "missing" if f is None else f"a {type(f).__name__}"
                why = f"its float part {pre + p!r} is {what} in the float model"
                break
            if w.is_meta:
                raise ValueError(f"lorc: the float weight of {pre + p!r} is on the meta device")
            ws.append(w.detach().to(device=q.weight_q.device, dtype=torch.float32))
        if why:
            out.append((pre + role, q, full, None, why))
            continue
        w = torch.cat(ws, 0)
        if tuple(w.shape) != (q.out_features, q.in_features):
            raise ValueError(
                f"lorc: the float parts {full} of {pre + role!r} concatenate to {list(w.shape)}, but the "
                f"merged QLinear is [{q.out_features}, {q.in_features}]"
            )
        out.append((pre + role, q, full, w, ""))
    return out


def lorc(
    model_quant: nn.Module, model_float: nn.Module, rank: int = 8, dtype: Optional[torch.dtype] = None
) -> LoRCReport:
    """Apply LoRC to every QLinear of `model_quant` whose name names an nn.Linear (or HF Conv1D)
    in `model_float` (the unquantized model, same architecture; any device), and to the merged
    QLinears of fused blocks (QKV, gate|up, O, down), against the concatenation of the float
    layer's parts. Returns a ``LoRCReport`` (bytes per layer and in total, absolute and relative to
    the quantized weights; a fused role's entry lists its float ``parts``).
    Any scheme (and mixes of them, e.g. ZEROQUANT_W4_8).

    `rank` is per QLinear: a fused block's merged QKV gets one rank-`rank` correction for the
    merged GEMM (not `rank` per q / k / v). A rank above a layer's min(N, K) raises ValueError."""
    floats = dict(model_float.named_modules())
    blocks = [n for n, m in model_quant.named_modules() if isinstance(m, QuantizedBlock)]
    report = LoRCReport()
    with torch.no_grad():
        for name, mod in model_quant.named_modules():
            if isinstance(mod, QuantizedBlock):
                for qname, q, parts, w, why in _block_targets(name, mod, floats.get(name)):
                    if w is None:
                        report.skipped.append((qname, why))
                        continue
                    r = apply_lorc(q, w, rank, dtype)
                    report.layers.append({"module": qname, "parts": parts, **r})
                continue
            if not isinstance(mod, QLinear) or any(name.startswith(p + ".") for p in blocks):
                continue
            f = floats.get(name)
            w = _float_weight(f)
            if w is None:
                why = "not in the float model" if f is None else f"a {type(f).__name__} in the float model"
                report.skipped.append((name, why))
                continue
            if w.is_meta:
                raise ValueError(f"lorc: the float weight of {name!r} is on the meta device")
            r = apply_lorc(mod, w, rank, dtype)
            report.layers.append({"module": name, **r})
    return report
