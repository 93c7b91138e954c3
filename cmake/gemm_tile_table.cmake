# cmake/gemm_tile_table.cmake: THE table of GEMM tiles (one zq_gemm_tile() row per CTA shape /
# schedule of a kernel family). Read twice by cmake/gemm_tiles.cmake: once to count the kernels (for
# the translation-unit size), once to generate them. Columns: cmake/gemm_tiles.cmake's header.
#
# The table. Why each tile exists and which M it serves: src/cuda/gemm_dispatch.cpp (the dispatch
# tables) and docs/PERF_NOTES.md (the measurements).
#
# sm90 TileConfig<TileM, TileN, TileK, ClusterM, ClusterN, Sched, StreamK, SwapAB>
set(_pp "zq::sm90::Sched::kPingpong")
set(_coop "zq::sm90::Sched::kCooperative")
zq_gemm_tile(sm90 int8_rowwise swap_64x16x256_pp       DISPATCHED "bf16;fp16"           "64, 16, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 int8_rowwise swap_64x32x256_pp       DISPATCHED "bf16;fp16;fp32;int8" "64, 32, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 int8_rowwise swap_64x64x256_pp       DISPATCHED "bf16;fp16"           "64, 64, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 int8_rowwise swap_128x64x256_coop_sk DISPATCHED "bf16;fp16"           "128, 64, 256, 1, 1, ${_coop}, true, true" NO_PDL)
zq_gemm_tile(sm90 int8_rowwise 128x128x128_c2x1_pp     DISPATCHED "bf16;fp16;fp32;int8" "128, 128, 128, 2, 1, ${_pp}, false, false")
zq_gemm_tile(sm90 int8_rowwise 128x256x128_c2x1_coop   DISPATCHED "bf16;fp16;int8"      "128, 256, 128, 2, 1, ${_coop}, false, false")
# FP8 (docs/FP8.md). Fast accumulation: the int8 tiles (same bytes per element, same wgmma shapes).
zq_gemm_tile(sm90 fp8_rowwise_fastacc swap_64x16x256_pp       DISPATCHED "bf16;fp16" "64, 16, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 fp8_rowwise_fastacc swap_64x32x256_pp       DISPATCHED "bf16;fp16" "64, 32, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 fp8_rowwise_fastacc swap_64x64x256_pp       DISPATCHED "bf16;fp16" "64, 64, 256, 1, 1, ${_pp}, false, true")
zq_gemm_tile(sm90 fp8_rowwise_fastacc swap_128x64x256_coop_sk DISPATCHED "bf16;fp16" "128, 64, 256, 1, 1, ${_coop}, true, true" NO_PDL)
zq_gemm_tile(sm90 fp8_rowwise_fastacc 128x128x128_c2x1_pp     DISPATCHED "bf16;fp16" "128, 128, 128, 2, 1, ${_pp}, false, false")
zq_gemm_tile(sm90 fp8_rowwise_fastacc 128x256x128_c2x1_coop   DISPATCHED "bf16;fp16" "128, 256, 128, 2, 1, ${_coop}, false, false")
# Accurate FP8, row-wise and block-scaled (src/cuda/sm90_fp8_promote_mainloop.cuh): three
# accumulator sets per consumer thread, so tiles of at most 64 values a set (128 x 128 cooperative,
# 64-row ping-pong, narrow swap-AB); the block-scaled tiles' weight extent divides 128.
foreach(_r fp8_rowwise fp8_blockwise)
  zq_gemm_tile(sm90 ${_r} swap_64x16x256_pp       DISPATCHED "bf16;fp16" "64, 16, 256, 1, 1, ${_pp}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_64x32x256_pp       DISPATCHED "bf16;fp16" "64, 32, 256, 1, 1, ${_pp}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_64x64x256_pp       DISPATCHED "bf16;fp16" "64, 64, 256, 1, 1, ${_pp}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x64x256_coop_sk DISPATCHED "bf16;fp16" "128, 64, 256, 1, 1, ${_coop}, true, true" NO_PDL)
  zq_gemm_tile(sm90 ${_r} 128x128x128_c1x2_coop   DISPATCHED "bf16;fp16" "128, 128, 128, 1, 2, ${_coop}, false, false")
  zq_gemm_tile(sm90 ${_r} 128x128x128_c2x1_coop   EXPERIMENT "bf16"      "128, 128, 128, 2, 1, ${_coop}, false, false")
  zq_gemm_tile(sm90 ${_r} 64x128x128_c1x2_pp      EXPERIMENT "bf16"      "64, 128, 128, 1, 2, ${_pp}, false, false")
endforeach()
zq_gemm_tile(sm90 fp8_rowwise 128x128x128_coop             DISPATCHED "bf16;fp16" "128, 128, 128, 1, 1, ${_coop}, false, false")
zq_gemm_tile(sm90 fp8_blockwise 128x128x128_coop           EXPERIMENT "bf16"      "128, 128, 128, 1, 1, ${_coop}, false, false")
# One partial sum, drained per fold (96 values a set): the widest tile the promoting mainloop allows.
zq_gemm_tile(sm90 fp8_rowwise 128x192x128_c2x1_coop        DISPATCHED "bf16;fp16" "128, 192, 128, 2, 1, ${_coop}, false, false")
zq_gemm_tile(sm90 fp8_rowwise_fastacc 128x128x128_c2x1_coop EXPERIMENT "bf16"     "128, 128, 128, 2, 1, ${_coop}, false, false")
# Group-scaled int8 (docs/W4A8.md, src/cuda/sm90_group_mainloop.cuh): integer (Integer Scale) and
# float group scales, one cooperative 128 x 128 tile (three accumulator sets per thread).
foreach(_r int8_group_int int8_group_float)
  zq_gemm_tile(sm90 ${_r} 128x128x128_coop     DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, false")
  zq_gemm_tile(sm90 ${_r} 128x128x128_c2x1_coop EXPERIMENT "bf16;fp16"     "128, 128, 128, 2, 1, ${_coop}, false, false")
endforeach()
# W4A8 mixed input (docs/W4A8.md, src/cuda/sm90_w4a8_mainloop.cuh): packed INT4 weights converted in
# registers (the wgmma's A operand: swap-AB, 64 weight rows per consumer warpgroup), integer and float
# group scales. Two int32 sets per consumer thread (the partial sum and the integer sum): up to 128
# tokens a tile.
foreach(_r w4a8_mixed_int w4a8_mixed_float)
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop  DISPATCHED "bf16;fp16;fp32" "128, 64, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x128x128_coop DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop_sk DISPATCHED "bf16;fp16" "128, 64, 128, 1, 1, ${_coop}, true, true" NO_PDL)
endforeach()
# Integer scales <= 16 fused into the weights (no fold: one accumulator set, so 256-token tiles fit);
# the zero-point format (w4a8_mixed_fused_zp) is the same mainloop with a per-group zero point.
foreach(_r w4a8_mixed_fused w4a8_mixed_fused_zp)
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop  DISPATCHED "bf16;fp16;fp32" "128, 64, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x128x128_coop DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x256x128_coop DISPATCHED "bf16;fp16;fp32" "128, 256, 128, 1, 1, ${_coop}, false, true")
  # Stream-K (the K loop of few weight tiles spread over every SM: N / 128 tiles against 132 SMs at
  # N <= 8192; every mixed recipe has one). The mainloop indexes its staged group scales relative to
  # the k-tile, so a work unit may start at any k-tile.
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop_sk DISPATCHED "bf16;fp16"    "128, 64, 128, 1, 1, ${_coop}, true, true" NO_PDL)
endforeach()
# FP4 x FP8 mixed input (docs/FP8.md): two fp32 sets per consumer thread (the promoted sum and the
# k-tile's partial sum): up to 128 tokens a tile.
foreach(_r w4a8_fp_mixed_pow2 w4a8_fp_mixed_float)
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop  DISPATCHED "bf16;fp16;fp32" "128, 64, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x128x128_coop DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop_sk DISPATCHED "bf16;fp16" "128, 64, 128, 1, 1, ${_coop}, true, true" NO_PDL)
endforeach()
zq_gemm_tile(sm90 int8_rowwise 128x128x128_coop        EXPERIMENT "bf16"                "128, 128, 128, 1, 1, ${_coop}, false, false")
zq_gemm_tile(sm90 int8_rowwise swap_128x32x256_coop_sk EXPERIMENT "bf16;fp16"           "128, 32, 256, 1, 1, ${_coop}, true, true" NO_PDL)
zq_gemm_tile(sm90 int8_rowwise 64x128x128_c1x2_pp      EXPERIMENT "bf16;fp16"           "64, 128, 128, 1, 2, ${_pp}, false, false")
zq_gemm_tile(sm90 int8_rowwise 128x256x64_c2x1_coop    EXPERIMENT "bf16;fp16"           "128, 256, 64, 2, 1, ${_coop}, false, false")
# sm80 TileConfig<TileM, TileN, TileK, WarpM, WarpN, Stages>
zq_gemm_tile(sm80 int8_rowwise 32x64x128_w32x32_s6     DISPATCHED "bf16;fp16;fp32;int8" "32, 64, 128, 32, 32, 6")
zq_gemm_tile(sm80 int8_rowwise 64x64x128_w32x32_s5     DISPATCHED "bf16;fp16"           "64, 64, 128, 32, 32, 5")
zq_gemm_tile(sm80 int8_rowwise 128x128x64_w64x64_s5    DISPATCHED "bf16;fp16;fp32;int8" "128, 128, 64, 64, 64, 5")
zq_gemm_tile(sm80 int8_rowwise 128x256x64_w64x64_s3    DISPATCHED "bf16;fp16"           "128, 256, 64, 64, 64, 3")

