// sm90_span_mainloop.cuh: what the two promoting Hopper mainloops share (sm90_group_mainloop.cuh:
// group-scaled int8; sm90_fp8_promote_mainloop.cuh: accurate / block-scaled FP8).
//
// Both derive from the collective CUTLASS's builder makes for their tile and replace its load() and
// mma(). They share:
//   tile_operand_loads  the producer's TMA loads of one tile's A / B k-tiles into a pipeline stage,
//                       with the cluster multicast masks, exactly as the base collective issues
//                       them (the mainloops add their scale copies on the same stage barrier);
//   run_spans           the consumer's schedule: spans of K issued as wgmma batches into two partial
//                       sums that alternate, so that span s runs on the tensor cores while span
//                       s - 1 is folded in (warpgroup_wait<1> retires exactly the span folded after it).
#pragma once

#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

// The types a mainloop derived from a CUTLASS collective takes over from its base (the base is a
// dependent type, so its member types must be named again to be used unqualified).
#define ZQ_BASE_COLLECTIVE_TYPES(Base)                          \
  using TileShape = typename Base::TileShape;                   \
  using DispatchPolicy = typename Base::DispatchPolicy;         \
  using ElementA = typename Base::ElementA;                     \
  using ElementB = typename Base::ElementB;                     \
  using StrideA = typename Base::StrideA;                       \
  using StrideB = typename Base::StrideB;                       \
  using SmemLayoutB = typename Base::SmemLayoutB;               \
  using GmemTiledCopyA = typename Base::GmemTiledCopyA;         \
  using GmemTiledCopyB = typename Base::GmemTiledCopyB;         \
  using MainloopPipeline = typename Base::MainloopPipeline;     \
  using PipelineState = typename Base::PipelineState;           \
  using PipelineParams = typename Base::PipelineParams;         \
  using PipelineStorage = typename Base::PipelineStorage

namespace zq::sm90 {

// The TMA loads of one output tile's operands, as the base collective issues them (multicast masks
// included), set up once per tile by the producer thread: the returned callable copies k-tile `k` of
// A and B into pipeline stage `stage`, completing on barrier `bar`.
template <class DispatchPolicy, class GmemTiledCopyA, class GmemTiledCopyB, class SmemLayoutA, class SmemLayoutB,
          class Params, class LoadInputs, class BlockCoord, class TensorStorage>
CUTLASS_DEVICE auto tile_operand_loads(Params const& p, LoadInputs const& load_inputs, BlockCoord const& blk_coord,
                                       uint32_t block_rank_in_cluster, TensorStorage& shared_tensors) {
  using namespace cute;
  Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
  constexpr uint32_t cluster_x = get<0>(typename DispatchPolicy::ClusterShape());
  uint2 cluster_id = {block_rank_in_cluster % cluster_x, block_rank_in_cluster / cluster_x};
  auto block_tma_a = p.tma_load_a.get_slice(cluster_id.y);
  auto block_tma_b = p.tma_load_b.get_slice(cluster_id.x);
  auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
  Tensor gA = get<0>(load_inputs)(_, _, m_coord, _, l_coord);
  Tensor gB = get<1>(load_inputs)(_, _, n_coord, _, l_coord);
  Tensor tAgA = block_tma_a.partition_S(gA);
  Tensor tAsA = block_tma_a.partition_D(sA);
  Tensor tBgB = block_tma_b.partition_S(gB);
  Tensor tBsB = block_tma_b.partition_D(sB);
  uint16_t mcast_a = 0, mcast_b = 0;
  if constexpr (cute::is_same_v<GmemTiledCopyA, SM90_TMA_LOAD_MULTICAST>) {
    auto block_layout = Layout<typename DispatchPolicy::ClusterShape>{};
    for (int n = 0; n < size<1>(block_layout); ++n) mcast_a |= uint16_t(1) << block_layout(cluster_id.x, n, Int<0>{});
  }
  if constexpr (cute::is_same_v<GmemTiledCopyB, SM90_TMA_LOAD_MULTICAST>) {
    auto block_layout = Layout<typename DispatchPolicy::ClusterShape>{};
    for (int m = 0; m < size<0>(block_layout); ++m) mcast_b |= uint16_t(1) << block_layout(m, cluster_id.y, Int<0>{});
  }
  return [&p, tAgA, tAsA, tBgB, tBsB, mcast_a, mcast_b](auto* bar, int k, int stage) {
    copy(p.tma_load_a.with(*bar, mcast_a), tAgA(_, _, _, k), tAsA(_, _, _, stage));
    copy(p.tma_load_b.with(*bar, mcast_b), tBgB(_, _, _, k), tBsB(_, _, _, stage));
  };
}

// Issues span s (kPK k-blocks of the k-tile, kSpansPerTile spans a k-tile) as one wgmma batch into
// `cur`, starting from zero: waits for the k-tile's data at its first span, records the pipeline
// stage it reads in `cur_stage`, and advances `smem_pipe_read` after the k-tile's last span.
template <int kPK, int kSpansPerTile, class Pipeline, class PipeState, class TiledMma, class FragA, class FragB,
          class Accum>
CUTLASS_DEVICE void issue_span(Pipeline& pipeline, PipeState& smem_pipe_read, TiledMma& tiled_mma, FragA const& tCrA,
                               FragB const& tCrB, Accum& cur, int& cur_stage, int s) {
  using namespace cute;
  const int sub = s % kSpansPerTile;
  if (sub == 0) {
    auto token = pipeline.consumer_try_wait(smem_pipe_read);
    pipeline.consumer_wait(smem_pipe_read, token);
  }
  const int stage = smem_pipe_read.index();
  cur_stage = stage;
  tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
  warpgroup_fence_operand(cur);
  warpgroup_arrive();
  CUTLASS_PRAGMA_UNROLL
  for (int b = 0; b < kPK; ++b) {
    cute::gemm(tiled_mma, tCrA(_, _, sub * kPK + b, stage), tCrB(_, _, sub * kPK + b, stage), cur);
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(cur);
  if (sub == kSpansPerTile - 1) ++smem_pipe_read;
}

// The consumer's schedule over `spans` spans with two alternating partial sums:
//   issue(temp, stage, s)   waits for span s's data if needed and issues its wgmma batch into temp
//                           (recording the pipeline stage it read in `stage`);
//   retire(temp, stage, s)  folds the completed span s from temp and releases its stage if due.
// Straight-line pairs, so that each warpgroup_wait<1> retires exactly the span folded after it.
template <class Temp0, class Temp1, class Issue, class Retire>
CUTLASS_DEVICE void run_spans(int spans, Temp0& temp0, Temp1& temp1, Issue&& issue, Retire&& retire) {
  int stage0 = 0, stage1 = 0;
  issue(temp0, stage0, 0);
  int s = 1;
  CUTLASS_PRAGMA_NO_UNROLL
  for (; s + 1 < spans; s += 2) {
    issue(temp1, stage1, s);
    cute::warpgroup_wait<1>();
    retire(temp0, stage0, s - 1);
    issue(temp0, stage0, s + 1);
    cute::warpgroup_wait<1>();
    retire(temp1, stage1, s);
  }
  if (s < spans) {
    issue(temp1, stage1, s);
    cute::warpgroup_wait<1>();
    retire(temp0, stage0, s - 1);
    cute::warpgroup_wait<0>();
    retire(temp1, stage1, s);
  } else {
    cute::warpgroup_wait<0>();
    retire(temp0, stage0, s - 1);
  }
}

}  // namespace zq::sm90
