"""Scheme "w4a8-zp": INT4 group-wise weights with integer scales AND group zero points (the two-level
format of QServe's progressive quantization; docs/W4A8.md, "Zero-point INT4") x INT8 per-token
activations, on ``w4a8_gemm``.

Per output channel a float scale ``sw`` (INT8 level 1 in [-119, 119]); per group an integer scale s
in 1..16 and a zero point z in 0..15; unsigned codes u; ``w ~ sw * s * (u - z)``. The kernels turn
every code into its exact int8 value ``s (u - z)`` in registers and run a plain int8 product sum:
the same instruction count as the symmetric format's fused mode (w4a8 with alpha = 16), a finer
grid for skewed groups. Measured more accurate than the symmetric format on SmolLM2-135M and on
all-MiniLM-L6-v2 (docs/W4A8.md).

State: ``weight_q`` uint8 [N, K // 2] (codes u - 8, layout m16k32, as w4a8), ``weight_scale``
float32 [N], ``weight_group_scale`` int16 [N, K // group_size] = s | z << 8, ``bias``. Option:
``group_size`` (32, 64, 128, 256, per channel). Shape rules of w4a8 (N % 16, K % 64).

Checkpoints: compressed-tensors' asymmetric INT4 group weights (pack-quantized, ``weight_zero_point``
packed along the output channels as compressed-tensors packs it): ``weight_scale = sw * s`` (exact:
sw has 19 significant bits) and zero point ``z - 8``. Loading factors each row's real scales back into
``sw`` times integers 1..16 (exact for ours); a checkpoint whose scales do not factor so raises.
"""

from __future__ import annotations

from typing import Any

import torch

from ..reference.zero_point import (
    ZP_MAX_SCALE,
    check_zp_values,
    pack_scale_zero,
    quantize_int4_zp_ref,
    split_scale_zero,
    zp_weight64,
)
from .base import layer_scheme, register
from .compressed import (
    ACT_INT8,
    FORMAT_PACKED,
    CTLayer,
    accepts_args,
    bias_tensor,
    ct_args,
    group_scale,
    int_codes,
    pack_ct,
    unpack_ct,
)
from .w4a8 import _W4A8NoAlpha


def _pack_zero_points(zct: torch.Tensor) -> torch.Tensor:
    """Zero points int8 [N, G] (-8..7, compressed-tensors' convention) -> int32 [N / 8, G], packed along
    N as compressed-tensors' ``pack_to_int32(zp, 4, packed_dim=0)`` does."""
    return pack_ct(zct.t().contiguous()).t().contiguous()


def _unpack_zero_points(packed: torch.Tensor, N: int, G: int) -> torch.Tensor:
    return unpack_ct(packed.t().contiguous(), G, N).t().contiguous()


