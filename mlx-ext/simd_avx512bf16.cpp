// bf16 dot products (AVX512-BF16 `vdpbf16ps`, f32 accumulation) for the compute-bound calls of the
// `bf16` precision: TurboQuant expert groups of at least kTqBf16MinRows token rows and 8/4-bit affine
// matrices against at least kAffPanelMinRows (prefill chunks). Each block of weight rows is decoded
// once, exactly as the f32 kernels decode it (simd_impl.inc's aff_panel; TurboQuant's codebook lookup
// here, 4-bit codes by vpermw straight to bf16), and rounded to bf16 (round-to-nearest-even) into a
// panel; the token rows are rounded to bf16 once per call. One `vdpbf16ps` does 32 multiply-adds
// where an f32 FMA does 16: products of two bf16 values are exact in f32, the sums are rounded in
// f32. Two GEMM shapes: TurboQuant panels of experts with tens of token rows take dot products along
// k with horizontal sums (bf_rows); affine panels and the experts with many token rows (at least
// kTqLanesMinRows) are transposed to lanes over weight rows (lanes_block). Calls with fewer token
// rows (decode, small expert groups) are bound by weight bandwidth, not arithmetic, and run the f32
// kernels of this ISA unchanged.
// Only called after a run-time CPU check (simd_isa.cpp: cpu_has_avx512bf16).
#include "simd_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
#endif

namespace zaya::kern {
namespace {

#include "simd_avx512_v.inc"

// (only the TurboQuant and affine parts of the shared kernels are used here)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "simd_impl.inc"
#pragma GCC diagnostic pop

constexpr int kBfChunk = 32;  // bf16 elements per vdpbf16ps

// dst[0, k) = bf16(src[0, k)), k a multiple of 32 (round to nearest even).
inline void to_bf16(const float* src, size_t k, uint16_t* dst) {
  for (size_t e = 0; e < k; e += kBfChunk) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + e + 16), _mm512_loadu_ps(src + e));
    _mm512_storeu_si512(dst + e, (__m512i)v);
  }
}

// out[r][t] = Σ_e p[r][e]·x[t][e] over e < k (bf16 rows, k a multiple of 32).
template <int R, int T>
__attribute__((always_inline)) inline void bf_tile(const uint16_t* const* p, size_t k, const uint16_t* const* x,
                                                   float (&out)[R][T]) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (size_t e = 0; e < k; e += kBfChunk) {
    __m512bh xv[T];
    for (int t = 0; t < T; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(x[t] + e);
    for (int r = 0; r < R; ++r) {
      const __m512bh pv = (__m512bh)_mm512_loadu_si512(p[r] + e);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], pv, xv[t]);
    }
  }
  hsum_n(&acc[0][0], R * T, &out[0][0]);
}

template <int R, int T, class Fin>
__attribute__((always_inline)) inline void bf_rows_t(const uint16_t* panel, size_t ld, int nb, size_t k,
                                                     const uint16_t* const* x, Fin&& fin) {
  int r = 0;
  for (; r + R <= nb; r += R) {
    const uint16_t* p[R];
    for (int i = 0; i < R; ++i) p[i] = panel + (size_t)(r + i) * ld;
    float out[R][T];
    bf_tile<R, T>(p, k, x, out);
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) fin(r + i, t, out[i][t]);
  }
  for (; r < nb; ++r) {
    const uint16_t* p[1] = {panel + (size_t)r * ld};
    float out[1][T];
    bf_tile<1, T>(p, k, x, out);
    for (int t = 0; t < T; ++t) fin(r, t, out[0][t]);
  }
}

// The next weight block's bytes [begin, end) hinted into L2 while this block's GEMM runs, a share of
// whole lines before each of its `tiles` token tiles (a burst of prefetches before the GEMM stalled on
// the prefetches and left the next block's decoding waiting on its loads).
class SpreadPrefetch {
 public:
  SpreadPrefetch(const void* begin, const void* end, int tiles)
      : p_(static_cast<const char*>(begin)),
        end_(static_cast<const char*>(end)),
        step_(((size_t)(end_ - p_) / (size_t)(tiles > 0 ? tiles : 1) + 63) / 64 * 64) {}
  __attribute__((always_inline)) void operator()() {
    if (p_ < end_) {
      const char* e = p_ + step_ < end_ ? p_ + step_ : end_;
      prefetch_l2(p_, e);
      p_ = e;
    }
  }

 private:
  const char* p_;
  const char* end_;
  size_t step_;
};

