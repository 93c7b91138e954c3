"""Fused row-op + quantization kernels (src/cuda/row_quant.cu) against the pure-torch reference.

The kernel and the reference compute the same fp32 math; the statistics (sums over the row) are
accumulated in another order, so scales agree to ~1e-6 relative and codes to one step (only where
a value lies on a rounding boundary). Stage-1 values (residual sums) are exact.
"""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, debug_setting, poison_next_allocation, requires_gpu
from zqkernels.reference import row_quant_ref
from zqkernels.reference.fused import GATED_OPS

pytestmark = requires_gpu

WIDTHS = [768, 1000, 1024, 4096, 5120, 8192, 11008]
DTYPES = (torch.bfloat16, torch.float16)


def check(q, s, r, q_ref, s_ref, r_ref, what, exact_r=True):
    q, s = q.cpu(), s.cpu()
    torch.testing.assert_close(s, s_ref, rtol=2e-5, atol=0, msg=lambda m: f"{what}: scales: {m}")
    d = (q.int() - q_ref.int()).abs()
    assert int(d.max()) <= 1, f"{what}: codes differ by up to {int(d.max())}"
    frac = float((d > 0).float().mean())
    assert frac < 0.005, f"{what}: {frac:.4f} of codes differ"
    if r_ref is not None:
        r = r.cpu()
        if exact_r:
            assert torch.equal(r, r_ref), f"{what}: residual output differs"
        else:  # the normalised row rounded to x's dtype: one ulp apart at most
            torch.testing.assert_close(r, r_ref, rtol=2**-7, atol=1e-5, msg=lambda m: f"{what}: normed: {m}")


def run_both(op, x, residual=None, w=None, b=None, eps=1e-6, mode="none", inplace=False):
    M = x.shape[0]
    K = x.shape[1] // 2 if op in GATED_OPS else x.shape[1]
    ref = row_quant_ref(op, x.cpu(), None if residual is None else residual.cpu(),
                        None if w is None else w.cpu(), None if b is None else b.cpu(), eps, mode)
    poison_next_allocation(M * K, 0x80)
    if op == "rmsnorm" and residual is None:
        out = (*zqkernels.rmsnorm_quant(x, w, eps), None)
    elif op == "rmsnorm":
        out = zqkernels.add_rmsnorm_quant(x, residual, w, eps, inplace=inplace)
    elif op == "layernorm" and residual is None:
        out = (*zqkernels.layernorm_quant(x, w, b, eps), None)
    elif op == "layernorm":
        out = zqkernels.add_layernorm_quant(x, residual, w, b, eps, residual_out=mode, inplace=inplace)
    elif op in ("gelu", "gelu_tanh"):
        out = (*zqkernels.bias_gelu_quant(x, b, "none" if op == "gelu" else "tanh"), None)
    elif op == "silu_mul":
        out = (*zqkernels.silu_mul_quant(x), None)
    elif op in ("gelu_mul", "gelu_tanh_mul"):
        out = (*zqkernels.gelu_mul_quant(x, "tanh" if op == "gelu_tanh_mul" else "none"), None)
    else:
        out = (*zqkernels.quantize_per_token(x), None)
    return out, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", WIDTHS)
def test_every_op_every_width(dtype, K):
    M = 37
    x = torch.randn(M, K, dtype=dtype, device=DEV) * 2
    x[3] *= 200  # an outlier row
    res = torch.randn(M, K, dtype=dtype, device=DEV)
    w = torch.rand(K, device=DEV) + 0.5
    b = torch.randn(K, device=DEV) * 0.1
    cases = [
        ("rmsnorm", dict(w=w)),
        ("layernorm", dict(w=w, b=b, eps=1e-5)),
        ("rmsnorm", dict(residual=res, w=w, mode="sum")),
        ("layernorm", dict(residual=res, w=w, b=b, eps=1e-5, mode="sum")),
        ("layernorm", dict(residual=res, w=w, b=b, eps=1e-12, mode="normed")),
        ("gelu", dict(b=b)),
        ("gelu_tanh", dict(b=b)),
        ("gelu", dict()),
    ]
    for op, kw in cases:
        (q, s, r), (q_ref, s_ref, r_ref) = run_both(op, x, **kw)
        check(q, s, r, q_ref, s_ref, r_ref, f"{op} {kw.get('mode', '')} K={K}", exact_r=kw.get("mode") != "normed")
    gu = torch.randn(M, 2 * K, dtype=dtype, device=DEV) * 3
    for op in ("silu_mul", "gelu_mul", "gelu_tanh_mul"):
        (q, s, r), (q_ref, s_ref, r_ref) = run_both(op, gu)
        check(q, s, r, q_ref, s_ref, r_ref, f"{op} K={K}")


