// TurboQuant (MXTQ) routed experts as one fused switch-GLU (docs/bundle-format.md §3, §4); op and
// kernel in tq_switch_glu.cpp.
#pragma once

#include <tuple>
#include <vector>

#include "common.h"
#include "simd_kernels.h"

namespace zaya {

// ---- op ----------------------------------------------------------------------------------------------

// y[d] = down_e(R_d(silu(gate_e x̂) ⊙ up_e x̂)), x̂ = R_gu(x), for each dispatch d = (token, slot) with
// expert e = idx[d] (see zaya_tq_switch_glu in zaya_ext.h for the shapes). Checks the arguments, then
// builds the primitive (`mode`, stream: see use_primitive) or the portable graph of plain MLX ops.
mx::array tq_switch_glu(const mx::array& x, const mx::array& idx, const mx::array& gate_packed,
                        const mx::array& gate_norms, const mx::array& up_packed, const mx::array& up_norms,
                        const mx::array& down_packed, const mx::array& down_norms, const mx::array& gu_codebook,
                        const mx::array& gu_signs, int bits_gu, const mx::array& down_codebook,
                        const mx::array& down_signs, int bits_d, int mode, mx::Stream s);

// ---- primitive ---------------------------------------------------------------------------------------

struct TqDims {
  int N, K, H, I, O, E;
  int bits_gu, bits_d;
  int cols_gu, cols_d;
  int gn_type, un_type, dn_type;
  int idx_2d;
  int bf16;  // the bf16 matmul precision (ZAYA_EXT_BF16_DOT)
};

// Inputs in the order of the op's arguments (x, idx, gate packed/norms, up, down, codebooks, signs).
class TqSwitchGlu : public CpuPrimitive {
 public:
  TqSwitchGlu(mx::Stream stream, TqDims d, const kern::Table* tab) : CpuPrimitive(stream), d_(d), tab_(tab) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  const char* name() const override { return "ZayaTqSwitchGlu"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return {shape(d_)}; }
  static mx::Shape shape(const TqDims& d) { return d.idx_2d ? mx::Shape{d.N, d.K, d.O} : mx::Shape{d.N, d.O}; }
  auto state() const {
    return std::make_tuple(d_.N, d_.K, d_.H, d_.I, d_.O, d_.E, d_.bits_gu, d_.bits_d, d_.cols_gu, d_.cols_d,
                           d_.gn_type, d_.un_type, d_.dn_type, d_.idx_2d, d_.bf16, tab_);
  }
  bool is_equivalent(const mx::Primitive& other) const override { return same_state(*this, other); }

 private:
  TqDims d_;
  const kern::Table* tab_;
};

}  // namespace zaya
