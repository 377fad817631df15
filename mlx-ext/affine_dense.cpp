// Dense affine layer with float weights, y = x·Wᵀ + b, W [out, in] in f16/bf16/f32 read as stored
// (converted to f32 in registers), x and y f32, f32 accumulation. For the layers the bundle keeps in
// float (router MLP, f16) where MLX's CPU GEMV is slow (≈1.2 GB/s for f16, ≈4.5 GB/s for f32 weights).
// Same kernel structure as the affine matmul (simd_impl.inc: threads over output rows, R×T register
// tiles, software prefetch). Portable path: mx::matmul with the weight cast to f32, plus the bias.
#include "affine.h"

namespace zaya {

// ---- op ----------------------------------------------------------------------------------------------

mx::array dense_matmul(const mx::array& x, const mx::array& w, const mx::array* b, int mode, mx::Stream s) {
  check_mode(mode);
  DenseDims d{};
  expect_dtype(x, mx::float32, "x");
  expect_ndim(w, 2, "w");
  d.wtype = float_type_of(w, "w");
  d.out = w.shape(0);
  d.in = w.shape(1);
  if (d.out < 1 || d.in < 1) fail("w must be a non-empty [out, in] matrix, got " + shape_str(w.shape()));
  if (x.ndim() < 1 || x.shape(-1) != d.in)
    fail("x must be [..., in] with in = " + std::to_string(d.in) + " (w is " + shape_str(w.shape()) + "), got " +
         shape_str(x.shape()));
  if (b) {
    d.has_bias = 1;
    d.btype = float_type_of(*b, "bias");
    if (b->shape() != mx::Shape{d.out})
      fail("bias must be [out] = [" + std::to_string(d.out) + "], got " + shape_str(b->shape()));
  }
  d.N = x.size() / d.in;
  const bool use_prim = use_primitive(mode, s, "DenseMatmul");
  auto shape = x.shape();
  shape.back() = d.out;
  if (d.N == 0) return mx::zeros(shape, mx::float32, s);
  if (use_prim) {
    std::vector<mx::array> inputs{x, weight_input(w, s)};
    if (b) inputs.push_back(weight_input(*b, s));
    return mx::array(shape, mx::float32, std::make_shared<DenseMatmul>(s, d, kern::best_table()), std::move(inputs));
  }
  auto out = mx::matmul(x, mx::transpose(mx::astype(w, mx::float32, s), s), s);
  if (b) out = mx::add(out, mx::astype(*b, mx::float32, s), s);
  return out;
}

// ---- DenseMatmul -------------------------------------------------------------------------------------

namespace {

struct DensePtrs {
  const float* x;
  const void* w;
  const void* b;
  float* y;
};

void run_dense(const DensePtrs& p, const DenseDims& d, const kern::Table* tab) {
  std::vector<const float*> xs(d.N);
  std::vector<float*> ys(d.N);
  for (int64_t n = 0; n < d.N; ++n) {
    xs[n] = p.x + n * d.in;
    ys[n] = p.y + n * d.out;
  }
  const kern::DenseMat m{p.w, d.wtype, d.in};
  parallel_for(d.out, 64, [&](int64_t r0, int64_t r1) {
    tab->dense_rows(m, (int)r0, (int)r1, xs.data(), ys.data(), (int)d.N);
    if (d.has_bias)
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t r = r0; r < r1; ++r) ys[n][r] += kern::load_float(p.b, d.btype, r);
  }, kStreamChunks);
}

}  // namespace

void DenseMatmul::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  DensePtrs p{nullptr, in[1].data<void>(), d_.has_bias ? in[2].data<void>() : nullptr, out[0].data<float>()};
  enc.dispatch(traced(name(), [p, x = in[0], d = d_, tab = tab_]() mutable {
    std::vector<char> sx;
    p.x = static_cast<const float*>(row_major(x, sx));
    run_dense(p, d, tab);
  }));
}

std::vector<mx::Shape> DenseMatmul::output_shapes(const std::vector<mx::array>& in) {
  auto s = in[0].shape();
  s.back() = d_.out;
  return {s};
}

}  // namespace zaya
