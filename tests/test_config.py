"""quantize_ with config objects on CPU (reference ops), on tiny HF models built from configs:
default selection (lm_head / tied embeddings left in float), filter_fn, module_configs mixed
precision, the summary, the group-wise schemes and ZeroQuant's W4/8 preset, and argument errors."""

from __future__ import annotations

import copy

import pytest
import torch
import zqkernels
from zqkernels import (
    W4A8Config,
    W8A8Config,
    W8A8GroupConfig,
    quantize_,
)

transformers = pytest.importorskip("transformers")

IDS = torch.randint(0, 500, (2, 16))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@torch.no_grad()
def run(model):
    out = model(IDS)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def bert():
    cfg = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=500, attn_implementation="sdpa",
    )
    return transformers.BertModel(cfg).eval()


def llama(**kw):
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500, **kw,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2():
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500)
    return transformers.GPT2LMHeadModel(cfg).eval()


def kinds(model) -> set[str]:
    return {type(x).__name__ for x in model.modules()}


def test_bert_blocks():
    m = bert()
    ref = run(m)
    s = quantize_(m, W8A8Config())
    assert isinstance(s, zqkernels.ConversionSummary)
    assert "QBertLayer" in kinds(m)
    assert any(n == "encoder.layer.0" and "fused QBertLayer" in how for n, how in s.converted), s
    assert any(n == "pooler.dense" for n, _ in s.converted), s
    assert cos(run(m), ref) > 0.999
    assert "encoder.layer.0" in str(s) and "converted" in str(s)
    assert "fused QBertLayer" in zqkernels.conversion_report(m)


