"""Quantized transformer blocks: a float HF block's weights behind fused kernels.

A block replaces one HF transformers layer (``BertLayer``, ``LlamaDecoderLayer`` and its
Mistral / Qwen2 relatives, ``GPT2Block``) with the same forward signature and output, computed as:

- the linears of a block merged where they share an input (q/k/v -> one QKV GEMM; LLaMA's gate and
  up -> one GEMM) and run as ``QLinear`` GEMMs of the block's scheme (any scheme of
  ``zqkernels.schemes``: W8A8 by default, FP8, W4A8, W4A8-FP, group W8A8; bias in the GEMM epilogue);
- every activation a quantized GEMM reads is quantized, in the scheme's activation format (int8 or
  FP8 E4M3, ``Scheme.act_dtype``), by the kernel that produces it: the norm
  (``rmsnorm_quant`` / ``add_layernorm_quant`` ...), the activation (``bias_gelu_quant``,
  ``silu_mul_quant``), or ``quantize_per_token`` where nothing else touches the values (attention's
  output), so no bf16 intermediate is written only to be read back by a quantizer;
- the block's last residual add is fused with the *next* block's input norm and quantization
  (blocks are chained by ``quantize_model``; see ``QuantizedBlock.link``);
- attention stays in torch (HF's attention interface, SDPA by default) in the model dtype.

Precision levels (ZeroQuant-HERO-style, a per-module map; docs/FUSED.md): each GEMM role ``qkv``,
``attn_out``, ``fc1``, ``fc2`` is quantized (with the block's scheme; "int8" in the presets' names
is W8A8's case) or kept in the model's float dtype. ``LEVELS`` names presets from all-quantized to
accuracy-first. A float role runs the float weight with torch ops, and its
producer emits a float activation instead of a quantized one.

Inference (dropout is not applied, in train() mode too); eager, CUDA-graph capture and torch.compile
all work. The weights are frozen: in eval() mode with grad on and hidden states that require grad,
the output is the same and gradients reach the hidden states (nn/grad.py: the float block's
backward with the dequantized weights, straight through the activation quantization); train() mode
then raises RuntimeError.
"""

from __future__ import annotations

from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import quantize_per_token
from ..ops.fused import bias_gelu_quant, row_quant, silu_mul_quant
from ..schemes import W8A8, Scheme
from .grad import block_with_input_grad
from .linear import QLinear, linear_from_conv1d, run_weight_quantizer

__all__ = [
    "LEVELS",
    "ROLES",
    "NORMS",
    "QuantizedBlock",
    "QBertLayer",
    "QLlamaDecoderLayer",
    "QGPT2Block",
    "SmoothRule",
    "BLOCKS",
    "block_class",
    "parts_of",
    "resolve_level",
]

ROLES = ("qkv", "attn_out", "fc1", "fc2")  # the GEMMs of a block
NORMS = ("norm1", "norm2")  # its norms (PARTS has these too: one HF norm module each)


class SmoothRule(NamedTuple):
    """One SmoothQuant group of a float HF layer (algorithms/smooth.py): ``source`` (a module name in
    the layer) produces the input of ``targets`` (Linears / Conv1Ds reading it); ``kind`` says how
    1/s is folded into the source: "norm" (a norm's weight and bias), "rows" (a Linear's output rows
    feeding the targets one to one), "gqa" (v_proj's rows -> o_proj, one factor per KV-head channel)."""

    source: str
    targets: tuple[str, ...]
    kind: str


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


# Set by the conversion (convert._convert) while blocks are built: callable(linear[, weight_format])
# -> the part's quantized tensors or None, the weight quantizer of each part of a merged linear
# (None: round to nearest). Checkpoint loading sets it to hand over each part's exact tensors.
_WEIGHT_QUANTIZER: ContextVar[Optional[Callable[[nn.Module], Any]]] = ContextVar("_WEIGHT_QUANTIZER", default=None)


