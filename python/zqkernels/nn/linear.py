"""QLinear: a quantized drop-in for nn.Linear. The module holds the buffers, the layer's shape and
state checks; its scheme object (``zqkernels.schemes``: one per format) creates the buffers,
quantizes float weights and computes the forward. A new format is a new scheme module, not a change
here.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from ..ops import has_row_layout
from ..schemes import SCHEMES, Scheme, layer_scheme
from .grad import linear_with_input_grad

__all__ = ["QLinear", "SCHEMES", "is_conv1d", "linear_from_conv1d", "run_weight_quantizer"]

_BITS_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # see QLinear._apply
_X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_STATE_VERSION = 1
# Every per-layer option any scheme takes (QLinear / from_linear keyword arguments).
_OPTIONS = ("group_size", "scale_policy", "scale", "alpha")




class QLinear(nn.Module):
    """Quantized linear layer: ``y = x @ w.T + b`` computed by a scheme (``zqkernels.schemes``;
    default "w8a8": int8 per-channel weights x int8 per-token activations; "fp8": FP8 E4M3 weights and
    activations; "w4a8-fp": FP4 E2M1 group-wise weights x FP8 activations; "w4a8" /
    "w4a8-floatscale": INT4 group-wise weights with integer / float group scales x int8 activations;
    "w4a8-zp": INT4 with integer scales and group zero points x int8 activations; "w8a8-group": INT8
    group-wise weights x int8 activations).

    ``scheme`` is a name with the scheme's per-layer options as keyword arguments (``group_size=``:
    w4a8-fp, w4a8, w4a8-floatscale, w4a8-zp, w8a8-group, default 128, in_features for per channel;
    ``scale_policy=``: w4a8-fp; ``scale=``: w8a8-group; ``alpha=``: w4a8, w8a8-group; giving one to a
    scheme that does not take it raises ValueError), or a ``Scheme`` object (``schemes.W4A8(
    group_size=None)``: per channel). ``qscheme`` is the layer's resolved scheme object.

    Build it with ``QLinear.from_linear(linear)`` (weights quantized once, here), or construct an
    empty one and ``load_state_dict`` into it; the state holds no float weights. Unpacked weight rows
    (w8a8, fp8, w8a8-group) are padded to a multiple of 8 (``Np``; the rows past out_features are
    zero), so any out_features runs on the CUDA kernels; the packed formats (w4a8, w4a8-floatscale,
    w4a8-zp, w4a8-fp) need out_features % 16 == 0 instead. in_features must be a multiple of 16 on CUDA. The state also records
    in_features / out_features / scheme, and ``load_state_dict`` rejects a checkpoint of another
    shape or scheme.

    forward(x): x [..., in_features] in bf16, fp16 or fp32 on the module's device; the output has
    x's dtype. The weights are frozen: with grad mode on and an x that requires grad, the output is the
    same and the gradient reaches x through the dequantized weight (grad_x = grad_y @ W_deq, LoRC term
    included; the activation quantization is straight through), in eval() mode; train() mode then
    raises RuntimeError (train the float layer instead). Under no_grad / inference_mode either mode
    just runs the quantized forward.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype = torch.bfloat16,
        device: Union[torch.device, str, None] = None,
        scheme: Union[str, Scheme] = "w8a8",
        *,
        group_size: Optional[int] = None,
        scale_policy: Optional[str] = None,
        scale: Optional[str] = None,
        alpha: Optional[int] = None,
    ) -> None:
        super().__init__()
        options = {"group_size": group_size, "scale_policy": scale_policy, "scale": scale, "alpha": alpha}
        qs = layer_scheme("QLinear", scheme, int(out_features), int(in_features), options)
        if bias and not dtype.is_floating_point:
            raise TypeError(f"QLinear: dtype (of the bias) must be a floating-point dtype, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = qs.name
        self.qscheme = qs
        for key, value in qs.options().items():  # per-layer options, readable as attributes
            setattr(self, key, value)
        for key in qs.loaded:
            if key not in qs.option_names:
                setattr(self, key, None)
        self._cuda_shapes_ok = self.in_features % 16 == 0
        qs.create_buffers(self, qs.rows(self.out_features), bias, dtype, device)
        # LoRC (ZeroQuant-V2 low-rank compensation, nn/lorc.py): y += (x @ lorc_a) @ lorc_b with
        # lorc_a [in_features, r], lorc_b [r, out_features]; None (and not in the state) when absent.
        self.register_buffer("lorc_a", None)
        self.register_buffer("lorc_b", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scheme: Union[str, Scheme] = "w8a8",
        *,
        weight_quantizer: Optional[Any] = None,
        **options: Any,
    ) -> "QLinear":
        """Quantize an nn.Linear with `scheme`; keeps its device and its train / eval mode.

        weight_quantizer: optional callable(linear) or callable(linear, weight_format=...) ->
        the scheme's quantized weight or None, replacing its round-to-nearest weights (e.g. GPTQ,
        zqkernels.algorithms); None from it (or no callable) keeps the default. A callable with a
        ``weight_format`` parameter is given the layer's ``quantize_weight`` keyword arguments
        (``qscheme.weight_format()``: e.g. {"fmt": "int8"} for w8a8, {"fmt": "fp4",
        "group_size": 128, "scale": "m2"} for w4a8-fp); it must return what ``quantize_weight``
        returns for them ((wq, sw) or (wq, sw, sg), on the weight's device; checked). Every scheme
        takes one; a scheme without a weight_format raises NotImplementedError.
        options: the scheme's per-layer options (``group_size=``, ``scale_policy=``, ``scale=``,
        ``alpha=``; see the class docstring).
        """
        op = "QLinear.from_linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{op}: linear must be an nn.Linear, got {type(linear).__name__}")
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"{op}: unexpected keyword argument(s) {unknown}")
        w = linear.weight.detach()
        if w.is_meta:
            raise ValueError(f"{op}: the linear's weight is on the meta device (no values to quantize)")
        if w.device.type == "cuda" and linear.in_features % 16 != 0:
            # The CUDA GEMM reads rows in 16-byte pieces.
            raise ValueError(
                f"{op}: in_features must be a multiple of 16 for the CUDA kernels, got "
                f"{linear.in_features}; pad the layer, or leave it in float (quantize_model(skip=...))"
            )
        has_bias = linear.bias is not None
        # Built on the meta device (no allocation), then given the real buffers.
        try:
            mod = cls(
                linear.in_features, linear.out_features, bias=has_bias, dtype=w.dtype, device="meta",
                scheme=scheme, **options,
            )
        except ValueError as e:
            raise ValueError(str(e).replace("QLinear:", f"{op}:", 1)) from None
        q = run_weight_quantizer(op, weight_quantizer, linear, mod.qscheme) if weight_quantizer is not None else None
        qs = mod.qscheme
        quantized = qs.quantize(w) if q is None else _check_quantized(op, q, w, mod)
        qs.load(mod, quantized, linear.bias)
        mod.training = linear.training  # a converted eval() model stays in eval() (grad mode: nn/grad.py)
        return mod

    @classmethod
    def from_quantized(
        cls,
        qscheme: Scheme,
        out_features: int,
        in_features: int,
        tensors: dict[str, torch.Tensor],
        bias: Optional[torch.Tensor] = None,
        dtype: torch.dtype = torch.bfloat16,
    ) -> "QLinear":
        """A QLinear holding already-quantized weights (e.g. read from a checkpoint: the schemes'
        ``from_compressed_tensors``): tensors = {buffer name: tensor} of ``qscheme.buffer_layout``
        with out_features rows (unpadded), installed by ``qscheme.load`` (rows padded, per-layer
        state such as max_scale derived). The bias keeps its dtype; without one, `dtype` is the
        layer's. Built on the meta device, then given the tensors (no copy beyond the padding)."""
        has_bias = bias is not None
        mod = cls(in_features, out_features, bias=has_bias, dtype=bias.dtype if has_bias else dtype, device="meta",
                  scheme=qscheme)
        qs = mod.qscheme
        names = list(qs.buffer_layout(mod._buffers["weight_scale"].shape[0], mod.in_features))
        missing = [k for k in names if k not in tensors]
        if missing or len(tensors) != len(names):
            raise ValueError(f"QLinear.from_quantized: scheme {qs.name!r} takes tensors {names}, got {sorted(tensors)}")
        qs.load(mod, tuple(tensors[k] for k in names), bias)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            # same output; grad_x = grad_y @ W_deq (train() mode raises): nn/grad.py
            return linear_with_input_grad(self, x)
        if x.dtype not in _X_DTYPES:
            raise TypeError(f"QLinear: x must be bfloat16, float16 or float32, got {x.dtype}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"QLinear: x must be [..., in_features] with in_features == {self.in_features}, "
                f"got shape {list(shape)}"
            )
        w = self._buffers["weight_q"]
        if x.get_device() != w.get_device() or x.is_cuda != w.is_cuda:
            raise ValueError(
                f"QLinear: x is on {x.device} but the layer's weights are on {w.device}; "
                "move one of them (module.to(device) or x.to(device))"
            )
        K = self.in_features
        x2 = x if len(shape) == 2 else x.reshape(-1, K)  # a view whenever possible
        if not has_row_layout(x2):
            x2 = x2.contiguous()  # rows must be K-contiguous and not overlap (quantize_per_token)
        y = self.qscheme.apply(self, x2)
        n = self.out_features
        if self._buffers["lorc_a"] is not None:  # the no-LoRC path pays this one dict read
            y = self._lorc_add(x2, y)
        elif y.shape[1] != n:
            # Padded rows (out_features % 8 != 0): drop them; contiguous like nn.Linear's output.
            y = y[:, :n].contiguous()
        return y if len(shape) == 2 else y.view(*shape[:-1], n)

    def forward_quantized(self, xq: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The layer on activations already quantized in the scheme's format (``qscheme.act_dtype``: for
        w8a8, ``(xq int8 [M, in_features], sx float32 [M])`` as ``quantize_per_token`` or the fused
        ops of ``zqkernels.ops.fused`` return them; for fp8 and w4a8-fp, ``(xq float8_e4m3fn [M,
        in_features], sx float32 [M])`` from ``quantize_per_token(x, dtype=torch.float8_e4m3fn)``);
        output [M, out_features] in `dtype`. Used by the
        fused blocks (zqkernels.nn.blocks); no checks beyond the GEMM's own."""
        y = self.qscheme.apply_quantized(self, xq, sx, dtype)
        if self._buffers["lorc_a"] is not None:
            # Fused blocks hand over only the quantized input: the LoRC term uses deq(xq) = xq * sx,
            # so it differs from forward()'s (which uses float x) by E_r (x - deq(xq)), a
            # second-order error (weight error x activation rounding).
            return self._lorc_add(xq.to(torch.float32).mul_(sx.view(-1, 1)).to(dtype), y)
        n = self.out_features
        return y if y.shape[1] == n else y[:, :n].contiguous()

    def _lorc_add(self, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y [M, Np] (the GEMM output, maybe padded) + (x2 @ lorc_a) @ lorc_b -> [M, out_features],
        contiguous, in y's dtype. Two small torch GEMMs after the int8 one; fusing the rank-r update
        into the GEMM's output write is future work (not measured here)."""
        a, b = self._buffers["lorc_a"], self._buffers["lorc_b"]
        dtype = y.dtype
        if a.dtype != dtype:
            a, b = a.to(dtype), b.to(dtype)
        n = self.out_features
        if y.shape[1] != n:
            y = y[:, :n]
        if x2.dtype != dtype:
            x2 = x2.to(dtype)
        return torch.addmm(y, x2 @ a, b)  # out of place: a new contiguous [M, n]

    @property
    def lorc_rank(self) -> int:
        """The LoRC rank r (0: no LoRC)."""
        a = self._buffers.get("lorc_a")
        return 0 if a is None else int(a.shape[1])

    def init_lorc(self, rank: int, dtype: Optional[torch.dtype] = None) -> "QLinear":
        """Allocate zero LoRC factors of `rank` (lorc_a [in_features, rank], lorc_b [rank,
        out_features]) so that ``load_state_dict`` can fill them from a LoRC checkpoint; rank 0
        removes them. ``add_lorc`` computes real ones from the float weight."""
        rank = int(rank)
        if rank < 0 or rank > min(self.in_features, self.out_features):
            raise ValueError(
                f"QLinear.init_lorc: rank must be in [0, min(in_features, out_features)] = "
                f"[0, {min(self.in_features, self.out_features)}], got {rank}"
            )
        if rank == 0:
            self.lorc_a = None
            self.lorc_b = None
            return self
        w = self._buffers["weight_q"]
        if dtype is None:
            bias = self._buffers.get("bias")
            dtype = bias.dtype if bias is not None else torch.bfloat16
        self.lorc_a = torch.zeros((self.in_features, rank), dtype=dtype, device=w.device)
        self.lorc_b = torch.zeros((rank, self.out_features), dtype=dtype, device=w.device)
        return self

    def add_lorc(self, weight_float: torch.Tensor, rank: int = 8, dtype: Optional[torch.dtype] = None) -> dict:
        """ZeroQuant-V2 LoRC: factor the quantization error of `weight_float` ([out_features,
        in_features], the float weight this layer was quantized from) at `rank`; see
        ``zqkernels.nn.lorc.lorc_factors``. Returns {"rank", "bytes", "weight_bytes", ...}."""
        from .lorc import apply_lorc

        return apply_lorc(self, weight_float, rank, dtype=dtype)

    # --- state: the buffers plus the layer's identity, checked on load --------------------------
    def get_extra_state(self) -> dict[str, Any]:
        state = {
            "version": _STATE_VERSION,
            "scheme": self.scheme,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }
        qs = self.qscheme
        for key in (*qs.option_names, *(k for k in qs.loaded if k not in qs.option_names)):  # options, values
            state[key] = getattr(self, key)
        if self._buffers.get("lorc_a") is not None:
            state["lorc_rank"] = self.lorc_rank  # absent when 0: older checkpoints read as rank 0
        return state

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "out_features" not in state:
            raise ValueError(f"QLinear.load_state_dict: unrecognised _extra_state {state!r}")
        mine = self.get_extra_state()
        loaded = self.qscheme.loaded
        checked = [k for k in self.qscheme.option_names if k not in loaded]
        for key in ("scheme", "in_features", "out_features", *checked):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"QLinear.load_state_dict: the checkpoint has {key}={state.get(key)!r} but this layer "
                    f"has {key}={mine[key]!r}; build the QLinear with the checkpoint's shape, scheme and "
                    "options"
                )
        theirs, ours = int(state.get("lorc_rank", 0)), self.lorc_rank
        if theirs != ours:
            raise ValueError(
                f"QLinear.load_state_dict: the checkpoint has LoRC rank {theirs} but this layer has rank "
                f"{ours}; call layer.init_lorc({theirs}) before loading"
            )
        self.qscheme.load_extra_state(self, state)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() / .bfloat16() cast every floating-point buffer, but the kernels
        # read float32 scales (and fp8 weights) and a cast would lose precision or change the
        # format. Hand fn those buffers' bits as integers of the same width (integer tensors only
        # move devices), then view them back.
        buffers = self._buffers
        saved: dict[str, tuple[torch.dtype, torch.dtype]] = {}
        for key in self.qscheme.fixed_dtype_buffers:
            t = buffers.get(key)
            if t is not None and t.is_floating_point():
                bits = _BITS_DTYPE[t.element_size()]
                saved[key] = (t.dtype, bits)
                buffers[key] = t.view(bits)
        try:
            return super()._apply(fn, recurse)
        finally:
            for key, (dtype, bits) in saved.items():
                t = buffers[key]
                if t is not None and t.dtype == bits:
                    buffers[key] = t.view(dtype)

    def extra_repr(self) -> str:
        qs = self.qscheme
        pad = qs.rows(self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scheme={self.scheme} ({qs.description})"
            + (f", {qs.describe_layer(self)}" if qs.option_names else "")
            + (f", weight rows padded to {pad}" if pad != self.out_features else "")
            + (f", lorc_rank={self.lorc_rank}" if self.lorc_rank else "")
        )


