// float_convert.cuh: the activation float types (bf16 / fp16 / fp32) of the non-GEMM kernels:
// conversions to and from fp32 (round to nearest even) and the host dispatch from DType to the type.
// Included by row_quant_stages.cuh (row_quant.cu), rope_cache.cu, decode_attention.cu and
// w4a8_stream_common.cuh (the W4A8 streaming GEMMs' epilogue and output-type dispatch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "zq_kernels.h"

namespace zq {
namespace {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// f(T{}) for the float type T of `dtype` (a generic lambda: [&](auto t) { return launch<decltype(t)>(a); });
// `unsupported` for any other dtype.
template <typename F>
std::string with_float_type(DType dtype, F&& f, const char* unsupported) {
  switch (dtype) {
    case DType::kBF16: return f(__nv_bfloat16{});
    case DType::kFP16: return f(__half{});
    case DType::kFP32: return f(float{});
    default: break;
  }
  return unsupported;
}

}  // namespace
}  // namespace zq
