"""Quantized checkpoints in the compressed-tensors layout (vLLM / llm-compressor / HF transformers).

    zqkernels.save_quantized(model, out_dir)     # model.safetensors + config.json
    model = zqkernels.load_quantized(out_dir)    # an HF model dir; or load_quantized(d, model=skeleton)

Layout written (docs/CHECKPOINTS.md has the details), per quantized Linear, under the ORIGINAL module
name (fused blocks are split back into q_proj / k_proj / ..., and QLinear's row padding is dropped):

    <name>.weight        int8    [N, K]
    <name>.weight_scale  float32 [N, 1]   (per output channel; weight ~= weight * weight_scale)
    <name>.bias          model dtype [N]  (if the layer has one)

every other tensor (embeddings, norms, float Linears) as it is, and ``config.json`` with a
``quantization_config`` of ``quant_method: "compressed-tensors"``, ``format: "int-quantized"``: one
config group, weights int8 symmetric per-channel (static), input activations int8 symmetric
per-token (dynamic), ``targets: ["Linear"]`` and the float Linears in ``ignore``. ``zqkernels.json``
records how the model was fused (read back by load_quantized, ignored by everyone else).

Only the "w8a8" scheme is implemented; any other scheme raises NotImplementedError on save and load.

Loading (design): the float model is built from its config with its *parameters* on the meta
device (buffers stay real: rotary tables and position ids are computed as usual), so no float
weights are allocated or read for quantized layers; each Linear that the checkpoint quantizes is
replaced by an empty QLinear and given the int8 weight and scales; all other tensors are assigned
from the file. Then (``fuse=True``) each recognised transformer layer becomes its fused block, with
the int8 weights of its parts concatenated (never re-quantized), exactly as ``quantize_model`` built
it, so a save / load round trip gives bit-identical outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from .blocks import QBertLayer, QGPT2Block, QLlamaDecoderLayer, QuantizedBlock, block_class
from .linear import QLinear, _padded

__all__ = ["save_quantized", "load_quantized", "QUANT_CONFIG", "W8A8_GROUP"]

_WEIGHTS = "model.safetensors"
_META = "zqkernels.json"
_FORMAT = "int-quantized"

#: The compressed-tensors scheme of zqkernels' "w8a8" (llm-compressor's preset "W8A8").
W8A8_GROUP: dict[str, Any] = {
    "weights": {
        "num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": "channel",
        "dynamic": False,
    },
    "input_activations": {
        "num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": "token",
        "dynamic": True,
    },
    "output_activations": None,
}

#: The quantization_config written to config.json (plus "ignore" and "config_groups").
QUANT_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": _FORMAT,
    "quantization_status": "compressed",
    "kv_cache_scheme": None,
    "global_compression_ratio": None,
    "moe_sparsity_config": None,
    "sparsity_config": {},
    "transform_config": {},
}


# ------------------------------------------------------------------------------------------------
# Fused blocks <-> their HF submodule names


# role -> the HF submodules (relative to the layer) merged into it, in row order; norm1 / norm2 -> the
# HF norm modules.
_PARTS: dict[type, dict[str, list[str]]] = {
    QBertLayer: {
        "qkv": ["attention.self.query", "attention.self.key", "attention.self.value"],
        "attn_out": ["attention.output.dense"],
        "fc1": ["intermediate.dense"],
        "fc2": ["output.dense"],
        "norm1": ["attention.output.LayerNorm"],
        "norm2": ["output.LayerNorm"],
    },
    QLlamaDecoderLayer: {
        "qkv": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "attn_out": ["self_attn.o_proj"],
        "fc1": ["mlp.gate_proj", "mlp.up_proj"],
        "fc2": ["mlp.down_proj"],
        "norm1": ["input_layernorm"],
        "norm2": ["post_attention_layernorm"],
    },
}
_ROLES = ("qkv", "attn_out", "fc1", "fc2")


def _parts(cls: type) -> dict[str, list[str]]:
    if cls not in _PARTS:
        what = "HF Conv1D weights" if cls is QGPT2Block else "no layout"
        raise NotImplementedError(
            f"save_quantized: fused {cls.__name__} blocks ({what}) are not supported in the "
            "compressed-tensors layout yet"
        )
    return _PARTS[cls]


def _rows(blk: QuantizedBlock, role: str) -> list[int]:
    """Output rows of each part of a merged role."""
    n = getattr(blk, role).out_features
    if role == "qkv":
        return [blk.heads * blk.head_dim, blk.kv_heads * blk.head_dim, blk.kv_heads * blk.head_dim]
    k = len(_parts(type(blk))[role])
    return [n // k] * k


def _qlinear_tensors(m: QLinear, name: str) -> dict[str, torch.Tensor]:
    if m.scheme != "w8a8":
        raise NotImplementedError(
            f"save_quantized: layer {name!r} uses scheme {m.scheme!r}; only 'w8a8' is implemented "
            "in the compressed-tensors layout"
        )
    n = m.out_features
    out = {
        "weight": m.weight_q[:n].detach().cpu().contiguous(),
        "weight_scale": m.weight_scale[:n].detach().cpu().reshape(n, 1).contiguous(),
    }
    if m.bias is not None:
        out["bias"] = m.bias[:n].detach().cpu().contiguous()
    return out


def _split_linear(lin: nn.Module, rows: list[int]) -> list[dict[str, torch.Tensor]]:
    """A merged (Q)Linear's tensors split by output rows."""
    if isinstance(lin, QLinear):
        t = _qlinear_tensors(lin, "merged")
    else:
        t = {"weight": lin.weight.detach().cpu()}
        if lin.bias is not None:
            t["bias"] = lin.bias.detach().cpu()
    return [{k: v.contiguous() for k, v in zip(t, parts)} for parts in zip(*(v.split(rows, 0) for v in t.values()))]