def factor_scales(name: str, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real group scales s [N, G] (float32, > 0) -> (sw float32 [N], si int [N, G] in 1..16) with
    ``sw * si == s`` exactly: per row the largest sw = max(s) / k, k = 1..16, that divides every scale
    of the row into an integer in 1..16 (the quantizer's canonical factorization, ``zp_canonical``, so
    our checkpoints load bit for bit). ValueError naming the layer when a row has none."""
    s64 = s.double()
    smax = s64.amax(dim=1, keepdim=True)
    best_k = torch.zeros(s.shape[0], dtype=torch.int64)
    for k in range(ZP_MAX_SCALE, 0, -1):  # the smallest k that works wins: overwrite downwards
        sw = (smax / k).float().double()  # the float32 sw a layer stores
        r = s64 / sw
        ok = ((r == torch.round(r)) & (r >= 1) & (r <= ZP_MAX_SCALE)).all(dim=1)
        best_k = torch.where(ok, torch.full_like(best_k, k), best_k)
    if bool((best_k == 0).any()):
        row = int((best_k == 0).nonzero()[0])
        raise ValueError(
            f"load_quantized: {name}: row {row}'s group scales do not factor into one float32 per-channel scale times "
            f"integers in 1..{ZP_MAX_SCALE} (scheme 'w4a8-zp' needs them: its kernels multiply the codes by the integer "
            "scales in registers); such asymmetric INT4 checkpoints are not supported"
        )
    sw = (smax[:, 0] / best_k.double()).float()
    si = torch.round(s64 / sw.double()[:, None]).to(torch.int32)
    return sw.contiguous(), si


@register
class W4A8ZeroPoint(_W4A8NoAlpha):
    name = "w4a8-zp"
    description = "int8 per-token activations x int4 group-wise weights, integer scales 1..16 with group zero points"
    ct_layout = "asymmetric int4 group weights (weight_zero_point) whose scales factor into a per-channel float x 1..16"
    fixed_scale = "zp"

    def weight_format(self):
        return {"fmt": "int4", "group_size": self.group(), "scale": "zp"}

    def _quantize_ref(self, w, g, alpha):
        return quantize_int4_zp_ref(w, g)

    def fake_weight(self, w):
        return zp_weight64(*quantize_int4_zp_ref(w, self.group(w.shape[1]))).float()

    def to_compressed_tensors(self, m, name):
        n, K = m.out_features, m.in_features
        sw = m.weight_scale[:n].detach().cpu()
        s, z = split_scale_zero(m.weight_group_scale[:n].detach().cpu())
        codes = self.unpack_weight(m.weight_q.detach().cpu(), n, K)
        out = {
            "weight_packed": pack_ct(codes),
            "weight_shape": torch.tensor([n, K], dtype=torch.int64),
            "weight_scale": group_scale(sw, s),  # exact: sw has 19 significant bits, s <= 16
            "weight_zero_point": _pack_zero_points((z - 8).to(torch.int8)),
        }
        args = {**ct_args(4, "int", "group", m.group_size), "symmetric": False}
        spec = {"format": FORMAT_PACKED, "weights": args, "input_activations": ACT_INT8}
        return bias_tensor(m, out), spec, {"scheme": self.name, "group_size": m.group_size}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """Asymmetric static int4 group weights, pack-quantized, with int8 per-token activations or none."""
        w = group.get("weights") or {}
        if w.get("symmetric", True):
            return False
        return accepts_args({**group, "weights": {**w, "symmetric": True}}, fmt, bits=4, kind="int",
                            strategies=("group",), formats=(FORMAT_PACKED,), act_kind="int")

    @classmethod
    def ct_foreign(cls, group_scales):
        return True

    @classmethod
    def from_compressed_tensors(cls, name, tensors: dict[str, Any], info, group_scales):
        codes, N, K = int_codes(name, tensors, 4)
        s = tensors["weight_scale"]
        if s.dim() != 2 or s.shape[0] != N or s.shape[1] == 0 or K % s.shape[1] != 0:
            raise ValueError(f"load_quantized: {name}.weight_scale has shape {list(s.shape)} for a weight [{N}, {K}]")
        G = s.shape[1]
        zp = tensors.get("weight_zero_point")
        if zp is None:
            raise ValueError(f"load_quantized: {name} is asymmetric but has no weight_zero_point")
        if zp.dtype == torch.int32 and tuple(zp.shape) == (-(-N // 8), G):
            zct = _unpack_zero_points(zp, N, G)
        elif zp.dtype == torch.int8 and tuple(zp.shape) == (N, G):
            zct = zp
        else:
            raise ValueError(f"load_quantized: {name}.weight_zero_point is {zp.dtype} {list(zp.shape)}, expected int32 "
                             f"[{-(-N // 8)}, {G}] (packed) or int8 [{N}, {G}]")
        s = s.to(torch.float32)
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError(f"load_quantized: {name}.weight_scale must be finite and positive for scheme 'w4a8-zp'")
        try:
            qs = layer_scheme("QLinear", cls.name, N, K, {"group_size": K // G})
        except ValueError as e:
            raise NotImplementedError(
                f"load_quantized: {name} [{N}, {K}] with group size {K // G} cannot be a 'w4a8-zp' QLinear: {e}"
            ) from None
        sw, si = factor_scales(name, s)
        sz = pack_scale_zero(si, zct.to(torch.int32) + 8)
        wq = cls.pack_weight(codes)
        check_zp_values(f"load_quantized: {name}", wq, sz, K)
        return CTLayer(qs, N, K, {"weight_q": wq, "weight_scale": sw, "weight_group_scale": sz}, tensors.get("bias"))
