# third_party/cutlass/cutlass.cmake: how the build finds CUTLASS headers. We never vendor CUTLASS.
#
# Order:
#   1. CUTLASS_DIR (CMake cache variable or environment variable): a CUTLASS source root holding
#      include/cutlass/cutlass.h and tools/util/include/.
#   2. The pinned PyPI package nvidia-cutlass==${ZQ_CUTLASS_VERSION} if it is importable by the
#      building Python (it ships the headers under cutlass_library/source/).
#   3. Otherwise that wheel is downloaded with `python -I -m pip download` into the build tree and its
#      headers extracted (needs network; set CUTLASS_DIR on offline machines).
# Sets ZQ_CUTLASS_INCLUDE_DIRS.
set(ZQ_CUTLASS_VERSION "4.2.0.0")

if(NOT CUTLASS_DIR AND DEFINED ENV{CUTLASS_DIR})
  set(CUTLASS_DIR "$ENV{CUTLASS_DIR}")
endif()

if(NOT CUTLASS_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.metadata as m, os, cutlass_library as c; v = m.version('nvidia-cutlass'); print(v + ';' + os.path.join(os.path.dirname(c.__file__), 'source'))"
    RESULT_VARIABLE _zq_rc OUTPUT_VARIABLE _zq_out ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(_zq_rc EQUAL 0)
    list(GET _zq_out 0 _zq_ver)
    list(GET _zq_out 1 _zq_src)
    if(_zq_ver STREQUAL ZQ_CUTLASS_VERSION)
      set(CUTLASS_DIR "${_zq_src}")
    else()
      message(STATUS "zqkernels: installed nvidia-cutlass is ${_zq_ver}, not the pinned ${ZQ_CUTLASS_VERSION}; ignoring it")
    endif()
  endif()
endif()

if(NOT CUTLASS_DIR)
  set(_zq_dl "${CMAKE_BINARY_DIR}/_cutlass_wheel")
  file(GLOB _zq_whl "${_zq_dl}/nvidia_cutlass-${ZQ_CUTLASS_VERSION}-*.whl")
  if(NOT _zq_whl)
    message(STATUS "zqkernels: downloading nvidia-cutlass==${ZQ_CUTLASS_VERSION} for its headers")
    # Under pip's build isolation the build interpreter sees only the isolated overlay, which has
    # no pip; `python -I` (isolated mode) ignores that overlay and finds the environment's own pip.
    foreach(_zq_flags "-I" "")
      execute_process(
        COMMAND "${Python_EXECUTABLE}" ${_zq_flags} -m pip download --no-deps --only-binary=:all:
                --disable-pip-version-check "nvidia-cutlass==${ZQ_CUTLASS_VERSION}" -d "${_zq_dl}"
        RESULT_VARIABLE _zq_rc OUTPUT_QUIET)
      file(GLOB _zq_whl "${_zq_dl}/nvidia_cutlass-${ZQ_CUTLASS_VERSION}-*.whl")
      if(_zq_whl)
        break()
      endif()
    endforeach()
  endif()
  if(_zq_whl)
    file(ARCHIVE_EXTRACT INPUT "${_zq_whl}" DESTINATION "${CMAKE_BINARY_DIR}/_cutlass"
         PATTERNS "cutlass_library/source/include/*" "cutlass_library/source/tools/util/include/*")
    set(CUTLASS_DIR "${CMAKE_BINARY_DIR}/_cutlass/cutlass_library/source")
  endif()
endif()

if(NOT CUTLASS_DIR OR NOT EXISTS "${CUTLASS_DIR}/include/cutlass/cutlass.h")
  message(FATAL_ERROR
    "zqkernels: CUTLASS headers not found (CUTLASS_DIR='${CUTLASS_DIR}'). Set CUTLASS_DIR to a CUTLASS "
    "${ZQ_CUTLASS_VERSION} source root, or `pip install nvidia-cutlass==${ZQ_CUTLASS_VERSION}` and build with "
    "--no-build-isolation, or build CPU-only with -DZQ_ENABLE_CUDA=OFF.")
endif()

message(STATUS "zqkernels: CUTLASS headers from ${CUTLASS_DIR}")
set(ZQ_CUTLASS_INCLUDE_DIRS "${CUTLASS_DIR}/include" "${CUTLASS_DIR}/tools/util/include")
