"""Activation smoothing of a float model before quantization (SmoothQuant: Xiao et al., "SmoothQuant:
Accurate and Efficient Post-Training Quantization for Large Language Models", 2022).

Per-token activation quantization loses the small channels of a token whenever a few channels hold
large values (outliers): the token's scale is set by its largest value. Smoothing moves part of
that range into the weights with an exact reparametrization of the float model: for a Linear input
channel j, the activations are divided by s_j and the weight columns multiplied by s_j, with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|X_j| over calibration tokens, max|W_j| over the rows of every Linear reading channel j). The
division is folded into what produces the activations, so the float model computes the same function
and no op is added at inference:

- a norm feeding Linears (LLaMA's ``input_layernorm`` -> q, k, v and ``post_attention_layernorm``
  -> gate, up; GPT-2's ``ln_1`` -> c_attn and ``ln_2`` -> c_fc): its weight (and bias) / s; a
  Gemma RMSNorm (``x_hat * (1 + weight)``, kind "norm+1"): 1 + weight / s;
- ``up_proj`` -> ``down_proj`` (the SwiGLU / GeGLU product is linear in up): up's rows (and bias) / s;
- ``v_proj`` -> ``o_proj`` (attention output is linear in V; with grouped-query attention the
  factor of a V channel is shared by the query heads of its group): v's rows (and bias) / s;
- packed Linears (Phi-3's ``gate_up_proj``, ``qkv_proj``; rules with ``tail``): the same folds into
  their last rows (up, v); the other rows are untouched.

The rules are data on the fused block classes (``SMOOTH``, nn/blocks.py); an architecture without
them is refused with its reason (``NO_SMOOTH``, e.g. BERT's post-norm).

W8 weights cost SmolLM2-135M nothing measurable while its per-token INT8 activations cost ~+4%
perplexity (benchmarks/accuracy_gpu.py), which is the trade this makes. Run it on the float model,
then quantize (``quantize_``, ``gptq``) and optionally ``lkd`` with the smoothed float model as the
teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..nn.blocks import BLOCKS, SmoothRule, block_class
from ._calib import check_batches, run_batches
from .lkd import _is_linear

__all__ = ["smooth_", "SmoothReport"]

# The groups of each float HF layer are its fused block class's SMOOTH (nn/blocks.py: SmoothRule
# (source, targets, kind)), found through nn.blocks.BLOCKS (HF layer class name -> block class).


def _rules(layer: nn.Module) -> tuple[SmoothRule, ...]:
    cls = block_class(layer)
    return cls.SMOOTH if cls is not None else ()


def _supported() -> list[str]:
    return sorted(name for name, cls in BLOCKS.items() if cls.SMOOTH)


def _refused(model: nn.Module) -> list[str]:
    """Why each recognised layer class of `model` without smoothing rules has none (its block's
    ``NO_SMOOTH``)."""
    out = {}
    for m in model.modules():
        cls = block_class(m)
        if cls is not None and not cls.SMOOTH:
            out[type(m).__name__] = cls.NO_SMOOTH or "no smoothing rules"
    return [f"{k}: {v}" for k, v in sorted(out.items())]


@dataclass
class SmoothReport:
    """What ``smooth_`` changed: one entry per (source -> targets) group."""

    alpha: float
    groups: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"smooth_: alpha {self.alpha}, {len(self.groups)} groups"]
        for g in self.groups:
            lines.append(
                f"  {g['block']}.{g['source']} -> {', '.join(g['targets'])}: {g['channels']} channels, "
                f"s in [{g['s_min']:.3g}, {g['s_max']:.3g}], act max/median {g['act_ratio_before']:.1f} -> "
                f"{g['act_ratio_after']:.1f}"
            )
        return "\n".join(lines)


def _w_in(m: nn.Module) -> torch.Tensor:
    """The weight as [out, in] (a view) of an nn.Linear or HF Conv1D."""
    from ..nn.linear import is_conv1d

    return m.weight.t() if is_conv1d(m) else m.weight


def _gqa_shape(attn: nn.Module, o_in: int) -> tuple[int, int, int]:
    """(kv heads, query heads per kv head, head dim) of an HF attention module."""
    cfg = getattr(attn, "config", None)
    nh = getattr(cfg, "num_attention_heads", None)
    nkv = getattr(cfg, "num_key_value_heads", None) or nh
    hd = getattr(attn, "head_dim", None) or getattr(cfg, "head_dim", None) or (o_in // nh if nh else None)
    if not nh or not hd or nh * hd != o_in or nh % nkv:
        raise ValueError(
            f"smooth_: cannot read the head layout of {type(attn).__name__} (num_attention_heads {nh}, "
            f"num_key_value_heads {nkv}, head_dim {hd}, o_proj in_features {o_in})"
        )
    return nkv, nh // nkv, hd


@torch.no_grad()
def smooth_(
    model: nn.Module,
    calib_batches: Iterable[Any],
    alpha: float = 0.5,
    *,
    min_scale: float = 1e-5,
) -> SmoothReport:
    """Smooth `model` (a float model, changed in place) for per-token activation quantization.

    calib_batches: model inputs as for ``gptq`` / ``lkd`` (dicts -> ``model(**b)``, tensors, tuples);
    the per-channel input maxima of the smoothed Linears come from one pass over them. alpha in
    [0, 1]: the migration strength: after smoothing, max|X_j| becomes (max|X_j| max|W_j|)^(1 - alpha)
    and max|W_j| becomes (max|X_j| max|W_j|)^alpha, so 0.5 equalizes them and a larger alpha flattens
    the activations further at the weights' cost (SmoothQuant uses 0.5 for most models, up
    to ~0.8 for ones with strong outliers). Supported blocks: the HF layer classes whose fused
    block class has ``SMOOTH`` rules (``nn.blocks.BLOCKS``: LLaMA, Mistral, Qwen2, Qwen3, Phi-3,
    Gemma-2, Gemma-3 decoder layers; GPT-2 blocks); a model with none of them raises ValueError
    (naming why its recognised layers cannot be smoothed). Returns a ``SmoothReport``.

    The model's function is unchanged up to float rounding; run it before ``quantize_`` / ``gptq``.
    """
    op = "smooth_"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{op}: alpha must be a number in [0, 1], got {alpha!r}")
    if not isinstance(min_scale, (int, float)) or not min_scale > 0:
        raise ValueError(f"{op}: min_scale must be a positive number, got {min_scale!r}")
    check_batches(op, calib_batches)
    from ..nn.linear import QLinear

    if any(isinstance(m, QLinear) for m in model.modules()):
        raise ValueError(f"{op}: the model already holds QLinears; smooth the float model, then quantize it")

    # (block name, block, source module, [target modules], kind, rule)
    plan = []
    for bname, block in model.named_modules():
        rules = _rules(block)
        if not rules:
            continue
        for src, tgts, kind, tail in rules:
            try:
                s_mod = block.get_submodule(src)
                t_mods = [block.get_submodule(t) for t in tgts]
            except AttributeError as e:
                raise ValueError(f"{op}: block {bname!r} ({type(block).__name__}) lacks a module: {e}") from None
            for t, m in zip(tgts, t_mods):
                if not _is_linear(m):
                    raise ValueError(f"{op}: {bname}.{t} is a {type(m).__name__}, not an nn.Linear / Conv1D")
            if kind in ("norm", "norm+1"):
                w = getattr(s_mod, "weight", None)
                if not isinstance(w, torch.Tensor) or w.dim() != 1:
                    raise ValueError(f"{op}: {bname}.{src} ({type(s_mod).__name__}) has no per-channel weight to fold into")
            elif not _is_linear(s_mod):
                raise ValueError(f"{op}: {bname}.{src} is a {type(s_mod).__name__}, not an nn.Linear / Conv1D")
            plan.append((bname, block, src, s_mod, list(tgts), t_mods, kind, tail))
    if not plan:
        refused = _refused(model)
        why = f" ({'; '.join(refused)})" if refused else ""
        raise ValueError(
            f"{op}: found no supported transformer block in {type(model).__name__}{why}; supported: {_supported()}"
        )

    # Per-channel input maxima of the first target of each group (the targets share their input).
    amax: dict[int, torch.Tensor] = {}

    def hook(key: int):
        def f(_m, args):
            x = args[0].detach()
            v = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            amax[key] = v if key not in amax else torch.maximum(amax[key], v)

        return f

    handles = [p[5][0].register_forward_pre_hook(hook(i)) for i, p in enumerate(plan)]
    try:
        run_batches(op, model, calib_batches)
    finally:
        for h in handles:
            h.remove()

    for i, (bname, _block, _src, _s_mod, tgts, _t_mods, _kind, _tail) in enumerate(plan):
        if i not in amax:  # checked for every group before any is changed
            raise ValueError(f"{op}: {bname}.{tgts[0]} saw no input during calibration")

    a = float(alpha)
    report = SmoothReport(alpha=a)
    for i, (bname, block, src, s_mod, tgts, t_mods, kind, tail) in enumerate(plan):
        x = amax[i].double()
        w = torch.stack([_w_in(m).detach().abs().double().amax(0) for m in t_mods]).amax(0)
        if kind == "gqa":
            nkv, grp, hd = _gqa_shape(block.get_submodule(src.rpartition(".")[0]), x.numel())
            x = x.view(nkv, grp, hd).amax(1).reshape(-1)
            w = w.view(nkv, grp, hd).amax(1).reshape(-1)
        s = (x.clamp_min(1e-12) ** a) / (w.clamp_min(1e-12) ** (1 - a))
        s = torch.where((x > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s)).clamp_min(min_scale)
        s_src = s
        s_tgt = s.view(nkv, 1, hd).expand(nkv, grp, hd).reshape(-1) if kind == "gqa" else s

        # fold 1/s into the source, s into the targets' columns
        if kind == "norm":
            s_mod.weight.data = (s_mod.weight.data.double() / s_src).to(s_mod.weight.dtype)
            b = getattr(s_mod, "bias", None)
            if isinstance(b, torch.Tensor):
                b.data = (b.data.double() / s_src).to(b.dtype)
        elif kind == "norm+1":  # x_hat * (1 + w): (1 + w) / s = 1 + w'
            s_mod.weight.data = ((1.0 + s_mod.weight.data.double()) / s_src - 1.0).to(s_mod.weight.dtype)
        else:
            W = _w_in(s_mod)
            n = s_src.numel()
            if W.shape[0] != n and not (tail and W.shape[0] > n):
                raise ValueError(
                    f"{op}: {bname}.{src} has {W.shape[0]} outputs but {tgts[0]} reads {n} channels"
                )
            rows = slice(W.shape[0] - n, W.shape[0])  # all of them, or the last n (tail: a packed Linear)
            W.data[rows] = (W.data[rows].double() / s_src[:, None]).to(W.dtype)
            if s_mod.bias is not None:
                s_mod.bias.data[rows] = (s_mod.bias.data[rows].double() / s_src).to(s_mod.bias.dtype)
        for m in t_mods:
            W = _w_in(m)
            W.data.copy_((W.data.double() * s_tgt[None, :].to(W.device)).to(W.dtype))
        xs = amax[i].double() / s_tgt.to(amax[i].device)
        med_b, med_a = float(amax[i].double().median()), float(xs.median())
        report.groups.append({
            "block": bname, "source": src, "targets": tgts, "kind": kind, "channels": int(s_tgt.numel()),
            "s_min": float(s.min()), "s_max": float(s.max()),
            "act_ratio_before": float(amax[i].max()) / med_b if med_b > 0 else float("inf"),
            "act_ratio_after": float(xs.max()) / med_a if med_a > 0 else float("inf"),
        })
    return report
