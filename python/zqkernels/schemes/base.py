"""The base class of every quantization scheme, and the registry that lists them.

A scheme is one object that knows, once, everything a format means (docs/ARCHITECTURE.md):

- its options and their validation (``__init__``: the values alone, as a config states them;
  ``for_layer``: against one layer's shape, resolving "per channel" to ``in_features``);
- quantizing and packing a float weight (``quantize``, ``weight_format``) and the reverse
  (``dequantize``);
- the ``GemmSpec`` it runs (``spec``) and the activation format its GEMM reads (``act_dtype``,
  ``act_fmt``: what fused blocks must hand over already quantized);
- the buffers it registers on a module (``create_buffers``, ``load``), its forward on float input
  (``apply``) and on already-quantized input (``apply_quantized``);
- its fake-quant (``fake_weight``, ``fake_act``: GPTQ, LKD, accuracy simulation);
- its compressed-tensors mapping (``to_compressed_tensors``, ``from_compressed_tensors``);
- its name and help for the CLI.

An instance holds option values; ``for_layer`` returns the instance a QLinear of one shape runs
(per-layer values such as ``group_size`` resolved). Instances are immutable, compare and hash by
(name, options), so they key conversion plans. The layer (``m``: a QLinear) holds the buffers and
per-layer state read at conversion (``max_scale``); schemes hold no tensors.

Nothing above this layer branches on a scheme's name: QLinear, ``quantize_``, checkpoints, the
algorithms and the CLI iterate ``SCHEMES`` and call these methods.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch

from ..formats import GemmSpec
from ..ops.linear import gemm_quantized, quantized_linear
from ..ops.quantize import dequantize, quantize_weight
from ..reference.quantize import quantize_per_token_fp8_ref, quantize_per_token_ref

__all__ = ["Scheme", "SCHEMES", "register", "get_scheme", "layer_scheme", "scheme_names", "N_ALIGN", "padded", "pad_rows"]

# The CUDA GEMMs store output rows in 16-byte vectors, so they need N % 8 == 0. Schemes whose weights
# are not packed keep their rows padded up to a multiple of 8 (zero weights, zero scales, zero bias:
# the padded channels compute exactly 0 and QLinear slices them off). The padding is the same on
# every device, so a state dict moves freely between CPU and GPU modules.
N_ALIGN = 8


def padded(n: int) -> int:
    return (n + N_ALIGN - 1) // N_ALIGN * N_ALIGN


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [n, ...] with zero rows appended up to `rows` (any dtype, fp8 included), contiguous."""
    if t.shape[0] == rows:
        return t.contiguous()
    out = t.new_zeros((rows, *t.shape[1:]))
    out[: t.shape[0]] = t
    return out


