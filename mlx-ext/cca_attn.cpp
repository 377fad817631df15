// The CCA attention half-layer after its projections (docs/model.md §3.2 steps 2–7, §3.3) as two
// MLX primitives:
//
//   * cca_qk: the two-stage causal conv over [q̃ ‖ k̃] with the carried frames, the mean paths, the fp32
//     L2 normalisation to √D with the key temperature, partial NeoX RoPE at the absolute position, and
//     the values laid out per KV head. Outputs q [B, Hq, T, D], k [B, Hk, T, D], v [B, Hk, T, D] and
//     the new conv state [B, C, S].
//   * cca_attention: causal GQA softmax attention of q over the first `len` positions of the KV cache
//     arrays (any capacity), scale 1/√D, fp32; output [B, T, Hq·D] (heads concatenated, o_proj's input).
//
// CPU kernels: the grouped conv runs as one GEMV/GEMM per group through the dense leaf kernel (weights
// read as stored, f16/bf16/f32); attention computes scores with the dense kernel over key rows and the
// values with the pv kernel, threads splitting (batch, KV head, query block). Portable paths: the plain
// MLX ops of the reference (conv1d, hadamard-free elementwise chain, fast::rope, fast::sdpa).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "common.h"
#include "simd_kernels.h"

namespace zaya {
namespace {

struct QkDims {
  int B, T, C, K0, K1, S, Cg, G;
  int Hq, Hk, D, rd;
  int clamp_temp;
  int offset;
  // per-sequence positions of the first frame (size B; empty: `offset` for every sequence)
  std::vector<int> row_offsets;
  float theta;
  int w0_t, b0_t, w1_t, b1_t, temp_t;
  int offset_of(int64_t b) const { return row_offsets.empty() ? offset : row_offsets[(size_t)b]; }
};

// ---- cca_qk kernel ---------------------------------------------------------------------------------

struct QkOut {
  float *q, *k, *v, *ns;
};

void run_cca_qk(const std::vector<mx::array>& in, QkOut o, const QkDims& d, const kern::Table* tab) {
  std::vector<char> s_u, s_st, s_w0, s_b0, s_w1, s_b1, s_t, s_v;
  const float* u = static_cast<const float*>(row_major(in[0], s_u));
  const float* st = static_cast<const float*>(row_major(in[1], s_st));
  const void* w0 = row_major(in[2], s_w0);
  const void* b0 = row_major(in[3], s_b0);
  const void* w1 = row_major(in[4], s_w1);
  const void* b1 = row_major(in[5], s_b1);
  const void* tmp = row_major(in[6], s_t);
  const float* vals = static_cast<const float*>(row_major(in[7], s_v));

  const int64_t C = d.C, T = d.T, S = d.S, K0 = d.K0, K1 = d.K1, Cg = d.Cg, D = d.D;
  const int64_t L = T + S, La = T + K1 - 1;
  const int Hq = d.Hq, Hk = d.Hk, g = d.Hq / d.Hk;
  // small parameters in f32: w0 transposed to [K0][C], the biases, the effective temperature
  std::vector<float> w0t(K0 * C), b0f(C), b1f(C), temp(Hk);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < K0; ++k) w0t[k * C + c] = kern::load_float(w0, d.w0_t, c * K0 + k);
    b0f[c] = kern::load_float(b0, d.b0_t, c);
    b1f[c] = kern::load_float(b1, d.b1_t, c);
  }
  for (int j = 0; j < Hk; ++j) {
    const float t = kern::load_float(tmp, d.temp_t, j);
    temp[j] = d.clamp_temp ? std::exp(std::min(std::max(t, 1e-7f), 2.0f)) : t;
  }
  // RoPE tables as MLX's rope computes them in f32: inv_i = exp(-i·(log θ / half)), angle = pos·inv_i;
  // one table for all sequences, or per sequence when each has its own position
  const int half = d.rd / 2;
  std::vector<float> cs((size_t)T * half), sn((size_t)T * half);
  auto fill_tables = [&](int64_t b) {
    if (half == 0) return;
    const float coef = std::log(d.theta) / (float)half;
    for (int64_t t = 0; t < T; ++t) {
      const float pos = (float)t + (float)d.offset_of(b);
      for (int i = 0; i < half; ++i) {
        const float inv = std::exp((float)(-i) * coef);
        const float ang = pos * inv;
        cs[t * half + i] = std::cos(ang);
        sn[t * half + i] = std::sin(ang);
      }
    }
  };
  fill_tables(0);
  const float sqrt_d = std::sqrt((float)D);
  const kern::DenseMat m1{w1, d.w1_t, (int)(K1 * Cg)};
  std::vector<float> P(L * C), A(La * C), Z(T * C);
  for (int64_t b = 0; b < d.B; ++b) {
    if (b > 0 && !d.row_offsets.empty()) fill_tables(b);
    const float* ub = u + b * T * C;
    const float* sb = st + b * C * S;
    // P, time-major [L, C]: the carried frames then u
    for (int64_t i = 0; i < S; ++i)
      for (int64_t c = 0; c < C; ++c) P[i * C + c] = sb[c * S + i];
    std::memcpy(P.data() + S * C, ub, sizeof(float) * T * C);
    // depthwise conv 0
    for (int64_t i = 0; i < La; ++i) {
      float* ai = A.data() + i * C;
      for (int64_t c = 0; c < C; ++c) ai[c] = b0f[c];
      for (int64_t k = 0; k < K0; ++k) {
        const float* pk = P.data() + (i + k) * C;
        const float* wk = w0t.data() + k * C;
        for (int64_t c = 0; c < C; ++c) ai[c] += wk[c] * pk[c];
      }
    }
    // grouped conv 1: per group, z[t, g0 + r] = w1[g0 + r, :] · [a_t[g] ‖ a_{t+1}[g] ‖ …] + b1
    const int64_t work = T * C * K1 * Cg;
    parallel_for(d.G, work >= (1 << 18) ? 1 : d.G, [&](int64_t g0, int64_t g1) {
      std::vector<float> X(T * K1 * Cg);
      std::vector<const float*> xs(T);
      std::vector<float*> ys(T);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t c0 = grp * Cg;
        for (int64_t t = 0; t < T; ++t) {
          float* xt = X.data() + t * K1 * Cg;
          for (int64_t k = 0; k < K1; ++k) std::memcpy(xt + k * Cg, A.data() + (t + k) * C + c0, sizeof(float) * Cg);
          xs[t] = xt;
          ys[t] = Z.data() + t * C;
        }
        tab->dense_rows(m1, (int)c0, (int)(c0 + Cg), xs.data(), ys.data(), (int)T);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = c0; c < c0 + Cg; ++c) Z[t * C + c] += b1f[c];
      }
    }, kStreamChunks);
    // mean paths, L2 normalisation, temperature, RoPE, output layouts
    parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
      std::vector<float> qm(Hq * D), row(D);
      auto rope = [&](float* v, int64_t t) {
        for (int i = 0; i < half; ++i) {
          const float x1 = v[i], x2 = v[i + half];
          const float c = cs[t * half + i], s = sn[t * half + i];
          v[i] = x1 * c - x2 * s;
          v[i + half] = x1 * s + x2 * c;
        }
      };
      auto l2_scale = [&](const float* v) {
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= D; i += 8)
          for (int k = 0; k < 8; ++k) acc[k] += v[i + k] * v[i + k];
        float s2 = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; i < D; ++i) s2 += v[i] * v[i];
        return sqrt_d / std::max(std::sqrt(s2), 1e-6f);
      };
      for (int64_t t = t0; t < t1; ++t) {
        const float* qt = ub + t * C;               // pre-conv q̃
        const float* kt = ub + t * C + Hq * D;      // pre-conv k̃
        const float* zt = Z.data() + t * C;
        for (int h = 0; h < Hq; ++h) {
          const float* kh = kt + (h / g) * D;
          float* m = qm.data() + h * D;
          for (int64_t i = 0; i < D; ++i) m[i] = (qt[h * D + i] + kh[i]) * 0.5f;
          for (int64_t i = 0; i < D; ++i) row[i] = zt[h * D + i] + m[i];
          const float f = l2_scale(row.data());
          float* qo = o.q + ((b * Hq + h) * T + t) * D;
          for (int64_t i = 0; i < D; ++i) qo[i] = row[i] * f;
          rope(qo, t);
        }
        const float inv_g = 1.0f / (float)g;
        for (int j = 0; j < Hk; ++j) {
          for (int64_t i = 0; i < D; ++i) {
            float s = qm[(j * g) * D + i];
            for (int r = 1; r < g; ++r) s += qm[(j * g + r) * D + i];
            row[i] = zt[Hq * D + j * D + i] + s * inv_g;
          }
          const float f = l2_scale(row.data());
          float* ko = o.k + ((b * Hk + j) * T + t) * D;
          for (int64_t i = 0; i < D; ++i) ko[i] = (row[i] * f) * temp[j];
          rope(ko, t);
          std::memcpy(o.v + ((b * Hk + j) * T + t) * D, vals + (b * T + t) * Hk * D + j * D, sizeof(float) * D);
        }
      }
    });
    // new state: the last S frames of P, channel-major
    float* nb = o.ns + b * C * S;
    for (int64_t i = 0; i < S; ++i)
      for (int64_t c = 0; c < C; ++c) nb[c * S + i] = P[(T + i) * C + c];
  }
}

