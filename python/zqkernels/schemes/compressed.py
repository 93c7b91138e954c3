"""What every scheme's compressed-tensors mapping shares (docs/CHECKPOINTS.md): the argument
dicts, format names, INT4 word packing and the real group scale. Each scheme module writes and
reads its own layout with these; the HF glue (nn/checkpoint.py) only iterates the schemes."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

__all__ = [
    "ct_args", "ACT_INT8", "ACT_FP8", "FORMAT_INT", "FORMAT_PACKED", "FORMAT_FLOAT", "FORMAT_MXFP4",
    "MX_GROUP", "W_MXFP4", "pack_ct", "unpack_ct", "group_scale", "per_channel_tensors", "bias_tensor",
    # loading
    "FORMAT_NAIVE", "FORMAT_MIXED", "CT_TENSORS", "supported", "CTLayer", "describe_group", "group_format",
    "accepts_args", "token_acts", "group_acts", "int_codes", "per_channel_from_ct", "W_FP8_BLOCK", "ACT_FP8_GROUP",
]

FORMAT_INT = "int-quantized"
FORMAT_PACKED = "pack-quantized"
FORMAT_FLOAT = "float-quantized"
FORMAT_MXFP4 = "mxfp4-pack-quantized"
FORMAT_NAIVE = "naive-quantized"
FORMAT_MIXED = "mixed-precision"  # a model with several config groups (each names its own format)
MX_GROUP = 32  # MX block size: one E8M0 scale per 32 consecutive k


def ct_args(bits: int, kind: str, strategy: str, group_size: Optional[int] = None, dynamic: bool = False) -> dict[str, Any]:
    """A compressed-tensors QuantizationArgs dict (symmetric)."""
    return {
        "num_bits": bits, "type": kind, "symmetric": True, "group_size": group_size, "strategy": strategy,
        "dynamic": dynamic,
    }


ACT_INT8 = ct_args(8, "int", "token", dynamic=True)
ACT_FP8 = ct_args(8, "float", "token", dynamic=True)
#: compressed-tensors' FP8 block weights and per-token-group activations (its preset "FP8_BLOCK":
#: DeepSeek-V3 / Qwen3-FP8's format; weight_scale [ceil(N / 128), K / 128])
W_FP8_BLOCK = {**ct_args(8, "float", "block"), "block_structure": [128, 128]}
ACT_FP8_GROUP = ct_args(8, "float", "group", 128, dynamic=True)
#: compressed-tensors' MXFP4 weights (its preset "MXFP4A16" / "MXFP4xFP8" weights, as it writes them)
W_MXFP4 = {**ct_args(4, "float", "group", MX_GROUP), "scale_dtype": "torch.uint8"}


def pack_ct(codes: torch.Tensor) -> torch.Tensor:
    """INT4 codes int8 [N, K] (-8..7), K % 8 == 0 -> compressed-tensors' ``weight_packed`` int32 [N, K / 8]:
    word j holds k = 8 j .. 8 j + 7, code of k + 8 (offset binary) in bits 4 (k % 8) .. 4 (k % 8) + 3
    (``compressed_tensors...pack_to_int32(codes, 4)``)."""
    N, K = codes.shape
    u = (codes.to(torch.int64) + 8).reshape(N, K // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64)
    words = (u << shifts).sum(-1)  # < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()


def unpack_ct(packed: torch.Tensor, N: int, K: int, bits: int = 4) -> torch.Tensor:
    """Inverse of ``pack_ct`` (bits 4: int32 [N, ceil(K / 8)] -> codes int8 [N, K], -8..7), and of
    compressed-tensors' 8-bit packing (bits 8: 4 values per word, value + 128 in bits 8 i .. 8 i + 7)."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    codes = ((w[..., None] >> shifts) & ((1 << bits) - 1)) - (1 << (bits - 1))
    return codes.reshape(N, -1)[:, :K].to(torch.int8).contiguous()


