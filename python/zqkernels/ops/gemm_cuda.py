"""The CUDA side of the GEMM op: where a call runs (backend per device, kernel per problem, both
cached) and the launches into ``zqkernels._C``. Arguments arrive checked (ops/gemm_checks.py).

    rowwise_gemm_cuda   int8_rowwise / fp8_rowwise(_fastacc): the registry GEMM (sm90_gemm_rowwise.cuh,
                        sm80_gemm_rowwise.cuh)
    w4a8_fp_cuda        FP8 x FP4: "stream" (w4a8_gemm.cu; auto at M <= 32; ops/gemm_paths.py),
                        "mixed" (the packed weights converted to E4M3 in registers by the wgmma
                        mainloop, sm90_w4a8_mainloop.cuh, recipes w4a8_fp_mixed_pow2 / _float; on
                        request until measured) or "convert" (fp4_to_fp8, then the fp8_rowwise GEMM;
                        auto above M = 32)
    w4a8_int_cuda       INT8 x INT4: "stream" (w4a8_int_gemm.cu, decode), "mixed" (the packed weights
                        converted in registers by the wgmma mainloop, sm90_w4a8_mainloop.cuh) or
                        "convert" (int4_to_int8, then the group-scaled int8 GEMM); "auto" by
                        measurement (ops/gemm_paths.py)
    group_gemm_cuda     int8_group_int / int8_group_float (sm90_group_mainloop.cuh; contract docs/W4A8.md)
                        and w4a8_mixed_int / w4a8_mixed_float / w4a8_mixed_fused (the same contract,
                        INT4 weights; fused: integer scales <= 16 multiplied into the weights)

The group-scaled kernel sums each span of ``promote_blocks`` k-blocks of 32 exactly in int32, then
folds it in: integer scales ``iacc += s_int * P`` (flushed to fp32 every ``flush`` spans), float
scales ``acc += r * float(P)``. ``group_gemm_intervals`` derives both intervals from the operand
ranges and the largest integer scale so that no int32 can overflow for any input.

Nothing here falls back silently: a build without CUDA kernels, a GPU older than sm_80, or a backend
/ tile not compiled or not runnable on this GPU raises RuntimeError saying which.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _ext
from ..formats import ACTIVATIONS, INT8_ROWWISE
from ..reference.gemm import fp8_gemm_ref, int8_gemm_ref
from ..reference.quantize import w4a8_stream_flush_steps
from ..reference.zero_point import ZP_GROUP_DTYPE, check_zp_k, split_scale_zero
from . import _common as c
from . import gemm_paths
from .gemm_checks import OUT_CODE, W4A8_DEFAULT_MAX_SCALE, check_options
from .gemm_paths import _sm_count, w4a8_fp_path, w4a8_fused, w4a8_int_path
from .layout_cache import cached_layout

__all__ = ["resolve_gemm_backend", "gemm_tiles", "group_gemm_intervals"]

_RECIPE = INT8_ROWWISE.recipe
_FP8 = torch.float8_e4m3fn
# The public op each kernel recipe serves (messages).
_RECIPE_OP = {
    "int8_rowwise": "int8_gemm",
    "fp8_rowwise": "fp8_gemm",
    "fp8_rowwise_fastacc": "fp8_gemm",
    "fp8_blockwise": "fp8_block_gemm",
    "int8_group_int": "w8a8_group_gemm",
    "int8_group_float": "w8a8_group_gemm",
    "w4a8_mixed_int": "w4a8_gemm",
    "w4a8_mixed_float": "w4a8_gemm",
    "w4a8_mixed_fused": "w4a8_gemm",
    "w4a8_mixed_fused_zp": "w4a8_gemm",
    "w4a8_fp_mixed_pow2": "w4a8_fp_gemm",
    "w4a8_fp_mixed_float": "w4a8_fp_gemm",
}


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
    op = _RECIPE_OP.get(recipe, "int8_gemm")
    check_options(backend, None, op)
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


def plan(index: int, xq: torch.Tensor, backend: str, tile: Optional[str], out_dtype, M: int, N: int, K: int,
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
    code = OUT_CODE[out_dtype]
    name = tile if tile is not None else C.gemm_select(arch, recipe, code, M, N, K)
    kid = -1 if name is None else C.gemm_find(arch, recipe, name, code)
    if kid < 0:
        have = [k[2] for k in C.gemm_kernels() if k[0] == arch and k[1] == recipe and k[3] == code]
        op = _RECIPE_OP.get(recipe, recipe)
        raise ValueError(
            f"{op}: tile {name!r} is not built for {arch}_{recipe} with {c.dtype_name(out_dtype)} "
            f"output; this build has {have or 'none'} (experimental tiles need -DZQ_EXPERIMENT_TILES=ON)"
        )
    found = (kid, C.gemm_workspace_size(kid, M, N, K, index))
    if len(_plans) > 4096:
        _plans.clear()
    _plans[key] = found
    return found


# ------------------------------------------------------------------------------------------------
# Row-wise 8-bit GEMMs.


def _scale_vectors(sx: torch.Tensor, sw: torch.Tensor, M: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scales expanded to the vectors of M / N values the kernels read (a tiny copy; vectors
    pass through)."""
    if sx.numel() != M:
        sx = sx.reshape(1).expand(M).contiguous()
    if sw.numel() != N:
        sw = sw.reshape(1).expand(N).contiguous()
    return sx, sw


