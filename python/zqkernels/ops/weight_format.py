"""The weight formats of ``quantize_weight`` / ``dequantize`` (ops/quantize.py): each format's one
spelling (``fmt=`` plus the options it takes), its resolution (``resolve_weight_format``, which also
turns the deprecated ``bits=`` spellings into the current one with a DeprecationWarning) and the
shape rules of each layout, with errors naming the op, the argument and the fix. Shared with GPTQ
(algorithms/gptq.py), which must produce exactly these formats.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch

from ..reference.quantize import FP4_POLICIES, INT4_SCALES, INT8_MAX_GROUP, _check_alpha, _check_alpha8
from . import _common as c

__all__ = ["resolve_weight_format", "WeightFormat", "FP8_BLOCK_SIZES", "check_fp8_block"]

# quantize_weight's formats: fmt -> the bits it implies (None: the fmt takes no bits).
_WEIGHT_FMTS = {"int8": 8, "int4": 4, "fp8": 8, "fp4": 4}
_FP4_GROUP_SIZES = (32, 64, 128)
_INT4_GROUP_SIZES = (32, 64, 128, 256)
_INT8_GROUP_SIZES = (32, 64, 128, 256)
# fmt="fp8" with block_size: 128 x 128 blocks, one float scale each (DeepSeek-V3's format, docs/FP8.md)
FP8_BLOCK_SIZES = (128,)


def _check_weight(op: str, w: object) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: w must be a torch.Tensor [N, K], got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{op}: w must be a floating-point tensor [N, K], got {c.desc(w)}")
    if w.dim() != 2:
        raise ValueError(f"{op}: w must be 2-D [N, K] (nn.Linear.weight layout), got {c.desc(w)}")


def _check_finite_rows(op: str, w: torch.Tensor) -> None:
    """Raise naming the rows of w holding NaN/Inf (a sync; offline only)."""
    bad = ~torch.isfinite(w).all(dim=1) if w.shape[1] > 0 else w.new_zeros(w.shape[0], dtype=torch.bool)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{op}: w has NaN/Inf values in {len(rows)} rows (output channels {rows[:8]}"
            f"{' ...' if len(rows) > 8 else ''}); a quantized channel would be NaN"
        )


def _resolve_fmt(op: str, bits: Optional[int], fmt: Optional[str]) -> str:
    """fmt from the old (bits, fmt) pair, without warnings (algorithms/gptq.py still imports it;
    quantize_weight resolves its arguments with resolve_weight_format)."""
    if bits is not None and bits not in (8, 4):
        raise ValueError(f"{op}: bits must be 8 or 4, got {bits!r}")
    if fmt is None:
        return "int4" if bits == 4 else "int8"
    if fmt not in _WEIGHT_FMTS:
        raise ValueError(f"{op}: fmt must be one of {tuple(_WEIGHT_FMTS)} (or None: int by bits), got {fmt!r}")
    if bits is not None and bits != _WEIGHT_FMTS[fmt]:
        raise ValueError(
            f"{op}: bits={bits} contradicts fmt={fmt!r} ({_WEIGHT_FMTS[fmt]} bits); pass fmt alone"
        )
    return fmt


def _check_fp4_shape(op: str, N: int, K: int, group_size: Optional[int]) -> int:
    """The group size (g = K for per channel) after checking it and the m16k64 layout's shape rules."""
    return _check_packed_shape(op, N, K, group_size, "fmt='fp4'", "m16k64", _FP4_GROUP_SIZES)


def _divisor_hint(K: int, sizes: tuple) -> str:
    """For INT4: which group sizes K takes, with the real models that need care."""
    fits = [g for g in sizes if K % g == 0]
    return (
        f"; K == {K} takes group_size {fits} or None" if fits else f"; K == {K} takes only group_size=None"
    ) + (" (e.g. Falcon-7B's hidden size 4544 = 71 * 64 takes 32 or 64, not 128 or 256; LLaMA's 4096, 11008, "
         "14336 and 28672 take all four)")


def _group_of(op: str, K: int, group_size: Optional[int], what: str, sizes: tuple, hint: bool) -> int:
    """The group size (g = K for per channel: None) after checking it is offered and divides K > 0."""
    if group_size is not None and (isinstance(group_size, bool) or group_size not in sizes):
        raise ValueError(
            f"{op}: group_size must be one of {sizes} or None (one group per row), got {group_size!r}"
        )
    if K == 0:
        raise ValueError(f"{op}: {what} need K > 0 (a group scale per row), got w with K == 0")
    g = K if group_size is None else group_size
    if K % g != 0:
        raise ValueError(
            f"{op}: group_size {g} must divide K == {K} (K % {g} == {K % g}); pad K with zero weights "
            f"to a multiple of {g} or choose another group_size" + (_divisor_hint(K, sizes) if hint else "")
        )
    return g


