"""Group-scaled GEMMs on the GPU against the exact reference (docs/W4A8.md): ``w8a8_group_gemm``
(INT8 weights) and ``w4a8_gemm`` (INT4 weights, both paths: the streaming kernel and convert + the
group-scaled wgmma GEMM), integer and float group scales. The M sweep over every group size, K not a
multiple of 128, N not a multiple of 128, bf16 / fp16 / fp32 outputs, bias and activations; the
overflow bound with adversarial inputs at K = 16384 and 28672; M = 0; CUDA graphs; the QLinear
schemes against their CPU twins; the CUDA-side errors.

Tolerances, against the float64 reference before its final rounding (``out_dtype=torch.float64``):
- integer scales: the sums are exact integers in int32 (flushed to fp32 before they can overflow),
  so the kernel differs from the reference by its final rounding (at most one output ulp of |ref|)
  plus its fp32 epilogue (conversion of the int32 sums at the flushes, scales, bias, activation:
  a few fp32 roundings, bounded by 2^-20 * (sum_j |sg P| |sx sw| + |bias|), the "tiny abs");
- float scales: in addition one fp32 FMA per group (r * float(P)), within 1e-5 of the largest group
  term |sg P| |sx sw|.
"""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, capture, graph_replay, poison_next_allocation, requires_gpu, requires_sm90
from torch import nn
from zqkernels import QLinear
from zqkernels.ops.gemm_cuda import default_max_scale as _default_max_scale
from zqkernels.ops.gemm_cuda import group_gemm_intervals
from zqkernels.reference import group_max_scale, pack_int4, unpack_int4, w4a8_gemm_ref, w8a8_group_gemm_ref
from zqkernels.reference.quantize import w4a8_stream_flush_steps

pytestmark = requires_gpu

needs_sm90 = requires_sm90("the group-scaled GEMM kernels (sm_90a)")

I8, I32, F32, F64 = torch.int8, torch.int32, torch.float32, torch.float64
OUT = (torch.bfloat16, torch.float16, torch.float32)
ACTS = ("none", "gelu", "gelu_tanh", "silu")
# (mantissa bits, smallest normal exponent) of the output dtypes, for one ulp of |ref|
_FMT = {torch.bfloat16: (7, -126), torch.float16: (10, -14), torch.float32: (23, -126)}
M_SWEEP = [1, 2, 7, 16, 33, 64, 128, 257, 1024]
M_BIG = [4096, 8192]  # only for the first shape (the reference of 8192 x 272 x 576 takes ~1 s)
# (N, K, g): K a multiple of g but not of 128 where g allows, N = 272 (not a multiple of 128); g
# None: per channel. INT4 also needs N % 16 == 0 and K % 64 == 0, which all of these meet.
SHAPES = [(272, 576, 64), (272, 320, 32), (272, 320, 64), (272, 640, 128), (272, 768, 256), (272, 576, None),
          (256, 1024, 128)]


def ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One ulp of `dtype` at |v| (float64 tensor); subnormal spacing below the normal range."""
    p, emin = _FMT[dtype]
    e = torch.frexp(v.abs()).exponent.to(torch.int64) - 1  # |v| in [2^e, 2^(e + 1))
    e = torch.where(v == 0, torch.full_like(e, emin), e.clamp(min=emin))
    return torch.ldexp(torch.ones_like(v), e - p)


def inputs(M, N, K, g, bits, scale, out_dtype=torch.bfloat16, bias=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 6  # groups of different scales
    w[: N // 4, K // 2:] *= 0.05  # and rows whose ratios are small
    x = torch.randn(M, K, device=DEV)
    x[:, :3] *= 20  # outlier channels
    xq, sx = zqkernels.quantize_per_token(x)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt=f"int{bits}", group_size=g, scale=scale)
    b = torch.randn(N, device=DEV).to(out_dtype) if bias else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=b, out_dtype=out_dtype)


def _cpu(a: dict) -> dict:
    return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}


def check(out: torch.Tensor, a: dict, bits: int, what: str, activation: str = "none") -> None:
    """out (the kernel's) against the float64 reference, by the bounds of the module docstring."""
    c = _cpu(a)
    M, K = c["xq"].shape
    N = c["wq"].shape[0]
    assert out.shape == (M, N) and out.dtype == a["out_dtype"], (what, out.shape, out.dtype)
    ref_fn = w8a8_group_gemm_ref if bits == 8 else w4a8_gemm_ref
    ref = ref_fn(c["xq"], c["wq"], c["sx"], c["sw"], c["sg"], c["bias"], F64, activation=activation)
    o = out.cpu().double()
    assert not torch.isnan(o).any(), f"{what}: NaN in the output"
    if M == 0:
        return
    codes = c["wq"] if bits == 8 else unpack_int4(c["wq"], N, K)
    sg = c["sg"]
    G = sg.shape[1]
    g = K // G
    P = torch.bmm(c["xq"].double().reshape(M, G, g).transpose(0, 1), codes.double().reshape(N, G, g).permute(1, 2, 0))
    terms = P.abs_() * sg.double().abs().t()[:, None, :]  # [G, M, N]
    sc = c["sx"].double().abs().reshape(-1, 1) * c["sw"].double().abs().reshape(1, -1)
    total = terms.sum(0) * sc
    largest = terms.amax(0) * sc
    del P, terms
    b = c["bias"].double().abs() if c["bias"] is not None else torch.zeros(N, dtype=F64)
    tol = ulp(ref, a["out_dtype"]) + 2**-20 * (total + b)
    if sg.dtype == F32:
        tol = tol + 1e-5 * largest
    err = (o - ref).abs()
    bad = err > tol
    if bad.any():
        m, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} outputs off; first at [{m}, {n}]: got {float(o[m, n])}, "
            f"expected {float(ref[m, n])} (tolerance {float(tol[m, n]):.3g})"
        )


def _op(bits):
    return zqkernels.w8a8_group_gemm if bits == 8 else zqkernels.w4a8_gemm


# ------------------------------------------------------------------------------------------------
# The sweep


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("bits", [8, 4], ids=["w8a8_group_gemm", "w4a8_gemm"])
@pytest.mark.parametrize("N,K,g", SHAPES)
def test_sweep(N, K, g, bits, scale):
    ms = M_SWEEP + (M_BIG if (N, K, g) == SHAPES[0] else [])
    for i, M in enumerate(ms):
        out_dtype = OUT[i % 3]
        act = ACTS[i % 4]
        a = inputs(M, N, K, g, bits, scale, out_dtype, bias=i % 2 == 0, seed=i)
        max_scale = int(a["sg"].max()) if scale == "int" and i % 3 != 2 else None  # None: the op's default
        poison_next_allocation(M * N * 4, 0xFF)
        out = _op(bits)(**a, activation=act, max_scale=max_scale)
        check(out, a, bits, f"{bits}-bit {scale} g={g} M={M} N={N} K={K} {out_dtype} {act} max_scale={max_scale}", act)


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("path", ["stream", "convert"])
def test_w4a8_paths(path, scale):
    """Both w4a8_gemm paths at every M (auto picks stream up to M = 32, convert above)."""
    for i, M in enumerate([1, 7, 33, 257]):
        a = inputs(M, 272, 576, 64, 4, scale, OUT[i % 3], bias=True, seed=i)
        out = zqkernels.w4a8_gemm(**a, activation=ACTS[i % 4], path=path)
        check(out, a, 4, f"{path} {scale} M={M}", ACTS[i % 4])


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
def test_w8a8_group_explicit_alpha(scale):
    """Scales from explicit alphas (the bound, small ones) and per-tensor sx / sw."""
    for g, alpha in ((32, 2048), (128, 512), (256, 1), (64, 16)):
        a = inputs(65, 272, 512, g, 8, scale, torch.bfloat16, bias=True)
        if scale == "int":
            a["wq"], a["sw"], a["sg"] = zqkernels.quantize_weight(torch.randn(272, 512, device=DEV), fmt="int8",
                                                                  scale="int", group_size=g, alpha=alpha)
            assert int(a["sg"].max()) == alpha
        out = zqkernels.w8a8_group_gemm(**a, max_scale=alpha if scale == "int" else None)
        check(out, a, 8, f"g={g} alpha={alpha} {scale}")
        a["sx"], a["sw"] = a["sx"][:1].contiguous(), a["sw"][:1].contiguous()
        check(zqkernels.w8a8_group_gemm(**a), a, 8, f"per-tensor sx, sw g={g}")


