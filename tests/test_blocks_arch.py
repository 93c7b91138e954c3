"""Fused quantized blocks of the decoders beyond LLaMA / GPT-2 / BERT, on CPU (reference ops): Qwen3
(per-head q / k RMSNorms), Phi-3 (packed qkv_proj / gate_up_proj, partial rotary), Gemma-2 (GeGLU,
(1 + w) RMSNorms, sandwich norms, soft-capping, sliding window) and Gemma-3 (Gemma-2's + q / k norms).
Tiny HF models built from configs with random weights (norm weights perturbed too), converted with
every scheme, against the per-Linear conversion of the same model and the float model; the
conversion report; checkpoints; GPTQ, LoRC, LKD, smooth_; grad mode; the cached decode."""

from __future__ import annotations

import copy

import pytest
import torch
import zqkernels
from test_blocks import SCHEME_CONFIGS
from test_grad_mode import grad_mode_checks

transformers = pytest.importorskip("transformers")


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _shape(hidden=64, inter=128, heads=4, kv=2, head_dim=16, layers=2):
    return {"vocab_size": 500, "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim, "num_hidden_layers": layers}


def _finish(model):
    """Eval mode, and every norm weight perturbed (HF initialises them to 1, Gemma's to 0: a fused
    norm reading the wrong weight would go unnoticed)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def qwen3(**kw):
    return _finish(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_shape(**kw))))


def phi3(partial_rotary_factor=1.0, **kw):
    s = _shape(**kw)
    s.pop("head_dim")  # Phi-3: hidden / heads
    cfg = transformers.Phi3Config(pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  partial_rotary_factor=partial_rotary_factor, **s)
    return _finish(transformers.Phi3ForCausalLM(cfg))


def gemma2(**kw):
    s = _shape(**kw)
    cfg = transformers.Gemma2Config(query_pre_attn_scalar=s["head_dim"], sliding_window=8,
                                    attn_implementation="eager", **s)  # eager: soft-capping applies
    return _finish(transformers.Gemma2ForCausalLM(cfg))


def gemma3(**kw):
    s = _shape(**kw)
    cfg = transformers.Gemma3TextConfig(query_pre_attn_scalar=s["head_dim"], sliding_window=8, **s)
    return _finish(transformers.Gemma3ForCausalLM(cfg))


ARCHS = {
    "qwen3": (qwen3, "QQwen3DecoderLayer"),
    "phi3": (phi3, "QPhi3DecoderLayer"),
    "gemma2": (gemma2, "QGemma2DecoderLayer"),
    "gemma3": (gemma3, "QGemma3DecoderLayer"),
}
# fp8-block needs in_features % 128 == 0 and 128-row multiples per merged part (test_blocks.SCHEME_MODELS)
BIG = {"hidden": 256, "inter": 512, "heads": 2, "kv": 1, "head_dim": 128}

IDS = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def run(model, ids=IDS):
    return model(ids).logits


def blocks(model):
    return [b for b in model.modules() if isinstance(b, zqkernels.QuantizedBlock)]


# Against float, 2 layers of random weights: Qwen3 / Phi-3 as test_blocks' LLaMA (int8 ~0.9999, fp8
# ~0.999, 4-bit ~0.990). Gemma's sandwich norms rescale each sub-layer's (small, random-init) output
# to unit RMS before the residual add, so its quantization noise is not shrunk against the residual
# stream as in LLaMA: int8 ~0.9996, fp8 ~0.992-0.995, 4-bit ~0.92-0.96, the per-Linear path's
# values to 5 digits (the fused-vs-per-Linear check is what catches a wrong block).
MIN_COS = {False: {"w8a8": 0.999, "w8a8-group": 0.999, "fp8": 0.997, "4-bit": 0.975},
           True: {"w8a8": 0.999, "w8a8-group": 0.999, "fp8": 0.99, "4-bit": 0.9}}


@pytest.mark.parametrize("scheme", list(SCHEME_CONFIGS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_scheme_fuses_and_matches_per_linear_and_float(arch, scheme):
    """Each architecture x scheme: every decoder layer fused (none left per-Linear, nothing in the
    report's "not fused"), the same math as the per-Linear conversion up to where the roundings sit,
    and within the scheme's tolerance of the float model (test_blocks' LLaMA thresholds)."""
    torch.manual_seed(0)
    make, cls = ARCHS[arch]
    m = make(**(BIG if scheme == "fp8-block" else {}))
    ref = run(m)
    fused, per_linear = copy.deepcopy(m), copy.deepcopy(m)
    s = zqkernels.quantize_(fused, SCHEME_CONFIGS[scheme]())
    zqkernels.quantize_(per_linear, SCHEME_CONFIGS[scheme](fused_blocks=False))
    bs = blocks(fused)
    assert len(bs) == 2 and all(type(b).__name__ == cls and b.qscheme.name == scheme for b in bs), s
    assert not s.notes, s.notes
    assert not blocks(per_linear)
    out, out_pl = run(fused), run(per_linear)
    assert cos(out, out_pl) > 0.999, (arch, scheme, cos(out, out_pl))
    assert cos(out, ref) > MIN_COS[arch.startswith("gemma")].get(scheme, MIN_COS[arch.startswith("gemma")]["4-bit"]), (
        arch, scheme, cos(out, ref))
    assert cos(out, ref) >= cos(out_pl, ref) - 1e-3, (arch, scheme)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_float_roles_reproduce_the_float_layer(arch):
    """Every role in float (lm_head skipped): the block's own forward (q / k norms, partial rotary,
    sandwich norms, GeGLU, soft-capping, sliding window) is the HF layer's up to GEMM merging."""
    m = ARCHS[arch][0]()
    ref = run(m)
    q = zqkernels.quantize_model(copy.deepcopy(m), level={r: False for r in zqkernels.nn.ROLES}, skip="lm_head")
    assert len(blocks(q)) == 2
    assert cos(run(q), ref) > 0.999999


