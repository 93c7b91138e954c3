// w4a8_stream_pipe.cuh: the bulk-copy pipeline of the W4A8 decode kernels (sm_90), included by
// w4a8_gemm.cu.
//
// Why: the register-pipelined streaming kernel keeps at most a few chunks per warp in flight, and each
// short-lived CTA starts with an empty pipeline and ends with a reduction; at decode shapes it streamed
// the weights at 1.3-1.8 TB/s against ~3 TB/s of copy bandwidth (issue 18).
//
// Structure: persistent CTAs of one producer warp and kConsumers consumer warps. A CTA owns row tiles
// blockIdx.x, blockIdx.x + gridDim.x, ... (16 weight rows each; a row tile's packed codes are one
// contiguous run of K / 2 * 16 bytes) and streams them through a ring of kStages shared-memory stages
// of kStageChunks chunks (64 of K each, 512 bytes): one lane of the producer issues one bulk copy per
// stage (cp.async.bulk, completion counted in bytes on the stage's "full" mbarrier) as soon as the
// consumers have released the stage ("empty" mbarrier, one arrival per consumer warp). The ring runs
// on across row tiles, so the pipeline drains only at the end of the CTA's work. Consumer warp w takes
// chunks w, w + kConsumers, ... of each stage; the chunk's weights come from shared memory (one 16-byte
// load per lane), its group scales and activation fragments from global memory one stage ahead in
// registers. At the end of a row tile the consumers reduce their K-slices through shared memory (a
// named barrier among the consumers only) and warp 0 stores the tile.
#pragma once

#include <cstdint>

namespace zq::pipe {

constexpr int kConsumers = 8;     // consumer warps (K-slices of one row tile)
constexpr int kStageChunks = 16;  // chunks of 64 k per stage: 8 KB of one row tile
constexpr int kStages = 4;        // ring depth: 3 stages (24 KB) in flight while one is consumed
constexpr int kThreads = (kConsumers + 1) * 32;
constexpr int kChunkBytes = 512;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred ready;\n"
      "ZQ_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 ready, [%0], %1;\n"
      "@!ready bra ZQ_WAIT;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// bytes (a multiple of 16, both addresses 16-byte aligned) from global to shared memory, counted on bar.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}

// Barrier 1 among the consumer warps only (the producer never waits on it).
__device__ __forceinline__ void consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * 32) : "memory");
}

// The ring's bookkeeping, shared by the producer and the consumers: stage q of the CTA's sequence is
// chunk block kb = q % nkb of row tile blockIdx.x + (q / nkb) * gridDim.x.
struct Ring {
  uint4 (*stage)[kStageChunks * 32];
  uint64_t* full;
  uint64_t* empty;
  int nkb;      // stages per row tile
  int nchunks;  // chunks per row tile (K / 64)
  int Q;        // stages of this CTA

  __device__ __forceinline__ int tile_of(int q) const { return static_cast<int>(blockIdx.x) + (q / nkb) * static_cast<int>(gridDim.x); }

  // The producer (one lane): every stage of the CTA, each as one bulk copy once the consumers released it.
  __device__ __forceinline__ void produce(const uint8_t* codes) const {
    for (int q = 0; q < Q; ++q) {
      const int s = q % kStages;
      if (q >= kStages) mbar_wait(&empty[s], ((q / kStages) - 1) & 1);
      const int c0 = (q % nkb) * kStageChunks;
      const int n = min(kStageChunks, nchunks - c0);
      const uint32_t bytes = static_cast<uint32_t>(n) * kChunkBytes;
      mbar_arrive_expect_tx(&full[s], bytes);
      bulk_load(stage[s], codes + (static_cast<int64_t>(tile_of(q)) * nchunks + c0) * kChunkBytes, bytes, &full[s]);
    }
  }
};

}  // namespace zq::pipe
