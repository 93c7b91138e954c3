// zq_kernels.h: the torch-free, Python-free C++ API of every zqkernels CUDA kernel.
//
// GEMMs are described once (docs/SCALES.md holds the math, python/zqkernels/formats.py the
// Python side of the same description): a *recipe* names the operand formats and the scaling
// recipe ("int8_rowwise": int8 activations with one scale per token x int8 weights with one scale
// per output channel), an *arch* the instruction set ("sm90": TMA + wgmma, "sm80": mma.sync), a
// *tile* one CTA shape / schedule of that family. Kernels register per (arch, recipe, tile,
// output type) in one generated table (cmake/gemm_tiles.cmake); dispatch tables of named tiles per
// (arch, recipe) pick one by problem size (gemm_dispatch.cpp). A new format or scale recipe adds
// a recipe and its tiles, never a new stack of entry points.
//
// Every entry point returns an empty std::string on success and a human-readable message
// otherwise; nothing here throws, allocates device memory, or synchronizes the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime.h>

namespace zq {

// Element types crossing the API. The numeric values are part of the Python binding ABI
// (python/zqkernels/ops/_common.py: DTYPE_CODE).
enum class DType : int { kBF16 = 0, kFP16 = 1, kFP32 = 2, kInt8 = 3, kFP8E4M3 = 4 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kBF16: return "bf16";
    case DType::kFP16: return "fp16";
    case DType::kFP32: return "fp32";
    case DType::kInt8: return "int8";
    case DType::kFP8E4M3: return "fp8_e4m3";
  }
  return "?";
}

// The activation a GEMM epilogue applies after the bias, chosen per call (a runtime value in the
// kernel's parameters: every kernel supports every activation, no extra instantiation). Computed
// in fp32 before the one rounding to the output type (docs/SCALES.md). The numeric values are part
// of the Python binding ABI (python/zqkernels/ops/gemm_checks.py: ACT_CODE).
enum class GemmActivation : int {
  kNone = 0,
  kGelu = 1,      // v * Phi(v) = 0.5 * v * erfc(-v / sqrt(2))             (erf GeLU, BERT)
  kGeluTanh = 2,  // 0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 v^3)))  (GPT-2's gelu_new)
  kSilu = 3,      // v * sigmoid(v)
};

inline const char* activation_name(GemmActivation a) {
  switch (a) {
    case GemmActivation::kNone: return "none";
    case GemmActivation::kGelu: return "gelu";
    case GemmActivation::kGeluTanh: return "gelu_tanh";
    case GemmActivation::kSilu: return "silu";
  }
  return "?";
}

// One GEMM call: y[m, n] = act(sa[m] * sb[n] * sum_k a[m, k] * b[n, k] + bias[n]) (recipe-specific
// formats; see each recipe's header), rounded once to out_dtype; an int8 output is quantized with
// the static per-tensor out_scale: q = clamp(rint(y / out_scale), -127, 127).
// Rows of a and b are K-contiguous ("TN", nn.Linear layout).
struct GemmArgs {
  const void* a = nullptr;     // activations [M, K], rows lda elements apart, 16-byte aligned
  int64_t lda = 0;             // >= K; lda * sizeof(element) % 16 == 0
  const void* b = nullptr;     // weights [N, K], rows ldb elements apart, 16-byte aligned
  int64_t ldb = 0;
  // fp8_blockwise reads both as block scales instead (sm90_fp8_promote_mainloop.cuh): sa the
  // activation scales M-major [K / 128, sa_ld], sb the weight scales replicated [K / 128, ceil(N / 128), 4].
  const float* sa = nullptr;   // [M] per-token scales (per-tensor scales are expanded by the caller)
  const float* sb = nullptr;   // [N] per-channel scales
  int64_t sa_ld = 0;           // fp8_blockwise: row stride of sa (a multiple of 4, >= round_up(M, 4))
  const void* bias = nullptr;  // [N] of out_dtype (float32 when out_dtype is int8), or nullptr
  void* out = nullptr;         // [M, N] row-major (row stride N), out_dtype, 16-byte aligned
  int M = 0, N = 0, K = 0;     // all > 0 (int8 output: N % 16 == 0, 16-byte output rows)
  DType out_dtype = DType::kBF16;
  GemmActivation activation = GemmActivation::kNone;
  // int8 output only: the static per-tensor scale (finite, > 0), passed by value in the kernel
  // parameters. A scalar read from device memory would happen in the kernel prologue, before
  // griddepcontrol.wait (see sm90_gemm_rowwise.cuh), so it is never a pointer.
  float out_scale = 1.f;
  void* workspace = nullptr;   // device scratch of at least workspace_size() bytes (may be 0)
  size_t workspace_bytes = 0;
  int device = 0;              // CUDA device ordinal the pointers live on (must be current)
  int sm_count = 0;            // multiprocessors of that device (persistent schedulers)
  cudaStream_t stream = nullptr;
  // Group-scaled recipes (int8_group_int / int8_group_float, docs/W4A8.md) only:
  const void* sg = nullptr;    // group scales TRANSPOSED, [K / group_size, N] int32 or float32, 16-byte aligned
  int group_size = 0;          // multiple of 32 dividing K
  int promote_blocks = 0;      // k-blocks of 32 summed in int32 before a scale is applied; divides group_size / 32
  int flush = 0;               // integer scales: promotions summed in int32 between flushes to fp32 (>= 1)
};

