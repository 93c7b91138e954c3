// sm90_fp8_promote_mainloop.cuh: the FP8 mainloop with accurate accumulation that keeps the tensor
// cores running (docs/FP8.md, "Accumulation").
//
// Hopper's FP8 wgmma adds its products with fewer mantissa bits than fp32, so accurate FP8 GEMMs
// sum each span of K on the tensor cores and promote (add) the span's partial sum into an fp32
// accumulator. CUTLASS's FP8 mainloop drains the wgmma pipeline at each promotion
// (warpgroup_wait<0>): promoting every 128 of K ran at 385 TFLOPS on 8192^3 where the same tiles
// with fast accumulation ran at 1223. This collective promotes every `kSpanK` of K (64 or 128)
// with two partial sums alternating: span s runs on the tensor cores while span s - 1 is folded
// into the fp32 accumulator, so a promotion never waits for the wgmma it follows.
//
// Two scale modes (one template):
//   kBlockScales = false  ("fp8_rowwise"): acc += temp. Per-token / per-channel scales are applied
//                         by the epilogue (sm90_gemm_rowwise.cuh).
//   kBlockScales = true   ("fp8_blockwise", DeepSeek-V3 / compressed-tensors FP8 block):
//                         acc += temp * (sw[block of this tile's weight rows, j] * sx[token, j])
//                         for K-block j of 128: the scales are applied in the promotion, for the
//                         price of one FFMA instead of an FADD per accumulator value. The epilogue
//                         then sees unit token / channel scales.
//
// Block-scale operands (docs/FP8.md, "Block-scaled FP8"):
//   sx_t  activation scales M-major: float32 [K / 128, sx_ld], sx_t[j, m] = scale of token m, K-block
//         j; sx_ld >= round_up(M, 4) and a multiple of 4, 16-byte aligned (16-byte bulk copies).
//   sw_r  weight scales replicated 4x: float32 [K / 128, ceil(N / 128), 4], every entry the scale of
//         one 128 x 128 weight block (the host builds it from the [ceil(N / 128), K / 128] scales).
// The producer warp copies, per k-tile, the tile's tokens' scales (one bulk copy per K-block) and
// the weight block's scale (16 bytes: the replication makes a 16-byte aligned copy land the scale
// at a known place) into the stage's scale slots; they complete on the stage's barrier with the
// operands, so the consumers need no tile coordinates.
//
// Orientation: normal (A = activations [M, K], B = weights [N, K]) or swap-AB (A = weights, B =
// activations; decode-sized M). The weight tile must lie in one 128-row weight block: the GEMM
// tile's weight extent divides 128.
//
// Derives from the collective CUTLASS's builder makes for the same FP8 tile with fast accumulation
// (its TMA loads, shared-memory layouts, pipeline and tail) and replaces load() (block scales only)
// and mma(). Registers per consumer thread: three accumulator sets (fp32 sum and two partial sums)
// where a set holds at most 64 values (128 x 128 cooperative tiles, narrow swap-AB tiles); wider
// tiles (128 x 192) keep one partial sum and drain it before each fold, relying on the other
// consumer warpgroup to keep the tensor cores busy; 128 x 256 fits neither.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/collective_builder.hpp"

#include "sm90_span_mainloop.cuh"

namespace zq::sm90 {

// The runtime block-scale operands, set by the host (RowwiseGemm::make_arguments).
struct BlockScaleArgs {
  const float* sx_t = nullptr;  // [K / 128, sx_ld] activation scales, M-major
  int64_t sx_ld = 0;            // row stride of sx_t in elements (multiple of 4, >= round_up(M, 4))
  const float* sw_r = nullptr;  // [K / 128, ceil(N / 128), 4] weight scales, each replicated 4x
};

constexpr int kScaleBlock = 128;  // K-block and weight-block edge of the block-scaled format

template <class Base, bool kBlockScales, bool kSwapAB>
struct Fp8PromoteMainloop : Base {
  ZQ_BASE_COLLECTIVE_TYPES(Base);
  using TiledMma = typename Base::TiledMma;
  using SmemLayoutA = typename Base::SmemLayoutA;

