"""Scheme "w4a8-fp": ZeroQuant-FP W4A8, FP4 E2M1 weights with group scales x FP8 E4M3 per-token
activations (``w4a8_fp_gemm``; docs/FP8.md).

Options: ``group_size`` 32, 64, 128 or None (one group per row: per channel; QLinear's keyword
default is 128 and in_features means per channel), ``scale_policy`` "m2" (default), "m1"
(power-of-two group ratios, int8 exponents) or "free" (float32 ratios). Shape rules of the packed
layout m16k64: out_features % 16 == 0 and in_features % 64 == 0 (and group_size dividing
in_features).

State: ``weight_q`` uint8 [N, K // 2] (packed FP4 codes), ``weight_scale`` float32 [N],
``weight_group_scale`` [N, K // group_size] (int8 exponents for m1 / m2, float32 ratios for free),
``bias`` [N] in the model's dtype (or None).
"""

from __future__ import annotations

from typing import Any

import torch

from ..formats import GemmSpec
from ..reference.quantize import (
    FP4_EXP_MAX,
    FP4_EXP_MIN,
    e2m1_decode,
    expand_groups,
    fp4_to_fp8_float_ref,
    pack_fp4,
    quantize_fp4_ref,
    unpack_fp4,
)
from .base import layer_scheme, register
from .compressed import (
    ACT_FP8,
    FORMAT_MXFP4,
    MX_GROUP,
    W_MXFP4,
    CTLayer,
    bias_tensor,
    describe_group,
    group_format,
)
from .grouped import GroupedScheme

GROUP_SIZES = (32, 64, 128)
POLICIES = ("m2", "m1", "free")
_FP8 = torch.float8_e4m3fn