class Scheme:
    """One quantization scheme with its option values. Subclasses set the class attributes and
    implement the methods that raise NotImplementedError here."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line: what the scheme computes (repr, CLI help)
    # Per-layer options (QLinear / from_linear keyword arguments, config fields); recorded in the
    # state's _extra_state. Another option given to this scheme raises.
    option_names: ClassVar[tuple[str, ...]] = ()
    # Per-layer values a checkpoint brings instead of having to match (how the weights were
    # quantized, not the buffers' shapes): e.g. alpha and max_scale of integer group scales.
    loaded: ClassVar[tuple[str, ...]] = ()
    # Floating-point buffers whose dtype is part of the format (float32 scales, fp8 weights):
    # Module.to(dtype) / .half() must not cast them (QLinear._apply).
    fixed_dtype_buffers: ClassVar[tuple[str, ...]] = ("weight_scale",)
    # The activations the GEMM reads: per-token dynamic, quantized to this dtype ("int8" / "fp8" is
    # the format name the fused row ops and the fake-quant take).
    act_dtype: ClassVar[torch.dtype] = torch.int8
    act_fmt: ClassVar[str] = "int8"
    # Does the layer keep its rows padded to a multiple of N_ALIGN (unpacked weights)? Packed
    # layouts need out_features % 16 == 0 instead and are never padded.
    pads_rows: ClassVar[bool] = True

    # The compressed-tensors layout the scheme reads and writes, in words (load_quantized's errors);
    # "": none
    ct_layout: ClassVar[str] = ""
    # QLinear's keyword defaults that differ from the option's own None (e.g. group_size 128, where
    # a config's None means per channel)
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    # -- options ---------------------------------------------------------------------------------
    def __init__(self, op: str = "", **options: Any) -> None:
        """Check the option values on their own (None: the scheme's default). op names the caller
        in error messages (a config class, "QLinear"); empty: the scheme's own name."""
        unknown = sorted(k for k, v in options.items() if k not in self.option_names and v is not None)
        if unknown:
            raise ValueError(f"{op or self.name}: scheme {self.name!r} takes no option {unknown[0]!r} "
                             f"(its options: {list(self.option_names) or 'none'})")
        for key in self.option_names:
            object.__setattr__(self, key, options.get(key))
        self._check_options(op or self.name)

    def _check_options(self, op: str) -> None:
        """Validate (and normalise, with object.__setattr__) the option values."""

    def with_defaults(self) -> "Scheme":
        """This scheme with QLinear's keyword defaults (DEFAULTS) where an option is None."""
        opts = self.options()
        return type(self)(**{k: (self.DEFAULTS.get(k) if v is None else v) for k, v in opts.items()})

    def options(self) -> dict[str, Any]:
        """{option: value} in option_names order."""
        return {k: getattr(self, k) for k in self.option_names}

    def replace(self, **changes: Any) -> "Scheme":
        return type(self)(**{**self.options(), **changes})

    @classmethod
    def from_layer_options(cls, op: str, out_features: int, in_features: int, **options: Any) -> "Scheme":
        """The layer's scheme from QLinear's keyword options (which may differ from the config
        spelling: group_size None is the default group, in_features per channel)."""
        return cls(op, **options).for_layer(op, out_features, in_features)

    def for_layer(self, op: str, out_features: int, in_features: int) -> "Scheme":
        """The scheme a layer [out_features, in_features] runs: per-layer values resolved (e.g.
        group_size None -> in_features), the shape checked (ValueError naming `op` and the rule)."""
        return self

    def general(self) -> "Scheme":
        """The layer-independent scheme of a layer's scheme (a per-channel group size resolved to
        in_features becomes per channel again): equal for the parts of one fused block."""
        return self

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace({key}=...)")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options() == self.options()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.options().items())))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def label(self) -> str:
        """"w4a8, group_size=128": the scheme and its set options, for reports."""
        return ", ".join([self.name] + [f"{k}={v}" for k, v in self.options().items() if v is not None])

    def describe(self) -> str:
        """The options, for reports ("" when none)."""
        return ""

    def describe_layer(self, m: Any) -> str:
        """The layer's options and per-layer values for QLinear.extra_repr."""
        return self.describe()

    # -- the GEMM --------------------------------------------------------------------------------
    def spec(self) -> GemmSpec:
        """The GemmSpec of this scheme's GEMM (formats, scale granularity and kind)."""
        raise NotImplementedError

    # -- weights -------------------------------------------------------------------------------
    def weight_format(self) -> dict[str, Any]:
        """``quantize_weight`` keyword arguments of this (layer-resolved) scheme's weight format:
        what a ``weight_quantizer`` (GPTQ) must produce, and what ``quantize`` computes."""
        raise NotImplementedError

    def quantize(self, weight: torch.Tensor) -> tuple:
        """Round-to-nearest quantization of a float weight [N, K] into the tensors of
        ``weight_format`` ((wq, sw) or (wq, sw, sg), unpadded)."""
        return quantize_weight(weight, **self.weight_format())

    def dequant_format(self) -> str:
        """``dequantize``'s fmt for this scheme's weight tensors."""
        raise NotImplementedError

    def dequantize(self, m: Any) -> torch.Tensor:
        """The float32 weight [out_features, in_features] a layer's buffers stand for (what the
        kernels multiply; padded rows dropped)."""
        n, k = m.out_features, m.in_features
        b = m._buffers
        wq, sw, sg = b["weight_q"], b["weight_scale"], b.get("weight_group_scale")
        if wq.shape[1] == k:  # not packed: padded rows (zero) may follow out_features
            wq, sw = wq[:n], sw[:n]
            sg = None if sg is None else sg[:n]
        return dequantize(wq, sw, sg, fmt=self.dequant_format())[:n]

    # -- the module's state ----------------------------------------------------------------------
    def rows(self, out_features: int) -> int:
        """How many weight rows a layer keeps (out_features padded to N_ALIGN when pads_rows)."""
        return padded(out_features) if self.pads_rows else out_features

    def rows_per_buffer_row(self, buffer: str) -> int:
        """How many output rows one row of a weight buffer (a ``buffer_layout`` name) covers: 1 (one
        row per output channel) for every buffer of most schemes; fp8-block's ``weight_scale`` has one
        row per 128 output rows. Splitting a fused block's merged QLinear into its parts (and
        concatenating them back) cuts each buffer at row / this."""
        return 1

    def buffer_layout(self, rows: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """{buffer name: (shape, dtype)} of the quantized weight tensors, in ``quantize``'s order."""
        raise NotImplementedError

    def create_buffers(self, m: Any, rows: int, bias: bool, dtype: torch.dtype, device: Any) -> None:
        for key, (shape, dt) in self.buffer_layout(rows, m.in_features).items():
            m.register_buffer(key, torch.zeros(shape, dtype=dt, device=device))
        m.register_buffer("bias", torch.zeros((rows,), dtype=dtype, device=device) if bias else None)

    def load(self, m: Any, quantized: tuple, bias: Optional[torch.Tensor]) -> None:
        """Install quantized weight tensors (``quantize``'s result for this layer, unpadded rows) and
        the bias into a layer's buffers, padding rows as the layout requires, and record the
        per-layer values read from them (``init_layer_state``)."""
        rows = m._buffers["weight_scale"].shape[0]
        for key, t in zip(self.buffer_layout(rows, m.in_features), quantized):
            setattr(m, key, pad_rows(t, rows))
        m.bias = None if bias is None else pad_rows(bias.detach(), rows).clone()
        self.init_layer_state(m)

    def init_layer_state(self, m: Any) -> None:
        """Per-layer values derived from the weights once, at conversion (e.g. max_scale)."""

    def load_extra_state(self, m: Any, state: dict[str, Any]) -> None:
        """Take the ``loaded`` values from a checkpoint's _extra_state (absent keys: None)."""
        for key in self.loaded:
            setattr(m, key, state.get(key))

    # -- tensor parallelism (nn/tp.py): the weight tensors cut along N (colwise) or K (rowwise) ----
    def cols_per_buffer_col(self, buffer: str) -> Optional[int]:
        """How many input channels one column of a weight buffer covers in ``plain_buffers``' form:
        1 for the weight codes; None for a buffer with no K axis or one column spanning all of K (per
        output channel scales: every K-slice keeps them whole); group scales: the group size; fp8-block
        scales: 128. A rowwise split may cut only at multiples of it."""
        return 1 if buffer == "weight_q" else None

    def unpack_weight(self, wq: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
        """weight_q as the layer holds it -> its codes [out_features, in_features], row-major (packed
        layouts unpacked; padded rows dropped)."""
        return wq[:out_features]

    @classmethod
    def pack_weight(cls, codes: torch.Tensor) -> torch.Tensor:
        """The inverse of ``unpack_weight``: codes [N, K] -> weight_q as ``load`` takes it (unpadded
        rows; also what ``from_compressed_tensors`` builds from a checkpoint's codes)."""
        return codes.contiguous()

    def plain_buffers(self, m: Any) -> dict[str, torch.Tensor]:
        """{buffer name: tensor} of a layer's quantized weights with unpadded rows and the weight
        codes unpacked ([N, K]): the form a split cuts (``rows_per_buffer_row`` /
        ``cols_per_buffer_col`` say how) and ``shard_buffers`` returns."""
        n = m.out_features
        out = {}
        for key in self.buffer_layout(m._buffers["weight_scale"].shape[0], m.in_features):
            t = m._buffers[key]
            out[key] = (self.unpack_weight(t, n, m.in_features) if key == "weight_q"
                        else t[: -(-n // self.rows_per_buffer_row(key))])  # fmt: skip
        return out

    def shard_buffers(self, m: Any, style: str, ranges: Any) -> tuple["Scheme", dict[str, torch.Tensor]]:
        """The part of a layer that one rank holds: the output channels of `ranges` (style "colwise";
        [(start, stop), ...], concatenated in order: e.g. a merged QKV GEMM's q, k and v heads of one
        rank) or the input channels of one range ("rowwise"). Returns (the part's layer scheme,
        {buffer name: tensor} for ``QLinear.from_quantized``). ValueError when a cut breaks a group, a
        block of scales or a packed layout (naming the rule and the unit it needs)."""
        N, K = m.out_features, m.in_features
        col = style == "colwise"
        full = N if col else K
        ranges = [(int(a), int(b)) for a, b in ranges]
        if not ranges or (not col and len(ranges) != 1) or any(not 0 <= a < b <= full for a, b in ranges):
            raise ValueError(f"shard: {ranges} must be {'non-empty ranges' if col else 'one non-empty range'} of the "
                             f"{full} {'output' if col else 'input'} channels")  # fmt: skip
        plain = self.plain_buffers(m)
        out = {}
        for key, t in plain.items():
            unit = self.rows_per_buffer_row(key) if col else self.cols_per_buffer_col(key)
            if unit is None:
                out[key] = t
                continue
            pieces = []
            for start, stop in ranges:
                if start % unit or (stop % unit and stop != full):
                    what = {"weight_q": "the weights", "weight_scale": "the weight scales",
                            "weight_group_scale": "the group scales"}.get(key, key)  # fmt: skip
                    raise ValueError(
                        f"shard: scheme {self.name!r} cannot split {'out' if col else 'in'}_features at "
                        f"[{start}, {stop}): {what} come in units of {unit} {'rows' if col else 'columns'} (a "
                        f"{style} split must cut at multiples of {unit})"
                    )
                a, b = start // unit, -(-stop // unit)
                pieces.append(t[a:b] if col else t[:, a:b])
            out[key] = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        width = sum(b - a for a, b in ranges)
        n, k = (width, K) if col else (N, width)
        try:
            part = self.general().for_layer("shard", n, k)
        except ValueError as e:
            raise ValueError(f"shard: a {style} part [{n}, {k}] of the layer [{N}, {K}] breaks its scheme's layout: {e}") from None
        if "weight_q" in out:
            out["weight_q"] = part.pack_weight(out["weight_q"].contiguous())
        return part, {key: t.contiguous() for key, t in out.items()}

    # -- forward ---------------------------------------------------------------------------------
    @property
    def recipe(self) -> str:
        """The kernel recipe of ``spec()`` (the key of the one GEMM op), computed once."""
        r = self.__dict__.get("_recipe")
        if r is None:
            r = self.spec().recipe
            object.__setattr__(self, "_recipe", r)
        return r

    def apply(self, m: Any, x2: torch.Tensor) -> torch.Tensor:
        """x2 [M, in_features] (row layout, checked by QLinear) -> y [M, rows] in x2's dtype: per-token
        quantization in ``act_dtype`` and the recipe's GEMM on the layer's buffers (ops/linear.py)."""
        b = m._buffers  # straight from _buffers: Module.__getattr__ costs ~0.5 us per buffer
        bias = b["bias"]
        if bias is not None and bias.dtype != x2.dtype:
            bias = bias.to(x2.dtype)
        return quantized_linear(self.recipe, x2, b["weight_q"], b["weight_scale"], b.get("weight_group_scale"), bias,
                                m.__dict__.get("max_scale"), trusted=m._cuda_shapes_ok)

    def apply_quantized(self, m: Any, xq: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Activations already quantized per token in ``act_dtype`` (a fused row op's output) -> y
        [M, rows] in `dtype`."""
        b = m._buffers
        bias = b["bias"]
        if bias is not None and bias.dtype != dtype and dtype != torch.float32:
            bias = bias.to(dtype)
        return gemm_quantized(self.recipe, xq, b["weight_q"], sx, b["weight_scale"], b.get("weight_group_scale"), bias,
                              dtype, m.__dict__.get("max_scale"), trusted=m._cuda_shapes_ok)

    # -- fake quantization (float math with straight-through gradients: GPTQ, LKD, simulation) ----
    def fake_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The float32 weight [N, K] this (layer-resolved) scheme computes with after quantizing w,
        bit for bit ``dequantize(*quantize_weight(w, **weight_format()))``; no autograd."""
        raise NotImplementedError

    def fake_act(self, x2: torch.Tensor) -> torch.Tensor:
        """Per-token dynamic quantization of x2 [M, K] dequantized to float32; no autograd."""
        q, s = quantize_per_token_ref(x2) if self.act_fmt == "int8" else quantize_per_token_fp8_ref(x2)
        return q.float() * s.reshape(-1, 1)

    # -- compressed-tensors checkpoints ------------------------------------------------------------
    def to_compressed_tensors(self, m: Any, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
        """(tensors by local name, the compressed-tensors scheme {format, weights,
        input_activations}, what zqkernels.json records for the layer)."""
        raise NotImplementedError(f"save_quantized: layer {name!r} uses scheme {self.name!r}, which has no layout here")

    @classmethod
    def ct_accepts(cls, group: dict[str, Any], fmt: Any, gname: str = "") -> bool:
        """Does this scheme load the layers of a compressed-tensors config group (its ``format``, else
        the quantization_config's `fmt`; ``weights``, ``input_activations``)? Several schemes may
        accept one group (w4a8 / w4a8-floatscale): ``zqkernels.json``'s scheme, else ``ct_foreign``,
        picks per layer. A group of this scheme's format family that it cannot hold may raise
        NotImplementedError saying why (naming `gname`)."""
        return False

    @classmethod
    def ct_foreign(cls, group_scales: str) -> bool:
        """Among the schemes accepting another tool's config group (no ``zqkernels.json``), is this
        the one load_quantized(group_scales=...) ("int" / "float") builds?"""
        return True

    @classmethod
    def from_compressed_tensors(
        cls, name: str, tensors: dict[str, torch.Tensor], info: dict[str, Any], group_scales: str
    ) -> Any:
        """One layer of an accepted config group -> ``compressed.CTLayer`` (the layer-resolved scheme,
        out / in features, {buffer name: tensor} with unpadded rows, bias), the inverse of
        ``to_compressed_tensors``. tensors: the layer's ``compressed.CT_TENSORS`` by local name; info:
        its ``zqkernels.json`` entry ({} for another tool's checkpoint); group_scales: load_quantized's
        choice for another tool's group scales."""
        raise NotImplementedError(f"load_quantized: {name}: scheme {cls.name!r} has no compressed-tensors layout")


# ------------------------------------------------------------------------------------------------
# The registry

SCHEMES: dict[str, type[Scheme]] = {}


def register(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: list a Scheme subclass under its name."""
    if not cls.name or cls.name in SCHEMES:
        raise ValueError(f"register: scheme name {cls.name!r} is empty or taken")
    SCHEMES[cls.name] = cls
    return cls


def scheme_names() -> list[str]:
    return sorted(SCHEMES)


def _scheme_class(op: str, scheme: Any, options: dict[str, Any]) -> type[Scheme]:
    """The class of a scheme name; ValueError for an unknown name or an option it does not take."""
    cls = SCHEMES.get(scheme) if isinstance(scheme, str) else None
    if cls is None:
        raise ValueError(f"{op}: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}")
    for key, value in options.items():
        if value is not None and key not in cls.option_names:
            takes = sorted(n for n, c in SCHEMES.items() if key in c.option_names)
            raise ValueError(
                f"{op}: {key} applies to scheme {' / '.join(repr(t) for t in takes)} only, got "
                f"{key}={value!r} with scheme {scheme!r}"
            )
    return cls


def _no_options(op: str, options: dict[str, Any]) -> None:
    if any(v is not None for v in options.values()):
        raise ValueError(f"{op}: pass options either in the Scheme object or as keywords, not both")


def get_scheme(op: str, scheme: Any, **options: Any) -> Scheme:
    """A scheme instance from a name and options (None: the scheme's default; group_size None: per
    channel), or an instance (options must then be absent)."""
    if isinstance(scheme, Scheme):
        _no_options(op, options)
        return scheme
    cls = _scheme_class(op, scheme, options)
    return cls(op, **{k: v for k, v in options.items() if k in cls.option_names})


def layer_scheme(op: str, scheme: Any, out_features: int, in_features: int, options: dict[str, Any]) -> Scheme:
    """The layer-resolved scheme of a QLinear [out_features, in_features]: from a name plus QLinear's
    keyword options (group_size None: the scheme's default; in_features: per channel), or from a
    Scheme object (options absent)."""
    if isinstance(scheme, Scheme):
        _no_options(op, options)
        return scheme.for_layer(op, out_features, in_features)
    cls = _scheme_class(op, scheme, options)
    given = {k: v for k, v in options.items() if k in cls.option_names}
    return cls.from_layer_options(op, out_features, in_features, **given)
