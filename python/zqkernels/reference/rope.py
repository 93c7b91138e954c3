"""The attention input of a decoder layer in torch: split of the QKV GEMM output into heads, HF's
rotary embedding (``apply_rotary_pos_emb``: ``x * cos + rotate_half(x) * sin`` on the first
``cos.shape[-1]`` channels of each head, the rest passed through: partial rotary), and the static
KV-cache write. ``zqkernels.rope_qkv`` (src/cuda/rope_cache.cu) computes the same values in one
kernel, rounded where this torch sequence rounds, so the two agree bit for bit."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["rotate_half", "rotary", "rope_qkv_ref"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] channels of each head (all of them, or a part: Phi-3's
    partial_rotary_factor), as HF's apply_rotary_pos_emb; cos / sin broadcast against x."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :rd], x[..., rd:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


def rope_qkv_ref(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
    k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None,
    cache_offset: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [B, S, (heads + 2 kv_heads) * head_dim]; cos, sin [B or 1, S, rd] -> (q [B, heads, S, hd],
    k, v [B, kv_heads, S, hd]), q and k rotated. With k_cache / v_cache [B, kv_heads, L, hd] and
    cache_offset (an integer scalar tensor): k and v are written at positions offset .. offset + S - 1
    (those < L; the offset is not advanced) and the caches are returned as k and v."""
    B, S, _ = qkv.shape
    H, KV, hd = heads, kv_heads, head_dim
    q, k, v = qkv.split((H * hd, KV * hd, KV * hd), dim=-1)
    q = q.reshape(B, S, H, hd).transpose(1, 2)
    k = k.reshape(B, S, KV, hd).transpose(1, 2)
    v = v.reshape(B, S, KV, hd).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    if cos.shape[-1] > 0:
        q, k = rotary(q, c, s), rotary(k, c, s)
    if k_cache is None:
        return q, k, v
    pos = torch.arange(S, device=qkv.device) + cache_offset.to(qkv.device).long().reshape(())
    keep = (pos >= 0) & (pos < k_cache.shape[2])
    k_cache.index_copy_(2, pos[keep], k[:, :, keep].to(k_cache.dtype))
    v_cache.index_copy_(2, pos[keep], v[:, :, keep].to(v_cache.dtype))
    return q, k_cache, v_cache