class CcaQk : public CpuPrimitive {
 public:
  CcaQk(mx::Stream s, QkDims d, const kern::Table* tab) : CpuPrimitive(s), d_(d), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override {
    auto& enc = cpu_encoder(stream(), in, out);
    QkOut o{out[0].data<float>(), out[1].data<float>(), out[2].data<float>(), out[3].data<float>()};
    enc.dispatch(traced(name(), [in, o, d = d_, tab = tab_]() { run_cca_qk(in, o, d, tab); }));
  }
  const char* name() const override { return "ZayaCcaQk"; }
  auto state() const {
    return std::make_tuple(d_.B, d_.T, d_.C, d_.K0, d_.K1, d_.S, d_.Cg, d_.G, d_.Hq, d_.Hk, d_.D, d_.rd,
                           d_.clamp_temp, d_.offset, d_.row_offsets, d_.theta, d_.w0_t, d_.b0_t, d_.w1_t, d_.b1_t,
                           d_.temp_t, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return shapes(d_); }
  static std::vector<mx::Shape> shapes(const QkDims& d) {
    return {{d.B, d.Hq, d.T, d.D}, {d.B, d.Hk, d.T, d.D}, {d.B, d.Hk, d.T, d.D}, {d.B, d.C, d.S}};
  }

 private:
  QkDims d_;
  const kern::Table* tab_;
};

std::vector<mx::array> cca_qk_portable(const mx::array& u, const mx::array& state, const mx::array& w0,
                                       const mx::array& b0, const mx::array& w1, const mx::array& b1,
                                       const mx::array& temp, const mx::array& values, const QkDims& d,
                                       mx::Stream s) {
  const int B = d.B, T = d.T, Hq = d.Hq, Hk = d.Hk, D = d.D, g = d.Hq / d.Hk;
  auto f32 = [&](const mx::array& a) { return mx::astype(a, mx::float32, s); };
  // conv: P = [state frames ‖ u], depthwise conv 0, grouped conv 1
  auto padded = mx::concatenate({mx::transpose(state, {0, 2, 1}, s), u}, 1, s);
  auto a = mx::add(mx::conv1d(padded, f32(w0), 1, 0, 1, d.C, s), f32(b0), s);
  auto z = mx::add(mx::conv1d(a, f32(w1), 1, 0, 1, d.G, s), f32(b1), s);
  auto tail = mx::slice(padded, {0, T, 0}, {B, T + d.S, d.C}, s);
  auto new_state = mx::contiguous(mx::transpose(tail, {0, 2, 1}, s), false, s);
  // mean paths
  auto q_pre = mx::reshape(mx::slice(u, {0, 0, 0}, {B, T, Hq * D}, s), {B, T, Hq, D}, s);
  auto k_pre = mx::reshape(mx::slice(u, {0, 0, Hq * D}, {B, T, d.C}, s), {B, T, Hk, D}, s);
  auto k_rep = mx::reshape(mx::broadcast_to(mx::reshape(k_pre, {B, T, Hk, 1, D}, s), {B, T, Hk, g, D}, s),
                           {B, T, Hq, D}, s);
  auto q_mean = mx::multiply(mx::add(q_pre, k_rep, s), mx::array(0.5f), s);
  auto k_mean = mx::mean(mx::reshape(q_mean, {B, T, Hk, g, D}, s), 3, false, s);
  auto zq = mx::reshape(mx::slice(z, {0, 0, 0}, {B, T, Hq * D}, s), {B, T, Hq, D}, s);
  auto zk = mx::reshape(mx::slice(z, {0, 0, Hq * D}, {B, T, d.C}, s), {B, T, Hk, D}, s);
  auto q = mx::add(zq, q_mean, s);
  auto k = mx::add(zk, k_mean, s);
  // L2 to √D, temperature
  auto sqrt_d = mx::array(std::sqrt((float)D));
  auto l2 = [&](const mx::array& v) {
    return mx::maximum(mx::sqrt(mx::sum(mx::square(v, s), -1, true, s), s), mx::array(1e-6f), s);
  };
  q = mx::multiply(q, mx::divide(sqrt_d, l2(q), s), s);
  auto t_eff = f32(temp);
  if (d.clamp_temp) t_eff = mx::exp(mx::clip(t_eff, mx::array(1e-7f), mx::array(2.0f), s), s);
  k = mx::multiply(mx::multiply(k, mx::divide(sqrt_d, l2(k), s), s), mx::reshape(t_eff, {1, 1, Hk, 1}, s), s);
  auto v = mx::reshape(values, {B, T, Hk, D}, s);
  q = mx::transpose(q, {0, 2, 1, 3}, s);
  k = mx::transpose(k, {0, 2, 1, 3}, s);
  v = mx::transpose(v, {0, 2, 1, 3}, s);
  if (d.rd > 0) {
    // per-sequence positions: rope each sequence at its own offset (the reference form)
    auto rope = [&](const mx::array& x) {
      if (d.row_offsets.empty()) return mx::fast::rope(x, d.rd, false, d.theta, 1.0f, d.offset, std::nullopt, s);
      std::vector<mx::array> rows;
      for (int b = 0; b < B; ++b) {
        auto xb = mx::slice(x, {b, 0, 0, 0}, {b + 1, x.shape(1), T, D}, s);
        rows.push_back(mx::fast::rope(xb, d.rd, false, d.theta, 1.0f, d.offset_of(b), std::nullopt, s));
      }
      return mx::concatenate(rows, 0, s);
    };
    q = rope(q);
    k = rope(k);
  }
  return {mx::contiguous(q, false, s), mx::contiguous(k, false, s), mx::contiguous(v, false, s), new_state};
}

// ---- attention -------------------------------------------------------------------------------------

struct AttnDims {
  int B, Hq, Hk, T, D, cap, len;  // len: the valid positions (the largest of `lens` when given)
  float scale;
  int flat;  // output [B·T, Hq·D] instead of [B, T, Hq·D]
  // per-sequence valid positions (size B; empty: `len` for every sequence). Sequence b reads row b of
  // the KV storage, which may hold more rows than B.
  std::vector<int> lens;
  int64_t len_of(int64_t b) const { return lens.empty() ? len : lens[(size_t)b]; }
};

void run_attention(const std::vector<mx::array>& in, float* out, const AttnDims& d, const kern::Table* tab) {
  std::vector<char> s_q, s_k, s_v;
  const float* q = static_cast<const float*>(row_major(in[0], s_q));
  const float* K = static_cast<const float*>(row_major(in[1], s_k));
  const float* V = static_cast<const float*>(row_major(in[2], s_v));
  const int g = d.Hq / d.Hk;
  const int64_t D = d.D, T = d.T;
  // query blocks: bound the score scratch (rows × keys) to ~4M floats
  const int64_t tb = std::max<int64_t>(1, std::min<int64_t>(32, (int64_t(4) << 20) / ((int64_t)g * d.len)));
  const int64_t nblk = (T + tb - 1) / tb;
  const int64_t tasks = (int64_t)d.B * d.Hk * nblk;
  // Blocks of many query rows compute their scores as q·Kᵀ against transposed keys (the pv kernel's
  // broadcast-FMA form, no horizontal sums), shared by the blocks of one (batch, KV head); a few query
  // rows (decode) use the dot-product kernel on the keys as stored.
  const bool transposed = (int64_t)tb * g >= 16 && T > 1;
  std::vector<float> kt;
  if (transposed) {
    kt.resize((size_t)d.B * d.Hk * D * d.len);
    parallel_for((int64_t)d.B * d.Hk, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t bh = h0; bh < h1; ++bh) {
        const float* src = K + bh * (int64_t)d.cap * D;
        float* dst = kt.data() + bh * D * d.len;
        const int64_t n = d.len_of(bh / d.Hk);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < D; ++i) dst[i * d.len + j] = src[j * D + i];
      }
    });
  }
  parallel_for(tasks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> qs, sc;
    std::vector<const float*> xs;
    std::vector<float*> ys;
    std::vector<float*> os;
    for (int64_t task = k0; task < k1; ++task) {
      const int64_t blk = task % nblk, bh = task / nblk;
      const int64_t b = bh / d.Hk, kh = bh % d.Hk;
      const int64_t t0 = blk * tb, t1 = std::min<int64_t>(T, t0 + tb);
      const int64_t nt = (t1 - t0) * g;
      const int64_t offset = d.len_of(b) - T;  // position of query 0
      const int64_t nk = offset + t1;
      qs.resize(nt * D);
      sc.resize(nt * nk);
      xs.resize(nt);
      ys.resize(nt);
      os.resize(nt);
      for (int64_t t = t0; t < t1; ++t)
        for (int hl = 0; hl < g; ++hl) {
          const int64_t r = (t - t0) * g + hl;
          const int64_t h = kh * g + hl;
          const float* src = q + ((b * d.Hq + h) * T + t) * D;
          float* dst = qs.data() + r * D;
          for (int64_t i = 0; i < D; ++i) dst[i] = d.scale * src[i];
          xs[r] = dst;
          ys[r] = sc.data() + r * nk;
          os[r] = out + ((b * T + t) * d.Hq + h) * D;
        }
      const float* Kb = K + (b * d.Hk + kh) * (int64_t)d.cap * D;
      const float* Vb = V + (b * d.Hk + kh) * (int64_t)d.cap * D;
      if (transposed)
        tab->pv_rows(kt.data() + (b * d.Hk + kh) * D * d.len, d.len, (int)D, (int)nk, xs.data(), ys.data(), (int)nt);
      else
        tab->dense_rows(kern::DenseMat{Kb, kern::kF32, (int)D}, 0, (int)nk, xs.data(), ys.data(), (int)nt);
      for (int64_t r = 0; r < nt; ++r) {
        const int64_t valid = offset + t0 + r / g + 1;  // causal: keys 0 ..= position
        tab->softmax_row(ys[r], (int)valid, (int)nk);
      }
      tab->pv_rows(Vb, (int)D, (int)nk, (int)D, const_cast<const float* const*>(ys.data()), os.data(), (int)nt);
    }
  });
}

