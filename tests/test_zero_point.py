"""The zero-point INT4 format (quantize_weight(w, fmt="int4", scale="zp"), scheme "w4a8-zp";
reference/zero_point.py, docs/W4A8.md "Zero-point INT4"): the quantizer's invariants on ordinary and
adversarial weights, the reference GEMM against an independent exact computation, the kernels'
bytewise conversion modelled in Python, the errors; on a GPU the kernels against the reference."""

from __future__ import annotations

import pytest
import torch
import zqkernels
from conftest import DEV, assert_gemm_close, graph_replay, poison_next_allocation, requires_gpu, requires_sm90
from zqkernels.reference import w4a8_gemm_ref
from zqkernels.reference.quantize import unpack_int4
from zqkernels.reference.zero_point import (
    ZP_MAX_K,
    check_zp_values,
    pack_scale_zero,
    split_scale_zero,
    zp_channel_scale,
    zp_int8_values,
)


def _weights(N=64, K=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.02
    w[:, : K // 3] *= 6  # groups of different ranges
    w[1] = w[1].abs()  # skewed groups: all positive
    w[2] = -w[2].abs() - 0.01  # all negative, none near zero
    w[3] = 0  # an all-zero row
    w[4, 64:128] = 0  # an all-zero group
    w[5, :] = 0.5  # constant rows
    w[6, ::2] = 1e-30  # tiny and huge magnitudes in one row
    w[6, 1::2] = -3e4
    return w


@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_quantizer_invariants(g):
    w = _weights()
    N, K = w.shape
    wq, sw, sz = zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=g)
    G = K // (g or K)
    assert wq.dtype == torch.uint8 and wq.shape == (N, K // 2)
    assert sw.dtype == torch.float32 and sw.shape == (N,) and bool((sw >= 0).all())
    assert sz.dtype == torch.int16 and sz.shape == (N, G)
    s, z = split_scale_zero(sz)
    assert int(s.min()) >= 1 and int(s.max()) <= 16 and int(z.min()) >= 0 and int(z.max()) <= 15
    check_zp_values("test", wq, sz, K)  # every value s (u - z) inside int8 (the kernels need it)
    vals = zp_int8_values(unpack_int4(wq, N, K), sz)
    assert int(vals.abs().max()) <= 127
    # canonical: each row's integer scales share no common factor (what a checkpoint loader recovers)
    d = s[:, 0].long()
    for j in range(1, G):
        d = torch.gcd(d, s[:, j].long())
    assert bool((d == 1).all())
    # every real group scale sw * s is exact in float32 (compressed-tensors' weight_scale)
    real = sw.double()[:, None] * s.double()
    assert torch.equal(real.float().double(), real)
    deq = zqkernels.dequantize(wq, sw, sz, fmt="int4")
    assert torch.equal(deq[3], torch.zeros(K)) and torch.equal(deq[4, 64:128], torch.zeros(64)) or g is None
    assert float((deq[5] - 0.5).abs().max()) < 0.5 * 0.01  # a constant row: 15 s = 120 for 119 (not exact)
    assert bool((deq[1] >= 0).all()) and bool((deq[2] <= 0).all())  # one-sided rows stay one-sided
    err = float((deq - w).norm() / w.norm())
    assert err < 0.1, err


def test_quantizer_beats_symmetric_alpha16_on_skewed_groups():
    """The point of the format: a group whose values are one-sided keeps 16 levels, the symmetric grid 8."""
    w = _weights()
    wz = zqkernels.dequantize(*zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=64), fmt="int4")
    ws = zqkernels.dequantize(*zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=64, alpha=16), fmt="int4")
    for row in (1, 2):
        assert float((wz[row] - w[row]).norm()) < 0.7 * float((ws[row] - w[row]).norm())
    rows = [r for r in range(w.shape[0]) if r != 6]  # row 6: two values, +-3e4 and 1e-30: exact symmetrically
    assert float((wz[rows] - w[rows]).norm()) < float((ws[rows] - w[rows]).norm())


