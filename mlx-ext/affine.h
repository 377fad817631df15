// Matmuls over stored weights (docs/bundle-format.md §2): MLX affine quantized weights (bits 4/8) for
// the attention projections, the embedding and the tied lm_head, and float weights (f16/bf16/f32) for
// the layers the bundle keeps in float (router MLP). Ops in affine_matmul.cpp and affine_dense.cpp.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include "common.h"
#include "simd_kernels.h"

namespace zaya {

constexpr int kMaxParts = 4;

// ---- ops ---------------------------------------------------------------------------------------------
// Each checks its arguments, then builds its primitive (`mode`, stream: see use_primitive) or the
// portable graph of plain MLX ops. Results are float32.

// y = x·Wᵀ, W affine-quantized [out, in·bits/32] with scales/biases [out, in/group_size]; x [..., in].
mx::array affine_matmul(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                        int bits, int group_size, int mode, mx::Stream s);

// Several affine matmuls side by side as one node: y = [x_0·W_0ᵀ ‖ x_1·W_1ᵀ ‖ …] (1 to kMaxParts parts,
// one format, the same rows in every x_i). check_parts: the part count check alone (the C ABI runs it
// before it reads k handles).
void check_parts(size_t k);
mx::array affine_multi(const std::vector<mx::array>& xs, const std::vector<mx::array>& ws,
                       const std::vector<mx::array>& scales, const std::vector<mx::array>& biases, int bits,
                       int group_size, int mode, mx::Stream s);

// Rows `ids` (int32/uint32, any shape) of the affine matrix, dequantized: [..., in]; out-of-range ids
// give zero rows.
mx::array affine_embed(const mx::array& ids, const mx::array& w, const mx::array& scales, const mx::array& biases,
                       int bits, int group_size, int mode, mx::Stream s);

// y = x·Wᵀ (+ b), W [out, in] float as stored, x [..., in] float32; `bias` optional ([out]).
mx::array dense_matmul(const mx::array& x, const mx::array& w, const mx::array* bias, int mode, mx::Stream s);

// ---- primitives ----------------------------------------------------------------------------------------

// One affine weight: its dims (N: rows of x, or ids).
struct AffDims {
  int64_t N;
  int in, out, bits, group, stype;
  auto state() const { return std::make_tuple(N, in, out, bits, group, stype); }
};

// One weight of a (multi-)matmul and its output column offset in y.
struct AffPart {
  AffDims d;
  int64_t offset;
};

struct AffMulti {
  int k;          // parts
  int64_t N;      // rows of every x
  int64_t total;  // columns of y
  AffPart part[kMaxParts];
  int bf16;       // the bf16 matmul precision (ZAYA_EXT_BF16_DOT)
};

// y[:, off_i : off_i + out_i] = x_i · W_iᵀ for every part; inputs [x_0, w_0, s_0, b_0, x_1, ...].
class AffineMatmul : public CpuPrimitive {
 public:
  AffineMatmul(mx::Stream stream, AffMulti am, const kern::Table* tab) : CpuPrimitive(stream), am_(am), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaAffineMatmul"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override;
  auto state() const {
    std::vector<std::tuple<decltype(AffDims{}.state()), int64_t>> parts;
    for (int i = 0; i < am_.k; ++i) parts.emplace_back(am_.part[i].d.state(), am_.part[i].offset);
    return std::make_tuple(am_.N, am_.total, parts, am_.bf16, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  AffMulti am_;
  const kern::Table* tab_;
};

// Rows of an affine matrix; inputs [ids, w, scales, biases].
class AffineEmbed : public CpuPrimitive {
 public:
  AffineEmbed(mx::Stream stream, AffDims d) : CpuPrimitive(stream), d_(d) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaAffineEmbed"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override;
  auto state() const { return d_.state(); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  AffDims d_;
};

struct DenseDims {
  int64_t N;
  int in, out, wtype, btype, has_bias;
};

// y = x·Wᵀ (+ b); inputs [x, w, (b)].
class DenseMatmul : public CpuPrimitive {
 public:
  DenseMatmul(mx::Stream stream, DenseDims d, const kern::Table* tab) : CpuPrimitive(stream), d_(d), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaDenseMatmul"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override;
  auto state() const { return std::make_tuple(d_.N, d_.in, d_.out, d_.wtype, d_.btype, d_.has_bias, tab_); }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  DenseDims d_;
  const kern::Table* tab_;
};

}  // namespace zaya
