"""FP8 and W4A8-FP on the GPU against the float64 references: token-wise FP8 quantization (bit for
bit), fp8_gemm (every FP8 kernel of the registry, both accumulation modes), the FP4 -> FP8
conversion (bit for bit, all 16 codes x every exponent), w4a8_fp_gemm (both paths, group sizes,
M sweep, epilogue), CUDA graphs, torch.compile, and the errors (docs/FP8.md)."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    calc_diff,
    debug_setting,
    graph_replay,
    poison_next_allocation,
    requires_gpu,
    requires_sm90,
)
from zqkernels import _ext
from zqkernels.reference import fp8_gemm_ref, quantize_per_token_fp8_ref, w4a8_fp_gemm_ref
from zqkernels.reference.quantize import pack_fp4

pytestmark = requires_gpu

C = _ext._C
F8 = torch.float8_e4m3fn
OUT_CODE = {0: torch.bfloat16, 1: torch.float16, 2: torch.float32, 3: torch.int8}


needs_sm90 = requires_sm90("FP8 kernels")


def random_fp8(*shape, gen=None) -> torch.Tensor:
    """Every finite E4M3 bit pattern (subnormals, +-448, -0) with equal probability; NaN -> 0."""
    b = torch.randint(0, 256, shape, dtype=torch.int32, generator=gen).to(torch.uint8)
    b[(b & 0x7F) == 0x7F] = 0
    return b.view(F8)


def fp8_inputs(M, N, K, out_dtype=torch.bfloat16, bias=False):
    x = torch.randn(M, K, device=DEV) * (1 + torch.rand(M, 1, device=DEV) * 10)
    w = torch.randn(N, K, device=DEV) * 0.05
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    b = torch.randn(N, device=DEV).to(out_dtype) if bias else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, bias=b, out_dtype=out_dtype)


def assert_fp8_close(out, ref, what=""):
    """Accurate accumulation: the FP8 MMA adds each run of products (up to the promotion interval,
    512 of K) with fewer mantissa bits than fp32 before the fp32 promotion, so the sum is not exact:
    elementwise within 4 output ulps of the fp64 value (plus 2e-3 of the row's largest output),
    calc_diff < 1e-5, and no bound on how many outputs differ (docs/FP8.md has the measured errors)."""
    o, r = out.double(), ref.double()
    assert out.shape == ref.shape and out.dtype == ref.dtype, what
    assert not torch.isnan(o).any(), f"{what}: NaN in the output"
    if r.numel() == 0:
        return
    rtol = {torch.bfloat16: 2**-6, torch.float16: 2**-8, torch.float32: 2**-12}[out.dtype]
    err = (o - r).abs()
    bad = err > rtol * r.abs() + 2e-3 * r.abs().amax(dim=1, keepdim=True)
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off (worst abs err {float(err.max()):.3g})"
    assert calc_diff(o, r) < 1e-5, f"{what}: calc_diff {calc_diff(o, r):.3g}"


def assert_fast_close(out, ref, what=""):
    """Fast accumulation: Hopper's FP8 accumulator keeps fewer bits than fp32 across the whole K, so
    the bound is a fraction of each row's scale rather than one output ulp (the measured error:
    docs/FP8.md, benchmarks/bench_fp8.py)."""
    o, r = out.double(), ref.double()
    assert not torch.isnan(o).any(), what
    err = (o - r).abs()
    tol = 2**-6 * r.abs() + 2e-2 * r.abs().amax(dim=1, keepdim=True)
    worst = float((err / r.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)).max())
    assert bool((err <= tol).all()), f"{what}: max err {err.max():.3g} ({worst:.3g} of its row's max)"
    assert calc_diff(out, ref) < 1e-3, f"{what}: calc_diff {calc_diff(out, ref):.3g}"


# ------------------------------------------------------------------------------------------------
# quantize_per_token(dtype=float8_e4m3fn): the row kernel with FP8 output, bit for bit.


@pytest.mark.parametrize("xdtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("K", [1, 7, 64, 576, 4096, 11008, 40000])
def test_quantize_fp8_bit_exact(xdtype, K):
    x = (torch.randn(37, K, device=DEV) * torch.logspace(-3, 3, 37, device=DEV)[:, None]).to(xdtype)
    x[3] = 0  # zero row
    x[5] *= 1e-30 if xdtype == torch.float32 else 0  # tiny row (fp32 only has the range)
    x[7, 0] = 60000 if xdtype != torch.bfloat16 else 3e38  # one outlier per row
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    rq, rs = quantize_per_token_fp8_ref(x)
    assert xq.dtype == F8 and sx.dtype == torch.float32
    assert torch.equal(sx, rs.to(DEV))
    assert torch.equal(xq.view(torch.uint8), rq.to(DEV).view(torch.uint8))


def test_quantize_fp8_strided_rows_and_nan():
    x = torch.randn(16, 256, device=DEV, dtype=torch.bfloat16)[:, :200]
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    rq, rs = quantize_per_token_fp8_ref(x)
    assert torch.equal(xq.view(torch.uint8), rq.to(DEV).view(torch.uint8)) and torch.equal(sx, rs.to(DEV))
    y = torch.randn(4, 64, device=DEV)
    y[2, 5] = float("nan")
    _, s = zqkernels.quantize_per_token(y, dtype=F8)
    assert torch.isnan(s[2]) and torch.isfinite(s[[0, 1, 3]]).all()


# ------------------------------------------------------------------------------------------------
# fp8_gemm


def fp8_kernel_params():
    if not (torch.cuda.is_available() and _ext._C is not None):
        return []
    tiles: dict = {}
    for arch, recipe, tile, code, _d in C.gemm_kernels():
        if recipe.startswith("fp8"):
            tiles.setdefault((recipe, tile), []).append(OUT_CODE[code])
    return [pytest.param(r, t, o, id=f"{r}-{t}") for (r, t), o in tiles.items()]


M_SWEEP = [1, 3, 8, 16, 17, 33, 64, 65, 127, 128, 255, 1000]


@needs_sm90
@pytest.mark.parametrize("recipe,tile,outs", fp8_kernel_params())
def test_fp8_gemm_every_kernel(recipe, tile, outs):
    acc = "fast" if recipe.endswith("fastacc") else "accurate"
    for N, K in [(24, 48), (264, 1040), (4104, 4112)]:
        for i, M in enumerate(M_SWEEP[:: 2 if N > 1000 else 1]):
            a = fp8_inputs(M, N, K, outs[i % len(outs)], bias=i % 2 == 0)
            poison_next_allocation(M * N * 2, 0xFF)
            out = zqkernels.fp8_gemm(**a, accumulate=acc, tile=tile)
            ref = fp8_gemm_ref(**a)
            what = f"{recipe}/{tile} M={M} N={N} K={K}"
            (assert_fp8_close if acc == "accurate" else assert_fast_close)(out, ref, what)


@needs_sm90
@pytest.mark.parametrize("acc", ["accurate", "fast"])
def test_fp8_gemm_dispatch_full_range_operands(acc):
    """Every finite E4M3 value (subnormals, +-448) in both operands, per-tensor scales, activation."""
    g = torch.Generator().manual_seed(1)
    for M, N, K in [(1, 4096, 4096), (77, 1024, 768), (512, 2048, 1024), (2048, 1536, 4096)]:
        xq, wq = random_fp8(M, K, gen=g).to(DEV), random_fp8(N, K, gen=g).to(DEV)
        sx = torch.full((1,), 1e-3, device=DEV)
        sw = torch.rand(N, device=DEV) * 1e-3
        for act in ("none", "silu"):
            out = zqkernels.fp8_gemm(xq, wq, sx, sw, None, torch.bfloat16, accumulate=acc, activation=act)
            ref = fp8_gemm_ref(xq, wq, sx, sw, None, torch.bfloat16, activation=act)
            (assert_fp8_close if acc == "accurate" else assert_fast_close)(out, ref, f"{M}x{N}x{K} {act}")


@needs_sm90
def test_fp8_gemm_accurate_beats_fast_at_long_k():
    """The promotion matters where K is long: at K = 16384 the accurate mode's error against fp64
    is far below the fast mode's (docs/FP8.md has the numbers from benchmarks/bench_fp8.py)."""
    M, N, K = 256, 512, 16384
    xq = (torch.rand(M, K, device=DEV) * 2 + 1).to(F8)  # positive: no cancellation, sums grow
    wq = (torch.rand(N, K, device=DEV) * 2 + 1).to(F8)
    # scales keep the sums (up to 9 * 16384) inside fp16's range; relative errors do not depend on them
    one_m, one_n = torch.full((M,), 2.0**-8, device=DEV), torch.full((N,), 2.0**-8, device=DEV)
    ref = fp8_gemm_ref(xq, wq, one_m, one_n, None, torch.float16).double()
    errs = {}
    for acc in ("accurate", "fast"):
        out = zqkernels.fp8_gemm(xq, wq, one_m, one_n, None, torch.float16, accumulate=acc).double()
        errs[acc] = float(((out - ref).abs() / ref.abs()).max())
    assert errs["accurate"] <= 2**-6, errs  # a few fp16 ulps (the MMA's own sums are not fp32)
    assert 4 * errs["accurate"] <= errs["fast"], errs


