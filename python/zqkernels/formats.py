"""Quantized formats and the GEMM spec: the Python side of the one description that keys every
kernel (src/cuda/zq_kernels.h; the math is in docs/SCALES.md).

A ``GemmSpec`` names the activation and weight formats, each operand's scale granularity, the
scale kind and the epilogue. ``spec.recipe`` maps it to the kernel family that implements it
(``"int8_rowwise"``: int8 per-token x int8 per-channel, float scales; per-tensor scales are the
degenerate case of the same family; ``"fp8_rowwise"``: the same with FP8 E4M3 operands;
``"w4a8_fp"``: FP8 E4M3 activations x FP4 E2M1 weights with group scales, ``scale_kind`` "pow2" (M1 /
M2, integer FP4 -> FP8 conversion) or "float" (free ratios), docs/FP8.md). A spec with no kernel yet raises ``NotImplementedError``
naming what is missing, never a fallback. New formats (FP8, INT4, FP4, group and integer scales)
add values here and a recipe with its tiles in ``cmake/gemm_tiles.cmake``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GemmSpec",
    "QMAX",
    "ACT_FORMATS",
    "WEIGHT_FORMATS",
    "ACTIVATIONS",
    "OUT_QUANTS",
    "INT8_ROWWISE",
    "FP8_E4M3_MAX",
    "E2M1_VALUES",
]

# Largest quantized magnitude per format (symmetric grids; int8 values may still hold -128 when
# they come from elsewhere, e.g. compressed-tensors checkpoints, and the kernels accept it).
QMAX = {"int8": 127, "int4": 7, "fp8_e4m3": 448.0, "fp4_e2m1": 6.0}

FP8_E4M3_MAX = 448.0  # largest finite torch.float8_e4m3fn (docs/FP8.md)
# Magnitudes of the E2M1 codes 0..7 (code 8 + c is the negative of code c; docs/FP8.md).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

ACT_FORMATS = ("int8", "fp8_e4m3", "bf16", "fp16")
WEIGHT_FORMATS = ("int8", "int4", "fp8_e4m3", "fp4_e2m1")
# "token_group": one scale per token per group_size of K (block-scaled FP8, with weight_scale "block":
# one scale per group_size x group_size weight block; DeepSeek-V3 / compressed-tensors FP8 block).
ACT_SCALES = ("token", "tensor", "token_group")
WEIGHT_SCALES = ("channel", "tensor", "group", "block")
# "zp": integer group scales with group zero points (the zero-point INT4 format, docs/W4A8.md)
SCALE_KINDS = ("float", "pow2", "int", "zp")
ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu")  # order = zq::GemmActivation codes
# Output quantization: "none" (bf16 / fp16 / fp32 output) or "int8_tensor" (int8 output with a static
# per-tensor scale, ZeroQuant-HERO's, for a consumer that takes int8).
OUT_QUANTS = ("none", "int8_tensor")


@dataclass(frozen=True)
class GemmSpec:
    """One quantized GEMM: ``y = epilogue(sum_k dq(a)[m, k] * dq(w)[n, k])`` (docs/SCALES.md).

    act / weight: operand formats. act_scale: "token" ([M] scales) or "tensor" ([1]).
    weight_scale: "channel" ([N]), "tensor" ([1]) or "group" ([N, K // group_size]).
    scale_kind: "float", "pow2" (power-of-two float scales) or "int" (integer scales with an
    amplifier). The epilogue: bias (optional per call), then ``activation`` ("none", "gelu",
    "gelu_tanh", "silu"), then ``out_quant`` ("none", or "int8_tensor": int8 output with a static
    per-tensor scale). The int8_rowwise kernels take the activation as a runtime value, so it does
    not change the recipe; int8 output is an output type of the same recipe, built on the tiles its
    dispatch tables name. out_dtype (and out_scale) are chosen per call. No residual add: see
    docs/PERF_NOTES.md ("GEMM epilogue options").
    """

    act: str = "int8"
    weight: str = "int8"
    act_scale: str = "token"
    weight_scale: str = "channel"
    group_size: int = 0
    scale_kind: str = "float"
    activation: str = "none"
    out_quant: str = "none"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("act", self.act, ACT_FORMATS),
            ("weight", self.weight, WEIGHT_FORMATS),
            ("act_scale", self.act_scale, ACT_SCALES),
            ("weight_scale", self.weight_scale, WEIGHT_SCALES),
            ("scale_kind", self.scale_kind, SCALE_KINDS),
            ("activation", self.activation, ACTIVATIONS),
            ("out_quant", self.out_quant, OUT_QUANTS),
        ):
            if value not in allowed:
                raise ValueError(f"GemmSpec: {name} must be one of {allowed}, got {value!r}")
        if (self.weight_scale in ("group", "block")) != (self.group_size > 0):
            raise ValueError(
                f"GemmSpec: group_size must be > 0 exactly when weight_scale == 'group', got "
                f"weight_scale={self.weight_scale!r}, group_size={self.group_size}"
            )

    @property
    def recipe(self) -> str:
        """The kernel family implementing this spec; NotImplementedError if none exists yet."""
        if self.act_scale == "token_group" or self.weight_scale == "block":
            if (self.act, self.weight, self.act_scale, self.weight_scale, self.group_size, self.scale_kind) == (
                "fp8_e4m3", "fp8_e4m3", "token_group", "block", 128, "float"
            ):
                return "fp8_blockwise"  # sm90_fp8_promote_mainloop.cuh (fp8_block_gemm)
            raise NotImplementedError(
                f"GemmSpec: no kernel implements {self} yet (block scales: fp8_e4m3 activations per token "
                "group of 128 with fp8_e4m3 weights per 128 x 128 block only)"
            )
        if (
            self.act == "int8"
            and self.weight == "int8"
            and self.weight_scale in ("channel", "tensor")
            and self.scale_kind == "float"
        ):
            return "int8_rowwise"  # every activation and out_quant: runtime options of its kernels
        if (
            self.act == "fp8_e4m3"
            and self.weight == "fp8_e4m3"
            and self.weight_scale in ("channel", "tensor")
            and self.scale_kind == "float"
        ):
            return "fp8_rowwise"
        if (
            self.act == "fp8_e4m3"
            and self.weight == "fp4_e2m1"
            and self.weight_scale == "group"
            and self.scale_kind in ("pow2", "float")
        ):
            return "w4a8_fp"
        if (
            self.act == "int8"
            and self.weight == "int4"
            and self.weight_scale == "group"
            and self.scale_kind in ("int", "float", "zp")
            and self.group_size % 32 == 0
        ):
            # docs/W4A8.md (decode: streaming kernel; larger M: the mixed-input mainloop); "zp": sg int16
            return "w4a8_int"
        if (
            self.act == "int8"
            and self.weight == "int8"
            and self.weight_scale == "group"
            and self.scale_kind in ("int", "float")
            and self.group_size % 32 == 0
        ):
            return f"int8_group_{self.scale_kind}"  # sm90_group_mainloop.cuh (w8a8_group_gemm)
        raise NotImplementedError(
            f"GemmSpec: no kernel implements {self} yet (implemented: int8 or fp8_e4m3 activations with "
            "token or tensor float scales x the same format for weights with channel or tensor float "
            "scales; fp8_e4m3 activations x fp4_e2m1 weights with group scales of kind pow2 or float; int8 "
            "activations x int4 or int8 weights with group scales (group size a multiple of 32) of kind int or float; "
            "any epilogue activation, output quantization none or int8_tensor)"
        )


INT8_ROWWISE = GemmSpec()