// Every token row (bf16 rows at xb + t·ld) against panel rows [0, nb), in tiles of kBfTileTokens tokens by
// kBfTileRows rows; pf() runs before each token tile (the caller's share of prefetch). A whole 8-row
// panel per tile reads each token row once per panel, where 4 × 4 tiles read it twice (from L2: an
// expert's token rows outgrow L1): 24 accumulators, 3 token and 8 panel loads per 24 dot products.
// kernel_probe tqprefill at 32 rows per expert: 17.9–18.0 ms against 19.6–20.2 (4 × 4); 8 × 2 and
// 4 × 5 measured slower. Each (row, token) sum is accumulated and reduced as before: the same bits.
constexpr int kBfTileRows = 8, kBfTileTokens = 3;
template <class Fin, class Pf>
void bf_rows(const uint16_t* panel, size_t ld, int nb, size_t k, const uint16_t* xb, int nt, Fin&& fin, Pf&& pf) {
  constexpr int R = kBfTileRows, TT = kBfTileTokens;
  for (int t0 = 0; t0 < nt; t0 += TT) {
    pf();
    const int tn = nt - t0 < TT ? nt - t0 : TT;
    const uint16_t* x[TT];
    for (int t = 0; t < tn; ++t) x[t] = xb + (size_t)(t0 + t) * ld;
    auto f = [&](int r, int t, float v) ZAYA_LAMBDA_INLINE { fin(r, t0 + t, v); };
    switch (tn) {
      case 1: bf_rows_t<R, 1>(panel, ld, nb, k, x, f); break;
      case 2: bf_rows_t<R, 2>(panel, ld, nb, k, x, f); break;
      default: bf_rows_t<R, TT>(panel, ld, nb, k, x, f); break;
    }
  }
}

// The token rows [0, k) rounded to bf16, row t at the result + t·k (scratch slot 1).
const uint16_t* bf_tokens(const float* const* xs, int nt, size_t k) {
  uint16_t* buf = reinterpret_cast<uint16_t*>(scratch_f32(kScratchBf16Tokens, (size_t)nt * k / 2));
  for (int t = 0; t < nt; ++t) to_bf16(xs[t], k, buf + (size_t)t * k);
  return buf;
}

// Decode rows [b0, b1) with `build` (f32, slot 0) and round them into the bf16 panel (slot 2).
template <class Build>
uint16_t* bf_panel(int b0, int b1, size_t ld, Build&& build) {
  float* f = scratch_f32(kScratchPanel, (size_t)kPanelRows * ld);
  uint16_t* p = reinterpret_cast<uint16_t*>(scratch_f32(kScratchBf16Panel, (size_t)kPanelRows * ld / 2));
  build(f);
  for (int r = 0; r < b1 - b0; ++r) to_bf16(f + (size_t)r * ld, ld, p + (size_t)r * ld);
  return p;
}

// Weight rows per TurboQuant bf16 panel: 8 rows × 2048 bf16 (32 KiB) stay in L1 while they are
// written and while every token tile reads them, where kPanelRows' 128 KiB spilled to L2 on both
// sides (an expert gets only ≈ 32 token rows of a 512-token chunk, so its panel is built often).
constexpr int kTqBfPanelRows = 8;
static_assert(kTqBfPanelRows <= kPanelRows, "the panel scratch holds kPanelRows rows");

// Rows [r0, r1) of a TurboQuant matrix in panels of kTqBfPanelRows: build(b0, b1) returns the block's
// bf16 panel (row stride k), every token tile of xb runs over it, fin(row, t, sum) stores; the next
// block's codes are hinted into L2 meanwhile (SpreadPrefetch).
template <class Build, class Fin>
void tq_panel_blocks(const TqMat& m, int r0, int r1, size_t k, const uint16_t* xb, int nt, Build&& build,
                     Fin&& fin) {
  for (int b0 = r0; b0 < r1; b0 += kTqBfPanelRows) {
    const int b1 = b0 + kTqBfPanelRows < r1 ? b0 + kTqBfPanelRows : r1;
    const uint16_t* panel = build(b0, b1);
    const int n1 = b1 + kTqBfPanelRows < r1 ? b1 + kTqBfPanelRows : r1;
    bf_rows(
        panel, k, b1 - b0, k, xb, nt, [&](int r, int t, float v) ZAYA_LAMBDA_INLINE { fin(b0 + r, t, v); },
        SpreadPrefetch(m.packed + (size_t)b1 * m.cols, m.packed + (size_t)n1 * m.cols,
                       (nt + kBfTileTokens - 1) / kBfTileTokens));
  }
}