def run_weight_quantizer(op: str, quantizer: Any, linear: nn.Module, qscheme: Scheme) -> Any:
    """quantizer(linear), or quantizer(linear, weight_format=...) when it takes that parameter (the
    layer-resolved scheme's ``weight_format``); NotImplementedError for a scheme without one."""
    try:
        fmt = qscheme.weight_format()
    except NotImplementedError:
        fmt = None
    if fmt is None:
        raise NotImplementedError(
            f"{op}: scheme {qscheme.name!r} does not take a weight_quantizer (it defines no "
            "weight_format); quantize it without one"
        )
    import inspect

    try:
        params = inspect.signature(quantizer).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "weight_format" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return quantizer(linear, weight_format=dict(fmt)) if takes else quantizer(linear)


def _check_quantized(op: str, q: Any, w: torch.Tensor, mod: Optional["QLinear"] = None) -> tuple:
    """A weight_quantizer's result: the tensors of ``quantize_weight`` for the layer's format, i.e.
    the buffers weight_q, weight_scale (and weight_group_scale) of `mod` with out_features rows
    (w8a8: (wq int8 [N, K], sw float32 [N])), on w's device."""
    N, K = w.shape
    want: list[tuple[torch.dtype, tuple]] = [(torch.int8, (N, K)), (torch.float32, (N,))]
    if mod is not None:
        want = []
        for key in ("weight_q", "weight_scale", "weight_group_scale"):
            b = mod._buffers.get(key)
            if b is not None:
                want.append((b.dtype, (-(-N // mod.qscheme.rows_per_buffer_row(key)), *b.shape[1:])))
    ok = isinstance(q, tuple) and len(q) == len(want) and all(isinstance(t, torch.Tensor) for t in q)
    if ok:
        ok = all(
            t.dtype == dt and tuple(t.shape) == shape and t.device == w.device for t, (dt, shape) in zip(q, want)
        )
    if not ok:
        got = [
            f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            for t in q
        ] if isinstance(q, tuple) else type(q).__name__
        names = ("wq", "sw", "sg")
        expect = ", ".join(f"{n} {str(dt).replace('torch.', '')} {list(shape)}" for n, (dt, shape) in zip(names, want))
        raise TypeError(f"{op}: weight_quantizer must return ({expect}) on {w.device}, got {got}")
    return tuple(t.contiguous() for t in q)


def is_conv1d(m: nn.Module) -> bool:
    """HF transformers' Conv1D (GPT-2 style): y = x @ weight + bias with weight [in, out]."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None


def linear_from_conv1d(m: nn.Module) -> nn.Linear:
    """An nn.Linear computing what the HF Conv1D `m` computes (weight transposed to [out, in]; the
    tensors are views of m's, no copy)."""
    w = m.weight.detach().t()
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    lin.bias = nn.Parameter(m.bias.detach(), requires_grad=False) if m.bias is not None else None
    return lin
