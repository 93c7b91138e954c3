"""Group-wise W8A8 (INT8 weights with integer or float group scales, docs/W4A8.md "Group-wise W8A8")
on CPU: the alpha bound, the quantizer (definition, round-trip error bounds, alpha heuristic, zero
groups, shape rules), the reference against exact Python ints (random and adversarial inputs), the
op on CPU (the reference), its checks, debug checks, the custom op (opcheck, fake tensors,
torch.compile)."""

from __future__ import annotations

import re

import pytest
import torch
import zqkernels
from zqkernels import reference as R
from zqkernels.ops.group import W8A8_GROUP_MAX_GROUP
from zqkernels.reference import quantize as RQ

I8, U8, I32, F32 = torch.int8, torch.uint8, torch.int32, torch.float32
OP = torch.ops.zqkernels.gemm.default  # the one GEMM op, specs "int8_group_int" / "int8_group_float"
QW = zqkernels.quantize_weight
INT32_MAX = 2**31 - 1
ALPHA8 = {32: 2048, 64: 1024, 128: 512, 256: 256}


def weights(N=32, K=512):
    """Rows of different magnitudes whose groups differ in scale (the ratios span ~3 decades)."""
    return torch.randn(N, K) * torch.rand(N, 1) * torch.rand(1, K).pow(3)


# ------------------------------------------------------------------------------------------------
# The bound


def test_group_alpha_max_values_and_definition():
    for g, a in ALPHA8.items():
        assert R.group_alpha_max(g, 128) == a
        assert g * 128 * 128 * a <= INT32_MAX < g * 128 * 128 * 2 * a
        s = R.group_max_scale(g, 128)
        assert g * 128 * 128 * s <= INT32_MAX < g * 128 * 128 * (s + 1)
    # INT4 per MMA step of 32: the existing bounds
    assert R.group_alpha_max(32, 8) == RQ.INT4_ALPHA_RANGE[1] == 2**15
    assert R.group_max_scale(32, 8) == RQ.INT4_MAX_SCALE == 65535
    # per channel: the bound shrinks with K; past 131071 nothing fits
    assert R.group_alpha_max(4096, 128) == 16 and R.group_alpha_max(W8A8_GROUP_MAX_GROUP, 128) == 1
    with pytest.raises(ValueError, match=r"group_max_scale: a group of 131072 k .* no integer scale fits int32"):
        R.group_alpha_max(W8A8_GROUP_MAX_GROUP + 1, 128)
    for bad in (0, -32, 32.0, True):
        with pytest.raises(ValueError, match=r"group_max_scale: group_size must be a positive int"):
            R.group_max_scale(bad, 128)
    with pytest.raises(ValueError, match=r"group_max_scale: wmax must be a positive int"):
        R.group_max_scale(32, 0)


# ------------------------------------------------------------------------------------------------
# The quantizer


@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
@pytest.mark.parametrize("scale", ["int", "float"])
def test_quantize_definition(g, scale):
    N, K = 32, 512
    w = weights(N, K)
    wq, sw, sg = QW(w, fmt="int8", scale=scale, group_size=g)
    gg = K if g is None else g
    G = K // gg
    assert wq.dtype == I8 and wq.shape == (N, K) and wq.is_contiguous()  # plain row-major, not packed
    assert int(wq.abs().max()) == 127 and int(wq.min()) >= -127
    assert sw.dtype == F32 and sw.shape == (N,)
    assert sg.shape == (N, G) and sg.dtype == (I32 if scale == "int" else F32)
    s = w.abs().reshape(N, G, gg).amax(2) / 127
    want = torch.round(w.reshape(N, G, gg) / s[:, :, None]).clamp(-127, 127).reshape(N, K)
    assert torch.equal(wq.float(), want)
    r = s / s.amax(1, keepdim=True)
    if scale == "float":
        assert torch.equal(sg, r) and torch.equal(sw, s.amax(1))
    else:
        alpha = int(sg.max())
        assert alpha & (alpha - 1) == 0
        assert alpha == (1 if g is None else ALPHA8[g] if g >= 64 else alpha)
        assert torch.equal(sg, torch.round(r * alpha).clamp(min=1).to(I32))
        assert torch.equal(sw, s.amax(1) / alpha)
    # the same through fmt="int8" and the reference
    for q2 in (QW(w, fmt="int8", group_size=g, scale=scale), R.quantize_int8_group_ref(w, g, scale)):
        assert all(torch.equal(a, b) for a, b in zip(q2, (wq, sw, sg)))
    # dequantize is sw * sg * q (float64, one rounding)
    dq = zqkernels.dequantize(wq, sw, sg, fmt="int8")
    want = (sw.double()[:, None] * RQ.expand_groups(sg.double(), K) * wq.double()).float()
    assert dq.dtype == F32 and torch.equal(dq, want)