def rowwise_gemm_cuda(xq, wq, sx, sw, bias, out_dtype, backend, tile, act: int = 0, out_scale: float = 1.0,
                      recipe: str = _RECIPE) -> torch.Tensor:
    """Launch on CUDA; arguments already checked (act, out_scale: from check_epilogue)."""
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
    kid, ws = plan(index, xq, backend, tile, out_dtype, M, N, K, recipe)
    # Per-tensor scales are expanded to vectors (a tiny copy): the kernels read sx / sw as vectors,
    # after griddepcontrol.wait (see sm90_gemm_rowwise.cuh for why not a scalar broadcast).
    sx, sw = _scale_vectors(sx, sw, M, N)
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


# ------------------------------------------------------------------------------------------------
# The sm_90a-only kernels (W4A8, group scales, fp4_to_fp8).


def require_sm90(op: str, device: torch.device, what: str) -> None:
    cc = c.require_cuda_kernels(op, device)
    if cc != (9, 0):
        raise RuntimeError(
            f"{op}: {what} compiled for sm_90a only: "
            f"compute capability 9.0 (H100 / H200) required, {device} has {cc[0]}.{cc[1]}"
        )
    if "sm_90a" not in list(_ext._C.compiled_archs()):
        raise RuntimeError(f"{op}: this build has no sm_90a kernels; rebuild with ZQ_CUDA_ARCHS including 90a")


_ready: set[tuple[str, int]] = set()  # (op, device index) that passed require_sm90
FP_KERNELS = "needs FP8 tensor cores and this build's W4A8-FP kernels are"


def _cuda_operands(op: str, xq, wq, sx, sw, M: int, N: int, what: str, binding: str = ""):
    """What both W4A8 GEMMs do on CUDA before launching (arguments checked): the sm_90a check once
    per device, per-tensor scales expanded to vectors, 16-byte alignment of xq / wq (both kernels and
    fp4_to_fp8 read them in 16-byte pieces; nothing is read when M == 0). Returns (device index,
    sx, sw). binding: the _C function the op launches, checked once with the device (a build from
    before it existed lacks it). M, N: xq's rows and wq's rows, as the caller read them."""
    idx = xq.get_device()
    if (op, idx) not in _ready:
        require_sm90(op, xq.device, what)
        if binding and not hasattr(_ext._C, binding):
            raise RuntimeError(f"{op}: this build of zqkernels._C has no {binding} (built before it existed); rebuild")
        _ready.add((op, idx))
    sx, sw = _scale_vectors(sx, sw, M, N)
    if M and (xq.data_ptr() % 16 or wq.data_ptr() % 16):
        c.check_aligned_ptr(op, "xq", xq)
        c.check_aligned_ptr(op, "wq", wq)
    return idx, sx, sw


def fp4_to_fp8_cuda(wq: torch.Tensor, sg: torch.Tensor, K: int) -> torch.Tensor:
    """Packed FP4 codes (layout m16k64) and group scales -> FP8 E4M3 [N, K] (the kernels' conversion)."""
    N = wq.shape[0]
    out = torch.empty((N, K), dtype=_FP8, device=wq.device)
    idx = wq.get_device()
    _ext._C.fp4_to_fp8(wq.data_ptr(), sg.data_ptr(), sg.dtype == torch.int8, K // sg.shape[1], N, K,
                       out.data_ptr(), idx, c.current_stream(idx))
    return out


