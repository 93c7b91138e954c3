"""Fused quantized blocks on the GPU: HF models built from configs (bf16), converted with
quantize_model, against the float model and the per-Linear path; CUDA graph replay and
torch.compile equal to eager; the cached decode path; no host syncs in the eager forward."""

from __future__ import annotations

import copy

import pytest
import torch
import zqkernels
from conftest import DEV, requires_gpu

transformers = pytest.importorskip("transformers")
pytestmark = requires_gpu


def cos(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def bert_base(layers=4):
    cfg = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="sdpa")
    return transformers.BertModel(cfg).to(DEV, torch.bfloat16).eval()


def llama(layers=2, **kw):
    cfg = transformers.LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=4,
        num_hidden_layers=layers, vocab_size=1000, **kw,
    )
    return transformers.LlamaForCausalLM(cfg).to(DEV, torch.bfloat16).eval()


def hidden(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def gpt2(layers=3):
    cfg = transformers.GPT2Config(n_embd=768, n_layer=layers, n_head=12, vocab_size=1000)
    return transformers.GPT2LMHeadModel(cfg).to(DEV, torch.bfloat16).eval()


# The decoders with their own blocks beyond LLaMA (tests/test_blocks_arch.py on CPU): LLaMA's GPU
# shapes (hidden 1024, 16 heads of 64, 4 KV heads, intermediate 2816), norm weights perturbed.
_SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 4,
          "vocab_size": 1000}


def _decoder(cls_name, cfg_name, layers=2, **kw):
    cfg = getattr(transformers, cfg_name)(num_hidden_layers=layers, **_SHAPE, **kw)
    m = getattr(transformers, cls_name)(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return m.to(DEV, torch.bfloat16).eval()


ARCHS = {
    "qwen3": lambda layers=2: _decoder("Qwen3ForCausalLM", "Qwen3Config", layers, head_dim=64),
    "phi3": lambda layers=2: _decoder("Phi3ForCausalLM", "Phi3Config", layers, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2, partial_rotary_factor=0.5),
    "gemma2": lambda layers=2: _decoder("Gemma2ForCausalLM", "Gemma2Config", layers, head_dim=64,
                                        query_pre_attn_scalar=64, sliding_window=32),
    "gemma3": lambda layers=2: _decoder("Gemma3ForCausalLM", "Gemma3TextConfig", layers, head_dim=64,
                                        query_pre_attn_scalar=64, sliding_window=32),
}
# Against float (bf16, 2 random layers): Gemma's sandwich norms rescale each sub-layer's output to
# unit RMS, so its quantization noise is not shrunk against the residual stream (CPU: int8 ~0.9996
# there vs ~0.9999 for LLaMA-like blocks); tests/test_blocks_arch.py explains.
_MIN_COS = {"qwen3": 0.998, "phi3": 0.998, "gemma2": 0.995, "gemma3": 0.995}


@pytest.mark.parametrize("make", [bert_base, llama, lambda: llama(attention_bias=True), gpt2, *ARCHS.values()],
                         ids=["bert", "llama", "llama_bias", "gpt2", *ARCHS])
def test_fused_matches_per_linear_and_float(make):
    m = make()
    ids = torch.randint(0, 1000, (4, 64), device=DEV)
    ref = hidden(m, ids)
    fused = zqkernels.quantize_model(copy.deepcopy(m))
    per_linear = zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False)
    out, out_pl = hidden(fused, ids), hidden(per_linear, ids)
    # Fusion moves roundings (the norm's fp32 output is quantized without a bf16 round trip), so the
    # quantization noise differs in detail, but it must be no worse than the per-Linear path's.
    c_fused, c_pl = cos(out, ref), cos(out_pl, ref)
    arch = next((a for a in ARCHS if type(m).__name__.lower().startswith(a)), None)
    assert c_fused > _MIN_COS.get(arch, 0.998) and c_fused >= c_pl - 2e-4, (c_fused, c_pl)