def _check_packed_shape(
    op: str, N: int, K: int, group_size: Optional[int], what: str, layout: str, sizes: tuple, hint: bool = False
) -> int:
    """The group size (g = K for per channel) after checking it and a packed layout's shape rules."""
    g = _group_of(op, K, group_size, what, sizes, hint)
    if N % 16 != 0:
        raise ValueError(
            f"{op}: {what} (packed layout {layout}) needs N % 16 == 0, got N == {N}; pad w with "
            f"{-N % 16} zero rows (output channels)"
        )
    if K % 64 != 0:
        raise ValueError(
            f"{op}: {what} (packed layout {layout}) needs K % 64 == 0, got K == {K}; pad w with "
            f"{-K % 64} zero columns (and x with as many zeros)"
        )
    return g


def _check_int4_shape(op: str, N: int, K: int, group_size: Optional[int]) -> int:
    return _check_packed_shape(op, N, K, group_size, "INT4 group scales", "m16k32", _INT4_GROUP_SIZES, hint=True)


def _check_int8_group_shape(op: str, N: int, K: int, group_size: Optional[int]) -> int:
    """The group size (g = K for per channel) of INT8 weights with group scales. No N rule (the
    weights are not packed); g divides K, and as every g offered is a multiple of 32 so is K, which
    also gives the kernel's 16-byte rows. Per channel: K % 32 == 0 (the op's group size is a multiple
    of 32, one INT8 MMA k-step) and K <= INT8_MAX_GROUP (a group's int32 P must not overflow)."""
    g = _group_of(op, K, group_size, "INT8 group scales", _INT8_GROUP_SIZES, hint=True)
    if K % 32 != 0:
        raise ValueError(
            f"{op}: INT8 group scales per channel (one group of K) need K % 32 == 0 (w8a8_group_gemm's "
            f"group size is a multiple of 32), got K == {K}; pad w with {-K % 32} zero columns (and x with "
            "as many zeros)"
        )
    if g > INT8_MAX_GROUP:
        raise ValueError(
            f"{op}: INT8 group scales need group_size <= {INT8_MAX_GROUP} (a group's sum of products, up to "
            f"group_size * 128 * 128, must fit int32), got one group of K == {K} per row; pass a group_size"
        )
    return g


class WeightFormat(NamedTuple):
    """A weight format of ``quantize_weight``, resolved: ``fmt``; for formats with group scales the
    group size (K: one group per row) and the scale kind, and alpha (integer scales; None: the
    default); per channel (no group scales): group_size, scale and alpha None. ``block_size``: FP8
    with one scale per block_size x block_size block (None: any other format)."""

    fmt: str
    group_size: Optional[int]
    scale: Optional[str]
    alpha: Optional[int]
    block_size: Optional[int] = None


def check_fp8_block(op: str, N: int, K: int, block_size: object) -> int:
    """The block size of block-scaled FP8 weights after checking it and K (any N: the last row block
    may be partial)."""
    if isinstance(block_size, bool) or block_size not in FP8_BLOCK_SIZES:
        raise ValueError(
            f"{op}: block_size must be one of {FP8_BLOCK_SIZES} (FP8 with one scale per block_size x block_size "
            f"block) or None (one scale per row), got {block_size!r}"
        )
    b = int(block_size)  # type: ignore[call-overload]
    if K % b != 0:
        raise ValueError(
            f"{op}: fmt='fp8' with block_size={b} needs K % {b} == 0 (whole blocks of input channels), got K == {K}; "
            f"pad w with {-K % b} zero columns (and x with as many zeros) or use block_size=None (per channel)"
        )
    return b


def _spelling(fmt: str, group_size, scale, alpha, block_size=None) -> str:
    """The keyword arguments of the current spelling of a format, for messages."""
    parts = [f"fmt={fmt!r}"]
    if block_size is not None:
        parts.append(f"block_size={block_size!r}")
    if scale is not None:
        parts.append(f"scale={scale!r}")
    if group_size is not None:
        parts.append(f"group_size={group_size!r}")
    if alpha is not None:
        parts.append(f"alpha={alpha!r}")
    return ", ".join(parts)


