"""Quantized checkpoints in the compressed-tensors layout (vLLM / llm-compressor / HF transformers).

    zqkernels.save_quantized(model, out_dir)     # model.safetensors + config.json + zqkernels.json
    model = zqkernels.load_quantized(out_dir)    # an HF model dir; or load_quantized(d, model=skeleton)

docs/CHECKPOINTS.md has the layout. Who does what:

- each scheme (``zqkernels.schemes``) maps one layer to its tensors, its compressed-tensors scheme
  and its zqkernels.json entry (``to_compressed_tensors``), and back: ``ct_accepts`` (does it read
  a config group), ``ct_foreign`` (which of several accepting schemes another tool's layers load as),
  ``from_compressed_tensors`` (one layer's tensors -> the layer's scheme and buffers); the shared
  pieces are in schemes/compressed.py;
- nn/hf_model.py: the HF model built with meta parameters, fused blocks split into their HF
  submodules on save and re-fused on load;
- here: the walk over the model, ``config.json``'s ``quantization_config`` (one config group per
  distinct layer scheme, ``targets: ["Linear"]`` when the model has one, the module names otherwise,
  format ``mixed-precision`` then; the float Linears in ``ignore``), ``zqkernels.json`` (each layer's
  scheme and options, how the model was fused, tied tensors, buffer dtypes), and on load: the config
  check, each quantized module matched to its config group (compressed-tensors' target matching) and
  to the scheme that reads it (ours: zqkernels.json's), ``QLinear.from_quantized``, the other tensors
  assigned, re-fusing.

Every tensor is written under the ORIGINAL module name (fused blocks are split back into q_proj /
k_proj / ..., and QLinear's row padding is dropped); embeddings, norms and float Linears as they are.

GPT-2 (HF Conv1D, weight [in, out]): converted Conv1Ds (QLinear, or the roles of a fused QGPT2Block)
are written like Linears (weight [out, in]) under the Conv1D names; their config groups target them by
name and carry the extra key ``zqkernels_conv1d``, which compressed-tensors' schema rejects, so other
loaders (transformers) refuse the file instead of loading [out, in] into a Conv1D parameter (silently
transposed for a square layer). Float Conv1Ds (a fused block's float roles too) keep their [in, out].

Loading (design): the float model is built from its config with its *parameters* on the meta
device (buffers stay real: rotary tables and position ids are computed as usual), so no float
weights are allocated or read for quantized layers; each Linear that the checkpoint quantizes is
replaced by a QLinear of the scheme that reads it, built from its tensors; all other tensors are
assigned from the file. Then (``fuse=True``) each recognised transformer layer whose parts are all
quantized with one scheme becomes its fused block of that scheme, with the quantized weights of its
parts concatenated (never re-quantized), exactly as ``quantize_model`` built it (nn/hf_model.py).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from ..schemes import SCHEMES, Scheme
from ..schemes.compressed import (
    ACT_INT8,
    CT_TENSORS,
    FORMAT_INT,
    FORMAT_MIXED,
    ct_args,
    describe_group,
    supported,
)
from .blocks import ROLES, QGPT2Block, QuantizedBlock, norm_roles
from .convert import record_loaded
from .hf_model import _build_hf, _fuse, _get, _parts, _rows, _split_linear
from .linear import QLinear
from .linear import is_conv1d as _is_conv1d
from .tp import ColwiseQLinear, RowwiseQLinear

__all__ = ["save_quantized", "load_quantized", "QUANT_CONFIG", "W8A8_GROUP"]

_WEIGHTS = "model.safetensors"
_META = "zqkernels.json"

#: The compressed-tensors scheme of zqkernels' "w8a8" (llm-compressor's preset "W8A8"); the config group
#: of a checkpoint with nothing quantized.
W8A8_GROUP: dict[str, Any] = {
    "weights": ct_args(8, "int", "channel"),
    "input_activations": ACT_INT8,
    "output_activations": None,
}
W8A8_GROUP_SPEC = {"weights": W8A8_GROUP["weights"], "input_activations": W8A8_GROUP["input_activations"]}

#: The extra key a config group gets when its layers were HF Conv1D modules (GPT-2). The tensors are in
#: compressed-tensors' Linear layout (weight rows = outputs, [N, K]), which is what a converted Conv1D
#: computes, but a Conv1D *parameter* is [K, N]: a loader that put the decompressed [N, K] weight into it
#: would fail on the shape or, for a square layer, silently use the transpose. compressed-tensors'
#: QuantizationScheme forbids unknown keys, so every loader that parses the config with it (transformers,
#: llm-compressor) refuses such a checkpoint with an error naming this key; load_quantized reads it.
CONV1D_KEY = "zqkernels_conv1d"
_CONV1D_NOTE = "HF Conv1D layers stored as Linear: weight [out, in], not Conv1D's [in, out]; load with zqkernels.load_quantized"

#: The quantization_config written to config.json (plus "ignore" and "config_groups").
QUANT_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": FORMAT_INT,
    "quantization_status": "compressed",
    "kv_cache_scheme": None,
    "global_compression_ratio": None,
    "moe_sparsity_config": None,
    "sparsity_config": {},
    "transform_config": {},
}

#: What load_quantized reads (its NotImplementedError for any other config group lists it).


class _Lazy:
    """The checkpoint's tensors by name, read from the .safetensors files only when taken (``pop``),
    so a loader holds one layer's tensors at a time rather than the whole file."""

    def __init__(self, model_dir: str, files: list[str]) -> None:
        from safetensors import safe_open

        self._where: dict[str, Any] = {}
        for n in files:
            f = safe_open(os.path.join(model_dir, n), framework="pt", device="cpu")
            for k in f.keys():
                self._where[k] = f

    def __contains__(self, k: object) -> bool:
        return k in self._where

    def __iter__(self):
        return iter(list(self._where))

    def pop(self, k: str) -> torch.Tensor:
        return self._where.pop(k).get_tensor(k)

    def pop_rows(self, k: str, start: int, stop: int, rows: int) -> torch.Tensor:
        """Rows [start, stop) of output channels of tensor `k` (a layer with `rows` of them), read
        alone: a tensor of R rows holds rows / R channels a row (fp8 block scales: 128), so the cut
        must fall on whole rows of it (ValueError otherwise); ``weight_shape`` gets the part's N."""
        f = self._where.pop(k)
        if k.endswith(".weight_shape"):
            t = f.get_tensor(k).clone()
            t[0] = stop - start
            return t
        sl = f.get_slice(k)
        n = sl.get_shape()[0]
        unit = rows // n if n and rows % n == 0 else 0
        if not unit or start % unit or (stop % unit and stop != rows):
            raise ValueError(f"load_quantized: {k} has {n} rows for {rows} output channels: rows [{start}, {stop}) "
                             "cannot be read as a part of it")  # fmt: skip
        return sl[start // unit: -(-stop // unit)]

    def take(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every remaining tensor under `prefix`, popped, keyed by the rest of its name."""
        return {k[len(prefix):]: self.pop(k) for k in list(self._where) if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------
# save


def save_quantized(model: nn.Module, out_dir: Union[str, os.PathLike]) -> None:
    """Save a model converted by ``quantize_model`` / ``quantize_`` (or holding QLinear modules) in the
    compressed-tensors layout (module docstring, docs/CHECKPOINTS.md): ``model.safetensors``,
    ``config.json`` (the HF config when ``model.config`` has ``save_pretrained``, with
    ``quantization_config`` added) and ``zqkernels.json``. Raises NotImplementedError for w4a8-fp
    other than scale_policy "m1", for LoRC factors and for fused blocks without a layout. Tensors that
    share storage (tied embeddings) are saved once. Conv1D-born QLinears (GPT-2) are recognised from
    the conversion report or, after load_quantized, from the layer itself.
    """
    from safetensors.torch import save_file

    for name, mod in model.named_modules():
        if getattr(mod, "_tp", None) is not None or isinstance(mod, (ColwiseQLinear, RowwiseQLinear)):
            raise ValueError(
                f"save_quantized: {name!r} is one rank's part of a tensor-parallel split (nn/tp.py); save the "
                "unsplit model (every rank loads it and splits it again: load_quantized, then parallelize_model)"
            )
        if isinstance(mod, QLinear) and mod._buffers.get("lorc_a") is not None:
            raise NotImplementedError(
                f"save_quantized: {name!r} has LoRC factors (lorc_a / lorc_b, rank {mod.lorc_rank}); the "
                "compressed-tensors layout has no such tensors. Save the model's state_dict instead "
                "(torch.save), or remove them with layer.init_lorc(0)"
            )
    os.makedirs(out_dir, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    layers: dict[str, dict[str, Any]] = {}  # name -> zqkernels.json entry
    specs: dict[str, str] = {}  # name -> its compressed-tensors scheme (JSON, a grouping key)

    def put_q(prefix: str, t: tuple) -> None:
        put(prefix, t[0])
        quantized.append(prefix)
        layers[prefix] = t[2]
        specs[prefix] = json.dumps(t[1], sort_keys=True)
    ignore: list[str] = []
    fused: dict[str, dict[str, bool]] = {}
    handled: list[str] = []  # module prefixes whose tensors are written here

    def put(prefix: str, t: dict[str, torch.Tensor]) -> None:
        for k, v in t.items():
            tensors[f"{prefix}.{k}" if prefix else k] = v

    def inside(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in handled)

    report = getattr(model, "_zq_report", None) or []
    from_conv1d = {r["module"] for r in report if r.get("why") == "from Conv1D"}
    for name, mod in model.named_modules():
        if inside(name):
            continue
        if isinstance(mod, QuantizedBlock):
            parts = _parts(type(mod))
            pre = f"{name}." if name else ""
            conv = isinstance(mod, QGPT2Block)  # its parts are HF Conv1D modules
            for role in ROLES:
                lin = getattr(mod, role)
                subs = [pre + p for p in parts[role]]
                split, spec, infos = _split_linear(lin, _rows(mod, role), conv, pre + role, subs)
                for sub, t, info in zip(subs, split, infos):
                    put(sub, t)
                    if spec is not None:  # a quantized role: each part in the merged QLinear's scheme
                        quantized.append(sub)
                        layers[sub] = dict(info)
                        part_spec = dict(spec)
                        if conv:
                            layers[sub]["conv1d"] = True
                            part_spec[CONV1D_KEY] = _CONV1D_NOTE
                        specs[sub] = json.dumps(part_spec, sort_keys=True)
                    elif not conv:
                        ignore.append(sub)
            for role in norm_roles(mod):  # the HF norm modules the block holds under its norm roles
                norm = getattr(mod, role)
                put(pre + parts[role][0], {k: v.detach().cpu() for k, v in norm.state_dict().items()})
            fused[name] = dict(mod.level)
            handled.append(name)
        elif isinstance(mod, QLinear):
            t = mod.qscheme.to_compressed_tensors(mod, name)
            if name in from_conv1d or getattr(mod, "_zq_from_conv1d", False):
                t[2]["conv1d"] = True
                t = (t[0], {**t[1], CONV1D_KEY: _CONV1D_NOTE}, t[2])
            put_q(name, t)
            handled.append(name)
        elif isinstance(mod, nn.Linear):
            ignore.append(name)
    seen: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for k, v in model.state_dict().items():
        mod_name = k.rsplit(".", 1)[0] if "." in k else ""
        if inside(mod_name) or k.endswith("_extra_state") or not isinstance(v, torch.Tensor):
            continue
        tensors[k] = v.detach().cpu()
    for k in list(tensors):  # safetensors stores no aliases: keep the first name of each storage
        v = tensors[k]
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            tied[k] = seen[key]
            del tensors[k]
        elif key is not None:
            seen[key] = k
    # Non-persistent float buffers (rotary tables ...) are recomputed on load; a model cast with
    # .to(dtype) holds them in that dtype, so record it to reproduce the outputs bit for bit.
    sd_keys = set(model.state_dict().keys())
    buffer_dtypes = {
        n: str(b.dtype).replace("torch.", "")
        for n, b in model.named_buffers()
        if b is not None and b.is_floating_point() and n not in sd_keys and not inside(n.rsplit(".", 1)[0])
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, _WEIGHTS), metadata={"format": "pt"})

    cfg: dict[str, Any] = {}
    hf_config = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "save_pretrained"):
        hf_config.save_pretrained(out_dir)
        with open(os.path.join(out_dir, "config.json")) as f:
            cfg = json.load(f)
        if not cfg.get("architectures"):
            cfg["architectures"] = [type(model).__name__]
    cfg["quantization_config"] = _quantization_config(specs, ignore)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    schemes = {v["scheme"] for v in layers.values()} or {"w8a8"}
    with open(os.path.join(out_dir, _META), "w") as f:
        json.dump(
            {
                "scheme": schemes.pop() if len(schemes) == 1 else "mixed", "quantized": sorted(quantized),
                "layers": {k: layers[k] for k in sorted(layers)}, "fused": fused, "tied": tied,
                "buffer_dtypes": buffer_dtypes,
            },
            f,
            indent=2,
        )


def _quantization_config(specs: dict[str, str], ignore: list[str]) -> dict[str, Any]:
    """config.json's quantization_config: one config group per distinct layer scheme (specs: module name
    -> its compressed-tensors scheme as sorted JSON), the float Linears in ``ignore``."""
    qc = dict(QUANT_CONFIG)
    by_spec: dict[str, list[str]] = {}
    for name in sorted(specs):
        by_spec.setdefault(specs[name], []).append(name)
    if not by_spec:  # nothing quantized: still a valid (w8a8) config
        by_spec[json.dumps({"format": FORMAT_INT, **W8A8_GROUP_SPEC}, sort_keys=True)] = []
    groups = {}
    for i, (key, names) in enumerate(sorted(by_spec.items(), key=lambda kv: kv[1][:1])):
        spec = json.loads(key)
        # one scheme: every Linear not in "ignore" (llm-compressor's way); several: the modules by name
        # (Conv1D layers: by name, "Linear" does not match them)
        conv = CONV1D_KEY in spec
        targets = ["Linear"] if len(by_spec) == 1 and not conv else names
        groups[f"group_{i}"] = {
            "targets": targets, "weights": spec["weights"], "input_activations": spec["input_activations"],
            "output_activations": None, "format": spec["format"],
        }
        if conv:
            groups[f"group_{i}"][CONV1D_KEY] = spec[CONV1D_KEY]
    formats = {g["format"] for g in groups.values()}
    qc["format"] = formats.pop() if len(formats) == 1 else FORMAT_MIXED
    qc["config_groups"] = groups
    qc["ignore"] = sorted(set(ignore))
    try:
        import compressed_tensors

        qc["version"] = compressed_tensors.__version__
    except ImportError:
        pass
    return qc


# ------------------------------------------------------------------------------------------------
# load: the config, target matching, the scheme of each layer


def _check_config(qc: dict[str, Any]) -> dict[str, list[type[Scheme]]]:
    """The schemes that read each config group (``Scheme.ct_accepts``, in registry order);
    NotImplementedError for a group no scheme reads, or for a whole config this loader does not take."""
    if qc.get("quant_method") != "compressed-tensors":
        raise NotImplementedError(
            f"load_quantized: quant_method {qc.get('quant_method')!r} is not supported (only compressed-tensors)"
        )
    if qc.get("kv_cache_scheme"):
        raise NotImplementedError("load_quantized: kv_cache_scheme (quantized KV cache) is not implemented")
    if qc.get("sparsity_config") or (qc.get("format") or "").startswith(("sparse", "marlin")):
        raise NotImplementedError("load_quantized: sparse checkpoints (sparsity_config / sparse formats) are not implemented")
    out = {}
    for gname, g in (qc.get("config_groups") or {}).items():
        found = [cls for cls in SCHEMES.values() if cls.ct_accepts(g, qc.get("format"), gname)]
        if not found:
            raise NotImplementedError(f"load_quantized: {describe_group(gname, g, qc.get('format'))}; implemented: {supported()}")
        out[gname] = found
    return out


def _layer_scheme(
    name: str, gname: str, found: list[type[Scheme]], info: dict[str, Any], group_scales: str
) -> type[Scheme]:
    """The scheme class a layer loads as: ours, zqkernels.json's (which must read the layer's config
    group); another tool's, the accepting scheme that ``ct_foreign(group_scales)`` picks."""
    own = info.get("scheme")
    if own is not None:
        cls = SCHEMES.get(own)
        if cls not in found:
            raise ValueError(
                f"load_quantized: {name} has scheme {own!r} in zqkernels.json, but its config group {gname!r} is "
                f"read by {[c.name for c in found]}"
            )
        return cls
    return next((c for c in found if c.ct_foreign(group_scales)), found[0])