// One compiled kernel: a (arch, recipe, tile, output type) row of the generated table.
struct GemmKernel {
  const char* arch;    // "sm90" | "sm80"
  const char* recipe;  // "int8_rowwise"
  const char* tile;    // "128x256x128_c2x1_coop", "swap_64x16x256_pp", ...
  DType out_dtype;
  bool dispatched;     // named by a dispatch table (false: built for experiments only)
  std::string (*can_implement)(const GemmArgs&);  // "" when run() would accept the problem
  size_t (*workspace_size)(const GemmArgs&);
  std::string (*run)(const GemmArgs&);  // checks can_implement, then launches; "" on success
};

// Every kernel of this build, in table order (generated: gemm_kernels.gen.cpp).
const std::vector<GemmKernel>& gemm_kernels();

// The dispatch table's choice for a problem: the tile name, or nullptr if (arch, recipe, out)
// has no table. Tables live in gemm_dispatch.cpp, one per (arch, recipe, output class: bf16 /
// fp16, fp32, int8).
const char* gemm_select_tile(const std::string& arch, const std::string& recipe, DType out_dtype, int M,
                             int N, int K);

// Launch-time switches for experiments and debugging; never part of an op's signature.
struct GemmTuning {
  bool pdl = true;   // sm90: launch with programmatic dependent launch (kernels always wait)
  int swizzle = 0;   // sm90 persistent scheduler: 0 = CUTLASS default, else 1/2/4/8
  int raster = 0;    // 0 = heuristic, 1 = along M, 2 = along N
  // fp8_rowwise / fp8_blockwise (accurate accumulation): promote the wgmma partial sums to fp32
  // every this many elements of K: 64 or 128 (docs/FP8.md: the measured trade-off).
  int fp8_promote_k = 128;
  // The W4A8 streaming kernels' schedule (0 = default; 1..5: w4a8_fp_gemm experiments, built only
  // with ZQ_EXPERIMENT_TILES; 6: w4a8_fp_gemm at M <= 8 on register batches instead of the
  // shared-memory ring, any build: src/cuda/w4a8_gemm.cu; 7: w4a8_int_gemm at M <= 8 capped at 80
  // registers for 3 CTAs an SM at every shape; 8: w4a8_int_gemm with two groups' scale loads a chunk at
  // every group size; 9: w4a8_int_gemm never on the 80-register kernel; any build:
  // src/cuda/w4a8_int_gemm.cu).
  int w4a8_variant = 0;
  // The W4A8 streaming kernels' row tiles per CTA (0 = the wave heuristic of launch_row_tiles; 1, 2,
  // 4, 8: forced, for probes).
  int w4a8_rows_per_cta = 0;
  // The W4A8 streaming kernels request their first weights before griddepcontrol.wait (under PDL),
  // so the first DRAM round trip overlaps the previous kernel (src/cuda/w4a8_stream_common.cuh, StreamLaunch).
  bool w4a8_early_weights = true;
};
GemmTuning& gemm_tuning();

