// AVX2 + FMA + F16C instantiation of the leaf kernels (simd_impl.inc), 8 lanes. Only called after a
// run-time CPU check (simd_isa.cpp). The 16-entry codebook lookup is two 8-entry permutes blended on
// the code's top bit; 2- and 3-bit codebooks fit one permute.
#include "simd_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace zaya::kern {
namespace {

struct V {
  using F = __m256;
  using I = __m256i;
  static constexpr int L = 8;
  static constexpr int kMaxAcc = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F loadf(const float* p) { return _mm256_loadu_ps(p); }
  static void storef(float* p, F a) { _mm256_storeu_ps(p, a); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  // One Walsh-Hadamard butterfly pass of span H < L inside the vector (see simd_avx512_v.inc).
  template <int H>
  static F fwht_step(F v) {
    F s;
    if constexpr (H == 1) s = _mm256_permute_ps(v, 0xB1);
    else if constexpr (H == 2) s = _mm256_permute_ps(v, 0x4E);
    else s = _mm256_permute2f128_ps(v, v, 0x01);
    constexpr int hi = H == 1 ? 0xAA : H == 2 ? 0xCC : 0xF0;
    return _mm256_blend_ps(_mm256_add_ps(v, s), _mm256_sub_ps(s, v), hi);
  }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  // exp_nonpos_v's integer steps (simd_impl.inc): truncation to int, int to float, 2^-k for 0 ≤ k < 127
  static I cvtt(F a) { return _mm256_cvttps_epi32(a); }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static F exp2_neg(I k) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), k), 23)); }
  static float hmax(F a) {
    float t[8];
    _mm256_storeu_ps(t, a);
    float m = t[0];
    for (int i = 1; i < 8; ++i) m = t[i] > m ? t[i] : m;
    return m;
  }
  static constexpr bool kHsum16 = false;  // hsum_n sums one vector at a time
  static void hsum16(const F*, float*) {}
  static float hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static I loadw(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  template <int BITS>
  struct Lut {
    F lo, hi;
    explicit Lut(const float* cb) {
      float t[16];
      for (int i = 0; i < 16; ++i) t[i] = cb[i % (1 << BITS)];
      lo = _mm256_loadu_ps(t);
      hi = _mm256_loadu_ps(t + 8);
    }
    template <int K>
    F decode(I w) const {
      const I s = K == 0 ? w : _mm256_srli_epi32(w, K * BITS);
      const F a = _mm256_permutevar8x32_ps(lo, s);  // uses the low 3 bits
      if constexpr (BITS == 4) {
        const F b = _mm256_permutevar8x32_ps(hi, s);
        // bit 3 of code K moved to the sign bit selects the upper half of the codebook
        const I m = (28 - K * BITS) == 0 ? w : _mm256_slli_epi32(w, 28 - K * BITS);
        return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(m));
      } else {
        return a;  // 2-bit codebook repeated twice, 3-bit exactly 8 entries
      }
    }
  };
  static F load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load_bf16(const uint16_t* p) {
    const I v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
  static F u8_to_f(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void u4_to_f(const uint8_t* p, F& lo, F& hi) {
    const I v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
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
const Table* avx2_table() {
  static const Table t{kAvx2, 8, tq_rows_impl, aff_rows_impl, dense_rows_impl, pv_rows_impl, softmax_row_impl, tq_rows_impl, aff_rows_impl,
                       dense_rows_impl, nullptr, nullptr, tq_rotate_impl};
  return &t;
}
}  // namespace zaya::kern

#else
namespace zaya::kern {
const Table* avx2_table() { return nullptr; }
}  // namespace zaya::kern
#endif