@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_round_trip_error_bounds(g):
    """Elementwise: float scales |w - s q| <= s / 2 (the rounding of q); integer scales add the
    scale's own rounding, |sw sg - s| <= s_max / (2 alpha), times |q| <= 127."""
    N, K = 64, 1024
    w = weights(N, K)
    gg = K if g is None else g
    s = (w.abs().reshape(N, K // gg, gg).amax(2) / 127).double()
    s_full = RQ.expand_groups(s, K)
    s_max = s.amax(1, keepdim=True)
    for scale in ("int", "float"):
        wq, sw, sg = QW(w, fmt="int8", scale=scale, group_size=g)
        err = (zqkernels.dequantize(wq, sw, sg, fmt="int8").double() - w.double()).abs()
        slack = 1e-6 * s_full  # fp32 roundings of s, r and the product
        if scale == "float":
            assert bool((err <= s_full / 2 + slack).all())
        else:
            alpha = 1 if g is None else int(sg.max())
            bound = s_full / 2 + wq.double().abs() * s_max / (2 * alpha)
            assert bool((err <= bound + slack).all())
            if g is None:  # per channel with alpha 1: sg == 1, exactly the float result
                assert torch.equal(sg, torch.ones_like(sg)) and torch.equal(sw, s_max.squeeze(1).float())


def test_int_vs_float_mse():
    """The default alpha keeps integer scales within a few % of the float scales' MSE (measured,
    seed 0, randn 256 x 1024, int / float MSE: g = 32: 1.0059, 64: 1.0037, 128: 1.0113, 256:
    1.0280). The ratio heuristic alone (smallest 2^n with min(r) 2^n >= 1) would pick alpha = 4
    here (min r = 0.45): MSE 0.0074 (~170x); alpha = 2 (ratios in [0.5, 1]): 0.041 (~1000x)."""
    w = torch.randn(256, 1024)
    for g in (32, 64, 128, 256):
        e = {}
        for scale in ("int", "float"):
            wq, sw, sg = QW(w, fmt="int8", scale=scale, group_size=g)
            e[scale] = float((zqkernels.dequantize(wq, sw, sg, fmt="int8") - w).pow(2).mean())
        assert e["int"] <= e["float"] * 1.05, (g, e)
    wq, sw, sg = QW(w, fmt="int8", scale="int", group_size=128, alpha=2)
    assert float((zqkernels.dequantize(wq, sw, sg, fmt="int8") - w).pow(2).mean()) > 100 * e["float"]


def test_alpha_heuristic_bounds_and_override():
    N, K = 16, 512
    w = torch.randn(N, K)
    # g = 32: the heuristic clamped to [1024, 2048]
    assert int(QW(w, fmt="int8", scale="int", group_size=32)[2].max()) == 1024  # ratios near 1
    w2 = w.clone()
    w2[:, :32] *= 2.0**-12  # ratios ~2^-12: the heuristic wants 2^13 or more, clamped to the bound
    _, _, sg = QW(w2, fmt="int8", scale="int", group_size=32)
    assert int(sg.max()) == 2048 and int(sg.min()) >= 1  # tiny groups still get scale 1
    # g >= 64: the bound
    for g in (64, 128, 256):
        assert int(QW(w, fmt="int8", scale="int", group_size=g)[2].max()) == ALPHA8[g]
        assert int(QW(w2, fmt="int8", scale="int", group_size=g)[2].max()) == ALPHA8[g]
    # per channel: alpha 1, exact
    wq, sw, sg = QW(w, fmt="int8", scale="int")
    assert sg.shape == (N, 1) and torch.equal(sg, torch.ones_like(sg))
    assert torch.equal(sw, w.abs().amax(1) / 127)
    # explicit alpha: any power of two up to the bound
    for g, hi in ALPHA8.items():
        for alpha in (1, 8, hi):
            _, sw, sg = QW(w, fmt="int8", scale="int", group_size=g, alpha=alpha)
            assert int(sg.max()) == alpha and int(sg.min()) >= 1
        with pytest.raises(ValueError, match=rf"quantize_weight: alpha={2 * hi} exceeds {hi}, the INT8 bound for "
                           rf"group_size {g}: .*\|P\| \* alpha .*must fit int32"):
            QW(w, fmt="int8", scale="int", group_size=g, alpha=2 * hi)
    _, _, sg = QW(w, fmt="int8", scale="int", alpha=16)  # per channel K = 512: bound 2^31 / (512 * 2^14) -> 128
    assert int(sg.max()) == 16
    with pytest.raises(ValueError, match=r"alpha=256 exceeds 128, the INT8 bound for group_size 512"):
        QW(w, fmt="int8", scale="int", alpha=256)
    _, _, sg = QW(w[:, :256], fmt="int8", scale="int", group_size=256)  # group_size == K: per channel, alpha 1
    assert torch.equal(sg, torch.ones_like(sg))


def test_zero_groups_and_rows():
    N, K = 16, 128
    w = torch.randn(N, K)
    w[3] = 0  # zero row
    w[5, 64:96] = 0  # zero group
    for scale in ("int", "float"):
        wq, sw, sg = QW(w, fmt="int8", scale=scale, group_size=32)
        assert torch.isfinite(sw).all() and torch.isfinite(sg.float()).all()
        assert float(sw[3]) == 0 and not bool(sg[3].any()) and not bool(wq[3].any())
        assert float(sg[5, 2]) == 0 and bool((sg[5, [0, 1, 3]] > 0).all()) and not bool(wq[5, 64:96].any())
        dq = zqkernels.dequantize(wq, sw, sg, fmt="int8")
        assert torch.isfinite(dq).all() and not bool(dq[3].any()) and not bool(dq[5, 64:96].any())
        # the GEMM: the zero row gives exactly the bias
        xq, sx = zqkernels.quantize_per_token(torch.randn(2, K))
        bias = torch.randn(N)
        y = zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, bias, torch.float32)
        assert torch.equal(y[:, 3], bias[3].expand(2))
    _, sw, sg = QW(torch.zeros(16, 64), fmt="int8", scale="int", group_size=32)  # an all-zero tensor
    assert not bool(sw.any()) and not bool(sg.any())


def test_old_int8_form_unchanged():
    w = torch.randn(8, 24)
    for kw in ({}, {"bits": 8}, {"fmt": "int8"}):
        if "bits" in kw:  # deprecated: the same result, with a warning naming fmt="int8"
            with pytest.warns(DeprecationWarning, match=r"quantize_weight: bits=8 is deprecated; .*fmt='int8'"):
                wq, sw = QW(w, **kw)
        else:
            wq, sw = QW(w, **kw)
        rq, rs = R.quantize_weight_ref(w, 8)
        assert torch.equal(wq, rq) and torch.equal(sw, rs)
        assert torch.equal(zqkernels.dequantize(wq, sw, fmt="int8"), wq.float() * sw[:, None])


def test_shape_rules():
    # no N rule: the weights are not packed
    wq, sw, sg = QW(torch.randn(5, 64), fmt="int8", scale="int", group_size=32)
    assert wq.shape == (5, 64) and sg.shape == (5, 2)
    # K % g == 0 (every g is a multiple of 32, so K % 32 == 0 follows)
    with pytest.raises(ValueError, match=r"quantize_weight: group_size 128 must divide K == 4544 .*takes group_size "
                       r"\[32, 64\]"):
        QW(torch.randn(16, 4544), fmt="int8", scale="int", group_size=128)
    with pytest.raises(ValueError, match=r"quantize_weight: group_size must be one of \(32, 64, 128, 256\) or None"):
        QW(torch.randn(16, 96), fmt="int8", scale="int", group_size=48)
    # per channel: K % 32 == 0 (the op's group size is a multiple of 32) and K <= 131071
    with pytest.raises(ValueError, match=r"per channel \(one group of K\) need K % 32 == 0 .*got K == 48"):
        QW(torch.randn(4, 48), fmt="int8", scale="int")
    with pytest.raises(ValueError, match=r"quantize_weight: INT8 group scales need group_size <= 131071 .*K == 131104"):
        QW(torch.randn(1, 131104), fmt="int8", scale="float")
    with pytest.raises(ValueError, match=r"quantize_weight: INT8 group scales need K > 0"):
        QW(torch.randn(4, 0), fmt="int8", scale="int", group_size=32)


# ------------------------------------------------------------------------------------------------
# The reference against exact Python ints


def _exact(xq, wq, sx, sw, sg, bias=None, act="none"):
    """y in float64 from Python ints: P per group, times sg, summed (int scales: an exact Python int)."""
    M, K = xq.shape
    N, G = sg.shape
    g = K // G
    x, q = xq.tolist(), wq.tolist()
    s = sg.tolist()
    out = []
    for m in range(M):
        row = []
        for n in range(N):
            acc = 0
            for j in range(G):
                P = sum(x[m][k] * q[n][k] for k in range(j * g, (j + 1) * g))
                acc += s[n][j] * P  # int * int exact; float scales: float * int (exact products)
            v = float(acc) * float(sx.reshape(-1)[m % sx.numel()]) * float(sw.reshape(-1)[n % sw.numel()])
            row.append(v + (float(bias[n]) if bias is not None else 0.0))
        out.append(row)
    return R.gemm.ACTIVATIONS[act](torch.tensor(out, dtype=torch.float64))


@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("act", ["none", "gelu", "silu"])
def test_reference_exact_random(scale, act):
    """Random operands over the full int8 range (-128 included) and random scales up to the bound."""
    M, N, K, g = 3, 16, 128, 32
    xq = torch.randint(-128, 128, (M, K), dtype=I8)
    wq = torch.randint(-128, 128, (N, K), dtype=I8)
    if scale == "int":
        sg = torch.randint(0, R.group_max_scale(g, 128) + 1, (N, K // g), dtype=I32)
    else:
        sg = torch.rand(N, K // g)
    sx, sw, bias = torch.rand(M) * 1e-2, torch.rand(N) * 1e-3, torch.randn(N)
    y = R.w8a8_group_gemm_ref(xq, wq, sx, sw, sg, bias, torch.float64, activation=act)
    torch.testing.assert_close(y, _exact(xq, wq, sx, sw, sg, bias, act), rtol=1e-13, atol=1e-13)
    # the op on CPU is the reference, rounded once
    for out_dtype in (torch.bfloat16, torch.float16, F32):
        b = bias.to(out_dtype)
        got = zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, b, out_dtype, activation=act,
                                        max_scale=R.group_max_scale(g, 128) if scale == "int" else None)
        assert got.dtype == out_dtype and got.shape == (M, N)
        assert torch.equal(got, R.w8a8_group_gemm_ref(xq, wq, sx, sw, sg, b, out_dtype, activation=act))


def test_reference_quantized_and_dequantized():
    """Quantizer + reference against dequantize + a dense float64 GEMM, and against the float layer."""
    M, N, K = 8, 64, 512
    x, w = torch.randn(M, K), torch.randn(N, K)
    xq, sx = zqkernels.quantize_per_token(x)
    ref = x.double() @ w.double().t()
    for g in (32, 128, None):
        for scale in ("int", "float"):
            wq, sw, sg = QW(w, fmt="int8", scale=scale, group_size=g)
            y = R.w8a8_group_gemm_ref(xq, wq, sx, sw, sg, out_dtype=torch.float64)
            dq = zqkernels.dequantize(wq, sw, sg, fmt="int8").double()
            dense = xq.double() @ dq.t() * sx.double()[:, None]  # dq rounded to fp32: 2^-24 per weight
            assert float((y - dense).norm() / y.norm()) < 1e-6
            assert float((y - ref).norm() / ref.norm()) < 0.02  # INT8 x INT8: ~1 %


def test_reference_shares_w4a8_math():
    """w4a8_gemm_ref on INT4 codes == w8a8_group_gemm_ref on the same codes held as int8."""
    M, N, K = 4, 32, 256
    xq = torch.randint(-128, 128, (M, K), dtype=I8)
    codes = torch.randint(-8, 8, (N, K), dtype=I8)
    for sg in (torch.randint(0, 2**15, (N, 4), dtype=I32), torch.rand(N, 4)):
        sx, sw = torch.rand(M), torch.rand(N)
        a = R.w4a8_gemm_ref(xq, R.pack_int4(codes), sx, sw, sg, out_dtype=torch.float64)
        b = R.w8a8_group_gemm_ref(xq, codes, sx, sw, sg, out_dtype=torch.float64)
        assert torch.equal(a, b)


@pytest.mark.parametrize("K", [16384, 28672])
@pytest.mark.parametrize("g", [32, 128])
def test_adversarial_exact(K, g):
    """All -128 activations x all -127 / +127 weights x the largest scales one group allows: each
    group's |P| * s is just below 2^31, the totals far above (an int32 accumulator would wrap)."""
    M, N = 2, 4
    smax = R.group_max_scale(g, 128)
    xq = torch.full((M, K), -128, dtype=I8)
    wq = torch.full((N, K), -127, dtype=I8)
    wq[1::2] = 127
    sg = torch.full((N, K // g), smax, dtype=I32)
    sg[2:] = R.group_alpha_max(g, 128)
    sx, sw = torch.full((M,), 2.0**-10), torch.full((N,), 2.0**-20)  # powers of two: exact products
    y = R.w8a8_group_gemm_ref(xq, wq, sx, sw, sg, out_dtype=torch.float64)
    for n in range(N):
        s, wv = int(sg[n, 0]), int(wq[n, 0])
        P = g * (-128) * wv  # Python ints
        assert abs(s * P) <= INT32_MAX and abs(s * P) > 2**29  # one group fits int32, with little room
        exact = (K // g) * s * P
        assert abs(exact) > INT32_MAX
        assert float(y[0, n]) == exact * 2.0**-30 and float(y[1, n]) == float(y[0, n])
    got = zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, out_dtype=F32, max_scale=smax)
    assert torch.equal(got, y.float())
    yf = R.w8a8_group_gemm_ref(xq, wq, sx, sw, torch.ones(N, K // g), out_dtype=torch.float64)  # float scales
    assert float(yf[0, 0]) == K * 128 * 127 * 2.0**-30


# ------------------------------------------------------------------------------------------------
# The op: paths, custom op, fake tensors, compile


def test_per_tensor_scales_and_empty():
    M, N, K = 3, 16, 64
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K))
    wq, sw, sg = QW(torch.randn(N, K), fmt="int8", scale="int", group_size=32)
    y = zqkernels.w8a8_group_gemm(xq, wq, sx[:1].contiguous(), sw[:1].contiguous(), sg, out_dtype=F32)
    want = R.w8a8_group_gemm_ref(xq, wq, sx[:1].expand(M), sw[:1].expand(N), sg, out_dtype=F32)
    assert torch.equal(y, want)
    e = zqkernels.w8a8_group_gemm(xq[:0], wq, sx[:0], sw, sg)
    assert e.shape == (0, N) and e.dtype == torch.bfloat16


def test_meta_device():
    y = zqkernels.w8a8_group_gemm(torch.empty(5, 64, dtype=I8, device="meta"), torch.empty(16, 64, dtype=I8, device="meta"),
                                  torch.empty(5, device="meta"), torch.empty(16, device="meta"),
                                  torch.empty(16, 2, dtype=I32, device="meta"), out_dtype=torch.float16)
    assert y.device.type == "meta" and y.shape == (5, 16) and y.dtype == torch.float16


def test_opcheck_and_fake():
    M, N, K = 5, 32, 256
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K))
    for scale in ("int", "float"):
        wq, sw, sg = QW(torch.randn(N, K), fmt="int8", scale=scale, group_size=64)
        bias = torch.randn(N, dtype=torch.bfloat16)
        spec = f"int8_group_{scale}"
        torch.library.opcheck(OP, (xq, wq, sx, sw, sg, None, spec, torch.bfloat16))
        torch.library.opcheck(OP, (xq, wq, sx, sw, sg, bias, spec, torch.bfloat16, "gelu"))
        if scale == "int":
            torch.library.opcheck(OP, (xq, wq, sx, sw, sg, None, spec, F32, "none", None, 1024))
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fx = torch.empty(M, K, dtype=I8)
        y = zqkernels.w8a8_group_gemm(fx, torch.empty(N, K, dtype=I8), torch.empty(M), torch.empty(N),
                                      torch.empty(N, K // 32, dtype=I32), out_dtype=torch.float16)
        assert y.shape == (M, N) and y.dtype == torch.float16
        with pytest.raises(ValueError, match=r"w8a8_group_gemm: sg must have K // group_size columns"):
            zqkernels.w8a8_group_gemm(fx, torch.empty(N, K, dtype=I8), torch.empty(M), torch.empty(N),
                                      torch.empty(N, 16, dtype=I32))


def test_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def f(x, wq, sw, sg, bias):
        xq, sx = zqkernels.quantize_per_token(x)
        return zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, bias, torch.bfloat16, activation="silu", max_scale=512)

    x = torch.randn(7, 256, dtype=torch.bfloat16)
    wq, sw, sg = QW(torch.randn(48, 256), fmt="int8", scale="int", group_size=128)
    bias = torch.randn(48, dtype=torch.bfloat16)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, wq, sw, sg, bias), f(x, wq, sw, sg, bias))
    torch._dynamo.reset()
    with pytest.raises(Exception, match=re.escape("w8a8_group_gemm: wq must be int8 [N, K] with K == xq.shape[1] (256)")):
        compiled(x, wq[:, :128].contiguous(), sw, sg, bias)


def test_debug_checks():
    xq, sx = zqkernels.quantize_per_token(torch.randn(2, 64))
    wq, sw, sg = QW(torch.randn(16, 64), fmt="int8", scale="int", group_size=32)
    assert int(sg.max()) == 1024
    bad = sg.clone()
    bad[0, 0] = -3
    zqkernels.w8a8_group_gemm(xq, wq, sx, sw, bad)  # without debug checks: not read on the host
    zqkernels.set_debug_checks(True)
    with pytest.raises(ValueError, match=r"w8a8_group_gemm: sg \(integer scales\) must lie in \[0, 4095\]"):
        zqkernels.w8a8_group_gemm(xq, wq, sx, sw, bad)
    with pytest.raises(ValueError, match=r"w8a8_group_gemm: sg \(integer scales\) must lie in \[0, 4095\].*8192\]"):
        zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg * 8)
    with pytest.raises(ValueError, match=r"w8a8_group_gemm: sg \(integer scales\) must lie in \[0, 512\]"):
        zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, max_scale=512)
    bad_sw = sw.clone()
    bad_sw[1] = float("nan")
    with pytest.raises(ValueError, match=r"w8a8_group_gemm.*sw"):
        zqkernels.w8a8_group_gemm(xq, wq, sx, bad_sw, sg)
    zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg, max_scale=int(sg.max()))
    zqkernels.w8a8_group_gemm(xq, wq, sx, sw, sg.float() / 1024)  # float scales: no range check


