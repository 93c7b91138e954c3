"""torchao-style conversion: ``quantize_(model, config, filter_fn=..., module_configs=...)``.

A config object names a quantization scheme and its options: ``W8A8Config``, ``W8A8GroupConfig``,
``FP8Config``, ``W4A8Config`` and ``W4A8FPConfig``; each is a thin constructor of a scheme object
(``zqkernels.schemes``), which validates the options.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from torch import nn

from ..schemes import FP8, W4A8, W4A8FP, W8A8, Scheme, W4A8FloatScale, W4A8ZeroPoint, W8A8Group, get_scheme
from .blocks import resolve_level
from .convert import _convert, _convertible, why_not_fused

__all__ = [
    "QuantConfig",
    "SchemeConfig",
    "W8A8Config",
    "W8A8GroupConfig",
    "FP8Config",
    "W4A8Config",
    "W4A8FPConfig",
    "ZEROQUANT_W4_8",
    "ConversionSummary",
    "quantize_",
]


class QuantConfig:
    """Base class of the quantization configs accepted by ``quantize_``: a thin constructor of a
    scheme object (``zqkernels.schemes``), whose constructor checks the options. ``scheme_object()``
    is what each converted Linear runs (group_size None: per channel, resolved per layer).

    Every config also has ``level`` (the precision of each GEMM role inside fused transformer
    blocks: a preset of ``zqkernels.LEVELS``, "int8" = every role quantized with the config's
    scheme, "balanced", "accuracy", or a {role: quantized?} dict) and ``fused_blocks`` (fuse
    recognised transformer layers, ``zqkernels.nn.blocks``; False converts every Linear on its own).
    """

    def __post_init__(self) -> None:
        op = type(self).__name__
        resolve_level(getattr(self, "level", "int8"))
        object.__setattr__(self, "_scheme", self._make(op))

    def _make(self, op: str) -> Scheme:
        """The scheme object of these options (its constructor validates them, naming `op`)."""
        raise NotImplementedError

    def scheme_object(self) -> Scheme:
        return self._scheme

    @property
    def scheme(self) -> str:
        """The scheme's name ("w8a8", "w4a8", ...)."""
        return self._scheme.name


@dataclass(frozen=True)
class SchemeConfig(QuantConfig):
    """Any registered scheme by its object: ``SchemeConfig(zqkernels.schemes.W4A8(group_size=64))``
    (or a scheme name: ``SchemeConfig("fp8")``, the scheme's option defaults; group_size None is per
    channel). The named configs below are the same with the scheme's options as fields."""

    qscheme: Union[Scheme, str] = "w8a8"
    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        return get_scheme(op, self.qscheme)


@dataclass(frozen=True)
class W8A8Config(QuantConfig):
    """int8 per-token dynamic activations x int8 per-channel weights (ZeroQuant's W8A8).

    level: the precision of each GEMM role inside fused transformer blocks, a preset of
    ``zqkernels.LEVELS`` ("int8", "balanced", "accuracy") or a {role: int8?} dict.
    fused_blocks: fuse recognised transformer layers (``zqkernels.nn.blocks``); False converts
    every Linear to a QLinear on its own.
    """

    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        return W8A8(op)


@dataclass(frozen=True)
class W8A8GroupConfig(QuantConfig):
    """int8 per-token activations x int8 weights with one scale per `group_size` input channels:
    QLinear scheme "w8a8-group" (``w8a8_group_gemm``, docs/W4A8.md "Group-wise W8A8").

    group_size: 32, 64, 128 (default), 256 or None (per channel). scale: "int" (default: integer
    group scales) or "float". alpha: the integer scales' multiplier (a power of two up to the INT8
    bound of the group size: 32 -> 2048, 64 -> 1024, 128 -> 512, 256 -> 256), None for
    quantize_weight's default. Every converted Linear needs in_features % 16 == 0 and group_size
    dividing it (per channel: in_features % 32 == 0); another shape raises ValueError naming the
    layer, before the model changes.
    """

    group_size: Optional[int] = 128
    scale: str = "int"
    alpha: Optional[int] = None
    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        return W8A8Group(op, group_size=self.group_size, scale=self.scale, alpha=self.alpha)


