"""What every op module shares: error wording, device facts cached per device, the eager test.

Errors: TypeError for a wrong dtype, ValueError for a wrong shape, layout, alignment, device mix or
option value, RuntimeError when this build or this GPU cannot run a valid call. Every message names
the op and the argument and says what was expected and what came.

Eager fast path: a public op called eagerly on plain tensors runs its implementation directly
(checks + launch) instead of going through ``torch.ops.zqkernels.*``; the custom op's Python
dispatch costs several times the kernel launch. Under torch.compile / torch.export tracing, a
dispatch mode (FakeTensorMode, make_fx, FlopCounterMode, ...) or tensor subclasses, the call goes
through the registered custom op, whose fake implementation runs the same checks.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _ext

DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # zq::DType in zq_kernels.h
INT32_MAX = 2**31 - 1  # _C takes M, N, K as C ints

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_is_compiling = torch.compiler.is_compiling
_dispatch_stack_len = torch._C._len_torch_dispatch_stack

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


def debug_checks() -> bool:
    return _debug_checks


def eager(*tensors: Optional[torch.Tensor]) -> bool:
    """True when a call may skip the custom-op dispatch (see the module docstring)."""
    if _is_compiling() or _dispatch_stack_len():
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return True


def check_tensor_args(op: str, bias: object, sg: object = None) -> None:
    """The GEMM wrappers' bias (a tensor or None) and sg (a tensor, where the op has one) before the
    custom op, whose schema error would be five lines. Only the non-eager path needs it: eager()
    is False for any argument that is not a plain tensor or None. A dtype here is out_dtype passed
    one position too early."""
    for name, v, want, after in (("sg", sg, "a tensor [N, K // group_size] (the group scales)", "bias"),
                                 ("bias", bias, "a tensor [N] or None", None)):
        if v is None or isinstance(v, torch.Tensor):
            continue
        if isinstance(v, torch.dtype):
            nxt = "out_dtype is the next argument" if after is None else f"{after} and out_dtype come after it"
            raise TypeError(f"{op}: {name} must be {want}, got {v} ({nxt}: pass out_dtype={v})")
        raise TypeError(f"{op}: {name} must be {want}, got {type(v).__name__}: {str(v)[:60]}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def desc(t: torch.Tensor) -> str:
    """'int8 [4096, 4096]': how a message shows what it got."""
    return f"{dtype_name(t.dtype)} {list(t.shape)}"


def check_finite(op: str, name: str, t: Optional[torch.Tensor]) -> None:
    """Syncs the device: debug checks and offline paths only."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{op}: {name} has {bad} non-finite values (NaN/Inf) out of {t.numel()}")


def check_int32_sizes(op: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if v > INT32_MAX:
            raise ValueError(f"{op}: {name} must be < 2**31 (the kernels index with 32-bit ints), got {v}")


def check_same_device(op: str, first: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{op}: all tensors must be on one device, but {first} is on {ref.device} "
                f"and {name} is on {t.device}"
            )


def check_contiguous(op: str, **tensors: Optional[torch.Tensor]) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be contiguous (row-major), got {desc(t)} with strides "
                f"{tuple(t.stride())}; pass {name}.contiguous()"
            )


def has_row_layout(x: torch.Tensor) -> bool:
    """True if the rows of a 2-D x can be read in place: unit stride along K, rows not overlapping."""
    M, K = x.shape
    return (K <= 1 or x.stride(1) == 1) and (M <= 1 or x.stride(0) >= K)


def check_act_matrix(op: str, x: object) -> None:
    """x: a bfloat16 / float16 / float32 tensor [M, K] with its rows in place (check_rows)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor [M, K], got {type(x).__name__}")
    if x.dtype not in DTYPE_CODE:
        raise TypeError(f"{op}: x must be bfloat16, float16 or float32 [M, K], got {desc(x)}")
    if x.dim() != 2:
        raise ValueError(
            f"{op}: x must be 2-D [M, K] (flatten leading dims with x.reshape(-1, x.shape[-1])), got {desc(x)}"
        )
    check_rows(op, "x", x)


def check_rows(op: str, name: str, x: torch.Tensor) -> None:
    """x [M, K] must have unit stride along K and rows that do not overlap (row stride >= K)."""
    M, K = x.shape
    if K > 1 and x.stride(1) != 1:
        raise ValueError(
            f"{op}: {name} must have unit stride along K ({name}.stride(1) == 1), got {desc(x)} with "
            f"strides {tuple(x.stride())}; pass {name}.contiguous()"
        )
    if M > 1 and x.stride(0) < K:
        raise ValueError(
            f"{op}: rows of {name} must not overlap ({name}.stride(0) >= K == {K}), got {desc(x)} with "
            f"strides {tuple(x.stride())}; pass {name}.contiguous()"
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
# Device facts, computed once per device index.

_capability: dict[int, tuple[int, int]] = {}


def require_cuda_kernels(op: str, device: torch.device) -> tuple[int, int]:
    """Raise unless zqkernels can run CUDA kernels on `device`; returns its compute capability."""
    if device.type != "cuda":
        raise RuntimeError(
            f"{op}: tensors on {device.type} are not supported; pass CUDA tensors (kernels) or CPU "
            "tensors (pure-torch reference)"
        )
    if _ext._C is None:
        raise RuntimeError(f"{op}: {_ext.no_kernels_reason()}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    cc = _capability.get(index)
    if cc is None:
        cc = _capability[index] = torch.cuda.get_device_capability(index)
    if cc < (8, 0):
        raise RuntimeError(
            f"{op}: the zqkernels kernels need compute capability >= 8.0 (Ampere or newer), "
            f"{device} has {cc[0]}.{cc[1]}"
        )
    return cc


def current_stream(index: int) -> int:
    """The raw cudaStream_t of torch's current stream on device `index` (no Stream object built)."""
    return torch.cuda.current_stream(index).cuda_stream


if hasattr(torch._C, "_cuda_getCurrentRawStream"):  # CUDA builds of torch: ~10x cheaper
    current_stream = torch._C._cuda_getCurrentRawStream  # noqa: F811


# ------------------------------------------------------------------------------------------------
# Scratch for a layer's internal temporaries (QLinear's quantized activations and scales): one
# buffer per (device, stream), reused by eager calls so that a small layer pays no allocations for
# them. Stream order makes reuse safe on one stream (each kernel reading the previous call's
# scratch has finished before the next call's quantize kernel, launched normally, starts); a
# replaced buffer goes back to torch's caching allocator, which reuses it only in stream order.
# Never used while a CUDA graph is being captured (the graph's private pool allocates instead),
# nor above SCRATCH_MAX_BYTES (large calls: an allocation is negligible next to the kernels).
SCRATCH_MAX_BYTES = 16 << 20
_scratch_bufs: dict[tuple[int, int], torch.Tensor] = {}
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", lambda: False)


def scratch_ptr(index: int, stream: int, nbytes: int, like: torch.Tensor) -> int:
    """Address of >= nbytes of device scratch for (device, stream), or 0 if none may be used."""
    if nbytes > SCRATCH_MAX_BYTES or _capturing():
        return 0
    key = (index, stream)
    buf = _scratch_bufs.get(key)
    if buf is None or buf.numel() < nbytes:
        size = max(nbytes, 1 << 16, 2 * buf.numel() if buf is not None else 0)
        buf = like.new_empty((min(size, SCRATCH_MAX_BYTES),), dtype=torch.uint8)
        _scratch_bufs[key] = buf
    return buf.data_ptr()