def _merge_linears(op: str, linears: list[nn.Linear], quantized: bool, qscheme: Scheme) -> nn.Module:
    """One linear over the concatenated output features of `linears` (same input): a QLinear of
    `qscheme`, or a float nn.Linear when the role stays in float. A missing bias of one part becomes
    zeros."""
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
    merged.training = linears[0].training  # the parts' train / eval mode (QLinear.from_linear keeps it)
    merged.weight = nn.Parameter(w, requires_grad=False)
    merged.bias = nn.Parameter(b, requires_grad=False) if b is not None else None
    if not quantized:
        return merged
    quantizer = _WEIGHT_QUANTIZER.get()
    try:
        if quantizer is not None:
            # Each part quantized on its own (channel and group scales: the rows are independent), then
            # concatenated row-wise (packed layouts too: they pack whole tiles of 16 rows, and every
            # part has out_features % 16 == 0 there); the parts share their input, so e.g. GPTQ uses
            # the same Hessian for all.
            parts = []
            for lin in linears:
                part = qscheme.for_layer(op, lin.out_features, lin.in_features)
                parts.append(run_weight_quantizer(op, quantizer, lin, part) or part.quantize(lin.weight.detach()))
            q = tuple(torch.cat(ts, 0) for ts in zip(*parts))
            return QLinear.from_linear(merged, qscheme, weight_quantizer=lambda _lin: q)
        return QLinear.from_linear(merged, qscheme)
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


