// sm90_gemm_rowwise.cuh: the 8-bit GEMM family on Hopper (sm_90a), recipes of one template
// (RowwiseGemm):
//   "int8_rowwise"        W8A8 INT8:  int8 x int8 -> int32 accumulator (exact)
//   "fp8_rowwise"         W8A8 FP8:   e4m3 x e4m3 -> fp32, accurate accumulation: the wgmma
//                         partial sums (which Hopper accumulates with reduced precision) are
//                         promoted into an fp32 accumulator every 128 of K (64 as an option) by
//                         Fp8PromoteMainloop, without draining the tensor cores
//   "fp8_rowwise_fastacc" the same with the wgmma accumulator used throughout (faster; loses
//                         precision as K grows: docs/FP8.md has the measured errors)
//   "fp8_blockwise"       FP8 with block scales (1 x 128 per token, 128 x 128 per weight block),
//                         applied at each promotion (Fp8PromoteMainloop); the epilogue adds bias
//                         and activation only
//   "int8_group_int/float" int8 with group-wise weight scales (sm90_group_mainloop.cuh)
//   "w4a8_mixed_int/float" packed INT4 weights (converted in registers) x int8 activations with
//                         group-wise weight scales, swap-AB only (sm90_w4a8_mainloop.cuh)
//   "w4a8_mixed_fused"    the same with integer group scales <= 16 multiplied into the weights in
//                         registers: one int32 accumulator, no per-group fold
//   "w4a8_mixed_fused_zp" the same for the zero-point format (codes' values s (u - z), s <= 16)
//   "w4a8_fp_mixed_pow2/float" packed FP4 weights converted in registers to e4m3 with their
//                         power-of-two (exponent arithmetic) or float group scales x e4m3
//                         activations, promoted to fp32 every 128 of K; swap-AB only
// with per-token activation scales and per-channel weight scales fused into the epilogue.
//
// Computes (docs/SCALES.md):
//   v[m, n] = sx[m] * (sw[n] * acc[m, n]) + bias[n],   acc = sum_k xq[m, k] * wq[n, k]
//   y[m, n] = act(v[m, n])                              act: none | gelu | gelu_tanh | silu
//   bf16 / fp16 / fp32 output: y rounded once;  int8 output: clamp(rint(y / out_scale), -127, 127)
// with xq [M, K] int8 / e4m3 (rows lda apart), wq [N, K] of the same type (rows ldb apart), sx [M] / sw [N] float32,
// bias [N] in the output type (float32 for int8 output) or absent, y [M, N] bf16 / fp16 / fp32 /
// int8 row-major. The epilogue works in fp32 and rounds once. The activation and out_scale are
// runtime values in the kernel parameters (one instantiation serves every activation; out_scale is
// passed by value, never read from memory). Per-tensor scales reach this kernel expanded to vectors (the Python
// layer does it), because CUTLASS's dynamic scalar broadcast reads the scalar in the kernel
// prologue, before griddepcontrol.wait: a per-tensor scale written by the previous kernel could
// then be read stale under programmatic dependent launch.
//
// Kernel: CUTLASS 3.x/4.x GemmUniversal, TMA loads into a multistage smem pipeline, wgmma
// (s8 x s8 -> s32, or e4m3 x e4m3 -> f32), warp-specialized producer/consumer warpgroups, persistent tile scheduler, and an
// epilogue visitor tree (EVT) that reads sx / sw / bias as broadcast vectors and stores with TMA.
//
// Two orientations:
//   * normal  : GEMM (M, N, K) with A = xq, B = wq, D = y (row-major).
//   * swap-AB : GEMM (N, M, K) with A = wq, B = xq, D = y^T stored column-major (i.e. y row-major).
//               For decode-sized M (<= 64) the token dimension becomes the narrow wgmma N (8..64)
//               instead of padding M up to a 64-row wgmma tile, so no tensor-core work is wasted
//               and more CTAs stream the weight matrix: this path is weight-bandwidth bound.
//
// Programmatic dependent launch: this file must be compiled with CUTLASS_ENABLE_GDC_FOR_SM90
// (cmake/gemm_tiles.cmake defines it), which makes the producer warp execute griddepcontrol.wait
// before its first TMA load; the epilogue reads sx / sw / bias only after consuming data loaded
// after that wait. Without the define the wait is compiled out and PDL would be a race.
//
// Limits: K % 16 == 0 and lda, ldb multiples of 16 (TMA: 16-byte strides), N % 8 == 0 (16-byte
// output rows; N % 16 == 0 for int8 output), 16-byte aligned xq / wq / out; sx / sw / bias need only element alignment (they
// are loaded one element at a time: Alignment = 1 below). Any M >= 1 (TMA clips ragged tiles).
// Checked by python/zqkernels/ops/gemm_checks.py and again by check_gemm_args.
//
// Build: -gencode=arch=compute_90a,code=sm_90a with -DNDEBUG (without NDEBUG ptxas serializes
// wgmma, warning C7510). The tiles are instantiated from the table in cmake/gemm_tiles.cmake.
// Test: tests/test_gemm_gpu.py; time: benchmarks/bench_w8a8.py.
#pragma once

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "cutlass_gemm_common.cuh"
#include "gemm_registry.h"
#include "sm90_fp8_promote_mainloop.cuh"
#include "sm90_group_mainloop.cuh"
#include "sm90_w4a8_mainloop.cuh"
#include "zq_kernels.h"