def _fp4_scales_t(sg: torch.Tensor) -> torch.Tensor:
    """FP4 group scales [N, G] -> the mixed-input mainloop's sg_t [G, N] of 32-bit values (int8
    exponents widened to int32; float32 ratios as they are), cached per tensor."""
    if sg.dtype == torch.int8:
        return cached_layout("fp4_exponents_t", sg, lambda t: t.t().to(torch.int32).contiguous())
    return _scales_t(sg)


def w4a8_fp_cuda(op: str, xq, wq, sx, sw, sg, bias, out_dtype, act: int, g: int, path: str,
                 tile: Optional[str] = None) -> torch.Tensor:
    """W4A8-FP on CUDA (arguments checked; g the group size). tile: a tile of the mixed-input recipe
    (experiments; None: the dispatch table's)."""
    M, K = xq.shape
    N = wq.shape[0]
    idx, sx, sw = _cuda_operands(op, xq, wq, sx, sw, M, N, FP_KERNELS)
    if M == 0:
        return xq.new_empty((0, N), dtype=out_dtype)
    if path == "auto":
        path = w4a8_fp_path(M, sg.dtype == torch.int8, out_dtype, N, K, _sm_count(idx))
    if path == "mixed":
        recipe = "w4a8_fp_mixed_pow2" if sg.dtype == torch.int8 else "w4a8_fp_mixed_float"
        # The FP4 consumers promote every k-tile whatever the group size; promote_blocks only has to
        # pass the shared group checks.
        pb = group_gemm_intervals(g, 8, None)[0]
        return _group_launch(recipe, xq, wq, sx, sw, _fp4_scales_t(sg), g, pb, 0, bias, out_dtype, act, tile,
                             dims=(M, N, K, idx))
    if path == "convert":
        if out_dtype == torch.float32:
            raise ValueError(f"{op}: float32 output is served by the 'stream' and 'mixed' paths, not 'convert'")
        wf = fp4_to_fp8_cuda(wq, sg, K)
        return rowwise_gemm_cuda(xq, wf, sx, sw, bias, out_dtype, "auto", None, act, 1.0, "fp8_rowwise")
    out = xq.new_empty((M, N), dtype=out_dtype)
    _ext._C.w4a8_fp_gemm_run(  # the scales group-major, as the mixed path reads them
        xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), _fp4_scales_t(sg).data_ptr(), sg.dtype == torch.int8, g,
        sx.data_ptr(), sw.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        OUT_CODE[out_dtype], act, idx, c.current_stream(idx),
    )
    return out


def w4a8_int_cuda(op: str, xq, wq, sx, sw, sg, bias, out_dtype, act: int, g: int, max_scale: Optional[int],
                  path: str, tile: Optional[str] = None) -> torch.Tensor:
    """W4A8 with INT4 weights and integer / float group scales on CUDA (arguments checked). tile: a
    tile of the mixed-input recipe (experiments; None: the dispatch table's)."""
    M, K = xq.shape
    N = wq.shape[0]
    idx, sx, sw = _cuda_operands(op, xq, wq, sx, sw, M, N, "this build's W4A8 integer-scale kernels are",
                                 "w4a8_int_gemm_run")
    if M == 0:
        return xq.new_empty((0, N), dtype=out_dtype)
    if sg.dtype == ZP_GROUP_DTYPE:
        return _w4a8_zp_cuda(op, xq, wq, sx, sw, sg, bias, out_dtype, act, g, path, tile, (M, N, K, idx))
    int_scales = sg.dtype == torch.int32
    if path == "auto":
        path = w4a8_int_path(M, N, idx, w4a8_fused(int_scales, max_scale, K), int_scales)
    if path == "convert":
        return group_gemm_cuda(op, xq, int4_to_int8_cuda(wq, K), sx, sw, sg, bias, out_dtype, act, max_scale, wmax=8)
    if path == "mixed":
        # group_gemm_cuda's launch without its per-call work: the operands were checked above (sm_90a,
        # N % 16, K % 64, 16-byte xq / wq and xq rows) and the recipe and intervals depend only on
        # (g, scale kind, max_scale, K): cached (the eager host time, issue 18).
        recipe, pb, flush = _w4a8_mixed_setup(g, int_scales, max_scale, K)
        return _group_launch(recipe, xq, wq, sx, sw, _scales_t(sg), g, pb, flush, bias, out_dtype, act, tile,
                             dims=(M, N, K, idx))
    # The streaming kernel reads the scales group-major (sg_t [G, N]) and multiplies 16 q: its flush
    # interval has 4 bits less headroom and counts whole batches of 8 steps; from max_scale 2^9 on not
    # one batch fits int32, so the integer scales go through the float variant as float(s_int)
    # (docs/W4A8.md, "Overflow").
    if gemm_paths.W4A8_STREAM_FUSED and w4a8_fused(int_scales, max_scale, K):
        words = cached_layout("sym_words_t", sg, lambda t: _zp_words_t(t, 8))
        return _zp_stream(op, xq, wq, sx, sw, words, bias, out_dtype, act, g, (M, N, K, idx))
    flush = w4a8_stream_flush_steps(W4A8_DEFAULT_MAX_SCALE if max_scale is None else max_scale) if int_scales else 0
    if int_scales and flush == 0:
        int_scales, sg_t = False, cached_layout("int_scales_f32_t", sg, lambda t: t.t().float().contiguous())
    else:
        sg_t = _scales_t(sg)
    out = xq.new_empty((M, N), dtype=out_dtype)
    _ext._C.w4a8_int_gemm_run(
        xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), sg_t.data_ptr(), int_scales, g,
        sx.data_ptr(), sw.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        OUT_CODE[out_dtype], act, flush, idx, c.current_stream(idx),
    )
    return out


