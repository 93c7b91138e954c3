"""Tensor-parallel splits of QLinear (nn/tp.py, the schemes' shard rules) on the CPU without a process
group: every scheme's colwise parts give the unsplit layer's output exactly, its rowwise parts hold
exactly its weights (cut, not re-quantized) and sum to its output up to activation rounding; splits
that break a group, a scale block or a packed layout raise. tests/test_tp_gloo.py runs them across
processes."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from zqkernels.nn import QLinear
from zqkernels.nn.tp import shard_qlinear
from zqkernels.schemes import SCHEMES

SCHEME_NAMES = sorted(SCHEMES)
# rowwise sum vs the unsplit layer: relative error of the output (per-slice activation scales)
ROW_TOL = {"fp8": 0.05, "w4a8-fp": 0.05}


def layer(scheme, N=512, K=1024, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=bias)
    return QLinear.from_linear(lin, scheme).eval()


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
@pytest.mark.parametrize("world", [2, 4])
def test_colwise_parts_give_the_layer_exactly(scheme, world):
    m = layer(scheme)
    x = torch.randn(7, m.in_features)
    parts = [shard_qlinear(m, "colwise", r, world) for r in range(world)]
    assert all(p.out_features == m.out_features // world and p.in_features == m.in_features for p in parts)
    assert torch.equal(torch.cat([p(x) for p in parts], dim=1), m(x))
    w = m.qscheme.dequantize(m)
    assert torch.equal(torch.cat([p.qscheme.dequantize(p) for p in parts], dim=0), w)


@pytest.mark.parametrize("scheme", SCHEME_NAMES)
@pytest.mark.parametrize("world", [2, 4])
def test_rowwise_parts_hold_the_weights_and_sum_to_the_layer(scheme, world):
    m = layer(scheme)
    K = m.in_features
    x = torch.randn(7, K)
    parts = [shard_qlinear(m, "rowwise", r, world) for r in range(world)]
    k = K // world
    assert [p.bias is not None for p in parts] == [True] + [False] * (world - 1)
    w = m.qscheme.dequantize(m)
    assert torch.equal(torch.cat([p.qscheme.dequantize(p) for p in parts], dim=1), w)  # same bits
    y = sum(p(x[:, r * k : (r + 1) * k]).double() for r, p in enumerate(parts))
    ref = m(x).double()
    assert float((y - ref).norm() / ref.norm()) < ROW_TOL.get(scheme, 0.02)


def test_lorc_factors_split_with_the_layer():
    m = layer("w8a8")
    m.add_lorc(torch.randn(m.out_features, m.in_features) * 0.02, rank=4)
    x = torch.randn(3, m.in_features)
    col = [shard_qlinear(m, "colwise", r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p(x) for p in col], dim=1), m(x))
    row = [shard_qlinear(m, "rowwise", r, 2) for r in range(2)]
    assert row[0].lorc_a.shape == (m.in_features // 2, 4) and row[1].lorc_b.shape == (4, m.out_features)


def test_bad_splits_raise():
    with pytest.raises(ValueError, match=r"shard_qlinear: 8 ranks: scheme 'w4a8' cannot split in_features at "
                       r"\[0, 128\): the group scales come in units of 256 columns"):
        shard_qlinear(QLinear.from_linear(torch.nn.Linear(1024, 256), "w4a8", group_size=256), "rowwise", 0, 8)
    with pytest.raises(ValueError, match=r"scheme 'fp8-block' cannot split out_features at \[0, 64\): the weight "
                       r"scales come in units of 128 rows"):
        shard_qlinear(layer("fp8-block"), "colwise", 0, 8)
    with pytest.raises(ValueError, match=r"a colwise part \[8, 1024\] of the layer \[512, 1024\] breaks its "
                       r"scheme's layout: .*out_features % 16 == 0"):
        shard_qlinear(layer("w4a8"), "colwise", 1, 64)
    with pytest.raises(ValueError, match="in_features 1024 does not split into 3 equal parts"):
        shard_qlinear(layer("w8a8"), "rowwise", 0, 3)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        shard_qlinear(layer("w8a8"), "colwise", 2, 2)
    with pytest.raises(ValueError, match="style must be one of"):
        shard_qlinear(layer("w8a8"), "diagonal", 0, 2)
    with pytest.raises(TypeError, match="m must be a QLinear, got Linear"):
        shard_qlinear(torch.nn.Linear(16, 16), "colwise", 0, 2)


def test_per_channel_group_scales_stay_whole_in_a_rowwise_split():
    m = QLinear.from_linear(torch.nn.Linear(512, 128), "w4a8", group_size=512)  # one group per row
    parts = [shard_qlinear(m, "rowwise", r, 2) for r in range(2)]
    assert all(p.weight_group_scale.shape == (128, 1) for p in parts)
    assert torch.equal(torch.cat([p.qscheme.dequantize(p) for p in parts], dim=1), m.qscheme.dequantize(m))


def _llama_blocks():
    transformers = pytest.importorskip("transformers")
    import zqkernels

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=256, num_hidden_layers=1)
    m = transformers.LlamaForCausalLM(cfg).eval()
    zqkernels.quantize_(m, zqkernels.nn.W8A8Config())
    return m


def test_shard_block_rules():
    from zqkernels.nn.tp import shard_block

    m = _llama_blocks()
    blk = m.model.layers[0]
    with pytest.raises(ValueError, match="4 query heads and 2 KV heads: both must split into 4 equal parts"):
        shard_block(blk, 0, 4)
    with pytest.raises(TypeError, match="blk must be a fused QuantizedBlock, got Linear"):
        shard_block(torch.nn.Linear(4, 4), 0, 2)
    ids = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        ref = m(ids).logits
        shard_block(blk, 0, 1)  # one rank: the whole block, no all-reduce
        assert torch.equal(m(ids).logits, ref)
    part = shard_block(_llama_blocks().model.layers[0], 1, 2)  # rank 1 of 2: its heads and MLP rows
    assert (part.heads, part.kv_heads) == (2, 1)
    assert part.qkv.out_features == (2 + 1 + 1) * 32 and part.attn_out.in_features == 64
    assert part.fc1.out_features == 256 and part.fc2.in_features == 128 and part.attn_out.bias is None
    with pytest.raises(ValueError, match="already split"):
        shard_block(part, 0, 2)


def test_a_split_model_is_not_saved(tmp_path):
    import zqkernels
    from zqkernels.nn.tp import shard_block

    m = _llama_blocks()
    shard_block(m.model.layers[0], 0, 2)
    with pytest.raises(ValueError, match="one rank's part of a tensor-parallel split"):
        zqkernels.save_quantized(m, tmp_path / "ckpt")


def test_load_split_needs_an_initialised_process_group(tmp_path):
    pytest.importorskip("safetensors")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    m = QLinear.from_linear(torch.nn.Linear(64, 64))
    wrapper = torch.nn.Sequential(m)
    zqkernels.save_quantized(wrapper, tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="load_quantized: torch.distributed is not initialised"):
        zqkernels.load_quantized(tmp_path / "ckpt", model=torch.nn.Sequential(torch.nn.Linear(64, 64)), tp=True)

