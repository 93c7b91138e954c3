"""GEMM ops: ``int8_gemm`` and ``fp8_gemm`` (kernels: src/cuda/sm90_gemm_rowwise.cuh,
sm80_gemm_rowwise.cuh).

Each op is described by a ``formats.GemmSpec`` whose recipe keys the kernel registry of
``zqkernels._C`` (``int8_rowwise``; ``fp8_rowwise`` and ``fp8_rowwise_fastacc``, sm90 only). The two
ops are one implementation parameterised by a ``_Family`` (operand dtype, K bound, output types): the kernel for a call is resolved once per (device, arch,
tile, output dtype, M, N, K) and cached, so an eager call costs argument checks, one output
allocation and one binding call. ``zqkernels::int8_gemm`` is the ``torch.library`` custom op
(fake implementation included) that torch.compile / export / opcheck see.

Epilogue options (docs/SCALES.md, "Epilogue options"): ``activation`` ('none', 'gelu', 'gelu_tanh',
'silu') is applied after the bias, in fp32, by every kernel (a runtime value in the kernel's
parameters, no extra instantiation); ``out_dtype=torch.int8`` with ``out_scale`` (a Python float)
quantizes the output with a static per-tensor scale, on the tiles built for int8 output (the
int8-output dispatch tables of src/cuda/gemm_dispatch.cpp). No residual input: see
docs/PERF_NOTES.md ("GEMM epilogue options") for why.

Dispatch never falls back silently:
  CPU tensors  -> ``zqkernels.reference`` (the very functions the tests compare the kernels with)
  CUDA tensors -> ``zqkernels._C``; a build without CUDA kernels, a GPU older than sm_80, or a backend
                  / tile not compiled or not runnable on this GPU raises RuntimeError saying which.

Non-finite inputs: finding a NaN/Inf needs a device sync, so the ops do not look; NaN/Inf propagate
instead (visible, never silent). ``set_debug_checks(True)`` makes the public wrappers check.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch

from .. import _ext
from ..formats import ACTIVATIONS, INT8_ROWWISE
from ..reference.gemm import fp8_gemm_ref, int8_gemm_ref
from . import _common as c

__all__ = ["int8_gemm", "fp8_gemm", "resolve_gemm_backend", "gemm_tiles", "BACKENDS", "INT8_MAX_K", "ACCUMULATE"]

BACKENDS = ("auto", "sm90", "sm80")
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.int8)
# zq::DType codes of the output types (zq_kernels.h); int8 is an output type of the GEMMs only.
_OUT_CODE = {**c.DTYPE_CODE, torch.int8: 3}
# zq::GemmActivation codes (zq_kernels.h), in formats.ACTIVATIONS order.
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
assert tuple(_ACT_CODE) == ("none", "gelu", "gelu_tanh", "silu")
# out_scale reaches the kernels as a float32: it must stay a normal, finite float32 > 0.
_F32_TINY = torch.finfo(torch.float32).tiny
_F32_MAX = torch.finfo(torch.float32).max
# The int32 accumulator holds any sum of K products of int8 values (which may include -128, as in
# compressed-tensors checkpoints) while K * 128 * 128 <= 2^31 - 1 (docs/SCALES.md). Enforced on
# every device, so CPU and GPU accept the same calls; src/cuda/gemm_registry.h checks it again.
INT8_MAX_K = (2**31 - 1) // (128 * 128)  # 131,071
_RECIPE = INT8_ROWWISE.recipe
_FP8 = torch.float8_e4m3fn
# fp8_gemm's accumulation modes -> recipes (docs/FP8.md: errors measured at K = 4096 and 16384).
ACCUMULATE = {"accurate": "fp8_rowwise", "fast": "fp8_rowwise_fastacc"}


class _Family(NamedTuple):
    """What distinguishes the row-wise 8-bit GEMM ops; everything else is shared."""

    op: str                  # public name, used in every message
    operand: torch.dtype     # xq and wq
    out_dtypes: tuple        # accepted output dtypes
    max_k: int               # K bound (int32 accumulator for int8)
    archs: tuple             # backends that have kernels for it
    ref: Callable            # the CPU reference


_INT8 = _Family("int8_gemm", torch.int8, _OUT_DTYPES, INT8_MAX_K, ("sm90", "sm80"), int8_gemm_ref)
_FP8_FAMILY = _Family("fp8_gemm", _FP8, (torch.bfloat16, torch.float16), 2**31 - 1, ("sm90",), fp8_gemm_ref)


# ------------------------------------------------------------------------------------------------
# Argument checks, shared by the eager path and the fake implementation (one property at a time).


def _check_scale(op: str, name: str, s: torch.Tensor, n: int, what: str, dim: str) -> None:
    """s: float32 with n elements ([n], [n, 1] or [1, n]) or one element (per-tensor)."""
    if s.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32 [{dim}] ({what}) or [1] (per-tensor), got {c.desc(s)}")
    numel = s.numel()
    if s.dim() > 2 or (numel != n and numel != 1) or (s.dim() == 2 and s.shape[0] != 1 and s.shape[1] != 1):
        raise ValueError(
            f"{op}: {name} must be float32 [{dim}] with {dim} == {n} ({what}) or hold one per-tensor "
            f"value ([1]), got {c.desc(s)}"
        )


def _check_epilogue(activation, out_dtype, out_scale, op: str = "int8_gemm") -> tuple[int, float]:
    """(activation code, out_scale as passed to the kernel) of valid epilogue options, else raise."""
    code = _ACT_CODE.get(activation) if isinstance(activation, str) else None
    if code is None:
        raise ValueError(
            f"{op}: activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}"
        )
    if out_dtype is not torch.int8:
        if out_scale is not None:
            raise ValueError(
                f"{op}: out_scale is the static scale of an int8 output and needs out_dtype=torch.int8, "
                f"got out_scale={out_scale!r} with out_dtype={out_dtype}"
            )
        return code, 1.0
    if out_scale is None:
        raise ValueError(
            f"{op}: out_dtype=torch.int8 needs out_scale, the static per-tensor output scale "
            "(q = clamp(rint(y / out_scale), -127, 127)), got out_scale=None"
        )
    if isinstance(out_scale, torch.Tensor):
        raise TypeError(
            f"{op}: out_scale must be a Python float (a static scale, passed to the kernel by value), "
            "got a torch.Tensor; pass float(out_scale) once, outside the model's forward (reading a "
            "device tensor's value synchronizes)"
        )
    if isinstance(out_scale, bool) or not isinstance(out_scale, (float, int)):
        raise TypeError(
            f"{op}: out_scale must be a Python float (a static scale, passed to the kernel by value), "
            f"got {type(out_scale).__name__} {out_scale!r}"
        )
    s = float(out_scale)
    if not (math.isfinite(s) and _F32_TINY <= s <= _F32_MAX):
        raise ValueError(
            f"{op}: out_scale must be a finite float > 0 that float32 represents as a normal number "
            f"([{_F32_TINY:.3g}, {_F32_MAX:.3g}]), got {out_scale!r}"
        )
    return code, s


def _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype, fam: _Family = _INT8) -> None:
    op = fam.op
    ty = c.dtype_name(fam.operand)
    if out_dtype not in fam.out_dtypes:
        names = [f"torch.{c.dtype_name(d)}" for d in fam.out_dtypes]
        allowed = ", ".join(names[:-1]) + " or " + names[-1]
        raise TypeError(
            f"{op}: out_dtype must be {allowed}{' (with out_scale)' if torch.int8 in fam.out_dtypes else ''}, "
            f"got {out_dtype}"
        )
    hint = "quantize_per_token" + ("" if fam.operand == torch.int8 else f"(x, dtype=torch.{ty})")
    if xq.dtype != fam.operand:
        raise TypeError(f"{op}: xq must be {ty} [M, K] (from {hint}), got {c.desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D {ty} [M, K], got {c.desc(xq)}")
    M, K = xq.shape
    if wq.dtype != fam.operand:
        raise TypeError(f"{op}: wq must be {ty} [N, K] (from quantize_weight), got {c.desc(wq)}")
    if wq.dim() != 2:
        raise ValueError(f"{op}: wq must be 2-D {ty} [N, K], got {c.desc(wq)}")
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be {ty} [N, K] with K == xq.shape[1] ({K}), got {c.desc(wq)}")
    N = wq.shape[0]
    _check_scale(op, "sx", sx, M, "one scale per row of xq", "M")
    _check_scale(op, "sw", sw, N, "one scale per row of wq", "N")
    if bias is not None:
        if out_dtype == torch.int8:
            if bias.dtype != torch.float32:
                raise TypeError(
                    f"{op}: bias must be float32 for int8 output (it is added in fp32 before the "
                    f"quantization), got {c.desc(bias)}; pass bias.float()"
                )
        elif bias.dtype != out_dtype:
            raise TypeError(
                f"{op}: bias must have the output dtype ({c.dtype_name(out_dtype)}), got {c.desc(bias)}; "
                "pass bias.to(out_dtype)"
            )
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"{op}: bias must be [N] with N == wq.shape[0] ({N}), got {c.desc(bias)}")
    c.check_same_device(op, "xq", xq, wq=wq, sx=sx, sw=sw, bias=bias)
    c.check_rows(op, "xq", xq)
    c.check_rows(op, "wq", wq)
    c.check_contiguous(op, sx=sx, sw=sw, bias=bias)
    c.check_int32_sizes(op, M=M, N=N, K=K)
    if K > fam.max_k:
        raise ValueError(
            f"{op}: K must be <= {INT8_MAX_K} (K * 128 * 128 must fit the int32 accumulator: int8 "
            f"values may be -128), got K={K}; split K and add the partial outputs"
        )
    if xq.is_cuda:
        if K % 16 != 0:
            raise ValueError(
                f"{op}: K must be a multiple of 16 on CUDA (TMA and the 16-byte vector loads read rows "
                f"of xq and wq in 16-byte pieces), got K={K}; pad x's columns and w's columns with "
                f"zeros to K={-(-K // 16) * 16}"
            )
        if N % 8 != 0:
            raise ValueError(
                f"{op}: N must be a multiple of 8 on CUDA (output rows are stored in 16-byte vectors), "
                f"got N={N}; pad w with zero rows (and sw, bias) to N={-(-N // 8) * 8}"
            )
        if out_dtype == torch.int8 and N % 16 != 0:
            raise ValueError(
                f"{op}: N must be a multiple of 16 on CUDA for int8 output (output rows are stored in "
                f"16-byte vectors of int8), got N={N}; pad w with zero rows (and sw, bias) to "
                f"N={-(-N // 16) * 16}"
            )
        for name, t in (("xq", xq), ("wq", wq)):
            if t.shape[0] > 1 and K > 0 and t.stride(0) % 16 != 0:
                raise ValueError(
                    f"{op}: the row stride of {name} must be a multiple of 16 elements on CUDA (TMA), got "
                    f"{name}.stride(0) == {t.stride(0)}; pass {name}.contiguous()"
                )


_I8 = torch.int8
_F32 = torch.float32


def _fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype, operand=_I8, max_k=INT8_MAX_K) -> bool:
    """The common valid CUDA call, recognised in a few attribute reads (1-D scales, contiguous
    operands or 16-aligned row strides). False means "run the full checks", which then either
    raise the precise error or accept a rarer valid layout."""
    if xq.dtype is not operand or wq.dtype is not operand or sx.dtype is not _F32 or sw.dtype is not _F32:
        return False
    if out_dtype is torch.bfloat16 or out_dtype is torch.float16 or out_dtype is _F32:
        bias_dtype, n_align = out_dtype, 8
    elif out_dtype is _I8 and operand is _I8:
        bias_dtype, n_align = _F32, 16  # int8 output: float32 bias, 16-byte rows of int8
    else:
        return False
    xs = xq.shape
    ws = wq.shape
    if len(xs) != 2 or len(ws) != 2:
        return False
    M, K = xs
    N = ws[0]
    if ws[1] != K or K % 16 or N % n_align or K > max_k or M > c.INT32_MAX or N > c.INT32_MAX or K == 0:
        return False
    xst = xq.stride()
    wst = wq.stride()
    if xst[1] != 1 or wst[1] != 1 or xst[0] < K or wst[0] < K or xst[0] % 16 or wst[0] % 16:
        return False
    if sx.dim() != 1 or sw.dim() != 1 or sx.stride(0) != 1 or sw.stride(0) != 1:
        return False
    sn = sx.shape[0]
    wn = sw.shape[0]
    if (sn != M and sn != 1) or (wn != N and wn != 1):
        return False
    d = xq.get_device()
    if d < 0 or wq.get_device() != d or sx.get_device() != d or sw.get_device() != d:
        return False
    if bias is not None:
        if bias.dtype is not bias_dtype or bias.dim() != 1 or bias.shape[0] != N or bias.stride(0) != 1:
            return False
        if bias.get_device() != d:
            return False
    return True


def _check_options(backend: str, tile: Optional[str], op: str = "int8_gemm") -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if tile is not None and not isinstance(tile, str):
        raise ValueError(f"{op}: tile must be None (automatic) or a tile name (str), got {tile!r}")


# ------------------------------------------------------------------------------------------------
# Where a call runs: backend per (device, request), kernel per problem; both cached.


def _compiled_arches(recipe: str = _RECIPE) -> list[str]:
    C = _ext._C
    return sorted({k[0] for k in C.gemm_kernels() if k[1] == recipe}) if C is not None else []


def gemm_tiles() -> dict[str, list[str]]:
    """Tile names per kernel family of this build, e.g. {"sm90_int8_rowwise": ["swap_64x16x256_pp", ...]}."""
    C = _ext._C
    out: dict[str, list[str]] = {}
    if C is None:
        return out
    for arch, recipe, tile, _code, _dispatched in C.gemm_kernels():
        names = out.setdefault(f"{arch}_{recipe}", [])
        if tile not in names:
            names.append(tile)
    return out


_backend_cache: dict[tuple[int, str, str], str] = {}


def resolve_gemm_backend(device: torch.device, backend: str = "auto", recipe: str = _RECIPE) -> str:
    """The backend that runs a GEMM recipe (default: int8_gemm's) on `device`: 'reference' (CPU),
    'meta', 'sm90' or 'sm80'.

    backend='auto' on CUDA takes 'sm90' on compute capability 9.0 when compiled, else 'sm80' on
    compute capability >= 8.0 when compiled (the FP8 recipes have sm90 kernels only). Raises (never
    falls back) when the choice cannot run.
    """
    op = "int8_gemm" if recipe == _RECIPE else "fp8_gemm"
    _check_options(backend, None, op)
    if device.type == "meta":  # shape inference only
        return "meta"
    if device.type == "cpu":
        if backend != "auto":
            raise RuntimeError(
                f"{op}: backend {backend!r} is a CUDA kernel; CPU tensors run the pure-torch reference "
                "and take backend='auto'"
            )
        return "reference"
    cc = c.require_cuda_kernels(op, device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, backend, recipe)
    hit = _backend_cache.get(key)
    if hit is not None:
        return hit
    compiled = _compiled_arches(recipe)
    archs = list(_ext._C.compiled_archs())
    # SASS runs on its own arch and on later minors of the same major (sm_80 code on 8.6 / 8.9).
    sass = [(int(a[3]), int(a[4:])) for a in archs if a.startswith("sm_") and a[3:].isdigit()]
    sm80_runs = "sm80" in compiled and any(mj == cc[0] and mn <= cc[1] for mj, mn in sass)
    if backend == "auto":
        if cc == (9, 0) and "sm90" in compiled:
            chosen = "sm90"
        elif sm80_runs:
            chosen = "sm80"
        else:
            fp8 = "" if recipe == _RECIPE else (
                " FP8 GEMMs need FP8 tensor cores and have Hopper (sm_90a) kernels only: they need "
                "compute capability 9.0 (H100 / H200)."
            )
            raise RuntimeError(
                f"{op}: no {'int8' if recipe == _RECIPE else 'FP8'} GEMM kernel of this build runs on {device} (compute capability "
                f"{cc[0]}.{cc[1]}): compiled backends {compiled or 'none'} (archs {archs}); sm90 needs "
                "compute capability 9.0, sm80 needs 8.x or a listed arch. Rebuild with ZQ_CUDA_ARCHS "
                f"listing this GPU's arch (e.g. ZQ_CUDA_ARCHS='80;90a').{fp8}"
            )
    else:
        if backend not in compiled:
            raise RuntimeError(
                f"{op}: backend {backend!r} is not compiled into this build (compiled: {compiled or 'none'}); "
                f"rebuild with ZQ_CUDA_ARCHS including {'90a' if backend == 'sm90' else '80'}"
            )
        if backend == "sm90" and cc != (9, 0):
            raise RuntimeError(
                f"{op}: backend 'sm90' needs compute capability 9.0 (H100/H200), {device} has "
                f"{cc[0]}.{cc[1]}; use backend='auto'"
            )
        if backend == "sm80" and not sm80_runs:
            raise RuntimeError(
                f"{op}: backend 'sm80' has no code for compute capability {cc[0]}.{cc[1]} in this build "
                f"(archs {archs}); rebuild with ZQ_CUDA_ARCHS listing it"
            )
        chosen = backend
    _backend_cache[key] = chosen
    return chosen


_plans: dict[tuple, tuple[int, int]] = {}


def _plan(index: int, xq: torch.Tensor, backend: str, tile: Optional[str], out_dtype, M: int, N: int, K: int,
          recipe: str = _RECIPE):
    """(kernel id, workspace bytes) for a problem, cached. The output class (bf16 / fp16, fp32, int8:
    one dispatch table each) is part of the key through out_dtype; the activation is not (every
    kernel runs every activation)."""
    key = (index, backend, tile, out_dtype, M, N, K, recipe)
    hit = _plans.get(key)
    if hit is not None:
        return hit
    C = _ext._C
    arch = resolve_gemm_backend(xq.device, backend, recipe)
    code = _OUT_CODE[out_dtype]
    name = tile if tile is not None else C.gemm_select(arch, recipe, code, M, N, K)
    kid = -1 if name is None else C.gemm_find(arch, recipe, name, code)
    if kid < 0:
        have = [k[2] for k in C.gemm_kernels() if k[0] == arch and k[1] == recipe and k[3] == code]
        op = "int8_gemm" if recipe == _RECIPE else "fp8_gemm"
        raise ValueError(
            f"{op}: tile {name!r} is not built for {arch}_{recipe} with {c.dtype_name(out_dtype)} "
            f"output; this build has {have or 'none'} (experimental tiles need -DZQ_EXPERIMENT_TILES=ON)"
        )
    plan = (kid, C.gemm_workspace_size(kid, M, N, K, index))
    if len(_plans) > 4096:
        _plans.clear()
    _plans[key] = plan
    return plan


def _int8_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act: int = 0, out_scale: float = 1.0,
                    recipe: str = _RECIPE) -> torch.Tensor:
    """Launch on CUDA; arguments already checked (act, out_scale: from _check_epilogue)."""
    M, K = xq.shape
    N = wq.shape[0]
    out = xq.new_empty((M, N), dtype=out_dtype)
    if M == 0 or N == 0:
        return out
    if K == 0:  # empty dot products: y = act(bias or 0), quantized for int8 output
        if act == 0 and out_dtype is not torch.int8:
            return out.zero_() if bias is None else out.copy_(bias.expand(M, N))
        if recipe == _RECIPE:
            y = int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=ACTIVATIONS[act],
                              out_scale=out_scale if out_dtype is torch.int8 else None)
        else:
            y = fp8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=ACTIVATIONS[act])
        return out.copy_(y)
    pa = xq.data_ptr()
    pb = wq.data_ptr()
    if (pa | pb) & 15:
        c.check_aligned_ptr("int8_gemm", "xq", xq)
        c.check_aligned_ptr("int8_gemm", "wq", wq)
    index = xq.get_device()
    kid, ws = _plan(index, xq, backend, tile, out_dtype, M, N, K, recipe)
    # Per-tensor scales are expanded to vectors (a tiny copy): the kernels read sx / sw as vectors,
    # after griddepcontrol.wait (see sm90_gemm_rowwise.cuh for why not a scalar broadcast).
    if sx.numel() != M:
        sx = sx.reshape(1).expand(M).contiguous()
    if sw.numel() != N:
        sw = sw.reshape(1).expand(N).contiguous()
    workspace = xq.new_empty((ws,), dtype=torch.uint8) if ws > 0 else None
    _ext._C.gemm_run(
        kid,
        pa,
        xq.stride(0) if M > 1 else K,
        pb,
        wq.stride(0) if N > 1 else K,
        sx.data_ptr(),
        sw.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        M,
        N,
        K,
        0 if workspace is None else workspace.data_ptr(),
        ws,
        index,
        c.current_stream(index),
        act,
        out_scale,
    )
    return out


def _int8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", out_scale=None):
    if activation == "none" and out_scale is None and out_dtype is not torch.int8:
        act, scale = 0, 1.0  # the default epilogue: nothing to check
    else:
        act, scale = _check_epilogue(activation, out_dtype, out_scale)
    if backend == "auto" and tile is None and _fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype):
        return _int8_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, scale)
    _check_options(backend, tile)
    _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype)
    if xq.is_cuda:
        return _int8_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, scale)
    where = resolve_gemm_backend(xq.device, backend)  # raises for other device types / CPU + backend
    if tile is not None:
        raise RuntimeError(
            f"int8_gemm: tile selects a CUDA kernel; {where} tensors run the pure-torch reference and "
            f"take tile=None, got {tile!r}"
        )
    return int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=activation, out_scale=out_scale)


@torch.library.custom_op(
    "zqkernels::int8_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? bias, ScalarType out_dtype, str backend, "
    "str tile, str activation=\"none\", float? out_scale=None) -> Tensor",
)
def _int8_gemm_op(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", out_scale=None):
    return _int8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile or None, activation, out_scale)


@_int8_gemm_op.register_fake
def _int8_gemm_fake(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", out_scale=None):
    _check_options(backend, tile or None)
    _check_epilogue(activation, out_dtype, out_scale)
    _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype)
    resolve_gemm_backend(xq.device, backend)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_op = torch.ops.zqkernels.int8_gemm.default


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
    explicitly, for tests and benchmarks; CPU tensors (the reference) take the defaults.
    """
    if c._debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("bias", bias)):
            c.check_finite("int8_gemm", name, t)
    if c.eager(xq, wq, sx, sw, bias):  # eager: no dispatch
        return _int8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, out_scale)
    if activation == "none" and out_scale is None:
        return _op(xq, wq, sx, sw, bias, out_dtype, backend, tile or "")
    # The schema takes a float: check the options first, so that a bad one gets this op's message.
    _, scale = _check_epilogue(activation, out_dtype, out_scale)
    return _op(xq, wq, sx, sw, bias, out_dtype, backend, tile or "", activation,
               scale if out_dtype is torch.int8 else None)


