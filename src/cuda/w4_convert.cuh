// w4_convert.cuh: 4-bit weight codes -> 8-bit MMA operands in registers, by byte permutes (prmt).
// Shared by the W4A8 streaming kernels (w4a8_gemm.cu, w4a8_int_gemm.cu) and the Hopper mixed-input mainloop
// (sm90_w4a8_mainloop.cuh). FP4 (layout m16k64, docs/FP8.md): a 32-bit word holds 8 codes, code j
// in bits 4j..4j+3; its low 16 bits give one 4-byte MMA register, its high 16 bits another; per 4
// codes 3 permutes, plus 3 logic ops per word for the selectors; no float instruction touches a
// weight. INT4 (layout m16k32, docs/W4A8.md): bytewise sign extension, below.
#pragma once

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace zq::w4 {

// E4M3 bytes of the E2M1 magnitudes 0, 0.5, 1, 1.5 (low word) and 2, 3, 4, 6 (high word).
constexpr uint32_t kLutLo = 0x3C383000u;
constexpr uint32_t kLutHi = 0x4C484440u;

struct Lut {
  uint32_t pos_lo, pos_hi, neg_lo, neg_hi;
};

// The table of e2m1(c) * 2^e, e in [-5, 0]: e << 3 added to every exponent field but byte 0's
// (code 0 stays 0). Bytes 1..3 of the low word are >= 0x30, so adding e * 8 >= -40 never borrows
// across bytes; every exponent field stays in 1..9 (normal numbers).
__device__ __forceinline__ Lut make_lut(int e) {
  Lut l;
  l.pos_lo = kLutLo + static_cast<uint32_t>(e * 0x08080800);
  l.pos_hi = kLutHi + static_cast<uint32_t>(e * 0x08080808);
  l.neg_lo = l.pos_lo | 0x80808080u;  // byte 0: -0, which the MMA takes as 0
  l.neg_hi = l.pos_hi | 0x80808080u;
  return l;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// The selectors of the 8 E2M1 codes of a word x (code j in bits 4j..4j+3), computed once for both
// of its halves: idx = the magnitudes (bit 3 clear), sel = byte j from the negative table (4 + j)
// when code j is negative. prmt reads only bits 0-15 of a selector, so the high half takes them
// shifted right by 16.
struct Sel {
  uint32_t idx, sel;
};
__device__ __forceinline__ Sel selectors(uint32_t x) {
  return {x & 0x77777777u, ((x >> 1) & 0x44444444u) | 0x32103210u};
}

// Four E2M1 codes (the low 16 bits of the selectors) -> four E4M3 bytes (byte j): 3 byte permutes.
__device__ __forceinline__ uint32_t convert4(uint32_t idx, uint32_t sel, const Lut& l) {
  const uint32_t p = prmt(l.pos_lo, l.pos_hi, idx);
  const uint32_t n = prmt(l.neg_lo, l.neg_hi, idx);
  return prmt(p, n, sel);
}

// Four E4M3 bytes times a float ratio, rounded back to E4M3 (float-scale variant).
__device__ __forceinline__ uint32_t scale4(uint32_t v, float r) {
  uint32_t out = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const __nv_fp8x2_storage_t pair = static_cast<__nv_fp8x2_storage_t>(v >> (16 * h));
    const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
    float2 f = __half22float2(*reinterpret_cast<const __half2*>(&hr));
    f.x *= r;
    f.y *= r;
    const __nv_fp8x2_storage_t q = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
    out |= static_cast<uint32_t>(q) << (16 * h);
  }
  return out;
}

// The converter of one weight row's group: E2M1 codes -> E4M3 bytes of e2m1(c) * 2^e (kPow2: the
// exponent table) or e4m3(float(e2m1(c)) * r) (float ratios). raw(): the group's scale as 32 bits
// from global memory, loaded ahead of use; set(): the converter from those 32 bits (also what the
// mixed-input mainloop reads from shared memory: int32 exponents or float ratios).
template <bool kPow2>
struct RowScale;
template <>
struct RowScale<true> {
  Lut l;
  static __device__ __forceinline__ uint32_t raw(const void* sg, int64_t i) {
    return static_cast<uint32_t>(static_cast<int32_t>(__ldg(static_cast<const signed char*>(sg) + i)));
  }
  __device__ __forceinline__ void set(uint32_t v) { l = make_lut(static_cast<int32_t>(v)); }
  __device__ __forceinline__ void load(const void* sg, int64_t i) { set(raw(sg, i)); }
  __device__ __forceinline__ uint32_t operator()(uint32_t idx, uint32_t sel) const { return convert4(idx, sel, l); }
};
template <>
struct RowScale<false> {
  float r;
  static __device__ __forceinline__ uint32_t raw(const void* sg, int64_t i) {
    return __float_as_uint(__ldg(static_cast<const float*>(sg) + i));
  }
  __device__ __forceinline__ void set(uint32_t v) { r = __uint_as_float(v); }
  __device__ __forceinline__ void load(const void* sg, int64_t i) { set(raw(sg, i)); }
  __device__ __forceinline__ uint32_t operator()(uint32_t idx, uint32_t sel) const {
    constexpr Lut l{kLutLo, kLutHi, kLutLo | 0x80808080u, kLutHi | 0x80808080u};
    return scale4(convert4(idx, sel, l), r);
  }
};

// INT4: a word of layout m16k32 holds in byte j the codes of two weight rows, row r in the low
// nibble and row r + 8 in the high nibble (docs/W4A8.md); both become int8 MMA registers, the
// nibbles sign-extended bytewise: for a two's complement nibble v, ((v ^ 8) + 0x78) ^ 0x80 is v
// for v < 8 and v - 16 above, and no byte carries into the next (the sum stays below 0x88). Per 8
// codes 7 integer instructions (the AND and the first XOR fuse into one LOP3).
__device__ __forceinline__ uint32_t sext_nibbles(uint32_t v) {  // v: 4 nibbles in the low halves of the bytes
  return (((v & 0x0F0F0F0Fu) ^ 0x08080808u) + 0x78787878u) ^ 0x80808080u;
}
struct Int8Pair {
  uint32_t lo, hi;  // the low nibbles (row r) and the high nibbles (row r + 8), as int8 bytes
};
__device__ __forceinline__ Int8Pair int4_word_to_int8(uint32_t w) { return {sext_nibbles(w), sext_nibbles(w >> 4)}; }

// The same codes as 16 q: a nibble moved (or left) into the high half of its byte, the low half
// cleared, is the int8 16 q exactly (q in [-8, 7] -> [-128, 112]). 3 instructions per 8 codes
// instead of 7; a product sum over them is 16 times the true one (exact in int32: its bound grows by
// 2^4, which the streaming kernel's flush interval accounts for), undone by one exact scale by 2^-4.
__device__ __forceinline__ Int8Pair int4_word_to_int8x16(uint32_t w) { return {(w << 4) & 0xF0F0F0F0u, w & 0xF0F0F0F0u}; }

// Fused scales (docs/W4A8.md): codes times their group's small integer scale as exact int8 bytes,
// for the mixed mainloop's fused modes and the streaming kernel's zero-point mode. With u = q + 8 in
// 0..15 (one LOP3), s (u - z) + 128 = u s + (128 - s z) lies in 0..255 for every stored code, so one
// IMAD computes 4 bytes without carries and an XOR of 0x80 re-centres them. A row's word: the
// zero-point format's s | (s z) << 8, or the symmetric format's s (z = 8, s <= 16).
struct FusedRow {
  uint32_t s, c;  // the scale, and 0x80 - s z in every byte
};
template <bool kZeroPoint>
__device__ __forceinline__ FusedRow fused_row(uint32_t word) {
  if constexpr (kZeroPoint) return {word & 0xFFu, 0x80808080u - (word >> 8) * 0x01010101u};
  return {word, 0x80808080u - word * 0x08080808u};
}
__device__ __forceinline__ uint32_t fused_bytes(uint32_t nibbles, FusedRow r) {  // 4 codes in the low nibbles
  return (((nibbles & 0x0F0F0F0Fu) ^ 0x08080808u) * r.s + r.c) ^ 0x80808080u;
}

}  // namespace zq::w4
