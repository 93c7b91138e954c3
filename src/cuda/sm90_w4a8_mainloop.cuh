// sm90_w4a8_mainloop.cuh: the mixed-input W4A8 mainloop for every M above the streaming kernels':
// no conversion pass, the packed 4-bit weights go straight to the tensor cores. Two weight formats:
//   INT4 x INT8 with integer or float group scales (Integer Scale, arXiv 2405.14597; docs/W4A8.md),
//     described first below (mma_spans: per-group folds; mma_fused: scales <= 16 in the weights);
//   FP4 (E2M1) x FP8 with power-of-two or float group scales (ZeroQuant-FP; docs/FP8.md): the same
//     producer, consumers that convert to E4M3 with the scales applied (mma_fp4, at its end).
//
// Orientation: swap-AB. The weights are the wgmma's A operand, fed from registers (only A can be),
// the tokens its B operand from shared memory: D^T [N, M] = W [N, K] x X^T, stored column-major,
// i.e. y [M, N] row-major (the swap-AB epilogue of sm90_gemm_rowwise.cuh).
//
//   producer (one elected thread): per k-tile of 128, into one pipeline stage,
//     - the packed weights: the layout m16k32 keeps a 16-row tile's 64-wide chunks contiguous
//       (512 bytes each), so a CTA's 128 rows x 128 k are 8 bulk copies of 1 KB (cp.async.bulk);
//     - the group scales of the k-tile's groups for the tile's rows (rows of sg_t [G, N]);
//     - the tokens' k-tile by TMA (the base collective's descriptor for B);
//     all completing on the stage's transaction barrier.
//   consumers (two warpgroups, 64 weight rows each): per span of kPK k-blocks of 32 (a span lies in
//     one group), each thread reads its A fragments straight from shared memory (8 bytes per
//     k-block: the layout stores them in the MMA's register order, row r in the low nibbles and
//     row r + 8 in the high ones), sign-extends the INT4 codes into int8 with 7 integer
//     instructions per 8 codes (w4_convert.cuh) and issues register-sourced wgmmas into an int32
//     partial sum; while they run it loads the next span's codes; then the partial sum is folded in:
//       int scales:   iacc += s_int[n, j] * temp   (integer multiply-add; flushed to an fp32 sum in
//                     shared memory every `flush` spans: no int32 overflow for any input)
//       float scales: acc += r[n, j] * float(temp)
//     In this orientation a thread's accumulator rows are just two weight rows (r and r + 8 of its
//     warp's 16), so a fold reads two scales. One partial sum, drained before its fold (the other
//     warpgroup's wgmmas fill the tensor cores meanwhile), leaves registers for 128-token tiles.
//
// The base is the collective CUTLASS's builder makes for the int8 x int8 (FP4: e4m3 x e4m3, fast
// accumulation schedule) swap-AB tile: its B TMA,
// shared-memory layout of B, pipeline, tail and the kernel around it are kept; A's TMA descriptor
// is built on the packed pointer but never used. The accumulator type seen by the kernel is fp32
// (FloatAccView, as for the group-scaled int8 mainloop).
//
// Limits: N % 16 == 0, K % 64 == 0 (the packed layout), group_size a multiple of 32 dividing K,
// N % 4 == 0 and sg_t 16-byte aligned (scale rows by bulk copy). Tile: 64 weight rows per consumer
// warpgroup, k-tile 128, no cluster.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/collective/collective_builder.hpp"

#include "gemm_registry.h"           // kInt8MaxK
#include "sm90_group_mainloop.cuh"  // FloatAccTiledMma, GroupScaleArgs, GroupScaleParams
#include "sm90_span_mainloop.cuh"   // ZQ_BASE_COLLECTIVE_TYPES
#include "w4_convert.cuh"

