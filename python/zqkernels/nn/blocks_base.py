"""The machinery shared by every fused quantized block (nn/blocks.py declares the architectures).

A block replaces one HF transformers layer with the same forward signature and output, computed as:

- the linears of a block merged where they share an input (q/k/v -> one QKV GEMM; gate and up -> one
  GEMM; packed HF Linears such as Phi-3's ``qkv_proj`` are one part already) and run as ``QLinear``
  GEMMs of the block's scheme (any scheme of ``zqkernels.schemes``; bias in the GEMM epilogue);
- every activation a quantized GEMM reads is quantized, in the scheme's activation format (int8 or
  FP8 E4M3, ``Scheme.act_dtype``), by the kernel that produces it: the norm
  (``rmsnorm_quant`` / ``add_layernorm_quant`` ...), the activation (``bias_gelu_quant``,
  ``silu_mul_quant``), or ``quantize_per_token`` where nothing else touches the values (attention's
  output; GeGLU's product, which has no fused kernel yet), so no bf16 intermediate is written only to
  be read back by a quantizer;
- the block's last residual add is fused with the *next* block's input norm and quantization
  (blocks are chained by ``quantize_model``; see ``QuantizedBlock.link``);
- attention stays in torch (HF's attention interface, SDPA by default) in the model dtype, with the
  layer's own extras: per-head q / k RMSNorms before RoPE (Qwen3, Gemma-3), partial rotary
  (Phi-3), sliding window and logit soft-capping (passed to HF's attention function as HF does);
- "sandwich" norms (Gemma-2/3's post-attention and post-feed-forward RMSNorms, applied to a
  sub-layer's output before its residual add) run in torch in the model dtype.

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

import contextlib
import os
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import quantize_per_token, rope_qkv
from ..ops.attention import decode_attention, decode_attention_supported
from ..ops.fused import bias_gelu_quant, row_quant, silu_mul_quant
from ..reference.rope import rotary
from ..schemes import W8A8, Scheme
from .collectives import all_reduce_sum
from .grad import block_with_input_grad
from .merged_linear import _merge_linears

__all__ = [
    "LEVELS",
    "ROLES",
    "NORMS",
    "EXTRA_NORMS",
    "QuantizedBlock",
    "SmoothRule",
    "norm_roles",
    "parts_of",
    "resolve_level",
]

ROLES = ("qkv", "attn_out", "fc1", "fc2")  # the GEMMs of a block
NORMS = ("norm1", "norm2")  # its norms (PARTS has these too: one HF norm module each)
#: Norms some architectures add (PARTS has them when the layer has them, one HF module each):
#: per-head RMSNorms of q and k before RoPE (Qwen3, Gemma-3), and the "sandwich" RMSNorms of the
#: attention output and of the MLP output before their residual adds (Gemma-2/3).
EXTRA_NORMS = ("q_norm", "k_norm", "post_attn_norm", "post_mlp_norm")


class SmoothRule(NamedTuple):
    """One SmoothQuant group of a float HF layer (algorithms/smooth.py): ``source`` (a module name in
    the layer) produces the input of ``targets`` (Linears / Conv1Ds reading it); ``kind`` says how
    1/s is folded into the source: "norm" (a norm's weight and bias), "norm+1" (a norm computing
    ``x_hat * (1 + weight)``, Gemma's: 1 + weight is divided), "rows" (a Linear's output rows
    feeding the targets one to one), "gqa" (v_proj's rows -> o_proj, one factor per KV-head channel).
    ``tail``: the targets read only the source's *last* output rows (a packed Linear: Phi-3's
    ``gate_up_proj`` -> up, ``qkv_proj`` -> v); those rows get the fold, the others are untouched."""

    source: str
    targets: tuple[str, ...]
    kind: str
    tail: bool = False


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


def _f32(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if p is None else p.detach().to(torch.float32).contiguous()


class _Meta:
    """What HF's attention functions read from their `module` argument, without the module's weights."""

    def __init__(self, attn: nn.Module) -> None:
        for k in ("config", "is_causal", "num_key_value_groups", "scaling", "layer_idx", "head_dim", "sliding_window"):
            if hasattr(attn, k):
                setattr(self, k, getattr(attn, k))
        self.training = False


def _attention_function(attn: nn.Module):
    """HF's attention function for this model's config (SDPA, eager, flash ...)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(getattr(attn, "config", None), "_attn_implementation", None) or "sdpa"
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


