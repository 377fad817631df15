// The C ABI of the ops (zaya_ext.h): each entry point unwraps the mlx-c handles and C arrays (checking
// only what it needs to read them), calls the op function (its argument checks, then the primitive or
// the portable graph) and writes the outputs, turning any exception into a non-zero return and
// zaya_ext_last_error().
#include "affine.h"
#include "cca.h"
#include "common.h"
#include "layers.h"
#include "tq_switch_glu.h"

namespace zaya {
namespace {

// The n values of a C array argument; a null pointer with n > 0 is an error naming `what`.
std::vector<int> int_values(const int32_t* p, size_t n, const char* what) {
  if (n > 0 && !p) fail(std::string(what) + ": a null pointer for " + std::to_string(n) + " values");
  return n > 0 ? std::vector<int>(p, p + n) : std::vector<int>{};
}

void set_all(std::initializer_list<mlx_array*> dst, const std::vector<mx::array>& outs) {
  size_t i = 0;
  for (auto* d : dst) set(d, outs.at(i++));
}

}  // namespace
}  // namespace zaya

using namespace zaya;

// ---- CCA ---------------------------------------------------------------------------------------------

extern "C" int zaya_cca_conv(mlx_array* z, mlx_array* new_state, mlx_array u_h, mlx_array state_h,
                             mlx_array w0_h, mlx_array b0_h, mlx_array w1_h, mlx_array b1_h, int mode,
                             mlx_stream stream) {
  return guard("cca_conv", [&] {
    auto s = get(stream);
    auto& u = get(u_h, "u");
    auto& state = get(state_h, "conv_state");
    auto& w0 = get(w0_h, "conv_qk.0.weight");
    auto& b0 = get(b0_h, "conv_qk.0.bias");
    auto& w1 = get(w1_h, "conv_qk.1.weight");
    auto& b1 = get(b1_h, "conv_qk.1.bias");
    set_all({z, new_state}, cca_conv(u, state, w0, b0, w1, b1, mode, s));
  });
}

extern "C" int zaya_cca_qk(mlx_array* q_out, mlx_array* k_out, mlx_array* v_out, mlx_array* state_out, mlx_array u_h,
                           mlx_array state_h, mlx_array w0_h, mlx_array b0_h, mlx_array w1_h, mlx_array b1_h,
                           mlx_array temp_h, mlx_array values_h, int q_heads, int kv_heads, int rotary_dim,
                           float rope_theta, int clamp_temp, int offset, const int32_t* row_offsets,
                           size_t n_row_offsets, int mode, mlx_stream stream) {
  return guard("cca_qk", [&] {
    auto s = get(stream);
    auto& u = get(u_h, "u");
    auto& state = get(state_h, "conv_state");
    auto& w0 = get(w0_h, "conv_qk.0.weight");
    auto& b0 = get(b0_h, "conv_qk.0.bias");
    auto& w1 = get(w1_h, "conv_qk.1.weight");
    auto& b1 = get(b1_h, "conv_qk.1.bias");
    auto& temp = get(temp_h, "temp");
    auto& values = get(values_h, "values");
    auto rows = int_values(row_offsets, n_row_offsets, "row offsets");
    set_all({q_out, k_out, v_out, state_out}, cca_qk(u, state, w0, b0, w1, b1, temp, values, q_heads, kv_heads,
                                                     rotary_dim, rope_theta, clamp_temp != 0, offset, rows, mode, s));
  });
}

extern "C" int zaya_cca_attention(mlx_array* y, mlx_array q_h, mlx_array k_h, mlx_array v_h, int len, float scale,
                                  int flat, int mode, mlx_stream stream) {
  return guard("cca_attention", [&] {
    auto s = get(stream);
    auto& q = get(q_h, "queries");
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    set(y, cca_attention(q, k, v, len, scale, flat != 0, mode, s));
  });
}

extern "C" int zaya_cca_attention_rows(mlx_array* y, mlx_array q_h, mlx_array k_h, mlx_array v_h, const int32_t* lens,
                                       size_t n_lens, float scale, int flat, int mode, mlx_stream stream) {
  return guard("cca_attention_rows", [&] {
    auto s = get(stream);
    auto& q = get(q_h, "queries");
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    set(y, cca_attention_rows(q, k, v, int_values(lens, n_lens, "lens"), scale, flat != 0, mode, s));
  });
}

