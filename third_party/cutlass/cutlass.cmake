# third_party/cutlass/cutlass.cmake: how the build finds CUTLASS headers. We never vendor CUTLASS.
#
# Order:
#   1. CUTLASS_DIR (CMake cache variable or environment variable): a CUTLASS source root holding
#      include/cutlass/cutlass.h and tools/util/include/.
#   2. The pinned PyPI package nvidia-cutlass==${ZQ_CUTLASS_VERSION} if it is importable by the
#      building Python (it ships the headers under cutlass_library/source/).
#   3. Otherwise that wheel is downloaded with `python -I -m pip download` into the build tree (pip
#      --timeout 60, the whole download capped at 10 minutes), its sha256 checked against
#      ZQ_CUTLASS_WHEEL_SHA256 (pip --require-hashes, then file(SHA256)), and its headers extracted
#      once (needs network the first time; set CUTLASS_DIR on offline machines).
# Sets ZQ_CUTLASS_INCLUDE_DIRS.
set(ZQ_CUTLASS_VERSION "4.2.0.0")
# sha256 of nvidia_cutlass-${ZQ_CUTLASS_VERSION}-py3-none-any.whl as published on PyPI.
set(ZQ_CUTLASS_WHEEL_SHA256 "f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6")

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
  set(_zq_whl "${_zq_dl}/nvidia_cutlass-${ZQ_CUTLASS_VERSION}-py3-none-any.whl")
  set(_zq_src "${CMAKE_BINARY_DIR}/_cutlass/cutlass_library/source")
  set(_zq_stamp "${CMAKE_BINARY_DIR}/_cutlass/extracted.sha256")
  if(EXISTS "${_zq_whl}")
    file(SHA256 "${_zq_whl}" _zq_sha)
    if(NOT _zq_sha STREQUAL ZQ_CUTLASS_WHEEL_SHA256)
      file(REMOVE "${_zq_whl}")   # stale or truncated: download it again
    endif()
  endif()
  if(NOT EXISTS "${_zq_whl}")
    message(STATUS "zqkernels: downloading nvidia-cutlass==${ZQ_CUTLASS_VERSION} for its headers")
    # pip checks the hash itself (--require-hashes); file(SHA256) below checks it again.
    file(WRITE "${_zq_dl}/requirements.txt"
         "nvidia-cutlass==${ZQ_CUTLASS_VERSION} --hash=sha256:${ZQ_CUTLASS_WHEEL_SHA256}\n")
    # Under pip's build isolation the build interpreter sees only the isolated overlay, which has
    # no pip; `python -I` (isolated mode) ignores that overlay and finds the environment's own pip.
    set(_zq_errors "")
    foreach(_zq_flags "-I" "")
      execute_process(
        COMMAND "${Python_EXECUTABLE}" ${_zq_flags} -m pip download --no-deps --only-binary=:all:
                --require-hashes --timeout 60 --retries 2 --disable-pip-version-check --no-input
                --progress-bar off -r "${_zq_dl}/requirements.txt" -d "${_zq_dl}"
        RESULT_VARIABLE _zq_rc OUTPUT_QUIET ERROR_VARIABLE _zq_err TIMEOUT 600)
      if(EXISTS "${_zq_whl}")
        break()
      endif()
      string(STRIP "${_zq_err}" _zq_err)
      string(APPEND _zq_errors "\n`python ${_zq_flags} -m pip download` (exit status: ${_zq_rc}):\n${_zq_err}\n")
    endforeach()
    if(NOT EXISTS "${_zq_whl}")
      message(FATAL_ERROR
        "zqkernels: could not download nvidia-cutlass==${ZQ_CUTLASS_VERSION} (needed for the CUTLASS "
        "headers). pip said:${_zq_errors}\nOn an offline machine set CUTLASS_DIR to the headers "
        "(see third_party/cutlass/README.md), or build CPU-only with ZQ_ENABLE_CUDA=OFF.")
    endif()
  endif()
  file(SHA256 "${_zq_whl}" _zq_sha)
  if(NOT _zq_sha STREQUAL ZQ_CUTLASS_WHEEL_SHA256)
    file(REMOVE "${_zq_whl}")
    message(FATAL_ERROR
      "zqkernels: ${_zq_whl} has sha256 ${_zq_sha}, not the pinned ${ZQ_CUTLASS_WHEEL_SHA256}; "
      "deleted it. Re-run to download it again, or set CUTLASS_DIR.")
  endif()
  # Extract once per wheel: re-extracting on every configure would be harmless (the archive's
  # mtimes are kept) but slow.
  set(_zq_done "")
  if(EXISTS "${_zq_stamp}")
    file(READ "${_zq_stamp}" _zq_done)
  endif()
  if(NOT _zq_done STREQUAL ZQ_CUTLASS_WHEEL_SHA256 OR NOT EXISTS "${_zq_src}/include/cutlass/cutlass.h")
    file(REMOVE_RECURSE "${CMAKE_BINARY_DIR}/_cutlass")
    file(ARCHIVE_EXTRACT INPUT "${_zq_whl}" DESTINATION "${CMAKE_BINARY_DIR}/_cutlass"
         PATTERNS "cutlass_library/source/include/*" "cutlass_library/source/tools/util/include/*")
    file(WRITE "${_zq_stamp}" "${ZQ_CUTLASS_WHEEL_SHA256}")
  endif()
  set(CUTLASS_DIR "${_zq_src}")
endif()

if(NOT CUTLASS_DIR OR NOT EXISTS "${CUTLASS_DIR}/include/cutlass/cutlass.h")
  message(FATAL_ERROR
    "zqkernels: CUTLASS headers not found (CUTLASS_DIR='${CUTLASS_DIR}'). Set CUTLASS_DIR to a CUTLASS "
    "${ZQ_CUTLASS_VERSION} source root, or `pip install nvidia-cutlass==${ZQ_CUTLASS_VERSION}` and build with "
    "--no-build-isolation, or build CPU-only with -DZQ_ENABLE_CUDA=OFF.")
endif()

message(STATUS "zqkernels: CUTLASS headers from ${CUTLASS_DIR}")
set(ZQ_CUTLASS_INCLUDE_DIRS "${CUTLASS_DIR}/include" "${CUTLASS_DIR}/tools/util/include")
