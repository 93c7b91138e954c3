// sm80_gemm_rowwise.cuh: recipe "int8_rowwise" for Ampere (sm_80 and newer): W8A8 INT8 GEMM
// with per-token activation scales and per-channel weight scales fused into the epilogue.
//
// Computes (docs/SCALES.md):
//   v[m, n] = sx[m] * (sw[n] * acc[m, n]) + bias[n],   acc = sum_k xq[m, k] * wq[n, k] (int32)
//   y[m, n] = act(v[m, n])                              act: none | gelu | gelu_tanh | silu
//   bf16 / fp16 / fp32 output: y rounded once;  int8 output: clamp(rint(y / out_scale), -127, 127)
// with xq [M, K] int8 (rows lda apart), wq [N, K] int8 (rows ldb apart), sx [M] / sw [N] float32,
// bias [N] in the output type (float32 for int8 output) or absent (nullptr), y [M, N] bf16 / fp16 /
// fp32 / int8 row-major. The epilogue works in fp32 (float(acc), one multiply, one fma, the
// activation) and rounds once, to nearest even. The activation mode and out_scale are runtime
// values in the kernel parameters (one instantiation serves every activation).
//
// Kernel: CUTLASS 2.x GemmUniversal. cp.async multistage smem pipeline, mma.sync m16n8k32
// (s8 x s8 -> s32, .satfinite; it never saturates for K < 133,144, see SCALES.md), one output tile
// per CTA (data-parallel, no split-K), and the 2.x epilogue visitor tree (EVT): accumulators go
// through shared memory into the output thread map, then sx / sw / bias are applied as broadcast
// vectors and the result is stored with 16-byte vector stores.
//
// GEMM orientation: A = xq (M x K, RowMajor), B = wq viewed as K x N ColumnMajor (that is the
// nn.Linear [N, K] row-major weight as is, "TN"), D = y (M x N, RowMajor). Both operands are
// K-contiguous, which is what ldmatrix-fed int8 mma.sync wants: no transpose anywhere.
//
// Limits: K % 16 == 0 (16-byte cp.async of int8 rows), N % 8 == 0 (16-byte output vectors; also
// checked by CUTLASS's can_implement; N % 16 == 0 for int8 output), xq / wq / out 16-byte aligned; sx / sw only need float
// alignment and bias only element alignment (they are read one element at a time, see
// VisitorRowBroadcastScalar). Any M >= 1: the ragged last M tile is predicated. Checked by the
// caller (python/zqkernels/ops/gemm_checks.py) and again by check_gemm_args.
// Archs: sm_80 and newer (mma.sync / cp.async / ldmatrix). The build compiles these sources for
// sm_80 and sm_90 (and any other listed arch >= 80) so an H100 can run and test them.
//
// Build: -O3 -DNDEBUG --expt-relaxed-constexpr -std=c++17, one translation unit per tile, generated
// from the table in cmake/gemm_tiles.cmake.
// Test: tests/test_gemm_gpu.py with backend "sm80" (every tile, against the float64 reference of
// docs/SCALES.md); time: the W8A8 benchmark with backend "sm80".
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

// Order matters: the 2.x visitor headers use cutlass::gemm::GemmCoord, NumericArrayConverter and
// DefaultThreadMapTensorOp without including their headers, so those come first.
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm_coord.h"
#include "cutlass/numeric_conversion.h"
#include "cutlass/numeric_types.h"
#include "cutlass/epilogue/threadblock/default_thread_map_tensor_op.h"
#include "cutlass/gemm/threadblock/threadblock_swizzle.h"
#include "cutlass/epilogue/threadblock/fusion/visitors.hpp"
#include "cutlass/gemm/kernel/default_gemm_universal_with_visitor.h"
#include "cutlass/gemm/device/gemm_universal_adapter.h"

#include "cutlass_gemm_common.cuh"
#include "gemm_registry.h"
#include "zq_kernels.h"