extern "C" int zaya_kv_append_rows(mlx_array* k_out, mlx_array* v_out, mlx_array k_h, mlx_array v_h,
                                   mlx_array k_new_h, mlx_array v_new_h, const int32_t* starts, size_t n_starts,
                                   int mode, mlx_stream stream) {
  return guard("kv_append_rows", [&] {
    auto s = get(stream);
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    auto& kn = get(k_new_h, "new keys");
    auto& vn = get(v_new_h, "new values");
    set_all({k_out, v_out}, kv_append_rows(k, v, kn, vn, int_values(starts, n_starts, "starts"), mode, s));
  });
}

extern "C" int zaya_kv_append(mlx_array* k_out, mlx_array* v_out, mlx_array k_h, mlx_array v_h, mlx_array k_new_h,
                              mlx_array v_new_h, int start, mlx_stream stream) {
  return guard("kv_append", [&] {
    auto s = get(stream);
    auto& k = get(k_h, "keys");
    auto& v = get(v_h, "values");
    auto& kn = get(k_new_h, "new keys");
    auto& vn = get(v_new_h, "new values");
    set_all({k_out, v_out}, kv_append(k, v, kn, vn, start, s));
  });
}

// ---- TurboQuant experts ------------------------------------------------------------------------------

extern "C" int zaya_tq_switch_glu(mlx_array* y, mlx_array x_h, mlx_array idx_h, mlx_array gp_h,
                                  mlx_array gn_h, mlx_array up_h, mlx_array un_h, mlx_array dp_h,
                                  mlx_array dn_h, mlx_array cbgu_h, mlx_array sgu_h, int bits_gu,
                                  mlx_array cbd_h, mlx_array sd_h, int bits_d, int mode, mlx_stream stream) {
  return guard("tq_switch_glu", [&] {
    auto s = get(stream);
    auto& x = get(x_h, "x");
    auto& idx = get(idx_h, "expert indices");
    auto& gp = get(gp_h, "gate tq_packed");
    auto& gn = get(gn_h, "gate tq_norms");
    auto& up = get(up_h, "up tq_packed");
    auto& un = get(un_h, "up tq_norms");
    auto& dp = get(dp_h, "down tq_packed");
    auto& dn = get(dn_h, "down tq_norms");
    auto& cbgu = get(cbgu_h, "gate/up codebook");
    auto& sgu = get(sgu_h, "gate/up signs");
    auto& cbd = get(cbd_h, "down codebook");
    auto& sd = get(sd_h, "down signs");
    set(y, tq_switch_glu(x, idx, gp, gn, up, un, dp, dn, cbgu, sgu, bits_gu, cbd, sd, bits_d, mode, s));
  });
}

// ---- affine and dense matmuls ------------------------------------------------------------------------

extern "C" int zaya_affine_matmul(mlx_array* y, mlx_array x_h, mlx_array w_h, mlx_array s_h, mlx_array b_h,
                                  int bits, int group_size, int mode, mlx_stream stream) {
  return guard("affine_matmul", [&] {
    auto s = get(stream);
    auto& x = get(x_h, "x");
    auto& w = get(w_h, "w");
    auto& sc = get(s_h, "scales");
    auto& bi = get(b_h, "biases");
    set(y, affine_matmul(x, w, sc, bi, bits, group_size, mode, s));
  });
}

extern "C" int zaya_affine_embed(mlx_array* y, mlx_array ids_h, mlx_array w_h, mlx_array s_h, mlx_array b_h,
                                 int bits, int group_size, int mode, mlx_stream stream) {
  return guard("affine_embed", [&] {
    auto s = get(stream);
    auto& ids = get(ids_h, "ids");
    auto& w = get(w_h, "w");
    auto& sc = get(s_h, "scales");
    auto& bi = get(b_h, "biases");
    set(y, affine_embed(ids, w, sc, bi, bits, group_size, mode, s));
  });
}