#: One-token (decode) attention of the fused blocks under HF's SDPA: "gqa" (SDPA, enable_gqa=True), "packed"
#: (q as [B, KV, G, hd] rows), "kernel" (``decode_attention`` on CUDA where it applies, else "gqa"), "hf"
#: (HF's function), "auto" (default): "kernel" up to AUTO_KERNEL_MAX_BATCH sequences, "gqa" above, as
#: measured in a whole Llama-3-8B-shaped model (docs/FUSED.md, "Decode attention").
DECODE_ATTENTION = "auto"
DECODE_MODES = ("auto", "gqa", "packed", "kernel", "hf")
AUTO_KERNEL_MAX_BATCH = 16


def _bad_decode_mode(mode: Any) -> ValueError:
    return ValueError(f"zqkernels.nn.blocks_base.DECODE_ATTENTION must be one of {DECODE_MODES}, got {mode!r}")


@contextlib.contextmanager
def decode_attention_mode(mode: Optional[str]):
    """DECODE_ATTENTION set to `mode` (one of DECODE_MODES; None: left as it is) inside the block, restored
    after (the benchmarks' and generate-bench's per-side choice)."""
    global DECODE_ATTENTION
    if mode is not None and mode not in DECODE_MODES:
        raise _bad_decode_mode(mode)
    before = DECODE_ATTENTION
    DECODE_ATTENTION = mode or before
    try:
        yield
    finally:
        DECODE_ATTENTION = before

#: Attention input through ``rope_qkv`` (one kernel) on CUDA; False: the torch sequence (views,
#: rotate_half, multiplies, ``cache.update``). Its kernel equals the torch sequence bit for bit on an
#: H100 (tests/test_rope_gpu.py) and makes a Llama-3-8B decode layer 17-18 % faster at batch 1
#: (CUDA graph, H100: W8A8 0.145 -> 0.121 ms; benchmarks/results/layer_rope_*); bench_schemes_layer
#: --torch-rope is the A/B.
FUSED_ROPE = True

#: ``rope_qkv`` advances the static cache's write position itself (``advance=True``: in the kernel at
#: decode batch 1, one launch fewer a layer); False (or env ``ZQKERNELS_ROPE_ADVANCE=0``, for whole-model
#: A / B runs): HF's ``cumulative_length.add_(S)`` after it.
ROPE_ADVANCE = os.environ.get("ZQKERNELS_ROPE_ADVANCE", "1") != "0"

#: True (or env ``ZQKERNELS_ATTN_QUANT=1``): the decode-attention kernel's combine quantizes o_proj's
#: per-token input itself (``decode_attention(..., quant=...)``, one launch fewer a layer). Off by
#: default: measured slower in a whole W4A8 Llama-3-8B-shaped model (H100, decode b1 ctx1024, CUDA graph,
#: alternating processes: 2.749 / 2.756 ms on against 2.667 off; its combine runs 9.2 us a layer on the
#: step's critical path: each thread sums 4 outputs over all splits one after another; docs/FUSED.md).
ATTN_QUANT = os.environ.get("ZQKERNELS_ATTN_QUANT", "0") == "1"


def _static_layer(cache: Any, idx: int, B: int, dtype: torch.dtype) -> Any:
    """The cache layer ``rope_qkv`` may write into directly: an initialized HF ``StaticLayer`` (full
    attention; the API this was written against: ``keys`` / ``values`` [B, KV, L, hd] and the int64
    device scalar ``cumulative_length`` where the next token goes), of this batch and dtype, with no
    offloading. Anything else (dynamic, sliding-window or offloaded caches, other transformers
    versions' layouts): None, and ``cache.update`` runs as HF wrote it."""
    layers = getattr(cache, "layers", None)
    if getattr(cache, "offloading", False) or layers is None or len(layers) <= idx:
        return None
    layer = layers[idx]
    if type(layer).__name__ != "StaticLayer" or not getattr(layer, "is_initialized", False):
        return None
    k, v, n = getattr(layer, "keys", None), getattr(layer, "values", None), getattr(layer, "cumulative_length", None)
    if not (isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and isinstance(n, torch.Tensor)):
        return None
    if k.dtype is not dtype or k.shape[0] != B or n.dtype != torch.int64 or n.device != k.device:
        return None
    return layer


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


