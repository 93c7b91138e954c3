"""The CUDA kernels against the pure-torch references (needs a GPU and a build with kernels).

Every test here compares a kernel with ``zqkernels.reference``, never a kernel with itself:
quantization must match bit for bit, the GEMM to one output ulp (conftest.assert_gemm_close).
A backend is skipped only when this build did not compile it (``_C.has_backend``) or this GPU cannot
run it (sm90 needs compute capability 9.0); any error inside a test is a failure.
"""

from __future__ import annotations

import re
from typing import Optional

import pytest
import torch
import zqkernels
from conftest import (
    HAVE_CUDA,
    HAVE_KERNELS,
    OUT_DTYPES,
    X_DTYPES,
    assert_gemm_close,
    make_gemm_inputs,
    rel_err,
    requires_gpu,
)
from torch import nn
from zqkernels import QLinear, _ext
from zqkernels.reference import int8_gemm_ref, quantize_per_token_ref

pytestmark = requires_gpu

C = _ext._C
DEV = "cuda"


def skip_reason(backend: str) -> Optional[str]:
    """Why `backend` cannot run here (a legitimate skip), or None."""
    if backend == "auto":
        return None
    if not C.has_backend(backend):
        return f"backend {backend} is not compiled into this build"
    if backend == "sm90" and torch.cuda.get_device_capability() != (9, 0):
        return "backend sm90 needs compute capability 9.0"
    return None


def config_params():
    if not (HAVE_CUDA and HAVE_KERNELS):
        return []
    return [
        pytest.param(b, i, id=f"{b}-{i}-{name}")
        for b in ("sm90", "sm80")
        if C.has_backend(b)
        for i, name in enumerate(C.int8_gemm_configs(b))
    ]


def poison_next_allocation(nbytes: int, byte: int) -> None:
    """Fill a block of `nbytes` with `byte` and free it: the caching allocator tends to hand the same
    block to the next allocation of that size on this stream, so output the kernel never writes shows
    up as NaN (0xFF in bf16/fp16/fp32) or -128 (0x80 in int8, a value quantization never produces)."""
    torch.empty(max(nbytes, 1), dtype=torch.uint8, device=DEV).fill_(byte)


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


# ------------------------------------------------------------------------------------------------
# int8_gemm: every backend and config against the float64 reference.


def run_gemm(a: dict, backend: str = "auto", config: int = -1) -> torch.Tensor:
    M, N = a["xq"].shape[0], a["wq"].shape[0]
    poison_next_allocation(M * N * 2, 0xFF)
    return zqkernels.int8_gemm(
        a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], a["out_dtype"], backend=backend, config=config
    )


M_SWEEP = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 96, 127, 128, 255]
NK_AWKWARD = [(8, 16), (24, 48), (264, 1040), (4104, 4112)]  # aligned, not powers of two


