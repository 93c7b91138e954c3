"""INT8 per-token activations x INT4 / INT8 weights with integer or float group scales (Integer
Scale, docs/W4A8.md): the shared base of schemes "w4a8", "w4a8-floatscale" (schemes/w4a8.py) and
"w8a8-group" (schemes/w8a8_group.py).

Options: ``group_size`` 32, 64, 128, 256, or None (per channel: one group of in_features per row;
a QLinear built with keyword arguments takes group_size None as the default 128 and in_features as
per channel), ``scale`` "int" / "float" (w8a8-group; fixed by the name for w4a8 / w4a8-floatscale),
``alpha`` (integer scales: quantize_weight's multiplier, a power of two; None: its default).
The layer records ``max_scale``, the largest integer group scale (``int(sg.max())``, read once at
conversion), which the forward passes to the GEMM so that its int32 accumulator is flushed only as
often as that scale requires. alpha and max_scale come with a checkpoint (``loaded``).

State: ``weight_q`` (W4A8: uint8 [N, K // 2] packed INT4, layout m16k32; W8A8Group: int8 [Np, K]),
``weight_scale`` float32 [N], ``weight_group_scale`` [N, K // group_size] (int32 integer scales or
float32 ratios), ``bias`` [N] in the model's dtype (or None).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch

from ..formats import GemmSpec
from ..reference.quantize import (
    INT4_HEURISTIC_RANGE,
    INT8_HEURISTIC_MIN,
    _alpha_heuristic,
    _check_alpha,
    _check_alpha8,
    expand_groups,
    group_alpha_max,
)
from ..reference.zero_point import ZP_GROUP_DTYPE
from .base import layer_scheme
from .compressed import (
    ACT_INT8,
    FORMAT_INT,
    FORMAT_NAIVE,
    FORMAT_PACKED,
    CTLayer,
    accepts_args,
    bias_tensor,
    ct_args,
    group_scale,
    int_codes,
)
from .grouped import GroupedScheme

GROUP_SIZES = (32, 64, 128, 256)
INT_SCALES = ("int", "float")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class IntGroupScheme(GroupedScheme):
    """The Integer Scale schemes; subclasses set bits, the weight layout and the GEMM."""

    option_names: ClassVar[tuple[str, ...]] = ("group_size", "alpha")
    fixed_dtype_buffers = ("weight_scale", "weight_group_scale")
    bits: ClassVar[int] = 8
    GROUP_SIZES = GROUP_SIZES
    fixed_scale: ClassVar[Optional[str]] = None  # the scale kind of the scheme, None: the "scale" option

    # -- options ---------------------------------------------------------------------------------
    @property
    def scale_kind(self) -> str:
        return self.fixed_scale if self.fixed_scale is not None else getattr(self, "scale", None) or "int"

    def _check_options(self, op: str) -> None:
        g = self.group_size
        if g is not None:
            if not _is_int(g) or g <= 0:
                raise ValueError(f"{op}: group_size must be a positive int, got {g!r}")
            if g not in GROUP_SIZES and getattr(self, "_k", None) != g:
                raise ValueError(f"{op}: group_size must be one of {GROUP_SIZES} or None (per channel), got {g!r}")
        if self.fixed_scale is None:
            scale = getattr(self, "scale", None)
            if scale is None:
                object.__setattr__(self, "scale", "int")
            elif scale not in INT_SCALES:
                raise ValueError(f"{op}: scale must be 'int' or 'float', got {scale!r}")
        alpha = self.alpha
        if alpha is not None:
            if self.scale_kind != "int":
                raise ValueError(f"{op}: alpha applies to scale='int' only, got alpha={alpha!r} with scale={self.scale_kind!r}")
            if self.bits == 4:
                _check_alpha(op, alpha)
            elif g is not None:
                _check_alpha8(op, alpha, g)
            elif not _is_int(alpha) or alpha < 1 or alpha & (alpha - 1):
                # per channel: the bound depends on each layer's in_features, checked in for_layer
                raise ValueError(f"{op}: alpha must be a power of two int >= 1, got {alpha!r}")

    @classmethod
    def from_layer_options(cls, op: str, out_features: int, in_features: int, **options: Any) -> "IntGroupScheme":
        """QLinear's keyword arguments: group_size None -> 128, in_features -> per channel."""
        K = in_features
        g = cls._layer_group(op, out_features, K, options.get("group_size"))
        scale = options.get("scale")
        if cls.fixed_scale is None and scale is not None and scale not in INT_SCALES:
            raise ValueError(f"{op}: scheme {cls.name!r} needs scale in {INT_SCALES}, got {scale!r}")
        kind = cls.fixed_scale or scale or "int"
        alpha = options.get("alpha")
        if alpha is not None and kind != "int":
            raise ValueError(f"{op}: alpha applies to integer scales (scale='int') only, got alpha={alpha!r} "
                             f"with scheme {cls.name!r}, scale={kind!r}")
        cls._check_shape(op, out_features, K, g)
        if alpha is not None:
            try:
                _check_alpha8(op, alpha, g) if cls.bits == 8 else _check_alpha(op, alpha)
            except ValueError as e:
                raise ValueError(f"{e} (scheme {cls.name!r})") from None
        return cls._layer_instance(op, g, K, **{k: v for k, v in options.items() if k != "group_size"})

    def describe(self):
        out = super().describe()
        if self.fixed_scale is None:
            out += f", scale={self.scale_kind}"
        return out

    def describe_layer(self, m):
        out = self.describe()
        if self.scale_kind == "int":
            out += f", alpha={'default' if m.alpha is None else m.alpha}, max_scale={m.max_scale}"
        return out

    # -- the GEMM and the weights ------------------------------------------------------------------
    def spec(self):
        return GemmSpec(act="int8", weight="int4" if self.bits == 4 else "int8", weight_scale="group",
                        group_size=self.group_size or self.DEFAULTS["group_size"], scale_kind=self.scale_kind)

    def weight_format(self):
        # quantize_weight's group_size None is per channel; a layer's scheme holds g == in_features
        return {"fmt": f"int{self.bits}", "group_size": self.group(), "scale": self.scale_kind, "alpha": self.alpha}

    def dequant_format(self):
        return "int4" if self.bits == 4 else "int8"

    def _weight_layout(self, rows: int, K: int) -> tuple[tuple[int, ...], torch.dtype]:
        raise NotImplementedError

    def buffer_layout(self, rows, in_features):
        sg = {"int": torch.int32, "float": torch.float32, "zp": ZP_GROUP_DTYPE}[self.scale_kind]
        return {
            "weight_q": self._weight_layout(rows, in_features),
            "weight_scale": ((rows,), torch.float32),
            "weight_group_scale": ((rows, in_features // self.group_size), sg),
        }

    def create_buffers(self, m, rows, bias, dtype, device):
        super().create_buffers(m, rows, bias, dtype, device)
        m.max_scale = None  # set from the weights by init_layer_state, or by a checkpoint
        if "alpha" not in self.option_names:
            m.alpha = None  # float scales: no multiplier

    def init_layer_state(self, m):
        sg = m._buffers["weight_group_scale"]
        # one sync, at conversion: the forward passes it to the GEMM as a Python int
        m.max_scale = max(int(sg.max()), 1) if self.scale_kind == "int" and sg.numel() else None

    def load_extra_state(self, m, state):
        alpha, max_scale = state.get("alpha"), state.get("max_scale")
        for key, v in (("alpha", alpha), ("max_scale", max_scale)):
            if v is not None and (not _is_int(v) or v < 1):
                raise ValueError(f"QLinear.load_state_dict: the checkpoint's {key} must be None or a positive int, got {v!r}")
        if max_scale is not None and self.scale_kind != "int":
            raise ValueError("QLinear.load_state_dict: the checkpoint has max_scale but this layer has float scales")
        m.alpha = alpha
        m.max_scale = max_scale

    def _quantize_ref(self, w: torch.Tensor, g: Optional[int], alpha: Optional[int]) -> tuple:
        raise NotImplementedError

    def fake_weight(self, w):
        K = w.shape[1]
        alpha = self.alpha if self.scale_kind == "int" else None
        q, sw, sg = self._quantize_ref(w, self.group(K), alpha)
        return (q.double() * expand_groups(sg.double(), K) * sw.reshape(-1, 1).double()).float()

    # -- compressed-tensors ----------------------------------------------------------------------
    def _ct_weight(self, m: Any, n: int) -> tuple[dict[str, torch.Tensor], str]:
        raise NotImplementedError

    def to_compressed_tensors(self, m, name):
        n = m.out_features
        sw = m.weight_scale[:n].detach().cpu()
        sg = m.weight_group_scale[:n].detach().cpu()
        out, fmt = self._ct_weight(m, n)
        out["weight_scale"] = group_scale(sw, sg)
        spec = {"format": fmt, "weights": ct_args(self.bits, "int", "group", m.group_size), "input_activations": ACT_INT8}
        info: dict[str, Any] = {"scheme": self.name, "group_size": m.group_size}
        if self.fixed_scale is None:
            info["scale"] = self.scale_kind
        if sg.dtype == torch.int32:
            # the alpha used (the largest integer scale: every non-zero row's largest group has sg = alpha),
            # and the layer's alpha option (None: quantize_weight's default)
            info["alpha"] = int(sg.max()) if sg.numel() and int(sg.max()) > 0 else None
            info["alpha_option"] = m.alpha
        return bias_tensor(m, out), spec, info

    # the weight strategies of the config groups this scheme loads (int4 per channel is w4a8's; int8 per
    # channel is w8a8's)
    ct_strategies: ClassVar[tuple[str, ...]] = ("group",)

    @classmethod
    def ct_accepts(cls, group, fmt, gname=""):
        """int{bits} group weights (``ct_strategies``), int-quantized or pack-quantized, int8 or no activations."""
        return accepts_args(group, fmt, bits=cls.bits, kind="int", strategies=cls.ct_strategies,
                            formats=(FORMAT_INT, FORMAT_PACKED, FORMAT_NAIVE), act_kind="int")

    @classmethod
    def ct_foreign(cls, group_scales):
        return cls.fixed_scale is None or cls.fixed_scale == group_scales

    @classmethod
    def from_compressed_tensors(cls, name, tensors, info, group_scales):
        """Real group scales s [N, K / g] -> sw, sg (``ct_group_scales``); the scale kind is the scheme's,
        w8a8-group's from zqkernels.json, else `group_scales`; alpha from zqkernels.json when ours."""
        codes, N, K = int_codes(name, tensors, cls.bits)
        s = tensors["weight_scale"]
        G = s.shape[-1] if s.dim() == 2 else 1
        if s.dim() == 1 or G == 1:
            s = s.reshape(N, 1)
        if s.shape[0] != N or K % s.shape[1] != 0:
            raise ValueError(f"load_quantized: {name}.weight_scale has shape {list(s.shape)} for a weight [{N}, {K}]")
        g = K // s.shape[1]
        scale_kind = cls.fixed_scale or info.get("scale", group_scales)
        kw: dict[str, Any] = {"group_size": g}
        if cls.fixed_scale is None:
            kw["scale"] = scale_kind
        if scale_kind == "int" and info.get("alpha_option") is not None:
            kw["alpha"] = info["alpha_option"]
        try:
            qs = layer_scheme("QLinear", cls.name, N, K, kw)
        except ValueError as e:
            raise NotImplementedError(
                f"load_quantized: {name} [{N}, {K}] with group size {g} cannot be a {cls.name!r} QLinear: {e}"
            ) from None
        sw, sg, _ = ct_group_scales(name, s, cls.bits, g, K, scale_kind, info.get("alpha"))
        buffers = {"weight_q": cls.pack_weight(codes), "weight_scale": sw, "weight_group_scale": sg}
        return CTLayer(qs, N, K, buffers, tensors.get("bias"))


def ct_group_scales(
    name: str, s: torch.Tensor, bits: int, g: int, K: int, scale: str, alpha: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor, Optional[int]]:
    """Real group scales s [N, G] -> (sw float32 [N], sg [N, G], alpha used). Per row s_max = max_j s,
    r = s / s_max (float32); "float": sw = s_max, sg = r; "int": sg = max(rint(r * alpha), 1) (0 for a
    zero group), sw = s_max / alpha, with the checkpoint's alpha (ours, from zqkernels.json: recovers
    the saved sw and sg bit for bit) or quantize_weight's default for these r (docs/CHECKPOINTS.md)."""
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
