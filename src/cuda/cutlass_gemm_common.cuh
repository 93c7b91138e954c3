// cutlass_gemm_common.cuh: pieces every CUTLASS-based GEMM family shares (needs CUTLASS, unlike
// gemm_registry.h, so it stays out of the host-only translation units): the host-side
// can_implement, and the device-side epilogue math (activation, static int8 output quantization)
// that both the sm90 and the sm80 epilogue visitor trees apply, so the two cannot drift apart.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "cutlass/array.h"
#include "cutlass/cutlass.h"

#include "gemm_registry.h"

namespace zq {

// can_implement of an 8-bit x 8-bit family: the shared argument checks, then CUTLASS's own.
// G: one instantiation of the family, with `Gemm` (a CUTLASS device adapter), kMaxK (the
// recipe's bound on K) and a static make_arguments(const GemmArgs&).
template <class G>
std::string cutlass_can_implement(const GemmArgs& a) {
  std::string err = check_gemm_args(a, G::kMaxK);
  if (!err.empty()) return err;
  const cutlass::Status st = G::Gemm::can_implement(G::make_arguments(a));
  if (st != cutlass::Status::kSuccess) {
    return std::string("CUTLASS cannot run this problem: ") + cutlassGetStatusString(st);
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Epilogue activation and static int8 output quantization (docs/SCALES.md, "Epilogue options").
//
// Chosen per call: the mode and the scale are kernel parameters (uniform over the grid), so every
// kernel supports every activation with one instantiation, a branch on the mode costs one compare
// per output fragment and never diverges, and nothing is read from device memory (a scalar read
// from memory would come before griddepcontrol.wait in the sm90 kernels). Everything is fp32;
// the caller rounds once to the output type (round to nearest even).
//
// The formulas avoid the cancellation of the textbook forms for negative v, where 1 + erf(x) and
// 1 + tanh(x) lose their significant bits (v = -5: 1 + erf(-3.54) ~ 6e-7, computed from two fp32
// numbers near 1 with a 6e-8 ulp, is off by 4%; further out, by 100%), so the kernel's relative
// error stays a few fp32 ulps (times the function's conditioning) everywhere:
//   gelu       0.5 * v * erfc(-v / sqrt(2))            (== 0.5 v (1 + erf(v / sqrt(2))))
//   gelu_tanh  v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3)   (== 0.5 v (1 + tanh(u)))
//   silu       v / (1 + exp(-v))
// The tails come out right: for large v, exp(-v) -> 0 and erfc(-v) -> 2 give v. For very negative v
// the results are tiny but not zero, and bf16 (fp32's exponent range) represents them: gelu(-13)
// ~ -1e-38, silu(-95) ~ -5e-40, gelu_tanh(-10.5) ~ -5e-40. erfc goes smoothly through the fp32
// subnormals to 0; exp(-z) in v / (1 + exp(-z)) (z = v, or 2u) would overflow for z < -88.7 and
// flush those results to -0, so past z < -80 (where 1 + exp(-z) == exp(-z) in fp32) the two use
// v * exp(z), which underflows gradually instead. (v = -inf gives NaN, as the reference's
// -inf * 0 does; v = +inf gives +inf.)
// Accurate CUDA math functions (erfcf, expf) and IEEE division: the build does not use
// --use_fast_math.
// ---------------------------------------------------------------------------------------------
namespace epi {

// The runtime part of the epilogue, as kernel parameters (the Arguments = Params of the
// activation node in both visitor trees).
struct ActArgs {
  int act = 0;            // GemmActivation
  float out_scale = 1.f;  // int8 output: q = clamp(rint(y / out_scale), -127, 127); else unused
};

inline ActArgs act_args(const GemmArgs& a) { return {static_cast<int>(a.activation), a.out_scale}; }

CUTLASS_DEVICE float gelu_erf(float v) { return 0.5f * v * erfcf(v * -0.70710678118654752440f); }

// v * sigmoid(z) = v / (1 + exp(-z)); for z < -80 (exp(-z) > 5e34, so 1 + exp(-z) rounds to exp(-z)),
// v * exp(z): the same value, without exp(-z) overflowing to inf (and the result to -0) for
// z < -88.7. One expf either way (a select, no branch).
CUTLASS_DEVICE float mul_sigmoid(float v, float z) {
  const bool tail = z < -80.f;
  const float e = expf(tail ? z : -z);
  return tail ? v * e : __fdiv_rn(v, 1.f + e);
}

CUTLASS_DEVICE float gelu_tanh(float v) {
  const float u = 0.79788456080286535588f * (v + 0.044715f * v * v * v);  // sqrt(2 / pi) * (...)
  return mul_sigmoid(v, 2.f * u);  // 0.5 (1 + tanh(u)) = sigmoid(2u)
}

CUTLASS_DEVICE float silu(float v) { return mul_sigmoid(v, v); }

// The activation of one value, out of line: one copy of this code per kernel. Inlined, its three
// branches were unrolled at every output value of the epilogue (64-128 per thread for the large
// tiles): the kernels' code grew ~9x (15k instructions instead of 1.7k, instruction-cache
// pressure beside the mainloop of the other consumer warpgroup) and their compile time ~2x. The
// default path (act == 0) never calls it.
static __noinline__ __device__ float activate(float v, int act) {  // static: one per TU
  switch (act) {
    case 1: return gelu_erf(v);
    case 2: return gelu_tanh(v);
    case 3: return silu(v);
    default: return v;
  }
}

// int8 output: q = clamp(rint(y / s), -127, 127) as an exact float, so the caller's conversion to
// int8 is exact. IEEE division (not y * (1 / s): the formula is the division). cvt.rni.s32.f32
// saturates +-inf to the int32 range and takes NaN to 0; -128 is never produced (symmetric grid).
CUTLASS_DEVICE float quantize_static(float y, float s) {
  int q = __float2int_rn(__fdiv_rn(y, s));
  q = q < -127 ? -127 : (q > 127 ? 127 : q);
  return static_cast<float>(q);
}

// The activation (+ quantization) as a CUTLASS compute functor of T = float (only its Arguments is
// used) or T = cutlass::Array<float, N> (an output fragment): f(v, args). kQuantize: int8 output.
template <class T, bool kQuantize>
struct ActQuantFn {
  using Arguments = ActArgs;

  CUTLASS_DEVICE T operator()(T const& v, Arguments const& args) const {
    T r = v;
    constexpr int kN = static_cast<int>(T::kElements);
    if (args.act != 0) {  // uniform over the grid: one branch per fragment, never divergent
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kN; ++i) r[i] = activate(v[i], args.act);
    }
    if constexpr (kQuantize) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kN; ++i) r[i] = quantize_static(r[i], args.out_scale);
    }
    return r;
  }
};

// ActQuantFn with the output type bound, in the `template <class> class ComputeFn` form CUTLASS's
// compute nodes take.
template <class ElementOut>
struct ActQuant {
  static constexpr bool kQuantize = std::is_same_v<ElementOut, int8_t>;
  template <class T>
  using Fn = ActQuantFn<T, kQuantize>;
};

}  // namespace epi

}  // namespace zq