namespace zq::sm80 {

using namespace cute;

// ---------------------------------------------------------------------------------------------
// A row-vector broadcast visitor (value per GEMM column n, here sw[n] and bias[n]) that loads its
// elements one at a time.
//
// Why not CUTLASS's VisitorRowBroadcast: it loads 128-bit vectors, so it needs sw / bias to be
// 16-byte aligned, but the Python layer accepts any float-aligned sw and element-aligned bias
// (e.g. a slice w_scale[1:]); a misaligned vector load would be a sticky "misaligned address"
// error that kills the CUDA context. The load happens once per CTA (a few tens of elements per
// thread, before the epilogue loop), so scalar loads cost nothing measurable.
// A null pointer reads as `null_default` (0 for bias), which makes bias a runtime option with a
// single instantiation instead of a with/without-bias pair.
// ---------------------------------------------------------------------------------------------
template <class ThreadMap, class Element>
struct VisitorRowBroadcastScalar {
  struct Arguments {
    Element const* ptr_row = nullptr;  // [N], unit stride, or nullptr
    Element null_default = Element(0);
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }

  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }

  struct SharedStorage {};

  CUTLASS_HOST_DEVICE VisitorRowBroadcastScalar() {}
  CUTLASS_HOST_DEVICE VisitorRowBroadcastScalar(Params const& params, SharedStorage const&)
      : params_ptr(&params) {}

  Params const* params_ptr = nullptr;

  template <class GTensor, class RTensor, class CTensor>
  struct Callbacks : cutlass::epilogue::threadblock::EmptyCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor&& g, RTensor&& r, CTensor&& c, int n_, Params const* p)
        : tC_gRow(cute::forward<GTensor>(g)),
          tC_rRow(cute::forward<RTensor>(r)),
          tC_cRow(cute::forward<CTensor>(c)),
          n(n_),
          params_ptr(p) {}

    GTensor tC_gRow;  // (VECTOR, FRAGMENT_COLUMN) of this thread's columns, in global memory
    RTensor tC_rRow;  // same, in registers
    CTensor tC_cRow;  // same, (m, n, l) coordinates for the bounds check
    int n;
    Params const* params_ptr;

    CUTLASS_DEVICE void begin_epilogue() {
      if (params_ptr->ptr_row == nullptr) {
        fill(tC_rRow, params_ptr->null_default);
        return;
      }
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tC_rRow); ++i) {
        // Columns past N exist only in the ragged last N tile; their outputs are not stored.
        tC_rRow(i) = get<1>(tC_cRow(i)) < n ? tC_gRow(i) : Element(0);
      }
    }

    // The epilogue hands out one access vector (FragmentSize = the thread map's elements per
    // access) per (row, column) iteration; a row broadcast depends on the column iteration only.
    template <class ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE auto visit(int /*iter_idx*/, int /*row_idx*/, int column_idx, int /*frg_idx*/,
                              cutlass::Array<ElementAccumulator, FragmentSize> const&) {
      Tensor r_frg = recast<cutlass::Array<Element, FragmentSize>>(coalesce(tC_rRow));
      return r_frg(column_idx);
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord tile_offset, int thread_idx,
                                    ProblemShape problem_shape) {
    // (M, N, L) view of the vector: stride 0 along m and l, 1 along n.
    Tensor mRow = make_tensor(make_gmem_ptr(params_ptr->ptr_row), problem_shape, Stride<_0, _1, _0>{});
    // The thread map's partition is (VECTOR, FRAGMENT_COLUMN, FRAGMENT_ROW, ITERATION_ROW,
    // ITERATION_GROUP, ITERATION_CLUSTER); a row vector needs the first two at row 0 only.
    Tensor tC_gRow = ThreadMap::partition(mRow, thread_idx, tile_offset)(_, _, _0{}, _0{}, _0{}, _0{});
    Tensor tC_rRow = make_tensor_like(tC_gRow);
    Tensor cRow = make_identity_tensor(mRow.shape());
    Tensor tC_cRow = ThreadMap::partition(cRow, thread_idx, tile_offset)(_, _, _0{}, _0{}, _0{}, _0{});
    return Callbacks<decltype(tC_gRow), decltype(tC_rRow), decltype(tC_cRow)>(
        cute::move(tC_gRow), cute::move(tC_rRow), cute::move(tC_cRow), int(get<1>(problem_shape)),
        params_ptr);
  }
};

