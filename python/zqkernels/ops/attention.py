"""Attention of one query token per sequence against a KV cache (src/cuda/decode_attention.cu): the
attention of a decode step, grouped KV heads (GQA / MQA) read once, split over the keys.

    decode_attention(q, k, v, mask=None, scale=None) -> out [B, heads, 1, head_dim]
    decode_attention(q, k, v, mask, scale, quant=torch.int8) -> (xq [B, heads * hd], sx [B])

q [B, heads, 1, hd]; k, v [B, kv_heads, L, hd] (a static cache as it is: any strides with unit stride
along hd); mask bool [B or 1, 1, 1, L] (True: attend; HF's SDPA mask of one query position) or None.
It equals ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)``
up to fp32 summation order (reference: ``reference/attention.py``), reading the cache once with
B * kv_heads * splits CTAs where SDPA's kernels either copy k and v per query head or leave most of
the GPU idle (docs/FUSED.md, "Decode attention": on an H100 it passes its GPU tests but is slower than
SDPA's cuDNN backend with enable_gqa=True from context 1024 on, so fused blocks do not use it by
default). CUDA: bf16 / fp16 with head_dim 64, 128 or 256,
fp32 with 64 or 128, heads / kv_heads <= 8, 16-byte aligned rows; ``decode_attention_supported``
says whether a call fits. CPU tensors run the reference. A ``torch.library`` custom op (compile,
CUDA graphs).

``quant=torch.int8`` (or ``torch.float8_e4m3fn``) returns the output quantized per token for the next
GEMM instead, bit for bit ``quantize_per_token(out.reshape(B, heads * hd), quant)``: on CUDA the
combine kernel quantizes it (one cluster of 8 CTAs a token; heads a multiple of 8, at most 64, an sm_90
build on an sm_90 device: ``decode_attention_quant_fused``), one launch instead of two; elsewhere the
two ops run one after the other. Measured slower than the two ops in a whole W4A8 Llama-3-8B-shaped
decode step (H100: its combine sums each thread's 4 outputs one after another), so the fused blocks
do not use it by default (docs/FUSED.md, "A quantizing combine").
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _ext
from ..reference.attention import decode_attention_ref
from . import _common as c
from .gemm_paths import _sm_count
from .quantize import quantize_per_token

__all__ = ["decode_attention", "decode_attention_quant_fused", "decode_attention_supported"]

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)
CHUNK_MAX = 256  # keys per CTA at most (kDecodeChunkMax)
MIN_CHUNK = 32  # keys per CTA at least where L allows (one unrolled step of 4 warps x 2 keys x 4 rows)
SPLITS_MAX = 8192  # kDecodeSplitsMax: L <= SPLITS_MAX * CHUNK_MAX keys
MAX_GROUP = 8  # heads / kv_heads the kernel serves
_QUANT = (torch.int8, torch.float8_e4m3fn)
_cuda_ready: set[int] = set()
_quant_ok: dict[tuple[int, int], bool] = {}


def decode_attention_supported(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the CUDA kernel serves these shapes and dtype (else the caller takes SDPA)."""
    hd, G = q.shape[-1], q.shape[1] // max(k.shape[1], 1)
    return (q.dtype in _FLOATS and hd in (64, 128, 256) and not (q.dtype == torch.float32 and hd == 256)
            and 1 <= G <= MAX_GROUP)  # fmt: skip