@dataclass(frozen=True)
class FP8Config(QuantConfig):
    """FP8 (E4M3) per-token dynamic activations x FP8 per-channel weights: QLinear scheme "fp8"
    (``fp8_gemm``, accurate accumulation)."""

    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        return FP8(op)


@dataclass(frozen=True)
class W4A8Config(QuantConfig):
    """int4 group-wise weights x int8 per-token activations (ZeroQuant's W4A8 with Integer Scale,
    ``w4a8_gemm``, docs/W4A8.md): QLinear scheme "w4a8" (scale="int", the default: integer group
    scales), "w4a8-floatscale" (scale="float") or "w4a8-zp" (scale="zp": integer scales 1..16 with
    group zero points, the two-level format; as fast as alpha=16 and more accurate where measured,
    docs/W4A8.md "Zero-point INT4"; no alpha).

    group_size: 32, 64, 128 (default), 256 or None (per channel). alpha (scale="int"): a power of two
    in [1, 2^15], None for quantize_weight's heuristic (2^10..2^15). alpha=16 is the fast choice on
    Hopper: every integer scale times a code then fits an int8 and the GEMM multiplies the scales
    into the weights in registers (one exact int32 sum, no per-group fold; 1.5-1.7x bf16 at large M
    against ~1x with the default), and on SmolLM2 it measured no less accurate (docs/W4A8.md,
    "Weights" and "Status"). Every converted Linear needs out_features %
    16 == 0, in_features % 64 == 0 and group_size dividing in_features (the packed layout m16k32);
    another shape raises ValueError naming the layer, before the model changes (leave such layers
    in float with module_configs {pattern: None}).
    """

    group_size: Optional[int] = 128
    scale: str = "int"
    alpha: Optional[int] = None
    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        if self.scale in ("float", "zp"):
            if self.alpha is not None:
                raise ValueError(f"{op}: alpha applies to scale='int' only, got alpha={self.alpha!r} with scale={self.scale!r}")
            cls = W4A8FloatScale if self.scale == "float" else W4A8ZeroPoint
            return cls(op, group_size=self.group_size)
        if self.scale != "int":
            raise ValueError(f"{op}: scale must be 'int', 'float' or 'zp', got {self.scale!r}")
        return W4A8(op, group_size=self.group_size, alpha=self.alpha)


@dataclass(frozen=True)
class W4A8FPConfig(QuantConfig):
    """ZeroQuant-FP W4A8: FP4 (E2M1) group-wise weights x FP8 (E4M3) per-token activations, QLinear
    scheme "w4a8-fp" (``w4a8_fp_gemm``).

    group_size: 32, 64, 128 (default) or None (one group per row: per channel).
    scale_policy: how the group scales are represented (docs/FP8.md): "m2" (default), "m1"
    (power-of-two ratios, int8 exponents) or "free" (float32 ratios); case-insensitive, stored
    lower-case. Every converted Linear needs out_features % 16 == 0 and in_features % 64 == 0 (and
    group_size dividing in_features): another shape raises ValueError naming the layer, before
    the model changes; leave such layers in float with module_configs {pattern: None}.
    """

    group_size: Optional[int] = 128
    scale_policy: str = "m2"
    level: Union[str, dict[str, bool]] = "int8"
    fused_blocks: bool = True

    def _make(self, op: str) -> Scheme:
        s = W4A8FP(op, group_size=self.group_size, scale_policy=self.scale_policy)
        object.__setattr__(self, "scale_policy", s.scale_policy)
        return s