def test_phi3_partial_rotary():
    m = phi3(partial_rotary_factor=0.5)
    ref = run(m)
    q = zqkernels.quantize_model(copy.deepcopy(m), level={r: False for r in zqkernels.nn.ROLES}, skip="lm_head")
    assert cos(run(q), ref) > 0.999999
    assert cos(run(zqkernels.quantize_model(copy.deepcopy(m))), ref) > 0.999


@pytest.mark.parametrize("arch", list(ARCHS))
def test_report_shows_fused_blocks(arch):
    make, cls = ARCHS[arch]
    q = zqkernels.quantize_model(make())
    rep = zqkernels.conversion_report(q)
    first = rep.splitlines()[0]
    assert f"2 fused blocks ({cls})" in first and "not fused" not in first, rep
    assert "model.layers.0 " in rep and "model.layers.0.self_attn" not in rep, rep


def test_unsupported_variant_is_reported():
    m = qwen3()
    m.model.layers[0].mlp.act_fn = torch.nn.GELU()
    rep = zqkernels.conversion_report(zqkernels.quantize_model(m))
    assert "1 not fused" in rep.splitlines()[0]
    assert "not fused: QQwen3DecoderLayer: the MLP activation must be SiLU" in rep, rep


def test_layer_without_a_block_is_reported_not_silent():
    cfg = transformers.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                                 vocab_size=500, word_embed_proj_dim=64)
    m = transformers.OPTForCausalLM(cfg).eval()
    q = zqkernels.quantize_model(copy.deepcopy(m))
    rep = zqkernels.conversion_report(q)
    assert "2 not fused" in rep.splitlines()[0], rep
    assert "not fused: no fused block for OPTDecoderLayer" in rep and "Qwen3DecoderLayer" in rep, rep
    assert isinstance(q.model.decoder.layers[0].self_attn.q_proj, zqkernels.QLinear)
    # fusion off: nothing to say
    rep = zqkernels.conversion_report(zqkernels.quantize_model(copy.deepcopy(m), fused_blocks=False))
    assert "not fused" not in rep


@pytest.mark.parametrize("arch,scheme", [(a, "w8a8") for a in ARCHS] + [("phi3", "fp8-block"), ("gemma3", "w4a8")])
def test_checkpoint_round_trip(arch, scheme, tmp_path):
    """save_quantized splits the blocks into their HF modules (packed Phi-3 Linears as one part; the
    extra norms saved); load_quantized re-fuses them: the same blocks, the same logits."""
    make, cls = ARCHS[arch]
    m = make(**(BIG if scheme == "fp8-block" else {}))
    zqkernels.quantize_(m, SCHEME_CONFIGS[scheme]())
    ref = run(m)
    zqkernels.save_quantized(m, tmp_path)
    loaded = zqkernels.load_quantized(tmp_path)
    bs = blocks(loaded)
    assert len(bs) == 2 and all(type(b).__name__ == cls and b.qscheme.name == scheme for b in bs)
    torch.testing.assert_close(run(loaded), ref, rtol=1e-5, atol=1e-5)
    per_linear = zqkernels.load_quantized(tmp_path, fuse=False)
    assert not blocks(per_linear)
    assert cos(run(per_linear), ref) > 0.999


