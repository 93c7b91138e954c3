"""int8_gemm on CPU (and the ops' shared registration / tracing / debug checks): reference dispatch, torch.library registration, torch.compile, argument checks.

CUDA-only checks (alignment, device mix, backend choice, a build without kernels) are exercised here
too, without a GPU: fake CUDA tensors (FakeTensorMode) run the ops' fake implementations, which
share every argument check with the real ones; a stub stands in for zqkernels._C where needed.
"""

from __future__ import annotations

import math
import re
import types

import pytest
import torch
import zqkernels
from conftest import OUT_DTYPES, make_gemm_inputs
from torch._subclasses.fake_tensor import FakeTensorMode
from zqkernels import _ext
from zqkernels.formats import GemmSpec
from zqkernels.ops import _common, gemm_checks, gemm_cuda, gemm_options, gemm_paths, layout_cache
from zqkernels.ops import gemm as gemm_mod
from zqkernels.ops import linear as lin_ops
from zqkernels.reference import int8_gemm_ref

QUANT_OP = torch.ops.zqkernels.quantize_per_token.default
GEMM_OP = torch.ops.zqkernels.gemm.default  # the one GEMM op; int8_gemm is spec "int8_rowwise"


def gemm(a: dict, **kw) -> torch.Tensor:
    return zqkernels.int8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], a["out_dtype"], **kw)


# ------------------------------------------------------------------------------------------------
# CPU tensors run the reference, bit for bit.


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("M,N,K", [(1, 8, 16), (5, 3, 7), (33, 24, 48)])
def test_int8_gemm_cpu_is_reference(out_dtype, bias, M, N, K):
    a = make_gemm_inputs(M, N, K, out_dtype=out_dtype, bias=bias)
    out = gemm(a)
    assert out.dtype == out_dtype and out.shape == (M, N)
    assert torch.equal(out, int8_gemm_ref(**a))


def test_quantize_then_gemm_approximates_float_matmul():
    x = torch.randn(32, 128)
    w = torch.randn(64, 128)
    xq, sx = zqkernels.quantize_per_token(x)
    wq, sw = zqkernels.quantize_weight(w)
    y = zqkernels.int8_gemm(xq, wq, sx, sw, out_dtype=torch.float16).double()
    ref = x.double() @ w.double().t()
    assert float((y - ref).norm() / ref.norm()) < 0.02


def test_empty_tensors_cpu():
    for M, N, K in ((0, 8, 16), (4, 0, 16), (4, 8, 0), (0, 0, 0)):
        a = make_gemm_inputs(M, N, K, bias=True)
        out = gemm(a)
        assert out.shape == (M, N) and out.dtype == torch.bfloat16
        assert torch.equal(out, a["bias"].expand(M, N))  # K == 0: y = bias
        a["bias"] = None
        assert torch.equal(gemm(a), torch.zeros(M, N, dtype=torch.bfloat16))
    for M, K in ((0, 16), (5, 0), (0, 0)):
        xq, sx = zqkernels.quantize_per_token(torch.randn(M, K, dtype=torch.bfloat16))
        assert xq.shape == (M, K) and xq.dtype == torch.int8
        assert sx.shape == (M,) and (sx == 0).all()


# ------------------------------------------------------------------------------------------------
# torch.library registration and torch.compile.


def test_op_schemas():
    assert str(QUANT_OP._schema) == "zqkernels::quantize_per_token(Tensor x, ScalarType dtype=1) -> (Tensor, Tensor)"
    assert str(GEMM_OP._schema) == (
        "zqkernels::gemm(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? sg, Tensor? bias, str spec, "
        "ScalarType out_dtype, str activation=\"none\", float? out_scale=None, int? max_scale=None) -> Tensor"
    )
    # the tuning knobs are not part of any public schema; the five old per-op schemas are gone
    assert not {"backend", "tile", "path", "accumulate"} & {a.name for a in GEMM_OP._schema.arguments}
    for old in ("int8_gemm", "fp8_gemm", "w4a8_gemm", "w4a8_fp_gemm", "w8a8_group_gemm"):
        assert not hasattr(torch.ops.zqkernels, old)


@pytest.mark.parametrize("out_dtype,bias", [(torch.bfloat16, True), (torch.float16, False)])
def test_opcheck_int8_gemm(out_dtype, bias):
    a = make_gemm_inputs(9, 24, 32, out_dtype=out_dtype, bias=bias)
    torch.library.opcheck(GEMM_OP, (a["xq"], a["wq"], a["sx"], a["sw"], None, a["bias"], "int8_rowwise", out_dtype))


def test_compile_fullgraph_cpu():
    torch._dynamo.reset()

    def f(x, wq, sw, bias):
        xq, sx = zqkernels.quantize_per_token(x)
        return zqkernels.int8_gemm(xq, wq, sx, sw, bias, torch.bfloat16)

    x = torch.randn(7, 64, dtype=torch.bfloat16)
    wq, sw = zqkernels.quantize_weight(torch.randn(24, 64))
    bias = torch.randn(24, dtype=torch.bfloat16)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, wq, sw, bias), f(x, wq, sw, bias))


def test_compile_tracing_runs_the_argument_checks():
    torch._dynamo.reset()

    def f(xq, wq, sx, sw):
        return zqkernels.int8_gemm(xq, wq, sx, sw)

    a = make_gemm_inputs(4, 8, 16)
    bad_wq = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(
        Exception, match=re.escape("int8_gemm: wq must be int8 [N, K] with K == xq.shape[1] (16)")
    ):
        torch.compile(f, backend="aot_eager", fullgraph=True)(a["xq"], bad_wq, a["sx"], a["sw"])


# ------------------------------------------------------------------------------------------------
# Bad input: each case names the op and the argument.


def _gemm_case(**changes):
    def build():
        a = make_gemm_inputs(4, 8, 16, bias=True)
        a.update({k: (v() if callable(v) else v) for k, v in changes.items()})
        return a

    return build


