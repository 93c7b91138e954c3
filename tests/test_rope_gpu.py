"""rope_qkv's kernel (src/cuda/rope_cache.cu) against the torch reference, bit for bit: every dtype,
LLaMA / GQA / partial-rotary head shapes, cos shared over the batch, the static-cache write at any
offset (past-the-end rows not written), inside a CUDA graph with the offset advancing between replays,
and a fused LLaMA decoder's static-cache decode against the per-Linear path."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, requires_gpu
from zqkernels.reference.rope import rope_qkv_ref

pytestmark = requires_gpu


def inputs(B, S, H, KV, hd, rd, dtype, cos_batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B * S, (H + 2 * KV) * hd, generator=g) * 3).to(dtype).view(B, S, -1)
    pos = torch.randint(0, 4096, (cos_batch or B, S), generator=g)
    inv = 1.0 / (500000 ** (torch.arange(0, rd, 2).float() / rd))
    f = pos[..., None].float() * inv
    emb = torch.cat((f, f), -1)
    return qkv.to(DEV), emb.cos().to(dtype).to(DEV), emb.sin().to(dtype).to(DEV)


SHAPES = [  # B, S, H, KV, hd, rd
    (1, 1, 32, 8, 128, 128),   # Llama-3-8B decode
    (16, 1, 32, 8, 128, 128),
    (2, 37, 12, 12, 64, 64),   # MHA, prefill
    (3, 5, 32, 32, 96, 48),    # Phi-3 partial rotary
    (1, 9, 8, 1, 256, 256),    # Gemma-like wide heads, one KV head
    (2, 3, 4, 2, 80, 80),      # head_dim not a multiple of 32
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_kernel_matches_reference(dtype, shape):
    B, S, H, KV, hd, rd = shape
    for cos_batch in (None, 1):
        qkv, cos, sin = inputs(B, S, H, KV, hd, rd, dtype, cos_batch)
        q, k, v = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd)
        qr, kr, vr = rope_qkv_ref(qkv.cpu(), cos.cpu(), sin.cpu(), H, KV, hd)
        for a, e, n in ((q, qr, "q"), (k, kr, "k"), (v, vr, "v")):
            assert a.shape == e.shape and torch.equal(a.cpu(), e), (n, shape, dtype, cos_batch)


@pytest.mark.parametrize("offset", [0, 5, 60, 62])
def test_cache_write_matches_reference(offset):
    B, S, H, KV, hd, rd, L = 2, 3, 8, 2, 128, 128, 64
    qkv, cos, sin = inputs(B, S, H, KV, hd, rd, torch.bfloat16, seed=offset)
    kc = torch.randn(B, KV, L, hd, device=DEV).bfloat16()
    vc = torch.randn(B, KV, L, hd, device=DEV).bfloat16()
    kr, vr = kc.cpu(), vc.cpu()
    off = torch.tensor(offset, device=DEV)
    q, k, v = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=kc, v_cache=vc, cache_offset=off)
    qr, _, _ = rope_qkv_ref(qkv.cpu(), cos.cpu(), sin.cpu(), H, KV, hd, kr, vr, off.cpu())
    assert k is kc and v is vc and int(off) == offset
    assert torch.equal(q.cpu(), qr) and torch.equal(kc.cpu(), kr) and torch.equal(vc.cpu(), vr)


@pytest.mark.parametrize("B, H, KV, hd, advance", [
    (4, 8, 2, 64, False),
    (4, 8, 2, 64, True),     # 2 CTAs of 8 heads a token x 4 tokens: one cluster of 8 advances in the kernel
    (16, 8, 2, 64, True),    # 32 CTAs: more than one cluster, an add_ after the kernel advances
    (1, 32, 8, 128, True),   # Llama-3-8B decode: one cluster of 6 CTAs advances in the kernel
    (1, 4, 2, 64, True),     # 8 heads: one CTA advances in the kernel
    (2, 12, 4, 64, True),    # 2 x 3 CTAs: one cluster of 6
])  # fmt: skip
def test_cuda_graph_replay_advances_with_the_offset(B, H, KV, hd, advance):
    S, L = 1, 16
    kc = torch.zeros(B, KV, L, hd, device=DEV, dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    off = torch.zeros((), dtype=torch.int64, device=DEV)
    qkv, cos, sin = inputs(B, S, H, KV, hd, hd, torch.bfloat16)
    static_q = torch.empty(B, H, S, hd, device=DEV, dtype=torch.bfloat16)

    def step():
        q, _, _ = zqkernels.rope_qkv(qkv, cos, sin, H, KV, hd, k_cache=kc, v_cache=vc, cache_offset=off,
                                     advance=advance)  # fmt: skip
        static_q.copy_(q)
        if not advance:
            off.add_(S)

    step()  # warm-up (first-call checks) outside the capture
    kc.zero_(), vc.zero_(), off.zero_()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            step()
    torch.cuda.current_stream().wait_stream(s)
    kc.zero_(), vc.zero_(), off.zero_()
    kr, vr = torch.zeros(B, KV, L, hd, dtype=torch.bfloat16), torch.zeros(B, KV, L, hd, dtype=torch.bfloat16)
    for i in range(5):
        qkv.copy_(inputs(B, S, H, KV, hd, hd, torch.bfloat16, seed=i + 1)[0])
        g.replay()
        qr, _, _ = rope_qkv_ref(qkv.cpu(), cos.cpu(), sin.cpu(), H, KV, hd, kr, vr, torch.tensor(i))
        assert torch.equal(static_q.cpu(), qr)
    torch.cuda.synchronize()
    assert int(off) == 5 and torch.equal(kc.cpu(), kr) and torch.equal(vc.cpu(), vr)


@pytest.mark.parametrize("hf_compile", [False, True])
def test_fused_block_static_cache_decode_matches_torch_rope(hf_compile):
    """The fused LLaMA block's decode with rope_qkv (writing the StaticLayer; and without the cache
    write, k / v through cache.update) against the torch RoPE + cache.update sequence. Eager
    (generate's auto-compile off): the same logits bit for bit. With transformers' auto-compile of
    static-cache decoding (on by default on CUDA), inductor fuses the torch sequence and rounds its
    intermediates differently (measured on an H100: the same tokens, logits apart by bf16 rounding),
    while rope_qkv stays one opaque op: the same tokens and logits to a cosine of 0.999."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from zqkernels.nn import blocks_base

    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = zqkernels.quantize_model(LlamaForCausalLM(cfg).to(DEV, torch.bfloat16).eval())
    ids = torch.randint(0, 1000, (2, 12), device=DEV)
    kw = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids), cache_implementation="static",
              output_logits=True, return_dict_in_generate=True, disable_compile=not hf_compile)

    def run(fused: bool, cache_write: bool = True):
        real, before = blocks_base._static_layer, blocks_base.FUSED_ROPE
        blocks_base.FUSED_ROPE = fused
        if not cache_write:
            blocks_base._static_layer = lambda *a: None
        try:
            with torch.no_grad():
                return m.generate(ids, **kw)
        finally:
            blocks_base.FUSED_ROPE, blocks_base._static_layer = before, real

    torch_path = run(False)
    for out in (run(True), run(True, cache_write=False)):
        assert torch.equal(out.sequences, torch_path.sequences)
        for a, b in zip(out.logits, torch_path.logits):
            if hf_compile:
                assert torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0) > 0.999
            else:
                assert torch.equal(a, b)