# ------------------------------------------------------------------------------------------------
# Bad input: the exception type and a message naming the op and the argument


def _args(N=32, K=128, M=2, scale="int"):
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K))
    wq, sw, sg = QW(torch.randn(N, K), fmt="int8", scale=scale, group_size=32)
    return xq, wq, sx, sw, sg


def _call(**over):
    a = dict(zip(("xq", "wq", "sx", "sw", "sg"), _args()))
    kw = {k: over.pop(k) for k in ("bias", "out_dtype", "activation", "max_scale") if k in over}
    a.update(over)
    return zqkernels.w8a8_group_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"], **kw)


def _big_group():
    K = 131104  # one group of K > 131071 (G = 1, a multiple of 32)
    return _call(xq=torch.zeros(1, K, dtype=I8), wq=torch.zeros(32, K, dtype=I8), sx=torch.ones(1),
                 sg=torch.ones(32, 1))


ERRORS = [
    ("out_dtype", lambda: _call(out_dtype=torch.int8), TypeError,
     r"w8a8_group_gemm: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got torch.int8"),
    ("xq_dtype", lambda: _call(xq=torch.zeros(2, 128)), TypeError, r"w8a8_group_gemm: xq must be int8 \[M, K\]"),
    ("xq_dim", lambda: _call(xq=torch.zeros(128, dtype=I8)), ValueError, r"w8a8_group_gemm: xq must be 2-D int8"),
    ("wq_dtype", lambda: _call(wq=torch.zeros(32, 64, dtype=U8)), TypeError,
     r"w8a8_group_gemm: wq must be int8 \[N, K\] \(from quantize_weight\(w, fmt='int8', scale=\.\.\., group_size=g\)\), got uint8"),
    ("wq_dim", lambda: _call(wq=torch.zeros(32, 128, 1, dtype=I8)), TypeError, r"w8a8_group_gemm: wq must be int8 \[N, K\]"),
    ("wq_K", lambda: _call(wq=torch.zeros(32, 64, dtype=I8)), ValueError,
     r"w8a8_group_gemm: wq must be int8 \[N, K\] with K == xq.shape\[1\] \(128\)"),
    ("sg_dtype", lambda: _call(sg=torch.ones(32, 4, dtype=I8)), TypeError,
     r"w8a8_group_gemm: sg must be the group scales .*int32 \(scale='int'\) or float32 \(scale='float'\), with N == 32"),
    ("sg_fp16", lambda: _call(sg=torch.ones(32, 4, dtype=torch.float16)), TypeError, r"w8a8_group_gemm: sg must be"),
    ("sg_rows", lambda: _call(sg=torch.ones(16, 4, dtype=I32)), TypeError, r"w8a8_group_gemm: sg must be .*N == 32"),
    ("sg_dim", lambda: _call(sg=torch.ones(32 * 4, dtype=I32)), TypeError, r"w8a8_group_gemm: sg must be"),
    ("sg_group32", lambda: _call(sg=torch.ones(32, 8, dtype=I32)), ValueError,
     r"w8a8_group_gemm: sg must have K // group_size columns .*multiple of 32.*got 8 columns"),
    ("sg_divides", lambda: _call(sg=torch.ones(32, 3, dtype=I32)), ValueError,
     r"w8a8_group_gemm: sg must have K // group_size columns for a group size that divides K \(128\)"),
    ("sg_empty", lambda: _call(sg=torch.ones(32, 0, dtype=I32)), ValueError, r"w8a8_group_gemm: sg must have"),
    ("group_max", _big_group, ValueError, r"w8a8_group_gemm: group_size must be at most 131071 .*got group_size 131104"),
    ("sx_dtype", lambda: _call(sx=torch.ones(2, dtype=torch.float64)), TypeError, r"w8a8_group_gemm: sx must be float32"),
    ("sx_shape", lambda: _call(sx=torch.ones(3)), ValueError, r"w8a8_group_gemm: sx must be float32 \[M\] with M == 2"),
    ("sw_shape", lambda: _call(sw=torch.ones(5)), ValueError, r"w8a8_group_gemm: sw must be float32 \[N\] with N == 32"),
    ("bias_dtype", lambda: _call(bias=torch.ones(32)), TypeError,
     r"w8a8_group_gemm: bias must have the output dtype \(bfloat16\)"),
    ("bias_shape", lambda: _call(bias=torch.ones(16, dtype=torch.bfloat16)), ValueError,
     r"w8a8_group_gemm: bias must be \[N\] with N == wq.shape\[0\] \(32\)"),
    ("activation", lambda: _call(activation="relu"), ValueError, r"w8a8_group_gemm: activation must be one of"),
    ("sg_contiguous", lambda: _call(sg=torch.ones(4, 32, dtype=I32).t()), ValueError,
     r"w8a8_group_gemm: sg must be contiguous"),
    ("wq_contiguous", lambda: _call(wq=torch.zeros(128, 32, dtype=I8).t()), ValueError,
     r"w8a8_group_gemm: wq must be contiguous"),
    ("rows", lambda: _call(xq=torch.zeros(128, 2, dtype=I8).t()), ValueError,
     r"w8a8_group_gemm: xq must have unit stride along K"),
    ("device", lambda: _call(sx=torch.ones(2, device="meta")), ValueError,
     r"w8a8_group_gemm: all tensors must be on one device"),
    ("max_scale_float", lambda: _call(sg=torch.ones(32, 4), max_scale=1024), ValueError,
     r"w8a8_group_gemm: max_scale applies to integer scales \(int32 sg\) only"),
    ("max_scale_range", lambda: _call(max_scale=4096), ValueError,
     r"w8a8_group_gemm: max_scale must be an int in \[1, 4095\] for group_size 32 .*got 4096"),
    ("max_scale_range_g128", lambda: _call(sg=torch.ones(32, 1, dtype=I32), max_scale=1024), ValueError,
     r"w8a8_group_gemm: max_scale must be an int in \[1, 1023\] for group_size 128"),
    ("max_scale_zero", lambda: _call(max_scale=0), ValueError, r"w8a8_group_gemm: max_scale must be an int in \[1, 4095\]"),
    ("max_scale_float_value", lambda: _call(max_scale=1024.0), ValueError, r"w8a8_group_gemm: max_scale must be an int"),
    ("max_scale_bool", lambda: _call(max_scale=True), ValueError, r"w8a8_group_gemm: max_scale must be an int"),
    ("ref_act", lambda: R.w8a8_group_gemm_ref(*_args(), activation="relu"), ValueError,
     r"w8a8_group_gemm_ref: activation must be one of"),
    ("ref_xq", lambda: R.w8a8_group_gemm_ref(torch.zeros(2, 128), *_args()[1:]), TypeError,
     r"w8a8_group_gemm_ref: xq must be int8 \[M, K\]"),
    ("ref_wq", lambda: R.w8a8_group_gemm_ref(_args()[0], torch.zeros(32, 64, dtype=U8), *_args()[2:]), TypeError,
     r"w8a8_group_gemm_ref: wq must be int8 \[N, K\]"),
    ("ref_wq_K", lambda: R.w8a8_group_gemm_ref(_args()[0], torch.zeros(32, 64, dtype=I8), *_args()[2:4],
                                               torch.ones(32, 2, dtype=I32)), ValueError,
     r"w8a8_group_gemm_ref: wq must be \[N, K\] with K == xq.shape\[1\] \(128\)"),
    ("ref_sg", lambda: R.w8a8_group_gemm_ref(*_args()[:4], torch.ones(32, 4, dtype=torch.float16)), TypeError,
     r"w8a8_group_gemm_ref: sg must be int32 \(integer scales\) or float32"),
    ("ref_sg_shape", lambda: R.w8a8_group_gemm_ref(*_args()[:4], torch.ones(32, 3, dtype=I32)), ValueError,
     r"w8a8_group_gemm_ref: sg must be \[N, G\] == \[32, G\] with G dividing K == 128"),
    ("qw_scale", lambda: QW(torch.randn(16, 64), fmt="int8", scale="m1", group_size=32), ValueError,
     r"quantize_weight: scale must be one of \('int', 'float'\) \(fmt='int8'\), got 'm1'"),
    ("qw_alpha_pow2", lambda: QW(torch.randn(16, 64), fmt="int8", scale="int", group_size=32, alpha=1000), ValueError,
     r"quantize_weight: alpha must be a power of two int >= 1 .*got 1000"),
    ("qw_alpha_zero", lambda: QW(torch.randn(16, 64), fmt="int8", scale="int", group_size=32, alpha=0), ValueError,
     r"quantize_weight: alpha must be a power of two int >= 1"),
    ("qw_alpha_float_scale", lambda: QW(torch.randn(16, 64), fmt="int8", scale="float", group_size=32, alpha=64), ValueError,
     r"quantize_weight: alpha applies to integer group scales only \(scale='int'\), got scale='float'"),
    ("qw_alpha_per_channel_old", lambda: QW(torch.randn(16, 64), fmt="int8", alpha=64), ValueError,
     r"quantize_weight: alpha applies to integer group scales only \(fmt='int8' with scale='int'; without scale"),
    ("qw_fp8_group", lambda: QW(torch.randn(16, 64), fmt="fp8", group_size=32), ValueError,
     r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha \(FP8 E4M3 with one float scale per row\)"),
    ("qw_nan", lambda: QW(torch.full((16, 64), float("nan")), fmt="int8", scale="int", group_size=32), ValueError,
     r"quantize_weight: w has NaN/Inf values in 16 rows"),
    ("dq_sg_dtype", lambda: zqkernels.dequantize(torch.zeros(32, 128, dtype=I8), torch.ones(32),
                                                  torch.zeros(32, 4, dtype=I8), fmt="int8"), TypeError,
     r"dequantize: sg must be int32 \(integer scales\) or float32 \(float scales\) for fmt='int8', got int8"),
    ("dq_sg_shape", lambda: zqkernels.dequantize(torch.zeros(32, 128, dtype=I8), torch.ones(32),
                                                  torch.ones(32, 3, dtype=I32), fmt="int8"), ValueError,
     r"dequantize: sg must be \[N, G\] == \[32, G\] with G dividing K == 128"),
    ("dq_group", lambda: zqkernels.dequantize(torch.zeros(32, 128, dtype=I8), torch.ones(32),
                                               torch.ones(32, 8, dtype=I32), fmt="int8"), ValueError,
     r"dequantize: group_size must be one of \(32, 64, 128, 256\) or None .*got 16"),
    ("ref_q_group", lambda: R.quantize_int8_group_ref(torch.randn(16, 128), 48), ValueError,
     r"quantize_int8_group_ref: group_size must be a positive divisor of K == 128, got 48"),
    ("ref_q_alpha", lambda: R.quantize_int8_group_ref(torch.randn(16, 128), 32, alpha=4096), ValueError,
     r"quantize_int8_group_ref: alpha=4096 exceeds 2048"),
    ("ref_q_scale", lambda: R.quantize_int8_group_ref(torch.randn(16, 128), 32, "pow2"), ValueError,
     r"quantize_int8_group_ref: scale must be one of \('int', 'float'\)"),
]


@pytest.mark.parametrize("fn,exc,match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