  static_assert(std::is_same_v<typename TiledMma::ValTypeC, float>, "FP8 wgmma (f32 accumulator)");
  static constexpr int kStages = DispatchPolicy::Stages;
  static constexpr int kTileM = cute::size<0>(TileShape{});
  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kTileK = cute::size<2>(TileShape{});
  static constexpr int kMmaK = 32;                // 8-bit wgmma K
  static constexpr int kBlocks = kTileK / kMmaK;  // k-blocks per k-tile
  static_assert(kTileK % kScaleBlock == 0, "a k-tile holds whole 128-wide K-blocks");
  static constexpr int kScaleRows = kTileK / kScaleBlock;  // K-blocks per k-tile
  // The GEMM tile's activation extent (tokens) and weight extent (output channels).
  static constexpr int kActTile = kSwapAB ? kTileN : kTileM;
  static constexpr int kWeightTile = kSwapAB ? kTileM : kTileN;
  static_assert(!kBlockScales || kScaleBlock % kWeightTile == 0, "the weight tile lies in one 128-row block");
  // Per stage: kScaleRows rows of kActTile token scales, then kScaleRows 16-byte weight-scale slots.
  static constexpr int kActScaleElems = kScaleRows * kActTile;
  static constexpr int kScaleStageElems = kActScaleElems + 4 * kScaleRows;

  using BaseTensorStorage = typename Base::TensorStorage;
  struct BlockTensorStorage : BaseTensorStorage {
    cute::array_aligned<float, kStages * kScaleStageElems, 128> smem_scale;
  };
  using TensorStorage = cute::conditional_t<kBlockScales, BlockTensorStorage, BaseTensorStorage>;
  struct SharedStorage {
    TensorStorage tensors;
    PipelineStorage pipeline;
  };

  struct Arguments {
    ElementA const* ptr_A;
    StrideA dA;
    ElementB const* ptr_B;
    StrideB dB;
    BlockScaleArgs block{};
    int span_k = 128;  // promotion interval in K: 64 or 128
  };

  struct Params : Base::Params {
    BlockScaleArgs block{};
    int M = 0, N = 0, K = 0;   // the GEMM's problem (swap-AB: M = weights' N, N = tokens)
    int weight_blocks = 0;     // ceil(weights' N / 128)
    int span_blocks = 4;       // k-blocks of 32 per promotion
    float unit = 1.f;          // the row-wise fold's multiplier (see mma_spans)
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    Params p;
    static_cast<typename Base::Params&>(p) = Base::to_underlying_arguments(problem_shape, base, workspace);
    auto shape = cute::append<4>(problem_shape, 1);
    p.M = static_cast<int>(cute::get<0>(shape));
    p.N = static_cast<int>(cute::get<1>(shape));
    p.K = static_cast<int>(cute::get<2>(shape));
    p.block = args.block;
    const int weight_rows = kSwapAB ? p.M : p.N;
    p.weight_blocks = (weight_rows + kScaleBlock - 1) / kScaleBlock;
    p.span_blocks = args.span_k / kMmaK;
    return p;
  }

  // Why the arguments do not fit (empty: they do). The Python layer checks the same first.
  template <class ProblemShape>
  static const char* args_error(ProblemShape const& problem_shape, Arguments const& args) {
    if (args.span_k != 64 && args.span_k != 128) return "the FP8 promotion interval must be 64 or 128";
    if constexpr (kBlockScales) {
      auto shape = cute::append<4>(problem_shape, 1);
      const int tokens = static_cast<int>(kSwapAB ? cute::get<1>(shape) : cute::get<0>(shape));
      const int K = static_cast<int>(cute::get<2>(shape));
      const auto a = reinterpret_cast<uintptr_t>(args.block.sx_t);
      const auto w = reinterpret_cast<uintptr_t>(args.block.sw_r);
      if (K % kScaleBlock != 0) return "K must be a multiple of 128 for block scales";
      if (a == 0 || a % 16 != 0) return "activation block scales must be non-null and 16-byte aligned";
      if (w == 0 || w % 16 != 0) return "weight block scales must be non-null and 16-byte aligned";
      if (args.block.sx_ld % 4 != 0 || args.block.sx_ld < (tokens + 3) / 4 * 4) {
        return "activation block scales need a row stride >= round_up(M, 4) and a multiple of 4";
      }
    }
    return "";
  }

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& args) {
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    return Base::can_implement(problem_shape, base) && args_error(problem_shape, args)[0] == '\0';
  }

