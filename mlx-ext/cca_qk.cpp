// The CCA q/k chain (docs/model.md §3.2 steps 2–6, §3.3) as one MLX primitive: the two-stage causal conv
// over [q̃ ‖ k̃] with the carried frames (conv_core.h), the mean paths, the fp32 L2 normalisation to √D
// with the key temperature, partial NeoX RoPE at the absolute position (one per sequence in ragged
// batches), and the values laid out per KV head. Outputs q [B, Hq, T, D], k [B, Hk, T, D],
// v [B, Hk, T, D] and the new conv state [B, C, S].
//
// CPU kernel: the grouped conv runs as one GEMV/GEMM per group through the dense leaf kernel (weights
// read as stored, f16/bf16/f32), the rest per frame with threads over frames. Portable path: the plain
// MLX ops of the reference (conv1d, the elementwise chain, fast::rope).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "cca.h"

namespace zaya {

// ---- op ----------------------------------------------------------------------------------------------

namespace {

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

}  // namespace

std::vector<mx::array> cca_qk(const mx::array& u, const mx::array& state, const mx::array& w0, const mx::array& b0,
                              const mx::array& w1, const mx::array& b1, const mx::array& temp,
                              const mx::array& values, int q_heads, int kv_heads, int rotary_dim, float rope_theta,
                              bool clamp_temp, int offset, const std::vector<int>& row_offsets, int mode,
                              mx::Stream s) {
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
  if (!row_offsets.empty()) {
    if (row_offsets.size() != (size_t)d.B)
      fail("row offsets: " + std::to_string(row_offsets.size()) + " given for " + std::to_string(d.B) + " sequences");
    for (int r : row_offsets) {
      if (r < 0) fail("row offset " + std::to_string(r) + " must be non-negative");
      d.row_offsets.push_back(r);
    }
  }
  d.rd = rotary_dim;
  d.theta = rope_theta;
  d.clamp_temp = clamp_temp ? 1 : 0;
  d.offset = offset;
  if (use_primitive(mode, s, "CcaQk"))
    return mx::array::make_arrays(CcaQk::shapes(d), {mx::float32, mx::float32, mx::float32, mx::float32},
                                  std::make_shared<CcaQk>(s, d, kern::best_table()),
                                  {u, state, w0, b0, w1, b1, temp, values});
  // the reference graph takes [B, T, ·] (rows input reshaped)
  return cca_qk_portable(mx::reshape(u, {d.B, d.T, d.C}, s), state, w0, b0, w1, b1, temp,
                         mx::reshape(values, {d.B, d.T, d.Hk * d.D}, s), d, s);
}

// ---- CcaQk -------------------------------------------------------------------------------------------

namespace {

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

  const int64_t C = d.C, T = d.T, S = d.S, D = d.D;
  const int Hq = d.Hq, Hk = d.Hk, g = d.Hq / d.Hk;
  // small parameters in f32: the conv's (w0 transposed to [K0][C], the biases), the effective temperature
  const ConvWeights cw(d, w0, d.w0_t, b0, d.b0_t, w1, d.w1_t, b1, d.b1_t);
  std::vector<float> temp(Hk);
  for (int j = 0; j < Hk; ++j) {
    const float t = kern::load_float(tmp, d.temp_t, j);
    temp[j] = d.clamp_temp ? std::exp(std::min(std::max(t, 1e-7f), 2.0f)) : t;
  }
  // RoPE tables as MLX's rope computes them in f32: inv_i = exp(-i·(log θ / half)), angle = pos·inv_i;
  // one table for all sequences, or per sequence when each has its own position
  const int half = d.rd / 2;
  std::vector<float> cs((size_t)T * half), sn((size_t)T * half);
  std::vector<float> inv(half);
  if (half > 0) {
    const float coef = std::log(d.theta) / (float)half;
    for (int i = 0; i < half; ++i) inv[i] = std::exp((float)(-i) * coef);
  }
  auto fill_tables = [&](int64_t b) {
    if (half == 0) return;
    // a prefill chunk's T·half cos/sin pairs (16,384 at 512 tokens) over the threads
    parallel_for(T, 64, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const float pos = (float)t + (float)d.offset_of(b);
        for (int i = 0; i < half; ++i) {
          const float ang = pos * inv[i];
          cs[t * half + i] = std::cos(ang);
          sn[t * half + i] = std::sin(ang);
        }
      }
    });
  };
  fill_tables(0);
  const float sqrt_d = std::sqrt((float)D);
  ConvScratch conv(d);
  // a batched decode step (one frame per sequence): every sequence's conv at once, each group's taps
  // read once for all rows; otherwise sequence by sequence
  const bool frames = T == 1 && d.B > 1;
  // (written whole by the conv before it is read)
  const auto Z = std::make_unique_for_overwrite<float[]>(frames ? d.B * C : T * C);
  if (frames) causal_conv_frames(d, cw, d.B, u, st, Z.get(), o.ns, tab);
  for (int64_t b = 0; b < d.B; ++b) {
    if (b > 0 && !d.row_offsets.empty()) fill_tables(b);
    const float* ub = u + b * T * C;
    const float* zb = frames ? Z.get() + b * C : Z.get();
    // the two-stage conv over [carried frames ‖ u] and the new state
    if (!frames) causal_conv(d, cw, ub, st + b * C * S, conv, Z.get(), o.ns + b * C * S, tab);
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
        const float* zt = zb + t * C;
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
  }
}

}  // namespace

void CcaQk::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  QkOut o{out[0].data<float>(), out[1].data<float>(), out[2].data<float>(), out[3].data<float>()};
  enc.dispatch(traced(name(), [in, o, d = d_, tab = tab_]() { run_cca_qk(in, o, d, tab); }));
}

}  // namespace zaya