namespace zq::sm90 {

// Whether this translation unit's kernels execute griddepcontrol.wait before reading a
// predecessor's output. Only then may they be launched with programmatic dependent launch.
#if defined(CUTLASS_ENABLE_GDC_FOR_SM90)
constexpr bool kWaitsForPredecessor = true;
#else
constexpr bool kWaitsForPredecessor = false;
#endif

using namespace cute;
using namespace cutlass::epilogue::fusion;  // Sm90EVT, Sm90Compute, Sm90*Broadcast, Sm90AccFetch

enum class Sched { kCooperative, kPingpong };

// One row of the tile table (cmake/gemm_tiles.cmake), as numbers: CTA tile (M, N, K) of the GEMM
// as CUTLASS sees it, the thread-block cluster (TMA multicast of the shared operand), the
// mainloop schedule (cooperative: 2 consumer warpgroups split one tile; ping-pong: they alternate
// tiles), stream-K or data-parallel persistent scheduling, and the swap-AB orientation.
template <int kTileM, int kTileN, int kTileK, int kClusterM, int kClusterN, Sched kSched, bool kStreamK,
          bool kSwapAB_>
struct TileConfig {
  using TileShape = Shape<Int<kTileM>, Int<kTileN>, Int<kTileK>>;
  using ClusterShape = Shape<Int<kClusterM>, Int<kClusterN>, _1>;
  using KernelSchedule = cute::conditional_t<kSched == Sched::kCooperative,
                                             cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                             cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpiSchedule = cute::conditional_t<kSched == Sched::kCooperative,
                                          cutlass::epilogue::TmaWarpSpecializedCooperative,
                                          cutlass::epilogue::TmaWarpSpecialized>;
  using Scheduler = cute::conditional_t<kStreamK, cutlass::gemm::StreamKScheduler, void>;
  static constexpr bool kSwapAB = kSwapAB_;
};

// Weight scales per group of K (int8 only): none (per channel), integer or float group scales
// (sm90_group_mainloop.cuh).
// kIntFused: integer scales <= 16 multiplied into the INT4 weights in registers (the W4A8 mixed
// mainloop's fold-free mode). With FP4 weights (e4m3 operands): kInt = power-of-two exponents
// (int32), kFloat = float ratios, both applied in the conversion.
// kIntFusedZp: the same with group zero points (scale words s | (s z) << 8; W4A8's zero-point format).
enum class GroupScales { kNone, kInt, kFloat, kIntFused, kIntFusedZp };

// How a recipe accumulates: int8's exact int32 sums; FP8 on Hopper's FP8 accumulator throughout
// (fast); FP8 promoted to fp32 every 64 / 128 of K by Fp8PromoteMainloop (accurate, with or
// without block scales applied at the promotion).
enum class Accum { kExact, kFast, kPromote, kBlock };

// The operand type of each recipe, its accumulator, and the mainloop: every FP8 recipe starts from
// the collective CUTLASS's builder makes with the fast-accumulation schedule (plain wgmma mainloop
// with an fp32 C fragment); the accurate ones replace its mma() (Fp8PromoteMainloop). Group-scaled
// int8 recipes replace the builder's int8 mainloop by GroupScaledMainloop, which hands the epilogue
// fp32.
template <class ElementAB_, Accum kAccum_, GroupScales kGroup_ = GroupScales::kNone, bool kW4_ = false>
struct Operands {
  using ElementAB = ElementAB_;
  static constexpr Accum kAccum = kAccum_;
  static constexpr bool kInt8 = std::is_same_v<ElementAB, int8_t>;
  static constexpr GroupScales kGroup = kGroup_;
  static constexpr bool kGrouped = kGroup != GroupScales::kNone;
  static constexpr bool kW4 = kW4_;  // A: packed 4-bit weights converted in registers (swap-AB)
  static_assert(!kW4 || kGrouped, "the INT4 mainloop is group-scaled");
  static constexpr bool kFusedScales = kGroup == GroupScales::kIntFused || kGroup == GroupScales::kIntFusedZp;
  static_assert(kW4 || !kFusedScales, "fused scales need INT4 weights");
  static constexpr bool kPromote = kAccum == Accum::kPromote || kAccum == Accum::kBlock;
  static constexpr bool kBlock = kAccum == Accum::kBlock;
  static_assert(kInt8 || std::is_same_v<ElementAB, cutlass::float_e4m3_t>, "int8 or e4m3 operands");
  static_assert(kInt8 == (kAccum == Accum::kExact), "int8 sums are exact; FP8 sums are fast or promoted");
  // FP4 x FP8 (kW4 with e4m3) builds its base with the fast-accumulation schedule and promotes
  // every k-tile itself (W4A8MixedMainloop::mma_fp4).
  static_assert(!kGrouped || kInt8 || (kW4 && kAccum == Accum::kFast), "group scales: int8, or FP4 weights");
  static_assert(kInt8 || !kFusedScales, "fused scales are INT4's");
  using ElementAcc = cute::conditional_t<kInt8, int32_t, float>;     // the wgmma accumulator
  using ElementEpiAcc = cute::conditional_t<kGrouped, float, ElementAcc>;  // what the epilogue reads
  template <class Built, bool kSwapAB>
  using Mainloop = cute::conditional_t<
      kW4, W4A8MixedMainloop<Built, kGroup != GroupScales::kFloat, kFusedScales, kGroup == GroupScales::kIntFusedZp>,
      cute::conditional_t<kGrouped, GroupScaledMainloop<Built, kGroup == GroupScales::kInt>,
      cute::conditional_t<kPromote, Fp8PromoteMainloop<Built, kBlock, kSwapAB>, Built>>>;
  // The largest K the recipe accepts: int8 sums must fit int32 (gemm_registry.h); an fp32 sum has
  // no such bound (its precision is the matter, docs/FP8.md); group-scaled sums are bounded per
  // promotion span and flushed to fp32 (the host derives both from the scales, docs/W4A8.md).
  static constexpr int kMaxK = kInt8 && !kGrouped ? kInt8MaxK : 0x7fffffff;
  template <class Cfg>
  using Schedule = cute::conditional_t<
      kInt8, typename Cfg::KernelSchedule,
      cute::conditional_t<std::is_same_v<typename Cfg::KernelSchedule, cutlass::gemm::KernelTmaWarpSpecializedCooperative>,
                          cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum,
                          cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum>>;
};

template <class Cfg, class Ops, class ElementOut>
struct RowwiseGemm {
  using TileShape = typename Cfg::TileShape;
  using ElementAB = typename Ops::ElementAB;
  using ElementAcc = typename Ops::ElementAcc;
  static constexpr int kMaxK = Ops::kMaxK;
  static constexpr bool kSwapAB = Cfg::kSwapAB;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  // Operand layouts. Both operands are K-contiguous ("TN" GEMM), the only layout 8-bit wgmma takes
  // from shared memory. In swap-AB, the weight [N, K] is A and the activation [M, K] is B.
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  // y is row-major [M, N]; as the swapped GEMM's D (N x M) that is column-major.
  using LayoutD = cute::conditional_t<kSwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlignAB = 16;                                            // 16 bytes of 8-bit
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementOut>::value;  // 16 bytes

