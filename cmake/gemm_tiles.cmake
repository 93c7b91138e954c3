# cmake/gemm_tiles.cmake: THE table of GEMM tiles, and the generator of their translation units.
#
# Each zq_gemm_tile() row is one CTA shape / schedule of one kernel family (arch + recipe); it
# becomes a register function that instantiates the recipe's template (src/cuda/${arch}_<header>.cuh,
# _zq_recipe_header_<recipe>) for each listed output type, packed with the rows before it into a
# generated translation unit gen/${arch}_<header>[_nopdl]_unit<n>.cu (ZQ_KERNELS_PER_TU kernels at
# most, below), plus one row per output type in the kernel registry (gemm_kernels.gen.cpp). Nothing
# is copied by hand: to add a tile, add a row; to add a format or scale recipe, add a header and rows.
#
#   zq_gemm_tile(ARCH RECIPE TILE STATUS OUTS PARAMS)
#     ARCH    sm90 | sm80
#     RECIPE  int8_rowwise (int8 per-token x int8 per-channel, float scales), int8_group_int /
#             int8_group_float (int8 x int8 with integer / float weight scales per group of K), fp8_rowwise (e4m3
#             per-token x e4m3 per-channel, accurate accumulation), fp8_rowwise_fastacc (the same
#             with Hopper's fast FP8 accumulation; sm90 only), fp8_blockwise (e4m3 x e4m3 with
#             DeepSeek-style block scales: 1 x 128 per token, 128 x 128 per weight block),
#             w4a8_mixed_int / w4a8_mixed_float / w4a8_mixed_fused (packed INT4 weights x int8, group
#             scales; swap-AB; fused: integer scales <= 16 multiplied into the weights),
#             w4a8_fp_mixed_pow2 / w4a8_fp_mixed_float (packed FP4 weights x e4m3, power-of-two /
#             float group scales applied in the conversion; swap-AB)
#     TILE    the name tests, benchmarks and the dispatch tables (src/cuda/gemm_dispatch.cpp) use
#     STATUS  DISPATCHED (a dispatch table names it: always built) or EXPERIMENT (built only with
#             -DZQ_EXPERIMENT_TILES=ON, for tuning runs)
#     OUTS    output types, ';'-separated inside quotes: bf16, fp16, fp32, int8 (static per-tensor
#             out_scale, float32 bias; only on the tiles the int8-output dispatch tables name)
#     PARAMS  the family's TileConfig template arguments
#     NO_PDL  (optional 7th argument) build without CUTLASS_ENABLE_GDC_FOR_SM90: the kernel then has
#             no griddepcontrol.wait and the launcher never uses programmatic dependent launch for
#             it (CUTLASS 4.2's stream-K scheduler does not compile with the define: is_last_tile
#             binds a const member to a non-const reference)
#
# Input:  ZQ_HAVE_SM90, ZQ_HAVE_SM80 (cmake/archs.cmake), ZQ_EXPERIMENT_TILES (option), ZQ_GEMM_RECIPES
#         (developer builds: only the listed recipes).
# Output: ZQ_SM90_GEMM_SOURCES, ZQ_SM80_GEMM_SOURCES, ZQ_GEMM_REGISTRY_SOURCE.

option(ZQ_EXPERIMENT_TILES "Also build the GEMM tiles no dispatch table uses (tuning experiments)" OFF)
# Developer builds of a few kernel families (e.g. -DZQ_GEMM_RECIPES="w4a8_mixed_int;w4a8_mixed_fused"):
# only those recipes' tiles are compiled; a call that needs another recipe raises "tile not built".
set(ZQ_GEMM_RECIPES "" CACHE STRING "Build only these GEMM recipes (';'-separated; empty: all)")

set(_zq_recipe_header_int8_rowwise "gemm_rowwise")
set(_zq_recipe_header_fp8_rowwise "gemm_rowwise")
set(_zq_recipe_header_fp8_rowwise_fastacc "gemm_rowwise")
set(_zq_recipe_header_fp8_blockwise "gemm_rowwise")
set(_zq_recipe_header_int8_group_int "gemm_rowwise")
set(_zq_recipe_header_int8_group_float "gemm_rowwise")
set(_zq_recipe_header_w4a8_mixed_int "gemm_rowwise")
set(_zq_recipe_header_w4a8_mixed_float "gemm_rowwise")
set(_zq_recipe_header_w4a8_mixed_fused "gemm_rowwise")
set(_zq_recipe_header_w4a8_fp_mixed_pow2 "gemm_rowwise")
set(_zq_recipe_header_w4a8_fp_mixed_float "gemm_rowwise")
set(_zq_out_type_bf16 "cutlass::bfloat16_t")
set(_zq_out_type_fp16 "cutlass::half_t")
set(_zq_out_type_fp32 "float")
set(_zq_out_type_int8 "int8_t")
set(_zq_out_enum_bf16 "zq::DType::kBF16")
set(_zq_out_enum_fp16 "zq::DType::kFP16")
set(_zq_out_enum_fp32 "zq::DType::kFP32")
set(_zq_out_enum_int8 "zq::DType::kInt8")

