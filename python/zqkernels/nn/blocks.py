"""Quantized transformer blocks: a float HF block's weights behind fused kernels.

A block replaces one HF transformers layer (``BertLayer``, ``LlamaDecoderLayer`` and its
Mistral / Qwen2 relatives) with the same forward signature and output, computed as:

- the linears of a block merged where they share an input (q/k/v -> one QKV GEMM; LLaMA's gate and
  up -> one GEMM) and run as W8A8 ``QLinear`` GEMMs (bias in the GEMM epilogue);
- every activation a W8A8 GEMM reads is quantized by the kernel that produces it: the norm
  (``rmsnorm_quant`` / ``add_layernorm_quant`` ...), the activation (``bias_gelu_quant``,
  ``silu_mul_quant``), or ``quantize_per_token`` where nothing else touches the values (attention's
  output), so no bf16 intermediate is written only to be read back by a quantizer;
- the block's last residual add is fused with the *next* block's input norm and quantization
  (blocks are chained by ``quantize_model``; see ``QuantizedBlock.link``);
- attention stays in torch (HF's attention interface, SDPA by default) in the model dtype.

Precision levels (ZeroQuant-HERO-style, a per-module map; docs/FUSED.md): each GEMM role ``qkv``,
``attn_out``, ``fc1``, ``fc2`` is INT8 (W8A8) or kept in the model's float dtype. ``LEVELS`` names
presets from all-INT8 to accuracy-first. A float role runs the float weight with torch ops, and its
producer emits a float activation instead of a quantized one.

Inference only (dropout is not applied); eager, CUDA-graph capture and torch.compile all work.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fused as fz
from ..ops.quantize import quantize_per_token
from .linear import QLinear

__all__ = ["LEVELS", "ROLES", "QuantizedBlock", "QBertLayer", "QLlamaDecoderLayer", "resolve_level"]

ROLES = ("qkv", "attn_out", "fc1", "fc2")

# Presets, most INT8 first. The ZeroQuant-HERO paper defines modes M1 / M2 / M3 over its own module
# list (including INT8 attention); its exact module sets could not be confirmed from the material
# available to us, so these are our own, ordered the same way (docs/FUSED.md explains each choice):
#   "int8"      every GEMM INT8 (the fastest);
#   "balanced"  FC2 in float: its input (after GeLU / SiLU*up) has the heaviest-tailed rows of the block;
#   "accuracy"  only the GEMMs whose input comes straight out of a norm (QKV, FC1) are INT8, with the
#               quantization fused into that norm.
LEVELS: dict[str, dict[str, bool]] = {
    "int8": {"qkv": True, "attn_out": True, "fc1": True, "fc2": True},
    "balanced": {"qkv": True, "attn_out": True, "fc1": True, "fc2": False},
    "accuracy": {"qkv": True, "attn_out": False, "fc1": True, "fc2": False},
}


def resolve_level(level: Union[str, dict[str, bool]]) -> dict[str, bool]:
    """A preset name or a {role: int8?} map (missing roles are INT8) -> a full map."""
    if isinstance(level, str):
        if level not in LEVELS:
            raise ValueError(f"quantize_model: level must be one of {sorted(LEVELS)} or a dict, got {level!r}")
        return dict(LEVELS[level])
    if isinstance(level, dict):
        bad = sorted(set(level) - set(ROLES))
        if bad:
            raise ValueError(f"quantize_model: level has unknown roles {bad}; roles are {list(ROLES)}")
        return {r: bool(level.get(r, True)) for r in ROLES}
    raise TypeError(f"quantize_model: level must be a preset name or a dict, got {type(level).__name__}")


def _merge_linears(op: str, linears: list[nn.Linear], int8: bool) -> nn.Module:
    """One linear over the concatenated output features of `linears` (same input): a W8A8 QLinear,
    or a float nn.Linear when the role stays in float. A missing bias of one part becomes zeros."""
    w = torch.cat([lin.weight.detach() for lin in linears], 0)
    has_bias = any(lin.bias is not None for lin in linears)
    b = None
    if has_bias:
        b = torch.cat(
            [
                lin.bias.detach() if lin.bias is not None else w.new_zeros(lin.out_features)
                for lin in linears
            ]
        )
    merged = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, device="meta")
    merged.weight = nn.Parameter(w, requires_grad=False)
    merged.bias = nn.Parameter(b, requires_grad=False) if b is not None else None
    if not int8:
        return merged
    try:
        return QLinear.from_linear(merged)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{op}: {e}") from e


def _f32(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if p is None else p.detach().to(torch.float32).contiguous()


class _Meta:
    """What HF's attention functions read from their `module` argument, without the module's weights."""

    def __init__(self, attn: nn.Module) -> None:
        for k in ("config", "is_causal", "num_key_value_groups", "scaling", "layer_idx", "head_dim"):
            if hasattr(attn, k):
                setattr(self, k, getattr(attn, k))
        self.training = False


def _attention_interface(config: Any):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl == "eager":
        return None
    return ALL_ATTENTION_FUNCTIONS[impl]


class QuantizedBlock(nn.Module):
    """What the fused blocks share: the precision map, the producer-side quantization, and the
    hand-over of the next block's quantized input (``link``)."""

    def __init__(self, level: dict[str, bool]) -> None:
        super().__init__()
        self.level = dict(level)
        self._next: Optional["QuantizedBlock"] = None  # set by link(); not a submodule
        self._handoff: Optional[tuple[torch.Tensor, int, Any]] = None

    # -- chaining ---------------------------------------------------------------------------------
    def link(self, nxt: Optional["QuantizedBlock"]) -> None:
        """Let this block's last residual add also produce `nxt`'s quantized input (nxt must be
        the block that consumes this block's output, with the same kind of input norm)."""
        object.__setattr__(self, "_next", nxt)

    def _take_handoff(self, x: torch.Tensor):
        """The (q, s) or float input the previous block prepared for x, if x is still that tensor."""
        if torch.compiler.is_compiling():
            return None
        h = self._handoff
        if h is None:
            return None
        self._handoff = None
        if h[0] is x and x._version == h[1]:
            return h[2]
        return None

    def _give_handoff(self, out: torch.Tensor, prepared: Any) -> None:
        if self._next is not None and not torch.compiler.is_compiling():
            self._next._handoff = (out, out._version, prepared)

    # -- one GEMM role ----------------------------------------------------------------------------
    @staticmethod
    def _linear(lin: nn.Module, inp, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(inp, tuple):
            return lin.forward_quantized(inp[0], inp[1], dtype)
        return lin(inp)

    def extra_repr(self) -> str:
        return "level=" + ", ".join(f"{r}={'int8' if self.level[r] else 'float'}" for r in ROLES)


# ------------------------------------------------------------------------------------------------
# BERT (post-LN)


class QBertLayer(QuantizedBlock):
    """A quantized ``transformers`` BertLayer (encoder, self-attention only, post-LN):

        h1  = LayerNorm1(x + Wo(attention(Wqkv(x))))
        out = LayerNorm2(h1 + W2(gelu(W1(h1))))

    Kernels per layer (all roles INT8): quantize(x) [skipped when the previous block prepared it],
    QKV GEMM, SDPA, quantize(attention output), O GEMM, add_layernorm_quant (h1 and its INT8
    copy), FC1 GEMM, bias_gelu_quant, FC2 GEMM, add_layernorm_quant (out, and the next layer's
    INT8 input).
    """

    def __init__(self, layer: nn.Module, level: dict[str, bool]) -> None:
        super().__init__(level)
        att = layer.attention
        sa = att.self
        if getattr(layer, "add_cross_attention", False) or getattr(sa, "is_decoder", False):
            raise ValueError("QBertLayer: decoder / cross-attention BERT layers are not supported")
        act = getattr(layer.intermediate, "intermediate_act_fn", None)
        self.approximate = _gelu_kind(act)
        if self.approximate is None:
            raise ValueError(f"QBertLayer: the intermediate activation must be GeLU (erf or tanh), got {act!r}")
        self.heads = sa.num_attention_heads
        self.head_dim = sa.attention_head_size
        self.hidden = sa.all_head_size
        self._meta = _Meta(sa)
        self._attn = _attention_interface(sa.config)
        self.qkv = _merge_linears("QBertLayer qkv", [sa.query, sa.key, sa.value], level["qkv"])
        self.attn_out = _merge_linears("QBertLayer attn_out", [att.output.dense], level["attn_out"])
        self.fc1 = _merge_linears("QBertLayer fc1", [layer.intermediate.dense], level["fc1"])
        self.fc2 = _merge_linears("QBertLayer fc2", [layer.output.dense], level["fc2"])
        self.ln1, self.ln2 = att.output.LayerNorm, layer.output.LayerNorm
        self.register_buffer("ln1_w", _f32(self.ln1.weight), persistent=False)
        self.register_buffer("ln1_b", _f32(self.ln1.bias), persistent=False)
        self.register_buffer("ln2_w", _f32(self.ln2.weight), persistent=False)
        self.register_buffer("ln2_b", _f32(self.ln2.bias), persistent=False)

    def _in(self, hidden_states: torch.Tensor, x2: torch.Tensor):
        """The QKV input: the previous block's hand-over, else quantize x (or x itself in float)."""
        got = self._take_handoff(hidden_states)
        if got is not None:
            return got
        return quantize_per_token(x2) if self.level["qkv"] else x2

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        B, S, D = hidden_states.shape
        dt = hidden_states.dtype
        x2 = hidden_states.reshape(-1, D)
        qkv = self._linear(self.qkv, self._in(hidden_states, x2), dt)
        a2 = self._attend(qkv, B, S, attention_mask, kwargs)
        o = self._linear(self.attn_out, quantize_per_token(a2) if self.level["attn_out"] else a2, dt)
        # h1 = LN1(o + x): written over o (ours); its INT8 copy feeds FC1.
        if self.level["fc1"]:
            q1, s1, h1 = fz.add_layernorm_quant(
                x2, o, self.ln1_w, self.ln1_b, self.ln1.eps, residual_out="normed", inplace=True
            )
            y1 = self._linear(self.fc1, (q1, s1), dt)
        else:
            h1 = self.ln1(o + x2)
            y1 = self.fc1(h1)
        inp2 = fz.bias_gelu_quant(y1, None, self.approximate) if self.level["fc2"] else F.gelu(y1, approximate=self.approximate)
        y2 = self._linear(self.fc2, inp2, dt)
        nxt = self._next
        if nxt is not None and nxt.level["qkv"] and isinstance(nxt, QBertLayer):
            q, s, out = fz.add_layernorm_quant(
                h1, y2, self.ln2_w, self.ln2_b, self.ln2.eps, residual_out="normed", inplace=True
            )
            out = out.view(B, S, D)
            self._give_handoff(out, (q, s))
            return out
        return self.ln2(y2 + h1).view(B, S, D)

    def _attend(self, qkv: torch.Tensor, B: int, S: int, mask, kwargs) -> torch.Tensor:
        H, hd = self.heads, self.head_dim
        q, k, v = (t.view(B, S, H, hd).transpose(1, 2) for t in qkv.split(self.hidden, dim=1))
        if self._attn is None:  # config._attn_implementation == "eager": plain softmax attention
            from transformers.models.bert.modeling_bert import eager_attention_forward as attn
        else:
            attn = self._attn
        kwargs = {k: v for k, v in kwargs.items() if k not in ("output_attentions", "past_key_values")}
        out, _ = attn(self._meta, q, k, v, mask, dropout=0.0, scaling=self._meta.scaling, **kwargs)
        return out.reshape(B * S, self.hidden)


def _gelu_kind(act: Any) -> Optional[str]:
    name = type(act).__name__
    if name in ("GELUActivation",) or act is F.gelu:
        return "none"
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh", "FastGELUActivation"):
        return "tanh"
    if isinstance(act, nn.GELU):
        return act.approximate
    return None


# ------------------------------------------------------------------------------------------------
# LLaMA family (pre-RMSNorm, rotary, SwiGLU; QKV bias and grouped KV heads as in Mistral / Qwen2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class QLlamaDecoderLayer(QuantizedBlock):
    """A quantized LlamaDecoderLayer (also Mistral / Qwen2-style: attention bias, GQA):

        r   = x + Wo(attention(rope(Wqkv(rmsnorm1(x)))))
        out = r + Wdown(silu(Wgate(rmsnorm2(r))) * Wup(rmsnorm2(r)))

    Kernels per layer (all roles INT8): rmsnorm_quant(x) [or the previous block's hand-over],
    QKV GEMM, rotary + KV cache + SDPA (torch), quantize(attention output), O GEMM,
    add_rmsnorm_quant (r and its INT8 norm), gate|up GEMM, silu_mul_quant, down GEMM, and the last
    residual add fused with the next layer's rmsnorm_quant.
    """

    def __init__(self, layer: nn.Module, level: dict[str, bool]) -> None:
        super().__init__(level)
        att, mlp = layer.self_attn, layer.mlp
        act = getattr(mlp, "act_fn", None)
        if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
            raise ValueError(f"QLlamaDecoderLayer: the MLP activation must be SiLU, got {act!r}")
        cfg = att.config
        self.head_dim = att.head_dim
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.layer_idx = att.layer_idx
        self._meta = _Meta(att)
        self._attn = _attention_interface(cfg)
        self.qkv = _merge_linears("QLlamaDecoderLayer qkv", [att.q_proj, att.k_proj, att.v_proj], level["qkv"])
        self.attn_out = _merge_linears("QLlamaDecoderLayer attn_out", [att.o_proj], level["attn_out"])
        self.fc1 = _merge_linears("QLlamaDecoderLayer fc1", [mlp.gate_proj, mlp.up_proj], level["fc1"])
        self.fc2 = _merge_linears("QLlamaDecoderLayer fc2", [mlp.down_proj], level["fc2"])
        self.intermediate = mlp.gate_proj.out_features
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.eps1 = float(getattr(self.norm1, "variance_epsilon", getattr(self.norm1, "eps", 1e-6)))
        self.eps2 = float(getattr(self.norm2, "variance_epsilon", getattr(self.norm2, "eps", 1e-6)))
        self.register_buffer("norm1_w", _f32(self.norm1.weight), persistent=False)
        self.register_buffer("norm2_w", _f32(self.norm2.weight), persistent=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        past_key_values: Any = None,
        use_cache: Optional[bool] = False,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        B, S, D = hidden_states.shape
        dt = hidden_states.dtype
        x2 = hidden_states.reshape(-1, D)
        inp = self._take_handoff(hidden_states)
        if inp is None:
            inp = fz.rmsnorm_quant(x2, self.norm1_w, self.eps1) if self.level["qkv"] else self.norm1(x2)
        qkv = self._linear(self.qkv, inp, dt)
        a2 = self._attend(qkv, B, S, attention_mask, position_embeddings, past_key_values, kwargs)
        o = self._linear(self.attn_out, quantize_per_token(a2) if self.level["attn_out"] else a2, dt)
        if self.level["fc1"]:
            q1, s1, r = fz.add_rmsnorm_quant(x2, o, self.norm2_w, self.eps2, inplace=True)  # r over o
            gu = self._linear(self.fc1, (q1, s1), dt)
        else:
            r = o.add_(x2)
            gu = self.fc1(self.norm2(r))
        if self.level["fc2"]:
            inp2 = fz.silu_mul_quant(gu)
        else:
            g, u = gu.split(self.intermediate, dim=1)
            inp2 = F.silu(g) * u
        y = self._linear(self.fc2, inp2, dt)
        nxt = self._next
        if nxt is not None and nxt.level["qkv"] and isinstance(nxt, QLlamaDecoderLayer):
            q, s, out = fz.add_rmsnorm_quant(r, y, nxt.norm1_w, nxt.eps1, inplace=True)  # out over y
            out = out.view(B, S, D)
            self._give_handoff(out, (q, s))
            return out
        return y.add_(r).view(B, S, D)

    def _attend(self, qkv, B, S, mask, pos, cache, kwargs) -> torch.Tensor:
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = qkv.split((H * hd, KV * hd, KV * hd), dim=1)
        q = q.view(B, S, H, hd).transpose(1, 2)
        k = k.view(B, S, KV, hd).transpose(1, 2)
        v = v.view(B, S, KV, hd).transpose(1, 2)
        if pos is None:
            raise ValueError("QLlamaDecoderLayer: position_embeddings (cos, sin) are required, as for LlamaDecoderLayer")
        cos, sin = pos
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self._attn is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as attn
        else:
            attn = self._attn
        kwargs = {n: a for n, a in kwargs.items() if n not in ("output_attentions", "cache_position", "use_cache")}
        out, _ = attn(self._meta, q, k, v, mask, dropout=0.0, scaling=self._meta.scaling, **kwargs)
        return out.reshape(B * S, H * hd)


# ------------------------------------------------------------------------------------------------
# Recognition: which HF layer classes have a fused block.

_BLOCKS: dict[str, type] = {
    "BertLayer": QBertLayer,
    "RobertaLayer": QBertLayer,
    "LlamaDecoderLayer": QLlamaDecoderLayer,
    "MistralDecoderLayer": QLlamaDecoderLayer,
    "Qwen2DecoderLayer": QLlamaDecoderLayer,
}


def block_class(module: nn.Module) -> Optional[type]:
    return _BLOCKS.get(type(module).__name__)
