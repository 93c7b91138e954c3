"""int8_gemm on the GPU against the float64 reference: every kernel of the registry, the dispatch,
scale layouts, strides, bounds, programmatic dependent launch, CUDA graphs, and a seeded fuzz; the
epilogue options (activations on every kernel, int8 output on the kernels built for it).

A backend is skipped only when this build did not compile it or this GPU cannot run it (sm90 needs
compute capability 9.0); any error inside a test is a failure.
"""

from __future__ import annotations

import random
import re
from typing import Optional

import pytest
import torch
import zqkernels
from conftest import (
    DEV,
    HAVE_CUDA,
    HAVE_KERNELS,
    OUT_DTYPES,
    assert_gemm_close,
    calc_diff,
    capture,
    gpu_skip_reason,
    make_gemm_inputs,
    poison_next_allocation,
    requires_gpu,
)
from torch import nn
from zqkernels import QLinear, _ext
from zqkernels.reference import int8_gemm_ref, quantize_per_token_ref

pytestmark = requires_gpu

C = _ext._C


OUT_CODE = {0: torch.bfloat16, 1: torch.float16, 2: torch.float32, 3: torch.int8}
ALL_OUT = (torch.bfloat16, torch.float16, torch.float32)  # the float outputs every kernel family has


def skip_reason(backend: str) -> Optional[str]:
    """Why `backend` cannot run here (a legitimate skip), or None."""
    if backend == "auto":
        return gpu_skip_reason()
    return gpu_skip_reason((9, 0) if backend == "sm90" else None, backend, f"backend {backend}")


def kernel_params(int8_out: bool = False):
    """One param per (arch, tile) of the registry, with the float output dtypes built for it (or,
    with int8_out, one per tile built with int8 output)."""
    if not (HAVE_CUDA and HAVE_KERNELS):
        return []
    tiles: dict[tuple[str, str], list] = {}
    for arch, recipe, tile, code, _dispatched in C.gemm_kernels():
        if recipe == "int8_rowwise" and (OUT_CODE[code] == torch.int8) == int8_out:
            tiles.setdefault((arch, tile), []).append(OUT_CODE[code])
    return [pytest.param(arch, tile, outs, id=f"{arch}-{tile}") for (arch, tile), outs in tiles.items()]


# ------------------------------------------------------------------------------------------------
# int8_gemm: every kernel of the registry and the dispatch against the float64 reference.


def run_gemm(a: dict, backend: str = "auto", tile: Optional[str] = None) -> torch.Tensor:
    M, N = a["xq"].shape[0], a["wq"].shape[0]
    poison_next_allocation(M * N * 4, 0xFF)
    return zqkernels.int8_gemm(
        a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], a["out_dtype"], backend=backend, tile=tile
    )


M_SWEEP = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 127, 128, 255]
NK_AWKWARD = [(8, 16), (24, 48), (264, 1040), (4104, 4112)]  # aligned, not powers of two


def sweep(backend: str, tile: Optional[str], Ms, NKs, outs=ALL_OUT) -> None:
    """Every (M, N, K); out dtype and bias cycle with M so each combination meets each shape."""
    for N, K in NKs:
        for i, M in enumerate(Ms):
            out_dtype, bias = outs[i % len(outs)], (i // len(outs)) % 2 == 0
            a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=bias)
            out = run_gemm(a, backend, tile)
            assert_gemm_close(
                out, int8_gemm_ref(**a), f"{backend}/{tile} M={M} N={N} K={K} {out_dtype} bias={bias}"
            )


@pytest.mark.parametrize("arch,tile,outs", kernel_params())
def test_gemm_every_kernel(arch, tile, outs):
    reason = skip_reason(arch)
    if reason:
        pytest.skip(reason)
    sweep(arch, tile, M_SWEEP, NK_AWKWARD, tuple(outs))


@pytest.mark.parametrize("backend", ["auto", "sm90", "sm80"])
def test_gemm_dispatch(backend):
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    sweep(backend, None, M_SWEEP + [1000, 2048], NK_AWKWARD)
    sweep(backend, None, [4096, 8192], [(4104, 4112), (24, 48)])