// ---------------------------------------------------------------------------------------------
// The activation (+ static int8 quantization) node: y = round(act(v)) as ElementOut, with the mode
// and out_scale in its Arguments (kernel parameters; epi::ActArgs), so one instantiation serves
// every activation. The math is epi::ActQuantFn (cutlass_gemm_common.cuh), shared with sm90.
// CUTLASS's 2.x VisitorCompute has no Arguments, hence this node. With act = none it computes
// exactly what the store's fp32 -> ElementOut conversion did before.
// ---------------------------------------------------------------------------------------------
template <class ElementOut>
struct VisitorActQuant {
  using Arguments = epi::ActArgs;
  using Params = Arguments;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }

  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }

  struct SharedStorage {};

  CUTLASS_HOST_DEVICE VisitorActQuant() {}
  CUTLASS_HOST_DEVICE VisitorActQuant(Params const& params, SharedStorage const&) : params_ptr(&params) {}

  Params const* params_ptr = nullptr;

  struct Callbacks : cutlass::epilogue::threadblock::EmptyCallbacks {
    CUTLASS_DEVICE explicit Callbacks(Params const* p) : params_ptr(p) {}
    Params const* params_ptr;

    template <class ElementAccumulator, class ElementInput, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<ElementOut, FragmentSize> visit(
        int /*iter_idx*/, int /*row_idx*/, int /*column_idx*/, int /*frg_idx*/,
        cutlass::Array<ElementAccumulator, FragmentSize> const&,
        cutlass::Array<ElementInput, FragmentSize> const& frg_input) {
      using Fragment = cutlass::Array<float, FragmentSize>;
      cutlass::NumericArrayConverter<float, ElementInput, FragmentSize, kRound> to_float;
      cutlass::NumericArrayConverter<ElementOut, float, FragmentSize, kRound> to_out;
      using Fn = typename epi::ActQuant<ElementOut>::template Fn<Fragment>;
      return to_out(Fn{}(to_float(frg_input), *params_ptr));
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord, int, ProblemShape) {
    return Callbacks(params_ptr);
  }
};

// ---------------------------------------------------------------------------------------------
// One row of the tile table (cmake/gemm_tiles.cmake), as numbers.
// ---------------------------------------------------------------------------------------------
template <int kTileM, int kTileN, int kTileK,  // CTA tile; K-tile is one cp.async pipeline stage
          int kWarpM, int kWarpN,              // per-warp tile; warp K == tile K (no sliced-K: the
                                               // bf16/fp16 <- int32 epilogue iterators that avoid
                                               // smem bank conflicts do not support k-partitions)
          int kStages_>                        // smem pipeline depth (stages * (tbM + tbN) * tbK bytes)
struct TileConfig {
  using ThreadblockShape = cutlass::gemm::GemmShape<kTileM, kTileN, kTileK>;
  using WarpShape = cutlass::gemm::GemmShape<kWarpM, kWarpN, kTileK>;
  static constexpr int kStages = kStages_;
  static_assert(ThreadblockShape::kK == WarpShape::kK, "sliced-K is not supported by this epilogue");
};