def _matches(name: str, module: nn.Module, targets: Any) -> bool:
    """compressed-tensors' target matching: an exact module name, "re:<regex>" on the name, or a class
    name in the module's MRO ("Linear")."""
    for t in [targets] if isinstance(targets, str) else (targets or []):
        if t.startswith("re:"):
            if re.match(t[3:], name):
                return True
        elif t == name or any(c.__name__ == t for c in type(module).__mro__) or (t == "Linear" and isinstance(module, QLinear)):
            return True
    return False


def load_quantized(
    model_dir: Union[str, os.PathLike],
    model: Optional[nn.Module] = None,
    *,
    fuse: Optional[bool] = None,
    group_scales: str = "int",
    tp: Any = None,
) -> nn.Module:
    """Load a compressed-tensors checkpoint (ours or another tool's) into QLinear modules.

    model: None builds the HF model named by ``config.json`` (``architectures``) from its config
    with parameters on the meta device; or a float model / skeleton (meta parameters are fine) of
    the same architecture. Each Linear with a ``weight_scale`` in the checkpoint becomes a QLinear of
    the scheme its config group describes: int8 per channel -> "w8a8", int8 groups -> "w8a8-group",
    int4 (pack-quantized or int-quantized) -> "w4a8" / "w4a8-floatscale", fp8 per channel -> "fp8"
    (our own checkpoints: each layer's scheme and options from ``zqkernels.json``), FP4 E2M1 with E8M0
    scales per 32 (mxfp4-pack-quantized) -> "w4a8-fp" with scale_policy "m1" (group size from
    ``zqkernels.json``, else 32; every row's scales within 2^-5 of its largest); all other tensors
    are assigned as saved. An HF Conv1D (GPT-2) is replaced too when its config group has the
    ``zqkernels_conv1d`` key (our layout of a converted Conv1D), and refused otherwise. Weight-only
    groups (no input_activations, e.g. W4A16) load with a warning: the QLinear quantizes its
    activations (int8 / fp8 per token) although the checkpoint does not.
    fuse: replace recognised transformer layers whose parts are all quantized with one scheme (or
    left in float role by role) by fused blocks of that scheme (``nn.blocks``). None: as the model was saved (``zqkernels.json``), or True for a checkpoint
    written by another tool.
    group_scales: for another tool's int4 / int8 group weights: "int" (default; integer scales sg =
    rint(s / s_max * alpha) with quantize_weight's default alpha, schemes "w4a8" / "w8a8-group") or
    "float" (float32 ratios s / s_max: "w4a8-floatscale" / "w8a8-group" with scale="float").
    tp: None, or the process group this rank's part is loaded for (a ProcessGroup, a 1-D DeviceMesh, or
    True: the default group): each transformer layer is split as soon as it is read (``nn/tp_load.py``),
    so the rank never holds more than its part plus one whole layer; the model equals
    ``parallelize_model(load_quantized(dir))`` (docs/TP.md). The plan: the model's transformers
    ``tp_plan``.
    Raises NotImplementedError for other schemes (asymmetric, static activations, NVFP4 / other MX
    formats, int4 with fp8 activations, ...). Returns the model in eval mode.
    """
    if group_scales not in ("int", "float"):
        raise ValueError(f"load_quantized: group_scales must be 'int' or 'float', got {group_scales!r}")

    model_dir = os.fspath(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    if not qc:
        raise ValueError(f"load_quantized: {model_dir}/config.json has no quantization_config")
    accepting = _check_config(qc)
    groups = qc.get("config_groups") or {}
    meta: dict[str, Any] = {}
    if os.path.exists(os.path.join(model_dir, _META)):
        with open(os.path.join(model_dir, _META)) as f:
            meta = json.load(f)
    layer_info: dict[str, dict[str, Any]] = meta.get("layers", {})
    files = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not files:
        raise ValueError(f"load_quantized: no .safetensors file in {model_dir}")
    sd = _Lazy(model_dir, files)
    if model is None:
        model = _build_hf(model_dir, cfg)
    model.eval()
    dtype = getattr(getattr(model, "config", None), "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32

    for k in sd:
        for bad in ("input_scale", "weight_g_idx", "weight_global_scale", "input_global_scale"):
            if k.endswith("." + bad):
                raise NotImplementedError(
                    f"load_quantized: tensor {k!r} belongs to a scheme not implemented here ("
                    f"static activations, act-order g_idx or global scales); implemented: {supported()}"
                )
    if fuse is None:
        fuse = bool(meta.get("fused", True)) if meta else True
    stream = None
    if tp is not None and tp is not False:
        from .tp_load import TPStream

        stream = TPStream(model, None if tp is True else tp, fuse)
    warned = set()
    qnames = sorted(k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale"))
    for name in qnames:
        if stream is not None:
            stream.before(name, sd.take)
        parent, attr, old = _get(model, name)
        conv = _is_conv1d(old)
        if not (isinstance(old, (QLinear, nn.Linear)) or conv):
            raise NotImplementedError(
                f"load_quantized: {name} is a {type(old).__name__}; expected an nn.Linear, a QLinear or an HF "
                "Conv1D to load as QLinear"
            )
        gname = next((n for n, g in groups.items() if _matches(name, old, g.get("targets"))), None)
        if gname is None:
            raise ValueError(f"load_quantized: {name} has a weight_scale but no config group targets it")
        if conv and not groups[gname].get(CONV1D_KEY):
            raise NotImplementedError(
                f"load_quantized: {name} is an HF Conv1D (weight [in, out]) but its config group {gname!r} has no "
                f"{CONV1D_KEY!r} key (expected: zqkernels' Linear layout of a converted Conv1D, weight [out, in]); "
                "compressed-tensors' layout of a Conv1D is undefined, so it is not guessed"
            )
        part = stream.colwise_rows(name, old) if stream is not None and not conv else None
        if part is None:
            t = {k: sd.pop(f"{name}.{k}") for k in CT_TENSORS if f"{name}.{k}" in sd}
        else:  # this rank's output channels only (the plan splits the layer colwise)
            t = {k: sd.pop_rows(f"{name}.{k}", *part, old.out_features) for k in CT_TENSORS if f"{name}.{k}" in sd}
        if "weight_zero_point" in t:  # asymmetric weights: only a group that says so (scheme w4a8-zp reads it)
            if (groups[gname].get("weights") or {}).get("symmetric", True):
                raise NotImplementedError(f"load_quantized: {name}.weight_zero_point in the symmetric config group {gname!r}")
            if part is not None:
                raise NotImplementedError(f"load_quantized: {name}: tensor-parallel loading of zero-point weights "
                                          "(scheme 'w4a8-zp') is not implemented; load it whole")
        b = t.get("bias")
        has_bias = old.bias is not None
        if b is not None and not has_bias:
            if torch.count_nonzero(b):
                raise ValueError(f"load_quantized: {name}.bias is in the checkpoint but the layer has no bias")
            del t["bias"]  # a zero bias a merged GEMM gave a bias-less part
        if not groups[gname].get("input_activations") and gname not in warned:
            warned.add(gname)
            warnings.warn(
                f"load_quantized: config group {gname!r} is weight-only (no input_activations); its layers load as "
                "QLinears that quantize their activations per token (int8, or fp8 for fp8 / fp4 weights)",
                stacklevel=2,
            )
        info = layer_info.get(name, {})
        r = _layer_scheme(name, gname, accepting[gname], info, group_scales).from_compressed_tensors(
            name, t, info, group_scales
        )
        new = QLinear.from_quantized(r.scheme, r.out_features, r.in_features, r.tensors, r.bias, dtype)
        old_in, old_out = (old.weight.shape[0], old.nf) if conv else (old.in_features, old.out_features)
        if part is not None:
            old_out = part[1] - part[0]
        if conv or groups[gname].get(CONV1D_KEY):
            new._zq_from_conv1d = True  # save_quantized writes the key again
        if (new.in_features, new.out_features) != (old_in, old_out):
            raise ValueError(
                f"load_quantized: {name} is [{old_out}, {old_in}] in the model but "
                f"[{new.out_features}, {new.in_features}] in the checkpoint"
            )
        if part is not None:
            new = stream.wrap_part(name, new)
        for _, mod in list(model.named_modules(remove_duplicate=False)):  # every slot of a shared Linear
            for a, child in list(mod._modules.items()):
                if child is old:
                    setattr(mod, a, new)
    if stream is not None:
        stream.close(sd.take)
    res = model.load_state_dict(sd.take(""), strict=False, assign=True)
    tied = meta.get("tied", {})
    for dup, orig in tied.items():  # storage shared when saved: share it again
        if dup in res.missing_keys:
            owner, attr, _ = _get(model, dup)
            setattr(owner, attr, _get(model, orig)[2])
    for n, dt in meta.get("buffer_dtypes", {}).items():
        owner_name, _, attr = n.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue
        buf = owner._buffers.get(attr)
        want = getattr(torch, dt, None)
        if buf is not None and isinstance(want, torch.dtype) and buf.dtype != want:
            owner._buffers[attr] = buf.to(want)
    if res.unexpected_keys:
        raise ValueError(f"load_quantized: tensors not in the model: {res.unexpected_keys[:8]}")
    still_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if still_meta:
        raise ValueError(f"load_quantized: the checkpoint has no values for {still_meta[:8]}")
    if stream is not None:
        stream.split_rest()
    elif fuse:
        _fuse(model)
    record_loaded(model, model_dir)  # conversion_report(model) describes it like a converted model
    return model.eval()  # the QLinears built above (e.g. an unfused lm_head) too
