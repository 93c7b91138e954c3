"""int8_gemm on CPU (and the ops' shared registration / tracing / debug checks): reference dispatch, torch.library registration, torch.compile, argument checks.

CUDA-only checks (alignment, device mix, backend choice, a build without kernels) are exercised here
too, without a GPU: fake CUDA tensors (FakeTensorMode) run the ops' fake implementations, which
share every argument check with the real ones; a stub stands in for zqkernels._C where needed.
"""

from __future__ import annotations

import re
import types

import pytest
import torch
import zqkernels
from conftest import OUT_DTYPES, make_gemm_inputs
from torch._subclasses.fake_tensor import FakeTensorMode
from zqkernels import _ext
from zqkernels.ops import _common
from zqkernels.ops import gemm as gemm_mod
from zqkernels.reference import int8_gemm_ref

QUANT_OP = torch.ops.zqkernels.quantize_per_token.default
GEMM_OP = torch.ops.zqkernels.int8_gemm.default


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
    assert str(QUANT_OP._schema) == "zqkernels::quantize_per_token(Tensor x) -> (Tensor, Tensor)"
    assert str(GEMM_OP._schema) == (
        "zqkernels::int8_gemm(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? bias, "
        "ScalarType out_dtype, str backend, str tile) -> Tensor"
    )


@pytest.mark.parametrize("out_dtype,bias", [(torch.bfloat16, True), (torch.float16, False)])
def test_opcheck_int8_gemm(out_dtype, bias):
    a = make_gemm_inputs(9, 24, 32, out_dtype=out_dtype, bias=bias)
    torch.library.opcheck(GEMM_OP, (a["xq"], a["wq"], a["sx"], a["sw"], a["bias"], out_dtype, "auto", ""))


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
        r"int8_gemm: out_dtype must be torch.bfloat16, torch.float16 or torch.float32, got torch.float64",
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
        monkeypatch.setattr(gemm_mod, "_backend_cache", {})
        monkeypatch.setattr(gemm_mod, "_plans", {})

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
    assert gemm_mod._plan(0, dev, "auto", None, torch.bfloat16, 4, 8, 16) == (0, 0)  # the table's choice
    assert gemm_mod._plan(0, dev, "auto", "t1", torch.float16, 4, 8, 16) == (3, 0)
    with pytest.raises(ValueError, match=r"int8_gemm: tile 'nope' is not built for sm90_int8_rowwise with "
                       r"bfloat16 output; this build has \['t0', 't1', 't2'\]"):
        gemm_mod._plan(0, dev, "auto", "nope", torch.bfloat16, 4, 8, 16)
    with pytest.raises(ValueError, match=r"tile 't0' is not built .* with float32 output"):
        gemm_mod._plan(0, dev, "auto", "t0", torch.float32, 4, 8, 16)


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

