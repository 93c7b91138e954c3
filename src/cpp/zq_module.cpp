// zq_module.cpp: the nanobind module zqkernels._C (interface: src/cpp/README.md).
//
// No libtorch: tensors arrive as device addresses + sizes, already validated by
// python/zqkernels/_ops.py; this layer re-checks what would otherwise crash the GPU (null
// pointers, alignment, ranges), selects the backend, and turns a kernel's error string into a
// Python RuntimeError. Nothing here allocates device memory or synchronizes.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "zq_kernels.h"

namespace nb = nanobind;

namespace {

// A GEMM backend's entry points (see ZQ_DECLARE_INT8_GEMM_BACKEND in zq_kernels.h).
struct Backend {
  const char* name;
  int (*num_configs)();
  const char* (*config_name)(int);
  int (*auto_config)(int, int, int);
  size_t (*workspace_size)(const zq::Int8GemmArgs&, int);
  std::string (*run)(const zq::Int8GemmArgs&, int);
};

const std::vector<Backend>& backends() {
  static const std::vector<Backend> all = {
#ifdef ZQ_HAVE_SM90
      {"sm90", zq::sm90_int8_gemm_num_configs, zq::sm90_int8_gemm_config_name,
       zq::sm90_int8_gemm_auto_config, zq::sm90_int8_gemm_workspace_size, zq::sm90_int8_gemm_run},
#endif
#ifdef ZQ_HAVE_SM80
      {"sm80", zq::sm80_int8_gemm_num_configs, zq::sm80_int8_gemm_config_name,
       zq::sm80_int8_gemm_auto_config, zq::sm80_int8_gemm_workspace_size, zq::sm80_int8_gemm_run},
#endif
  };
  return all;
}

const Backend& get_backend(const std::string& name) {
  for (const auto& b : backends()) {
    if (name == b.name) return b;
  }
  std::string have;
  for (const auto& b : backends()) have += std::string(have.empty() ? "" : ", ") + b.name;
  throw std::invalid_argument("int8_gemm: backend '" + name + "' is not compiled into this build (compiled: " +
                              (have.empty() ? std::string("none") : have) + ")");
}

[[noreturn]] void fail(const std::string& op, const std::string& msg) {
  throw std::runtime_error(op + ": " + msg);
}

void check_cuda(const std::string& op, cudaError_t err) {
  if (err != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(err));
}

// Multiprocessor count per device, cached: the persistent tile schedulers size their grids by it.
int sm_count(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) fail("zqkernels", "device index out of range");
  if (cache[device] == 0) {
    int n = 0;
    check_cuda("zqkernels", cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = n;
  }
  return cache[device];
}

// Makes `device` current for the duration of a launch and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda("zqkernels", cudaGetDevice(&prev_));
    if (prev_ != device) check_cuda("zqkernels", cudaSetDevice(device));
    device_ = device;
  }
  ~DeviceGuard() {
    if (prev_ != device_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0, device_ = 0;
};

// Programmatic dependent launch for the sm90 GEMMs: on unless ZQKERNELS_PDL=0 (or set_pdl(False)).
bool& pdl_flag() {
  static bool on = [] {
    const char* e = std::getenv("ZQKERNELS_PDL");
    return !(e && std::string(e) == "0");
  }();
  return on;
}

// Scheduler tuning knobs for experiments (scripts/probe_gemm.py); 0 = library default.
int g_swizzle = 0, g_raster = 0;

zq::DType out_dtype_from(int code) {
  if (code == 0) return zq::DType::kBF16;
  if (code == 1) return zq::DType::kFP16;
  throw std::invalid_argument("int8_gemm: out_dtype code must be 0 (bf16) or 1 (fp16), got " +
                              std::to_string(code));
}

zq::Int8GemmArgs make_args(int M, int N, int K, int out_dtype, int device) {
  if (M <= 0 || N <= 0 || K <= 0) {
    throw std::invalid_argument("int8_gemm: M, N, K must be positive, got " + std::to_string(M) + ", " +
                                std::to_string(N) + ", " + std::to_string(K));
  }
  zq::Int8GemmArgs a;
  a.M = M;
  a.N = N;
  a.K = K;
  a.out_dtype = out_dtype_from(out_dtype);
  a.device = device;
  a.sm_count = sm_count(device);
  a.pdl = pdl_flag();
  a.swizzle = g_swizzle;
  a.raster = g_raster;
  return a;
}

int resolve_config(const Backend& b, int config, int M, int N, int K) {
  if (config == -1) return b.auto_config(M, N, K);
  if (config < 0 || config >= b.num_configs()) {
    throw std::invalid_argument(std::string("int8_gemm: config ") + std::to_string(config) +
                                " out of range for backend " + b.name + " (" +
                                std::to_string(b.num_configs()) + " configs)");
  }
  return config;
}

void check_ptr(const char* op, const char* what, uintptr_t p, uintptr_t align) {
  if (p == 0) fail(op, std::string(what) + " is a null pointer");
  if (p % align != 0) {
    fail(op, std::string(what) + " must be " + std::to_string(align) + "-byte aligned, got address " +
                 std::to_string(p));
  }
}

}  // namespace

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

  m.def(
      "has_backend",
      [](const std::string& name) {
        for (const auto& b : backends()) {
          if (name == b.name) return true;
        }
        return false;
      },
      nb::arg("backend"));

  m.def("set_pdl", [](bool on) { pdl_flag() = on; }, nb::arg("enabled"),
        "Enable/disable programmatic dependent launch of the sm90 GEMMs (default on; env ZQKERNELS_PDL=0).");
  m.def("pdl_enabled", []() { return pdl_flag(); });
  m.def(
      "set_quantize_threads",
      [](int threads) {
        if (threads != 0 && threads != 128 && threads != 256 && threads != 512 && threads != 1024) {
          throw std::invalid_argument("set_quantize_threads: threads must be 0 (auto), 128, 256, 512 or 1024");
        }
        zq::quantize_per_token_set_threads(threads);
      },
      nb::arg("threads"), "Experiment knob: threads per row of quantize_per_token's register path (0 = auto).");
  m.def(
      "set_scheduler_tuning",
      [](int swizzle, int raster) {
        if (swizzle != 0 && swizzle != 1 && swizzle != 2 && swizzle != 4 && swizzle != 8) {
          throw std::invalid_argument("set_scheduler_tuning: swizzle must be 0, 1, 2, 4 or 8");
        }
        if (raster < 0 || raster > 2) throw std::invalid_argument("set_scheduler_tuning: raster must be 0, 1 or 2");
        g_swizzle = swizzle;
        g_raster = raster;
      },
      nb::arg("swizzle"), nb::arg("raster"),
      "Experiment knob: sm90 persistent scheduler swizzle (0 default, 1/2/4/8) and raster (0 auto, 1 along M, 2 along N).");

  m.def("int8_gemm_configs", [](const std::string& backend) {
    const Backend& b = get_backend(backend);
    std::vector<std::string> names;
    for (int i = 0; i < b.num_configs(); ++i) names.emplace_back(b.config_name(i));
    return names;
  }, nb::arg("backend"));

  m.def("int8_gemm_auto_config", [](const std::string& backend, int M, int N, int K) {
    return get_backend(backend).auto_config(M, N, K);
  }, nb::arg("backend"), nb::arg("M"), nb::arg("N"), nb::arg("K"));

  m.def("int8_gemm_workspace_size",
        [](const std::string& backend, int config, int M, int N, int K, int device) -> size_t {
          const Backend& b = get_backend(backend);
          zq::Int8GemmArgs a = make_args(M, N, K, 0, device);
          return b.workspace_size(a, resolve_config(b, config, M, N, K));
        },
        nb::arg("backend"), nb::arg("config"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("device"));

  m.def(
      "int8_gemm",
      [](const std::string& backend, int config, uintptr_t xq, uintptr_t wq, uintptr_t sx, uintptr_t sw,
         uintptr_t bias, uintptr_t out, int M, int N, int K, int out_dtype, uintptr_t workspace,
         size_t workspace_bytes, int device, uintptr_t stream) {
        const Backend& b = get_backend(backend);
        zq::Int8GemmArgs a = make_args(M, N, K, out_dtype, device);
        const char* op = "int8_gemm";
        check_ptr(op, "xq", xq, 16);
        check_ptr(op, "wq", wq, 16);
        check_ptr(op, "sx", sx, 4);
        check_ptr(op, "sw", sw, 4);
        check_ptr(op, "out", out, 16);
        if (bias != 0) check_ptr(op, "bias", bias, 2);
        if (workspace_bytes > 0) check_ptr(op, "workspace", workspace, 16);
        a.xq = reinterpret_cast<const int8_t*>(xq);
        a.wq = reinterpret_cast<const int8_t*>(wq);
        a.sx = reinterpret_cast<const float*>(sx);
        a.sw = reinterpret_cast<const float*>(sw);
        a.bias = reinterpret_cast<const void*>(bias);
        a.out = reinterpret_cast<void*>(out);
        a.workspace = reinterpret_cast<void*>(workspace);
        a.workspace_bytes = workspace_bytes;
        a.stream = reinterpret_cast<cudaStream_t>(stream);
        const int cfg = resolve_config(b, config, M, N, K);
        DeviceGuard guard(device);
        const std::string err = b.run(a, cfg);
        if (!err.empty()) fail(op, std::string("[") + b.name + "/" + b.config_name(cfg) + "] " + err);
      },
      nb::arg("backend"), nb::arg("config"), nb::arg("xq"), nb::arg("wq"), nb::arg("sx"), nb::arg("sw"),
      nb::arg("bias"), nb::arg("out"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("out_dtype"),
      nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("device"), nb::arg("stream"));

  m.def(
      "quantize_per_token",
      [](uintptr_t x, int x_dtype, int64_t x_row_stride, uintptr_t xq, uintptr_t sx, int M, int K,
         int device, uintptr_t stream) {
        const char* op = "quantize_per_token";
        if (x_dtype < 0 || x_dtype > 2) {
          fail(op, "x_dtype code must be 0 (bf16), 1 (fp16) or 2 (fp32), got " + std::to_string(x_dtype));
        }
        if (M < 0 || K < 0) fail(op, "M and K must be >= 0");
        if (M == 0 || K == 0) return;
        if (M == 1) x_row_stride = K;  // a single row's stride is never used; torch may report any value
        if (x_row_stride < K) fail(op, "x row stride must be >= K, got " + std::to_string(x_row_stride));
        check_ptr(op, "x", x, x_dtype == 2 ? 4 : 2);
        check_ptr(op, "xq", xq, 1);
        check_ptr(op, "sx", sx, 4);
        DeviceGuard guard(device);
        const std::string err = zq::quantize_per_token_int8(
            reinterpret_cast<const void*>(x), static_cast<zq::DType>(x_dtype), x_row_stride,
            reinterpret_cast<int8_t*>(xq), reinterpret_cast<float*>(sx), M, K,
            reinterpret_cast<cudaStream_t>(stream));
        if (!err.empty()) fail(op, err);
      },
      nb::arg("x"), nb::arg("x_dtype"), nb::arg("x_row_stride"), nb::arg("xq"), nb::arg("sx"), nb::arg("M"),
      nb::arg("K"), nb::arg("device"), nb::arg("stream"));
}
