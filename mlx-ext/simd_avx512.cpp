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

#include "simd_avx512_v.inc"

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
  static const bool bf16 =
      cpu_has_avx512bf16() && avx512bf16_tq_rows() && avx512bf16_aff_rows() && avx512bf16_dense_rows() &&
      avx512bf16_tq_glu() && avx512bf16_gelu_bias();
  static const Table t{kAvx512,          16,
                       tq_rows_impl,     aff_rows_impl,
                       dense_rows_impl,  pv_rows_impl,
                       softmax_row_impl, bf16 ? avx512bf16_tq_rows() : tq_rows_impl,
                       bf16 ? avx512bf16_aff_rows() : aff_rows_impl,
                       bf16 ? avx512bf16_dense_rows() : dense_rows_impl,
                       bf16 ? avx512bf16_tq_glu() : nullptr,
                       bf16 ? avx512bf16_gelu_bias() : nullptr,
                       tq_rotate_impl};
  return &t;
}
}  // namespace zaya::kern

#else
namespace zaya::kern {
const Table* avx512_table() { return nullptr; }
}  // namespace zaya::kern
#endif
