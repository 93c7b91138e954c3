"""One query token per sequence against a KV cache, in torch (float32 math): what
``zqkernels.decode_attention`` (src/cuda/decode_attention.cu) computes. Grouped KV heads: query head
h reads KV head h // (heads // kv_heads). A row whose keys are all masked gives 0 (the kernel's
convention; SDPA's math path gives NaN there)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["decode_attention_ref"]


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                         scale: Optional[float] = None) -> torch.Tensor:
    """q [B, H, 1, hd], k / v [B, KV, L, hd], mask bool [B or 1, 1, 1, L] (True: attend) or None ->
    [B, H, 1, hd] in q's dtype."""
    B, H, _, hd = q.shape
    G = H // k.shape[1]
    s = 1.0 / hd**0.5 if scale is None else scale
    kf = k.float().repeat_interleave(G, dim=1)
    vf = v.float().repeat_interleave(G, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * s  # [B, H, 1, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    m = scores.amax(dim=-1, keepdim=True)
    p = torch.exp(scores - torch.where(torch.isneginf(m), torch.zeros_like(m), m))
    den = p.sum(dim=-1, keepdim=True)
    out = (p @ vf) / torch.where(den == 0, torch.ones_like(den), den)
    return out.to(q.dtype)