I8 = torch.int8
GEMM_ERRORS = [
    (
        "xq_dtype",
        _gemm_case(xq=lambda: torch.randn(4, 16)),
        TypeError,
        r"int8_gemm: xq must be int8 \[M, K\] \(from quantize_per_token\), got float32 \[4, 16\]",
    ),
    (
        "xq_rank",
        _gemm_case(xq=lambda: torch.zeros(2, 4, 16, dtype=I8)),
        ValueError,
        r"int8_gemm: xq must be 2-D int8 \[M, K\], got int8 \[2, 4, 16\]",
    ),
    (
        "wq_dtype",
        _gemm_case(wq=lambda: torch.zeros(8, 16, dtype=torch.float16)),
        TypeError,
        r"int8_gemm: wq must be int8 \[N, K\]",
    ),
    (
        "wq_rank",
        _gemm_case(wq=lambda: torch.zeros(128, dtype=I8)),
        ValueError,
        r"int8_gemm: wq must be 2-D int8 \[N, K\], got int8 \[128\]",
    ),
    (
        "k_mismatch",
        _gemm_case(wq=lambda: torch.zeros(8, 32, dtype=I8)),
        ValueError,
        re.escape("int8_gemm: wq must be int8 [N, K] with K == xq.shape[1] (16), got int8 [8, 32]"),
    ),
    (
        "sx_dtype",
        _gemm_case(sx=lambda: torch.ones(4, dtype=torch.bfloat16)),
        TypeError,
        r"int8_gemm: sx must be float32 \[M\] \(one scale per row of xq\) or \[1\] \(per-tensor\), got bfloat16 \[4\]",
    ),
    (
        "sx_shape_2d",
        _gemm_case(sx=lambda: torch.ones(2, 2)),
        ValueError,
        re.escape("int8_gemm: sx must be float32 [M] with M == 4 (one scale per row of xq) or hold one per-tensor value ([1]), got float32 [2, 2]"),
    ),
    (
        "sx_shape_len",
        _gemm_case(sx=lambda: torch.ones(5)),
        ValueError,
        re.escape("int8_gemm: sx must be float32 [M] with M == 4 (one scale per row of xq) or hold one per-tensor value ([1]), got float32 [5]"),
    ),
    (
        "sw_dtype",
        _gemm_case(sw=lambda: torch.ones(8, dtype=torch.float64)),
        TypeError,
        r"int8_gemm: sw must be float32 \[N\]",
    ),
    (
        "sw_shape",
        _gemm_case(sw=lambda: torch.ones(7)),
        ValueError,
        re.escape("int8_gemm: sw must be float32 [N] with N == 8 (one scale per row of wq) or hold one per-tensor value ([1]), got float32 [7]"),
    ),
    (
        "bias_dtype",
        _gemm_case(bias=lambda: torch.ones(8)),
        TypeError,
        r"int8_gemm: bias must have the output dtype \(bfloat16\), got float32 \[8\]",
    ),
    (
        "bias_shape",
        _gemm_case(bias=lambda: torch.ones(4, dtype=torch.bfloat16)),
        ValueError,
        re.escape("int8_gemm: bias must be [N] with N == wq.shape[0] (8), got bfloat16 [4]"),
    ),
    (
        "bias_2d",
        _gemm_case(bias=lambda: torch.ones(1, 8, dtype=torch.bfloat16)),
        ValueError,
        r"int8_gemm: bias must be \[N\]",
    ),
    (
        "out_dtype",
        _gemm_case(out_dtype=torch.float64, bias=None),
        TypeError,
        r"int8_gemm: out_dtype must be torch.bfloat16, torch.float16, torch.float32 or torch.int8 \(with "
        r"out_scale\), got torch.float64",
    ),
    (
        "xq_noncontig",
        _gemm_case(xq=lambda: torch.zeros(16, 4, dtype=I8).t()),
        ValueError,
        r"int8_gemm: xq must have unit stride along K \(xq.stride\(1\) == 1\), got int8 \[4, 16\] with strides \(1, 4\)",
    ),
    (
        "wq_noncontig",
        _gemm_case(wq=lambda: torch.zeros(8, 32, dtype=I8)[:, ::2]),
        ValueError,
        r"int8_gemm: wq must have unit stride along K",
    ),
    (
        "sx_noncontig",
        _gemm_case(sx=lambda: torch.ones(8)[::2]),
        ValueError,
        r"int8_gemm: sx must be contiguous",
    ),
    (
        "sw_noncontig",
        _gemm_case(sw=lambda: torch.ones(16)[::2]),
        ValueError,
        r"int8_gemm: sw must be contiguous",
    ),
    (
        "bias_noncontig",
        _gemm_case(bias=lambda: torch.ones(16, dtype=torch.bfloat16)[::2]),
        ValueError,
        r"int8_gemm: bias must be contiguous",
    ),
]


@pytest.mark.parametrize("build,exc,match", [c[1:] for c in GEMM_ERRORS], ids=[c[0] for c in GEMM_ERRORS])
def test_int8_gemm_bad_input(build, exc, match):
    with pytest.raises(exc, match=match):
        gemm(build())


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (
            dict(backend="sm100"),
            ValueError,
            r"int8_gemm: backend must be one of 'auto', 'sm90', 'sm80', got 'sm100'",
        ),
        (
            dict(backend=None),
            ValueError,
            r"int8_gemm: backend must be one of 'auto', 'sm90', 'sm80', got None",
        ),
        (
            dict(tile=3),
            ValueError,
            r"int8_gemm: tile must be None \(automatic\) or a tile name \(str\), got 3",
        ),
        (dict(backend="sm90"), RuntimeError, r"int8_gemm: backend 'sm90' is a CUDA kernel; CPU tensors run"),
        (dict(backend="sm80"), RuntimeError, r"int8_gemm: backend 'sm80' is a CUDA kernel"),
        (dict(tile="swap_64x16x256_pp"), RuntimeError, r"int8_gemm: tile selects a CUDA kernel; .* tile=None"),
    ],
)
def test_int8_gemm_bad_backend_or_config_on_cpu(kw, exc, match):
    with pytest.raises(exc, match=match):
        gemm(make_gemm_inputs(4, 8, 16), **kw)


# ------------------------------------------------------------------------------------------------
# Non-finite values: propagate by default, raise with the debug checks on.


def test_non_finite_propagates_by_default():
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    x[1, 4] = float("nan")
    xq, sx = zqkernels.quantize_per_token(x)
    assert torch.isnan(sx[1]) and torch.isfinite(sx[[0, 2]]).all()
    wq, sw = zqkernels.quantize_weight(torch.randn(8, 16))
    y = zqkernels.int8_gemm(xq, wq, sx, sw)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()  # the bad row is visible


def test_debug_checks():
    assert zqkernels.set_debug_checks(True) is False
    x = torch.randn(3, 16)
    x[2, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"quantize_per_token: x has 1 non-finite values \(NaN/Inf\) out of 48"
    ):
        zqkernels.quantize_per_token(x)
    a = make_gemm_inputs(4, 8, 16, bias=True)
    a["sw"][3] = float("nan")
    with pytest.raises(ValueError, match=r"int8_gemm: sw has 1 non-finite values"):
        gemm(a)
    a = make_gemm_inputs(4, 8, 16, bias=True)
    a["bias"][0] = float("inf")
    with pytest.raises(ValueError, match=r"int8_gemm: bias has 1 non-finite values"):
        gemm(a)
    assert zqkernels.set_debug_checks(False) is True
    gemm(a)  # off again: no check


# ------------------------------------------------------------------------------------------------
# CUDA-only checks, through the fake implementations (no GPU needed).


def _fake_gemm_inputs(M=4, N=8, K=16, devices=None):
    devices = devices or {}
    shapes = dict(
        xq=((M, K), I8),
        wq=((N, K), I8),
        sx=((M,), torch.float32),
        sw=((N,), torch.float32),
        bias=((N,), torch.bfloat16),
    )
    return {k: torch.empty(s, dtype=dt, device=devices.get(k, "cuda")) for k, (s, dt) in shapes.items()} | {
        "out_dtype": torch.bfloat16
    }


@pytest.mark.parametrize(
    "M,N,K,match",
    [
        (4, 8, 24, r"int8_gemm: K must be a multiple of 16 on CUDA \(TMA .*\), got K=24; pad .* to K=32"),
        (4, 8, 100, r"int8_gemm: K must be a multiple of 16 on CUDA .* got K=100; .* to K=112"),
        (
            4,
            12,
            16,
            r"int8_gemm: N must be a multiple of 8 on CUDA \(.*16-byte vectors.*\), got N=12; .* to N=16",
        ),
        (4, 8, 131_072, r"int8_gemm: K must be <= 131071 \(K \* 128 \* 128 must fit the int32 accumulator"),
    ],
)
def test_cuda_alignment_checks(M, N, K, match):
    with FakeTensorMode():
        a = _fake_gemm_inputs(M, N, K)
        with pytest.raises(ValueError, match=match):
            gemm(a)


@pytest.mark.parametrize("name", ["wq", "sx", "sw", "bias"])
def test_cuda_cpu_device_mix(name):
    with FakeTensorMode():
        a = _fake_gemm_inputs(devices={name: "cpu"})
        with pytest.raises(
            ValueError,
            match=rf"int8_gemm: all tensors must be on one device, but xq is on "
            rf"cuda:0 and {name} is on cpu",
        ):
            gemm(a)
        a = _fake_gemm_inputs(devices={"xq": "cpu"})
        with pytest.raises(ValueError, match=r"xq is on cpu and wq is on cuda:0"):
            gemm(a)


def test_cpu_allows_unaligned_shapes():
    a = make_gemm_inputs(3, 12, 24)  # N % 8 and K % 16 are CUDA-only limits
    assert torch.equal(gemm(a), int8_gemm_ref(**a))