extern "C" int zaya_affine_multi(mlx_array* y, const mlx_array* xs_h, const mlx_array* ws_h, const mlx_array* ss_h,
                                 const mlx_array* bs_h, size_t k, int bits, int group_size, int mode,
                                 mlx_stream stream) {
  return guard("affine_multi", [&] {
    check_parts(k);
    auto s = get(stream);
    std::vector<mx::array> xs, ws, ss, bs;
    for (size_t i = 0; i < k; ++i) {
      const std::string tag = "[" + std::to_string(i) + "]";
      xs.push_back(get(xs_h[i], ("x" + tag).c_str()));
      ws.push_back(get(ws_h[i], ("w" + tag).c_str()));
      ss.push_back(get(ss_h[i], ("scales" + tag).c_str()));
      bs.push_back(get(bs_h[i], ("biases" + tag).c_str()));
    }
    set(y, affine_multi(xs, ws, ss, bs, bits, group_size, mode, s));
  });
}

extern "C" int zaya_dense_matmul(mlx_array* y, mlx_array x_h, mlx_array w_h, mlx_array b_h, int mode,
                                 mlx_stream stream) {
  return guard("dense_matmul", [&] {
    auto s = get(stream);
    auto& x = get(x_h, "x");
    auto& w = get(w_h, "w");
    set(y, dense_matmul(x, w, opt(b_h), mode, s));
  });
}

// ---- fused layers ------------------------------------------------------------------------------------

extern "C" int zaya_res_norm(mlx_array* r_out, mlx_array* x_out, mlx_array h_h, mlx_array r_h, mlx_array hb_h,
                             mlx_array hs_h, mlx_array rb_h, mlx_array rs_h, mlx_array w_h, float eps, int mode,
                             mlx_stream stream) {
  return guard("res_norm", [&] {
    auto s = get(stream);
    auto& h = get(h_h, "h");
    auto& hb = get(hb_h, "hidden_states_bias");
    auto& hs = get(hs_h, "hidden_states_scale");
    auto& w = get(w_h, "norm weight");
    set_all({r_out, x_out}, res_norm(h, opt(r_h), hb, hs, opt(rb_h), opt(rs_h), w, eps, mode, s));
  });
}

extern "C" int zaya_router(mlx_array* choice, mlx_array* score, mlx_array* state, mlx_array* probs,
                           mlx_array* skipped, mlx_array x_h, mlx_array prev_h, mlx_array ss_h, mlx_array dw_h,
                           mlx_array db_h, mlx_array nw_h, float eps, mlx_array w0_h, mlx_array b0_h,
                           mlx_array w2_h, mlx_array b2_h, mlx_array w4_h, mlx_array bal_h, int num_experts,
                           int mode, mlx_stream stream) {
  return guard("router", [&] {
    auto s = get(stream);
    auto& x = get(x_h, "x");
    auto& dw = get(dw_h, "down_proj weight");
    auto& db = get(db_h, "down_proj bias");
    auto& nw = get(nw_h, "rmsnorm_eda weight");
    auto& w0 = get(w0_h, "router_mlp.0 weight");
    auto& b0 = get(b0_h, "router_mlp.0 bias");
    auto& w2 = get(w2_h, "router_mlp.2 weight");
    auto& b2 = get(b2_h, "router_mlp.2 bias");
    auto& w4 = get(w4_h, "router_mlp.4 weight");
    auto& bal = get(bal_h, "balancing_biases");
    set_all({choice, score, state, probs, skipped},
            router(x, opt(prev_h), opt(ss_h), dw, db, nw, eps, w0, b0, w2, b2, w4, bal, num_experts, mode, s));
  });
}

extern "C" int zaya_moe_combine(mlx_array* y, mlx_array ey_h, mlx_array x_h, mlx_array choice_h, mlx_array score_h,
                                int num_experts, int zero_skip, int mode, mlx_stream stream) {
  return guard("moe_combine", [&] {
    auto s = get(stream);
    auto& ey = get(ey_h, "expert output");
    auto& x = get(x_h, "x");
    auto& c = get(choice_h, "routes");
    auto& p = get(score_h, "route probabilities");
    set(y, moe_combine(ey, x, c, p, num_experts, zero_skip, mode, s));
  });
}
