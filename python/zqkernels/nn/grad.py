"""Gradients to the inputs of quantized modules (QLinear, the fused blocks), for inference without
``torch.no_grad()`` and for training something on top of a frozen quantized model (LoRA-style
adapters, distillation): docs/ARCHITECTURE.md, "Grad mode".

The forward values are the quantized kernels' own, bit for bit the no-grad path's. The backward is
that of the float computation the quantized one stands for, with the quantized weights frozen:

- a GEMM ``y = x @ W.T + b``: ``grad_x = grad_y @ W`` with W the float weight the layer's buffers
  represent (``Scheme.dequantize``, plus LoRC's low-rank term ``(lorc_a @ lorc_b).T`` if the layer
  has one; a float role's nn.Linear: its weight). No gradient reaches a weight, a bias or a scale
  (they are buffers; float roles' weights have requires_grad False);
- the activation quantization (per token, or per token group): straight through, d quant(x) / dx =
  identity;
- norms, activations, residual adds and attention: their float math (norms in fp32 with the fp32
  copies of the norm weights that the kernels read, frozen too), evaluated at the quantized path's
  values.

Nothing here runs on the no-grad / inference_mode path: QLinear.forward and
QuantizedBlock._forward branch here only for an input that requires grad with grad mode on, and
raise (``training_error``) when the module is in train() mode then.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["input_weight", "linear_with_input_grad", "block_with_input_grad", "training_error"]


def training_error(what: str) -> RuntimeError:
    """The error of a quantized module called in train() mode with grad on an input that requires
    grad (training it would silently leave its weights untouched)."""
    return RuntimeError(
        f"{what}: training is not supported. "
        "Its quantized weights are frozen buffers (no gradient; rounding is not differentiable). "
        "Call .eval() to run it for inference or to backpropagate to its input (LoRA, distillation). "
        "To train the weights, train the float model and quantize it afterwards."
    )


def input_weight(lin: nn.Module) -> torch.Tensor:
    """The float32 weight [out_features, in_features] whose transpose maps `lin`'s input to its output:
    a QLinear's dequantized weight plus its LoRC term (``y += (x @ lorc_a) @ lorc_b``, so W +=
    (lorc_a @ lorc_b).T), or an nn.Linear's weight; detached (a constant of the backward)."""
    qs = getattr(lin, "qscheme", None)
    if qs is None or "weight_q" not in lin._buffers:
        return lin.weight.detach().float()
    w = qs.dequantize(lin)
    a = lin._buffers.get("lorc_a")
    if a is not None:
        w = w + (a.float() @ lin._buffers["lorc_b"].float()).t()
    return w


