// sm90_group_mainloop.cuh: the group-scaled INT8 mainloop (Integer Scale, arXiv 2405.14597; docs/W4A8.md).
//
// A CUTLASS collective mainloop for int8 x int8 wgmma GEMMs whose weight scales change every
// `group_size` of K: y[m, n] = sx[m] * sw[n] * sum_j sg[n, j] * P[m, n, j] (the epilogue of
// sm90_gemm_rowwise.cuh applies sx, sw, bias, activation), P[m, n, j] the exact int32 dot product
// of group j. It derives from the collective CUTLASS's builder makes for the plain int8 GEMM (same
// tiles, shared-memory layouts, TMA loads, pipeline, tile scheduler and kernel) and replaces:
//
//   load(): the producer also brings the group scales of each k-tile into shared memory, with a
//           1-D bulk copy (cp.async.bulk) per scale row that completes on the stage's own barrier;
//           the scales travel with the operands, so the consumers need no tile coordinates.
//           The scales are read transposed, sg_t [K / group_size, N] (one row per group: the
//           tile's 128 columns are 512 contiguous bytes).
//   mma():  each warpgroup runs wgmma over spans of `promote_blocks` k-blocks of 32 (1, 2 or 4: a
//           span lies inside one k-tile and one group) into an int32 partial sum `temp`, two of
//           them alternating so that span s runs on the tensor cores while span s - 1 is folded in:
//             int scales:   iacc += s_int[n, j] * temp            (integer multiply-add)
//                           every `flush` spans: fsum += float(iacc), iacc = 0 (fsum: fp32 in smem)
//             float scales: acc += r[n, j] * float(temp)         (int32 -> float + FMA, the baseline)
//           The host derives promote_blocks and flush from K, group_size, the operand ranges and
//           the largest integer scale, so that no int32 can overflow for any input (docs/W4A8.md).
//
// The kernel hands its accumulator fragment (fp32 `acc`) to the epilogue, so the TiledMma the kernel
// sees is the int8 one with a float C type (FloatAccView): the accumulator allocation and the
// epilogue's partitioning use only its layouts; the wgmma instructions are issued with the real
// int8 TiledMma inside mma().
//
// Limits: group_size a multiple of 32 dividing K; N % 4 == 0 (16-byte scale rows); sg_t 16-byte
// aligned. Registers: 3 accumulator sets of 64 values per thread for the 128 x 128 cooperative tile
// (temp x 2 and iacc, or temp x 2 and acc): the tile this family is instantiated with
// (cmake/gemm_tiles.cmake). Integer scales keep the tile's fp32 running sum in shared memory (64 KB).
#pragma once

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/collective_builder.hpp"

#include "sm90_span_mainloop.cuh"

namespace zq::sm90 {

// An integer GMMA operation whose C / D type reads as float: used only for the layouts of the
// kernel's accumulator fragment (never issued).
template <class Op>
struct FloatAccView : Op {};

}  // namespace zq::sm90

namespace cute {
template <class Op>
struct MMA_Traits<zq::sm90::FloatAccView<Op>> : MMA_Traits<Op> {
  using ValTypeD = float;
  using ValTypeC = float;
};
}  // namespace cute