class QuantizedBlock(nn.Module):
    """One transformer layer with fused quantization; subclasses only gather the float layer's
    weights. The forward is shared:

        pre-norm  (LLaMA, GPT-2): r = x + O(attn(QKV(norm1(x)))); out = r + FC2(act(FC1(norm2(r))))
        post-norm (BERT):         h = norm1(x + O(attn(QKV(x)))); out = norm2(h + FC2(act(FC1(h))))
        sandwich  (Gemma):        r = x + Pa(O(attn(QKV(norm1(x))))); out = r + Pm(FC2(act(FC1(norm2(r)))))

    (Pa, Pm: the post_attn_norm / post_mlp_norm roles, where PARTS has them; attn applies the q_norm /
    k_norm roles per head before RoPE where PARTS has them.)

    Each quantized GEMM's input comes quantized, in the scheme's activation format, out of the
    kernel that makes it (the norm, the activation, or quantize_per_token for attention's output); the
    last residual add also makes the next block's quantized input (``link``).
    """

    pre_norm = True
    norm = "rmsnorm"  # or "layernorm"
    #: Tensor parallelism (nn/tp.py shard_block): (process group, world size) of the ranks that sum the
    #: rowwise GEMMs' partial outputs (attention's output projection and FC2); None: not split.
    _tp: Any = None
    rope = False
    #: Added to every norm weight: 1.0 for RMSNorms that compute x_hat * (1 + weight) (Gemma); the
    #: kernels then read 1 + weight (fp32), and the extra norms multiply in fp32 before rounding, as
    #: Gemma's RMSNorm does (LLaMA-style ones round x_hat to the model dtype, then multiply).
    norm_offset = 0.0
    #: The activation between FC1 and FC2: "gelu" (with ``gelu_approx``) or "silu_mul" (SwiGLU, FC1 =
    #: [gate | up]); a subclass with another overrides ``_act`` (Gemma's "gelu_mul", GeGLU).
    act = "gelu"
    gelu_approx = "none"

    #: The part map (the one table of what a block is made of; checkpoints, LKD, LoRC and the CLI
    #: read it through ``parts_of``): role ("qkv", "attn_out", "fc1", "fc2"; "norm1", "norm2", EXTRA_NORMS) ->
    #: the HF submodules of the float layer (names relative to it) merged into that role, in the
    #: row order of the merged GEMM (one module for a norm). Empty: no known float layout.
    PARTS: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    #: SmoothQuant's groups for the float HF layers this block serves (``smooth_`` reads them through
    #: ``nn.blocks.BLOCKS``); empty: smoothing does not support the architecture.
    SMOOTH: ClassVar[tuple[SmoothRule, ...]] = ()
    #: Why the architecture has no SMOOTH rules (``smooth_`` names it when it refuses a model).
    NO_SMOOTH: ClassVar[str] = ""

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
        # What HF's attention modules pass their attention function besides q, k, v: the sliding
        # window (the module's, else its config's) and logit soft-capping (Gemma-2), when set.
        kw = {"sliding_window": getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None)),
              "softcap": getattr(attn, "attn_logit_softcapping", None)}
        self._attn_kw: dict[str, Any] = {k: v for k, v in kw.items() if v is not None}
        self._one_token_sdpa = self._attn_fn is _attention_function(None)  # HF's SDPA: decode steps take ours
        self._next: Optional["QuantizedBlock"] = None  # set by link(); not a submodule
        self._handoff: Optional[tuple[torch.Tensor, int, Any]] = None

    def _set_norms(self, norm1: nn.Module, norm2: nn.Module) -> None:
        """The float norm modules (float roles call them) and fp32 copies of their parameters (the
        fused kernels read fp32; plus ``norm_offset``)."""
        self.norm1, self.norm2 = norm1, norm2
        for i, n in ((1, norm1), (2, norm2)):
            w = _f32(n.weight)
            self.register_buffer(f"norm{i}_w", w + self.norm_offset if self.norm_offset else w, persistent=False)
            self.register_buffer(f"norm{i}_b", _f32(getattr(n, "bias", None)), persistent=False)
            setattr(self, f"eps{i}", _eps(n))

    def _set_layer_norms(self, layer: nn.Module) -> None:
        """Every norm role of ``PARTS`` from the float `layer`: norm1 / norm2 (``_set_norms``), and the
        ``EXTRA_NORMS`` it has: the HF module under the role's name (checkpoints save it) and a copy of
        its weight (``norm_offset`` added, in fp32; LLaMA-style: the weight's own dtype) for ``_rms``."""
        self._set_norms(*(layer.get_submodule(n) for (n,) in parts_of(self, NORMS).values()))
        for role in norm_roles(self)[len(NORMS):]:
            (name,) = self.PARTS[role]
            m = layer.get_submodule(name)
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() != 1 or getattr(m, "bias", None) is not None:
                raise ValueError(f"{type(self).__name__}: {name} must be an RMSNorm with a weight [dim] and no bias, "
                                 f"got {type(m).__name__}")
            setattr(self, role, m)
            w = w.detach()
            w = w.float() + self.norm_offset if self.norm_offset else w.clone()
            self.register_buffer(f"{role}_w", w.contiguous(), persistent=False)
            setattr(self, f"{role}_eps", _eps(m))

    def _rms(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """The extra norm `role` (``EXTRA_NORMS``) of x over its last dim, in torch, as HF computes it
        (statistics in fp32; the weight applied per ``norm_offset``); differentiable (nn/grad.py)."""
        w = getattr(self, f"{role}_w")
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + getattr(self, f"{role}_eps"))
        if self.norm_offset:
            return (y * w).to(x.dtype)
        return (w * y.to(x.dtype)).to(x.dtype)

    def _post(self, role: str, y: torch.Tensor) -> torch.Tensor:
        """A sub-layer's output through its sandwich norm `role` where the block has one."""
        return self._rms(role, y) if role in self.PARTS else y

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

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """A rowwise GEMM's output summed over the tensor-parallel ranks (float32), or t itself."""
        return t if self._tp is None else all_reduce_sum(t, self._tp[0])

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
            return bias_gelu_quant(y, None, self.gelu_approx, dtype=self._qdtype, **self._qkw)
        return F.gelu(y, approximate=self.gelu_approx)

    def _attend(self, qkv: torch.Tensor, B: int, S: int, mask, pos, cache, kwargs, quant=None):
        """Attention of the block: [B * S, H * hd], or where ``quant`` (the o_proj input's per-token
        dtype) is given and the decode kernel serves the call, that output quantized, (xq, sx)."""
        H, KV, hd = self.heads, self.kv_heads, self.head_dim
        if cache is not None:
            cache = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache (GPT-2)
        if (FUSED_ROPE and self.rope and qkv.is_cuda and "q_norm" not in self.PARTS and pos is not None and pos[0].dtype is qkv.dtype
                and not (qkv.requires_grad and torch.is_grad_enabled())):
            # one kernel: split, RoPE and (static cache) the KV write (ops/rope.py); no autograd
            layer = _static_layer(cache, self.layer_idx, B, qkv.dtype) if cache is not None else None
            if layer is not None:
                q, k, v = rope_qkv(qkv.reshape(B, S, -1), pos[0], pos[1], H, KV, hd, k_cache=layer.keys,
                                   v_cache=layer.values, cache_offset=layer.cumulative_length,
                                   advance=ROPE_ADVANCE)  # fmt: skip
                if not ROPE_ADVANCE:
                    layer.cumulative_length.add_(S)
            else:
                q, k, v = rope_qkv(qkv.reshape(B, S, -1), pos[0], pos[1], H, KV, hd)
                if cache is not None:
                    k, v = cache.update(k, v, self.layer_idx)
            return self._sdpa(q, k, v, B, S, mask, kwargs, quant)
        q, k, v = qkv.split((H * hd, KV * hd, KV * hd), dim=1)
        q = q.view(B, S, H, hd).transpose(1, 2)
        k = k.view(B, S, KV, hd).transpose(1, 2)
        v = v.view(B, S, KV, hd).transpose(1, 2)
        if "q_norm" in self.PARTS:  # per-head RMSNorms (Qwen3, Gemma-3), before RoPE
            q, k = self._rms("q_norm", q), self._rms("k_norm", k)
        if self.rope:
            if pos is None:
                raise ValueError(f"{type(self).__name__}: position_embeddings (cos, sin) are required")
            cos, sin = pos[0].unsqueeze(1), pos[1].unsqueeze(1)
            q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        return self._sdpa(q, k, v, B, S, mask, kwargs, quant)

    def _sdpa(self, q, k, v, B: int, S: int, mask, kwargs, quant=None):
        H, hd = self.heads, self.head_dim
        kwargs = {n: a for n, a in kwargs.items() if n not in _NOT_FOR_ATTENTION}
        kwargs = {**self._attn_kw, **kwargs}
        mode = DECODE_ATTENTION
        if mode not in DECODE_MODES:
            raise _bad_decode_mode(mode)
        mode = ("kernel" if B <= AUTO_KERNEL_MAX_BATCH else "gqa") if mode == "auto" else mode
        if S == 1 and self._one_token_sdpa and kwargs.keys() <= _SDPA_IGNORES and mode != "hf":
            m = mask if mask is None else mask[:, :, :, : k.shape[-2]]
            plain = m is None or (m.dtype is torch.bool and m.dim() == 4 and m.shape[1] == m.shape[2] == 1)
            if mode == "kernel" and q.is_cuda and plain and decode_attention_supported(q, k):
                # One kernel reading the cache once (ops/attention.py), the same softmax(q k^T) v; with
                # `quant`, its combine also quantizes the output for o_proj (one launch fewer)
                if quant is not None:
                    return decode_attention(q, k, v, m, self._meta.scaling, quant=quant)
                return decode_attention(q, k, v, m, self._meta.scaling).reshape(B, H * hd)
            if self.heads > self.kv_heads and not torch.compiler.is_compiling():
                # Grouped KV heads read as they are; HF's SDPA function instead copies k and v G times
                # (repeat_kv) whenever a mask is given, as for a static cache.
                if mode == "packed":  # each KV head's G query heads as G query rows: q -> [B, KV, G, hd]
                    KV = self.kv_heads
                    out = F.scaled_dot_product_attention(q.reshape(B, KV, H // KV, hd), k, v, attn_mask=m,
                                                         scale=self._meta.scaling)  # fmt: skip
                else:
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=self._meta.scaling, enable_gqa=True)
                return out.reshape(B, H * hd)  # [B, H, 1, hd] (or [B, KV, G, hd]): head-major rows
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
        quant = self._qdtype if lv["attn_out"] and not self._qkw and ATTN_QUANT else None
        a2 = self._attend(self._linear(self.qkv, inp, dt), B, S, mask, pos, cache, kwargs or {}, quant)
        if not isinstance(a2, tuple):  # attention's output as it is: quantized here if o_proj takes int8 / fp8
            a2 = self._quantize(a2) if lv["attn_out"] else a2
        o = self._post("post_attn_norm", self._reduce(self._linear(self.attn_out, a2, dt)))
        # residual add + norm 2 (pre-norm: r = x + o; post-norm: r = norm1(x + o)), r over o
        inp1, r = self._norm(2 if self.pre_norm else 1, x2, o, "sum" if self.pre_norm else "normed", lv["fc1"])
        y = self._post("post_mlp_norm",
                       self._reduce(self._linear(self.fc2, self._act(self._linear(self.fc1, inp1, dt), lv["fc2"]), dt)))
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