@register
class W4A8FP(GroupedScheme):
    name = "w4a8-fp"
    description = "fp8 e4m3 per-token activations x fp4 e2m1 group-wise weights"
    ct_layout = "FP4 E2M1 weights with E8M0 scales per 32 (scale_policy m1), format mxfp4-pack-quantized, with fp8 activations"
    option_names = ("group_size", "scale_policy")
    fixed_dtype_buffers = ("weight_scale", "weight_group_scale")
    act_dtype = _FP8
    act_fmt = "fp8"
    pads_rows = False
    packed = ("FP4", "m16k64")
    GROUP_SIZES = GROUP_SIZES

    def _check_options(self, op):
        g = self.group_size
        if g is not None and g not in GROUP_SIZES and getattr(self, "_k", None) != g:
            raise ValueError(f"{op}: group_size must be one of {GROUP_SIZES} or None (per channel), got {g!r}")
        if isinstance(g, bool):
            raise ValueError(f"{op}: group_size must be one of {GROUP_SIZES} or None (per channel), got {g!r}")
        policy = self.scale_policy
        if policy is None:
            policy = "m2"
        if not isinstance(policy, str):
            raise TypeError(f"{op}: scale_policy must be a str, got {type(policy).__name__}")
        if policy.lower() not in POLICIES:
            raise ValueError(f"{op}: scale_policy must be one of {POLICIES}, got {policy!r}")
        object.__setattr__(self, "scale_policy", policy.lower())

    @classmethod
    def from_layer_options(cls, op: str, out_features: int, in_features: int, **options: Any) -> "W4A8FP":
        N, K = out_features, in_features
        g = cls._layer_group(op, N, K, options.get("group_size"))
        policy = options.get("scale_policy")
        policy = "m2" if policy is None else policy
        if not isinstance(policy, str) or policy.lower() not in POLICIES:
            raise ValueError(f"{op}: scheme 'w4a8-fp' needs scale_policy in {POLICIES}, got {policy!r}")
        cls._check_shape(op, N, K, g)
        return cls._layer_instance(op, g, K, scale_policy=policy)

    def describe(self):
        return f"{super().describe()}, scale_policy={self.scale_policy}"

    def spec(self):
        return GemmSpec(act="fp8_e4m3", weight="fp4_e2m1", weight_scale="group", group_size=self.group_size or self.DEFAULTS["group_size"],
                        scale_kind="float" if self.scale_policy == "free" else "pow2")

    def weight_format(self):
        return {"fmt": "fp4", "group_size": self.group(), "scale": self.scale_policy}

    def dequant_format(self):
        return "fp4"

    def unpack_weight(self, wq, out_features, in_features):
        return unpack_fp4(wq, wq.shape[0], in_features)[:out_features]

    @classmethod
    def pack_weight(cls, codes):
        return pack_fp4(codes.contiguous())

    def buffer_layout(self, rows, in_features):
        sg = torch.float32 if self.scale_policy == "free" else torch.int8
        return {
            "weight_q": ((rows, in_features // 2), torch.uint8),
            "weight_scale": ((rows,), torch.float32),
            "weight_group_scale": ((rows, in_features // self.group_size), sg),
        }

    def fake_weight(self, w):
        K = w.shape[1]
        codes, sw, sg = quantize_fp4_ref(w, self.group(K), self.scale_policy)
        if sg.dtype == torch.int8:  # dequantize's fp4 branch: e2m1 * 2^e (exact), times sw
            v = torch.ldexp(e2m1_decode(codes), expand_groups(sg, K).to(torch.int32))
        else:
            v = fp4_to_fp8_float_ref(codes, sg).float()
        return v * sw.reshape(-1, 1)

    def to_compressed_tensors(self, m, name):
        """scale_policy "m1" in compressed-tensors' mxfp4-pack-quantized layout, exactly: every group
        scale sw[n] * 2^e[n, j] is a power of two (m1: sw is one too), written as its E8M0 byte 127 +
        log2 for each of the g / 32 MX blocks of the group; the E2M1 codes (same code points: magnitude
        index 0..7 of 0, .5, 1, 1.5, 2, 3, 4, 6, sign in bit 3) two per byte, even k in the low nibble."""
        policy = self.scale_policy
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
        codes = self.unpack_weight(m.weight_q.detach().cpu(), n, K)
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
            "weight_scale": (exp + 127).to(torch.uint8).repeat_interleave(g // MX_GROUP, dim=1).contiguous(),
        }
        spec = {"format": FORMAT_MXFP4, "weights": dict(W_MXFP4), "input_activations": ACT_FP8}
        return bias_tensor(m, out), spec, {"scheme": self.name, "group_size": g, "scale_policy": policy}

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """mxfp4-pack-quantized: FP4 E2M1 weights with E8M0 scales per 32, fp8 per-token or no activations
        (as "m1"); any other argument of that format, and every other FP4 / MX format, raises."""
        gfmt = group_format(group, fmt)
        w, a = group.get("weights") or {}, group.get("input_activations") or {}
        if gfmt == FORMAT_MXFP4:
            akind = (a.get("num_bits"), a.get("type"), a.get("strategy"), a.get("dynamic"), a.get("symmetric", True))
            if (w.get("num_bits"), w.get("type"), w.get("strategy"), w.get("group_size")) == (4, "float", "group", MX_GROUP) \
                    and w.get("symmetric", True) and not w.get("dynamic") and not group.get("output_activations") \
                    and (not a or akind == (8, "float", "token", True, True)):
                return True
            raise NotImplementedError(
                f"load_quantized: {describe_group(gname, group, fmt)}; expected for {FORMAT_MXFP4}: weights {{bits 4, "
                "float, group, group_size 32, symmetric}} with input_activations {bits 8, float, token, dynamic=True} "
                "or None (w4a8-fp, m1)"
            )
        if isinstance(gfmt, str) and ("fp4" in gfmt or "mxfp" in gfmt):
            raise NotImplementedError(
                f"load_quantized: {describe_group(gname, group, fmt)}: {gfmt} has no zqkernels scheme: nvfp4 holds an "
                "FP8 E4M3 scale per 16 weights times a float32 global scale, other MX formats are not FP4; our w4a8-fp "
                "holds a float32 (m2, free) or power-of-two (m1) scale per channel times power-of-two / float ratios "
                "per group of 32-128; only mxfp4-pack-quantized maps onto it (as m1) (docs/CHECKPOINTS.md)"
            )
        return False

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        """Inverse of ``to_compressed_tensors``: scale_policy "m1" from mxfp4-pack-quantized tensors. The
        group size is ours from zqkernels.json (each group's g / 32 blocks must share their scale), 32
        otherwise; a row's sw = 2^(its largest exponent), e = the others relative to it, which must lie in
        [-5, 0] (the kernel's exponent range); a row of zero codes gets sw = 0, e = 0 (as quantize_weight
        gives it)."""
        packed, sc = tensors.get("weight_packed"), tensors["weight_scale"]
        if packed is None or packed.dtype != torch.uint8 or packed.dim() != 2:
            got = "none" if packed is None else f"{packed.dtype} {list(packed.shape)}"
            raise ValueError(f"load_quantized: {name}.weight_packed: expected uint8 [N, K / 2] (mxfp4-pack-quantized), got {got}")
        N, K = packed.shape[0], 2 * packed.shape[1]
        if sc.dtype != torch.uint8 or tuple(sc.shape) != (N, K // MX_GROUP) or K % MX_GROUP:
            raise ValueError(
                f"load_quantized: {name}.weight_scale: expected uint8 E8M0 [{N}, {K // MX_GROUP}] for weight_packed "
                f"[{N}, {K // 2}], got {sc.dtype} {list(sc.shape)}"
            )
        if bool((sc == 255).any()):
            raise ValueError(f"load_quantized: {name}.weight_scale: expected E8M0 exponents 0..254, got 255 (NaN)")
        g = int(info.get("group_size") or MX_GROUP)
        if g % MX_GROUP or K % g:
            raise ValueError(
                f"load_quantized: {name}: group_size in zqkernels.json: expected a multiple of 32 dividing K = {K}, got {g}"
            )
        blocks = sc.to(torch.int32).reshape(N, K // g, g // MX_GROUP)
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
            qs = layer_scheme("QLinear", cls.name, N, K, {"group_size": g, "scale_policy": policy})
        except ValueError as err:
            raise NotImplementedError(f"load_quantized: {name} [{N}, {K}] cannot be a 'w4a8-fp' QLinear: {err}") from None
        buffers = {
            "weight_q": cls.pack_weight(codes),
            "weight_scale": sw.to(torch.float32).contiguous(),
            "weight_group_scale": e.to(torch.int8).contiguous(),
        }
        return CTLayer(qs, N, K, buffers, tensors.get("bias"))