@pytest.mark.parametrize("arch,tile,outs", kernel_params())
def test_gemm_scale_layouts_strides_and_misaligned_views(arch, tile, outs):
    """Per-tensor scales ([1] and [1, 1]), [M, 1] / [1, N] scale columns, row-strided xq and wq, and
    scale / bias views at odd element offsets (sw[1:] is only 4-byte aligned), on every kernel."""
    reason = skip_reason(arch)
    if reason:
        pytest.skip(reason)
    for i, (M, N, K) in enumerate([(3, 24, 48), (40, 264, 1040), (200, 136, 272)]):
        out_dtype = outs[i % len(outs)]
        a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=True)
        ref = int8_gemm_ref(**a)
        # per-tensor activation and weight scales
        for sx, sw in ((a["sx"][:1].clone(), a["sw"]), (a["sx"], a["sw"][:1].clone().view(1, 1)),
                       (a["sx"][:1].clone().view(1, 1), a["sw"][:1].clone())):
            b = dict(a, sx=sx, sw=sw)
            assert_gemm_close(run_gemm(b, arch, tile), int8_gemm_ref(**b), f"{arch}/{tile} per-tensor")
        b = dict(a, sx=a["sx"].view(M, 1), sw=a["sw"].view(1, N))
        assert_gemm_close(run_gemm(b, arch, tile), ref, f"{arch}/{tile} [M,1] x [1,N] scales")
        # row-strided operands: views of wider buffers (row stride K + 32)
        xbuf = torch.zeros(M, K + 32, dtype=torch.int8, device=DEV)
        xbuf[:, :K] = a["xq"]
        wbuf = torch.zeros(N, K + 32, dtype=torch.int8, device=DEV)
        wbuf[:, :K] = a["wq"]
        b = dict(a, xq=xbuf[:, :K], wq=wbuf[:, :K])
        assert_gemm_close(run_gemm(b, arch, tile), ref, f"{arch}/{tile} row-strided")
        # misaligned scale / bias views
        sxb = torch.cat([torch.ones(1, device=DEV), a["sx"]])
        swb = torch.cat([torch.ones(1, device=DEV), a["sw"]])
        bb = torch.cat([torch.ones(1, device=DEV, dtype=out_dtype), a["bias"]])
        b = dict(a, sx=sxb[1:], sw=swb[1:], bias=bb[1:])
        assert b["sw"].data_ptr() % 16 == 4 and b["bias"].data_ptr() % 16 != 0
        assert_gemm_close(run_gemm(b, arch, tile), ref, f"{arch}/{tile} misaligned scale/bias views")


@pytest.mark.parametrize("backend", ["sm90", "sm80"])
def test_gemm_int32_bound_with_minus_128(backend):
    """int8 may hold -128 (compressed-tensors): K = 131056 of (-128) * (-128) sums to 2,147,221,504,
    just under 2^31, and must come out exact on every backend; K past the bound raises on every one."""
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    M, N, K = 8, 16, 131056
    xq = torch.full((M, K), -128, dtype=torch.int8, device=DEV)
    wq = torch.full((N, K), -128, dtype=torch.int8, device=DEV)
    wq[1::2] = 127  # and the most negative sum: 131056 * -16256
    sx = torch.full((M,), 2.0**-20, device=DEV)
    sw = torch.full((N,), 2.0**-11, device=DEV)
    a = dict(xq=xq, wq=wq, sx=sx, sw=sw, bias=None, out_dtype=torch.float32)
    out = run_gemm(a, backend)
    ref = int8_gemm_ref(**a)
    assert_gemm_close(out, ref, f"{backend} K={K} all -128")
    K2 = 131072
    b = dict(a, xq=torch.zeros(M, K2, dtype=torch.int8, device=DEV), wq=torch.zeros(N, K2, dtype=torch.int8, device=DEV))
    with pytest.raises(ValueError, match=r"int8_gemm: K must be <= 131071"):
        run_gemm(b, backend)