class CcaAttention : public CpuPrimitive {
 public:
  CcaAttention(mx::Stream s, AttnDims d, const kern::Table* tab) : CpuPrimitive(s), d_(d), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override {
    auto& enc = cpu_encoder(stream(), in, out);
    enc.dispatch(traced(name(), [in, y = out[0].data<float>(), d = d_, tab = tab_]() { run_attention(in, y, d, tab); }));
  }
  const char* name() const override { return "ZayaCcaAttention"; }
  auto state() const {
    return std::make_tuple(d_.B, d_.Hq, d_.Hk, d_.T, d_.D, d_.cap, d_.len, d_.scale, d_.flat, d_.lens, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {shape(d_)}; }
  static mx::Shape shape(const AttnDims& d) {
    return d.flat ? mx::Shape{d.B * d.T, d.Hq * d.D} : mx::Shape{d.B, d.T, d.Hq * d.D};
  }

 private:
  AttnDims d_;
  const kern::Table* tab_;
};

}  // namespace
}  // namespace zaya

extern "C" int zaya_cca_qk(mlx_array* q_out, mlx_array* k_out, mlx_array* v_out, mlx_array* state_out, mlx_array u_h,
                           mlx_array state_h, mlx_array w0_h, mlx_array b0_h, mlx_array w1_h, mlx_array b1_h,
                           mlx_array temp_h, mlx_array values_h, int q_heads, int kv_heads, int rotary_dim,
                           float rope_theta, int clamp_temp, int offset, const int32_t* row_offsets,
                           size_t n_row_offsets, int mode, mlx_stream stream) {
  using namespace zaya;
  return guard("cca_qk", [&] {
    auto s = get(stream);
    auto& u = get(u_h, "u");
    auto& state = get(state_h, "conv_state");
    auto& w0 = get(w0_h, "conv_qk.0.weight");
    auto& b0 = get(b0_h, "conv_qk.0.bias");
    auto& w1 = get(w1_h, "conv_qk.1.weight");
    auto& b1 = get(b1_h, "conv_qk.1.bias");
    auto& temp = get(temp_h, "temp");
    auto& values = get(values_h, "values");
    QkDims d{};
    expect_dtype(u, mx::float32, "u");
    expect_ndim(state, 3, "conv_state");
    if (u.ndim() == 3) {
      d.B = u.shape(0);
      d.T = u.shape(1);
    } else if (u.ndim() == 2 && state.shape(0) > 0 && u.shape(0) % state.shape(0) == 0) {
      // rows of B sequences, T frames each (B from the state)
      d.B = state.shape(0);
      d.T = u.shape(0) / d.B;
    } else {
      fail("u must be [B, T, C], or [B·T, C] with B = conv_state's batch, got " + shape_str(u.shape()) +
           " with conv_state " + shape_str(state.shape()));
    }
    d.C = u.shape(-1);
    if (d.T < 1) fail("u has no frames (T = 0)");
    if (q_heads < 1 || kv_heads < 1 || q_heads % kv_heads != 0)
      fail("q_heads " + std::to_string(q_heads) + " must be a positive multiple of kv_heads " +
           std::to_string(kv_heads));
    d.Hq = q_heads;
    d.Hk = kv_heads;
    if (d.C % (q_heads + kv_heads) != 0)
      fail("u's width " + std::to_string(d.C) + " is not (q_heads + kv_heads)·head_dim for " +
           std::to_string(q_heads) + " + " + std::to_string(kv_heads) + " heads");
    d.D = d.C / (q_heads + kv_heads);
    expect_ndim(w0, 3, "conv_qk.0.weight");
    expect_ndim(w1, 3, "conv_qk.1.weight");
    d.K0 = w0.shape(1);
    d.K1 = w1.shape(1);
    d.Cg = w1.shape(2);
    d.S = (d.K0 - 1) + (d.K1 - 1);
    if (d.K0 < 1 || d.K1 < 1) fail("conv kernels must have at least one tap");
    if (w0.shape(0) != d.C || w0.shape(2) != 1)
      fail("conv_qk.0.weight must be [C, K0, 1] = [" + std::to_string(d.C) + ", K0, 1] (MLX layout), got " +
           shape_str(w0.shape()));
    if (w1.shape(0) != d.C || d.Cg < 1 || d.C % d.Cg != 0)
      fail("conv_qk.1.weight must be [C, K1, C/G] with C = " + std::to_string(d.C) + " (MLX layout), got " +
           shape_str(w1.shape()));
    d.G = d.C / d.Cg;
    if (b0.ndim() != 1 || b0.shape(0) != d.C)
      fail("conv_qk.0.bias must be [" + std::to_string(d.C) + "], got " + shape_str(b0.shape()));
    if (b1.ndim() != 1 || b1.shape(0) != d.C)
      fail("conv_qk.1.bias must be [" + std::to_string(d.C) + "], got " + shape_str(b1.shape()));
    d.w0_t = float_type_of(w0, "conv_qk.0.weight");
    d.b0_t = float_type_of(b0, "conv_qk.0.bias");
    d.w1_t = float_type_of(w1, "conv_qk.1.weight");
    d.b1_t = float_type_of(b1, "conv_qk.1.bias");
    d.temp_t = float_type_of(temp, "temp");
    if (temp.ndim() != 1 || temp.shape(0) != d.Hk)
      fail("temp must be [kv_heads] = [" + std::to_string(d.Hk) + "], got " + shape_str(temp.shape()));
    expect_dtype(state, mx::float32, "conv_state");
    if (state.shape() != mx::Shape{d.B, d.C, d.S})
      fail("conv_state must be [B, C, S] = [" + std::to_string(d.B) + ", " + std::to_string(d.C) + ", " +
           std::to_string(d.S) + "], got " + shape_str(state.shape()));
    expect_dtype(values, mx::float32, "values");
    if (values.size() != (size_t)d.B * d.T * d.Hk * d.D || values.ndim() < 2 || values.shape(-1) != d.Hk * d.D)
      fail("values must be [B, T, kv_heads·head_dim] = [" + std::to_string(d.B) + ", " + std::to_string(d.T) + ", " +
           std::to_string(d.Hk * d.D) + "], got " + shape_str(values.shape()));
    if (rotary_dim < 0 || rotary_dim % 2 != 0 || rotary_dim > d.D)
      fail("rotary_dim " + std::to_string(rotary_dim) + " must be even and at most head_dim " + std::to_string(d.D));
    if (offset < 0) fail("offset must be non-negative");
    if (n_row_offsets > 0) {
      if (!row_offsets || n_row_offsets != (size_t)d.B)
        fail("row offsets: " + std::to_string(n_row_offsets) + " given for " + std::to_string(d.B) + " sequences");
      for (size_t i = 0; i < n_row_offsets; ++i) {
        if (row_offsets[i] < 0) fail("row offset " + std::to_string(row_offsets[i]) + " must be non-negative");
        d.row_offsets.push_back(row_offsets[i]);
      }
    }
    d.rd = rotary_dim;
    d.theta = rope_theta;
    d.clamp_temp = clamp_temp ? 1 : 0;
    d.offset = offset;
    std::vector<mx::array> outs;
    if (use_primitive(mode, s, "CcaQk")) {
      outs = mx::array::make_arrays(CcaQk::shapes(d), {mx::float32, mx::float32, mx::float32, mx::float32},
                                    std::make_shared<CcaQk>(s, d, kern::best_table()),
                                    {u, state, w0, b0, w1, b1, temp, values});
    } else {
      // the reference graph takes [B, T, ·] (rows input reshaped)
      outs = cca_qk_portable(mx::reshape(u, {d.B, d.T, d.C}, s), state, w0, b0, w1, b1, temp,
                             mx::reshape(values, {d.B, d.T, d.Hk * d.D}, s), d, s);
    }
    set(q_out, outs[0]);
    set(k_out, outs[1]);
    set(v_out, outs[2]);
    set(state_out, outs[3]);
  });
}

