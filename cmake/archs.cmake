# cmake/archs.cmake: which GPU archs the CUDA kernels are compiled for (included by CMakeLists.txt).
#
# Input: ZQ_CUDA_ARCHS (CMake variable or environment variable, ';' or ',' separated).
#   90a -> Hopper kernels (wgmma/TMA; sm_90a SASS only) + sm_90 SASS for the portable kernels
#   8x  -> (80, 86, 87, 89) Ampere/Ada kernels (mma.sync, CUTLASS 2.x) with SASS for that arch.
#          When 90a is also listed, they are compiled for sm_90 too, so an H100 can run (and test) them.
#   other plain numbers (100, 120, ...) add SASS for the portable kernels only.
# When it is empty or unset: the archs of the GPUs nvidia-smi sees at build time (9.0 -> 90a,
# 8.x -> 8x), or every supported arch ("80;90a") when there is none or nvidia-smi is absent.
#
# Output: ZQ_CUDA_ARCHS (the list used), ZQ_HAVE_SM90, ZQ_HAVE_SM80, _portable_archs,
# _portable_gencode (nvcc -gencode flags for the portable and the sm80 sources), _max_arch,
# ZQ_COMPILED_ARCHS (what zqkernels.info() reports).
set(ZQ_ALL_CUDA_ARCHS "80;90a")

if(NOT DEFINED ZQ_CUDA_ARCHS OR ZQ_CUDA_ARCHS STREQUAL "")
  if(DEFINED ENV{ZQ_CUDA_ARCHS} AND NOT "$ENV{ZQ_CUDA_ARCHS}" STREQUAL "")
    set(ZQ_CUDA_ARCHS "$ENV{ZQ_CUDA_ARCHS}")
    set(_zq_arch_reason "as set by ZQ_CUDA_ARCHS")
  else()
    # Default: the GPUs of this machine, so a local build compiles only what it can run.
    set(ZQ_CUDA_ARCHS "")
    set(_zq_arch_reason "")
    find_program(ZQ_NVIDIA_SMI nvidia-smi)
    if(ZQ_NVIDIA_SMI)
      execute_process(COMMAND "${ZQ_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                      RESULT_VARIABLE _zq_smi_rc OUTPUT_VARIABLE _zq_smi_out ERROR_QUIET
                      OUTPUT_STRIP_TRAILING_WHITESPACE TIMEOUT 30)
      if(_zq_smi_rc EQUAL 0)
        string(REPLACE "\n" ";" _zq_caps "${_zq_smi_out}")
        set(_zq_seen "")
        foreach(_zq_cap IN LISTS _zq_caps)
          string(STRIP "${_zq_cap}" _zq_cap)
          if(NOT _zq_cap MATCHES "^([0-9]+)\\.([0-9]+)$")
            continue()
          endif()
          set(_zq_arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
          list(APPEND _zq_seen "sm_${_zq_arch}")
          if(_zq_arch EQUAL 90)
            set(_zq_arch 90a)
          elseif(_zq_arch LESS 80 OR _zq_arch GREATER_EQUAL 90)
            # Older than Ampere: unsupported. Newer than Hopper: no kernels of its own yet.
            message(STATUS "zqkernels: skipping visible GPU sm_${_zq_arch}: no kernels target it")
            continue()
          endif()
          if(NOT _zq_arch IN_LIST ZQ_CUDA_ARCHS)
            list(APPEND ZQ_CUDA_ARCHS ${_zq_arch})
          endif()
        endforeach()
        list(REMOVE_DUPLICATES _zq_seen)
        string(REPLACE ";" ", " _zq_seen "${_zq_seen}")
        if(ZQ_CUDA_ARCHS)
          set(_zq_arch_reason "the GPUs visible at build time (nvidia-smi: ${_zq_seen}); set ZQ_CUDA_ARCHS to override")
        elseif(_zq_seen)
          set(_zq_arch_reason "no visible GPU is supported (nvidia-smi: ${_zq_seen}): all supported archs")
        endif()
      endif()
    endif()
    if(NOT ZQ_CUDA_ARCHS)
      set(ZQ_CUDA_ARCHS "${ZQ_ALL_CUDA_ARCHS}")
      if(NOT _zq_arch_reason)
        if(ZQ_NVIDIA_SMI)
          set(_zq_arch_reason "nvidia-smi shows no GPU or failed: all supported archs")
        else()
          set(_zq_arch_reason "no nvidia-smi (no GPU visible): all supported archs")
        endif()
      endif()
    endif()
  endif()
else()
  set(_zq_arch_reason "as set by ZQ_CUDA_ARCHS")
endif()
string(REPLACE "," ";" ZQ_CUDA_ARCHS "${ZQ_CUDA_ARCHS}")
message(STATUS "zqkernels: ZQ_CUDA_ARCHS=\"${ZQ_CUDA_ARCHS}\" (${_zq_arch_reason})")

set(ZQ_HAVE_SM90 OFF)
set(ZQ_HAVE_SM80 OFF)
set(_portable_gencode "")   # portable kernels and the sm80 GEMMs: SASS for every listed arch
set(_portable_archs "")
set(_max_arch 0)
foreach(a IN LISTS ZQ_CUDA_ARCHS)
  string(STRIP "${a}" a)
  if(a STREQUAL "")
    continue()
  elseif(a STREQUAL "90a")
    set(ZQ_HAVE_SM90 ON)
    set(a 90)
  elseif(NOT a MATCHES "^[0-9]+$")
    message(FATAL_ERROR "zqkernels: ZQ_CUDA_ARCHS entry '${a}' is not an arch like 80, 86, 89, 90 or 90a")
  endif()
  if(a LESS 80)
    message(FATAL_ERROR "zqkernels: arch ${a} is older than sm_80 (Ampere), which the kernels need")
  endif()
  if(a LESS 90)
    # Any sm_8x (80, 86, 87, 89) runs the CUTLASS 2.x sm80 GEMMs, compiled for it below.
    set(ZQ_HAVE_SM80 ON)
  endif()
  if(NOT a IN_LIST _portable_archs)
    list(APPEND _portable_archs ${a})
    list(APPEND _portable_gencode "-gencode=arch=compute_${a},code=sm_${a}")
  endif()
  if(a GREATER _max_arch)
    set(_max_arch ${a})
  endif()
endforeach()
if(_max_arch EQUAL 0)
  message(FATAL_ERROR "zqkernels: ZQ_CUDA_ARCHS names no arch")
endif()
# PTX of the newest arch, so a future GPU can JIT the portable kernels.
list(APPEND _portable_gencode "-gencode=arch=compute_${_max_arch},code=compute_${_max_arch}")

set(ZQ_COMPILED_ARCHS "")
foreach(a IN LISTS _portable_archs)
  list(APPEND ZQ_COMPILED_ARCHS "sm_${a}")
endforeach()
if(ZQ_HAVE_SM90)
  list(APPEND ZQ_COMPILED_ARCHS "sm_90a")
endif()
message(STATUS "zqkernels: CUDA archs ${ZQ_COMPILED_ARCHS} (sm90 kernels: ${ZQ_HAVE_SM90}, sm80 kernels: ${ZQ_HAVE_SM80})")