  // --- Epilogue visitor tree -------------------------------------------------------------------
  // Broadcast along the GEMM's rows (a value per m of the GEMM) and along its columns. Alignment 1:
  // element loads, so views such as sw[1:] (4-byte aligned) are read correctly; they happen once
  // per output tile and cost nothing measurable.
  using PerGemmRow = Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>, 1>;
  using PerGemmCol = Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>, 1>;
  // bias lives on the output-feature axis: GEMM columns normally, GEMM rows when swapped.
  // EnableNullptr (the default) makes a null bias pointer read as 0, so bias is a runtime option
  // and needs no second instantiation.
  // An int8 output takes a float32 bias (the bias is added in fp32, before the quantization).
  using ElementBias = cute::conditional_t<std::is_same_v<ElementOut, int8_t>, float, ElementOut>;
  using BiasRow = Sm90RowBroadcast<0, TileShape, ElementBias, float, Stride<_0, _1, _0>, 1>;
  using BiasCol = Sm90ColBroadcast<0, TileShape, ElementBias, float, Stride<_1, _0, _0>, 1>;

  using TokenScale = cute::conditional_t<kSwapAB, PerGemmCol, PerGemmRow>;    // sx[m]
  using ChannelScale = cute::conditional_t<kSwapAB, PerGemmRow, PerGemmCol>;  // sw[n]
  using Bias = cute::conditional_t<kSwapAB, BiasCol, BiasRow>;

