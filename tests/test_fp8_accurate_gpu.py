"""GPU tests of the accurate FP8 mainloop (src/cuda/sm90_fp8_promote_mainloop.cuh): fp8_gemm's
default (row-wise, promotion every 128 of K) and fp8_block_gemm (block scales applied at the
promotion), against float64 on the dequantized operands. CPU parts of fp8_block_gemm: test_fp8_block.py."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import requires_sm90
from zqkernels.ops import gemm_options

F8 = torch.float8_e4m3fn


pytestmark = requires_sm90("FP8 accurate GEMMs (FP8 tensor cores)")
DEV = "cuda"


def _fp8(shape, scale=1.0, shift=0.0, gen=None):
    return (torch.randn(shape, device=DEV, generator=gen) * scale + shift).clamp(-448, 448).to(F8)


def _block_operands(M, N, K, seed=0, shift=0.0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    xq = _fp8((M, K), 8.0, shift, g)
    wq = _fp8((N, K), 8.0, 0.0, g)
    sx = torch.rand(M, K // 128, device=DEV, generator=g) * 0.01 + 1e-3
    sw = torch.rand(-(-N // 128), K // 128, device=DEV, generator=g) * 0.01 + 1e-3
    return xq, wq, sx, sw


def _block_ref64(xq, wq, sx, sw, bias=None):
    N, K = wq.shape
    dx = xq.double() * sx.double().repeat_interleave(128, 1)
    dw = wq.double() * sw.double().repeat_interleave(128, 0)[:N].repeat_interleave(128, 1)
    y = dx @ dw.t()
    return y if bias is None else y + bias.double()


def _rel(y, ref):
    return float((y.double() - ref).norm() / ref.norm())


def _floor(ref, dtype):
    return float((ref.to(dtype).double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("M,N,K", [(1, 256, 128), (7, 200, 384), (64, 1000, 1024), (130, 4096, 512),
                                   (1000, 1032, 2048), (2048, 768, 4096)])
def test_block_gemm_vs_fp64(M, N, K):
    xq, wq, sx, sw = _block_operands(M, N, K, seed=M + N)
    ref = _block_ref64(xq, wq, sx, sw)
    y = zqkernels.fp8_block_gemm(xq, wq, sx, sw, out_dtype=torch.float16)
    assert y.shape == (M, N) and y.dtype == torch.float16
    assert _rel(y, ref) <= 1.15 * _floor(ref, torch.float16) + 1e-5


def test_block_gemm_every_tile_bias_activation():
    M, N, K = 300, 512, 1024
    xq, wq, sx, sw = _block_operands(M, N, K, seed=3)
    bias = torch.randn(N, device=DEV).to(torch.bfloat16)
    ref = torch.nn.functional.silu(_block_ref64(xq, wq, sx, sw, bias))
    tiles = zqkernels.info()["gemm_tiles"]["sm90_fp8_blockwise"]
    assert tiles
    for t in tiles:
        with gemm_options(tile=t):
            y = zqkernels.fp8_block_gemm(xq, wq, sx, sw, bias, activation="silu")
        assert _rel(y, ref) <= 1.15 * _floor(ref, torch.bfloat16) + 1e-5, t


def test_block_gemm_scale_layouts_agree():
    M, N, K = 37, 256, 512
    xq, wq, sx, sw = _block_operands(M, N, K, seed=5)
    y1 = zqkernels.fp8_block_gemm(xq, wq, sx, sw)  # row-major sx: copied to M-major
    mp = (M + 3) // 4 * 4
    st = torch.zeros(K // 128, mp, device=DEV)
    st[:, :M] = sx.t()
    y2 = zqkernels.fp8_block_gemm(xq, wq, st[:, :M].t(), sw)  # M-major view: read in place
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("K", [4096, 16384])
def test_rowwise_accurate_error_mean_shifted(K):
    """fp8_gemm's default promotes every 128 of K: its error stays at the fp16 output rounding."""
    M, N = 256, 512
    g = torch.Generator(device=DEV).manual_seed(K)
    x = torch.randn(M, K, device=DEV, generator=g) + 0.5
    w = torch.randn(N, K, device=DEV, generator=g) * 0.02
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    ref = (xq.double() * sx.double()[:, None]) @ (wq.double() * sw.double()[:, None]).t()
    y = zqkernels.fp8_gemm(xq, wq, sx, sw, out_dtype=torch.float16)
    assert _rel(y, ref) <= max(5e-4, 1.1 * _floor(ref, torch.float16))
    fast = zqkernels.fp8_gemm(xq, wq, sx, sw, out_dtype=torch.float16, accumulate="fast")
    assert _rel(fast, ref) > _rel(y, ref)  # the fast accumulator is measurably worse here


