"""The W4A8 mixed-input mainloop (src/cuda/sm90_w4a8_mainloop.cuh) on its stream-K tile
(swap_128x64x128_coop_sk): the K loop of few weight tiles spread over every SM, so a work unit starts
and ends at any k-tile and partial sums meet in the workspace. Every mixed recipe (INT4 with fused
scales <= 16, zero points, folded integer scales, float scales; FP4 with power-of-two and float
scales) against its exact reference: long K over one to eight weight tiles, K % 128 == 64 (the last
k-tile half past K, whose scale slots the producer pads), every group size, M from 1 to 200, graphs."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    assert_gemm_close,
    calc_diff,
    graph_replay,
    poison_next_allocation,
    requires_gpu,
    requires_sm90,
)
from test_fp8_gpu import assert_fp8_close, ref_of, w4a8_inputs
from zqkernels.ops import gemm_options
from zqkernels.reference import w4a8_gemm_ref

pytestmark = [requires_gpu, requires_sm90("the W4A8 mixed-input mainloop (sm_90a)")]

SK = "swap_128x64x128_coop_sk"
SHAPES = [(128, 14336), (272, 4160), (1040, 8192)]  # (N, K): 1 / 3 / 9 weight tiles of 128 rows
MS = [1, 16, 64, 65, 200]
INT4 = {  # format -> (quantize_weight kwargs, w4a8_gemm kwargs)
    "zp": ({"scale": "zp"}, {}),
    "alpha16": ({"scale": "int", "alpha": 16}, {"max_scale": 16}),
    "int": ({"scale": "int", "alpha": 1024}, {"max_scale": 1024}),
    "float": ({"scale": "float"}, {}),
}


def int4_inputs(M, N, K, g, fmt, out_dtype):
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 6
    w[: N // 4] = w[: N // 4].abs()  # skewed groups (zero points away from 8)
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, **INT4[fmt][0])
    b = torch.randn(N, device=DEV).to(out_dtype) if M % 2 else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=b, out_dtype=out_dtype)


def int4_ref(a):
    return w4a8_gemm_ref(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()})


def close(out, ref, what, exact):
    """Exact integer sums: the epilogue's rounding (and fp32 additions of stream-K partial sums);
    float scales: a few fp32 roundings a group more."""
    if exact and out.numel() >= 4096:
        assert_gemm_close(out.cpu(), ref, what)
        return
    o, r = out.double().cpu(), ref.double().cpu()
    rtol = (1 if exact else 4) * {torch.bfloat16: 2**-8, torch.float16: 2**-11}[out.dtype]
    err = (o - r).abs()
    bad = err > 2 * rtol * r.abs() + (1e-3 if exact else 2e-3) * r.abs().amax(dim=1, keepdim=True)
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off (worst abs err {float(err.max()):.3g})"
    assert calc_diff(o, r) < 1e-5, what


def cases(g):
    """(M, N, K, out_dtype, i) of the sweep: every shape whose K the group size divides, every M."""
    for N, K in SHAPES:
        if g is None or K % g == 0:
            for i, M in enumerate(MS):
                yield M, N, K, (torch.bfloat16, torch.float16)[i % 2], i


@pytest.mark.parametrize("fmt", list(INT4))
@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_int4_stream_k(fmt, g):
    for M, N, K, out_dtype, _ in cases(g):
        a = int4_inputs(M, N, K, g, fmt, out_dtype)
        poison_next_allocation(M * N * 4, 0xFF)
        with gemm_options(tile=SK, path="mixed"):
            out = zqkernels.w4a8_gemm(**a, **INT4[fmt][1])
        close(out, int4_ref(a), f"{fmt} g={g} M={M} N={N} K={K} {out_dtype}", exact=fmt != "float")


@pytest.mark.parametrize("policy", ["m2", "free"])
@pytest.mark.parametrize("g", [32, 64, 128, None])
def test_fp4_stream_k(policy, g):
    for M, N, K, out_dtype, i in cases(g):
        a = w4a8_inputs(M, N, K, g, policy, out_dtype, bias=i % 2 == 0)
        poison_next_allocation(M * N * 4, 0xFF)
        with gemm_options(tile=SK, path="mixed"):
            out = zqkernels.w4a8_fp_gemm(**a)
        assert_fp8_close(out, ref_of(a), f"{policy} g={g} M={M} N={N} K={K} {out_dtype}")


def test_stream_k_graph_and_default_tile_agree():
    """Under graph replay (the workspace's barriers re-initialised each replay) the stream-K tile gives
    the same sums as the data-parallel tile the dispatch table picks."""
    a = int4_inputs(48, 256, 14336, 128, "zp", torch.bfloat16)
    with gemm_options(path="mixed"):
        dp = zqkernels.w4a8_gemm(**a)

    def sk():
        with gemm_options(tile=SK, path="mixed"):
            return zqkernels.w4a8_gemm(**a)

    for _ in range(2):
        y = graph_replay(sk)
        close(y, int4_ref(a), "graph", exact=True)
    assert calc_diff(y.double(), dp.double()) < 1e-6