namespace zaya {
namespace {

// Checks q/k/v and fills the shape fields of the attention dims; `rows_ok`: the storage may hold more
// sequences than the queries (ragged batches read row b for sequence b).
AttnDims attention_dims(const mx::array& q, const mx::array& k, const mx::array& v, bool rows_ok) {
  for (auto [a, n] : {std::pair{&q, "queries"}, {&k, "keys"}, {&v, "values"}}) {
    expect_dtype(*a, mx::float32, n);
    expect_ndim(*a, 4, n);
  }
  AttnDims d{};
  d.B = q.shape(0);
  d.Hq = q.shape(1);
  d.T = q.shape(2);
  d.D = q.shape(3);
  d.Hk = k.shape(1);
  d.cap = k.shape(2);
  const bool rows_fit = rows_ok ? k.shape(0) >= d.B : k.shape(0) == d.B;
  if (!rows_fit || k.shape(3) != d.D || d.Hk < 1 || d.Hq % d.Hk != 0)
    fail("keys must be [" + std::string(rows_ok ? "≥ B" : "B") + ", Hk, capacity, D] with B = " + std::to_string(d.B) +
         ", D = " + std::to_string(d.D) + " and Hk dividing the " + std::to_string(d.Hq) + " query heads, got " +
         shape_str(k.shape()));
  if (v.shape() != k.shape()) fail("values must have the keys' shape " + shape_str(k.shape()) + ", got " + shape_str(v.shape()));
  if (d.T < 1) fail("no queries (T = 0)");
  return d;
}

void check_len(const AttnDims& d, int64_t len) {
  if (len < d.T || len > d.cap)
    fail("len " + std::to_string(len) + " must cover the " + std::to_string(d.T) +
         " queries and fit the cache capacity " + std::to_string(d.cap));
}

mx::array attention_op(const mx::array& q, const mx::array& k, const mx::array& v, const AttnDims& d, int mode,
                       mx::Stream s) {
  if (use_primitive(mode, s, "CcaAttention"))
    return mx::array(CcaAttention::shape(d), mx::float32, std::make_shared<CcaAttention>(s, d, kern::best_table()),
                     {q, k, v});
  // portable: scaled_dot_product_attention per sequence over its valid keys (bottom-right causal)
  std::vector<mx::array> rows;
  const int nb = d.lens.empty() ? 1 : d.B;
  for (int b = 0; b < nb; ++b) {
    const int len = (int)d.len_of(b);
    const int b0 = d.lens.empty() ? 0 : b, b1 = d.lens.empty() ? d.B : b + 1;
    auto qq = d.lens.empty() ? q : mx::slice(q, {b0, 0, 0, 0}, {b1, d.Hq, d.T, d.D}, s);
    auto kk = mx::slice(k, {b0, 0, 0, 0}, {b1, d.Hk, len, d.D}, s);
    auto vv = mx::slice(v, {b0, 0, 0, 0}, {b1, d.Hk, len, d.D}, s);
    rows.push_back(mx::fast::scaled_dot_product_attention(qq, kk, vv, d.scale, d.T > 1 ? "causal" : "", std::nullopt,
                                                          std::nullopt, false, s));
  }
  auto o = rows.size() == 1 ? rows[0] : mx::concatenate(rows, 0, s);
  return mx::reshape(mx::transpose(o, {0, 2, 1, 3}, s), CcaAttention::shape(d), s);
}

// ---- ragged KV append -------------------------------------------------------------------------------

struct AppendDims {
  int N, Hk, T, D, rows, cap;
  std::vector<int> starts;  // per sequence: the position its T new frames go to
};

// Writes new [N, Hk, T, D] into rows 0..N of the storage [rows, Hk, cap, D] at each sequence's own
// position. The output takes over the storage's buffer when nothing else holds it (as MLX's
// SliceUpdate does), so a decode step writes N·Hk·T·D floats instead of copying the cache.
class KvAppendRows : public CpuPrimitive {
 public:
  KvAppendRows(mx::Stream s, AppendDims d) : CpuPrimitive(s), d_(std::move(d)) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& out = outs[0];
    auto& store = in[0];
    const bool donate = store.flags().row_contiguous && store.is_donatable() && store.itemsize() == out.itemsize();
    if (donate)
      out.copy_shared_buffer(store);
    else
      out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : in) enc.set_input_array(a);
    enc.set_output_array(out);
    enc.dispatch(traced(name(), [in, y = out.data<float>(), donate, d = d_]() {
      const int64_t D = d.D, cap = d.cap, T = d.T;
      if (!donate) {
        std::vector<char> scratch;
        const float* src = static_cast<const float*>(row_major(in[0], scratch));
        std::memcpy(y, src, sizeof(float) * (size_t)d.rows * d.Hk * cap * D);
      }
      std::vector<char> s_new;
      const float* nw = static_cast<const float*>(row_major(in[1], s_new));
      for (int64_t b = 0; b < d.N; ++b)
        for (int64_t h = 0; h < d.Hk; ++h)
          std::memcpy(y + ((b * d.Hk + h) * cap + d.starts[(size_t)b]) * D, nw + ((b * d.Hk + h) * T) * D,
                      sizeof(float) * (size_t)(T * D));
    }));
  }
  const char* name() const override { return "ZayaKvAppendRows"; }
  auto state() const { return std::make_tuple(d_.N, d_.Hk, d_.T, d_.D, d_.rows, d_.cap, d_.starts); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }

 private:
  AppendDims d_;
};

mx::array append_rows_op(const mx::array& store, const mx::array& fresh, const AppendDims& d, int mode, mx::Stream s) {
  auto f = mx::astype(fresh, mx::float32, s);
  if (use_primitive(mode, s, "KvAppendRows"))
    return mx::array(store.shape(), mx::float32, std::make_shared<KvAppendRows>(s, d), {store, f});
  auto out = store;
  for (int b = 0; b < d.N; ++b) {
    auto row = mx::slice(f, {b, 0, 0, 0}, {b + 1, d.Hk, d.T, d.D}, s);
    const int at = d.starts[(size_t)b];
    out = mx::slice_update(out, row, mx::Shape{b, 0, at, 0}, mx::Shape{b + 1, d.Hk, at + d.T, d.D}, s);
  }
  return out;
}

}  // namespace
}  // namespace zaya

extern "C" int zaya_cca_attention(mlx_array* y, mlx_array q_h, mlx_array k_h, mlx_array v_h, int len, float scale,
                                  int flat, int mode, mlx_stream stream) {
  using namespace zaya;
  return guard("cca_attention", [&] {
    auto s = get(stream);
    auto& q = get(q_h, "queries");
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    AttnDims d = attention_dims(q, k, v, false);
    check_len(d, len);
    d.len = len;
    d.scale = scale;
    d.flat = flat ? 1 : 0;
    set(y, attention_op(q, k, v, d, mode, s));
  });
}

