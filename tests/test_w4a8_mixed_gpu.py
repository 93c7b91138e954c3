"""w4a8_gemm's mixed-input path on the GPU (src/cuda/sm90_w4a8_mainloop.cuh: the packed INT4 weights
converted to int8 in registers and fed to register-sourced wgmma; docs/W4A8.md) against the exact
reference: M swept 1..300 plus 1024 / 4096, every group size, both scale kinds, N and K that are not
powers of two (K % 128 == 64: a half k-tile), the int32 overflow bound with adversarial inputs,
every built tile, agreement with the streaming and converting paths, graphs and torch.compile."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, assert_gemm_close, graph_replay, poison_next_allocation, requires_gpu, requires_sm90
from test_w4a8_gpu import assert_close, inputs, ref_of
from zqkernels.ops import gemm_options
from zqkernels.reference import w4a8_gemm_ref
from zqkernels.reference.quantize import pack_int4

pytestmark = [requires_gpu, requires_sm90("the W4A8 mixed-input mainloop (sm_90a)")]


def mixed(a: dict, **kw) -> torch.Tensor:
    with gemm_options(path="mixed"):
        return zqkernels.w4a8_gemm(**a, **kw)


@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_mixed_sweep(scale, g):
    for N, K in [(16, 256), (272, 320), (400, 1088), (1024, 4096)]:
        if g is not None and K % g:
            continue
        for i, M in enumerate([1, 7, 64, 65, 100, 129, 200, 300]):
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            a = inputs(M, N, K, g, scale, out_dtype, bias=i % 2 == 0)
            poison_next_allocation(M * N * 4, 0xFF)
            out = mixed(a)
            assert_close(out.cpu(), ref_of(a), f"{scale} g={g} M={M} N={N} K={K} {out_dtype}", scale == "int")


@pytest.mark.parametrize("scale", ["int", "float"])
def test_mixed_large_m(scale):
    for M, N, K in [(1024, 1536, 2048), (4096, 512, 1024)]:
        a = inputs(M, N, K, 128, scale)
        assert_close(mixed(a).cpu(), ref_of(a), f"{scale} M={M}", scale == "int")


def test_mixed_every_m_up_to_300():
    N, K = 128, 512
    base = inputs(300, N, K, 64, "int")
    ref = ref_of(base)
    for M in range(1, 301):
        a = dict(base, xq=base["xq"][:M], sx=base["sx"][:M])
        assert_close(mixed(a).cpu(), ref[:M], f"M={M}", True)


def test_mixed_matches_stream_and_convert():
    a = inputs(96, 2048, 4096, 128, "int", bias=True)
    outs = {}
    for path in ("mixed", "convert", "stream"):
        with gemm_options(path=path):
            outs[path] = zqkernels.w4a8_gemm(**a, activation="silu").cpu()
    ref = ref_of(a, activation="silu")
    for path, out in outs.items():
        assert_gemm_close(out, ref, path)


@pytest.mark.parametrize("K", [16384, 28672])
def test_mixed_overflow_bound_adversarial(K):
    """All activations -128, all weights -8, integer scales at 2^15: two k-blocks would overflow
    int32; the host's span / flush schedule (one k-block a span, a flush every span) keeps the
    sums exact."""
    M, N, g = 130, 32, 128
    xq = torch.full((M, K), -128, dtype=torch.int8, device=DEV)
    wq = pack_int4(torch.full((N, K), -8, dtype=torch.int8)).to(DEV)
    sg = torch.full((N, K // g), 2**15, dtype=torch.int32, device=DEV)
    sg[1::2] = 2**14 + 1
    sx = torch.full((M,), 2.0**-20, device=DEV)
    sw = torch.full((N,), 2.0**-16, device=DEV)
    with gemm_options(path="mixed"):
        out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, None, torch.float32, max_scale=2**15)
    exact = torch.tensor([K * 1024 * int(s) for s in sg[:, 0].tolist()], dtype=torch.float64) * 2.0**-36
    assert torch.allclose(out.double().cpu(), exact.expand(M, N), rtol=2**-22, atol=0), (out[0, :2], exact[:2])
    ref = w4a8_gemm_ref(xq.cpu(), wq.cpu(), sx.cpu(), sw.cpu(), sg.cpu(), None, torch.float32)
    torch.testing.assert_close(out.cpu(), ref, rtol=2**-22, atol=0)


@pytest.mark.parametrize("scale", ["int", "float"])
def test_mixed_every_built_tile(scale):
    tiles = zqkernels.info()["gemm_tiles"][f"sm90_w4a8_mixed_{scale}"]
    assert "swap_128x64x128_coop" in tiles
    a = inputs(200, 400, 1088, 64, scale)
    ref = ref_of(a)
    for t in tiles:  # experiment tiles: bf16 output only
        with gemm_options(path="mixed", tile=t):
            out = zqkernels.w4a8_gemm(**a)
        assert_close(out.cpu(), ref, f"{scale} tile {t}", scale == "int")


def test_mixed_graph_and_compile():
    a = inputs(160, 512, 1024, 64, "int")
    ref = zqkernels.w4a8_gemm(**a)  # auto: M > 64 takes the mixed path
    assert torch.equal(graph_replay(lambda: zqkernels.w4a8_gemm(**a)), ref)
    f = torch.compile(lambda x: zqkernels.w4a8_gemm(x, a["wq"], a["sx"], a["sw"], a["sg"]), fullgraph=True)
    assert torch.equal(f(a["xq"]), ref)


def test_mixed_bad_path():
    a = inputs(8, 64, 256, 64, "int")
    with pytest.raises(ValueError, match=r"w4a8_gemm: path must be one of \('auto', 'stream', 'mixed', 'convert'\), got 'fast'"):
        zqkernels.w4a8_gemm(**a, path="fast")


@pytest.mark.parametrize("g", [32, 64, 128, None])
@pytest.mark.parametrize("alpha", [8, 16])
def test_fused_small_scales(g, alpha):
    """Integer scales <= 16 (alpha <= 16, max_scale <= 16) run the fused mode: scales multiplied into
    the weights in registers, one exact int32 sum."""
    for N, K in [(272, 320), (1024, 4096)]:
        if g is not None and K % g:
            continue
        w = torch.randn(N, K, device=DEV) * 0.02
        w[:, : K // 3] *= 6
        wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=g, alpha=alpha)
        assert int(sg.max()) <= alpha
        for i, M in enumerate([1, 65, 130, 300, 1024]):
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
            a = dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=out_dtype)
            out = mixed(a, max_scale=alpha)
            assert_close(out.cpu(), ref_of(a), f"alpha={alpha} g={g} M={M} N={N} K={K}", True)


def test_fused_adversarial_extremes():
    """Codes -8 and 7, scales 16 and 1, activations -128 and 127: every byte of the fused conversion
    at its limits (16 * -8 = -128), and a sum far above 2^24."""
    M, N, K, g = 100, 64, 8192, 64
    codes = torch.full((N, K), -8, dtype=torch.int8)
    codes[1::2] = 7
    wq = pack_int4(codes).to(DEV)
    sg = torch.full((N, K // g), 16, dtype=torch.int32, device=DEV)
    sg[:, 1::2] = 1
    xq = torch.full((M, K), -128, dtype=torch.int8, device=DEV)
    xq[1::2] = 127
    sx = torch.full((M,), 2.0**-10, device=DEV)
    sw = torch.full((N,), 2.0**-12, device=DEV)
    with gemm_options(path="mixed"):
        out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, None, torch.float32, max_scale=16)
    ref = w4a8_gemm_ref(xq.cpu(), wq.cpu(), sx.cpu(), sw.cpu(), sg.cpu(), None, torch.float32)
    torch.testing.assert_close(out.cpu(), ref, rtol=2**-22, atol=0)
