"""FP8 E4M3 and FP4 E2M1 (ZeroQuant-FP) on CPU: the formats of docs/FP8.md checked against
independent pure-Python definitions (bytes, nearest-even rounding, the m16k64 layout written as the
document's loop), the FP4 -> FP8 integer model, the scale policies, the references and the public
ops' argument checks. No GPU needed.
"""

from __future__ import annotations

import math
import random
import struct

import pytest
import torch
import zqkernels
from zqkernels import reference as R
from zqkernels.formats import E2M1_VALUES, GemmSpec
from zqkernels.reference import quantize as RQ

F8 = torch.float8_e4m3fn
U8 = torch.uint8
QUANT_OP = torch.ops.zqkernels.quantize_per_token.default

# ------------------------------------------------------------------------------------------------
# Independent pure-Python definitions (docs/FP8.md), sharing nothing with the package.


def fp8_value(byte: int) -> float:
    """E4M3 byte -> value (bias 7, subnormals k * 2^-9, S.1111.111 is NaN)."""
    s, f, m = byte >> 7, (byte >> 3) & 15, byte & 7
    if f == 15 and m == 7:
        return math.nan
    v = m * 2.0**-9 if f == 0 else (1 + m / 8) * 2.0 ** (f - 7)
    return -v if s else v


FP8_POS = [(fp8_value(b), b) for b in range(127)]  # every finite non-negative byte, increasing


def fp8_rne_byte(v: float) -> int:
    """The E4M3 byte nearest to v, ties to the even byte (even mantissa), saturating at +-448."""
    sign = 0x80 if math.copysign(1.0, v) < 0 else 0
    a = min(abs(v), 448.0)
    best = min(FP8_POS, key=lambda vb: (abs(vb[0] - a), vb[1] & 1))
    return best[1] | sign


def fp8_exact_byte(v: float) -> int:
    """The byte of a value E4M3 represents exactly (raises otherwise)."""
    b = fp8_rne_byte(v)
    assert fp8_value(b) == v, (v, b)
    return b


def e2m1_value(code: int) -> float:
    mag = E2M1_VALUES_PY[code & 7]
    return -mag if code & 8 else mag


