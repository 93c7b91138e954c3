// gemm.cpp: bindings of the GEMM registry (src/cuda/zq_kernels.h). Python resolves a kernel once per
// (device, recipe, arch, tile, output type, shape) with gemm_select / gemm_find /
// gemm_workspace_size and caches it; each call is then one gemm_run with plain integers (and the
// epilogue's runtime options: activation code, int8 out_scale).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common.h"
#include "zq_kernels.h"

namespace nb = nanobind;

namespace zqb {
namespace {

zq::DType out_dtype_from(const char* op, int code) {
  if (code >= 0 && code <= 3) return static_cast<zq::DType>(code);
  fail(op, "out_dtype code must be 0 (bf16), 1 (fp16), 2 (fp32) or 3 (int8), got " + std::to_string(code));
}

zq::GemmActivation activation_from(const char* op, int code) {
  if (code >= 0 && code <= 3) return static_cast<zq::GemmActivation>(code);
  fail(op, "activation code must be 0 (none), 1 (gelu), 2 (gelu_tanh) or 3 (silu), got " + std::to_string(code));
}

const zq::GemmKernel& kernel_at(const char* op, int id) {
  const auto& all = zq::gemm_kernels();
  if (id < 0 || id >= static_cast<int>(all.size())) {
    fail(op, "kernel id " + std::to_string(id) + " out of range [0, " + std::to_string(all.size()) + ")");
  }
  return all[id];
}

// The shape part of a call's arguments, as every binding below builds it.
zq::GemmArgs shape_args(const zq::GemmKernel& k, int M, int N, int K, int64_t lda, int64_t ldb) {
  zq::GemmArgs a;
  a.M = M;
  a.N = N;
  a.K = K;
  a.lda = lda;
  a.ldb = ldb;
  a.out_dtype = k.out_dtype;
  return a;
}

// The fields both W4A8 streaming GEMMs (W4A8FPArgs, W4A8IntArgs) share, from a binding's integer
// arguments; each binding then sets its own (pow2, or int_scales and flush_steps).
template <class Args>
Args w4a8_args(const char* op, uintptr_t a, int64_t lda, uintptr_t b, uintptr_t sg, int group_size, uintptr_t sa,
               uintptr_t sb, uintptr_t bias, uintptr_t out, int M, int N, int K, int out_dtype, int activation,
               int device, uintptr_t stream) {
  Args g;
  g.a = reinterpret_cast<const void*>(a);
  g.lda = lda;
  g.b = reinterpret_cast<const void*>(b);
  g.sg = reinterpret_cast<const void*>(sg);
  g.group_size = group_size;
  g.sa = reinterpret_cast<const float*>(sa);
  g.sb = reinterpret_cast<const float*>(sb);
  g.bias = reinterpret_cast<const void*>(bias);
  g.out = reinterpret_cast<void*>(out);
  g.M = M;
  g.N = N;
  g.K = K;
  g.out_dtype = out_dtype_from(op, out_dtype);
  g.activation = activation_from(op, activation);
  g.sm_count = sm_count(device);
  g.stream = reinterpret_cast<cudaStream_t>(stream);
  return g;
}

}  // namespace

void bind_gemm(nb::module_& m) {
  m.def(
      "gemm_kernels",
      []() {
        std::vector<std::tuple<std::string, std::string, std::string, int, bool>> out;
        for (const auto& k : zq::gemm_kernels()) {
          out.emplace_back(k.arch, k.recipe, k.tile, static_cast<int>(k.out_dtype), k.dispatched);
        }
        return out;
      },
      "Every GEMM kernel of this build: (arch, recipe, tile, out_dtype code, dispatched), id = index.");

  m.def(
      "gemm_select",
      [](const std::string& arch, const std::string& recipe, int out_dtype, int M, int N, int K)
          -> std::optional<std::string> {
        const char* t = zq::gemm_select_tile(arch, recipe, out_dtype_from("gemm_select", out_dtype), M, N, K);
        if (t == nullptr) return std::nullopt;
        return std::string(t);
      },
      nb::arg("arch"), nb::arg("recipe"), nb::arg("out_dtype"), nb::arg("M"), nb::arg("N"), nb::arg("K"),
      "The dispatch table's tile for a problem, or None when (arch, recipe, out_dtype) has no table.");

  m.def(
      "gemm_find",
      [](const std::string& arch, const std::string& recipe, const std::string& tile, int out_dtype) {
        const zq::DType out = out_dtype_from("gemm_find", out_dtype);
        const auto& all = zq::gemm_kernels();
        for (size_t i = 0; i < all.size(); ++i) {
          if (arch == all[i].arch && recipe == all[i].recipe && tile == all[i].tile && out == all[i].out_dtype) {
            return static_cast<int>(i);
          }
        }
        return -1;
      },
      nb::arg("arch"), nb::arg("recipe"), nb::arg("tile"), nb::arg("out_dtype"),
      "Kernel id of (arch, recipe, tile, out_dtype), or -1 if this build does not have it.");

  m.def(
      "gemm_workspace_size",
      [](int id, int M, int N, int K, int device) -> size_t {
        const zq::GemmKernel& k = kernel_at("gemm_workspace_size", id);
        if (M <= 0 || N <= 0 || K <= 0) fail("gemm_workspace_size", "M, N, K must be positive");
        zq::GemmArgs a = shape_args(k, M, N, K, K, K);
        a.device = device;
        a.sm_count = sm_count(device);
        return k.workspace_size(a);
      },
      nb::arg("kernel"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("device"));

  m.def(
      "gemm_can_implement",
      [](int id, int M, int N, int K, int64_t lda, int64_t ldb) -> std::string {
        const zq::GemmKernel& k = kernel_at("gemm_can_implement", id);
        // Representative aligned non-null addresses: only shapes and strides are being asked about.
        static const uintptr_t kAddr = 1 << 20;
        zq::GemmArgs a = shape_args(k, M, N, K, lda, ldb);
        a.a = reinterpret_cast<const void*>(kAddr);
        a.b = reinterpret_cast<const void*>(kAddr);
        a.sa = reinterpret_cast<const float*>(kAddr);
        a.sb = reinterpret_cast<const float*>(kAddr);
        a.sa_ld = (static_cast<int64_t>(M) + 3) / 4 * 4;
        a.out = reinterpret_cast<void*>(kAddr);
        return k.can_implement(a);
      },
      nb::arg("kernel"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("lda"), nb::arg("ldb"),
      "\"\" when kernel `kernel` takes this problem (shape and row strides), else why not.");

  m.def(
      "gemm_run",
      [](int id, uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, uintptr_t sa, uintptr_t sb, uintptr_t bias,
         uintptr_t out, int M, int N, int K, uintptr_t workspace, size_t workspace_bytes, int device,
         uintptr_t stream, int activation, float out_scale, uintptr_t sg, int group_size, int promote_blocks,
         int flush, int64_t sa_ld) {
        const zq::GemmKernel& k = kernel_at("gemm_run", id);
        zq::GemmArgs g = shape_args(k, M, N, K, lda, ldb);
        g.activation = activation_from("gemm_run", activation);
        g.out_scale = out_scale;
        g.a = reinterpret_cast<const void*>(a);
        g.b = reinterpret_cast<const void*>(b);
        g.sa = reinterpret_cast<const float*>(sa);
        g.sb = reinterpret_cast<const float*>(sb);
        g.sa_ld = sa_ld;
        g.bias = reinterpret_cast<const void*>(bias);
        g.out = reinterpret_cast<void*>(out);
        g.workspace = reinterpret_cast<void*>(workspace);
        g.workspace_bytes = workspace_bytes;
        g.device = device;
        g.sm_count = sm_count(device);
        g.stream = reinterpret_cast<cudaStream_t>(stream);
        g.sg = reinterpret_cast<const void*>(sg);
        g.group_size = group_size;
        g.promote_blocks = promote_blocks;
        g.flush = flush;
        DeviceGuard guard(device);
        const std::string err = k.run(g);
        if (!err.empty()) {
          fail("gemm", std::string("[") + k.arch + "_" + k.recipe + "/" + k.tile + "/" + zq::dtype_name(k.out_dtype) +
                           "] " + err);
        }
      },
      nb::arg("kernel"), nb::arg("a"), nb::arg("lda"), nb::arg("b"), nb::arg("ldb"), nb::arg("sa"), nb::arg("sb"),
      nb::arg("bias"), nb::arg("out"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("workspace"),
      nb::arg("workspace_bytes"), nb::arg("device"), nb::arg("stream"), nb::arg("activation") = 0,
      nb::arg("out_scale") = 1.0f, nb::arg("sg") = 0, nb::arg("group_size") = 0, nb::arg("promote_blocks") = 0,
      nb::arg("flush") = 0, nb::arg("sa_ld") = 0,
      "Launch kernel `kernel` on `stream`; pointers are ints (bias 0 = none). activation: 0 none, 1 gelu,\n"
      "2 gelu_tanh, 3 silu; out_scale: the static scale of an int8 output (by value). Group-scaled recipes\n"
      "(int8_group_int / int8_group_float) also take sg (scales transposed [K / group_size, N]), group_size,\n"
      "promote_blocks and flush (zq_kernels.h); fp8_blockwise takes sa / sb as block scales (M-major\n"
      "activation scales with row stride sa_ld, weight scales replicated 4x). Never synchronizes.");

  // W4A8-FP (docs/FP8.md): one hand-written kernel family, no registry (src/cuda/w4a8_gemm.cu).
  m.def(
      "w4a8_fp_gemm_run",
      [](uintptr_t a, int64_t lda, uintptr_t b, uintptr_t sg, bool pow2, int group_size, uintptr_t sa, uintptr_t sb,
         uintptr_t bias, uintptr_t out, int M, int N, int K, int out_dtype, int activation, int device,
         uintptr_t stream) {
        const char* op = "w4a8_fp_gemm";
#ifdef ZQ_HAVE_SM90
        auto g = w4a8_args<zq::W4A8FPArgs>(op, a, lda, b, sg, group_size, sa, sb, bias, out, M, N, K, out_dtype,
                                           activation, device, stream);
        g.pow2 = pow2;
        DeviceGuard guard(device);
        const std::string err = zq::w4a8_fp_gemm(g);
        if (!err.empty()) fail(op, err);
#else
        fail(op, "this build has no sm_90a kernels (ZQ_CUDA_ARCHS without 90a)");
#endif
      },
      nb::arg("a"), nb::arg("lda"), nb::arg("b"), nb::arg("sg"), nb::arg("pow2"), nb::arg("group_size"), nb::arg("sa"),
      nb::arg("sb"), nb::arg("bias"), nb::arg("out"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("out_dtype"),
      nb::arg("activation"), nb::arg("device"), nb::arg("stream"),
      "W4A8-FP GEMM (FP4 codes in layout m16k64 x FP8 activations); pointers are ints, bias 0 = none.");
  m.def(
      "w4a8_int_gemm_run",
      [](uintptr_t a, int64_t lda, uintptr_t b, uintptr_t sg, bool int_scales, int group_size, uintptr_t sa,
         uintptr_t sb, uintptr_t bias, uintptr_t out, int M, int N, int K, int out_dtype, int activation,
         int flush_steps, int device, uintptr_t stream, bool zero_point) {
        const char* op = "w4a8_gemm";
#ifdef ZQ_HAVE_SM90
        auto g = w4a8_args<zq::W4A8IntArgs>(op, a, lda, b, sg, group_size, sa, sb, bias, out, M, N, K, out_dtype,
                                            activation, device, stream);
        g.int_scales = int_scales;
        g.zero_point = zero_point;
        g.flush_steps = flush_steps;
        DeviceGuard guard(device);
        const std::string err = zq::w4a8_int_gemm(g);
        if (!err.empty()) fail(op, err);
#else
        fail(op, "this build has no sm_90a kernels (ZQ_CUDA_ARCHS without 90a)");
#endif
      },
      nb::arg("a"), nb::arg("lda"), nb::arg("b"), nb::arg("sg"), nb::arg("int_scales"), nb::arg("group_size"),
      nb::arg("sa"), nb::arg("sb"), nb::arg("bias"), nb::arg("out"), nb::arg("M"), nb::arg("N"), nb::arg("K"),
      nb::arg("out_dtype"), nb::arg("activation"), nb::arg("flush_steps"), nb::arg("device"), nb::arg("stream"),
      nb::arg("zero_point") = false,
      "W4A8 GEMM with integer (int32) or float group scales (INT4 codes in layout m16k32 x int8 activations); "
      "zero_point: sg holds the zero-point format's words s | (s z) << 8.");
  m.def(
      "int4_to_int8",
      [](uintptr_t packed, int N, int K, uintptr_t out, int device, uintptr_t stream) {
        const char* op = "int4_to_int8";
#ifdef ZQ_HAVE_SM90
        DeviceGuard guard(device);
        const std::string err = zq::int4_to_int8(reinterpret_cast<const uint8_t*>(packed), N, K,
                                                 reinterpret_cast<void*>(out), reinterpret_cast<cudaStream_t>(stream));
        if (!err.empty()) fail(op, err);
#else
        fail(op, "this build has no sm_90a kernels (ZQ_CUDA_ARCHS without 90a)");
#endif
      },
      nb::arg("packed"), nb::arg("N"), nb::arg("K"), nb::arg("out"), nb::arg("device"), nb::arg("stream"),
      "INT4 codes (layout m16k32) -> int8 bytes [N, K] row-major (the large-M path of w4a8_gemm).");
  m.def(
      "fp4_to_fp8",
      [](uintptr_t packed, uintptr_t sg, bool pow2, int group_size, int N, int K, uintptr_t out, int device,
         uintptr_t stream) {
        const char* op = "fp4_to_fp8";
#ifdef ZQ_HAVE_SM90
        DeviceGuard guard(device);
        const std::string err = zq::fp4_to_fp8(reinterpret_cast<const uint8_t*>(packed), reinterpret_cast<const void*>(sg),
                                               pow2, group_size, N, K, reinterpret_cast<void*>(out),
                                               reinterpret_cast<cudaStream_t>(stream));
        if (!err.empty()) fail(op, err);
#else
        fail(op, "this build has no sm_90a kernels (ZQ_CUDA_ARCHS without 90a)");
#endif
      },
      nb::arg("packed"), nb::arg("sg"), nb::arg("pow2"), nb::arg("group_size"), nb::arg("N"), nb::arg("K"),
      nb::arg("out"), nb::arg("device"), nb::arg("stream"),
      "FP4 codes (layout m16k64) + group scales -> E4M3 bytes [N, K] row-major, by the GEMM's conversion.");

  // Launch-time switches for experiments and debugging (never part of an op's signature).
  m.def("_debug_set_pdl", [](bool on) { zq::gemm_tuning().pdl = on; }, nb::arg("enabled"),
        "Launch the sm90 GEMMs with programmatic dependent launch (default on; env ZQKERNELS_PDL=0).");
  m.def("_debug_pdl", []() { return zq::gemm_tuning().pdl; });
  m.def(
      "_debug_set_w4a8_variant",
      [](int v) {
        if (v < 0 || v > 9) fail("_debug_set_w4a8_variant", "variant must be 0..9");
        return std::exchange(zq::gemm_tuning().w4a8_variant, v);
      },
      nb::arg("variant"),
      "W4A8 streaming kernels' schedule: 0 default; 1..5 w4a8_fp_gemm's (ZQ_EXPERIMENT_TILES builds only); 6 "
      "w4a8_fp_gemm at M <= 8 on register batches instead of the shared-memory ring (any build); 7 "
      "w4a8_gemm (INT4) at M <= 8 capped at 80 registers for 3 CTAs an SM (any build); 8 w4a8_gemm with the "
      "two-group scale loads at every group size; 9 w4a8_gemm never on the 80-register kernel (any build).");
  m.def(
      "_debug_set_w4a8_rows_per_cta",
      [](int r) {
        if (r != 0 && r != 1 && r != 2 && r != 4 && r != 8) {
          fail("_debug_set_w4a8_rows_per_cta", "rows per CTA must be 0 (the heuristic), 1, 2, 4 or 8");
        }
        return std::exchange(zq::gemm_tuning().w4a8_rows_per_cta, r);
      },
      nb::arg("rows"),
      "W4A8 streaming kernels' 16-row tiles per CTA: 0 the wave heuristic (default), else forced (probes).");
  m.def(
      "_debug_set_w4a8_early_weights",
      [](bool on) { return std::exchange(zq::gemm_tuning().w4a8_early_weights, on); },
      nb::arg("enabled"),
      "W4A8 streaming kernels: request the first weights before griddepcontrol.wait (default on; off: wait "
      "first). Returns the previous setting.");
  m.def(
      "_debug_set_fp8_promotion",
      [](int k) {
        if (k != 64 && k != 128) fail("_debug_set_fp8_promotion", "the interval must be 64 or 128 elements of K");
        return std::exchange(zq::gemm_tuning().fp8_promote_k, k);
      },
      nb::arg("k"),
      "fp8_gemm accurate mode: promote to fp32 every k (64 or 128) elements of K; returns the previous.");
  m.def(
      "_debug_set_scheduler",
      [](int swizzle, int raster) {
        if (swizzle != 0 && swizzle != 1 && swizzle != 2 && swizzle != 4 && swizzle != 8) {
          fail("_debug_set_scheduler", "swizzle must be 0, 1, 2, 4 or 8");
        }
        if (raster < 0 || raster > 2) fail("_debug_set_scheduler", "raster must be 0, 1 or 2");
        zq::gemm_tuning().swizzle = swizzle;
        zq::gemm_tuning().raster = raster;
      },
      nb::arg("swizzle"), nb::arg("raster"),
      "sm90 persistent scheduler swizzle (0 default, 1/2/4/8) and raster (0 auto, 1 along M, 2 along N).");
}

}  // namespace zqb