// TurboQuant rows [b0, b1) decoded straight into a bf16 panel (slot 2, row stride ld) in x's kernel
// layout: the values tq_tile decodes, rounded as bf_panel rounds them, without the f32 round trip (a
// TurboQuant panel serves only one expert's token rows, so building it is a visible share of the call).
template <int BITS>
uint16_t* tq_panel_bf(const TqMat& m, int b0, int b1, size_t ld) {
  constexpr int VPW = 32 / BITS;
  constexpr int L = V::L;
  static_assert(VPW % 2 == 0, "codes are rounded to bf16 in pairs of vectors");
  uint16_t* p = reinterpret_cast<uint16_t*>(scratch_f32(kScratchBf16Panel, (size_t)kPanelRows * ld / 2));
  const typename V::template Lut<BITS> lut(m.codebook);
  const int nblk = m.cols / L;
  for (int r = b0; r < b1; ++r) {
    const uint32_t* w = m.packed + (size_t)r * m.cols;
    uint16_t* dst = p + (size_t)(r - b0) * ld;
    for (int b = 0; b < nblk; ++b) {
      const typename V::I wv = V::loadw(w + (size_t)b * L);
      static_for<0, VPW / 2>([&](auto kc) ZAYA_LAMBDA_INLINE {
        constexpr int k = 2 * decltype(kc)::value;
        const __m512bh v = _mm512_cvtne2ps_pbh(lut.template decode<k + 1>(wv), lut.template decode<k>(wv));
        _mm512_storeu_si512(dst + ((size_t)b * VPW + k) * L, (__m512i)v);
      });
    }
  }
  return p;
}

template <int BITS>
void tq_rows_bf(const TqMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  constexpr int VPW = 32 / BITS;
  constexpr int L = V::L;
  constexpr uint32_t mask = (1u << BITS) - 1u;
  const int nblk = m.cols / L;
  const size_t k = (size_t)nblk * L * VPW;  // a multiple of 16·VPW ≥ 32
  const uint16_t* xb = bf_tokens(xs, nt, k);
  tq_panel_blocks(
      m, r0, r1, k, xb, nt, [&](int b0, int b1) { return tq_panel_bf<BITS>(m, b0, b1, k); },
      [&](int row, int t, float v) ZAYA_LAMBDA_INLINE {
        const uint32_t* w = m.packed + (size_t)row * m.cols;
        for (int c = nblk * L; c < m.cols; ++c) {  // tail words (none at ZAYA1's widths): f32
          const uint32_t word = w[c];
          for (int q = 0; q < VPW; ++q) v += m.codebook[(word >> (q * BITS)) & mask] * xs[t][(size_t)c * VPW + q];
        }
        ys[t][row] = m.norms[row] * v;
      });
}

// 4-bit codes straight to bf16 pairs: a vpermw looks up 32 16-bit indices at once against a table of
// the bf16 codebook written twice (it reads 5 index bits). The low and high 16 bits of a word shifted
// right by 4q hold codes q and q + 4 in their low 4 bits (the fifth bit is the next code's lowest,
// which the doubled table ignores), so four shifts of 16 words give all 128 codes as pairs: pair j of
// vector (wb, q) = codes (q, q + 4) of word 16·wb + j, i.e. elements (x's kernel layout)
// e(q) = (8·wb + q)·16 + j and e(q + 4). The token rows are rounded into the same pairs. Same
// products as tq_panel_bf, summed in another order.
inline __m512i tq4_lut_bf(const float* codebook) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(codebook));
  return _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
}

uint16_t* tq4_panel_bf(const TqMat& m, int b0, int b1, size_t ld, __m512i lut) {
  uint16_t* p = reinterpret_cast<uint16_t*>(scratch_f32(kScratchBf16Panel, (size_t)kPanelRows * ld / 2));
  const int nblk = m.cols / 16;
  for (int r = b0; r < b1; ++r) {
    const uint32_t* w = m.packed + (size_t)r * m.cols;
    uint16_t* dst = p + (size_t)(r - b0) * ld;
    for (int b = 0; b < nblk; ++b) {
      const __m512i wv = _mm512_loadu_si512(w + (size_t)b * 16);
      uint16_t* d = dst + (size_t)b * 128;
      _mm512_storeu_si512(d, _mm512_permutexvar_epi16(wv, lut));
      _mm512_storeu_si512(d + 32, _mm512_permutexvar_epi16(_mm512_srli_epi32(wv, 4), lut));
      _mm512_storeu_si512(d + 64, _mm512_permutexvar_epi16(_mm512_srli_epi32(wv, 8), lut));
      _mm512_storeu_si512(d + 96, _mm512_permutexvar_epi16(_mm512_srli_epi32(wv, 12), lut));
    }
  }
  return p;
}

const uint16_t* tq4_tokens_bf(const float* const* xs, int nt, size_t k) {
  uint16_t* buf = reinterpret_cast<uint16_t*>(scratch_f32(kScratchBf16Tokens, (size_t)nt * k / 2));
  // word i of the result = word (i even: i/2, odd: 16 + i/2) of [A | B]: A and B interleaved
  const __m512i inter = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                         6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int t = 0; t < nt; ++t)
    for (size_t b = 0; b < k / 128; ++b)
      for (int q = 0; q < 4; ++q) {
        const float* x = xs[t] + b * 128 + (size_t)q * 16;
        const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 64), _mm512_loadu_ps(x));
        _mm512_storeu_si512(buf + (size_t)t * k + b * 128 + (size_t)q * 32, _mm512_permutexvar_epi16(inter, v));
      }
  return buf;
}