def test_channel_scale_is_19_bit_and_covers_the_row():
    w = torch.randn(32, 128) * torch.logspace(-20, 20, 32)[:, None]
    sw = zp_channel_scale(w)
    m, _ = torch.frexp(sw.double())
    assert torch.equal(m * 2**19, torch.round(m * 2**19))
    assert bool((w.abs().amax(1) / sw <= 119).all())


@pytest.mark.parametrize("act", ["none", "silu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_reference_gemm_is_exact(act, out_dtype):
    """w4a8_gemm on CPU (the reference) against an independent computation: the int8 values from the
    unpacked codes and (s, z), one float64 product sum (exact: integers below 2^53)."""
    w = _weights(N=48, K=320)
    wq, sw, sz = zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=64)
    xq, sx = zqkernels.quantize_per_token(torch.randn(7, 320))
    bias = torch.randn(48).to(out_dtype)
    y = zqkernels.w4a8_gemm(xq, wq, sx, sw, sz, bias, out_dtype, activation=act)
    codes = unpack_int4(wq, 48, 320).long()
    s, z = split_scale_zero(sz)
    vals = (codes + 8 - z.long().repeat_interleave(64, 1)) * s.long().repeat_interleave(64, 1)
    acc = (xq.long()[:, None, :] * vals[None]).sum(-1)  # exact int64
    v = acc.double() * sx.double()[:, None] * sw.double()[None] + bias.double()
    if act == "silu":
        v = v * torch.sigmoid(v)
    assert torch.equal(y, v.to(out_dtype))
    assert torch.equal(y, w4a8_gemm_ref(xq, wq, sx, sw, sz, bias, out_dtype, activation=act))


def test_kernel_conversion_model():
    """The kernels' bytewise conversion (w4_convert.cuh fused_row / fused_bytes: the streaming kernel's
    zero-point mode and the mixed mainloop's fused modes) modelled on 32-bit words: for every (s, z)
    with all 16 codes in range, and every packed word of 4 codes, it yields the int8 bytes s (u - z) with no carry between bytes."""
    M32 = 0xFFFFFFFF
    for s in range(1, 17):
        for z in range(16):
            us = [u for u in range(16) if -128 <= s * (u - z) <= 127]
            word = s | ((s * z) << 8)  # the host's layout (ops/gemm_cuda.py _zp_words_t)
            c = (0x80808080 - (word >> 8) * 0x01010101) & M32
            for start in range(0, len(us), 4):
                quad = (us[start:] + us[:4])[:4]
                nib = sum(((u - 8) & 0xF) << (8 * i) for i, u in enumerate(quad))  # codes u - 8, low nibbles
                out = ((((nib & 0x0F0F0F0F) ^ 0x08080808) * (word & 0xFF) + c) & M32) ^ 0x80808080
                got = [((out >> (8 * i)) & 0xFF) - 256 * (((out >> (8 * i)) & 0xFF) >= 128) for i in range(4)]
                assert got == [s * (u - z) for u in quad], (s, z, quad)


def test_errors():
    w = _weights()
    wq, sw, sz = zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=64)
    xq, sx = zqkernels.quantize_per_token(torch.randn(3, 256))
    with pytest.raises(ValueError, match="w4a8_gemm: max_scale applies to integer scales"):
        zqkernels.w4a8_gemm(xq, wq, sx, sw, sz, max_scale=16)
    with pytest.raises(ValueError, match="quantize_weight: alpha applies to integer group scales only"):
        zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=64, alpha=16)
    with pytest.raises(ValueError, match=r"quantize_weight: scale must be one of .*'zp'"):
        zqkernels.quantize_weight(w, fmt="int4", scale="zero", group_size=64)
    with pytest.raises(ValueError, match=r"scale must be one of \('int', 'float'\) \(fmt='int8'\)"):
        zqkernels.quantize_weight(w, fmt="int8", scale="zp", group_size=64)
    with pytest.raises(ValueError, match="w4a8_gemm: K must be <= 131071 for the zero-point format"):
        K = ZP_MAX_K + 65
        K -= K % 64
        zqkernels.w4a8_gemm(torch.empty(1, K, dtype=torch.int8, device="meta"), torch.empty(16, K // 2, dtype=torch.uint8, device="meta"),
                            torch.empty(1, device="meta"), torch.empty(16, device="meta"),
                            torch.empty(16, K // 64, dtype=torch.int16, device="meta"))
    with _debug():
        bad = sz.clone()
        bad[0, 0] = 0  # s = 0
        with pytest.raises(ValueError, match=r"w4a8_gemm: sz must hold s \| z << 8 with s in 1..16"):
            zqkernels.w4a8_gemm(xq, wq, sx, sw, bad)
        bad = sz.clone()
        bad[7, 1] = pack_scale_zero(torch.tensor([[16]]), torch.tensor([[0]]))[0, 0]  # s (u - z) up to 240
        with pytest.raises(ValueError, match=r"w4a8_gemm: the zero-point weights' values s \* \(u - z\) must lie"):
            zqkernels.w4a8_gemm(xq, wq, sx, sw, bad)
    with pytest.raises(ValueError, match="dequantize: sz must hold"):
        bad = sz.clone()
        bad[0, 0] = 17
        zqkernels.dequantize(wq, sw, bad, fmt="int4")


class _debug:
    """set_debug_checks(True) for a block (the value checks, a sync each)."""

    def __enter__(self):
        zqkernels.set_debug_checks(True)

    def __exit__(self, *a):
        zqkernels.set_debug_checks(False)


def test_scheme_forward_matches_reference_and_gptq_runs():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 64)
    q = zqkernels.QLinear.from_linear(lin, "w4a8-zp", group_size=64)
    assert q.weight_group_scale.dtype == torch.int16 and q.max_scale is None
    x = torch.randn(5, 256)
    xq, sx = zqkernels.quantize_per_token(x)
    want = w4a8_gemm_ref(xq, q.weight_q, sx, q.weight_scale, q.weight_group_scale, q.bias, torch.float32)
    assert torch.equal(q(x), want)
    m = torch.nn.Sequential(torch.nn.Linear(256, 64))
    zqkernels.quantize_(m, zqkernels.W4A8Config(group_size=64, scale="zp"))
    assert m[0].scheme == "w4a8-zp"
    with pytest.raises(ValueError, match="alpha applies to scale='int' only"):
        zqkernels.W4A8Config(scale="zp", alpha=16)


# ------------------------------------------------------------------------------------------------
# GPU: the kernels against the reference

needs_sm90 = requires_sm90("the W4A8 kernels (sm_90a)")


def _gpu_inputs(M, N, K, g, out_dtype, bias):
    w = torch.randn(N, K, device=DEV) * 0.02
    w[:, : K // 3] *= 6
    w[: N // 4] = w[: N // 4].abs()  # skewed groups: zero points away from 8
    xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, device=DEV))
    wq, sw, sz = zqkernels.quantize_weight(w, fmt="int4", scale="zp", group_size=g)
    b = torch.randn(N, device=DEV).to(out_dtype) if bias else None
    return dict(xq=xq, wq=wq, sx=sx, sw=sw, sg=sz, bias=b, out_dtype=out_dtype)


def _ref(a):
    return w4a8_gemm_ref(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()})


def _close(out, ref, what):
    """One exact int32 sum, one fp32 epilogue rounding: one output ulp plus 1e-3 of the row's largest."""
    o, r = out.double().cpu(), ref.double().cpu()
    rtol = {torch.bfloat16: 2**-8, torch.float16: 2**-11, torch.float32: 2**-21}[out.dtype]
    err = (o - r).abs()
    bad = err > 2 * rtol * r.abs() + 1e-3 * r.abs().amax(dim=1, keepdim=True)
    assert not bad.any(), f"{what}: {int(bad.sum())} outputs off (worst abs err {float(err.max()):.3g})"


@requires_gpu
@needs_sm90
@pytest.mark.parametrize("path", ["stream", "mixed", "auto"])
@pytest.mark.parametrize("g", [32, 64, 128, 256, None])
def test_gpu_zero_point_sweep(path, g):
    for N, K in [(16, 256), (272, 512), (1040, 4096)]:
        if g is not None and K % g:
            continue
        for i, M in enumerate([1, 2, 8, 9, 16, 17, 33, 64, 65, 128, 300]):
            if path == "stream" and M > 64:
                continue
            out_dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
            a = _gpu_inputs(M, N, K, g, out_dtype, bias=i % 2 == 0)
            poison_next_allocation(M * N * 4, 0xFF)
            with zqkernels.ops.gemm_options(path=path):
                out = zqkernels.w4a8_gemm(**a)
            what = f"{path} g={g} M={M} N={N} K={K} {out_dtype}"
            if out.numel() >= 4096:
                assert_gemm_close(out.cpu(), _ref(a), what)
            else:
                _close(out, _ref(a), what)
    if path != "stream" and g in (64, None):  # prefill sizes
        for M in (1024, 4096):
            a = _gpu_inputs(M, 272, 512, g, torch.bfloat16, bias=True)
            with zqkernels.ops.gemm_options(path=path):
                out = zqkernels.w4a8_gemm(**a)
            assert_gemm_close(out.cpu(), _ref(a), f"{path} g={g} M={M}")


@requires_gpu
@needs_sm90
def test_gpu_zero_point_epilogue_graph_and_convert_path():
    a = _gpu_inputs(4, 512, 1024, 128, torch.bfloat16, bias=True)
    for act in ("gelu", "silu"):
        out = zqkernels.w4a8_gemm(**a, activation=act)
        _close(out, w4a8_gemm_ref(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in a.items()},
                                  activation=act), act)
    y = graph_replay(lambda: zqkernels.w4a8_gemm(**a))
    _close(y, _ref(a), "graph")
    with pytest.raises(ValueError, match="zero-point format .* runs on the 'stream' and 'mixed' paths"):
        zqkernels.w4a8_gemm(**a, path="convert")