def test_levels_order_on_gpu():
    m = bert_base()
    ids = torch.randint(0, 1000, (8, 128), device=DEV)
    ref = hidden(m, ids).float()
    err = {lv: 1 - cos(hidden(zqkernels.quantize_model(copy.deepcopy(m), level=lv), ids), ref)
           for lv in ("int8", "balanced", "accuracy")}
    assert err["int8"] >= err["balanced"] >= err["accuracy"], err


def test_graph_replay_equals_eager():
    """The encoder stack (hand-over between blocks included) captured in one CUDA graph. The HF
    model's own mask logic differs between eager (an all-ones mask is dropped after a host check)
    and capture (kept: SDPA may then take its math path, which needs a cuBLAS handle), so the
    comparison runs the encoder on the embeddings with no mask, as the model does eagerly."""
    m = zqkernels.quantize_model(bert_base())
    ids = torch.randint(0, 1000, (8, 128), device=DEV)
    with torch.no_grad():
        emb = m.embeddings(ids)
        eager = m.encoder(emb).last_hidden_state
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        torch.mm(emb[0], emb[0].t())  # cuBLAS handle for this thread, before capture
        for _ in range(2):
            m.encoder(emb)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s), torch.no_grad():
        out = m.encoder(emb).last_hidden_state
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compile_matches_eager(mode):
    torch._dynamo.reset()
    m = zqkernels.quantize_model(bert_base(layers=2))
    ids = torch.randint(0, 1000, (2, 128), device=DEV)
    eager = hidden(m, ids)
    cm = torch.compile(m, mode=mode)
    for _ in range(3):
        out = hidden(cm, ids)
    # Under compile a block quantizes its own input (no hand-over: the next block's input is the
    # bf16-rounded output, not the fp32 norm), so a few codes differ and propagate: not bitwise.
    assert cos(out, eager) > 0.9999


def test_llama_decode_with_static_cache():
    m = zqkernels.quantize_model(llama())
    ids = torch.randint(0, 1000, (1, 12), device=DEV)
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids),
                         cache_implementation="static")
        full = m(out).logits[0, 11:-1].argmax(-1)
    assert torch.equal(full, out[0, 12:])


def test_eager_forward_has_no_host_sync():
    m = zqkernels.quantize_model(bert_base(layers=2))
    ids = torch.randint(0, 1000, (2, 64), device=DEV)
    hidden(m, ids)  # warm caches (first calls query device properties)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            m.encoder(m.embeddings(ids))
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- every scheme's fused blocks: the same capture guarantees as W8A8's ----------------------------

SCHEMES = sorted(zqkernels.schemes.SCHEMES)


def _scheme_llama(scheme):
    from zqkernels.schemes import SCHEMES, get_scheme

    # hidden 1024, intermediate 2816 = 44 x 64 = 22 x 128, q / k / v 1024 / 256 / 256 rows: every layout and
    # group size 64 fits, and fp8-block's 128 x 128 blocks stay within one part of each merged GEMM
    m = llama()
    opts = {"group_size": 64} if "group_size" in SCHEMES[scheme].option_names else {}
    zqkernels.quantize_(m, zqkernels.SchemeConfig(get_scheme("test", scheme, **opts)))
    assert all(b.qscheme.name == scheme for b in m.modules() if isinstance(b, zqkernels.QuantizedBlock))
    return m