def _is_float_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


# ------------------------------------------------------------------------------------------------
# save


def save_quantized(model: nn.Module, out_dir: Union[str, os.PathLike]) -> None:
    """Save a model converted by ``quantize_model`` (or holding QLinear modules) in the
    compressed-tensors "int-quantized" layout: ``model.safetensors``, ``config.json`` (the HF
    config when ``model.config`` has ``save_pretrained``, with ``quantization_config`` added) and
    ``zqkernels.json``. Raises NotImplementedError for a scheme other than "w8a8" and for fused
    GPT-2 blocks. Tensors that share storage (tied embeddings) are saved once.
    """
    from safetensors.torch import save_file

    for name, mod in model.named_modules():
        if isinstance(mod, QLinear) and mod._buffers.get("lorc_a") is not None:
            raise NotImplementedError(
                f"save_quantized: {name!r} has LoRC factors (lorc_a / lorc_b, rank {mod.lorc_rank}); the "
                "compressed-tensors layout has no such tensors. Save the model's state_dict instead "
                "(torch.save), or remove them with layer.init_lorc(0)"
            )
    os.makedirs(out_dir, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
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
            for role in _ROLES:
                lin = getattr(mod, role)
                for sub, t in zip([pre + p for p in parts[role]], _split_linear(lin, _rows(mod, role))):
                    put(sub, t)
                    (quantized if isinstance(lin, QLinear) else ignore).append(sub)
            for i in (1, 2):
                norm = getattr(mod, f"norm{i}")
                put(pre + parts[f"norm{i}"][0], {k: v.detach().cpu() for k, v in norm.state_dict().items()})
            fused[name] = dict(mod.level)
            handled.append(name)
        elif isinstance(mod, QLinear):
            if name in from_conv1d:
                raise NotImplementedError(
                    f"save_quantized: {name!r} was an HF Conv1D (GPT-2, weight stored [in, out]); Conv1D "
                    "layers are not supported in the compressed-tensors layout yet"
                )
            put(name, _qlinear_tensors(mod, name))
            quantized.append(name)
            handled.append(name)
        elif _is_float_linear(mod):
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
    qc = dict(QUANT_CONFIG)
    qc["config_groups"] = {"group_0": {"targets": ["Linear"], **json.loads(json.dumps(W8A8_GROUP)), "format": _FORMAT}}
    qc["ignore"] = sorted(set(ignore))
    try:
        import compressed_tensors

        qc["version"] = compressed_tensors.__version__
    except ImportError:
        pass
    cfg["quantization_config"] = qc
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, _META), "w") as f:
        json.dump(
            {"scheme": "w8a8", "quantized": sorted(quantized), "fused": fused, "tied": tied, "buffer_dtypes": buffer_dtypes},
            f,
            indent=2,
        )


# ------------------------------------------------------------------------------------------------
# load


