"""Quantized transformer blocks: a float HF block's weights behind fused kernels.

This module declares the architectures: each block class's part map (``PARTS``: which HF
submodules each GEMM role merges and which HF norms it reads; the one place those names are
spelled), its smoothing rules (``SMOOTH``, or ``NO_SMOOTH``: why none) and the checks of its
float layer; the forward they share is ``QuantizedBlock``'s (nn/blocks_base.py, with the precision
levels and the merging of linears). ``BLOCKS`` maps HF layer class names to block classes:

| HF layer | block |
|---|---|
| BertLayer, RobertaLayer | QBertLayer (post-LN, GeLU) |
| LlamaDecoderLayer, MistralDecoderLayer, Qwen2DecoderLayer | QLlamaDecoderLayer (SwiGLU, GQA) |
| Qwen3DecoderLayer | QQwen3DecoderLayer (+ per-head q / k RMSNorms) |
| Phi3DecoderLayer | QPhi3DecoderLayer (packed qkv_proj / gate_up_proj, partial rotary) |
| Gemma2DecoderLayer | QGemma2DecoderLayer (GeGLU, (1 + w) RMSNorms, sandwich norms, soft-cap) |
| Gemma3DecoderLayer | QGemma3DecoderLayer (Gemma-2's + per-head q / k norms) |
| GPT2Block | QGPT2Block (Conv1D weights, tanh GeLU) |

A layer whose variant a block does not support (cross-attention, another activation ...) makes the
constructor raise ValueError; the conversion then converts it Linear by Linear and reports why.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.fused import row_quant
from ..schemes import Scheme
from .blocks_base import (
    EXTRA_NORMS,
    LEVELS,
    NORMS,
    ROLES,
    QuantizedBlock,
    SmoothRule,
    _cache_arg,
    _gelu_kind,
    norm_roles,
    parts_of,
    resolve_level,
)
from .linear import linear_from_conv1d

__all__ = [
    "LEVELS",
    "ROLES",
    "NORMS",
    "EXTRA_NORMS",
    "QuantizedBlock",
    "QBertLayer",
    "QLlamaDecoderLayer",
    "QQwen3DecoderLayer",
    "QPhi3DecoderLayer",
    "QGemma2DecoderLayer",
    "QGemma3DecoderLayer",
    "QGPT2Block",
    "SmoothRule",
    "BLOCKS",
    "block_class",
    "norm_roles",
    "parts_of",
    "resolve_level",
]

# ------------------------------------------------------------------------------------------------
# The architectures: each gathers its float layer's weights; the forward is QuantizedBlock's.


class QBertLayer(QuantizedBlock):
    """A quantized ``transformers`` BertLayer / RobertaLayer (encoder self-attention, post-LN, GeLU).

    Kernels per layer (all roles INT8): quantize(x) [or the previous block's hand-over], QKV GEMM,
    SDPA, quantize(attention output), O GEMM, add_layernorm_quant (h1 and its INT8 copy), FC1 GEMM,
    bias_gelu_quant, FC2 GEMM, add_layernorm_quant (the output, and the next layer's INT8 input).
    """

    pre_norm = False
    norm = "layernorm"
    PARTS = MappingProxyType({
        "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
        "attn_out": ("attention.output.dense",),
        "fc1": ("intermediate.dense",),
        "fc2": ("output.dense",),
        "norm1": ("attention.output.LayerNorm",),
        "norm2": ("output.LayerNorm",),
    })
    NO_SMOOTH = "post-norm: each norm's output is also the residual stream, so it cannot absorb 1/s"

    def __init__(self, layer: nn.Module, level: dict[str, bool], qscheme: Optional[Scheme] = None) -> None:
        att = layer.attention
        sa = att.self
        super().__init__(level, sa, sa.num_attention_heads, sa.num_attention_heads, sa.attention_head_size, qscheme)
        if getattr(layer, "add_cross_attention", False) or getattr(sa, "is_decoder", False):
            raise ValueError("QBertLayer: decoder / cross-attention BERT layers are not supported")
        act = getattr(layer.intermediate, "intermediate_act_fn", None)
        self.gelu_approx = _gelu_kind(act)
        if self.gelu_approx is None:
            raise ValueError(f"QBertLayer: the intermediate activation must be GeLU (erf or tanh), got {act!r}")
        self._set_linears(layer)
        self._set_layer_norms(layer)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        return self._forward(hidden_states, attention_mask, None, None, kwargs)


class QLlamaDecoderLayer(QuantizedBlock):
    """A quantized LlamaDecoderLayer (also Mistral / Qwen2: attention bias, grouped KV heads, sliding
    window through HF's mask and attention function).

    Kernels per layer (all roles INT8): rmsnorm_quant(x) [or the previous block's hand-over], QKV
    GEMM, rotary + KV cache + SDPA (torch), quantize(attention output), O GEMM, add_rmsnorm_quant
    (r and its INT8 norm), gate|up GEMM, silu_mul_quant, down GEMM, and the last residual add fused
    with the next layer's rmsnorm_quant.
    """

    rope = True
    act = "silu_mul"
    PARTS = MappingProxyType({
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "fc1": ("mlp.gate_proj", "mlp.up_proj"),
        "fc2": ("mlp.down_proj",),
        "norm1": ("input_layernorm",),
        "norm2": ("post_attention_layernorm",),
    })
    SMOOTH = (
        SmoothRule(PARTS["norm1"][0], PARTS["qkv"], "norm"),  # input_layernorm -> q, k, v
        SmoothRule(PARTS["norm2"][0], PARTS["fc1"], "norm"),  # post_attention_layernorm -> gate, up
        SmoothRule(PARTS["fc1"][1], PARTS["fc2"], "rows"),  # up -> down
        SmoothRule(PARTS["qkv"][2], PARTS["attn_out"], "gqa"),  # v -> o
    )

    def __init__(self, layer: nn.Module, level: dict[str, bool], qscheme: Optional[Scheme] = None) -> None:
        name = type(self).__name__
        att, mlp = layer.self_attn, layer.mlp
        cfg = att.config
        super().__init__(level, att, cfg.num_attention_heads, cfg.num_key_value_heads, att.head_dim, qscheme)
        act = getattr(mlp, "act_fn", getattr(mlp, "activation_fn", None))  # Phi-3: activation_fn
        if self.act == "silu_mul":
            if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
                raise ValueError(f"{name}: the MLP activation must be SiLU, got {act!r}")
        else:  # GeGLU (Gemma)
            self.gelu_approx = _gelu_kind(act)
            if self.gelu_approx is None:
                raise ValueError(f"{name}: the MLP activation must be GeLU (erf or tanh), got {act!r}")
        self._set_linears(layer)
        self._set_layer_norms(layer)

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
        return self._forward(hidden_states, attention_mask, position_embeddings, _cache_arg(past_key_values, kwargs),
                             kwargs)


class QQwen3DecoderLayer(QLlamaDecoderLayer):
    """A quantized Qwen3DecoderLayer: LLaMA's block plus per-head RMSNorms of q and k (``q_norm``,
    ``k_norm`` over head_dim, LLaMA-style rounding) applied in torch between the QKV GEMM and RoPE.
    Smoothing as LLaMA's: the q / k norms act on q_proj / k_proj's outputs, which the input norm's
    fold leaves unchanged."""

    PARTS = MappingProxyType({
        **QLlamaDecoderLayer.PARTS,
        "q_norm": ("self_attn.q_norm",),
        "k_norm": ("self_attn.k_norm",),
    })


class QPhi3DecoderLayer(QLlamaDecoderLayer):
    """A quantized Phi3DecoderLayer: LLaMA's block with HF's packed Linears as single parts
    (``qkv_proj`` = [q | k | v] rows, ``gate_up_proj`` = [gate | up] rows: the merged GEMMs' own
    layouts), partial rotary (``partial_rotary_factor``) and the config's sliding window passed to
    HF's attention function. Smoothing folds into the packed Linears' last rows (``tail``)."""

    PARTS = MappingProxyType({
        "qkv": ("self_attn.qkv_proj",),
        "attn_out": ("self_attn.o_proj",),
        "fc1": ("mlp.gate_up_proj",),
        "fc2": ("mlp.down_proj",),
        "norm1": ("input_layernorm",),
        "norm2": ("post_attention_layernorm",),
    })
    SMOOTH = (
        SmoothRule(PARTS["norm1"][0], PARTS["qkv"], "norm"),  # input_layernorm -> qkv_proj
        SmoothRule(PARTS["norm2"][0], PARTS["fc1"], "norm"),  # post_attention_layernorm -> gate_up_proj
        SmoothRule(PARTS["fc1"][0], PARTS["fc2"], "rows", tail=True),  # gate_up_proj's up rows -> down
        SmoothRule(PARTS["qkv"][0], PARTS["attn_out"], "gqa", tail=True),  # qkv_proj's v rows -> o
    )


class QGemma2DecoderLayer(QLlamaDecoderLayer):
    """A quantized Gemma2DecoderLayer: GeGLU MLP (gelu(gate) * up, tanh GeLU), RMSNorms computing
    x_hat * (1 + weight) (``norm_offset``), "sandwich" norms on the attention and MLP outputs before
    their residual adds (``post_attn_norm``, ``post_mlp_norm``: torch, model dtype), attention
    soft-capping and sliding window passed to HF's attention function, query_pre_attn_scalar's
    scaling. The embedding scale stays in HF's model (outside the layers).

    Kernels per layer (all roles INT8): rmsnorm_quant(x) [or the hand-over], QKV GEMM, rotary + cache +
    attention, quantize, O GEMM, post-attention RMSNorm (torch), add_rmsnorm_quant
    (pre_feedforward_layernorm), gate|up GEMM, GeGLU (torch) + quantize, down GEMM, post-feed-forward
    RMSNorm (torch), the residual add fused with the next layer's rmsnorm_quant.
    """

    act = "gelu_mul"
    norm_offset = 1.0
    PARTS = MappingProxyType({
        **QLlamaDecoderLayer.PARTS,  # the same projections and input norm; the sandwich norms:
        "norm2": ("pre_feedforward_layernorm",),
        "post_attn_norm": ("post_attention_layernorm",),
        "post_mlp_norm": ("post_feedforward_layernorm",),
    })
    SMOOTH = (
        SmoothRule(PARTS["norm1"][0], PARTS["qkv"], "norm+1"),  # input_layernorm -> q, k, v
        SmoothRule(PARTS["norm2"][0], PARTS["fc1"], "norm+1"),  # pre_feedforward_layernorm -> gate, up
        SmoothRule(PARTS["fc1"][1], PARTS["fc2"], "rows"),  # up -> down (GeGLU is linear in up)
        SmoothRule(PARTS["qkv"][2], PARTS["attn_out"], "gqa"),  # v -> o (o's output is unchanged)
    )

    def _act(self, y: torch.Tensor, quantized: bool):
        """GeGLU: gelu(gate) * up with y = [gate | up]. Quantized: one fused row op (``gelu_mul_quant``'s
        kernel: the product in fp32, rounded once to y's dtype, quantized per token or group); float,
        as HF computes it."""
        if not quantized:
            g, u = y.chunk(2, dim=1)
            return F.gelu(g, approximate=self.gelu_approx) * u
        op = "gelu_tanh_mul" if self.gelu_approx == "tanh" else "gelu_mul"
        q, s, _ = row_quant(f"{type(self).__name__} GeGLU", op, y, dtype=self._qdtype, **self._qkw)
        return q, s

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return self._forward(hidden_states, attention_mask, position_embeddings, _cache_arg(past_key_values, kwargs),
                             kwargs)


class QGemma3DecoderLayer(QGemma2DecoderLayer):
    """A quantized Gemma3DecoderLayer (text): Gemma-2's block plus per-head (1 + weight) RMSNorms of q
    and k before RoPE (``q_norm``, ``k_norm``); local / global RoPE tables come from HF's model per
    layer type."""

    PARTS = MappingProxyType({
        **QGemma2DecoderLayer.PARTS,
        "q_norm": ("self_attn.q_norm",),
        "k_norm": ("self_attn.k_norm",),
    })


class QGPT2Block(QuantizedBlock):
    """A quantized GPT2Block (pre-LN, Conv1D weights stored [in, out], tanh GeLU).

    Kernels per layer (all roles INT8): layernorm_quant(x) [or the previous block's hand-over], QKV
    GEMM, KV cache + SDPA (torch), quantize(attention output), O GEMM, add_layernorm_quant, FC GEMM,
    bias_gelu_quant, projection GEMM, and the last residual add fused with the next block's
    layernorm_quant.
    """

    norm = "layernorm"
    PARTS = MappingProxyType({  # every role one HF Conv1D (weight [in, out])
        "qkv": ("attn.c_attn",),
        "attn_out": ("attn.c_proj",),
        "fc1": ("mlp.c_fc",),
        "fc2": ("mlp.c_proj",),
        "norm1": ("ln_1",),
        "norm2": ("ln_2",),
    })
    SMOOTH = (
        SmoothRule(PARTS["norm1"][0], PARTS["qkv"], "norm"),  # ln_1 -> c_attn
        SmoothRule(PARTS["norm2"][0], PARTS["fc1"], "norm"),  # ln_2 -> c_fc
    )

    def __init__(self, layer: nn.Module, level: dict[str, bool], qscheme: Optional[Scheme] = None) -> None:
        att, mlp = layer.attn, layer.mlp
        super().__init__(level, att, att.num_heads, att.num_heads, att.head_dim, qscheme)
        if hasattr(layer, "crossattention"):
            raise ValueError("QGPT2Block: cross-attention GPT-2 blocks are not supported")
        if att.reorder_and_upcast_attn and att.config._attn_implementation == "eager":
            raise ValueError("QGPT2Block: reorder_and_upcast_attn (eager attention) is not supported")
        self.gelu_approx = _gelu_kind(getattr(mlp, "act", None))
        if self.gelu_approx is None:
            raise ValueError(f"QGPT2Block: the MLP activation must be GeLU, got {getattr(mlp, 'act', None)!r}")
        self._set_linears(layer, convert=linear_from_conv1d)
        self._set_layer_norms(layer)

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_key_values: Any = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = False,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("QGPT2Block: encoder_hidden_states (cross-attention) are not supported")
        return self._forward(hidden_states, attention_mask, None, _cache_arg(past_key_values, kwargs), kwargs)


# ------------------------------------------------------------------------------------------------
# Recognition: which HF layer classes have a fused block.

_BLOCKS: dict[str, type[QuantizedBlock]] = {
    "BertLayer": QBertLayer,
    "RobertaLayer": QBertLayer,
    "LlamaDecoderLayer": QLlamaDecoderLayer,
    "MistralDecoderLayer": QLlamaDecoderLayer,
    "Qwen2DecoderLayer": QLlamaDecoderLayer,
    "Qwen3DecoderLayer": QQwen3DecoderLayer,
    "Phi3DecoderLayer": QPhi3DecoderLayer,
    "Gemma2DecoderLayer": QGemma2DecoderLayer,
    "Gemma3DecoderLayer": QGemma3DecoderLayer,
    "GPT2Block": QGPT2Block,
}


#: HF layer class name -> the fused block class that replaces it (read-only).
BLOCKS: Mapping[str, type[QuantizedBlock]] = MappingProxyType(_BLOCKS)


def block_class(module: nn.Module) -> Optional[type[QuantizedBlock]]:
    """The fused block class for a float HF layer (by its class name), or None."""
    return _BLOCKS.get(type(module).__name__)