// W4A8-FP (ZeroQuant-FP, docs/FP8.md; src/cuda/w4a8_gemm.cu, sm_90a builds only):
//   y[m, n] = act(sa[m] * (sb[n] * sum_k a[m, k] * wf[n, k]) + bias[n]), rounded once to out_dtype,
// a: FP8 E4M3 activations [M, K] (rows lda apart), b: FP4 E2M1 codes packed in layout m16k64,
// wf: the FP8 value of a weight, e2m1 * 2^e (pow2: sg int8 exponents [N, K / group_size] in
// [-5, 0]) or e4m3(e2m1 * r) (sg float32 ratios [N, K / group_size]).
struct W4A8FPArgs {
  const void* a = nullptr;     // [M, K] e4m3, 16-byte aligned, lda % 16 == 0
  int64_t lda = 0;
  const void* b = nullptr;     // packed codes, N * K / 2 bytes, 16-byte aligned
  const void* sg = nullptr;    // group exponents (int32) or ratios (float32), [K / group_size, N] (sg_t)
  bool pow2 = true;
  int group_size = 0;          // multiple of 16 dividing K (K itself: per channel)
  const float* sa = nullptr;   // [M]
  const float* sb = nullptr;   // [N]
  const void* bias = nullptr;  // [N] of out_dtype, or nullptr
  void* out = nullptr;         // [M, N] row-major
  int M = 0, N = 0, K = 0;     // N % 16 == 0, K % 64 == 0
  DType out_dtype = DType::kBF16;
  GemmActivation activation = GemmActivation::kNone;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
};
std::string w4a8_fp_gemm(const W4A8FPArgs& args);
// W4A8 with integer (or float) group scales (Integer Scale, docs/W4A8.md; src/cuda/w4a8_int_gemm.cu):
//   y[m, n] = act(sa[m] * sb[n] * sum_j sg[n, j] * P[m, n, j] + bias[n]),
//   P[m, n, j] = sum_{k in group j} a[m, k] * q[n, k] (int32), a int8 [M, K], q INT4 codes in
//   layout m16k32; sg int32 (integer scales: int32 multiply-adds, flushed to fp32 every
//   flush_steps MMA steps of 32 k) or float32 (one int -> float conversion and FMA per step).
struct W4A8IntArgs {
  const void* a = nullptr;     // [M, K] int8, 16-byte aligned, lda % 16 == 0
  int64_t lda = 0;
  const void* b = nullptr;     // packed INT4 codes, N * K / 2 bytes, 16-byte aligned
  const void* sg = nullptr;    // [K / group_size, N] int32 or float32 (group-major: sg_t)
  bool int_scales = true;
  bool zero_point = false;     // sg: int32 words s | (s z) << 8 of the zero-point format (int_scales too)
  int group_size = 0;          // multiple of 32 dividing K
  int flush_steps = 0;         // integer scales: steps between flushes, * 2^19 * max(sg) < 2^31
  const float* sa = nullptr;   // [M]
  const float* sb = nullptr;   // [N]
  const void* bias = nullptr;  // [N] of out_dtype, or nullptr
  void* out = nullptr;         // [M, N] row-major
  int M = 0, N = 0, K = 0;     // N % 16 == 0, K % 64 == 0
  DType out_dtype = DType::kBF16;
  GemmActivation activation = GemmActivation::kNone;
  int sm_count = 0;
  cudaStream_t stream = nullptr;
};
std::string w4a8_int_gemm(const W4A8IntArgs& args);

// The weights of a W4A8-FP GEMM as FP8 E4M3 bytes, out [N, K] row-major: wf above, by the same
// integer conversion the GEMM uses.
// INT4 codes in layout m16k32 (docs/W4A8.md) -> int8 [N, K] row-major.
std::string int4_to_int8(const uint8_t* packed, int N, int K, void* out, cudaStream_t stream);

std::string fp4_to_fp8(const uint8_t* packed, const void* sg, bool pow2, int group_size, int N, int K, void* out,
                       cudaStream_t stream);

// Token-wise symmetric quantization, one pass over x (docs/SCALES.md, docs/FP8.md):
//   amax[m] = max_k |x[m, k]|, sx[m] = amax / qmax, inv = qmax / amax (fp32, IEEE division),
//   INT8 (out = kInt8, qmax 127): xq[m, k] = clamp(rint(x[m, k] * inv), -127, 127) (half to even);
//   FP8 (out = kFP8E4M3, qmax 448): xq[m, k] = e4m3(x[m, k] * inv), nearest even, saturating;
//   amax == 0 gives sx = 0 and xq = 0 (never NaN); rows with amax < 2^-64 are scaled by 2^64
//   (exact) before the division so that qmax / amax cannot overflow.
// x: [M, K] with row stride x_row_stride elements and unit column stride; any K >= 1.
// xq: [M, K] contiguous bytes; sx: [M]. (row_quant with RowOp::kIdentity.)
std::string quantize_per_token(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, DType out, float* sx,
                               int M, int K, cudaStream_t stream);

