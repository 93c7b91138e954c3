"""quantize_per_token on the GPU against the pure-torch reference (bit for bit).

Needs a GPU and a build with kernels; every test compares the kernel with ``zqkernels.reference``.
"""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    X_DTYPES,
    poison_next_allocation,
    requires_gpu,
)
from zqkernels import _ext
from zqkernels.reference import quantize_per_token_ref

pytestmark = requires_gpu

C = _ext._C


# ------------------------------------------------------------------------------------------------
# quantize_per_token: exact equality with the reference.


def check_quantize(x: torch.Tensor, what: str) -> None:
    M, K = x.shape
    poison_next_allocation(M * K, 0x80)
    poison_next_allocation(4 * M, 0xFF)
    xq, sx = zqkernels.quantize_per_token(x)
    assert (
        xq.device == x.device and xq.shape == (M, K) and xq.dtype == torch.int8 and sx.dtype == torch.float32
    )
    xq_ref, sx_ref = quantize_per_token_ref(x.cpu())  # on the CPU: independent of GPU arithmetic
    sx, xq = sx.cpu(), xq.cpu()
    bad_s = sx != sx_ref
    if bad_s.any():
        m = int(bad_s.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad_s.sum())} of {M} scales differ; first row {m}: got "
            f"{float(sx[m])!r}, expected {float(sx_ref[m])!r}"
        )
    bad_q = xq != xq_ref
    if bad_q.any():
        m, k = (int(i) for i in bad_q.nonzero()[0])
        inv = torch.full((), 127.0) / x[m].float().abs().amax().cpu()
        raise AssertionError(
            f"{what}: {int(bad_q.sum())} of {M * K} values differ; first at [{m}, {k}]: x={float(x[m, k])!r}, "
            f"x*inv={float(x[m, k].float().cpu() * inv)!r}, got {int(xq[m, k])}, expected {int(xq_ref[m, k])}"
        )


QUANT_M_SMALL = [1, 2, 3, 5, 8, 16, 17, 31, 64, 100, 127, 128]
QUANT_K = [1, 7, 100, 4095, 4096, 11008]


@pytest.mark.parametrize("K", QUANT_K)
@pytest.mark.parametrize("dtype", X_DTYPES)
def test_quantize_matches_reference(dtype, K):
    Ms = QUANT_M_SMALL + ([1000, 8192] if K >= 4095 else [1000])
    for M in Ms:
        x = torch.randn(M, K, device=DEV).to(dtype)
        check_quantize(x, f"{dtype} M={M} K={K}")


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_quantize_strided_rows(dtype):
    big = torch.randn(300, 4200, device=DEV).to(dtype)
    check_quantize(big[:, :4096], "row stride 4200")
    check_quantize(big[::3, 8:4103], "row stride 12600, offset 8")
    check_quantize(big[5:6, 1:101], "one row at an odd offset")


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_quantize_zero_rows_and_outliers(dtype):
    big_val = 3e4 if dtype == torch.float16 else 1e4
    x = torch.randn(257, 4096, device=DEV)
    x[::5] = 0  # all-zero rows: scale 0, values 0
    x[1, 17] = big_val  # one huge outlier: the rest of its row rounds to a few levels
    x[2] *= 1e-4  # tiny rows
    x[3, :] = torch.linspace(-1, 1, 4096, device=DEV)  # many exact ties after scaling
    x[4, ::2] = 127.0  # amax 127: inv = 1, so x rounds directly, with ties at .5
    x[4, 1::2] = torch.arange(2048, device=DEV) % 254 - 126.5
    x = x.to(dtype)
    check_quantize(x, "zero rows / outliers / ties")
    xq, sx = zqkernels.quantize_per_token(x)
    assert (sx[::5] == 0).all() and (xq[::5] == 0).all()


@pytest.mark.parametrize("dtype", X_DTYPES)
def test_quantize_near_ties(dtype):
    # Values that scale to about k + 0.5: a kernel whose 127 / amax is off by one ulp (reciprocal
    # then multiply, or a fast-math division) rounds many of them the other way.
    M, K = 4096, 256
    amax = torch.rand(M, 1, device=DEV) * 100 + 1e-3
    k = torch.randint(0, 127, (M, K), device=DEV).float()
    x = amax * ((k + 0.5) / 127) * torch.where(torch.rand(M, K, device=DEV) < 0.5, -1.0, 1.0)
    x[:, 0] = amax[:, 0]
    check_quantize(x.to(dtype), f"near ties {dtype}")


def test_quantize_non_finite_rows_are_visible():
    # docs/SCALES.md: amax propagates NaN, so a NaN/Inf row gets a NaN/Inf scale; other rows are exact.
    x = torch.randn(4, 256, device=DEV, dtype=torch.bfloat16)
    x[1, 3] = float("nan")
    x[2, 200] = float("inf")
    xq, sx = zqkernels.quantize_per_token(x)
    assert torch.isnan(sx[1]), f"NaN row: got scale {float(sx[1])}"
    assert torch.isinf(sx[2]), f"Inf row: got scale {float(sx[2])}"
    xq_ref, sx_ref = quantize_per_token_ref(x[[0, 3]].cpu())
    assert torch.equal(xq[[0, 3]].cpu(), xq_ref) and torch.equal(sx[[0, 3]].cpu(), sx_ref)


def test_quantize_empty():
    for M, K in ((0, 16), (5, 0), (0, 0)):
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV, dtype=torch.bfloat16))
        assert xq.shape == (M, K) and xq.is_cuda and sx.shape == (M,) and (sx == 0).all()




@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("exp", [-100, -126, -130, -140])
def test_quantize_tiny_rows(dtype, exp):
    """Rows whose amax is below ~3.7e-37 used to quantize to all 127s (127 / amax overflowed).

    They now match the reference bit for bit, and quantize like the same row scaled up (exactly,
    where the scaled-down values are representable) and like an fp64 computation (within the one
    step that fp32 rounding of x * (127 / amax) can move a value at a tie)."""
    if dtype == torch.bfloat16 and exp < -130:
        pytest.skip("bf16's smallest subnormal is 2^-133: such rows are all zero")
    x = torch.randn(8, 512, device=DEV, dtype=torch.float32).to(dtype)
    tiny = (x.float() * 2.0**exp).to(dtype)
    check_quantize(tiny, f"tiny rows 2^{exp}")
    xq, sx = zqkernels.quantize_per_token(tiny)
    assert (xq.abs() < 127).any(dim=1).all(), "a row quantized to all +-127"
    x64 = tiny.double()
    q64 = torch.round(x64 / x64.abs().amax(dim=1, keepdim=True) * 127)
    assert (xq.double() - q64).abs().max() <= 1
    if exp >= -100:  # normal numbers: scaling by 2^exp is exact, so the codes are identical
        xq_big, _ = zqkernels.quantize_per_token(x)
        assert torch.equal(xq, xq_big)
    assert (sx > 0).all()
