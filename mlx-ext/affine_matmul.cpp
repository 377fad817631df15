// MLX affine quantized matmul y = x·Wᵀ (bits 4/8, scales/biases f16/bf16/f32, any group size that
// covers whole words) and the embedding-row gather, as MLX primitives (docs/bundle-format.md §2). They serve
// the attention projections, the embedding and the tied lm_head.
//
// CPU kernel: threads split output rows; each thread walks its rows in cache-sized blocks and, inside a
// block, token tiles of up to 4 rows × 4 weight rows, dequantizing each weight chunk in registers once
// per tile (w = s·q + b) and accumulating in f32 (leaf tiles in simd_impl.inc). N = 1 is a streaming
// GEMV; larger N reuses each weight block across all token tiles while it is cache-resident.
// Portable path: mx::quantized_matmul / mx::take + mx::dequantize.
#include <algorithm>
#include <cstring>

#include "affine.h"

namespace zaya {

// ---- ops ---------------------------------------------------------------------------------------------

namespace {

AffDims check_weight(const mx::array& w, const mx::array& scales, const mx::array& biases, int bits,
                     int group) {
  AffDims d{};
  if (bits != 4 && bits != 8) fail("affine bits must be 4 or 8, got " + std::to_string(bits));
  expect_dtype(w, mx::uint32, "w");
  expect_ndim(w, 2, "w");
  d.bits = bits;
  d.out = w.shape(0);
  d.in = w.shape(1) * (32 / bits);
  if (d.out < 1 || d.in < 1) fail("w must be a non-empty [out, in*bits/32] matrix, got " + shape_str(w.shape()));
  if (group < 1 || group % (32 / bits) != 0)
    fail("group_size " + std::to_string(group) + " must be a positive multiple of " + std::to_string(32 / bits) +
         " (whole words) for " + std::to_string(bits) + "-bit weights");
  if (d.in % group != 0)
    fail("group_size " + std::to_string(group) + " does not divide the input width in = " + std::to_string(d.in) +
         " (w is " + shape_str(w.shape()) + " at " + std::to_string(bits) + " bits)");
  d.group = group;
  d.stype = float_type_of(scales, "scales");
  if (biases.dtype() != scales.dtype())
    fail("biases must have the scales' dtype " + dtype_str(scales.dtype()) + ", got " + dtype_str(biases.dtype()));
  const mx::Shape sg{d.out, d.in / group};
  if (scales.shape() != sg)
    fail("scales must be [out, in/group_size] = " + shape_str(sg) + ", got " + shape_str(scales.shape()));
  if (biases.shape() != sg)
    fail("biases must be [out, in/group_size] = " + shape_str(sg) + ", got " + shape_str(biases.shape()));
  return d;
}

// The vector kernels need whole chunks per group; otherwise the scalar one handles it.
const kern::Table* table_for(const AffDims& d) {
  const kern::Table* t = kern::best_table();
  const int chunk = d.bits == 8 ? t->lanes : 2 * t->lanes;
  return d.group % chunk == 0 ? t : kern::scalar_table();
}

}  // namespace

void check_parts(size_t k) {
  if (k < 1 || k > (size_t)kMaxParts)
    fail("affine_multi takes 1 to " + std::to_string(kMaxParts) + " weights, got " + std::to_string(k));
}

mx::array affine_matmul(const mx::array& x, const mx::array& w, const mx::array& sc, const mx::array& bi, int bits,
                        int group_size, int mode, mx::Stream s) {
  check_mode(mode);
  auto d = check_weight(w, sc, bi, bits, group_size);
  expect_dtype(x, mx::float32, "x");
  if (x.ndim() < 1 || x.shape(-1) != d.in)
    fail("x must be [..., in] with in = " + std::to_string(d.in) + " (w is " + shape_str(w.shape()) + " at " +
         std::to_string(bits) + " bits), got " + shape_str(x.shape()));
  d.N = x.size() / d.in;
  const bool use_prim = use_primitive(mode, s, "AffineMatmul");
  auto shape = x.shape();
  shape.back() = d.out;
  if (d.N == 0) return mx::zeros(shape, mx::float32, s);
  if (use_prim) {
    AffMulti am{};
    am.k = 1;
    am.N = d.N;
    am.total = d.out;
    am.part[0] = AffPart{d, 0};
    am.bf16 = mode_bf16(mode);
    return mx::array(shape, mx::float32, std::make_shared<AffineMatmul>(s, am, table_for(d)),
                     {x, weight_input(w, s), weight_input(sc, s), weight_input(bi, s)});
  }
  return mx::astype(mx::quantized_matmul(x, w, sc, bi, true, group_size, bits, "affine", s), mx::float32, s);
}

mx::array affine_embed(const mx::array& ids, const mx::array& w, const mx::array& sc, const mx::array& bi, int bits,
                       int group_size, int mode, mx::Stream s) {
  check_mode(mode);
  auto d = check_weight(w, sc, bi, bits, group_size);
  if (ids.dtype() != mx::int32 && ids.dtype() != mx::uint32)
    fail("ids must be int32 or uint32, got " + dtype_str(ids.dtype()));
  d.N = ids.size();
  const bool use_prim = use_primitive(mode, s, "AffineEmbed");
  auto shape = ids.shape();
  shape.push_back(d.in);
  if (d.N == 0) return mx::zeros(shape, mx::float32, s);
  if (use_prim) {
    std::vector<mx::array> inputs;
    inputs.push_back(ids);
    for (auto* a : {&w, &sc, &bi}) inputs.push_back(weight_input(*a, s));
    return mx::array(shape, mx::float32, std::make_shared<AffineEmbed>(s, d), std::move(inputs));
  }
  // Out-of-range ids give zero rows here too.
  auto flat = mx::astype(mx::reshape(ids, {static_cast<int>(d.N)}, s), mx::int64, s);
  auto valid = mx::logical_and(mx::greater_equal(flat, mx::array(0, mx::int64), s),
                               mx::less(flat, mx::array(d.out, mx::int64), s), s);
  auto safe = mx::astype(mx::where(valid, flat, mx::array(0, mx::int64), s), mx::uint32, s);
  // f32 scales/biases: mx::dequantize computes in the scales' dtype.
  auto rows = mx::dequantize(mx::take(w, safe, 0, s), mx::astype(mx::take(sc, safe, 0, s), mx::float32, s),
                             mx::astype(mx::take(bi, safe, 0, s), mx::float32, s), group_size, bits, "affine",
                             std::nullopt, mx::float32, s);
  rows = mx::where(mx::expand_dims(valid, -1, s), rows, mx::array(0.0f), s);
  return mx::reshape(rows, shape, s);
}

mx::array affine_multi(const std::vector<mx::array>& xs, const std::vector<mx::array>& ws,
                       const std::vector<mx::array>& ss, const std::vector<mx::array>& bs, int bits, int group_size,
                       int mode, mx::Stream s) {
  check_mode(mode);
  const size_t k = xs.size();
  check_parts(k);
  if (ws.size() != k || ss.size() != k || bs.size() != k) fail("affine_multi: one w, scales and biases per x");
  AffMulti am{};
  am.k = static_cast<int>(k);
  std::vector<mx::array> inputs;
  mx::Shape shape;
  for (size_t i = 0; i < k; ++i) {
    const std::string tag = "[" + std::to_string(i) + "]";
    auto& x = xs[i];
    auto& w = ws[i];
    auto d = check_weight(w, ss[i], bs[i], bits, group_size);
    expect_dtype(x, mx::float32, ("x" + tag).c_str());
    if (x.ndim() < 1 || x.shape(-1) != d.in)
      fail("x" + tag + " must be [..., in] with in = " + std::to_string(d.in) + " (w" + tag + " is " +
           shape_str(w.shape()) + " at " + std::to_string(bits) + " bits), got " + shape_str(x.shape()));
    d.N = x.size() / d.in;
    if (i == 0) {
      am.N = d.N;
      shape = x.shape();
    } else if (d.N != am.N) {
      fail("x" + tag + " has " + std::to_string(d.N) + " rows, x[0] has " + std::to_string(am.N));
    }
    am.part[i] = AffPart{d, am.total};
    am.total += d.out;
    for (auto* a : {&x, &w, &ss[i], &bs[i]}) inputs.push_back(*a);
  }
  shape.back() = static_cast<int>(am.total);
  const bool use_prim = use_primitive(mode, s, "AffineMatmul");
  if (am.N == 0) return mx::zeros(shape, mx::float32, s);
  am.bf16 = mode_bf16(mode);
  if (use_prim) {
    for (size_t i = 0; i < inputs.size(); ++i)
      if (i % 4 != 0) inputs[i] = weight_input(inputs[i], s);
    return mx::array(shape, mx::float32, std::make_shared<AffineMatmul>(s, am, table_for(am.part[0].d)),
                     std::move(inputs));
  }
  std::vector<mx::array> parts;
  for (size_t i = 0; i < k; ++i) {
    auto x2 = mx::reshape(inputs[4 * i], {static_cast<int>(am.N), am.part[i].d.in}, s);
    parts.push_back(mx::astype(mx::quantized_matmul(x2, inputs[4 * i + 1], inputs[4 * i + 2], inputs[4 * i + 3],
                                                    true, group_size, bits, "affine", s),
                               mx::float32, s));
  }
  return mx::reshape(mx::concatenate(parts, 1, s), shape, s);
}

// ---- AffineMatmul ------------------------------------------------------------------------------------

namespace {

// 4-bit kernel layout: in chunks of 2L elements, the L even elements then the L odd ones.
void aff_prep_x(const float* x, int in, int L, float* out) {
  for (int c = 0; c < in; c += 2 * L)
    for (int i = 0; i < L; ++i) {
      out[c + i] = x[c + 2 * i];
      out[c + L + i] = x[c + 2 * i + 1];
    }
}

void run_affine(const std::vector<mx::array>& in, float* y, const AffMulti& am, const kern::Table* tab) {
  const int L = tab->lanes;
  const int64_t N = am.N;
  std::vector<std::vector<char>> scratch(am.k);
  std::vector<std::vector<float>> xb(am.k);
  std::vector<std::vector<const float*>> xs(am.k, std::vector<const float*>(N));
  std::vector<std::vector<float*>> ys(am.k, std::vector<float*>(N));
  std::vector<kern::AffMat> mats;
  for (int i = 0; i < am.k; ++i) {
    const AffDims& d = am.part[i].d;
    const float* x = static_cast<const float*>(row_major(in[4 * i], scratch[i]));
    if (d.bits == 4 && L > 1) {
      xb[i].resize((size_t)N * d.in);
      float* dst = xb[i].data();
      parallel_for(N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) aff_prep_x(x + n * d.in, d.in, L, dst + n * d.in);
      });
      x = dst;
    }
    for (int64_t n = 0; n < N; ++n) {
      xs[i][n] = x + n * d.in;
      ys[i][n] = y + n * am.total + am.part[i].offset;
    }
    mats.push_back(kern::AffMat{in[4 * i + 1].data<uint32_t>(), in[4 * i + 2].data<void>(), in[4 * i + 3].data<void>(),
                                d.stype, d.bits, d.group, d.in});
  }
  const kern::AffRowsFn aff_rows = am.bf16 ? tab->aff_rows_bf16 : tab->aff_rows;
  parallel_for(am.total, 64, [&](int64_t r0, int64_t r1) {
    for (int i = 0; i < am.k; ++i) {
      const int64_t lo = std::max<int64_t>(r0, am.part[i].offset);
      const int64_t hi = std::min<int64_t>(r1, am.part[i].offset + am.part[i].d.out);
      if (lo < hi)
        aff_rows(mats[i], (int)(lo - am.part[i].offset), (int)(hi - am.part[i].offset), xs[i].data(),
                      ys[i].data(), (int)N);
    }
  }, kStreamChunks);
}

}  // namespace