# ------------------------------------------------------------------------------------------------
# fp8_gemm: the same implementation with the FP8 family (sm90 kernels only).


def _check_accumulate(accumulate) -> str:
    recipe = ACCUMULATE.get(accumulate) if isinstance(accumulate, str) else None
    if recipe is None:
        raise ValueError(
            f"fp8_gemm: accumulate must be 'accurate' (fp32 promotion every k-tile of 128 or 256, the default) or "
            f"'fast' (Hopper's FP8 accumulator throughout), got {accumulate!r}"
        )
    return recipe


def _fp8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", accumulate="accurate"):
    fam = _FP8_FAMILY
    recipe = _check_accumulate(accumulate)
    act, _ = (0, 1.0) if activation == "none" else _check_epilogue(activation, out_dtype, None, fam.op)
    if backend == "auto" and tile is None and _fast_ok_cuda(xq, wq, sx, sw, bias, out_dtype, _FP8, fam.max_k):
        return _int8_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, 1.0, recipe)
    _check_options(backend, tile, fam.op)
    _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype, fam)
    if xq.is_cuda:
        return _int8_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act, 1.0, recipe)
    where = resolve_gemm_backend(xq.device, backend, recipe)
    if tile is not None:
        raise RuntimeError(
            f"fp8_gemm: tile selects a CUDA kernel; {where} tensors run the pure-torch reference and "
            f"take tile=None, got {tile!r}"
        )
    return fp8_gemm_ref(xq, wq, sx, sw, bias, out_dtype, activation=activation)


