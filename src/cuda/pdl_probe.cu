// pdl_probe.cu: test support for programmatic dependent launch (PDL); not used by any op.
//
// debug_delayed_copy launches a kernel that signals griddepcontrol.launch_dependents at ENTRY,
// spins for spin_us microseconds (%globaltimer), then copies `bytes` from src to dst. A successor
// launched with PDL may therefore start while dst still holds old data: it is correct only if it
// executes griddepcontrol.wait before reading dst (the wait returns once this grid has completed
// and its writes are visible). tests/test_gemm_gpu.py puts a GEMM right after it, eagerly and in a
// CUDA graph, and compares with the reference: that is the guard that our sm90 GEMMs wait.
#include <cstdint>
#include <string>

#include "zq_kernels.h"

namespace zq {
namespace {

__global__ void delayed_copy_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, size_t bytes,
                                    unsigned long long spin_ns) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < spin_ns);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes; i += stride) dst[i] = src[i];
}

}  // namespace

std::string debug_delayed_copy(const void* src, void* dst, size_t bytes, int spin_us, cudaStream_t stream) {
  if (spin_us < 0 || spin_us > 1000000) return "spin_us must be in [0, 1e6]";
  if (bytes == 0) return {};
  delayed_copy_kernel<<<64, 256, 0, stream>>>(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst),
                                              bytes, 1000ull * static_cast<unsigned long long>(spin_us));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("debug_delayed_copy: launch failed: ") + cudaGetErrorString(err);
  return {};
}

}  // namespace zq
