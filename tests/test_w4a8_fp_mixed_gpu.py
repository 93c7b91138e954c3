"""w4a8_fp_gemm's mixed-input path on the GPU (src/cuda/sm90_w4a8_mainloop.cuh, mma_fp4: the packed
FP4 weights converted to E4M3 in registers with their group scales - power-of-two by exponent
arithmetic, float ratios by an fp32 multiply - fed to register-sourced FP8 wgmma, promoted to fp32
every 128 of K; docs/FP8.md) against the float64 reference of the exact FP8 weights: M swept
1..300 plus 1024 / 4096, every group size and scale policy, N and K that are not powers of two
(K % 128 == 64: a half k-tile), long K with extreme values, every built tile, agreement with the
streaming and converting paths, the epilogue, graphs and torch.compile."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, graph_replay, poison_next_allocation, requires_gpu, requires_sm90
from test_fp8_gpu import F8, assert_fp8_close, ref_of, w4a8_inputs
from zqkernels.ops import gemm_options
from zqkernels.reference.quantize import pack_fp4

pytestmark = [requires_gpu, requires_sm90("the W4A8 mixed-input mainloop (sm_90a)")]


def mixed(a: dict, **kw) -> torch.Tensor:
    with gemm_options(path="mixed"):
        return zqkernels.w4a8_fp_gemm(**a, **kw)


@pytest.mark.parametrize("policy", ["m2", "m1", "free"])
@pytest.mark.parametrize("g", [32, 64, 128, None])
def test_fp_mixed_sweep(policy, g):
    for N, K in [(16, 64), (272, 576), (400, 1088), (1024, 4096)]:
        if g is not None and K % g:
            continue
        for i, M in enumerate([1, 7, 33, 64, 65, 129, 200, 300]):
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            a = w4a8_inputs(M, N, K, g, policy, out_dtype, bias=i % 2 == 0)
            poison_next_allocation(M * N * 4, 0xFF)
            out = mixed(a)
            assert_fp8_close(out, ref_of(a), f"mixed {policy} g={g} M={M} N={N} K={K} {out_dtype}")


@pytest.mark.parametrize("policy", ["m2", "free"])
def test_fp_mixed_large_m(policy):
    for M, N, K in [(1024, 1536, 2048), (4096, 512, 1024)]:
        a = w4a8_inputs(M, N, K, 128, policy)
        assert_fp8_close(mixed(a), ref_of(a), f"{policy} M={M}")


def test_fp_mixed_every_m_up_to_300():
    base = w4a8_inputs(300, 128, 512, 64, "m2")
    ref = ref_of(base)
    for M in range(1, 301):
        a = dict(base, xq=base["xq"][:M], sx=base["sx"][:M])
        assert_fp8_close(mixed(a), ref[:M], f"M={M}")


def test_fp_mixed_long_k_extremes():
    """K = 16384 of products at the top of both ranges (codes +-6, exponent 0, activations +-448,
    signs arranged so the sum grows to ~7e7 and shrinks again): the per-k-tile promotion keeps the
    result within the accurate FP8 bound."""
    M, N, K, g = 130, 64, 16384, 128
    codes = torch.full((N, K), 7, dtype=torch.uint8)  # +6
    codes[:, K // 2 :] = 15  # -6
    codes[1::2, ::3] = 5  # +3
    e = torch.zeros(N, K // g, dtype=torch.int8)
    e[:, 1::4] = -5
    xq = torch.full((M, K), 448.0).to(F8)
    xq[::2, K // 4 :] = torch.tensor(-448.0).to(F8)
    a = dict(xq=xq.to(DEV), wq=pack_fp4(codes).to(DEV), sx=torch.full((M,), 2.0**-12, device=DEV),
             sw=torch.full((N,), 2.0**-10, device=DEV), sg=e.to(DEV), bias=None, out_dtype=torch.float32)
    assert_fp8_close(mixed(a), ref_of(a), "long K")


def test_fp_mixed_matches_stream_and_convert():
    a = w4a8_inputs(96, 2048, 4096, 128, "m2", bias=True)
    ref = ref_of(a, activation="silu")
    for path in ("mixed", "convert", "stream"):
        with gemm_options(path=path):
            out = zqkernels.w4a8_fp_gemm(**a, activation="silu")
        assert_fp8_close(out, ref, path)


@pytest.mark.parametrize("policy", ["m2", "free"])
def test_fp_mixed_every_built_tile(policy):
    recipe = "w4a8_fp_mixed_pow2" if policy == "m2" else "w4a8_fp_mixed_float"
    tiles = zqkernels.info()["gemm_tiles"][f"sm90_{recipe}"]
    assert "swap_128x64x128_coop" in tiles and "swap_128x128x128_coop" in tiles
    a = w4a8_inputs(200, 400, 1088, 64, policy)
    ref = ref_of(a)
    for t in tiles:
        with gemm_options(path="mixed", tile=t):
            out = zqkernels.w4a8_fp_gemm(**a)
        assert_fp8_close(out, ref, f"{policy} tile {t}")


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
def test_fp_mixed_activation(act):
    a = w4a8_inputs(300, 256, 512, 128, "m2", bias=True)
    assert_fp8_close(mixed(a, activation=act), ref_of(a, act), act)


def test_fp_mixed_auto_graph_and_compile():
    a = w4a8_inputs(160, 512, 1024, 64, "m2")
    ref = mixed(a)
    assert_fp8_close(ref, ref_of(a), "mixed")
    with gemm_options(path="mixed"):
        assert torch.equal(graph_replay(lambda: zqkernels.w4a8_fp_gemm(**a)), ref)
        f = torch.compile(lambda x: zqkernels.w4a8_fp_gemm(x, a["wq"], a["sx"], a["sw"], a["sg"]), fullgraph=True)
        assert torch.equal(f(a["xq"]), ref)


def test_fp_mixed_bad_tile():
    a = w4a8_inputs(100, 64, 128, 32, "m2")
    with pytest.raises(ValueError, match=r"w4a8_fp_gemm: tile 'nope' is not built for sm90_w4a8_fp_mixed_pow2"):
        with gemm_options(path="mixed", tile="nope"):
            zqkernels.w4a8_fp_gemm(**a)


def test_w4a8_fast_checks_accept_the_common_calls():
    """The eager fast check (a few attribute reads instead of the full checks) recognises the common
    CUDA call of both W4A8 GEMMs, and anything unusual goes to the full checks and their errors."""
    from zqkernels.ops.gemm_fast import fast_ok_w4a8

    a = w4a8_inputs(8, 256, 512, 128, "m2", bias=True)
    args = (a["xq"], a["wq"], a["sx"], a["sw"], a["sg"], a["bias"], a["out_dtype"])
    assert fast_ok_w4a8(*args, F8, (torch.int8, torch.float32))
    assert not fast_ok_w4a8(*args, torch.int8, (torch.int32, torch.float32))  # wrong activation type
    bad = dict(a, sg=a["sg"][:, :3])
    with pytest.raises(ValueError, match="w4a8_fp_gemm: sg must have K // group_size columns"):
        zqkernels.w4a8_fp_gemm(**bad)
    w = torch.randn(256, 512, device=DEV)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=64)
    xq, sx = zqkernels.quantize_per_token(torch.randn(8, 512, device=DEV))
    assert fast_ok_w4a8(xq, wq, sx, sw, sg, None, torch.bfloat16, torch.int8, (torch.int32, torch.float32))
    # max_scale (what a W4A8 QLinear passes on every call) takes the fast check as a plain int in range;
    # a bool, a float, an out-of-range bound or float scales go to the full checks and their errors.
    i4 = (xq, wq, sx, sw, sg, None, torch.bfloat16, torch.int8, (torch.int32, torch.float32))
    assert fast_ok_w4a8(*i4, 16) and fast_ok_w4a8(*i4, 2**15)
    for bad_bound in (True, 16.0, 0, 2**16):
        assert not fast_ok_w4a8(*i4, bad_bound)
    assert not fast_ok_w4a8(*i4[:4], sg.float(), *i4[5:], 16)
    with pytest.raises(ValueError, match=r"w4a8_gemm: max_scale must be an int in \[1, 65535\]"):
        zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, max_scale=16.0)
    with pytest.raises(ValueError, match="w4a8_gemm: max_scale applies to integer scales"):
        zqkernels.w4a8_gemm(xq, wq, sx, sw, sg.float(), max_scale=16)
    with pytest.raises(TypeError, match="w4a8_gemm: sg must be the group scales"):
        zqkernels.w4a8_gemm(xq, wq, sx, sw, sg.to(torch.int16))
