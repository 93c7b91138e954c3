"""Quantized checkpoints in the compressed-tensors layout (vLLM / llm-compressor / HF transformers).

    zqkernels.save_quantized(model, out_dir)     # model.safetensors + config.json + zqkernels.json
    model = zqkernels.load_quantized(out_dir)    # an HF model dir; or load_quantized(d, model=skeleton)

Layout written (docs/CHECKPOINTS.md has the details), per quantized Linear of N outputs and K inputs,
under the ORIGINAL module name (fused blocks are split back into q_proj / k_proj / ..., and QLinear's
row padding is dropped):

    w8a8        "int-quantized"   weight int8 [N, K], weight_scale float32 [N, 1] (channel)
    w8a8-group  "int-quantized"   weight int8 [N, K], weight_scale float32 [N, K/g] (group g)
    fp8         "float-quantized" weight float8_e4m3fn [N, K], weight_scale float32 [N, 1]
    w4a8, w4a8-floatscale
                "pack-quantized"  weight_packed int32 [N, K/8] (compressed-tensors' order: 8
                                  consecutive k per word, k % 8 in bits 4 (k % 8) .. +3, stored as
                                  q + 8), weight_shape int64 [2], weight_scale float32 [N, K/g]
    w4a8-fp, scale_policy "m1"
                "mxfp4-pack-quantized"  weight_packed uint8 [N, K/2] (E2M1 codes, even k in the low
                                  nibble), weight_scale uint8 [N, K/32] (E8M0: 127 + log2 of the group's
                                  power-of-two scale sw * 2^e, repeated for each 32 of a group); exact
    <name>.bias  model dtype [N]  (if the layer has one)

Group scales are written as the real per-group scale s = sw * sg (our per-channel sw times the
integer / float group scale sg), rounded once to float32. Every other tensor (embeddings, norms,
float Linears) is saved as it is; ``config.json`` gets a ``quantization_config`` with
``quant_method: "compressed-tensors"``, one config group per scheme (``targets: ["Linear"]`` when the
model has one scheme, the module names otherwise, format ``mixed-precision`` then) and the float
Linears in ``ignore``. ``zqkernels.json`` records each layer's scheme and options (group size, the
integer scales' alpha) and how the model was fused; read back by load_quantized, ignored by others.
"w4a8-fp" with scale_policy "m2" / "free" (a float32 channel scale or float ratios) has no exact
compressed-tensors form and raises; "m1" (all scales powers of two) is MXFP4.

GPT-2 (HF Conv1D, weight [in, out]): converted Conv1Ds (QLinear, or the roles of a fused QGPT2Block)
are written like Linears (weight [out, in]) under the Conv1D names; their config groups target them by
name and carry the extra key ``zqkernels_conv1d``, which compressed-tensors' schema rejects, so other
loaders (transformers) refuse the file instead of loading [out, in] into a Conv1D parameter (silently
transposed for a square layer). Float Conv1Ds (a fused block's float roles too) keep their [in, out].

Loading (design): the float model is built from its config with its *parameters* on the meta
device (buffers stay real: rotary tables and position ids are computed as usual), so no float
weights are allocated or read for quantized layers; each Linear that the checkpoint quantizes is
replaced by an empty QLinear of the matching scheme and given its tensors (group scales re-derived
as sw * sg); all other tensors are assigned from the file. Then (``fuse=True``) each recognised
transformer layer whose parts are w8a8 becomes its fused block, with the int8 weights of its parts
concatenated (never re-quantized), exactly as ``quantize_model`` built it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from ..reference.quantize import (
    FP4_EXP_MAX,
    FP4_EXP_MIN,
    INT4_HEURISTIC_RANGE,
    INT8_HEURISTIC_MIN,
    _alpha_heuristic,
    group_alpha_max,
    pack_fp4,
    pack_int4,
    unpack_fp4,
    unpack_int4,
)
from ..schemes import padded as _padded
from .blocks import BLOCKS, NORMS, ROLES, QGPT2Block, QuantizedBlock, block_class, parts_of
from .linear import QLinear
from .linear import is_conv1d as _is_conv1d

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
W8A8_GROUP_SPEC = {"weights": W8A8_GROUP["weights"], "input_activations": W8A8_GROUP["input_activations"]}


def _args(bits: int, kind: str, strategy: str, group_size: Optional[int] = None, dynamic: bool = False) -> dict[str, Any]:
    return {
        "num_bits": bits, "type": kind, "symmetric": True, "group_size": group_size, "strategy": strategy,
        "dynamic": dynamic,
    }


_ACT_INT8 = _args(8, "int", "token", dynamic=True)
_ACT_FP8 = _args(8, "float", "token", dynamic=True)
_PACKED = "pack-quantized"
_FLOAT = "float-quantized"
_MXFP4 = "mxfp4-pack-quantized"
_MX_GROUP = 32  # MX block size: one E8M0 scale per 32 consecutive k
#: compressed-tensors' MXFP4 weights (its preset "MXFP4A16" / "MXFP4xFP8" weights, as it writes them)
_W_MXFP4 = {**_args(4, "float", "group", _MX_GROUP), "scale_dtype": "torch.uint8"}

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
# HF norm modules: the block class's PARTS (nn/blocks.py parts_of).


def _parts(cls: type) -> dict[str, list[str]]:
    try:
        return parts_of(cls, ROLES + NORMS)
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


def _pack_ct(codes: torch.Tensor) -> torch.Tensor:
    """INT4 codes int8 [N, K] (-8..7), K % 8 == 0 -> compressed-tensors' ``weight_packed`` int32 [N, K / 8]:
    word j holds k = 8 j .. 8 j + 7, code of k + 8 (offset binary) in bits 4 (k % 8) .. 4 (k % 8) + 3
    (``compressed_tensors...pack_to_int32(codes, 4)``)."""
    N, K = codes.shape
    u = (codes.to(torch.int64) + 8).reshape(N, K // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = (u << shifts).sum(-1)  # < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


def _unpack_ct(packed: torch.Tensor, N: int, K: int, bits: int = 4) -> torch.Tensor:
    """Inverse of ``_pack_ct`` (bits 4: int32 [N, ceil(K / 8)] -> codes int8 [N, K], -8..7), and of
    compressed-tensors' 8-bit packing (bits 8: 4 values per word, value + 128 in bits 8 i .. 8 i + 7)."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    codes = ((w[..., None] >> shifts) & ((1 << bits) - 1)) - (1 << (bits - 1))
    return codes.reshape(N, -1)[:, :K].to(torch.int8).contiguous()


