"""Programmatic dependent launch of the library's row-type kernels (src/cuda/pdl.cuh): the row ops,
RoPE + cache write and decode attention are launched with PDL and trigger their successor at entry,
so each must wait (griddepcontrol.wait) before reading what the kernels before it write. A producer
that triggers its dependents at entry, spins 50 us and only then writes the op's input runs right
before the op; its output must equal the same call on the ready input bit for bit, eagerly and under
CUDA graph replay. A chain of such ops (quantize -> W4A8 GEMM with early weights -> SwiGLU + quantize
-> W4A8 GEMM) after a late producer checks that the waits compose."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, check_after_late_producer, debug_setting, requires_gpu, requires_sm90
from zqkernels.ops import decode_attention
from zqkernels.ops.rope import rope_qkv

pytestmark = [requires_gpu, requires_sm90("programmatic dependent launch (sm_90)")]


@pytest.mark.parametrize("M", [1, 16, 300])
def test_row_ops_wait(M):
    K = 4096
    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    r = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    w = torch.rand(K, device=DEV, dtype=torch.bfloat16) + 0.5
    check_after_late_producer(lambda a: zqkernels.quantize_per_token(a), [x], f"quantize_per_token M={M}")
    check_after_late_producer(lambda a, b: zqkernels.ops.add_rmsnorm_quant(a, b, w), [x, r],
                               f"add_rmsnorm_quant M={M}")
    gu = torch.randn(M, 2 * K, device=DEV, dtype=torch.bfloat16)
    check_after_late_producer(lambda a: zqkernels.ops.silu_mul_quant(a), [gu], f"silu_mul_quant M={M}")
    # 14336 wide: at M <= 32 a cluster of 8 CTAs a row (row_quant.cu, cluster_of); 4096 forced into 4
    gu = torch.randn(M, 2 * 14336, device=DEV, dtype=torch.bfloat16)
    check_after_late_producer(lambda a: zqkernels.ops.silu_mul_quant(a), [gu], f"silu_mul_quant K=14336 M={M}")
    with debug_setting("row_cluster", 4):
        check_after_late_producer(lambda a, b: zqkernels.ops.add_rmsnorm_quant(a, b, w), [x, r],
                                   f"add_rmsnorm_quant 4 CTAs M={M}")


def test_rope_qkv_waits():
    B, S, H, KV, hd = 2, 3, 8, 2, 128
    qkv = torch.randn(B, S, (H + 2 * KV) * hd, device=DEV, dtype=torch.bfloat16)
    cos = torch.randn(B, S, hd, device=DEV, dtype=torch.bfloat16)
    sin = torch.randn(B, S, hd, device=DEV, dtype=torch.bfloat16)
    check_after_late_producer(lambda a, c, s: rope_qkv(a, c, s, H, KV, hd), [qkv, cos, sin], "rope_qkv")


@pytest.mark.parametrize("L", [200, 1024])
def test_decode_attention_waits(L):
    B, H, KV, hd = 2, 32, 8, 128
    q = torch.randn(B, H, 1, hd, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(B, KV, L, hd, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(B, KV, L, hd, device=DEV, dtype=torch.bfloat16)
    mask = torch.ones(B, 1, 1, L, device=DEV, dtype=torch.bool)
    mask[:, :, :, L - L // 8:] = False
    check_after_late_producer(lambda a, b, c: decode_attention(a, b, c, mask), [q, k, v], f"decode_attention L={L}")


@pytest.mark.parametrize("early", [True, False])
def test_decode_chain_waits(early):
    """quantize -> w4a8_gemm (gate_up, early weights) -> silu_mul_quant -> w4a8_gemm (down): every link
    PDL-launched, the first input written late."""
    M, K, inter = 1, 1024, 2048
    torch.manual_seed(3)
    wq1, sw1, sg1 = zqkernels.quantize_weight(torch.randn(2 * inter, K, device=DEV) * 0.02, fmt="int4", scale="int",
                                              group_size=128, alpha=16)
    wq2, sw2, sg2 = zqkernels.quantize_weight(torch.randn(K, inter, device=DEV) * 0.02, fmt="int4", scale="int",
                                              group_size=128, alpha=16)

    def chain(x):
        xq, sx = zqkernels.quantize_per_token(x)
        h = zqkernels.w4a8_gemm(xq, wq1, sx, sw1, sg1, max_scale=16, path="stream")
        hq, sh = zqkernels.ops.silu_mul_quant(h)
        return zqkernels.w4a8_gemm(hq, wq2, sh, sw2, sg2, max_scale=16, path="stream")

    x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    with debug_setting("w4a8_early_weights", early):
        check_after_late_producer(chain, [x], f"decode chain early={early}")