def test_gemm_output_past_2_31_elements():
    """M * N = 2^31 + 2^17 outputs (4 GiB of bf16): 64-bit output indexing; rows sampled."""
    M, N, K = 65540, 32768, 16
    a = make_gemm_inputs(M, N, K, device=DEV)
    out = zqkernels.int8_gemm(a["xq"], a["wq"], a["sx"], a["sw"])
    for rows in (slice(0, 4), slice(M // 2, M // 2 + 4), slice(M - 4, M)):
        ref = int8_gemm_ref(a["xq"][rows], a["wq"], a["sx"][rows], a["sw"])
        assert_gemm_close(out[rows], ref, f"rows {rows}")
    del out


def test_pdl_gemm_waits_for_a_late_producer():
    """A producer kernel signals dependent launch at entry, spins ~50 us, then writes xq / sx. The GEMM,
    launched right after it with programmatic dependent launch, must wait (griddepcontrol.wait)
    before reading them: compared with the reference eagerly and under CUDA graph replay."""
    if not C._debug_pdl():
        pytest.skip("PDL is switched off (ZQKERNELS_PDL=0)")
    M, N, K = 16, 4096, 4096
    a = make_gemm_inputs(M, N, K, device=DEV)
    ref = int8_gemm_ref(**a)
    stream = torch.cuda.current_stream().cuda_stream

    def forward(src_x, src_s, dst_x, dst_s):
        C._debug_delayed_copy(src_x.data_ptr(), dst_x.data_ptr(), dst_x.numel(), 50, 0, stream)
        C._debug_delayed_copy(src_s.data_ptr(), dst_s.data_ptr(), 4 * dst_s.numel(), 50, 0, stream)
        return zqkernels.int8_gemm(dst_x, a["wq"], dst_s, a["sw"])

    for _ in range(3):
        dst_x = torch.zeros_like(a["xq"])
        dst_s = torch.zeros_like(a["sx"])
        out = forward(a["xq"], a["sx"], dst_x, dst_s)
        assert_gemm_close(out, ref, "eager PDL after a late producer")
    dst_x = torch.zeros_like(a["xq"])
    dst_s = torch.zeros_like(a["sx"])
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        stream = torch.cuda.current_stream().cuda_stream
        static_y = forward(a["xq"], a["sx"], dst_x, dst_s)
    for _ in range(3):
        dst_x.zero_()
        dst_s.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert_gemm_close(static_y, ref, "graph replay: PDL after a late producer")


def test_gemm_fuzz_against_fp64_reference():
    """1000 seeded random cases: M, N, K, scale layouts (per-row / per-tensor / misaligned views),
    bias, output dtype, row strides and backend, each against the float64 reference."""
    rng = random.Random(1234)
    backends = [b for b in ("auto", "sm80") if skip_reason(b) is None]
    for case in range(1000):
        M = rng.choice([rng.randint(1, 16), rng.randint(17, 300)])
        N = 8 * rng.randint(1, 96)
        K = 16 * rng.randint(1, 80)
        out_dtype = rng.choice(ALL_OUT)
        backend = rng.choice(backends)
        a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=rng.random() < 0.5)
        if rng.random() < 0.2:
            a["sx"] = a["sx"][:1].clone()
        if rng.random() < 0.2:
            a["sw"] = a["sw"][:1].clone()
        if rng.random() < 0.2:
            a["sw"] = torch.cat([torch.ones(1, device=DEV), a["sw"]])[1:]
        if rng.random() < 0.2:
            pad = 16 * rng.randint(1, 4)
            buf = torch.zeros(M, K + pad, dtype=torch.int8, device=DEV)
            buf[:, :K] = a["xq"]
            a["xq"] = buf[:, :K]
        if rng.random() < 0.1:
            a["xq"][rng.randrange(M)] = -128
        what = f"case {case}: M={M} N={N} K={K} {out_dtype} backend={backend} bias={a['bias'] is not None}"
        assert_gemm_close(run_gemm(a, backend), int8_gemm_ref(**a), what)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_gemm_zero_scale_rows_give_bias(out_dtype):
    a = make_gemm_inputs(200, 264, 1040, device=DEV, out_dtype=out_dtype, bias=True)
    a["sx"][::7] = 0
    out = run_gemm(a)
    assert_gemm_close(out, int8_gemm_ref(**a), "zero rows")
    assert torch.equal(out[::7], a["bias"].expand(out[::7].shape))  # 0 * t + bias, exactly


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_gemm_outliers_and_extreme_sums(out_dtype):
    # No bias, so every row's own magnitude sets its tolerance (assert_gemm_close is per row).
    M, N, K = 130, 4104, 4112
    a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype)
    low = -8 if out_dtype == torch.bfloat16 else -5  # fp16: keep the rows above its subnormals
    a["sx"] = torch.logspace(low, -2, M, device=DEV)  # scales over several decades
    a["sw"] = torch.logspace(-4, -2, N, device=DEV)
    a["xq"][0] = 127  # the largest possible sums: 127^2 * K = 66,322,048 > 2^24
    a["wq"][:3] = 127
    a["wq"][3] = -127
    out = run_gemm(a)
    assert_gemm_close(out, int8_gemm_ref(**a), "outliers")


def test_gemm_empty_and_k0():
    for M, N, K in ((0, 8, 16), (4, 0, 16), (4, 8, 0)):
        a = make_gemm_inputs(M, N, K, device=DEV, bias=True)
        out = run_gemm(a)
        assert out.shape == (M, N) and out.is_cuda
        assert torch.equal(out, a["bias"].expand(M, N))
        a["bias"] = None
        assert torch.equal(run_gemm(a), torch.zeros(M, N, dtype=torch.bfloat16, device=DEV))


# ------------------------------------------------------------------------------------------------
# Streams, CUDA graphs, torch.compile, opcheck.


def test_ops_run_on_the_current_stream():
    # The side stream first sleeps, then writes the inputs, then runs the ops. A kernel launched on
    # another stream would read the inputs before they are written.
    a = make_gemm_inputs(64, 264, 1040, device=DEV, bias=True)
    x = torch.randn(64, 1040, device=DEV, dtype=torch.bfloat16)
    xq_dst, x_dst = torch.zeros_like(a["xq"]), torch.zeros_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(100_000_000)
        xq_dst.copy_(a["xq"])
        x_dst.copy_(x)
        out = zqkernels.int8_gemm(xq_dst, a["wq"], a["sx"], a["sw"], a["bias"])
        q = zqkernels.quantize_per_token(x_dst)
    torch.cuda.synchronize()
    assert_gemm_close(out, int8_gemm_ref(**a), "side stream")
    q_ref = quantize_per_token_ref(x.cpu())
    assert torch.equal(q[0].cpu(), q_ref[0]) and torch.equal(q[1].cpu(), q_ref[1])


@pytest.mark.parametrize("M", [1, 16, 37, 64, 128])
def test_cuda_graph_quant_then_gemm_at_decode_shapes(M):
    """quantize_per_token -> int8_gemm captured in one graph at an LLM decode shape.

    The GEMM is launched with programmatic dependent launch, and inside a graph that becomes a
    programmatic edge: the GEMM may start while the quant kernel runs, and only sees the quant
    kernel's writes made before its trigger. A trigger placed too early once gave stale rows here
    (eager launches and small shapes did not show it), so compare replays with the reference."""
    N, K = 22016, 4096
    wq, sw = zqkernels.quantize_weight(torch.randn(N, K, device=DEV, dtype=torch.bfloat16))

    def forward(x):
        xq, sx = zqkernels.quantize_per_token(x)
        return zqkernels.int8_gemm(xq, wq, sx, sw)

    static_x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    g, static_y = capture(lambda: forward(static_x))
    wq_c, sw_c = wq.cpu(), sw.cpu()
    for _ in range(4):
        static_x.copy_(torch.randn_like(static_x))
        g.replay()
        torch.cuda.synchronize()
        xq_r, sx_r = quantize_per_token_ref(static_x.cpu())
        ref = int8_gemm_ref(xq_r, wq_c, sx_r, sw_c).float()
        err = (static_y.cpu().float() - ref).norm(dim=1) / ref.norm(dim=1)
        assert err.max().item() < 1e-2, (
            f"rows with stale data: {torch.nonzero(err > 1e-2).flatten().tolist()}"
        )