# ------------------------------------------------------------------------------------------------
# Overflow: adversarial inputs at the largest scales


def _adversarial(bits, K, g, M=3, N=32, pow2=False):
    """All -128 activations x weights at the extremes (INT4 +-7, INT8 +-127; pow2: -8 / -128 with a
    power-of-two scale, every partial sum exact in fp32) x every integer scale at its largest."""
    xq = torch.full((M, K), -128, dtype=I8)
    wmax = 8 if bits == 4 else 128
    top = (7 if bits == 4 else 127) if not pow2 else wmax
    codes = torch.full((N, K), -top, dtype=I8)
    if not pow2:
        codes[1::2] = top
    if bits == 4:
        smax = 2**15 if pow2 else group_max_scale(32, 8)  # the kernels' INT4 bound is per 32 k
        wq = pack_int4(codes)
    else:
        smax = group_max_scale(g, 128)
        smax = 1 << (smax.bit_length() - 1) if pow2 else smax
        wq = codes
    sg = torch.full((N, K // g), smax, dtype=I32)
    sx = torch.full((M,), 2.0**-20)
    sw = torch.full((N,), 2.0**-16)
    a = dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=F32)
    return {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}, smax


@needs_sm90
@pytest.mark.parametrize("K", [16384, 28672])
@pytest.mark.parametrize("bits,g", [(8, 32), (8, 128), (8, 256), (4, 32), (4, 128)])
@pytest.mark.parametrize("pow2", [False, True], ids=["extremes", "pow2-exact"])
def test_overflow_bound_adversarial(bits, g, K, pow2):
    """Each group's (INT4: each 32-k step's) |sg P| is just below 2^31 and the totals far above:
    only the flush schedule keeps the int32 accumulator from wrapping (a wrap is off by ~2^32 in a
    sum of ~2^31 chunks). With powers of two every partial sum is exact in fp32: the output must
    equal the reference bit for bit; with +-7 / +-127 within a few fp32 roundings."""
    a, smax = _adversarial(bits, K, g, pow2=pow2)
    ref_fn = w8a8_group_gemm_ref if bits == 8 else w4a8_gemm_ref
    c = _cpu(a)
    ref = ref_fn(c["xq"], c["wq"], c["sx"], c["sw"], c["sg"], None, F64)
    assert float(ref.abs().max()) * 2.0**36 > 2**31  # the exact integer total overflows int32
    paths = ("stream", "convert") if bits == 4 else (None,)
    for path in paths:
        kw = {} if path is None else {"path": path}
        # None: the op's default bound (INT4: 2^15, INT8: the largest one k-block allows), valid only
        # when the scales stay below it (not for the INT4 extremes at 65535)
        for max_scale in (smax, None) if bits == 8 or smax <= 2**15 else (smax,):
            out = _op(bits)(**a, max_scale=max_scale, **kw).cpu()
            what = f"{bits}-bit g={g} K={K} path={path} max_scale={max_scale}"
            if pow2:
                assert torch.equal(out, ref.float()), (what, out[0, :2], ref[0, :2])
            else:
                # Each flush rounds an int32 sum to fp32 and adds it to an fp32 running sum: with
                # every term of one sign the error grows with the number of flushes (up to one
                # 2^-24 per flush), e.g. 512 at K = 16384 when a flush follows every 32 of K.
                tol = max(2.0**-20, (_flushes(bits, g, K, path, max_scale) + 1) * 2.0**-24)
                torch.testing.assert_close(out.double(), ref, rtol=tol, atol=0, msg=what)


def _flushes(bits: int, g: int, K: int, path, max_scale) -> int:
    """How many times the kernel that runs converts its int32 sum to fp32 over K."""
    wmax = 8 if bits == 4 else 128
    ms = max_scale if max_scale is not None else _default_max_scale(g, wmax)
    if path == "stream":  # 16 q products: w4a8_stream_flush_steps; 0: an fp32 rounding every step
        return K // 32 // max(1, w4a8_stream_flush_steps(ms))
    pb, flush = group_gemm_intervals(g, wmax, ms)
    return K // 32 // pb // flush


# ------------------------------------------------------------------------------------------------
# Empty M, CUDA graphs


@needs_sm90
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scale", ["int", "float"])
def test_empty_m(bits, scale):
    a = inputs(1, 272, 576, 64, bits, scale)
    a["xq"], a["sx"] = a["xq"][:0], a["sx"][:0]
    out = _op(bits)(**a)
    assert out.shape == (0, 272) and out.dtype == torch.bfloat16 and out.is_cuda


@needs_sm90
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("M", [4, 200])
def test_graph(bits, scale, M):
    a = inputs(M, 512, 1024, 64, bits, scale, bias=True)
    ms = int(a["sg"].max()) if scale == "int" else None
    ref = _op(bits)(**a, max_scale=ms)
    assert torch.equal(graph_replay(lambda: _op(bits)(**a, max_scale=ms)), ref)
    # replays read the inputs' current values
    g, out = capture(lambda: _op(bits)(**a, max_scale=ms))
    x2, s2 = zqkernels.quantize_per_token(torch.randn(M, 1024, device=DEV))
    a["xq"].copy_(x2)
    a["sx"].copy_(s2)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, _op(bits)(**a, max_scale=ms))


