"""A model converted with the default group size ("auto": 128 on some GEMMs, 64 on others) saves and
loads back as fused blocks, bit-identically (nn/hf_model.py re-fuses parts whose group sizes are
exactly auto's per-layer picks)."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from zqkernels.schemes import get_scheme

transformers = pytest.importorskip("transformers")


def test_auto_group_sizes_reload_fused(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=192, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64)
    m = transformers.LlamaForCausalLM(cfg).eval()
    zqkernels.quantize_(m, zqkernels.SchemeConfig(get_scheme("test", "w4a8", group_size="auto")))
    blocks = [b for b in m.modules() if isinstance(b, zqkernels.QuantizedBlock)]
    assert len(blocks) == 2
    groups = {g for blk in blocks for g in (blk.fc2.qscheme.group(), blk.qkv.qscheme.group())}
    assert groups == {128, 64}  # down_proj: in_features 512 -> 128; the others: 192 -> 64
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        want = m(ids).logits
    zqkernels.save_quantized(m, tmp_path)
    back = zqkernels.load_quantized(tmp_path)
    assert sum(isinstance(b, zqkernels.QuantizedBlock) for b in back.modules()) == 2
    with torch.no_grad():
        assert torch.equal(back(ids).logits, want)