  // Producer. Row-wise: the base collective's loads. Block scales: also, per k-tile, the tile's
  // token scales (one bulk copy per K-block, clipped at the token count and rounded up to 16 bytes,
  // which sx_ld's padding allows) and the weight block's replicated scale, on the stage's barrier.
  template <class TensorA, class TensorB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& p, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB> const& load_inputs, BlockCoord const& blk_coord,
                           KTileIterator k_tile_iter, int k_tile_count, int thread_idx, uint32_t block_rank_in_cluster,
                           TensorStorage& shared_tensors) {
    if constexpr (!kBlockScales) {
      Base::load(p, pipeline, smem_pipe_write, load_inputs, blk_coord, k_tile_iter, k_tile_count, thread_idx,
                 block_rank_in_cluster, shared_tensors);
    } else {
      if (!cute::elect_one_sync()) return;
      auto operands = tile_operand_loads<DispatchPolicy, GmemTiledCopyA, GmemTiledCopyB, SmemLayoutA, SmemLayoutB>(
          p, load_inputs, blk_coord, block_rank_in_cluster, shared_tensors);
      auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
      // This tile's tokens [t0, t0 + kActTile) clipped at the token count, and its weight block.
      const int tokens = kSwapAB ? p.N : p.M;
      const int t0 = static_cast<int>(kSwapAB ? n_coord : m_coord) * kActTile;
      const int w0 = static_cast<int>(kSwapAB ? m_coord : n_coord) * kWeightTile;
      // A cluster may hold a tile past the last token (M = 1 with a 2 x 1 cluster): it copies no token
      // scales (its rows are never stored).
      const int nt = tokens - t0 < kActTile ? (tokens - t0 > 0 ? tokens - t0 : 0) : kActTile;
      const uint32_t act_bytes = static_cast<uint32_t>((nt + 3) / 4 * 4) * 4u;
      // Clamped likewise for a cluster's tile past the last weight row (its columns are never stored).
      const int wb = w0 / kScaleBlock < p.weight_blocks ? w0 / kScaleBlock : p.weight_blocks - 1;
      const float* wscale = p.block.sw_r + static_cast<int64_t>(wb) * 4;
      const int64_t wscale_row = static_cast<int64_t>(p.weight_blocks) * 4;
      CUTLASS_PRAGMA_NO_UNROLL
      for (; k_tile_count > 0; --k_tile_count) {
        pipeline.producer_acquire(smem_pipe_write);
        using BarrierType = typename MainloopPipeline::ProducerBarrierType;
        BarrierType* bar = pipeline.producer_get_barrier(smem_pipe_write);
        const int stage = smem_pipe_write.index();
        const int j0 = static_cast<int>(*k_tile_iter) * kScaleRows;  // first K-block of the k-tile
        // The scale bytes join the stage's expected transaction before any copy is issued.
        cutlass::arch::ClusterTransactionBarrier::expect_transaction(bar, kScaleRows * (act_bytes + 16u));
        float* dst = shared_tensors.smem_scale.data() + stage * kScaleStageElems;
        CUTLASS_PRAGMA_UNROLL
        for (int r = 0; r < kScaleRows; ++r) {
          if (act_bytes > 0) {
            cute::SM90_BULK_COPY_G2S::copy(p.block.sx_t + static_cast<int64_t>(j0 + r) * p.block.sx_ld + t0, bar,
                                     dst + r * kActTile, static_cast<int32_t>(act_bytes));
          }
          cute::SM90_BULK_COPY_G2S::copy(wscale + static_cast<int64_t>(j0 + r) * wscale_row, bar,
                                   dst + kActScaleElems + 4 * r, 16);
        }
        operands(bar, *k_tile_iter, stage);
        ++k_tile_iter;
        ++smem_pipe_write;
      }
    }
  }

  // Consumer: spans of kPK k-blocks (a span lies inside one k-tile and one 128-wide K-block) into two
  // alternating partial sums:
  //   issue span s into temp[s & 1]; commit; wait until only span s is in flight;
  //   fold span s - 1 into acc; release its stage if it ended a k-tile.
  // Leaves the last k-tile's stage unreleased, as the base collective's mma() does, so the base
  // mma_tail() releases it.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    if (p.span_blocks == 2) return mma_spans<2>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
    return mma_spans<4>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
  }

  template <int kPK, class FrgTensorC>
  CUTLASS_DEVICE void mma_spans(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                                int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    using namespace cute;
    static_assert(std::is_same_v<typename FrgTensorC::value_type, float>, "fp32 accumulator fragment");
    static_assert(kBlocks % kPK == 0, "a span lies inside one k-tile");
    constexpr int kSpansPerTile = kBlocks / kPK;
    constexpr int kSpansPerScale = (kScaleBlock / kMmaK) / kPK;  // spans per 128-wide K-block
    Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
    constexpr int kWarpGroups = size(TiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    Layout wg_layout = make_layout(Int<kWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{});
    const int wg = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    TiledMma tiled_mma;
    auto wg_mma = tiled_mma.get_slice(wg_layout(wg));
    Tensor tCrA = wg_mma.make_fragment_A(wg_mma.partition_A(sA));  // (MMA, MMA_M, MMA_K, PIPE) descriptors
    Tensor tCrB = wg_mma.make_fragment_B(wg_mma.partition_B(sB));
    CUTE_STATIC_ASSERT_V(size<2>(tCrA) == Int<kBlocks>{});
    // This thread's (row, column) of each accumulator value: the token coordinate picks its scale.
    Tensor tCcC = tiled_mma.get_slice(thread_idx).partition_C(make_identity_tensor(take<0, 2>(TileShape{})));
    CUTE_STATIC_ASSERT_V(size(tCcC) == size(accum));
    constexpr int kVals = decltype(size(accum))::value;
    // Two partial sums alternate when three sets fit the registers (64 values a set: 128 x 128
    // cooperative tiles), else one.
    constexpr bool kDoubleBuffer = kVals <= 64;
    Tensor temp0 = make_fragment_like(accum);
    Tensor temp1 = make_fragment_like(accum);  // unused (dead) with one partial sum
    clear(accum);

    [[maybe_unused]] const float unit = p.unit;
    [[maybe_unused]] const float* scales = nullptr;
    if constexpr (kBlockScales) scales = shared_tensors.smem_scale.data();
    auto fold = [&](auto& done, int stage, int s) {
      warpgroup_fence_operand(done);
      if constexpr (kBlockScales) {
        const int r = (s % kSpansPerTile) / kSpansPerScale;  // K-block of the k-tile
        const float* row = scales + stage * kScaleStageElems + r * kActTile;
        const float ws = scales[stage * kScaleStageElems + kActScaleElems + 4 * r];
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kVals; ++i) {
          const int t = kSwapAB ? get<1>(tCcC(i)) : get<0>(tCcC(i));
          accum(i) = fmaf(done(i), ws * row[t], accum(i));
        }
      } else {
        // An FFMA by a runtime 1.0 rather than an FADD: with the FADD, the compiler's phi copies
        // of the in-flight partial sum made ptxas serialize the wgmmas (C7514); the FFMA form
        // compiles like the block-scaled fold. Same result (x * 1 is exact).
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < kVals; ++i) accum(i) = fmaf(done(i), unit, accum(i));
      }
    };

    const int spans = k_tile_count * kSpansPerTile;
    PipelineState smem_pipe_release = smem_pipe_read;
    auto issue = [&](auto& cur, int& cur_stage, int s) {
      issue_span<kPK, kSpansPerTile>(pipeline, smem_pipe_read, tiled_mma, tCrA, tCrB, cur, cur_stage, s);
    };
    auto retire = [&](auto& done, int stage, int s) {
      fold(done, stage, s);
      const int kt = s / kSpansPerTile;
      if (s % kSpansPerTile == kSpansPerTile - 1 && kt < k_tile_count - 1) {
        pipeline.consumer_release(smem_pipe_release);
        ++smem_pipe_release;
      }
    };

    warpgroup_fence_operand(accum);
    if constexpr (!kDoubleBuffer) {
      // Wide tiles (more than 64 values a set): one partial sum, drained before each fold; the
      // other consumer warpgroup's wgmmas keep the tensor cores busy meanwhile (cooperative tiles).
      int stage0 = 0;
      CUTLASS_PRAGMA_NO_UNROLL
      for (int s = 0; s < spans; ++s) {
        issue(temp0, stage0, s);
        warpgroup_wait<0>();
        retire(temp0, stage0, s);
      }
    } else {
      run_spans(spans, temp0, temp1, issue, retire);
    }
    warpgroup_fence_operand(accum);
  }
};

}  // namespace zq::sm90