def test_rowwise_accurate_every_tile_extremes():
    M, N, K = 200, 264, 1024
    g = torch.Generator(device=DEV).manual_seed(1)
    xq = _fp8((M, K), 100.0, 0.0, g)
    xq[0, :] = torch.tensor(448.0).to(F8)
    xq[1, :] = torch.tensor(-448.0).to(F8)
    xq[2, :] = torch.tensor(2.0 ** -9).to(F8)  # the smallest subnormal
    wq = _fp8((N, K), 100.0, 0.0, g)
    sx = torch.rand(M, device=DEV, generator=g) + 0.5
    sw = torch.rand(N, device=DEV, generator=g) * 1e-3
    ref = (xq.double() * sx.double()[:, None]) @ (wq.double() * sw.double()[:, None]).t()
    for t in zqkernels.info()["gemm_tiles"]["sm90_fp8_rowwise"]:  # experiment tiles: bf16 output only
        with gemm_options(tile=t):
            y = zqkernels.fp8_gemm(xq, wq, sx, sw, out_dtype=torch.bfloat16)
        assert torch.isfinite(y).all(), t
        assert _rel(y, ref) <= 1.15 * _floor(ref, torch.bfloat16) + 1e-5, t


def test_block_gemm_graph_and_compile():
    M, N, K = 16, 256, 512
    xq, wq, sx, sw = _block_operands(M, N, K, seed=9)
    eager = zqkernels.fp8_block_gemm(xq, wq, sx, sw)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        zqkernels.fp8_block_gemm(xq, wq, sx, sw)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        out = zqkernels.fp8_block_gemm(xq, wq, sx, sw)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    f = torch.compile(lambda a, b, c, d: zqkernels.fp8_block_gemm(a, b, c, d), fullgraph=True)
    assert torch.equal(f(xq, wq, sx, sw), eager)


def test_block_gemm_opcheck():
    xq, wq, sx, sw = _block_operands(8, 128, 256, seed=11)
    # test_schema compares inputs with ops that have no Float8_e4m3fn kernel ("mul_cuda"): the other
    # three checks run.
    torch.library.opcheck(torch.ops.zqkernels.gemm.default,
                          (xq, wq, sx, sw, None, None, "fp8_blockwise", torch.bfloat16),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_block_gemm_bad_inputs():
    xq, wq, sx, sw = _block_operands(8, 128, 256, seed=13)
    with pytest.raises(ValueError, match="fp8_block_gemm: K must be a multiple of 128"):
        zqkernels.fp8_block_gemm(xq[:, :192], wq[:, :192], sx[:, :1], sw[:, :1])
    with pytest.raises(ValueError, match="fp8_block_gemm: sx must be float32"):
        zqkernels.fp8_block_gemm(xq, wq, sx[:, :1], sw)
    with pytest.raises(ValueError, match="fp8_block_gemm: sw must be float32"):
        zqkernels.fp8_block_gemm(xq, wq, sx, sw.reshape(-1))
    with pytest.raises(TypeError, match="fp8_block_gemm: xq must be a 2-D float8_e4m3fn"):
        zqkernels.fp8_block_gemm(xq.float(), wq, sx, sw)
    with pytest.raises(ValueError, match="fp8_block_gemm: N must be a multiple of 8"):
        zqkernels.fp8_block_gemm(xq, wq[:100], sx, sw)