@requires_gpu
@needs_sm90
def test_gpu_zero_point_qlinear_compile():
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 256).to(DEV)
    q = zqkernels.QLinear.from_linear(lin, "w4a8-zp", group_size=64)
    x = torch.randn(3, 512, device=DEV, dtype=torch.bfloat16)
    want = q.cpu()(x.cpu().float()).to(torch.bfloat16)
    q = q.to(DEV)
    y = q(x)
    _close(y, want, "qlinear")  # both bf16: one output ulp
    yc = torch.compile(q, fullgraph=True)(x)
    assert torch.equal(yc, y)


@requires_gpu
@needs_sm90
@pytest.mark.parametrize("g", [32, 128])
def test_gpu_symmetric_alpha16_through_the_zero_point_stream_mode(monkeypatch, g):
    """The experiment ZQKERNELS_W4A8_STREAM_FUSED (ops/gemm_paths.py): symmetric alpha-16 weights on the
    streaming kernel's zero-point mode with z = 8 give the reference's sums."""
    from zqkernels.ops import gemm_paths

    monkeypatch.setattr(gemm_paths, "W4A8_STREAM_FUSED", True)
    w = torch.randn(528, 1024, device=DEV) * 0.02
    wq, sw, sg = zqkernels.quantize_weight(w, fmt="int4", scale="int", group_size=g, alpha=16)
    for M in (1, 5, 16, 40):
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, 1024, device=DEV))
        out = zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, max_scale=16, path="stream")
        ref = w4a8_gemm_ref(xq.cpu(), wq.cpu(), sx.cpu(), sw.cpu(), sg.cpu())
        assert_gemm_close(out.cpu(), ref, f"g={g} M={M}")