namespace zq::sm90 {

// The register-sourced TiledMma (int8 or e4m3) with the same atom layout as the base's shared-memory one.
template <class T>
struct RegisterATiledMma;
template <class Op, class AtomLayout, class Permutation>
struct RegisterATiledMma<cute::TiledMMA<cute::MMA_Atom<Op>, AtomLayout, Permutation>> {
  using Traits = cute::MMA_Traits<Op>;
  using RsOp = decltype(cute::GMMA::rs_op_selector<typename Traits::ValTypeA, typename Traits::ValTypeB,
                                                   typename Traits::ValTypeC, typename Traits::Shape_MNK>());
  using type = cute::TiledMMA<cute::MMA_Atom<RsOp>, AtomLayout, Permutation>;
};

// kIntScales: 32-bit integer scales (INT4: Integer Scale's group scales; FP4: the groups'
// power-of-two exponents), else float ones. kFused: INT4 integer scales <= 16 multiplied into the
// weights. kZeroPoint (with kFused): the zero-point format (python/zqkernels/reference/zero_point.py),
// each scale word s | (s z) << 8, the codes' int8 values s (u - z). The weight format follows the
// base: int8 wgmma = INT4 weights, e4m3 wgmma = FP4 weights.
template <class Base, bool kIntScales, bool kFused = false, bool kZeroPoint = false>
struct W4A8MixedMainloop : Base {
  static_assert(!kFused || kIntScales, "fused scales are integer scales");
  static_assert(!kZeroPoint || kFused, "zero points are a fused-scale format");
  ZQ_BASE_COLLECTIVE_TYPES(Base);
  using IntTiledMma = typename Base::TiledMma;  // the base's shared-memory TiledMma (int8 or e4m3)
  using RsTiledMma = typename RegisterATiledMma<IntTiledMma>::type;
  using TiledMma = typename FloatAccTiledMma<IntTiledMma>::type;
  using ElementAccumulator = float;
  using ElementScale = cute::conditional_t<kIntScales, int32_t, float>;
  using Element8 = typename IntTiledMma::ValTypeA;  // the wgmma's 8-bit operand type
  static constexpr bool kFp4 = std::is_same_v<Element8, cutlass::float_e4m3_t>;
  static_assert(!kFp4 || !kFused, "FP4 weights carry their scales in the conversion already");

  static_assert(std::is_same_v<typename IntTiledMma::ValTypeC, cute::conditional_t<kFp4, float, int32_t>>,
                "int8 wgmma (s32 accumulator) or e4m3 wgmma (f32 accumulator)");
  static_assert(cute::size(typename DispatchPolicy::ClusterShape{}) == 1, "no cluster: B is loaded without multicast");
  static constexpr int kStages = DispatchPolicy::Stages;
  static constexpr int kTileM = cute::size<0>(TileShape{});  // weight rows
  static constexpr int kTileN = cute::size<1>(TileShape{});  // tokens
  static constexpr int kTileK = cute::size<2>(TileShape{});
  static constexpr int kThreads = cute::size(IntTiledMma{});
  static_assert(kTileM == 64 * (kThreads / cutlass::NumThreadsPerWarpGroup),
                "one 64-row wgmma per consumer warpgroup: a warp owns 16 weight rows (one m16k32 row tile)");
  static_assert(kTileK % 64 == 0, "k-tile of whole 64-wide chunks");
  static constexpr int kMmaK = 32;
  static constexpr int kBlocks = kTileK / kMmaK;
  static constexpr int kChunks = kTileK / 64;                 // 64-wide chunks of the packed layout per k-tile
  static constexpr int kRowTiles = kTileM / 16;               // 16-row tiles per CTA tile
  static constexpr int kChunkBytes = 512;                     // 16 rows x 64 k x 4 bits
  static constexpr int kStageABytes = kRowTiles * kChunks * kChunkBytes;
  static constexpr int kScaleRows = kBlocks;                  // groups one k-tile can touch
  static constexpr int kScaleStageElems = kScaleRows * kTileM;
  static constexpr int kFlushElems = kTileM * kTileN;

  struct TensorStorage : cute::aligned_struct<128, cute::_0> {
    cute::array_aligned<uint8_t, kStages * kStageABytes, 128> smem_A;  // packed INT4 (m16k32) / FP4 (m16k64)
    cute::array_aligned<typename IntTiledMma::ValTypeB, cute::cosize_v<SmemLayoutB>> smem_B;
    cute::array_aligned<ElementScale, kStages * kScaleStageElems, 128> smem_scale;
    cute::array_aligned<float, kIntScales && !kFused && !kFp4 ? kFlushElems : 1, 128> smem_flush;
  };
  struct SharedStorage {
    TensorStorage tensors;
    PipelineStorage pipeline;
  };

  struct Arguments {
    ElementA const* ptr_A;  // the packed weights (uint8 [N, K / 2], layout m16k32)
    StrideA dA;
    ElementB const* ptr_B;
    StrideB dB;
    GroupScaleArgs group{};
  };

