// Fused per-layer primitives of the ZAYA model (docs/model.md §2.3–2.5, §4.2, §4.4): the residual merge
// with RMSNorm, the MoE router, the MoE output. Ops and kernels in layers.cpp.
#pragma once

#include <tuple>
#include <vector>

#include "common.h"
#include "simd_kernels.h"

namespace zaya {

// ---- ops ---------------------------------------------------------------------------------------------
// Each checks its arguments, then builds its primitive (`mode`, stream: see use_primitive) or the
// portable graph of plain MLX ops. Optional arguments are pointers (nullptr: absent).

// R' = (h + b_h)·s_h + [(R + b_r)·s_r | R], x = RMSNorm(R')·w over the last axis; returns {R', x}.
// `rb`/`rs` (residual bias and scale) go together and need `r`.
std::vector<mx::array> res_norm(const mx::array& h, const mx::array* r, const mx::array& hb, const mx::array& hs,
                                const mx::array* rb, const mx::array* rs, const mx::array& w, float eps, int mode,
                                mx::Stream s);

// The MoE router over x [N, H]: r = down_proj(x) (+ prev·states_scale), RMSNorm, MLP with exact GELUs,
// softmax, argmax(p + balancing) (first on ties). Returns {route int32 [N], its probability [N], the
// state r [N, R], the probabilities [N, L], the number of routes ≥ num_experts (int32 scalar)}.
// `prev` and `ss` (the previous layer's state and router_states_scale) go together.
std::vector<mx::array> router(const mx::array& x, const mx::array* prev, const mx::array* ss, const mx::array& dw,
                              const mx::array& db, const mx::array& nw, float eps, const mx::array& w0,
                              const mx::array& b0, const mx::array& w2, const mx::array& b2, const mx::array& w4,
                              const mx::array& bal, int num_experts, int mode, mx::Stream s);

// y = p·(expert output) for tokens routed to an expert in [0, num_experts), p·x (or 0 with zero_skip)
// for the others.
mx::array moe_combine(const mx::array& ey, const mx::array& x, const mx::array& choice, const mx::array& score,
                      int num_experts, int zero_skip, int mode, mx::Stream s);

// ---- primitives ----------------------------------------------------------------------------------------

struct ResNormDims {
  int64_t rows;
  int H;
  int has_r, has_rsb;
  float eps;
};

// Inputs: h, [r], hb, hs, [rb, rs], w. Outputs: R', x.
class ResNorm : public CpuPrimitive {
 public:
  ResNorm(mx::Stream s, ResNormDims d) : CpuPrimitive(s), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaResNorm"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape(), in[0].shape()};
  }
  auto state() const { return std::make_tuple(d_.rows, d_.H, d_.has_r, d_.has_rsb, d_.eps); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  ResNormDims d_;
};

struct RouterDims {
  int64_t N;
  int H, R, L, E;
  int has_prev;
  int down_t, w0_t, w2_t, w4_t;
  float eps;
  int bf16;  // the bf16 matmul precision (ZAYA_EXT_BF16_DOT): the three layers' GEMMs in bf16
};

// Inputs: x, down_w, down_b, norm_w, w0, b0, w2, b2, w4, balancing, [prev, states_scale]. Outputs as
// the router op's.
class Router : public CpuPrimitive {
 public:
  Router(mx::Stream s, RouterDims d, const kern::Table* tab) : CpuPrimitive(s), d_(d), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaRouter"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return shapes(d_); }
  static std::vector<mx::Shape> shapes(const RouterDims& d) {
    const int n = static_cast<int>(d.N);
    return {{n}, {n}, {n, d.R}, {n, d.L}, {}};
  }
  auto state() const {
    return std::make_tuple(d_.N, d_.H, d_.R, d_.L, d_.E, d_.has_prev, d_.down_t, d_.w0_t, d_.w2_t, d_.w4_t, d_.eps, d_.bf16,
                           tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  RouterDims d_;
  const kern::Table* tab_;
};

struct CombineDims {
  int64_t N;
  int H, E, zero_skip;
};

// Inputs: expert output, x, routes, route probabilities.
class MoeCombine : public CpuPrimitive {
 public:
  MoeCombine(mx::Stream s, CombineDims d) : CpuPrimitive(s), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaMoeCombine"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  auto state() const { return std::make_tuple(d_.N, d_.H, d_.E, d_.zero_skip); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  CombineDims d_;
};

}  // namespace zaya