def test_llama_tied_lm_head_left_alone():
    m = llama(tie_word_embeddings=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    ref = run(m)
    s = quantize_(m, W8A8Config(level="balanced"), progress=True)
    assert "QLlamaDecoderLayer" in kinds(m)
    assert isinstance(m.lm_head, torch.nn.Linear) and m.lm_head.weight is m.model.embed_tokens.weight
    why = dict(s.skipped)["lm_head"]
    assert "tied to input embedding 'model.embed_tokens'" in why
    assert cos(run(m), ref) > 0.999


def test_untied_lm_head_default_and_explicit():
    m = llama(tie_word_embeddings=False)
    s = quantize_(copy.deepcopy(m), W8A8Config())
    assert "lm_head left in float by default" in dict(s.skipped)["lm_head"]
    q = copy.deepcopy(m)
    s = quantize_(q, W8A8Config(), module_configs={"lm_head": W8A8Config(fused_blocks=False)})
    assert isinstance(q.lm_head, zqkernels.QLinear) and "lm_head" in dict(s.converted)
    # a catch-all "*" is not an explicit selection
    s = quantize_(copy.deepcopy(m), None, module_configs={"*": W8A8Config()})
    assert "lm_head" in dict(s.skipped)
    # quantize_model (the short form) still converts lm_head
    assert isinstance(zqkernels.quantize_model(copy.deepcopy(m)).lm_head, zqkernels.QLinear)


def test_gpt2_conv1d_and_tied_lm_head():
    m = gpt2()
    ref = run(m)
    q = copy.deepcopy(m)
    s = quantize_(q, W8A8Config(fused_blocks=False))
    assert "Conv1D" not in kinds(q)
    assert "QLinear (w8a8): from Conv1D" in dict(s.converted)["transformer.h.0.attn.c_attn"]
    assert "tied to input embedding 'transformer.wte'" in dict(s.skipped)["lm_head"]
    assert q.lm_head.weight is q.transformer.wte.weight
    assert cos(run(q), ref) > 0.999
    q = copy.deepcopy(m)
    quantize_(q, W8A8Config())
    assert all(type(b).__name__ == "QGPT2Block" for b in q.transformer.h)
    assert cos(run(q), ref) > 0.999


def test_filter_fn():
    m = llama()
    ref = run(m)
    seen = []

    def only_attention(module, fqn):
        seen.append((type(module).__name__, fqn))
        return ".self_attn." in fqn

    s = quantize_(m, W8A8Config(), filter_fn=only_attention)
    assert ("Linear", "model.layers.0.mlp.gate_proj") in seen
    # a layer with some Linears filtered out is not fused; its selected Linears are converted
    assert "QLlamaDecoderLayer" not in kinds(m)
    assert isinstance(m.model.layers[0].self_attn.q_proj, zqkernels.QLinear)
    assert isinstance(m.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert dict(s.skipped)["model.layers.1.mlp.down_proj"] == "filter_fn returned False"
    assert cos(run(m), ref) > 0.999
    # filter_fn selecting the tied lm_head converts it (explicit)
    t = llama(tie_word_embeddings=True)
    quantize_(t, W8A8Config(), filter_fn=lambda mod, fqn: fqn == "lm_head")
    assert isinstance(t.lm_head, zqkernels.QLinear)
    assert isinstance(t.model.embed_tokens, torch.nn.Embedding)


def test_module_configs_mixed_precision():
    m = llama()
    ref = run(m)
    s = quantize_(m, W8A8Config(), module_configs={"*.mlp.down_proj": None, "*.mlp.*": W8A8Config(fused_blocks=False)})
    layer = m.model.layers[0]
    assert type(layer).__name__ == "LlamaDecoderLayer"  # mixed configs inside: not fused
    assert isinstance(layer.mlp.down_proj, torch.nn.Linear)
    assert isinstance(layer.mlp.gate_proj, zqkernels.QLinear)
    assert isinstance(layer.self_attn.o_proj, zqkernels.QLinear)
    assert dict(s.skipped)["model.layers.1.mlp.down_proj"] == "module_configs['*.mlp.down_proj'] is None"
    assert cos(run(m), ref) > 0.999
    # first match wins
    b = bert()
    s = quantize_(b, W8A8Config(), module_configs={"pooler.*": None, "pooler.dense": W8A8Config()})
    assert isinstance(b.pooler.dense, torch.nn.Linear) and "QBertLayer" in kinds(b)


def test_group_schemes_convert():
    """W8A8GroupConfig and W4A8Config have kernels now (they raised NotImplementedError before)."""
    m = llama()
    ref = run(m)
    s = quantize_(m, W8A8GroupConfig(group_size=32))
    assert "QLinear" in kinds(m) and [n for n, _ in s.skipped] == ["lm_head"]  # float by default
    # the layer is a fused block of the scheme (every scheme fuses now); its roles are QLinears of it
    assert all("fused QLlamaDecoderLayer" in how and "scheme=w8a8-group, group_size=32, scale=int" in how
               for _, how in s.converted), s
    assert cos(run(m), ref) > 0.999
    m = llama()  # W4A8 needs in_features % 64 == 0: down_proj (in_features 96) cannot run it
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.mlp.down_proj'.*'w4a8'.*\[64, 96\]"):
        quantize_(m, W4A8Config(group_size=32))
    assert "QLinear" not in kinds(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_zeroquant_preset():
    assert isinstance(zqkernels.ZEROQUANT_W4_8["*.mlp.*"], W4A8Config)
    cfg = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500,
    )
    m = transformers.LlamaForCausalLM(cfg).eval()
    ref = run(m)
    s = quantize_(m, W8A8Config(), module_configs=zqkernels.ZEROQUANT_W4_8)
    mlp, attn = m.model.layers[0].mlp, m.model.layers[0].self_attn
    assert type(m.model.layers[0]).__name__ == "LlamaDecoderLayer"  # mixed configs: not fused
    assert all(x.scheme == "w4a8" for x in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert attn.q_proj.scheme == "w8a8" and attn.o_proj.scheme == "w8a8"
    assert dict(s.converted)["model.layers.1.mlp.down_proj"] == "QLinear (w4a8, group_size=128): from Linear"
    assert cos(run(m), ref) > 0.99


def test_bad_arguments():
    m = bert()
    with pytest.raises(TypeError, match=r"quantize_: config must be a QuantConfig"):
        quantize_(m, "w8a8")
    with pytest.raises(TypeError, match=r"quantize_: config must be"):
        quantize_(m, None)
    with pytest.raises(TypeError, match=r"quantize_: module_configs\['\*'\] must be"):
        quantize_(m, W8A8Config(), module_configs={"*": "int8"})
    with pytest.raises(TypeError, match=r"quantize_: module_configs must be a dict"):
        quantize_(m, W8A8Config(), module_configs=[("*", W8A8Config())])
    with pytest.raises(TypeError, match=r"quantize_: filter_fn must be callable"):
        quantize_(m, W8A8Config(), filter_fn="encoder.*")
    with pytest.raises(TypeError, match=r"quantize_: model is itself a Linear"):
        quantize_(torch.nn.Linear(16, 16), W8A8Config())
    with pytest.raises(ValueError, match="level must be one of"):
        W8A8Config(level="M9")
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        W4A8Config(group_size=0)
    with pytest.raises(Exception):  # frozen
        W8A8Config().level = "balanced"
