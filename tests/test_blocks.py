"""Fused quantized blocks on CPU (reference ops): conversion of HF models built from configs, the
fused block against the per-Linear path it fuses (same math up to rounding) and the float model,
precision levels, GPT-2 Conv1D conversion, the conversion report, and errors."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import zqkernels

transformers = pytest.importorskip("transformers")


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def bert(**kw):
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        attn_implementation="sdpa", **kw,
    )
    return transformers.BertModel(cfg).eval()


def llama(**kw):
    kw = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
          "num_hidden_layers": 3, **kw}
    cfg = transformers.LlamaConfig(vocab_size=500, **kw)
    return transformers.LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 500, (2, 16))


@torch.no_grad()
def run(model, **kw):
    out = model(IDS, **kw)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.parametrize("make", [bert, llama, lambda: llama(attention_bias=True)])
def test_fused_equals_per_linear_and_tracks_float(make):
    m = make()
    ref = run(m)
    fused = zqkernels.quantize_model(copy.deepcopy(m))
    per_linear = zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False)
    kinds = {type(x).__name__ for x in fused.modules()}
    assert kinds & {"QBertLayer", "QLlamaDecoderLayer"}, kinds
    out, out_pl = run(fused), run(per_linear)
    # Fusion moves roundings (fp32 norm output quantized directly), nothing else.
    assert cos(out, out_pl) > 0.9999
    assert cos(out, ref) > 0.999 and cos(out, ref) >= cos(out_pl, ref) - 1e-4


def test_levels_order_and_float_roles():
    m = bert()
    ref = run(m)
    err = {}
    for level in ("int8", "balanced", "accuracy"):
        q = zqkernels.quantize_model(copy.deepcopy(m), level=level)
        err[level] = 1 - cos(run(q), ref)
        blk = q.encoder.layer[0]
        for role, int8 in zqkernels.LEVELS[level].items():
            assert isinstance(getattr(blk, role), zqkernels.QLinear) == int8, (level, role)
    assert err["int8"] >= err["balanced"] >= err["accuracy"] > 0, err
    all_float = zqkernels.quantize_model(copy.deepcopy(m), level={r: False for r in zqkernels.nn.ROLES})
    assert cos(run(all_float), ref) > 0.999999  # only roundings of the merged float GEMMs differ


def test_llama_generate_with_cache_matches_full_forward():
    m = zqkernels.quantize_model(llama())
    ids = IDS[:1, :6]
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
        # the cached decode must agree with a full forward over the generated sequence
        full = m(out).logits[0, 5:-1].argmax(-1)
    assert torch.equal(full, out[0, 6:])


def gpt2():
    cfg = transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=500)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_gpt2_blocks_and_conv1d_per_linear():
    m = gpt2()
    ref = run(m)
    fused = zqkernels.quantize_model(copy.deepcopy(m))
    assert all(type(b).__name__ == "QGPT2Block" for b in fused.transformer.h)
    per_linear = zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False)
    convs = [n for n, x in per_linear.named_modules() if type(x).__name__ == "Conv1D"]
    assert not convs, f"Conv1D left in float: {convs}"
    report = zqkernels.conversion_report(per_linear)
    assert "transformer.h.0.attn.c_attn" in report and "from Conv1D" in report
    out, out_pl = run(fused), run(per_linear)
    assert cos(out, out_pl) > 0.9999
    assert cos(out, ref) > 0.999 and cos(out, ref) >= cos(out_pl, ref) - 1e-4


def test_inference_mode_and_hand_over():
    """Blocks hand the next block its quantized input; inference tensors (no version counter) too."""
    m = zqkernels.quantize_model(bert())
    with torch.no_grad():
        a = m(IDS).last_hidden_state
    with torch.inference_mode():
        b = m(IDS).last_hidden_state
    assert torch.equal(a, b)
    # a block that is handed a different tensor quantizes it itself
    blk0, blk1 = m.encoder.layer[0], m.encoder.layer[1]
    with torch.no_grad():
        x = torch.randn(2, 16, 64)
        y = blk0(x)
        assert blk1._handoff is not None and blk1._handoff[0] is y
        z_handed = blk1(y)
        z_fresh = blk1(y.clone())
    assert cos(z_handed, z_fresh) > 0.99999


def test_report_and_skip():
    m = zqkernels.quantize_model(bert(), skip=["encoder.layer.1", "pooler.*"])
    rep = zqkernels.conversion_report(m)
    assert re.search(r"^encoder\.layer\.0 +fused QBertLayer", rep, re.M), rep
    assert type(m.encoder.layer[1]).__name__ == "BertLayer"
    assert "pooler.dense" in rep and "skipped by pattern" in rep
    assert zqkernels.conversion_report(torch.nn.Linear(2, 2)) == "quantize_model has not converted this model"


def test_unsupported_variant_falls_back_per_linear_with_reason():
    m = bert(hidden_act="relu")
    q = zqkernels.quantize_model(m)
    rep = zqkernels.conversion_report(q)
    assert "not fused: QBertLayer: the intermediate activation must be GeLU" in rep
    assert isinstance(q.encoder.layer[0].intermediate.dense, zqkernels.QLinear)


def test_bad_level():
    with pytest.raises(ValueError, match="level must be one of"):
        zqkernels.quantize_model(bert(), level="M9")
    with pytest.raises(ValueError, match=r"unknown roles \['ffn'\]"):
        zqkernels.quantize_model(bert(), level={"ffn": False})


# --- every scheme's fused blocks -------------------------------------------------------------------

SCHEME_CONFIGS = {
    "w8a8": lambda **kw: zqkernels.W8A8Config(**kw),
    "fp8": lambda **kw: zqkernels.FP8Config(**kw),
    "w4a8": lambda **kw: zqkernels.W4A8Config(group_size=32, **kw),
    "w4a8-floatscale": lambda **kw: zqkernels.W4A8Config(group_size=64, scale="float", **kw),
    "w4a8-zp": lambda **kw: zqkernels.W4A8Config(group_size=64, scale="zp", **kw),
    "w8a8-group": lambda **kw: zqkernels.W8A8GroupConfig(group_size=32, **kw),
    "w4a8-fp": lambda **kw: zqkernels.W4A8FPConfig(group_size=32, **kw),
    "fp8-block": lambda **kw: zqkernels.SchemeConfig("fp8-block", **kw),
}
# llama() keywords of a scheme whose layers need other shapes than the default case's: fp8-block needs
# in_features % 128 == 0 (and q / k / v / gate / up of 128-row multiples so its 128 x 128 blocks stay
# within one part): hidden 256, intermediate 512, 2 heads of 128, 1 KV head
SCHEME_MODELS = {"fp8-block": {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2,
                               "num_key_value_heads": 1}}


def test_every_scheme_has_a_block_case():
    assert set(SCHEME_CONFIGS) == set(zqkernels.schemes.SCHEMES)


@pytest.mark.parametrize("scheme", list(SCHEME_CONFIGS))
def test_every_scheme_fuses_and_matches_its_per_linear_path(scheme):
    """Each scheme's fused LLaMA blocks: QLinears of the scheme inside, the fused kernels emitting its
    activation format, the same math as its per-Linear conversion up to where the roundings sit
    (a norm's fp32 output quantized directly instead of rounded to the model dtype first)."""
    torch.manual_seed(0)
    m = llama(**{"intermediate_size": 128, **SCHEME_MODELS.get(scheme, {})})  # packed 4-bit: in_features % 64 == 0
    ref = run(m)
    fused, per_linear = copy.deepcopy(m), copy.deepcopy(m)
    s = zqkernels.quantize_(fused, SCHEME_CONFIGS[scheme]())
    zqkernels.quantize_(per_linear, SCHEME_CONFIGS[scheme](fused_blocks=False))
    blocks = [b for b in fused.modules() if isinstance(b, zqkernels.QuantizedBlock)]
    assert len(blocks) == 3 and all(b.qscheme.name == scheme for b in blocks), s
    q = blocks[0].qkv
    assert isinstance(q, zqkernels.QLinear) and q.scheme == scheme
    assert blocks[0]._qdtype == q.qscheme.act_dtype
    assert not any(isinstance(b, zqkernels.QuantizedBlock) for b in per_linear.modules())
    out, out_pl = run(fused), run(per_linear)
    assert cos(out, out_pl) > 0.999, scheme
    # random weights through 3 layers: int8 ~0.9995, fp8 ~0.998, 4-bit ~0.984-0.989 against float;
    # fusing costs nothing there
    assert cos(out, ref) > {"w8a8": 0.999, "w8a8-group": 0.999, "fp8": 0.997}.get(scheme, 0.975), scheme
    assert cos(out, ref) >= cos(out_pl, ref) - 1e-3, scheme


@pytest.mark.parametrize("scheme", ["fp8", "w4a8", "w4a8-fp"])
def test_every_scheme_block_traces_without_graph_break(scheme):
    """torch.compile(fullgraph=True) through a fused block of the scheme (aot_eager: the custom ops'
    fake implementations and the block's Python, no inductor): no graph break, output as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = llama(intermediate_size=128, num_hidden_layers=1)
    zqkernels.quantize_(m, SCHEME_CONFIGS[scheme]())
    layer = m.model.layers[0]
    assert isinstance(layer, zqkernels.QuantizedBlock)
    x = torch.randn(2, 8, 64)
    pos = torch.arange(8).unsqueeze(0)
    pe = m.model.rotary_emb(x, pos)
    with torch.no_grad():
        eager = layer(x, position_embeddings=pe)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, position_embeddings=pe)
    eager = eager[0] if isinstance(eager, tuple) else eager
    compiled = compiled[0] if isinstance(compiled, tuple) else compiled
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_one_token_gqa_attention_modes(cache, monkeypatch):
    """A one-token step with grouped KV heads reads the cache as it is (no repeat_kv copies): SDPA with
    enable_gqa=True ("gqa", the default) or on [B, KV, G, hd] query rows ("packed"); each must give
    what HF's own SDPA path gives ("hf"), mask (static cache) or not (dynamic)."""
    from zqkernels.nn import blocks_base

    m = zqkernels.quantize_model(llama(num_attention_heads=8, num_key_value_heads=2))
    blocks = [b for b in m.modules() if type(b).__name__ == "QLlamaDecoderLayer"]
    assert blocks and all(b._one_token_sdpa for b in blocks)
    assert blocks_base.DECODE_ATTENTION == "auto"  # on the CPU: "gqa" (the kernel is CUDA's)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, *a, **kw: calls.append((tuple(q.shape), tuple(k.shape), kw.get("enable_gqa")))
                        or sdpa(q, k, *a, **kw))
    ids = IDS[:2, :6]
    out = {}
    with torch.no_grad():
        for mode in ("auto", "gqa", "packed", "hf"):
            monkeypatch.setattr(blocks_base, "DECODE_ATTENTION", mode)
            calls.clear()
            out[mode] = m.generate(ids, max_new_tokens=3, do_sample=False, cache_implementation=cache,
                                   attention_mask=torch.ones_like(ids), output_logits=True,
                                   return_dict_in_generate=True)
            steps = [c for c in calls if c[0][2] == 1 or mode == "packed" and c[0][1:3] == (2, 4)]
            if mode in ("auto", "gqa"):  # the decode steps' queries: [B, H, 1, hd] against [B, KV, L, hd]
                assert any(c[0] == (2, 8, 1, 8) and c[1][1] == 2 and c[2] for c in steps), calls
            if mode == "packed":  # [B, KV, G, hd]
                assert any(c[0] == (2, 2, 4, 8) for c in steps), calls
    for mode in ("auto", "gqa", "packed"):
        assert torch.equal(out[mode].sequences, out["hf"].sequences)
        for a, b in zip(out[mode].logits, out["hf"].logits):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_decode_attention_mode_raises(monkeypatch):
    """A misspelt DECODE_ATTENTION is an error naming the setting, not a silent fallback."""
    from zqkernels.nn import blocks_base

    m = zqkernels.quantize_model(llama(num_attention_heads=8, num_key_value_heads=2))
    monkeypatch.setattr(blocks_base, "DECODE_ATTENTION", "kernal")
    with torch.no_grad(), pytest.raises(ValueError, match=r"DECODE_ATTENTION must be one of .*'gqa'.*got 'kernal'"):
        m(IDS[:1, :4])
    monkeypatch.setattr(blocks_base, "DECODE_ATTENTION", "gqa")
    with pytest.raises(ValueError, match=r"DECODE_ATTENTION must be one of .*got 'kernal'"):
        with blocks_base.decode_attention_mode("kernal"):
            pass
    with blocks_base.decode_attention_mode("packed"):
        assert blocks_base.DECODE_ATTENTION == "packed"
    with blocks_base.decode_attention_mode(None):
        assert blocks_base.DECODE_ATTENTION == "gqa"
    assert blocks_base.DECODE_ATTENTION == "gqa"
