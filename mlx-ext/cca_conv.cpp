// The CCA convolution step (docs/model.md §3.2 step 2 and §3.3) as an MLX primitive: the two-stage
// causal conv over the carried frames (conv_core.h) on its own, f32 throughout.
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
    const ConvWeights w(d, row_major(in[2], sc[2]), kern::kF32, row_major(in[3], sc[3]), kern::kF32,
                        row_major(in[4], sc[4]), kern::kF32, row_major(in[5], sc[5]), kern::kF32);
    ConvScratch scratch(d);
    for (int64_t b = 0; b < d.B; ++b)
      causal_conv(d, w, u_p + b * d.T * d.C, st_p + b * d.C * d.S, scratch, z_p + b * d.T * d.C,
                  ns_p + b * d.C * d.S, nullptr);
  }));
}

}  // namespace zaya