def _check(name, q, k, v, mask, scale) -> None:
    for n, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype is not q.dtype or t.dtype not in _FLOATS:
            raise TypeError(f"{name}: {n} must be bfloat16, float16 or float32 and share q's dtype, got "
                            f"{c.dtype_name(t.dtype)} (q: {c.dtype_name(q.dtype)})")
        if t.dim() != 4:
            raise ValueError(f"{name}: {n} must be 4-D, got {list(t.shape)}")
    B, H, S, hd = q.shape
    if S != 1:
        raise ValueError(f"{name}: q must be [B, heads, 1, head_dim] (one query token), got {list(q.shape)}")
    if k.shape[0] != B or k.shape[3] != hd or k.shape[1] < 1 or H % k.shape[1]:
        raise ValueError(f"{name}: k must be [B, kv_heads, L, head_dim] == [{B}, a divisor of {H}, L, {hd}], "
                         f"got {list(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"{name}: v must have k's shape {list(k.shape)}, got {list(v.shape)}")
    if k.shape[2] == 0:
        raise ValueError(f"{name}: k and v must hold at least one key (L >= 1), got L = 0")
    if k.shape[2] > SPLITS_MAX * CHUNK_MAX:
        raise ValueError(f"{name}: at most {SPLITS_MAX * CHUNK_MAX} keys (L), got {k.shape[2]}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype is not torch.bool:
            raise TypeError(f"{name}: mask must be a bool tensor (True: attend) or None, got "
                            f"{c.desc(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if mask.dim() != 4 or mask.shape[0] not in (1, B) or mask.shape[1:3] != (1, 1) or mask.shape[3] != k.shape[2]:
            raise ValueError(f"{name}: mask must be [B or 1, 1, 1, L] == [{B} or 1, 1, 1, {k.shape[2]}], got "
                             f"{list(mask.shape)}")
    if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale)):
        raise ValueError(f"{name}: scale must be a finite number or None, got {scale!r}")
    c.check_same_device(name, "q", q, k=k, v=v, mask=mask)


def _splits(B: int, KV: int, L: int, sms: int) -> tuple[int, int]:
    """(splits, chunk): enough CTAs to fill the GPU four times over (a CTA's pass over its keys is
    latency-bound at small batch), <= CHUNK_MAX keys each, >= MIN_CHUNK keys a CTA where the cache
    allows; every split non-empty."""
    want = max(1, -(-4 * sms // max(B * KV, 1)))
    splits = max(-(-L // CHUNK_MAX), min(want, -(-L // MIN_CHUNK)))
    chunk = -(-L // splits)
    return -(-L // chunk), chunk


def decode_attention_quant_fused(q: torch.Tensor) -> bool:
    """Whether ``decode_attention(..., quant=...)`` quantizes in its combine kernel for q's head count
    and device (else a separate quantize_per_token runs after it)."""
    if not q.is_cuda or _ext._C is None or not hasattr(_ext._C, "decode_attention_quant_ok"):
        return False
    key = (q.get_device(), q.shape[1])
    ok = _quant_ok.get(key)
    if ok is None:
        ok = _quant_ok[key] = bool(_ext._C.decode_attention_quant_ok(q.shape[1], key[0]))
    return ok


def _launch(q, k, v, mask, scale: float, quant: Optional[torch.dtype] = None):
    idx = q.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels("decode_attention", q.device)
        if not hasattr(_ext._C, "decode_attention"):
            raise RuntimeError("decode_attention: this build of zqkernels._C has no decode_attention; rebuild")
        _cuda_ready.add(idx)
    B, H, _, hd = q.shape
    KV, L = k.shape[1], k.shape[2]
    if not decode_attention_supported(q, k):
        raise ValueError(f"decode_attention: the CUDA kernel serves bf16 / fp16 with head_dim 64, 128 or 256, "
                         f"fp32 with 64 or 128, and heads / kv_heads <= {MAX_GROUP}; got {c.dtype_name(q.dtype)}, "
                         f"head_dim {hd}, {H} / {KV} heads")
    es = q.element_size()
    vec = 16 // es
    if (q.stride(3) != 1 or k.stride(3) != 1 or v.stride() != k.stride() or q.stride(0) % vec or q.stride(1) % vec
            or any(s % vec for s in k.stride()[:3]) or q.data_ptr() % 16 or k.data_ptr() % 16 or v.data_ptr() % 16):
        raise ValueError(f"decode_attention: q, k, v need unit stride along head_dim, 16-byte aligned rows and v with "
                         f"k's strides; got strides q {q.stride()}, k {k.stride()}, v {v.stride()}")
    if quant is None:
        out, xq, sx = q.new_empty((B, H, 1, hd)), None, None
        result = out
    else:
        out = None
        xq = torch.empty((B, H * hd), dtype=quant, device=q.device)
        sx = torch.empty((B,), dtype=torch.float32, device=q.device)
        result = (xq, sx)
    if B == 0:
        return result
    splits, chunk = _splits(B, KV, L, _sm_count(idx))
    acc = torch.empty((B * H * splits, hd), dtype=torch.float32, device=q.device)
    ml = torch.empty((B * H * splits, 2), dtype=torch.float32, device=q.device)
    msb = msl = 0
    if mask is not None:
        msb = mask.stride(0) if mask.shape[0] > 1 else 0
        msl = mask.stride(3)
    _ext._C.decode_attention(
        c.DTYPE_CODE[q.dtype], q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0),
        k.stride(1), k.stride(2), 0 if mask is None else mask.data_ptr(), msb, msl, 0 if out is None else out.data_ptr(),
        acc.data_ptr(), ml.data_ptr(), 0 if xq is None else xq.data_ptr(), 0 if sx is None else sx.data_ptr(),
        quant is torch.float8_e4m3fn, B, L, H, KV, hd, splits, chunk, float(scale), idx, c.current_stream(idx),
    )
    return result


def _scale_of(q: torch.Tensor, scale: Optional[float]) -> float:
    """The softmax scale: ``scale``, or 1 / sqrt(head_dim)."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _impl(q, k, v, mask, scale: Optional[float]) -> torch.Tensor:
    _check("decode_attention", q, k, v, mask, scale)
    s = _scale_of(q, scale)
    if q.is_cuda:
        return _launch(q, k, v, mask, s)
    if q.device.type not in ("cpu", "meta"):
        c.require_cuda_kernels("decode_attention", q.device)  # raises: names the device type
    if q.is_meta:
        return q.new_empty(q.shape)
    return decode_attention_ref(q, k, v, mask, s)


@torch.library.custom_op("zqkernels::decode_attention", mutates_args=())
def _op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
        scale: Optional[float]) -> torch.Tensor:
    return _impl(q, k, v, mask, scale)


@_op.register_fake
def _fake(q, k, v, mask, scale):
    _check("decode_attention", q, k, v, mask, scale)
    return q.new_empty(q.shape)


_QUANT_CTAS = 8  # kDecodeQuantCtas: the quantizing combine's CTAs a token, heads / 8 each
_QUANT_SMEM = 48 * 1024  # it keeps (heads / _QUANT_CTAS) x splits weights in shared memory


def _impl_quant(q, k, v, mask, scale: Optional[float], quant: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    _check("decode_attention", q, k, v, mask, scale)
    if (q.is_cuda and decode_attention_supported(q, k) and decode_attention_quant_fused(q)
            and q.shape[1] // _QUANT_CTAS * _splits(q.shape[0], k.shape[1], k.shape[2], _sm_count(q.get_device()))[0] * 4
            <= _QUANT_SMEM):  # fmt: skip
        return _launch(q, k, v, mask, _scale_of(q, scale), quant)
    out = _impl(q, k, v, mask, scale)
    return quantize_per_token(out.reshape(q.shape[0], -1), dtype=quant)


@torch.library.custom_op("zqkernels::decode_attention_quant", mutates_args=())
def _quant_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
              scale: Optional[float], quant: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _impl_quant(q, k, v, mask, scale, quant)


@_quant_op.register_fake
def _quant_fake(q, k, v, mask, scale, quant):
    _check("decode_attention", q, k, v, mask, scale)
    B, H, _, hd = q.shape
    return q.new_empty((B, H * hd), dtype=quant), q.new_empty((B,), dtype=torch.float32)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None, *, quant: Optional[torch.dtype] = None):
    """softmax(scale * q k^T, masked) v for one query token per sequence: q [B, heads, 1, hd], k / v
    [B, kv_heads, L, hd] (query head h reads KV head h // (heads // kv_heads)), mask bool [B or 1, 1,
    1, L] or None, scale default 1 / sqrt(hd). Returns [B, heads, 1, hd] (contiguous) in q's dtype;
    rows with every key masked give 0. ``quant`` (torch.int8 or torch.float8_e4m3fn): returns
    ``quantize_per_token(out.reshape(B, heads * hd), dtype=quant)`` instead, (xq, sx), computed in
    the combine kernel where ``decode_attention_quant_fused`` says so."""
    if quant is not None:
        if quant not in _QUANT:
            raise TypeError(f"decode_attention: quant must be None, torch.int8 or torch.float8_e4m3fn, got {quant!r}")
        if c.eager(q, k, v, mask):
            return _impl_quant(q, k, v, mask, scale, quant)
        return torch.ops.zqkernels.decode_attention_quant.default(q, k, v, mask, scale, quant)
    if c.eager(q, k, v, mask):
        return _impl(q, k, v, mask, scale)
    return torch.ops.zqkernels.decode_attention.default(q, k, v, mask, scale)
