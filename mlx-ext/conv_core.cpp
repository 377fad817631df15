// The CCA causal conv of one sequence (see conv_core.h).
#include "conv_core.h"

#include <cstring>

#include "common.h"

namespace zaya {

ConvWeights::ConvWeights(const ConvDims& d, const void* w0, int w0_type, const void* b0_, int b0_type,
                         const void* w1_, int w1_type, const void* b1_, int b1_type)
    : w0t((size_t)d.K0 * d.C), b0(d.C), b1(d.C), w1{w1_, w1_type, d.K1 * d.Cg} {
  const int64_t C = d.C, K0 = d.K0;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t k = 0; k < K0; ++k) w0t[k * C + c] = kern::load_float(w0, w0_type, c * K0 + k);
    b0[c] = kern::load_float(b0_, b0_type, c);
    b1[c] = kern::load_float(b1_, b1_type, c);
  }
}

ConvScratch::ConvScratch(const ConvDims& d)
    : P((size_t)(d.T + d.S) * d.C), A((size_t)(d.T + d.K1 - 1) * d.C) {}

namespace {

// grouped conv 1, per output channel: c reads the Cg channels of its group at K1 taps
void grouped_by_channel(const ConvDims& d, const ConvWeights& w, const float* A, float* z) {
  const int64_t C = d.C, T = d.T, K1 = d.K1, Cg = d.Cg;
  const float* w1 = static_cast<const float*>(w.w1.w);
  const float* b1 = w.b1.data();
  parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t g0 = (c / Cg) * Cg;
        const float* wc = w1 + c * K1 * Cg;
        float acc = b1[c];
        for (int64_t k = 0; k < K1; ++k) {
          const float* ak = A + (t + k) * C + g0;
          const float* wk = wc + k * Cg;
          float s = 0.f;
          for (int64_t j = 0; j < Cg; ++j) s += wk[j] * ak[j];
          acc += s;
        }
        z[t * C + c] = acc;
      }
    }
  });
}

// grouped conv 1, per group: z[t, g0 + r] = w1[g0 + r, :] · [a_t[g] ‖ a_{t+1}[g] ‖ …] + b1
void grouped_by_group(const ConvDims& d, const ConvWeights& w, const float* A, float* z, const kern::Table* tab) {
  const int64_t C = d.C, T = d.T, K1 = d.K1, Cg = d.Cg;
  const float* b1 = w.b1.data();
  const int64_t work = T * C * K1 * Cg;
  parallel_for(d.G, work >= (1 << 18) ? 1 : d.G, [&](int64_t g0, int64_t g1) {
    std::vector<float> X(T * K1 * Cg);
    std::vector<const float*> xs(T);
    std::vector<float*> ys(T);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t c0 = grp * Cg;
      for (int64_t t = 0; t < T; ++t) {
        float* xt = X.data() + t * K1 * Cg;
        for (int64_t k = 0; k < K1; ++k) std::memcpy(xt + k * Cg, A + (t + k) * C + c0, sizeof(float) * Cg);
        xs[t] = xt;
        ys[t] = z + t * C;
      }
      tab->dense_rows(w.w1, (int)c0, (int)(c0 + Cg), xs.data(), ys.data(), (int)T);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = c0; c < c0 + Cg; ++c) z[t * C + c] += b1[c];
    }
  }, kStreamChunks);
}

}  // namespace

