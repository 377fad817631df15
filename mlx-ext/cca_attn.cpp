// Attention over the CCA KV cache (docs/model.md §3.2 step 7, §3.3) and the cache append, as MLX ops:
//
//   * cca_attention: causal GQA softmax attention of q over the first `len` positions of the KV cache
//     arrays (any capacity), fp32; output [B, T, Hq·D] (heads concatenated, o_proj's input).
//     cca_attention_rows: the same for a ragged batch, each sequence over its own length.
//   * kv_append_rows: new frames written at each sequence's own position, in place when it can;
//     kv_append: at one position for all, as two SliceUpdates.
//
// CPU kernel: attention computes scores with the dense kernel over key rows (or, for blocks of many
// queries, the pv kernel against transposed keys) and the values with the pv kernel, threads splitting
// (batch, KV head, query block). Portable paths: fast::scaled_dot_product_attention per sequence, and
// slice_update.
#include <algorithm>
#include <cstring>

#include "cca.h"

namespace zaya {

// ---- ops ---------------------------------------------------------------------------------------------

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

mx::array cca_attention(const mx::array& q, const mx::array& k, const mx::array& v, int len, float scale, bool flat,
                        int mode, mx::Stream s) {
  AttnDims d = attention_dims(q, k, v, false);
  check_len(d, len);
  d.len = len;
  d.scale = scale;
  d.flat = flat ? 1 : 0;
  return attention_op(q, k, v, d, mode, s);
}

mx::array cca_attention_rows(const mx::array& q, const mx::array& k, const mx::array& v, const std::vector<int>& lens,
                             float scale, bool flat, int mode, mx::Stream s) {
  AttnDims d = attention_dims(q, k, v, true);
  if (lens.size() != (size_t)d.B)
    fail("lens: " + std::to_string(lens.size()) + " given for " + std::to_string(d.B) + " sequences");
  d.len = 0;
  for (int len : lens) {
    check_len(d, len);
    d.lens.push_back(len);
    d.len = std::max(d.len, len);
  }
  d.scale = scale;
  d.flat = flat ? 1 : 0;
  return attention_op(q, k, v, d, mode, s);
}

std::vector<mx::array> kv_append_rows(const mx::array& k, const mx::array& v, const mx::array& kn,
                                      const mx::array& vn, const std::vector<int>& starts, int mode, mx::Stream s) {
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
  if (starts.size() != (size_t)d.N)
    fail("starts: " + std::to_string(starts.size()) + " given for " + std::to_string(d.N) + " sequences");
  for (size_t b = 0; b < starts.size(); ++b) {
    if (starts[b] < 0 || starts[b] + d.T > d.cap)
      fail("sequence " + std::to_string(b) + ": " + std::to_string(d.T) + " new positions at " +
           std::to_string(starts[b]) + " do not fit the capacity " + std::to_string(d.cap));
    d.starts.push_back(starts[b]);
  }
  return {append_rows_op(k, kn, d, mode, s), append_rows_op(v, vn, d, mode, s)};
}

std::vector<mx::array> kv_append(const mx::array& k, const mx::array& v, const mx::array& kn, const mx::array& vn,
                                 int start, mx::Stream s) {
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
  return {mx::slice_update(k, mx::astype(kn, k.dtype(), s), lo, hi, s),
          mx::slice_update(v, mx::astype(vn, v.dtype(), s), lo, hi, s)};
}

// ---- CcaAttention ------------------------------------------------------------------------------------

namespace {

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

}  // namespace

void CcaAttention::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& enc = cpu_encoder(stream(), in, out);
  enc.dispatch(traced(name(), [in, y = out[0].data<float>(), d = d_, tab = tab_]() { run_attention(in, y, d, tab); }));
}

// ---- KvAppendRows ------------------------------------------------------------------------------------

void KvAppendRows::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
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

}  // namespace zaya