def test_build_without_kernels_raises_on_cuda_tensors(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "import_error", None)
    with FakeTensorMode():
        with pytest.raises(
            RuntimeError,
            match=r"int8_gemm: this zqkernels build has no CUDA kernels \(installed "
            r"without a CUDA toolkit.*\); CUDA tensors cannot run",
        ):
            gemm(_fake_gemm_inputs())
        with pytest.raises(
            RuntimeError, match=r"quantize_per_token: this zqkernels build has no CUDA kernels"
        ):
            zqkernels.quantize_per_token(torch.empty(4, 16, device="cuda"))
    monkeypatch.setattr(_ext, "import_error", ImportError("libcudart.so.13: cannot open shared object file"))
    with FakeTensorMode():
        with pytest.raises(
            RuntimeError,
            match=r"int8_gemm: zqkernels._C is installed but failed to import "
            r"\(ImportError: libcudart.so.13",
        ):
            gemm(_fake_gemm_inputs())


@pytest.mark.parametrize("device", ["mps", "xpu"])
def test_unsupported_device_type(device):
    with pytest.raises(RuntimeError, match=rf"int8_gemm: tensors on {device} are not supported; pass CUDA"):
        gemm_mod.resolve_gemm_backend(torch.device(device))


def test_meta_tensors_infer_shapes():
    a = {
        k: (v.to("meta") if isinstance(v, torch.Tensor) else v)
        for k, v in make_gemm_inputs(5, 24, 16, bias=True).items()
    }
    out = gemm(a)
    assert out.device.type == "meta" and out.shape == (5, 24) and out.dtype == torch.bfloat16
    xq, sx = zqkernels.quantize_per_token(torch.empty(5, 7, device="meta"))
    assert xq.shape == (5, 7) and xq.dtype == I8 and sx.shape == (5,) and sx.dtype == torch.float32


class StubC:
    """The parts of zqkernels._C that backend and tile selection read."""

    def __init__(self, backends, tiles=("t0", "t1", "t2")):
        self.backends, self.tiles = sorted(backends), list(tiles)

    def gemm_kernels(self):
        return [(b, "int8_rowwise", t, code, True) for b in self.backends for t in self.tiles for code in (0, 1)]

    def compiled_archs(self):
        return ["sm_80", "sm_90", "sm_90a"]

    def gemm_select(self, arch, recipe, out_dtype, M, N, K):
        return self.tiles[0]

    def gemm_find(self, arch, recipe, tile, out_dtype):
        for i, k in enumerate(self.gemm_kernels()):
            if k[:4] == (arch, recipe, tile, out_dtype):
                return i
        return -1

    def gemm_workspace_size(self, kid, M, N, K, device):
        return 0


@pytest.fixture
def stub_gpu(monkeypatch):
    """Install a StubC and a fake compute capability for cuda:0; returns a setter."""

    def setup(compiled, cc):
        monkeypatch.setattr(_ext, "_C", StubC(compiled))
        monkeypatch.setattr(_common, "_capability", {0: cc})
        monkeypatch.setattr(gemm_cuda, "_backend_cache", {})
        monkeypatch.setattr(gemm_cuda, "_plans", {})

    return setup


@pytest.mark.parametrize(
    "cc,compiled,backend,expected",
    [
        ((9, 0), {"sm90", "sm80"}, "auto", "sm90"),
        ((9, 0), {"sm80"}, "auto", "sm80"),
        ((8, 0), {"sm90", "sm80"}, "auto", "sm80"),
        ((8, 6), {"sm80"}, "auto", "sm80"),
        ((9, 0), {"sm90", "sm80"}, "sm80", "sm80"),  # the Ampere kernels, explicitly, on an H100
        ((9, 0), {"sm90"}, "sm90", "sm90"),
    ],
)
def test_backend_selection(stub_gpu, cc, compiled, backend, expected):
    stub_gpu(compiled, cc)
    assert gemm_mod.resolve_gemm_backend(torch.device("cuda", 0), backend) == expected


@pytest.mark.parametrize(
    "cc,compiled,backend,exc,match",
    [
        (
            (8, 9),
            {"sm90"},
            "auto",
            RuntimeError,
            r"int8_gemm: no int8 GEMM kernel of this build runs on cuda:0 \(compute capability 8.9\): compiled "
            r"backends \['sm90'\]",
        ),
        (
            (7, 5),
            {"sm90", "sm80"},
            "auto",
            RuntimeError,
            r"int8_gemm: the zqkernels kernels need compute capability >= 8.0 \(Ampere or newer\), cuda:0 has 7.5",
        ),
        (
            (10, 0),
            {"sm90", "sm80"},
            "auto",
            RuntimeError,
            r"int8_gemm: no int8 GEMM kernel of this build runs on cuda:0 \(compute capability 10.0\)",
        ),
        (
            (8, 0),
            {"sm90", "sm80"},
            "sm90",
            RuntimeError,
            r"int8_gemm: backend 'sm90' needs compute capability 9.0 \(H100/H200\), cuda:0 has 8.0",
        ),
        (
            (9, 0),
            {"sm90"},
            "sm80",
            RuntimeError,
            r"int8_gemm: backend 'sm80' is not compiled into this build \(compiled: \['sm90'\]\)",
        ),
    ],
)
def test_backend_selection_errors(stub_gpu, cc, compiled, backend, exc, match):
    stub_gpu(compiled, cc)
    with pytest.raises(exc, match=match):
        gemm_mod.resolve_gemm_backend(torch.device("cuda", 0), backend)


def test_tile_selection(stub_gpu):
    stub_gpu({"sm90"}, (9, 0))
    dev = types.SimpleNamespace(device=torch.device("cuda", 0))  # _plan reads only xq.device
    assert gemm_cuda.plan(0, dev, "auto", None, torch.bfloat16, 4, 8, 16) == (0, 0)  # the table's choice
    assert gemm_cuda.plan(0, dev, "auto", "t1", torch.float16, 4, 8, 16) == (3, 0)
    with pytest.raises(ValueError, match=r"int8_gemm: tile 'nope' is not built for sm90_int8_rowwise with "
                       r"bfloat16 output; this build has \['t0', 't1', 't2'\]"):
        gemm_cuda.plan(0, dev, "auto", "nope", torch.bfloat16, 4, 8, 16)
    with pytest.raises(ValueError, match=r"tile 't0' is not built .* with float32 output"):
        gemm_cuda.plan(0, dev, "auto", "t0", torch.float32, 4, 8, 16)


def test_fake_cuda_path_with_kernels(stub_gpu):
    # With kernels present, the fake implementations check everything and infer the output.
    stub_gpu({"sm90", "sm80"}, (9, 0))
    with FakeTensorMode():
        a = _fake_gemm_inputs(M=3, N=24, K=48)
        out = gemm(a, backend="sm80", tile="t1")
        assert out.shape == (3, 24) and out.device.type == "cuda" and out.dtype == torch.bfloat16
        xq, sx = zqkernels.quantize_per_token(torch.empty(3, 5, dtype=torch.float16, device="cuda"))
        assert xq.shape == (3, 5) and sx.shape == (3,)


def test_pointer_alignment_check():
    buf = torch.zeros(64 + 16, dtype=I8)
    _common.check_aligned_ptr("int8_gemm", "xq", buf[16:])  # 16-byte offset of an aligned base: fine
    with pytest.raises(
        ValueError,
        match=r"int8_gemm: xq must start at a 16-byte aligned address .* "
        r"got data_ptr\(\) % 16 == 1 .*; pass xq.clone\(\)",
    ):
        _common.check_aligned_ptr("int8_gemm", "xq", buf[1:])



# ------------------------------------------------------------------------------------------------
# Epilogue options: activation after the bias, int8 output with a static per-tensor scale.

F = torch.nn.functional
ACTS = ("gelu", "gelu_tanh", "silu")
# torch's own implementations: the independent formula each activation of the reference is checked against.
TORCH_ACT = {
    "none": lambda v: v,
    "gelu": lambda v: F.gelu(v),
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    "silu": F.silu,
}


def _pre_activation(a: dict) -> torch.Tensor:
    """sx * sw * acc + bias in float64, written out here (no reference call)."""
    acc = a["xq"].double() @ a["wq"].double().t()
    y = acc * a["sx"].double().reshape(-1, 1) * a["sw"].double().reshape(1, -1)
    return y if a["bias"] is None else y + a["bias"].double()