@torch.library.custom_op(
    "zqkernels::fp8_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? bias, ScalarType out_dtype, str backend, "
    "str tile, str activation=\"none\", str accumulate=\"accurate\") -> Tensor",
)
def _fp8_gemm_op(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", accumulate="accurate"):
    return _fp8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile or None, activation, accumulate)


@_fp8_gemm_op.register_fake
def _fp8_gemm_fake(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation="none", accumulate="accurate"):
    recipe = _check_accumulate(accumulate)
    _check_options(backend, tile or None, "fp8_gemm")
    _check_epilogue(activation, out_dtype, None, "fp8_gemm")
    _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype, _FP8_FAMILY)
    resolve_gemm_backend(xq.device, backend, recipe)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_fp8_op = torch.ops.zqkernels.fp8_gemm.default


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

    accumulate: 'accurate' (default) promotes the tensor cores' partial sums into fp32 every 128-256 of
    K; 'fast' keeps Hopper's FP8 accumulator (fewer mantissa bits than fp32) throughout: faster,
    and less accurate as K grows (docs/FP8.md has both errors against an fp64 reference).
    activation: 'none', 'gelu', 'gelu_tanh' or 'silu', applied after the bias in fp32.
    CPU tensors run the float64 reference (``zqkernels.reference.fp8_gemm_ref``).
    """
    if c._debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("bias", bias)):
            c.check_finite("fp8_gemm", name, t)
    if c.eager(xq, wq, sx, sw, bias):
        return _fp8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, tile, activation, accumulate)
    _check_accumulate(accumulate)
    return _fp8_op(xq, wq, sx, sw, bias, out_dtype, backend, tile or "", activation, accumulate)
