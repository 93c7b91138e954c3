"""w4a8_gemm (INT4 weights with integer or float group scales x INT8 activations, docs/W4A8.md) on
the GPU against the reference: the M sweep, group sizes, both scale kinds, the epilogue, the
overflow bound with adversarial inputs, CUDA graphs, and the errors."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    assert_gemm_close,
    calc_diff,
    check_after_late_producer,
    debug_setting,
    graph_replay,
    poison_next_allocation,
    requires_gpu,
    requires_sm90,
)
from zqkernels.reference import w4a8_fp_gemm_ref, w4a8_gemm_ref
from zqkernels.reference.quantize import pack_int4

pytestmark = requires_gpu

needs_sm90 = requires_sm90("the W4A8 kernels (sm_90a)")


def inputs(M, N, K, g, scale, out_dtype=torch.bfloat16, bias=False, alpha=None):
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 6  # groups of different scales
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
    kw = {} if alpha is None else {"alpha": alpha}
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, scale=scale, **kw)
    b = torch.randn(N, device=DEV).to(out_dtype) if bias else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=b, out_dtype=out_dtype)


def ref_of(a: dict, **kw) -> torch.Tensor:
    """The reference on CPU copies (its exact int64 sums have no CUDA matmul)."""
    return w4a8_gemm_ref(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}, **kw)


def assert_close(out, ref, what, exact_sum):
    """Integer scales: the sum is exact in int32 (flushed to fp32 only past 2^24 or at the overflow
    bound), so one output ulp (conftest.assert_gemm_close, whose count of differing outputs is
    meaningful only for large outputs: one of 32 is 3%). Float scales: one fp32 FMA per group and
    step, so a few fp32 roundings more: 4 output ulps plus 2e-3 of the row's largest output."""
    if exact_sum and out.numel() >= 4096:
        assert_gemm_close(out, ref, what)
        return
    o, r = out.double().cpu(), ref.double().cpu()
    ulps = 1 if exact_sum else 4
    rtol = ulps * {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float32: 2**-21}[out.dtype]
    atol = (1e-3 if exact_sum else 2e-3) * r.abs().amax(dim=1, keepdim=True)
    err = (o - r).abs()
    bad = err > 2 * rtol * r.abs() + atol
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off (worst abs err {float(err.max()):.3g})"
    assert calc_diff(o, r) < 1e-5, what


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_w4a8_gemm_sweep(scale, g):
    for N, K in [(16, 256), (272, 512), (1024, 4096)]:
        if g is not None and K % g:
            continue
        for i, M in enumerate([1, 2, 5, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 128, 200]):
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            a = inputs(M, N, K, g, scale, out_dtype, bias=i % 2 == 0)
            poison_next_allocation(M * N * 4, 0xFF)
            out = zqkernels.w4a8_gemm(**a)
            assert_close(out.cpu(), ref_of(a), f"{scale} g={g} M={M} N={N} K={K} {out_dtype}", scale == "int")


