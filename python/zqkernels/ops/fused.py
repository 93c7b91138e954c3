"""Row ops fused with token-wise INT8 or FP8 E4M3 quantization (kernel: src/cuda/row_quant.cu).

Each op reads its inputs once and writes the quantized activations (and their per-row scales) that
the next GEMM consumes (int8 by default; FP8 E4M3 with ``dtype=torch.float8_e4m3fn``, for the FP8
GEMMs), instead of writing a bf16 intermediate that ``quantize_per_token`` reads back. The math
is the unfused sequence's, computed in fp32 (docs/FUSED.md):

    rmsnorm_quant(x, w, eps)                    -> quant(x * rsqrt(mean(x^2) + eps) * w)
    layernorm_quant(x, w, b, eps)               -> quant(layer_norm(x) * w + b)
    add_rmsnorm_quant(x, res, w, eps)           -> quant(rmsnorm(x + res)), and x + res
    add_layernorm_quant(x, res, w, b, eps, residual_out="sum" | "normed")
                                                -> quant(layer_norm(x + res)), and x + res (pre-LN)
                                                   or the normalised row (post-LN)
    bias_gelu_quant(y, bias, approximate)       -> quant(gelu(y + bias))
    silu_mul_quant(gate_up)                     -> quant(silu(gate) * up), gate_up = [gate | up]
    gelu_mul_quant(gate_up, approximate)        -> quant(gelu(gate) * up) (GeGLU: Gemma's tanh GeLU)

``quant`` returns ``(q [M, K] int8 or float8_e4m3fn, s float32 [M])`` with exactly
``quantize_per_token``'s rounding for that dtype. With ``group_size=g`` (32, 64 or 128; FP8 only)
every op quantizes per token per group of g channels instead (DeepSeek-V3 / Qwen3-FP8 block-scaled
activations, ``quantize_per_token_group``'s math) and s is float32 [M, K // g] stored M-major
(strides (1, round_up(M, 4)); docs/FUSED.md). ``row_quant`` is any of them by its parts.
Inputs are bf16, fp16 or fp32 [M, K] with unit stride along K; weight / bias are [K] in any float
dtype (float32 avoids a conversion per call). CPU tensors run ``zqkernels.reference.fused``; CUDA
tensors the kernel. Each op is a ``torch.library`` custom op (torch.compile, export, CUDA graphs);
eager calls on plain tensors skip the dispatcher.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _ext
from ..reference.fused import GATED_OPS, RESIDUAL_MODES, ROW_OPS, row_quant_ref
from ..reference.token_group import (
    TOKEN_GROUP_SIZES,
    empty_group_scales,
    row_quant_group_ref,
    scale_rows_padded,
)
from . import _common as c

__all__ = [
    "rmsnorm_quant",
    "layernorm_quant",
    "add_rmsnorm_quant",
    "add_layernorm_quant",
    "bias_gelu_quant",
    "silu_mul_quant",
    "gelu_mul_quant",
]

_cuda_ready: set[int] = set()
_NORMS = ("rmsnorm", "layernorm")


class _Row(NamedTuple):
    """One fused row-op call: the public op's name (for messages) and the kernel's arguments."""

    name: str
    op: str  # a key of ROW_OPS
    x: torch.Tensor
    residual: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    eps: float = 0.0
    residual_mode: str = "none"  # a key of RESIDUAL_MODES
    dtype: torch.dtype = torch.int8  # the quantized output: int8 or float8_e4m3fn (docs/FP8.md)
    group_size: Optional[int] = None  # None: a scale per token; 32 / 64 / 128: per token per group (FP8)


_QDTYPES = (torch.int8, torch.float8_e4m3fn)
_GROUP_SET = frozenset(TOKEN_GROUP_SIZES)
_OUT_FMT = {torch.int8: 0, torch.float8_e4m3fn: 1}  # out_fmt of _C.row_quant


def _check(a: _Row) -> int:
    """Full argument checks (precise errors); returns K, the output width."""
    name, op, x, residual, weight, bias, eps, residual_mode, dtype, group_size = a
    if dtype not in _QDTYPES:
        raise TypeError(f"{name}: dtype must be torch.int8 or torch.float8_e4m3fn (the quantized output), got {dtype!r}")
    if group_size is not None:
        if type(group_size) is not int or group_size not in TOKEN_GROUP_SIZES:
            raise ValueError(
                f"{name}: group_size must be None (a scale per token) or one of {TOKEN_GROUP_SIZES}, got {group_size!r}"
            )
        if dtype != torch.float8_e4m3fn:
            raise TypeError(
                f"{name}: group_size={group_size} (per-token-group scales) needs dtype=torch.float8_e4m3fn, got {dtype!r}"
            )
    c.check_act_matrix(name, x)
    M, W = x.shape
    K = W
    if op in GATED_OPS:
        if W % 2 != 0:
            raise ValueError(f"{name}: gate_up must be [M, 2 * I] (gate then up), got odd width {W}")
        K = W // 2
    c.check_int32_sizes(name, M=M, K=W)
    if group_size is not None and K % group_size != 0:
        raise ValueError(
            f"{name}: group_size {group_size} must divide the output width K == {K} (K % {group_size} == "
            f"{K % group_size})"
        )
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"{name}: residual must be a torch.Tensor, got {type(residual).__name__}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{name}: residual must have x's dtype {c.dtype_name(x.dtype)}, got {c.desc(residual)}")
        if tuple(residual.shape) != (M, K):
            raise ValueError(f"{name}: residual must be [M, K] == {[M, K]} like x, got {c.desc(residual)}")
        c.check_rows(name, "residual", residual)
        c.check_same_device(name, "x", x, residual=residual)
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise TypeError(f"{name}: {pname} must be a floating-point tensor [{K}], got {p!r:.60}")
        if tuple(p.shape) != (K,):
            raise ValueError(f"{name}: {pname} must be 1-D [K] == [{K}], got {c.desc(p)}")
        c.check_same_device(name, "x", x, **{pname: p})
    if op in _NORMS and weight is None:
        raise ValueError(f"{name}: weight is required")
    if not isinstance(eps, (int, float)) or not eps >= 0.0:
        raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
    if residual_mode not in RESIDUAL_MODES:
        raise ValueError(f"{name}: residual_out must be 'sum' or 'normed', got {residual_mode!r}")
    return K


def _fast_ok(a: _Row) -> int:
    """The common CUDA call (what the fused blocks make), recognised in a few attribute reads: returns
    K, or -1 to take the full checks (which also produce the precise errors)."""
    _, op, x, residual, weight, bias, _, _, dtype, group_size = a
    if dtype is not torch.int8 and dtype is not torch.float8_e4m3fn:
        return -1
    if group_size is not None and (
        dtype is not torch.float8_e4m3fn or type(group_size) is not int or group_size not in _GROUP_SET
    ):
        return -1
    if not (type(x) in c._PLAIN and x.is_cuda and x.dtype in c.DTYPE_CODE and x.dim() == 2 and c.has_row_layout(x)):
        return -1
    M, W = x.shape
    if W > c.INT32_MAX or M > c.INT32_MAX or (op in GATED_OPS and W % 2):
        return -1
    K = W // 2 if op in GATED_OPS else W
    if group_size is not None and K % group_size:
        return -1
    dev = x.device
    if residual is not None and not (
        residual.dtype is x.dtype and residual.shape == (M, K) and residual.device == dev and c.has_row_layout(residual)
    ):
        return -1
    for p in (weight, bias):
        if p is not None and not (p.dtype is torch.float32 and p.shape == (K,) and p.device == dev):
            return -1
    if op in _NORMS and weight is None:
        return -1
    return K


def _f32(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if p is None or (p.dtype == torch.float32 and p.is_contiguous()):
        return p
    return p.detach().to(torch.float32).contiguous()


def _launch(a: _Row, residual_out: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel (a checked). residual_out: where a residual output goes (may be a.residual)."""
    name, op, x, residual, weight, bias, eps, residual_mode, dtype, group_size = a
    idx = x.get_device()
    if idx not in _cuda_ready:
        c.require_cuda_kernels(name, x.device)
        _cuda_ready.add(idx)
    M = x.shape[0]
    K = x.shape[1] // 2 if op in GATED_OPS else x.shape[1]
    q = x.new_empty((M, K), dtype=dtype)
    s = _empty_scales(x, M, K, group_size)
    if M == 0:
        return q, s
    if K == 0:  # an empty row quantizes with scale 0; a normalised empty row has nothing to write
        return q, s.zero_()
    g = 0 if group_size is None else group_size
    weight, bias = _f32(weight), _f32(bias)
    _ext._C.row_quant(
        ROW_OPS[op], c.DTYPE_CODE[x.dtype], x.data_ptr(), x.stride(0),
        0 if residual is None else residual.data_ptr(), 0 if residual is None else residual.stride(0),
        0 if residual_out is None else residual_out.data_ptr(),
        0 if residual_out is None else residual_out.stride(0),
        RESIDUAL_MODES[residual_mode] if residual_out is not None else 0,
        0 if weight is None else weight.data_ptr(), 0 if bias is None else bias.data_ptr(), float(eps),
        q.data_ptr(), s.data_ptr(), M, K, idx, c.current_stream(idx), _OUT_FMT[dtype], g, scale_rows_padded(M),
    )
    return q, s


