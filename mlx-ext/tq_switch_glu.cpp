// TurboQuant (MXTQ) routed experts as one fused switch-GLU MLX primitive (docs/bundle-format.md §3, §4):
// y[d] = down_e(R_d(silu(gate_e x̂) ⊙ up_e x̂)), x̂ = R_gu(x), R(v) = H(s ⊙ v)/√dim, for each dispatch
// d = (token, slot) with expert e = idx[d]; a TurboQuant projection is out[r] = n[e,r]·Σ_i C[code]·v̂_i.
//
// CPU kernel (eval_cpu): each token row is rotated once (in-place FWHT, O(d log d)) and laid out for
// the vector kernels; dispatches are grouped by expert so each expert's codes are read once per call;
// gate and up run over the same row range per thread, followed by SwiGLU, then the rotated activations
// go through down. Threads split output rows. The leaf GEMV/GEMM tiles live in simd_impl.inc.
// Portable path: plain MLX ops (unpack with shifts/masks, take from the codebook, scale by norms,
// hadamard_transform, matmul / gather_mm). It is the reference in tests and the path on GPU streams.
#include <cmath>
#include <cstring>
#include <memory>

#include "tq_switch_glu.h"

namespace zaya {

// ---- op ----------------------------------------------------------------------------------------------

namespace {

bool is_pow2(int v) { return v > 0 && (v & (v - 1)) == 0; }

int tq_cols(int in, int bits) {
  const int vpw = 32 / bits;
  return (in + vpw - 1) / vpw;
}

std::string dims(std::initializer_list<int> v) {
  mx::Shape s(v);
  return shape_str(s);
}

void check_bits(int bits, const char* which) {
  if (bits != 2 && bits != 3 && bits != 4)
    fail(std::string(which) + " bits must be 2, 3 or 4, got " + std::to_string(bits));
}

TqDims check_tq_args(const mx::array& x, const mx::array& idx, const mx::array& gp, const mx::array& gn,
                     const mx::array& up, const mx::array& un, const mx::array& dp, const mx::array& dn,
                     const mx::array& cbgu, const mx::array& sgu, int bits_gu, const mx::array& cbd,
                     const mx::array& sd, int bits_d) {
  TqDims d{};
  check_bits(bits_gu, "gate/up");
  check_bits(bits_d, "down");
  d.bits_gu = bits_gu;
  d.bits_d = bits_d;

  expect_dtype(x, mx::float32, "x");
  expect_ndim(x, 2, "x");
  d.N = x.shape(0);
  d.H = x.shape(1);

  if (idx.dtype() != mx::int32 && idx.dtype() != mx::uint32)
    fail("expert indices must be int32 or uint32, got " + dtype_str(idx.dtype()));
  if (idx.ndim() == 1 && idx.shape(0) == d.N) {
    d.K = 1;
    d.idx_2d = 0;
  } else if (idx.ndim() == 2 && idx.shape(0) == d.N && idx.shape(1) >= 1) {
    d.K = idx.shape(1);
    d.idx_2d = 1;
  } else {
    fail("expert indices must be [N] or [N, K] with N = " + std::to_string(d.N) +
         " rows of x, got " + shape_str(idx.shape()));
  }

  expect_dtype(gp, mx::uint32, "gate tq_packed");
  expect_ndim(gp, 3, "gate tq_packed");
  d.E = gp.shape(0);
  d.I = gp.shape(1);
  d.cols_gu = tq_cols(d.H, bits_gu);
  if (d.E < 1 || d.I < 1 || gp.shape(2) != d.cols_gu)
    fail("gate tq_packed must be [E, I, ceil(H / (32/bits))] = [E, I, " + std::to_string(d.cols_gu) +
         "] for H = " + std::to_string(d.H) + " (x's width) and " + std::to_string(bits_gu) +
         " bits, got " + shape_str(gp.shape()));
  expect_dtype(up, mx::uint32, "up tq_packed");
  if (up.shape() != gp.shape())
    fail("up tq_packed must have gate's shape " + shape_str(gp.shape()) + ", got " + shape_str(up.shape()));
  d.gn_type = float_type_of(gn, "gate tq_norms");
  d.un_type = float_type_of(un, "up tq_norms");
  if (gn.shape() != mx::Shape{d.E, d.I})
    fail("gate tq_norms must be [E, I] = " + dims({d.E, d.I}) + ", got " + shape_str(gn.shape()));
  if (un.shape() != mx::Shape{d.E, d.I})
    fail("up tq_norms must be [E, I] = " + dims({d.E, d.I}) + ", got " + shape_str(un.shape()));

  expect_dtype(dp, mx::uint32, "down tq_packed");
  expect_ndim(dp, 3, "down tq_packed");
  d.O = dp.shape(1);
  d.cols_d = tq_cols(d.I, bits_d);
  if (dp.shape(0) != d.E || d.O < 1 || dp.shape(2) != d.cols_d)
    fail("down tq_packed must be [E, O, ceil(I / (32/bits))] = [" + std::to_string(d.E) + ", O, " +
         std::to_string(d.cols_d) + "] for I = " + std::to_string(d.I) + " and " + std::to_string(bits_d) +
         " bits, got " + shape_str(dp.shape()));
  d.dn_type = float_type_of(dn, "down tq_norms");
  if (dn.shape() != mx::Shape{d.E, d.O})
    fail("down tq_norms must be [E, O] = " + dims({d.E, d.O}) + ", got " + shape_str(dn.shape()));

  expect_dtype(cbgu, mx::float32, "gate/up codebook");
  if (cbgu.shape() != mx::Shape{1 << bits_gu})
    fail("gate/up codebook must be [2^bits] = [" + std::to_string(1 << bits_gu) + "], got " +
         shape_str(cbgu.shape()));
  expect_dtype(cbd, mx::float32, "down codebook");
  if (cbd.shape() != mx::Shape{1 << bits_d})
    fail("down codebook must be [2^bits] = [" + std::to_string(1 << bits_d) + "], got " +
         shape_str(cbd.shape()));
  expect_dtype(sgu, mx::float32, "gate/up signs");
  if (sgu.shape() != mx::Shape{d.H})
    fail("gate/up signs must be [H] = [" + std::to_string(d.H) + "], got " + shape_str(sgu.shape()));
  expect_dtype(sd, mx::float32, "down signs");
  if (sd.shape() != mx::Shape{d.I})
    fail("down signs must be [I] = [" + std::to_string(d.I) + "], got " + shape_str(sd.shape()));

  if (!is_pow2(d.H))
    fail("the hidden size H = " + std::to_string(d.H) + " (x's width) must be a power of two for the "
         "Hadamard rotation");
  if (!is_pow2(d.I))
    fail("the intermediate size I = " + std::to_string(d.I) + " must be a power of two for the Hadamard "
         "rotation");
  return d;
}

// Rotated-domain weights n[r] * C[code[r, i]] as f32 [B, R, in] from packed [B, R, C] and norms [B, R].
mx::array tq_dequant(const mx::array& packed, const mx::array& norms, const mx::array& cb, int bits, int in,
                     mx::Stream s) {
  const int vpw = 32 / bits;
  std::vector<uint32_t> sh(vpw);
  for (int k = 0; k < vpw; ++k) sh[k] = static_cast<uint32_t>(k * bits);
  mx::array shifts(sh.begin(), mx::Shape{vpw}, mx::uint32);
  auto codes = mx::bitwise_and(mx::right_shift(mx::expand_dims(packed, -1, s), shifts, s),
                               mx::array((1u << bits) - 1u, mx::uint32), s);
  const auto& p = packed.shape();
  codes = mx::reshape(codes, {p[0], p[1], p[2] * vpw}, s);
  if (p[2] * vpw != in) codes = mx::slice(codes, {0, 0, 0}, {p[0], p[1], in}, s);
  auto w = mx::take(cb, codes, s);
  return mx::multiply(w, mx::expand_dims(mx::astype(norms, mx::float32, s), -1, s), s);
}

mx::array tq_portable(const mx::array& x, const mx::array& idx, const mx::array& gp, const mx::array& gn,
                      const mx::array& up, const mx::array& un, const mx::array& dp, const mx::array& dn,
                      const mx::array& cbgu, const mx::array& sgu, const mx::array& cbd,
                      const mx::array& sd, const TqDims& d, mx::Stream s) {
  const int D = d.N * d.K;
  auto xr = mx::hadamard_transform(mx::multiply(x, sgu, s), 1.0f / std::sqrt(static_cast<float>(d.H)), s);
  auto id64 = mx::astype(mx::reshape(idx, {D}, s), mx::int64, s);
  auto valid = mx::logical_and(mx::greater_equal(id64, mx::array(0, mx::int64), s),
                               mx::less(id64, mx::array(d.E, mx::int64), s), s);
  auto safe = mx::astype(mx::where(valid, id64, mx::array(0, mx::int64), s), mx::uint32, s);
  auto tok = mx::floor_divide(mx::arange(0.0, static_cast<double>(D), 1.0, mx::uint32, s), mx::array(d.K, mx::uint32), s);

  // [D, out] = per-dispatch projection of lhs rows lhs3[lhs_idx[d]] ([M, 1, in]) by expert safe[d]
  auto proj = [&](const mx::array& packed, const mx::array& norms, const mx::array& cb, int bits, int in,
                  int out, const mx::array& lhs3, const mx::array& lhs_idx) {
    mx::array y = mx::array(0.0f);
    if (D < d.E) {
      auto w = tq_dequant(mx::take(packed, safe, 0, s), mx::take(norms, safe, 0, s), cb, bits, in, s);
      auto lhs = mx::take(lhs3, lhs_idx, 0, s);
      y = mx::matmul(lhs, mx::transpose(w, {0, 2, 1}, s), s);
    } else {
      auto w = tq_dequant(packed, norms, cb, bits, in, s);
      y = mx::gather_mm(lhs3, mx::transpose(w, {0, 2, 1}, s), lhs_idx, safe, false, s);
    }
    return mx::reshape(y, {D, out}, s);
  };

  auto x3 = mx::reshape(xr, {d.N, 1, d.H}, s);
  auto g = proj(gp, gn, cbgu, d.bits_gu, d.H, d.I, x3, tok);
  auto u = proj(up, un, cbgu, d.bits_gu, d.H, d.I, x3, tok);
  auto a = mx::multiply(mx::multiply(g, mx::sigmoid(g, s), s), u, s);
  auto ar = mx::hadamard_transform(mx::multiply(a, sd, s), 1.0f / std::sqrt(static_cast<float>(d.I)), s);
  auto yd = proj(dp, dn, cbd, d.bits_d, d.I, d.O, mx::reshape(ar, {D, 1, d.I}, s),
                 mx::arange(0.0, static_cast<double>(D), 1.0, mx::uint32, s));
  yd = mx::where(mx::expand_dims(valid, -1, s), yd, mx::array(0.0f), s);
  return d.idx_2d ? mx::reshape(yd, {d.N, d.K, d.O}, s) : yd;
}

}  // namespace

mx::array tq_switch_glu(const mx::array& x, const mx::array& idx, const mx::array& gp, const mx::array& gn,
                        const mx::array& up, const mx::array& un, const mx::array& dp, const mx::array& dn,
                        const mx::array& cbgu, const mx::array& sgu, int bits_gu, const mx::array& cbd,
                        const mx::array& sd, int bits_d, int mode, mx::Stream s) {
  check_mode(mode);
  auto d = check_tq_args(x, idx, gp, gn, up, un, dp, dn, cbgu, sgu, bits_gu, cbd, sd, bits_d);
  const bool use_prim = use_primitive(mode, s, "TqSwitchGlu");
  if (d.N == 0) return mx::zeros(TqSwitchGlu::shape(d), mx::float32, s);
  d.bf16 = mode_bf16(mode);
  if (use_prim) {
    std::vector<mx::array> inputs{x, idx};
    for (auto* a : {&gp, &gn, &up, &un, &dp, &dn, &cbgu, &sgu, &cbd, &sd}) inputs.push_back(weight_input(*a, s));
    return mx::array(TqSwitchGlu::shape(d), mx::float32, std::make_shared<TqSwitchGlu>(s, d, kern::best_table()),
                     std::move(inputs));
  }
  return tq_portable(x, idx, gp, gn, up, un, dp, dn, cbgu, sgu, cbd, sd, d, s);
}

// ---- TqSwitchGlu -------------------------------------------------------------------------------------

namespace {

struct TqPtrs {
  const float* x;
  const uint32_t* idx;
  const uint32_t *gp, *up, *dp;
  const void *gn, *un, *dn;
  const float *cbgu, *sgu, *cbd, *sd;
  float* y;
};

void run_tq(const TqPtrs& p, const TqDims& d, const kern::Table* tab) {
  const kern::TqRowsFn tq_rows = d.bf16 ? tab->tq_rows_bf16 : tab->tq_rows;
  const kern::TqGluFn glu = d.bf16 ? tab->tq_glu_bf16 : nullptr;
  const int64_t D = (int64_t)d.N * d.K;
  const int vpw_gu = 32 / d.bits_gu, vpw_d = 32 / d.bits_d;
  const int64_t pad_gu = (int64_t)d.cols_gu * vpw_gu, pad_d = (int64_t)d.cols_d * vpw_d;

  // Group the dispatches by expert; ids outside [0, E) get zero rows.
  std::vector<int64_t> cnt(d.E, 0), start(d.E + 1, 0);
  for (int64_t i = 0; i < D; ++i)
    if (p.idx[i] < (uint32_t)d.E) ++cnt[p.idx[i]];
  for (int e = 0; e < d.E; ++e) start[e + 1] = start[e] + cnt[e];
  const int64_t nv = start[d.E];
  std::vector<int64_t> order(nv);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < D; ++i)
      if (p.idx[i] < (uint32_t)d.E) order[fill[p.idx[i]]++] = i;
  }
  for (int64_t i = 0; i < D; ++i)
    if (p.idx[i] >= (uint32_t)d.E) std::memset(p.y + i * d.O, 0, sizeof(float) * d.O);
  if (nv == 0) return;

