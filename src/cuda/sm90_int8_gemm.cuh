// sm90_int8_gemm.cuh: W8A8 INT8 GEMM with the ZeroQuant scale epilogue for Hopper (sm_90a).
//
// Computes (docs/SCALES.md):
//   y[m, n] = sx[m] * (sw[n] * acc[m, n]) + bias[n],   acc = sum_k xq[m, k] * wq[n, k] (int32)
// with xq [M, K] int8 row-major, wq [N, K] int8 row-major, sx [M] / sw [N] float32, bias [N] in the
// output type or absent, y [M, N] bf16/fp16 row-major. The epilogue works in fp32 and rounds once.
//
// Kernel: CUTLASS 3.x/4.x GemmUniversal, TMA loads into a multistage smem pipeline, wgmma
// (s8 x s8 -> s32), warp-specialized producer/consumer warpgroups, persistent tile scheduler, and an
// epilogue visitor tree (EVT) that reads sx / sw / bias as broadcast vectors and stores with TMA.
//
// Two orientations:
//   * normal  : GEMM (M, N, K) with A = xq, B = wq, D = y (row-major).
//   * swap-AB : GEMM (N, M, K) with A = wq, B = xq, D = y^T stored column-major (i.e. y row-major).
//               For decode-sized M (<= 64) the token dimension becomes the narrow wgmma N (8..64)
//               instead of padding M up to a 64-row wgmma tile, so no tensor-core work is wasted
//               and more CTAs stream the weight matrix: this path is weight-bandwidth bound.
//
// Limits: K % 16 == 0 (TMA needs 16-byte row strides for int8), N % 8 == 0 (16-byte output rows),
// 16-byte aligned base pointers; any M >= 1 (TMA clips the ragged tiles). Checked by the caller
// (python/zqkernels/_ops.py) and again by sm90_int8_gemm_run.
//
// Build: -gencode=arch=compute_90a,code=sm_90a with -DNDEBUG (without NDEBUG ptxas serializes
// wgmma, warning C7510). Test: tests/test_gemm_gpu.py; time: benchmarks/bench_w8a8.py.
#pragma once

#include <cstdint>
#include <string>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "gemm_registry.h"
#include "zq_kernels.h"

namespace zq::sm90 {

using namespace cute;
using namespace cutlass::epilogue::fusion;  // Sm90EVT, Sm90Compute, Sm90*Broadcast, Sm90AccFetch

// A compile-time description of one tile configuration (one row of the dispatch table).
template <class TileShape_,      // CTA tile (M, N, K) of the GEMM as CUTLASS sees it
          class ClusterShape_,   // thread-block cluster: TMA multicast of the shared operand
          class KernelSchedule_, // mainloop: Cooperative (2 consumer WGs split one tile) or Pingpong
          class EpiSchedule_,    // the matching TMA epilogue schedule
          class Scheduler_,      // void = persistent data-parallel, StreamKScheduler = stream-K
          bool kSwapAB_>
struct Config {
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = KernelSchedule_;
  using EpiSchedule = EpiSchedule_;
  using Scheduler = Scheduler_;
  static constexpr bool kSwapAB = kSwapAB_;
};

template <class Cfg, class ElementOut>
struct Int8Gemm {
  using TileShape = typename Cfg::TileShape;
  static constexpr bool kSwapAB = Cfg::kSwapAB;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  // Operand layouts. Both operands are K-contiguous ("TN" GEMM), the only layout int8 wgmma takes
  // from shared memory. In swap-AB, the weight [N, K] is A and the activation [M, K] is B.
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  // y is row-major [M, N]; as the swapped GEMM's D (N x M) that is column-major.
  using LayoutD = cute::conditional_t<kSwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlignAB = 16;                                  // 16 bytes of int8
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementOut>::value;  // 16 bytes

  // --- Epilogue visitor tree -------------------------------------------------------------------
  // Broadcast along the GEMM's rows (a value per m of the GEMM) and along its columns.
  using PerGemmRow = Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>>;
  using PerGemmCol = Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>>;
  // bias lives on the output-feature axis: GEMM columns normally, GEMM rows when swapped.
  // EnableNullptr (the default) makes a null bias pointer read as 0, so bias is a runtime option
  // and needs no second instantiation.
  using BiasRow = Sm90RowBroadcast<0, TileShape, ElementOut, float, Stride<_0, _1, _0>>;
  using BiasCol = Sm90ColBroadcast<0, TileShape, ElementOut, float, Stride<_1, _0, _0>>;

  using TokenScale = cute::conditional_t<kSwapAB, PerGemmCol, PerGemmRow>;    // sx[m]
  using ChannelScale = cute::conditional_t<kSwapAB, PerGemmRow, PerGemmCol>;  // sw[n]
  using Bias = cute::conditional_t<kSwapAB, BiasCol, BiasRow>;