// xb: the token rows as tq4_tokens_bf rounds them.
void tq4_rows_bf(const TqMat& m, int r0, int r1, const uint16_t* xb, float* const* ys, int nt) {
  const size_t k = (size_t)m.cols * 8;
  const __m512i lut = tq4_lut_bf(m.codebook);
  tq_panel_blocks(
      m, r0, r1, k, xb, nt, [&](int b0, int b1) { return tq4_panel_bf(m, b0, b1, k, lut); },
      [&](int row, int t, float v) ZAYA_LAMBDA_INLINE { ys[t][row] = m.norms[row] * v; });
}

// ---- 8-bit affine panels: lanes over weight rows ----------------------------------------------------
// With a prefill chunk's token rows (hundreds) on every panel, the panel is worth transposing: blocks
// of 16 rows × 16 bf16 pairs (32-bit words) are transposed so that a vector holds one pair of k for
// 16 rows, and each token's pair is broadcast against it. The accumulators then hold 16 rows' sums in
// their lanes: no horizontal sums, and a 2 × 12 tile (32 rows, 12 tokens) does 24 dot products per 2
// panel loads and 12 broadcasts, where the dot-product tile did 16 per 8 loads and a horizontal sum
// per output (the panel, 128 KiB, streams from L2 once per 12 tokens; tiles of 6 tokens measured
// slower). Same products as bf_rows, summed in another order.
// r[i] (16 words of row i) → r[j] lane i = word j of row i.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  __m512i u[4][4];  // u[g][c]: 128-bit block L = word 4L + c of rows 4g .. 4g + 3
  for (int g = 0; g < 4; ++g) {
    u[g][0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[g][1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[g][2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[g][3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[0][c], u[1][c], 0x44), v1 = _mm512_shuffle_i32x4(u[0][c], u[1][c], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[2][c], u[3][c], 0x44), v3 = _mm512_shuffle_i32x4(u[2][c], u[3][c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

constexpr int kLaneStrip = 16;                       // rows per strip (lanes)
constexpr int kLaneStrips = kPanelRows / kLaneStrip;  // strips per panel
static_assert(kLaneStrips == 2, "aff_rows_bf runs one or two strips");

// rows[i] = row 16s + i of the nb rows at base (row stride ld); a short last strip repeats row nb − 1.
template <class E>
inline void strip_rows(const E* base, size_t ld, int s, int nb, const E* (&rows)[kLaneStrip]) {
  for (int i = 0; i < kLaneStrip; ++i) {
    const int r = s * kLaneStrip + i < nb ? s * kLaneStrip + i : nb - 1;
    rows[i] = base + (size_t)r * ld;
  }
}

// Rows [0, nb) of a bf16 panel (row stride k) into strips of k/2 vectors: vector p of strip s = pair p
// (elements 2p, 2p + 1) of rows 16s .. 16s + 15 (a short last strip repeats row nb − 1).
const __m512i* lanes_panel(const uint16_t* panel, int nb, size_t k) {
  const size_t np = k / 2;
  __m512i* out = reinterpret_cast<__m512i*>(scratch_f32(kScratchBf16Lanes, (size_t)kLaneStrips * np * 16));
  for (int s = 0; s * kLaneStrip < nb; ++s) {
    const uint16_t* rows[kLaneStrip];
    strip_rows(panel, k, s, nb, rows);
    __m512i* dst = out + (size_t)s * np;
    for (size_t b = 0; b < np; b += 16) {
      __m512i w[16];
      for (int i = 0; i < 16; ++i) w[i] = _mm512_loadu_si512(rows[i] + 2 * b);
      transpose16(w);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + b + j, w[j]);
    }
  }
  return out;
}

// acc[s][t] = strip s (16 rows) · token t over every pair; x[t] = the token's bf16 row as pairs.
template <int S, int T>
__attribute__((always_inline)) inline void lanes_tile(const __m512i* strips, size_t np, const uint32_t* const* x,
                                                      __m512 (&acc)[S][T]) {
  for (int s = 0; s < S; ++s)
    for (int t = 0; t < T; ++t) acc[s][t] = _mm512_setzero_ps();
  for (size_t e = 0; e < np; ++e) {
    __m512bh pv[S];
    for (int s = 0; s < S; ++s) pv[s] = (__m512bh)_mm512_load_si512(strips + (size_t)s * np + e);
    for (int t = 0; t < T; ++t) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[t][e]);
      for (int s = 0; s < S; ++s) acc[s][t] = _mm512_dpbf16_ps(acc[s][t], pv[s], xv);
    }
  }
}

// a·σ(a)·u: σ(g) = 1/(1 + t) for g ≥ 0 and t/(1 + t) below, t = exp(−|g|) (so exp's argument is never
// positive).
__attribute__((always_inline)) inline __m512 silu_mul_v(__m512 g, __m512 u) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = exp_nonpos_v<V>(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
  const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 s = _mm512_div_ps(_mm512_mask_blend_ps(neg, one, t), _mm512_add_ps(one, t));
  return _mm512_mul_ps(_mm512_mul_ps(g, s), u);
}

inline __mmask16 rows_mask(int left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

// The lanes tiles' plain epilogue: ys[t][row0 + r] for r < nr (≤ S·16) and the tile's T tokens, times
// rs[row0 + r] where rs is given.
struct StoreRows {
  const float* rs;
  template <int S, int T>
  __attribute__((always_inline)) void operator()(__m512 (&acc)[S][T], int row0, int nr, float* const* ys) const {
    for (int s = 0; s < S; ++s) {
      const __mmask16 m = rows_mask(nr - s * kLaneStrip);
      if (rs) {
        const __m512 sc = _mm512_maskz_loadu_ps(m, rs + row0 + s * kLaneStrip);
        for (int t = 0; t < T; ++t) acc[s][t] = _mm512_mul_ps(sc, acc[s][t]);
      }
      for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(ys[t] + row0 + s * kLaneStrip, m, acc[s][t]);
    }
  }
};

// The SwiGLU epilogue of a gate strip (0) and an up strip (1) over the same nr ≤ 16 rows:
// ys[t][row0 + r] = silu(gn·gate)·(un·up), the values (and bits) the stored gate and up rows would give
// silu_mul_bf16.
struct GluRows {
  const float *gn, *un;
  // (not inlined: its constants would stay in registers across the tile loop and spill its accumulators)
  template <int S, int T>
  __attribute__((noinline)) void operator()(__m512 (&acc)[S][T], int row0, int nr, float* const* ys) const {
    static_assert(S == 2, "a gate strip and an up strip");
    const __mmask16 m = rows_mask(nr);
    const __m512 sg = _mm512_maskz_loadu_ps(m, gn + row0), su = _mm512_maskz_loadu_ps(m, un + row0);
    for (int t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(ys[t] + row0, m, silu_mul_v(_mm512_mul_ps(sg, acc[0][t]), _mm512_mul_ps(su, acc[1][t])));
  }
};

// One tile of T tokens over the strips, finished by epi.
template <int S, int T, class Epi>
__attribute__((always_inline)) inline void lanes_block_t(const __m512i* strips, size_t np, int row0, int nr,
                                                         const uint32_t* const* x, float* const* ys,
                                                         const Epi& epi) {
  __m512 acc[S][T];
  lanes_tile<S, T>(strips, np, x, acc);
  epi.template operator()<S, T>(acc, row0, nr, ys);
}

// Token tiles of at most kLaneTileTokens (2 × 12 accumulators), as even as the count allows (32 rows:
// 11 + 11 + 10, where tiles of 12 first left a tile of 2 whose 2 × 2 accumulators waited on the dot
// products' latency). lane_tiles(nt) tiles; the callers' prefetch is spread over them.
constexpr int kLaneTileTokens = 12;
inline int lane_tiles(int nt) { return (nt + kLaneTileTokens - 1) / kLaneTileTokens; }

template <int S, class Epi, class Pf>
void lanes_block_s(const __m512i* strips, size_t np, int row0, int nr, const uint16_t* xb, size_t ld, int nt,
                   float* const* ys, const Epi& epi, Pf&& pf) {
  constexpr int TT = kLaneTileTokens;
  const int tiles = lane_tiles(nt);
  for (int i = 0, t0 = 0; i < tiles; ++i) {
    pf();
    const int tn = nt / tiles + (i < nt % tiles ? 1 : 0);
    const uint32_t* x[TT];
    for (int t = 0; t < tn; ++t) x[t] = reinterpret_cast<const uint32_t*>(xb + (size_t)(t0 + t) * ld);
    float* const* y = ys + t0;
    switch (tn) {
      case 1: lanes_block_t<S, 1>(strips, np, row0, nr, x, y, epi); break;
      case 2: lanes_block_t<S, 2>(strips, np, row0, nr, x, y, epi); break;
      case 3: lanes_block_t<S, 3>(strips, np, row0, nr, x, y, epi); break;
      case 4: lanes_block_t<S, 4>(strips, np, row0, nr, x, y, epi); break;
      case 5: lanes_block_t<S, 5>(strips, np, row0, nr, x, y, epi); break;
      case 6: lanes_block_t<S, 6>(strips, np, row0, nr, x, y, epi); break;
      case 7: lanes_block_t<S, 7>(strips, np, row0, nr, x, y, epi); break;
      case 8: lanes_block_t<S, 8>(strips, np, row0, nr, x, y, epi); break;
      case 9: lanes_block_t<S, 9>(strips, np, row0, nr, x, y, epi); break;
      case 10: lanes_block_t<S, 10>(strips, np, row0, nr, x, y, epi); break;
      case 11: lanes_block_t<S, 11>(strips, np, row0, nr, x, y, epi); break;
      default: lanes_block_t<S, TT>(strips, np, row0, nr, x, y, epi); break;
    }
    t0 += tn;
  }
}

// Every token row (bf16 pairs at xb + t·ld) against the nr ≤ kPanelRows rows in the strips (one or two),
// in tiles of up to 12 tokens, the outputs scaled by rs where given; pf() runs before each tile (the
// caller's share of prefetch).
template <class Pf>
void lanes_block(const __m512i* strips, size_t np, int row0, int nr, const uint16_t* xb, size_t ld, int nt,
                 float* const* ys, const float* rs, Pf&& pf) {
  if (nr > kLaneStrip)
    lanes_block_s<2>(strips, np, row0, nr, xb, ld, nt, ys, StoreRows{rs}, pf);
  else
    lanes_block_s<1>(strips, np, row0, nr, xb, ld, nt, ys, StoreRows{rs}, pf);
}

// Rows [r0, r1) of a matrix of width k in lanes panels of kPanelRows rows: build(b0, b1, f) decodes rows
// [b0, b1) as f32 into f (row stride k), which is rounded to bf16 and transposed; every token row
// (rounded to bf16 once) runs over each panel.
template <class Build>
void lanes_rows(int r0, int r1, size_t k, const float* const* xs, float* const* ys, int nt, Build&& build) {
  const uint16_t* xb = bf_tokens(xs, nt, k);
  for (int b0 = r0; b0 < r1; b0 += kPanelRows) {
    const int b1 = b0 + kPanelRows < r1 ? b0 + kPanelRows : r1;
    const uint16_t* panel = bf_panel(b0, b1, k, [&](float* f) { build(b0, b1, f); });
    lanes_block(lanes_panel(panel, b1 - b0, k), k / 2, b0, b1 - b0, xb, k, nt, ys, nullptr,
                []() ZAYA_LAMBDA_INLINE {});
  }
}

template <int BITS>
void aff_rows_bf(const AffMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  const size_t k = (size_t)m.in;
  lanes_rows(r0, r1, k, xs, ys, nt, [&](int b0, int b1, float* f) { aff_panel<BITS>(m, b0, b1, f, k); });
}

void aff_rows_bf16(const AffMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  const int chunk = m.bits == 8 ? V::L : 2 * V::L;
  if (nt < kAffPanelMinRows || m.in % kBfChunk != 0 || m.group % chunk != 0)
    return aff_rows_impl(m, r0, r1, xs, ys, nt);
  switch (m.bits) {
    case 4: aff_rows_bf<4>(m, r0, r1, xs, ys, nt); break;
    case 8: aff_rows_bf<8>(m, r0, r1, xs, ys, nt); break;
    default: break;  // rejected when the op is built
  }
}

// ---- float matrices (the router's layers): lanes ------------------------------------------------------
// f16/bf16/f32 rows converted to f32 as dense_rows_panel converts them, rounded to bf16 into the panel,
// and run as the affine panels are (lanes, 2 × 12 tiles).

template <int TYPE>
void dense_rows_bf(const DenseMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  const size_t k = (size_t)m.in;
  lanes_rows(r0, r1, k, xs, ys, nt, [&](int b0, int b1, float* f) { dense_panel<TYPE>(m, b0, b1, f, k); });
}

void dense_rows_bf16(const DenseMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  if (!dense_bf16_rows(nt, m.in)) return dense_rows_impl(m, r0, r1, xs, ys, nt);
  switch (m.type) {
    case kF16: dense_rows_bf<kF16>(m, r0, r1, xs, ys, nt); break;
    case kBF16: dense_rows_bf<kBF16>(m, r0, r1, xs, ys, nt); break;
    default: dense_rows_bf<kF32>(m, r0, r1, xs, ys, nt); break;
  }
}

// ---- element-wise steps beside the bf16 matmuls --------------------------------------------------------

// a[i] ← silu(a[i])·u[i] (silu_mul_v).
void silu_mul_bf16(float* a, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = rows_mask((int)(n - i < 16 ? n - i : 16));
    _mm512_mask_storeu_ps(a + i, m, silu_mul_v(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, u + i)));
  }
}

// y[i] ← gelu(y[i] + bias[i]) = v·(1 + erf(v/√2))/2, erf(x) = 1 − P(s)·s·exp(−x²) for x ≥ 0, s = 1/(1 + p·x)
// (Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7), odd.
void gelu_bias_bf16(float* y, const float* bias, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, bias + i));
    const __m512 x = _mm512_abs_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752440f)));
    const __m512 s = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), x, one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(0.254829592f));
    const __m512 e = exp_nonpos_v<V>(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(x, x)));
    const __m512 erf_abs = _mm512_fnmadd_ps(_mm512_mul_ps(p, s), e, one);  // 1 − P(s)·s·exp(−x²)
    const __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 erf = _mm512_mask_sub_ps(erf_abs, neg, _mm512_setzero_ps(), erf_abs);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_mul_ps(v, _mm512_add_ps(one, erf)), half));
  }
}