@pytest.mark.parametrize("activation", ("none",) + ACTS)
@pytest.mark.parametrize("out_dtype", (torch.bfloat16, torch.float16, torch.float32))
@pytest.mark.parametrize("bias", [False, True])
def test_activation_reference_matches_torch(activation, out_dtype, bias):
    a = make_gemm_inputs(33, 24, 48, out_dtype=out_dtype, bias=bias)
    out = gemm(a, activation=activation)  # CPU: the reference itself
    assert out.dtype == out_dtype and out.shape == (33, 24)
    assert torch.equal(out, int8_gemm_ref(**a, activation=activation))
    # float64 reference vs torch's activation of the float64 pre-activation: rounding-level agreement
    # where torch's textbook forms do not cancel (|v| <= 5; below v ~ -7 torch's gelu / gelu_tanh
    # return 0 for results that bf16 and fp32 represent), the cancellation-free forms everywhere
    y64 = int8_gemm_ref(**dict(a, out_dtype=torch.float64), activation=activation)
    pre = _pre_activation(a)
    mid = pre.abs() <= 5
    torch.testing.assert_close(y64[mid], TORCH_ACT[activation](pre)[mid], rtol=1e-12, atol=1e-12)
    expected = pre if activation == "none" else _act_exact(activation, pre)
    torch.testing.assert_close(y64, expected, rtol=1e-12, atol=0)
    # rounded once to out_dtype: at most one output ulp from rounding the accurate value
    torch.testing.assert_close(out, expected.to(out_dtype), rtol=2**-7 if out_dtype == torch.bfloat16 else 2**-10, atol=0)


def test_activation_values_span_the_nonlinear_range():
    """The shared test inputs put pre-activations on both sides of 0 and well into the tails."""
    y = _pre_activation(make_gemm_inputs(64, 64, 1040, bias=True))
    assert float(y.min()) < -4 and float(y.max()) > 4 and float((y.abs() < 1).double().mean()) > 0.05


def _act_exact(activation: str, v: torch.Tensor) -> torch.Tensor:
    """float64 values accurate to ~1e-15 relative everywhere, tails included (the textbook forms
    cancel even in float64 below v ~ -6: 1 + erf(-5.66) is 1e-15)."""
    if activation == "gelu":
        return 0.5 * v * torch.special.erfc(-v / math.sqrt(2.0))
    if activation == "gelu_tanh":
        return v * torch.sigmoid(2 * math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3))
    return v * torch.sigmoid(v)


def _kernel_act_fp32(activation: str, v: torch.Tensor) -> torch.Tensor:
    """The kernels' fp32 formulas (epi:: in cutlass_gemm_common.cuh) emulated with torch float32 ops."""
    if activation == "gelu":
        return 0.5 * v * torch.special.erfc(v * -0.70710678118654752440)
    z = v if activation == "silu" else 2 * (0.79788456080286535588 * (v + 0.044715 * v * v * v))
    tail = z < -80  # mul_sigmoid: v * exp(z) where exp(-z) would overflow
    e = torch.exp(torch.where(tail, z, -z))
    return torch.where(tail, v * e, v / (1 + e))


@pytest.mark.parametrize("activation", ACTS)
def test_kernel_activation_formulas_in_fp32(activation):
    """The kernels' cancellation-free fp32 forms (cutlass_gemm_common.cuh, docs/SCALES.md), emulated
    with torch float32, are accurate to a few fp32 ulps (times the function's own conditioning in the
    far tail) at every v, including the negative tail where the textbook 1 + erf / 1 + tanh forms
    cancel in fp32, and the far tail where exp(-v) overflows (silu below v = -88.7, gelu_tanh below
    v = -10.1) while the results are still normal fp32 / bf16 numbers."""
    v = torch.cat([torch.linspace(-12, 12, 20001), torch.linspace(-100, -12, 8801), torch.tensor([-80.0, 80.0])])
    kern = _kernel_act_fp32(activation, v)
    if activation == "gelu":
        naive = 0.5 * v * (1 + torch.erf(v * 0.70710678118654752440))
    elif activation == "gelu_tanh":
        naive = 0.5 * v * (1 + torch.tanh(0.79788456080286535588 * (v + 0.044715 * v * v * v)))
    else:
        naive = v / (1 + torch.exp(-v))  # the first kernel's silu: -0 once exp(-v) overflows
    vd = v.double()
    exact = _act_exact(activation, vd)
    # the accurate float64 forms agree with torch's textbook ones where float64 does not cancel
    mid = vd.abs() <= 5
    torch.testing.assert_close(exact[mid], TORCH_ACT[activation](vd[mid]), rtol=1e-9, atol=0)
    nz = exact.abs() > 2**-126  # normal fp32 (and bf16) results
    rel = (kern.double() - exact).abs() / exact.abs()
    assert float(rel[nz].max()) < 3e-5, float(rel[nz].max())
    assert float(rel[nz & (vd.abs() <= 4)].max()) < 2e-6  # ~16 fp32 ulps: far below a bf16 / fp16 ulp
    # nothing representable in bf16 (smallest subnormal 2^-133) is flushed to 0
    assert not ((exact.abs() >= 2**-133) & (kern == 0)).any()
    naive_rel = (naive.double() - exact).abs() / exact.abs()
    assert float(naive_rel[nz].max()) > 1e-2  # what the rewrite (and the overflow guard) is for
    assert torch.isfinite(kern).all() and abs(float(kern[-2])) < 1e-30 and float(kern[-1]) == 80.0


@pytest.mark.parametrize("activation", ACTS)
def test_activation_reference_tails_against_mpmath(activation):
    """int8_gemm_ref's float64 activations against the textbook definitions evaluated with 150
    significant digits (no cancellation left), over the range where the result is a normal float32
    or bf16: the reference must not flush the tails to 0 (the first reference's 1 + erf / 1 + tanh
    did for v < -8.4 / -7.2, and disagreed with the kernels on 2-6% of bf16 outputs)."""
    mpmath = pytest.importorskip("mpmath")
    from zqkernels.reference.gemm import ACTIVATIONS

    v = torch.cat([torch.linspace(-100, 30, 1301, dtype=torch.float64), torch.tensor([-1e-30, 0.5, -0.5], dtype=torch.float64)])
    got = ACTIVATIONS[activation](v)
    with mpmath.workdps(150):
        c, a3 = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf(0.044715)
        for x, y in zip(v.tolist(), got.tolist()):
            x = mpmath.mpf(x)
            if activation == "gelu":
                e = x / 2 * (1 + mpmath.erf(x / mpmath.sqrt(2)))
            elif activation == "gelu_tanh":
                e = x / 2 * (1 + mpmath.tanh(c * (x + a3 * x**3)))
            else:
                e = x / (1 + mpmath.exp(-x))
            if abs(e) < mpmath.mpf(2) ** -140:
                continue  # 0 in every output type
            assert abs(y - e) <= 1e-12 * abs(e), (activation, float(x), y, float(e))


@pytest.mark.parametrize("activation", ("none",) + ACTS)
@pytest.mark.parametrize("bias", [False, True])
def test_int8_output_reference(activation, bias):
    a = make_gemm_inputs(40, 32, 64, out_dtype=torch.int8, bias=False)
    if bias:
        a["bias"] = torch.randn(32)  # float32: the bias of an int8 output
    y = TORCH_ACT[activation](_pre_activation(a))
    s = float(y.abs().max()) / 150  # the largest outputs saturate at +-127
    q = gemm(a, activation=activation, out_scale=s)
    assert q.dtype == torch.int8 and q.shape == (40, 32)
    assert torch.equal(q, int8_gemm_ref(**a, activation=activation, out_scale=s))
    s32 = float(torch.tensor(s, dtype=torch.float32))
    expected = torch.clamp(torch.round(y / s32), -127, 127).to(torch.int8)
    assert torch.equal(q, expected)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    assert (q.abs() == 127).any()  # saturation was exercised


