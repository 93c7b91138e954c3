// module.cpp: the nanobind module zqkernels._C (interface: src/cpp/README.md).
//
// No libtorch: tensors arrive as device addresses + sizes, already validated by the Python ops
// (python/zqkernels/ops/); the binding files re-check what would otherwise crash the GPU (null
// pointers, alignment, ranges) and turn a kernel's error string into a Python RuntimeError.
// Nothing here allocates device memory or synchronizes. One binding file per op stem.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {
void bind_gemm(nb::module_& m);
void bind_quantize(nb::module_& m);
void bind_rope(nb::module_& m);
void bind_attention(nb::module_& m);
}  // namespace zqb

NB_MODULE(_C, m) {
  m.doc() = "zqkernels compiled kernels (CUDA). Use the zqkernels package, not this module.";

  m.def("compiled_archs", []() {
    std::vector<std::string> out;
    std::string s = ZQ_COMPILED_ARCHS;  // e.g. "sm_80;sm_90;sm_90a", set by CMake
    size_t start = 0;
    while (start <= s.size()) {
      size_t end = s.find(';', start);
      if (end == std::string::npos) end = s.size();
      if (end > start) out.push_back(s.substr(start, end - start));
      start = end + 1;
    }
    return out;
  });

  {
    const char* e = std::getenv("ZQKERNELS_PDL");
    if (e && std::string(e) == "0") zq::gemm_tuning().pdl = false;
    const char* w = std::getenv("ZQKERNELS_W4A8_EARLY_WEIGHTS");  // for A / B runs of whole models
    if (w && std::string(w) == "0") zq::gemm_tuning().w4a8_early_weights = false;
    const char* c = std::getenv("ZQKERNELS_ROW_CLUSTER");  // for A / B runs of whole models
    if (c && std::string(c) == "0") zq::row_quant_set_cluster(0);
    const char* v = std::getenv("ZQKERNELS_W4A8_VARIANT");  // an experiment's loading schedule, 0..9
    if (v && v[0] >= '0' && v[0] <= '9' && v[1] == '\0') zq::gemm_tuning().w4a8_variant = v[0] - '0';
  }

  zqb::bind_gemm(m);
  zqb::bind_quantize(m);
  zqb::bind_rope(m);
  zqb::bind_attention(m);

  m.def(
      "_debug_delayed_copy",
      [](uintptr_t src, uintptr_t dst, size_t bytes, int spin_us, int device, uintptr_t stream) {
        zqb::check_ptr("_debug_delayed_copy", "src", src, 1);
        zqb::check_ptr("_debug_delayed_copy", "dst", dst, 1);
        zqb::DeviceGuard guard(device);
        const std::string err = zq::debug_delayed_copy(reinterpret_cast<const void*>(src), reinterpret_cast<void*>(dst),
                                                       bytes, spin_us, reinterpret_cast<cudaStream_t>(stream));
        if (!err.empty()) zqb::fail("_debug_delayed_copy", err);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("bytes"), nb::arg("spin_us"), nb::arg("device"), nb::arg("stream"),
      "Test support: a kernel that triggers dependent launch at entry, spins, then copies (src/cuda/pdl_probe.cu).");
}
