"""The pure-torch references (zqkernels.reference) against hand-computed values and math properties."""

from __future__ import annotations

import pytest
import torch
from conftest import X_DTYPES
from zqkernels.reference import int8_gemm_ref, quantize_per_token_ref, quantize_weight_ref


def f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def test_quantize_hand_computed():
    # amax 4 -> inv = 127 / 4 = 31.75 (exact); 1 * 31.75 = 31.75 -> 32; -2 * 31.75 = -63.5 -> -64
    # (half to even); 0.5 * 31.75 = 15.875 -> 16; 4 -> 127.
    x = torch.tensor([[1.0, -2.0, 0.5, 4.0]])
    xq, sx = quantize_per_token_ref(x)
    assert xq.dtype == torch.int8 and sx.dtype == torch.float32
    assert xq.tolist() == [[32, -64, 16, 127]]
    assert torch.equal(sx, (f32(4.0) / f32(127.0)).reshape(1))


def test_quantize_rounds_half_to_even():
    # amax 127 -> inv = 1, so q = round(x) exactly; ties go to the even neighbour.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 0.49, 126.5]])
    xq, sx = quantize_per_token_ref(x)
    assert xq.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4, 0, 126]]
    assert sx.item() == 1.0


def test_quantize_uses_ieee_division():
    # The kernels divide once per row in fp32 (correctly rounded). Computing a quotient or product
    # of two fp32 values in float64 and rounding to fp32 gives exactly that correctly rounded
    # result, so this expectation does not depend on how torch evaluates fp32 division (torch turns
    # `127.0 / t` into reciprocal-then-multiply, which rounds twice and differs for some amax).
    g = torch.Generator().manual_seed(0)
    amax = torch.rand(100_000, generator=g) * 100 + 1e-3
    # values that scale to about k + 0.5: a one-ulp error in inv flips the rounding of ~12% of them
    k = torch.randint(0, 127, (100_000,), generator=g).float()
    x = torch.stack([amax, amax * ((k + 0.5) / 127)], dim=1)
    xq, sx = quantize_per_token_ref(x)
    inv = (127.0 / amax.double()).float()
    expected_q = torch.round((x[:, 1].double() * inv.double()).float()).to(torch.int8)
    assert torch.equal(xq[:, 1], expected_q)
    assert torch.equal(sx, (amax.double() / 127.0).float())


def test_quantize_zero_rows_and_empty():
    x = torch.randn(4, 9)
    x[1] = 0
    x[3] = -0.0
    xq, sx = quantize_per_token_ref(x)
    assert sx[1] == 0 and sx[3] == 0 and (xq[1] == 0).all() and (xq[3] == 0).all()
    assert torch.isfinite(sx).all()
    # the other rows are unaffected by the zero rows
    xq_other, sx_other = quantize_per_token_ref(x[[0, 2]])
    assert torch.equal(xq[[0, 2]], xq_other) and torch.equal(sx[[0, 2]], sx_other)
    for M, K in ((0, 8), (3, 0), (0, 0)):
        xq, sx = quantize_per_token_ref(torch.zeros(M, K))
        assert xq.shape == (M, K) and xq.dtype == torch.int8
        assert sx.shape == (M,) and (sx == 0).all()


def test_quantize_outlier_row():
    x = torch.tensor([[1e4, 1.0, -1.0, 0.01, -39.0, 40.0]])
    xq, sx = quantize_per_token_ref(x)
    # 1 * 127 / 1e4 = 0.0127 -> 0; 39 * 0.0127 = 0.4953 -> 0; 40 * 0.0127 = 0.508 -> 1
    assert xq.tolist() == [[127, 0, 0, 0, 0, 1]]
    assert torch.equal(sx, (f32(1e4) / f32(127.0)).reshape(1))


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_quantize_properties(dtype):
    x = (torch.randn(64, 300) * torch.logspace(-3, 3, 64)[:, None]).to(dtype)
    xq, sx = quantize_per_token_ref(x)
    xf = x.float()
    assert int(xq.min()) >= -127 and int(xq.max()) <= 127  # -128 never appears
    assert torch.equal(xq.abs().amax(1), torch.full((64,), 127, dtype=torch.int8))  # amax maps to 127
    assert torch.equal(sx, xf.abs().amax(1) / torch.full((64,), 127.0))
    # round to nearest: |q * s - x| <= s / 2, up to fp32 rounding of x * inv
    err = (xq.float() * sx[:, None] - xf).abs()
    assert (err <= sx[:, None] * (0.5 + 1e-5)).all()
    # the input dtype only matters through its values: bf16/fp16 convert to fp32 exactly
    xq32, sx32 = quantize_per_token_ref(xf)
    assert torch.equal(xq, xq32) and torch.equal(sx, sx32)