namespace zq::sm90 {

template <class T>
struct FloatAccTiledMma;
template <class Op, class AtomLayout, class Permutation>
struct FloatAccTiledMma<cute::TiledMMA<cute::MMA_Atom<Op>, AtomLayout, Permutation>> {
  using type = cute::TiledMMA<cute::MMA_Atom<FloatAccView<Op>>, AtomLayout, Permutation>;
};

// The runtime description of the groups, set by the host (RowwiseGemm::make_arguments).
struct GroupScaleArgs {
  const void* ptr_scale = nullptr;  // sg_t [groups, N]: int32 (integer scales) or float32
  int group_size = 0;               // multiple of 32 dividing K
  int promote_blocks = 0;           // k-blocks of 32 per promotion; divides group_size / 32
  int flush = 0;                    // integer scales: promotions summed in int32 between flushes (>= 1)
};

// What the group-scaled mainloops share (this one and the INT4 mixed-input one,
// sm90_w4a8_mainloop.cuh): the device-side group description, its checks, and the flush of the
// integer sum into the fp32 running sum in shared memory.
template <bool kIntScales>
struct GroupScaleParams {
  using Scale = cute::conditional_t<kIntScales, int32_t, float>;
  const Scale* ptr_scale = nullptr;
  int N = 0;            // the weights' rows (the scale rows' length)
  int groups = 0;       // K / group_size
  int group_size = 0;
  int group_blocks = 0;  // k-blocks of 32 per group
  int promote_blocks = 0;
  int flush = 0;
  void set_groups(int n, int K, GroupScaleArgs const& g) {
    ptr_scale = static_cast<decltype(ptr_scale)>(g.ptr_scale);
    N = n;
    group_size = g.group_size;
    groups = g.group_size > 0 ? K / g.group_size : 0;
    group_blocks = g.group_size / 32;
    promote_blocks = g.promote_blocks;
    flush = g.flush;
  }
  // The groups [first, last] that k-tile kt (tile_k wide) touches.
  CUTLASS_DEVICE void ktile_groups(int kt, int tile_k, int& first, int& last) const {
    first = kt * tile_k / group_size;
    last = (kt * tile_k + tile_k - 1) / group_size;
    if (last > groups - 1) last = groups - 1;
  }
  // The producer's copy of rows first..last of sg_t [groups, N], entries [n0, n0 + row_bytes /
  // sizeof(Scale)), into dst (one slot of `slot` entries per row), completing on `bar` (whose
  // expected transaction the caller has raised by the bytes copied).
  template <class Bar>
  CUTLASS_DEVICE void copy_scale_rows(Bar* bar, int first, int last, int n0, uint32_t row_bytes, Scale* dst,
                                      int slot) const {
    for (int j = first; j <= last; ++j) {
      cute::SM90_BULK_COPY_G2S::copy(ptr_scale + static_cast<int64_t>(j) * N + n0, bar, dst + (j - first) * slot,
                                     static_cast<int32_t>(row_bytes));
    }
  }
};

// Why a group description does not fit either mainloop (empty: it does). needs_flush: the integer
// sum is flushed every `flush` spans (the folding integer-scale mainloops).
inline const char* group_args_error(int N, int K, GroupScaleArgs const& g, bool needs_flush) {
  if (g.ptr_scale == nullptr || reinterpret_cast<uintptr_t>(g.ptr_scale) % 16 != 0) {
    return "group scales (sg_t) must be non-null and 16-byte aligned";
  }
  if (N % 4 != 0) return "N must be a multiple of 4 (16-byte scale rows)";
  if (g.group_size <= 0 || g.group_size % 32 != 0 || K % g.group_size != 0) {
    return "group_size must be a multiple of 32 dividing K";
  }
  const int gb = g.group_size / 32;
  if (g.promote_blocks != 1 && g.promote_blocks != 2 && g.promote_blocks != 4) return "promote_blocks must be 1, 2 or 4";
  if (gb % g.promote_blocks != 0) return "promote_blocks must divide group_size / 32";
  if (needs_flush && g.flush < 1) return "flush must be >= 1 for integer scales";
  return "";
}

// fsum[i * stride] += float(iacc(i)), iacc(i) = 0, in chunks of 16 values, so that the shared-memory
// loads are not all hoisted (their registers next to the accumulator sets would spill).
template <class IAcc>
CUTLASS_DEVICE void flush_int_sum(IAcc& iacc, float* fsum, int stride) {
  constexpr int kVals = decltype(cute::size(iacc))::value;
  CUTLASS_PRAGMA_UNROLL
  for (int c0 = 0; c0 < kVals; c0 += 16) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = c0; i < c0 + 16 && i < kVals; ++i) {
      fsum[i * stride] += static_cast<float>(iacc(i));
      iacc(i) = 0;
    }
    asm volatile("" ::: "memory");
  }
}