def test_opcheck_cuda():
    x = torch.randn(12, 4096, device=DEV, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.zqkernels.quantize_per_token.default, (x,))
    a = make_gemm_inputs(9, 24, 48, device=DEV, bias=True)
    torch.library.opcheck(
        torch.ops.zqkernels.gemm.default,
        (a["xq"], a["wq"], a["sx"], a["sw"], None, a["bias"], "int8_rowwise", torch.bfloat16),
    )


# ------------------------------------------------------------------------------------------------
# Bad input on real CUDA tensors.


def test_gpu_alignment_errors():
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    buf = torch.zeros(4 * 16 + 16, dtype=torch.int8, device=DEV)
    a["xq"] = buf[1:65].view(4, 16)
    with pytest.raises(
        ValueError, match=r"int8_gemm: xq must start at a 16-byte aligned address .*% 16 == 1"
    ):
        run_gemm(a)
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    wbuf = torch.zeros(8 * 16 + 16, dtype=torch.int8, device=DEV)
    a["wq"] = wbuf[4:132].view(8, 16)
    with pytest.raises(ValueError, match=r"int8_gemm: wq must start at a 16-byte aligned address"):
        run_gemm(a)
    with pytest.raises(ValueError, match=r"int8_gemm: K must be a multiple of 16 on CUDA"):
        run_gemm(make_gemm_inputs(4, 8, 100, device=DEV))
    with pytest.raises(ValueError, match=r"int8_gemm: N must be a multiple of 8 on CUDA"):
        run_gemm(make_gemm_inputs(4, 12, 16, device=DEV))
    with pytest.raises(ValueError, match=r"QLinear.from_linear: in_features must be a multiple of 16"):
        QLinear.from_linear(nn.Linear(100, 64, device=DEV))


def test_gpu_device_mix_errors():
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    a["wq"] = a["wq"].cpu()
    with pytest.raises(
        ValueError,
        match=r"int8_gemm: all tensors must be on one device, but xq is on cuda:0 "
        r"and wq is on cpu",
    ):
        run_gemm(a)
    q = QLinear.from_linear(nn.Linear(1024, 512, device=DEV, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"QLinear: x is on cpu but the layer's weights are on cuda:0"):
        q(torch.randn(2, 1024, dtype=torch.bfloat16))
    if torch.cuda.device_count() > 1:
        a = make_gemm_inputs(4, 8, 16, device=DEV)
        a["sw"] = a["sw"].to("cuda:1")
        with pytest.raises(ValueError, match=r"xq is on cuda:0 and sw is on cuda:1"):
            run_gemm(a)


def test_gpu_backend_and_tile_errors():
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    for backend in ("sm90", "sm80"):
        if backend in {k[0] for k in C.gemm_kernels()}:
            if skip_reason(backend) is None:
                with pytest.raises(ValueError, match=rf"int8_gemm: tile 'nope' is not built for {backend}_int8_rowwise"):
                    run_gemm(a, backend, "nope")
            else:
                with pytest.raises(RuntimeError, match=re.escape(f"int8_gemm: backend '{backend}' needs")):
                    run_gemm(a, backend)
        else:
            with pytest.raises(RuntimeError, match=rf"int8_gemm: backend '{backend}' is not compiled"):
                run_gemm(a, backend)
    with pytest.raises(ValueError, match=r"int8_gemm: backend must be one of"):
        run_gemm(a, "sm75")


def test_registry_can_implement_without_launching():
    """Every registry row answers can-implement for a shape without a launch: aligned problems yes,
    K % 16 != 0, N % 8 != 0, strides below K or past the int32 bound no, each saying why; the
    group-scaled and block-scaled recipes name their missing scales first."""
    for kid, (arch, recipe, tile, code, _d) in enumerate(C.gemm_kernels()):
        if recipe.startswith("int8_group") or "_mixed" in recipe:  # needs its group scales (W4A8 mixed:
            # after the packed layout's N % 16, K % 64), checked before anything else
            assert "group scales (sg_t) must be non-null" in C.gemm_can_implement(kid, 37, 32, 64, 64, 64), (recipe, tile)
            continue
        if recipe == "fp8_blockwise":  # K in whole 128-blocks, then its block scales
            assert "K must be a multiple of 128 for block scales" in C.gemm_can_implement(kid, 37, 24, 48, 48, 48)
            assert C.gemm_can_implement(kid, 37, 24, 128, 128, 128) == "", (arch, tile)  # scales checked at run
            continue
        N = 32 if OUT_CODE[code] == torch.int8 else 24
        assert C.gemm_can_implement(kid, 37, N, 48, 48, 48) == "", (arch, tile)
        assert C.gemm_can_implement(kid, 37, N, 48, 64, 48) == "", (arch, tile)  # row-strided xq
        if OUT_CODE[code] == torch.int8:
            assert "N must be a multiple of 16 for int8 output" in C.gemm_can_implement(kid, 4, 24, 48, 48, 48)
        assert "K must be a multiple of 16" in C.gemm_can_implement(kid, 4, 24, 40, 40, 40)
        assert "N must be a multiple of 8" in C.gemm_can_implement(kid, 4, 20, 48, 48, 48)
        assert "lda must be >= K" in C.gemm_can_implement(kid, 4, 24, 48, 32, 48)
        if recipe == "int8_rowwise":  # the int32 accumulator's bound; FP8 sums are fp32
            assert "K must be <= 131071" in C.gemm_can_implement(kid, 4, 24, 131072, 131072, 131072)
        else:
            assert C.gemm_can_implement(kid, 4, 24, 131072, 131072, 131072) == "", (arch, tile)



# ------------------------------------------------------------------------------------------------
# Epilogue options: activation (every kernel, a runtime parameter) and int8 output with a static
# per-tensor scale (the tiles built for it), against the float64 reference.

ACTS = ("gelu", "gelu_tanh", "silu")
EPI_M = [1, 17, 128, 1000, 4096]
# The kernels evaluate the activation in fp32 with CUDA's erfcf / expf (<= 4 / 2 ulp) and IEEE
# division; a function's conditioning |v f'(v) / f(v)| (<= ~10 where outputs are not tiny next to
# their row) amplifies those few ulps to ~2^-20 relative. bf16 / fp16 outputs round that away
# (assert_gemm_close: one output ulp); fp32 outputs get 2^-18 (tiny outputs: the per-row atol).
FP32_ACT_RTOL = 2**-18


def run_epilogue(a: dict, backend: str = "auto", tile: Optional[str] = None, activation: str = "none",
                 out_scale: Optional[float] = None) -> torch.Tensor:
    M, N = a["xq"].shape[0], a["wq"].shape[0]
    if a["out_dtype"] == torch.int8:
        poison_next_allocation(M * N, 0x80)  # -128: never produced by the int8 epilogue
    else:
        poison_next_allocation(M * N * 4, 0xFF)  # NaN
    return zqkernels.int8_gemm(
        a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], a["out_dtype"], backend=backend, tile=tile,
        activation=activation, out_scale=out_scale,
    )