def resolve_weight_format(
    op: str,
    N: int,
    K: int,
    bits: Optional[int] = None,
    fmt: Optional[str] = None,
    group_size: Optional[int] = None,
    scale: Optional[str] = None,
    alpha: Optional[int] = None,
    *,
    block_size: Optional[int] = None,
    stacklevel: int = 2,
) -> WeightFormat:
    """``quantize_weight``'s format arguments for a weight [N, K], checked (ValueError naming `op` and
    the argument) and resolved; the deprecated spellings (``bits=``, integer ``group_size`` / ``alpha``
    without ``scale``) resolve to what they always meant, with a DeprecationWarning naming the
    current spelling (stacklevel: the caller to point at, as for warnings.warn). block_size: FP8 with
    128 x 128 block scales (fmt='fp8' only)."""
    old = []
    if bits is not None:
        if isinstance(bits, bool) or bits not in (8, 4):
            raise ValueError(
                f"{op}: bits must be 8 or 4, got {bits!r} (bits is deprecated: name the format with fmt='int8', "
                "'int4', 'fp8' or 'fp4')"
            )
        if fmt is None:
            fmt = "int4" if bits == 4 else "int8"
            old.append(f"bits={bits}")
    elif fmt is None:
        fmt = "int8"
    if not isinstance(fmt, str) or fmt not in _WEIGHT_FMTS:
        raise ValueError(f"{op}: fmt must be one of {tuple(_WEIGHT_FMTS)}, got {fmt!r}")
    if bits is not None and not old:
        if bits != _WEIGHT_FMTS[fmt]:
            raise ValueError(f"{op}: bits={bits} contradicts fmt={fmt!r} ({_WEIGHT_FMTS[fmt]} bits); pass fmt alone")
        old.append(f"bits={bits} with fmt={fmt!r}")
    if block_size is not None and fmt != "fp8":
        raise ValueError(
            f"{op}: block_size applies to fmt='fp8' only (FP8 with 128 x 128 block scales), got fmt={fmt!r} "
            f"with block_size={block_size!r}"
        )
    if fmt == "fp8":
        if group_size is not None or scale is not None or alpha is not None:
            raise ValueError(
                f"{op}: fmt='fp8' takes no group_size, scale or alpha (FP8 E4M3 with one float scale per row); "
                f"128 x 128 block scales: block_size=128; got group_size={group_size!r}, scale={scale!r}, alpha={alpha!r}"
            )
        b = None if block_size is None else check_fp8_block(op, N, K, block_size)
        res = WeightFormat(fmt, None, None, None, b)
    elif fmt == "fp4":
        if alpha is not None:
            raise ValueError(
                f"{op}: alpha applies to integer group scales only (fmt='int4' / 'int8' with scale='int'), got "
                f"fmt='fp4' with alpha={alpha!r}"
            )
        policy = "m2" if scale is None else scale
        if policy not in FP4_POLICIES:
            raise ValueError(f"{op}: scale must be one of {FP4_POLICIES} (fmt='fp4'), got {scale!r}")
        res = WeightFormat(fmt, _check_fp4_shape(op, N, K, group_size), policy, None)
    else:
        if scale is None and (group_size is not None or alpha is not None):
            if group_size is None:
                raise ValueError(
                    f"{op}: alpha applies to integer group scales only (fmt={fmt!r} with scale='int'; without "
                    f"scale the weight has one float scale per row), got alpha={alpha!r} without scale"
                )
            scale = "int"  # the old spelling: group_size alone meant integer group scales
            old.append("group_size without scale")
        if scale is None:
            res = WeightFormat(fmt, None, None, None)  # per channel; int4: values in [-7, 7], int8 container
        else:
            kinds = INT4_SCALES + ("zp",) if fmt == "int4" else INT4_SCALES
            if scale not in kinds:
                raise ValueError(f"{op}: scale must be one of {kinds} (fmt={fmt!r}), got {scale!r}")
            if alpha is not None and scale != "int":
                raise ValueError(
                    f"{op}: alpha applies to integer group scales only (scale='int'), got scale={scale!r} with "
                    f"alpha={alpha!r}"
                )
            if fmt == "int4":
                if alpha is not None:
                    _check_alpha(op, alpha)
                g = _check_int4_shape(op, N, K, group_size)
            else:
                g = _check_int8_group_shape(op, N, K, group_size)
                if alpha is not None:
                    _check_alpha8(op, alpha, g)
            res = WeightFormat(fmt, g, scale, alpha)
    if old:
        warnings.warn(
            f"{op}: {' and '.join(old)} is deprecated; name the format as "
            f"quantize_weight(w, {_spelling(fmt, group_size, res.scale, alpha, res.block_size)}) (same result)",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
    return res
