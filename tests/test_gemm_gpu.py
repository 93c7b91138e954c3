"""int8_gemm on the GPU against the float64 reference: every kernel of the registry, the dispatch,
scale layouts, strides, bounds, programmatic dependent launch, CUDA graphs, and a seeded fuzz.

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
    make_gemm_inputs,
    poison_next_allocation,
    requires_gpu,
)
from torch import nn
from zqkernels import QLinear, _ext
from zqkernels.reference import int8_gemm_ref, quantize_per_token_ref

pytestmark = requires_gpu

C = _ext._C


OUT_CODE = {0: torch.bfloat16, 1: torch.float16, 2: torch.float32}
ALL_OUT = (torch.bfloat16, torch.float16, torch.float32)


def skip_reason(backend: str) -> Optional[str]:
    """Why `backend` cannot run here (a legitimate skip), or None."""
    if backend == "auto":
        return None
    if backend not in {k[0] for k in C.gemm_kernels()}:
        return f"backend {backend} is not compiled into this build"
    if backend == "sm90" and torch.cuda.get_device_capability() != (9, 0):
        return "backend sm90 needs compute capability 9.0"
    return None


def kernel_params():
    """One param per (arch, tile) of the registry, with the output dtypes built for it."""
    if not (HAVE_CUDA and HAVE_KERNELS):
        return []
    tiles: dict[tuple[str, str], list] = {}
    for arch, recipe, tile, code, _dispatched in C.gemm_kernels():
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
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        forward(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = forward(static_x)
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
        torch.ops.zqkernels.int8_gemm.default,
        (a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], torch.bfloat16, "auto", ""),
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
    K % 16 != 0, N % 8 != 0, strides below K or past the int32 bound no, each saying why."""
    for kid, (arch, _recipe, tile, _code, _d) in enumerate(C.gemm_kernels()):
        assert C.gemm_can_implement(kid, 37, 24, 48, 48, 48) == "", (arch, tile)
        assert C.gemm_can_implement(kid, 37, 24, 48, 64, 48) == "", (arch, tile)  # row-strided xq
        assert "K must be a multiple of 16" in C.gemm_can_implement(kid, 4, 24, 40, 40, 40)
        assert "N must be a multiple of 8" in C.gemm_can_implement(kid, 4, 20, 48, 48, 48)
        assert "lda must be >= K" in C.gemm_can_implement(kid, 4, 24, 48, 32, 48)
        assert "K must be <= 131071" in C.gemm_can_implement(kid, 4, 24, 131072, 131072, 131072)