void AffineMatmul::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  enc.dispatch(traced(name(), [in, y = out[0].data<float>(), am = am_, tab = tab_]() { run_affine(in, y, am, tab); }));
}

std::vector<mx::Shape> AffineMatmul::output_shapes(const std::vector<mx::array>& in) {
  auto s = in[0].shape();
  s.back() = static_cast<int>(am_.total);
  return {s};
}

// ---- AffineEmbed -------------------------------------------------------------------------------------

namespace {

void run_embed(const uint32_t* ids, const uint32_t* w, const void* scales, const void* biases, float* y,
               const AffDims& d) {
  const int64_t ng = d.in / d.group;
  const int64_t row_bytes = (int64_t)d.in * d.bits / 8;
  parallel_for(d.N, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* out = y + i * d.in;
      const uint32_t id = ids[i];
      if (id >= (uint32_t)d.out) {
        std::memset(out, 0, sizeof(float) * d.in);
        continue;
      }
      const uint8_t* row = reinterpret_cast<const uint8_t*>(w) + (int64_t)id * row_bytes;
      for (int64_t g = 0; g < ng; ++g) {
        const float s = kern::load_float(scales, d.stype, (int64_t)id * ng + g);
        const float b = kern::load_float(biases, d.stype, (int64_t)id * ng + g);
        for (int64_t j = g * d.group; j < (g + 1) * d.group; ++j) {
          const uint32_t q = d.bits == 8 ? row[j] : (row[j / 2] >> ((j & 1) * 4)) & 15u;
          out[j] = s * (float)q + b;
        }
      }
    }
  });
}

}  // namespace

void AffineEmbed::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  enc.dispatch(traced(name(), [in, y = out[0].data<float>(), d = d_]() {
    std::vector<char> sc;
    const auto* ids = static_cast<const uint32_t*>(row_major(in[0], sc));
    run_embed(ids, in[1].data<uint32_t>(), in[2].data<void>(), in[3].data<void>(), y, d);
  }));
}

std::vector<mx::Shape> AffineEmbed::output_shapes(const std::vector<mx::array>& in) {
  auto s = in[0].shape();
  s.push_back(d_.in);
  return {s};
}

}  // namespace zaya
