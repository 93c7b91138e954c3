"""Fake quantization with a straight-through estimator (STE), per QLinear scheme.

``fake_quant_weight(w, scheme, **options)`` computes, in its forward, exactly the float32 weight that
the scheme's real quantizer stands for (the scheme's ``fake_weight``):
``dequantize(*quantize_weight(w, <the scheme's format and options>))``, bit for bit
(tests/test_lkd.py checks it per scheme), from the reference math of
``zqkernels.reference.quantize`` (codes are kept unpacked: no pack / unpack round trip). Its
backward is the identity (``d deq / d w := 1``): the rounding has no useful gradient, and the
symmetric ``amax / qmax`` scales never clip a weight, so the clip-aware STE is the identity too.
The scales are constants of the backward (they are not trained).

``fake_quant_act(x, fmt)`` does the same for the per-token dynamic activation quantization (fmt "int8"
or "fp8", a scheme's ``act_fmt``: ``xq * sx`` of ``quantize_per_token``), with the identity gradient
to x.

``FakeQuantLinear`` is a trainable float linear whose forward is the scheme's quantized math in
float: ``F.linear(fq_act(x), fq_weight(W), b)``, both fake-quants the scheme's own (``fake_act`` on x
viewed as rows [M, K]: per token, or per token group for fp8-block; ``fake_weight``). The GEMM itself runs in float (the int8 kernels
sum exact int32 products; the float sum differs by fp32 rounding only).

Used by ``zqkernels.algorithms.lkd``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..reference.quantize import quantize_per_token_fp8_ref, quantize_per_token_ref
from ..schemes import Scheme, layer_scheme

__all__ = [
    "has_fake_quant",
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


# --- weights: dequantize(quantize_weight(w, ...)), owned by each scheme (Scheme.fake_weight) ----


def has_fake_quant(qs: Scheme) -> bool:
    """Does the scheme implement its fake quantization (Scheme.fake_weight)?"""
    return type(qs).fake_weight is not Scheme.fake_weight


def _fake(op: str, scheme: Any, w: torch.Tensor, options: dict[str, Any]) -> Scheme:
    """The layer-resolved scheme for w [N, K] (QLinear's option spelling); NotImplementedError for a
    scheme without a fake-quant path."""
    qs = layer_scheme(op, scheme, w.shape[0], w.shape[1], options)
    if not has_fake_quant(qs):
        raise NotImplementedError(f"{op}: no fake-quant (straight-through) path for scheme {qs.name!r}")
    return qs


def fake_quant_weight(w: torch.Tensor, scheme: Any = "w8a8", **options: Any) -> torch.Tensor:
    """The float32 weight [N, K] that QLinear's `scheme` computes with after quantizing `w` (nn.Linear
    layout [out_features, in_features]), with the identity gradient to `w`. scheme: a name with its
    QLinear options (group_size, scale, alpha, scale_policy; None: the scheme's default; group_size
    == in_features: per channel), or a Scheme object. Equal bit for bit to
    ``dequantize(*quantize_weight(w, ...))``."""
    if w.dim() != 2:
        raise ValueError(f"fake_quant_weight: w must be 2-D [out_features, in_features], got shape {list(w.shape)}")
    qs = _fake("fake_quant_weight", scheme, w, options)
    return _ste(w, qs.fake_weight)


def _act(fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x2: torch.Tensor) -> torch.Tensor:
        q, sx = quantize_per_token_ref(x2) if fmt == "int8" else quantize_per_token_fp8_ref(x2)
        return q.float() * sx.reshape(-1, 1)

    return fn


def fake_quant_act(x: torch.Tensor, fmt: str = "int8") -> torch.Tensor:
    """Per-token dynamic quantization of x [..., K] (fmt "int8": ``quantize_per_token``; "fp8": with
    dtype=float8_e4m3fn; a scheme's ``act_fmt``) dequantized to float32 (``xq * sx``), with the
    identity gradient to x."""
    if fmt not in ("int8", "fp8"):
        raise ValueError(f"fake_quant_act: fmt must be 'int8' or 'fp8', got {fmt!r}")
    fn = _act(fmt)
    shape = x.shape
    return _ste(x, lambda t: fn(t.reshape(-1, shape[-1])).reshape(shape))


def scheme_options(qlinear: nn.Module) -> dict[str, Any]:
    """The per-layer options of a QLinear's scheme ({"group_size": 128, ...}), as the layer holds them."""
    return {k: getattr(qlinear, k) for k in qlinear.qscheme.option_names}


class FakeQuantLinear(nn.Module):
    """A trainable float linear computing a scheme's quantized forward through straight-through
    estimators: ``y = fq_act(x) @ fq_weight(weight).T + bias``, in float32 (the output is cast back
    to x's dtype). ``weight`` [out_features, in_features] and ``bias`` are float32 Parameters.
    scheme: a name with QLinear's options, or a Scheme object."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], scheme: Any, **options: Any) -> None:
        super().__init__()
        self.qscheme = _fake("FakeQuantLinear", scheme, weight, options)
        self.scheme = self.qscheme.name
        self.options = {k: v for k, v in options.items() if v is not None}
        self.act_fmt = self.qscheme.act_fmt
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.bias = nn.Parameter(bias.detach().float().clone()) if bias is not None else None
        self.in_features = self.weight.shape[1]
        self.out_features = self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the scheme's own activation fake-quant (per token, or per token group), on rows [M, K]
        shape = x.shape
        xd = _ste(x.float(), lambda t: self.qscheme.fake_act(t.reshape(-1, shape[-1])).reshape(shape))
        wd = _ste(self.weight, self.qscheme.fake_weight)
        y = F.linear(xd, wd, self.bias)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{opts}"
