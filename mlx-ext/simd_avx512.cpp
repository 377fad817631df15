// AVX-512 (F/BW/DQ/VL) + FMA + F16C instantiation of the leaf kernels (simd_impl.inc), 16 lanes. Only
// called after a run-time CPU check (simd_isa.cpp). One `vpermps` looks a 16-entry codebook up
// directly (2- and 3-bit codebooks are repeated to 16 entries, so stray high index bits do not matter).
#include "simd_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#endif

namespace zaya::kern {
namespace {

struct V {
  using F = __m512;
  using I = __m512i;
  static constexpr int L = 16;
  static constexpr int kMaxAcc = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F loadf(const float* p) { return _mm512_loadu_ps(p); }
  static void storef(float* p, F a) { _mm512_storeu_ps(p, a); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static float hmax(F a) { return _mm512_reduce_max_ps(a); }
  static float hsum(F a) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static I loadw(const uint32_t* p) { return _mm512_loadu_si512(p); }
  template <int BITS>
  struct Lut {
    F t;
    explicit Lut(const float* cb) {
      float v[16];
      for (int i = 0; i < 16; ++i) v[i] = cb[i % (1 << BITS)];
      t = _mm512_loadu_ps(v);
    }
    template <int K>
    F decode(I w) const {
      const I s = K == 0 ? w : _mm512_srli_epi32(w, K * BITS);
      return _mm512_permutexvar_ps(s, t);  // uses the low 4 bits
    }
  };
  static F load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load_bf16(const uint16_t* p) {
    const I v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  }
  static F u8_to_f(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void u4_to_f(const uint8_t* p, F& lo, F& hi) {
    const I v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  }
};

#include "simd_impl.inc"

}  // namespace
}  // namespace zaya::kern

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace zaya::kern {
const Table* avx512_table() {
  static const Table t{kAvx512, 16, tq_rows_impl, aff_rows_impl, dense_rows_impl, pv_rows_impl, softmax_row_impl};
  return &t;
}
}  // namespace zaya::kern

#else
namespace zaya::kern {
const Table* avx512_table() { return nullptr; }
}  // namespace zaya::kern
#endif