@needs_sm90
@pytest.mark.parametrize("rows", [0, 1, 2, 4, 8])
@pytest.mark.parametrize("scale", ["int", "float"])
def test_w4a8_gemm_decode_many_row_tiles(scale, rows):
    """The decode kernel over many row tiles (8208 rows: 513 tiles, not a multiple of any rows-per-CTA
    choice, so the last CTA is partial at every forced R) with K = 4224 (66 chunks of 64: a short last
    batch for every warp split). M = 1..16 covers both token tiles. Integer scales run with max_scale 16
    (the 16 q flush interval, 255 steps) and with the default bound (the float variant on float(s_int))."""
    with debug_setting("w4a8_rows_per_cta", rows):
        N, K, g = 8208, 4224, 64
        torch.manual_seed(0)
        w = torch.randn(N, K, device=DEV) * 0.02
        w[:, : K // 3] *= 6
        kw = {"alpha": 16} if scale == "int" else {}
        wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, scale=scale, **kw)
        for M in (1, 5, 9, 16):
            xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
            a = dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=torch.bfloat16)
            ref = ref_of(a)
            for ms in (16, None) if scale == "int" else (None,):
                out = zqkernels.w4a8_gemm(**a, max_scale=ms, path="stream")
                assert_close(out.cpu(), ref, f"{scale} M={M} max_scale={ms}", scale == "int")


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
def test_w4a8_gemm_decode_wide(scale):
    """N = 28688 (1793 row tiles): the launcher's own rows per CTA is > 1 here (its grid fills the SMs'
    slots), with a partial last CTA."""
    N, K, g = 28688, 512, 128
    torch.manual_seed(1)
    w = torch.randn(N, K, device=DEV) * 0.02
    kw = {"alpha": 16} if scale == "int" else {}
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, scale=scale, **kw)
    for M in (1, 9, 16, 40):
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
        a = dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=torch.bfloat16)
        out = zqkernels.w4a8_gemm(**a, max_scale=16 if scale == "int" else None, path="stream")
        assert_close(out.cpu(), ref_of(a), f"{scale} M={M}", scale == "int")


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
def test_w4a8_gemm_register_capped_variant(scale):
    """The M <= 8 kernel capped at 80 registers for 3 CTAs an SM (by default where the row tiles fill
    one wave only at 3 CTAs an SM; _debug_set_w4a8_variant 7 everywhere, 9 nowhere) gives the
    reference's results too, at the launcher's own rows per CTA."""
    torch.manual_seed(2)
    for N, K, g in ((6144, 4096, 128), (28688, 512, 64), (256, 1024, 32)):
        for M in (1, 8):
            a = inputs(M, N, K, g, scale, alpha=16 if scale == "int" else None)
            ref = ref_of(a)
            # 7: capped at every shape; 0: capped only where the tiles fill one wave at 3 CTAs an SM
            # (N = 6144 on 132 SMs); 9: never capped.
            for variant in (7, 0, 9):
                with debug_setting("w4a8_variant", variant):
                    out = zqkernels.w4a8_gemm(**a, max_scale=16 if scale == "int" else None, path="stream")
                assert_close(out.cpu(), ref, f"variant {variant} {scale} N={N} M={M}", scale == "int")


@needs_sm90
@pytest.mark.parametrize("scale", ["int", "float"])
def test_w4a8_gemm_two_group_scale_loads(scale):
    """Group sizes that are multiples of 64 load one group's scales a chunk; _debug_set_w4a8_variant(8)
    forces the two-group loads (the g = 32 kernel) there: both give the reference's results."""
    torch.manual_seed(3)
    N, K, g = 4096, 2048, 128
    w = torch.randn(N, K, device=DEV) * 0.02
    kw = {"alpha": 16} if scale == "int" else {}
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, scale=scale, **kw)
    for M in (1, 12, 40):
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
        a = dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=torch.bfloat16)
        ref = ref_of(a)
        for variant in (0, 8):
            with debug_setting("w4a8_variant", variant):
                out = zqkernels.w4a8_gemm(**a, max_scale=16 if scale == "int" else None, path="stream")
            assert_close(out.cpu(), ref, f"variant {variant} {scale} M={M}", scale == "int")


@needs_sm90
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
def test_w4a8_gemm_activation(act):
    a = inputs(7, 256, 512, 128, "int", bias=True)
    out = zqkernels.w4a8_gemm(**a, activation=act)
    assert_gemm_close(out.cpu(), ref_of(a, activation=act), act)