def _check_config(qc: dict[str, Any]) -> None:
    """Raise NotImplementedError unless every config group is zqkernels' w8a8."""
    if qc.get("quant_method") != "compressed-tensors":
        raise NotImplementedError(
            f"load_quantized: quant_method {qc.get('quant_method')!r} is not supported (only compressed-tensors)"
        )
    fmt = qc.get("format")
    for gname, g in (qc.get("config_groups") or {}).items():
        gfmt = g.get("format") or fmt
        w, a = g.get("weights") or {}, g.get("input_activations") or {}
        ok = (
            gfmt in (_FORMAT, "naive-quantized")
            and w.get("num_bits") == 8 and w.get("type") == "int" and w.get("symmetric", True)
            and w.get("strategy") == "channel" and not w.get("dynamic")
            and a.get("num_bits") == 8 and a.get("type") == "int" and a.get("symmetric", True)
            and a.get("strategy") == "token" and a.get("dynamic") is True
            and not g.get("output_activations")
        )
        if not ok:
            desc = (
                f"format={gfmt!r}, weights={{bits {w.get('num_bits')}, {w.get('type')}, {w.get('strategy')}, "
                f"symmetric={w.get('symmetric')}}}, input_activations="
                + (f"{{bits {a.get('num_bits')}, {a.get('type')}, {a.get('strategy')}, dynamic={a.get('dynamic')}}}" if a else "None")
            )
            raise NotImplementedError(
                f"load_quantized: config group {gname!r} has scheme {desc}; only w8a8 (int8 per-channel "
                "symmetric weights, int8 dynamic per-token activations, format int-quantized) is implemented"
            )
    if qc.get("kv_cache_scheme"):
        raise NotImplementedError("load_quantized: kv_cache_scheme (quantized KV cache) is not implemented")


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


def _qlinear_from(name: str, w: torch.Tensor, s: torch.Tensor, b: Optional[torch.Tensor], dtype) -> QLinear:
    if w.dtype != torch.int8:
        raise NotImplementedError(
            f"load_quantized: {name}.weight is {w.dtype}; only int8 weights (w8a8) are implemented"
        )
    N, K = w.shape
    if s.numel() != N:
        raise NotImplementedError(
            f"load_quantized: {name}.weight_scale has shape {list(s.shape)}; only per-channel [N, 1] scales "
            "(w8a8) are implemented"
        )
    m = QLinear(K, N, bias=b is not None, dtype=b.dtype if b is not None else dtype, device="meta")
    _set_int8(m, w, s.reshape(N).to(torch.float32), b)
    return m


def _set_int8(m: QLinear, w: torch.Tensor, s: torch.Tensor, b: Optional[torch.Tensor]) -> None:
    pad = _padded(m.out_features) - m.out_features
    F = torch.nn.functional
    m.weight_q = F.pad(w, (0, 0, 0, pad)).contiguous() if pad else w.contiguous()
    m.weight_scale = F.pad(s, (0, pad)).contiguous() if pad else s.contiguous()
    m.bias = None if b is None else (F.pad(b, (0, pad)) if pad else b).contiguous()


def _get(model: nn.Module, name: str) -> tuple[nn.Module, str, nn.Module]:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def _fuse(model: nn.Module) -> None:
    """Replace each recognised HF layer whose linears are all loaded by its fused block, with the
    int8 parts concatenated (as quantize_model would have merged them; nothing re-quantized)."""
    blocks = []
    for prefix, parent in list(model.named_modules()):
        for attr, layer in list(parent._modules.items()):
            cls = block_class(layer) if layer is not None else None
            if cls not in _PARTS:
                continue
            roles = {r: _PARTS[cls][r] for r in _ROLES}
            mods = {r: [layer.get_submodule(n) for n in names] for r, names in roles.items()}
            level = {}
            for r, ms in mods.items():
                kinds = {isinstance(m, QLinear) for m in ms}
                if len(kinds) != 1 or not all(isinstance(m, nn.Linear) or isinstance(m, QLinear) for m in ms):
                    level = None
                    break
                level[r] = kinds.pop()
            if level is None:
                continue
            # The block constructor reads float weights: hand it dequantized stand-ins, then put the
            # exact int8 tensors of the parts in its merged QLinears.
            saved = {}
            for r, parts in roles.items():
                for n, m in zip(parts, mods[r]):
                    if isinstance(m, QLinear):
                        p, a, _ = _get(layer, n)
                        n_out = m.out_features
                        lin = nn.Linear(m.in_features, n_out, bias=m.bias is not None, device="meta")
                        dt = m.bias.dtype if m.bias is not None else torch.float32
                        w = (m.weight_q[:n_out].float() * m.weight_scale[:n_out, None]).to(dt)
                        lin.weight = nn.Parameter(w, requires_grad=False)
                        if m.bias is not None:
                            lin.bias = nn.Parameter(m.bias[:n_out].clone(), requires_grad=False)
                        saved[n] = (p, a, m)
                        setattr(p, a, lin)
            try:
                blk = cls(layer, level)
            finally:
                for p, a, m in saved.values():
                    setattr(p, a, m)
            for r, ms in mods.items():
                if not level[r]:
                    continue
                merged = getattr(blk, r)
                has_bias = any(m.bias is not None for m in ms)
                dt = merged.bias.dtype if merged.bias is not None else torch.float32
                w = torch.cat([m.weight_q[: m.out_features] for m in ms])
                s = torch.cat([m.weight_scale[: m.out_features] for m in ms])
                b = None
                if has_bias:
                    b = torch.cat([
                        m.bias[: m.out_features].to(dt) if m.bias is not None else torch.zeros(m.out_features, dtype=dt)
                        for m in ms
                    ])
                _set_int8(merged, w, s, b)
            blocks.append((parent, attr, blk))
    by_parent: dict[int, list[QuantizedBlock]] = {}
    for parent, attr, blk in blocks:
        setattr(parent, attr, blk)
        by_parent.setdefault(id(parent), []).append(blk)
    for seq in by_parent.values():
        for a, b in zip(seq, seq[1:]):
            if type(a) is type(b):
                a.link(b)