@pytest.mark.parametrize("M", [1, 2, 129])
@pytest.mark.parametrize("K", [8, 24, 1001, 40000, 70000])
def test_odd_shapes_and_streaming_path(M, K):
    """K not a multiple of 8 (element path), rows too wide for registers (streaming path)."""
    dt = torch.bfloat16
    x = torch.randn(M, K, dtype=dt, device=DEV)
    res = torch.randn(M, K, dtype=dt, device=DEV)
    w = torch.rand(K, device=DEV) + 0.5
    b = torch.randn(K, device=DEV)
    for op, kw in [
        ("rmsnorm", dict(w=w)),
        ("layernorm", dict(residual=res, w=w, b=b, eps=1e-5, mode="sum")),
        ("layernorm", dict(residual=res, w=w, b=b, eps=1e-5, mode="normed")),
        ("rmsnorm", dict(residual=res, w=w, mode="sum", inplace=True)),
        ("gelu_tanh", dict(b=b)),
    ]:
        r_in = res.clone() if kw.get("inplace") else None
        if r_in is not None:
            kw = dict(kw, residual=r_in)
        (q, s, r), (q_ref, s_ref, r_ref) = run_both(op, x, **kw)
        if r_in is not None:
            assert r is r_in
        check(q, s, r, q_ref, s_ref, r_ref, f"{op} M={M} K={K}", exact_r=kw.get("mode") != "normed")


def test_strided_rows_and_inplace_aliasing():
    dt = torch.float16
    base = torch.randn(64, 4096 + 64, dtype=dt, device=DEV)
    x = base[:, 32 : 32 + 4096]  # row stride 4160: a view
    res_base = torch.randn(64, 4096 + 8, dtype=dt, device=DEV)
    res = res_base[:, :4096]
    w = torch.rand(4096, device=DEV)
    expect_sum = (x.float() + res.float()).to(dt)
    ref = row_quant_ref("rmsnorm", x.cpu(), res.cpu(), w.cpu(), None, 1e-6, "sum")
    q, s, r = zqkernels.add_rmsnorm_quant(x, res, w, 1e-6, inplace=True)
    assert r is res and torch.equal(res, expect_sum)
    check(q, s, None, ref[0], ref[1], None, "strided in-place")


def test_zero_huge_and_tiny_rows():
    dt = torch.bfloat16
    K = 4096
    x = torch.randn(4, K, dtype=dt, device=DEV)
    x[0] = 0
    x[1] *= 1e30  # the sum of squares overflows fp32 (as in torch's fp32 norms): rstd = 0, zero row
    x[2] *= 1e-30
    w = torch.ones(K, device=DEV)
    for op in ("gelu",):
        (q, s, r), (q_ref, s_ref, _) = run_both(op, x)
        assert int(s[0]) == 0 and not q[0].any()
        check(q[2:], s[2:], None, q_ref[2:], s_ref[2:], None, "tiny rows")
    q, s = zqkernels.rmsnorm_quant(x, w)
    q_ref, s_ref, _ = row_quant_ref("rmsnorm", x.cpu(), None, w.cpu(), None, 1e-6)
    assert float(s[0]) == 0 and not q[0].any()
    # the overflowed row matches the reference's fp32 behaviour (rsqrt(inf) = 0 -> all zero)
    assert torch.equal(s.cpu()[1], s_ref[1]) and torch.equal(q.cpu()[1], q_ref[1])
    check(q[2:], s[2:], None, q_ref[2:], s_ref[2:], None, "tiny rms rows")


def test_graph_and_compile_equal_eager():
    dt = torch.bfloat16
    x = torch.randn(16, 4096, dtype=dt, device=DEV)
    res = torch.randn(16, 4096, dtype=dt, device=DEV)
    w = torch.rand(4096, device=DEV)

    def f(x, res):
        q1, s1, h = zqkernels.add_layernorm_quant(x, res, w, None, 1e-5, residual_out="normed")
        q2, s2 = zqkernels.silu_mul_quant(torch.cat([h, x], 1))
        q3, s3 = zqkernels.bias_gelu_quant(h)
        return q1, s1, h, q2, s2, q3, s3

    eager = f(x, res)
    compiled = torch.compile(f, fullgraph=True)(x, res)
    for a, e in zip(compiled, eager):
        assert torch.equal(a, e)
    f(x, res)  # warm-up on a side stream is not needed: no allocation inside the ops but outputs
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        captured = f(x, res)
    g.replay()
    torch.cuda.synchronize()
    for a, e in zip(captured, eager):
        assert torch.equal(a, e)