def _zp_words_t(s: torch.Tensor, z) -> torch.Tensor:
    """Integer scales s [N, G] and zero points z ([N, G], or 8 for the symmetric codes) -> the zero-point
    kernels' int32 words [G, N], s | (s z) << 8: the bytewise conversion's multiplier and offset."""
    s = s.to(torch.int32)
    return (s | ((s * z) << 8)).t().contiguous()


def _w4a8_zp_cuda(op, xq, wq, sx, sw, sz, bias, out_dtype, act: int, g: int, path: str, tile, dims) -> torch.Tensor:
    """w4a8_gemm on the zero-point format (sz int16): the streaming kernel's zero-point mode or the
    mixed mainloop's fused mode with zero points; the codes become exact int8 values in registers on
    both, so there is no conversion pass ('convert' raises)."""
    M, N, K, idx = dims
    check_zp_k(op, K)  # the fast path skipped check_w4a8_int_args
    if path == "auto":
        path = "stream" if w4a8_int_path(M, N, idx, True, True) == "stream" else "mixed"
    if path == "convert":
        raise ValueError(f"{op}: the zero-point format (int16 sg) runs on the 'stream' and 'mixed' paths, got path='convert'")
    words = cached_layout("zp_words_t", sz, lambda t: _zp_words_t(*split_scale_zero(t)))
    if path == "mixed":
        pb, flush = _w4a8_mixed_setup(g, True, 16, K)[1:]
        return _group_launch("w4a8_mixed_fused_zp", xq, wq, sx, sw, words, g, pb, flush, bias, out_dtype, act, tile,
                             dims=dims)
    return _zp_stream(op, xq, wq, sx, sw, words, bias, out_dtype, act, g, dims)


def _zp_stream(op, xq, wq, sx, sw, words, bias, out_dtype, act: int, g: int, dims) -> torch.Tensor:
    """The streaming kernel's zero-point mode on kernel words s | (s z) << 8 [G, N]."""
    M, N, K, idx = dims
    out = xq.new_empty((M, N), dtype=out_dtype)
    try:
        _ext._C.w4a8_int_gemm_run(
            xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), words.data_ptr(), True, g,
            sx.data_ptr(), sw.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
            OUT_CODE[out_dtype], act, 0, idx, c.current_stream(idx), True,
        )
    except TypeError as e:  # a build from before the zero-point format: its binding has no zero_point
        raise RuntimeError(f"{op}: this build of zqkernels._C has no zero-point streaming kernel (built before it "
                           f"existed); rebuild ({e})") from None
    return out


# ------------------------------------------------------------------------------------------------
# The group-scaled int8 wgmma GEMM: w8a8_group_gemm, and w4a8_gemm's large-M path.

