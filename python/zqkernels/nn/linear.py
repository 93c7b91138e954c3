"""QLinear: a quantized drop-in for nn.Linear. The module holds state and checks; a per-scheme
handler (``SCHEMES``) creates the buffers, quantizes float weights, and computes the forward.
New schemes (FP8, W4A8, group-wise) add a handler, not a module.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from .. import _ext
from ..ops import _common as c
from ..ops.gemm import _int8_gemm_cuda, _plan, fp8_gemm, int8_gemm
from ..ops.group import w8a8_group_gemm
from ..ops.quantize import _cuda_ready, _quantize_cuda, quantize_per_token, quantize_weight
from ..ops.w4a8 import w4a8_fp_gemm, w4a8_gemm
from ..reference.quantize import INT8_MAX_GROUP, _check_alpha, _check_alpha8

__all__ = [
    "QLinear",
    "SCHEMES",
    "SchemeHandler",
    "W8A8",
    "FP8",
    "W4A8FP",
    "W4A8",
    "W8A8Group",
    "is_conv1d",
    "linear_from_conv1d",
]

# The CUDA GEMM stores output rows in 16-byte vectors, so it needs N % 8 == 0. QLinear meets that for
# any out_features by keeping its weight rows padded up to a multiple of 8 (zero weights, zero
# scales, zero bias: the padded channels compute exactly 0 and are sliced off). The padding is the
# same on every device, so a state dict moves freely between CPU and GPU modules.
N_ALIGN = 8
_BITS_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # see QLinear._apply
_X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_STATE_VERSION = 1


def _padded(n: int) -> int:
    return (n + N_ALIGN - 1) // N_ALIGN * N_ALIGN


class SchemeHandler:
    """What a quantization scheme supplies to QLinear."""

    name: str = ""
    description: str = ""
    # Per-layer options this scheme takes as QLinear keyword arguments (QLinear(..., group_size=128));
    # passing any other option (not None) raises. configure() checks and stores them on the module.
    options: tuple[str, ...] = ()
    # Per-layer values recorded in the state's _extra_state that a checkpoint brings along instead of
    # having to match (they say how the weights were quantized, not the buffers' shapes or dtypes):
    # e.g. alpha and max_scale of the integer group scales. Not in here: checked on load.
    loaded: tuple[str, ...] = ()
    # Floating-point buffers whose dtype is part of the format (scales the kernels read as float32,
    # fp8 weights): Module.to(dtype) / .half() must not cast them (QLinear._apply).
    fixed_dtype_buffers: tuple[str, ...] = ("weight_scale",)

    def configure(self, m: "QLinear", options: dict[str, Any]) -> None:
        """Check the layer's shape against the scheme's rules and store its options on `m` (as plain
        attributes; they are recorded in the state's _extra_state). Called before create_buffers."""

    def describe(self, m: "QLinear") -> str:
        """The layer's options for extra_repr ("" when none)."""
        return ""

    def load_extra_state(self, m: "QLinear", state: dict[str, Any]) -> None:
        """Take the ``loaded`` values from a checkpoint's _extra_state (absent keys: None)."""
        for key in self.loaded:
            setattr(m, key, state.get(key))

    def create_buffers(self, m: "QLinear", rows: int, bias: bool, dtype: torch.dtype, device) -> None:
        raise NotImplementedError

    def load_float(self, m: "QLinear", weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        raise NotImplementedError

    def weight_format(self, m: "QLinear") -> Optional[dict[str, Any]]:
        """The ``quantize_weight`` keyword arguments of the layer's weight format (what a
        ``weight_quantizer``, e.g. GPTQ, must produce; load_float then takes its result through
        ``quantized=``). None: the scheme takes no weight_quantizer."""
        return None

    def apply(self, m: "QLinear", x2: torch.Tensor) -> torch.Tensor:
        """x2 [M, in_features] (row layout) -> y [M, padded out_features] in x2's dtype."""
        raise NotImplementedError

    # Fused blocks (nn/blocks.py) quantize activations inside the kernel that produces them (a
    # norm or an activation) and hand them over already quantized, in the scheme's format.
    act_format: str = ""  # "int8_per_token": (q int8 [M, K], s float32 [M]) from ops/fused.py

    def apply_quantized(self, m: "QLinear", xq: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Pre-quantized activations -> y [M, padded out_features] in `dtype`."""
        raise NotImplementedError


class W8A8(SchemeHandler):
    """int8 per-token dynamic activations x int8 per-channel weights (ZeroQuant's W8A8).

    State: ``weight_q`` int8 [Np, K], ``weight_scale`` float32 [Np], ``bias`` [Np] in the model's
    dtype (or None). forward: ``quantize_per_token`` then ``int8_gemm`` with the output in x's dtype;
    the int8 dot products are exact (int32), scales and bias are applied in fp32 and rounded once to
    bf16 / fp16 / fp32 (an fp32 model gets an fp32 output from fp32 epilogue math).
    """

    name = "w8a8"
    description = "int8 per-token activations x int8 per-channel weights"
    act_format = "int8_per_token"

    def create_buffers(self, m, rows, bias, dtype, device):
        m.register_buffer("weight_q", torch.zeros((rows, m.in_features), dtype=torch.int8, device=device))
        m.register_buffer("weight_scale", torch.zeros((rows,), dtype=torch.float32, device=device))
        m.register_buffer("bias", torch.zeros((rows,), dtype=dtype, device=device) if bias else None)

    def load_float(self, m, weight, bias, quantized=None):
        # quantized: precomputed (wq int8 [N, K], sw float32 [N]) of `weight` (e.g. GPTQ's), checked
        # by QLinear.from_linear; None rounds to nearest.
        wq, sw = quantize_weight(weight, bits=8) if quantized is None else quantized
        rows = _padded(m.out_features)
        pad = rows - m.out_features
        if pad:  # zero rows: padded channels compute exactly 0 (see N_ALIGN)
            wq = torch.nn.functional.pad(wq, (0, 0, 0, pad))
            sw = torch.nn.functional.pad(sw, (0, pad))
        m.weight_q = wq
        m.weight_scale = sw
        if bias is not None:
            m.bias = torch.nn.functional.pad(bias.detach(), (0, pad)) if pad else bias.detach().clone()
        else:
            m.bias = None

    def weight_format(self, m):
        return {"fmt": "int8"}

    def apply(self, m, x2):
        dtype = x2.dtype
        wq, sw, bias = _w8a8_state(m, dtype)
        if x2.is_cuda and m._cuda_shapes_ok and x2.shape[0] <= c.INT32_MAX and c.eager(x2, wq):
            # Eager fast path: the module's own buffers are known-good; only x needs checking.
            y = _w8a8_scratch(x2, wq, sw, bias)
            if y is not None:
                return y
            xq, sx = _quantize_cuda(x2)
            return _int8_gemm_cuda(xq, wq, sx, sw, bias, dtype, "auto", None)
        xq, sx = quantize_per_token(x2)
        return int8_gemm(xq, wq, sx, sw, bias, out_dtype=dtype)

    def apply_quantized(self, m, xq, sx, dtype):
        wq, sw, bias = _w8a8_state(m, dtype)
        if xq.is_cuda and m._cuda_shapes_ok and c.eager(xq, sx, wq):
            # xq / sx come from our own fused kernels (right dtype, layout and device).
            return _int8_gemm_cuda(xq, wq, sx, sw, bias, dtype, "auto", None)
        return int8_gemm(xq, wq, sx, sw, bias, out_dtype=dtype)


def _w8a8_state(m: "QLinear", dtype: torch.dtype):
    """(weight_q, weight_scale, bias in `dtype`) of a W8A8 QLinear, read straight from _buffers
    (Module.__getattr__ costs ~0.5 us per buffer)."""
    buffers = m._buffers
    bias = buffers["bias"]
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return buffers["weight_q"], buffers["weight_scale"], bias


def _w8a8_scratch(
    x2: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor]
) -> Optional[torch.Tensor]:
    """The eager W8A8 forward with xq / sx (and any GEMM workspace) in per-stream scratch
    (ops/_common.scratch_ptr): two launches and one allocation (the output). None when scratch
    may not be used (graph capture, large M); the caller then allocates them."""
    M, K = x2.shape
    if M == 0 or K == 0:
        return None
    index = x2.get_device()
    if index not in _cuda_ready:
        return None  # the first call on a device goes through the checked path
    stream = c.current_stream(index)
    N = wq.shape[0]
    dtype = x2.dtype
    kid, ws = _plan(index, x2, "auto", None, dtype, M, N, K)
    off_sx = (M * K + 15) // 16 * 16
    off_ws = off_sx + (4 * M + 15) // 16 * 16
    base = c.scratch_ptr(index, stream, off_ws + ws, x2)
    if base == 0:
        return None
    C = _ext._C
    C.quantize_per_token(x2.data_ptr(), c.DTYPE_CODE[dtype], x2.stride(0), base, base + off_sx, M, K, index, stream)
    out = x2.new_empty((M, N), dtype=dtype)
    C.gemm_run(
        kid, base, K, wq.data_ptr(), K, base + off_sx, sw.data_ptr(),
        0 if bias is None else bias.data_ptr(), out.data_ptr(), M, N, K,
        base + off_ws if ws > 0 else 0, ws, index, stream,
    )
    return out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [n, ...] with zero rows appended up to `rows` (any dtype, fp8 included)."""
    if t.shape[0] == rows:
        return t.contiguous()
    out = t.new_zeros((rows, *t.shape[1:]))
    out[: t.shape[0]] = t
    return out


def _load_bias(m: "QLinear", bias: Optional[torch.Tensor], rows: int) -> None:
    m.bias = None if bias is None else _pad_rows(bias.detach(), rows).clone()


def _fp8_state(m: "QLinear", dtype: torch.dtype):
    buffers = m._buffers
    bias = buffers["bias"]
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    return buffers, bias


_FP8 = torch.float8_e4m3fn


class FP8(SchemeHandler):
    """FP8 E4M3 per-token dynamic activations x FP8 E4M3 per-channel weights (docs/FP8.md).

    State: ``weight_q`` float8_e4m3fn [Np, K], ``weight_scale`` float32 [Np], ``bias`` [Np] in the
    model's dtype (or None). forward: ``quantize_per_token(x, dtype=torch.float8_e4m3fn)`` then
    ``fp8_gemm`` (accumulate="accurate", the default) with the output in x's dtype (fp32 x: the GEMM
    writes bf16, widened to fp32, and the bias is added in fp32). Rows are padded
    to a multiple of 8 as for w8a8 (fp8_gemm needs N % 8 == 0 on CUDA).
    """

    name = "fp8"
    description = "fp8 e4m3 per-token activations x fp8 e4m3 per-channel weights"
    act_format = "fp8_per_token"  # (q float8_e4m3fn [M, K], s float32 [M]) from quantize_per_token
    fixed_dtype_buffers = ("weight_q", "weight_scale")

    def create_buffers(self, m, rows, bias, dtype, device):
        m.register_buffer("weight_q", torch.zeros((rows, m.in_features), dtype=_FP8, device=device))
        m.register_buffer("weight_scale", torch.zeros((rows,), dtype=torch.float32, device=device))
        m.register_buffer("bias", torch.zeros((rows,), dtype=dtype, device=device) if bias else None)

    def weight_format(self, m):
        return {"fmt": "fp8"}

    def load_float(self, m, weight, bias, quantized=None):
        wq, sw = quantize_weight(weight, fmt="fp8") if quantized is None else quantized
        rows = _padded(m.out_features)
        m.weight_q = _pad_rows(wq, rows)
        m.weight_scale = _pad_rows(sw, rows)
        _load_bias(m, bias, rows)

    def apply(self, m, x2):
        xq, sx = quantize_per_token(x2, dtype=_FP8)
        return self.apply_quantized(m, xq, sx, x2.dtype)

    def apply_quantized(self, m, xq, sx, dtype):
        if dtype == torch.float32:
            # fp8_gemm writes bf16 / fp16 only: an fp32 model gets the bf16 GEMM output widened, with
            # the bias added in fp32. bf16's rounding (2^-9 relative) is far below the fp8 operands'
            # quantization error (E4M3: 2^-4 relative per element).
            wq, sw, bias = m._buffers["weight_q"], m._buffers["weight_scale"], m._buffers["bias"]
            y = fp8_gemm(xq, wq, sx, sw, None, out_dtype=torch.bfloat16).float()
            return y if bias is None else y.add_(bias.float())
        buffers, bias = _fp8_state(m, dtype)
        return fp8_gemm(xq, buffers["weight_q"], sx, buffers["weight_scale"], bias, out_dtype=dtype)


W4A8FP_GROUP_SIZES = (32, 64, 128)
W4A8FP_POLICIES = ("m2", "m1", "free")


class W4A8FP(SchemeHandler):
    """ZeroQuant-FP W4A8: FP4 E2M1 weights with group scales x FP8 E4M3 per-token activations.

    Options (QLinear keyword arguments, recorded in the state): ``group_size`` 32, 64, 128
    (default) or in_features (one group per row: per channel), and ``scale_policy`` "m2"
    (default), "m1" (power-of-two group ratios, int8 exponents) or "free" (float32 ratios); see
    docs/FP8.md. Shape rules of the packed layout m16k64: out_features % 16 == 0 and in_features %
    64 == 0 (and group_size divides in_features); other shapes raise ValueError at construction.

    State: ``weight_q`` uint8 [N, K // 2] (packed FP4 codes), ``weight_scale`` float32 [N],
    ``weight_group_scale`` [N, K // group_size] (int8 exponents for m1 / m2, float32 ratios for
    free), ``bias`` [N] in the model's dtype (or None). forward: ``quantize_per_token(x,
    dtype=torch.float8_e4m3fn)`` then ``w4a8_fp_gemm`` with the output in x's dtype.
    """

    name = "w4a8-fp"
    description = "fp8 e4m3 per-token activations x fp4 e2m1 group-wise weights"
    act_format = "fp8_per_token"
    options = ("group_size", "scale_policy")
    fixed_dtype_buffers = ("weight_scale", "weight_group_scale")

    def configure(self, m, options):
        N, K = m.out_features, m.in_features
        g = options.get("group_size")
        g = 128 if g is None else g
        if isinstance(g, bool) or not isinstance(g, int) or (g not in W4A8FP_GROUP_SIZES and g != K):
            raise ValueError(
                f"QLinear: scheme 'w4a8-fp' needs group_size in {W4A8FP_GROUP_SIZES} or in_features ({K}: "
                f"one group per row), got {g!r}"
            )
        policy = options.get("scale_policy")
        policy = "m2" if policy is None else policy
        if not isinstance(policy, str) or policy.lower() not in W4A8FP_POLICIES:
            raise ValueError(f"QLinear: scheme 'w4a8-fp' needs scale_policy in {W4A8FP_POLICIES}, got {policy!r}")
        if N % 16 != 0 or K % 64 != 0:
            raise ValueError(
                f"QLinear: scheme 'w4a8-fp' (packed FP4 layout m16k64) needs out_features % 16 == 0 and "
                f"in_features % 64 == 0, got a layer [out_features, in_features] = [{N}, {K}]; leave this "
                "layer in float (quantize_model(skip=...), quantize_(module_configs={name: None})) or use "
                "another scheme"
            )
        if K % g != 0:
            raise ValueError(
                f"QLinear: scheme 'w4a8-fp' needs group_size to divide in_features, got group_size {g} and a "
                f"layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in W4A8FP_GROUP_SIZES if K % s == 0]}"
            )
        m.group_size = g
        m.scale_policy = policy.lower()

    def describe(self, m):
        g = "per channel" if m.group_size == m.in_features else m.group_size
        return f"group_size={g}, scale_policy={m.scale_policy}"

    def create_buffers(self, m, rows, bias, dtype, device):
        K = m.in_features
        sg_dtype = torch.float32 if m.scale_policy == "free" else torch.int8
        m.register_buffer("weight_q", torch.zeros((rows, K // 2), dtype=torch.uint8, device=device))
        m.register_buffer("weight_scale", torch.zeros((rows,), dtype=torch.float32, device=device))
        m.register_buffer(
            "weight_group_scale", torch.zeros((rows, K // m.group_size), dtype=sg_dtype, device=device)
        )
        m.register_buffer("bias", torch.zeros((rows,), dtype=dtype, device=device) if bias else None)

    def weight_format(self, m):
        g = None if m.group_size == m.in_features else m.group_size  # None: quantize_weight's per channel
        return {"fmt": "fp4", "group_size": g, "scale": m.scale_policy}

    def load_float(self, m, weight, bias, quantized=None):
        if quantized is None:
            quantized = quantize_weight(weight, **self.weight_format(m))
        wq, sw, sg = quantized
        m.weight_q = wq.contiguous()
        m.weight_scale = sw.contiguous()
        m.weight_group_scale = sg.contiguous()
        _load_bias(m, bias, m.out_features)  # out_features % 16 == 0: no padded rows

    def apply(self, m, x2):
        xq, sx = quantize_per_token(x2, dtype=_FP8)
        return self.apply_quantized(m, xq, sx, x2.dtype)

    def apply_quantized(self, m, xq, sx, dtype):
        buffers, bias = _fp8_state(m, dtype)
        # float32 output is served by the streaming kernel only (ops/w4a8.py); other dtypes pick by M.
        path = "stream" if dtype == torch.float32 and xq.is_cuda else "auto"
        return w4a8_fp_gemm(
            xq, buffers["weight_q"], sx, buffers["weight_scale"], buffers["weight_group_scale"], bias,
            out_dtype=dtype, path=path,
        )


GROUP_SIZES = (32, 64, 128, 256)  # w4a8, w4a8-floatscale, w8a8-group (or in_features: per channel)
_INT_SCALES = ("int", "float")


class _IntGroup(SchemeHandler):
    """INT8 per-token activations x INT4 / INT8 weights with integer or float group scales (Integer
    Scale, docs/W4A8.md): the handlers W4A8 (w4a8, w4a8-floatscale) and W8A8Group (w8a8-group).

    Options: ``group_size`` 32, 64, 128 (default), 256 or in_features (one group per row), ``alpha``
    (integer scales: quantize_weight's multiplier, a power of two; None: its default). The state
    records ``max_scale``, the largest integer group scale (``int(sg.max())``, read once at
    conversion), which the forward passes to the GEMM so that its int32 accumulator is flushed only
    as often as that scale requires (None, e.g. in an empty layer: the GEMM assumes the largest
    scale allowed). alpha and max_scale come with a checkpoint (``loaded``).

    State: ``weight_q`` (W4A8: uint8 [N, K // 2] packed INT4, layout m16k32; W8A8Group: int8 [Np,
    K]), ``weight_scale`` float32 [N], ``weight_group_scale`` [N, K // group_size] (int32 integer
    scales or float32 ratios), ``bias`` [N] in the model's dtype (or None). forward:
    ``quantize_per_token(x)`` (int8) then the GEMM with the output in x's dtype.
    """

    act_format = "int8_per_token"
    fixed_dtype_buffers = ("weight_scale", "weight_group_scale")
    loaded = ("alpha", "max_scale")
    bits = 8
    fixed_scale: Optional[str] = None  # the scale kind of the scheme, None: the "scale" option

    def _scale(self, m) -> str:
        return self.fixed_scale if self.fixed_scale is not None else m.scale

    def _check_shape(self, N: int, K: int, g: int) -> None:
        raise NotImplementedError

    def configure(self, m, options):
        N, K = m.out_features, m.in_features
        name = self.name
        g = options.get("group_size")
        g = 128 if g is None else g
        if isinstance(g, bool) or not isinstance(g, int) or (g not in GROUP_SIZES and g != K):
            raise ValueError(
                f"QLinear: scheme {name!r} needs group_size in {GROUP_SIZES} or in_features ({K}: one group "
                f"per row), got {g!r}"
            )
        if self.fixed_scale is None:
            scale = options.get("scale")
            scale = "int" if scale is None else scale
            if scale not in _INT_SCALES:
                raise ValueError(f"QLinear: scheme {name!r} needs scale in {_INT_SCALES}, got {scale!r}")
            m.scale = scale
        scale = self._scale(m)
        alpha = options.get("alpha")
        if alpha is not None and scale != "int":
            raise ValueError(f"QLinear: alpha applies to integer scales (scale='int') only, got alpha={alpha!r} "
                             f"with scheme {name!r}, scale={scale!r}")
        self._check_shape(N, K, g)
        if alpha is not None:
            try:
                _check_alpha8("QLinear", alpha, g) if self.bits == 8 else _check_alpha("QLinear", alpha)
            except ValueError as e:
                raise ValueError(f"{e} (scheme {name!r})") from None
        m.group_size = g
        m.alpha = alpha
        m.max_scale = None

    def load_extra_state(self, m, state):
        alpha, max_scale = state.get("alpha"), state.get("max_scale")
        for key, v in (("alpha", alpha), ("max_scale", max_scale)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"QLinear.load_state_dict: the checkpoint's {key} must be None or a positive int, got {v!r}")
        if max_scale is not None and self._scale(m) != "int":
            raise ValueError("QLinear.load_state_dict: the checkpoint has max_scale but this layer has float scales")
        m.alpha = alpha
        m.max_scale = max_scale

    def describe(self, m):
        g = "per channel" if m.group_size == m.in_features else m.group_size
        out = f"group_size={g}"
        if self.fixed_scale is None:
            out += f", scale={m.scale}"
        if self._scale(m) == "int":
            out += f", alpha={'default' if m.alpha is None else m.alpha}, max_scale={m.max_scale}"
        return out

    def _weight_buffer(self, m, rows: int, device) -> torch.Tensor:
        raise NotImplementedError

    def create_buffers(self, m, rows, bias, dtype, device):
        K = m.in_features
        sg_dtype = torch.int32 if self._scale(m) == "int" else torch.float32
        m.register_buffer("weight_q", self._weight_buffer(m, rows, device))
        m.register_buffer("weight_scale", torch.zeros((rows,), dtype=torch.float32, device=device))
        m.register_buffer(
            "weight_group_scale", torch.zeros((rows, K // m.group_size), dtype=sg_dtype, device=device)
        )
        m.register_buffer("bias", torch.zeros((rows,), dtype=dtype, device=device) if bias else None)

    def weight_format(self, m):
        g = None if m.group_size == m.in_features else m.group_size  # None: quantize_weight's per channel
        return {"bits": self.bits, "group_size": g, "scale": self._scale(m), "alpha": m.alpha}

    def load_float(self, m, weight, bias, quantized=None):
        scale = self._scale(m)
        if quantized is None:
            quantized = quantize_weight(weight, **self.weight_format(m))
        wq, sw, sg = quantized
        rows = m.weight_scale.shape[0]  # W8A8Group pads the rows to a multiple of 8 (zero scales)
        m.weight_q = _pad_rows(wq, rows)
        m.weight_scale = _pad_rows(sw, rows)
        m.weight_group_scale = _pad_rows(sg, rows)
        _load_bias(m, bias, rows)
        # one sync, at conversion: the forward passes it to the GEMM as a Python int
        m.max_scale = max(int(sg.max()), 1) if scale == "int" and sg.numel() else None

    def apply(self, m, x2):
        xq, sx = quantize_per_token(x2)
        return self.apply_quantized(m, xq, sx, x2.dtype)

    def _gemm(self):
        raise NotImplementedError

    def apply_quantized(self, m, xq, sx, dtype):
        buffers, bias = _fp8_state(m, dtype)
        return self._gemm()(
            xq, buffers["weight_q"], sx, buffers["weight_scale"], buffers["weight_group_scale"], bias,
            out_dtype=dtype, max_scale=m.max_scale,
        )


class W4A8(_IntGroup):
    """INT4 group-wise weights x INT8 per-token activations (Integer Scale, ``w4a8_gemm``): scheme
    "w4a8" (integer group scales) and "w4a8-floatscale" (float32 ratios, the baseline). Options:
    ``group_size``, ``alpha`` ("w4a8" only; a power of two in [1, 2^15]). Shape rules of the packed
    layout m16k32: out_features % 16 == 0, in_features % 64 == 0 and group_size dividing
    in_features; other shapes raise ValueError at construction. See ``_IntGroup`` for the state.
    """

    bits = 4

    def __init__(self, scale: str = "int") -> None:
        self.fixed_scale = scale
        self.name = "w4a8" if scale == "int" else "w4a8-floatscale"
        self.description = f"int8 per-token activations x int4 group-wise weights, {scale} group scales"
        self.options = ("group_size", "alpha") if scale == "int" else ("group_size",)
        self.loaded = ("alpha", "max_scale") if scale == "int" else ()

    def _check_shape(self, N, K, g):
        if N % 16 != 0 or K % 64 != 0:
            raise ValueError(
                f"QLinear: scheme {self.name!r} (packed INT4 layout m16k32) needs out_features % 16 == 0 and "
                f"in_features % 64 == 0, got a layer [out_features, in_features] = [{N}, {K}]; leave this "
                "layer in float (quantize_model(skip=...), quantize_(module_configs={name: None})) or use "
                "another scheme"
            )
        if K % g != 0:
            raise ValueError(
                f"QLinear: scheme {self.name!r} needs group_size to divide in_features, got group_size {g} and "
                f"a layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in GROUP_SIZES if K % s == 0]}"
            )

    def _weight_buffer(self, m, rows, device):
        return torch.zeros((rows, m.in_features // 2), dtype=torch.uint8, device=device)

    def _gemm(self):
        return w4a8_gemm



class W8A8Group(_IntGroup):
    """INT8 group-wise weights x INT8 per-token activations (``w8a8_group_gemm``): scheme
    "w8a8-group". Options: ``group_size``, ``scale`` "int" (default) or "float", ``alpha`` (integer
    scales; a power of two up to the INT8 bound of the group size: 32 -> 2048, 64 -> 1024, 128 ->
    512, 256 -> 256). The weights are not packed: any out_features (rows padded to a multiple of 8
    as for w8a8); in_features % 16 == 0 and group_size dividing it (per channel: in_features % 32
    == 0, the GEMM's group size being a multiple of 32). See ``_IntGroup`` for the state.
    """

    name = "w8a8-group"
    description = "int8 per-token activations x int8 group-wise weights"
    options = ("group_size", "scale", "alpha")
    bits = 8

    def _check_shape(self, N, K, g):
        if K % 16 != 0:
            raise ValueError(
                f"QLinear: scheme 'w8a8-group' needs in_features % 16 == 0 (16-byte rows), got a layer "
                f"[out_features, in_features] = [{N}, {K}]; leave this layer in float (quantize_model(skip=...), "
                "quantize_(module_configs={name: None})) or use another scheme"
            )
        if K % g != 0:
            raise ValueError(
                f"QLinear: scheme 'w8a8-group' needs group_size to divide in_features, got group_size {g} and a "
                f"layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in GROUP_SIZES if K % s == 0]}"
            )
        if g == K and (K % 32 != 0 or K > INT8_MAX_GROUP):
            raise ValueError(
                f"QLinear: scheme 'w8a8-group' per channel (group_size == in_features) needs in_features % 32 "
                f"== 0 and at most {INT8_MAX_GROUP} (the GEMM's group size is a multiple of 32 whose int32 sums "
                f"cannot overflow), got a layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in GROUP_SIZES if K % s == 0]}"
            )

    def _weight_buffer(self, m, rows, device):
        return torch.zeros((rows, m.in_features), dtype=torch.int8, device=device)

    def _gemm(self):
        return w8a8_group_gemm


SCHEMES: dict[str, SchemeHandler] = {
    "w8a8": W8A8(),
    "fp8": FP8(),
    "w4a8-fp": W4A8FP(),
    "w4a8": W4A8("int"),
    "w4a8-floatscale": W4A8("float"),
    "w8a8-group": W8A8Group(),
}
# Every per-layer option any scheme takes (QLinear / from_linear keyword arguments).
_OPTIONS = ("group_size", "scale_policy", "scale", "alpha")


def _handler(op: str, scheme: str) -> SchemeHandler:
    h = SCHEMES.get(scheme) if isinstance(scheme, str) else None
    if h is None:
        raise ValueError(f"{op}: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    return h


class QLinear(nn.Module):
    """Quantized linear layer: ``y = x @ w.T + b`` computed by a scheme (default "w8a8": int8
    per-channel weights x int8 per-token activations; "fp8": FP8 E4M3 weights and activations;
    "w4a8-fp": FP4 E2M1 group-wise weights x FP8 activations; "w4a8" / "w4a8-floatscale": INT4
    group-wise weights with integer / float group scales x int8 activations; "w8a8-group": INT8
    group-wise weights x int8 activations; see ``SCHEMES``).

    Per-layer options of a scheme are keyword arguments (``group_size=``: w4a8-fp, w4a8,
    w4a8-floatscale, w8a8-group; ``scale_policy=``: w4a8-fp; ``scale=``: w8a8-group; ``alpha=``:
    w4a8, w8a8-group; see ``W4A8FP``, ``W4A8``, ``W8A8Group``); giving one to a scheme that does not
    take it raises ValueError.

    Build it with ``QLinear.from_linear(linear)`` (weights quantized once, here), or construct an
    empty one and ``load_state_dict`` into it; the state holds no float weights. Weight rows are
    padded to a multiple of 8 (``Np``; the rows past out_features are zero), so any out_features
    runs on the CUDA kernels; in_features must be a multiple of 16 there. The state also records
    in_features / out_features / scheme, and ``load_state_dict`` rejects a checkpoint of another
    shape or scheme.

    forward(x): x [..., in_features] in bf16, fp16 or fp32 on the module's device; the output has
    x's dtype. Inference only: an x that requires grad (with grad mode on) raises.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: Union[torch.device, str, None] = None,
        scheme: str = "w8a8",
        *,
        group_size: Optional[int] = None,
        scale_policy: Optional[str] = None,
        scale: Optional[str] = None,
        alpha: Optional[int] = None,
    ) -> None:
        super().__init__()
        handler = _handler("QLinear", scheme)
        if bias and not dtype.is_floating_point:
            raise TypeError(f"QLinear: dtype (of the bias) must be a floating-point dtype, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = scheme
        self._handler = handler
        options = {"group_size": group_size, "scale_policy": scale_policy, "scale": scale, "alpha": alpha}
        for key, value in options.items():
            if value is not None and key not in handler.options:
                takes = sorted(n for n, h in SCHEMES.items() if key in h.options)
                raise ValueError(
                    f"QLinear: {key} applies to scheme {' / '.join(repr(t) for t in takes)} only, got "
                    f"{key}={value!r} with scheme {scheme!r}"
                )
        handler.configure(self, options)
        self._cuda_shapes_ok = self.in_features % 16 == 0
        handler.create_buffers(self, _padded(self.out_features), bias, dtype, device)
        # LoRC (ZeroQuant-V2 low-rank compensation, nn/lorc.py): y += (x @ lorc_a) @ lorc_b with
        # lorc_a [in_features, r], lorc_b [r, out_features]; None (and not in the state) when absent.
        self.register_buffer("lorc_a", None)
        self.register_buffer("lorc_b", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scheme: str = "w8a8",
        *,
        weight_quantizer: Optional[Any] = None,
        **options: Any,
    ) -> "QLinear":
        """Quantize an nn.Linear with `scheme`; keeps its device.

        weight_quantizer: optional callable(linear) or callable(linear, weight_format=...) ->
        the scheme's quantized weight or None, replacing its round-to-nearest weights (e.g. GPTQ,
        zqkernels.algorithms); None from it (or no callable) keeps the default. A callable with a
        ``weight_format`` parameter is given the layer's ``quantize_weight`` keyword arguments
        (``SchemeHandler.weight_format``: e.g. {"fmt": "int8"} for w8a8, {"fmt": "fp4",
        "group_size": 128, "scale": "m2"} for w4a8-fp); it must return what ``quantize_weight``
        returns for them ((wq, sw) or (wq, sw, sg), on the weight's device; checked). Every scheme
        takes one; a scheme whose handler has no weight_format raises NotImplementedError.
        options: the scheme's per-layer options (``group_size=``, ``scale_policy=``, ``scale=``,
        ``alpha=``; see the class docstring).
        """
        op = "QLinear.from_linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{op}: linear must be an nn.Linear, got {type(linear).__name__}")
        _handler(op, scheme)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"{op}: unexpected keyword argument(s) {unknown}")
        w = linear.weight.detach()
        if w.is_meta:
            raise ValueError(f"{op}: the linear's weight is on the meta device (no values to quantize)")
        if w.device.type == "cuda" and linear.in_features % 16 != 0:
            # The CUDA GEMM reads rows in 16-byte pieces.
            raise ValueError(
                f"{op}: in_features must be a multiple of 16 for the CUDA kernels, got "
                f"{linear.in_features}; pad the layer, or leave it in float (quantize_model(skip=...))"
            )
        has_bias = linear.bias is not None
        # Built on the meta device (no allocation), then given the real buffers.
        try:
            mod = cls(
                linear.in_features, linear.out_features, bias=has_bias, dtype=w.dtype, device="meta",
                scheme=scheme, **options,
            )
        except ValueError as e:
            raise ValueError(str(e).replace("QLinear:", f"{op}:", 1)) from None
        q = _run_weight_quantizer(op, weight_quantizer, linear, mod) if weight_quantizer is not None else None
        if q is None:
            mod._handler.load_float(mod, w, linear.bias)
        else:
            mod._handler.load_float(mod, w, linear.bias, quantized=_check_quantized(op, q, w, mod))
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "QLinear: training is not supported (quantized weights have no gradient and rounding is not "
                "differentiable); run inference under torch.no_grad() or torch.inference_mode(), or "
                "train the float nn.Linear and quantize afterwards"
            )
        if x.dtype not in _X_DTYPES:
            raise TypeError(f"QLinear: x must be bfloat16, float16 or float32, got {x.dtype}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"QLinear: x must be [..., in_features] with in_features == {self.in_features}, "
                f"got shape {list(shape)}"
            )
        w = self._buffers["weight_q"]
        if x.get_device() != w.get_device() or x.is_cuda != w.is_cuda:
            raise ValueError(
                f"QLinear: x is on {x.device} but the layer's weights are on {w.device}; "
                "move one of them (module.to(device) or x.to(device))"
            )
        K = self.in_features
        x2 = x if len(shape) == 2 else x.reshape(-1, K)  # a view whenever possible
        if not c.has_row_layout(x2):
            x2 = x2.contiguous()  # rows must be K-contiguous and not overlap (quantize_per_token)
        y = self._handler.apply(self, x2)
        n = self.out_features
        if self._buffers["lorc_a"] is not None:  # the no-LoRC path pays this one dict read
            y = self._lorc_add(x2, y)
        elif y.shape[1] != n:
            # Padded rows (out_features % 8 != 0): drop them; contiguous like nn.Linear's output.
            y = y[:, :n].contiguous()
        return y if len(shape) == 2 else y.view(*shape[:-1], n)

    def forward_quantized(self, xq: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The layer on activations already quantized in the scheme's format (``act_format``: for
        w8a8, ``(xq int8 [M, in_features], sx float32 [M])`` as ``quantize_per_token`` or the fused
        ops of ``zqkernels.ops.fused`` return them; for fp8 and w4a8-fp, ``(xq float8_e4m3fn [M,
        in_features], sx float32 [M])`` from ``quantize_per_token(x, dtype=torch.float8_e4m3fn)``);
        output [M, out_features] in `dtype`. Used by the
        fused blocks (zqkernels.nn.blocks); no checks beyond the GEMM's own."""
        y = self._handler.apply_quantized(self, xq, sx, dtype)
        if self._buffers["lorc_a"] is not None:
            # Fused blocks hand over only the quantized input: the LoRC term uses deq(xq) = xq * sx,
            # so it differs from forward()'s (which uses float x) by E_r (x - deq(xq)), a
            # second-order error (weight error x activation rounding).
            return self._lorc_add(xq.to(torch.float32).mul_(sx.view(-1, 1)).to(dtype), y)
        n = self.out_features
        return y if y.shape[1] == n else y[:, :n].contiguous()

    def _lorc_add(self, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y [M, Np] (the GEMM output, maybe padded) + (x2 @ lorc_a) @ lorc_b -> [M, out_features],
        contiguous, in y's dtype. Two small torch GEMMs after the int8 one; fusing the rank-r update
        into the GEMM's output write is future work (not measured here)."""
        a, b = self._buffers["lorc_a"], self._buffers["lorc_b"]
        dtype = y.dtype
        if a.dtype != dtype:
            a, b = a.to(dtype), b.to(dtype)
        n = self.out_features
        if y.shape[1] != n:
            y = y[:, :n]
        if x2.dtype != dtype:
            x2 = x2.to(dtype)
        return torch.addmm(y, x2 @ a, b)  # out of place: a new contiguous [M, n]

    @property
    def lorc_rank(self) -> int:
        """The LoRC rank r (0: no LoRC)."""
        a = self._buffers.get("lorc_a")
        return 0 if a is None else int(a.shape[1])

    def init_lorc(self, rank: int, dtype: Optional[torch.dtype] = None) -> "QLinear":
        """Allocate zero LoRC factors of `rank` (lorc_a [in_features, rank], lorc_b [rank,
        out_features]) so that ``load_state_dict`` can fill them from a LoRC checkpoint; rank 0
        removes them. ``add_lorc`` computes real ones from the float weight."""
        rank = int(rank)
        if rank < 0 or rank > min(self.in_features, self.out_features):
            raise ValueError(
                f"QLinear.init_lorc: rank must be in [0, min(in_features, out_features)] = "
                f"[0, {min(self.in_features, self.out_features)}], got {rank}"
            )
        if rank == 0:
            self.lorc_a = None
            self.lorc_b = None
            return self
        w = self._buffers["weight_q"]
        if dtype is None:
            bias = self._buffers.get("bias")
            dtype = bias.dtype if bias is not None else torch.bfloat16
        self.lorc_a = torch.zeros((self.in_features, rank), dtype=dtype, device=w.device)
        self.lorc_b = torch.zeros((rank, self.out_features), dtype=dtype, device=w.device)
        return self

    def add_lorc(self, weight_float: torch.Tensor, rank: int = 8, dtype: Optional[torch.dtype] = None) -> dict:
        """ZeroQuant-V2 LoRC: factor the quantization error of `weight_float` ([out_features,
        in_features], the float weight this layer was quantized from) at `rank`; see
        ``zqkernels.nn.lorc.lorc_factors``. Returns {"rank", "bytes", "weight_bytes", ...}."""
        from .lorc import apply_lorc

        return apply_lorc(self, weight_float, rank, dtype=dtype)

    # --- state: the buffers plus the layer's identity, checked on load --------------------------
    def get_extra_state(self) -> dict[str, Any]:
        state = {
            "version": _STATE_VERSION,
            "scheme": self.scheme,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }
        for key in (*self._handler.options, *self._handler.loaded):  # per-layer options and values
            state[key] = getattr(self, key)
        if self._buffers.get("lorc_a") is not None:
            state["lorc_rank"] = self.lorc_rank  # absent when 0: older checkpoints read as rank 0
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "out_features" not in state:
            raise ValueError(f"QLinear.load_state_dict: unrecognised _extra_state {state!r}")
        mine = self.get_extra_state()
        loaded = self._handler.loaded
        checked = [k for k in self._handler.options if k not in loaded]
        for key in ("scheme", "in_features", "out_features", *checked):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"QLinear.load_state_dict: the checkpoint has {key}={state.get(key)!r} but this layer "
                    f"has {key}={mine[key]!r}; build the QLinear with the checkpoint's shape, scheme and "
                    "options"
                )
        theirs, ours = int(state.get("lorc_rank", 0)), self.lorc_rank
        if theirs != ours:
            raise ValueError(
                f"QLinear.load_state_dict: the checkpoint has LoRC rank {theirs} but this layer has rank "
                f"{ours}; call layer.init_lorc({theirs}) before loading"
            )
        self._handler.load_extra_state(self, state)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() / .bfloat16() cast every floating-point buffer, but the kernels
        # read float32 scales (and fp8 weights) and a cast would lose precision or change the
        # format. Hand fn those buffers' bits as integers of the same width (integer tensors only
        # move devices), then view them back.
        buffers = self._buffers
        saved: dict[str, tuple[torch.dtype, torch.dtype]] = {}
        for key in self._handler.fixed_dtype_buffers:
            t = buffers.get(key)
            if t is not None and t.is_floating_point():
                bits = _BITS_DTYPE[t.element_size()]
                saved[key] = (t.dtype, bits)
                buffers[key] = t.view(bits)
        try:
            return super()._apply(fn, recurse)
        finally:
            for key, (dtype, bits) in saved.items():
                t = buffers[key]
                if t is not None and t.dtype == bits:
                    buffers[key] = t.view(dtype)

    def extra_repr(self) -> str:
        pad = _padded(self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scheme={self.scheme} ({self._handler.description})"
            + (f", {self._handler.describe(self)}" if self._handler.options else "")
            + (f", weight rows padded to {pad}" if pad != self.out_features else "")
            + (f", lorc_rank={self.lorc_rank}" if self.lorc_rank else "")
        )


def _run_weight_quantizer(op: str, quantizer: Any, linear: nn.Module, mod: "QLinear") -> Any:
    """quantizer(linear), or quantizer(linear, weight_format=...) when it takes that parameter;
    NotImplementedError for a scheme without weight_format."""
    fmt = mod._handler.weight_format(mod)
    if fmt is None:
        raise NotImplementedError(
            f"{op}: scheme {mod.scheme!r} does not take a weight_quantizer (its handler defines no "
            "weight_format); quantize it without one"
        )
    import inspect

    try:
        params = inspect.signature(quantizer).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "weight_format" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return quantizer(linear, weight_format=dict(fmt)) if takes else quantizer(linear)


def _check_quantized(op: str, q: Any, w: torch.Tensor, mod: Optional["QLinear"] = None) -> tuple:
    """A weight_quantizer's result: the tensors of ``quantize_weight`` for the layer's format, i.e.
    the buffers weight_q, weight_scale (and weight_group_scale) of `mod` with out_features rows
    (w8a8: (wq int8 [N, K], sw float32 [N])), on w's device."""
    N, K = w.shape
    want: list[tuple[torch.dtype, tuple]] = [(torch.int8, (N, K)), (torch.float32, (N,))]
    if mod is not None:
        want = []
        for key in ("weight_q", "weight_scale", "weight_group_scale"):
            b = mod._buffers.get(key)
            if b is not None:
                want.append((b.dtype, (N, *b.shape[1:])))
    ok = isinstance(q, tuple) and len(q) == len(want) and all(isinstance(t, torch.Tensor) for t in q)
    if ok:
        ok = all(
            t.dtype == dt and tuple(t.shape) == shape and t.device == w.device for t, (dt, shape) in zip(q, want)
        )
    if not ok:
        got = [
            f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            for t in q
        ] if isinstance(q, tuple) else type(q).__name__
        names = ("wq", "sw", "sg")
        expect = ", ".join(f"{n} {str(dt).replace('torch.', '')} {list(shape)}" for n, (dt, shape) in zip(names, want))
        raise TypeError(f"{op}: weight_quantizer must return ({expect}) on {w.device}, got {got}")
    return tuple(t.contiguous() for t in q)


def is_conv1d(m: nn.Module) -> bool:
    """HF transformers' Conv1D (GPT-2 style): y = x @ weight + bias with weight [in, out]."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def linear_from_conv1d(m: nn.Module) -> nn.Linear:
    """An nn.Linear computing what the HF Conv1D `m` computes (weight transposed to [out, in]; the
    tensors are views of m's, no copy)."""
    w = m.weight.detach().t()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    lin.bias = nn.Parameter(m.bias.detach(), requires_grad=False) if m.bias is not None else None
    return lin