template <class Cfg, class ElementOut>
struct Int8RowwiseGemm {
  static constexpr int kMaxK = kInt8MaxK;  // int32 accumulator (gemm_registry.h)
  using ThreadblockShape = typename Cfg::ThreadblockShape;
  using WarpShape = typename Cfg::WarpShape;
  // The int8 mma.sync: m16n8k32, s8.s8.s32. OpMultiplyAddSaturate is the only int8 flavour CUTLASS
  // wires up for sm_80 (.satfinite); with |acc| < 2^31 it is an exact integer sum.
  using InstructionShape = cutlass::gemm::GemmShape<16, 8, 32>;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using LayoutA = cutlass::layout::RowMajor;     // xq [M, K]
  using LayoutB = cutlass::layout::ColumnMajor;  // wq [N, K] seen as K x N
  using LayoutC = cutlass::layout::RowMajor;     // y  [M, N]
  static constexpr int kAlignAB = 16;            // 16 bytes of int8 per cp.async
  // Output vector: 16 bytes, except 8 bytes (8 elements) for int8 output. 16 int8 per access leave
  // the output thread map of a 64-column tile (32x64x128) with zero row iterations (CUTLASS's
  // RowArrangement static_assert); int8 rows are small next to the K loop, so 8-byte stores cost
  // little. (The Python layer still asks N % 16 == 0 for int8 output, as sm90's TMA store needs.)
  static constexpr int kAlignOut =
      std::is_same_v<ElementOut, int8_t> ? 8 : 128 / cutlass::sizeof_bits<ElementOut>::value;

  // --- Epilogue visitor tree ------------------------------------------------------------------
  // One epilogue stage: two would double the accumulator staging smem for little gain here (the
  // epilogue runs once per tile, after a K loop of >= 1 stage).
  static constexpr int kEpiStages = 1;
  // The output thread map must be the one the default epilogue builds for (ElementOut, kAlignOut)
  // so that the visitors see the same element-to-thread assignment as the smem load iterator.
  using OutputTileThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<
      ThreadblockShape, WarpShape, ElementOut, kAlignOut, kEpiStages>;

  using Acc = cutlass::epilogue::threadblock::VisitorAccFetch;
  // sx[m]: one value per row; CUTLASS's column broadcast already loads element-wise (copy_if).
  using TokenScale = cutlass::epilogue::threadblock::VisitorColBroadcast<
      OutputTileThreadMap, float, Stride<_1, _0, _0>>;
  // An int8 output takes a float32 bias (the bias is added in fp32, before the quantization).
  using ElementBias = cute::conditional_t<std::is_same_v<ElementOut, int8_t>, float, ElementOut>;
  using ChannelScale = VisitorRowBroadcastScalar<OutputTileThreadMap, float>;  // sw[n]
  using Bias = VisitorRowBroadcastScalar<OutputTileThreadMap, ElementBias>;    // bias[n] or 0

  // t = sw[n] * float(acc)   (the int32 -> fp32 conversion is VisitorCompute's input conversion)
  using ScaleAcc = cutlass::epilogue::threadblock::Sm80EVT<
      cutlass::epilogue::threadblock::VisitorCompute<cutlass::multiplies, float, float, kRound>,
      ChannelScale, Acc>;
  // v = sx[m] * t + bias[n]   (one fp32 fma; bias converted to fp32 exactly)
  using Scaled = cutlass::epilogue::threadblock::Sm80EVT<
      cutlass::epilogue::threadblock::VisitorCompute<cutlass::homogeneous_multiply_add, float, float,
                                                     kRound>,
      TokenScale, ScaleAcc, Bias>;
  // y = round_to_nearest_even(act(v)) as ElementOut (int8: the static quantization): the one
  // rounding.
  using ActOut = cutlass::epilogue::threadblock::Sm80EVT<VisitorActQuant<ElementOut>, Scaled>;
  // Stored as is (ElementOut -> ElementOut: no conversion left).
  using StoreD = cutlass::epilogue::threadblock::VisitorAuxStore<
      OutputTileThreadMap, ElementOut, kRound, Stride<int64_t, _1, int64_t>>;
  using Fusion = cutlass::epilogue::threadblock::Sm80EVT<StoreD, ActOut>;