# Translation units: the tiles of one (arch, header, PDL or not) are packed into shared units of at
# most ZQ_KERNELS_PER_TU kernels (a kernel = one tile x one output type). A unit's fixed cost (nvcc's
# host pass, cudafe++, cicc parsing CUTLASS / CuTe: ~30 s of a 2-core machine's time, measured on
# sm90 int8_rowwise 128x128x128: 1 kernel 43 s, 2 tiles 62 s, 4 outputs 70 s, ~0.5 GB more memory per
# kernel) is paid once per unit instead of once per tile. Few cores: large units (fewer fixed costs);
# many cores: small ones (the longest unit bounds the build).
cmake_host_system_information(RESULT _zq_cores QUERY NUMBER_OF_LOGICAL_CORES)
if(_zq_cores LESS_EQUAL 4)
  set(_zq_per_tu_default 8)
else()
  set(_zq_per_tu_default 3)
endif()
set(ZQ_KERNELS_PER_TU "${_zq_per_tu_default}" CACHE STRING "GEMM kernels per generated translation unit (1 = one tile per unit)")

set(_zq_gen_dir "${CMAKE_BINARY_DIR}/gen")
set_property(GLOBAL PROPERTY ZQ_GEMM_GROUPS "")
set_property(GLOBAL PROPERTY ZQ_SM90_GEMM_SOURCES "")
set_property(GLOBAL PROPERTY ZQ_SM80_GEMM_SOURCES "")
set_property(GLOBAL PROPERTY ZQ_GEMM_REGISTRY_DECLS "")
set_property(GLOBAL PROPERTY ZQ_GEMM_REGISTRY_CALLS "")

# Write the pending tiles of group `key` as its next unit gen/<key>_<part>.cu.
function(_zq_flush_group key)
  get_property(body GLOBAL PROPERTY ZQ_GRP_${key}_BODY)
  if(body STREQUAL "")
    return()
  endif()
  get_property(part GLOBAL PROPERTY ZQ_GRP_${key}_PART)
  get_property(arch GLOBAL PROPERTY ZQ_GRP_${key}_ARCH)
  get_property(head GLOBAL PROPERTY ZQ_GRP_${key}_HEAD)
  get_property(tiles GLOBAL PROPERTY ZQ_GRP_${key}_TILES)
  set(src "${_zq_gen_dir}/${key}_unit${part}.cu")
  file(CONFIGURE OUTPUT "${src}" CONTENT "// Generated by cmake/gemm_tiles.cmake from its tile table: edit the table, not this file.
// ${key}, unit ${part}: ${tiles}
${head}
${body}
}  // namespace zq::gen
" @ONLY)
  if(arch STREQUAL "sm90")
    set_property(GLOBAL APPEND PROPERTY ZQ_SM90_GEMM_SOURCES "${src}")
  else()
    set_property(GLOBAL APPEND PROPERTY ZQ_SM80_GEMM_SOURCES "${src}")
  endif()
  math(EXPR part "${part} + 1")
  set_property(GLOBAL PROPERTY ZQ_GRP_${key}_PART "${part}")
  set_property(GLOBAL PROPERTY ZQ_GRP_${key}_BODY "")
  set_property(GLOBAL PROPERTY ZQ_GRP_${key}_COUNT 0)
  set_property(GLOBAL PROPERTY ZQ_GRP_${key}_TILES "")
endfunction()

