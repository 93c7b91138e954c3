"""Fake quantization with a straight-through estimator (STE), per QLinear scheme.

Each ``fake_quant_weight_*`` computes, in its forward, exactly the float32 weight that the scheme's
real quantizer stands for: ``dequantize(*quantize_weight(w, <the scheme's format and options>))``,
bit for bit (tests/test_lkd.py checks it per scheme), from the reference math of
``zqkernels.reference.quantize`` (codes are kept unpacked: no pack / unpack round trip). Its
backward is the identity (``d deq / d w := 1``): the rounding has no useful gradient, and the
symmetric ``amax / qmax`` scales never clip a weight, so the clip-aware STE is the identity too.
The scales are constants of the backward (they are not trained).

``fake_quant_act_*`` do the same for the per-token dynamic activation quantization (int8 or FP8
E4M3: ``xq * sx`` of ``quantize_per_token``), with the identity gradient to x.

``FakeQuantLinear`` is a trainable float linear whose forward is the scheme's quantized math in
float: ``F.linear(fq_act(x), fq_weight(W), b)``. The GEMM itself runs in float (the int8 kernels
sum exact int32 products; the float sum differs by fp32 rounding only).

Used by ``zqkernels.algorithms.lkd``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..reference.quantize import (
    e2m1_decode,
    expand_groups,
    fp4_to_fp8_float_ref,
    quantize_fp4_ref,
    quantize_int4_group_ref,
    quantize_int8_group_ref,
    quantize_per_token_fp8_ref,
    quantize_per_token_ref,
    quantize_weight_fp8_ref,
    quantize_weight_ref,
)

__all__ = [
    "FAKEQUANT_SCHEMES",
    "FakeQuantLinear",
    "fake_quant_weight",
    "fake_quant_act",
    "scheme_options",
]


class _STE(torch.autograd.Function):
    """forward: fn(x) (any quantize -> dequantize, computed without autograd); backward: identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return fn(x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def _ste(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    if x.requires_grad and torch.is_grad_enabled():
        return _STE.apply(x, fn)
    with torch.no_grad():
        return fn(x.detach())


# --- weights: dequantize(quantize_weight(w, ...)) -----------------------------------------------


def _deq_rows(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.reshape(-1, 1)  # dequantize's "int8" / "fp8" branch: wq.float() * sw


def _deq_groups(q: torch.Tensor, sw: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    # dequantize's integer group branch: float64 product, one rounding to float32
    K = q.shape[1]
    return (q.double() * expand_groups(sg.double(), K) * sw.reshape(-1, 1).double()).float()


def _group(g: Optional[int], K: int) -> Optional[int]:
    """QLinear's group_size (== in_features: per channel) -> quantize_weight's (None: per channel)."""
    return None if g is None or g == K else g


def _w_w8a8(w: torch.Tensor, **_: Any) -> torch.Tensor:
    return _deq_rows(*quantize_weight_ref(w, 8))


def _w_fp8(w: torch.Tensor, **_: Any) -> torch.Tensor:
    return _deq_rows(*quantize_weight_fp8_ref(w))


def _w_int4_group(scale: str) -> Callable[..., torch.Tensor]:
    def fq(w: torch.Tensor, group_size: Optional[int] = 128, alpha: Optional[int] = None, **_: Any) -> torch.Tensor:
        g = _group(group_size, w.shape[1])
        q, sw, sg = quantize_int4_group_ref(w, g, scale, alpha if scale == "int" else None)
        return _deq_groups(q, sw, sg)

    return fq


def _w_int8_group(
    w: torch.Tensor, group_size: Optional[int] = 128, scale: Optional[str] = "int", alpha: Optional[int] = None, **_: Any
) -> torch.Tensor:
    g = _group(group_size, w.shape[1])
    scale = "int" if scale is None else scale
    q, sw, sg = quantize_int8_group_ref(w, g, scale, alpha if scale == "int" else None)
    return _deq_groups(q, sw, sg)


def _w_fp4(w: torch.Tensor, group_size: Optional[int] = 128, scale_policy: Optional[str] = "m2", **_: Any) -> torch.Tensor:
    K = w.shape[1]
    policy = "m2" if scale_policy is None else scale_policy
    codes, sw, sg = quantize_fp4_ref(w, _group(group_size, K), policy)
    if sg.dtype == torch.int8:  # dequantize's fp4 branch: e2m1 * 2^e (exact), times sw
        v = torch.ldexp(e2m1_decode(codes), expand_groups(sg, K).to(torch.int32))
    else:
        v = fp4_to_fp8_float_ref(codes, sg).float()
    return v * sw.reshape(-1, 1)


# scheme -> (weight fake quant (w, **options), activation format)
FAKEQUANT_SCHEMES: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "w8a8": (_w_w8a8, "int8"),
    "fp8": (_w_fp8, "fp8"),
    "w4a8": (_w_int4_group("int"), "int8"),
    "w4a8-floatscale": (_w_int4_group("float"), "int8"),
    "w8a8-group": (_w_int8_group, "int8"),
    "w4a8-fp": (_w_fp4, "fp8"),
}


def _check_scheme(op: str, scheme: str) -> None:
    if scheme not in FAKEQUANT_SCHEMES:
        raise NotImplementedError(
            f"{op}: no fake-quant (straight-through) path for scheme {scheme!r}; implemented: "
            f"{sorted(FAKEQUANT_SCHEMES)}"
        )


def fake_quant_weight(w: torch.Tensor, scheme: str = "w8a8", **options: Any) -> torch.Tensor:
    """The float32 weight [N, K] that QLinear's `scheme` computes with after quantizing `w` (nn.Linear
    layout [out_features, in_features]), with the identity gradient to `w`. options: the scheme's
    QLinear options (group_size, scale, alpha, scale_policy; None: the scheme's default; group_size
    == in_features: per channel). Equal bit for bit to ``dequantize(*quantize_weight(w, ...))``."""
    _check_scheme("fake_quant_weight", scheme)
    if w.dim() != 2:
        raise ValueError(f"fake_quant_weight: w must be 2-D [out_features, in_features], got shape {list(w.shape)}")
    fn = FAKEQUANT_SCHEMES[scheme][0]
    opts = {k: v for k, v in options.items() if v is not None}
    return _ste(w, lambda t: fn(t, **opts))


def _act_int8(x2: torch.Tensor) -> torch.Tensor:
    return _deq_rows(*quantize_per_token_ref(x2))


def _act_fp8(x2: torch.Tensor) -> torch.Tensor:
    return _deq_rows(*quantize_per_token_fp8_ref(x2))


def fake_quant_act(x: torch.Tensor, fmt: str = "int8") -> torch.Tensor:
    """Per-token dynamic quantization of x [..., K] (fmt "int8": ``quantize_per_token``; "fp8": with
    dtype=float8_e4m3fn) dequantized to float32 (``xq * sx``), with the identity gradient to x."""
    if fmt not in ("int8", "fp8"):
        raise ValueError(f"fake_quant_act: fmt must be 'int8' or 'fp8', got {fmt!r}")
    fn = _act_int8 if fmt == "int8" else _act_fp8
    shape = x.shape
    return _ste(x, lambda t: fn(t.reshape(-1, shape[-1])).reshape(shape))


def scheme_options(qlinear: nn.Module) -> dict[str, Any]:
    """The per-layer options of a QLinear's scheme ({"group_size": 128, ...}), as its handler lists them."""
    handler = qlinear._handler
    return {k: getattr(qlinear, k) for k in handler.options}


class FakeQuantLinear(nn.Module):
    """A trainable float linear computing a scheme's quantized forward through straight-through
    estimators: ``y = fq_act(x) @ fq_weight(weight).T + bias``, in float32 (the output is cast back
    to x's dtype). ``weight`` [out_features, in_features] and ``bias`` are float32 Parameters."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], scheme: str, **options: Any) -> None:
        super().__init__()
        _check_scheme("FakeQuantLinear", scheme)
        self.scheme = scheme
        self.options = {k: v for k, v in options.items() if v is not None}
        self.act_fmt = FAKEQUANT_SCHEMES[scheme][1]
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone()) if bias is not None else None
        self.in_features = self.weight.shape[1]
        self.out_features = self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = fake_quant_act(x.float(), self.act_fmt)
        wd = fake_quant_weight(self.weight, self.scheme, **self.options)
        y = F.linear(xd, wd, self.bias)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{opts}"
