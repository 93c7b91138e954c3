"""decode_attention on the CPU (its torch reference) against torch's SDPA with grouped heads, the
kernel's split policy, and its argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import zqkernels
from zqkernels.ops import attention as att


def inputs(B, H, KV, L, hd, dtype=torch.float32, masked=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g).to(dtype) for s in ((B, H, 1, hd), (B, KV, L, hd), (B, KV, L, hd)))
    mask = None
    if masked:  # a static cache: the first n_b positions valid, the rest not yet written
        n = torch.randint(1, L + 1, (B,), generator=g)
        mask = (torch.arange(L)[None, :] < n[:, None]).view(B, 1, 1, L)
    return q, k, v, mask


@pytest.mark.parametrize("B,H,KV,L,hd", [(1, 32, 8, 1025, 128), (3, 8, 1, 40, 64), (2, 4, 4, 7, 32), (2, 12, 2, 300, 256)])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_sdpa(B, H, KV, L, hd, masked):
    q, k, v, mask = inputs(B, H, KV, L, hd, torch.float32, masked)
    qd, kd, vd = q.double(), k.double(), v.double()
    for s in (None, 0.3):
        ref = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=s, enable_gqa=True)
        out = zqkernels.decode_attention(q, k, v, mask, scale=s)
        assert out.shape == (B, H, 1, hd) and out.dtype == q.dtype
        torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-6)  # fp32 rounding only


def test_all_masked_row_is_zero_and_nan_propagates():
    q, k, v, _ = inputs(2, 4, 2, 9, 64)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1] = False
    out = zqkernels.decode_attention(q, k, v, mask)
    assert torch.all(out[1] == 0) and torch.isfinite(out[0]).all()
    k[0, 0, 3, 5] = float("nan")
    out = zqkernels.decode_attention(q, k, v)
    assert torch.isnan(out[0, :2]).all() and torch.isfinite(out[0, 2:]).all()


def test_split_policy_covers_every_key():
    for B, KV, L in [(1, 8, 1025), (16, 8, 1025), (64, 8, 4097), (1, 1, 1), (1, 8, 8192), (2, 2, 17)]:
        splits, chunk = att._splits(B, KV, L, 132)
        assert 1 <= chunk <= att.CHUNK_MAX and (splits - 1) * chunk < L <= splits * chunk, (B, KV, L)
    assert att._splits(1, 8, 8192, 132)[0] == 66  # batch 1: fill the GPU four times (8 KV heads)
    assert att._splits(1, 8, 1025, 132)[1] >= att.MIN_CHUNK  # ... with >= 32 keys a CTA
    assert att._splits(64, 8, 1025, 132)[0] == 5  # enough CTAs already: chunks of <= 256 keys
    assert att._splits(1, 8, att.SPLITS_MAX * att.CHUNK_MAX, 132)[0] == att.SPLITS_MAX


def test_too_many_keys_raise():
    q = torch.zeros(1, 2, 1, 64)
    k = torch.zeros(1, 1, 1, 64).expand(1, 2, att.SPLITS_MAX * att.CHUNK_MAX + 1, 64)  # no memory
    with pytest.raises(ValueError, match="at most 2097152 keys"):
        zqkernels.decode_attention(q, k, k)


def test_supported():
    q, k, _, _ = inputs(1, 32, 8, 4, 128, torch.bfloat16)
    assert zqkernels.ops.attention.decode_attention_supported(q, k)
    assert not att.decode_attention_supported(q[..., :96], k[..., :96])  # head_dim 96
    assert not att.decode_attention_supported(q, k[:, :2])  # 16 query heads per KV head
    assert not att.decode_attention_supported(q.float()[..., :64].repeat(1, 1, 1, 4), k.float()[..., :64].repeat(1, 1, 1, 4))


def test_errors():
    q, k, v, mask = inputs(2, 4, 2, 9, 64, masked=True)
    with pytest.raises(TypeError, match="decode_attention: k must be bfloat16, float16 or float32 and share q's dtype"):
        zqkernels.decode_attention(q, k.half(), v)
    with pytest.raises(ValueError, match=r"decode_attention: q must be \[B, heads, 1, head_dim\] \(one query token\), "
                       r"got \[2, 4, 2, 64\]"):
        zqkernels.decode_attention(q.repeat(1, 1, 2, 1), k, v)
    with pytest.raises(ValueError, match="decode_attention: k must be .* a divisor of 4"):
        zqkernels.decode_attention(q, k.repeat(1, 3, 1, 1)[:, :3], v.repeat(1, 3, 1, 1)[:, :3])
    with pytest.raises(ValueError, match="v must have k's shape"):
        zqkernels.decode_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="at least one key"):
        zqkernels.decode_attention(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        zqkernels.decode_attention(q, k, v, mask.float())
    with pytest.raises(ValueError, match=r"mask must be \[B or 1, 1, 1, L\] == \[2 or 1, 1, 1, 9\], got \[2, 1, 1, 8\]"):
        zqkernels.decode_attention(q, k, v, mask[..., :8])
    with pytest.raises(ValueError, match="scale must be a finite number"):
        zqkernels.decode_attention(q, k, v, scale=float("inf"))


def test_compile_traces_the_custom_op():
    q, k, v, mask = inputs(2, 4, 2, 9, 64, masked=True)
    f = torch.compile(lambda *a: zqkernels.decode_attention(*a), backend="eager", fullgraph=True)
    torch.testing.assert_close(f(q, k, v, mask), zqkernels.decode_attention(q, k, v, mask))


@pytest.mark.parametrize("quant", [torch.int8, torch.float8_e4m3fn])
def test_quantized_output_is_quantize_per_token_of_the_output(quant):
    """quant=...: (xq, sx) equal to quantize_per_token(out.reshape(B, H * hd)) (CPU: the two ops in turn)."""
    q, k, v, mask = inputs(3, 8, 2, 40, 64, torch.bfloat16, masked=True)
    xq, sx = zqkernels.decode_attention(q, k, v, mask, 0.2, quant=quant)
    eq, es = zqkernels.quantize_per_token(zqkernels.decode_attention(q, k, v, mask, 0.2).reshape(3, -1), dtype=quant)
    assert xq.dtype == quant and xq.shape == (3, 8 * 64) and sx.shape == (3,)
    assert torch.equal(xq.view(torch.int8), eq.view(torch.int8)) and torch.equal(sx, es)
    f = torch.compile(lambda *a: zqkernels.decode_attention(*a, quant=quant), backend="eager", fullgraph=True)
    fq, fs = f(q, k, v, mask, 0.2)
    assert torch.equal(fq.view(torch.int8), eq.view(torch.int8)) and torch.equal(fs, es)
    with pytest.raises(TypeError, match=r"decode_attention: quant must be None, torch.int8 or torch.float8_e4m3fn, "
                       r"got torch.float16"):
        zqkernels.decode_attention(q, k, v, quant=torch.float16)
    assert not att.decode_attention_quant_fused(q)  # CPU: never the fused kernel
