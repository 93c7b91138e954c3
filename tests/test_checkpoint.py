"""save_quantized / load_quantized: the compressed-tensors layout, checked against the real
compressed-tensors package (CPU only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import zqkernels
from zqkernels.nn import QLinear

transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")

from compressed_tensors.compressors import BaseCompressor, ModelCompressor  # noqa: E402
from compressed_tensors.quantization import (  # noqa: E402
    QuantizationConfig,
    apply_quantization_config,
    preset_name_to_scheme,
)
from safetensors.torch import load_file  # noqa: E402


def _llama(dtype=torch.float32, tie=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def _bert(seed=1):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32,
    )
    return transformers.BertModel(cfg).eval()


def _ids(vocab, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 9), generator=g)


# ------------------------------------------------------------------------------------------------
# (1) our checkpoint, read by compressed-tensors


def test_layout_and_ct_decompress(tmp_path):
    model = zqkernels.quantize_model(_llama())
    blk = model.model.layers[0]
    zqkernels.save_quantized(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    qc_json = cfg["quantization_config"]
    assert qc_json["quant_method"] == "compressed-tensors" and qc_json["format"] == "int-quantized"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    qc = QuantizationConfig.model_validate(qc_json)  # compressed-tensors' own schema
    scheme = qc.config_groups["group_0"]
    assert scheme.weights.strategy == "channel" and scheme.input_activations.strategy == "token"
    assert scheme.input_activations.dynamic is True and qc.ignore == []
    compressor = BaseCompressor.get_value_from_registry(qc.format)
    assert compressor.__name__ == "IntQuantizationCompressor"

    sd = load_file(tmp_path / "model.safetensors")
    quantized = json.loads((tmp_path / "zqkernels.json").read_text())["quantized"]
    assert len(quantized) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    for name in quantized:
        w, s = sd[f"{name}.weight"], sd[f"{name}.weight_scale"]
        assert w.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (w.shape[0], 1)
        out = compressor.decompress({"weight": w, "weight_scale": s}, scheme)["weight"]
        assert torch.equal(out, w.float() * s), name
    # un-merged exactly: q/k/v rows of the fused QKV, without the row padding
    p = "model.layers.0.self_attn."
    assert sd[p + "q_proj.weight"].shape == (64, 64) and sd[p + "k_proj.weight"].shape == (32, 64)
    qkv = torch.cat([sd[p + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(qkv, blk.qkv.weight_q[:128])
    scales = torch.cat([sd[p + n + ".weight_scale"] for n in ("q_proj", "k_proj", "v_proj")]).reshape(-1)
    assert torch.equal(scales, blk.qkv.weight_scale[:128])
    gate, up = sd["model.layers.0.mlp.gate_proj.weight"], sd["model.layers.0.mlp.up_proj.weight"]
    assert gate.shape == up.shape == (96, 64)
    assert torch.equal(torch.cat([gate, up]), blk.fc1.weight_q[:192])


def test_hf_compressed_tensors_loader_reads_ours(tmp_path):
    """transformers' CompressedTensorsHfQuantizer loads our checkpoint and dequantizes every layer
    to exactly weight * weight_scale."""
    model = zqkernels.quantize_model(_llama())
    zqkernels.save_quantized(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path, quantization_config=transformers.CompressedTensorsConfig(dequantize=True)
    )
    sd = load_file(tmp_path / "model.safetensors")
    quantized = json.loads((tmp_path / "zqkernels.json").read_text())["quantized"]
    for name in quantized:
        w = hf.get_submodule(name).weight
        assert torch.equal(w.float(), sd[f"{name}.weight"].float() * sd[f"{name}.weight_scale"]), name
    ids = _ids(128)
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


# ------------------------------------------------------------------------------------------------
# (2) a checkpoint compressed-tensors writes, loaded by us


def _ct_checkpoint(path, dtype):
    model = _llama(dtype)
    qc = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme("W8A8", ["Linear"])}, ignore=["lm_head"])
    apply_quantization_config(model, qc)
    for _, mod in model.named_modules():  # what an observer would compute (static per-channel minmax)
        if hasattr(mod, "weight_scale"):
            with torch.no_grad():
                amax = mod.weight.float().abs().amax(1, keepdim=True)
                mod.weight_scale.copy_((amax / 127).to(mod.weight_scale.dtype))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(path)
    compressor.update_config(path)
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_load_ct_written_checkpoint(tmp_path, dtype):
    sd = _ct_checkpoint(tmp_path, dtype)
    names = sorted(k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale"))
    assert len(names) == 14 and sd[names[0] + ".weight"].dtype == torch.int8
    assert sd[names[0] + ".weight_scale"].dtype == dtype  # compressed-tensors writes scales in the model dtype
    model = zqkernels.load_quantized(tmp_path, fuse=False)
    for name in names:
        q = model.get_submodule(name)
        assert isinstance(q, QLinear) and q.scheme == "w8a8"
        n = q.out_features
        assert torch.equal(q.weight_q[:n], sd[name + ".weight"]), name
        assert torch.equal(q.weight_scale[:n], sd[name + ".weight_scale"].to(torch.float32).reshape(-1)), name
        assert q.weight_scale.dtype == torch.float32
    assert type(model.lm_head) is torch.nn.Linear  # in "ignore": stays float
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    ids = _ids(128)
    with torch.no_grad():
        y = model(ids).logits
        fused = zqkernels.load_quantized(tmp_path)
        assert type(fused.model.layers[0]).__name__ == "QLlamaDecoderLayer"
        n = fused.model.layers[0].qkv.out_features
        merged = torch.cat([sd[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
        assert torch.equal(fused.model.layers[0].qkv.weight_q[:n], merged)
        yf = fused(ids).logits
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y.float() - yf.float()).abs().max() < 0.05 * y.float().abs().max()


# ------------------------------------------------------------------------------------------------
# (3) round trip in a fresh process: bit-identical outputs

_CHILD = textwrap.dedent(
    """
    import sys, torch, zqkernels
    d = sys.argv[1]
    ref = torch.load(d + "/io.pt")
    model = zqkernels.load_quantized(d)
    with torch.no_grad():
        out = model(ref["ids"])
    y = out.logits if hasattr(out, "logits") else out.last_hidden_state
    kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Q")})
    print("KINDS", ",".join(kinds))
    print("EQUAL", torch.equal(y, ref["y"]), (y.float() - ref["y"].float()).abs().max().item())
    """
)


def _round_trip(tmp_path, model, ids, **kw):
    zqkernels.quantize_model(model, **kw)
    with torch.no_grad():
        out = model(ids)
    y = out.logits if hasattr(out, "logits") else out.last_hidden_state
    zqkernels.save_quantized(model, tmp_path)
    torch.save({"ids": ids, "y": y}, tmp_path / "io.pt")
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line.startswith(("EQUAL", "KINDS")))
    assert lines["EQUAL"].startswith("True"), lines
    return lines["KINDS"].split(",")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_llama_fresh_process(tmp_path, dtype):
    kinds = _round_trip(tmp_path, _llama(dtype), _ids(128))
    assert kinds == ["QLinear", "QLlamaDecoderLayer"]


def test_round_trip_bert_fresh_process(tmp_path):
    # "balanced": FC2 stays float inside the fused block -> saved as float under output.dense, ignored
    kinds = _round_trip(tmp_path, _bert(), _ids(100), level="balanced")
    assert kinds == ["QBertLayer", "QLinear"]  # QLinear: the pooler
    ignore = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    sd = load_file(tmp_path / "model.safetensors")
    assert sd["encoder.layer.0.output.dense.weight"].dtype == torch.float32
    assert sd["encoder.layer.0.attention.self.query.weight"].dtype == torch.int8


def test_round_trip_unfused_and_tied(tmp_path):
    """Per-Linear QLinears (fused_blocks=False) and a float lm_head tied to the embeddings."""
    model = _llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = _ids(128)
    _round_trip(tmp_path, model, ids, fused_blocks=False, skip=["lm_head"])
    sd = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd
    loaded = zqkernels.load_quantized(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert type(loaded.model.layers[0]).__name__ == "LlamaDecoderLayer"  # saved unfused: loaded unfused


def test_load_into_given_model(tmp_path):
    model = zqkernels.quantize_model(_llama())
    zqkernels.save_quantized(model, tmp_path)
    skeleton = _llama(seed=5)  # other float weights: all of them must be overwritten
    loaded = zqkernels.load_quantized(tmp_path, model=skeleton)
    assert loaded is skeleton
    ids = _ids(128)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------------------
# other schemes: not implemented


def test_other_schemes_raise(tmp_path):
    model = zqkernels.quantize_model(_llama(), fused_blocks=False)
    model.model.layers[0].mlp.down_proj.scheme = "w4a8"  # stands for any scheme but w8a8
    with pytest.raises(NotImplementedError, match="w4a8"):
        zqkernels.save_quantized(model, tmp_path / "a")

    zqkernels.save_quantized(zqkernels.quantize_model(_llama()), tmp_path / "b")
    cfg_path = tmp_path / "b" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] = "group"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="bits 4"):
        zqkernels.load_quantized(tmp_path / "b")
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits=8, strategy="channel")
    cfg["quantization_config"]["format"] = "float-quantized"
    cfg["quantization_config"]["config_groups"]["group_0"]["format"] = "float-quantized"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="float-quantized"):
        zqkernels.load_quantized(tmp_path / "b")


def test_gpt2_blocks_raise(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=1, n_head=4, n_positions=32)
    model = zqkernels.quantize_model(transformers.GPT2LMHeadModel(cfg).eval())
    with pytest.raises(NotImplementedError, match="QGPT2Block"):
        zqkernels.save_quantized(model, tmp_path)
    model = zqkernels.quantize_model(transformers.GPT2LMHeadModel(cfg).eval(), fused_blocks=False)
    with pytest.raises(NotImplementedError, match="Conv1D"):
        zqkernels.save_quantized(model, tmp_path)