def group_scale(sw: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
    """The real per-group scale s = sw[n] * sg[n, j] (exact in float64: sw has 24 significant bits, sg
    is an integer of at most 16 bits or a float32), rounded once to float32 [N, G]."""
    return (sw.double()[:, None] * sg.double()).to(torch.float32).contiguous()


def bias_tensor(m: Any, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    b = m._buffers.get("bias")
    if b is not None:
        out["bias"] = b[: m.out_features].detach().cpu().contiguous()
    return out


def per_channel_tensors(m: Any) -> dict[str, torch.Tensor]:
    """weight [N, K] and weight_scale [N, 1] (+ bias) of a per-channel layer, padded rows dropped."""
    n = m.out_features
    out = {
        "weight": m.weight_q[:n].detach().cpu().contiguous(),
        "weight_scale": m.weight_scale[:n].detach().cpu().reshape(n, 1).contiguous(),
    }
    return bias_tensor(m, out)


# ------------------------------------------------------------------------------------------------
# Loading: what the schemes' ``ct_accepts`` / ``from_compressed_tensors`` share

#: The tensors of one layer that a scheme's mapping may read, by local name (``<module>.<name>``).
CT_TENSORS = ("weight", "weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "bias")

#: What load_quantized reads (its NotImplementedError for any other config group lists it).
def supported() -> str:
    """What load_quantized reads, for its errors: each registered scheme's ``ct_layout``."""
    from .base import SCHEMES

    layouts = "; ".join(f"{cls.ct_layout} ({name})" for name, cls in sorted(SCHEMES.items()) if cls.ct_layout)
    return (
        f"{layouts}; all static (symmetric unless said), with dynamic per-token activations of the weights' kind "
        "(int8 / fp8) or none (weight-only: run with dynamic int8 / fp8 activations)"
    )


class CTLayer(NamedTuple):
    """One layer read from a compressed-tensors checkpoint by ``Scheme.from_compressed_tensors``: the
    layer-resolved scheme, the shape, the scheme's buffers ({buffer name: tensor}, ``buffer_layout``'s
    names, unpadded rows: what ``QLinear.from_quantized`` installs with ``scheme.load``) and the bias."""

    scheme: Any
    out_features: int
    in_features: int
    tensors: dict[str, torch.Tensor]
    bias: Optional[torch.Tensor]


def group_format(group: dict[str, Any], fmt: Any) -> Any:
    """A config group's format: its own, else the quantization_config's."""
    return group.get("format") or fmt


def describe_group(gname: str, group: dict[str, Any], fmt: Any) -> str:
    """A config group for error messages: its format, weights and input_activations."""
    w, a = group.get("weights") or {}, group.get("input_activations") or {}
    block = f", block_structure {w.get('block_structure')}" if w.get("block_structure") else ""
    agroup = f", group_size {a.get('group_size')}" if a and a.get("group_size") else ""
    return (
        f"config group {gname!r}: format={group_format(group, fmt)!r}, weights={{bits {w.get('num_bits')}, "
        f"{w.get('type')}, {w.get('strategy')}, group_size {w.get('group_size')}{block}, "
        f"symmetric={w.get('symmetric')}}}, input_activations="
        + (f"{{bits {a.get('num_bits')}, {a.get('type')}, {a.get('strategy')}{agroup}, dynamic={a.get('dynamic')}}}"
           if a else "None")
    )


def token_acts(a: Optional[dict[str, Any]], kind: str) -> bool:
    """input_activations absent (weight-only) or dynamic symmetric 8-bit per token of `kind` ("int" / "float")."""
    return not a or (
        a.get("num_bits") == 8 and a.get("type") == kind and bool(a.get("symmetric", True))
        and a.get("strategy") == "token" and a.get("dynamic") is True
    )


def group_acts(a: Optional[dict[str, Any]], kind: str, group_size: int) -> bool:
    """input_activations absent (weight-only) or dynamic symmetric 8-bit of `kind` per token per group of
    `group_size` channels (compressed-tensors' strategy "group" on activations)."""
    return not a or (
        a.get("num_bits") == 8 and a.get("type") == kind and bool(a.get("symmetric", True))
        and a.get("strategy") == "group" and a.get("group_size") == group_size and a.get("dynamic") is True
    )


def accepts_args(
    group: dict[str, Any], fmt: Any, *, bits: int, kind: str, strategies: tuple[str, ...], formats: tuple[str, ...],
    act_kind: str, act_group: Optional[int] = None,
) -> bool:
    """Does a config group hold symmetric static weights of `bits` / `kind` ("int" / "float") with one of
    `strategies` ("group" with a group_size, "block" with a block_structure), in one of `formats` (or
    "mixed-precision"), and activations per ``token_acts(act_kind)`` (``group_acts(act_kind, act_group)``
    when act_group is given)?"""
    gfmt = group_format(group, fmt)
    w = group.get("weights") or {}
    if gfmt not in formats and gfmt != FORMAT_MIXED:
        return False
    if not (w.get("symmetric", True) and not w.get("dynamic") and not group.get("output_activations")):
        return False
    strategy = w.get("strategy")
    if w.get("num_bits") != bits or w.get("type") != kind or strategy not in strategies:
        return False
    if strategy == "group" and not w.get("group_size"):
        return False
    if strategy == "block" and not w.get("block_structure"):
        return False
    if act_group is not None:
        return group_acts(group.get("input_activations"), act_kind, act_group)
    return token_acts(group.get("input_activations"), act_kind)


def int_codes(name: str, t: dict[str, torch.Tensor], bits: int) -> tuple[torch.Tensor, int, int]:
    """A layer's integer weight codes int8 [N, K] -> (codes, N, K): compressed-tensors' int32 packing of
    `bits`-bit values (``weight_packed`` + ``weight_shape``: pack-quantized) unpacked, or the int8
    ``weight`` tensor (int-quantized / naive-quantized). Codes outside the `bits`-bit range raise."""
    if "weight_packed" in t:
        shape = t.get("weight_shape")
        if shape is None:
            raise ValueError(f"load_quantized: {name}.weight_packed without {name}.weight_shape")
        N, K = (int(v) for v in shape.tolist())
        words = (K * bits + 31) // 32
        packed = t["weight_packed"]
        if packed.dtype != torch.int32 or tuple(packed.shape) != (N, words):
            raise ValueError(
                f"load_quantized: {name}.weight_packed is {packed.dtype} {list(packed.shape)}, "
                f"expected int32 [{N}, {words}] for weight_shape [{N}, {K}] and {bits} bits"
            )
        codes = unpack_ct(packed, N, K, bits)
    else:
        codes = t["weight"]
        if codes.dtype != torch.int8:
            raise ValueError(f"load_quantized: {name}.weight is {codes.dtype}, expected {torch.int8} for its config group")
        N, K = codes.shape
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits < 8 and codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"load_quantized: {name}: int{bits} weights outside [{lo}, {hi}]")
    return codes, N, K


def per_channel_from_ct(name: str, t: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] (int8 codes, packed or not, or ``dtype`` itself for float weights) and float32
    weight_scale [N] of a per-channel layer (a per-tensor scale repeated for each channel: exact)."""
    if dtype == torch.int8:
        codes, N, K = int_codes(name, t, 8)
    else:
        codes = t["weight"]
        if codes.dtype != dtype:
            raise ValueError(f"load_quantized: {name}.weight is {codes.dtype}, expected {dtype} for its config group")
        N, K = codes.shape
    s = t["weight_scale"]
    if s.numel() == 1:
        s = s.reshape(1).expand(N)  # per tensor: the same scale for every channel (exact)
    if s.numel() != N:
        raise ValueError(f"load_quantized: {name}.weight_scale has shape {list(s.shape)}, expected [{N}, 1]")
    return codes.contiguous(), s.reshape(N).to(torch.float32).contiguous()
