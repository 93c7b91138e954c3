"""quantize_per_token / quantize_weight on CPU: reference dispatch, opcheck, argument checks (one
property at a time, each error naming the op and the argument)."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import X_DTYPES
from zqkernels.reference import quantize_per_token_ref, quantize_weight_ref

QUANT_OP = torch.ops.zqkernels.quantize_per_token.default
I8 = torch.int8


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("M,K", [(1, 1), (3, 7), (17, 100), (64, 256)])
def test_quantize_cpu_is_reference(dtype, M, K):
    x = torch.randn(M, K).to(dtype)
    xq, sx = zqkernels.quantize_per_token(x)
    xq_ref, sx_ref = quantize_per_token_ref(x)
    assert torch.equal(xq, xq_ref) and torch.equal(sx, sx_ref)


def test_quantize_cpu_strided_rows():
    big = torch.randn(10, 48, dtype=torch.bfloat16)
    for x in (big[:, :40], big[::3], big[2:7, 8:]):
        xq, sx = zqkernels.quantize_per_token(x)
        xq_ref, sx_ref = quantize_per_token_ref(x.contiguous())
        assert torch.equal(xq, xq_ref) and torch.equal(sx, sx_ref)


def test_quantize_weight_returns_constants():
    lin = torch.nn.Linear(32, 16)
    wq, sw = zqkernels.quantize_weight(lin.weight)
    assert not sw.requires_grad and not wq.requires_grad
    assert all(torch.equal(a, b) for a, b in zip((wq, sw), quantize_weight_ref(lin.weight.detach())))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_quantize_per_token(dtype):
    x = torch.randn(12, 40, dtype=dtype)
    torch.library.opcheck(QUANT_OP, (x,))
    torch.library.opcheck(QUANT_OP, (torch.randn(6, 64, dtype=dtype)[:, 8:48],))  # strided rows


QUANT_ERRORS = [
    (
        "int8",
        lambda: torch.zeros(4, 16, dtype=I8),
        TypeError,
        r"quantize_per_token: x must be bfloat16, float16 or float32 \[M, K\], got int8 \[4, 16\]",
    ),
    (
        "float64",
        lambda: torch.zeros(4, 16, dtype=torch.float64),
        TypeError,
        r"quantize_per_token: x must be bfloat16",
    ),
    (
        "rank3",
        lambda: torch.zeros(2, 4, 16),
        ValueError,
        r"quantize_per_token: x must be 2-D \[M, K\] \(flatten leading dims .*\), got float32 \[2, 4, 16\]",
    ),
    ("rank1", lambda: torch.zeros(16), ValueError, r"quantize_per_token: x must be 2-D"),
    (
        "col_stride",
        lambda: torch.zeros(16, 4).t(),
        ValueError,
        r"quantize_per_token: x must have unit stride along K \(x.stride\(1\) == 1\), got float32 \[4, 16\] "
        r"with strides \(1, 4\)",
    ),
    (
        "overlapping_rows",
        lambda: torch.zeros(1, 16).expand(4, 16),
        ValueError,
        r"quantize_per_token: rows of x must not overlap \(x.stride\(0\) >= K == 16\)",
    ),
]


@pytest.mark.parametrize("build,exc,match", [c[1:] for c in QUANT_ERRORS], ids=[c[0] for c in QUANT_ERRORS])
def test_quantize_per_token_bad_input(build, exc, match):
    with pytest.raises(exc, match=match):
        zqkernels.quantize_per_token(build())


def test_quantize_weight_bad_input():
    with pytest.raises(
        TypeError, match=r"quantize_weight: w must be a floating-point tensor \[N, K\], got int8"
    ):
        zqkernels.quantize_weight(torch.zeros(4, 4, dtype=I8))
    with pytest.raises(TypeError, match=r"quantize_weight: w must be a torch.Tensor"):
        zqkernels.quantize_weight([[1.0]])
    with pytest.raises(ValueError, match=r"quantize_weight: w must be 2-D \[N, K\]"):
        zqkernels.quantize_weight(torch.zeros(16))
    with pytest.raises(ValueError, match=r"quantize_weight: bits must be 8 or 4, got 2"):
        zqkernels.quantize_weight(torch.zeros(4, 4), bits=2)
    w = torch.randn(6, 8)
    w[2, 3] = float("nan")
    w[5, 0] = float("-inf")
    with pytest.raises(
        ValueError, match=r"quantize_weight: w has NaN/Inf values in 2 rows \(output channels \[2, 5\]\)"
    ):
        zqkernels.quantize_weight(w)


