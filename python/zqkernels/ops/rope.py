"""The attention input of a decoder layer in one kernel (src/cuda/rope_cache.cu): the QKV GEMM's
output split into heads, HF's rotary embedding on q and k, and k / v written into a static KV cache.

    rope_qkv(qkv, cos, sin, heads, kv_heads, head_dim)
        -> (q [B, heads, S, hd], k [B, kv_heads, S, hd], v [B, kv_heads, S, hd])
    rope_qkv(..., k_cache=K, v_cache=V, cache_offset=off)
        -> (q, K, V): k / v written into K, V [B, kv_heads, L, hd] at off .. off + S - 1

It replaces the ~15 launches of the torch sequence (views, rotate_half's cat and negation, the
multiplies and adds, HF ``StaticLayer``'s index_copy) with one; at decode those launches, not the
bytes, are the cost. The values are the torch sequence's bit for bit (``reference/rope.py``): each
product and the sum are rounded to the input dtype as torch rounds them. ``cache_offset`` is a device
scalar (HF ``StaticLayer.cumulative_length``) read by the kernel, so the call is CUDA-graph safe;
``advance=True`` also adds S to it (on CUDA in the kernel itself where the launch is one cluster of at
most 8 CTAs, decode at batch 1: no separate ``add_`` launch; otherwise by an ``add_`` after it). Positions at or past L are not written (the caller checks
the length, as HF's cache does). q, k, v are returned as [B, S, heads, hd] memory seen as [B, heads,
S, hd] (the layout the split-and-transpose views give; SDPA takes it as is). CPU tensors run the
reference; each form is a ``torch.library`` custom op (torch.compile, CUDA graphs).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext
from ..reference.rope import rope_qkv_ref
from . import _common as c

__all__ = ["rope_qkv"]

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)
_cuda_ready: set[int] = set()


def _check(name, qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset) -> int:
    """Validate a call; returns the rotary width rd (cos.shape[-1])."""
    for n, v in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if type(v) is not int or v <= 0:
            raise ValueError(f"{name}: {n} must be a positive int, got {v!r}")
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"{name}: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dtype not in _FLOATS:
        raise TypeError(f"{name}: qkv must be bfloat16, float16 or float32, got {c.dtype_name(qkv.dtype)}")
    W = (heads + 2 * kv_heads) * head_dim
    if qkv.dim() != 3 or qkv.shape[2] != W:
        raise ValueError(f"{name}: qkv must be [B, S, (heads + 2 * kv_heads) * head_dim] == [B, S, {W}], got "
                         f"{list(qkv.shape)}")
    B, S = qkv.shape[0], qkv.shape[1]
    if qkv.numel() and (qkv.stride(2) != 1 or (B > 1 and S > 0 and qkv.stride(0) != S * qkv.stride(1))):
        raise ValueError(f"{name}: qkv must have unit stride along its last dim and rows evenly spaced "
                         f"([B * S, width] viewed as [B, S, width]), got strides {qkv.stride()}")
    for n, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype is not qkv.dtype:
            raise TypeError(f"{name}: {n} must have qkv's dtype {c.dtype_name(qkv.dtype)}, got {c.dtype_name(t.dtype)}")
        if t.dim() != 3 or t.shape[0] not in (1, B) or t.shape[1] != S:
            raise ValueError(f"{name}: {n} must be [B or 1, S, rotary dim] == [{B} or 1, {S}, rd], got {list(t.shape)}")
    rd = cos.shape[2]
    if sin.shape != cos.shape:
        raise ValueError(f"{name}: sin must have cos's shape {list(cos.shape)}, got {list(sin.shape)}")
    if rd % 2 or rd > head_dim:
        raise ValueError(f"{name}: the rotary dim (cos.shape[-1]) must be even and <= head_dim {head_dim}, got {rd}")
    if cos.numel() and (cos.stride(2) != 1 or sin.stride() != cos.stride()):
        raise ValueError(f"{name}: cos and sin must have unit stride along their last dim and equal strides, got "
                         f"{cos.stride()} and {sin.stride()}")
    c.check_same_device(name, "qkv", qkv, cos=cos, sin=sin, k_cache=k_cache, v_cache=v_cache,
                        cache_offset=cache_offset)
    if (k_cache is None) != (v_cache is None) or (k_cache is None) != (cache_offset is None):
        raise ValueError(f"{name}: k_cache, v_cache and cache_offset go together (all or none)")
    if k_cache is not None:
        for n, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not isinstance(t, torch.Tensor) or t.dtype is not qkv.dtype:
                raise TypeError(f"{name}: {n} must be a tensor of qkv's dtype {c.dtype_name(qkv.dtype)}, got "
                                f"{c.desc(t) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.dim() != 4 or t.shape[0] != B or t.shape[1] != kv_heads or t.shape[3] != head_dim:
                raise ValueError(f"{name}: {n} must be [B, kv_heads, L, head_dim] == [{B}, {kv_heads}, L, {head_dim}],"
                                 f" got {list(t.shape)}")
            if not t.is_contiguous():
                raise ValueError(f"{name}: {n} must be contiguous")
        if v_cache.shape != k_cache.shape:
            raise ValueError(f"{name}: v_cache must have k_cache's shape {list(k_cache.shape)}, got {list(v_cache.shape)}")
        if not isinstance(cache_offset, torch.Tensor) or cache_offset.dtype != torch.int64 or cache_offset.numel() != 1:
            raise TypeError(f"{name}: cache_offset must be an int64 tensor with one element, got "
                            f"{c.desc(cache_offset) if isinstance(cache_offset, torch.Tensor) else type(cache_offset).__name__}")
    return rd


def _check_advance(advance, cache_offset) -> None:
    if type(advance) is not bool:
        raise TypeError(f"rope_qkv: advance must be a bool, got {type(advance).__name__}")
    if advance and cache_offset is None:
        raise ValueError("rope_qkv: advance=True needs a cache (k_cache, v_cache, cache_offset)")


def _launch(qkv, cos, sin, H, KV, hd, rd, q, k, v, off: Optional[torch.Tensor], advance: bool = False) -> None:
    idx = qkv.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels("rope_qkv", qkv.device)
        _cuda_ready.add(idx)
    B, S, _ = qkv.shape
    if B == 0 or S == 0:
        return
    done = _ext._C.rope_qkv(
        c.DTYPE_CODE[qkv.dtype], qkv.data_ptr(), qkv.stride(1), cos.data_ptr(), sin.data_ptr(),
        cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1), q.data_ptr(), k.data_ptr(), v.data_ptr(),
        0 if off is None else off.data_ptr(), 0 if off is None else k.shape[2], B, S, H, KV, hd, rd,
        bool(advance), idx, c.current_stream(idx),
    )
    if advance and not done:  # the kernel advances the offset only where its launch is one cluster
        off.add_(S)


def _impl(qkv, cos, sin, H, KV, hd, k_cache=None, v_cache=None, cache_offset=None, advance=False):
    """Checked call on any device: (q, k, v) as [B, S, heads, hd]-ordered memory (no cache), or
    (q, k_cache, v_cache), with the cache offset advanced by S when ``advance``."""
    _check_advance(advance, cache_offset)
    rd = _check("rope_qkv", qkv, cos, sin, H, KV, hd, k_cache, v_cache, cache_offset)
    B, S, _ = qkv.shape
    if qkv.is_cuda:
        q = qkv.new_empty((B, S, H, hd))
        if k_cache is None:
            k, v = qkv.new_empty((B, S, KV, hd)), qkv.new_empty((B, S, KV, hd))
            _launch(qkv, cos, sin, H, KV, hd, rd, q, k, v, None)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        _launch(qkv, cos, sin, H, KV, hd, rd, q, k_cache, v_cache, cache_offset, advance)
        return q.transpose(1, 2), k_cache, v_cache
    if qkv.device.type not in ("cpu", "meta"):
        c.require_cuda_kernels("rope_qkv", qkv.device)  # raises: names the device type
    if qkv.is_meta:
        q = qkv.new_empty((B, S, H, hd)).transpose(1, 2)
        if k_cache is None:
            return q, qkv.new_empty((B, S, KV, hd)).transpose(1, 2), qkv.new_empty((B, S, KV, hd)).transpose(1, 2)
        return q, k_cache, v_cache
    out = rope_qkv_ref(qkv, cos, sin, H, KV, hd, k_cache, v_cache, cache_offset)
    if advance:
        cache_offset.add_(S)
    return out


@torch.library.custom_op("zqkernels::rope_qkv", mutates_args=())
def _rope_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
             head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _impl(qkv, cos, sin, heads, kv_heads, head_dim)
    return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


@_rope_op.register_fake
def _rope_fake(qkv, cos, sin, heads, kv_heads, head_dim):
    _check("rope_qkv", qkv, cos, sin, heads, kv_heads, head_dim, None, None, None)
    B, S, _ = qkv.shape
    return (qkv.new_empty((B, S, heads, head_dim)), qkv.new_empty((B, S, kv_heads, head_dim)),
            qkv.new_empty((B, S, kv_heads, head_dim)))


@torch.library.custom_op("zqkernels::rope_qkv_cache_", mutates_args=("k_cache", "v_cache"))
def _rope_cache_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                   head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   cache_offset: torch.Tensor) -> torch.Tensor:
    q, _, _ = _impl(qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset)
    return q.transpose(1, 2).contiguous()


@_rope_cache_op.register_fake
def _rope_cache_fake(qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset):
    _check("rope_qkv", qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset)
    B, S, _ = qkv.shape
    return qkv.new_empty((B, S, heads, head_dim))


# The advancing form: cache_offset is mutated too (a separate op, so the plain form keeps the offset
# read-only for functionalization).
@torch.library.custom_op("zqkernels::rope_qkv_cache_advance_", mutates_args=("k_cache", "v_cache", "cache_offset"))
def _rope_cache_adv_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                       head_dim: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       cache_offset: torch.Tensor) -> torch.Tensor:
    q, _, _ = _impl(qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset, True)
    return q.transpose(1, 2).contiguous()


_rope_cache_adv_op.register_fake(_rope_cache_fake)  # the same output as the plain form


def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, head_dim: int, *,
    k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None,
    cache_offset: Optional[torch.Tensor] = None, advance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split qkv [B, S, (heads + 2 kv_heads) * head_dim] (a QKV GEMM's output, q then k then v heads)
    into q [B, heads, S, hd], k and v [B, kv_heads, S, hd], with HF's rotary embedding applied to q
    and k: cos, sin [B or 1, S, rd] (HF ``position_embeddings``, qkv's dtype; rd = cos.shape[-1] <=
    head_dim, the rotated leading channels of each head). With k_cache, v_cache [B, kv_heads, L,
    head_dim] (contiguous, qkv's dtype) and cache_offset (an int64 device scalar): k and v are written
    at positions cache_offset .. cache_offset + S - 1 (those < L) and (q, k_cache, v_cache) is
    returned; cache_offset is read by the kernel, and with ``advance=True`` then advanced by S (HF's
    ``StaticLayer.update`` does ``cumulative_length.add_(S)``): in the kernel itself where its launch
    allows (decode at batch 1: no extra launch), else by an ``add_`` after it."""
    if c.eager(qkv, cos, sin, k_cache, v_cache, cache_offset):
        return _impl(qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset, advance)
    _check_advance(advance, cache_offset)
    _check("rope_qkv", qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset)
    if k_cache is None:
        q, k, v = torch.ops.zqkernels.rope_qkv.default(qkv, cos, sin, heads, kv_heads, head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    op = torch.ops.zqkernels.rope_qkv_cache_advance_ if advance else torch.ops.zqkernels.rope_qkv_cache_
    q = op.default(qkv, cos, sin, heads, kv_heads, head_dim, k_cache, v_cache, cache_offset)
    return q.transpose(1, 2), k_cache, v_cache
