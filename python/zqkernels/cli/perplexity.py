"""eval's measurements: perplexity over non-overlapping windows, and the relative output error of every
quantized Linear on the inputs the float model gives it."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .common import CLIError


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch: int, device: str) -> tuple[float, int, float, list[float], list[int]]:
    """(perplexity, predicted tokens, seconds, mean NLL per window, predicted tokens per window) over
    non-overlapping windows (no context carried)."""
    import torch.nn.functional as F

    t = time.perf_counter()
    nll, count = 0.0, 0
    per_window: list[float] = []
    tokens: list[int] = []
    for i in range(0, windows.shape[0], batch):
        x = windows[i : i + batch].to(device)
        out = model(input_ids=x)
        logits = getattr(out, "logits", None)
        if logits is None:
            raise CLIError(f"{type(model).__name__} returns no logits: eval needs a causal language model")
        logits = logits.float()
        tok = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        sums = tok.double().reshape(x.shape[0], -1).sum(1).tolist()
        n = x.shape[1] - 1
        per_window += [s / n for s in sums]
        tokens += [n] * x.shape[0]
        nll += sum(sums)
        count += x[:, 1:].numel()
    return math.exp(nll / count), count, time.perf_counter() - t, per_window, tokens


def _out_features(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return int(m.weight.shape[1])  # HF Conv1D: [in, out]


def _quantized_gemms(model_q: nn.Module) -> tuple[list[tuple[Any, list[str]]], list[str]]:
    """[(QLinear, [float module names whose outputs it computes, in row order])], notes."""
    from ..nn import QLinear, QuantizedBlock
    from ..nn.blocks import parts_of  # a fused block's GEMM role -> the float modules merged into it

    out: list[tuple[Any, list[str]]] = []
    notes: list[str] = []
    blocks: list[str] = []
    for name, mod in model_q.named_modules():
        if any(name.startswith(b + ".") for b in blocks):
            continue
        pre = f"{name}." if name else ""
        if isinstance(mod, QuantizedBlock):
            blocks.append(name)
            try:
                parts = parts_of(mod)
            except (NotImplementedError, ValueError):
                notes.append(f"{name}: fused {type(mod).__name__} not mapped to float modules")
                continue
            for role, subs in parts.items():
                lin = getattr(mod, role, None)
                if isinstance(lin, QLinear):
                    out.append((lin, [pre + s for s in subs]))
        elif isinstance(mod, QLinear):
            out.append((mod, [name]))
    return out, notes


@torch.no_grad()
def layer_errors(model_f: nn.Module, model_q: nn.Module, windows: torch.Tensor, device: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Relative output error ||Q(x) - F(x)|| / ||F(x)|| of every quantized Linear, on the inputs x
    the float model gives that Linear (hooks on the float model). One row per float Linear name, in
    the float model's module order."""
    gemms, notes = _quantized_gemms(model_q)
    floats = dict(model_f.named_modules())
    acc: dict[str, list[float]] = {}
    handles = []
    for qlin, names in gemms:
        mods = [floats.get(n) for n in names]
        if any(m is None or not hasattr(m, "weight") for m in mods):
            notes.append(f"{' | '.join(names)}: not found in the float model")
            continue
        sizes = [_out_features(m) for m in mods]
        if sum(sizes) != qlin.out_features:
            notes.append(f"{' | '.join(names)}: {sum(sizes)} float rows vs {qlin.out_features} quantized")
            continue
        state: dict[str, Any] = {"pending": None, "left": 0}
        for i, (n, m) in enumerate(zip(names, mods)):
            acc[n] = [0.0, 0.0]

            def hook(_m, inp, y, i=i, n=n, qlin=qlin, sizes=sizes, state=state):
                if state["left"] == 0:  # first part of this GEMM in this forward: run the quantized one
                    state["pending"] = list(qlin(inp[0]).split(sizes, dim=-1))
                    state["left"] = len(sizes)
                yq = state["pending"][i].float()
                state["left"] -= 1
                yf = y.float()
                acc[n][0] += float(((yq - yf) ** 2).sum())
                acc[n][1] += float((yf**2).sum())

            handles.append(m.register_forward_hook(hook))
    try:
        for w in windows:
            model_f(input_ids=w[None].to(device))
    finally:
        for h in handles:
            h.remove()
    scheme_of = {n: q.scheme for q, names in gemms for n in names}
    order = {n: i for i, n in enumerate(floats)}
    rows = [
        {"module": n, "scheme": scheme_of[n], "rel_err": math.sqrt(e / r) if r > 0 else 0.0}
        for n, (e, r) in sorted(acc.items(), key=lambda kv: order.get(kv[0], 0))
    ]
    return rows, notes