def calib(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 500, (2, 32), generator=g)} for _ in range(n)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gptq_smoke(arch):
    """GPTQ through the fused blocks (each part of a merged GEMM GPTQ'd with its own Hessian; a packed
    Linear is one part): the same conversion as quantize_, closer to the float model than RTN."""
    torch.manual_seed(0)
    m = ARCHS[arch][0]()
    cal = calib()
    cfg = zqkernels.W4A8Config(group_size=32)
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    sa = zqkernels.quantize_(a, cfg)
    sb = zqkernels.gptq(b, cal, config=cfg)
    assert [n for n, _ in sa.converted] == [n for n, _ in sb.converted]
    assert len(blocks(b)) == 2
    with torch.no_grad():
        ref = [m(**x).logits for x in cal]
        ea = sum(float((a(**x).logits - r).norm()) for x, r in zip(cal, ref))
        eb = sum(float((b(**x).logits - r).norm()) for x, r in zip(cal, ref))
    assert eb < ea, (eb, ea)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_lorc_and_lkd(arch):
    m = ARCHS[arch][0]()
    q = copy.deepcopy(m)
    zqkernels.quantize_(q, zqkernels.W4A8Config(group_size=32))
    log = zqkernels.lkd(m, q, calib(2), steps=5, lr=1e-6, progress=False)
    assert [r["layer"] for r in log] == [0, 1]
    before = cos(run(q), run(m))
    report = zqkernels.lorc(q, m, rank=8)
    assert report is not None
    assert cos(run(q), run(m)) > before


@pytest.mark.parametrize("arch", list(ARCHS))
def test_smooth_keeps_the_float_function_and_fuses(arch):
    m = ARCHS[arch][0]()
    ref = run(m)
    rep = zqkernels.smooth_(m, calib(2), alpha=0.5)
    assert len(rep.groups) == 8  # 4 rules x 2 layers
    torch.testing.assert_close(run(m), ref, rtol=1e-4, atol=1e-4)
    q = zqkernels.quantize_model(copy.deepcopy(m))
    assert len(blocks(q)) == 2 and cos(run(q), ref) > 0.999


def test_smooth_packed_phi3_folds_only_the_tail_rows():
    m = phi3()
    layer = m.model.layers[0]
    qkv, gu = layer.self_attn.qkv_proj.weight.detach().clone(), layer.mlp.gate_up_proj.weight.detach().clone()
    rep = zqkernels.smooth_(m, calib(1), alpha=0.5, min_scale=1e-5)
    assert {g["kind"] for g in rep.groups} == {"norm", "rows", "gqa"}
    n_qk = 64 + 2 * 16  # q rows + k rows: unchanged apart from the input norm's column scaling
    s_in = layer.self_attn.qkv_proj.weight[:1, :] / qkv[:1, :]  # the column factors of the norm fold
    torch.testing.assert_close(layer.self_attn.qkv_proj.weight[:n_qk], qkv[:n_qk] * s_in, rtol=1e-5, atol=1e-6)
    s_ff = layer.mlp.gate_up_proj.weight[:1, :] / gu[:1, :]
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight[:128], gu[:128] * s_ff, rtol=1e-5, atol=1e-6)


def test_smooth_refusal_names_the_reason():
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128)
    with pytest.raises(ValueError, match="BertLayer: post-norm"):
        zqkernels.smooth_(transformers.BertModel(cfg).eval(), [{"input_ids": IDS}])


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_generate_with_cache_matches_full_forward(arch):
    m = zqkernels.quantize_model(ARCHS[arch][0]())
    ids = IDS[:1, :6]
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
        full = m(out).logits[0, 5:-1].argmax(-1)
    assert torch.equal(full, out[0, 6:])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_grad_mode(arch):
    """Grad mode through the new blocks (q / k norms and sandwich norms with autograd, GeGLU's
    backward): bit for bit the no-grad values, gradients close to the dequantized float model's."""
    torch.manual_seed(0)
    m = ARCHS[arch][0]()
    q = copy.deepcopy(m)
    zqkernels.quantize_(q, zqkernels.W8A8Config())
    assert len(blocks(q)) == 2
    grad_mode_checks(m, q, 0.99)


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "gemma3"])
def test_block_traces_without_graph_break(arch):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = ARCHS[arch][0](layers=1)
    zqkernels.quantize_(m, zqkernels.FP8Config())
    layer = m.model.layers[0]
    x = torch.randn(2, 8, 64)
    pos = torch.arange(8).unsqueeze(0)
    rot = m.model.rotary_emb
    pe = rot(x, pos, m.config.layer_types[0]) if arch == "gemma3" else rot(x, pos)
    with torch.no_grad():
        eager = layer(x, position_embeddings=pe)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, position_embeddings=pe)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