def test_quantize_strided_rows():
    big = torch.randn(16, 40)
    x = big[::2, 3:35]  # row stride 80, unit column stride
    xq, sx = quantize_per_token_ref(x)
    xq_c, sx_c = quantize_per_token_ref(x.contiguous())
    assert torch.equal(xq, xq_c) and torch.equal(sx, sx_c) and xq.is_contiguous()


def test_quantize_non_finite_rows_are_visible():
    x = torch.randn(3, 8)
    x[0, 2] = float("nan")
    x[1, 5] = float("inf")
    xq, sx = quantize_per_token_ref(x)
    assert torch.isnan(sx[0]) and torch.isinf(sx[1])
    ref2, s2 = quantize_per_token_ref(x[2:])
    assert torch.equal(xq[2:], ref2) and torch.equal(sx[2:], s2)


@pytest.mark.parametrize("bits,qmax", [(8, 127), (4, 7)])
def test_quantize_weight_range(bits, qmax):
    w = torch.randn(48, 80) * torch.logspace(-2, 2, 48)[:, None]
    wq, sw = quantize_weight_ref(w, bits=bits)
    assert wq.dtype == torch.int8 and sw.dtype == torch.float32 and sw.shape == (48,)
    assert int(wq.min()) >= -qmax and int(wq.max()) <= qmax
    assert (wq.abs().amax(1) == qmax).all()
    assert torch.equal(sw, w.abs().amax(1) / torch.full((48,), float(qmax)))
    err = (wq.float() * sw[:, None] - w).abs()
    assert (err <= sw[:, None] * (0.5 + 1e-5)).all()


def test_quantize_weight_bits_8_is_per_token_math():
    w = torch.randn(32, 64)
    assert all(torch.equal(a, b) for a, b in zip(quantize_weight_ref(w), quantize_per_token_ref(w)))


@pytest.mark.parametrize("bits", [0, 2, 3, 16, "8"])
def test_quantize_weight_bad_bits(bits):
    with pytest.raises(ValueError, match="quantize_weight_ref: bits must be one of"):
        quantize_weight_ref(torch.randn(4, 4), bits=bits)


def naive_gemm(xq, wq, sx, sw, bias):
    M, K = xq.shape
    N = wq.shape[0]
    out = []
    for m in range(M):
        row = []
        for n in range(N):
            acc = sum(int(xq[m, k]) * int(wq[n, k]) for k in range(K))
            v = float(sx[m]) * float(sw[n]) * acc
            row.append(v + (float(bias[n]) if bias is not None else 0.0))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_int8_gemm_ref_matches_naive_loop(with_bias, out_dtype):
    g = torch.Generator().manual_seed(3)
    M, N, K = 3, 5, 7
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    sx = torch.rand(M, generator=g)
    sw = torch.rand(N, generator=g)
    bias = torch.randn(N, generator=g).to(out_dtype) if with_bias else None
    out = int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype=out_dtype)
    assert out.dtype == out_dtype and out.shape == (M, N)
    assert torch.equal(out, naive_gemm(xq, wq, sx, sw, bias).to(out_dtype))


def test_int8_gemm_ref_is_exact_at_the_extremes():
    # Sums up to K * 127^2 = 66,064,384 > 2^24: an odd value like 66,064,257 has no fp32
    # representation, so fp32 accumulation would round it; float64 does not.
    K = 4096
    xq = torch.full((2, K), 127, dtype=torch.int8)
    xq[1, ::2] = -127
    wq = torch.full((3, K), 127, dtype=torch.int8)
    wq[2, 1] = 126
    ones = torch.ones(2), torch.ones(3)
    out = int8_gemm_ref(xq, wq, *ones, out_dtype=torch.float64)
    top = 127 * 127 * K
    assert out.tolist() == [[top, top, top - 127], [0, 0, -127]]
    assert float(torch.tensor(top - 127, dtype=torch.float32)) != top - 127


def test_int8_gemm_ref_empty():
    for M, N, K in ((0, 8, 16), (4, 0, 16), (4, 8, 0)):
        bias = torch.arange(N, dtype=torch.bfloat16)
        out = int8_gemm_ref(
            torch.zeros(M, K, dtype=torch.int8),
            torch.zeros(N, K, dtype=torch.int8),
            torch.ones(M),
            torch.ones(N),
            bias,
        )
        assert out.shape == (M, N)
        assert torch.equal(out, bias.expand(M, N))