extern "C" int zaya_cca_attention_rows(mlx_array* y, mlx_array q_h, mlx_array k_h, mlx_array v_h, const int32_t* lens,
                                       size_t n_lens, float scale, int flat, int mode, mlx_stream stream) {
  using namespace zaya;
  return guard("cca_attention_rows", [&] {
    auto s = get(stream);
    auto& q = get(q_h, "queries");
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    AttnDims d = attention_dims(q, k, v, true);
    if (!lens || n_lens != (size_t)d.B)
      fail("lens: " + std::to_string(n_lens) + " given for " + std::to_string(d.B) + " sequences");
    d.len = 0;
    for (size_t b = 0; b < n_lens; ++b) {
      check_len(d, lens[b]);
      d.lens.push_back(lens[b]);
      d.len = std::max(d.len, (int)lens[b]);
    }
    d.scale = scale;
    d.flat = flat ? 1 : 0;
    set(y, attention_op(q, k, v, d, mode, s));
  });
}

extern "C" int zaya_kv_append_rows(mlx_array* k_out, mlx_array* v_out, mlx_array k_h, mlx_array v_h,
                                   mlx_array k_new_h, mlx_array v_new_h, const int32_t* starts, size_t n_starts,
                                   int mode, mlx_stream stream) {
  using namespace zaya;
  return guard("kv_append_rows", [&] {
    auto s = get(stream);
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    auto& kn = get(k_new_h, "new keys");
    auto& vn = get(v_new_h, "new values");
    expect_ndim(k, 4, "keys");
    expect_ndim(kn, 4, "new keys");
    expect_dtype(k, mx::float32, "keys");
    expect_dtype(v, mx::float32, "values");
    if (v.shape() != k.shape()) fail("values must have the keys' shape " + shape_str(k.shape()) + ", got " + shape_str(v.shape()));
    if (vn.shape() != kn.shape())
      fail("new values must have the new keys' shape " + shape_str(kn.shape()) + ", got " + shape_str(vn.shape()));
    AppendDims d{};
    d.N = kn.shape(0);
    d.Hk = kn.shape(1);
    d.T = kn.shape(2);
    d.D = kn.shape(3);
    d.rows = k.shape(0);
    d.cap = k.shape(2);
    if (d.N > d.rows || d.Hk != k.shape(1) || d.D != k.shape(3))
      fail("new keys " + shape_str(kn.shape()) + " do not fit the storage " + shape_str(k.shape()));
    if (!starts || n_starts != (size_t)d.N)
      fail("starts: " + std::to_string(n_starts) + " given for " + std::to_string(d.N) + " sequences");
    for (size_t b = 0; b < n_starts; ++b) {
      if (starts[b] < 0 || starts[b] + d.T > d.cap)
        fail("sequence " + std::to_string(b) + ": " + std::to_string(d.T) + " new positions at " +
             std::to_string(starts[b]) + " do not fit the capacity " + std::to_string(d.cap));
      d.starts.push_back(starts[b]);
    }
    set(k_out, append_rows_op(k, kn, d, mode, s));
    set(v_out, append_rows_op(v, vn, d, mode, s));
  });
}