def test_int8_output_reference_rounding_and_specials():
    # y = sx * acc with sw = 1: pick sx so that y / out_scale lands on halves, NaN and infinities.
    xq = torch.ones(6, 16, dtype=torch.int8)
    wq = torch.ones(16, 16, dtype=torch.int8)
    sx = torch.tensor([0.5, 1.5, -2.5, float("nan"), float("inf"), -float("inf")]) / 16
    sw = torch.ones(16)
    q = zqkernels.int8_gemm(xq, wq, sx, sw, out_dtype=torch.int8, out_scale=1.0)
    assert q[:, 0].tolist() == [0, 2, -2, 0, 127, -127]  # half to even; NaN -> 0; inf saturates
    q = zqkernels.int8_gemm(xq, wq, sx, sw, out_dtype=torch.int8, out_scale=1e-3)
    assert q[:3, 0].tolist() == [127, 127, -127]  # never -128


def test_int8_output_uses_the_float32_scale():
    a = make_gemm_inputs(8, 16, 32, out_dtype=torch.int8)
    s = 0.1  # not a float32: the kernels get float32(0.1)
    y = _pre_activation(a)
    expected = torch.clamp(torch.round(y / float(torch.tensor(s, dtype=torch.float32))), -127, 127).to(torch.int8)
    assert torch.equal(gemm(a, out_scale=s), expected)
    assert torch.equal(gemm(a, out_scale=1), gemm(a, out_scale=1.0))  # an int is a float here


def test_epilogue_k0_cpu():
    bias = torch.randn(8)
    for act in ("none",) + ACTS:
        a = make_gemm_inputs(4, 8, 0, out_dtype=torch.float32)
        a["bias"] = bias
        torch.testing.assert_close(gemm(a, activation=act), TORCH_ACT[act](bias.double()).float().expand(4, 8))
        a["out_dtype"] = torch.int8
        q = gemm(a, activation=act, out_scale=0.05)
        assert torch.equal(q, torch.round(TORCH_ACT[act](bias.double()) / float(torch.tensor(0.05))).clamp(-127, 127).to(torch.int8).expand(4, 8))


@pytest.mark.parametrize("activation,out_dtype,out_scale", [("gelu", torch.bfloat16, None), ("silu", torch.int8, 0.25), ("none", torch.int8, 2.0)])
def test_opcheck_int8_gemm_epilogue(activation, out_dtype, out_scale):
    a = make_gemm_inputs(9, 32, 32, out_dtype=out_dtype)
    a["bias"] = torch.randn(32).to(torch.float32 if out_dtype == torch.int8 else out_dtype)
    torch.library.opcheck(
        GEMM_OP, (a["xq"], a["wq"], a["sx"], a["sw"], None, a["bias"], "int8_rowwise", out_dtype, activation, out_scale)
    )


def test_compile_fullgraph_epilogue_cpu():
    torch._dynamo.reset()

    def f(x, wq, sw, bias):
        xq, sx = zqkernels.quantize_per_token(x)
        h = zqkernels.int8_gemm(xq, wq, sx, sw, bias, torch.int8, activation="gelu_tanh", out_scale=0.02)
        g = zqkernels.int8_gemm(xq, wq, sx, sw, None, torch.bfloat16, activation="silu")
        return h, g

    x = torch.randn(7, 64, dtype=torch.bfloat16)
    wq, sw = zqkernels.quantize_weight(torch.randn(32, 64))
    bias = torch.randn(32)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(x, wq, sw, bias), f(x, wq, sw, bias)):
        assert got.dtype == want.dtype and torch.equal(got, want)


EPILOGUE_ERRORS = [
    (
        "activation_name",
        dict(activation="relu"),
        ValueError,
        re.escape("int8_gemm: activation must be one of 'none', 'gelu', 'gelu_tanh', 'silu', got 'relu'"),
    ),
    (
        "activation_none_value",
        dict(activation=None),
        ValueError,
        re.escape("int8_gemm: activation must be one of 'none', 'gelu', 'gelu_tanh', 'silu', got None"),
    ),
    (
        "int8_without_scale",
        dict(out_dtype=torch.int8),
        ValueError,
        re.escape("int8_gemm: out_dtype=torch.int8 needs out_scale, the static per-tensor output scale (q = clamp(rint(y / out_scale), -127, 127)), got out_scale=None"),
    ),
    (
        "scale_without_int8",
        dict(out_scale=0.5),
        ValueError,
        re.escape("int8_gemm: out_scale is the static scale of an int8 output and needs out_dtype=torch.int8, got out_scale=0.5 with out_dtype=torch.bfloat16"),
    ),
    ("scale_zero", dict(out_dtype=torch.int8, out_scale=0.0), ValueError, r"int8_gemm: out_scale must be a finite float > 0 .*, got 0.0"),
    ("scale_negative", dict(out_dtype=torch.int8, out_scale=-1.0), ValueError, r"int8_gemm: out_scale must be a finite float > 0 .*, got -1.0"),
    ("scale_nan", dict(out_dtype=torch.int8, out_scale=float("nan")), ValueError, r"int8_gemm: out_scale must be a finite float > 0 .*, got nan"),
    ("scale_inf", dict(out_dtype=torch.int8, out_scale=float("inf")), ValueError, r"int8_gemm: out_scale must be a finite float > 0 .*, got inf"),
    ("scale_f32_subnormal", dict(out_dtype=torch.int8, out_scale=1e-40), ValueError, r"int8_gemm: out_scale must be .* normal number .*, got 1e-40"),
    ("scale_f32_overflow", dict(out_dtype=torch.int8, out_scale=1e39), ValueError, r"int8_gemm: out_scale must be .*, got 1e\+39"),
    (
        "scale_tensor",
        dict(out_dtype=torch.int8, out_scale=torch.tensor(0.5)),
        TypeError,
        r"int8_gemm: out_scale must be a Python float \(a static scale, passed to the kernel by value\), got a torch.Tensor; pass float\(out_scale\)",
    ),
    ("scale_str", dict(out_dtype=torch.int8, out_scale="0.5"), TypeError, r"int8_gemm: out_scale must be a Python float .*, got str '0.5'"),
    ("scale_bool", dict(out_dtype=torch.int8, out_scale=True), TypeError, r"int8_gemm: out_scale must be a Python float .*, got bool True"),
]


@pytest.mark.parametrize("kw,exc,match", [c[1:] for c in EPILOGUE_ERRORS], ids=[c[0] for c in EPILOGUE_ERRORS])
@pytest.mark.parametrize("path", ["eager", "compile"])
def test_int8_gemm_bad_epilogue_options(kw, exc, match, path):
    a = make_gemm_inputs(4, 16, 16)
    kw = dict(kw)
    out_dtype = kw.pop("out_dtype", torch.bfloat16)
    f = lambda: zqkernels.int8_gemm(a["xq"], a["wq"], a["sx"], a["sw"], None, out_dtype, **kw)  # noqa: E731
    if path == "compile":  # the message is raised while tracing (dynamo wraps it in its own error)
        torch._dynamo.reset()
        f = torch.compile(f, backend="aot_eager", fullgraph=True)
        exc = Exception
    with pytest.raises(exc, match=match):
        f()


def test_int8_output_bias_must_be_float32():
    a = make_gemm_inputs(4, 16, 16, out_dtype=torch.int8)
    a["bias"] = torch.ones(16, dtype=torch.bfloat16)
    with pytest.raises(
        TypeError,
        match=re.escape("int8_gemm: bias must be float32 for int8 output (it is added in fp32 before the quantization), got bfloat16 [16]; pass bias.float()"),
    ):
        gemm(a, out_scale=1.0)
    a["bias"] = torch.ones(8)
    with pytest.raises(ValueError, match=re.escape("int8_gemm: bias must be [N] with N == wq.shape[0] (16), got float32 [8]")):
        gemm(a, out_scale=1.0)


def test_int8_output_needs_n_multiple_of_16_on_cuda(stub_gpu):
    stub_gpu({"sm90"}, (9, 0))
    with FakeTensorMode():
        a = _fake_gemm_inputs(M=4, N=24, K=16)
        a["bias"] = None
        with pytest.raises(
            ValueError,
            match=r"int8_gemm: N must be a multiple of 16 on CUDA for int8 output \(.*\), got N=24; .* to N=32",
        ):
            gemm(dict(a, out_dtype=torch.int8), out_scale=1.0)
        gemm(a)  # 16-bit output: N % 8 is enough (the fake implementation accepts it)


