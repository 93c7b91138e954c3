// zq_kernels.h: the torch-free, Python-free C++ API of every zqkernels CUDA kernel.
//
// Conventions (docs/SCALES.md holds the derivation):
//   activations xq [M, K] int8 row-major, weights wq [N, K] int8 row-major (nn.Linear layout),
//   sx [M] float32 (token-wise), sw [N] float32 (channel-wise), bias [N] in the output dtype,
//   y[m, n] = sx[m] * sw[n] * sum_k xq[m, k] * wq[n, k] (+ bias[n]), int32 accumulation,
//   fp32 epilogue, one rounding to bf16/fp16 at the store.
//
// Every entry point returns an empty std::string on success and a human-readable message
// otherwise; nothing here throws, allocates device memory, or synchronizes the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_runtime.h>

namespace zq {

// Element types crossing the API. The numeric values are part of the Python binding ABI.
enum class DType : int { kBF16 = 0, kFP16 = 1, kFP32 = 2 };

struct Int8GemmArgs {
  const int8_t* xq = nullptr;  // [M, K], row stride K, 16-byte aligned
  const int8_t* wq = nullptr;  // [N, K], row stride K, 16-byte aligned
  const float* sx = nullptr;   // [M]
  const float* sw = nullptr;   // [N]
  const void* bias = nullptr;  // [N] of out_dtype, or nullptr for none
  void* out = nullptr;         // [M, N], row stride N, out_dtype, 16-byte aligned
  int M = 0, N = 0, K = 0;     // all > 0; K % 16 == 0 and N % 8 == 0 (TMA / vector alignment)
  DType out_dtype = DType::kBF16;  // kBF16 or kFP16
  void* workspace = nullptr;   // device scratch of at least *_workspace_size() bytes (may be 0)
  size_t workspace_bytes = 0;
  int device = 0;              // CUDA device ordinal the pointers live on (must be current)
  int sm_count = 0;            // multiprocessors of that device (persistent schedulers)
  cudaStream_t stream = nullptr;
  // Programmatic dependent launch (sm90): the GEMM's prologue (barrier init, TMA descriptor
  // prefetch) overlaps the previous kernel's tail; its loads still wait for that kernel to finish.
  bool pdl = true;
  // Persistent tile scheduler order (sm90): swizzle 0 = CUTLASS default (1), else 1/2/4/8 tiles;
  // raster 0 = heuristic, 1 = along M, 2 = along N. Tuning knobs; the defaults come from the probe.
  int swizzle = 0;
  int raster = 0;
};

// One GEMM backend = a family of tile configurations compiled for one architecture.
// Config indices are stable within a build; names describe the tile ("128x256x128_c2x1_coop").
// *_auto_config picks the measured-best config for a problem size (the M-bucket dispatch).
#define ZQ_DECLARE_INT8_GEMM_BACKEND(prefix)                                           \
  int prefix##_int8_gemm_num_configs();                                                \
  const char* prefix##_int8_gemm_config_name(int config);                              \
  int prefix##_int8_gemm_auto_config(int M, int N, int K);                             \
  size_t prefix##_int8_gemm_workspace_size(const Int8GemmArgs& args, int config);      \
  std::string prefix##_int8_gemm_run(const Int8GemmArgs& args, int config);

// Hopper (sm_90a): CUTLASS 3.x/4.x TMA warp-specialized kernels, epilogue visitor tree.
ZQ_DECLARE_INT8_GEMM_BACKEND(sm90)
// Ampere (sm_80, also compiled for sm_90 so it is testable on an H100): CUTLASS 2.x mma.sync.
ZQ_DECLARE_INT8_GEMM_BACKEND(sm80)

#undef ZQ_DECLARE_INT8_GEMM_BACKEND

// Token-wise symmetric INT8 quantization, one pass over x:
//   amax[m] = max_k |x[m, k]|, sx[m] = amax / 127, inv = 127 / amax (fp32, IEEE division),
//   xq[m, k] = clamp(rint(x[m, k] * inv), -127, 127) (round half to even);
//   amax == 0 gives sx = 0 and xq = 0 (never NaN).
// x: [M, K] with row stride x_row_stride elements and unit column stride; any K >= 1.
// xq: [M, K] contiguous; sx: [M].
// Tuning knob for experiments: threads per row of the register-resident path (128, 256, 512 or
// 1024; 0 = automatic). Not thread-safe; the default needs no call.
void quantize_per_token_set_threads(int threads);

std::string quantize_per_token_int8(const void* x, DType x_dtype, int64_t x_row_stride,
                                    int8_t* xq, float* sx, int M, int K, cudaStream_t stream);

}  // namespace zq