// ---- TurboQuant experts with many token rows: lanes ---------------------------------------------------
// A prefill chunk's routes are uneven (of 512 tokens, one expert may get 200–350 and others a handful).
// For an expert with at least kTqLanesMinRows token rows, the lanes GEMM of the affine panels (no
// horizontal sums, 2 × 12 tiles) beats tq_panel_blocks' dot-product tiles; below that its tile tails
// and the panel's L2 reads cost more than they save (examples/kernel_probe tqprefill with TQ_COUNTS).
// The panel is built without a transposition of decoded values: 16 rows' code words are transposed
// first (a vector then holds one word of 16 rows), and tq4_panel_bf's vpermw lookup of such a vector
// gives one pair of all 16 rows, so the codes, not the 4 times as many decoded vectors, go through
// transpose16. Pair (q, q + 4) of word 16·wb + j lands at wb·64 + q·16 + j, the pair order of
// tq4_tokens_bf's rows. Same products as tq4_rows_bf, summed in another order.

// Rows [row0, row0 + nb) (nb ≤ 16) of a 4-bit matrix (cols a multiple of 16) into one strip of cols·4
// vectors at dst; a short strip repeats row nb − 1.
void tq4_lanes_strip(const TqMat& m, int row0, int nb, __m512i lut, __m512i* dst) {
  const uint32_t* rows[kLaneStrip];
  strip_rows(m.packed + (size_t)row0 * m.cols, (size_t)m.cols, 0, nb, rows);
  for (int wb = 0; wb < m.cols / 16; ++wb) {
    __m512i w[16];
    for (int i = 0; i < 16; ++i) w[i] = _mm512_loadu_si512(rows[i] + (size_t)wb * 16);
    transpose16(w);
    __m512i* d = dst + (size_t)wb * 64;
    for (int j = 0; j < 16; ++j) {
      _mm512_store_si512(d + j, _mm512_permutexvar_epi16(w[j], lut));
      _mm512_store_si512(d + 16 + j, _mm512_permutexvar_epi16(_mm512_srli_epi32(w[j], 4), lut));
      _mm512_store_si512(d + 32 + j, _mm512_permutexvar_epi16(_mm512_srli_epi32(w[j], 8), lut));
      _mm512_store_si512(d + 48 + j, _mm512_permutexvar_epi16(_mm512_srli_epi32(w[j], 12), lut));
    }
  }
}