void causal_conv(const ConvDims& d, const ConvWeights& w, const float* u, const float* state, ConvScratch& sc,
                 float* z, float* new_state, const kern::Table* tab) {
  const int64_t C = d.C, T = d.T, S = d.S, K0 = d.K0;
  const int64_t La = T + d.K1 - 1;  // conv-0 output length (= T + S - K0 + 1)
  float* P = sc.P.data();
  float* A = sc.A.data();
  // P, time-major [T + S, C]: the carried frames then u
  for (int64_t i = 0; i < S; ++i)
    for (int64_t c = 0; c < C; ++c) P[i * C + c] = state[c * S + i];
  std::memcpy(P + S * C, u, sizeof(float) * T * C);
  // depthwise conv 0: a_i[c] = b0[c], then + w0[c, k]·P_{i+k}[c] tap by tap
  for (int64_t i = 0; i < La; ++i) {
    float* ai = A + i * C;
    for (int64_t c = 0; c < C; ++c) ai[c] = w.b0[c];
    for (int64_t k = 0; k < K0; ++k) {
      const float* pk = P + (i + k) * C;
      const float* wk = w.w0t.data() + k * C;
      for (int64_t c = 0; c < C; ++c) ai[c] += wk[c] * pk[c];
    }
  }
  if (tab)
    grouped_by_group(d, w, A, z, tab);
  else
    grouped_by_channel(d, w, A, z);
  // new state: the last S frames of P, channel-major
  for (int64_t i = 0; i < S; ++i)
    for (int64_t c = 0; c < C; ++c) new_state[c * S + i] = P[(T + i) * C + c];
}

void causal_conv_frames(const ConvDims& d, const ConvWeights& w, int64_t B, const float* u, const float* state,
                        float* z, float* new_state, const kern::Table* tab) {
  const int64_t C = d.C, S = d.S, K0 = d.K0, K1 = d.K1, Cg = d.Cg;
  const int64_t La = K1;  // conv-0 output frames for one new frame
  std::vector<float> P((size_t)(S + 1) * C), A((size_t)B * La * C);
  for (int64_t b = 0; b < B; ++b) {
    // P [S + 1, C]: the carried frames then the new one; depthwise conv 0 as in causal_conv
    const float* st = state + b * C * S;
    for (int64_t i = 0; i < S; ++i)
      for (int64_t c = 0; c < C; ++c) P[i * C + c] = st[c * S + i];
    std::memcpy(P.data() + S * C, u + b * C, sizeof(float) * C);
    float* Ab = A.data() + b * La * C;
    for (int64_t i = 0; i < La; ++i) {
      float* ai = Ab + i * C;
      for (int64_t c = 0; c < C; ++c) ai[c] = w.b0[c];
      for (int64_t k = 0; k < K0; ++k) {
        const float* pk = P.data() + (i + k) * C;
        const float* wk = w.w0t.data() + k * C;
        for (int64_t c = 0; c < C; ++c) ai[c] += wk[c] * pk[c];
      }
    }
    float* ns = new_state + b * C * S;
    for (int64_t i = 0; i < S; ++i)
      for (int64_t c = 0; c < C; ++c) ns[c * S + i] = P[(1 + i) * C + c];
  }
  // grouped conv 1: per group, the B windows [a_0[g] ‖ a_1[g] ‖ …] as the token rows of one GEMM
  const float* b1 = w.b1.data();
  const int64_t work = B * C * K1 * Cg;
  parallel_for(d.G, work >= (1 << 18) ? 1 : d.G, [&](int64_t g0, int64_t g1) {
    std::vector<float> X((size_t)B * K1 * Cg);
    std::vector<const float*> xs(B);
    std::vector<float*> ys(B);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t c0 = grp * Cg;
      for (int64_t b = 0; b < B; ++b) {
        float* xb = X.data() + b * K1 * Cg;
        const float* Ab = A.data() + b * La * C;
        for (int64_t k = 0; k < K1; ++k) std::memcpy(xb + k * Cg, Ab + k * C + c0, sizeof(float) * Cg);
        xs[b] = xb;
        ys[b] = z + b * C;
      }
      tab->dense_rows(w.w1, (int)c0, (int)(c0 + Cg), xs.data(), ys.data(), (int)B);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = c0; c < c0 + Cg; ++c) z[b * C + c] += b1[c];
    }
  }, kStreamChunks);
}

}  // namespace zaya
