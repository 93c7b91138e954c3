"""Checkpoints written by an earlier main load bit-identically with the current code.

tests/data/checkpoints_0327354/ holds small checkpoints (a tiny LLaMA, fp32) that ``save_quantized`` of
commit 0327354 wrote, one per scheme (fused w8a8, fp8, w4a8, w8a8-group float scales, w4a8-fp m1, mixed
W4/8), each with the old code's logits and QLinear buffers (expected.pt; generate.py in that folder made
them). ``load_quantized`` must give the same logits (torch.equal) and the same buffers and per-layer values
(alpha, max_scale, options) in every QLinear.
"""

from __future__ import annotations

import os

import pytest
import torch
import zqkernels
from zqkernels.nn import QLinear
from zqkernels.reference.quantize import unpack_int4

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "checkpoints_0327354")
CASES = sorted(n for n in os.listdir(DATA) if os.path.isfile(os.path.join(DATA, n, "expected.pt")))
UNFUSED = {"fp8", "w4a8_g32", "w8a8_group_float_g32", "w4a8_fp_m1_g32", "w4_8_mixed"}


def old_m16k32_codes(packed: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """INT4 codes [N, K] from the m16k32 layout of commit 0327354: k = 64 kc + 32 s + 8 t + 4 q + j,
    nibble 8 (2 s + q) + 4 hi + j of lane 4 r + t's 16 bytes (the flat stream in the order of the axes
    (nt, kc, r, t, s, q, hi, j))."""
    b = packed.reshape(-1)
    nib = torch.stack((b & 0xF, b >> 4), dim=1).reshape(N // 16, K // 64, 8, 4, 2, 2, 2, 4)  # nt kc r t s q hi j
    codes = nib.permute(0, 6, 2, 1, 4, 3, 5, 7).reshape(N, K)  # -> (nt, hi, r, kc, s, t, q, j)
    return (codes.to(torch.int16) ^ 8).sub(8).to(torch.int8)


def test_cases_present():
    assert set(CASES) == UNFUSED | {"w8a8_fused"}


@pytest.mark.parametrize("name", CASES)
def test_old_checkpoint_loads_bit_identically(name):
    d = os.path.join(DATA, name)
    expected = torch.load(os.path.join(d, "expected.pt"))
    model = zqkernels.load_quantized(d)
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected["logits"])

    loaded = {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}
    old = expected["qlinears"]
    common = sorted(set(old) & set(loaded))
    if name in UNFUSED:
        assert set(loaded) == set(old)
    else:  # fused blocks are re-fused on load: their merged QLinears have the saved names
        assert any(isinstance(m, zqkernels.nn.blocks.QuantizedBlock) for m in model.modules())
        assert common
    for n in common:
        m, want = loaded[n], old[n]
        bufs = {k: v for k, v in m._buffers.items() if v is not None}
        assert set(bufs) == set(want["buffers"]), n
        for k, v in want["buffers"].items():
            got = bufs[k]
            if k == "weight_q" and m.scheme in ("w4a8", "w4a8-floatscale"):
                # the packed layout is internal and changed since (docs/W4A8.md): compare the codes
                K = 2 * v.shape[1]
                got, v = unpack_int4(got, got.shape[0], K), old_m16k32_codes(v, v.shape[0], K)
            assert got.dtype == v.dtype and torch.equal(got, v), f"{n}.{k}"
        for k, v in want["attrs"].items():
            assert getattr(m, k, None) == v, f"{n}.{k}: {getattr(m, k, None)!r} != {v!r}"