def load_quantized(
    model_dir: Union[str, os.PathLike], model: Optional[nn.Module] = None, *, fuse: Optional[bool] = None
) -> nn.Module:
    """Load a compressed-tensors "int-quantized" W8A8 checkpoint (ours or another tool's).

    model: None builds the HF model named by ``config.json`` (``architectures``) from its config
    with parameters on the meta device; or a float model / skeleton (meta parameters are fine) of
    the same architecture. Each Linear with an int8 ``weight`` and a ``weight_scale`` in the
    checkpoint becomes a QLinear (w8a8); all other tensors are assigned as saved.
    fuse: replace recognised transformer layers by fused blocks (``nn.blocks``). None: as the model
    was saved (``zqkernels.json``), or True for a checkpoint written by another tool.
    Raises NotImplementedError for any scheme but w8a8 (and asymmetric / static-activation /
    group-wise variants). Returns the model in eval mode.
    """
    from safetensors.torch import load_file

    model_dir = os.fspath(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    if not qc:
        raise ValueError(f"load_quantized: {model_dir}/config.json has no quantization_config")
    _check_config(qc)
    meta: dict[str, Any] = {}
    if os.path.exists(os.path.join(model_dir, _META)):
        with open(os.path.join(model_dir, _META)) as f:
            meta = json.load(f)
        if meta.get("scheme", "w8a8") != "w8a8":
            raise NotImplementedError(f"load_quantized: scheme {meta['scheme']!r} is not implemented (only w8a8)")
    files = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    if not files:
        raise ValueError(f"load_quantized: no .safetensors file in {model_dir}")
    sd: dict[str, torch.Tensor] = {}
    for n in files:
        sd.update(load_file(os.path.join(model_dir, n)))
    if model is None:
        model = _build_hf(model_dir, cfg)
    model.eval()
    dtype = getattr(getattr(model, "config", None), "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32

    for k in sd:
        for bad in ("weight_zero_point", "input_scale", "weight_g_idx", "weight_packed", "weight_global_scale"):
            if k.endswith("." + bad):
                raise NotImplementedError(
                    f"load_quantized: tensor {k!r} belongs to a scheme other than w8a8 (int8 symmetric "
                    "per-channel weights, dynamic per-token activations); not implemented"
                )
    qnames = sorted(k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale"))
    for name in qnames:
        parent, attr, old = _get(model, name)
        if isinstance(old, QLinear):
            pass
        elif not isinstance(old, nn.Linear):
            raise NotImplementedError(
                f"load_quantized: {name} is a {type(old).__name__}; only nn.Linear layers can be loaded "
                "as QLinear (HF Conv1D / GPT-2 is not implemented)"
            )
        w = sd.pop(f"{name}.weight")
        s = sd.pop(f"{name}.weight_scale")
        b = sd.pop(f"{name}.bias", None)
        has_bias = old.bias is not None
        if b is not None and not has_bias:
            if torch.count_nonzero(b):
                raise ValueError(f"load_quantized: {name}.bias is in the checkpoint but the layer has no bias")
            b = None  # a zero bias a merged GEMM gave a bias-less part
        new = _qlinear_from(name, w, s, b, dtype)
        if (new.in_features, new.out_features) != (old.in_features, old.out_features):
            raise ValueError(
                f"load_quantized: {name} is [{old.out_features}, {old.in_features}] in the model but "
                f"[{new.out_features}, {new.in_features}] in the checkpoint"
            )
        for _, mod in list(model.named_modules(remove_duplicate=False)):  # every slot of a shared Linear
            for a, child in list(mod._modules.items()):
                if child is old:
                    setattr(mod, a, new)
    res = model.load_state_dict(sd, strict=False, assign=True)
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
    if fuse is None:
        fuse = bool(meta.get("fused", True)) if meta else True
    if fuse:
        _fuse(model)
    return model
