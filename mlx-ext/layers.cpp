// Fused per-layer primitives of the ZAYA model (docs/model.md §2.3–2.5, §4.2, §4.4), each one
// MLX node where the plain-ops graph needs tens of small nodes (MLX's fast:: ops have no CPU kernels and
// decompose into their fallbacks on the CPU; every node costs ≈10 µs of scheduling on this backend):
//
//   * res_norm:    R' = (h + b_h)·s_h + [(R + b_r)·s_r | R],  x = RMSNorm(R')·w   (two outputs)
//   * router:      the MoE router: down_proj (+ EDA state), RMSNorm, MLP with exact GELUs, softmax,
//                  biased argmax; outputs the route, its probability, the EDA state, the probabilities
//                  and the number of skip-route tokens; with the bf16 precision (ZAYA_EXT_BF16_DOT) the
//                  three layers' GEMMs take bf16 dot products (the table's dense_rows_bf16), the rest f32
//   * moe_combine: y = p·(expert output) for routed tokens, p·x or 0 for the skip route
//
// Each has a portable plain-MLX-ops graph (the reference in tests, and the path on GPU streams).
#include <cmath>
#include <cstring>

#include "layers.h"

namespace zaya {

// ---- ops ---------------------------------------------------------------------------------------------

namespace {

void expect_vec(const mx::array& a, int n, const char* name) {
  expect_dtype(a, mx::float32, name);
  if (a.ndim() != 1 || a.shape(0) != n)
    fail(std::string(name) + " must be [" + std::to_string(n) + "], got " + shape_str(a.shape()));
}

std::vector<mx::array> router_portable(const mx::array& x, const mx::array* prev, const mx::array* ss,
                                       const mx::array& dw, const mx::array& dbias, const mx::array& nw,
                                       float eps, const mx::array& w0, const mx::array& b0, const mx::array& w2,
                                       const mx::array& b2, const mx::array& w4, const mx::array& bal,
                                       const RouterDims& d, mx::Stream s) {
  auto lin = [&](const mx::array& v, const mx::array& w, const mx::array* b) {
    auto y = mx::matmul(v, mx::transpose(mx::astype(w, mx::float32, s), s), s);
    return b ? mx::add(y, *b, s) : y;
  };
  auto gelu_ops = [&](const mx::array& v) {
    auto inner = mx::erf(mx::multiply(v, mx::array(0.70710678118654752440f), s), s);
    return mx::multiply(mx::multiply(v, mx::add(inner, mx::array(1.0f), s), s), mx::array(0.5f), s);
  };
  auto r = lin(x, dw, &dbias);
  if (prev) r = mx::add(r, mx::multiply(*prev, *ss, s), s);
  auto n = mx::fast::rms_norm(r, nw, eps, s);
  auto a1 = gelu_ops(lin(n, w0, &b0));
  auto a2 = gelu_ops(lin(a1, w2, &b2));
  auto logits = lin(a2, w4, nullptr);
  auto p = mx::softmax(logits, std::vector<int>{-1}, true, s);
  auto ch = mx::argmax(mx::add(p, bal, s), -1, true, s);
  auto sc = mx::squeeze(mx::take_along_axis(p, ch, -1, s), std::vector<int>{-1}, s);
  auto c = mx::astype(mx::squeeze(ch, std::vector<int>{-1}, s), mx::int32, s);
  auto sk = mx::astype(mx::sum(mx::astype(mx::greater_equal(c, mx::array(d.E, mx::int32), s), mx::int32, s), s),
                       mx::int32, s);
  return {c, sc, r, p, sk};
}

}  // namespace

std::vector<mx::array> res_norm(const mx::array& h, const mx::array* r, const mx::array& hb, const mx::array& hs,
                                const mx::array* rb, const mx::array* rs, const mx::array& w, float eps, int mode,
                                mx::Stream s) {
  expect_dtype(h, mx::float32, "h");
  if (h.ndim() < 1 || h.shape(-1) < 1) fail("h must be [..., H], got " + shape_str(h.shape()));
  ResNormDims d{};
  d.H = h.shape(-1);
  d.rows = h.size() / d.H;
  d.eps = eps;
  if (r) {
    expect_dtype(*r, mx::float32, "residual");
    if (r->shape() != h.shape())
      fail("residual must have h's shape " + shape_str(h.shape()) + ", got " + shape_str(r->shape()));
    d.has_r = 1;
  }
  if ((rb == nullptr) != (rs == nullptr)) fail("residual_bias and residual_scale must be given together");
  expect_vec(hb, d.H, "hidden_states_bias");
  expect_vec(hs, d.H, "hidden_states_scale");
  if (rb) {
    if (!r) fail("residual_bias/residual_scale given without a residual");
    expect_vec(*rb, d.H, "residual_bias");
    expect_vec(*rs, d.H, "residual_scale");
    d.has_rsb = 1;
  }
  expect_vec(w, d.H, "norm weight");
  if (!(eps >= 0.0f)) fail("eps must be non-negative");
  if (use_primitive(mode, s, "ResNorm") && h.size() > 0) {
    std::vector<mx::array> inputs{h};
    if (r) inputs.push_back(*r);
    inputs.push_back(hb);
    inputs.push_back(hs);
    if (rb) {
      inputs.push_back(*rb);
      inputs.push_back(*rs);
    }
    inputs.push_back(w);
    return mx::array::make_arrays({h.shape(), h.shape()}, {mx::float32, mx::float32}, std::make_shared<ResNorm>(s, d),
                                  std::move(inputs));
  }
  auto hh = mx::multiply(mx::add(h, hb, s), hs, s);
  auto R = hh;
  if (r) R = mx::add(rb ? mx::multiply(mx::add(*r, *rb, s), *rs, s) : *r, hh, s);
  return {R, mx::fast::rms_norm(R, w, eps, s)};
}

std::vector<mx::array> router(const mx::array& x, const mx::array* prev, const mx::array* ss, const mx::array& dw,
                              const mx::array& db, const mx::array& nw, float eps, const mx::array& w0,
                              const mx::array& b0, const mx::array& w2, const mx::array& b2, const mx::array& w4,
                              const mx::array& bal, int num_experts, int mode, mx::Stream s) {
  RouterDims d{};
  expect_dtype(x, mx::float32, "x");
  expect_ndim(x, 2, "x");
  d.N = x.shape(0);
  d.H = x.shape(1);
  expect_ndim(dw, 2, "down_proj weight");
  d.R = dw.shape(0);
  if (dw.shape(1) != d.H || d.R < 1)
    fail("down_proj weight must be [R, H] with H = " + std::to_string(d.H) + ", got " + shape_str(dw.shape()));
  d.down_t = float_type_of(dw, "down_proj weight");
  expect_vec(db, d.R, "down_proj bias");
  expect_vec(nw, d.R, "rmsnorm_eda weight");
  for (auto [w, name] : {std::pair{&w0, "router_mlp.0 weight"}, {&w2, "router_mlp.2 weight"}}) {
    if (w->shape() != mx::Shape{d.R, d.R})
      fail(std::string(name) + " must be [R, R] = [" + std::to_string(d.R) + ", " + std::to_string(d.R) +
           "], got " + shape_str(w->shape()));
  }
  d.w0_t = float_type_of(w0, "router_mlp.0 weight");
  d.w2_t = float_type_of(w2, "router_mlp.2 weight");
  expect_vec(b0, d.R, "router_mlp.0 bias");
  expect_vec(b2, d.R, "router_mlp.2 bias");
  expect_ndim(w4, 2, "router_mlp.4 weight");
  d.L = w4.shape(0);
  if (w4.shape(1) != d.R || d.L < 1)
    fail("router_mlp.4 weight must be [L, R] with R = " + std::to_string(d.R) + ", got " + shape_str(w4.shape()));
  d.w4_t = float_type_of(w4, "router_mlp.4 weight");
  expect_vec(bal, d.L, "balancing_biases");
  if (num_experts < 1 || num_experts > d.L)
    fail("num_experts " + std::to_string(num_experts) + " must be in [1, " + std::to_string(d.L) +
         "] (the router's logits)");
  d.E = num_experts;
  d.eps = eps;
  d.bf16 = mode_bf16(mode);
  if ((prev == nullptr) != (ss == nullptr)) fail("the previous router state and router_states_scale go together");
  if (prev) {
    expect_dtype(*prev, mx::float32, "previous router state");
    if (prev->shape() != mx::Shape{static_cast<int>(d.N), d.R})
      fail("previous router state must be [N, R] = [" + std::to_string(d.N) + ", " + std::to_string(d.R) +
           "], got " + shape_str(prev->shape()));
    expect_vec(*ss, d.R, "router_states_scale");
    d.has_prev = 1;
  }
  if (use_primitive(mode, s, "Router") && d.N > 0) {
    std::vector<mx::array> inputs{x, dw, db, nw, w0, b0, w2, b2, w4, bal};
    if (prev) {
      inputs.push_back(*prev);
      inputs.push_back(*ss);
    }
    return mx::array::make_arrays(Router::shapes(d), {mx::int32, mx::float32, mx::float32, mx::float32, mx::int32},
                                  std::make_shared<Router>(s, d, kern::best_table()), std::move(inputs));
  }
  return router_portable(x, prev, ss, dw, db, nw, eps, w0, b0, w2, b2, w4, bal, d, s);
}

mx::array moe_combine(const mx::array& ey, const mx::array& x, const mx::array& c, const mx::array& p,
                      int num_experts, int zero_skip, int mode, mx::Stream s) {
  expect_dtype(ey, mx::float32, "expert output");
  expect_ndim(ey, 2, "expert output");
  expect_dtype(x, mx::float32, "x");
  if (x.shape() != ey.shape())
    fail("x must have the expert output's shape " + shape_str(ey.shape()) + ", got " + shape_str(x.shape()));
  CombineDims d{};
  d.N = ey.shape(0);
  d.H = ey.shape(1);
  d.E = num_experts;
  d.zero_skip = zero_skip ? 1 : 0;
  expect_dtype(c, mx::int32, "routes");
  expect_dtype(p, mx::float32, "route probabilities");
  if (c.shape() != mx::Shape{static_cast<int>(d.N)} || p.shape() != mx::Shape{static_cast<int>(d.N)})
    fail("routes and route probabilities must be [N] = [" + std::to_string(d.N) + "], got " + shape_str(c.shape()) +
         " and " + shape_str(p.shape()));
  if (use_primitive(mode, s, "MoeCombine") && d.N > 0)
    return mx::array(ey.shape(), mx::float32, std::make_shared<MoeCombine>(s, d), {ey, x, c, p});
  auto sc = mx::expand_dims(p, -1, s);
  auto routed = mx::logical_and(mx::greater_equal(c, mx::array(0, mx::int32), s),
                                mx::less(c, mx::array(d.E, mx::int32), s), s);
  auto skip_v = d.zero_skip ? mx::zeros_like(ey, s) : mx::multiply(x, sc, s);
  return mx::where(mx::expand_dims(routed, -1, s), mx::multiply(ey, sc, s), skip_v, s);
}

// ---- kernels -----------------------------------------------------------------------------------------

namespace {

// Sum of squares with 8 independent partial sums (vectorisable without reassociation flags).
float sum_squares(const float* v, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += v[i + k] * v[i + k];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += v[i] * v[i];
  return s;
}

// y = (v · rsqrt(mean(v²) + eps)) · w, as MLX's rms_norm fallback orders it.
void rms_norm_row(const float* v, const float* w, int n, float eps, float* y) {
  const float inv = 1.0f / std::sqrt(sum_squares(v, n) / (float)n + eps);
  for (int i = 0; i < n; ++i) y[i] = (v[i] * inv) * w[i];
}

inline float gelu(float x) {
  // x·(1 + erf(x/√2))·½, in the plain path's order
  return (x * (1.0f + std::erf(x * 0.70710678118654752440f))) * 0.5f;
}

// One token's route from its router logits l[0, L): softmax probabilities p, the choice argmax(p + bal)
// (first on ties) and its probability.
void route(const float* l, const float* bal, int L, float* p, int32_t* choice, float* score) {
  float mx_ = l[0];
  for (int k = 1; k < L; ++k) mx_ = std::max(mx_, l[k]);
  float sum = 0.f;
  for (int k = 0; k < L; ++k) {
    p[k] = std::exp(l[k] - mx_);
    sum += p[k];
  }
  for (int k = 0; k < L; ++k) p[k] = p[k] / sum;
  int best = 0;
  float bv = p[0] + bal[0];
  for (int k = 1; k < L; ++k) {
    const float v = p[k] + bal[k];
    if (v > bv) {
      bv = v;
      best = k;
    }
  }
  *choice = best;
  *score = p[best];
}

}  // namespace

// ---- ResNorm -----------------------------------------------------------------------------------------

void ResNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  // inputs: h, [r], hb, hs, [rb, rs], w
  enc.dispatch(traced(name(), [in, ro = out[0].data<float>(), xo = out[1].data<float>(), d = d_]() {
    std::vector<char> sh, sr;
    const float* h = static_cast<const float*>(row_major(in[0], sh));
    size_t k = 1;
    const float* r = d.has_r ? static_cast<const float*>(row_major(in[k++], sr)) : nullptr;
    const float* hb = in[k++].data<float>();
    const float* hs = in[k++].data<float>();
    const float* rb = d.has_rsb ? in[k++].data<float>() : nullptr;
    const float* rs = d.has_rsb ? in[k++].data<float>() : nullptr;
    const float* w = in[k++].data<float>();
    const int H = d.H;
    parallel_for(d.rows, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const float* hr = h + row * H;
        float* o = ro + row * H;
        for (int i = 0; i < H; ++i) o[i] = (hr[i] + hb[i]) * hs[i];
        if (r) {
          const float* rr = r + row * H;
          if (rb)
            for (int i = 0; i < H; ++i) o[i] = (rr[i] + rb[i]) * rs[i] + o[i];
          else
            for (int i = 0; i < H; ++i) o[i] = rr[i] + o[i];
        }
        rms_norm_row(o, w, H, d.eps, xo + row * H);
      }
    });
  }));
}

