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
    : P(std::make_unique_for_overwrite<float[]>((size_t)(d.T + d.S) * d.C)),
      A(std::make_unique_for_overwrite<float[]>((size_t)(d.T + d.K1 - 1) * d.C)) {}

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

// grouped conv 1, per group: z[r, g0 + i] = w1[g0 + i, :] · [A_r[g] ‖ A_r+1[g] ‖ …] + b1 for `rows`
// output rows. A is group-major (see depthwise): row r's window of group g, its K1 frames of Cg channels,
// is the K1·Cg contiguous values at A + g·gstride + r·rstride, read in place (rstride Cg: the frames of one
// sequence, consecutive windows overlapping; rstride G·K1·Cg: one window per sequence).
void grouped_by_group(const ConvDims& d, const ConvWeights& w, const float* A, int64_t rows, int64_t rstride,
                      int64_t gstride, float* z, const kern::Table* tab) {
  const int64_t C = d.C, K1 = d.K1, Cg = d.Cg;
  const float* b1 = w.b1.data();
  const int64_t work = rows * C * K1 * Cg;
  parallel_for(d.G, work >= (1 << 18) ? 1 : d.G, [&](int64_t g0, int64_t g1) {
    std::vector<const float*> xs(rows);
    std::vector<float*> ys(rows);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t c0 = grp * Cg;
      for (int64_t r = 0; r < rows; ++r) {
        xs[r] = A + grp * gstride + r * rstride;
        ys[r] = z + r * C;
      }
      tab->dense_rows(w.w1, (int)c0, (int)(c0 + Cg), xs.data(), ys.data(), (int)rows);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = c0; c < c0 + Cg; ++c) z[r * C + c] += b1[c];
    }
  }, kStreamChunks);
}

// P, time-major [S + T, C]: the carried frames (state [C, S], channel-major) then u [T, C]
void pad_frames(const ConvDims& d, const float* state, const float* u, int64_t T, float* P) {
  const int64_t C = d.C, S = d.S;
  for (int64_t i = 0; i < S; ++i)
    for (int64_t c = 0; c < C; ++c) P[i * C + c] = state[c * S + i];
  std::memcpy(P + S * C, u, sizeof(float) * T * C);
}

// depthwise conv 0 over P: a_i[c] = b0[c], then + w0[c, k]·P_{i+k}[c] tap by tap, for i < La, threads
// over frames. Frame i of channel c lands at A + (c / Cg)·gs + i·fs + c % Cg: time-major [La, C] with
// gs = Cg, fs = C; group-major [G, La, Cg] with gs = La·Cg, fs = Cg (grouped_by_group's windows).
void depthwise(const ConvDims& d, const ConvWeights& w, const float* P, int64_t La, float* A, int64_t gs,
               int64_t fs) {
  const int64_t C = d.C, K0 = d.K0, Cg = d.Cg;
  parallel_for(La, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t c0 = 0; c0 < C; c0 += Cg) {
        float* ai = A + (c0 / Cg) * gs + i * fs;
        const float* b0 = w.b0.data() + c0;
        for (int64_t c = 0; c < Cg; ++c) ai[c] = b0[c];
        for (int64_t k = 0; k < K0; ++k) {
          const float* pk = P + (i + k) * C + c0;
          const float* wk = w.w0t.data() + k * C + c0;
          for (int64_t c = 0; c < Cg; ++c) ai[c] += wk[c] * pk[c];
        }
      }
  });
}

// the new state: the last S of the S + T frames of P, channel-major
void carry_state(const ConvDims& d, const float* P, int64_t T, float* new_state) {
  const int64_t C = d.C, S = d.S;
  for (int64_t i = 0; i < S; ++i)
    for (int64_t c = 0; c < C; ++c) new_state[c * S + i] = P[(T + i) * C + c];
}

}  // namespace

void causal_conv(const ConvDims& d, const ConvWeights& w, const float* u, const float* state, ConvScratch& sc,
                 float* z, float* new_state, const kern::Table* tab) {
  const int64_t T = d.T;
  float* P = sc.P.get();
  float* A = sc.A.get();
  const int64_t La = T + d.K1 - 1;  // conv-0 output length T + S - K0 + 1
  pad_frames(d, state, u, T, P);
  if (tab) {
    depthwise(d, w, P, La, A, La * d.Cg, d.Cg);
    grouped_by_group(d, w, A, T, d.Cg, La * d.Cg, z, tab);
  } else {
    depthwise(d, w, P, La, A, d.Cg, d.C);
    grouped_by_channel(d, w, A, z);
  }
  carry_state(d, P, T, new_state);
}

void causal_conv_frames(const ConvDims& d, const ConvWeights& w, int64_t B, const float* u, const float* state,
                        float* z, float* new_state, const kern::Table* tab) {
  const int64_t C = d.C, S = d.S, La = d.K1;  // conv-0 output frames for one new frame
  std::vector<float> P((size_t)(S + 1) * C), A((size_t)B * La * C);
  for (int64_t b = 0; b < B; ++b) {
    pad_frames(d, state + b * C * S, u + b * C, 1, P.data());
    depthwise(d, w, P.data(), La, A.data() + b * La * C, La * d.Cg, d.Cg);
    carry_state(d, P.data(), 1, new_state + b * C * S);
  }
  grouped_by_group(d, w, A.data(), B, La * C, La * d.Cg, z, tab);
}

}  // namespace zaya