def test_fake_cuda_epilogue(stub_gpu):
    stub_gpu({"sm90", "sm80"}, (9, 0))
    with FakeTensorMode():
        a = _fake_gemm_inputs(M=3, N=32, K=48)
        a["bias"] = a["bias"].float()
        out = gemm(dict(a, out_dtype=torch.int8), activation="gelu", out_scale=0.5)
        assert out.shape == (3, 32) and out.device.type == "cuda" and out.dtype == torch.int8
        a["bias"] = None
        out = gemm(a, activation="silu")
        assert out.dtype == torch.bfloat16


def test_tile_selection_int8_output(stub_gpu):
    stub_gpu({"sm90"}, (9, 0))  # the stub builds bf16 / fp16 kernels only
    dev = types.SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"int8_gemm: tile 't0' is not built for sm90_int8_rowwise with int8 output"):
        gemm_cuda.plan(0, dev, "auto", None, torch.int8, 4, 16, 16)


def test_gemm_spec_epilogue():
    assert GemmSpec(activation="gelu").recipe == "int8_rowwise"  # a runtime option of the same kernels
    assert GemmSpec(activation="silu", out_quant="int8_tensor").recipe == "int8_rowwise"
    with pytest.raises(ValueError, match=r"GemmSpec: out_quant must be one of \('none', 'int8_tensor'\), got 'int8_token'"):
        GemmSpec(out_quant="int8_token")
    with pytest.raises(ValueError, match=r"GemmSpec: activation must be one of"):
        GemmSpec(activation="relu")
    assert tuple(gemm_checks.ACT_CODE) == zqkernels.formats.ACTIVATIONS


# ------------------------------------------------------------------------------------------------
# The one GEMM op keyed by the spec: every recipe through zqkernels::gemm, the spec checks, the
# tuning knobs (gemm_options), the layer seam (ops.linear), the import graph of ops.

F8 = torch.float8_e4m3fn
OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
OPCHECK_NO_SCHEMA = OPCHECK_ALL[1:]
SPEC_WRAPPER = {
    "int8_rowwise": "int8_gemm",
    "fp8_rowwise": "fp8_gemm",
    "fp8_rowwise_fastacc": "fp8_gemm",
    "fp8_blockwise": "fp8_block_gemm",
    "w4a8_fp": "w4a8_fp_gemm",
    "w4a8_int": "w4a8_gemm",
    "int8_group_int": "w8a8_group_gemm",
    "int8_group_float": "w8a8_group_gemm",
}
# quantize_weight's arguments of each spec's weights
SPEC_WEIGHTS = {
    "int8_rowwise": dict(fmt="int8"),
    "fp8_rowwise": dict(fmt="fp8"),
    "fp8_rowwise_fastacc": dict(fmt="fp8"),
    "fp8_blockwise": dict(fmt="fp8", block_size=128),
    "w4a8_fp": dict(fmt="fp4", scale="m2", group_size=64),
    "w4a8_int": dict(fmt="int4", scale="int", group_size=64),
    "int8_group_int": dict(fmt="int8", scale="int", group_size=64),
    "int8_group_float": dict(fmt="int8", scale="float", group_size=64),
}