def _eager_and_graph(stack, emb):
    """(eager output, CUDA graph replay output) of stack(emb); the eager forward must not sync the host."""
    eager = stack(emb).clone()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stack(emb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            stack(emb)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        out = stack(emb)
    g.replay()
    torch.cuda.synchronize()
    return eager, out


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_blocks_eager_graph_compile(scheme):
    """Each scheme's fused LLaMA blocks: no host sync in the eager forward, a CUDA graph replay equal
    to eager, torch.compile equal to eager (to the hand-over rounding, see test_compile_matches_eager)."""
    torch._dynamo.reset()
    m = _scheme_llama(scheme)
    ids = torch.randint(0, 1000, (2, 64), device=DEV)
    with torch.no_grad():
        emb = m.model.embed_tokens(ids)
        pos = torch.arange(64, device=DEV).unsqueeze(0)
        pe = m.model.rotary_emb(emb, pos)
        layers = list(m.model.layers)

        def stack(h):
            for layer in layers:
                h = layer(h, position_embeddings=pe)
                h = h[0] if isinstance(h, tuple) else h
            return h

        eager, out = _eager_and_graph(stack, emb)
        assert torch.equal(out, eager), scheme
        compiled = torch.compile(stack, fullgraph=True)
        for _ in range(2):
            outc = compiled(emb)
    # Not bit-equal: inductor's residual adds / attention round differently, which flips a few
    # quantized activations; through the layers of a random model that leaves cos ~0.998 (FP8's
    # 3-bit mantissa) to ~0.9995 (int8), measured on an H100. A broken compiled path is far below.
    assert cos(outc, eager) > 0.995, scheme


def _layer_inputs(m, emb):
    """Per decoder layer of `m`, the position embeddings HF's model hands it (Gemma-3: per layer type)."""
    pos = torch.arange(emb.shape[1], device=DEV).unsqueeze(0)
    rot = m.model.rotary_emb
    types = getattr(m.config, "layer_types", None)
    if type(m).__name__.startswith("Gemma3"):
        return [rot(emb, pos, t) for t in types]
    pe = rot(emb, pos)
    return [pe] * len(m.model.layers)


@pytest.mark.parametrize("scheme", ["w8a8", "fp8"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_blocks_eager_graph_compile(arch, scheme):
    """The new architectures' fused blocks (q / k norms, packed parts, partial rotary, sandwich norms,
    GeGLU): no host sync in the eager forward, a CUDA graph replay equal to eager, torch.compile close
    to eager (test_every_scheme_blocks_eager_graph_compile's bound), and the cached decode."""
    torch._dynamo.reset()
    m = ARCHS[arch]()
    cfg = zqkernels.W8A8Config() if scheme == "w8a8" else zqkernels.FP8Config()
    zqkernels.quantize_(m, cfg)
    layers = list(m.model.layers)
    assert all(isinstance(b, zqkernels.QuantizedBlock) for b in layers)
    ids = torch.randint(0, 1000, (2, 64), device=DEV)
    with torch.no_grad():
        emb = m.model.embed_tokens(ids)
        pes = _layer_inputs(m, emb)

        def stack(h):
            for layer, pe in zip(layers, pes):
                h = layer(h, position_embeddings=pe)
                h = h[0] if isinstance(h, tuple) else h
            return h

        eager, out = _eager_and_graph(stack, emb)
        assert torch.equal(out, eager), (arch, scheme)
        compiled = torch.compile(stack, fullgraph=True)
        for _ in range(2):
            outc = compiled(emb)
        assert cos(outc, eager) > 0.995, (arch, scheme)
        for mode in ("gqa", "kernel"):
            _check_cached_decode(m, ids[:1, :12], mode, (arch, scheme))


def _check_cached_decode(m, prompt, mode, what):
    """Greedy generate over the cache against one full forward of its output, per decode-attention mode.
    "gqa" (SDPA over the cache): the full forward's next tokens exactly. "kernel" (decode_attention,
    the default at <= 16 sequences): its own summation order, which the quantizers downstream amplify
    (a rounding-level change flips an int8 / FP8 code), so each step's logits must be close (cosine)
    and the tokens must agree wherever the full forward's top-2 margin exceeds twice the step's largest
    logit difference (random models have near-ties: H100, qwen3 FP8, margin 0.039 against 0.148)."""
    from zqkernels.nn import blocks_base

    with torch.no_grad(), blocks_base.decode_attention_mode(mode):
        g = m.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt),
                       output_logits=True, return_dict_in_generate=True)
        full = m(g.sequences).logits[0, prompt.shape[1] - 1:-1].float()
    new = g.sequences[0, prompt.shape[1]:]
    if mode == "gqa":
        assert torch.equal(full.argmax(-1), new), (what, mode)
        return
    steps = torch.cat([x.float() for x in g.logits])
    for i in range(len(new)):
        c = cos(steps[i], full[i])
        assert c > 0.99, (what, mode, i, c)
        top2 = full[i].topk(2).values
        if top2[0] - top2[1] > 2 * (steps[i] - full[i]).abs().max():
            assert int(full[i].argmax()) == int(new[i]), (what, mode, i)