  // t = sw[n] * float(acc)
  using ScaleAcc = Sm90EVT<Sm90Compute<cutlass::multiplies, float, float, kRound>, ChannelScale, Sm90AccFetch>;
  // v = sx[m] * t + bias[n]: one fma in fp32.
  using ScaleBias = Sm90EVT<Sm90Compute<cutlass::homogeneous_multiply_add, float, float, kRound>,
                            TokenScale, ScaleAcc, Bias>;
  // y = round(act(v)) (int8: round(clamp(rint(act(v) / out_scale)))): the one rounding to the output
  // type. The node's Arguments carry the activation mode and out_scale (epi::ActArgs): a runtime
  // choice, so this one instantiation serves every activation. With act = none it computes exactly
  // what a multiply-add node rounding to ElementOut does.
  using Fusion = Sm90EVT<Sm90Compute<epi::ActQuant<ElementOut>::template Fn, ElementOut, float, kRound>,
                         ScaleBias>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, typename Cfg::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, typename Ops::ElementEpiAcc, float,
      void, LayoutD, kAlignD,  // no C operand: bias is a broadcast vector, not a matrix
      ElementOut, LayoutD, kAlignD, typename Cfg::EpiSchedule, Fusion>::CollectiveOp;

  // Stages: whatever smem remains after the epilogue's carve-out (group-scaled recipes also carve
  // out their scale slots: kTileK / 32 rows of kTileN scales per stage, for up to 8 stages).
  // Integer scales also keep the fp32 running sum of the tile in shared memory (4 bytes per output).
  static constexpr int kGroupCarveout =
      (Ops::kGrouped ? 8 * (cute::size<2>(TileShape{}) / 32) * cute::size<kSwapAB ? 0 : 1>(TileShape{}) * 4 : 0) +
      (Ops::kGroup == GroupScales::kInt ? cute::size<0>(TileShape{}) * cute::size<1>(TileShape{}) * 4 : 0) +
      (Ops::kBlock ? 8 * (cute::size<2>(TileShape{}) / kScaleBlock) * ((kSwapAB ? cute::size<1>(TileShape{}) : cute::size<0>(TileShape{})) + 4) * 4 : 0);
  using CollectiveMainloop = typename Ops::template Mainloop<typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA, kAlignAB, ElementAB, LayoutB,
      kAlignAB, ElementAcc, TileShape, typename Cfg::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage)) + kGroupCarveout>,
      typename Ops::template Schedule<Cfg>>::CollectiveOp, kSwapAB>;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, typename Cfg::Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments make_arguments(const GemmArgs& a) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    // The GEMM's (M, N): swapped problems run N x M.
    const int gm = kSwapAB ? a.N : a.M;
    const int gn = kSwapAB ? a.M : a.N;
    const auto* ptr_a = static_cast<const ElementAB*>(kSwapAB ? a.b : a.a);
    const auto* ptr_b = static_cast<const ElementAB*>(kSwapAB ? a.a : a.b);
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(gm, a.K, 1));
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(gn, a.K, 1));
    // Row strides of the operands (row-strided activations: a view of a wider buffer).
    get<0>(stride_a) = kSwapAB ? a.ldb : a.lda;
    get<0>(stride_b) = kSwapAB ? a.lda : a.ldb;
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(gm, gn, 1));

    const auto* bias = static_cast<const ElementBias*>(a.bias);
    // Block scales are applied in the mainloop: the epilogue's token / channel scales read as 1
    // (a null broadcast pointer reads its null default).
    const float* sa = Ops::kBlock ? nullptr : a.sa;
    const float* sb = Ops::kBlock ? nullptr : a.sb;
    // Argument tree mirrors the visitor tree: {children..., op}.
    typename Fusion::Arguments fusion{
        {                               // ScaleBias
         {sa, 1.f, {}},                 //   TokenScale
         {{sb, 1.f, {}}, {}, {}},       //   ScaleAcc = {ChannelScale, AccFetch, multiplies}
         {bias, ElementBias(0.f), {}},  //   Bias (nullptr -> 0)
         {}},                           //   multiply_add
        epi::act_args(a)};              // activation mode, out_scale

    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {gm, gn, a.K, 1},
                                  {ptr_a, stride_a, ptr_b, stride_b},
                                  {fusion, nullptr, stride_d, static_cast<ElementOut*>(a.out), stride_d}};
    if constexpr (Ops::kGrouped) {
      static_assert(kSwapAB == Ops::kW4, "group-scaled int8 runs the normal orientation, the INT4 mainloop swap-AB");
      args.mainloop.group = {a.sg, a.group_size, a.promote_blocks, a.flush};
    }
    const GemmTuning& t = gemm_tuning();
    if constexpr (Ops::kPromote) {
      // Promote every fp8_promote_k of K (64 or 128; checked by the mainloop's args_error).
      args.mainloop.span_k = t.fp8_promote_k;
      if constexpr (Ops::kBlock) args.mainloop.block = {a.sa, a.sa_ld, a.sb};
    }
    if (t.swizzle > 0) args.scheduler.max_swizzle_size = t.swizzle;
    using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
    if (t.raster == 1) args.scheduler.raster_order = Raster::AlongM;
    if (t.raster == 2) args.scheduler.raster_order = Raster::AlongN;
    args.hw_info.device_id = a.device;
    args.hw_info.sm_count = a.sm_count;
    return args;
  }

  static size_t workspace_size(const GemmArgs& a) { return Gemm::get_workspace_size(make_arguments(a)); }

  // Whether run() would accept the problem (shape, strides, alignment), without launching.
  static std::string can_implement(const GemmArgs& a) {
    if constexpr (Ops::kGrouped) {
      GroupScaleArgs g{a.sg, a.group_size, a.promote_blocks, a.flush};
      const char* err = CollectiveMainloop::group_error(a.N, a.K, g);
      if (err[0] != '\0') return err;
    }
    if constexpr (Ops::kPromote) {
      const auto args = make_arguments(a);
      const char* err = CollectiveMainloop::args_error(args.problem_shape, args.mainloop);
      if (err[0] != '\0') return err;
    }
    return cutlass_can_implement<RowwiseGemm>(a);
  }

  // Kernel parameters per call signature. Building them costs several microseconds of host time
  // (argument checks, three TMA descriptors encoded by the driver), more than the launch itself
  // at decode sizes. The key is every input of to_underlying_arguments; in a model's eager
  // forward the same (layer weights, activation / output blocks from the caching allocator)
  // signatures recur every step, so a map of a few thousand entries per kernel turns nearly every
  // launch into a hit (a 16-entry cache missed on every one of BERT-large's 145 linears).
  struct ParamsKey {
    const void *a, *b, *sa, *sb, *bias, *out, *workspace;
    int64_t lda, ldb, sa_ld;
    int M, N, K, device, sm_count, swizzle, raster;
    int act;          // the epilogue's runtime options are kernel parameters too
    float out_scale;
    int promote;      // FP8 promotion interval (GemmTuning::fp8_promote_k)
    const void* sg;   // group-scaled recipes: the scales and their promotion / flush intervals
    int group_size, promote_blocks, flush;
    bool operator==(const ParamsKey& o) const { return std::memcmp(this, &o, sizeof(ParamsKey)) == 0; }
  };
  struct ParamsKeyHash {
    size_t operator()(const ParamsKey& k) const {  // FNV-1a over the key's bytes (padding zeroed)
      const auto* p = reinterpret_cast<const unsigned char*>(&k);
      uint64_t h = 1469598103934665603ull;
      for (size_t i = 0; i < sizeof(ParamsKey); ++i) h = (h ^ p[i]) * 1099511628211ull;
      return static_cast<size_t>(h);
    }
  };
  struct ParamsCache {
    static constexpr size_t kMaxEntries = 4096;  // then start over: bounded memory, rare rebuilds
    std::mutex mu;
    std::unordered_map<ParamsKey, typename Kernel::Params, ParamsKeyHash> map;
  };

  static ParamsKey key_of(const GemmArgs& a) {
    ParamsKey k;
    std::memset(&k, 0, sizeof(k));  // padding bytes take part in the comparison
    const GemmTuning& t = gemm_tuning();
    k.a = a.a, k.b = a.b, k.sa = a.sa, k.sb = a.sb, k.bias = a.bias, k.out = a.out, k.workspace = a.workspace;
    k.lda = a.lda, k.ldb = a.ldb, k.sa_ld = a.sa_ld, k.M = a.M, k.N = a.N, k.K = a.K, k.device = a.device, k.sm_count = a.sm_count;
    k.swizzle = t.swizzle, k.raster = t.raster;
    k.act = static_cast<int>(a.activation), k.out_scale = a.out_scale;
    k.promote = t.fp8_promote_k;
    k.sg = a.sg, k.group_size = a.group_size, k.promote_blocks = a.promote_blocks, k.flush = a.flush;
    return k;
  }

  // Builds the params of a call not seen recently: every check runs here.
  static std::string build_params(const GemmArgs& a, typename Kernel::Params& params) {
    std::string err = can_implement(a);
    if (!err.empty()) return err;
    auto args = make_arguments(a);
    if (Gemm::get_workspace_size(args) > a.workspace_bytes) return "workspace too small";
    // The dynamic-smem opt-in is a per-device function attribute: set it once per device instead
    // of on every call (GemmUniversalAdapter::initialize would redo it each time).
    static bool smem_ready[64] = {};
    constexpr int kSmem = Kernel::SharedStorageSize;
    if (a.device < 0 || a.device >= 64) return "device index out of range";
    if (kSmem >= (48 << 10) && !smem_ready[a.device]) {
      cudaError_t e = cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (e != cudaSuccess) return std::string("cudaFuncSetAttribute failed: ") + cudaGetErrorString(e);
      smem_ready[a.device] = true;
    }
    params = Kernel::to_underlying_arguments(args, a.workspace);
    return {};
  }

  static std::string run(const GemmArgs& a) {
    static ParamsCache cache;
    const ParamsKey key = key_of(a);
    typename Kernel::Params params;
    {
      std::lock_guard<std::mutex> lock(cache.mu);
      auto it = cache.map.find(key);
      if (it != cache.map.end()) {
        params = it->second;
      } else {
        std::string err = build_params(a, params);
        if (!err.empty()) return err;
        if (cache.map.size() >= ParamsCache::kMaxEntries) cache.map.clear();
        cache.map.emplace(key, params);
      }
    }
    if constexpr (!std::is_void_v<typename Cfg::Scheduler>) {
      // stream-K: zero its reduction locks before every launch (a kernel on the same stream)
      cutlass::Status st = Kernel::initialize_workspace(make_arguments(a), a.workspace, a.stream, nullptr);
      if (st != cutlass::Status::kSuccess) {
        return std::string("CUTLASS workspace initialization failed: ") + cutlassGetStatusString(st);
      }
    }
    const bool pdl = gemm_tuning().pdl && kWaitsForPredecessor;  // PDL only for kernels that wait
    cutlass::Status st = Gemm::run(params, a.stream, /*cuda_adapter=*/nullptr, /*launch_with_pdl=*/pdl);
    if (st != cutlass::Status::kSuccess) return launch_failure(cutlassGetStatusString(st));
    return {};
  }
};

