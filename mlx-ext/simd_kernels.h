// Interface between the ops (tq_switch_glu.cpp, affine_matmul.cpp, compiled for the baseline ISA) and
// the leaf GEMV/GEMM kernels compiled once per instruction set (simd_scalar.cpp, simd_avx2.cpp,
// simd_avx512.cpp, all built from the generic code in simd_impl.inc).
//
// This header must stay free of STL templates and non-static inline functions: it is included by
// translation units compiled with different `#pragma GCC target` settings, and any inline function
// emitted as a shared (COMDAT) symbol from an AVX-512 unit could be picked by the linker for the
// baseline build too. Everything defined here is `static inline` or a plain declaration.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

namespace zaya::kern {

// Instruction-set levels, in increasing order.
enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Element type of scales, biases and norms.
enum FloatType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// One TurboQuant matrix (one expert of one projection): `rows` rows of `cols` packed words, codes
// LSB-first, 32/bits codes per word. `norms` are the row norms already converted to f32.
struct TqMat {
  const uint32_t* packed;  // [rows, cols]
  const float* norms;      // [rows]
  const float* codebook;   // [2^bits]
  int bits;                // 2, 3 or 4
  int cols;                // packed words per row
  // Optional: the bytes the caller reads next; the software prefetch runs on into them instead of
  // stopping at the end of this call's rows.
  const void* next_begin = nullptr;
  const void* next_end = nullptr;
};

// One MLX affine matrix: `w` U32 [out, in*bits/32] LSB-first, scales/biases [out, in/group].
struct AffMat {
  const uint32_t* w;
  const void* scales;
  const void* biases;
  int scale_type;  // FloatType
  int bits;        // 4 or 8
  int group;       // elements per scale/bias
  int in;          // logical input width
};

// A float matrix [rows, in] in f32/f16/bf16 (row-major, rows contiguous).
struct DenseMat {
  const void* w;
  int type;  // FloatType
  int in;
};

using TqRowsFn = void (*)(const struct TqMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt);
using AffRowsFn = void (*)(const struct AffMat& m, int r0, int r1, const float* const* xs, float* const* ys,
                           int nt);
using DenseRowsFn = void (*)(const struct DenseMat& m, int r0, int r1, const float* const* xs, float* const* ys,
                             int nt);
using TqGluFn = void (*)(const struct TqMat& gate, const struct TqMat& up, int r0, int r1, const float* const* xs,
                        float* const* ya, float* const* yu, int nt);
using GeluBiasFn = void (*)(float* y, const float* bias, int64_t n);

// The leaf kernels of one instruction set. All loop over rows [r0, r1) and any number `nt` of token
// rows; x rows are in the kernel layout of this table (see lanes and the prep functions in the op
// files), y rows are plain f32 and receive y[t][r] for r in [r0, r1).
struct Table {
  int isa;
  // TurboQuant: words per SIMD block (x layout: see tq_prep_x). Affine 8-bit: bytes per chunk;
  // affine 4-bit: x is deinterleaved in chunks of 2*lanes elements (see aff_prep_x). 1 = scalar.
  int lanes;
  // y[t][r] = norms[r] * sum_i codebook[code(r, i)] * x[t][i]
  void (*tq_rows)(const TqMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt);
  // y[t][r] = sum_i (scale * q(r, i) + bias) * x[t][i]
  void (*aff_rows)(const AffMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt);
  // y[t][r] = sum_i w[r, i] * x[t][i] (x natural layout)
  void (*dense_rows)(const DenseMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt);
  // o[t][d] = sum_{j < n} p[t][j] * v[j * ld + d] for d < dim (attention's probabilities times values;
  // v rows f32 with stride ld, ps/os f32 rows)
  void (*pv_rows)(const float* v, int ld, int n, int dim, const float* const* ps, float* const* os, int nt);
  // s[0, n) <- softmax(s[0, n)) (max-subtracted, exp by a polynomial with relative error < 2e-7),
  // s[n, total) <- 0
  void (*softmax_row)(float* s, int n, int total);
  // The `bf16` precision of tq_rows / aff_rows / dense_rows: bf16 dot products with f32 accumulation
  // for calls with many token rows where the CPU has AVX512-BF16 (simd_avx512bf16.cpp); elsewhere
  // (fewer rows, other ISAs) the f32 kernels above.
  TqRowsFn tq_rows_bf16;
  AffRowsFn aff_rows_bf16;
  DenseRowsFn dense_rows_bf16;
  // The experts' gate and up projections with the SwiGLU after them, in the `bf16` precision, for an
  // expert group of nt rows with tq_bf16_rows(nt) (nullptr where the table has no bf16 kernels):
  // ya[t][r] = silu(gate·x_t)[r]·(up·x_t)[r] for r in [r0, r1); yu rows are scratch for up. And the
  // router's y[i] ← gelu(y[i] + bias[i]) beside its bf16 matmuls. Both in vectors where the f32 precision
  // runs libm loops: exp and erf by polynomials (against f64 on a dense grid: SiLU within 3.4e-7
  // relative, GELU within 4.7e-7 absolute).
  TqGluFn tq_glu_bf16;
  GeluBiasFn gelu_bias_bf16;
  // out = x rotated for TurboQuant (H(signs ⊙ x)·scale, H the Walsh-Hadamard transform of size n, a
  // power of two) in this table's x layout for `cols` words of `vpw` codes; tmp holds n floats.
  // Bit-identical across tables.
  void (*tq_rotate)(const float* x, const float* signs, int n, float scale, int vpw, int cols, float* tmp,
                    float* out);
};

// Tables (nullptr when the ISA is not compiled in or the CPU lacks it).
const Table* scalar_table();
const Table* avx2_table();
const Table* avx512_table();

// The AVX512-BF16 kernels (nullptr when not compiled in) and whether this CPU and OS run them.
TqRowsFn avx512bf16_tq_rows();
AffRowsFn avx512bf16_aff_rows();
DenseRowsFn avx512bf16_dense_rows();
TqGluFn avx512bf16_tq_glu();
GeluBiasFn avx512bf16_gelu_bias();
bool cpu_has_avx512bf16();

// The best table allowed by the current cap (set_max_isa / ZAYA_EXT_ISA) on this CPU.
const Table* best_table();
// Best ISA this CPU supports (independent of the cap).
int detected_isa();
// Current cap; set_max_isa returns the previous cap.
int max_isa();
int set_max_isa(int level);

// Token rows from which a call switches to the panel GEMMs (measured crossovers on Zen 4 with the
// weights streaming from memory, examples/kernel_probe affprefill / tqprefill: below them the per-tile
// kernels are faster): the f32 and bf16 panels of affine matrices, and the bf16 panels of TurboQuant
// expert groups (decoding a TurboQuant panel costs less than an affine one).
enum : int { kAffPanelMinRows = 20, kTqBf16MinRows = 8 };
// Token rows from which a TurboQuant expert group's bf16 panels are transposed to lanes over weight
// rows (simd_avx512bf16.cpp; kernel_probe tqprefill with TQ_COUNTS: 48–96 measured alike).
enum : int { kTqLanesMinRows = 64 };

// Whether the bf16 tables' kernels take bf16 dot products for a call of nt token rows (else they run
// the f32 kernels): TurboQuant rows, and float matrices of width `in`. The callers' element-wise steps
// beside those matmuls (tq_glu_bf16's SwiGLU, gelu_bias_bf16) follow the same decision.
static inline bool tq_bf16_rows(int nt) { return nt >= kTqBf16MinRows; }
static inline bool dense_bf16_rows(int nt, int in) { return nt >= kAffPanelMinRows && in % 32 == 0; }
// Thread-local scratch buffers, reused across calls: the panel GEMM's f32 weight panel, and the bf16
// kernels' token rows, bf16 panel and the panel transposed to lanes over rows.
enum ScratchSlot : int {
  kScratchPanel = 0,
  kScratchBf16Tokens = 1,
  kScratchBf16Panel = 2,
  kScratchBf16Lanes = 3,
  kScratchSlots = 4
};
// At least n floats, 64-byte aligned, valid until the same thread asks for the same slot again.
float* scratch_f32(ScratchSlot slot, size_t n);

// Exact f16 -> f32 (subnormals, infinities and NaN included) and bf16 -> f32.
static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static inline float load_float(const void* base, int type, size_t i) {
  switch (type) {
    case kF16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

// Hints every 64-byte line of [begin, end) into L2 (data a kernel reads next, fetched while it
// computes on what it has).
static inline void prefetch_l2(const void* begin, const void* end) {
  for (const char* p = static_cast<const char*>(begin); p < static_cast<const char*>(end); p += 64)
    __builtin_prefetch(p, 0, 2);
}

}  // namespace zaya::kern