// ---- Router ------------------------------------------------------------------------------------------

void Router::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  // inputs: x, down_w, down_b, norm_w, w0, b0, w2, b2, w4, balancing, [prev, states_scale]
  enc.dispatch(traced(name(), [in, choice = out[0].data<int32_t>(), score = out[1].data<float>(), state = out[2].data<float>(),
                probs = out[3].data<float>(), skipped = out[4].data<int32_t>(), d = d_, tab = tab_]() {
    std::vector<char> sx, sp;
    const float* x = static_cast<const float*>(row_major(in[0], sx));
    const float* db = in[2].data<float>();
    const float* nw = in[3].data<float>();
    const float* b0 = in[5].data<float>();
    const float* b2 = in[7].data<float>();
    const float* bal = in[9].data<float>();
    const float* prev = d.has_prev ? static_cast<const float*>(row_major(in[10], sp)) : nullptr;
    const float* ss = d.has_prev ? in[11].data<float>() : nullptr;
    const kern::DenseMat down{in[1].data<void>(), d.down_t, d.H};
    const kern::DenseMat m0{in[4].data<void>(), d.w0_t, d.R};
    const kern::DenseMat m2{in[6].data<void>(), d.w2_t, d.R};
    const kern::DenseMat m4{in[8].data<void>(), d.w4_t, d.R};
    const int64_t N = d.N;
    const int R = d.R, L = d.L;
    const kern::DenseRowsFn dense_rows = d.bf16 ? tab->dense_rows_bf16 : tab->dense_rows;
    // the bf16 precision's vector GELU where its matmuls run bf16 (prefill-sized calls)
    const kern::GeluBiasFn gelu_bias = d.bf16 ? tab->gelu_bias_bf16 : nullptr;

    // r = W_d x + b_d over all tokens, threads splitting the rows of W_d
    {
      std::vector<const float*> xs(N);
      std::vector<float*> ys(N);
      for (int64_t n = 0; n < N; ++n) {
        xs[n] = x + n * d.H;
        ys[n] = state + n * R;
      }
      parallel_for(R, 32, [&](int64_t r0, int64_t r1) {
        dense_rows(down, (int)r0, (int)r1, xs.data(), ys.data(), (int)N);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t r = r0; r < r1; ++r) ys[n][r] += db[r];
        // the same share of the MLP's rows into this core's cache: the split below is the same
        for (const kern::DenseMat* m : {&m0, &m2}) {
          const size_t row = (size_t)R * (m->type == kern::kF32 ? 4 : 2);
          const char* b = static_cast<const char*>(m->w);
          kern::prefetch_l2(b + (size_t)r0 * row, b + (size_t)r1 * row);
        }
      }, kStreamChunks);
    }
    // the MLP over all tokens: the threads split each layer's rows (at decode, one token, this is the
    // only split there is; the W_d pass above prefetched each thread's share of m0 and m2)
    std::vector<float> nb(N * R), a1(N * R), a2(N * R), lg(N * L);
    parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        float* r = state + n * R;
        if (prev) {
          const float* p = prev + n * R;
          for (int k = 0; k < R; ++k) r[k] = r[k] + p[k] * ss[k];
        }
        rms_norm_row(r, nw, R, d.eps, nb.data() + n * R);
      }
    });
    std::vector<const float*> xs(N);
    std::vector<float*> ys(N);
    // dst = gelu(m · src + bias), or m · src without a bias
    auto layer = [&](const kern::DenseMat& m, int rows, const float* src, float* dst, const float* bias) {
      for (int64_t n = 0; n < N; ++n) {
        xs[n] = src + n * R;
        ys[n] = dst + n * rows;
      }
      parallel_for(rows, 32, [&](int64_t r0, int64_t r1) {
        dense_rows(m, (int)r0, (int)r1, xs.data(), ys.data(), (int)N);
        if (bias && gelu_bias && kern::dense_bf16_rows((int)N, m.in))
          for (int64_t n = 0; n < N; ++n) gelu_bias(ys[n] + r0, bias + r0, r1 - r0);
        else if (bias)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t i = r0; i < r1; ++i) ys[n][i] = gelu(ys[n][i] + bias[i]);
      }, kStreamChunks);
    };
    layer(m0, R, nb.data(), a1.data(), b0);
    layer(m2, R, a1.data(), a2.data(), b2);
    layer(m4, L, a2.data(), lg.data(), nullptr);
    parallel_for(N, 8, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) route(lg.data() + n * L, bal, L, probs + n * L, choice + n, score + n);
    });
    int32_t sk = 0;
    for (int64_t n = 0; n < N; ++n) sk += choice[n] >= d.E ? 1 : 0;
    *skipped = sk;
  }));
}

// ---- MoeCombine --------------------------------------------------------------------------------------

void MoeCombine::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  enc.dispatch(traced(name(), [in, y = out[0].data<float>(), d = d_]() {
    std::vector<char> s0, s1, s2, s3;
    const float* ey = static_cast<const float*>(row_major(in[0], s0));
    const float* x = static_cast<const float*>(row_major(in[1], s1));
    const int32_t* c = static_cast<const int32_t*>(row_major(in[2], s2));
    const float* p = static_cast<const float*>(row_major(in[3], s3));
    const int H = d.H;
    // rows over the threads in chunks of at least 32 (prefill; a decode step's few rows cost less than a fork)
    parallel_for(d.N, 32, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        float* o = y + n * H;
        const float sc = p[n];
        if (c[n] >= 0 && c[n] < d.E) {
          const float* e = ey + n * H;
          for (int i = 0; i < H; ++i) o[i] = e[i] * sc;
        } else if (d.zero_skip) {
          std::memset(o, 0, sizeof(float) * H);
        } else {
          const float* xr = x + n * H;
          for (int i = 0; i < H; ++i) o[i] = xr[i] * sc;
        }
      }
    });
  }));
}

}  // namespace zaya