ZEROQUANT_W4_8: dict[str, Optional[QuantConfig]] = {"*.mlp.*": W4A8Config(), "*": W8A8Config()}
"""ZeroQuant's W4/8 mixed-precision preset for ``quantize_(model, W8A8Config(),
module_configs=ZEROQUANT_W4_8)``: int4 weights (W4A8, integer group scales of 128) in the MLP, W8A8
everywhere else. Layers whose MLP holds a W4A8 Linear are not fused (mixed configs): every Linear
is converted on its own. The MLP Linears need W4A8's shapes (out_features % 16 == 0, in_features %
128 == 0); another shape raises ValueError naming the layer before the model changes."""


@dataclass
class ConversionSummary:
    """What ``quantize_`` did. converted: (module, how) pairs; skipped: (module, why) pairs of the
    Linear / Conv1D modules left in float; notes: (module, note) pairs, e.g. a recognised layer
    that could not be fused and was converted Linear by Linear."""

    converted: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"quantize_: {len(self.converted)} converted, {len(self.skipped)} left in float"
        unfused = sum(n.startswith("not fused") for _, n in self.notes)
        if unfused:
            head += f", {unfused} recognised layer{'s' if unfused > 1 else ''} not fused (the notes say why)"
        rows = (
            [(m, "converted", h) for m, h in self.converted]
            + [(m, "float", w) for m, w in self.skipped]
            + [(m, "note", n) for m, n in self.notes]
        )
        if not rows:
            return head
        width = max(len(r[0]) for r in rows)
        return "\n".join([head] + [f"{m:<{width}}  {k:<9} {d}" for m, k, d in rows])


def _check_config(arg: str, cfg: Any, allow_none: bool) -> None:
    if cfg is None and allow_none:
        return
    if not isinstance(cfg, QuantConfig):
        want = "a QuantConfig (e.g. W8A8Config())" + (" or None" if allow_none else "")
        raise TypeError(f"quantize_: {arg} must be {want}, got {type(cfg).__name__}: {cfg!r}")


