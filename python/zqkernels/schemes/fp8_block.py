"""Scheme "fp8-block": FP8 E4M3 activations quantized per token per group of 128 channels (dynamic) x
FP8 E4M3 weights with one float scale per 128 x 128 block: the format of DeepSeek-V3 / Qwen3-FP8
checkpoints, compressed-tensors' preset ``FP8_BLOCK`` (docs/FP8.md, "Block-scaled FP8").

Forward (``Scheme.apply`` / ``apply_quantized``, through ops/linear.py keyed by the recipe
"fp8_blockwise"): ``quantize_per_token_group(x, group_size=128, dtype=torch.float8_e4m3fn)`` (sx
[M, K / 128]) then the block-scaled GEMM ``y = sum_j sx[m, j] sw[n // 128, j] (xq wq^T)_j + bias``.
Fused blocks hand over activations quantized per token group: ``act_group_size`` tells the fused
row ops (nn/blocks.py) to take ``group_size=128``.

State: ``weight_q`` float8_e4m3fn [Np, K], ``weight_scale`` float32 [ceil(Np / 128), K / 128]
(row-major), ``bias`` [Np] in the model's dtype (or None); Np = out_features padded to a multiple of 8
with zero rows (which fall in the last row block and never change its scale: ceil(Np / 128) ==
ceil(out_features / 128)). Every layer needs in_features % 128 == 0.

compressed-tensors: format "float-quantized", weights {8, float, strategy "block", block_structure
[128, 128], symmetric, static}, input_activations {8, float, strategy "group", group_size 128, dynamic};
tensors ``weight`` (E4M3 [N, K]) and ``weight_scale`` ([ceil(N / 128), K / 128]).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..formats import GemmSpec
from ..reference.block import BLOCK, dequantize_fp8_block_ref, quantize_weight_fp8_block_ref
from ..reference.quantize import quantize_per_token_fp8_ref
from .base import Scheme, pad_rows, register
from .compressed import (
    ACT_FP8_GROUP,
    FORMAT_FLOAT,
    FORMAT_NAIVE,
    W_FP8_BLOCK,
    CTLayer,
    accepts_args,
    bias_tensor,
    describe_group,
)

__all__ = ["FP8Block"]

_F8 = torch.float8_e4m3fn


def _block_rows(rows: int) -> int:
    return -(-rows // BLOCK)


def quantize_token_group_fp8(x2: torch.Tensor, group_size: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, K] -> (xq float8_e4m3fn [M, K], sx float32 [M, K / group_size]): the per-token FP8 rule
    on each group of `group_size` channels of a row (``reference.token_group``'s definition)."""
    try:
        from ..reference.token_group import quantize_per_token_group_ref
    except ImportError:  # the token-group reference not there yet: the same rule, per group as a row
        M, K = x2.shape
        q, s = quantize_per_token_fp8_ref(x2.reshape(M * (K // group_size), group_size))
        return q.reshape(M, K), s.reshape(M, K // group_size)
    return quantize_per_token_group_ref(x2, group_size=group_size, dtype=_F8)


@register
class FP8Block(Scheme):
    name = "fp8-block"
    description = "fp8 e4m3 per-token-group (128) activations x fp8 e4m3 128x128 block-scaled weights"
    ct_layout = (
        "fp8 e4m3 128x128 block weights (strategy block, block_structure [128, 128]) with fp8 per-token-group "
        "(group_size 128) dynamic activations, format float-quantized"
    )
    option_names = ("block_size",)
    act_dtype = torch.float8_e4m3fn
    act_fmt = "fp8"
    #: activations are quantized per token per group of this many channels (sx [M, K / 128]); fused
    #: blocks pass it to the row ops as group_size=. None (the base's absence) means per token.
    act_group_size: ClassVar[int] = BLOCK
    fixed_dtype_buffers = ("weight_q", "weight_scale")

    # -- options -----------------------------------------------------------------------------------
    def _check_options(self, op: str) -> None:
        b = self.block_size
        if b is None:
            object.__setattr__(self, "block_size", BLOCK)
        elif isinstance(b, bool) or b != BLOCK:
            raise ValueError(
                f"{op}: scheme {self.name!r} takes block_size {BLOCK} only (128 x 128 weight blocks, activations "
                f"in groups of 128 channels: the DeepSeek-V3 / compressed-tensors FP8_BLOCK format), got {b!r}"
            )

    def for_layer(self, op: str, out_features: int, in_features: int) -> "FP8Block":
        if in_features % BLOCK != 0:
            raise ValueError(
                f"{op}: scheme {self.name!r} needs in_features % {BLOCK} == 0 ({BLOCK} x {BLOCK} weight blocks, "
                f"activations quantized per group of {BLOCK} channels), got a layer [out_features, in_features] = "
                f"[{out_features}, {in_features}]; leave this layer in float (quantize_model(skip=...), "
                "quantize_(module_configs={name: None})) or use scheme 'fp8' (per-channel scales)"
            )
        return self

    def describe(self) -> str:
        return f"block_size={self.block_size}x{self.block_size}, act_group_size={self.act_group_size}"

    # -- the GEMM ----------------------------------------------------------------------------------
    def spec(self) -> GemmSpec:
        return GemmSpec(act="fp8_e4m3", weight="fp8_e4m3", act_scale="token_group", weight_scale="block",
                        group_size=BLOCK)

    # -- weights -----------------------------------------------------------------------------------
    def weight_format(self) -> dict[str, Any]:
        return {"fmt": "fp8", "block_size": BLOCK}

    def dequant_format(self) -> str:
        return "fp8"  # with block_size=128 (dequantize's keyword): see dequantize below

    def dequantize(self, m: Any) -> torch.Tensor:
        n = m.out_features
        b = m._buffers
        return dequantize_fp8_block_ref(b["weight_q"][:n], b["weight_scale"][: _block_rows(n)])

    def rows_per_buffer_row(self, buffer):
        """weight_scale: one row per 128 output rows (a fused block's parts split at multiples of 128)."""
        return BLOCK if buffer == "weight_scale" else 1

    def cols_per_buffer_col(self, buffer):
        """weight_scale: one column per 128 input channels."""
        return BLOCK if buffer == "weight_scale" else super().cols_per_buffer_col(buffer)

    def buffer_layout(self, rows, in_features):
        return {
            "weight_q": ((rows, in_features), _F8),
            "weight_scale": ((_block_rows(rows), in_features // BLOCK), torch.float32),
        }

    def load(self, m: Any, quantized: tuple, bias: Any) -> None:
        """weight_q rows padded to the layer's rows; weight_scale holds whole row blocks already (the
        padding rows fall in the last block), so it must be [ceil(out_features / 128), K / 128]."""
        rows = m._buffers["weight_q"].shape[0]
        wq, sw = quantized[0], quantized[1]
        want = (_block_rows(rows), m.in_features // BLOCK)
        if tuple(sw.shape) != want or sw.dtype != torch.float32:
            raise ValueError(
                f"{self.name}: weight_scale must be float32 [ceil(out_features / 128), in_features / 128] == "
                f"{list(want)} for a layer [{m.out_features}, {m.in_features}], got {sw.dtype} {list(sw.shape)} "
                "(a fused block's merged GEMM: its parts' block rows line up only when every part but the last has "
                "out_features % 128 == 0)"
            )
        m.weight_q = pad_rows(wq, rows)
        m.weight_scale = sw.contiguous()
        m.bias = None if bias is None else pad_rows(bias.detach(), rows).clone()
        self.init_layer_state(m)

    # -- fake quantization -------------------------------------------------------------------------
    def fake_weight(self, w):
        return dequantize_fp8_block_ref(*quantize_weight_fp8_block_ref(w))

    def fake_act(self, x2):
        q, s = quantize_token_group_fp8(x2, self.act_group_size)
        return q.float() * s.repeat_interleave(self.act_group_size, 1)

    # -- compressed-tensors ------------------------------------------------------------------------
    def to_compressed_tensors(self, m, name):
        n = m.out_features
        out = {
            "weight": m.weight_q[:n].detach().cpu().contiguous(),
            "weight_scale": m.weight_scale[: _block_rows(n)].detach().cpu().contiguous(),
        }
        spec = {"format": FORMAT_FLOAT, "weights": dict(W_FP8_BLOCK), "input_activations": dict(ACT_FP8_GROUP)}
        return bias_tensor(m, out), spec, {"scheme": self.name}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """FP8 weights with strategy "block" in float-quantized (or naive / mixed-precision) layout, with
        dynamic FP8 per-token-group (128) activations or none; a block_structure other than [128, 128]
        raises NotImplementedError."""
        if not accepts_args(group, fmt, bits=8, kind="float", strategies=("block",),
                            formats=(FORMAT_FLOAT, FORMAT_NAIVE), act_kind="float", act_group=BLOCK):
            return False
        bs = list((group.get("weights") or {}).get("block_structure") or [])
        if bs != [BLOCK, BLOCK]:
            raise NotImplementedError(
                f"load_quantized: {describe_group(gname, group, fmt)}: scheme {cls.name!r} reads FP8 block weights "
                f"with block_structure [{BLOCK}, {BLOCK}] only, got {bs}"
            )
        return True

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        w = tensors.get("weight")
        if w is None or w.dtype != _F8 or w.dim() != 2:
            got = "none" if w is None else f"{w.dtype} {list(w.shape)}"
            raise ValueError(f"load_quantized: {name}.weight must be float8_e4m3fn [N, K] for its FP8 block group, got {got}")
        N, K = w.shape
        scheme = cls().for_layer(f"load_quantized: {name}", N, K)
        s = tensors.get("weight_scale")
        want = (_block_rows(N), K // BLOCK)
        if s is None or tuple(s.shape) != want or not s.is_floating_point():
            got = "none" if s is None else f"{s.dtype} {list(s.shape)}"
            raise ValueError(
                f"load_quantized: {name}.weight_scale must be float [ceil(N / 128), K / 128] == {list(want)} for "
                f"weight [{N}, {K}], got {got}"
            )
        tensors_out = {"weight_q": w.contiguous(), "weight_scale": s.to(torch.float32).contiguous()}
        return CTLayer(scheme, N, K, tensors_out, tensors.get("bias"))