def test_nan_propagates_to_the_scale():
    x = torch.randn(3, 1024, dtype=torch.bfloat16, device=DEV)
    x[1, 7] = float("nan")
    q, s = zqkernels.layernorm_quant(x, torch.ones(1024, device=DEV))
    assert torch.isnan(s[1]) and torch.isfinite(s[[0, 2]]).all()


def test_device_mismatch_is_an_error():
    x = torch.randn(2, 64, dtype=torch.bfloat16, device=DEV)
    with pytest.raises(ValueError, match="rmsnorm_quant: all tensors must be on one device"):
        zqkernels.rmsnorm_quant(x, torch.ones(64))



@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
@pytest.mark.parametrize("K", [2304, 4096, 5000, 14336, 70000])
@pytest.mark.parametrize("M", [1, 5, 32])
def test_few_rows_split_over_a_cluster(M, K, dtype):
    """Few wide rows (decode) split over a cluster (row_quant.cu, cluster_of: 8 CTAs from 12288 bf16
    values; K = 14336 and 70000, spans of two vectors a thread, take it; the others the one-CTA kernel,
    and every K the forced cluster sizes below): every op against the reference, and against the one-CTA
    kernel (0: no cluster) bit for bit where the row's only reduction is its amax (no order changes it)."""
    for ctas in (-1, 2, 4):
        with debug_setting("row_cluster", ctas):
            _cluster_case(M, K, dtype)


def _cluster_case(M, K, dtype):
    torch.manual_seed(K + M)
    x = torch.randn(M, K, dtype=dtype, device=DEV) * 2
    x[M // 2] *= 300  # an outlier row
    res = torch.randn(M, K, dtype=dtype, device=DEV)
    w = torch.rand(K, device=DEV) + 0.5
    b = torch.randn(K, device=DEV) * 0.1
    gu = torch.randn(M, 2 * K, dtype=dtype, device=DEV) * 3
    cases = [
        ("rmsnorm", x, dict(w=w)),
        ("rmsnorm", x, dict(residual=res, w=w, mode="sum")),
        ("layernorm", x, dict(residual=res, w=w, b=b, eps=1e-5, mode="normed")),
        ("gelu", x, dict(b=b)),
        ("silu_mul", gu, dict()),
        ("gelu_tanh_mul", gu, dict()),
        ("identity", x, dict()),
    ]
    for op, inp, kw in cases:
        what = f"{op} {kw.get('mode', '')} M={M} K={K} {dtype}"
        (q, s, r), (q_ref, s_ref, r_ref) = run_both(op, inp, **kw)
        check(q, s, r, q_ref, s_ref, r_ref, what, exact_r=kw.get("mode") != "normed")
        if op in ("gelu", "silu_mul", "gelu_tanh_mul", "identity"):
            with debug_setting("row_cluster", 0):
                (q1, s1, _), _ = run_both(op, inp, **kw)
            assert torch.equal(q, q1) and torch.equal(s, s1), what


@pytest.mark.parametrize("ctas", [2, 4, 8])
def test_forced_cluster_sizes_and_fp8(ctas):
    """Every cluster size on one shape (forced), INT8 and FP8 output, a zero row and a NaN row."""
    M, K = 3, 4096
    x = torch.randn(M, K, dtype=torch.bfloat16, device=DEV)
    x[1] = 0
    w = torch.rand(K, device=DEV) + 0.5
    with debug_setting("row_cluster", ctas):
        (q, s, _), (q_ref, s_ref, _) = run_both("rmsnorm", x, w=w)
        check(q, s, None, q_ref, s_ref, None, f"rmsnorm {ctas} CTAs")
        q8, s8 = zqkernels.quantize_per_token(x, dtype=torch.float8_e4m3fn)
    with debug_setting("row_cluster", 0):
        q8_0, s8_0 = zqkernels.quantize_per_token(x, dtype=torch.float8_e4m3fn)
    assert torch.equal(q8.view(torch.uint8), q8_0.view(torch.uint8)) and torch.equal(s8, s8_0)
    x[2, 77] = float("nan")
    with debug_setting("row_cluster", ctas):
        _, s_nan = zqkernels.quantize_per_token(x)
    assert torch.isnan(s_nan[2]).all() and not torch.isnan(s_nan[0]).any()


def test_row_cluster_switch_rejects_bad_sizes():
    with pytest.raises(RuntimeError, match=r"_debug_set_row_cluster: .*-1 \(auto\), 0 \(never\), 2, 4 or 8, got 3"):
        debug_setting("row_cluster", 3).__enter__()
