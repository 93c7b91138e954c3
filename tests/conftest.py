"""Shared helpers for the zqkernels tests.

CPU tests run everywhere. GPU tests carry ``requires_gpu`` (or ``requires_sm90(what)``, or call
``gpu_skip_reason``): they skip only where torch sees no CUDA GPU, this build has no CUDA kernels
(tests/test_cli.py checks that info() says why) or the GPU / build cannot run the kernels tested,
and the reason says which of these it is. Errors inside a GPU test (OOM, launch failure) are
failures, never skips.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import pytest
import torch
import zqkernels
from zqkernels import _ext

HAVE_CUDA = torch.cuda.is_available()
HAVE_KERNELS = _ext._C is not None


def gpu_skip_reason(
    capability: Optional[tuple[int, int]] = None, backend: Optional[str] = None, what: str = ""
) -> Optional[str]:
    """Why a GPU test cannot run here (None: it can), checked in this order: "no CUDA GPU", "this build
    has no CUDA kernels", then, when asked, "needs compute capability 9.0 (found 8.0)" (`capability`)
    and "this build has no sm90 kernels" (`backend`, a key of _C.gemm_kernels()). `what` (e.g. "FP8
    kernels") prefixes the last two."""
    if not torch.cuda.is_available():
        built = " (this torch is built without CUDA)" if torch.version.cuda is None else ""
        return f"no CUDA GPU{built}"
    if _ext._C is None:
        return "this build has no CUDA kernels (zqkernels.info()['note'] says why)"
    pre = f"{what}: " if what else ""
    if capability is not None:
        found = torch.cuda.get_device_capability()
        if tuple(found) != tuple(capability):
            return f"{pre}needs compute capability {capability[0]}.{capability[1]} (found {found[0]}.{found[1]})"
    if backend is not None:
        built = sorted({k[0] for k in _ext._C.gemm_kernels()})
        if backend not in built:
            return f"{pre}this build has no {backend} kernels (it has {', '.join(built) or 'none'})"
    return None


def requires(capability: Optional[tuple[int, int]] = None, backend: Optional[str] = None, what: str = ""):
    """A skipif mark with ``gpu_skip_reason``'s reason."""
    why = gpu_skip_reason(capability, backend, what)
    return pytest.mark.skipif(why is not None, reason=why or "")


def requires_sm90(what: str):
    """Hopper kernels (FP8, W4A8, group-scaled GEMMs): compute capability 9.0 and an sm_90a build."""
    return requires((9, 0), "sm90", what)


requires_gpu = requires()

OUT_DTYPES = (torch.bfloat16, torch.float16)
X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# One output ulp, relative (2^-(mantissa bits)): the kernel's fp32 epilogue and the float64 reference
# round the same real number once each, so they can land on adjacent representable values.
# fp32 output: the fp32 epilogue rounds a few times (int32 -> fp32 above 2^24, the multiply, the
# fma), each within 2^-24 relative: 2^-20 bounds them with room.
GEMM_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 2**-20}
DEV = "cuda"