template <class Base, bool kIntScales>
struct GroupScaledMainloop : Base {
  ZQ_BASE_COLLECTIVE_TYPES(Base);
  using IntTiledMma = typename Base::TiledMma;
  using TiledMma = typename FloatAccTiledMma<IntTiledMma>::type;
  using ElementAccumulator = float;
  using ElementScale = cute::conditional_t<kIntScales, int32_t, float>;
  using SmemLayoutA = typename Base::SmemLayoutA;

  static_assert(std::is_same_v<typename IntTiledMma::ValTypeC, int32_t>, "int8 wgmma (s32 accumulator)");
  static constexpr int kStages = DispatchPolicy::Stages;
  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kTileK = cute::size<2>(TileShape{});
  static constexpr int kMmaK = 32;                  // int8 wgmma K
  static constexpr int kBlocks = kTileK / kMmaK;    // k-blocks per k-tile
  // Scale rows a k-tile can touch: a group spans >= 32 of K, so at most kBlocks groups meet a tile.
  static constexpr int kScaleRows = kBlocks;
  static_assert(kTileK % kMmaK == 0, "k-tile must be a multiple of 32");
  static constexpr int kScaleStageElems = kScaleRows * kTileN;
  static constexpr int kFlushStride = cute::size(IntTiledMma{});  // consumer threads
  static constexpr int kFlushElems = cute::size<0>(TileShape{}) * kTileN;  // one fp32 per output of the tile

  struct TensorStorage : cute::aligned_struct<128, cute::_0> {
    cute::array_aligned<typename IntTiledMma::ValTypeA, cute::cosize_v<SmemLayoutA>> smem_A;
    cute::array_aligned<typename IntTiledMma::ValTypeB, cute::cosize_v<SmemLayoutB>> smem_B;
    cute::array_aligned<ElementScale, kStages * kScaleStageElems, 128> smem_scale;
    // Integer scales: each consumer thread's fp32 running sum, value i of thread t at i * kFlushStride + t.
    cute::array_aligned<float, kIntScales ? kFlushElems : 1, 128> smem_flush;
  };
  struct SharedStorage {
    TensorStorage tensors;
    PipelineStorage pipeline;
  };

  struct Arguments {
    ElementA const* ptr_A;
    StrideA dA;
    ElementB const* ptr_B;
    StrideB dB;
    GroupScaleArgs group{};
  };

