"""path="auto" for the W4A8 GEMMs: which kernel serves a problem, from measurements on an H100 (the
comments give the numbers and the result files). Pure functions of the problem and the GPU's SM count,
so they run (and are tested) without a GPU when the SM count is passed.

    w4a8_fused      whether the INT4 mixed mainloop runs its fused-scale mode
    w4a8_int_path   w4a8_gemm: "stream" / "mixed" / "convert"
    w4a8_fp_path    w4a8_fp_gemm: "stream" / "mixed" / "convert"
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from .gemm_checks import INT8_MAX_K

# Integer group scales up to this bound (max_scale) run the W4A8 mixed mainloop's fused mode: every
# scale times an INT4 code fits an int8 (16 * -8 = -128), so the scales are multiplied into the
# weights in registers and the GEMM keeps one exact int32 sum, with no per-group fold
# (sm90_w4a8_mainloop.cuh). quantize_weight(..., alpha=16) produces such scales (docs/W4A8.md).
W4A8_FUSED_MAX_SCALE = 16
# Experiment (not measured yet; env ZQKERNELS_W4A8_STREAM_FUSED=1): the streaming decode kernel on
# fused scales too, through its zero-point mode with z = 8 (words s | 8 s << 8: the codes' int8 values
# s q, one int32 sum, no per-step fold and no flush) instead of the 16 q codes folded per MMA step.
W4A8_STREAM_FUSED = os.environ.get("ZQKERNELS_W4A8_STREAM_FUSED", "0") == "1"


def w4a8_fused(int_scales: bool, max_scale: Optional[int], K: int) -> bool:
    """Whether the W4A8 mixed mainloop runs its fused mode: integer scales bounded by 16, and K
    within one int32 sum of int8 products."""
    return int_scales and max_scale is not None and max_scale <= W4A8_FUSED_MAX_SCALE and K <= INT8_MAX_K


# Largest M the FP4 streaming kernel serves under path="auto": measured on an H100 (docs/FP8.md,
# benchmarks/results/fp8_*): at M = 32 streaming beat converting + fp8_gemm at every shape, at
# M = 64 converting won (e.g. 22016 x 4096: ~72 against 102 us).
STREAM_MAX_M = 32
# Largest M the FP4 mixed-input mainloop serves under path="auto", by scale kind (w4a8_fp_path; H100,
# benchmarks/results/w4a8_h100-80gb-hbm3_4846f3d.json). Power-of-two scales: 54 us at M = 64 on 8B
# gate_up against 112 us converted, 205 against 246 us on 70B down at M = 256, a tie on gate_up at
# 256; converting wins from M = 1024 (271 against 423 us). Float scales pay a multiply per group:
# mixed wins at M = 64 on gate_up (71 against 113 us) but loses on 70B down (232 against 212) and at
# M = 256 (159 against 129 us); 64 keeps the larger gain.
FP_MIXED_MAX_M = {True: 256, False: 64}
# ... except on narrow, small matrices at M <= 64 (power-of-two scales), where the mixed grid's N / 128
# weight tiles leave SMs idle and converting is cheap (w4a8_decode_h100-80gb-hbm3_a487f1d, M = 64, us,
# mixed / convert: 8B qkv 27.3 / 24.6, o 26.9 / 16.7, down 87.1 / 55.3; but 70B down, N K = 235 M:
# 172.5 / 209.9). Float scales were not timed converted there.
FP_NARROW_CONVERT = {"max_m": 64, "max_weights": 1 << 26}
# path="auto" for INT4 x INT8 (w4a8_int_path), measured on an H100 (benchmarks/bench_w4a8.py,
# benchmarks/results/w4a8_*, docs/W4A8.md). The mixed-input mainloop's time is flat from M = 1 to 64
# (128-row weight tiles: the weights streamed once per 64 tokens) while the streaming kernel's grows
# with M. With fewer weight tiles (N / 128) than SMs (70B down_proj: 64) the mixed grid cannot stream
# at full bandwidth and the streaming kernel wins up to M = 16 (104 against 143 us).
# One 8-token tile streams faster than the mixed mainloop at every N (w4a8_decode_h100-80gb-hbm3_a487f1d,
# w4a8_stream_onegroup_ab_*: gate_up 29.5 / 31.7 / 34.3 us at M = 1 / 4 / 8, mixed 45.2): INT_STREAM_ONE_TILE_M.
# Integer scales that need the per-group fold (max_scale > 16) ran 13-15% faster converted to int8
# first at M = 2048 (693 against 796 us, 1329 against 1486); fused scales (<= 16) never need it.
INT_STREAM_MAX_M = 16
INT_STREAM_ONE_TILE_M = 8
INT_CONVERT_MIN_M = 2048


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def w4a8_fp_path(M: int, pow2: bool, out_dtype: torch.dtype, N: int = 0, K: int = 0, sm_count: int = 0) -> str:
    """The path w4a8_fp_gemm's "auto" takes (see STREAM_MAX_M, FP_MIXED_MAX_M and FP_NARROW_CONVERT
    above; N, K, sm_count: the problem and GPU, 0 = unknown); float32 output has no 'convert' path
    (fp8_gemm writes 16-bit output only)."""
    if M <= STREAM_MAX_M:
        return "stream"
    if (pow2 and out_dtype != torch.float32 and M <= FP_NARROW_CONVERT["max_m"] and 0 < N // 128 < sm_count
            and N * K <= FP_NARROW_CONVERT["max_weights"]):
        return "convert"
    return "mixed" if M <= FP_MIXED_MAX_M[pow2] or out_dtype == torch.float32 else "convert"


def w4a8_int_path(M: int, N: int, index: int, fused: bool, int_scales: bool) -> str:
    """The path w4a8_gemm's "auto" takes (see INT_STREAM_MAX_M and INT_STREAM_ONE_TILE_M above)."""
    if M <= INT_STREAM_ONE_TILE_M or (M <= INT_STREAM_MAX_M and N // 128 < _sm_count(index)):
        return "stream"
    if int_scales and not fused and M >= INT_CONVERT_MIN_M:
        return "convert"
    return "mixed"