@needs_sm90
def test_fp8_gemm_errors():
    a = fp8_inputs(8, 64, 64)
    with pytest.raises(TypeError, match="fp8_gemm: xq must be float8_e4m3fn"):
        zqkernels.fp8_gemm(a["xq"].view(torch.int8), a["wq"], a["sx"], a["sw"])
    with pytest.raises(ValueError, match="fp8_gemm: accumulate must be"):
        zqkernels.fp8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], accumulate="fp32")
    with pytest.raises(TypeError, match="fp8_gemm: out_dtype must be"):
        zqkernels.fp8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], out_dtype=torch.int8)
    with pytest.raises(RuntimeError, match="fp8_gemm: backend 'sm80' is not compiled|fp8_rowwise"):
        zqkernels.fp8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], backend="sm80")
    with pytest.raises(ValueError, match="K must be a multiple of 16"):
        x = torch.zeros(4, 40, device=DEV).to(F8)
        zqkernels.fp8_gemm(x, torch.zeros(8, 40, device=DEV).to(F8), torch.ones(4, device=DEV), torch.ones(8, device=DEV))


# ------------------------------------------------------------------------------------------------
# FP4 -> FP8: the kernels' integer conversion, bit for bit.


@needs_sm90
def test_fp4_to_fp8_every_code_and_exponent_bit_exact():
    """All 16 codes at every position of the layout, times every exponent in [-5, 0] (one group of
    16 per exponent value and code pattern), against the reference decode e2m1 * 2^e."""
    N, K, g = 96, 256, 16
    codes = (torch.arange(N * K) % 16).reshape(N, K).to(torch.uint8)
    codes = codes[torch.randperm(N)][:, torch.randperm(K)].contiguous()
    e = (torch.arange(N * (K // g)) % 6 - 5).reshape(N, K // g).to(torch.int8)
    wq = pack_fp4(codes)
    got = zqkernels.fp4_to_fp8(wq.to(DEV), e.to(DEV)).cpu()
    ref = zqkernels.fp4_to_fp8(wq, e)  # CPU: the reference decode
    assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    # and the value is exactly e2m1 * 2^e
    mags = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    val = mags[(codes & 7).long()] * torch.where(codes >= 8, -1.0, 1.0) * torch.exp2(e.float()).repeat_interleave(g, 1)
    assert torch.equal(got.float(), val)


@needs_sm90
def test_fp4_to_fp8_float_ratios_match_reference():
    N, K, g = 64, 512, 64
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    r = torch.rand(N, K // g) * 0.999 + 0.001
    wq = pack_fp4(codes)
    got = zqkernels.fp4_to_fp8(wq.to(DEV), r.to(DEV)).cpu()
    ref = zqkernels.fp4_to_fp8(wq, r)
    assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


# ------------------------------------------------------------------------------------------------
# w4a8_fp_gemm


def w4a8_inputs(M, N, K, g, policy, out_dtype=torch.bfloat16, bias=False):
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 8  # groups of different scales
    x = torch.randn(M, K, device=DEV)
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale=policy)
    b = torch.randn(N, device=DEV).to(out_dtype) if bias else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=b, out_dtype=out_dtype)


def ref_of(a, activation="none"):
    g = a["xq"].shape[1] // a["sg"].shape[1]
    return w4a8_fp_gemm_ref(a["xq"], a["wq"], a["sw"], a["sg"], a["sx"], g, a["bias"], a["out_dtype"],
                            activation=activation)


@needs_sm90
@pytest.mark.parametrize("policy", ["m2", "m1", "free"])
@pytest.mark.parametrize("g", [32, 64, 128, None])
def test_w4a8_fp_stream_sweep(policy, g):
    for N, K in [(16, 64), (272, 576), (1024, 4096)]:
        if g is not None and K % g:
            continue
        for i, M in enumerate([1, 2, 5, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 128, 200]):
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            a = w4a8_inputs(M, N, K, g, policy, out_dtype, bias=i % 2 == 0)
            poison_next_allocation(M * N * 4, 0xFF)
            out = zqkernels.w4a8_fp_gemm(**a, path="stream")
            assert_fp8_close(out, ref_of(a), f"stream {policy} g={g} M={M} N={N} K={K} {out_dtype}")


@needs_sm90
@pytest.mark.parametrize("rows", [0, 1, 8])
@pytest.mark.parametrize("policy", ["m2", "free"])
def test_w4a8_fp_stream_many_row_tiles(policy, rows):
    """The decode kernel over 513 row tiles and K = 4224 (66 chunks of 64: a short last batch),
    M = 1..16, at the launcher's own rows per CTA and forced to 1 and 8 (a partial last CTA)."""
    with debug_setting("w4a8_rows_per_cta", rows):
        for M in (1, 9, 16):
            a = w4a8_inputs(M, 8208, 4224, 64, policy, torch.bfloat16, bias=True)
            out = zqkernels.w4a8_fp_gemm(**a, path="stream")
            assert_fp8_close(out, ref_of(a), f"stream {policy} M={M} rows={rows}")


@needs_sm90
@pytest.mark.parametrize("policy", ["m2", "free"])
def test_w4a8_fp_stream_register_variant(policy):
    """_debug_set_w4a8_variant(6): M <= 8 on register batches instead of the shared-memory ring (a
    probe's A / B in one build) gives the reference's results too."""
    with debug_setting("w4a8_variant", 6):
        for M, N, K in ((1, 8208, 4224), (5, 256, 512), (8, 28688, 512)):
            a = w4a8_inputs(M, N, K, 64, policy, torch.bfloat16, bias=True)
            out = zqkernels.w4a8_fp_gemm(**a, path="stream")
            assert_fp8_close(out, ref_of(a), f"variant 6 {policy} M={M} N={N} K={K}")


@needs_sm90
@pytest.mark.parametrize("policy", ["m2", "free"])
def test_w4a8_fp_stream_wide(policy):
    """N = 28688 (1793 row tiles): the launcher's own rows per CTA is > 1, with a partial last CTA."""
    for M in (1, 9, 16):
        a = w4a8_inputs(M, 28688, 512, 128, policy, torch.bfloat16, bias=True)
        out = zqkernels.w4a8_fp_gemm(**a, path="stream")
        assert_fp8_close(out, ref_of(a), f"stream {policy} M={M}")


@needs_sm90
@pytest.mark.parametrize("policy", ["m2", "free"])
def test_w4a8_fp_convert_path_and_auto(policy):
    for M, N, K in [(64, 512, 1024), (129, 512, 1024), (1000, 2048, 4096), (4096, 1536, 576)]:
        g = 64
        a = w4a8_inputs(M, N, K, g, policy, bias=True)
        for path in ("convert", "auto"):  # auto: mixed up to M = 256 (m2) / 64 (free), then convert
            out = zqkernels.w4a8_fp_gemm(**a, path=path)
            assert_fp8_close(out, ref_of(a), f"{path} {policy} M={M} N={N} K={K}")


@needs_sm90
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
def test_w4a8_fp_activation(act):
    for M in (3, 300):
        a = w4a8_inputs(M, 256, 512, 128, "m2", bias=True)
        out = zqkernels.w4a8_fp_gemm(**a, activation=act)
        assert_fp8_close(out, ref_of(a, act), f"{act} M={M}")


@needs_sm90
def test_w4a8_fp_graph_and_compile():
    a = w4a8_inputs(4, 512, 1024, 64, "m2")
    ref = zqkernels.w4a8_fp_gemm(**a)
    assert torch.equal(graph_replay(lambda: zqkernels.w4a8_fp_gemm(**a)), ref)

    @torch.compile(fullgraph=True)
    def f(x, wq, sw, sg):
        xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
        return zqkernels.w4a8_fp_gemm(xq, wq, sx, sw, sg)

    x = torch.randn(4, 1024, device=DEV, dtype=torch.bfloat16)
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    assert torch.equal(f(x, a["wq"], a["sw"], a["sg"]), zqkernels.w4a8_fp_gemm(xq, a["wq"], sx, a["sw"], a["sg"]))


@needs_sm90
def test_w4a8_fp_errors():
    a = w4a8_inputs(4, 64, 128, 32, "m2")
    with pytest.raises(TypeError, match="w4a8_fp_gemm: xq must be float8_e4m3fn"):
        zqkernels.w4a8_fp_gemm(a["xq"].view(torch.int8), a["wq"], a["sx"], a["sw"], a["sg"])
    with pytest.raises(TypeError, match="w4a8_fp_gemm: wq must be uint8"):
        zqkernels.w4a8_fp_gemm(a["xq"], a["wq"].view(torch.int8), a["sx"], a["sw"], a["sg"])
    with pytest.raises(TypeError, match="w4a8_fp_gemm: sg must be"):
        zqkernels.w4a8_fp_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"].to(torch.int16))
    with pytest.raises(ValueError, match="w4a8_fp_gemm: sg must have K // group_size columns"):
        zqkernels.w4a8_fp_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"][:, :3].contiguous())
    with pytest.raises(ValueError, match="w4a8_fp_gemm: wq must be uint8 \\[N, K // 2\\]"):
        zqkernels.w4a8_fp_gemm(a["xq"][:, :64].contiguous(), a["wq"], a["sx"], a["sw"], a["sg"])
    with pytest.raises(ValueError, match="sg exponents must lie in"):
        prev = zqkernels.set_debug_checks(True)
        try:
            zqkernels.w4a8_fp_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"] + 3)
        finally:
            zqkernels.set_debug_checks(prev)


# ------------------------------------------------------------------------------------------------
# QLinear schemes "fp8" and "w4a8-fp" on the GPU: the CUDA forward equals the CPU reference
# composition of the same module (state copied), in eager mode and under a CUDA graph.


@needs_sm90
@pytest.mark.parametrize("scheme,opts", [("fp8", {}), ("w4a8-fp", {"group_size": 64, "scale_policy": "m2"}),
                                         ("w4a8-fp", {"group_size": 128, "scale_policy": "free"})])
@pytest.mark.parametrize("M", [1, 16, 200])
def test_qlinear_fp_schemes_cuda_match_cpu(scheme, opts, M):
    from torch import nn

    lin = nn.Linear(512, 256, bias=True)
    q_cpu = zqkernels.QLinear.from_linear(lin, scheme, **opts)
    q_gpu = zqkernels.QLinear.from_linear(lin.to(DEV), scheme, **opts)
    x = torch.randn(M, 512)
    y_cpu = q_cpu(x.to(torch.bfloat16))
    y_gpu = q_gpu(x.to(DEV, torch.bfloat16))
    assert y_gpu.shape == (M, 256) and y_gpu.dtype == torch.bfloat16
    assert_fp8_close(y_gpu.cpu(), y_cpu, f"QLinear {scheme} {opts} M={M}")
    ref = lin(x.to(DEV)).float()
    rel = float((y_gpu.float() - ref).norm() / ref.norm())
    assert rel < (0.05 if scheme == "fp8" else 0.15), rel
    xs = x.to(DEV, torch.bfloat16)
    assert torch.equal(graph_replay(lambda: q_gpu(xs)), y_gpu)


# ------------------------------------------------------------------------------------------------
# The fused row ops with FP8 output: the kernel against the reference, bit for bit.


@pytest.mark.parametrize("K", [64, 768, 4096, 11008, 40000])
@pytest.mark.parametrize("xdtype", [torch.bfloat16, torch.float16])
def test_fused_ops_fp8_output_bit_exact(K, xdtype):
    from zqkernels.reference.fused import row_quant_ref

    M = 19
    x = (torch.randn(M, K, device=DEV) * 3).to(xdtype)
    res = torch.randn(M, K, device=DEV).to(xdtype)
    w = torch.rand(K, device=DEV) + 0.5
    b = torch.randn(K, device=DEV) * 0.1
    gu = torch.randn(M, 2 * K, device=DEV).to(xdtype)
    cases = {
        "rmsnorm": (zqkernels.rmsnorm_quant(x, w, dtype=F8), row_quant_ref("rmsnorm", x, None, w, None, 1e-6, dtype=F8)),
        "layernorm": (zqkernels.layernorm_quant(x, w, b, dtype=F8),
                      row_quant_ref("layernorm", x, None, w, b, 1e-5, dtype=F8)),
        "add_rmsnorm": (zqkernels.add_rmsnorm_quant(x, res, w, dtype=F8),
                        row_quant_ref("rmsnorm", x, res, w, None, 1e-6, "sum", dtype=F8)),
        "gelu": (zqkernels.bias_gelu_quant(x, b, dtype=F8), row_quant_ref("gelu", x, None, None, b, dtype=F8)),
        "silu_mul": (zqkernels.silu_mul_quant(gu, dtype=F8), row_quant_ref("silu_mul", gu, dtype=F8)),
    }
    for name, (got, ref) in cases.items():
        assert got[0].dtype == F8, name
        # the fp32 statistics (sums of squares, amax of a recomputed row) are reduced in another
        # order than the reference's (as for the INT8 output, tests/test_fused_gpu.py): scales agree
        # to a few fp32 ulps and a value a hair from an E4M3 rounding boundary may land on the
        # other side, never more than one E4M3 step away
        torch.testing.assert_close(got[1], ref[1], rtol=2e-5, atol=0)
        same = got[0].view(torch.uint8) == ref[0].view(torch.uint8)
        frac = 1 - float(same.float().mean())
        assert frac < 5e-3, f"{name}: {frac:.2%} of the bytes differ"
        diff = (got[0].float() - ref[0].float()).abs()
        step = ref[0].float().abs() * 2**-3 + 2**-9
        assert bool((diff <= step).all()), f"{name}: a value differs by more than one E4M3 step"