def _spec_case(spec, M=5, N=32, K=128, x_dtype=torch.bfloat16, seed=0):
    """(x [M, K], weights (wq, sw, sg or None), bias [N] bf16) for a spec, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(x_dtype)
    q = zqkernels.quantize_weight(torch.randn(N, K, generator=g), **SPEC_WEIGHTS[spec])
    wq, sw, sg = (*q, None) if len(q) == 2 else q
    return x, (wq, sw, sg), torch.randn(N, generator=g).to(torch.bfloat16)


def _quant_act(spec, x):
    """The activations of a spec: per token, or per token group (block-scaled FP8)."""
    group = lin_ops.ACT_GROUP.get(spec)
    if group is not None:
        return zqkernels.quantize_per_token_group(x, group)
    return zqkernels.quantize_per_token(x, lin_ops.activation_dtype(spec))


def _wrapper_call(spec, xq, wq, sx, sw, sg, bias, out_dtype, **kw):
    fn = getattr(zqkernels, SPEC_WRAPPER[spec])
    if sg is None:
        if spec.startswith("fp8_row"):
            kw["accumulate"] = "fast" if spec.endswith("fastacc") else "accurate"
        return fn(xq, wq, sx, sw, bias, out_dtype, **kw)
    return fn(xq, wq, sx, sw, sg, bias, out_dtype, **kw)


def test_specs_are_the_gemm_spec_recipes():
    assert set(gemm_mod.GEMM_SPECS) == set(SPEC_WRAPPER)
    specs = {
        GemmSpec(): "int8_rowwise",
        GemmSpec(act="fp8_e4m3", weight="fp8_e4m3"): "fp8_rowwise",
        GemmSpec(act="fp8_e4m3", weight="fp8_e4m3", act_scale="token_group", weight_scale="block",
                 group_size=128): "fp8_blockwise",
        GemmSpec(act="fp8_e4m3", weight="fp4_e2m1", weight_scale="group", group_size=64, scale_kind="pow2"): "w4a8_fp",
        GemmSpec(act="int8", weight="int4", weight_scale="group", group_size=64, scale_kind="int"): "w4a8_int",
        GemmSpec(act="int8", weight="int8", weight_scale="group", group_size=64, scale_kind="int"): "int8_group_int",
        GemmSpec(act="int8", weight="int8", weight_scale="group", group_size=64, scale_kind="float"): "int8_group_float",
    }
    for spec, key in specs.items():
        assert spec.recipe == key and key in gemm_mod.GEMM_SPECS


@pytest.mark.parametrize("spec", sorted(SPEC_WRAPPER))
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_every_recipe(spec, bias):
    x, (wq, sw, sg), b = _spec_case(spec)
    xq, sx = _quant_act(spec, x)
    # FP8 inputs: torch's test_schema compares the inputs before and after with ops that have no
    # Float8_e4m3fn CPU kernel ("mul_cpu_reduced_float"); the other three checks run (all four on CUDA).
    utils = OPCHECK_NO_SCHEMA if xq.dtype == F8 else OPCHECK_ALL
    torch.library.opcheck(GEMM_OP, (xq, wq, sx, sw, sg, b if bias else None, spec, torch.bfloat16), test_utils=utils)
    torch.library.opcheck(GEMM_OP, (xq, wq, sx, sw, sg, None, spec, torch.float16, "silu"), test_utils=utils)
    if spec in ("w4a8_int", "int8_group_int"):
        torch.library.opcheck(GEMM_OP, (xq, wq, sx, sw, sg, None, spec, torch.float32, "none", None, 64))


@pytest.mark.parametrize("spec", sorted(SPEC_WRAPPER))
def test_op_run_gemm_and_wrapper_agree(spec):
    """The custom op, run_gemm and the named wrapper: one implementation, bit for bit (CPU)."""
    x, (wq, sw, sg), bias = _spec_case(spec)
    xq, sx = _quant_act(spec, x)
    want = _wrapper_call(spec, xq, wq, sx, sw, sg, bias, torch.bfloat16, activation="gelu")
    assert want.shape == (5, 32) and want.dtype == torch.bfloat16
    assert torch.equal(GEMM_OP(xq, wq, sx, sw, sg, bias, spec, torch.bfloat16, "gelu"), want)
    assert torch.equal(zqkernels.ops.run_gemm(spec, xq, wq, sx, sw, sg, bias, activation="gelu"), want)
    with FakeTensorMode() as mode:  # the fake implementation: shape and dtype
        f = [mode.from_tensor(t) if t is not None else None for t in (xq, wq, sx, sw, sg, bias)]
        out = zqkernels.ops.run_gemm(spec, *f, torch.bfloat16)
        assert out.shape == (5, 32) and out.dtype == torch.bfloat16


def _spec_error_cases():
    x, (wq, sw, _), bias = _spec_case("int8_rowwise")
    xq, sx = zqkernels.quantize_per_token(x)
    _, (wg, swg, sgi), _ = _spec_case("int8_group_int")
    _, (_, _, sgf), _ = _spec_case("int8_group_float")
    return [
        ("unknown", (xq, wq, sx, sw, None, None, "int8_colwise", torch.bfloat16), {}, ValueError,
         r"gemm: spec must be one of \('int8_rowwise', .*\), got 'int8_colwise'"),
        ("sg_rowwise", (xq, wq, sx, sw, sgi, None, "int8_rowwise", torch.bfloat16), {}, ValueError,
         r"int8_gemm: sg must be None for spec 'int8_rowwise' \(no group scales\), got int32 \[32, 2\]"),
        ("sg_missing", (xq, wg, sx, swg, None, None, "int8_group_int", torch.bfloat16), {}, TypeError,
         r"w8a8_group_gemm: sg \(the group scales \[N, K // group_size\]\) is required for spec 'int8_group_int'"),
        ("out_scale_fp", (xq, wg, sx, swg, sgi, None, "int8_group_int", torch.bfloat16), {"out_scale": 0.5},
         ValueError, r"w8a8_group_gemm: out_scale applies to int8 output of spec 'int8_rowwise' only"),
        ("max_scale_rowwise", (xq, wq, sx, sw, None, None, "int8_rowwise", torch.bfloat16), {"max_scale": 64},
         ValueError, r"int8_gemm: max_scale applies to integer group scales \(specs 'w4a8_int', 'int8_group_int'\)"),
        ("group_kind", (xq, wg, sx, swg, sgf, None, "int8_group_int", torch.bfloat16), {}, TypeError,
         r"w8a8_group_gemm: spec 'int8_group_int' takes int32 sg, got float32 \[32, 2\]; spec 'int8_group_float'"),
        ("group_kind_float", (xq, wg, sx, swg, sgi, None, "int8_group_float", torch.bfloat16), {}, TypeError,
         r"w8a8_group_gemm: spec 'int8_group_float' takes float32 sg, got int32"),
    ]


@pytest.mark.parametrize("case", _spec_error_cases(), ids=lambda case: case[0])
@pytest.mark.parametrize("path", ["run_gemm", "op", "fake"])
def test_spec_errors(case, path):
    _, args, kw, exc, match = case
    with pytest.raises(exc, match=match):
        if path == "run_gemm":
            zqkernels.ops.run_gemm(args[6], *args[:6], args[7], **kw)
        elif path == "op":
            GEMM_OP(*args, "none", kw.get("out_scale"), kw.get("max_scale"))
        else:
            with FakeTensorMode() as mode:
                t = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                GEMM_OP(*t, "none", kw.get("out_scale"), kw.get("max_scale"))


def test_gemm_options_context():
    cur = zqkernels.ops.current_gemm_options
    assert cur() == {"backend": "auto", "tile": None, "path": "auto"}
    with gemm_options(backend="sm80", tile="t1") as o:
        assert cur() == {"backend": "sm80", "tile": "t1", "path": "auto"}
        with gemm_options(path="stream"):  # a nested setting replaces every knob
            assert cur() == {"backend": "auto", "tile": None, "path": "stream"}
        assert cur()["backend"] == "sm80"
        with pytest.raises(KeyError):
            with o:  # the same object entered twice: restored in order
                assert cur()["tile"] == "t1"
                raise KeyError("x")
        assert cur()["tile"] == "t1"
    assert cur() == {"backend": "auto", "tile": None, "path": "auto"} and gemm_mod._active == 0


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(backend="sm100"), r"gemm_options: backend must be one of 'auto', 'sm90', 'sm80', got 'sm100'"),
        (dict(tile=3), r"gemm_options: tile must be None \(automatic\) or a tile name \(str\), got 3"),
        (dict(path="fast"), r"gemm_options: path must be one of \('auto', 'stream', 'mixed', 'convert'\), got 'fast'"),
    ],
)
def test_gemm_options_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        gemm_options(**kw)


def test_gemm_options_reach_every_path():
    """The setting is read by the eager paths and by the op's implementation; a wrapper's own knob
    argument overrides it. On the CPU a CUDA backend or tile raises, which shows where each lands."""
    a = make_gemm_inputs(4, 8, 16)
    args = (a["xq"], a["wq"], a["sx"], a["sw"])
    cpu = r"int8_gemm: backend 'sm90' is a CUDA kernel; CPU tensors run the pure-torch reference"
    with gemm_options(backend="sm90"):
        with pytest.raises(RuntimeError, match=cpu):
            zqkernels.int8_gemm(*args)  # eager
        with pytest.raises(RuntimeError, match=cpu):
            GEMM_OP(*args, None, None, "int8_rowwise", torch.bfloat16)  # the op's implementation
        with pytest.raises(RuntimeError, match=cpu.replace("int8_gemm", "fp8_gemm")):
            x8, s8 = zqkernels.quantize_per_token(torch.randn(4, 16), torch.float8_e4m3fn)
            zqkernels.fp8_gemm(x8, zqkernels.quantize_weight(torch.randn(8, 16), fmt="fp8")[0], s8, a["sw"])
        with pytest.raises(RuntimeError, match=r"int8_gemm: backend 'sm80' is a CUDA kernel"):
            zqkernels.int8_gemm(*args, backend="sm80")  # the argument wins
        with pytest.raises(RuntimeError, match=cpu):
            zqkernels.int8_gemm(*args, backend="auto", tile="x")  # an argument at its default: the setting's
    with gemm_options(tile="x"):
        with pytest.raises(RuntimeError, match=r"int8_gemm: tile selects a CUDA kernel; .* got 'x'"):
            zqkernels.int8_gemm(*args)
    assert torch.equal(zqkernels.int8_gemm(*args), int8_gemm_ref(*args))  # left: the defaults again
    # path: a CUDA choice; the CPU reference ignores it, a bad value still raises with the op's name
    x, (wq, sw, sg), _ = _spec_case("w4a8_int")
    xq, sx = zqkernels.quantize_per_token(x)
    with gemm_options(path="stream"):
        assert torch.equal(zqkernels.w4a8_gemm(xq, wq, sx, sw, sg), zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, path="convert"))
    with pytest.raises(ValueError, match=r"w4a8_gemm: path must be one of \('auto', 'stream', 'mixed', 'convert'\), got 'x'"):
        zqkernels.w4a8_gemm(xq, wq, sx, sw, sg, path="x")


def test_gemm_options_through_the_fake_implementation(stub_gpu):
    stub_gpu({"sm90", "sm80"}, (8, 0))
    with FakeTensorMode():
        a = _fake_gemm_inputs(M=3, N=24, K=48)
        assert gemm(a).shape == (3, 24)
        with gemm_options(backend="sm90"):
            with pytest.raises(RuntimeError, match=r"int8_gemm: backend 'sm90' needs compute capability 9.0"):
                gemm(a)
            assert gemm(a, backend="sm80").shape == (3, 24)  # the argument wins
        with pytest.raises(RuntimeError, match=r"int8_gemm: backend 'sm90' needs compute capability 9.0"):
            gemm(a, backend="sm90")  # an argument goes through the setting into the fake implementation
        with pytest.raises(ValueError, match=r"int8_gemm: backend must be one of 'auto', 'sm90', 'sm80', got 'x'"):
            gemm(a, backend="x")
    assert gemm_mod._active == 0


def test_knob_arguments_under_compile_raise():
    torch._dynamo.reset()
    a = make_gemm_inputs(4, 8, 16)

    def f(xq, wq, sx, sw):
        return zqkernels.int8_gemm(xq, wq, sx, sw, tile="t0")

    with pytest.raises(Exception, match=r"int8_gemm: backend= / tile= / path= are not traced by torch.compile"):
        torch.compile(f, backend="aot_eager", fullgraph=True)(a["xq"], a["wq"], a["sx"], a["sw"])


def test_compiled_call_reads_the_setting_when_it_runs():
    torch._dynamo.reset()
    a = make_gemm_inputs(4, 8, 16)
    args = (a["xq"], a["wq"], a["sx"], a["sw"])
    compiled = torch.compile(lambda *t: zqkernels.int8_gemm(*t), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(*args), int8_gemm_ref(*args))
    with gemm_options(backend="sm90"):
        with pytest.raises(Exception, match=r"int8_gemm: backend 'sm90' is a CUDA kernel"):
            compiled(*args)


# --- the layer seam: ops.linear ----------------------------------------------------------------


@pytest.mark.parametrize("spec", sorted(SPEC_WRAPPER))
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trusted", [False, True])
def test_quantized_linear_is_quantize_then_gemm(spec, x_dtype, trusted):
    x, (wq, sw, sg), bias = _spec_case(spec, M=7, x_dtype=x_dtype)
    bias = bias.to(x_dtype)
    xq, sx = _quant_act(spec, x)
    want = _wrapper_call(spec, xq, wq, sx, sw, sg, bias, x_dtype)
    max_scale = 2**10 if spec in ("w4a8_int", "int8_group_int") and trusted else None
    if max_scale is not None:
        max_scale = int(sg.max())
        want = _wrapper_call(spec, xq, wq, sx, sw, sg, bias, x_dtype, max_scale=max_scale)
    got = zqkernels.ops.quantized_linear(spec, x, wq, sw, sg, bias, max_scale, trusted=trusted)
    assert got.dtype == x_dtype and torch.equal(got, want)
    got = zqkernels.ops.gemm_quantized(spec, xq, wq, sx, sw, sg, bias, x_dtype, max_scale, trusted=trusted)
    assert torch.equal(got, want)


@pytest.mark.parametrize("spec", sorted(SPEC_WRAPPER))
def test_quantized_linear_float32(spec):
    """float32 activations give a float32 output for every spec; the FP8 recipes (bf16 / fp16 kernels)
    widen their bf16 output and add the bias in fp32."""
    x, (wq, sw, sg), bias = _spec_case(spec, x_dtype=torch.float32)
    bias = bias.float()
    y = zqkernels.ops.quantized_linear(spec, x, wq, sw, sg, bias)
    assert y.dtype == torch.float32 and y.shape == (5, 32)
    xq, sx = _quant_act(spec, x)
    if spec.startswith("fp8"):
        want = _wrapper_call(spec, xq, wq, sx, sw, None, None, torch.bfloat16).float() + bias
    else:
        want = _wrapper_call(spec, xq, wq, sx, sw, sg, bias, torch.float32)
    assert torch.equal(y, want)
    ref = x.double() @ zqkernels.dequantize(wq, sw, sg, fmt=SPEC_WEIGHTS[spec]["fmt"]).double().t() + bias.double()
    assert float((y.double() - ref).norm() / ref.norm()) < 0.2


def test_activation_dtype():
    assert lin_ops.activation_dtype("int8_rowwise") == torch.int8
    assert lin_ops.activation_dtype("w4a8_int") == torch.int8 and lin_ops.activation_dtype("int8_group_float") == torch.int8
    for spec in ("fp8_rowwise", "fp8_rowwise_fastacc", "w4a8_fp"):
        assert lin_ops.activation_dtype(spec) == F8
    with pytest.raises(ValueError, match=r"activation_dtype: spec must be one of .*got 'w8a8'"):
        lin_ops.activation_dtype("w8a8")


def test_seam_and_old_names_importable():
    from zqkernels.ops import fused
    from zqkernels.ops.group import W8A8_GROUP_MAX_GROUP, w8a8_group_gemm
    from zqkernels.ops.quantize import _cuda_ready, _quantize_cuda  # noqa: F401
    from zqkernels.ops.w4a8 import fp4_to_fp8, w4a8_fp_gemm, w4a8_gemm  # noqa: F401

    assert w8a8_group_gemm is zqkernels.w8a8_group_gemm and W8A8_GROUP_MAX_GROUP == 131071
    assert callable(fused.row_quant) and not hasattr(fused, "_call")
    for name in ("quantized_linear", "gemm_quantized", "activation_dtype", "gemm_options", "run_gemm"):
        assert name in zqkernels.ops.__all__ and callable(getattr(zqkernels.ops, name))


def test_ops_import_graph_has_no_cycle():
    """Imports go down only: no cycle among the ops modules, function-level (deferred) imports included."""
    import ast
    import pathlib

    root = pathlib.Path(zqkernels.ops.__file__).parent
    mods = {p.stem for p in root.glob("*.py")}
    graph = {}
    for m in mods:
        deps = set()
        for node in ast.walk(ast.parse((root / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names if a.name in mods)
        graph[m] = deps & mods - {m}
    state: dict = {}

    def visit(m, stack):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(stack + [m])}"
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, stack + [m])
        state[m] = "done"

    for m in sorted(mods):
        visit(m, [])
    assert "_group_cuda" not in mods  # merged into gemm_cuda (the w4a8 <-> _group_cuda cycle)


@pytest.mark.parametrize(
    "M,pow2,out_dtype,path",
    [
        (1, True, torch.bfloat16, "stream"),
        (32, False, torch.float16, "stream"),
        (33, True, torch.bfloat16, "mixed"),
        (256, True, torch.bfloat16, "mixed"),
        (257, True, torch.bfloat16, "convert"),
        (64, False, torch.bfloat16, "mixed"),
        (65, False, torch.bfloat16, "convert"),
        (4096, False, torch.float32, "mixed"),  # no convert path for float32 output
    ],
)
def test_w4a8_fp_auto_path(M, pow2, out_dtype, path):
    """w4a8_fp_gemm's path="auto" by M and scale kind (the H100 measurements in gemm_paths' comments)."""
    assert gemm_paths.w4a8_fp_path(M, pow2, out_dtype) == path


@pytest.mark.parametrize(
    "M,N,K,pow2,out_dtype,path",
    [
        (64, 4096, 14336, True, torch.bfloat16, "convert"),  # 8B down: narrow and small
        (64, 4096, 4096, True, torch.bfloat16, "convert"),  # 8B o
        (33, 6144, 4096, True, torch.float16, "convert"),  # 8B qkv
        (64, 8192, 28672, True, torch.bfloat16, "mixed"),  # 70B down: 235 M weights
        (64, 28672, 4096, True, torch.bfloat16, "mixed"),  # 8B gate_up: wide (224 tiles >= 132 SMs)
        (65, 4096, 4096, True, torch.bfloat16, "mixed"),  # above the measured M
        (64, 4096, 4096, False, torch.bfloat16, "mixed"),  # float scales: not timed converted
        (64, 4096, 4096, True, torch.float32, "mixed"),  # no convert path for float32 output
        (32, 4096, 4096, True, torch.bfloat16, "stream"),
    ],
)
def test_w4a8_fp_auto_path_narrow(M, N, K, pow2, out_dtype, path):
    """Narrow, small matrices at 32 < M <= 64 take the convert path (the mixed grid leaves SMs idle)."""
    assert gemm_paths.w4a8_fp_path(M, pow2, out_dtype, N, K, sm_count=132) == path


def test_cached_layout_follows_identity_version_and_inference(monkeypatch):
    """ops/layout_cache.cached_layout (a scale tensor's kernel layout, derived once): a hit needs the same
    tensor (not a recycled id) at the same version; an in-place update rebuilds; inference tensors
    (no version counter) are rebuilt every call and never cached."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(layout_cache, "_derived", {})
    builds = []

    def build(t):
        builds.append(1)
        return t.t().contiguous()

    sg = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    a = layout_cache.cached_layout("t", sg, build)
    assert layout_cache.cached_layout("t", sg, build) is a and len(builds) == 1
    sg.add_(1)  # a new version: rebuilt, with the new values
    b = layout_cache.cached_layout("t", sg, build)
    assert len(builds) == 2 and torch.equal(b, sg.t())
    other = torch.zeros(2, 3, dtype=torch.int32)
    layout_cache._derived["t"][id(other)] = layout_cache._derived["t"][id(sg)]  # an entry under other's id
    assert torch.equal(layout_cache.cached_layout("t", other, build), other.t()) and len(builds) == 3
    with torch.inference_mode():
        inf = torch.ones(2, 3, dtype=torch.int32)
    for _ in range(2):
        assert torch.equal(layout_cache.cached_layout("t", inf, build), inf.t())
    assert len(builds) == 5 and id(inf) not in layout_cache._derived["t"]
