// The CCA convolution step (docs/model.md §3.2 step 2 and §3.3) as an MLX primitive.
//
// With S = (K0-1)+(K1-1) carried frames, the padded stream is P = [state_0..state_{S-1}, u_0..u_{T-1}]
// (T+S frames). The depthwise conv (kernel K0, bias) gives a_i = b0 + sum_k w0[c,k] P_{i+k} for
// i < T+S-K0+1; the grouped conv (kernel K1, G groups, bias) gives
// z_t = b1 + sum_k sum_{j in group(c)} w1[c,k,j] a_{t+k}. The new state is the last S frames of P.
// The zero frames at sequence start pass through conv 0 with its bias, exactly as a literal zero pad.
#include <cstring>

#include "cca.h"

namespace zaya {

// ---- op ----------------------------------------------------------------------------------------------

namespace {

ConvDims check_conv_args(const mx::array& u, const mx::array& state, const mx::array& w0,
                         const mx::array& b0, const mx::array& w1, const mx::array& b1) {
  expect_ndim(u, 3, "u");
  expect_ndim(state, 3, "conv_state");
  expect_ndim(w0, 3, "conv_qk.0.weight");
  expect_ndim(b0, 1, "conv_qk.0.bias");
  expect_ndim(w1, 3, "conv_qk.1.weight");
  expect_ndim(b1, 1, "conv_qk.1.bias");
  for (auto [a, n] : {std::pair{&u, "u"}, {&state, "conv_state"}, {&w0, "conv_qk.0.weight"},
                      {&b0, "conv_qk.0.bias"}, {&w1, "conv_qk.1.weight"}, {&b1, "conv_qk.1.bias"}})
    expect_dtype(*a, mx::float32, n);
  ConvDims d;
  d.B = u.shape(0);
  d.T = u.shape(1);
  d.C = u.shape(2);
  d.K0 = w0.shape(1);
  d.K1 = w1.shape(1);
  d.S = (d.K0 - 1) + (d.K1 - 1);
  d.Cg = w1.shape(2);
  if (d.T < 1) fail("u has no frames (T = 0)");
  if (d.K0 < 1 || d.K1 < 1) fail("conv kernels must have at least one tap");
  if (w0.shape(0) != d.C || w0.shape(2) != 1)
    fail("conv_qk.0.weight must be [C, K0, 1] = [" + std::to_string(d.C) +
         ", K0, 1] (MLX layout), got " + shape_str(w0.shape()));
  if (b0.shape(0) != d.C) fail("conv_qk.0.bias must be [" + std::to_string(d.C) + "], got " + shape_str(b0.shape()));
  if (w1.shape(0) != d.C || d.Cg < 1 || d.C % d.Cg != 0)
    fail("conv_qk.1.weight must be [C, K1, C/G] with C = " + std::to_string(d.C) +
         " (MLX layout), got " + shape_str(w1.shape()));
  if (b1.shape(0) != d.C) fail("conv_qk.1.bias must be [" + std::to_string(d.C) + "], got " + shape_str(b1.shape()));
  d.G = d.C / d.Cg;
  if (state.shape(0) != d.B || state.shape(1) != d.C || state.shape(2) != d.S)
    fail("conv_state must be [B, C, S] = [" + std::to_string(d.B) + ", " + std::to_string(d.C) + ", " +
         std::to_string(d.S) + "] with S = (K0-1)+(K1-1) from the kernel sizes K0 = " + std::to_string(d.K0) +
         " of conv_qk.0.weight " + shape_str(w0.shape()) + " and K1 = " + std::to_string(d.K1) +
         " of conv_qk.1.weight " + shape_str(w1.shape()) + " (MLX layout [out, k, in/groups]), got " +
         shape_str(state.shape()));
  return d;
}

// Plain MLX ops; runs on any stream and serves as the reference of the primitive.
std::vector<mx::array> cca_conv_portable(const mx::array& u, const mx::array& state, const mx::array& w0,
                                         const mx::array& b0, const mx::array& w1, const mx::array& b1,
                                         const ConvDims& d, mx::Stream s) {
  // P: [B, S + T, C]
  auto padded = mx::concatenate({mx::transpose(state, {0, 2, 1}, s), u}, 1, s);
  auto a = mx::add(mx::conv1d(padded, w0, 1, 0, 1, d.C, s), b0, s);
  auto z = mx::add(mx::conv1d(a, w1, 1, 0, 1, d.G, s), b1, s);
  auto tail = mx::slice(padded, {0, d.T, 0}, {d.B, d.T + d.S, d.C}, s);
  auto new_state = mx::contiguous(mx::transpose(tail, {0, 2, 1}, s), false, s);
  return {z, new_state};
}

}  // namespace

std::vector<mx::array> cca_conv(const mx::array& u, const mx::array& state, const mx::array& w0, const mx::array& b0,
                                const mx::array& w1, const mx::array& b1, int mode, mx::Stream s) {
  auto d = check_conv_args(u, state, w0, b0, w1, b1);
  if (use_primitive(mode, s, "CcaConv"))
    return mx::array::make_arrays(CcaConv::shapes(d), {mx::float32, mx::float32}, std::make_shared<CcaConv>(s, d),
                                  {u, state, w0, b0, w1, b1});
  return cca_conv_portable(u, state, w0, b0, w1, b1, d, s);
}

// ---- CcaConv -----------------------------------------------------------------------------------------

void CcaConv::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  // Inputs (u, conv_state, w0, b0, w1, b1) may be strided views: they are packed inside the task when
  // needed. Outputs: z and the new conv_state.
  auto& enc = cpu_encoder(stream(), in, out);
  enc.dispatch(traced(name(), [in, z_p = out[0].data<float>(), ns_p = out[1].data<float>(), d = d_]() {
    std::vector<char> sc[6];
    const float* u_p = static_cast<const float*>(row_major(in[0], sc[0]));
    const float* st_p = static_cast<const float*>(row_major(in[1], sc[1]));
    const float* w0_p = static_cast<const float*>(row_major(in[2], sc[2]));
    const float* b0_p = static_cast<const float*>(row_major(in[3], sc[3]));
    const float* w1_p = static_cast<const float*>(row_major(in[4], sc[4]));
    const float* b1_p = static_cast<const float*>(row_major(in[5], sc[5]));
    const int64_t C = d.C, T = d.T, S = d.S, K0 = d.K0, K1 = d.K1, Cg = d.Cg;
    const int64_t L = T + S;           // padded length
    const int64_t La = L - K0 + 1;     // conv-0 output length (= T + K1 - 1)
    std::vector<float> P(L * C), A(La * C);
    for (int64_t b = 0; b < d.B; ++b) {
      const float* ub = u_p + b * T * C;
      const float* sb = st_p + b * C * S;
      // P, time-major [L, C]
      for (int64_t i = 0; i < S; ++i)
        for (int64_t c = 0; c < C; ++c) P[i * C + c] = sb[c * S + i];
      std::memcpy(P.data() + S * C, ub, sizeof(float) * T * C);
      // depthwise conv 0
      for (int64_t i = 0; i < La; ++i) {
        float* ai = A.data() + i * C;
        for (int64_t c = 0; c < C; ++c) {
          float acc = b0_p[c];
          for (int64_t k = 0; k < K0; ++k) acc += w0_p[c * K0 + k] * P[(i + k) * C + c];
          ai[c] = acc;
        }
      }
      // grouped conv 1: output channel c reads the Cg channels of its group at K1 taps
      float* zb = z_p + b * T * C;
      parallel_for(C, 64, [&](int64_t c0, int64_t c1) {
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t g0 = (c / Cg) * Cg;
            const float* wc = w1_p + c * K1 * Cg;
            float acc = b1_p[c];
            for (int64_t k = 0; k < K1; ++k) {
              const float* ak = A.data() + (t + k) * C + g0;
              const float* wk = wc + k * Cg;
              float s = 0.f;
              for (int64_t j = 0; j < Cg; ++j) s += wk[j] * ak[j];
              acc += s;
            }
            zb[t * C + c] = acc;
          }
        }
      });
      // new state: last S frames of P, channel-major
      float* nb = ns_p + b * C * S;
      for (int64_t i = 0; i < S; ++i)
        for (int64_t c = 0; c < C; ++c) nb[c * S + i] = P[(T + i) * C + c];
    }
  }));
}

}  // namespace zaya
