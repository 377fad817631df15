// The CCA attention half-layer (docs/model.md §3.2, §3.3) as MLX ops and primitives:
//
//   * cca_conv (cca_conv.cpp): the two-stage causal conv alone;
//   * cca_qk (cca_qk.cpp): the same conv (conv_core.h) fused with the mean paths, the fp32 L2
//     normalisation to √D with the key temperature, partial NeoX RoPE at the absolute position, and the
//     values laid out per KV head;
//   * cca_attention (cca_attn.cpp): causal GQA softmax attention over the KV storage;
//   * kv_append / kv_append_rows (cca_attn.cpp): the KV cache append, per-row positions in place.
#pragma once

#include <tuple>
#include <vector>

#include "common.h"
#include "conv_core.h"
#include "simd_kernels.h"

namespace zaya {

// ---- ops ---------------------------------------------------------------------------------------------
// Each checks its arguments, then builds its primitive (`mode`, stream: see use_primitive) or the
// portable graph of plain MLX ops. Per-sequence vectors (row_offsets, lens, starts) have one entry per
// sequence.

// u [B, T, C] f32, conv_state [B, C, S] f32, w0 [C, K0, 1], b0 [C], w1 [C, K1, C/G], b1 [C] (MLX layouts,
// f32). Returns {z [B, T, C], new conv_state [B, C, S]}.
std::vector<mx::array> cca_conv(const mx::array& u, const mx::array& state, const mx::array& w0, const mx::array& b0,
                                const mx::array& w1, const mx::array& b1, int mode, mx::Stream s);

// u [B, T, C] or rows [B·T, C] (C = (q_heads + kv_heads)·D) f32, conv_state [B, C, S], conv weights as
// cca_conv's in f16/bf16/f32, temp [kv_heads], values [B, T, kv_heads·D] f32; positions from `offset`, or
// per sequence from `row_offsets` when not empty. Returns {q [B, Hq, T, D], k [B, Hk, T, D],
// v [B, Hk, T, D], new conv_state [B, C, S]}.
std::vector<mx::array> cca_qk(const mx::array& u, const mx::array& state, const mx::array& w0, const mx::array& b0,
                              const mx::array& w1, const mx::array& b1, const mx::array& temp,
                              const mx::array& values, int q_heads, int kv_heads, int rotary_dim, float rope_theta,
                              bool clamp_temp, int offset, const std::vector<int>& row_offsets, int mode,
                              mx::Stream s);

// Causal GQA attention of q [B, Hq, T, D] over the first `len` positions of k, v [B, Hk, capacity, D]
// (f32), scores scaled by `scale`: [B, T, Hq·D], or [B·T, Hq·D] when `flat`.
mx::array cca_attention(const mx::array& q, const mx::array& k, const mx::array& v, int len, float scale, bool flat,
                        int mode, mx::Stream s);

// The same with sequence b over its own first lens[b] positions of row b of k, v [≥ B, Hk, capacity, D].
mx::array cca_attention_rows(const mx::array& q, const mx::array& k, const mx::array& v, const std::vector<int>& lens,
                             float scale, bool flat, int mode, mx::Stream s);

// k, v [rows, Hk, capacity, D] f32 with new frames [N ≤ rows, Hk, T, D] written at starts[b] in row b
// (in place when nothing else holds the storage). Returns {k, v}.
std::vector<mx::array> kv_append_rows(const mx::array& k, const mx::array& v, const mx::array& k_new,
                                      const mx::array& v_new, const std::vector<int>& starts, int mode, mx::Stream s);

// k, v [B, Hk, capacity, D] with new frames [B, Hk, T, D] at position `start` (two SliceUpdates; no
// primitive). Returns {k, v}.
std::vector<mx::array> kv_append(const mx::array& k, const mx::array& v, const mx::array& k_new,
                                 const mx::array& v_new, int start, mx::Stream s);

// ---- primitives ----------------------------------------------------------------------------------------

// Inputs: u, conv_state, w0, b0, w1, b1. Outputs: z, new conv_state.
class CcaConv : public CpuPrimitive {
 public:
  CcaConv(mx::Stream stream, ConvDims d) : CpuPrimitive(stream), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaCcaConv"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return shapes(d_); }
  static std::vector<mx::Shape> shapes(const ConvDims& d) { return {{d.B, d.T, d.C}, {d.B, d.C, d.S}}; }
  auto state() const { return std::make_tuple(d_.B, d_.T, d_.C, d_.K0, d_.K1, d_.S, d_.G, d_.Cg); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  ConvDims d_;
};

struct QkDims : ConvDims {
  int Hq, Hk, D, rd;
  int clamp_temp;
  int offset;
  // per-sequence positions of the first frame (size B; empty: `offset` for every sequence)
  std::vector<int> row_offsets;
  float theta;
  int w0_t, b0_t, w1_t, b1_t, temp_t;
  int offset_of(int64_t b) const { return row_offsets.empty() ? offset : row_offsets[(size_t)b]; }
};

// Inputs: u, conv_state, w0, b0, w1, b1, temp, values. Outputs: q, k, v, new conv_state.
class CcaQk : public CpuPrimitive {
 public:
  CcaQk(mx::Stream s, QkDims d, const kern::Table* tab) : CpuPrimitive(s), d_(std::move(d)), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaCcaQk"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return shapes(d_); }
  static std::vector<mx::Shape> shapes(const QkDims& d) {
    return {{d.B, d.Hq, d.T, d.D}, {d.B, d.Hk, d.T, d.D}, {d.B, d.Hk, d.T, d.D}, {d.B, d.C, d.S}};
  }
  auto state() const {
    return std::make_tuple(d_.B, d_.T, d_.C, d_.K0, d_.K1, d_.S, d_.G, d_.Cg, d_.Hq, d_.Hk, d_.D, d_.rd,
                           d_.clamp_temp, d_.offset, d_.row_offsets, d_.theta, d_.w0_t, d_.b0_t, d_.w1_t, d_.b1_t,
                           d_.temp_t, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  QkDims d_;
  const kern::Table* tab_;
};

struct AttnDims {
  int B, Hq, Hk, T, D, cap, len;  // len: the valid positions (the largest of `lens` when given)
  float scale;
  int flat;  // output [B·T, Hq·D] instead of [B, T, Hq·D]
  // per-sequence valid positions (size B; empty: `len` for every sequence). Sequence b reads row b of
  // the KV storage, which may hold more rows than B.
  std::vector<int> lens;
  int64_t len_of(int64_t b) const { return lens.empty() ? len : lens[(size_t)b]; }
};

// Inputs: q, k, v.
class CcaAttention : public CpuPrimitive {
 public:
  CcaAttention(mx::Stream s, AttnDims d, const kern::Table* tab) : CpuPrimitive(s), d_(std::move(d)), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaCcaAttention"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {shape(d_)}; }
  static mx::Shape shape(const AttnDims& d) {
    return d.flat ? mx::Shape{d.B * d.T, d.Hq * d.D} : mx::Shape{d.B, d.T, d.Hq * d.D};
  }
  auto state() const {
    return std::make_tuple(d_.B, d_.Hq, d_.Hk, d_.T, d_.D, d_.cap, d_.len, d_.scale, d_.flat, d_.lens, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  AttnDims d_;
  const kern::Table* tab_;
};

struct AppendDims {
  int N, Hk, T, D, rows, cap;
  std::vector<int> starts;  // per sequence: the position its T new frames go to
};

// Writes new [N, Hk, T, D] into rows 0..N of the storage [rows, Hk, cap, D] at each sequence's own
// position. The output takes over the storage's buffer when nothing else holds it (as MLX's
// SliceUpdate does), so a decode step writes N·Hk·T·D floats instead of copying the cache.
// Inputs: storage, new frames (f32).
class KvAppendRows : public CpuPrimitive {
 public:
  KvAppendRows(mx::Stream s, AppendDims d) : CpuPrimitive(s), d_(std::move(d)) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaKvAppendRows"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  auto state() const { return std::make_tuple(d_.N, d_.Hk, d_.T, d_.D, d_.rows, d_.cap, d_.starts); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  AppendDims d_;
};

}  // namespace zaya