def _empty_scales(x: torch.Tensor, M: int, K: int, group_size: Optional[int]) -> torch.Tensor:
    """s of a call: float32 [M], or [M, K // group_size] M-major (strides (1, round_up(M, 4)))."""
    if group_size is None:
        return x.new_empty((M,), dtype=torch.float32)
    return empty_group_scales(x, M, K // group_size)


def _impl(a: _Row, inplace: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Checked call on any device. Returns (q, s, residual output or None)."""
    name, op, x, residual, weight, bias, eps, residual_mode, dtype, group_size = a
    K = _fast_ok(a)
    if K < 0 or residual_mode not in RESIDUAL_MODES or not eps >= 0.0:
        K = _check(a)  # the precise errors
    want_r = residual_mode != "none"
    if want_r and residual is None and residual_mode == "sum":
        raise ValueError(f"{name}: residual_out='sum' needs a residual")
    if x.is_cuda:
        r_out = None
        if want_r:
            r_out = residual if inplace else x.new_empty((x.shape[0], K))
        q, s = _launch(a, r_out)
        return q, s, r_out
    if x.is_meta:
        M = x.shape[0]
        r = x.new_empty((M, K)) if want_r else None
        q, s = x.new_empty((M, K), dtype=dtype), _empty_scales(x, M, K, group_size)
        return q, s, (residual if inplace else r)
    if x.device.type != "cpu":
        c.require_cuda_kernels(name, x.device)  # raises: names the device type
    if group_size is None:
        q, s, r = row_quant_ref(op, x, residual, weight, bias, float(eps), residual_mode, dtype=dtype)
    else:
        q, s, r = row_quant_group_ref(op, x, residual, weight, bias, float(eps), residual_mode, group_size=group_size)
    if inplace and r is not None:
        residual.copy_(r)
        r = residual
    return q, s, r


# ------------------------------------------------------------------------------------------------
# Custom ops: one functional op (every output new) and one that updates the residual in place.

_SCHEMA_ARGS = (
    "int op, Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, int residual_mode, "
    "ScalarType dtype=int8, int group_size=0"
)
_OP_NAMES = {v: k for k, v in ROW_OPS.items()}
_MODE_NAMES = {v: k for k, v in RESIDUAL_MODES.items()}


def _row(name: str, op: int, x, residual, weight, bias, eps: float, mode: int, dtype=torch.int8, group_size=0) -> _Row:
    """The _Row of a custom-op call (integer codes in the schema; group_size 0 means per token)."""
    return _Row(name, _OP_NAMES[op], x, residual, weight, bias, eps, _MODE_NAMES.get(mode, str(mode)), dtype,
                group_size if group_size != 0 else None)


def _empty_r(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,))


@torch.library.custom_op(
    "zqkernels::row_quant", mutates_args=(), schema=f"({_SCHEMA_ARGS}) -> (Tensor, Tensor, Tensor)"
)
def _row_quant_op(op, x, residual, weight, bias, eps, residual_mode, dtype=torch.int8, group_size=0):
    q, s, r = _impl(_row("row_quant", op, x, residual, weight, bias, eps, residual_mode, dtype, group_size), False)
    return q, s, (r if r is not None else _empty_r(x))


@_row_quant_op.register_fake
def _row_quant_fake(op, x, residual, weight, bias, eps, residual_mode, dtype=torch.int8, group_size=0):
    a = _row("row_quant", op, x, residual, weight, bias, eps, residual_mode, dtype, group_size)
    K = _check(a)
    M = x.shape[0]
    r = x.new_empty((M, K)) if residual_mode != 0 else _empty_r(x)
    return x.new_empty((M, K), dtype=dtype), _empty_scales(x, M, K, a.group_size), r


@torch.library.custom_op(
    "zqkernels::row_quant_", mutates_args=("residual",),
    schema=f"({_SCHEMA_ARGS.replace('Tensor? residual', 'Tensor(a!) residual')}) -> (Tensor, Tensor)",
)
def _row_quant_inplace_op(op, x, residual, weight, bias, eps, residual_mode, dtype=torch.int8, group_size=0):
    q, s, _ = _impl(_row("row_quant_", op, x, residual, weight, bias, eps, residual_mode, dtype, group_size), True)
    return q, s


@_row_quant_inplace_op.register_fake
def _row_quant_inplace_fake(op, x, residual, weight, bias, eps, residual_mode, dtype=torch.int8, group_size=0):
    a = _row("row_quant_", op, x, residual, weight, bias, eps, residual_mode, dtype, group_size)
    K = _check(a)
    M = x.shape[0]
    return x.new_empty((M, K), dtype=dtype), _empty_scales(x, M, K, a.group_size)


_functional = torch.ops.zqkernels.row_quant.default
_inplace = torch.ops.zqkernels.row_quant_.default


def row_quant(
    name: str,
    op: str,
    x: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 0.0,
    residual_mode: str = "none",
    inplace: bool = False,
    dtype: torch.dtype = torch.int8,
    group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Any fused row op by its parts: the seam for layers that pick the row op from data (the fused
    blocks of nn/blocks.py choose the norm per model). The named ops below are this with fixed parts.

    name: the caller's name for messages (e.g. "fused norm"); op: a row op of
    ``zqkernels.reference.fused.ROW_OPS`` ("identity", "rmsnorm", "layernorm", "gelu", "gelu_tanh",
    "silu_mul"); residual (x + residual first), weight, bias, eps as in the named ops;
    residual_mode "none", "sum" (also return x + residual) or "normed" (also return the normalised
    row); inplace: write that third output into `residual`; dtype: torch.int8 or
    torch.float8_e4m3fn. Returns (q [M, K], s float32 [M], the residual output or None).
    group_size: None (a scale per token) or 32 / 64 / 128 with dtype=torch.float8_e4m3fn: a scale per
    token per group of that many channels, s float32 [M, K // group_size] M-major (strides
    (1, round_up(M, 4)); docs/FUSED.md), in the same single pass.
    """
    if c._debug_checks:
        for n, t in (("x", x), ("residual", residual)):
            c.check_finite(name, n, t)
    a = _Row(name, op, x, residual, weight, bias, eps, residual_mode, dtype, group_size)
    if c.eager(x, residual, weight, bias):
        return _impl(a, inplace)
    code, mode = ROW_OPS[op], RESIDUAL_MODES.get(residual_mode, -1)
    if mode < 0 or dtype not in _QDTYPES or (
        group_size is not None and (type(group_size) is not int or group_size not in _GROUP_SET)
    ):
        _check(a)  # raises the precise error
    g = () if group_size is None else (group_size,)  # per token: the call keeps its old form
    if inplace:
        q, s = _inplace(code, x, residual, weight, bias, float(eps), mode, dtype, *g)
        return q, s, residual
    q, s, r = _functional(code, x, residual, weight, bias, float(eps), mode, dtype, *g)
    return q, s, (r if mode != 0 else None)




# ------------------------------------------------------------------------------------------------
# Public ops.


def rmsnorm_quant(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, dtype: torch.dtype = torch.int8,
    group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm then token-wise INT8 quantization: ``quant(x * rsqrt(mean(x^2) + eps) * weight)``.

    x [M, K] bf16 / fp16 / fp32; weight [K]. Returns (q int8 [M, K], s float32 [M]).
    Every fused op takes ``dtype=torch.float8_e4m3fn`` for FP8 E4M3 output (s = amax / 448, as
    ``quantize_per_token(..., dtype=torch.float8_e4m3fn)``; docs/FP8.md), and with it
    ``group_size=32 | 64 | 128`` for per-token-group scales: s float32 [M, K // group_size], M-major
    (strides (1, round_up(M, 4))), as ``quantize_per_token_group`` of the op's fp32 output.
    """
    q, s, _ = row_quant("rmsnorm_quant", "rmsnorm", x, None, weight, None, eps, dtype=dtype, group_size=group_size)
    return q, s


def layernorm_quant(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *,
    dtype: torch.dtype = torch.int8, group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm (biased variance, like nn.LayerNorm) then token-wise INT8 quantization.

    x [M, K]; weight and bias [K] (bias may be None). Returns (q int8 [M, K], s float32 [M]).
    """
    q, s, _ = row_quant("layernorm_quant", "layernorm", x, None, weight, bias, eps, dtype=dtype, group_size=group_size)
    return q, s


def add_rmsnorm_quant(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, inplace: bool = False,
    dtype: torch.dtype = torch.int8, group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``r = x + residual`` (rounded to x's dtype), then ``rmsnorm_quant(r)``: the pre-norm block's
    residual update and the next GEMM's input in one pass.

    Returns (q, s, r); with ``inplace=True`` r is written into `residual` (and returned).
    """
    return row_quant("add_rmsnorm_quant", "rmsnorm", x, residual, weight, None, eps, "sum", inplace, dtype, group_size)


def add_layernorm_quant(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    residual_out: str = "sum",
    inplace: bool = False,
    dtype: torch.dtype = torch.int8,
    group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``h = layer_norm(x + residual)`` quantized token-wise, plus the updated residual stream:

    - ``residual_out="sum"`` (pre-LN blocks: GPT-2): returns (q, s, x + residual);
    - ``residual_out="normed"`` (post-LN blocks: BERT): returns (q, s, h) with h rounded to x's dtype
      (the next sub-layer's residual input).

    With ``inplace=True`` the third output is written into `residual` (and returned).
    """
    if residual_out not in ("sum", "normed"):
        raise ValueError(f"add_layernorm_quant: residual_out must be 'sum' or 'normed', got {residual_out!r}")
    return row_quant(
        "add_layernorm_quant", "layernorm", x, residual, weight, bias, eps, residual_out, inplace, dtype, group_size
    )


def bias_gelu_quant(
    y: torch.Tensor, bias: Optional[torch.Tensor] = None, approximate: str = "none", *,
    dtype: torch.dtype = torch.int8, group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quant(gelu(y + bias))``; approximate='none' (erf, BERT) or 'tanh' (GPT-2's gelu_new).

    y [M, K]; bias [K] or None. Returns (q int8 [M, K], s float32 [M]).
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"bias_gelu_quant: approximate must be 'none' or 'tanh', got {approximate!r}")
    q, s, _ = row_quant("bias_gelu_quant", "gelu" if approximate == "none" else "gelu_tanh", y, None, None, bias,
                        dtype=dtype, group_size=group_size)
    return q, s


def silu_mul_quant(
    gate_up: torch.Tensor, *, dtype: torch.dtype = torch.int8, group_size: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU's ``quant(silu(gate) * up)`` with gate_up = [gate | up] of shape [M, 2 * I] (the output
    of one GEMM over the concatenated gate and up weights). Returns (q int8 [M, I], s float32 [M]);
    with group_size, s float32 [M, I // group_size] M-major (group_size divides I)."""
    q, s, _ = row_quant("silu_mul_quant", "silu_mul", gate_up, dtype=dtype, group_size=group_size)
    return q, s


def gelu_mul_quant(
    gate_up: torch.Tensor, approximate: str = "tanh", *, dtype: torch.dtype = torch.int8,
    group_size: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GeGLU's ``quant(gelu(gate) * up)`` with gate_up = [gate | up] of shape [M, 2 * I];
    approximate='tanh' (Gemma's gelu_pytorch_tanh, the default) or 'none' (erf). The product is
    computed in fp32 and rounded once to gate_up's dtype before quantization (as ``silu_mul_quant``).
    Returns (q [M, I], s float32 [M]); with group_size, s float32 [M, I // group_size] M-major."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu_mul_quant: approximate must be 'none' or 'tanh', got {approximate!r}")
    q, s, _ = row_quant("gelu_mul_quant", "gelu_tanh_mul" if approximate == "tanh" else "gelu_mul", gate_up,
                        dtype=dtype, group_size=group_size)
    return q, s