  struct Params : Base::Params, GroupScaleParams<kIntScales> {
    const uint8_t* ptr_w = nullptr;
    int K = 0;
    float unit = 1.f;  // FP4: the promotion's multiplier (mma_fp4)
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    Params p;
    static_cast<typename Base::Params&>(p) = Base::to_underlying_arguments(problem_shape, base, workspace);
    // The stage's barrier expects B's TMA bytes here; the producer adds the weights' and scales'.
    p.tma_transaction_bytes = Base::TmaTransactionBytesNK;
    auto shape = cute::append<4>(problem_shape, 1);
    p.K = static_cast<int>(cute::get<2>(shape));
    p.set_groups(static_cast<int>(cute::get<0>(shape)), p.K, args.group);  // swap-AB: the GEMM's M is N
    p.ptr_w = reinterpret_cast<const uint8_t*>(args.ptr_A);
    return p;
  }

  // Why the problem does not fit (empty: it does). Also checked by the Python layer.
  static const char* group_error(int N, int K, GroupScaleArgs const& g) {
    if (N % 16 != 0 || K % 64 != 0) return "the packed 4-bit layouts need N % 16 == 0 and K % 64 == 0";
    if (kFused && K > kInt8MaxK) return "K must be <= 131071 (one int32 sum of int8 x int8 products)";
    return group_args_error(N, K, g, kIntScales && !kFused && !kFp4);
  }

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& args) {
    auto shape = cute::append<4>(problem_shape, 1);
    typename Base::Arguments base{args.ptr_A, args.dA, args.ptr_B, args.dB};
    const int N = static_cast<int>(cute::get<0>(shape));
    const int K = static_cast<int>(cute::get<2>(shape));
    return Base::can_implement(problem_shape, base) && group_error(N, K, args.group)[0] == '\0' &&
           reinterpret_cast<uintptr_t>(args.ptr_A) % 16 == 0;
  }