// Per-token-group FP8 E4M3 quantization (DeepSeek-V3 / Qwen3-FP8 activations, docs/FUSED.md): the
// FP8 rule above applied to each group of group_size consecutive channels of a row instead of the
// row: group j of row m is x[m, j*g .. (j+1)*g), its scale sx[j * sx_group_stride + m] (M-major:
// the [M, K / g] scale tensor stored as [K / g, sx_group_stride]). Rows M .. min(sx_group_stride,
// round_up(M, 4)) - 1 of each group's column are written 0 (padding). group_size 32, 64 or 128,
// dividing K; sx_group_stride >= M. (row_quant with RowOp::kIdentity and group_size.)
std::string quantize_per_token_group(const void* x, DType x_dtype, int64_t x_row_stride, void* xq, float* sx,
                                     int64_t sx_group_stride, int group_size, int M, int K,
                                     cudaStream_t stream);

// Row ops fused with token-wise INT8 / FP8 quantization (src/cuda/row_quant.cu, docs/FUSED.md): one
// CTA per row computes the op in fp32 and quantizes its output like quantize_per_token.
// The numeric values are part of the Python binding ABI (python/zqkernels/reference/fused.py: ROW_OPS,
// RESIDUAL_MODES; used by python/zqkernels/ops/fused.py).
enum class RowOp : int {
  kIdentity = 0,   // quantize_per_token
  kRMSNorm = 1,    // x (+ residual) -> x * rsqrt(mean(x^2) + eps) * weight
  kLayerNorm = 2,  // x (+ residual) -> (x - mean) * rsqrt(var + eps) * weight (+ bias)
  kGelu = 3,       // gelu_erf(x (+ bias))
  kGeluTanh = 4,   // gelu_tanh(x (+ bias))
  kSiluMul = 5,    // x = [gate | up] (2K wide) -> silu(gate) * up
  kGeluMul = 6,    // x = [gate | up] (2K wide) -> gelu_erf(gate) * up   (GeGLU)
  kGeluTanhMul = 7,  // x = [gate | up] (2K wide) -> gelu_tanh(gate) * up (GeGLU, Gemma)
};
enum class ResidualMode : int {
  kNone = 0,    // no residual output
  kSum = 1,     // residual_out = x + residual (pre-LN: the updated residual stream)
  kNormed = 2,  // residual_out = the normalised row, rounded to the input type (post-LN)
};
struct RowQuantArgs {
  RowOp op = RowOp::kIdentity;
  DType dtype = DType::kBF16;       // of x, residual and residual_out
  const void* x = nullptr;          // [M, K] (gated ops: [M, 2K]), rows x_stride elements apart
  int64_t x_stride = 0;
  const void* residual = nullptr;   // [M, K] or nullptr (norm ops)
  int64_t residual_stride = 0;
  void* residual_out = nullptr;     // [M, K] (may alias residual), needed when residual_mode != kNone
  int64_t residual_out_stride = 0;
  ResidualMode residual_mode = ResidualMode::kNone;
  const float* weight = nullptr;    // [K] fp32: the norm's weight (required by norm ops)
  const float* bias = nullptr;      // [K] fp32 or nullptr: LayerNorm's bias, or the bias before GeLU
  float eps = 0.f;
  int8_t* xq = nullptr;             // [M, K] contiguous: INT8 values or E4M3 bytes (out)
  DType out = DType::kInt8;         // kInt8 or kFP8E4M3
  float* sx = nullptr;              // [M] (group_size == 0), else [K / group_size] columns of sx_group_stride
  int M = 0, K = 0;                 // K: the width of the output row
  cudaStream_t stream = nullptr;
  // Per-token-group output (out must be kFP8E4M3): 0 = one scale per row (above); 32, 64 or 128 =
  // one scale per group of that many consecutive channels (dividing K), stored M-major:
  // sx[j * sx_group_stride + m] for group j of row m (quantize_per_token_group's layout and padding).
  int group_size = 0;
  int64_t sx_group_stride = 0;      // >= M; round_up(M, 4) for the GEMMs (DeepGEMM's TMA-aligned layout)
};
std::string row_quant(const RowQuantArgs& args);
// Tuning knob for experiments: threads per row of the register-resident path (128, 256, 512 or
// 1024; 0 = automatic). Not thread-safe; the default needs no call.
void row_quant_set_threads(int threads);
// CTAs per row of the row ops at few rows (row_quant.cu, cluster_of): -1 automatic (default), 0 never,
// 2 / 4 / 8 forced where a row fits; returns the previous setting.
int row_quant_set_cluster(int ctas);