  // t = sw[n] * float(acc)
  using ScaleAcc = Sm90EVT<Sm90Compute<cutlass::multiplies, float, float, kRound>,
                           ChannelScale, Sm90AccFetch>;
  // y = round(sx[m] * t + bias[n]): one fma in fp32, one rounding to the output type.
  using Fusion = Sm90EVT<Sm90Compute<cutlass::homogeneous_multiply_add, ElementOut, float, kRound>,
                         TokenScale, ScaleAcc, Bias>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, typename Cfg::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float,
      void, LayoutD, kAlignD,            // no C operand: bias is a broadcast vector, not a matrix
      ElementOut, LayoutD, kAlignD, typename Cfg::EpiSchedule, Fusion>::CollectiveOp;

  // Stages: whatever smem remains after the epilogue's carve-out.
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, LayoutA, kAlignAB, int8_t,
      LayoutB, kAlignAB, int32_t, TileShape, typename Cfg::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Cfg::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, typename Cfg::Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments make_arguments(const Int8GemmArgs& a) {
    using StrideA = typename Gemm::GemmKernel::StrideA;
    using StrideB = typename Gemm::GemmKernel::StrideB;
    using StrideD = typename Gemm::GemmKernel::StrideD;
    // The GEMM's (M, N): swapped problems run N x M.
    const int gm = kSwapAB ? a.N : a.M;
    const int gn = kSwapAB ? a.M : a.N;
    const int8_t* ptr_a = kSwapAB ? a.wq : a.xq;
    const int8_t* ptr_b = kSwapAB ? a.xq : a.wq;
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(gm, a.K, 1));
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(gn, a.K, 1));
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(gm, gn, 1));

    const auto* bias = static_cast<const ElementOut*>(a.bias);
    // Argument tree mirrors the visitor tree: {children..., op}.
    typename Fusion::Arguments fusion{
        {a.sx, 0.f, {}},                    // TokenScale
        {{a.sw, 0.f, {}}, {}, {}},          // ScaleAcc = {ChannelScale, AccFetch, multiplies}
        {bias, ElementOut(0.f), {}},        // Bias (nullptr -> 0)
        {}};                                // multiply_add

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {gm, gn, a.K, 1},
        {ptr_a, stride_a, ptr_b, stride_b},
        {fusion, nullptr, stride_d, static_cast<ElementOut*>(a.out), stride_d}};
    if (a.swizzle > 0) args.scheduler.max_swizzle_size = a.swizzle;
    using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
    if (a.raster == 1) args.scheduler.raster_order = Raster::AlongM;
    if (a.raster == 2) args.scheduler.raster_order = Raster::AlongN;
    args.hw_info.device_id = a.device;
    args.hw_info.sm_count = a.sm_count;
    return args;
  }

  static size_t workspace_size(const Int8GemmArgs& a) {
    return Gemm::get_workspace_size(make_arguments(a));
  }

  static std::string run(const Int8GemmArgs& a) {
    Gemm gemm;
    auto args = make_arguments(a);
    cutlass::Status st = gemm.can_implement(args);
    if (st != cutlass::Status::kSuccess) {
      return std::string("CUTLASS cannot run this problem: ") + cutlassGetStatusString(st);
    }
    if (Gemm::get_workspace_size(args) > a.workspace_bytes) {
      return "workspace too small";
    }
    st = gemm.initialize(args, a.workspace, a.stream);
    if (st != cutlass::Status::kSuccess) {
      return std::string("CUTLASS initialize failed: ") + cutlassGetStatusString(st);
    }
    st = gemm.run(a.stream, /*cuda_adapter=*/nullptr, /*launch_with_pdl=*/a.pdl);
    if (st != cutlass::Status::kSuccess) {
      cudaError_t err = cudaGetLastError();
      return std::string("CUTLASS launch failed: ") + cutlassGetStatusString(st) + " (" +
             cudaGetErrorString(err) + ")";
    }
    return {};
  }
};

// Type-erased entry points, one pair per (config, output type), defined in one translation unit
// per config (sm90_int8_gemm_<config>.cu) so that the build parallelises.
using Entry = GemmEntry;

template <class Cfg>
struct EntryPair {
  static Entry make(const char* name, DType t) {
    if (t == DType::kFP16) {
      return {name, &Int8Gemm<Cfg, cutlass::half_t>::workspace_size, &Int8Gemm<Cfg, cutlass::half_t>::run};
    }
    return {name, &Int8Gemm<Cfg, cutlass::bfloat16_t>::workspace_size,
            &Int8Gemm<Cfg, cutlass::bfloat16_t>::run};
  }
};

}  // namespace zq::sm90