  // Rotated token rows in kernel layout. The large buffers below are left uninitialised (every element
  // is written before it is read: tq_rotate writes the whole padded row, tq_rows every row of its
  // range): zero-filling them took a single-threaded memset of 16 MB per MoE layer in a 512-token chunk.
  const auto xq = std::make_unique_for_overwrite<float[]>((size_t)d.N * pad_gu);
  const float scale_gu = 1.0f / std::sqrt(static_cast<float>(d.H));
  const float scale_d = 1.0f / std::sqrt(static_cast<float>(d.I));
  parallel_for(d.N, 4, [&](int64_t n0, int64_t n1) {
    std::vector<float> tmp(d.H);
    for (int64_t n = n0; n < n1; ++n)
      tab->tq_rotate(p.x + n * d.H, p.sgu, d.H, scale_gu, vpw_gu, d.cols_gu, tmp.data(), xq.get() + n * pad_gu);
  });

  // gate/up + SwiGLU: a[pos] for each valid dispatch in expert order.
  const auto A = std::make_unique_for_overwrite<float[]>((size_t)nv * d.I);
  const auto U = std::make_unique_for_overwrite<float[]>((size_t)nv * d.I);
  std::vector<const float*> xs(nv);
  std::vector<float*> ya(nv), yu(nv);
  for (int64_t q = 0; q < nv; ++q) {
    xs[q] = xq.get() + (order[q] / d.K) * pad_gu;
    ya[q] = A.get() + q * d.I;
    yu[q] = U.get() + q * d.I;
  }
  // Rows [r0, r1) of expert e's matrix: the region the prefetch of the previous matrix runs on into.
  auto rows_of = [](const uint32_t* packed, int64_t e, int64_t rows, int cols, int64_t r0, int64_t r1) {
    const uint32_t* m = packed + e * rows * cols;
    return std::pair<const void*, const void*>{m + r0 * cols, m + r1 * cols};
  };
  // whether expert group e runs gate, up and the SwiGLU in one bf16 call (else the f32 kernels, then SiLU)
  const auto glu_runs = [&](int e) { return glu && kern::tq_bf16_rows((int)cnt[e]); };
  std::vector<int> used;
  for (int e = 0; e < d.E; ++e)
    if (cnt[e] > 0) used.push_back(e);
  // Row norms of the expert in use, as f32: each chunk writes and reads only its own rows [r0, r1).
  std::vector<float> ng(d.I), nu(d.I), nd(d.O);
  parallel_for(d.I, 16, [&](int64_t r0, int64_t r1) {
    for (size_t k = 0; k < used.size(); ++k) {
      const int e = used[k];
      const int64_t base = (int64_t)e * d.I;
      for (int64_t r = r0; r < r1; ++r) {
        ng[r] = kern::load_float(p.gn, d.gn_type, base + r);
        nu[r] = kern::load_float(p.un, d.un_type, base + r);
      }
      // gate's prefetch runs on into up's rows, up's into the next expert's gate rows
      const auto up_rows = rows_of(p.up, e, d.I, d.cols_gu, r0, r1);
      const auto next_gate = k + 1 < used.size() ? rows_of(p.gp, used[k + 1], d.I, d.cols_gu, r0, r1)
                                                 : std::pair<const void*, const void*>{nullptr, nullptr};
      const kern::TqMat mg{p.gp + base * d.cols_gu, ng.data(), p.cbgu, d.bits_gu, d.cols_gu, up_rows.first,
                           up_rows.second};
      const kern::TqMat mu{p.up + base * d.cols_gu, nu.data(), p.cbgu, d.bits_gu, d.cols_gu, next_gate.first,
                           next_gate.second};
      if (glu_runs(e)) {
        glu(mg, mu, (int)r0, (int)r1, xs.data() + start[e], ya.data() + start[e], yu.data() + start[e], (int)cnt[e]);
        continue;
      }
      tq_rows(mg, (int)r0, (int)r1, xs.data() + start[e], ya.data() + start[e], (int)cnt[e]);
      tq_rows(mu, (int)r0, (int)r1, xs.data() + start[e], yu.data() + start[e], (int)cnt[e]);
    }
    // SwiGLU of the experts the f32 kernels ran
    for (int e : used) {
      if (glu_runs(e)) continue;
      for (int64_t q = start[e]; q < start[e + 1]; ++q) {
        float* a = ya[q];
        const float* u = yu[q];
        for (int64_t r = r0; r < r1; ++r) {
          const float g = a[r];
          a[r] = g / (1.0f + std::exp(-g)) * u[r];
        }
      }
    }
  }, kStreamChunks);