// The attention input of a decoder layer from its QKV GEMM output (src/cuda/rope_cache.cu): split,
// rotary embedding of q and k (bit for bit torch's x * cos + rotate_half(x) * sin), k / v to a static
// KV cache at *cache_offset + s (cache [B, KV, cache_len, head_dim]) or to k_out / v_out.
struct RopeArgs {
  DType dtype = DType::kBF16;        // of qkv, cos, sin and every output
  const void* qkv = nullptr;         // [B * S, (heads + 2 kv_heads) * head_dim], rows qkv_stride apart
  int64_t qkv_stride = 0;
  const void* cos = nullptr;         // [.., S, >= rot_dim], element (b, s, j) at b * cs_stride_b + s * cs_stride_s + j
  const void* sin = nullptr;         // same layout as cos
  int64_t cs_stride_b = 0, cs_stride_s = 0;
  void* q_out = nullptr;             // [B, S, heads, head_dim] contiguous
  void* k_out = nullptr;             // [B, S, kv_heads, head_dim], or the k cache [B, kv_heads, cache_len, head_dim]
  void* v_out = nullptr;             // as k_out
  int64_t* cache_offset = nullptr;  // device scalar: the cache's write position (nullptr: no cache)
  int64_t cache_len = 0;
  bool advance = false;              // add S to *cache_offset in the kernel where the launch allows (rope_qkv's *advanced)
  int64_t B = 0, S = 0;
  int heads = 0, kv_heads = 0, head_dim = 0, rot_dim = 0;
  cudaStream_t stream = nullptr;
};
std::string rope_qkv(const RopeArgs& args, bool* advanced);

// One query token per sequence against a KV cache (decode_attention.cu): out [B, heads, head_dim]
// contiguous = softmax(scale * q k^T + mask) v per head, KV head h / (heads / kv_heads). The keys are
// split into `splits` chunks of `chunk` (<= kDecodeChunkMax) keys; partial_acc [B * heads * splits,
// head_dim] and partial_ml [B * heads * splits, 2] (fp32) are the caller's workspace.
constexpr int kDecodeChunkMax = 256;
constexpr int kDecodeSplitsMax = 8192;  // the combine keeps one float per split in shared memory (32 KB)
struct DecodeAttnArgs {
  DType dtype = DType::kBF16;  // of q, k, v, out
  const void* q = nullptr;     // [B, heads, head_dim]: element (b, h, d) at b * q_stride_b + h * q_stride_h + d
  int64_t q_stride_b = 0, q_stride_h = 0;
  const void* k = nullptr;     // [B, kv_heads, >= L, head_dim], unit stride along head_dim
  const void* v = nullptr;     // as k, with k's strides
  int64_t kv_stride_b = 0, kv_stride_h = 0, kv_stride_l = 0;
  const void* mask = nullptr;  // bool [B, L] at b * mask_stride_b + j * mask_stride_l (true: attend); nullptr: all
  int64_t mask_stride_b = 0, mask_stride_l = 0;
  void* out = nullptr;
  float* partial_acc = nullptr;
  float* partial_ml = nullptr;
  int64_t B = 0, L = 0;
  int heads = 0, kv_heads = 0, head_dim = 0, splits = 0, chunk = 0;
  float scale = 1.f;
  // Quantized output instead of `out` (xq != nullptr): the combine also quantizes each token's
  // heads * head_dim outputs per token, as quantize_per_token does the rounded output (INT8, or FP8
  // E4M3 with fp8): xq [B, heads * head_dim] contiguous, sx float32 [B]. Needs decode_attention_quant_ok.
  int8_t* xq = nullptr;
  float* sx = nullptr;
  bool fp8 = false;
  cudaStream_t stream = nullptr;
};
std::string decode_attention(const DecodeAttnArgs& args);
// Whether decode_attention can quantize its output for `heads` query heads on the current device: one
// cluster of kDecodeQuantCtas CTAs a token, heads / kDecodeQuantCtas <= 8 heads each (sm_90 builds).
constexpr int kDecodeQuantCtas = 8;
bool decode_attention_quant_ok(int heads);

// Test support for programmatic dependent launch: a kernel that signals
// griddepcontrol.launch_dependents at entry, spins for spin_us microseconds, then copies `bytes`
// from src to dst. A PDL-launched successor that reads dst before griddepcontrol.wait reads stale
// data; tests/test_gemm_gpu.py launches a GEMM right after it, eagerly and in a CUDA graph.
std::string debug_delayed_copy(const void* src, void* dst, size_t bytes, int spin_us, cudaStream_t stream);

}  // namespace zq
