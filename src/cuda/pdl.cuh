// pdl.cuh: programmatic dependent launch (PDL) for the library's own kernels (the row ops, RoPE +
// cache write, decode attention, the W4A8 streaming GEMMs; the sm90 CUTLASS GEMMs use CUTLASS's).
//
// A kernel launched with launch_pdl may start while the kernel before it on the stream is still
// running, once every CTA of that kernel has executed pdl_trigger (or exited). Each such kernel
// therefore executes pdl_wait before it touches memory the previous kernels write or read (the wait
// returns once the previous grid has completed and its writes are visible; that grid itself waited
// for its own predecessor, so the wait covers the whole stream order). The row-type kernels trigger
// at entry, before their wait: their successor launches at once and waits in turn, so a chain of
// small kernels pays one launch latency instead of one each, and a streaming GEMM at its end requests
// its weights (which no kernel of the chain writes) meanwhile. Trigger placement never affects
// correctness (docs/PERF_NOTES.md, "PDL and CUDA graphs"); the waits do, and
// tests/test_*_gpu.py::*late_producer* guard them.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "zq_kernels.h"

namespace zq {

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The current device's compute capability major (0 when it cannot be read). Cached per device.
inline int device_major() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  static int major[64] = {};  // 0: not yet read
  if (major[dev] == 0) {
    int m = 0;
    cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev);
    major[dev] = m > 0 ? m : -1;
  }
  return major[dev] > 0 ? major[dev] : 0;
}

// Whether the current device runs PDL (compute capability 9.0+) and it is switched on
// (gemm_tuning().pdl, env ZQKERNELS_PDL=0).
inline bool pdl_enabled() { return gemm_tuning().pdl && device_major() >= 9; }

// Whether `probe` (a kernel using sm_90 features: thread-block clusters) runs on the current device:
// compute capability 9.0+ and a binary built for it (an sm_80-only build also runs on an H100, where
// the cluster path would trap). Call sites keep the binary's half in a function-local static.
template <class... KArgs>
int binary_version(void (*probe)(KArgs...)) {
  cudaFuncAttributes at{};
  return cudaFuncGetAttributes(&at, probe) == cudaSuccess ? at.binaryVersion : 0;
}

// kernel<<<grid, block, smem, stream>>>(args...) in thread-block clusters of cluster_x CTAs along x
// (1: no cluster attribute; > 1 needs compute capability 9.0+), with programmatic stream
// serialization allowed when pdl_enabled(). Returns the launch's error code.
template <class... KArgs, class... Args>
cudaError_t launch_pdl_cluster(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                               cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl_enabled() ? 1 : 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cluster_x > 1) {
    attr[1].id = cudaLaunchAttributeClusterDimension;
    attr[1].val.clusterDim.x = cluster_x;
    attr[1].val.clusterDim.y = 1;
    attr[1].val.clusterDim.z = 1;
    cfg.numAttrs = 2;
  }
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization allowed
// when pdl_enabled(). Returns the launch's error code.
template <class... KArgs, class... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  return launch_pdl_cluster(kernel, grid, block, smem, stream, 1u, std::forward<Args>(args)...);
}

}  // namespace zq
