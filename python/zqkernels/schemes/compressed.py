"""What every scheme's compressed-tensors mapping shares (docs/CHECKPOINTS.md): the argument
dicts, format names, INT4 word packing and the real group scale. Each scheme module writes and
reads its own layout with these; the HF glue (nn/checkpoint.py) only iterates the schemes."""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = [
    "ct_args", "ACT_INT8", "ACT_FP8", "FORMAT_INT", "FORMAT_PACKED", "FORMAT_FLOAT", "FORMAT_MXFP4",
    "MX_GROUP", "W_MXFP4", "pack_ct", "unpack_ct", "group_scale", "per_channel_tensors", "bias_tensor",
]

FORMAT_INT = "int-quantized"
FORMAT_PACKED = "pack-quantized"
FORMAT_FLOAT = "float-quantized"
FORMAT_MXFP4 = "mxfp4-pack-quantized"
MX_GROUP = 32  # MX block size: one E8M0 scale per 32 consecutive k


def ct_args(bits: int, kind: str, strategy: str, group_size: Optional[int] = None, dynamic: bool = False) -> dict[str, Any]:
    """A compressed-tensors QuantizationArgs dict (symmetric)."""
    return {
        "num_bits": bits, "type": kind, "symmetric": True, "group_size": group_size, "strategy": strategy,
        "dynamic": dynamic,
    }


ACT_INT8 = ct_args(8, "int", "token", dynamic=True)
ACT_FP8 = ct_args(8, "float", "token", dynamic=True)
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