_INT32_MAX = 2**31 - 1
_BLOCK_K = 32  # one int8 wgmma k-block
_ACT_MAX = 128  # |xq| <= 128 (int8 activations may hold -128)
_SPANS = (4, 2, 1)  # k-blocks per span the kernel takes (a span lies inside one 128-wide k-tile)


@functools.lru_cache(maxsize=256)
def group_gemm_intervals(group_size: int, wmax: int, max_scale: Optional[int]) -> tuple[int, int]:
    """(promote_blocks, flush) for the group-scaled kernel.

    One k-block's exact sum obeys ``|P| <= 32 * 128 * wmax`` (wmax: the largest |weight code|, 8 for
    INT4, 128 for INT8; activations may hold -128). Integer scales add ``s * P`` for a span of
    ``pb`` k-blocks into int32, so ``pb * 32 * 128 * wmax * max_scale <= 2^31 - 1``; pb is the
    largest of 4, 2, 1 dividing ``group_size / 32`` within that bound (a span lies inside one k-tile
    of 128 and never crosses a group), and the int32 sum is flushed to fp32 every ``flush =
    floor((2^31 - 1) / (pb * 32 * 128 * wmax * max_scale))`` spans. Float scales (max_scale None)
    take the longest span and never flush. Raises ValueError when not even one k-block fits
    (max_scale too large for wmax).
    """
    if group_size <= 0 or group_size % _BLOCK_K:
        raise ValueError(f"group_gemm_intervals: group_size must be a positive multiple of 32, got {group_size}")
    blocks = group_size // _BLOCK_K
    if max_scale is None:
        return max(d for d in _SPANS if blocks % d == 0), 0
    per_block = _BLOCK_K * _ACT_MAX * wmax * max_scale
    if per_block > _INT32_MAX:
        raise ValueError(
            f"group_gemm_intervals: integer scales up to {max_scale} with weights up to |{wmax}| can overflow "
            f"int32 within one k-block of 32 (32 * 128 * {wmax} * {max_scale} = {per_block} > 2^31 - 1); "
            f"use scales <= {_INT32_MAX // (_BLOCK_K * _ACT_MAX * wmax)} (a smaller alpha)"
        )
    cap = _INT32_MAX // per_block
    pb = max(d for d in _SPANS if d <= cap and blocks % d == 0)
    return pb, _INT32_MAX // (pb * per_block)