  // GemmIdentityThreadblockSwizzle<8>: CTAs launched together cover an 8-tile-wide band of N for
  // consecutive M tiles, so the weight panel they share stays in L2 (matters for large M).
  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      int8_t, LayoutA, cutlass::ComplexTransform::kNone, kAlignAB,
      int8_t, LayoutB, cutlass::ComplexTransform::kNone, kAlignAB,
      ElementOut, LayoutC, kAlignOut,
      int32_t,  // accumulator
      float,    // epilogue compute type
      cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      ThreadblockShape, WarpShape, InstructionShape,
      Fusion,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>,
      Cfg::kStages,
      cutlass::arch::OpMultiplyAddSaturate,
      kEpiStages>::GemmKernel;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments make_arguments(const GemmArgs& a) {
    auto* out = static_cast<ElementOut*>(a.out);
    const auto* bias = static_cast<const ElementBias*>(a.bias);
    const int64_t mn = int64_t(a.M) * a.N;

    // The argument tree mirrors the visitor tree: {children..., node op}.
    typename Fusion::Arguments fusion{
        {                                    // ActOut
         {                                   //   Scaled
          {a.sa, 0.f, {}},                   //     TokenScale
          {                                  //     ScaleAcc
           {a.sb, 0.f},                      //       ChannelScale
           {},                               //       Acc
           {}},                              //       multiplies
          {bias, ElementBias(0.f)},          //     Bias (nullptr -> 0)
          {}},                               //     multiply_add
         epi::act_args(a)},                  //   activation mode, out_scale
        {out, {int64_t(a.N), _1{}, mn}}};    // StoreD: row stride N

    // C/D pointers and strides of the plain GemmUniversal are unused: the EVT stores D itself.
    return typename Gemm::Arguments(
        cutlass::gemm::GemmUniversalMode::kGemm, cutlass::gemm::GemmCoord{a.M, a.N, a.K},
        /*batch_count (split-K slices)=*/1, fusion, a.a, a.b, /*ptr_C=*/nullptr, /*ptr_D=*/nullptr,
        /*batch strides A, B, C, D=*/int64_t(a.M) * a.lda, int64_t(a.N) * a.ldb, 0, 0,
        /*stride_a (lda)=*/typename LayoutA::Stride(a.lda), /*stride_b (ldb)=*/typename LayoutB::Stride(a.ldb),
        /*stride_c=*/typename LayoutC::Stride(0), /*stride_d=*/typename LayoutC::Stride(0));
  }

  static size_t workspace_size(const GemmArgs& a) {
    // Data-parallel kGemm with one K slice needs none (the query returns 0); asked anyway so
    // the contract holds if a config ever switches to a serial split-K swizzle.
    return Gemm::get_workspace_size(make_arguments(a));
  }

  // Whether run() would accept the problem (shape, strides, alignment), without launching.
  static std::string can_implement(const GemmArgs& a) { return cutlass_can_implement<Int8RowwiseGemm>(a); }

  static std::string run(const GemmArgs& a) {
    std::string err = can_implement(a);
    if (!err.empty()) return err;
    auto args = make_arguments(a);
    cutlass::Status st;
    const size_t need = Gemm::get_workspace_size(args);
    if (need > a.workspace_bytes) {
      return "workspace too small: need " + std::to_string(need) + " bytes, got " +
             std::to_string(a.workspace_bytes);
    }
    Gemm gemm;
    // initialize() sets the >48 KiB dynamic-smem attribute once per thread and device, and builds
    // the kernel params; it does not allocate or synchronize.
    st = gemm.initialize(args, a.workspace, a.stream);
    if (st != cutlass::Status::kSuccess) {
      cudaError_t err = cudaGetLastError();
      return std::string("CUTLASS initialize failed: ") + cutlassGetStatusString(st) + " (" +
             cudaGetErrorString(err) + ")";
    }
    st = gemm.run(a.stream);
    if (st != cutlass::Status::kSuccess) return launch_failure(cutlassGetStatusString(st));
    return {};
  }
};

// The registry row of one (tile, output type); called from the generated translation units.
template <class Cfg, class ElementOut>
GemmKernel make_int8_rowwise(const char* tile, DType out, bool dispatched) {
  return make_gemm_kernel<Int8RowwiseGemm<Cfg, ElementOut>>("sm80", "int8_rowwise", tile, out, dispatched);
}

}  // namespace zq::sm80