// Rows [b0, b0 + nb) (nb ≤ kPanelRows) into strips of cols·4 vectors (scratch slot 3).
const __m512i* tq4_lanes_panel(const TqMat& m, int b0, int nb, __m512i lut) {
  const size_t np = (size_t)m.cols * 4;
  __m512i* out = reinterpret_cast<__m512i*>(scratch_f32(kScratchBf16Lanes, (size_t)kLaneStrips * np * 16));
  for (int s = 0; s * kLaneStrip < nb; ++s)
    tq4_lanes_strip(m, b0 + s * kLaneStrip, nb - s * kLaneStrip < kLaneStrip ? nb - s * kLaneStrip : kLaneStrip,
                    lut, out + (size_t)s * np);
  return out;
}

// Rows [r0, r1) in lanes panels of kPanelRows rows; the next panel's codes are hinted into L2 meanwhile,
// a share before each token tile.
void tq4_rows_lanes(const TqMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  const size_t k = (size_t)m.cols * 8;
  const __m512i lut = tq4_lut_bf(m.codebook);
  const uint16_t* xb = tq4_tokens_bf(xs, nt, k);
  for (int b0 = r0; b0 < r1; b0 += kPanelRows) {
    const int b1 = b0 + kPanelRows < r1 ? b0 + kPanelRows : r1;
    const int n1 = b1 + kPanelRows < r1 ? b1 + kPanelRows : r1;
    lanes_block(tq4_lanes_panel(m, b0, b1 - b0, lut), k / 2, b0, b1 - b0, xb, k, nt, ys, m.norms,
                SpreadPrefetch(m.packed + (size_t)b1 * m.cols, m.packed + (size_t)n1 * m.cols, lane_tiles(nt)));
  }
}