E2M1_VALUES_PY = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def layout_index(n: int, k: int, K: int) -> tuple[int, int]:
    """docs/FP8.md's formula, verbatim: (byte index into wq, nibble parity) of weight (n, k)."""
    nt, rr = n // 16, n % 16
    r, hi = rr % 8, rr // 8
    kc, kk = k // 64, k % 64
    t, s, q, j = kk // 16, (kk % 16) // 8, (kk % 8) // 4, kk % 4
    lane = 4 * r + t
    nibble = 8 * (2 * s + q) + 4 * hi + j
    byte = ((nt * (K // 64) + kc) * 32 + lane) * 16 + nibble // 2
    return byte, nibble % 2


def pack_loop(codes: torch.Tensor) -> torch.Tensor:
    N, K = codes.shape
    out = [0] * (N * K // 2)
    for n in range(N):
        for k in range(K):
            byte, odd = layout_index(n, k, K)
            out[byte] |= int(codes[n, k]) << (4 * odd)
    return torch.tensor(out, dtype=U8).reshape(N, K // 2)


def heavy_tailed(N: int, K: int) -> torch.Tensor:
    """Weights with outlier channels and outlier groups (log-normal magnitudes, a few huge values)."""
    w = torch.randn(N, K) * torch.exp(2 * torch.randn(N, K))
    w[1, 5] = 1e4
    w[3, :32] *= 1e-4  # one group far below its channel: its exponent clamps at -5
    return w


def fp4_weights(N: int, K: int) -> list[tuple[str, torch.Tensor]]:
    return [("randn", torch.randn(N, K)), ("heavy", heavy_tailed(N, K)), ("bf16", torch.randn(N, K).bfloat16())]


# ------------------------------------------------------------------------------------------------
# FP4 -> FP8 exponent arithmetic: the kernel's integer procedure, modelled in pure Python.


@pytest.mark.parametrize("e", range(-5, 1))
def test_lut_model_bit_exact_all_codes(e):
    expected = [fp8_exact_byte(e2m1_value(c) * 2.0**e) for c in range(16)]
    for c in range(16):  # every code in every byte position of a register half
        for pos in range(4):
            codes4 = [(c + 5 * i) % 16 if i != pos else c for i in range(4)]
            got = RQ.fp4_lut_convert_model(codes4, e)
            assert got == [expected[x] for x in codes4], (e, codes4, [hex(b) for b in got])
    rng = random.Random(e)
    for _ in range(200):
        codes4 = [rng.randrange(16) for _ in range(4)]
        assert RQ.fp4_lut_convert_model(codes4, e) == [expected[x] for x in codes4]
    # the torch reference gives the same bytes (code 8 included: -0 is 0x80 in both)
    codes = torch.arange(16, dtype=U8).reshape(1, 16)
    ref = R.fp4_to_fp8_ref(codes, torch.tensor([[e]], dtype=torch.int8)).view(U8).flatten().tolist()
    assert ref == expected


def test_lut_model_breaks_outside_range():
    """Why sg is limited to [-5, 0]: at e = -6 code 1 (0.5 * 2^-6, an E4M3 subnormal) comes out as
    +0, and at e = 7 code 7's exponent field carries into the sign bit."""
    assert RQ.fp4_lut_convert_model([1, 0, 0, 0], -6)[0] != fp8_exact_byte(0.5 * 2.0**-6)
    assert RQ.fp4_lut_convert_model([7, 0, 0, 0], 7)[0] & 0x80  # +768 (not even E4M3) came out negative
    assert RQ.fp4_lut_convert_model([7, 0, 0, 0], 6)[0] == fp8_exact_byte(6.0 * 2.0**6)  # the last good e


def test_prmt_model():
    a, b = 0x33221100, 0x77665544
    assert RQ.prmt(a, b, 0x3210) == a
    assert RQ.prmt(a, b, 0x7654) == b
    assert RQ.prmt(a, b, 0x0415) == 0x00441155
    assert RQ.prmt(a, b, 0x0A15) == 0x00001155  # byte 2 (0x22) has sign bit 0: replicated to 0x00
    assert RQ.prmt(0x00800000, 0, 0x2A22) == 0x80FF8080  # bit 3: sign replication


# ------------------------------------------------------------------------------------------------
# E2M1 rounding


def test_e2m1_encode_exact_and_ties():
    vals = torch.tensor(E2M1_VALUES)
    assert torch.equal(R.e2m1_encode(vals), torch.arange(8, dtype=U8))
    assert torch.equal(R.e2m1_encode(-vals[1:]), torch.arange(9, 16, dtype=U8))
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    assert R.e2m1_encode(ties).tolist() == [0, 2, 2, 4, 4, 6, 6]  # to the even code
    assert R.e2m1_encode(-ties).tolist() == [0, 10, 10, 12, 12, 14, 14]
    assert R.e2m1_encode(torch.tensor([6.5, 1e30, -7.0, -0.0, 0.1, -0.1])).tolist() == [7, 7, 15, 0, 0, 0]
    assert R.e2m1_decode(torch.arange(16, dtype=U8)).tolist() == [e2m1_value(c) for c in range(16)]


def test_e2m1_encode_is_nearest_even():
    grid = torch.arange(-8 * 256, 8 * 256 + 1, dtype=torch.float32) / 256  # every tie and its neighbours
    got = R.e2m1_encode(grid).tolist()
    for v, code in zip(grid.tolist(), got):
        a = abs(v)
        best = min(range(8), key=lambda c: (abs(E2M1_VALUES_PY[c] - a), c & 1))
        want = best | (8 if v < 0 and best else 0)
        assert code == want, (v, code, want)


# ------------------------------------------------------------------------------------------------
# The m16k64 layout


def test_pack_layout_matches_formula():
    N, K = 32, 128
    codes = torch.randint(0, 16, (N, K), dtype=U8)
    packed = R.pack_fp4(codes)
    assert packed.shape == (N, K // 2) and packed.dtype == U8
    assert torch.equal(packed, pack_loop(codes))
    assert torch.equal(R.unpack_fp4(packed, N, K), codes)
    flat = packed.flatten().tolist()
    for n in range(N):  # element by element, both nibbles
        for k in range(K):
            byte, odd = layout_index(n, k, K)
            assert (flat[byte] >> (4 * odd)) & 0xF == int(codes[n, k]), (n, k)


def test_pack_lane_words():
    """Lane 4 r + t holds k [16 t, 16 t + 16) of rows r and r + 8; its 32-bit word w = 2 s + q holds
    4 consecutive k (16 t + 8 s + 4 q + j) of row r in the low half and of row r + 8 in the high half."""
    N, K = 16, 64
    codes = torch.randint(0, 16, (N, K), dtype=U8)
    words = R.pack_fp4(codes).flatten().view(torch.int32).tolist()
    for lane in range(32):
        r, t = lane // 4, lane % 4
        for w in range(4):  # word w = (s, q) = (w // 2, w % 2)
            word = words[lane * 4 + w] & 0xFFFFFFFF
            k0 = 16 * t + 8 * (w // 2) + 4 * (w % 2)
            for j in range(4):
                assert (word >> (4 * j)) & 0xF == codes[r, k0 + j]
                assert (word >> (16 + 4 * j)) & 0xF == codes[r + 8, k0 + j]


@pytest.mark.parametrize("N,K", [(16, 64), (48, 192), (128, 256)])
def test_pack_round_trip(N, K):
    codes = torch.randint(0, 16, (N, K), dtype=U8)
    assert torch.equal(R.unpack_fp4(R.pack_fp4(codes), N, K), codes)


# ------------------------------------------------------------------------------------------------
# Scale policies


def _group_values(w: torch.Tensor, g: int) -> torch.Tensor:
    N, K = w.shape
    return w.double().reshape(N, K // g, g)


@pytest.mark.parametrize("policy", ["free", "m1", "m2"])
@pytest.mark.parametrize("g", [32, 64, 128, None])
def test_fp4_policies_never_clip(policy, g):
    N, K = 32, 256
    for name, w in fp4_weights(N, K):
        codes, sw, sg = R.quantize_fp4_ref(w, g, policy)
        gg = K if g is None else g
        assert codes.shape == (N, K) and codes.dtype == U8 and sw.shape == (N,) and sw.dtype == torch.float32
        assert sg.shape == (N, K // gg)
        r = sg.double() if policy == "free" else torch.ldexp(torch.ones(N, K // gg, dtype=torch.float64), sg.long())
        ratio = _group_values(w, gg).abs() / (sw.double()[:, None, None] * r[:, :, None])
        assert float(ratio.max()) <= 6 * (1 + 2**-22), (name, float(ratio.max()))
        if policy == "free":
            assert sg.dtype == torch.float32 and bool((sg > 0).all()) and bool((sg <= 1).all())
        else:
            assert sg.dtype == torch.int8
            assert int(sg.min()) >= -5 and int(sg.max()) <= 0
        # codes are the nearest-even E2M1 of w / (sw r)
        v = w.float().reshape(N, K // gg, gg) / (sw[:, None, None] * r.float()[:, :, None])
        assert torch.equal(codes, R.e2m1_encode(v.reshape(N, K)))


def test_fp4_m1_scales_are_powers_of_two():
    N, K, g = 32, 256, 64
    for _, w in fp4_weights(N, K):
        _, sw, e = R.quantize_fp4_ref(w, g, "m1")
        m, _ = torch.frexp(sw)
        assert bool((m == 0.5).all())  # sw a power of two
        s = _group_values(w, g).abs().amax(dim=2) / 6
        s_prime = sw.double()[:, None] * torch.ldexp(torch.ones_like(s), e.long())
        # s' = 2^ceil(log2 s) unless clamped at e = -5: s <= s' < 2 s
        assert bool((s_prime >= s).all())
        assert bool(((s_prime < 2 * s) | (e == -5)).all())
        assert bool((e == 0).any(dim=1).all())  # the largest group sets sw


def test_fp4_m2_rounds_up_minimally():
    N, K, g = 32, 256, 32
    for _, w in fp4_weights(N, K):
        _, sw, e = R.quantize_fp4_ref(w, g, "m2")
        s = (_group_values(w, g).abs().amax(dim=2).float() / 6).double()
        assert torch.equal(sw.double(), s.amax(dim=1))  # sw the largest real scale
        s_prime = sw.double()[:, None] * torch.ldexp(torch.ones_like(s), e.long())
        assert bool((s_prime >= s).all())  # s' >= s: no clipping
        assert bool(((s_prime / 2 < s) | (e == -5)).all())  # the smallest such power of two
    assert int(R.quantize_fp4_ref(heavy_tailed(N, K), g, "m2")[2][3, 0]) == -5  # the clamped group


def test_fp4_power_of_two_boundaries():
    """ceil(log2) is exact: a group at exactly 1/4 of its channel gets e = -2 (m2) and one a float32
    ulp above gets e = -1; m1 maps s = 2^k exactly to 2^k."""
    w = torch.zeros(16, 128)
    w[:, 0] = 6.0 * 3  # channel scale s = 3
    w[:, 32] = 6.0 * 0.75  # ratio exactly 1/4
    w[:, 64] = torch.nextafter(torch.tensor(6.0 * 0.75), torch.tensor(100.0))  # just above 1/4
    w[:, 96] = 6.0 * 0.75 * 2**-7  # below 2^-5: clamped
    _, sw, e = R.quantize_fp4_ref(w, 32, "m2")
    assert float(sw[0]) == 3 and e[0].tolist() == [0, -2, -1, -5]
    w2 = torch.zeros(16, 64)
    w2[:, 0], w2[:, 32] = 6.0 * 2.0, 6.0 * 0.5  # s = 2 and 0.5, powers of two already
    _, sw, e = R.quantize_fp4_ref(w2, 32, "m1")
    assert float(sw[0]) == 2 and e[0].tolist() == [0, -2]
    w2[:, 32] = torch.nextafter(torch.tensor(3.0), torch.tensor(100.0))  # s just above 0.5 -> s' = 1
    assert R.quantize_fp4_ref(w2, 32, "m1")[2][0].tolist() == [0, -1]


@pytest.mark.parametrize("policy", ["free", "m1", "m2"])
def test_fp4_zero_rows_and_groups(policy):
    w = torch.randn(16, 128)
    w[2] = 0
    w[5, 64:] = 0
    codes, sw, sg = R.quantize_fp4_ref(w, 64, policy)
    assert bool(torch.isfinite(sw).all()) and bool(torch.isfinite(sg.float()).all())
    assert float(sw[2]) == 0 and float(sw[5]) > 0
    neutral = 1.0 if policy == "free" else 0
    assert sg[2].tolist() == [neutral, neutral] and float(sg[5, 1]) == neutral
    assert int(codes[2].max()) == 0 and int(codes[5, 64:].max()) == 0
    wq, sw2, sg2 = zqkernels.quantize_weight(w, fmt="fp4", group_size=64, scale=policy)
    dq = zqkernels.dequantize(wq, sw2, sg2, fmt="fp4")
    assert bool(torch.isfinite(dq).all()) and float(dq[2].abs().max()) == 0


def test_fp4_quantization_error_bound():
    """Pow2 policies: |w - dq| <= half the E2M1 spacing at |w| (<= 1 scaled unit: spacing 2 between
    4 and 6), so <= sw * r * 1 per group."""
    N, K, g = 32, 256, 32
    w = torch.randn(N, K)
    for policy in ("m1", "m2"):
        wq, sw, e = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale=policy)
        dq = zqkernels.dequantize(wq, sw, e, fmt="fp4")
        unit = (sw[:, None] * torch.ldexp(torch.ones(N, K // g), e.long())).repeat_interleave(g, dim=1)
        assert bool(((dq - w).abs() <= unit * (1 + 1e-6)).all())


# ------------------------------------------------------------------------------------------------
# FP8 per-token quantization


def test_fp8_cast_is_nearest_even_and_quantize_matches_definition():
    x = torch.randn(64, 96) * torch.exp(3 * torch.randn(64, 1))
    x[0, :10] = torch.tensor([1e-3, 1e-4, 1e-5, 1e-6, 0, -0.0, 1, -1, 2, 3])  # subnormals after scaling
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    assert xq.dtype == F8 and sx.dtype == torch.float32
    assert torch.equal(xq.view(U8), R.quantize_per_token_fp8_ref(x)[0].view(U8))
    amax = x.abs().amax(dim=1)
    assert torch.equal(sx, amax / torch.full_like(amax, 448.0))
    inv = torch.full_like(amax, 448.0) / amax
    prod = (x * inv[:, None]).flatten().tolist()  # fp32 products, as the kernel forms them
    got = xq.view(U8).flatten().tolist()
    for i in range(0, len(prod), 7):  # a sample, pure-Python nearest-even
        assert got[i] == fp8_rne_byte(prod[i]) or (prod[i] == 0 and got[i] in (0, 0x80)), (prod[i], got[i])


def test_fp8_per_token_edge_rows():
    x = torch.randn(6, 64)
    x[1] = 0  # zero row
    x[2] = torch.randn(64) * 1e-30  # tiny row: the 2^-64 prescale
    x[3] = x[0] * 2.0**-70  # exactly a scaled copy of row 0: same codes
    x[4, 7] = float("nan")
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    xd = xq.float()
    assert float(sx[1]) == 0 and float(xd[1].abs().max()) == 0
    assert torch.equal(xq[3].view(U8), xq[0].view(U8))
    assert float(sx[2]) > 0 and float(xd[2].abs().max()) == 448
    assert math.isnan(float(sx[4]))
    assert bool(torch.isfinite(sx[[0, 1, 2, 3, 5]]).all())


def test_fp8_per_token_saturation_and_error_bound():
    x = torch.randn(512, 80) * torch.exp(2 * torch.randn(512, 1))
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    xd = xq.float()
    assert float(xd.abs().max()) == 448 and not bool(torch.isnan(xd).any())
    arg = x.abs().argmax(dim=1)
    assert bool((xd.gather(1, arg[:, None]).abs() == 448).all())  # each row's amax lands on +-448
    err = (xd.double() * sx.double()[:, None] - x.double()).abs()
    # half an ulp of a 3-bit mantissa (2^-4 relative), or half the subnormal spacing (2^-10 * sx)
    bound = 2.0**-4 * x.double().abs() + 2.0**-10 * sx.double()[:, None] + 1e-6 * x.double().abs()
    assert bool((err <= bound).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_quantize_per_token_fp8(dtype):
    x = torch.randn(12, 40, dtype=dtype)
    torch.library.opcheck(QUANT_OP, (x, F8))
    torch.library.opcheck(QUANT_OP, (x, torch.int8))
    torch.library.opcheck(QUANT_OP, (torch.randn(6, 64, dtype=dtype)[:, 8:48], F8))


def test_quantize_per_token_fp8_through_custom_op():
    x = torch.randn(5, 32)
    xq, sx = QUANT_OP(x, F8)
    assert xq.dtype == F8
    assert torch.equal(xq.view(U8), zqkernels.quantize_per_token(x, F8)[0].view(U8))
    assert QUANT_OP(x)[0].dtype == torch.int8  # the default keeps int8 callers unchanged
    with torch._subclasses.fake_tensor.FakeTensorMode():
        fq, fs = zqkernels.quantize_per_token(torch.empty(3, 16), dtype=F8)
        assert fq.dtype == F8 and fq.shape == (3, 16) and fs.shape == (3,)


def test_fp8_weight_per_channel():
    w = torch.randn(24, 40)
    wq, sw = zqkernels.quantize_weight(w, fmt="fp8")
    xq, sx = zqkernels.quantize_per_token(w, dtype=F8)
    assert wq.dtype == F8 and torch.equal(wq.view(U8), xq.view(U8)) and torch.equal(sw, sx)
    with pytest.warns(DeprecationWarning, match=r"bits=8 with fmt='fp8' is deprecated; .*quantize_weight\(w, fmt='fp8'\)"):
        assert torch.equal(zqkernels.quantize_weight(w, 8, fmt="fp8")[0].view(U8), wq.view(U8))


# ------------------------------------------------------------------------------------------------
# References against naive float64 loops


def _act(name: str, v: float) -> float:
    if name == "gelu":
        return 0.5 * v * math.erfc(-v / math.sqrt(2))
    if name == "silu":
        return v / (1 + math.exp(-v))
    return v


def _naive_gemm(xv, wv, sx, sw, bias, act):
    M, N, K = len(xv), len(wv), len(xv[0])
    out = [[0.0] * N for _ in range(M)]
    for m in range(M):
        for n in range(N):
            acc = math.fsum(xv[m][k] * wv[n][k] for k in range(K))
            y = acc * (sx[m] * sw[n])
            if bias is not None:
                y += bias[n]
            out[m][n] = _act(act, y)
    return torch.tensor(out, dtype=torch.float64)


def _fp8_values(t: torch.Tensor) -> list[list[float]]:
    return [[fp8_value(b) for b in row] for row in t.view(U8).tolist()]


@pytest.mark.parametrize("act", ["none", "gelu", "silu"])
def test_fp8_gemm_ref_naive(act):
    M, N, K = 3, 16, 64
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K), dtype=F8)
    wq, sw = zqkernels.quantize_weight(torch.randn(N, K), fmt="fp8")
    bias = torch.randn(N)
    y = R.fp8_gemm_ref(xq, wq, sx, sw, bias, torch.float64, activation=act)
    want = _naive_gemm(_fp8_values(xq), _fp8_values(wq), sx.tolist(), sw.tolist(), bias.tolist(), act)
    torch.testing.assert_close(y, want, rtol=1e-13, atol=1e-13)
    assert R.fp8_gemm_ref(xq, wq, sx, sw).dtype == torch.bfloat16


def _fp4_weight_values(wq, sg, N, K) -> list[list[float]]:
    """FP8 weights the kernel multiplies, from the packed bytes by the document's formula."""
    flat = wq.flatten().tolist()
    G = sg.shape[1]
    g = K // G
    out = []
    for n in range(N):
        row = []
        for k in range(K):
            byte, odd = layout_index(n, k, K)
            v = e2m1_value((flat[byte] >> (4 * odd)) & 0xF)
            if sg.dtype == torch.int8:
                row.append(v * 2.0 ** int(sg[n, k // g]))
            else:
                row.append(fp8_value(fp8_rne_byte(f32(v * float(sg[n, k // g])))))
        out.append(row)
    return out


@pytest.mark.parametrize("policy", ["free", "m1", "m2"])
def test_w4a8_fp_gemm_ref_naive(policy):
    M, N, K, g = 3, 16, 128, 32
    w = heavy_tailed(N, K)
    w[7] *= 1e-3  # small ratios: the free policy's products fall into E4M3 subnormals
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K), dtype=F8)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale=policy)
    bias = torch.randn(N)
    y = R.w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, g, bias, torch.float64, activation="gelu")
    wv = _fp4_weight_values(wq, sg, N, K)
    want = _naive_gemm(_fp8_values(xq), wv, sx.tolist(), sw.tolist(), bias.tolist(), "gelu")
    torch.testing.assert_close(y, want, rtol=1e-13, atol=1e-13)
    # dequantize gives the same weights
    dq = zqkernels.dequantize(wq, sw, sg, fmt="fp4")
    torch.testing.assert_close(dq.double(), torch.tensor(wv, dtype=torch.float64) * sw.double()[:, None],
                               rtol=2**-24, atol=0)


def test_w4a8_fp_gemm_ref_close_to_float():
    M, N, K = 8, 64, 256
    x, w = torch.randn(M, K), torch.randn(N, K)
    xq, sx = zqkernels.quantize_per_token(x, dtype=F8)
    for policy in ("free", "m1", "m2"):
        wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=64, scale=policy)
        y = R.w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, 64, out_dtype=torch.float32)
        rel = float((y.double() - x.double() @ w.double().t()).norm() / (x.double() @ w.double().t()).norm())
        assert rel < 0.15, (policy, rel)


# ------------------------------------------------------------------------------------------------
# dequantize


def test_dequantize_all_formats():
    w = torch.randn(32, 128)
    for fmt in ("int8", "int4", "fp8"):
        wq, sw = zqkernels.quantize_weight(w, fmt=fmt)
        dq = zqkernels.dequantize(wq, sw, fmt=fmt)
        assert dq.dtype == torch.float32 and dq.shape == (32, 128)
        assert torch.equal(dq, wq.float() * sw[:, None])
        rel = float((dq - w).norm() / w.norm())
        assert rel < {"int8": 0.01, "int4": 0.2, "fp8": 0.05}[fmt], (fmt, rel)
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=32)
    dq = zqkernels.dequantize(wq, sw, sg, fmt="fp4", group_size=32, shape=(32, 128))
    assert dq.shape == (32, 128) and float((dq - w).norm() / w.norm()) < 0.15
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4")  # per channel: sg [N, 1], all 0
    assert sg.shape == (32, 1) and int(sg.abs().max()) == 0
    assert zqkernels.dequantize(wq, sw, sg, fmt="fp4").shape == (32, 128)


def test_quantize_weight_old_forms_unchanged():
    w = torch.randn(8, 24)
    for args, kw, bits in (((), {}, 8), ((4,), {}, 4), ((), {"fmt": "int4"}, 4), ((8,), {"fmt": "int8"}, 8)):
        if args:  # bits: deprecated, the same result
            with pytest.warns(DeprecationWarning, match=r"quantize_weight: bits=\d.* is deprecated"):
                wq, sw = zqkernels.quantize_weight(w, *args, **kw)
        else:
            wq, sw = zqkernels.quantize_weight(w, *args, **kw)
        rq, rs = R.quantize_weight_ref(w, bits)
        assert torch.equal(wq, rq) and torch.equal(sw, rs)


def test_gemm_spec_recipes():
    assert GemmSpec(act="fp8_e4m3", weight="fp8_e4m3").recipe == "fp8_rowwise"
    assert GemmSpec(act="fp8_e4m3", weight="fp8_e4m3", act_scale="tensor", weight_scale="tensor").recipe == "fp8_rowwise"
    for kind in ("pow2", "float"):
        spec = GemmSpec(act="fp8_e4m3", weight="fp4_e2m1", weight_scale="group", group_size=128, scale_kind=kind)
        assert spec.recipe == "w4a8_fp"
    with pytest.raises(NotImplementedError, match="GemmSpec: no kernel implements"):
        GemmSpec(act="fp8_e4m3", weight="fp4_e2m1", weight_scale="group", group_size=64, scale_kind="int").recipe
    with pytest.raises(NotImplementedError, match="GemmSpec: no kernel implements"):
        GemmSpec(act="int8", weight="fp8_e4m3").recipe


# ------------------------------------------------------------------------------------------------
# Bad input: the exception type and a message naming the op and the argument


def _w(N=32, K=128):
    return torch.randn(N, K)


def _nan_w():
    w = _w()
    w[3, 4] = float("nan")
    return w


QW = zqkernels.quantize_weight
QW_ERRORS = [
    ("fmt", lambda: QW(_w(), fmt="fp6"), ValueError, r"quantize_weight: fmt must be one of .*got 'fp6'"),
    ("scale", lambda: QW(_w(), fmt="fp4", scale="m3"), ValueError,
     r"quantize_weight: scale must be one of \('free', 'm1', 'm2'\) \(fmt='fp4'\), got 'm3'"),
    ("group_size", lambda: QW(_w(), fmt="fp4", group_size=48), ValueError,
     r"quantize_weight: group_size must be one of \(32, 64, 128\) or None .*got 48"),
    ("group_divides_K", lambda: QW(_w(32, 192), fmt="fp4", group_size=128), ValueError,
     r"quantize_weight: group_size 128 must divide K == 192 .*pad K"),
    ("N16", lambda: QW(_w(24, 128), fmt="fp4"), ValueError,
     r"quantize_weight: fmt='fp4' \(packed layout m16k64\) needs N % 16 == 0, got N == 24; pad w with 8 zero rows"),
    ("K64", lambda: QW(_w(32, 96), fmt="fp4", group_size=32), ValueError,
     r"quantize_weight: fmt='fp4' \(packed layout m16k64\) needs K % 64 == 0, got K == 96; pad w with 32 zero"),
    ("bits_fmt", lambda: QW(_w(), 8, fmt="fp4"), ValueError, r"quantize_weight: bits=8 contradicts fmt='fp4'"),
    ("bits_fmt_int", lambda: QW(_w(), 4, fmt="int8"), ValueError, r"quantize_weight: bits=4 contradicts fmt='int8'"),
    ("bits", lambda: QW(_w(), 2, fmt="fp4"), ValueError, r"quantize_weight: bits must be 8 or 4, got 2"),
    ("group_not_fp4", lambda: QW(_w(), fmt="fp8", group_size=32), ValueError,
     r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha .*got group_size=32, scale=None, alpha=None"),
    ("scale_not_fp4", lambda: QW(_w(), fmt="fp8", scale="m1"), ValueError,
     r"quantize_weight: fmt='fp8' takes no group_size, scale or alpha .*got group_size=None, scale='m1', alpha=None"),
    ("nan_fp4", lambda: QW(_nan_w(), fmt="fp4"), ValueError,
     r"quantize_weight: w has NaN/Inf values in 1 rows \(output channels \[3\]\)"),
    ("nan_fp8", lambda: QW(_nan_w(), fmt="fp8"), ValueError, r"quantize_weight: w has NaN/Inf values in 1 rows"),
    ("int_w_fp4", lambda: QW(torch.zeros(16, 64, dtype=torch.int8), fmt="fp4"), TypeError,
     r"quantize_weight: w must be a floating-point tensor \[N, K\], got int8"),
    ("rank", lambda: QW(torch.zeros(64), fmt="fp8"), ValueError, r"quantize_weight: w must be 2-D \[N, K\]"),
]


@pytest.mark.parametrize("fn,exc,match", [e[1:] for e in QW_ERRORS], ids=[e[0] for e in QW_ERRORS])
def test_quantize_weight_fp_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def _fp4():
    return QW(_w(), fmt="fp4", group_size=32)


DQ = zqkernels.dequantize
DQ_ERRORS = [
    ("fmt", lambda: DQ(*QW(_w()), fmt="nf4"), ValueError, r"dequantize: fmt must be one of .*got 'nf4'"),
    ("wq_dtype", lambda: DQ(*QW(_w()), fmt="fp8"), TypeError,
     r"dequantize: wq must be float8_e4m3fn for fmt='fp8', got int8 \[32, 128\]"),
    ("sw", lambda: DQ(QW(_w())[0], torch.ones(5), fmt="int8"), ValueError,
     r"dequantize: sw must be float32 with N == 32 values \(or 1\), got float32 \[5\]"),
    ("sg_missing", lambda: DQ(*_fp4()[:2], fmt="fp4"), ValueError, r"dequantize: fmt='fp4' needs sg"),
    ("sg_not_fp4", lambda: DQ(*QW(_w(), fmt="fp8"), torch.zeros(32, 4), fmt="fp8"), ValueError,
     r"dequantize: sg applies to fmt='fp4' only"),
    ("sg_shape", lambda: DQ(*_fp4(), fmt="fp4", group_size=64), ValueError,
     r"dequantize: sg must be \[N, K // group_size\] == \[32, 2\] \(group_size 64\), got int8 \[32, 4\]"),
    ("sg_infer", lambda: DQ(*_fp4()[:2], torch.zeros(32, 3, dtype=torch.int8), fmt="fp4"), ValueError,
     r"dequantize: sg must be \[N, G\] == \[32, G\] with G dividing K == 128"),
    ("sg_dtype", lambda: DQ(*_fp4()[:2], torch.zeros(32, 4, dtype=torch.float16), fmt="fp4"), TypeError,
     r"dequantize: sg must be int8 \(m1 / m2 exponents\) or float32 \(free ratios\), got float16"),
    ("sg_range", lambda: DQ(*_fp4()[:2], torch.full((32, 4), -6, dtype=torch.int8), fmt="fp4"), ValueError,
     r"dequantize: sg \(int8 exponents\) must lie in \[-5, 0\], got values in \[-6, -6\]"),
    ("shape", lambda: DQ(*_fp4(), fmt="fp4", shape=(32, 64)), ValueError,
     r"dequantize: shape \(32, 64\) does not match wq uint8 \[32, 64\] for fmt='fp4' \(\[32, 128\]\)"),
]


@pytest.mark.parametrize("fn,exc,match", [e[1:] for e in DQ_ERRORS], ids=[e[0] for e in DQ_ERRORS])
def test_dequantize_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_quantize_per_token_bad_dtype():
    with pytest.raises(TypeError, match=r"quantize_per_token: dtype must be torch.int8 or torch.float8_e4m3fn, got torch.float16"):
        zqkernels.quantize_per_token(torch.randn(4, 16), dtype=torch.float16)
    with pytest.raises(TypeError, match=r"quantize_per_token: x must be bfloat16, float16 or float32"):
        zqkernels.quantize_per_token(torch.zeros(4, 16, dtype=torch.int8), dtype=F8)
    with pytest.raises(TypeError, match=r"quantize_per_token: dtype must be"):
        QUANT_OP(torch.randn(4, 16), torch.float16)


REF_ERRORS = [
    ("pack_dtype", lambda: R.pack_fp4(torch.zeros(16, 64, dtype=torch.int8)), TypeError,
     r"pack_fp4: codes must be uint8 \[N, K\]"),
    ("pack_N", lambda: R.pack_fp4(torch.zeros(8, 64, dtype=U8)), ValueError,
     r"pack_fp4: the m16k64 layout needs N % 16 == 0, got N == 8"),
    ("unpack_shape", lambda: R.unpack_fp4(torch.zeros(16, 64, dtype=U8), 16, 64), TypeError,
     r"unpack_fp4: packed must be uint8 \[N, K // 2\] == \[16, 32\], got torch.uint8 \[16, 64\]"),
    ("unpack_K", lambda: R.unpack_fp4(torch.zeros(16, 16, dtype=U8), 16, 32), ValueError,
     r"unpack_fp4: the m16k64 layout needs K % 64 == 0, got K == 32"),
    ("lut_e_range", lambda: R.fp4_to_fp8_ref(torch.zeros(2, 4, dtype=U8), torch.tensor([[1], [0]])), ValueError,
     r"fp4_to_fp8_ref: e must lie in \[-5, 0\], got values in \[0, 1\]"),
    ("lut_e_dtype", lambda: R.fp4_to_fp8_ref(torch.zeros(2, 4, dtype=U8), torch.zeros(2, 1)), TypeError,
     r"fp4_to_fp8_ref: e must be an integer tensor"),
    ("lut_e_shape", lambda: R.fp4_to_fp8_ref(torch.zeros(2, 4, dtype=U8), torch.zeros(2, 3, dtype=torch.int8)),
     ValueError, r"fp4_to_fp8_ref: e must be \[N, K\] == \[2, 4\] or \[N, G\]"),
    ("float_r_dtype", lambda: R.fp4_to_fp8_float_ref(torch.zeros(2, 4, dtype=U8), torch.ones(2, 1).double()),
     TypeError, r"fp4_to_fp8_float_ref: r must be float32"),
    ("decode_dtype", lambda: R.e2m1_decode(torch.zeros(4, dtype=torch.int32)), TypeError,
     r"e2m1_decode: codes must be uint8"),
    ("encode_dtype", lambda: R.e2m1_encode(torch.zeros(4, dtype=torch.int32)), TypeError,
     r"e2m1_encode: v must be a floating-point tensor"),
    ("policy", lambda: R.quantize_fp4_ref(_w(), 32, "m4"), ValueError, r"quantize_fp4_ref: policy must be one of"),
    ("ref_group", lambda: R.quantize_fp4_ref(_w(), 48, "m2"), ValueError,
     r"quantize_fp4_ref: group_size must be a positive divisor of K == 128, got 48"),
    ("fp8_gemm_dtype", lambda: R.fp8_gemm_ref(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(2, 4, dtype=F8),
                                               torch.ones(2), torch.ones(2)), TypeError,
     r"fp8_gemm_ref: xq must be float8_e4m3fn, got torch.int8"),
    ("fp8_gemm_act", lambda: R.fp8_gemm_ref(torch.zeros(2, 4, dtype=F8), torch.zeros(2, 4, dtype=F8),
                                             torch.ones(2), torch.ones(2), activation="relu"), ValueError,
     r"fp8_gemm_ref: activation must be one of"),
    ("w4a8_sg_dtype", lambda: R.w4a8_fp_gemm_ref(torch.zeros(2, 64, dtype=F8), torch.zeros(16, 32, dtype=U8),
                                                  torch.ones(16), torch.zeros(16, 2, dtype=torch.int16),
                                                  torch.ones(2), 32), TypeError,
     r"w4a8_fp_gemm_ref: sg must be int8 \(exponents, m1 / m2\) or float32 \(ratios, free\), got torch.int16"),
    ("w4a8_sg_shape", lambda: R.w4a8_fp_gemm_ref(torch.zeros(2, 64, dtype=F8), torch.zeros(16, 32, dtype=U8),
                                                  torch.ones(16), torch.zeros(16, 1, dtype=torch.int8),
                                                  torch.ones(2), 32), ValueError,
     r"w4a8_fp_gemm_ref: sg must be \[N, K // group_size\] == \[16, 2\] \(K == 64, group_size == 32\), got \[16, 1\]"),
    ("w4a8_xq", lambda: R.w4a8_fp_gemm_ref(torch.zeros(2, 64), torch.zeros(16, 32, dtype=U8), torch.ones(16),
                                            torch.zeros(16, 2, dtype=torch.int8), torch.ones(2), 32), TypeError,
     r"w4a8_fp_gemm_ref: xq must be float8_e4m3fn \[M, K\], got torch.float32 \[2, 64\]"),
]


@pytest.mark.parametrize("fn,exc,match", [e[1:] for e in REF_ERRORS], ids=[e[0] for e in REF_ERRORS])
def test_reference_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
