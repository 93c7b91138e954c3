"""The quantized GEMMs: ONE ``torch.library`` custom op, ``zqkernels::gemm``, keyed by the GEMM spec,
and the named public wrappers ``int8_gemm``, ``fp8_gemm``, ``w4a8_fp_gemm``, ``w4a8_gemm`` and
``w8a8_group_gemm`` (the same arguments as ever, each a thin wrapper of the one op).

    zqkernels::gemm(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? sg, Tensor? bias, str spec,
                    ScalarType out_dtype, str activation="none", float? out_scale=None,
                    int? max_scale=None) -> Tensor

``spec`` is the recipe key of ``formats.GemmSpec`` (``GemmSpec.recipe``, the kernel registry's key):

    int8_rowwise          int8_gemm        int8 x int8, per-token / per-channel float scales
    fp8_rowwise           fp8_gemm         FP8 E4M3 x FP8 E4M3, fp32 promotion (accumulate="accurate")
    fp8_rowwise_fastacc   fp8_gemm         the same on Hopper's FP8 accumulator (accumulate="fast")
    fp8_blockwise         fp8_block_gemm   FP8 x FP8 with 1 x 128 token / 128 x 128 weight block scales
    w4a8_fp               w4a8_fp_gemm     FP8 x packed FP4 E2M1 with power-of-two / float group scales
    w4a8_int              w4a8_gemm        int8 x packed INT4 with integer / float group scales
    int8_group_int        w8a8_group_gemm  int8 x int8 with integer group scales (sg int32)
    int8_group_float      w8a8_group_gemm  int8 x int8 with float group scales (sg float32)

``sg`` (group scales) is required by the group recipes and None otherwise; ``out_scale`` applies to
int8 output of int8_rowwise only; ``max_scale`` to integer group scales only. One fake
implementation and one check dispatcher (``gemm_checks.check_gemm``) serve every recipe; the CUDA
launches live in ops/gemm_cuda.py. Scale conventions: docs/SCALES.md; W4A8: docs/W4A8.md, docs/FP8.md.

Tuning knobs are not part of the schema. ``backend`` ('auto', 'sm90', 'sm80') and ``tile`` (a tile
name from ``zqkernels.info()["gemm_tiles"]``) pick the row-wise kernel, ``path`` ('auto', 'stream',
'mixed', 'convert') the W4A8 paths; they are for tests and benchmarks and are set with the context manager
``gemm_options(backend=..., tile=..., path=...)`` (a ``contextvars`` setting: per thread and task).
The wrappers' ``backend=`` / ``tile=`` / ``path=`` arguments still work: when not at their defaults
they override the setting for that call (eagerly, or by entering the setting around the op call).
The op's implementation reads the setting active when it runs, so under torch.compile set it with
``gemm_options`` around the compiled call (a wrapper given a knob while being traced raises).

Eager fast path: a wrapper called eagerly on plain tensors runs its recipe's implementation directly
(checks + launch; a few attribute reads for the common CUDA call) instead of the custom-op dispatch,
whose Python overhead costs several times a kernel launch (ops/_common.py). Under torch.compile /
export tracing, a dispatch mode (FakeTensorMode, ...) or tensor subclasses, the call goes through
``zqkernels::gemm``. Dispatch never falls back silently: CPU tensors run ``zqkernels.reference`` (the
functions the tests compare the kernels with); CUDA tensors run ``zqkernels._C`` or raise.

Epilogue (docs/SCALES.md, "Epilogue options"): ``activation`` ('none', 'gelu', 'gelu_tanh', 'silu')
after the bias, in fp32, in every kernel; ``out_dtype=torch.int8`` with ``out_scale`` (int8_gemm
only) quantizes the output with a static per-tensor scale. Non-finite inputs propagate (finding
them needs a sync); ``set_debug_checks(True)`` makes the wrappers check.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import Optional

import torch

from ..reference.gemm import fp8_gemm_ref, int8_gemm_ref
from . import _common as c
from .gemm_block import check_block_args, fp8_block_impl
from .gemm_checks import (
    ACCUMULATE,
    BACKENDS,
    FP8,
    GEMM_SPECS,
    INT8_MAX_K,
    W4A8_INT_MAX_GROUP,
    W4A8_PATHS,
    W8A8_GROUP_MAX_GROUP,
    check_accumulate,
    check_epilogue,
    check_gemm,
    check_options,
    check_path,
    check_rowwise_args,
    check_spec,
    debug_checks,
)
from .gemm_cuda import (
    gemm_tiles,
    resolve_gemm_backend,
    rowwise_gemm_cuda,
)
from .gemm_fast import fast_ok_cuda
from .gemm_group import group_impl, w4a8_fp_impl, w4a8_int_impl

__all__ = [
    "int8_gemm",
    "fp8_gemm",
    "fp8_block_gemm",
    "w4a8_fp_gemm",
    "w4a8_gemm",
    "w8a8_group_gemm",
    "run_gemm",
    "gemm_options",
    "current_gemm_options",
    "resolve_gemm_backend",
    "gemm_tiles",
    "GEMM_SPECS",
    "BACKENDS",
    "W4A8_PATHS",
    "INT8_MAX_K",
    "W4A8_INT_MAX_GROUP",
    "W8A8_GROUP_MAX_GROUP",
    "ACCUMULATE",
]

_I8 = torch.int8
_FP8 = torch.float8_e4m3fn


# ------------------------------------------------------------------------------------------------
# Tuning knobs: gemm_options.

_NO_KNOBS = ("auto", None, "auto")  # (backend, tile, path)
_knobs: ContextVar[tuple] = ContextVar("zqkernels_gemm_options", default=_NO_KNOBS)
# gemm_options contexts entered and not yet left, over all threads: while 0, the eager paths skip
# the ContextVar read (one global load instead of a method call per GEMM).
_active = 0
_active_lock = threading.Lock()


class gemm_options:  # noqa: N801 - a context manager, named like torch.no_grad
    """Tuning knobs of the GEMMs, for tests and benchmarks (never needed for correct results):

        with zqkernels.ops.gemm_options(backend="sm80", tile="swap_64x16x256_pp"):
            y = zqkernels.int8_gemm(xq, wq, sx, sw)

    backend ('auto', 'sm90', 'sm80') and tile (None = the dispatch table's choice, or a name from
    ``zqkernels.info()["gemm_tiles"]``) select the kernel of int8_gemm / fp8_gemm on CUDA; path
    ('auto', 'stream', 'mixed', 'convert') the W4A8 GEMMs' path. Every knob is set (nested settings replace
    the enclosing one); GEMMs whose recipe has no such knob ignore it. CPU tensors (the reference)
    take the defaults. A wrapper's own non-default knob argument overrides the setting for its call.
    """

    __slots__ = ("_value", "_tokens")

    def __init__(self, backend: str = "auto", tile: Optional[str] = None, path: str = "auto") -> None:
        check_options(backend, tile, "gemm_options")
        check_path("gemm_options", path)
        self._value = (backend, tile, path)
        self._tokens: list = []

    @classmethod
    def _unchecked(cls, value: tuple) -> "gemm_options":
        """A wrapper's knobs, checked later by the op with the op's name in the message."""
        self = object.__new__(cls)
        self._value = value
        self._tokens = []
        return self

    def __enter__(self) -> "gemm_options":
        global _active
        with _active_lock:
            _active += 1
        self._tokens.append(_knobs.set(self._value))
        return self

    def __exit__(self, *exc) -> None:
        global _active
        try:
            _knobs.reset(self._tokens.pop())
        finally:
            with _active_lock:
                _active -= 1


def current_gemm_options() -> dict:
    """The knobs in effect here: {"backend": ..., "tile": ..., "path": ...}."""
    backend, tile, path = _knobs.get()
    return {"backend": backend, "tile": tile, "path": path}


def _merged(backend: str, tile: Optional[str], path: str) -> tuple:
    """A wrapper's knob arguments over the setting (an argument at its default takes the setting's)."""
    b, t, p = _knobs.get()
    return (b if backend == "auto" else backend, t if tile is None else tile, p if path == "auto" else path)


def _op_with(op_name: str, backend: str, tile: Optional[str], path: str, *args):
    """The custom op called with a wrapper's knob arguments (not all at their defaults) over the
    setting. Not under torch.compile: the compiled graph would run without them."""
    if c._is_compiling():
        raise RuntimeError(
            f"{op_name}: backend= / tile= / path= are not traced by torch.compile (they are not part of the "
            "op's schema); set them with zqkernels.ops.gemm_options(...) around the compiled call"
        )
    with gemm_options._unchecked(_merged(backend, tile, path)):
        return _op(*args)


# ------------------------------------------------------------------------------------------------
# One implementation per recipe family (checks, then CUDA launch or the reference). The wrappers'
# eager paths call these directly; the custom op reaches them through _run.


def _int8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", out_scale=None):
    if activation == "none" and out_scale is None and out_dtype is not torch.int8:
        act, scale = 0, 1.0  # the default epilogue: nothing to check
    else:
        act, scale = check_epilogue(activation, out_dtype, out_scale)
    if backend == "auto" and tile is None and fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype):
        return rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, scale)
    check_options(backend, tile)
    check_rowwise_args(xq, wq, sx, sw, bias, out_dtype)
    if xq.is_cuda:
        return rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, scale)
    where = resolve_gemm_backend(xq.device, backend)  # raises for other device types / CPU + backend
    if tile is not None:
        raise RuntimeError(
            f"int8_gemm: tile selects a CUDA kernel; {where} tensors run the pure-torch reference and "
            f"take tile=None, got {tile!r}"
        )
    return int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=activation, out_scale=out_scale)


def _fp8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, recipe):
    fam = FP8
    act = 0 if activation == "none" else check_epilogue(activation, out_dtype, None, fam.op)[0]
    if backend == "auto" and tile is None and fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype, _FP8, fam.max_k):
        return rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, 1.0, recipe)
    check_options(backend, tile, fam.op)
    check_rowwise_args(xq, wq, sx, sw, bias, out_dtype, fam)
    if xq.is_cuda:
        return rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, 1.0, recipe)
    where = resolve_gemm_backend(xq.device, backend, recipe)
    if tile is not None:
        raise RuntimeError(
            f"fp8_gemm: tile selects a CUDA kernel; {where} tensors run the pure-torch reference and "
            f"take tile=None, got {tile!r}"
        )
    return fp8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=activation)


def _run(spec, xq, wq, sx, sw, sg, bias, out_dtype, activation="none", out_scale=None, max_scale=None):
    """One call of the op, any recipe, with the knobs of the setting in effect."""
    check_spec(spec, sg, out_scale, max_scale)
    backend, tile, path = _knobs.get()
    if spec == "int8_rowwise":
        return _int8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, out_scale)
    if spec == "fp8_rowwise" or spec == "fp8_rowwise_fastacc":
        return _fp8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, spec)
    if spec == "fp8_blockwise":
        return fp8_block_impl(xq, wq, sx, sw, bias, out_dtype, activation, tile)
    if spec == "w4a8_fp":
        return w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, path, tile)
    if spec == "w4a8_int":
        return w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale, path, tile)
    return group_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale)


# ------------------------------------------------------------------------------------------------
# The custom op: one schema, one implementation, one fake implementation.


@torch.library.custom_op(
    "zqkernels::gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? sg, Tensor? bias, str spec, "
    "ScalarType out_dtype, str activation=\"none\", float? out_scale=None, int? max_scale=None) -> Tensor",
)
def _gemm_op(xq, wq, sx, sw, sg, bias, spec, out_dtype, activation="none", out_scale=None, max_scale=None):
    return _run(spec, xq, wq, sx, sw, sg, bias, out_dtype, activation, out_scale, max_scale)


@_gemm_op.register_fake
def _gemm_fake(xq, wq, sx, sw, sg, bias, spec, out_dtype, activation="none", out_scale=None, max_scale=None):
    knobs = _knobs.get()
    if spec == "fp8_blockwise":
        check_spec(spec, sg, out_scale, max_scale)
        check_block_args(xq, wq, sx, sw, bias, out_dtype, activation)
    else:
        check_gemm(spec, xq, wq, sx, sw, sg, bias, out_dtype, activation, out_scale, max_scale, knobs)
    if spec in ("int8_rowwise", "fp8_rowwise", "fp8_rowwise_fastacc", "fp8_blockwise"):
        resolve_gemm_backend(xq.device, knobs[0], spec)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_op = torch.ops.zqkernels.gemm.default


def run_gemm(
    spec: str,
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    out_scale: Optional[float] = None,
    max_scale: Optional[int] = None,
) -> torch.Tensor:
    """The GEMM of recipe ``spec`` (a key of ``GEMM_SPECS``, e.g. ``GemmSpec.recipe``): what the named
    wrappers do, chosen by the key (eager fast path on plain tensors, else ``zqkernels::gemm``)."""
    if c._debug_checks:
        debug_checks(spec, check_spec(spec, sg, out_scale, max_scale).op, xq, sx, sw, sg, bias, max_scale, wq)
    if c.eager(xq, wq, sx, sw, sg, bias):
        return _run(spec, xq, wq, sx, sw, sg, bias, out_dtype, activation, out_scale, max_scale)
    c.check_tensor_args("run_gemm", bias, sg)
    if out_scale is not None:
        out_scale = check_epilogue(activation, out_dtype, out_scale, check_spec(spec, sg, out_scale, None).op)[1]
    return _op(xq, wq, sx, sw, sg, bias, spec, out_dtype, activation, out_scale, max_scale)


# ------------------------------------------------------------------------------------------------
# The named wrappers.


def int8_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    backend: str = "auto",
    tile: Optional[str] = None,
    activation: str = "none",
    out_scale: Optional[float] = None,
) -> torch.Tensor:
    """W8A8 GEMM: y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n])), as out_dtype.

    xq int8 [M, K] and wq int8 [N, K] (nn.Linear layout; rows may be strided: unit stride along K,
    row stride >= K), sx float32 [M] (per token) or [1] (per tensor), sw float32 [N] (per channel)
    or [1], bias [N] of out_dtype (bf16, fp16 or fp32; float32 for int8 output), all on one device;
    int8 values may include -128 and K <= 131071. On CUDA, K % 16 == 0, N % 8 == 0 (N % 16 == 0 for
    int8 output), row strides multiples of 16 and xq, wq start 16-byte aligned. The sum is exact
    (int32); scales, bias and the activation are applied in fp32 and the result rounded once.

    activation: 'none', 'gelu' (erf), 'gelu_tanh' or 'silu', applied after the bias.
    out_dtype=torch.int8 quantizes the output with a static per-tensor scale (ZeroQuant-HERO):
    q = clamp(rint(act(y) / out_scale), -127, 127) (round half to even; NaN gives 0), with
    out_scale a Python float > 0 (required with int8 output and only there).

    ``backend`` ('auto', 'sm90', 'sm80') and ``tile`` (a name from
    ``zqkernels.info()["gemm_tiles"]``, None = the dispatch table's choice) select a CUDA kernel
    explicitly, for tests and benchmarks (also settable with ``gemm_options``); CPU tensors (the
    reference) take the defaults. Runs the custom op ``zqkernels::gemm`` with spec "int8_rowwise".
    """
    if c._debug_checks:
        debug_checks("int8_rowwise", "int8_gemm", xq, sx, sw, None, bias, None)
    if c.eager(xq, wq, sx, sw, bias):  # eager: no dispatch
        if _active:
            backend, tile, _ = _merged(backend, tile, "auto")
        return _int8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, out_scale)
    c.check_tensor_args("int8_gemm", bias)
    if activation == "none" and out_scale is None:
        scale = None
    else:  # the schema takes a float: check the options first, so that a bad one gets this op's message
        _, scale = check_epilogue(activation, out_dtype, out_scale)
        scale = scale if out_dtype is torch.int8 else None
    if backend == "auto" and tile is None:
        return _op(xq, wq, sx, sw, None, bias, "int8_rowwise", out_dtype, activation, scale)
    return _op_with("int8_gemm", backend, tile, "auto",
                    xq, wq, sx, sw, None, bias, "int8_rowwise", out_dtype, activation, scale)


_FP8_ACCURATE = ACCUMULATE["accurate"]


def fp8_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    accumulate: str = "accurate",
    backend: str = "auto",
    tile: Optional[str] = None,
    activation: str = "none",
) -> torch.Tensor:
    """W8A8 FP8 GEMM: y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n])), as out_dtype.

    xq float8_e4m3fn [M, K] (``quantize_per_token(x, dtype=torch.float8_e4m3fn)``), wq float8_e4m3fn
    [N, K] (``quantize_weight(w, fmt="fp8")``), sx float32 [M] or [1], sw float32 [N] or [1], bias [N]
    of out_dtype (bf16 or fp16). On CUDA: compute capability 9.0 (FP8 tensor cores; Hopper kernels
    only: an sm_80 GPU gets a RuntimeError saying so), K % 16 == 0, N % 8 == 0, row strides multiples
    of 16, xq / wq 16-byte aligned.

    accumulate: 'accurate' (default) promotes the tensor cores' partial sums into fp32 every 128 of K
    (without stalling them: src/cuda/sm90_fp8_promote_mainloop.cuh); 'fast' keeps Hopper's FP8
    accumulator (fewer mantissa bits than fp32) throughout: faster on the widest tiles, and less
    accurate as K grows (docs/FP8.md has both errors against an fp64 reference).
    activation: 'none', 'gelu', 'gelu_tanh' or 'silu', applied after the bias in fp32.
    backend / tile: as for int8_gemm (tests and benchmarks; also settable with ``gemm_options``).
    CPU tensors run the float64 reference (``zqkernels.reference.fp8_gemm_ref``). Runs the custom op
    ``zqkernels::gemm`` with spec "fp8_rowwise" (accurate) or "fp8_rowwise_fastacc" (fast).
    """
    recipe = _FP8_ACCURATE if accumulate == "accurate" else check_accumulate(accumulate)
    if c._debug_checks:
        debug_checks(recipe, "fp8_gemm", xq, sx, sw, None, bias, None)
    if c.eager(xq, wq, sx, sw, bias):
        if _active:
            backend, tile, _ = _merged(backend, tile, "auto")
        return _fp8_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, recipe)
    c.check_tensor_args("fp8_gemm", bias)
    if backend == "auto" and tile is None:
        return _op(xq, wq, sx, sw, None, bias, recipe, out_dtype, activation)
    return _op_with("fp8_gemm", backend, tile, "auto", xq, wq, sx, sw, None, bias, recipe, out_dtype, activation)


def fp8_block_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
) -> torch.Tensor:
    """Block-scaled FP8 GEMM (DeepSeek-V3 / compressed-tensors FP8 block), accurate accumulation:
    y[m, n] = act(sum_j sx[m, j] * sw[n // 128, j] * sum_{k in K-block j} xq[m, k] * wq[n, k] + bias[n]).

    xq float8_e4m3fn [M, K] with sx float32 [M, K // 128] (``quantize_per_token_group``), wq
    float8_e4m3fn [N, K] with sw float32 [ceil(N / 128), K // 128] (``quantize_weight(w, fmt="fp8",
    block_size=128)``), K % 128 == 0, any M and N (N % 8 == 0 on CUDA), bias [N] of out_dtype (bf16 or
    fp16). The scales are applied in fp32 at each 128-wide promotion of the tensor cores' partial sums;
    ops/gemm_block.py says which scale layouts the kernel reads as they are. CPU tensors run the float64
    reference (``zqkernels.reference.block.fp8_block_gemm_ref``). Runs ``zqkernels::gemm`` with spec
    "fp8_blockwise"; the tile knob of ``gemm_options`` applies.
    """
    if c.eager(xq, wq, sx, sw, bias):
        return fp8_block_impl(xq, wq, sx, sw, bias, out_dtype, activation, _knobs.get()[1] if _active else None)
    c.check_tensor_args("fp8_block_gemm", bias)
    return _op(xq, wq, sx, sw, None, bias, "fp8_blockwise", out_dtype, activation)


def w4a8_fp_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    path: str = "auto",
) -> torch.Tensor:
    """W4A8-FP GEMM (ZeroQuant-FP): y[m, n] = act(sx[m] * sw[n] * sum_k xq[m, k] * wf[n, k] (+ bias[n])).

    xq float8_e4m3fn [M, K] with per-token sx float32 [M] (``quantize_per_token(x,
    dtype=torch.float8_e4m3fn)``); wq, sw, sg from ``quantize_weight(w, fmt="fp4", group_size=g,
    scale=policy)``: wq uint8 [N, K // 2] (FP4 codes, layout m16k64), sw float32 [N], sg [N, K // g]
    int8 exponents (m1 / m2: wf = e2m1 * 2^e, converted with integer operations) or float32 ratios
    (free: wf = e4m3(e2m1 * r), the float-scale baseline). The group size is K // sg.shape[1].
    bias [N] of out_dtype (bf16, fp16 or fp32). On CUDA: compute capability 9.0, N % 16 == 0,
    K % 64 == 0. activation: 'none', 'gelu', 'gelu_tanh', 'silu' after the bias, in fp32.

    path (CUDA; for tests and benchmarks, also settable with ``gemm_options``): 'auto' (by M),
    'stream' ('auto' takes it for M <= 32: one kernel streams the packed weights once per 64
    tokens, converts them in registers and runs FP8 mma.sync; decode is weight-bandwidth bound),
    'mixed' ('auto' above, up to M = 256 with power-of-two scales and M = 64 with float scales, and
    for float32 output: the Hopper mixed-input wgmma mainloop converts the packed weights in
    registers, no conversion pass, promoting to fp32 every 128 of K) or 'convert' ('auto' above
    that: fp4_to_fp8 writes the FP8 weights [N, K] into a temporary, then the fp8_rowwise GEMM runs
    on wgmma; bf16 / fp16 output only). All
    compute the same products; they differ only in how the fp32 partial sums are grouped. CPU
    tensors run the float64 reference. Runs ``zqkernels::gemm`` with spec "w4a8_fp".
    """
    if c._debug_checks:
        debug_checks("w4a8_fp", "w4a8_fp_gemm", xq, sx, sw, sg, bias, None)
    if c.eager(xq, wq, sx, sw, sg, bias):
        tile = None
        if _active:
            _, tile, path = _merged("auto", None, path)
        return w4a8_fp_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, path, tile)
    c.check_tensor_args("w4a8_fp_gemm", bias, sg)
    if path == "auto":
        return _op(xq, wq, sx, sw, sg, bias, "w4a8_fp", out_dtype, activation)
    return _op_with("w4a8_fp_gemm", "auto", None, path, xq, wq, sx, sw, sg, bias, "w4a8_fp", out_dtype, activation)


def w4a8_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    max_scale: Optional[int] = None,
    path: str = "auto",
) -> torch.Tensor:
    """W4A8 GEMM with INT4 group scales (Integer Scale, docs/W4A8.md):
    ``y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))``, P the exact int
    dot product of xq and the INT4 codes over group j.

    xq int8 [M, K] with per-token sx float32 [M] (``quantize_per_token(x)``); wq, sw, sg from
    ``quantize_weight(w, fmt="int4", scale="int" | "float", group_size=g)``: wq uint8 [N, K // 2]
    (layout m16k32), sw float32 [N], sg [N, K // g] int32 (integer scales: summed in int32, one
    conversion to float at the end) or float32 (each group's P converted and scaled in fp32, the
    baseline). The zero-point format (``scale="zp"``, docs/W4A8.md "Zero-point INT4"): sg int16
    [N, K // g] of s | z << 8, ``y = act(sx[m] * sw[n] * sum_k xq[m, k] * s (q + 8 - z) (+ bias))``, the
    codes turned into exact int8 values in registers and summed in one int32 (K <= 131071; the
    'stream' and 'mixed' paths). The group size is K // sg.shape[1], a multiple of 32 dividing K (float scales: at
    most W4A8_INT_MAX_GROUP). bias [N] of out_dtype (bf16, fp16 or fp32). On CUDA: compute
    capability 9.0, N % 16 == 0, K % 64 == 0. activation: 'none', 'gelu', 'gelu_tanh', 'silu'
    after the bias.

    max_scale (integer scales only): an upper bound of sg, from which the kernel's int32 flush
    interval is computed (``w4a8_int_flush_steps``) without reading sg on the host (a sync). None:
    2^15, the largest scale quantize_weight produces (its alpha bound), giving F = 1; passing the
    alpha actually used (e.g. 1024: F = 63) lets the kernel convert less often. Scales above the
    bound can overflow int32: ``set_debug_checks(True)`` checks 0 <= sg <= bound (negative scales
    raise). CPU tensors run the exact reference (``w4a8_gemm_ref``).

    path (CUDA; for tests and benchmarks, also settable with ``gemm_options``): "stream" (the decode
    kernel: streams the packed weights, INT8 mma.sync), "mixed" (the Hopper mixed-input mainloop:
    the packed weights are converted to int8 in registers and fed to register-sourced wgmma; no
    conversion pass), "convert" (int4_to_int8 into a temporary int8 [N, K], then the group-scaled
    wgmma GEMM of ``w8a8_group_gemm``), or "auto": the fastest measured on an H100 (stream at
    M = 1, and up to M = 16 when N / 128 is below the GPU's SM count; convert at M >= 2048 for
    integer scales above 16, which need a per-group fold; else mixed). Integer scales <= 16
    (``quantize_weight(..., alpha=16)``, max_scale <= 16) make the mixed path multiply them into
    the weights in registers: one exact int32 sum, no fold. All compute the same sums. Runs
    ``zqkernels::gemm`` with spec "w4a8_int".
    """
    if c._debug_checks:
        debug_checks("w4a8_int", "w4a8_gemm", xq, sx, sw, sg, bias, max_scale, wq)
    if c.eager(xq, wq, sx, sw, sg, bias):
        tile = None
        if _active:
            _, tile, path = _merged("auto", None, path)
        return w4a8_int_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale, path, tile)
    c.check_tensor_args("w4a8_gemm", bias, sg)
    if path == "auto":
        return _op(xq, wq, sx, sw, sg, bias, "w4a8_int", out_dtype, activation, None, max_scale)
    return _op_with("w4a8_gemm", "auto", None, path, xq, wq, sx, sw, sg, bias, "w4a8_int", out_dtype,
                    activation, None, max_scale)


def w8a8_group_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    sg: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    activation: str = "none",
    max_scale: Optional[int] = None,
) -> torch.Tensor:
    """Group-wise W8A8 GEMM (docs/W4A8.md, "Group-wise W8A8"):
    ``y[m, n] = act(sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (+ bias[n]))``, P the exact int
    dot product of xq and wq over group j.

    xq int8 [M, K] with per-token sx float32 [M] or one value (``quantize_per_token(x)``); wq, sw, sg
    from ``quantize_weight(w, fmt="int8", scale="int" | "float", group_size=g)``: wq int8 [N, K], sw
    float32 [N] (or one value), sg [N, K // g] int32 (integer scales: summed in int32, converted to
    float at the flushes and the end) or float32 (each group's P converted and scaled in fp32, the
    baseline). The group size is K // sg.shape[1], a multiple of 32 dividing K, at most
    W8A8_GROUP_MAX_GROUP. bias [N] of out_dtype (bf16, fp16 or fp32). activation: 'none', 'gelu',
    'gelu_tanh', 'silu' after the bias. On CUDA: compute capability 9.0 (ops/gemm_cuda.py checks
    it and the alignment).

    max_scale (integer scales only): an upper bound of sg (a Python int in [1, group_max_scale(g,
    128)], e.g. quantize_weight's alpha), from which the kernel computes how many groups it may add
    into its int32 accumulator before flushing, without reading sg on the host (a sync). None: the
    largest scale one group tolerates, i.e. a flush after every group. Scales above the bound can
    overflow int32: ``set_debug_checks(True)`` checks 0 <= sg <= bound. CPU tensors run the exact
    reference (``w8a8_group_gemm_ref``). Runs ``zqkernels::gemm`` with spec "int8_group_int" (int32
    sg) or "int8_group_float" (float32 sg).
    """
    if c._debug_checks:
        debug_checks("int8_group_int", "w8a8_group_gemm", xq, sx, sw, sg, bias, max_scale)
    if c.eager(xq, wq, sx, sw, sg, bias):
        return group_impl(xq, wq, sx, sw, sg, bias, out_dtype, activation, max_scale)
    c.check_tensor_args("w8a8_group_gemm", bias, sg)
    spec = "int8_group_float" if sg.dtype == torch.float32 else "int8_group_int"
    return _op(xq, wq, sx, sw, sg, bias, spec, out_dtype, activation, None, max_scale)
