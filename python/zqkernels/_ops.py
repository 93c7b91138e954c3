"""The functional ops: argument checks, dispatch (CPU reference / CUDA kernels), torch.library registration.

Both ops are ``torch.library.custom_op``s in the namespace ``zqkernels`` with fake implementations,
so ``torch.compile(fullgraph=True)`` traces them and CUDA graphs capture them: inside a call nothing
synchronizes, nothing is created on the host, and every device buffer (output, workspace) comes from
the torch caching allocator. The real and the fake implementation run the same argument checks, so
a bad call fails while tracing too.

Dispatch never falls back silently:
  CPU tensors  -> ``zqkernels.reference`` (the very functions the tests compare the kernels with)
  CUDA tensors -> ``zqkernels._C``; a build without CUDA kernels, a GPU older than sm_80, or a backend
                  not compiled / not runnable on this GPU raises RuntimeError saying which.

Errors: TypeError for a wrong dtype, ValueError for a wrong shape, layout, alignment, device mix or
option value, RuntimeError when this build or this GPU cannot run a valid call. Every message names
the op and the argument and says what was expected and what came.

Non-finite inputs: finding a NaN/Inf needs a device sync, so the ops do not look; NaN/Inf propagate
instead (a NaN/Inf in a row of x gives a NaN/Inf sx for that row, hence a NaN/Inf output row: visible,
never silent). ``set_debug_checks(True)`` makes the public wrappers check ``torch.isfinite`` on their
float inputs and raise ValueError; it synchronizes and is off by default.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _ext
from .reference import int8_gemm_ref, quantize_per_token_ref, quantize_weight_ref

__all__ = ["quantize_per_token", "quantize_weight", "int8_gemm", "set_debug_checks", "BACKENDS"]

BACKENDS = ("auto", "sm90", "sm80")
_X_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # _C.quantize_per_token
_OUT_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}  # _C.int8_gemm
_INT32_MAX = 2**31 - 1  # _C takes M, N, K as C ints
# The int32 accumulator holds any sum of K products of values in [-127, 127] while
# K * 127^2 <= 2^31 - 1 (docs/SCALES.md): beyond that it could wrap silently.
_K_MAX_INT32_ACC = _INT32_MAX // 127**2  # 133,144
_debug_checks = False


def set_debug_checks(enabled: bool) -> bool:
    """Turn the NaN/Inf input checks of the public ops on or off; returns the previous setting.

    When on, ``quantize_per_token``, ``int8_gemm`` (and so ``QLinear``) raise ValueError on a
    non-finite float input. Each check synchronizes the device (and breaks CUDA graph capture and
    ``torch.compile(fullgraph=True)``): use it to debug, not in production. Off by default.
    """
    global _debug_checks
    previous, _debug_checks = _debug_checks, bool(enabled)
    return previous


# ------------------------------------------------------------------------------------------------
# Argument checks, shared by the real and the fake implementations (one property at a time).


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _desc(t: torch.Tensor) -> str:
    """'int8 [4096, 4096]': how a message shows what it got."""
    return f"{_dtype_name(t.dtype)} {list(t.shape)}"


def has_row_layout(x: torch.Tensor) -> bool:
    """True if the rows of a 2-D x can be read in place: unit stride along K, rows not overlapping."""
    M, K = x.shape
    return (K <= 1 or x.stride(1) == 1) and (M <= 1 or x.stride(0) >= K)


def _check_int32_sizes(op: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if v > _INT32_MAX:
            raise ValueError(f"{op}: {name} must be < 2**31 (the kernels index with 32-bit ints), got {v}")


def _check_same_device(op: str, first: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{op}: all tensors must be on one device, but {first} is on {ref.device} "
                f"and {name} is on {t.device}"
            )


def _check_contiguous(op: str, **tensors: Optional[torch.Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be contiguous (row-major), got {_desc(t)} with strides "
                f"{tuple(t.stride())}; pass {name}.contiguous()"
            )


def _check_quantize_args(x: torch.Tensor) -> None:
    op = "quantize_per_token"
    if x.dtype not in _X_DTYPE_CODE:
        raise TypeError(f"{op}: x must be bfloat16, float16 or float32 [M, K], got {_desc(x)}")
    if x.dim() != 2:
        raise ValueError(
            f"{op}: x must be 2-D [M, K] (flatten leading dims with x.reshape(-1, x.shape[-1])), "
            f"got {_desc(x)}"
        )
    M, K = x.shape
    if K > 1 and x.stride(1) != 1:
        raise ValueError(
            f"{op}: x must have unit stride along K (x.stride(1) == 1), got {_desc(x)} with strides "
            f"{tuple(x.stride())}; pass x.contiguous()"
        )
    if M > 1 and x.stride(0) < K:
        raise ValueError(
            f"{op}: rows of x must not overlap (x.stride(0) >= K == {K}), got {_desc(x)} with strides "
            f"{tuple(x.stride())}; pass x.contiguous()"
        )
    _check_int32_sizes(op, M=M, K=K)


def _check_int8_gemm_args(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_dtype: torch.dtype,
) -> None:
    op = "int8_gemm"
    if out_dtype not in _OUT_DTYPE_CODE:
        raise TypeError(f"{op}: out_dtype must be torch.bfloat16 or torch.float16, got {out_dtype}")
    if xq.dtype != torch.int8:
        raise TypeError(f"{op}: xq must be int8 [M, K] (from quantize_per_token), got {_desc(xq)}")
    if xq.dim() != 2:
        raise ValueError(f"{op}: xq must be 2-D int8 [M, K], got {_desc(xq)}")
    M, K = xq.shape
    if wq.dtype != torch.int8:
        raise TypeError(f"{op}: wq must be int8 [N, K] (from quantize_weight), got {_desc(wq)}")
    if wq.dim() != 2:
        raise ValueError(f"{op}: wq must be 2-D int8 [N, K], got {_desc(wq)}")
    if wq.shape[1] != K:
        raise ValueError(f"{op}: wq must be int8 [N, K] with K == xq.shape[1] ({K}), got {_desc(wq)}")
    N = wq.shape[0]
    if sx.dtype != torch.float32:
        raise TypeError(f"{op}: sx must be float32 [M] (one scale per row of xq), got {_desc(sx)}")
    if sx.dim() != 1 or sx.shape[0] != M:
        raise ValueError(f"{op}: sx must be float32 [M] with M == xq.shape[0] ({M}), got {_desc(sx)}")
    if sw.dtype != torch.float32:
        raise TypeError(f"{op}: sw must be float32 [N] (one scale per row of wq), got {_desc(sw)}")
    if sw.dim() != 1 or sw.shape[0] != N:
        raise ValueError(f"{op}: sw must be float32 [N] with N == wq.shape[0] ({N}), got {_desc(sw)}")
    if bias is not None:
        if bias.dtype != out_dtype:
            raise TypeError(
                f"{op}: bias must have the output dtype ({_dtype_name(out_dtype)}), got {_desc(bias)}; "
                "pass bias.to(out_dtype)"
            )
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"{op}: bias must be [N] with N == wq.shape[0] ({N}), got {_desc(bias)}")
    _check_same_device(op, "xq", xq, wq=wq, sx=sx, sw=sw, bias=bias)
    _check_contiguous(op, xq=xq, wq=wq, sx=sx, sw=sw, bias=bias)
    _check_int32_sizes(op, M=M, N=N, K=K)
    if xq.device.type == "cuda":
        if K % 16 != 0:
            raise ValueError(
                f"{op}: K must be a multiple of 16 on CUDA (TMA and the 16-byte vector loads read rows "
                f"of xq and wq in 16-byte pieces), got K={K}; pad x's columns and w's columns with "
                f"zeros to K={-(-K // 16) * 16}"
            )
        if N % 8 != 0:
            raise ValueError(
                f"{op}: N must be a multiple of 8 on CUDA (output rows are stored in 16-byte vectors of "
                f"8 bf16/fp16), got N={N}; pad w with zero rows (and sw, bias) to N={-(-N // 8) * 8}"
            )
        if K > _K_MAX_INT32_ACC:
            raise ValueError(
                f"{op}: K must be <= {_K_MAX_INT32_ACC} on CUDA (K * 127^2 must fit the int32 "
                f"accumulator), got K={K}; split K and add the partial outputs"
            )


def check_aligned_ptr(op: str, name: str, t: torch.Tensor, align: int = 16) -> None:
    """Real tensors only (fake tensors have no address)."""
    rem = t.data_ptr() % align
    if rem != 0:
        raise ValueError(
            f"{op}: {name} must start at a {align}-byte aligned address (the kernels read it with TMA "
            f"/ {align}-byte vectors), got data_ptr() % {align} == {rem} (a view with a storage "
            f"offset?); pass {name}.clone()"
        )


# ------------------------------------------------------------------------------------------------
# Where a call runs.


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _require_cuda_kernels(op: str, device: torch.device) -> tuple[int, int]:
    """Raise unless zqkernels can run CUDA kernels on `device`; returns its compute capability."""
    if device.type != "cuda":
        raise RuntimeError(
            f"{op}: tensors on {device.type} are not supported; pass CUDA tensors (kernels) or CPU "
            "tensors (pure-torch reference)"
        )
    if _ext._C is None:
        raise RuntimeError(f"{op}: {_ext.no_kernels_reason()}")
    cc = _capability(device)
    if cc < (8, 0):
        raise RuntimeError(
            f"{op}: the zqkernels kernels need compute capability >= 8.0 (Ampere or newer), "
            f"{device} has {cc[0]}.{cc[1]}"
        )
    return cc


def _check_gemm_options(backend: str, config: int) -> None:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"int8_gemm: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if isinstance(config, bool) or not isinstance(config, int) or config < -1:
        raise ValueError(f"int8_gemm: config must be -1 (auto) or a config index >= 0, got {config!r}")


def resolve_gemm_backend(device: torch.device, backend: str = "auto", config: int = -1) -> str:
    """The backend that runs int8_gemm on `device`: 'reference' (CPU), 'meta', 'sm90' or 'sm80'.

    backend='auto' on CUDA takes 'sm90' on compute capability 9.0 when compiled, else 'sm80' on
    compute capability >= 8.0 when compiled. Raises (never falls back) when the choice cannot run.
    """
    op = "int8_gemm"
    _check_gemm_options(backend, config)
    if device.type == "meta":  # shape inference only
        return "meta"
    if device.type == "cpu":
        if backend != "auto":
            raise RuntimeError(
                f"{op}: backend {backend!r} is a CUDA kernel; CPU tensors run the pure-torch reference "
                "and take backend='auto'"
            )
        if config != -1:
            raise RuntimeError(
                f"{op}: config selects a CUDA kernel tile; CPU tensors run the pure-torch reference "
                f"and take config=-1, got {config}"
            )
        return "reference"
    cc = _require_cuda_kernels(op, device)
    C = _ext._C
    compiled = [b for b in BACKENDS[1:] if C.has_backend(b)]
    if backend == "auto":
        if cc == (9, 0) and "sm90" in compiled:
            chosen = "sm90"
        elif "sm80" in compiled:
            chosen = "sm80"
        else:
            raise RuntimeError(
                f"{op}: no int8 GEMM kernel of this build runs on {device} (compute capability "
                f"{cc[0]}.{cc[1]}): compiled backends {compiled or 'none'} (archs "
                f"{list(C.compiled_archs())}); sm90 needs compute capability 9.0, sm80 needs >= 8.0. "
                "Rebuild with ZQ_CUDA_ARCHS listing this GPU's arch (e.g. ZQ_CUDA_ARCHS='80;90a')"
            )
    else:
        if backend not in compiled:
            raise RuntimeError(
                f"{op}: backend {backend!r} is not compiled into this build (compiled: "
                f"{compiled or 'none'}); rebuild with ZQ_CUDA_ARCHS including "
                f"{'90a' if backend == 'sm90' else '80'}"
            )
        if backend == "sm90" and cc != (9, 0):
            raise RuntimeError(
                f"{op}: backend 'sm90' needs compute capability 9.0 (H100/H200), {device} has "
                f"{cc[0]}.{cc[1]}; use backend='auto'"
            )
        chosen = backend
    if config != -1:
        names = C.int8_gemm_configs(chosen)
        if config >= len(names):
            raise ValueError(
                f"{op}: config {config} out of range for backend {chosen!r}, which has {len(names)} "
                f"configs (0..{len(names) - 1}: {', '.join(names)})"
            )
    return chosen


def _quantize_plan(x: torch.Tensor) -> None:
    _check_quantize_args(x)
    if x.device.type not in ("cpu", "meta"):
        _require_cuda_kernels("quantize_per_token", x.device)


def _gemm_plan(xq, wq, sx, sw, bias, out_dtype, backend, config) -> str:
    _check_int8_gemm_args(xq, wq, sx, sw, bias, out_dtype)
    return resolve_gemm_backend(xq.device, backend, config)


# ------------------------------------------------------------------------------------------------
# CUDA launches (arguments already checked).


def _quantize_per_token_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dev = x.device
    M, K = x.shape
    xq = torch.empty((M, K), dtype=torch.int8, device=dev)
    sx = torch.empty((M,), dtype=torch.float32, device=dev)
    if M == 0:
        return xq, sx
    if K == 0:  # max over an empty row is 0: scale 0, as for an all-zero row
        return xq, sx.zero_()
    _ext._C.quantize_per_token(
        x.data_ptr(),
        _X_DTYPE_CODE[x.dtype],
        x.stride(0),
        xq.data_ptr(),
        sx.data_ptr(),
        M,
        K,
        dev.index,
        torch.cuda.current_stream(dev).cuda_stream,
    )
    return xq, sx


def _int8_gemm_cuda(backend, config, xq, wq, sx, sw, bias, out_dtype) -> torch.Tensor:
    C = _ext._C
    dev = xq.device
    M, K = xq.shape
    N = wq.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=dev)
    if M == 0 or N == 0:
        return out
    if K == 0:  # empty dot products: y = bias, or 0
        return out.zero_() if bias is None else out.copy_(bias.expand(M, N))
    check_aligned_ptr("int8_gemm", "xq", xq)
    check_aligned_ptr("int8_gemm", "wq", wq)
    nbytes = C.int8_gemm_workspace_size(backend, config, M, N, K, dev.index)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=dev) if nbytes > 0 else None
    C.int8_gemm(
        backend,
        config,
        xq.data_ptr(),
        wq.data_ptr(),
        sx.data_ptr(),
        sw.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        M,
        N,
        K,
        _OUT_DTYPE_CODE[out_dtype],
        0 if workspace is None else workspace.data_ptr(),
        nbytes,
        dev.index,
        torch.cuda.current_stream(dev).cuda_stream,
    )
    return out


# ------------------------------------------------------------------------------------------------
# torch.library registration.


@torch.library.custom_op(
    "zqkernels::quantize_per_token", mutates_args=(), schema="(Tensor x) -> (Tensor, Tensor)"
)
def _quantize_per_token_impl(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _quantize_plan(x)
    if x.device.type == "cpu":
        return quantize_per_token_ref(x)
    return _quantize_per_token_cuda(x)


@_quantize_per_token_impl.register_fake
def _quantize_per_token_fake(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _quantize_plan(x)
    M, K = x.shape
    return x.new_empty((M, K), dtype=torch.int8), x.new_empty((M,), dtype=torch.float32)


@torch.library.custom_op(
    "zqkernels::int8_gemm",
    mutates_args=(),
    schema="(Tensor xq, Tensor wq, Tensor sx, Tensor sw, Tensor? bias, ScalarType out_dtype, str backend, "
    "int config) -> Tensor",
)
def _int8_gemm_impl(xq, wq, sx, sw, bias, out_dtype, backend, config):
    where = _gemm_plan(xq, wq, sx, sw, bias, out_dtype, backend, config)
    if where == "reference":
        return int8_gemm_ref(xq, wq, sx, sw, bias, out_dtype)
    return _int8_gemm_cuda(where, config, xq, wq, sx, sw, bias, out_dtype)


@_int8_gemm_impl.register_fake
def _int8_gemm_fake(xq, wq, sx, sw, bias, out_dtype, backend, config):
    _gemm_plan(xq, wq, sx, sw, bias, out_dtype, backend, config)
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


_quantize_per_token_op = torch.ops.zqkernels.quantize_per_token.default
_int8_gemm_op = torch.ops.zqkernels.int8_gemm.default


# ------------------------------------------------------------------------------------------------
# Public wrappers.


def _check_finite(op: str, name: str, t: Optional[torch.Tensor]) -> None:
    """Syncs the device: debug checks and offline paths only."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{op}: {name} has {bad} non-finite values (NaN/Inf) out of {t.numel()}")


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-wise symmetric INT8 quantization: x [M, K] -> (xq int8 [M, K], sx float32 [M]).

    ``sx = amax / 127`` and ``xq = clamp(rint(x * (127 / amax)), -127, 127)`` per row, in fp32
    (docs/SCALES.md); an all-zero row gives sx = 0, xq = 0. x is bf16, fp16 or fp32; its rows may be
    strided but K must have unit stride. CPU tensors run the reference, CUDA tensors the kernel.
    A NaN/Inf in a row gives a NaN/Inf sx for that row (see ``set_debug_checks``).
    """
    if _debug_checks:
        _check_finite("quantize_per_token", "x", x)
    return _quantize_per_token_op(x)


def quantize_weight(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise symmetric quantization of a weight [N, K] -> (wq int8 [N, K], sw float32 [N]).

    bits=8 gives values in [-127, 127]; bits=4 gives [-7, 7] in an int8 container. Weights are
    quantized once, offline: this runs the reference math with torch ops on w's device, and it
    always checks that w is finite (a sync; a NaN would poison a whole output channel). The results
    are constants: no gradient flows back to w.
    """
    op = "quantize_weight"
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: w must be a torch.Tensor [N, K], got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{op}: w must be a floating-point tensor [N, K], got {_desc(w)}")
    if w.dim() != 2:
        raise ValueError(f"{op}: w must be 2-D [N, K] (nn.Linear.weight layout), got {_desc(w)}")
    if bits not in (8, 4):
        raise ValueError(f"{op}: bits must be 8 or 4, got {bits!r}")
    wq, sw = quantize_weight_ref(w.detach(), bits)  # constants: no gradient flows to w
    # A NaN/Inf anywhere in a row makes that row's scale NaN/Inf: checking the N scales is
    # checking the N*K weights.
    bad = ~torch.isfinite(sw)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{op}: w has NaN/Inf values in {len(rows)} rows (output channels {rows[:8]}"
            f"{' ...' if len(rows) > 8 else ''}); a quantized channel would be NaN"
        )
    return wq, sw


def int8_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    sx: torch.Tensor,
    sw: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    backend: str = "auto",
    config: int = -1,
) -> torch.Tensor:
    """W8A8 GEMM: y[m, n] = sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n]), as out_dtype.

    xq int8 [M, K], wq int8 [N, K] (nn.Linear layout), sx float32 [M], sw float32 [N], bias [N] of
    out_dtype (bf16 or fp16), all contiguous on one device. On CUDA, K % 16 == 0, N % 8 == 0 and xq,
    wq start 16-byte aligned. The sum is exact (int32); scales and bias are applied in fp32 and the
    result rounded once. ``backend`` ('auto', 'sm90', 'sm80') and ``config`` (a tile index of that
    backend, -1 = the M-bucket choice) select a CUDA kernel explicitly, for tests and benchmarks;
    CPU tensors (the reference) take the defaults.
    """
    if _debug_checks:
        for name, t in (("sx", sx), ("sw", sw), ("bias", bias)):
            _check_finite("int8_gemm", name, t)
    return _int8_gemm_op(xq, wq, sx, sw, bias, out_dtype, backend, config)
