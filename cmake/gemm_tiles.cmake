# cmake/gemm_tiles.cmake: the generator of the GEMM kernels' translation units, from THE table of
# GEMM tiles (cmake/gemm_tile_table.cmake).
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
#             w4a8_mixed_fused_zp (the fused mode for the zero-point INT4 format),
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
set(_zq_recipe_header_w4a8_mixed_fused_zp "gemm_rowwise")
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
# The default size: on <= 4 cores 8 kernels a unit (measured on 2 cores: 16 sm90 + 2 sm80 units,
# 728 s against 1154 s for one tile a unit; a 12-kernel unit took 120 s and 9.7 GB); on more cores
# the fewest kernels a unit that still gives every core one unit, ceil(kernels / cores), so that
# the units run in one wave (about 70 kernels on 16 cores: 5 a unit). Both capped by memory: about
# 1.3 GB + 0.7 GB per kernel a unit (the 12-kernel unit's 9.7 GB), one unit per core, within 3/4
# of the machine's memory.
cmake_host_system_information(RESULT _zq_cores QUERY NUMBER_OF_LOGICAL_CORES)
cmake_host_system_information(RESULT _zq_mem_mib QUERY TOTAL_PHYSICAL_MEMORY)
math(EXPR _zq_mem_gb "${_zq_mem_mib} / 1024")
function(zq_kernels_per_tu kernels out_var)
  if(_zq_cores LESS_EQUAL 4)
    set(k 8)
  else()
    math(EXPR k "(${kernels} + ${_zq_cores} - 1) / ${_zq_cores}")
  endif()
  # memory: cores * (1.3 + 0.7 k) GB <= 0.75 * mem  <=>  k <= (75 mem / cores - 130) / 70
  math(EXPR kmem "(75 * ${_zq_mem_gb} / ${_zq_cores} - 130) / 70")
  if(k GREATER kmem)
    set(k ${kmem})
  endif()
  if(k GREATER 8)
    set(k 8)
  endif()
  if(k LESS 1)
    set(k 1)
  endif()
  set(${out_var} ${k} PARENT_SCOPE)
endfunction()

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
  if(_zq_counting)  # first reading of the table: count this build's kernels only
    list(LENGTH outs n)
    get_property(c GLOBAL PROPERTY ZQ_KERNEL_COUNT)
    math(EXPR c "${c} + ${n}")
    set_property(GLOBAL PROPERTY ZQ_KERNEL_COUNT ${c})
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
# The table (cmake/gemm_tile_table.cmake), read twice: first only counting this build's kernels,
# which sets the translation-unit size, then generating the units.
set(_zq_counting ON)
set_property(GLOBAL PROPERTY ZQ_KERNEL_COUNT 0)
include("${CMAKE_CURRENT_LIST_DIR}/gemm_tile_table.cmake")
set(_zq_counting OFF)
get_property(ZQ_KERNEL_COUNT GLOBAL PROPERTY ZQ_KERNEL_COUNT)
zq_kernels_per_tu("${ZQ_KERNEL_COUNT}" _zq_per_tu_default)
set(ZQ_KERNELS_PER_TU "${_zq_per_tu_default}" CACHE STRING "GEMM kernels per generated translation unit (1 = one tile per unit)")
message(STATUS "zqkernels: ${ZQ_KERNEL_COUNT} GEMM kernels, at most ${ZQ_KERNELS_PER_TU} per translation unit "
               "(${_zq_cores} cores, ${_zq_mem_gb} GB; -DZQ_KERNELS_PER_TU=N overrides)")
include("${CMAKE_CURRENT_LIST_DIR}/gemm_tile_table.cmake")

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
