// common.h: helpers every binding file of zqkernels._C shares (errors, devices, pointer checks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace zqb {

[[noreturn]] inline void fail(const std::string& op, const std::string& msg) {
  throw std::runtime_error(op + ": " + msg);
}

inline void check_cuda(const std::string& op, cudaError_t err) {
  if (err != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(err));
}

// Multiprocessor count per device, cached: the persistent tile schedulers size their grids by it.
inline int sm_count(int device) {
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
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0, device_ = 0;
};

inline void check_ptr(const char* op, const char* what, uintptr_t p, uintptr_t align) {
  if (p == 0) fail(op, std::string(what) + " is a null pointer");
  if (p % align != 0) {
    fail(op, std::string(what) + " must be " + std::to_string(align) + "-byte aligned, got address " +
                 std::to_string(p));
  }
}

}  // namespace zqb