def assert_epilogue_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Kernel vs int8_gemm_ref (same activation, same out_scale).

    int8: every code within +-1 of the reference (the kernel's fp32 y / out_scale and the float64
    one may fall on either side of a .5), few codes differ at all, and no -128 (the poison value,
    and never produced). bf16 / fp16: assert_gemm_close. fp32: FP32_ACT_RTOL plus the per-row atol.
    """
    assert out.shape == ref.shape and out.dtype == ref.dtype, (what, out.shape, out.dtype, ref.shape, ref.dtype)
    if out.dtype == torch.int8:
        if out.numel() == 0:
            return
        assert not (out == -128).any(), f"{what}: {int((out == -128).sum())} outputs are -128 (unwritten?)"
        d = (out.int() - ref.int()).abs()
        if int(d.max()) > 1:
            m, n = (int(i) for i in (d > 1).nonzero()[0])
            raise AssertionError(
                f"{what}: {int((d > 1).sum())} codes off by more than 1; first at [{m}, {n}]: got "
                f"{int(out[m, n])}, expected {int(ref[m, n])}"
            )
        differ = float((d != 0).double().mean())
        assert differ < 0.01, f"{what}: {differ:.2%} of codes differ by 1 (expected ~0.01%)"
        return
    if out.dtype != torch.float32:
        assert_gemm_close(out, ref, what)
        return
    o, r = out.double(), ref.double()
    assert not torch.isnan(o).any(), f"{what}: NaN in the output"
    if r.numel() == 0:
        return
    atol_row = 1e-3 * r.abs().amax(dim=1, keepdim=True)
    bad = (o - r).abs() > FP32_ACT_RTOL * r.abs() + atol_row
    if bad.any():
        m, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} outputs off; first at [{m}, {n}]: got {float(o[m, n])}, "
                             f"expected {float(r[m, n])}")
    d = calc_diff(o, r)
    assert d < 1e-9, f"{what}: calc_diff {d:.3g}"


def int8_case(M: int, N: int, K: int, activation: str, bias: bool, headroom: float = 150.0):
    """Inputs for an int8-output GEMM and a static out_scale putting the largest |act(y)| at
    `headroom` codes (> 127: the largest outputs saturate)."""
    a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=torch.int8)
    if bias:
        a["bias"] = torch.randn(N, device=DEV)  # float32: the bias of an int8 output
    y = int8_gemm_ref(**dict(a, out_dtype=torch.float64), activation=activation)
    amax = float(y.abs().max()) if y.numel() else 1.0
    return a, max(amax, 1e-6) / headroom


@pytest.mark.parametrize("arch,tile,outs", kernel_params())
def test_gemm_activation_every_kernel(arch, tile, outs):
    """Every activation on every kernel (float outputs), M = 1 .. 4096, bias on and off."""
    reason = skip_reason(arch)
    if reason:
        pytest.skip(reason)
    for act in ACTS:
        for N, K in ((24, 48), (264, 1040)):
            for i, M in enumerate(EPI_M):
                out_dtype, bias = outs[i % len(outs)], i % 2 == 0
                a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=bias)
                out = run_epilogue(a, arch, tile, activation=act)
                ref = int8_gemm_ref(**a, activation=act)
                assert_epilogue_close(out, ref, f"{arch}/{tile} {act} M={M} N={N} K={K} {out_dtype} bias={bias}")


@pytest.mark.parametrize("backend", ["auto", "sm90", "sm80"])
def test_gemm_activation_tails(backend):
    """The negative tails of the activations on bf16 output (fp32's exponent range): results down to
    bf16's smallest subnormal (2^-133) are computed, not flushed to 0. The first kernels returned -0
    once exp(-v) overflowed (silu below v = -88.7, gelu_tanh below v = -10.1), and the first
    reference's textbook 1 + erf / 1 + tanh returned 0 below v = -8.4 / -7.2 (float64 cancellation).
    Rows of sx put exact fp32 pre-activations v = sx * 16 on a grid over [-100, 20] (xq = wq = 1,
    K = 16, sw = 1), so the kernel's v is the reference's v and only the activation differs."""
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    v = torch.linspace(-100, 20, 2401)  # float32
    M, N, K = v.numel(), 16, 16
    a = dict(
        xq=torch.ones(M, K, dtype=torch.int8, device=DEV),
        wq=torch.ones(N, K, dtype=torch.int8, device=DEV),
        sx=(v / 16).to(DEV),
        sw=torch.ones(N, device=DEV),
        bias=None,
        out_dtype=torch.bfloat16,
    )
    for act in ACTS:
        out = run_epilogue(a, backend, activation=act).double()
        ref = int8_gemm_ref(**a, activation=act).double()
        assert not torch.isnan(out).any(), act
        flushed = (ref.abs() >= 2**-130) & (out == 0)  # a few subnormal ulps: not a rounding edge
        assert not flushed.any(), (
            f"{backend} {act}: {int(flushed[:, 0].sum())} tail values flushed to 0, first at v = "
            f"{float(v[int(flushed[:, 0].nonzero()[0])])}"
        )
        ulp = 2**-7 * ref.abs() + 2**-133  # one bf16 ulp (subnormals: 2^-133)
        bad = (out - ref).abs() > ulp
        assert not bad.any(), f"{backend} {act}: {int(bad[:, 0].sum())} values off by more than one ulp"
        differ = float((out != ref).double().mean())
        assert differ < 0.01, f"{backend} {act}: {differ:.2%} of the tail outputs differ from the reference"


@pytest.mark.parametrize("arch,tile,outs", kernel_params(int8_out=True))
def test_gemm_int8_output_every_kernel(arch, tile, outs):
    """int8 output with a static scale on every kernel built for it: each activation, M = 1 .. 4096,
    float32 bias on and off, the largest outputs saturating at +-127."""
    reason = skip_reason(arch)
    if reason:
        pytest.skip(reason)
    for act in ("none",) + ACTS:
        for N, K in ((32, 48), (272, 1040)):
            for i, M in enumerate(EPI_M):
                a, s = int8_case(M, N, K, act, bias=i % 2 == 0)
                q = run_epilogue(a, arch, tile, activation=act, out_scale=s)
                ref = int8_gemm_ref(**a, activation=act, out_scale=s)
                assert_epilogue_close(q, ref, f"{arch}/{tile} int8 {act} M={M} N={N} K={K} s={s:.3g}")
                if M >= 128:
                    assert (ref.abs() == 127).any() and (q.abs() == 127).any()  # saturation exercised


@pytest.mark.parametrize("arch,tile,outs", kernel_params(int8_out=True))
def test_gemm_int8_output_rounding_and_specials(arch, tile, outs):
    """y / out_scale on exact halves (round half to even), NaN (-> 0), +-inf and huge values (-> +-127,
    never -128): rows of sx chosen so that y = sx * 16 exactly (xq = wq = 1, K = 16, sw = 1)."""
    reason = skip_reason(arch)
    if reason:
        pytest.skip(reason)
    rows = [0.5, 1.5, -2.5, 3.5, float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0]
    M, N, K = len(rows), 16, 16
    a = dict(
        xq=torch.ones(M, K, dtype=torch.int8, device=DEV),
        wq=torch.ones(N, K, dtype=torch.int8, device=DEV),
        sx=torch.tensor(rows, device=DEV) / 16,
        sw=torch.ones(N, device=DEV),
        bias=None,
        out_dtype=torch.int8,
    )
    q = run_epilogue(a, arch, tile, out_scale=1.0)
    assert q[:, 0].tolist() == [0, 2, -2, 4, 0, 127, -127, 127, -127, 0]
    assert (q == q[:, :1]).all()
    for act in ACTS:  # NaN / inf through the activations: the reference's conventions
        q = run_epilogue(a, arch, tile, activation=act, out_scale=1.0)
        assert torch.equal(q, int8_gemm_ref(**a, activation=act, out_scale=1.0)), act


@pytest.mark.parametrize("backend", ["auto", "sm90", "sm80"])
def test_gemm_epilogue_dispatch(backend):
    """The dispatch tables (16-bit, fp32 and int8 output classes) with every activation, over the M
    buckets of the rules (and N past 8192)."""
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    Ms = [1, 16, 17, 64, 65, 128, 256, 257, 513, 1000, 1025, 4096]
    for j, (N, K) in enumerate(((4112, 1040), (8208, 272))):
        for i, M in enumerate(Ms):
            act = (("none",) + ACTS)[(i + j) % 4]
            out_dtype = ALL_OUT[i % 3]
            a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=i % 2 == 1)
            what = f"{backend} {act} M={M} N={N} K={K}"
            assert_epilogue_close(run_epilogue(a, backend, activation=act), int8_gemm_ref(**a, activation=act),
                                  f"{what} {out_dtype}")
            a, s = int8_case(M, N, K, act, bias=i % 2 == 0)
            assert_epilogue_close(run_epilogue(a, backend, activation=act, out_scale=s),
                                  int8_gemm_ref(**a, activation=act, out_scale=s), f"{what} int8")


def test_gemm_epilogue_options_are_part_of_the_launch_cache():
    """The sm90 launcher caches kernel parameters per call signature (pointers, shapes): the same
    tensors with another activation or out_scale must not reuse stale parameters. The output
    block is freed between calls, so the caching allocator hands the same address back."""
    for M in (16, 1000):  # a swap-AB tile and a large-M tile
        a = make_gemm_inputs(M, 272, 1040, device=DEV, bias=True)
        for act in ("none", "gelu", "none", "silu", "gelu_tanh", "gelu"):
            out = zqkernels.int8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], activation=act)
            assert_epilogue_close(out, int8_gemm_ref(**a, activation=act), f"M={M} {act} (repeated pointers)")
            del out
        b, s = int8_case(M, 272, 1040, "gelu", bias=True)
        for scale in (s, 2 * s, s, 0.5 * s):
            q = zqkernels.int8_gemm(b["xq"], b["wq"], b["sx"], b["sw"], b["bias"], torch.int8, activation="gelu",
                                    out_scale=scale)
            assert_epilogue_close(q, int8_gemm_ref(**b, activation="gelu", out_scale=scale), f"M={M} s={scale:.3g}")
            del q


def test_gemm_epilogue_fuzz():
    """300 seeded random cases of the epilogue options: activation, float / int8 output, bias,
    per-tensor scales, row-strided xq, backend, against the float64 reference."""
    rng = random.Random(4321)
    backends = [b for b in ("auto", "sm80") if skip_reason(b) is None]
    for case in range(300):
        M = rng.choice([rng.randint(1, 16), rng.randint(17, 300), rng.randint(301, 2000)])
        int8_out = rng.random() < 0.5
        N = (16 if int8_out else 8) * rng.randint(1, 64)
        K = 16 * rng.randint(1, 80)
        act = rng.choice(("none",) + ACTS)
        backend = rng.choice(backends)
        if int8_out:
            a, s = int8_case(M, N, K, act, bias=rng.random() < 0.5, headroom=rng.choice([100.0, 127.0, 300.0]))
        else:
            a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=rng.choice(ALL_OUT), bias=rng.random() < 0.5)
            s = None
        if rng.random() < 0.2:
            a["sx"] = a["sx"][:1].clone()
        if rng.random() < 0.2:
            a["sw"] = torch.cat([torch.ones(1, device=DEV), a["sw"]])[1:]
        if rng.random() < 0.2:
            pad = 16 * rng.randint(1, 4)
            buf = torch.zeros(M, K + pad, dtype=torch.int8, device=DEV)
            buf[:, :K] = a["xq"]
            a["xq"] = buf[:, :K]
        what = f"case {case}: M={M} N={N} K={K} {a['out_dtype']} {act} backend={backend} bias={a['bias'] is not None}"
        out = run_epilogue(a, backend, activation=act, out_scale=s)
        assert_epilogue_close(out, int8_gemm_ref(**a, activation=act, out_scale=s), what)


def test_gemm_epilogue_empty_and_k0():
    for M, N, K in ((0, 16, 16), (4, 0, 16), (4, 16, 0)):
        a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=torch.float32, bias=True)
        for act in ACTS:
            out = run_epilogue(a, activation=act)
            assert out.shape == (M, N) and out.is_cuda
            torch.testing.assert_close(out, int8_gemm_ref(**a, activation=act))
            b = dict(a, out_dtype=torch.int8)
            q = run_epilogue(b, activation=act, out_scale=0.01)
            assert q.dtype == torch.int8 and q.shape == (M, N)
            assert torch.equal(q, int8_gemm_ref(**b, activation=act, out_scale=0.01))


@pytest.mark.parametrize("M", [1, 16, 128, 1000])
def test_cuda_graph_quant_gemm_epilogue(M):
    """quantize_per_token -> int8_gemm(gelu, int8 output) -> int8_gemm(silu, bf16) captured in one
    CUDA graph (PDL edges between the kernels); replays with new inputs match the reference."""
    N, K = 4096, 1024
    w1q, sw1 = zqkernels.quantize_weight(torch.randn(N, K, device=DEV, dtype=torch.bfloat16))
    w2q, sw2 = zqkernels.quantize_weight(torch.randn(K, N, device=DEV, dtype=torch.bfloat16))
    b1 = torch.randn(N, device=DEV)
    s1 = 0.05  # static scale of the int8 intermediate
    s1_vec = torch.full((1,), s1, device=DEV)

    def forward(x):
        xq, sx = zqkernels.quantize_per_token(x)
        h = zqkernels.int8_gemm(xq, w1q, sx, sw1, b1, torch.int8, activation="gelu", out_scale=s1)
        return h, zqkernels.int8_gemm(h, w2q, s1_vec, sw2, None, torch.bfloat16, activation="silu")

    static_x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        forward(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_h, static_y = forward(static_x)
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        g.replay()
        torch.cuda.synchronize()
        xq_r, sx_r = (t.to(DEV) for t in quantize_per_token_ref(static_x.cpu()))  # as the other graph test
        h_ref = int8_gemm_ref(xq_r, w1q, sx_r, sw1, b1, torch.int8, activation="gelu", out_scale=s1)
        assert_epilogue_close(static_h, h_ref, f"graph replay M={M}: int8 gelu")
        y_ref = int8_gemm_ref(static_h, w2q, s1_vec, sw2, None, torch.bfloat16, activation="silu")
        assert_epilogue_close(static_y, y_ref, f"graph replay M={M}: bf16 silu")


def test_pdl_gemm_epilogue_waits_for_a_late_producer():
    """As test_pdl_gemm_waits_for_a_late_producer, with gelu and int8 output: the epilogue's
    options are kernel parameters, the inputs are still read only after griddepcontrol.wait."""
    if not C._debug_pdl():
        pytest.skip("PDL is switched off (ZQKERNELS_PDL=0)")
    for M in (16, 1000):
        a, s = int8_case(M, 4096, 4096, "gelu", bias=True)
        ref = int8_gemm_ref(**a, activation="gelu", out_scale=s)
        stream = torch.cuda.current_stream().cuda_stream
        for _ in range(3):
            dst_x = torch.zeros_like(a["xq"])
            dst_s = torch.zeros_like(a["sx"])
            C._debug_delayed_copy(a["xq"].data_ptr(), dst_x.data_ptr(), dst_x.numel(), 50, 0, stream)
            C._debug_delayed_copy(a["sx"].data_ptr(), dst_s.data_ptr(), 4 * dst_s.numel(), 50, 0, stream)
            q = zqkernels.int8_gemm(dst_x, a["wq"], dst_s, a["sw"], a["bias"], torch.int8, activation="gelu",
                                    out_scale=s)
            assert_epilogue_close(q, ref, f"M={M}: eager PDL after a late producer, int8 gelu")


def test_opcheck_cuda_epilogue():
    a = make_gemm_inputs(9, 32, 48, device=DEV, bias=True)
    torch.library.opcheck(
        torch.ops.zqkernels.gemm.default,
        (a["xq"], a["wq"], a["sx"], a["sw"], None, a["bias"], "int8_rowwise", torch.bfloat16, "gelu_tanh", None),
    )
    bias32 = torch.randn(32, device=DEV)
    torch.library.opcheck(
        torch.ops.zqkernels.gemm.default,
        (a["xq"], a["wq"], a["sx"], a["sw"], None, bias32, "int8_rowwise", torch.int8, "silu", 0.03),
    )


def test_compile_epilogue_cuda():
    torch._dynamo.reset()
    a, s = int8_case(33, 272, 1040, "gelu", bias=True)

    def f(xq, wq, sx, sw, bias):
        return zqkernels.int8_gemm(xq, wq, sx, sw, bias, torch.int8, activation="gelu", out_scale=s)

    args = (a["xq"], a["wq"], a["sx"], a["sw"], a["bias"])
    assert torch.equal(torch.compile(f, fullgraph=True)(*args), f(*args))


def test_gpu_epilogue_errors():
    a = make_gemm_inputs(4, 24, 16, device=DEV)
    with pytest.raises(ValueError, match=r"int8_gemm: N must be a multiple of 16 on CUDA for int8 output"):
        run_epilogue(dict(a, out_dtype=torch.int8), out_scale=1.0)
    a = make_gemm_inputs(4, 32, 16, device=DEV, out_dtype=torch.int8)
    a["bias"] = torch.ones(32, device=DEV, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"int8_gemm: bias must be float32 for int8 output"):
        run_epilogue(a, out_scale=1.0)
    a["bias"] = None
    with pytest.raises(ValueError, match=r"int8_gemm: out_dtype=torch.int8 needs out_scale"):
        run_epilogue(a)
    with pytest.raises(ValueError, match=r"int8_gemm: activation must be one of"):
        run_epilogue(dict(a, out_dtype=torch.bfloat16), activation="gelu_erf")
    for backend in ("sm90", "sm80"):
        if skip_reason(backend) is None:
            with pytest.raises(ValueError, match=rf"int8_gemm: tile 'swap_64x16x256_pp' is not built for {backend}_int8_rowwise with int8 output"):
                run_epilogue(a, backend, "swap_64x16x256_pp", out_scale=1.0)