void tq_rows_bf16(const TqMat& m, int r0, int r1, const float* const* xs, float* const* ys, int nt) {
  if (!tq_bf16_rows(nt)) return tq_rows_impl(m, r0, r1, xs, ys, nt);
  if (m.bits == 4 && m.cols % 16 == 0)
    return nt >= kTqLanesMinRows ? tq4_rows_lanes(m, r0, r1, xs, ys, nt)
                                 : tq4_rows_bf(m, r0, r1, tq4_tokens_bf(xs, nt, (size_t)m.cols * 8), ys, nt);
  switch (m.bits) {
    case 2: tq_rows_bf<2>(m, r0, r1, xs, ys, nt); break;
    case 3: tq_rows_bf<3>(m, r0, r1, xs, ys, nt); break;
    case 4: tq_rows_bf<4>(m, r0, r1, xs, ys, nt); break;
    default: break;  // rejected when the op is built
  }
}

// ---- the experts' gate, up and SwiGLU in one call ----------------------------------------------------
// ya[t][r] = silu(gate·x_t)[r]·(up·x_t)[r] for r in [r0, r1), for an expert group with tq_bf16_rows(nt)
// (the caller's f32 path below that). The token rows are rounded to bf16 once for both matrices. With
// 4-bit codes and at least kTqLanesMinRows rows, the lanes panels hold 16 gate rows and the same 16 up
// rows and the SwiGLU runs in the tiles' epilogue (GluRows): the up rows never reach memory and there is
// no SiLU pass over the rows afterwards. Otherwise gate into ya and up into yu, then silu_mul_bf16.
// Every value is the one tq_rows_bf16 gives for gate and up, then silu_mul_bf16: the same bits.

