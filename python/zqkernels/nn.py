"""Modules: QLinear, a drop-in W8A8 replacement for nn.Linear, and quantize_model."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Union

import torch
from torch import nn

from ._ops import has_row_layout, int8_gemm, quantize_per_token, quantize_weight

__all__ = ["QLinear", "quantize_model", "SCHEMES"]

# Supported quantization schemes and what each one means (extra_repr shows it).
SCHEMES = {"w8a8": "int8 per-token activations x int8 per-channel weights"}


# The CUDA GEMM stores output rows in 16-byte vectors, so it needs N % 8 == 0. QLinear meets that for
# any out_features by keeping its weight rows padded up to a multiple of 8 (zero weights, zero
# scales, zero bias: the padded channels compute exactly 0 and are sliced off). The padding is the
# same on every device, so a state dict moves freely between CPU and GPU modules.
N_ALIGN = 8


def _padded(n: int) -> int:
    return (n + N_ALIGN - 1) // N_ALIGN * N_ALIGN


def _check_scheme(op: str, scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")


class QLinear(nn.Module):
    """W8A8 linear layer: ``y = x @ w.T + b`` with int8 per-channel weights and int8 per-token activations.

    Build it with ``QLinear.from_linear(linear)`` (weights quantized once, here), or construct an
    empty one and ``load_state_dict`` into it: the state is the buffers ``weight_q`` (int8 [Np, K]),
    ``weight_scale`` (float32 [Np]) and ``bias`` (the linear's dtype [Np], or None); no float
    weights. ``Np`` is out_features rounded up to a multiple of 8 (the rows past out_features are
    zero), so any out_features runs on the CUDA kernels; in_features must be a multiple of 16 there.

    forward(x): x [..., in_features] in bf16 or fp16, on the module's device; the output has x's
    dtype. Each call quantizes x per token (``quantize_per_token``) and runs ``int8_gemm``.
    Inference only: an x that requires grad (with grad mode on) raises.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: Union[torch.device, str, None] = None,
        scheme: str = "w8a8",
    ) -> None:
        super().__init__()
        _check_scheme("QLinear", scheme)
        if bias and not dtype.is_floating_point:
            raise TypeError(f"QLinear: dtype (of the bias) must be a floating-point dtype, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = scheme
        n, k = _padded(self.out_features), self.in_features
        self.register_buffer("weight_q", torch.zeros((n, k), dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros((n,), dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros((n,), dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str = "w8a8") -> "QLinear":
        """Quantize an nn.Linear (weights per output channel, symmetric int8); keeps its device."""
        op = "QLinear.from_linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{op}: linear must be an nn.Linear, got {type(linear).__name__}")
        _check_scheme(op, scheme)
        w = linear.weight.detach()
        if w.is_meta:
            raise ValueError(f"{op}: the linear's weight is on the meta device (no values to quantize)")
        if w.device.type == "cuda":
            # The CUDA GEMM reads rows in 16-byte pieces and stores 8-wide output vectors.
            if linear.in_features % 16 != 0:
                raise ValueError(
                    f"{op}: in_features must be a multiple of 16 for the CUDA kernels, got "
                    f"{linear.in_features}; pad the layer, or leave it in float (quantize_model(skip=...))"
                )
        wq, sw = quantize_weight(w, bits=8)
        n, np_ = linear.out_features, _padded(linear.out_features)
        if np_ != n:  # zero rows: padded channels compute exactly 0 (see N_ALIGN)
            wq = torch.nn.functional.pad(wq, (0, 0, 0, np_ - n))
            sw = torch.nn.functional.pad(sw, (0, np_ - n))
        has_bias = linear.bias is not None
        # Built on the meta device (no allocation), then given the real buffers.
        mod = cls(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            dtype=w.dtype,
            device="meta",
            scheme=scheme,
        )
        mod.weight_q = wq
        mod.weight_scale = sw
        if has_bias:
            mod.bias = (
                torch.nn.functional.pad(linear.bias.detach(), (0, np_ - n))
                if np_ != n
                else (linear.bias.detach().clone())
            )
        else:
            mod.bias = None
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "QLinear: training is not supported (int8 weights have no gradient and rounding is not "
                "differentiable); run inference under torch.no_grad() or torch.inference_mode(), or "
                "train the float nn.Linear and quantize afterwards"
            )
        if x.dtype not in (torch.bfloat16, torch.float16):
            raise TypeError(
                f"QLinear: x must be bfloat16 or float16, got {x.dtype}: the output takes x's dtype and "
                "the kernels write bf16/fp16 only, so a float32 input would leave the output dtype "
                "ambiguous; cast x (and the model) with .to(torch.bfloat16) or .half()"
            )
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"QLinear: x must be [..., in_features] with in_features == {self.in_features}, "
                f"got shape {list(x.shape)}"
            )
        if x.device != self.weight_q.device:
            raise ValueError(
                f"QLinear: x is on {x.device} but the layer's weights are on {self.weight_q.device}; "
                "move one of them (module.to(device) or x.to(device))"
            )
        x2 = x.flatten(0, -2) if x.dim() > 1 else x.unsqueeze(0)  # a view whenever possible
        if not has_row_layout(x2):
            x2 = x2.contiguous()
        xq, sx = quantize_per_token(x2)
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        y = int8_gemm(xq, self.weight_q, sx, self.weight_scale, bias, out_dtype=x.dtype)
        if y.shape[1] != self.out_features:
            # Padded rows (out_features % 8 != 0): drop them; contiguous like nn.Linear's output.
            y = y[:, : self.out_features].contiguous()
        return y.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() / .bfloat16() cast every floating-point buffer, but the kernels
        # read float32 scales and a bf16 round trip would lose precision. Hand fn the scales' bits
        # as int32 (integer tensors only move devices), then view them back as float32.
        self._buffers["weight_scale"] = self._buffers["weight_scale"].view(torch.int32)
        try:
            return super()._apply(fn, recurse)
        finally:
            bits = self._buffers["weight_scale"]
            if bits.dtype == torch.int32:
                self._buffers["weight_scale"] = bits.view(torch.float32)

    def extra_repr(self) -> str:
        pad = _padded(self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scheme={self.scheme} ({SCHEMES[self.scheme]})"
            + (f", weight rows padded to {pad}" if pad != self.out_features else "")
        )


def _skipped(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def quantize_model(model: nn.Module, scheme: str = "w8a8", skip: Union[str, Iterable[str]] = ()) -> nn.Module:
    """Replace every nn.Linear in `model` with ``QLinear.from_linear`` in place; returns the model.

    skip: module names to leave in float, as fnmatch patterns on the qualified name ('lm_head',
    '*.mlp.*'); a pattern naming a module also skips everything inside it ('encoder'). A Linear used
    in several places becomes one shared QLinear. Linears inside nn.MultiheadAttention stay float:
    that module reads their weights directly instead of calling them. If `model` is itself an
    nn.Linear, the QLinear is returned.
    """
    _check_scheme("quantize_model", scheme)
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)

    def convert(name: str, linear: nn.Linear) -> QLinear:
        try:
            return QLinear.from_linear(linear, scheme)
        except ValueError as e:
            raise ValueError(f"quantize_model: layer {name!r}: {e}") from e

    if isinstance(model, nn.Linear):
        return model if _skipped("", patterns) else convert("", model)
    done: dict[int, QLinear] = {}
    for prefix, parent in list(model.named_modules(remove_duplicate=False)):
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            if not isinstance(child, nn.Linear) or _skipped(name, patterns):
                continue
            if id(child) not in done:
                done[id(child)] = convert(name, child)
            setattr(parent, child_name, done[id(child)])
    return model