def plant_llama_outliers(model) -> None:
    """Activation outliers in an HF LLaMA (tests of smoothing): a few channels 40x larger at every
    norm output (q/k/v and gate/up inputs), at down_proj's input (up_proj rows) and at o_proj's
    input (v_proj rows). Needs hidden_size > 40 and intermediate_size > 90."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[[3, 17]] *= 40
            layer.post_attention_layernorm.weight[[5, 40]] *= 40
            layer.mlp.up_proj.weight[[7, 90]] *= 40
            layer.self_attn.v_proj.weight[[2, 20]] *= 40


def poison_next_allocation(nbytes: int, byte: int) -> None:
    """Fill a block of `nbytes` with `byte` and free it: the caching allocator tends to hand the same
    block to the next allocation of that size on this stream, so output the kernel never writes shows
    up as NaN (0xFF in bf16/fp16/fp32) or -128 (0x80 in int8, a value quantization never produces)."""
    torch.empty(max(nbytes, 1), dtype=torch.uint8, device=DEV).fill_(byte)


@contextlib.contextmanager
def debug_setting(name: str, value):
    """Set one of the extension's launch-time switches (``_C._debug_set_<name>``, which returns the value
    it replaces) for the block, and put the previous value back after it, also when the block fails."""
    setter = getattr(_ext._C, f"_debug_set_{name}")
    previous = setter(value)
    try:
        yield
    finally:
        setter(previous)


LATE_SPIN_US = 50  # how late the PDL probe producer writes (check_after_late_producer)


def late_copy(src: torch.Tensor, dst: torch.Tensor) -> None:
    """Copy src into dst with the PDL probe kernel: it triggers its dependents at entry and writes dst
    LATE_SPIN_US later."""
    stream = torch.cuda.current_stream().cuda_stream
    _ext._C._debug_delayed_copy(src.data_ptr(), dst.data_ptr(), src.numel() * src.element_size(), LATE_SPIN_US, 0, stream)


def check_after_late_producer(op, inputs: list[torch.Tensor], what: str) -> None:
    """The guard of a kernel's griddepcontrol.wait: op(*inputs) on ready inputs must equal, bit for bit,
    op on copies of the inputs that a producer triggering its dependents at entry writes LATE_SPIN_US
    late (late_copy), eagerly and under CUDA graph replay. op returns a tensor or a tuple of them."""
    if not _ext._C._debug_pdl():
        pytest.skip("PDL is switched off (ZQKERNELS_PDL=0)")
    ready = op(*inputs)
    ready = ready if isinstance(ready, tuple) else (ready,)
    dsts = [torch.zeros_like(t) for t in inputs]

    def late():
        for s, d in zip(inputs, dsts):
            late_copy(s, d)
        out = op(*dsts)
        return out if isinstance(out, tuple) else (out,)

    def same(outs, where):
        for i, (o, r) in enumerate(zip(outs, ready)):
            assert torch.equal(o, r), f"{what}: output {i} differs {where} after a late producer"

    for _ in range(2):
        for d in dsts:
            d.zero_()
        same(late(), "eagerly")
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = late()
    for _ in range(2):
        for d in dsts:
            d.zero_()
        g.replay()
        torch.cuda.synchronize()
        same(outs, "in a graph replay")


def capture(fn):
    """A CUDA graph of one call of fn, after a warm-up call on a side stream (as torch recommends
    before capture); returns (graph, the captured call's outputs, rewritten by each replay)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def graph_replay(fn):
    """fn's outputs computed by replaying a CUDA graph of it once (capture, then replay, then sync)."""
    g, out = capture(fn)
    g.replay()
    torch.cuda.synchronize()
    return out


@pytest.fixture(autouse=True)
def _seed_and_defaults():
    """Every test starts from the same RNG state and with the debug checks off."""
    torch.manual_seed(0)
    previous = zqkernels.set_debug_checks(False)
    yield
    zqkernels.set_debug_checks(previous)


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """Global dissimilarity 1 - 2<x,y> / (|x|^2 + |y|^2) (0 when equal; ~rel_err^2 / 2 when close)."""
    x, y = x.double(), y.double()
    denom = float((x * x).sum() + (y * y).sum())
    return 0.0 if denom == 0 else 1.0 - 2.0 * float((x * y).sum()) / denom


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||y - ref|| / ||ref||."""
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm())


def assert_gemm_close(out: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """Kernel output against ``int8_gemm_ref``: elementwise, globally, and by count of differences.

    The kernel (int32 sum, fp32 epilogue, one rounding) and the reference (float64, one rounding)
    compute the same real number up to fp32 rounding (~2^-24 relative), so:
    - elementwise, |out - ref| <= rtol * |ref| + atol_row with rtol = one output ulp (GEMM_RTOL):
      the two may round to adjacent values. atol_row = 1e-3 * max |ref| of the row (a fraction of a
      bf16 ulp of the row's largest value, about one fp16 ulp) covers outputs near zero, where bias
      and the scaled sum cancel, and subnormals; it is per row so a row with huge scales
      (outliers) does not loosen the bound of the others.
    - globally, calc_diff < 1e-5 (one-ulp differences everywhere would give ~1.5e-5 or more for bf16).
    - they differ at all only where the real value lies within ~2^-24 of a rounding boundary: a
      fraction ~2^-16 (bf16) or ~2^-13 (fp16) of outputs (measured by emulating the epilogue: 1e-5,
      5e-5). At most 1% may differ: a wrong rounding mode (truncation) changes about half of them,
      while staying within one ulp.
    """
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
    o, r = out.double(), ref.double()
    assert not torch.isnan(o).any(), f"{what}: NaN in the output ({int(torch.isnan(o).sum())} elements)"
    if r.numel() == 0:
        return
    atol_row = 1e-3 * r.abs().amax(dim=1, keepdim=True)
    err = (o - r).abs()
    bad = err > GEMM_RTOL[out.dtype] * r.abs() + atol_row
    if bad.any():
        m, n = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} outputs off; first at [{m}, {n}]: "
            f"got {float(o[m, n])}, expected {float(r[m, n])} (worst abs err {float(err.max())})"
        )
    d = calc_diff(o, r)
    assert d < 1e-5, f"{what}: calc_diff {d:.3g} >= 1e-5"
    if out.dtype == torch.float32:
        return  # several fp32 roundings: most outputs differ from the fp64 reference in the last bits
    differ = float((o != r).double().mean())
    assert differ < 0.01, f"{what}: {differ:.1%} of outputs differ from the reference (expected ~0.005%)"


def make_gemm_inputs(
    M: int,
    N: int,
    K: int,
    device: str = "cpu",
    out_dtype: torch.dtype = torch.bfloat16,
    bias: bool = False,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Random int8 operands over the full range [-127, 127] and positive scales spanning 10x."""
    g = generator
    xq = torch.randint(-127, 128, (M, K), dtype=torch.int8, generator=g)
    wq = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    sx = torch.rand(M, generator=g) * 9e-3 + 1e-3
    sw = torch.rand(N, generator=g) * 9e-3 + 1e-3
    b = torch.randn(N, generator=g).to(out_dtype) if bias else None
    args = dict(xq=xq, wq=wq, sx=sx, sw=sw, bias=b)
    return {k: (v.to(device) if v is not None else None) for k, v in args.items()} | {"out_dtype": out_dtype}


# -- the CLI tests' shared helpers (test_cli.py, test_cli_options.py) ----------------------------


def run_cli(capsys, argv):
    """python -m zqkernels ARGV in process: (exit status, stdout, stderr)."""
    from zqkernels.__main__ import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc, out, err, command, *needles):
    """A user error of `command`: exit status 2, one line on stderr naming the command, no
    traceback, containing every needle. Returns the line."""
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith((f"zqkernels {command}: ", f"python -m zqkernels {command}: error: ")), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