def sweep(backend: str, config: int, Ms, NKs) -> None:
    """Every (M, N, K); out dtype and bias cycle with M so each combination meets each shape."""
    for N, K in NKs:
        for i, M in enumerate(Ms):
            out_dtype, bias = OUT_DTYPES[i % 2], (i // 2) % 2 == 0
            a = make_gemm_inputs(M, N, K, device=DEV, out_dtype=out_dtype, bias=bias)
            out = run_gemm(a, backend, config)
            assert_gemm_close(
                out, int8_gemm_ref(**a), f"{backend}/{config} M={M} N={N} K={K} {out_dtype} bias={bias}"
            )


@pytest.mark.parametrize("backend,config", config_params())
def test_gemm_every_config(backend, config):
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    sweep(backend, config, M_SWEEP, NK_AWKWARD)


@pytest.mark.parametrize("backend", ["auto", "sm90", "sm80"])
def test_gemm_auto_config(backend):
    reason = skip_reason(backend)
    if reason:
        pytest.skip(reason)
    sweep(backend, -1, M_SWEEP + [1000, 2048], NK_AWKWARD)
    sweep(backend, -1, [4096, 8192], [(4104, 4112), (24, 48)])


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


def gaussian_qlinear(k=1024, n=512, dtype=torch.bfloat16) -> tuple[nn.Linear, QLinear]:
    lin = nn.Linear(k, n, device=DEV, dtype=dtype)
    with torch.no_grad():
        lin.weight.normal_(0, k**-0.5)
        lin.bias.normal_(0, 0.5)
    return lin, QLinear.from_linear(lin)


@pytest.mark.parametrize("M", [1, 16, 200])
def test_cuda_graph_capture_and_replay(M):
    _, q = gaussian_qlinear()
    static_x = torch.randn(M, 1024, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up outside the capture, as torch's docs advise
            for _ in range(2):
                q(static_x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_y = q(static_x)
        for _ in range(3):
            new_x = torch.randn_like(static_x)
            static_x.copy_(new_x)
            g.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_y, q(new_x))  # integer accumulation: bit-identical


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


def test_compile_inductor_cuda():
    torch._dynamo.reset()
    _, q = gaussian_qlinear()
    x = torch.randn(3, 7, 1024, device=DEV, dtype=torch.bfloat16)
    with torch.inference_mode():
        compiled = torch.compile(q, fullgraph=True)
        assert torch.equal(compiled(x), q(x))


def test_opcheck_cuda():
    x = torch.randn(12, 4096, device=DEV, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.zqkernels.quantize_per_token.default, (x,))
    a = make_gemm_inputs(9, 24, 48, device=DEV, bias=True)
    torch.library.opcheck(
        torch.ops.zqkernels.int8_gemm.default,
        (a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], torch.bfloat16, "auto", -1),
    )


# ------------------------------------------------------------------------------------------------
# QLinear on the GPU.


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_qlinear_gpu_accuracy_and_cpu_agreement(dtype):
    lin, q = gaussian_qlinear(dtype=dtype)
    x = torch.randn(4, 33, 1024, device=DEV, dtype=dtype)
    with torch.no_grad():
        y = q(x)
        ref = nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
        assert rel_err(y, ref) < 0.02
        # the same module on the CPU runs the reference: equal quantization, one-ulp GEMM
        y_cpu = q.to("cpu")(x.cpu())
    assert q.weight_scale.dtype == torch.float32
    assert_gemm_close(y.reshape(-1, 512).cpu(), y_cpu.reshape(-1, 512), "QLinear cuda vs cpu")


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


@pytest.mark.parametrize("n", [3, 50257])
def test_qlinear_unaligned_out_features_on_gpu(n):
    """A vocabulary-sized head with out_features % 8 != 0 runs on the kernels via padded rows."""
    torch.manual_seed(0)
    lin = nn.Linear(256, n, dtype=torch.bfloat16, device=DEV)
    q = QLinear.from_linear(lin)
    x = torch.randn(3, 7, 256, dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        y = q(x)
        y_cpu = q.cpu()(x.cpu())
    assert y.shape == (3, 7, n) and y.is_contiguous()
    torch.testing.assert_close(
        y.cpu().float(), y_cpu.float(), rtol=2**-7, atol=1e-3 * y_cpu.abs().max().item()
    )


def test_gpu_device_mix_errors():
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    a["wq"] = a["wq"].cpu()
    with pytest.raises(
        ValueError,
        match=r"int8_gemm: all tensors must be on one device, but xq is on cuda:0 "
        r"and wq is on cpu",
    ):
        run_gemm(a)
    _, q = gaussian_qlinear()
    with pytest.raises(ValueError, match=r"QLinear: x is on cpu but the layer's weights are on cuda:0"):
        q(torch.randn(2, 1024, dtype=torch.bfloat16))
    if torch.cuda.device_count() > 1:
        a = make_gemm_inputs(4, 8, 16, device=DEV)
        a["sw"] = a["sw"].to("cuda:1")
        with pytest.raises(ValueError, match=r"xq is on cuda:0 and sw is on cuda:1"):
            run_gemm(a)


def test_gpu_backend_and_config_errors():
    a = make_gemm_inputs(4, 8, 16, device=DEV)
    for backend in ("sm90", "sm80"):
        if C.has_backend(backend):
            n = len(C.int8_gemm_configs(backend))
            if skip_reason(backend) is None:
                with pytest.raises(
                    ValueError,
                    match=rf"int8_gemm: config {n} out of range for backend "
                    rf"'{backend}', which has {n} configs",
                ):
                    run_gemm(a, backend, n)
            else:
                with pytest.raises(RuntimeError, match=re.escape(f"int8_gemm: backend '{backend}' needs")):
                    run_gemm(a, backend)
        else:
            with pytest.raises(RuntimeError, match=rf"int8_gemm: backend '{backend}' is not compiled"):
                run_gemm(a, backend)
    with pytest.raises(ValueError, match=r"int8_gemm: backend must be one of"):
        run_gemm(a, "sm75")
