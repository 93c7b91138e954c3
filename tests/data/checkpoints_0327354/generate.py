"""Writes the checkpoints of this folder with the code of commit 0327354 (the main before the scheme
objects), for tests/test_checkpoint_compat.py: checkpoints written by that main must load
bit-identically with the current code. Run from the repository root:

    rm -rf /tmp/oldmain && mkdir /tmp/oldmain && git archive 0327354 | tar -x -C /tmp/oldmain
    PYTHONPATH=/tmp/oldmain/python python tests/data/checkpoints_0327354/generate.py

Each <name>/ holds what ``save_quantized`` wrote (model.safetensors, config.json, zqkernels.json) and
expected.pt: {"input_ids", "logits" (the quantized model's, before saving), "qlinears": {module name:
{"buffers": {buffer: tensor}, "attrs": {scheme, options, alpha, max_scale}}}}.
"""

from __future__ import annotations

import os
import shutil
import sys

import torch
import transformers
import zqkernels
from zqkernels import FP8Config, W4A8Config, W4A8FPConfig, W8A8Config, W8A8GroupConfig
from zqkernels.nn import QLinear

HERE = os.path.dirname(os.path.abspath(__file__))
ATTRS = ("scheme", "group_size", "scale", "scale_policy", "alpha", "max_scale")

CASES = {
    "w8a8_fused": (W8A8Config(), None),
    "fp8": (FP8Config(), None),
    "w4a8_g32": (W4A8Config(group_size=32), None),
    "w8a8_group_float_g32": (W8A8GroupConfig(group_size=32, scale="float"), None),
    "w4a8_fp_m1_g32": (W4A8FPConfig(group_size=32, scale_policy="m1"), None),
    # ZEROQUANT_W4_8 with a group size the tiny model's MLP can take (in_features 64)
    "w4_8_mixed": (W8A8Config(), {"*.mlp.*": W4A8Config(group_size=32), "*": W8A8Config()}),
}


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).float().eval()


def snapshot(model: torch.nn.Module) -> dict:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QLinear):
            out[name] = {
                "buffers": {k: v.detach().clone() for k, v in m._buffers.items() if v is not None},
                "attrs": {k: getattr(m, k, None) for k in ATTRS},
            }
    return out


def main() -> None:
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 12))
    for name, (cfg, module_configs) in CASES.items():
        model = tiny_llama()
        zqkernels.quantize_(model, cfg, module_configs=module_configs)
        with torch.no_grad():
            logits = model(ids).logits
        out = os.path.join(HERE, name)
        shutil.rmtree(out, ignore_errors=True)
        zqkernels.save_quantized(model, out)
        with torch.no_grad():  # the old code's own round trip is exact
            again = zqkernels.load_quantized(out)(ids).logits
        assert torch.equal(again, logits), name
        torch.save({"input_ids": ids, "logits": logits, "qlinears": snapshot(model)}, os.path.join(out, "expected.pt"))
        print(name, sorted({m.scheme for m in model.modules() if isinstance(m, QLinear)}), file=sys.stderr)


if __name__ == "__main__":
    main()