function(zq_gemm_tile arch recipe tile status outs params)
  set(no_pdl "")
  set(key "${arch}_${_zq_recipe_header_${recipe}}")  # one header: recipes share units
  if(ARGC GREATER 6 AND ARGV6 STREQUAL "NO_PDL")
    set(no_pdl "// NO_PDL: compiled without griddepcontrol (see cmake/gemm_tiles.cmake), so never launched with PDL.
#undef CUTLASS_ENABLE_GDC_FOR_SM90
")
    set(key "${key}_nopdl")
  endif()
  if(arch STREQUAL "sm90" AND NOT ZQ_HAVE_SM90)
    return()
  endif()
  if(arch STREQUAL "sm80" AND NOT ZQ_HAVE_SM80)
    return()
  endif()
  if(status STREQUAL "EXPERIMENT" AND NOT ZQ_EXPERIMENT_TILES)
    return()
  endif()
  if(ZQ_GEMM_RECIPES AND NOT recipe IN_LIST ZQ_GEMM_RECIPES)
    return()
  endif()
  set(dispatched "true")
  if(status STREQUAL "EXPERIMENT")
    set(dispatched "false")
  endif()
  string(REGEX REPLACE "[^A-Za-z0-9_]" "_" fn "register_${arch}_${recipe}_${tile}")
  set(rows "")
  list(LENGTH outs n)
  foreach(o IN LISTS outs)
    string(APPEND rows "  out.push_back(zq::${arch}::make_${recipe}<Cfg_${fn}, ${_zq_out_type_${o}}>(\"${tile}\", ${_zq_out_enum_${o}}, ${dispatched}));\n")
  endforeach()

  get_property(groups GLOBAL PROPERTY ZQ_GEMM_GROUPS)
  if(NOT key IN_LIST groups)
    set_property(GLOBAL APPEND PROPERTY ZQ_GEMM_GROUPS "${key}")
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_PART 0)
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_COUNT 0)
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_BODY "")
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_TILES "")
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_ARCH "${arch}")
    set_property(GLOBAL PROPERTY ZQ_GRP_${key}_HEAD "${no_pdl}#include <vector>

#include \"${arch}_${_zq_recipe_header_${recipe}}.cuh\"

namespace zq::gen {")
  endif()
  get_property(count GLOBAL PROPERTY ZQ_GRP_${key}_COUNT)
  math(EXPR total "${count} + ${n}")
  if(count GREATER 0 AND total GREATER ZQ_KERNELS_PER_TU)
    _zq_flush_group("${key}")
    set(count 0)
  endif()
  math(EXPR count "${count} + ${n}")
  set_property(GLOBAL PROPERTY ZQ_GRP_${key}_COUNT "${count}")
  set_property(GLOBAL APPEND_STRING PROPERTY ZQ_GRP_${key}_TILES "${tile} (${status}: ${outs}) ")
  set_property(GLOBAL APPEND_STRING PROPERTY ZQ_GRP_${key}_BODY "
namespace {
using Cfg_${fn} = zq::${arch}::TileConfig<${params}>;
}  // namespace

void ${fn}(std::vector<zq::GemmKernel>& out) {
${rows}}
")
  set_property(GLOBAL APPEND_STRING PROPERTY ZQ_GEMM_REGISTRY_DECLS "void ${fn}(std::vector<zq::GemmKernel>&);\n")
  set_property(GLOBAL APPEND_STRING PROPERTY ZQ_GEMM_REGISTRY_CALLS "    ${fn}(all);\n")
endfunction()

# ---------------------------------------------------------------------------------------------
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
endforeach()
# Integer scales <= 16 fused into the weights (no fold: one accumulator set, so 256-token tiles fit).
zq_gemm_tile(sm90 w4a8_mixed_fused swap_128x64x128_coop  DISPATCHED "bf16;fp16;fp32" "128, 64, 128, 1, 1, ${_coop}, false, true")
zq_gemm_tile(sm90 w4a8_mixed_fused swap_128x128x128_coop DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, true")
zq_gemm_tile(sm90 w4a8_mixed_fused swap_128x256x128_coop DISPATCHED "bf16;fp16;fp32" "128, 256, 128, 1, 1, ${_coop}, false, true")
# FP4 x FP8 mixed input (docs/FP8.md): two fp32 sets per consumer thread (the promoted sum and the
# k-tile's partial sum): up to 128 tokens a tile.
foreach(_r w4a8_fp_mixed_pow2 w4a8_fp_mixed_float)
  zq_gemm_tile(sm90 ${_r} swap_128x64x128_coop  DISPATCHED "bf16;fp16;fp32" "128, 64, 128, 1, 1, ${_coop}, false, true")
  zq_gemm_tile(sm90 ${_r} swap_128x128x128_coop DISPATCHED "bf16;fp16;fp32" "128, 128, 128, 1, 1, ${_coop}, false, true")
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

# The last unit of every group, then the source lists and the registry (every row, in table order).
get_property(_zq_groups GLOBAL PROPERTY ZQ_GEMM_GROUPS)
foreach(_k IN LISTS _zq_groups)
  _zq_flush_group("${_k}")
endforeach()
get_property(ZQ_SM90_GEMM_SOURCES GLOBAL PROPERTY ZQ_SM90_GEMM_SOURCES)
get_property(ZQ_SM80_GEMM_SOURCES GLOBAL PROPERTY ZQ_SM80_GEMM_SOURCES)
get_property(_zq_registry_decls GLOBAL PROPERTY ZQ_GEMM_REGISTRY_DECLS)
get_property(_zq_registry_calls GLOBAL PROPERTY ZQ_GEMM_REGISTRY_CALLS)
file(CONFIGURE OUTPUT "${_zq_gen_dir}/gemm_kernels.gen.cpp" CONTENT "// Generated by cmake/gemm_tiles.cmake: the registry of every GEMM kernel in this build.
#include <vector>

#include \"zq_kernels.h\"

namespace zq::gen {
${_zq_registry_decls}}  // namespace zq::gen

namespace zq {
const std::vector<GemmKernel>& gemm_kernels() {
  static const std::vector<GemmKernel> table = [] {
    std::vector<GemmKernel> all;
    using namespace zq::gen;
${_zq_registry_calls}    return all;
  }();
  return table;
}
}  // namespace zq
" @ONLY)
set(ZQ_GEMM_REGISTRY_SOURCE "${_zq_gen_dir}/gemm_kernels.gen.cpp")