#: Keyword arguments HF's SDPA attention function accepts and does not use (the sliding window is in
#: the mask), so the packed one-token path may take them too.
_SDPA_IGNORES = {"sliding_window", "is_causal"}
_NOT_FOR_ATTENTION = ("output_attentions", "past_key_values", "cache", "cache_position", "use_cache", "position_ids")


def _cache_arg(past_key_values: Any, kwargs: dict) -> Any:
    """The KV cache, under either name: transformers >= 5.2x passes it as ``cache`` (deprecating
    ``past_key_values``); missing it would silently decode without the cache."""
    cache = kwargs.get("cache")
    return cache if cache is not None else past_key_values




def _known_blocks() -> list[str]:
    """The block classes with a part map (for messages)."""
    out, todo = set(), list(QuantizedBlock.__subclasses__())
    while todo:
        c = todo.pop()
        todo += c.__subclasses__()
        if c.PARTS:
            out.add(c.__name__)
    return sorted(out)


def parts_of(
    block_or_cls: Union[QuantizedBlock, type[QuantizedBlock]], roles: tuple[str, ...] = ROLES
) -> dict[str, list[str]]:
    """role -> the HF submodule names (relative to the float layer) merged into it, in row order,
    for `roles` (default the GEMM roles ``ROLES``; ``NORMS`` for the norms, ``norm_roles(cls)`` for
    every norm the block has): the block class's ``PARTS``. Raises NotImplementedError for a block
    class without a part map, ValueError for a role it does not have."""
    cls = block_or_cls if isinstance(block_or_cls, type) else type(block_or_cls)
    parts = getattr(cls, "PARTS", None) if issubclass(cls, QuantizedBlock) else None
    if not parts:
        raise NotImplementedError(f"{cls.__name__} has no part map (PARTS); fused blocks with one: {_known_blocks()}")
    bad = [r for r in roles if r not in parts]
    if bad:
        raise ValueError(f"{cls.__name__}.PARTS has no roles {bad}; it has {list(parts)}")
    return {r: list(parts[r]) for r in roles}


def norm_roles(block_or_cls: Union[QuantizedBlock, type[QuantizedBlock]]) -> tuple[str, ...]:
    """The norm roles of a block class's ``PARTS``: ``NORMS``, then the ``EXTRA_NORMS`` it has."""
    cls = block_or_cls if isinstance(block_or_cls, type) else type(block_or_cls)
    return NORMS + tuple(r for r in EXTRA_NORMS if r in cls.PARTS)