def _input_grad(grad: torch.Tensor, lin: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """grad [..., out_features] @ W (fp32) -> [..., in_features] in `dtype`."""
    w = input_weight(lin)
    g2 = grad.reshape(-1, w.shape[0])
    return (g2.float() @ w).to(dtype).view(*grad.shape[:-1], w.shape[1])


class _QLinearFn(torch.autograd.Function):
    """forward: QLinear.forward (the quantized path; grad mode is off inside); backward: grad_y @ W."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        ctx.x_dtype = x.dtype
        return layer.forward(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _input_grad(grad, ctx.layer, ctx.x_dtype), None


def linear_with_input_grad(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """QLinear.forward for an x that requires grad, grad mode on: the same output, and grad_x =
    grad_y @ ``input_weight(layer)``. train() mode raises ``training_error``."""
    if layer.training:
        raise training_error(f"QLinear(in_features={layer.in_features}, out_features={layer.out_features}, "
                             f"scheme={layer.qscheme.label()})")
    return _QLinearFn.apply(x, layer)


class _GemmThrough(torch.autograd.Function):
    """forward: `value` (a GEMM output computed by the quantized path); backward: grad @ W to `x`, the
    float input of that GEMM (the quantization of x is straight through)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lin: nn.Module, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.lin = lin
        ctx.x_dtype = x.dtype
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _input_grad(grad, ctx.lin, ctx.x_dtype), None, None


class _Through(torch.autograd.Function):
    """forward: `value`; backward: the gradient goes to `shadow` (the float computation of the same
    quantity) unchanged."""

    @staticmethod
    def forward(ctx, shadow: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.dtype = shadow.dtype
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.to(ctx.dtype), None


def _norm_float(blk: Any, i: int, x: torch.Tensor) -> torch.Tensor:
    """Norm `i` of the block in fp32 with the fp32 weights the kernels read (the gradient path)."""
    w, b, eps = getattr(blk, f"norm{i}_w"), getattr(blk, f"norm{i}_b"), getattr(blk, f"eps{i}")
    xf = x.float()
    if blk.norm == "layernorm":
        return F.layer_norm(xf, (xf.shape[-1],), w, b, eps)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w
    return y if b is None else y + b


def _act_float(blk: Any, z: torch.Tensor) -> torch.Tensor:
    zf = z.float()
    if blk.act == "silu_mul":
        g, u = zf.chunk(2, dim=1)
        return F.silu(g) * u
    if blk.act == "gelu_mul":
        g, u = zf.chunk(2, dim=1)
        return F.gelu(g, approximate=blk.gelu_approx) * u
    return F.gelu(zf, approximate=blk.gelu_approx)


def block_with_input_grad(blk: Any, hidden_states: torch.Tensor, mask, pos, cache, kwargs) -> torch.Tensor:
    """QuantizedBlock._forward for hidden states that require grad, grad mode on.

    The values are computed step by step exactly as ``_forward`` computes them (the same calls, in
    the same order, under no_grad: the kernels' outputs, the hand-over to the next block), so the
    output is bit for bit the no-grad one. Each step's value is tied to its float counterpart for the
    backward (``_GemmThrough`` for the GEMMs, ``_Through`` for residual sums and post-norms), so the
    gradient is the float block's with the dequantized weights, at the quantized path's values.
    Attention runs once, with autograd (its cache receives the same K / V values). Keep this in step
    with ``_forward`` (tests/test_grad_mode.py compares the two bit for bit).
    """
    if blk.training:
        raise training_error(f"{type(blk).__name__}(layer_idx={blk.layer_idx}, scheme={blk.qscheme.label()})")
    B, S, D = hidden_states.shape
    dt = hidden_states.dtype
    lv = blk.level
    x2 = hidden_states.reshape(-1, D)
    lin = blk._linear
    with torch.no_grad():
        qkv_q = lin(blk.qkv, blk._qkv_input(hidden_states, x2), dt)
    qkv = _GemmThrough.apply(_norm_float(blk, 1, x2) if blk.pre_norm else x2, blk.qkv, qkv_q)
    a2 = blk._attend(qkv, B, S, mask, pos, cache, kwargs or {})
    with torch.no_grad():
        o_g = lin(blk.attn_out, blk._quantize(a2) if lv["attn_out"] else a2, dt)
        o_q = blk._post("post_attn_norm", o_g)
        # the residual output is written over its input: a copy, o_q stays what `o` shows
        inp1, r_q = blk._norm(2 if blk.pre_norm else 1, x2, o_q.clone(), "sum" if blk.pre_norm else "normed",
                              lv["fc1"])
    # a sandwich norm (Gemma) is torch math: with autograd on the same values it gives o_q exactly
    o = blk._post("post_attn_norm", _GemmThrough.apply(a2, blk.attn_out, o_g))
    r = _Through.apply(x2 + o if blk.pre_norm else _norm_float(blk, 1, x2 + o), r_q)
    with torch.no_grad():
        z_q = lin(blk.fc1, inp1, dt)
    z = _GemmThrough.apply(_norm_float(blk, 2, r) if blk.pre_norm else r, blk.fc1, z_q)
    with torch.no_grad():
        y_g = lin(blk.fc2, blk._act(z_q, lv["fc2"]), dt)
        y_q = blk._post("post_mlp_norm", y_g)
    y = blk._post("post_mlp_norm", _GemmThrough.apply(_act_float(blk, z), blk.fc2, y_g))
    nxt = blk._next
    handoff = (nxt is not None and type(nxt) is type(blk) and nxt.level["qkv"] and nxt._qdtype is blk._qdtype
               and nxt._qkw == blk._qkw and not torch.compiler.is_compiling())
    with torch.no_grad():
        yv = y_q.clone()  # written over below, as in _forward
        if blk.pre_norm:
            if handoff:
                prepared, out_q = nxt._norm(1, r_q, yv, "sum", True)
            else:
                prepared, out_q = None, yv.add_(r_q)
        else:
            prepared, out_q = blk._norm(2, r_q, yv, "normed", handoff)
    out = _Through.apply(r + y if blk.pre_norm else _norm_float(blk, 2, r + y), out_q).view(B, S, D)
    if handoff:
        nxt._handoff = (out, out._version, prepared)  # not an inference tensor: grad mode is on
    return out