  struct Params : Base::Params, GroupScaleParams<kIntScales> {};

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    Params p;
    static_cast<typename Base::Params&>(p) = Base::to_underlying_arguments(problem_shape, base, workspace);
    auto shape = cute::append<4>(problem_shape, 1);
    p.set_groups(static_cast<int>(cute::get<1>(shape)), static_cast<int>(cute::get<2>(shape)), args.group);
    return p;
  }

  // Why the group description does not fit (empty: it does). Also checked by the Python layer.
  static const char* group_error(int N, int K, GroupScaleArgs const& g) { return group_args_error(N, K, g, kIntScales); }

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& args) {
    auto shape = cute::append<4>(problem_shape, 1);
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    const int N = static_cast<int>(cute::get<1>(shape));
    const int K = static_cast<int>(cute::get<2>(shape));
    return Base::can_implement(problem_shape, base) && group_error(N, K, args.group)[0] == '\0';
  }

  // Producer: the operands of each k-tile (TMA, as the base collective) plus the rows of sg_t that
  // the k-tile's groups need, columns [n0, n0 + kTileN) clipped at N, into the stage's scale slots.
  template <class TensorA, class TensorB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& p, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB> const& load_inputs, BlockCoord const& blk_coord,
                           KTileIterator k_tile_iter, int k_tile_count, int thread_idx, uint32_t block_rank_in_cluster,
                           TensorStorage& shared_tensors) {
    using namespace cute;
    if (!cute::elect_one_sync()) return;
    auto operands = tile_operand_loads<DispatchPolicy, GmemTiledCopyA, GmemTiledCopyB, SmemLayoutA, SmemLayoutB>(
        p, load_inputs, blk_coord, block_rank_in_cluster, shared_tensors);
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    const int n0 = static_cast<int>(n_coord) * kTileN;
    const int ncols = p.N - n0 < kTileN ? p.N - n0 : kTileN;
    const uint32_t row_bytes = static_cast<uint32_t>(ncols) * sizeof(ElementScale);
    CUTLASS_PRAGMA_NO_UNROLL
    for (; k_tile_count > 0; --k_tile_count) {
      pipeline.producer_acquire(smem_pipe_write);
      using BarrierType = typename MainloopPipeline::ProducerBarrierType;
      BarrierType* bar = pipeline.producer_get_barrier(smem_pipe_write);
      const int stage = smem_pipe_write.index();
      int first, last;
      p.ktile_groups(static_cast<int>(*k_tile_iter), kTileK, first, last);
      // The scale bytes join the stage's expected transaction before any copy of it is issued, so
      // the stage cannot complete without them.
      if (last >= first) {
        cutlass::arch::ClusterTransactionBarrier::expect_transaction(bar, row_bytes * static_cast<uint32_t>(last - first + 1));
        p.copy_scale_rows(bar, first, last, n0, row_bytes, shared_tensors.smem_scale.data() + stage * kScaleStageElems,
                          kTileN);
      }
      operands(bar, *k_tile_iter, stage);
      ++k_tile_iter;
      ++smem_pipe_write;
    }
  }

  // Consumer. Works in spans of kPK k-blocks (kPK in {1, 2, 4}: a span lies inside one k-tile and
  // one group), alternating between two int32 partial sums so that the tensor cores run span s
  // while span s - 1 is folded in:
  //   issue span s into temp[s & 1]; commit; wait until only span s is in flight;
  //   promote span s - 1 from temp[(s - 1) & 1]; release its stage if it ended a k-tile.
  // Leaves the last k-tile's stage unreleased, as the base collective's mma() does with
  // K_PIPE_MMAS = 1, so the base mma_tail() releases it.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    switch (p.promote_blocks) {
      case 1: return mma_spans<1>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
      case 2: return mma_spans<2>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
      default: return mma_spans<4>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
    }
  }

  template <int kPK, class FrgTensorC>
  CUTLASS_DEVICE void mma_spans(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                                int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    using namespace cute;
    static_assert(std::is_same_v<typename FrgTensorC::value_type, float>, "fp32 accumulator fragment");
    static_assert(kBlocks % kPK == 0, "a span lies inside one k-tile");
    constexpr int kSpansPerTile = kBlocks / kPK;
    Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
    constexpr int kWarpGroups = size(IntTiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    Layout wg_layout = make_layout(Int<kWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{});
    const int wg = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    IntTiledMma tiled_mma;
    auto wg_mma = tiled_mma.get_slice(wg_layout(wg));
    Tensor tCrA = wg_mma.make_fragment_A(wg_mma.partition_A(sA));  // (MMA, MMA_M, MMA_K, PIPE) descriptors
    Tensor tCrB = wg_mma.make_fragment_B(wg_mma.partition_B(sB));
    CUTE_STATIC_ASSERT_V(size<2>(tCrA) == Int<kBlocks>{});

    // This thread's (row, column) of each accumulator value: the columns pick the scales.
    Tensor tCcC = tiled_mma.get_slice(thread_idx).partition_C(make_identity_tensor(take<0, 2>(TileShape{})));
    CUTE_STATIC_ASSERT_V(size(tCcC) == size(accum));
    Tensor temp0 = make_fragment_like<int32_t>(accum);
    Tensor temp1 = make_fragment_like<int32_t>(accum);
    Tensor iacc = make_fragment_like<int32_t>(accum);
    constexpr int kVals = decltype(size(accum))::value;
    // The wgmma C fragment holds columns in adjacent pairs (n, n + 1) at values (2i, 2i + 1), n even:
    // one 8-byte shared load gives both scales. Folded to a constant by the compiler.
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kVals; i += 2) {
      const int n = get<1>(tCcC(i));
      if (get<1>(tCcC(i + 1)) != n + 1 || (n & 1) != 0) __trap();
    }
    // Integer scales write `accum` only at the end (it must not be live through the loop: with two
    // partial sums and the int32 sum that would be four register sets); float scales sum into it.
    if constexpr (!kIntScales) clear(accum);
    clear(iacc);
    // Integer scales: the fp32 running sum lives in shared memory (a thread-private column of
    // kVals floats), touched once every p.flush spans, so that the registers hold two partial sums
    // and the int32 sum (3 x kVals) instead of four sets.
    float* fsum = nullptr;
    if constexpr (kIntScales) {
      fsum = shared_tensors.smem_flush.data() + thread_idx;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kVals; ++i) fsum[i * kFlushStride] = 0.f;
    }

    const ElementScale* scales = shared_tensors.smem_scale.data();
    const int gk = p.group_blocks;
    int since_flush = 0;
    auto promote = [&](auto& temp, int stage, int kt, int last_block) {
      // A span past K (K not a multiple of the tile) holds zero-filled data: it is folded in with
      // the last group's scales (loaded in this stage, finite), adding exactly 0. No per-value
      // select: the fold's instruction count is what bounds this kernel (docs/W4A8.md).
      const int group = min(last_block / gk, p.groups - 1);
      const ElementScale* row = scales + stage * kScaleStageElems + (group - kt * kTileK / p.group_size) * kTileN;
      using Pair = cute::conditional_t<kIntScales, int2, float2>;
      // In chunks of kChunk values: the compiler may not hoist every scale load ahead (their
      // registers on top of three accumulator sets would spill).
      constexpr int kChunk = 16;
      CUTLASS_PRAGMA_UNROLL
      for (int c0 = 0; c0 < kVals; c0 += kChunk) {
        CUTLASS_PRAGMA_UNROLL
        for (int i = c0; i < c0 + kChunk; i += 2) {
          const Pair s = *reinterpret_cast<const Pair*>(row + get<1>(tCcC(i)));
          if constexpr (kIntScales) {
            iacc(i) += s.x * temp(i);
            iacc(i + 1) += s.y * temp(i + 1);
          } else {
            accum(i) = fmaf(s.x, static_cast<float>(temp(i)), accum(i));
            accum(i + 1) = fmaf(s.y, static_cast<float>(temp(i + 1)), accum(i + 1));
          }
        }
        asm volatile("" ::: "memory");
      }
      if constexpr (kIntScales) {
        if (++since_flush == p.flush) {  // before the int32 bound can be reached (docs/W4A8.md)
          since_flush = 0;
          flush_int_sum(iacc, fsum, kFlushStride);
        }
      }
    };

    const int spans = k_tile_count * kSpansPerTile;
    PipelineState smem_pipe_release = smem_pipe_read;
    // Span s (run_spans alternates temp0 / temp1): wait for its k-tile's data at the first span of a
    // tile, issue its kPK wgmmas as one batch.
    auto issue = [&](auto& cur, int& cur_stage, int s) {
      issue_span<kPK, kSpansPerTile>(pipeline, smem_pipe_read, tiled_mma, tCrA, tCrB, cur, cur_stage, s);
    };
    // Span s, complete: fold it in; release its stage when it ended a k-tile (never the last tile's:
    // mma_tail releases that one).
    auto fold = [&](auto& done, int stage, int s) {
      warpgroup_fence_operand(done);
      const int kt = s / kSpansPerTile;
      promote(done, stage, kt, (s + 1) * kPK - 1);
      if (s % kSpansPerTile == kSpansPerTile - 1 && kt < k_tile_count - 1) {
        pipeline.consumer_release(smem_pipe_release);
        ++smem_pipe_release;
      }
    };

    if constexpr (!kIntScales) warpgroup_fence_operand(accum);
    run_spans(spans, temp0, temp1, issue, fold);
    if constexpr (kIntScales) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kVals; ++i) {
        accum(i) = static_cast<float>(iacc(i)) + fsum[i * kFlushStride];
      }
    }
    warpgroup_fence_operand(accum);
  }
};

}  // namespace zq::sm90
