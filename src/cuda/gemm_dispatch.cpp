// gemm_dispatch.cpp: the dispatch tables. For each (arch, recipe, output class) a list of rules
// "M <= max_m and N <= max_n -> tile", first match wins, naming tiles of the table in
// cmake/gemm_tiles.cmake. Host code only. The Python layer caches the choice per problem shape, so
// this runs once per (shape, device), not per call.
#include <climits>
#include <cstring>
#include <string>

#include "zq_kernels.h"

namespace zq {
namespace {

struct Rule {
  int max_m;         // rule applies when M <= max_m
  int max_n;         // ... and N <= max_n
  const char* tile;  // a tile name of cmake/gemm_tiles.cmake
};

constexpr int kAny = INT_MAX;

// sm90, int8_rowwise, bf16 / fp16 output: kSm90Decode16 (also the first rules of the FP8 tables),
// then kSm90Int8Rowwise16. From scripts/probe_gemm.py and the full W8A8 benchmark on
// an H100 (benchmarks/results/, docs/PERF_NOTES.md).
// M <= 64 is weight-bandwidth bound: swap-AB puts the tokens on the narrow wgmma N side so a
// 64-row weight tile is streamed once per token tile. 64 < M <= 256 with few output tiles
// (N <= 8192: 32-64 CTA tiles for 132 SMs) uses stream-K to spread the K loop over every SM;
// with many tiles, plain ping-pong tiles. Large M is tensor-core bound: 128x256 cooperative tiles
// with the weight tile multicast across a 2-CTA cluster. M = 513..1024 with many output tiles:
// ping-pong beat cooperative in 3 runs of 3 at N = 22016 (0.4-5.5%); at N = 4096 cooperative won.
// Encoder shapes (BERT: N = 768..4096, K = 768..4096; benchmarks/results/probe_bert_shapes_*):
// with N <= 1024 at M = 1024 a 128x256 tile leaves 100 of 132 SMs idle (22.4 us at N = 1024,
// K = 4096, against 14.9 us for swap_64x64); with N <= 3072, 128x128 ping-pong beat 128x256
// (9.5 vs 10.2 us at N = 3072, K = 1024). At M = 128 and N <= 1024, swap_64x32 (4.6 vs 5.1 us at
// K = 3072).
constexpr Rule kSm90Decode16[] = {
    {16, kAny, "swap_64x16x256_pp"},
    {32, kAny, "swap_64x32x256_pp"},
    {64, 8192, "swap_64x32x256_pp"},
    {128, 1024, "swap_64x32x256_pp"},
    {128, kAny, "swap_64x64x256_pp"},
    {256, 8192, "swap_128x64x256_coop_sk"},
};
constexpr Rule kSm90Int8Rowwise16[] = {
    {512, kAny, "128x128x128_c2x1_pp"},
    {1024, 1024, "swap_64x64x256_pp"},
    {1024, 3072, "128x128x128_c2x1_pp"},
    {1024, 8192, "128x256x128_c2x1_coop"},
    {1024, kAny, "128x128x128_c2x1_pp"},
    {kAny, kAny, "128x256x128_c2x1_coop"},
};
// fp32 output (callers that want full-precision outputs, e.g. vLLM-style test suites): two tiles
// keep the build small; not tuned.
constexpr Rule kSm90Int8Rowwise32[] = {
    {64, kAny, "swap_64x32x256_pp"},
    {kAny, kAny, "128x128x128_c2x1_pp"},
};
// int8 output with a static per-tensor scale (ZeroQuant-HERO: the next consumer takes int8). Three
// tiles keep the build small: one swap-AB tile for decode and the two large-M tiles, with the
// large-M rules of the 16-bit table (the epilogue writes half the bytes of bf16 output, so the
// mainloop decides there too). Not measured yet: 64 < M <= 256 runs a 128x128 tile where the
// 16-bit table has swap-AB / stream-K tiles.
constexpr Rule kSm90Int8Rowwise8[] = {
    {64, kAny, "swap_64x32x256_pp"},
    {512, kAny, "128x128x128_c2x1_pp"},
    {1024, 8192, "128x256x128_c2x1_coop"},
    {1024, kAny, "128x128x128_c2x1_pp"},
    {kAny, kAny, "128x256x128_c2x1_coop"},
};

// sm90, accurate FP8 (sm90_fp8_promote_mainloop.cuh). Decode and mid M: the int8 table's swap-AB /
// stream-K tiles. Above, measured on an H100 (benchmarks/bench_fp8_accurate.py --tiles, 8192^3 and
// Llama-3-8B / 70B shapes; benchmarks/results/fp8_accurate_*): the promotion costs < 2% against
// fast accumulation on the same 128 x 128 tile, so the tile decides. Row-wise: 128 x 128 without a
// cluster up to M = 1024 (best on 4 of 4 shapes), with a 1 x 2 cluster up to 2048 (3 of 4), the
// 128 x 192 tile with one partial sum beyond (3 of 4, 5-7% over 128 x 128). Block-scaled (the weight
// tile must lie in one 128-row block): 128 x 128 with a 1 x 2 cluster (best or within 1% at every
// M >= 1024 shape).
constexpr Rule kSm90Fp8Rowwise16[] = {  // after kSm90Decode16
    {1024, kAny, "128x128x128_coop"},
    {2048, kAny, "128x128x128_c1x2_coop"},
    {kAny, kAny, "128x192x128_c2x1_coop"},
};
constexpr Rule kSm90Fp8Blockwise16[] = {  // after kSm90Decode16
    {kAny, kAny, "128x128x128_c1x2_coop"},
};

// sm80 (not yet measured on an A100; the reasoning, for 108 SMs and N ~ 4096):
//   M <= 32    decode: bound by streaming the weight once. One 32-row M tile, 64-wide N tiles.
//   M <= 128   64x64 tiles give (M / 64) * (N / 64) CTAs, enough to occupy the SMs.
//   M <= 512   tensor-core bound, but 128x256 tiles would leave SMs idle; 128x128 doubles the CTAs.
//   M > 512    128x256x64: the most reuse per byte of smem traffic, enough tiles to fill waves.
constexpr Rule kSm80Int8Rowwise16[] = {
    {32, kAny, "32x64x128_w32x32_s6"},
    {128, kAny, "64x64x128_w32x32_s5"},
    {512, kAny, "128x128x64_w64x64_s5"},
    {kAny, kAny, "128x256x64_w64x64_s3"},
};
constexpr Rule kSm80Int8Rowwise32[] = {
    {32, kAny, "32x64x128_w32x32_s6"},
    {kAny, kAny, "128x128x64_w64x64_s5"},
};
// int8 output (static per-tensor scale): the same two tiles as fp32 output.
constexpr Rule kSm80Int8Rowwise8[] = {
    {32, kAny, "32x64x128_w32x32_s6"},
    {kAny, kAny, "128x128x64_w64x64_s5"},
};

// Group-scaled int8 (integer or float group scales, sm90_group_mainloop.cuh): one tile. The
// mainloop keeps three 64-value accumulator sets per thread (partial sum, int32 sum, fp32 sum),
// which the 128 x 128 cooperative tile affords and 128 x 256 does not. Decode-sized M runs the
// streaming kernel of w4a8_int_gemm.cu instead (the Python layer picks by M).
constexpr Rule kSm90Int8Group[] = {
    {kAny, kAny, "128x128x128_coop"},
};

// W4A8 mixed input (sm90_w4a8_mainloop.cuh), for M above the streaming kernel's (the Python layer
// picks the streaming kernel up to INT_STREAM_MAX_M). 128 weight rows x 64 or 128 tokens; not yet
// tuned.
constexpr Rule kSm90W4A8Mixed[] = {
    {128, kAny, "swap_128x64x128_coop"},
    {kAny, kAny, "swap_128x128x128_coop"},
};

// Fused integer scales (<= 16): one accumulator set, so the 256-token tile fits. Not yet tuned.
constexpr Rule kSm90W4A8Fused[] = {
    {128, kAny, "swap_128x64x128_coop"},
    {512, kAny, "swap_128x128x128_coop"},
    {kAny, kAny, "swap_128x256x128_coop"},
};

// FP4 x FP8 mixed input (the same mainloop, FP4 consumers): two fp32 sets, up to 128 tokens. Not
// yet tuned.
constexpr Rule kSm90W4A8FpMixed[] = {
    {128, kAny, "swap_128x64x128_coop"},
    {kAny, kAny, "swap_128x128x128_coop"},
};

// Output classes: the types one table serves.
enum class OutClass { k16, kFP32, kInt8 };  // bf16 / fp16; fp32; int8

OutClass out_class(DType t) {
  if (t == DType::kFP32) return OutClass::kFP32;
  if (t == DType::kInt8) return OutClass::kInt8;
  return OutClass::k16;
}

struct Table {
  const char* arch;
  const char* recipe;
  OutClass out;
  const Rule* pre;  // rules tried first (a shared prefix), or nullptr
  size_t npre;
  const Rule* rules;
  size_t n;
};

template <size_t N>
constexpr Table table(const char* arch, const char* recipe, OutClass out, const Rule (&r)[N]) {
  return {arch, recipe, out, nullptr, 0, r, N};
}
template <size_t P, size_t N>
constexpr Table table(const char* arch, const char* recipe, OutClass out, const Rule (&pre)[P], const Rule (&r)[N]) {
  return {arch, recipe, out, pre, P, r, N};
}

constexpr Table kTables[] = {
    table("sm90", "int8_rowwise", OutClass::k16, kSm90Decode16, kSm90Int8Rowwise16),
    table("sm90", "int8_rowwise", OutClass::kFP32, kSm90Int8Rowwise32),
    table("sm90", "int8_rowwise", OutClass::kInt8, kSm90Int8Rowwise8),
    // FP8: fast accumulation takes the int8 table (same bytes per element, same wgmma tiles); the
    // accurate recipes their own (three accumulator sets limit the tile).
    table("sm90", "fp8_rowwise", OutClass::k16, kSm90Decode16, kSm90Fp8Rowwise16),
    table("sm90", "fp8_blockwise", OutClass::k16, kSm90Decode16, kSm90Fp8Blockwise16),
    table("sm90", "fp8_rowwise_fastacc", OutClass::k16, kSm90Decode16, kSm90Int8Rowwise16),
    table("sm90", "int8_group_int", OutClass::k16, kSm90Int8Group),
    table("sm90", "int8_group_int", OutClass::kFP32, kSm90Int8Group),
    table("sm90", "int8_group_float", OutClass::k16, kSm90Int8Group),
    table("sm90", "int8_group_float", OutClass::kFP32, kSm90Int8Group),
    table("sm90", "w4a8_mixed_int", OutClass::k16, kSm90W4A8Mixed),
    table("sm90", "w4a8_mixed_int", OutClass::kFP32, kSm90W4A8Mixed),
    table("sm90", "w4a8_mixed_float", OutClass::k16, kSm90W4A8Mixed),
    table("sm90", "w4a8_mixed_fused", OutClass::k16, kSm90W4A8Fused),
    table("sm90", "w4a8_mixed_fused", OutClass::kFP32, kSm90W4A8Fused),
    table("sm90", "w4a8_mixed_fused_zp", OutClass::k16, kSm90W4A8Fused),
    table("sm90", "w4a8_mixed_fused_zp", OutClass::kFP32, kSm90W4A8Fused),
    table("sm90", "w4a8_mixed_float", OutClass::kFP32, kSm90W4A8Mixed),
    table("sm90", "w4a8_fp_mixed_pow2", OutClass::k16, kSm90W4A8FpMixed),
    table("sm90", "w4a8_fp_mixed_pow2", OutClass::kFP32, kSm90W4A8FpMixed),
    table("sm90", "w4a8_fp_mixed_float", OutClass::k16, kSm90W4A8FpMixed),
    table("sm90", "w4a8_fp_mixed_float", OutClass::kFP32, kSm90W4A8FpMixed),
    table("sm80", "int8_rowwise", OutClass::k16, kSm80Int8Rowwise16),
    table("sm80", "int8_rowwise", OutClass::kFP32, kSm80Int8Rowwise32),
    table("sm80", "int8_rowwise", OutClass::kInt8, kSm80Int8Rowwise8),
};

}  // namespace

const char* gemm_select_tile(const std::string& arch, const std::string& recipe, DType out_dtype, int M,
                             int N, int /*K*/) {
  const OutClass out = out_class(out_dtype);
  for (const Table& t : kTables) {
    if (arch != t.arch || recipe != t.recipe || out != t.out) continue;
    for (size_t i = 0; i < t.npre; ++i) {
      if (M <= t.pre[i].max_m && N <= t.pre[i].max_n) return t.pre[i].tile;
    }
    for (size_t i = 0; i < t.n; ++i) {
      if (M <= t.rules[i].max_m && N <= t.rules[i].max_n) return t.rules[i].tile;
    }
  }
  return nullptr;
}

GemmTuning& gemm_tuning() {
  static GemmTuning t;
  return t;
}

}  // namespace zq