  // Rotated activations in kernel layout, then down.
  const auto aq = std::make_unique_for_overwrite<float[]>((size_t)nv * pad_d);
  parallel_for(nv, 4, [&](int64_t q0, int64_t q1) {
    std::vector<float> tmp(d.I);
    for (int64_t q = q0; q < q1; ++q)
      tab->tq_rotate(ya[q], p.sd, d.I, scale_d, vpw_d, d.cols_d, tmp.data(), aq.get() + q * pad_d);
  });
  std::vector<const float*> xs2(nv);
  std::vector<float*> yo(nv);
  for (int64_t q = 0; q < nv; ++q) {
    xs2[q] = aq.get() + q * pad_d;
    yo[q] = p.y + order[q] * d.O;
  }
  parallel_for(d.O, 16, [&](int64_t r0, int64_t r1) {
    for (size_t k = 0; k < used.size(); ++k) {
      const int e = used[k];
      const int64_t base = (int64_t)e * d.O;
      for (int64_t r = r0; r < r1; ++r) nd[r] = kern::load_float(p.dn, d.dn_type, base + r);
      const auto next = k + 1 < used.size() ? rows_of(p.dp, used[k + 1], d.O, d.cols_d, r0, r1)
                                            : std::pair<const void*, const void*>{nullptr, nullptr};
      const kern::TqMat md{p.dp + base * d.cols_d, nd.data(), p.cbd, d.bits_d, d.cols_d, next.first, next.second};
      tq_rows(md, (int)r0, (int)r1, xs2.data() + start[e], yo.data() + start[e], (int)cnt[e]);
    }
  }, kStreamChunks);
}

}  // namespace

void TqSwitchGlu::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  // Inputs in the order of the op's arguments; the weights are row-contiguous (weight_input), x and idx
  // are packed inside the task when strided.
  auto& enc = cpu_encoder(stream(), in, out);
  TqPtrs p;
  p.x = nullptr;
  p.idx = nullptr;
  p.gp = in[2].data<uint32_t>();
  p.gn = in[3].data<void>();
  p.up = in[4].data<uint32_t>();
  p.un = in[5].data<void>();
  p.dp = in[6].data<uint32_t>();
  p.dn = in[7].data<void>();
  p.cbgu = in[8].data<float>();
  p.sgu = in[9].data<float>();
  p.cbd = in[10].data<float>();
  p.sd = in[11].data<float>();
  p.y = out[0].data<float>();
  enc.dispatch(traced(name(), [p, x = in[0], idx = in[1], d = d_, tab = tab_]() mutable {
    std::vector<char> sx, si;
    p.x = static_cast<const float*>(row_major(x, sx));
    p.idx = static_cast<const uint32_t*>(row_major(idx, si));
    run_tq(p, d, tab);
  }));
}

}  // namespace zaya
