// Portable scalar instantiation of the leaf kernels (simd_impl.inc): correct on any CPU, the reference
// for the vector variants, and the path for shapes the vector kernels do not tile (odd group sizes).
#include "simd_kernels.h"

namespace zaya::kern {
namespace {

struct V {
  using F = float;
  using I = uint32_t;
  static constexpr int L = 1;
  static constexpr int kMaxAcc = 16;
  static F zero() { return 0.f; }
  static F loadf(const float* p) { return *p; }
  static void storef(float* p, F a) { *p = a; }
  static F set1(float v) { return v; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F mul(F a, F b) { return a * b; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  template <int H>
  static F fwht_step(F v) { return v; }  // never called: L = 1 has no span below L
  static F max(F a, F b) { return a > b ? a : b; }
  static float hmax(F a) { return a; }
  static constexpr bool kHsum16 = false;  // hsum_n sums one vector at a time
  static void hsum16(const F*, float*) {}
  static float hsum(F a) { return a; }
  static I loadw(const uint32_t* p) { return *p; }
  template <int BITS>
  struct Lut {
    float t[1 << BITS];
    explicit Lut(const float* cb) {
      for (int i = 0; i < (1 << BITS); ++i) t[i] = cb[i];
    }
    template <int K>
    F decode(I w) const {
      return t[(w >> (K * BITS)) & ((1u << BITS) - 1u)];
    }
  };
  static F load_f16(const uint16_t* p) { return f16_to_f32(*p); }
  static F load_bf16(const uint16_t* p) { return bf16_to_f32(*p); }
  static F u8_to_f(const uint8_t* p) { return (float)p[0]; }
  static void u4_to_f(const uint8_t* p, F& lo, F& hi) {
    lo = (float)(p[0] & 15u);
    hi = (float)(p[0] >> 4);
  }
};

#include "simd_impl.inc"

}  // namespace

const Table* scalar_table() {
  static const Table t{kScalar, 1, tq_rows_impl, aff_rows_impl, dense_rows_impl, pv_rows_impl, softmax_row_impl, tq_rows_impl, aff_rows_impl,
                       dense_rows_impl, nullptr, nullptr, tq_rotate_impl};
  return &t;
}

}  // namespace zaya::kern
