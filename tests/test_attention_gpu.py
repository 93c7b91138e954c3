"""decode_attention's kernel (src/cuda/decode_attention.cu) against SDPA in float64: every dtype and
head_dim, GQA group sizes 1..8, cache lengths around the chunk / split boundaries, a static-cache
mask, strided caches (a view of a longer static cache), graph replay, torch.compile, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import zqkernels
from conftest import DEV, graph_replay, requires_gpu

pytestmark = requires_gpu


def inputs(B, H, KV, L, hd, dtype, masked, seed=0, Lmax=None):
    g = torch.Generator(device=DEV).manual_seed(seed)
    Lm = Lmax or L
    q = torch.randn(B, H, 1, hd, device=DEV, generator=g).to(dtype)
    k = torch.randn(B, KV, Lm, hd, device=DEV, generator=g).to(dtype)[:, :, :L]
    v = torch.randn(B, KV, Lm, hd, device=DEV, generator=g).to(dtype)[:, :, :L]
    mask = None
    if masked:
        n = torch.randint(1, L + 1, (B,), device=DEV, generator=g)
        mask = (torch.arange(L, device=DEV)[None, :] < n[:, None]).view(B, 1, 1, L)
    return q, k, v, mask


def check(q, k, v, mask, scale=None, what=""):
    out = zqkernels.decode_attention(q, k, v, mask, scale=scale)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale,
                                         enable_gqa=True)  # fmt: skip
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[q.dtype]
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("hd", [64, 128, 256])
def test_shapes(dtype, hd):
    if dtype == torch.float32 and hd == 256:
        pytest.skip("not served: fp32 rows of 256 exceed 32 lanes x 16 bytes")
    for B, H, KV in [(1, 32, 8), (3, 8, 8), (2, 28, 4), (2, 16, 2), (1, 8, 1)]:
        for L in (1, 15, 16, 17, 255, 256, 257, 1025, 4100):
            for masked in (False, True):
                check(*inputs(B, H, KV, L, hd, dtype, masked, seed=L), what=f"{B} {H}/{KV} L={L} {dtype} {hd} m={masked}")


def test_static_cache_view_scale_and_batch_broadcast_mask():
    q, k, v, _ = inputs(4, 32, 8, 1000, 128, torch.bfloat16, False, Lmax=1500)  # strided: a longer cache's view
    assert not k.is_contiguous()
    mask = (torch.arange(1000, device=DEV) < 700).view(1, 1, 1, 1000)
    check(q, k, v, mask, scale=0.05, what="view")


def test_all_masked_gives_zero():
    q, k, v, _ = inputs(2, 8, 2, 300, 128, torch.bfloat16, False)
    mask = torch.zeros(2, 1, 1, 300, dtype=torch.bool, device=DEV)
    mask[0, ..., :5] = True
    out = zqkernels.decode_attention(q, k, v, mask)
    assert torch.all(out[1] == 0) and torch.isfinite(out[0]).all()


def test_graph_and_compile():
    q, k, v, mask = inputs(2, 32, 8, 1025, 128, torch.bfloat16, True)
    ref = zqkernels.decode_attention(q, k, v, mask)
    assert torch.equal(graph_replay(lambda: zqkernels.decode_attention(q, k, v, mask)), ref)
    f = torch.compile(lambda *a: zqkernels.decode_attention(*a), fullgraph=True)
    assert torch.equal(f(q, k, v, mask), ref)


def test_cuda_errors():
    q, k, v, _ = inputs(1, 32, 2, 64, 128, torch.bfloat16, False)
    with pytest.raises(ValueError, match=r"decode_attention: the CUDA kernel serves .* heads / kv_heads <= 8; got "
                       r"bfloat16, head_dim 128, 32 / 2 heads"):
        zqkernels.decode_attention(q, k, v)
    q, k, v, _ = inputs(1, 8, 2, 64, 96, torch.bfloat16, False)
    with pytest.raises(ValueError, match="head_dim 96"):
        zqkernels.decode_attention(q, k, v)
    q, k, v, _ = inputs(1, 8, 2, 64, 128, torch.bfloat16, False)
    with pytest.raises(ValueError, match="16-byte aligned rows"):
        zqkernels.decode_attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), v)
    with pytest.raises(ValueError, match="must be on one device|same device|device"):
        zqkernels.decode_attention(q, k.cpu(), v)


@pytest.mark.parametrize("quant", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantized_output_bit_for_bit(quant, dtype):
    """The combine's quantized output (one cluster of 8 CTAs a token) equals quantize_per_token of the
    plain output bit for bit; head counts the fused kernel cannot take run the two ops (same values)."""
    from zqkernels.ops.attention import decode_attention_quant_fused

    for B, H, KV, L, hd in [(1, 32, 8, 1025, 128), (3, 8, 8, 40, 64), (16, 32, 8, 300, 128), (2, 64, 8, 17, 256),
                            (2, 12, 4, 100, 64)]:  # fmt: skip
        q, k, v, mask = inputs(B, H, KV, L, hd, dtype, True, seed=L)
        xq, sx = zqkernels.decode_attention(q, k, v, mask, quant=quant)
        eq, es = zqkernels.quantize_per_token(zqkernels.decode_attention(q, k, v, mask).reshape(B, -1), dtype=quant)
        assert decode_attention_quant_fused(q) == (H % 8 == 0), (B, H)
        assert torch.equal(xq.view(torch.int8), eq.view(torch.int8)) and torch.equal(sx, es), (B, H, KV, L, hd)
    # an all-masked row: sx = 0, xq = 0; a tiny row quantizes like any other (the 2^64 pre-scale)
    q, k, v, _ = inputs(2, 32, 8, 64, 128, dtype, False)
    mask = torch.zeros(2, 1, 1, 64, dtype=torch.bool, device=DEV)
    mask[1, ..., :3] = True
    if dtype == torch.bfloat16:
        v = v * 1e-25  # outputs below 2^-64: the pre-scaled path
    xq, sx = zqkernels.decode_attention(q, k, v, mask, quant=quant)
    eq, es = zqkernels.quantize_per_token(zqkernels.decode_attention(q, k, v, mask).reshape(2, -1), dtype=quant)
    assert float(sx[0]) == 0 and not xq[0].view(torch.int8).any()
    assert torch.equal(xq.view(torch.int8), eq.view(torch.int8)) and torch.equal(sx, es)


def test_quantized_output_in_graphs_and_compile():
    q, k, v, mask = inputs(4, 32, 8, 1025, 128, torch.bfloat16, True)
    ref = zqkernels.decode_attention(q, k, v, mask, quant=torch.int8)
    out = graph_replay(lambda: zqkernels.decode_attention(q, k, v, mask, quant=torch.int8))
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    f = torch.compile(lambda *a: zqkernels.decode_attention(*a, quant=torch.int8), fullgraph=True)
    out = f(q, k, v, mask)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
