"""The HF side of quantized checkpoints (nn/checkpoint.py): building the HF model from its config with
meta parameters, fused blocks <-> the HF submodules they merge (splitting a merged role's tensors by
output rows on save, re-fusing on load), and module lookup by qualified name. Nothing here depends on
the compressed-tensors layout; the per-scheme tensors are the schemes' (``to_compressed_tensors``,
``from_compressed_tensors``)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .blocks import BLOCKS, ROLES, QGPT2Block, QuantizedBlock, block_class, norm_roles, parts_of
from .linear import QLinear
from .linear import is_conv1d as _is_conv1d

__all__: list[str] = []


# ------------------------------------------------------------------------------------------------
# Building the HF model


@contextlib.contextmanager
def _meta_parameters() -> Iterator[None]:
    """Parameters created inside go to the meta device; buffers stay real."""
    orig = nn.Module.register_parameter

    def register_parameter(self, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        orig(self, name, param)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = orig  # type: ignore[method-assign]


def _build_hf(model_dir: str, cfg: dict[str, Any]) -> nn.Module:
    import transformers

    archs = cfg.get("architectures") or []
    if not archs or not hasattr(transformers, archs[0]):
        raise ValueError(
            f"load_quantized: config.json names no transformers architecture ({archs!r}); pass model= "
            "(the float model, or its skeleton) to load into"
        )
    config = transformers.AutoConfig.from_pretrained(model_dir)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we apply it ourselves; HF's quantizer must not
    dtype = getattr(config, "dtype", None)
    kw = {"dtype": dtype} if isinstance(dtype, torch.dtype) else {}
    with _meta_parameters():
        model = getattr(transformers, archs[0])._from_config(config, **kw)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Fused blocks <-> their HF submodule names

# role -> the HF submodules (relative to the layer) merged into it, in row order; each norm role
# (norm1 / norm2 and the extra norms a block has: q_norm, post_attn_norm ...) -> its HF norm module:
# the block class's PARTS (nn/blocks.py parts_of, norm_roles).


def _parts(cls: type) -> dict[str, list[str]]:
    try:
        return parts_of(cls, ROLES + norm_roles(cls))
    except NotImplementedError:
        raise NotImplementedError(
            f"save_quantized: fused {cls.__name__} blocks are not supported in the compressed-tensors layout "
            f"(expected one of {sorted({c.__name__ for c in BLOCKS.values() if c.PARTS})})"
        ) from None


def _rows(blk: QuantizedBlock, role: str) -> list[int]:
    """Output rows of each part of a merged role."""
    n = getattr(blk, role).out_features
    k = len(_parts(type(blk))[role])
    if k == 1:
        return [n]
    if role == "qkv":
        return [blk.heads * blk.head_dim, blk.kv_heads * blk.head_dim, blk.kv_heads * blk.head_dim]
    return [n // k] * k


def _row_slices(qs: Any, names: list[str], rows: list[int], what: list[str], fix: str) -> list[dict[str, slice]]:
    """Per part (of `rows` output rows each, in order), the row slice of every weight buffer: a buffer
    whose row covers s output rows (``qs.rows_per_buffer_row``, e.g. fp8-block's weight_scale: 128) is
    cut at row / s, which needs every part but the last to start and end on a multiple of s (the last
    may end in a partial block, as any layer's last block). ValueError naming the part (`what`) and
    `fix` otherwise."""
    spans = {k: qs.rows_per_buffer_row(k) for k in names}
    out, start = [], 0
    for i, n in enumerate(rows):
        for k, s in spans.items():
            if s > 1 and i < len(rows) - 1 and n % s != 0:
                raise ValueError(
                    f"{what[i]}: scheme {qs.name!r} keeps one {k} row per {s} output rows, so each part of a fused "
                    f"block but the last needs out_features % {s} == 0 for its {k} rows to be its own; this part has "
                    f"out_features {n} (a {s}-row block would mix it with the next part). {fix}"
                )
        out.append({k: slice(start // s, -(-(start + n) // s)) for k, s in spans.items()})
        start += n
    return out


def _split_qlinear(lin: QLinear, rows: list[int], what: Optional[list[str]] = None) -> list[QLinear]:
    """A merged QLinear split by output rows into QLinears of its scheme holding the exact rows of its
    tensors (packed layouts hold whole tiles of 16 rows: every part has out_features % 16 == 0 there,
    which the part's scheme checks; a buffer with one row per s output rows, such as fp8-block's
    128-row block scales, is cut at multiples of s: ValueError naming the part otherwise). what: the
    parts' names for errors."""
    qs = lin.qscheme
    b = lin._buffers
    names = list(qs.buffer_layout(b["weight_q"].shape[0], lin.in_features))
    what = what or [f"part {i}" for i in range(len(rows))]
    fix = "Convert with fused_blocks=False to save this model."
    out, start = [], 0
    for n, sl in zip(rows, _row_slices(qs, names, rows, [f"save_quantized: {w}" for w in what], fix)):
        tensors = {k: b[k][sl[k]] for k in names}
        bias = None if b["bias"] is None else b["bias"][start : start + n]
        out.append(QLinear.from_quantized(qs.general(), n, lin.in_features, tensors, bias))
        start += n
    return out


def _split_linear(
    lin: nn.Module, rows: list[int], conv1d: bool = False, name: str = "merged", part_names: Optional[list[str]] = None
) -> tuple[list[dict[str, torch.Tensor]], Optional[dict[str, Any]], list[Optional[dict[str, Any]]]]:
    """A merged (Q)Linear's tensors split by output rows: (tensors per part, for a QLinear its
    compressed-tensors scheme (None for a float role), each part's zqkernels.json entry). A QLinear is
    split into part QLinears of its scheme, each written by ``to_compressed_tensors`` (so per-part
    values, e.g. the integer scales' alpha, are the part's). conv1d: a float role of a GPT-2 block,
    saved in its HF Conv1D's layout (weight [in, out]) so that it loads into the Conv1D parameter.
    part_names: the HF modules the parts become (errors name them)."""
    if isinstance(lin, QLinear):
        what = [f"{name} rows {i}" + (f" ({part_names[i]})" if part_names else "") for i in range(len(rows))]
        done = [p.qscheme.to_compressed_tensors(p, w) for w, p in zip(what, _split_qlinear(lin, rows, what))]
        return [{k: v.contiguous() for k, v in t.items()} for t, _, _ in done], done[0][1], [i for _, _, i in done]
    t = {"weight": lin.weight.detach().cpu()}
    if lin.bias is not None:
        t["bias"] = lin.bias.detach().cpu()
    out = [{k: v.contiguous() for k, v in zip(t, parts)} for parts in zip(*(v.split(rows, 0) for v in t.values()))]
    if conv1d:
        for part in out:
            part["weight"] = part["weight"].t().contiguous()
    return out, None, [None] * len(out)


# ------------------------------------------------------------------------------------------------
# Re-fusing on load


def _get(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def _block_scheme(mods: dict[str, list[nn.Module]]) -> tuple[Optional[dict[str, bool]], Any]:
    """(level, scheme) of a float layer whose parts were loaded: each role all QLinears or all float
    Linears / Conv1Ds, every QLinear of one scheme (as a fused block holds them); (None, None)
    otherwise."""
    level: dict[str, bool] = {}
    schemes = set()
    for r, ms in mods.items():
        kinds = {isinstance(m, QLinear) for m in ms}
        if len(kinds) != 1 or not all(isinstance(m, (nn.Linear, QLinear)) or _is_conv1d(m) for m in ms):
            return None, None
        level[r] = kinds.pop()
        schemes.update(m.qscheme.general() for m in ms if isinstance(m, QLinear))
    if len(schemes) > 1:
        auto = _auto_group_scheme([m for ms in mods.values() for m in ms if isinstance(m, QLinear)])
        return (level, auto) if auto is not None else (None, None)
    return level, (schemes.pop() if schemes else None)


def _auto_group_scheme(qlinears: list[QLinear]) -> Any:
    """The group_size "auto" scheme whose per-layer picks are exactly these parts' schemes (what
    quantize_ with the default group size leaves in a block: 128 on some GEMMs, 64 on others), or
    None when they are not that."""
    from ..schemes.grouped import AUTO, GroupedScheme

    first = qlinears[0].qscheme
    if not isinstance(first, GroupedScheme) or any(type(m.qscheme) is not type(first) for m in qlinears):
        return None
    if any(m.qscheme.group() is None for m in qlinears):
        return None  # a per-channel part (group size == in_features): not what "auto" wrote
    opts = {k: v for k, v in first.general().options().items() if k != "group_size"}
    try:
        auto = type(first)("load_quantized", group_size=AUTO, **opts)
        picks = [auto.for_layer("load_quantized", m.out_features, m.in_features) for m in qlinears]
    except (TypeError, ValueError):
        return None
    return auto if all(p == m.qscheme for p, m in zip(picks, qlinears)) else None


def _stand_in(m: QLinear, conv1d: bool) -> nn.Module:
    """A float Linear (or HF Conv1D) with a QLinear's dequantized weight, for a block constructor."""
    n_out = m.out_features
    dt = m.bias.dtype if m.bias is not None else torch.float32
    w = m.qscheme.dequantize(m).to(dt)
    if conv1d:  # GPT-2's constructor reads HF Conv1D modules (weight [in, out])
        from transformers.pytorch_utils import Conv1D

        with torch.device("meta"):
            lin = Conv1D(n_out, m.in_features)
        w = w.t()
        if m.bias is None:  # Conv1D always adds one
            lin.bias = nn.Parameter(torch.zeros(n_out, dtype=dt), requires_grad=False)
    else:
        lin = nn.Linear(m.in_features, n_out, bias=m.bias is not None, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    if m.bias is not None:
        lin.bias = nn.Parameter(m.bias[:n_out].clone(), requires_grad=False)
    return lin


def _lines_up(ms: list[QLinear]) -> bool:
    """Can these parts' buffers be concatenated into one merged QLinear? Each part but the last must
    fill whole rows of every buffer (fp8-block's weight_scale: out_features % 128 == 0); a layer whose
    parts do not is left unfused, like one whose parts mix schemes."""
    qs = ms[0].qscheme
    spans = [qs.rows_per_buffer_row(k) for k in qs.buffer_layout(ms[0]._buffers["weight_q"].shape[0], ms[0].in_features)]
    return all(m.out_features % s == 0 for m in ms[:-1] for s in spans)


def _load_merged(merged: QLinear, ms: list[QLinear], part_names: Optional[list[str]] = None) -> None:
    """Put the parts' exact tensors, concatenated by rows, into a merged QLinear of their scheme
    (part_names: the parts' modules, for errors)."""
    qs = merged.qscheme
    names = list(qs.buffer_layout(merged._buffers["weight_q"].shape[0], merged.in_features))
    part_names = part_names or [f"part {i}" for i in range(len(ms))]
    what = [f"load_quantized: {n} (part {i} of a fused block)" for i, n in enumerate(part_names)]
    fix = "Load with load_quantized(..., fuse=False) to keep this layer's Linears separate."
    # each part's own rows of every buffer (a buffer row may cover several output rows: fp8-block's
    # weight_scale, one row per 128), concatenated in the block's order
    slices = _row_slices(qs, names, [m.out_features for m in ms], what, fix)
    per_part = [{k: slice(0, sl[k].stop - sl[k].start) for k in names} for sl in slices]
    tensors = tuple(torch.cat([m._buffers[k][sl[k]] for m, sl in zip(ms, per_part)]) for k in names)
    b = None
    if any(m.bias is not None for m in ms):
        dt = merged.bias.dtype
        b = torch.cat([m.bias[: m.out_features].to(dt) if m.bias is not None else torch.zeros(m.out_features, dtype=dt)
                       for m in ms])
    qs.load(merged, tensors, b)


def _fuse(model: nn.Module, only: Optional[nn.Module] = None) -> list[QuantizedBlock]:
    """Replace each recognised HF layer whose linears are all loaded, and quantized with one scheme
    (whose parts line up with its buffers' rows: ``_lines_up``), by its fused block of that scheme, with the parts' tensors concatenated (as the conversion merged
    them; nothing re-quantized). `only`: that layer alone, left unlinked (the caller links: ``link_blocks``).
    Returns the new blocks."""
    blocks = []
    for prefix, parent in list(model.named_modules()):
        for attr, layer in list(parent._modules.items()):
            if only is not None and layer is not only:
                continue
            cls = block_class(layer) if layer is not None else None
            if cls is None or not cls.PARTS:
                continue
            roles = parts_of(cls, ROLES)
            mods = {r: [layer.get_submodule(n) for n in names] for r, names in roles.items()}
            level, scheme = _block_scheme(mods)
            if level is None or not all(_lines_up(ms) for r, ms in mods.items() if level[r]):
                continue
            # The block constructor reads float weights: hand it dequantized stand-ins, then put the
            # exact tensors of the parts in its merged QLinears.
            saved = {}
            for r, parts in roles.items():
                for n, m in zip(parts, mods[r]):
                    if isinstance(m, QLinear):
                        p, a, _ = _get(layer, n)
                        saved[n] = (p, a, m)
                        setattr(p, a, _stand_in(m, cls is QGPT2Block))
            try:
                blk = cls(layer, level, scheme)
            finally:
                for p, a, m in saved.values():
                    setattr(p, a, m)
            pre = f"{prefix}.{attr}." if prefix else f"{attr}."
            for r, ms in mods.items():
                if level[r]:
                    _load_merged(getattr(blk, r), ms, [pre + n for n in roles[r]])
            blocks.append((parent, attr, blk))
    for parent, attr, blk in blocks:
        setattr(parent, attr, blk)
    if only is None:
        link_blocks([(parent, blk) for parent, _, blk in blocks])
    return [blk for _, _, blk in blocks]


def link_blocks(blocks: list[tuple[nn.Module, QuantizedBlock]]) -> None:
    """Link consecutive fused blocks of one parent (in the given order) of the same class: each
    block's last residual add prepares the next one's quantized input."""
    by_parent: dict[int, list[QuantizedBlock]] = {}
    for parent, blk in blocks:
        by_parent.setdefault(id(parent), []).append(blk)
    for seq in by_parent.values():
        for a, b in zip(seq, seq[1:]):
            if type(a) is type(b):
                a.link(b)