def _group_scale(sw: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    """The real per-group scale s = sw[n] * sg[n, j] (exact in float64: sw has 24 significant bits, sg
    is an integer of at most 16 bits or a float32), rounded once to float32 [N, G]."""
    return (sw.double()[:, None] * sg.double()).to(torch.float32).contiguous()


def _qlinear_tensors(m: QLinear, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors by local name, the compressed-tensors scheme {format, weights, input_activations},
    what zqkernels.json records for the layer)."""
    if m.scheme == "w4a8-fp":
        return _mxfp4_tensors(m, name)
    if m.scheme not in ("w8a8", "fp8", "w4a8", "w4a8-floatscale", "w8a8-group"):
        raise NotImplementedError(f"save_quantized: layer {name!r} uses scheme {m.scheme!r}, which has no layout here")
    n, K = m.out_features, m.in_features
    sw = m.weight_scale[:n].detach().cpu()
    out: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"scheme": m.scheme}
    if m.scheme in ("w8a8", "fp8"):
        out["weight"] = m.weight_q[:n].detach().cpu().contiguous()
        out["weight_scale"] = sw.reshape(n, 1).contiguous()
        if m.scheme == "w8a8":
            spec = {"format": _FORMAT, "weights": _args(8, "int", "channel"), "input_activations": _ACT_INT8}
        else:
            spec = {"format": _FLOAT, "weights": _args(8, "float", "channel"), "input_activations": _ACT_FP8}
    else:
        g = m.group_size
        sg = m.weight_group_scale[:n].detach().cpu()
        out_scale = _group_scale(sw, sg)
        if m.scheme == "w8a8-group":
            out["weight"] = m.weight_q[:n].detach().cpu().contiguous()
            spec = {"format": _FORMAT, "weights": _args(8, "int", "group", g), "input_activations": _ACT_INT8}
            info["scale"] = m.scale
        else:
            codes = unpack_int4(m.weight_q.detach().cpu(), m.weight_q.shape[0], K)[:n]
            out["weight_packed"] = _pack_ct(codes)
            out["weight_shape"] = torch.tensor([n, K], dtype=torch.int64)
            spec = {"format": _PACKED, "weights": _args(4, "int", "group", g), "input_activations": _ACT_INT8}
        out["weight_scale"] = out_scale
        info["group_size"] = g
        if sg.dtype == torch.int32:
            # the alpha used (the largest integer scale: every non-zero row's largest group has sg = alpha),
            # and the layer's alpha option (None: quantize_weight's default)
            info["alpha"] = int(sg.max()) if sg.numel() and int(sg.max()) > 0 else None
            info["alpha_option"] = m.alpha
    if m.bias is not None:
        out["bias"] = m.bias[:n].detach().cpu().contiguous()
    return out, spec, info


def _mxfp4_tensors(m: QLinear, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """A w4a8-fp QLinear of scale_policy "m1" in compressed-tensors' mxfp4-pack-quantized layout, exactly:
    every group scale sw[n] * 2^e[n, j] is a power of two (m1: sw is one too), written as its E8M0 byte
    127 + log2 for each of the g / 32 MX blocks of the group; the E2M1 codes (same code points: magnitude
    index 0..7 of 0, .5, 1, 1.5, 2, 3, 4, 6, sign in bit 3) two per byte, even k in the low nibble."""
    policy = m.scale_policy
    if policy != "m1":
        raise NotImplementedError(
            f"save_quantized: layer {name!r} uses scheme 'w4a8-fp' with scale_policy {policy!r}; expected 'm1', the "
            "only policy compressed-tensors can hold exactly (mxfp4-pack-quantized: a power-of-two E8M0 scale per "
            "32 weights). Under 'm2' the channel scale sw is an arbitrary float32 and under 'free' the group "
            "ratios are too: neither is a power of two (MXFP4) nor, in general, an FP8 E4M3 value times one "
            "float32 global scale per tensor (nvfp4-pack-quantized, groups of 16), so writing them would change "
            "the weights (docs/CHECKPOINTS.md)"
        )
    n, K = m.out_features, m.in_features
    g = m.group_size
    codes = unpack_fp4(m.weight_q.detach().cpu(), m.weight_q.shape[0], K)[:n]
    sw = m.weight_scale[:n].detach().cpu()
    e = m.weight_group_scale[:n].detach().cpu().to(torch.int32)
    mant, ex = torch.frexp(sw)
    zero_row = sw == 0  # all codes 0: any scale decodes to 0; written as 2^0
    if bool(((mant != 0.5) & ~zero_row).any()) or not bool(torch.isfinite(sw).all()):
        raise ValueError(
            f"save_quantized: layer {name!r} (w4a8-fp, m1): weight_scale must hold powers of two (or 0), got "
            f"{sw[(mant != 0.5) & ~zero_row][:4].tolist()}"
        )
    exp = torch.where(zero_row[:, None], torch.zeros_like(e), (ex - 1)[:, None] + e)  # log2 of each group scale
    if bool((exp < -127).any()) or bool((exp > 127).any()):
        bad = exp[(exp < -127) | (exp > 127)]
        raise NotImplementedError(
            f"save_quantized: layer {name!r} (w4a8-fp, m1): a group scale 2^{int(bad[0])} is outside E8M0's "
            "2^-127 .. 2^127 (mxfp4-pack-quantized cannot hold it)"
        )
    out = {
        "weight_packed": (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous(),
        "weight_scale": (exp + 127).to(torch.uint8).repeat_interleave(g // _MX_GROUP, dim=1).contiguous(),
    }
    if m.bias is not None:
        out["bias"] = m.bias[:n].detach().cpu().contiguous()
    spec = {"format": _MXFP4, "weights": dict(_W_MXFP4), "input_activations": _ACT_FP8}
    return out, spec, {"scheme": m.scheme, "group_size": g, "scale_policy": policy}


def _mxfp4_qlinear(name: str, t: dict[str, torch.Tensor], info: dict[str, Any], dtype) -> QLinear:
    """Inverse of ``_mxfp4_tensors``: a w4a8-fp QLinear (m1) from mxfp4-pack-quantized tensors. The group
    size is ours from zqkernels.json (each group's g / 32 blocks must share their scale), 32 otherwise; a
    row's sw = 2^(its largest exponent), e = the others relative to it, which must lie in [-5, 0] (the
    kernel's exponent range); a row of zero codes gets sw = 0, e = 0 (as quantize_weight gives it)."""
    b = t.get("bias")
    packed, sc = t.get("weight_packed"), t["weight_scale"]
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 2:
        got = "none" if packed is None else f"{packed.dtype} {list(packed.shape)}"
        raise ValueError(f"load_quantized: {name}.weight_packed: expected uint8 [N, K / 2] (mxfp4-pack-quantized), got {got}")
    N, K = packed.shape[0], 2 * packed.shape[1]
    if sc.dtype != torch.uint8 or tuple(sc.shape) != (N, K // _MX_GROUP) or K % _MX_GROUP:
        raise ValueError(
            f"load_quantized: {name}.weight_scale: expected uint8 E8M0 [{N}, {K // _MX_GROUP}] for weight_packed "
            f"[{N}, {K // 2}], got {sc.dtype} {list(sc.shape)}"
        )
    if bool((sc == 255).any()):
        raise ValueError(f"load_quantized: {name}.weight_scale: expected E8M0 exponents 0..254, got 255 (NaN)")
    g = int(info.get("group_size") or _MX_GROUP)
    if g % _MX_GROUP or K % g:
        raise ValueError(
            f"load_quantized: {name}: group_size in zqkernels.json: expected a multiple of 32 dividing K = {K}, got {g}"
        )
    blocks = sc.to(torch.int32).reshape(N, K // g, g // _MX_GROUP)
    if bool((blocks != blocks[..., :1]).any()):
        n_bad, j_bad = (int(v) for v in (blocks != blocks[..., :1]).any(-1).nonzero()[0])
        raise ValueError(
            f"load_quantized: {name}.weight_scale: expected one E8M0 scale per group of {g} (zqkernels.json), got "
            f"{blocks[n_bad, j_bad].tolist()} for row {n_bad}, group {j_bad}"
        )
    exp = blocks[..., 0] - 127  # [N, G]
    codes = torch.stack((packed & 0xF, packed >> 4), dim=2).reshape(N, K)
    # groups of zero codes decode to 0 whatever their scale: they do not set sw, and a ratio outside the
    # kernel's range becomes 2^0 (quantize_weight's value for an all-zero group)
    zgroup = (codes & 7).reshape(N, K // g, g).amax(-1) == 0
    zero_row = zgroup.all(1)
    cmax = torch.where(zgroup, torch.full_like(exp, -(2**20)), exp).amax(1)
    cmax = torch.where(zero_row, torch.zeros_like(cmax), cmax)
    e = exp - cmax[:, None]
    e = torch.where(zgroup & ((e < FP4_EXP_MIN) | (e > FP4_EXP_MAX)), torch.zeros_like(e), e)
    e = torch.where(zero_row[:, None], torch.zeros_like(e), e)
    if bool((e < FP4_EXP_MIN).any()):
        raise NotImplementedError(
            f"load_quantized: {name}: a group scale is 2^{int(e.min())} times its row's largest; the w4a8-fp "
            f"kernel holds ratios 2^{FP4_EXP_MIN} .. 2^{FP4_EXP_MAX} only"
        )
    sw = torch.where(zero_row, torch.zeros(N), torch.ldexp(torch.ones(N), cmax.to(torch.float32)))
    policy = info.get("scale_policy", "m1")
    try:
        m = QLinear(K, N, bias=b is not None, dtype=b.dtype if b is not None else dtype, device="meta",
                    scheme="w4a8-fp", group_size=g, scale_policy=policy)
    except ValueError as err:
        raise NotImplementedError(f"load_quantized: {name} [{N}, {K}] cannot be a 'w4a8-fp' QLinear: {err}") from None
    rows = m.weight_scale.shape[0]
    m.weight_q = pack_fp4(_pad(codes, rows))
    m.weight_scale = _pad(sw.to(torch.float32).contiguous(), rows)
    m.weight_group_scale = _pad(e.to(torch.int8).contiguous(), rows)
    m.bias = None if b is None else _pad(b.contiguous(), rows)
    return m


def _split_linear(lin: nn.Module, rows: list[int], conv1d: bool = False) -> list[dict[str, torch.Tensor]]:
    """A merged (Q)Linear's tensors split by output rows. conv1d: a float role of a GPT-2 block, saved in
    its HF Conv1D's layout (weight [in, out]) so that it loads into the Conv1D parameter."""
    if isinstance(lin, QLinear):
        t = _qlinear_tensors(lin, "merged")[0]
    else:
        t = {"weight": lin.weight.detach().cpu()}
        if lin.bias is not None:
            t["bias"] = lin.bias.detach().cpu()
    out = [{k: v.contiguous() for k, v in zip(t, parts)} for parts in zip(*(v.split(rows, 0) for v in t.values()))]
    if conv1d and not isinstance(lin, QLinear):
        for part in out:
            part["weight"] = part["weight"].t().contiguous()
    return out


def _is_float_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


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
                for sub, t in zip([pre + p for p in parts[role]], _split_linear(lin, _rows(mod, role), conv)):
                    put(sub, t)
                    if isinstance(lin, QLinear):
                        quantized.append(sub)
                        layers[sub] = {"scheme": lin.scheme}
                        spec = {"format": _FORMAT, **W8A8_GROUP_SPEC}
                        if conv:
                            layers[sub]["conv1d"] = True
                            spec[CONV1D_KEY] = _CONV1D_NOTE
                        specs[sub] = json.dumps(spec, sort_keys=True)
                    elif not conv:
                        ignore.append(sub)
            for i in (1, 2):
                norm = getattr(mod, f"norm{i}")
                put(pre + parts[f"norm{i}"][0], {k: v.detach().cpu() for k, v in norm.state_dict().items()})
            fused[name] = dict(mod.level)
            handled.append(name)
        elif isinstance(mod, QLinear):
            t = _qlinear_tensors(mod, name)
            if name in from_conv1d or getattr(mod, "_zq_from_conv1d", False):
                t[2]["conv1d"] = True
                t = (t[0], {**t[1], CONV1D_KEY: _CONV1D_NOTE}, t[2])
            put_q(name, t)
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
    by_spec: dict[str, list[str]] = {}
    for name in sorted(specs):
        by_spec.setdefault(specs[name], []).append(name)
    if not by_spec:  # nothing quantized: still a valid (w8a8) config
        by_spec[json.dumps({"format": _FORMAT, **W8A8_GROUP_SPEC}, sort_keys=True)] = []
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
    qc["format"] = formats.pop() if len(formats) == 1 else "mixed-precision"
    qc["config_groups"] = groups
    qc["ignore"] = sorted(set(ignore))
    try:
        import compressed_tensors

        qc["version"] = compressed_tensors.__version__
    except ImportError:
        pass
    cfg["quantization_config"] = qc
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


# ------------------------------------------------------------------------------------------------
# load


def _desc(gname: str, gfmt: Any, w: dict, a: dict) -> str:
    return (
        f"config group {gname!r}: format={gfmt!r}, weights={{bits {w.get('num_bits')}, {w.get('type')}, "
        f"{w.get('strategy')}, group_size {w.get('group_size')}, symmetric={w.get('symmetric')}}}, input_activations="
        + (f"{{bits {a.get('num_bits')}, {a.get('type')}, {a.get('strategy')}, dynamic={a.get('dynamic')}}}" if a else "None")
    )


_SUPPORTED = (
    "int8 per-channel weights (w8a8) or int8 group weights (w8a8-group), format int-quantized; int4 group / "
    "per-channel weights (w4a8), format pack-quantized or int-quantized; fp8 e4m3 per-channel weights "
    "(fp8), format float-quantized; FP4 E2M1 weights with E8M0 scales per 32 (w4a8-fp, m1), format "
    "mxfp4-pack-quantized, with fp8 activations; all symmetric and static, with dynamic per-token activations "
    "of the weights' kind (int8 / fp8) or none (weight-only: run with dynamic int8 / fp8 activations)"
)


def _group_kind(gname: str, g: dict[str, Any], fmt: Any) -> str:
    """The weight kind of a config group ("int8", "int8-group", "int4", "fp8"); NotImplementedError
    for any other scheme."""
    gfmt = g.get("format") or fmt
    w, a = g.get("weights") or {}, g.get("input_activations") or {}
    desc = _desc(gname, gfmt, w, a)
    bits, kind, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
    if gfmt == _MXFP4:
        akind = (a.get("num_bits"), a.get("type"), a.get("strategy"), a.get("dynamic"), a.get("symmetric", True))
        if (bits, kind, strategy, w.get("group_size")) == (4, "float", "group", _MX_GROUP) and w.get("symmetric", True) \
                and not w.get("dynamic") and not g.get("output_activations") and (not a or akind == (8, "float", "token", True, True)):
            return "mxfp4"
        raise NotImplementedError(
            f"load_quantized: {desc}; expected for {_MXFP4}: weights {{bits 4, float, group, group_size 32, "
            "symmetric}} with input_activations {bits 8, float, token, dynamic=True} or None (w4a8-fp, m1)"
        )
    if isinstance(gfmt, str) and ("fp4" in gfmt or "mxfp" in gfmt):
        raise NotImplementedError(
            f"load_quantized: {desc}: {gfmt} has no zqkernels scheme: nvfp4 holds an FP8 E4M3 scale per 16 "
            "weights times a float32 global scale, other MX formats are not FP4; our w4a8-fp holds a float32 "
            "(m2, free) or power-of-two (m1) scale per channel times power-of-two / float ratios per group of "
            "32-128; only mxfp4-pack-quantized maps onto it (as m1) (docs/CHECKPOINTS.md)"
        )
    ok_static = w.get("symmetric", True) and not w.get("dynamic") and not g.get("output_activations")
    out = None
    if ok_static and kind == "int" and bits == 8 and strategy in ("channel", "tensor"):
        out = "int8"
    elif ok_static and kind == "int" and bits == 8 and strategy == "group" and w.get("group_size"):
        out = "int8-group"
    elif ok_static and kind == "int" and bits == 4 and (strategy == "channel" or (strategy == "group" and w.get("group_size"))):
        out = "int4"
    elif ok_static and kind == "float" and bits == 8 and strategy in ("channel", "tensor"):
        out = "fp8"
    fmts = {"int8": (_FORMAT, _PACKED, "naive-quantized"), "int8-group": (_FORMAT, _PACKED, "naive-quantized"),
            "int4": (_PACKED, _FORMAT, "naive-quantized"), "fp8": (_FLOAT, "naive-quantized")}
    if out is not None and gfmt not in fmts[out] and gfmt != "mixed-precision":
        out = None
    if out is not None and a:
        akind = "float" if out == "fp8" else "int"
        if not (a.get("num_bits") == 8 and a.get("type") == akind and a.get("symmetric", True)
                and a.get("strategy") == "token" and a.get("dynamic") is True):
            out = None
    if out is None:
        raise NotImplementedError(f"load_quantized: {desc}; implemented: {_SUPPORTED}")
    return out


def _check_config(qc: dict[str, Any]) -> dict[str, str]:
    """Each config group's weight kind; NotImplementedError for anything else."""
    if qc.get("quant_method") != "compressed-tensors":
        raise NotImplementedError(
            f"load_quantized: quant_method {qc.get('quant_method')!r} is not supported (only compressed-tensors)"
        )
    if qc.get("kv_cache_scheme"):
        raise NotImplementedError("load_quantized: kv_cache_scheme (quantized KV cache) is not implemented")
    if qc.get("sparsity_config") or (qc.get("format") or "").startswith(("sparse", "marlin")):
        raise NotImplementedError("load_quantized: sparse checkpoints (sparsity_config / sparse formats) are not implemented")
    return {gname: _group_kind(gname, g, qc.get("format")) for gname, g in (qc.get("config_groups") or {}).items()}


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


def _int_group_scales(
    name: str, s: torch.Tensor, bits: int, g: int, K: int, scale: str, alpha: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor, Optional[int]]:
    """Real group scales s [N, G] -> (sw float32 [N], sg [N, G], alpha used). Per row s_max = max_j s,
    r = s / s_max (float32); "float": sw = s_max, sg = r; "int": sg = max(rint(r * alpha), 1) (0 for a
    zero group), sw = s_max / alpha, with the checkpoint's alpha (ours, from zqkernels.json: recovers
    the saved sw and sg bit for bit) or quantize_weight's default for these r."""
    s = s.to(torch.float32)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"load_quantized: {name}.weight_scale has negative or non-finite values")
    s_max = s.amax(1)
    nonzero = s > 0
    r = s / torch.where(s_max == 0, torch.ones_like(s_max), s_max)[:, None]
    if scale == "float":
        return s_max.contiguous(), torch.where(nonzero, r, torch.zeros_like(r)).contiguous(), None
    if alpha is None:
        if bits == 4:
            alpha = _alpha_heuristic(r, nonzero, *INT4_HEURISTIC_RANGE)
        elif g == K:
            alpha = 1
        else:
            hi = group_alpha_max(g, 128)
            alpha = _alpha_heuristic(r, nonzero, min(INT8_HEURISTIC_MIN, hi), hi)
    a = torch.full_like(r, float(alpha))
    sg = torch.round(r * a).clamp_(min=1)
    sg = torch.where(nonzero, sg, torch.zeros_like(sg)).to(torch.int32)
    sw = s_max / torch.full_like(s_max, float(alpha))
    return sw.contiguous(), sg.contiguous(), alpha


def _qlinear_from(
    name: str, t: dict[str, torch.Tensor], kind: str, info: dict[str, Any], dtype, scales: str
) -> QLinear:
    """A QLinear from one layer's checkpoint tensors (local names). kind: the config group's weight kind;
    info: the layer's zqkernels.json entry ({} for another tool's checkpoint); scales: "int" / "float",
    the group scales of a foreign int4 / int8-group layer."""
    if kind == "mxfp4":
        return _mxfp4_qlinear(name, t, info, dtype)
    b = t.get("bias")
    s = t["weight_scale"]
    if kind != "fp8" and "weight_packed" in t:  # pack-quantized: int4, or int8 (e.g. W8A16)
        shape = t.get("weight_shape")
        if shape is None:
            raise ValueError(f"load_quantized: {name}.weight_packed without {name}.weight_shape")
        N, K = (int(v) for v in shape.tolist())
        bits = 4 if kind == "int4" else 8
        words = (K * bits + 31) // 32
        if t["weight_packed"].dtype != torch.int32 or tuple(t["weight_packed"].shape) != (N, words):
            raise ValueError(
                f"load_quantized: {name}.weight_packed is {t['weight_packed'].dtype} {list(t['weight_packed'].shape)}, "
                f"expected int32 [{N}, {words}] for weight_shape [{N}, {K}] and {bits} bits"
            )
        codes = _unpack_ct(t["weight_packed"], N, K, bits)
    else:
        codes = t["weight"]
        want = torch.float8_e4m3fn if kind == "fp8" else torch.int8
        if codes.dtype != want:
            raise ValueError(f"load_quantized: {name}.weight is {codes.dtype}, expected {want} for its config group")
        N, K = codes.shape
    if kind == "int4" and codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError(f"load_quantized: {name}: int4 weights outside [-8, 7]")
    scheme = info.get("scheme")
    if kind in ("int8", "fp8"):
        scheme = scheme or ("w8a8" if kind == "int8" else "fp8")
        if s.numel() == 1:
            s = s.reshape(1).expand(N)  # per tensor: the same scale for every channel (exact)
        if s.numel() != N:
            raise ValueError(f"load_quantized: {name}.weight_scale has shape {list(s.shape)}, expected [{N}, 1]")
        m = QLinear(K, N, bias=b is not None, dtype=b.dtype if b is not None else dtype, device="meta", scheme=scheme)
        rows = _padded(N)
        m.weight_q = _pad(codes.contiguous(), rows)
        m.weight_scale = _pad(s.reshape(N).to(torch.float32).contiguous(), rows)
    else:
        G = s.shape[-1] if s.dim() == 2 else 1
        if s.dim() == 1 or G == 1:
            s = s.reshape(N, 1)
        if s.shape[0] != N or K % s.shape[1] != 0:
            raise ValueError(f"load_quantized: {name}.weight_scale has shape {list(s.shape)} for a weight [{N}, {K}]")
        g = K // s.shape[1]
        bits = 4 if kind == "int4" else 8
        if scheme is None:
            if bits == 4:
                scheme = "w4a8" if scales == "int" else "w4a8-floatscale"
            else:
                scheme = "w8a8-group"
        kw: dict[str, Any] = {"group_size": g}
        scale_kind = "float" if scheme == "w4a8-floatscale" else "int"
        if scheme == "w8a8-group":
            scale_kind = info.get("scale", scales)
            kw["scale"] = scale_kind
        if scale_kind == "int" and info.get("alpha_option") is not None:
            kw["alpha"] = info["alpha_option"]
        try:
            m = QLinear(K, N, bias=b is not None, dtype=b.dtype if b is not None else dtype, device="meta", scheme=scheme, **kw)
        except ValueError as e:
            raise NotImplementedError(
                f"load_quantized: {name} [{N}, {K}] with group size {g} cannot be a {scheme!r} QLinear: {e}"
            ) from None
        sw, sg, alpha = _int_group_scales(name, s, bits, g, K, scale_kind, info.get("alpha"))
        rows = m.weight_scale.shape[0]
        m.weight_q = pack_int4(codes) if bits == 4 else _pad(codes.contiguous(), rows)
        m.weight_scale = _pad(sw, rows)
        m.weight_group_scale = _pad(sg, rows)
        if scale_kind == "int":
            m.alpha = kw.get("alpha")
            m.max_scale = max(int(sg.max()), 1) if sg.numel() else None
    rows = m.weight_scale.shape[0]
    m.bias = None if b is None else _pad(b.contiguous(), rows)
    return m


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [n, ...] with zero rows appended up to `rows` (any dtype, fp8 included)."""
    if t.shape[0] == rows:
        return t.contiguous()
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype)
    out[: t.shape[0]] = t
    return out


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
            if cls is None or not cls.PARTS:
                continue
            roles = parts_of(cls, ROLES)
            mods = {r: [layer.get_submodule(n) for n in names] for r, names in roles.items()}
            level = {}
            for r, ms in mods.items():
                kinds = {isinstance(m, QLinear) for m in ms}
                if (len(kinds) != 1 or not all(isinstance(m, (nn.Linear, QLinear)) or _is_conv1d(m) for m in ms)
                        or any(isinstance(m, QLinear) and m.scheme != "w8a8" for m in ms)):  # blocks are w8a8 only
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
                        dt = m.bias.dtype if m.bias is not None else torch.float32
                        w = (m.weight_q[:n_out].float() * m.weight_scale[:n_out, None]).to(dt)
                        if cls is QGPT2Block:  # its constructor reads HF Conv1D modules (weight [in, out])
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
    model_dir: Union[str, os.PathLike],
    model: Optional[nn.Module] = None,
    *,
    fuse: Optional[bool] = None,
    group_scales: str = "int",
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
    fuse: replace recognised transformer layers whose parts are all w8a8 by fused blocks
    (``nn.blocks``). None: as the model was saved (``zqkernels.json``), or True for a checkpoint
    written by another tool.
    group_scales: for another tool's int4 / int8 group weights: "int" (default; integer scales sg =
    rint(s / s_max * alpha) with quantize_weight's default alpha, schemes "w4a8" / "w8a8-group") or
    "float" (float32 ratios s / s_max: "w4a8-floatscale" / "w8a8-group" with scale="float").
    Raises NotImplementedError for other schemes (asymmetric, static activations, NVFP4 / other MX
    formats, int4 with fp8 activations, ...). Returns the model in eval mode.
    """
    if group_scales not in ("int", "float"):
        raise ValueError(f"load_quantized: group_scales must be 'int' or 'float', got {group_scales!r}")
    from safetensors.torch import load_file

    model_dir = os.fspath(model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    if not qc:
        raise ValueError(f"load_quantized: {model_dir}/config.json has no quantization_config")
    kinds = _check_config(qc)
    groups = qc.get("config_groups") or {}
    meta: dict[str, Any] = {}
    if os.path.exists(os.path.join(model_dir, _META)):
        with open(os.path.join(model_dir, _META)) as f:
            meta = json.load(f)
    layer_info: dict[str, dict[str, Any]] = meta.get("layers", {})
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
        for bad in ("weight_zero_point", "input_scale", "weight_g_idx", "weight_global_scale", "input_global_scale"):
            if k.endswith("." + bad):
                raise NotImplementedError(
                    f"load_quantized: tensor {k!r} belongs to a scheme not implemented here (asymmetric weights, "
                    f"static activations, act-order g_idx or global scales); implemented: {_SUPPORTED}"
                )
    warned = set()
    qnames = sorted(k[: -len(".weight_scale")] for k in sd if k.endswith(".weight_scale"))
    for name in qnames:
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
        t = {k: sd.pop(f"{name}.{k}") for k in ("weight", "weight_packed", "weight_shape", "weight_scale", "bias")
             if f"{name}.{k}" in sd}
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
        new = _qlinear_from(name, t, kinds[gname], layer_info.get(name, {}), dtype, group_scales)
        old_in, old_out = (old.weight.shape[0], old.nf) if conv else (old.in_features, old.out_features)
        if conv or groups[gname].get(CONV1D_KEY):
            new._zq_from_conv1d = True  # save_quantized writes the key again
        if (new.in_features, new.out_features) != (old_in, old_out):
            raise ValueError(
                f"load_quantized: {name} is [{old_out}, {old_in}] in the model but "
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