def quantize_(
    model: nn.Module,
    config: Optional[QuantConfig],
    *,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    module_configs: Optional[Mapping[str, Optional[QuantConfig]]] = None,
    progress: bool = False,
    weight_quantizer: Optional[Callable[[nn.Module], Any]] = None,
) -> ConversionSummary:
    """Quantize `model` in place with `config`; returns a ``ConversionSummary``.

    Same machinery as ``quantize_model`` (fused blocks for recognised transformer layers, QLinear
    for every other nn.Linear / HF Conv1D; all replacements built before the model changes;
    ``conversion_report(model)`` works afterwards), with torchao-style selection:

    - filter_fn(module, fqn) -> bool: which Linear / Conv1D modules to convert (default: all).
    - module_configs: {fnmatch pattern on the fqn: config or None}; the first matching pattern
      wins, None leaves the module in float; modules no pattern matches get `config` (which may
      be None: only the matched modules are converted). E.g. ``ZEROQUANT_W4_8``.
    - By default ``lm_head`` and any Linear whose weight is the same Parameter as an nn.Embedding's
      weight (tied embeddings) stay in float, so the tie survives; they are converted only when
      selected explicitly: filter_fn returns True for them, or a module_configs pattern other than
      "*" matches them.
    - A recognised transformer layer is fused (with the config's scheme and level) only when every
      Linear in it gets the same config with fused_blocks=True; otherwise its Linears are converted
      one by one, and the summary's notes say why (e.g. a part left in float by module_configs; to
      keep a GEMM role of fused blocks in float use the config's ``level`` instead).
    - progress=True shows a tqdm progress bar over the modules being built (if tqdm is installed).
    - weight_quantizer: optional callable(linear) -> the scheme's quantize_weight result or None,
      used instead of round-to-nearest for each converted Linear (in fused blocks: for each part of
      a merged GEMM); None from it keeps round-to-nearest. ``zqkernels.gptq`` passes GPTQ's here
      (every scheme: a quantizer taking ``weight_format=`` is told the layer's format).

    Each config converts the Linears outside fused blocks to QLinears of its scheme ("w8a8", "fp8",
    "w4a8-fp", "w4a8", "w4a8-floatscale" or "w4a8-zp", "w8a8-group"). A Linear whose shape the scheme cannot
    run raises ValueError naming it, before anything changes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be an nn.Module, got {type(model).__name__}")
    if _convertible(model):
        raise TypeError(
            "quantize_: model is itself a Linear and cannot be replaced in place; use "
            "zqkernels.QLinear.from_linear (or quantize_model, which returns the QLinear)"
        )
    _check_config("config", config, allow_none=module_configs is not None)
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"quantize_: filter_fn must be callable(module, fqn) -> bool, got {type(filter_fn).__name__}")
    patterns: list[tuple[str, Optional[QuantConfig]]] = []
    if module_configs is not None:
        if not isinstance(module_configs, Mapping):
            raise TypeError(
                f"quantize_: module_configs must be a dict of pattern -> config, got {type(module_configs).__name__}"
            )
        for pat, cfg in module_configs.items():
            if not isinstance(pat, str):
                raise TypeError(f"quantize_: module_configs keys must be fnmatch patterns (str), got {pat!r}")
            _check_config(f"module_configs[{pat!r}]", cfg, allow_none=True)
            patterns.append((pat, cfg))

    embeddings = {
        id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)
    }

    def resolve(name: str, module: nn.Module) -> tuple[Optional[QuantConfig], str]:
        """-> (config, "") to convert, or (None, why) to leave in float."""
        explicit = False
        if filter_fn is not None:
            if not filter_fn(module, name):
                return None, "filter_fn returned False"
            explicit = True
        cfg = config
        for pat, c in patterns:
            if fnmatch.fnmatchcase(name, pat):
                if c is None:
                    return None, f"module_configs[{pat!r}] is None"
                cfg, explicit = c, explicit or pat != "*"
                break
        else:
            if cfg is None:
                return None, "no module_configs pattern matches and config is None"
        if not explicit:
            tied = embeddings.get(id(getattr(module, "weight", None)))
            if tied is not None:
                return None, f"weight tied to input embedding {tied!r} (select it explicitly to convert)"
            if name.rsplit(".", 1)[-1] == "lm_head":
                return None, "lm_head left in float by default (select it explicitly to convert)"
        return cfg, ""

    def decide_linear(name: str, module: nn.Module) -> tuple[bool, str]:
        cfg, why = resolve(name, module)
        if cfg is None:
            return False, why
        return True, cfg.scheme_object()  # group_size None (per channel): resolved per layer

    def decide_block(name: str, layer: nn.Module) -> Union[None, str, tuple[dict[str, bool], Scheme]]:
        """(level, scheme) to fuse; None: nothing to fuse or fused_blocks=False; a string: why not."""
        parts = [(sub, *resolve(sub, m)) for sub, m in layer.named_modules(prefix=name) if _convertible(m)]
        chosen = [c for _, c, _ in parts if c is not None]
        if not chosen or not any(c.fused_blocks for c in chosen):
            return None
        if len(chosen) == len(parts) and all(c == chosen[0] for c in chosen):
            return resolve_level(chosen[0].level), chosen[0].scheme_object()
        return why_not_fused(name, layer, parts, chosen[0].level if all(c == chosen[0] for c in chosen) else None)

    if weight_quantizer is not None and not callable(weight_quantizer):
        raise TypeError(
            f"quantize_: weight_quantizer must be callable(linear) -> (wq, sw) or None, got {type(weight_quantizer).__name__}"
        )
    rows = _convert(model, "quantize_", decide_linear, decide_block, progress=progress, weight_quantizer=weight_quantizer)
    summary = ConversionSummary()
    for r in rows:
        if r["path"] == "float":
            summary.skipped.append((r["module"], r["why"]))
        elif r["path"] == "per-linear":
            summary.notes.append((r["module"], r["why"]))
        else:
            summary.converted.append((r["module"], f"{r['path']}: {r['why']}"))
    return summary
