"""Fused row ops + quantization on CPU: the reference against the unfused torch sequence it fuses
(torch.nn.functional norms / activations, then ``quantize_per_token_ref``), opcheck of the custom
ops, in-place residual updates, and argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import zqkernels
from zqkernels.reference import quantize_per_token_ref

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def assert_quant_close(q, s, q_ref, s_ref, what=""):
    """Fused vs unfused: the same real values up to fp32 rounding of the statistics, so scales agree
    to ~1e-6 relative and codes to within one step, differing only at rounding boundaries."""
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=2e-5, atol=0, msg=what)
    d = (q.int() - q_ref.int()).abs()
    assert int(d.max()) <= 1, f"{what}: codes differ by {int(d.max())}"
    assert float((d > 0).float().mean()) < 0.01, f"{what}: {float((d > 0).float().mean()):.4f} of codes differ"


def unfused(op, x, residual=None, w=None, b=None, eps=1e-6):
    """The torch sequence each fused op replaces (torch's own kernels, fp32 math, no zqkernels code
    except the quantizer's reference)."""
    dt = x.dtype
    if op in ("silu_mul", "gelu_mul", "gelu_tanh_mul"):
        K = x.shape[1] // 2
        g, u = x[:, :K].float(), x[:, K:].float()
        a = F.silu(g) if op == "silu_mul" else F.gelu(g, approximate="tanh" if op == "gelu_tanh_mul" else "none")
        return quantize_per_token_ref(a.mul(u).to(dt))
    if op in ("gelu", "gelu_tanh"):
        t = x.float() + (b.float() if b is not None else 0)
        return quantize_per_token_ref(F.gelu(t, approximate="none" if op == "gelu" else "tanh").to(dt))
    v = (x.float() + residual.float()).to(dt) if residual is not None else x
    K = x.shape[1]
    if op == "rmsnorm":
        y = F.rms_norm(v.float(), (K,), w.float(), eps)
    else:
        y = F.layer_norm(v.float(), (K,), w.float(), None if b is None else b.float(), eps)
    return quantize_per_token_ref(y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [8, 768, 1000])
def test_norm_quant_matches_unfused(dtype, K):
    x = torch.randn(7, K, dtype=dtype) * 3
    w = torch.rand(K) + 0.5
    b = torch.randn(K)
    q, s = zqkernels.rmsnorm_quant(x, w, 1e-6)
    assert_quant_close(q, s, *unfused("rmsnorm", x, w=w), "rmsnorm")
    q, s = zqkernels.layernorm_quant(x, w, b, 1e-5)
    assert_quant_close(q, s, *unfused("layernorm", x, w=w, b=b, eps=1e-5), "layernorm")
    q, s = zqkernels.layernorm_quant(x, w.to(dtype), None, 1e-5)  # weight in x's dtype, no bias
    assert_quant_close(q, s, *unfused("layernorm", x, w=w.to(dtype), eps=1e-5), "layernorm no bias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_variants(dtype):
    K = 256
    x, r = torch.randn(5, K, dtype=dtype), torch.randn(5, K, dtype=dtype)
    w, b = torch.rand(K) + 0.5, torch.randn(K)
    q, s, out = zqkernels.add_rmsnorm_quant(x, r, w, 1e-6)
    assert torch.equal(out, (x.float() + r.float()).to(dtype))
    assert_quant_close(q, s, *unfused("rmsnorm", x, r, w), "add_rmsnorm")
    q, s, out = zqkernels.add_layernorm_quant(x, r, w, b, 1e-5, residual_out="normed")
    h = F.layer_norm((x.float() + r.float()).to(dtype).float(), (K,), w, b, 1e-5)
    torch.testing.assert_close(out, h.to(dtype), rtol=2**-7, atol=1e-6)
    assert_quant_close(q, s, *unfused("layernorm", x, r, w, b, 1e-5), "add_layernorm normed")
    r2 = r.clone()
    q2, s2, out2 = zqkernels.add_layernorm_quant(x, r2, w, b, 1e-5, residual_out="sum", inplace=True)
    assert out2 is r2 and torch.equal(r2, (x.float() + r.float()).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_quant_matches_unfused(dtype):
    y = torch.randn(9, 384, dtype=dtype) * 4
    b = torch.randn(384)
    for approx, op in (("none", "gelu"), ("tanh", "gelu_tanh")):
        q, s = zqkernels.bias_gelu_quant(y, b, approx)
        assert_quant_close(q, s, *unfused(op, y, b=b), op)
    q, s = zqkernels.bias_gelu_quant(y)
    assert_quant_close(q, s, *unfused("gelu", y), "gelu no bias")
    q, s = zqkernels.silu_mul_quant(y)
    assert q.shape == (9, 192)
    assert_quant_close(q, s, *unfused("silu_mul", y), "silu_mul")
    for approx, op in (("tanh", "gelu_tanh_mul"), ("none", "gelu_mul")):
        q, s = zqkernels.gelu_mul_quant(y, approx)
        assert q.shape == (9, 192)
        assert_quant_close(q, s, *unfused(op, y), op)


def test_zero_and_empty_rows():
    x = torch.zeros(3, 64, dtype=torch.bfloat16)
    q, s = zqkernels.rmsnorm_quant(x, torch.ones(64))
    assert not q.any() and not s.any()
    q, s = zqkernels.bias_gelu_quant(torch.zeros(0, 64, dtype=torch.bfloat16))
    assert q.shape == (0, 64) and s.shape == (0,)


OPS = [
    (0, "identity", False),
    (1, "rmsnorm", True),
    (2, "layernorm", True),
    (3, "gelu", False),
    (5, "silu_mul", False),
    (6, "gelu_mul", False),
    (7, "gelu_tanh_mul", False),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck(dtype):
    x, r = torch.randn(4, 64, dtype=dtype), torch.randn(4, 64, dtype=dtype)
    w, b = torch.rand(64), torch.randn(64)
    op = torch.ops.zqkernels.row_quant.default
    torch.library.opcheck(op, (1, x, None, w, None, 1e-6, 0))
    torch.library.opcheck(op, (2, x, r, w, b, 1e-5, 1))
    torch.library.opcheck(op, (2, x, r, w, b, 1e-5, 2))
    torch.library.opcheck(op, (3, x, None, None, b, 0.0, 0))
    torch.library.opcheck(op, (5, x, None, None, None, 0.0, 0))
    torch.library.opcheck(op, (7, x, None, None, None, 0.0, 0))
    torch.library.opcheck(torch.ops.zqkernels.row_quant_.default, (1, x, r.clone(), w, None, 1e-6, 1))


def test_compile_matches_eager():
    x, r, w = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(4, 64, dtype=torch.bfloat16), torch.rand(64)

    def f(x, r):
        q1, s1, h = zqkernels.add_layernorm_quant(x, r, w, None, residual_out="normed")
        q2, s2 = zqkernels.silu_mul_quant(h)
        return q1, s1, h, q2, s2

    for a, e in zip(torch.compile(f, fullgraph=True)(x, r), f(x, r)):
        assert torch.equal(a, e)


X = torch.randn(4, 64, dtype=torch.bfloat16)
W = torch.ones(64)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: zqkernels.rmsnorm_quant(X.int(), W), TypeError, r"rmsnorm_quant: x must be bfloat16"),
        (lambda: zqkernels.rmsnorm_quant(X[0], W), ValueError, r"rmsnorm_quant: x must be 2-D"),
        (lambda: zqkernels.rmsnorm_quant(X.t(), W[:4]), ValueError, r"unit stride along K"),
        (lambda: zqkernels.rmsnorm_quant(X, torch.ones(63)), ValueError, r"weight must be 1-D \[K\] == \[64\]"),
        (lambda: zqkernels.rmsnorm_quant(X, None), ValueError, r"rmsnorm_quant: weight is required"),
        (lambda: zqkernels.rmsnorm_quant(X, W, -1.0), ValueError, r"eps must be a number >= 0"),
        (lambda: zqkernels.layernorm_quant(X, W, torch.ones(3)), ValueError, r"bias must be 1-D"),
        (lambda: zqkernels.add_rmsnorm_quant(X, X.half(), W), TypeError, r"residual must have x's dtype"),
        (lambda: zqkernels.add_rmsnorm_quant(X, X[:2], W), ValueError, r"residual must be \[M, K\]"),
        (lambda: zqkernels.add_layernorm_quant(X, X, W, residual_out="x"), ValueError, r"'sum' or 'normed'"),
        (lambda: zqkernels.silu_mul_quant(X[:, :63]), ValueError, r"silu_mul_quant: gate_up must be \[M, 2 \* I\]"),
        (lambda: zqkernels.bias_gelu_quant(X, None, "fast"), ValueError, r"approximate must be 'none' or 'tanh'"),
        (lambda: zqkernels.gelu_mul_quant(X[:, :63]), ValueError, r"gelu_mul_quant: gate_up must be \[M, 2 \* I\]"),
        (lambda: zqkernels.gelu_mul_quant(X, "fast"), ValueError, r"gelu_mul_quant: approximate must be"),
        (lambda: zqkernels.bias_gelu_quant(X, torch.ones(64, dtype=torch.int32)), TypeError, r"bias must be a float"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