void tq4_glu_lanes(const TqMat& mg, const TqMat& mu, int r0, int r1, const uint16_t* xb, float* const* ya, int nt) {
  const size_t k = (size_t)mg.cols * 8, np = (size_t)mg.cols * 4;
  const __m512i lg = tq4_lut_bf(mg.codebook), lu = tq4_lut_bf(mu.codebook);
  __m512i* strips = reinterpret_cast<__m512i*>(scratch_f32(kScratchBf16Lanes, (size_t)kLaneStrips * np * 16));
  const int tiles = lane_tiles(nt);
  for (int b0 = r0; b0 < r1; b0 += kLaneStrip) {
    const int b1 = b0 + kLaneStrip < r1 ? b0 + kLaneStrip : r1;
    const int n1 = b1 + kLaneStrip < r1 ? b1 + kLaneStrip : r1;
    tq4_lanes_strip(mg, b0, b1 - b0, lg, strips);
    tq4_lanes_strip(mu, b0, b1 - b0, lu, strips + np);
    SpreadPrefetch pg(mg.packed + (size_t)b1 * mg.cols, mg.packed + (size_t)n1 * mg.cols, tiles);
    SpreadPrefetch pu(mu.packed + (size_t)b1 * mu.cols, mu.packed + (size_t)n1 * mu.cols, tiles);
    lanes_block_s<2>(strips, np, b0, b1 - b0, xb, k, nt, ya, GluRows{mg.norms, mu.norms},
                     [&]() ZAYA_LAMBDA_INLINE {
                       pg();
                       pu();
                     });
  }
}

void tq_glu_bf16(const TqMat& mg, const TqMat& mu, int r0, int r1, const float* const* xs, float* const* ya,
                 float* const* yu, int nt) {
  if (mg.bits == 4 && mu.bits == 4 && mg.cols % 16 == 0 && mu.cols == mg.cols) {
    const size_t k = (size_t)mg.cols * 8;
    const uint16_t* xb = tq4_tokens_bf(xs, nt, k);
    if (nt >= kTqLanesMinRows) return tq4_glu_lanes(mg, mu, r0, r1, xb, ya, nt);
    tq4_rows_bf(mg, r0, r1, xb, ya, nt);
    tq4_rows_bf(mu, r0, r1, xb, yu, nt);
  } else {
    tq_rows_bf16(mg, r0, r1, xs, ya, nt);
    tq_rows_bf16(mu, r0, r1, xs, yu, nt);
  }
  for (int t = 0; t < nt; ++t) silu_mul_bf16(ya[t] + r0, yu[t] + r0, r1 - r0);
}

}  // namespace
}  // namespace zaya::kern

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace zaya::kern {
TqRowsFn avx512bf16_tq_rows() { return tq_rows_bf16; }
AffRowsFn avx512bf16_aff_rows() { return aff_rows_bf16; }
DenseRowsFn avx512bf16_dense_rows() { return dense_rows_bf16; }
TqGluFn avx512bf16_tq_glu() { return tq_glu_bf16; }
GeluBiasFn avx512bf16_gelu_bias() { return gelu_bias_bf16; }
}  // namespace zaya::kern

#else
namespace zaya::kern {
TqRowsFn avx512bf16_tq_rows() { return nullptr; }
AffRowsFn avx512bf16_aff_rows() { return nullptr; }
DenseRowsFn avx512bf16_dense_rows() { return nullptr; }
TqGluFn avx512bf16_tq_glu() { return nullptr; }
GeluBiasFn avx512bf16_gelu_bias() { return nullptr; }
}  // namespace zaya::kern
#endif
