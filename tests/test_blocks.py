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
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=3, vocab_size=500, **kw,
    )
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


def test_gpt2_conv1d_is_converted_not_skipped():
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    ref = run(m)
    q = zqkernels.quantize_model(copy.deepcopy(m))
    convs = [n for n, x in q.named_modules() if type(x).__name__ == "Conv1D"]
    assert not convs, f"Conv1D left in float: {convs}"
    assert cos(run(q), ref) > 0.999
    report = zqkernels.conversion_report(q)
    assert "transformer.h.0.attn.c_attn" in report and "from Conv1D" in report


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