# ------------------------------------------------------------------------------------------------
# QLinear schemes: CUDA against the CPU module (the reference) with the same state


@needs_sm90
@pytest.mark.parametrize("scheme, options", [
    ("w4a8", {}), ("w4a8-floatscale", {"group_size": 64}), ("w4a8-zp", {"group_size": 64}), ("w8a8-group", {}),
    ("w8a8-group", {"group_size": 32, "scale": "float"}), ("w8a8-group", {"group_size": 64}),
])
@pytest.mark.parametrize("M", [1, 48, 300])
def test_qlinear_cuda_vs_cpu(scheme, options, M):
    lin = nn.Linear(1024, 528, dtype=torch.bfloat16)  # out_features 528: not a multiple of 128
    with torch.no_grad():
        lin.weight.normal_(0, 1024**-0.5)
        lin.bias.normal_(0, 0.5)
    q_gpu = QLinear.from_linear(lin.to(DEV), scheme, **options)
    q_cpu = QLinear(1024, 528, dtype=torch.bfloat16, scheme=scheme, **options)  # the same state on CPU
    q_cpu.load_state_dict(q_gpu.state_dict())
    assert q_cpu.max_scale == q_gpu.max_scale
    x = torch.randn(M, 1024, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = q_gpu(x.to(DEV)).cpu()
        want = q_cpu(x)
    assert y.shape == want.shape == (M, 528)
    # one bf16 ulp (plus the float-scale FMAs); both round the same real number once
    err = (y.double() - want.double()).abs()
    assert bool((err <= 2**-7 * want.double().abs() + 2e-3 * want.double().abs().amax()).all()), float(err.max())
    xd = x.to(DEV)
    with torch.inference_mode():
        assert torch.equal(graph_replay(lambda: q_gpu(xd)).cpu(), y)


@pytest.mark.parametrize("bits, g, scale", [(8, 32, "int"), (8, 128, "float"), (8, None, "int"), (4, 64, "int"),
                                           (4, 256, "float")])
def test_quantize_weight_cuda_matches_cpu(bits, g, scale):
    """quantize_weight runs the reference's torch ops on w's device: the same bits on both."""
    w = torch.randn(272, 1024) * torch.rand(272, 1) * torch.rand(1, 1024).pow(3)
    cpu = zqkernels.quantize_weight(w, fmt=f"int{bits}", group_size=g, scale=scale)
    gpu = zqkernels.quantize_weight(w.to(DEV), fmt=f"int{bits}", group_size=g, scale=scale)
    for a, b in zip(cpu, gpu):
        assert a.dtype == b.dtype and torch.equal(a, b.cpu())


@needs_sm90
def test_qlinear_w8a8_group_padded_rows():
    lin = nn.Linear(256, 20, dtype=torch.bfloat16, device=DEV)  # rows padded to 24 (N % 8 == 0)
    q = QLinear.from_linear(lin, "w8a8-group", group_size=32)
    x = torch.randn(5, 256, dtype=torch.bfloat16, device=DEV)
    with torch.inference_mode():
        y = q(x)
        want = q.to("cpu")(x.cpu())
    assert y.shape == (5, 20)
    torch.testing.assert_close(y.cpu(), want, rtol=2**-7, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Errors on CUDA


@needs_sm90
def test_errors():
    a = inputs(4, 64, 256, 64, 8, "int")
    with pytest.raises(TypeError, match="w8a8_group_gemm: xq must be int8"):
        zqkernels.w8a8_group_gemm(a["xq"].float(), a["wq"], a["sx"], a["sw"], a["sg"])
    with pytest.raises((TypeError, ValueError), match="w8a8_group_gemm: sg"):
        zqkernels.w8a8_group_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"].to(torch.int16))
    with pytest.raises((TypeError, ValueError), match="w8a8_group_gemm: wq"):
        zqkernels.w8a8_group_gemm(a["xq"], a["wq"].view(torch.uint8), a["sx"], a["sw"], a["sg"])
    with pytest.raises(ValueError, match="w8a8_group_gemm: all tensors must be on one device"):
        zqkernels.w8a8_group_gemm(a["xq"], a["wq"], a["sx"].cpu(), a["sw"], a["sg"])
    # N % 8 != 0: the kernel's 16-byte output rows
    b = inputs(4, 20, 256, 64, 8, "int")
    with pytest.raises(ValueError, match=r"w8a8_group_gemm: .*N % 8 == 0"):
        zqkernels.w8a8_group_gemm(b["xq"], b["wq"], b["sx"], b["sw"], b["sg"])
    # a misaligned xq (16-byte loads)
    big = torch.zeros(4, 256 + 16, dtype=I8, device=DEV)
    big[:, 1:257] = a["xq"]
    with pytest.raises(ValueError, match=r"w8a8_group_gemm: .*xq"):
        zqkernels.w8a8_group_gemm(big[:, 1:257], a["wq"], a["sx"], a["sw"], a["sg"])


@pytest.mark.parametrize("scheme,options", [("w4a8", {"group_size": 128}), ("w8a8-group", {"group_size": 64}),
                                            ("w4a8-floatscale", {"group_size": 64})])
@pytest.mark.parametrize("M", [4, 200])
def test_qlinear_built_under_inference_mode(scheme, options, M):
    """A QLinear made and run under torch.inference_mode (its buffers are inference tensors, which
    have no version counter: the transposed-scale cache must not need one) gives the same output as
    one made outside it; loading new weights in place under inference_mode is seen."""
    torch.manual_seed(0)
    lin = nn.Linear(512, 256, bias=True, dtype=torch.bfloat16, device=DEV)
    x = torch.randn(M, 512, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        want = QLinear.from_linear(lin, scheme, **options)(x)
    with torch.inference_mode():
        q = QLinear.from_linear(lin, scheme, **options)
        assert q.weight_group_scale.is_inference()
        got = q(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        other = nn.Linear(512, 256, bias=True, dtype=torch.bfloat16, device=DEV)
        q.load_state_dict(QLinear.from_linear(other, scheme, **options).state_dict())
        want2 = QLinear.from_linear(other, scheme, **options)(x)
        torch.testing.assert_close(q(x), want2, rtol=0, atol=0)