  // Producer: per k-tile, the tile's packed weight chunks (one bulk copy per 16-row tile), the
  // scale rows of the k-tile's groups, and the tokens' k-tile (TMA), on the stage's barrier.
  template <class TensorA, class TensorB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& p, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB> const& load_inputs, BlockCoord const& blk_coord,
                           KTileIterator k_tile_iter, int k_tile_count, int thread_idx, uint32_t block_rank_in_cluster,
                           TensorStorage& shared_tensors) {
    using namespace cute;
    if (!cute::elect_one_sync()) return;
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
    auto block_tma_b = p.tma_load_b.get_slice(0);
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    Tensor gB = get<1>(load_inputs)(_, _, n_coord, _, l_coord);
    Tensor tBgB = block_tma_b.partition_S(gB);
    Tensor tBsB = block_tma_b.partition_D(sB);

    const int n0 = static_cast<int>(m_coord) * kTileM;  // first weight row of the tile
    const int nrows = p.N - n0 < kTileM ? p.N - n0 : kTileM;
    const int row_tiles = nrows / 16;  // N % 16 == 0
    const uint32_t scale_row_bytes = static_cast<uint32_t>(nrows) * sizeof(ElementScale);
    const int chunks_total = p.K / 64;
    const uint8_t* w_tile = p.ptr_w + static_cast<int64_t>(n0 / 16) * chunks_total * kChunkBytes;
    CUTLASS_PRAGMA_NO_UNROLL
    for (; k_tile_count > 0; --k_tile_count) {
      pipeline.producer_acquire(smem_pipe_write);
      using BarrierType = typename MainloopPipeline::ProducerBarrierType;
      BarrierType* bar = pipeline.producer_get_barrier(smem_pipe_write);
      const int stage = smem_pipe_write.index();
      const int kt = static_cast<int>(*k_tile_iter);
      const int c0 = kt * kChunks;
      const int nchunks = chunks_total - c0 < kChunks ? chunks_total - c0 : kChunks;
      const uint32_t a_bytes = static_cast<uint32_t>(nchunks * kChunkBytes);
      int first, last;
      p.ktile_groups(kt, kTileK, first, last);
      // The rows a whole k-tile reads. The last k-tile of K % 128 == 64 has fewer groups; its slots
      // past `last` get the last row again, so the consumers' k-blocks past K (zero tokens) read a
      // finite scale of this tile wherever they index from: the consumers count k-tiles from their
      // work unit's start (a stream-K unit starts at any k-tile), so they cannot clamp to K's end.
      const int tile_rows = kTileK > p.group_size ? kTileK / p.group_size : 1;
      const int pad = first + tile_rows - 1 - last;
      // Everything this stage will receive joins its expected transaction before any copy is issued.
      cutlass::arch::ClusterTransactionBarrier::expect_transaction(
          bar, a_bytes * static_cast<uint32_t>(row_tiles) + scale_row_bytes * static_cast<uint32_t>(last - first + 1 + pad));
      uint8_t* a_dst = shared_tensors.smem_A.data() + stage * kStageABytes;
      for (int rt = 0; rt < row_tiles; ++rt) {
        SM90_BULK_COPY_G2S::copy(w_tile + (static_cast<int64_t>(rt) * chunks_total + c0) * kChunkBytes, bar,
                                 a_dst + rt * kChunks * kChunkBytes, static_cast<int32_t>(a_bytes));
      }
      ElementScale* s_dst = shared_tensors.smem_scale.data() + stage * kScaleStageElems;
      p.copy_scale_rows(bar, first, last, n0, scale_row_bytes, s_dst, kTileM);
      for (int j = 1; j <= pad; ++j) p.copy_scale_rows(bar, last, last, n0, scale_row_bytes, s_dst + (last - first + j) * kTileM, kTileM);
      copy(p.tma_load_b.with(*bar, 0), tBgB(_, _, _, *k_tile_iter), tBsB(_, _, _, stage));
      ++k_tile_iter;
      ++smem_pipe_write;
    }
  }

  // Consumer. Spans of kPK k-blocks of 32 (a span lies in one k-tile and one group), one int32
  // partial sum `temp`, drained before its fold: per span s,
  //   convert span s's INT4 codes (already in registers, `raw`) into the A operand;
  //   issue its kPK wgmmas into temp (starting from zero); commit;
  //   while they run: wait for the next span's k-tile if it starts one, load its raw codes;
  //   wait for the wgmmas; fold temp in (iacc += s_int * temp, or acc += r * float(temp));
  //   release the k-tile's stage after its last span.
  // One partial sum (not two alternating, as the int8 group mainloop keeps) leaves registers for
  // 128-token tiles; the other consumer warpgroup's wgmmas run while this one converts and folds.
  // Leaves the last k-tile's stage unreleased, as the base collective's mma() does with
  // K_PIPE_MMAS = 1, so the base mma_tail() releases it.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    if constexpr (kFp4) {
      return mma_fp4(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
    } else if constexpr (kFused) {
      return mma_fused(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
    } else {
      switch (p.promote_blocks) {
        case 1: return mma_spans<1>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
        case 2: return mma_spans<2>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
        default: return mma_spans<4>(pipeline, smem_pipe_read, accum, k_tile_count, thread_idx, shared_tensors, p);
      }
    }
  }

  // The tile row of this thread's accumulator values: in this orientation a thread holds two
  // weight rows, r0 and r0 + 8 (value i in row r0 + 8 * ((i >> 1) & 1), checked at compile time).
  template <class FrgTensorC>
  CUTLASS_DEVICE static int first_row(int thread_idx, FrgTensorC const& accum) {
    using namespace cute;
    IntTiledMma tiled_mma;
    Tensor tCcC = tiled_mma.get_slice(thread_idx).partition_C(make_identity_tensor(take<0, 2>(TileShape{})));
    CUTE_STATIC_ASSERT_V(size(tCcC) == size(accum));
    const int r0 = get<0>(tCcC(0));
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < decltype(size(accum))::value; ++i) {  // folded to nothing
      if (get<0>(tCcC(i)) != r0 + 8 * ((i >> 1) & 1)) __trap();
    }
    return r0;
  }

  // The B operand's wgmma descriptors of this thread's slice: (MMA, MMA_N, MMA_K, PIPE).
  template <class ThrMma>
  CUTLASS_DEVICE static auto b_descriptors(ThrMma const& thr, TensorStorage& shared_tensors) {
    using namespace cute;
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});
    Tensor tCrB = thr.partition_fragment_B(sB);
    CUTE_STATIC_ASSERT_V(size<2>(tCrB) == Int<kBlocks>{});
    return tCrB;
  }

  CUTLASS_DEVICE static void wait_stage(MainloopPipeline& pipeline, PipelineState const& state) {
    auto token = pipeline.consumer_try_wait(state);
    pipeline.consumer_wait(state, token);
  }

  template <class T>
  CUTLASS_DEVICE static void opaque_zero(T& t) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < cute::size(t); ++i) {
      if constexpr (std::is_same_v<typename T::value_type, float>) {
        asm volatile("mov.b32 %0, 0;" : "=f"(t(i)));
      } else {
        asm volatile("mov.b32 %0, 0;" : "=r"(t(i)));
      }
    }
  }

  template <int kPK, class FrgTensorC>
  CUTLASS_DEVICE void mma_spans(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                                int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    using namespace cute;
    static_assert(std::is_same_v<typename FrgTensorC::value_type, float>, "fp32 accumulator fragment");
    static_assert(kBlocks % kPK == 0, "a span lies inside one k-tile");
    constexpr int kSpansPerTile = kBlocks / kPK;
    RsTiledMma rs_mma;
    auto thr = rs_mma.get_slice(thread_idx);
    Tensor tCrB = b_descriptors(thr, shared_tensors);
    // A span's A operand in registers: 4 words (16 int8) per k-block, in the order of the atom's
    // A values (ALayout_64x32: word 2 q + hi = row r + 8 hi, k 16 q + 4 t .. + 3). Kept as 32-bit
    // words and viewed as int8 for the MMA, which reads them back as words: no byte shuffling.
    Tensor a_frag = make_tensor<uint32_t>(make_layout(make_shape(Int<4>{}, Int<1>{}, Int<kPK>{})));
    static_assert(decltype(size(thr.partition_fragment_A(
                      make_tensor(make_smem_ptr(static_cast<int8_t*>(nullptr)),
                                  make_layout(make_shape(Int<kTileM>{}, Int<kPK * kMmaK>{}),
                                              make_stride(Int<kPK * kMmaK>{}, Int<1>{}))))))::value == 16 * kPK,
                  "16 int8 A values per thread and k-block");
    uint2 raw[kPK];  // the span's packed codes: 2 words per k-block

    constexpr int kVals = decltype(size(accum))::value;
    const int r0 = first_row(thread_idx, accum);

    Tensor temp = make_fragment_like<int32_t>(accum);
    Tensor iacc = make_fragment_like<int32_t>(accum);
    if constexpr (!kIntScales) opaque_zero(accum);
    // Zeros each written by its own instruction: a zero the compiler shares between the partial sum
    // and other registers (copies of a register a wgmma also writes) makes ptxas wait for the
    // wgmma before those copies (C7517).
    opaque_zero(temp);
    opaque_zero(iacc);
    float* fsum = nullptr;
    if constexpr (kIntScales) {
      fsum = shared_tensors.smem_flush.data() + thread_idx;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kVals; ++i) fsum[i * kThreads] = 0.f;
    }

    // This thread's packed bytes in a stage: its warp's 16-row tile, its lane's 16 bytes of a chunk.
    const uint8_t* a_base = shared_tensors.smem_A.data() + (thread_idx / 32) * kChunks * kChunkBytes + (thread_idx % 32) * 16;
    const ElementScale* scales = shared_tensors.smem_scale.data();
    const int gk = p.group_blocks;
    int since_flush = 0;

    PipelineState smem_pipe_release = smem_pipe_read;
    // The stage holding span s's k-tile: waited for at the tile's first span.
    auto acquire = [&](int s) {
      if (s % kSpansPerTile == 0) {
        if (s > 0) ++smem_pipe_read;
        wait_stage(pipeline, smem_pipe_read);
      }
      return smem_pipe_read.index();
    };
    auto load_raw = [&](int stage, int sub) {
      const uint8_t* a_stage = a_base + stage * kStageABytes;
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kPK; ++j) {
        const int b = sub * kPK + j;  // k-block of the k-tile: chunk b / 2, MMA step b % 2
        raw[j] = *reinterpret_cast<const uint2*>(a_stage + (b >> 1) * kChunkBytes + (b & 1) * 8);
      }
    };
    auto fold = [&](int stage, int s) {
      const int kt = s / kSpansPerTile;
      // A span past K (the last k-tile of K % 128 == 64) holds products with zero-filled tokens:
      // folded in with the last group's (finite) scales, it adds exactly 0.
      const int group = min(((s + 1) * kPK - 1) / gk, p.groups - 1);
      const ElementScale* row = scales + stage * kScaleStageElems + (group - kt * kTileK / p.group_size) * kTileM + r0;
      const ElementScale s0 = row[0], s1 = row[8];
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kVals; ++i) {
        const ElementScale sc = ((i >> 1) & 1) ? s1 : s0;
        if constexpr (kIntScales) {
          iacc(i) += sc * temp(i);
        } else {
          accum(i) = fmaf(sc, static_cast<float>(temp(i)), accum(i));
        }
      }
      if constexpr (kIntScales) {
        if (++since_flush == p.flush) {  // before the int32 bound can be reached (docs/W4A8.md)
          since_flush = 0;
          flush_int_sum(iacc, fsum, kThreads);
        }
      }
      if (s % kSpansPerTile == kSpansPerTile - 1 && kt < k_tile_count - 1) {
        pipeline.consumer_release(smem_pipe_release);
        ++smem_pipe_release;
      }
    };

    const int spans = k_tile_count * kSpansPerTile;
    int stage = acquire(0);
    load_raw(stage, 0);
    if constexpr (!kIntScales) warpgroup_fence_operand(accum);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int s = 0; s < spans; ++s) {
      const int sub = s % kSpansPerTile;
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kPK; ++j) {
        const w4::Int8Pair q0 = w4::int4_word_to_int8(raw[j].x), q1 = w4::int4_word_to_int8(raw[j].y);
        a_frag(0, 0, j) = q0.lo;  // row r,     k 4t .. 4t + 3
        a_frag(1, 0, j) = q0.hi;  // row r + 8
        a_frag(2, 0, j) = q1.lo;  // row r,     k 16 + 4t ..
        a_frag(3, 0, j) = q1.hi;  // row r + 8
      }
      // No operand fence on a_frag: an asm that "modifies" the A registers after the wgmmas were
      // issued makes ptxas wait for them (C7517); the wgmmas read them as inputs, which orders the
      // conversion before them, and the wait below precedes the next conversion.
      rs_mma.accumulate_ = GMMA::ScaleOut::Zero;
      warpgroup_fence_operand(temp);
      warpgroup_arrive();
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kPK; ++j) {
        cute::gemm(rs_mma, recast<int8_t>(a_frag(_, _, j)), tCrB(_, _, sub * kPK + j, stage), temp);
        rs_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(temp);
      const int cur = stage;
      if (s + 1 < spans) {  // while the wgmmas run
        stage = acquire(s + 1);
        load_raw(stage, (s + 1) % kSpansPerTile);
      }
      warpgroup_wait<0>();
      warpgroup_fence_operand(temp);
      fold(cur, s);
    }
    if constexpr (kIntScales) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < kVals; ++i) accum(i) = static_cast<float>(iacc(i)) + fsum[i * kThreads];
    }
    warpgroup_fence_operand(accum);
  }

  // Fused scales (integer group scales s <= 16, the host's bound; or the zero-point format): s * q
  // fits an int8 for every INT4 code q (-8 * 16 = -128, 7 * 16 = 112), so the conversion multiplies
  // the codes by their group's scale (w4::fused_bytes: one IMAD per 4 codes) and the wgmmas
  // accumulate y's exact integer sum sum_j s_j P_j in one int32 accumulator across all of K: no
  // partial sums, no folds, one accumulator set (the plain int8 GEMM's mainloop with a converting A
  // load). The accumulator is exact for K <= 131071 (|x| <= 128, |s q| <= 128). Per k-block, as CUTLASS's
  // mixed-input mainloop: issue its wgmma, wait until one is in flight, convert the next k-block
  // into its own register slice (the slice's last reader has retired), release the previous
  // k-tile's stage once its last wgmma retired.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma_fused(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                                int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    using namespace cute;
    static_assert(std::is_same_v<typename FrgTensorC::value_type, float>, "fp32 accumulator fragment");
    RsTiledMma rs_mma;
    auto thr = rs_mma.get_slice(thread_idx);
    Tensor tCrB = b_descriptors(thr, shared_tensors);
    // One k-tile's A operand: 4 words (16 int8) per k-block (word 2 q + hi = row r + 8 hi, k 16 q +
    // 4 t .. + 3), viewed as int8 for the MMA.
    Tensor a_frag = make_tensor<uint32_t>(make_layout(make_shape(Int<4>{}, Int<1>{}, Int<kBlocks>{})));
    constexpr int kVals = decltype(size(accum))::value;
    const int r0 = first_row(thread_idx, accum);
    Tensor acc = make_fragment_like<int32_t>(accum);

    const uint8_t* a_base = shared_tensors.smem_A.data() + (thread_idx / 32) * kChunks * kChunkBytes + (thread_idx % 32) * 16;
    const int32_t* scales = reinterpret_cast<const int32_t*>(shared_tensors.smem_scale.data());
    // k-block b of k-tile kt (in pipeline stage `stage`) into slice b: codes times their group's
    // scale (rows r0 and r0 + 8), as int8.
    auto convert = [&](int stage, int kt, int b) {
      const uint2 w = *reinterpret_cast<const uint2*>(a_base + stage * kStageABytes + (b >> 1) * kChunkBytes + (b & 1) * 8);
      const int k0 = kt * kTileK;
      const int group = min((k0 + kMmaK * b) / p.group_size, p.groups - 1);  // past K: any finite scale
      const int32_t* row = scales + stage * kScaleStageElems + (group - k0 / p.group_size) * kTileM + r0;
      const w4::FusedRow f0 = w4::fused_row<kZeroPoint>(static_cast<uint32_t>(row[0]));  // row r
      const w4::FusedRow f1 = w4::fused_row<kZeroPoint>(static_cast<uint32_t>(row[8]));  // row r + 8
      a_frag(0, 0, b) = w4::fused_bytes(w.x, f0);       // row r,     k 4t ..
      a_frag(1, 0, b) = w4::fused_bytes(w.x >> 4, f1);  // row r + 8
      a_frag(2, 0, b) = w4::fused_bytes(w.y, f0);       // row r,     k 16 + 4t ..
      a_frag(3, 0, b) = w4::fused_bytes(w.y >> 4, f1);  // row r + 8
    };

    PipelineState smem_pipe_release = smem_pipe_read;
    wait_stage(pipeline, smem_pipe_read);
    int stage = smem_pipe_read.index();
    convert(stage, 0, 0);
    rs_mma.accumulate_ = GMMA::ScaleOut::Zero;
    warpgroup_fence_operand(acc);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int kt = 0; kt < k_tile_count; ++kt) {
      CUTLASS_PRAGMA_UNROLL
      for (int b = 0; b < kBlocks; ++b) {
        warpgroup_arrive();
        cute::gemm(rs_mma, recast<int8_t>(a_frag(_, _, b)), tCrB(_, _, b, stage), acc);
        rs_mma.accumulate_ = GMMA::ScaleOut::One;
        warpgroup_commit_batch();
        warpgroup_wait<1>();  // k-block b - 1 (or the previous tile's last) retired
        if (b == 0 && kt > 0) {  // the previous k-tile's wgmmas have all retired
          pipeline.consumer_release(smem_pipe_release);
          ++smem_pipe_release;
        }
        if (b + 1 < kBlocks) {
          convert(stage, kt, b + 1);
        } else if (kt + 1 < k_tile_count) {
          ++smem_pipe_read;
          wait_stage(pipeline, smem_pipe_read);
          stage = smem_pipe_read.index();
          convert(stage, kt + 1, 0);
        }
      }
    }
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kVals; ++i) accum(i) = static_cast<float>(acc(i));
    warpgroup_fence_operand(accum);
  }

  // FP4 weights (layout m16k64, docs/FP8.md) x FP8 activations (ZeroQuant-FP). The layout gives a
  // lane 16 consecutive k of a chunk; the wgmma reads the activations in natural order, so a thread
  // gathers its fragment: for k-block b (chunk b / 2, MMA step S = b % 2) and half q, word t of lane
  // 4 r + 2 S + q holds k 32 S + 16 q + 4 t .. + 3 of row r (low 16 bits) and r + 8 (high): its A
  // registers (q, row). The streaming kernel's conversion (w4_convert.cuh RowScale) makes them E4M3
  // with the group's scale: exponent tables for power-of-two scales, an fp32 multiply and E4M3
  // rounding for float ratios - the reference's FP8 weights bit for bit. A k-tile's wgmmas sum into
  // the fp32 partial `temp` (Hopper's FP8 accumulator is not full fp32), promoted at the tile's end
  // (the accurate fp8_gemm's 128 of K). Per k-block: issue its wgmma, convert the next one into its
  // own register slice meanwhile; at the tile's end convert the next tile's first k-block, drain,
  // promote (the other warpgroup keeps the tensor cores busy).
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma_fp4(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum,
                              int k_tile_count, int thread_idx, TensorStorage& shared_tensors, Params const& p) {
    using namespace cute;
    static_assert(std::is_same_v<typename FrgTensorC::value_type, float>, "fp32 accumulator fragment");
    static_assert(kBlocks >= 2, "the next k-block's conversion overlaps the previous one's wgmma");
    RsTiledMma rs_mma;
    auto thr = rs_mma.get_slice(thread_idx);
    Tensor tCrB = b_descriptors(thr, shared_tensors);
    Tensor a_frag = make_tensor<uint32_t>(make_layout(make_shape(Int<4>{}, Int<1>{}, Int<kBlocks>{})));
    constexpr int kVals = decltype(size(accum))::value;
    const int r0 = first_row(thread_idx, accum);
    Tensor temp = make_fragment_like<float>(accum);
    opaque_zero(accum);
    opaque_zero(temp);
    const float unit = p.unit;

    // Word t of lane 4 r (its row pair's first lane) of the thread's 16-row tile, chunk 0, stage 0.
    // The two words of a k-block lie 16 bytes apart; rows r and r + 2 (64 bytes per row pair) would
    // hit the same banks, so the threads of odd r / 2 load the pair in the other order (2-way bank
    // conflicts instead of 4-way: one of two words per load instruction cannot avoid them) and
    // swap the words back.
    const int lane = thread_idx % 32;
    const bool swap = (lane >> 3) & 1;  // (r / 2) odd
    const uint8_t* a_base = shared_tensors.smem_A.data() + (thread_idx / 32) * kChunks * kChunkBytes +
                            (lane & ~3) * 16 + (lane & 3) * 4 + (swap ? 16 : 0);
    const int second = swap ? -16 : 16;
    const ElementScale* scales = shared_tensors.smem_scale.data();
    auto convert = [&](int stage, int kt, int b) {
      const uint8_t* w = a_base + stage * kStageABytes + (b >> 1) * kChunkBytes + (b & 1) * 32;
      const uint32_t first_word = *reinterpret_cast<const uint32_t*>(w);
      const uint32_t second_word = *reinterpret_cast<const uint32_t*>(w + second);
      const uint32_t w0 = swap ? second_word : first_word;  // q = 0: lane 4 r + 2 S
      const uint32_t w1 = swap ? first_word : second_word;  // q = 1: lane 4 r + 2 S + 1
      const int k0 = kt * kTileK;
      const int group = min((k0 + kMmaK * b) / p.group_size, p.groups - 1);  // past K: any finite scale
      const ElementScale* row = scales + stage * kScaleStageElems + (group - k0 / p.group_size) * kTileM + r0;
      w4::RowScale<kIntScales> s_lo, s_hi;
      s_lo.set(reinterpret_cast<const uint32_t*>(row)[0]);
      s_hi.set(reinterpret_cast<const uint32_t*>(row)[8]);
      const w4::Sel x0 = w4::selectors(w0), x1 = w4::selectors(w1);
      a_frag(0, 0, b) = s_lo(x0.idx, x0.sel);              // row r,     k 4t ..
      a_frag(1, 0, b) = s_hi(x0.idx >> 16, x0.sel >> 16);  // row r + 8
      a_frag(2, 0, b) = s_lo(x1.idx, x1.sel);              // row r,     k 16 + 4t ..
      a_frag(3, 0, b) = s_hi(x1.idx >> 16, x1.sel >> 16);  // row r + 8
    };

    PipelineState smem_pipe_release = smem_pipe_read;
    wait_stage(pipeline, smem_pipe_read);
    int stage = smem_pipe_read.index();
    convert(stage, 0, 0);
    warpgroup_fence_operand(accum);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int kt = 0; kt < k_tile_count; ++kt) {
      rs_mma.accumulate_ = GMMA::ScaleOut::Zero;
      CUTLASS_PRAGMA_UNROLL
      for (int b = 0; b < kBlocks; ++b) {
        warpgroup_fence_operand(temp);
        warpgroup_arrive();
        cute::gemm(rs_mma, recast<Element8>(a_frag(_, _, b)), tCrB(_, _, b, stage), temp);
        rs_mma.accumulate_ = GMMA::ScaleOut::One;
        warpgroup_commit_batch();
        if (b + 1 < kBlocks) {
          // Slice b + 1's previous reader (the previous tile's k-block b + 1) retired before that
          // tile's promotion: no wait, this tile's wgmmas queue back to back.
          convert(stage, kt, b + 1);
        } else {
          // The next tile's first k-block into slice 0, whose reader (k-block 0) has retired.
          if (kt + 1 < k_tile_count) {
            ++smem_pipe_read;
            wait_stage(pipeline, smem_pipe_read);
            convert(smem_pipe_read.index(), kt + 1, 0);
          }
          warpgroup_wait<0>();
          warpgroup_fence_operand(temp);
          if (kt + 1 < k_tile_count) {  // this tile's stage is read; the last one mma_tail releases
            pipeline.consumer_release(smem_pipe_release);
            ++smem_pipe_release;
            stage = smem_pipe_read.index();
          }
          // The promotion: an FFMA by a runtime 1.0 (as Fp8PromoteMainloop: an FADD lets ptxas
          // serialize the wgmmas).
          CUTLASS_PRAGMA_UNROLL
          for (int i = 0; i < kVals; ++i) accum(i) = fmaf(temp(i), unit, accum(i));
        }
      }
    }
    warpgroup_fence_operand(accum);
  }
};

}  // namespace zq::sm90