extern "C" int zaya_kv_append(mlx_array* k_out, mlx_array* v_out, mlx_array k_h, mlx_array v_h, mlx_array k_new_h,
                              mlx_array v_new_h, int start, mlx_stream stream) {
  using namespace zaya;
  return guard("kv_append", [&] {
    auto s = get(stream);
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    auto& kn = get(k_new_h, "new keys");
    auto& vn = get(v_new_h, "new values");
    expect_ndim(k, 4, "keys");
    expect_ndim(kn, 4, "new keys");
    if (v.shape() != k.shape()) fail("values must have the keys' shape " + shape_str(k.shape()) + ", got " + shape_str(v.shape()));
    if (vn.shape() != kn.shape())
      fail("new values must have the new keys' shape " + shape_str(kn.shape()) + ", got " + shape_str(vn.shape()));
    const int t = kn.shape(2);
    if (kn.shape(0) != k.shape(0) || kn.shape(1) != k.shape(1) || kn.shape(3) != k.shape(3) || start < 0 ||
        start + t > k.shape(2))
      fail("new keys " + shape_str(kn.shape()) + " at position " + std::to_string(start) + " do not fit the cache " +
           shape_str(k.shape()));
    const mx::Shape lo{0, 0, start, 0};
    const mx::Shape hi{k.shape(0), k.shape(1), start + t, k.shape(3)};
    set(k_out, mx::slice_update(k, mx::astype(kn, k.dtype(), s), lo, hi, s));
    set(v_out, mx::slice_update(v, mx::astype(vn, v.dtype(), s), lo, hi, s));
  });
}
