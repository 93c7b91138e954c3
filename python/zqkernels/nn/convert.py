"""Whole-model conversion: quantize_model."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, Optional, Union

from torch import nn

from ..schemes import Scheme, get_scheme
from .blocks import BLOCKS, LEVELS, ROLES, QuantizedBlock, block_class, parts_of, resolve_level
from .linear import QLinear
from .linear import is_conv1d as _is_conv1d
from .linear import linear_from_conv1d as _as_linear
from .merged_linear import _WEIGHT_QUANTIZER

__all__ = ["quantize_model", "conversion_report"]


def _skipped(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def quantize_model(
    model: nn.Module,
    scheme: Union[str, Scheme] = "w8a8",
    skip: Union[str, Iterable[str]] = (),
    *,
    level: Union[str, dict[str, bool]] = "int8",
    fused_blocks: bool = True,
    verbose: bool = False,
) -> nn.Module:
    """Quantize `model` in place for inference; returns the model.

    - Transformer layers of a recognised architecture (HF ``BertLayer`` / ``RobertaLayer``,
      ``LlamaDecoderLayer`` / ``MistralDecoderLayer`` / ``Qwen2DecoderLayer``, ``GPT2Block``) become fused
      quantized blocks (``zqkernels.nn.blocks``): merged QKV and gate|up GEMMs, quantization fused
      into the norms and activations, and each block's last residual add fused with the next block's
      input norm. `level` picks the precision of each GEMM role: a preset of ``blocks.LEVELS``
      ("int8", "balanced", "accuracy") or a {role: int8?} dict. ``fused_blocks=False`` turns this off.
    - Every other nn.Linear, and HF ``Conv1D`` (GPT-2: weight stored [in, out]), becomes a
      ``QLinear`` of `scheme`.

    skip: module names to leave in float, as fnmatch patterns on the qualified name ('lm_head',
    '*.mlp.*'); a pattern naming a module also skips everything inside it ('encoder'); a recognised
    layer with a skipped Linear is not fused (the report says why; `level` keeps a GEMM role of the
    fused blocks in float instead). A Linear used
    in several places becomes one shared QLinear everywhere. All or nothing: every replacement is
    built first and the model is changed only if all succeed. Linears inside nn.MultiheadAttention
    stay float (that module reads their weights directly). What happened to each module is recorded
    in ``conversion_report(model)`` (``verbose=True`` prints it). If `model` is itself an nn.Linear
    (or Conv1D), the QLinear is returned.
    """
    # a name takes QLinear's keyword defaults (e.g. group_size 128); a Scheme object is used as is
    spec = scheme if isinstance(scheme, Scheme) else get_scheme("quantize_model", scheme).with_defaults()
    levels = resolve_level(level)
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)

    def decide_linear(name: str, _module: nn.Module) -> tuple[bool, Spec]:
        if _skipped(name, patterns):
            return False, "skipped by pattern"
        return True, spec

    def decide_block(name: str, module: nn.Module) -> Union[None, str, tuple[dict[str, bool], Scheme]]:
        if not fused_blocks or _skipped(name, patterns):
            return None
        parts = [(sub, None if _skipped(sub, patterns) else spec, "skipped by pattern")
                 for sub, m in module.named_modules(prefix=name) if _convertible(m)]
        if any(c is None for _, c, _ in parts):  # a block fuses all its Linears or none
            return why_not_fused(name, module, parts, level)
        return levels, spec

    if _convertible(model):
        return model if _skipped("", patterns) else _convert_one("quantize_model", "", model, spec)
    _convert(model, "quantize_model", decide_linear, decide_block)
    if verbose:
        print(conversion_report(model))
    return model


def _convertible(m: nn.Module) -> bool:
    return (isinstance(m, nn.Linear) or _is_conv1d(m)) and not isinstance(m, QLinear)


# What decide_linear hands back for a Linear to convert: a scheme name (QLinear's keyword defaults)
# or a Scheme object (a config's scheme with its options); hashable, so a Linear shared by several
# slots with one spec becomes one QLinear.
Spec = Union[str, Scheme]


def _spec_label(spec: Spec) -> str:
    return spec if isinstance(spec, str) else spec.label()


def _convert_one(op: str, name: str, linear: nn.Module, spec: Spec, weight_quantizer=None) -> QLinear:
    try:
        lin = _as_linear(linear) if _is_conv1d(linear) else linear
        if weight_quantizer is not None:
            return QLinear.from_linear(lin, spec, weight_quantizer=weight_quantizer)
        return QLinear.from_linear(lin, spec)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{op}: layer {name!r}: {e}") from e


def _convert(
    model: nn.Module,
    op: str,
    decide_linear: Callable[[str, nn.Module], tuple[bool, Any]],
    decide_block: Callable[[str, nn.Module], Union[None, str, tuple[dict[str, bool], Scheme]]],
    progress: bool = False,
    weight_quantizer: Optional[Callable[[nn.Module], Any]] = None,
) -> list[dict[str, Any]]:
    """The conversion machinery shared by quantize_model and quantize_ (model is changed in place).

    decide_block(name, layer) -> (precision levels, scheme) to fuse a recognised transformer layer, or
    None to look at its Linears one by one, or a string: why not (recorded in the report as "not
    fused: why", then its Linears one by one). decide_linear(name, linear) -> (True, spec) to convert a Linear
    / Conv1D slot (spec: a scheme name, or (scheme, ((option, value), ...)) for per-layer options), or
    (False, why) to leave it in float (recorded in the report). Every replacement
    is built before the model is changed. Returns (and stores for conversion_report) the report rows.
    weight_quantizer: optional callable(linear) -> (wq, sw) or None used instead of round-to-nearest
    for every converted Linear, including the parts of the fused blocks' merged GEMMs (GPTQ).
    """
    report: list[dict[str, Any]] = []
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=0, desc=op, unit="module")

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    def grow(n: int) -> None:
        if bar is not None and n:
            bar.total += n
            bar.refresh()

    # Phase 1: fused blocks (built, not installed yet). A layer that cannot be fused (unsupported
    # variant) falls back to per-Linear conversion, with the reason recorded.
    candidates: list[tuple[nn.Module, str, str, type, tuple[dict[str, bool], Scheme]]] = []
    taken: list[str] = []
    for prefix, parent in model.named_modules():
        if any(prefix == b or prefix.startswith(b + ".") for b in taken):
            continue
        for child_name, child in parent._modules.items():
            name = f"{prefix}.{child_name}" if prefix else child_name
            cls = block_class(child) if child is not None else None
            if cls is None:
                if _unknown_layer(parent, child) and decide_block(name, child) is not None:
                    # a transformer layer we have no block for: said, not silently per-Linear
                    report.append({"module": name, "path": "per-linear", "why": f"not fused: {_no_block(child)}"})
                    taken.append(name)
                continue
            lv = decide_block(name, child)
            if isinstance(lv, str):
                report.append({"module": name, "path": "per-linear", "why": f"not fused: {lv}"})
            if lv is None or isinstance(lv, str):
                continue
            candidates.append((parent, child_name, name, cls, lv))
            taken.append(name)
    grow(len(candidates))
    blocks: list[tuple[nn.Module, str, str, QuantizedBlock]] = []  # (parent, attr, name, block)
    inside_block: list[str] = []
    for parent, child_name, name, cls, lv in candidates:
        token = _WEIGHT_QUANTIZER.set(weight_quantizer)
        try:
            blk = cls(parent._modules[child_name], *lv)
        except (ValueError, TypeError, AttributeError) as e:
            report.append({"module": name, "path": "per-linear", "why": f"not fused: {e}"})
            tick()
            continue
        finally:
            _WEIGHT_QUANTIZER.reset(token)
        blocks.append((parent, child_name, name, blk))
        inside_block.append(name)
        report.append({"module": name, "path": f"fused {cls.__name__}", "why": blk.extra_repr()})
        tick()

    def in_block(name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in inside_block)

    # Phase 2: every remaining Linear / Conv1D slot. _modules lists a module once per attribute, so
    # a Linear registered twice in one parent is found twice.
    slots: list[tuple[nn.Module, str, nn.Module, str]] = []
    names: dict[tuple[int, str], str] = {}
    for prefix, parent in model.named_modules(remove_duplicate=False):
        if isinstance(parent, nn.MultiheadAttention) or in_block(prefix):
            continue
        for child_name, child in parent._modules.items():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if child is None or not _convertible(child) or in_block(name):
                continue
            ok, what = decide_linear(name, child)
            if not ok:
                report.append({"module": name, "path": "float", "why": what})
                continue
            slots.append((parent, child_name, child, what))
            names.setdefault((id(child), what), name)
    grow(len(names))
    done: dict[tuple[int, str], QLinear] = {}
    for _parent, _attr, linear, scheme in slots:
        key = (id(linear), scheme)
        if key not in done:
            done[key] = _convert_one(op, names[key], linear, scheme, weight_quantizer)
            kind = "Conv1D" if _is_conv1d(linear) else "Linear"
            report.append({"module": names[key], "path": f"QLinear ({_spec_label(scheme)})", "why": f"from {kind}"})
            tick()
    if bar is not None:
        bar.close()
    # Phase 3: install, then chain consecutive blocks of one container (a layer list runs in order).
    for parent, attr, linear, scheme in slots:
        setattr(parent, attr, done[(id(linear), scheme)])
    for parent, attr, _name, blk in blocks:
        setattr(parent, attr, blk)
    by_parent: dict[int, list[QuantizedBlock]] = {}
    for parent, _attr, _name, blk in blocks:
        by_parent.setdefault(id(parent), []).append(blk)
    for seq in by_parent.values():
        for a, b in zip(seq, seq[1:]):
            if type(a) is type(b):
                a.link(b)
    _record(model, report, op)
    return report


def _unknown_layer(parent: nn.Module, child: Optional[nn.Module]) -> bool:
    """Is `child` an HF transformers layer (an item of a layer list, from a transformers model module,
    holding Linears) that has no fused block?"""
    return (
        isinstance(parent, nn.ModuleList) and child is not None and block_class(child) is None
        and type(child).__module__.startswith("transformers.")
        and any(_convertible(m) for m in child.modules())
    )


def _no_block(layer: nn.Module) -> str:
    known = sorted({n for n, c in BLOCKS.items() if c.PARTS})
    return (f"no fused block for {type(layer).__name__} (its Linears are converted one by one); fused blocks exist "
            f"for {', '.join(known)}")


def _record(model: nn.Module, rows: list[dict[str, Any]], origin: str) -> None:
    """Store the report rows (read by conversion_report and save_quantized) and who made them."""
    object.__setattr__(model, "_zq_report", rows)
    object.__setattr__(model, "_zq_report_origin", origin)


def record_loaded(model: nn.Module, source: str) -> None:
    """The report of a model ``load_quantized`` built from `source`, read off its modules: each fused
    block (with its level and scheme, as the conversion reported it), QLinear, and Linear / Conv1D
    left in float, so ``conversion_report`` describes a loaded model like a converted one."""
    rows: list[dict[str, Any]] = []
    blocks: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(b + ".") for b in blocks):
            continue
        if isinstance(mod, QuantizedBlock):
            rows.append({"module": name, "path": f"fused {type(mod).__name__}", "why": mod.extra_repr()})
            blocks.append(name)
        elif isinstance(mod, QLinear):
            kind = "Conv1D" if getattr(mod, "_zq_from_conv1d", False) else "Linear"
            rows.append({"module": name, "path": f"QLinear ({mod.qscheme.label()})", "why": f"from the checkpoint ({kind})"})
        elif _convertible(mod):
            rows.append({"module": name, "path": "float", "why": "float in the checkpoint"})
    _record(model, rows, f"load_quantized({source!r})")


def why_not_fused(
    name: str, layer: nn.Module, parts: list[tuple[str, Any, str]], level: Union[None, str, dict[str, bool]] = None
) -> str:
    """Why the recognised layer `name` is not fused, for the report / summary. parts: (qualified name,
    what converts it (a config or a spec, compared with ==) or None, why None) of each of its Linears,
    not all one. Says which parts stay in float and why, or which get which config, and, when the float
    parts are whole GEMM roles of the block and `level` (the precisions the rest would be fused with)
    is given, the level that fuses the block with those roles in float."""
    def rel(sub: str) -> str:
        return sub[len(name) + 1:] if name else sub

    def listed(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    def label(c: Any) -> str:
        if hasattr(c, "scheme_object"):
            return f"{type(c).__name__} ({c.scheme_object().label()})"
        return _spec_label(c)

    floats: dict[str, list[str]] = {}  # why -> parts
    kinds: list[tuple[Any, list[str]]] = []  # (config, parts)
    for sub, cfg, why in parts:
        if cfg is None:
            floats.setdefault(why, []).append(rel(sub))
            continue
        for c, names in kinds:
            if c == cfg:
                names.append(rel(sub))
                break
        else:
            kinds.append((cfg, [rel(sub)]))
    out = [f"{listed(n)} {'stays' if len(n) == 1 else 'stay'} in float ({why})" for why, n in floats.items()]
    if len(kinds) > 1:
        out.append("its Linears get different configs: " + "; ".join(f"{label(c)} for {listed(n)}" for c, n in kinds))
    text = "; ".join(out) + ", and a fused block needs every Linear in it quantized with one config"
    return text + (_level_hint(layer, floats, level) if len(kinds) == 1 and level is not None else "")


def _level_hint(layer: nn.Module, floats: dict[str, list[str]], level: Union[str, dict[str, bool]]) -> str:
    """". To fuse it with ... in float, ..." when the float parts are whole GEMM roles of the block."""
    cls = block_class(layer)
    try:
        roles = parts_of(cls, ROLES) if cls is not None else {}
    except (NotImplementedError, ValueError):
        roles = {}
    float_parts = {n for names in floats.values() for n in names}
    float_roles = [r for r, names in roles.items() if set(names) <= float_parts]
    if not float_roles or {n for r in float_roles for n in roles[r]} != float_parts:
        return ""
    undo = next((u for key, u in (("module_configs[", "drop the module_configs entry"),
                                  ("skipped by pattern", "drop the skip pattern"),
                                  ("filter_fn", "let filter_fn select them"))
                 if all(w.startswith(key) for w in floats)), "convert them")
    what = f"the {'/'.join(float_roles)} GEMM{'s' if len(float_roles) > 1 else ''}"
    lv = resolve_level(level)
    if not any(lv[r] for r in float_roles):
        return f". level={level!r} already keeps {what} in float inside the fused block: {undo} to fuse it"
    want = {r: False for r in ROLES if not lv[r] or r in float_roles}
    preset = next((k for k, v in LEVELS.items() if {r for r in ROLES if not v[r]} == set(want)), None)
    return f". To fuse it with {what} in float, {undo} and use level={preset or want!r}"


def conversion_report(model: nn.Module) -> str:
    """What ``quantize_model`` did to each module of `model`, one line each."""
    rows = getattr(model, "_zq_report", None)
    if rows is None:
        return "quantize_model has not converted this model"
    origin = getattr(model, "_zq_report_origin", "quantize_model")
    if not rows:
        return f"{origin} found nothing to convert"
    width = max(len(r["module"]) for r in rows)
    return "\n".join([_counts(model, rows, origin)] + [f"{r['module']:<{width}}  {r['path']:<24} {r['why']}" for r in rows])


def _counts(model: nn.Module, rows: list[dict[str, Any]], origin: str) -> str:
    """The report's first line: "<origin>: 2 fused blocks (QLlamaDecoderLayer), 1 QLinear, 1 left in
    float, 0 not fused; schemes: w8a8"."""
    def n(k: int, what: str) -> str:
        return f"{k} {what}{'' if k == 1 else 's'}"

    fused = [r["path"][len("fused "):] for r in rows if r["path"].startswith("fused ")]
    kinds = sorted(set(fused))
    schemes = sorted({m.scheme for m in model.modules() if isinstance(m, QLinear)})
    parts = [n(len(fused), "fused block") + (f" ({', '.join(kinds)})" if kinds else ""),
             n(sum(r["path"].startswith("QLinear") for r in rows), "QLinear"),
             f"{sum(r['path'] == 'float' for r in rows)} left in float"]
    unfused = sum(r["path"] == "per-linear" for r in rows)
    if unfused:
        parts.append(f"{unfused} not fused (see below)")
    return f"{origin}: {', '.join(parts)}; schemes: {', '.join(schemes) or 'none'}"