@needs_sm90
@pytest.mark.parametrize("K", [16384, 28672])
def test_w4a8_gemm_overflow_bound_adversarial(K):
    """All activations -128, all weights -8 and every integer scale at its largest (2^15): each MMA
    step sums to 32 * 1024 = 2^15 and times 2^15 gives 2^30, so two steps would overflow int32:
    only the flush schedule (every step here) keeps the accumulator exact. The result must equal
    the exact int64 value."""
    M, N, g = 3, 32, 128
    xq = torch.full((M, K), -128, dtype=torch.int8, device=DEV)
    codes = torch.full((N, K), -8, dtype=torch.int8)
    wq = pack_int4(codes).to(DEV)
    sg = torch.full((N, K // g), 2**15, dtype=torch.int32, device=DEV)
    sg[1::2] = 2**14 + 1
    sx = torch.full((M,), 2.0**-20, device=DEV)
    sw = torch.full((N,), 2.0**-16, device=DEV)
    out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, None, torch.float32, max_scale=2**15)
    exact = torch.tensor([K * 1024 * int(s) for s in sg[:, 0].tolist()], dtype=torch.float64) * 2.0**-36
    assert torch.allclose(out.double().cpu(), exact.expand(M, N), rtol=2**-22, atol=0), (out[0, :2], exact[:2])
    ref = w4a8_gemm_ref(xq.cpu(), wq.cpu(), sx.cpu(), sw.cpu(), sg.cpu(), None, torch.float32)
    torch.testing.assert_close(out.cpu(), ref, rtol=2**-22, atol=0)


@needs_sm90
@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("fmt", ["int4", "fp4"])
def test_w4a8_stream_waits_for_a_late_producer(fmt, early):
    """Under programmatic dependent launch the streaming kernels request their first weights before
    griddepcontrol.wait (``early``, the default; src/cuda/w4a8_stream_common.cuh, StreamLaunch) and may read the
    activations and their scales only after it. A producer that triggers its dependents at entry, spins
    50 us and only then writes xq and sx runs right before the GEMM, eagerly and under graph replay:
    the output must equal the same call on ready inputs bit for bit (and that one the reference)."""
    N, K, g = 2048, 4096, 128
    torch.manual_seed(2)
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 6
    with debug_setting("w4a8_early_weights", early):
        for M in (1, 16, 40):
            x = torch.randn(M, K, device=DEV)
            if fmt == "int4":
                wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", group_size=g, scale="int", alpha=16)
                xq, sx = zqkernels.quantize_per_token(x)

                def gemm(xq_, sx_, wq=wq, sw=sw, sg=sg):
                    return zqkernels.w4a8_gemm(xq_, wq, sx_, sw, sg, max_scale=16, path="stream")

                ref = ref_of(dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sg, bias=None, out_dtype=torch.bfloat16))
            else:
                wq, sw, sg = zqkernels.quantize_weight(w, fmt="fp4", group_size=g, scale="m2")
                xq, sx = zqkernels.quantize_per_token(x, dtype=torch.float8_e4m3fn)

                def gemm(xq_, sx_, wq=wq, sw=sw, sg=sg):
                    return zqkernels.w4a8_fp_gemm(xq_, wq, sx_, sw, sg, path="stream")

                ref = w4a8_fp_gemm_ref(xq, wq, sw, sg, sx, g, None, torch.bfloat16)
            ready = gemm(xq, sx)
            assert calc_diff(ready.double().cpu(), ref.double().cpu()) < 1e-5, f"{fmt} M={M}: ready inputs"
            check_after_late_producer(gemm, [xq, sx], f"{fmt} M={M} early={early}")


@needs_sm90
def test_w4a8_gemm_graph():
    a = inputs(4, 512, 1024, 64, "int")
    ref = zqkernels.w4a8_gemm(**a)
    assert torch.equal(graph_replay(lambda: zqkernels.w4a8_gemm(**a)), ref)


@needs_sm90
def test_w4a8_gemm_errors():
    a = inputs(4, 64, 256, 64, "int")
    with pytest.raises(TypeError, match="w4a8_gemm: xq must be int8"):
        zqkernels.w4a8_gemm(a["xq"].float(), a["wq"], a["sx"], a["sw"], a["sg"])
    with pytest.raises((TypeError, ValueError), match="w4a8_gemm: sg"):
        zqkernels.w4a8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["sg"].to(torch.int16))
    with pytest.raises((TypeError, ValueError), match="w4a8_gemm: wq"):
        zqkernels.w4a8_gemm(a["xq"], a["wq"].view(torch.int8), a["sx"], a["sw"], a["sg"])