@functools.lru_cache(maxsize=256)
def default_max_scale(g: int, wmax: int) -> int:
    """Without max_scale: the largest integer scale the quantizer can produce for the weights. INT4:
    alpha <= 2^15 (docs/W4A8.md); INT8: one group's |P| * scale must fit int32 (the op's bound,
    ``group_max_scale(g, 128)``), at most 4095 (what one k-block of 32 allows)."""
    if wmax == 8:
        return 2**15
    return max(1, min(_INT32_MAX // (g * _ACT_MAX * wmax), _INT32_MAX // (_BLOCK_K * _ACT_MAX * wmax)))


def _scales_t(sg: torch.Tensor) -> torch.Tensor:
    """sg [N, G] -> sg_t [G, N] contiguous (the group kernel's layout: one 16-byte aligned row per group)."""
    return cached_layout("group_scales_t", sg, lambda t: t.t().contiguous())


def int4_to_int8_cuda(wq: torch.Tensor, K: int) -> torch.Tensor:
    """INT4 codes packed in layout m16k32 (uint8 [N, K // 2]) -> int8 [N, K] row-major."""
    N = wq.shape[0]
    out = torch.empty((N, K), dtype=torch.int8, device=wq.device)
    idx = wq.get_device()
    _ext._C.int4_to_int8(wq.data_ptr(), N, K, out.data_ptr(), idx, c.current_stream(idx))
    return out


def group_gemm_cuda(op: str, xq, wq, sx, sw, sg, bias, out_dtype, act: int, max_scale: Optional[int],
                    wmax: int, tile: Optional[str] = None, int4: bool = False) -> torch.Tensor:
    """Launch the group-scaled GEMM on CUDA. Arguments already checked by the op: xq int8 [M, K]
    (M >= 1), wq int8 [N, K] row-major (int4=True: packed INT4 uint8 [N, K // 2], layout m16k32,
    run by the mixed-input mainloop), sx float32 [M] or one element, sw float32 [N] or one
    element, sg [N, G] int32 (integer scales, bounded by max_scale; None: the largest the quantizer
    produces for wmax) or float32, bias [N] or None; act: the activation code. tile: a tile name of
    the recipe (experiments; None: the dispatch table's)."""
    M, K = xq.shape
    N = wq.shape[0]
    idx = xq.get_device()
    if (op, idx) not in _ready:
        require_sm90(op, xq.device, "the group-scaled int8 GEMM kernels are")
        _ready.add((op, idx))
    if N % 8 or K % 16:
        raise ValueError(
            f"{op}: the CUDA kernel needs N % 8 == 0 (16-byte output rows) and K % 16 == 0, got N={N}, K={K}"
        )
    out = xq.new_empty((M, N), dtype=out_dtype)
    if M == 0:
        return out
    if xq.data_ptr() % 16 or wq.data_ptr() % 16 or xq.stride(0) % 16:
        c.check_aligned_ptr(op, "xq", xq)
        c.check_aligned_ptr(op, "wq", wq)
        if xq.stride(0) % 16:
            raise ValueError(f"{op}: xq's row stride must be a multiple of 16 bytes, got {xq.stride(0)}")
    int_scales = sg.dtype == torch.int32
    G = sg.shape[1]
    g = K // G
    if int4:  # the W4A8 mixed-input recipes: one derivation, shared with w4a8_int_cuda
        recipe, pb, flush = _w4a8_mixed_setup(g, int_scales, max_scale, K)
        return _group_launch(recipe, xq, wq, sx, sw, _scales_t(sg), g, pb, flush, bias, out_dtype, act, tile, out)
    if int_scales and max_scale is None:
        max_scale = default_max_scale(g, wmax)
    pb, flush = group_gemm_intervals(g, wmax, max_scale if int_scales else None)
    recipe = "int8_group_" + ("int" if int_scales else "float")
    return _group_launch(recipe, xq, wq, sx, sw, _scales_t(sg), g, pb, flush, bias, out_dtype, act, tile, out)


@functools.lru_cache(maxsize=256)
def _w4a8_mixed_setup(g: int, int_scales: bool, max_scale: Optional[int], K: int) -> tuple[str, int, int]:
    """(recipe, promote_blocks, flush) of the W4A8 mixed-input mainloop for INT4 weights (|w| <= 8):
    fused when the integer scales are bounded by 16 (the scales multiply the codes in registers: one
    int32 sum, no fold), computed once per (group size, scale kind, bound, K)."""
    if int_scales and max_scale is None:
        max_scale = default_max_scale(g, 8)
    pb, flush = group_gemm_intervals(g, 8, max_scale if int_scales else None)
    if w4a8_fused(int_scales, max_scale, K):
        return "w4a8_mixed_fused", pb, flush
    return "w4a8_mixed_" + ("int" if int_scales else "float"), pb, flush


def _group_launch(recipe: str, xq, wq, sx, sw, sg_t, g: int, pb: int, flush: int, bias, out_dtype,
                  act: int, tile: Optional[str], out: Optional[torch.Tensor] = None,
                  dims: Optional[tuple[int, int, int, int]] = None) -> torch.Tensor:
    """Launch a group-scaled recipe of the GEMM registry (M >= 1; operands checked, scales sg_t [G, N]
    in the kernel's layout). dims: (M, N, K, device index) from a caller that read them and already
    expanded per-tensor sx / sw to vectors (_cuda_operands): the eager path reads nothing twice."""
    if dims is None:
        M, K = xq.shape
        N = wq.shape[0]
        idx = xq.get_device()
        sx, sw = _scale_vectors(sx, sw, M, N)
    else:
        M, N, K, idx = dims
    kid, ws = plan(idx, xq, "sm90", tile, out_dtype, M, N, K, recipe)
    if out is None:
        out = xq.new_empty((M, N), dtype=out_dtype)
    workspace = xq.new_empty((ws,), dtype=torch.uint8) if ws > 0 else None
    _ext._C.gemm_run(
        kid, xq.data_ptr(), xq.stride(0) if M > 1 else K, wq.data_ptr(), K, sx.data_ptr(), sw.data_ptr(),
        0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        0 if workspace is None else workspace.data_ptr(), ws, idx, c.current_stream(idx), act, 1.0,
        sg_t.data_ptr(), g, pb, flush,
    )
    return out
