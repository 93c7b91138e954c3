"""zqkernels.smooth_ (SmoothQuant-style activation smoothing) on tiny HF models, CPU.

Checked against the float model itself (the reparametrization must not change its function) and
against the quantization error of the real library path (quantize_ -> QLinear, exact CPU
references) with and without smoothing, on models with planted activation outliers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import zqkernels as zq
import zqkernels.nn as zn
from conftest import plant_llama_outliers

transformers = pytest.importorskip("transformers")


def llama(seed=0, outliers=True):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=500,
    )
    m = transformers.LlamaForCausalLM(cfg).eval()
    if outliers:
        plant_llama_outliers(m)
    return m


def gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for b in m.transformer.h:
            b.ln_1.weight[[1, 9]] *= 40
            b.ln_1.bias.normal_()
            b.ln_2.weight[[4]] *= 40
    return m


def batches(n, seed, B=2, S=32):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 500, (B, S), generator=g)} for _ in range(n)]


def logits(model, bs):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in bs])


@pytest.mark.parametrize("make", [llama, gpt2])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smooth_keeps_the_float_function(make, alpha):
    m = make()
    ref = logits(m, batches(2, 1))
    rep = zq.smooth_(m, batches(2, 0), alpha=alpha)
    got = logits(m, batches(2, 1))
    assert rep.groups and all(g["s_min"] > 0 for g in rep.groups)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), float((got - ref).abs().max())


def test_smooth_rules_cover_every_llama_group():
    m = llama()
    rep = zq.smooth_(m, batches(1, 0))
    kinds = sorted({(g["source"], g["kind"]) for g in rep.groups})
    assert kinds == [("input_layernorm", "norm"), ("mlp.up_proj", "rows"), ("post_attention_layernorm", "norm"),
                     ("self_attn.v_proj", "gqa")]
    assert len(rep.groups) == 4 * 2
    # the planted outliers were flattened
    for g in rep.groups:
        assert g["act_ratio_after"] < g["act_ratio_before"] / 3, g
    assert "alpha 0.5" in str(rep)


def test_smooth_gqa_shares_factors_within_kv_groups():
    """o_proj's input channels of the query heads of one KV head get the factor of that V channel:
    checked through the function (the model is unchanged only if the sharing is right)."""
    m = llama()
    ref = logits(m, batches(1, 2))
    o_before = m.model.layers[0].self_attn.o_proj.weight.detach().clone()
    zq.smooth_(m, batches(1, 0), alpha=0.7)
    o_after = m.model.layers[0].self_attn.o_proj.weight.detach()
    ratio = (o_after / o_before)[0].view(2, 2, 16)  # [kv heads, query heads per kv, head dim]
    assert torch.allclose(ratio[:, 0], ratio[:, 1], rtol=1e-5)
    assert not torch.allclose(ratio[0], ratio[1])
    got = logits(m, batches(1, 2))
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cfg", ["w8a8", "fp8"])
def test_smooth_lowers_the_quantized_error(fused, cfg):
    if cfg == "fp8" and fused:
        pytest.skip("fused blocks are w8a8 only")
    conf = zn.W8A8Config(fused_blocks=fused) if cfg == "w8a8" else zn.FP8Config()
    float_model = llama()
    ev = batches(2, 5)
    ref = logits(float_model, ev)

    plain = copy.deepcopy(float_model)
    zq.quantize_(plain, conf)
    err_plain = float((logits(plain, ev) - ref).norm())

    smoothed = copy.deepcopy(float_model)
    zq.smooth_(smoothed, batches(2, 0), alpha=0.5)
    zq.quantize_(smoothed, conf)
    err_smooth = float((logits(smoothed, ev) - ref).norm())
    assert err_smooth < 0.7 * err_plain, (err_smooth, err_plain)


def test_smooth_then_lkd_uses_the_smoothed_teacher():
    float_model = llama()
    zq.smooth_(float_model, batches(2, 0))
    mq = copy.deepcopy(float_model)
    zq.quantize_(mq, zn.W8A8Config(fused_blocks=False))
    log = zq.lkd(float_model, mq, batches(2, 3), steps=3, lr=1e-4, progress=False)
    assert len(log) == 2 and all(d["loss_after"] <= d["loss_before"] for d in log)


def test_smooth_errors():
    m = llama(outliers=False)
    with pytest.raises(ValueError, match=r"smooth_: alpha must be a number in \[0, 1\], got 1.5"):
        zq.smooth_(m, batches(1, 0), alpha=1.5)
    with pytest.raises(ValueError, match="smooth_: alpha"):
        zq.smooth_(m, batches(1, 0), alpha=True)
    with pytest.raises(ValueError, match="calib_batches is empty"):
        zq.smooth_(m, [])
    with pytest.raises(TypeError, match="smooth_: calib_batches must be a list"):
        zq.smooth_(m, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="smooth_: each calibration batch must be"):
        zq.smooth_(m, ["text"])
    with pytest.raises(ValueError, match="smooth_: min_scale"):
        zq.smooth_(m, batches(1, 0), min_scale=0)
    q = copy.deepcopy(m)
    zq.quantize_(q, zn.W8A8Config(fused_blocks=False))
    with pytest.raises(ValueError, match="smooth_: the model already holds QLinears"):
        zq.smooth_(q, batches(1, 0))
    with pytest.raises(ValueError, match="smooth_: found no supported transformer block in Sequential; supported:"):
        zq.smooth_(torch.nn.Sequential(torch.nn.Linear(8, 8)), [torch.randn(2, 8)])
    with pytest.raises(TypeError, match="smooth_: model must be an nn.Module"):
        zq.smooth_("model", batches(1, 0))
    # a failed call leaves the model unchanged
    ref = logits(m, batches(1, 1))
    with pytest.raises(TypeError):
        zq.smooth_(m, [batches(1, 0)[0], "text"])
    assert torch.equal(logits(m, batches(1, 1)), ref)