// The registry rows of one (tile, output type), one function per recipe; called from the generated
// translation units (cmake/gemm_tiles.cmake).
template <class Cfg, class Ops, class ElementOut>
GemmKernel make_row(const char* recipe, const char* tile, DType out, bool dispatched) {
  return make_gemm_kernel<RowwiseGemm<Cfg, Ops, ElementOut>>("sm90", recipe, tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_int8_rowwise(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact>, ElementOut>("int8_rowwise", tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_int8_group_int(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kInt>, ElementOut>("int8_group_int", tile, out,
                                                                                       dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_int8_group_float(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kFloat>, ElementOut>("int8_group_float", tile,
                                                                                         out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_mixed_int(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kInt, true>, ElementOut>("w4a8_mixed_int", tile,
                                                                                             out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_mixed_fused(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kIntFused, true>, ElementOut>("w4a8_mixed_fused",
                                                                                                  tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_mixed_fused_zp(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kIntFusedZp, true>, ElementOut>(
      "w4a8_mixed_fused_zp", tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_mixed_float(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<int8_t, Accum::kExact, GroupScales::kFloat, true>, ElementOut>("w4a8_mixed_float",
                                                                                               tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_fp_mixed_pow2(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<cutlass::float_e4m3_t, Accum::kFast, GroupScales::kInt, true>, ElementOut>(
      "w4a8_fp_mixed_pow2", tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_w4a8_fp_mixed_float(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<cutlass::float_e4m3_t, Accum::kFast, GroupScales::kFloat, true>, ElementOut>(
      "w4a8_fp_mixed_float", tile, out, dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_fp8_rowwise(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<cutlass::float_e4m3_t, Accum::kPromote>, ElementOut>("fp8_rowwise", tile, out,
                                                                                     dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_fp8_rowwise_fastacc(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<cutlass::float_e4m3_t, Accum::kFast>, ElementOut>("fp8_rowwise_fastacc", tile, out,
                                                                                  dispatched);
}
template <class Cfg, class ElementOut>
GemmKernel make_fp8_blockwise(const char* tile, DType out, bool dispatched) {
  return make_row<Cfg, Operands<cutlass::float_e4m3_t, Accum::kBlock>, ElementOut>("fp8_blockwise", tile, out,
                                                                                   dispatched);
}

}  // namespace zq::sm90