def _attention_function(attn: nn.Module):
    """HF's attention function for this model's config (SDPA, eager, flash ...)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(attn.config, "_attn_implementation", None) or "sdpa"
    if impl == "eager":  # each model defines its own eager attention next to its layers
        return sys.modules[type(attn).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def _gelu_kind(act: Any) -> Optional[str]:
    name = type(act).__name__
    if name == "GELUActivation" or act is F.gelu:
        return "none"
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "GELUPytorchTanh", "FastGELUActivation"):
        return "tanh"
    if isinstance(act, nn.GELU):
        return act.approximate
    return None


def _version(t: torch.Tensor) -> int:
    """The in-place-modification counter; inference tensors (torch.inference_mode) have none: -1."""
    return -1 if t.is_inference() else t._version


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class QuantizedBlock(nn.Module):
    """One transformer layer with fused quantization; subclasses only gather the float layer's
    weights. The forward is shared:

        pre-norm  (LLaMA, GPT-2): r = x + O(attn(QKV(norm1(x)))); out = r + FC2(act(FC1(norm2(r))))
        post-norm (BERT):         h = norm1(x + O(attn(QKV(x)))); out = norm2(h + FC2(act(FC1(h))))

    Each quantized GEMM's input comes quantized, in the scheme's activation format, out of the
    kernel that makes it (the norm, the activation, or quantize_per_token for attention's output); the
    last residual add also makes the next block's quantized input (``link``).
    """

    pre_norm = True
    norm = "rmsnorm"  # or "layernorm"
    rope = False

    #: The part map (the one table of what a block is made of; checkpoints, LKD, LoRC and the CLI
    #: read it through ``parts_of``): role ("qkv", "attn_out", "fc1", "fc2"; "norm1", "norm2") ->
    #: the HF submodules of the float layer (names relative to it) merged into that role, in the
    #: row order of the merged GEMM (one module for a norm). Empty: no known float layout.
    PARTS: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    #: SmoothQuant's groups for the float HF layers this block serves (``smooth_`` reads them through
    #: ``BLOCKS``); empty: smoothing does not support the architecture.
    SMOOTH: ClassVar[tuple[SmoothRule, ...]] = ()

    def __init__(self, level: dict[str, bool], attn: nn.Module, heads: int, kv_heads: int, head_dim: int,
                 qscheme: Optional[Scheme] = None) -> None:
        super().__init__()
        self.level = dict(level)
        # The scheme of every quantized role (W8A8 by default) and the format its GEMMs read.
        self.qscheme = W8A8() if qscheme is None else qscheme
        self._qdtype = self.qscheme.act_dtype
        # Activations quantized per token per group of this many channels (fp8-block: 128), or None:
        # per token. The row ops and quantize_per_token_group take it as group_size=.
        g = getattr(self.qscheme, "act_group_size", None)
        self._qkw: dict[str, Any] = {} if g is None else {"group_size": g}
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.layer_idx = getattr(attn, "layer_idx", None)
        self.training = attn.training  # the float layer's train / eval mode
        self._meta = _Meta(attn)
        self._attn_fn = _attention_function(attn)
        self._next: Optional["QuantizedBlock"] = None  # set by link(); not a submodule
        self._handoff: Optional[tuple[torch.Tensor, int, Any]] = None

    def _set_norms(self, norm1: nn.Module, norm2: nn.Module) -> None:
        """The float norm modules (float roles call them) and fp32 copies of their parameters (the
        fused kernels read fp32)."""
        self.norm1, self.norm2 = norm1, norm2
        for i, n in ((1, norm1), (2, norm2)):
            self.register_buffer(f"norm{i}_w", _f32(n.weight), persistent=False)
            self.register_buffer(f"norm{i}_b", _f32(getattr(n, "bias", None)), persistent=False)
            setattr(self, f"eps{i}", float(getattr(n, "variance_epsilon", getattr(n, "eps", 1e-6))))

    def _set_linears(self, layer: nn.Module, convert: Optional[Callable[[nn.Module], nn.Module]] = None) -> None:
        """Each role: the float `layer`'s parts (``PARTS``, each through `convert` if given) merged."""
        for role, names in parts_of(self, ROLES).items():
            parts = [layer.get_submodule(n) for n in names]
            if convert is not None:
                parts = [convert(m) for m in parts]
            setattr(self, role, _merge_linears(f"{type(self).__name__} {role}", parts, self.level[role], self.qscheme))

    # -- chaining ---------------------------------------------------------------------------------
    def link(self, nxt: Optional["QuantizedBlock"]) -> None:
        """Let this block's last residual add also produce `nxt`'s quantized input (nxt must be
        the block that consumes this block's output)."""
        object.__setattr__(self, "_next", nxt)

    def _take_handoff(self, x: torch.Tensor):
        """The (q, s) the previous block prepared for x, if x is still that tensor, unmodified."""
        if torch.compiler.is_compiling():
            return None
        h = self._handoff
        if h is None:
            return None
        self._handoff = None
        if h[0] is x and _version(x) == h[1]:
            return h[2]
        return None

    # -- the pieces of the forward ----------------------------------------------------------------
    def _qkv_input(self, hidden_states: torch.Tensor, x2: torch.Tensor):
        """The QKV GEMM's input: the previous block's handoff, else norm 1 (pre-norm) or x itself,
        quantized where the level says so."""
        inp = self._take_handoff(hidden_states)
        if inp is not None:
            return inp
        if self.pre_norm:
            return self._norm(1, x2, None, "none", self.level["qkv"])[0]
        return self._quantize(x2) if self.level["qkv"] else x2

    @staticmethod
    def _linear(lin: nn.Module, inp, dtype: torch.dtype) -> torch.Tensor:
        if isinstance(inp, tuple):
            return lin.forward_quantized(inp[0], inp[1], dtype)
        return lin(inp)

    def _norm(self, i: int, x: torch.Tensor, residual: Optional[torch.Tensor], mode: str, quantized: bool):
        """Norm `i` of x (+ residual) -> (the next GEMM's input: (q, s) or float, the residual
        output: x + residual ("sum"), the normalised row ("normed"), or None). The residual output
        is written over `residual` (which must be the block's own temporary)."""
        w, b, eps = getattr(self, f"norm{i}_w"), getattr(self, f"norm{i}_b"), getattr(self, f"eps{i}")
        if quantized:
            dt = self._qdtype
            if residual is None:
                q, s, _ = row_quant("fused norm", self.norm, x, None, w, b, eps, dtype=dt, **self._qkw)
                return (q, s), None
            q, s, r = row_quant("fused add+norm", self.norm, x, residual, w, b, eps, mode, True, dtype=dt, **self._qkw)
            return (q, s), r
        module = getattr(self, f"norm{i}")
        if residual is None:
            return module(x), None
        v = residual.add_(x)
        h = module(v)
        return h, (v if mode == "sum" else h)

    def _quantize(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x2 quantized where no other kernel touches it (attention's output; post-norm input), in the
        scheme's activation format: per token, or per token group (``act_group_size``)."""
        if self._qkw:
            from ..ops.quantize_group import quantize_per_token_group

            return quantize_per_token_group(x2, dtype=self._qdtype, **self._qkw)
        return quantize_per_token(x2, dtype=self._qdtype)

    def _act(self, y: torch.Tensor, quantized: bool):
        if self.act == "silu_mul":
            if quantized:
                return silu_mul_quant(y, dtype=self._qdtype, **self._qkw)
            g, u = y.chunk(2, dim=1)
            return F.silu(g) * u
        if quantized:
            return bias_gelu_quant(y, None, self.act, dtype=self._qdtype, **self._qkw)
        return F.gelu(y, approximate=self.act)

    def _attend(self, qkv: torch.Tensor, B: int, S: int, mask, pos, cache, kwargs) -> torch.Tensor:
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        q, k, v = qkv.split((H * hd, KV * hd, KV * hd), dim=1)
        q = q.view(B, S, H, hd).transpose(1, 2)
        k = k.view(B, S, KV, hd).transpose(1, 2)
        v = v.view(B, S, KV, hd).transpose(1, 2)
        if self.rope:
            if pos is None:
                raise ValueError(f"{type(self).__name__}: position_embeddings (cos, sin) are required")
            cos, sin = pos[0].unsqueeze(1), pos[1].unsqueeze(1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            cache = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache (GPT-2)
            k, v = cache.update(k, v, self.layer_idx)
        kwargs = {n: a for n, a in kwargs.items() if n not in _NOT_FOR_ATTENTION}
        out, _ = self._attn_fn(self._meta, q, k, v, mask, dropout=0.0, scaling=self._meta.scaling, **kwargs)
        return out.reshape(B * S, H * hd)

    def _forward(self, hidden_states, mask=None, pos=None, cache=None, kwargs=None) -> torch.Tensor:
        if hidden_states.requires_grad and torch.is_grad_enabled():
            # same values; gradients to hidden_states through the dequantized weights: nn/grad.py
            return block_with_input_grad(self, hidden_states, mask, pos, cache, kwargs)
        B, S, D = hidden_states.shape
        dt = hidden_states.dtype
        lv = self.level
        x2 = hidden_states.reshape(-1, D)
        inp = self._qkv_input(hidden_states, x2)
        a2 = self._attend(self._linear(self.qkv, inp, dt), B, S, mask, pos, cache, kwargs or {})
        o = self._linear(self.attn_out, self._quantize(a2) if lv["attn_out"] else a2, dt)
        # residual add + norm 2 (pre-norm: r = x + o; post-norm: r = norm1(x + o)), r over o
        inp1, r = self._norm(2 if self.pre_norm else 1, x2, o, "sum" if self.pre_norm else "normed", lv["fc1"])
        y = self._linear(self.fc2, self._act(self._linear(self.fc1, inp1, dt), lv["fc2"]), dt)
        nxt = self._next
        handoff = (nxt is not None and type(nxt) is type(self) and nxt.level["qkv"] and nxt._qdtype is self._qdtype
                   and nxt._qkw == self._qkw and not torch.compiler.is_compiling())
        if self.pre_norm:
            if handoff:  # out = r + y over y, plus the next block's norm1(out) quantized
                prepared, out = nxt._norm(1, r, y, "sum", True)
            else:
                prepared, out = None, y.add_(r)
        else:  # out = norm2(r + y) over y (quantized too when the next block wants it)
            prepared, out = self._norm(2, r, y, "normed", handoff)
        out = out.view(B, S, D)
        if handoff:
            nxt._handoff = (out, _version(out), prepared)
        return out

    def extra_repr(self) -> str:
        qs = self.qscheme
        q = "int8" if qs.name == "w8a8" else qs.name
        out = "level=" + ", ".join(f"{r}={q if self.level[r] else 'float'}" for r in ROLES)
        return out if qs.name == "w8a8" else f"{out}, scheme={qs.label()}"


_NOT_FOR_ATTENTION = ("output_attentions", "past_key_values", "cache", "cache_position", "use_cache", "position_ids")


def _cache_arg(past_key_values: Any, kwargs: dict) -> Any:
    """The KV cache, under either name: transformers >= 5.2x passes it as ``cache`` (deprecating
    ``past_key_values``); missing it would silently decode without the cache."""
    cache = kwargs.get("cache")
    return cache if cache is not None else past_key_values


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
    # SMOOTH: none (post-norm: norm1's output is also the residual, so it cannot absorb 1/s)

    def __init__(self, layer: nn.Module, level: dict[str, bool], qscheme: Optional[Scheme] = None) -> None:
        att = layer.attention
        sa = att.self
        super().__init__(level, sa, sa.num_attention_heads, sa.num_attention_heads, sa.attention_head_size, qscheme)
        if getattr(layer, "add_cross_attention", False) or getattr(sa, "is_decoder", False):
            raise ValueError("QBertLayer: decoder / cross-attention BERT layers are not supported")
        act = getattr(layer.intermediate, "intermediate_act_fn", None)
        self.act = _gelu_kind(act)
        if self.act is None:
            raise ValueError(f"QBertLayer: the intermediate activation must be GeLU (erf or tanh), got {act!r}")
        self._set_linears(layer)
        self._set_norms(*(layer.get_submodule(n) for (n,) in parts_of(self, NORMS).values()))

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *args, **kwargs):
        return self._forward(hidden_states, attention_mask, None, None, kwargs)


class QLlamaDecoderLayer(QuantizedBlock):
    """A quantized LlamaDecoderLayer (also Mistral / Qwen2: attention bias, grouped KV heads).

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
        att, mlp = layer.self_attn, layer.mlp
        cfg = att.config
        super().__init__(level, att, cfg.num_attention_heads, cfg.num_key_value_heads, att.head_dim, qscheme)
        act = getattr(mlp, "act_fn", None)
        if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
            raise ValueError(f"QLlamaDecoderLayer: the MLP activation must be SiLU, got {act!r}")
        self._set_linears(layer)
        self._set_norms(*(layer.get_submodule(n) for (n,) in parts_of(self, NORMS).values()))

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
        self.act = _gelu_kind(getattr(mlp, "act", None))
        if self.act is None:
            raise ValueError(f"QGPT2Block: the MLP activation must be GeLU, got {getattr(mlp, 'act', None)!r}")
        self._set_linears(layer, convert=linear_from_conv1d)
        self._set_norms(*(layer.get_submodule(n) for (n,) in parts_of(self, NORMS).values()))

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
# Recognition: which HF layer classes have a fused block; what a block is made of.

_BLOCKS: dict[str, type[QuantizedBlock]] = {
    "BertLayer": QBertLayer,
    "RobertaLayer": QBertLayer,
    "LlamaDecoderLayer": QLlamaDecoderLayer,
    "MistralDecoderLayer": QLlamaDecoderLayer,
    "Qwen2DecoderLayer": QLlamaDecoderLayer,
    "GPT2Block": QGPT2Block,
}


#: HF layer class name -> the fused block class that replaces it (read-only).
BLOCKS: Mapping[str, type[QuantizedBlock]] = MappingProxyType(_BLOCKS)


def block_class(module: nn.Module) -> Optional[type[QuantizedBlock]]:
    """The fused block class for a float HF layer (by its class name), or None."""
    return _BLOCKS.get(type(module).__name__)


def parts_of(
    block_or_cls: Union[QuantizedBlock, type[QuantizedBlock]], roles: tuple[str, ...] = ROLES
) -> dict[str, list[str]]:
    """role -> the HF submodule names (relative to the float layer) merged into it, in row order,
    for `roles` (default the GEMM roles ``ROLES``; ``NORMS`` for the norms): the block class's
    ``PARTS``. Raises NotImplementedError for a block class without a part map, ValueError for a
    role it does not have."""
    cls = block_or_cls if isinstance(block_or_cls, type) else type(block_or_cls)
    parts = getattr(cls, "PARTS", None) if issubclass(cls, QuantizedBlock) else None
    if not parts:
        known = sorted({c.__name__ for c in _BLOCKS.values()})
        raise NotImplementedError(f"{cls.__name__} has no part map (PARTS); fused blocks with one: {known}")
    bad = [r for r in roles if r not in parts]
    if bad:
        raise ValueError(f"{cls.__name__}.PARTS has no roles {bad}; it has {list(parts)}")
    return {r: list(parts[r]) for r in roles}
