// zaya-mlx C++ MLX extension: the C ABI the Rust crate calls (src/ext/sys.rs). The entry points of the
// ops are in c_api.cpp; the ops themselves are declared in the per-concern headers (affine.h, cca.h,
// layers.h, tq_switch_glu.h).
//
// Conventions for every exported function:
//   * arrays cross as mlx-c handles (`mlx_array`); outputs are written into caller-owned handles
//     created with mlx_array_new() (set, never freed here);
//   * the return value is 0 on success and non-zero on failure; then zaya_ext_last_error() returns a
//     message (thread-local, valid until the next call on the same thread). No C++ exception ever
//     crosses this boundary;
//   * `mode` picks the implementation: ZAYA_EXT_AUTO uses the custom primitive where it has a kernel
//     (CPU streams) and the portable plain-MLX-ops graph elsewhere (GPU streams);
//     ZAYA_EXT_PORTABLE always builds the plain-ops graph (the test reference);
//     ZAYA_EXT_PRIMITIVE forces the custom primitive (an error on a stream without a kernel).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "mlx/c/array.h"
#include "mlx/c/stream.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { ZAYA_EXT_AUTO = 0, ZAYA_EXT_PORTABLE = 1, ZAYA_EXT_PRIMITIVE = 2 };
// Flag OR'ed into `mode`: the `bf16` precision of the affine and TurboQuant matmuls (zaya_affine_matmul,
// zaya_affine_multi, zaya_tq_switch_glu): their CPU kernels use bf16 dot products with f32 accumulation
// (x and the decoded weights rounded to bf16) for calls with many token rows where the CPU has
// AVX512-BF16, and f32 elsewhere. The portable graphs compute in f32. Other ops ignore it.
enum { ZAYA_EXT_BF16_DOT = 16 };

const char* zaya_ext_last_error(void);
const char* zaya_ext_version(void);

// CCA two-stage causal convolution over time (docs/model.md §3.2 step 2, §3.3).
//   u      [B, T, C] float32   pre-conv frames (q channels then k channels)
//   state  [B, C, S] float32   the last S = (K0-1)+(K1-1) raw frames, oldest first (zeros at start)
//   w0     [C, K0, 1]          depthwise conv weight (MLX layout), b0 [C]
//   w1     [C, K1, C/G]        grouped conv weight (MLX layout, G groups), b1 [C]
// Outputs: z [B, T, C] float32 and new_state [B, C, S] float32.
int zaya_cca_conv(mlx_array* z, mlx_array* new_state, mlx_array u, mlx_array state, mlx_array w0,
                  mlx_array b0, mlx_array w1, mlx_array b1, int mode, mlx_stream stream);

// Counts the unevaluated primitive nodes reachable from `outs` (siblings once) and how many of them
// are dtype casts (AsType). For benchmarks: graph nodes evaluated per decode step.
int zaya_graph_nodes(const mlx_array* outs, size_t n, int64_t* nodes, int64_t* casts);
// The same nodes by primitive name: "Name count\n" lines, most frequent first (NULL on error).
const char* zaya_graph_histogram(const mlx_array* outs, size_t n);

// ---- Kernel trace (profiling support) -------------------------------------------------------------
// While enabled, every custom primitive's CPU task records its name (a static string) and its start and
// end time (ns on the steady clock, the clock zaya_ext_now_ns reads) when it runs. Off by default; the
// check costs one relaxed atomic load per task.
void zaya_ext_trace_enable(int on);
int64_t zaya_ext_now_ns(void);
// Moves up to `cap` records, oldest first, into the three arrays; returns how many were written.
size_t zaya_ext_trace_take(const char** names, int64_t* t0, int64_t* t1, size_t cap);

// ---- Kernel instruction set (TurboQuant and affine primitives) ---------------------------------------
// Levels: 0 = portable scalar C++, 1 = AVX2+FMA+F16C, 2 = AVX-512 (F/BW/DQ/VL). The kernels use the best
// level the CPU supports, capped by ZAYA_EXT_ISA=scalar|avx2|avx512 or zaya_ext_set_max_isa. The level
// is read when an op is built.
int zaya_ext_detected_isa(void);     // best level this CPU supports
int zaya_ext_kernel_isa(void);       // level ops built now will use
int zaya_ext_set_max_isa(int level); // sets the cap, returns the previous cap
int zaya_ext_bf16_dot(void);          // 1 when ops built now run ZAYA_EXT_BF16_DOT with bf16 dot products
// Token rows from which a call takes the panel GEMM: 0 = affine (f32 and bf16 panels), 1 = TurboQuant
// expert groups with bf16 dot products, 2 = float (f32/f16/bf16) matrices (f32 panels), 3 = TurboQuant
// expert groups whose bf16 panels are transposed to lanes (4-bit codes); -1 for another kind.
int zaya_ext_panel_min_rows(int kind);

// ---- TurboQuant routed experts: fused switch-GLU ----------------------------------------------------
// y[d] = down_e( R_d( silu(gate_e x̂) * up_e x̂ ) ) for each dispatch d = (token n, slot k), e = idx[n, k],
// where x̂ = R_gu(x[n]) and R(v) = H (s ⊙ v) / sqrt(dim) (Sylvester order; x is taken UNROTATED), and a
// TurboQuant projection computes out[r] = norms[e, r] * sum_i codebook[code(e, r, i)] * v̂[i].
//   x            [N, H] float32 (unrotated activations)
//   idx          [N] or [N, K] int32/uint32 expert ids; an id outside [0, E) (e.g. the skip route E)
//                gives a zero output row and reads no weights
//   gate_packed, up_packed  [E, I, ceil(H / (32/bits_gu))] uint32 (codes LSB-first)
//   gate_norms, up_norms    [E, I] float16/bfloat16/float32
//   down_packed  [E, O, ceil(I / (32/bits_d))] uint32, down_norms [E, O]
//   gu_codebook  [2^bits_gu] float32, gu_signs [H] float32; down_codebook [2^bits_d], down_signs [I]
//   bits_gu, bits_d in {2, 3, 4}; H and I powers of two
// Output: y [N, O] (idx [N]) or [N, K, O] (idx [N, K]), float32. The router's gate weight is not
// applied.
int zaya_tq_switch_glu(mlx_array* y, mlx_array x, mlx_array idx, mlx_array gate_packed,
                       mlx_array gate_norms, mlx_array up_packed, mlx_array up_norms,
                       mlx_array down_packed, mlx_array down_norms, mlx_array gu_codebook,
                       mlx_array gu_signs, int bits_gu, mlx_array down_codebook, mlx_array down_signs,
                       int bits_d, int mode, mlx_stream stream);

// ---- MLX affine quantized matmul and embedding gather ----------------------------------------------
// y = x · Wᵀ with W[r, j] = scales[r, j/G] * q[r, j] + biases[r, j/G] (MLX affine, codes LSB-first).
//   x       [..., in] float32
//   w       [out, in*bits/32] uint32, bits in {4, 8}
//   scales, biases [out, in/G] float16/bfloat16/float32 (same dtype; negative scales allowed)
//   G (group_size) divides in and covers whole words (G % (32/bits) == 0)
// Output: y [..., out] float32.
int zaya_affine_matmul(mlx_array* y, mlx_array x, mlx_array w, mlx_array scales, mlx_array biases,
                       int bits, int group_size, int mode, mlx_stream stream);

// Several affine matmuls as one op, outputs side by side: y = [x_0·W_0ᵀ ‖ x_1·W_1ᵀ ‖ …] for k ≤ 4
// weights of one bit width and group size; every x_i float32 with the same number of rows N (any
// leading shape). Output: x_0's leading shape + [Σ out_i], float32.
int zaya_affine_multi(mlx_array* y, const mlx_array* xs, const mlx_array* ws, const mlx_array* scales,
                      const mlx_array* biases, size_t k, int bits, int group_size, int mode, mlx_stream stream);

// Dequantized rows of the same affine weight: out[..., :] = W[ids[...], :] as float32, shape
// ids.shape + [in]. ids int32/uint32; an id outside [0, out) gives a zero row (the caller validates
// token ids; the kernel never reads out of bounds).
int zaya_affine_embed(mlx_array* y, mlx_array ids, mlx_array w, mlx_array scales, mlx_array biases,
                      int bits, int group_size, int mode, mlx_stream stream);

// ---- Dense affine layer with float weights ----------------------------------------------------------
// y = x · Wᵀ (+ b): x [..., in] float32, w [out, in] float16/bfloat16/float32 (read as stored), bias
// [out] float16/bfloat16/float32 or an empty handle (ctx == NULL) for none. Output [..., out] float32.
int zaya_dense_matmul(mlx_array* y, mlx_array x, mlx_array w, mlx_array bias, int mode, mlx_stream stream);

// ---- Fused layer primitives (layers.cpp); optional arguments are empty handles (ctx == NULL) ----------
// Residual scaling, merge and RMSNorm of one half-layer (docs/model.md §2.3, §2.5):
//   r_out = (h + h_bias) ⊙ h_scale + [(r + r_bias) ⊙ r_scale | r | nothing]
//   x_out = r_out · rsqrt(mean(r_out²) + eps) ⊙ norm_w
// h, r [..., H] float32 (r optional); h_bias, h_scale, r_bias, r_scale (optional, together), norm_w [H]
// float32. Outputs r_out, x_out [..., H] float32.
int zaya_res_norm(mlx_array* r_out, mlx_array* x_out, mlx_array h, mlx_array r, mlx_array h_bias,
                  mlx_array h_scale, mlx_array r_bias, mlx_array r_scale, mlx_array norm_w, float eps, int mode,
                  mlx_stream stream);

// The MoE router (docs/model.md §4.2) for N tokens:
//   r = x·W_dᵀ + b_d (+ prev ⊙ states_scale); n = RMSNorm(r; norm_w, eps);
//   logits = W₄·GELU(W₂·GELU(W₀·n + b₀) + b₂) (exact-erf GELU); p = softmax(logits);
//   choice = argmax(p + balancing) (first maximum), score = p[choice].
//   x [N, H] float32; prev [N, R] float32 and states_scale [R] (optional, together);
//   down_w [R, H], w0/w2 [R, R], w4 [L, R] float16/bfloat16/float32; down_b, norm_w, b0, b2 [R] and
//   balancing [L] float32; num_experts E ≤ L (ids ≥ E are the skip route).
// Outputs: choice [N] int32, score [N] float32, state [N, R] float32 (= r), probs [N, L] float32,
// skipped [] int32 (tokens with choice ≥ E).
int zaya_router(mlx_array* choice, mlx_array* score, mlx_array* state, mlx_array* probs, mlx_array* skipped,
                mlx_array x, mlx_array prev, mlx_array states_scale, mlx_array down_w, mlx_array down_b,
                mlx_array norm_w, float eps, mlx_array w0, mlx_array b0, mlx_array w2, mlx_array b2, mlx_array w4,
                mlx_array balancing, int num_experts, int mode, mlx_stream stream);

// MoE output (docs/model.md §4.4, §4.5): y[n] = score[n]·ey[n] when 0 ≤ choice[n] < E, else
// score[n]·x[n] (zero_skip = 0, the p·x skip route) or 0 (zero_skip = 1).
//   ey, x [N, H] float32; choice [N] int32; score [N] float32. Output y [N, H] float32.
int zaya_moe_combine(mlx_array* y, mlx_array ey, mlx_array x, mlx_array choice, mlx_array score, int num_experts,
                     int zero_skip, int mode, mlx_stream stream);

// ---- CCA attention after the projections (cca.h: cca_qk.cpp, cca_attn.cpp) ----------------------------
// The CCA q/k chain (docs/model.md §3.2 steps 2–6): the two-stage causal conv over u = [q̃ ‖ k̃]
// with the carried state, the mean paths, L2 normalisation to √D (max(‖·‖, 1e-6)), the key temperature
// (exp(clip(temp, 1e-7, 2)) when clamp_temp), partial NeoX RoPE (rotary_dim, rope_theta) at absolute
// positions offset + t (or row_offsets[b] + t for sequence b when n_row_offsets = B > 0: ragged batches),
// and the values split per KV head.
//   u [B, T, (Hq+Hk)·D] (or [B·T, ...], B from state) float32; state [B, C, S] float32; w0 [C, K0, 1], b0 [C], w1 [C, K1, C/G], b1 [C]
//   (float16/bfloat16/float32, MLX layout); temp [Hk] float; values [B, T, Hk·D] float32.
// Outputs: q [B, Hq, T, D], k [B, Hk, T, D], v [B, Hk, T, D], new_state [B, C, S], float32.
int zaya_cca_qk(mlx_array* q, mlx_array* k, mlx_array* v, mlx_array* new_state, mlx_array u, mlx_array state,
                mlx_array w0, mlx_array b0, mlx_array w1, mlx_array b1, mlx_array temp, mlx_array values,
                int q_heads, int kv_heads, int rotary_dim, float rope_theta, int clamp_temp, int offset,
                const int32_t* row_offsets, size_t n_row_offsets, int mode, mlx_stream stream);

// Causal GQA attention over the first `len` positions of KV cache arrays (any capacity): query t sits
// at position len - T + t and attends positions 0 ..= that; softmax(scale · q·kᵀ)·v in float32.
//   q [B, Hq, T, D], k/v [B, Hk, capacity, D] float32 (Hk divides Hq; q-head h reads KV head h/(Hq/Hk)).
// Output: [B, T, Hq·D] float32 (heads concatenated), or [B·T, Hq·D] when `flat`.
int zaya_cca_attention(mlx_array* y, mlx_array q, mlx_array k, mlx_array v, int len, float scale, int flat,
                       int mode, mlx_stream stream);

// Ragged batches: sequence b attends the first lens[b] positions of row b of k/v ([R, Hk, capacity, D]
// with R ≥ B rows; n_lens = B); its query t sits at position lens[b] - T + t. Same output as above.
int zaya_cca_attention_rows(mlx_array* y, mlx_array q, mlx_array k, mlx_array v, const int32_t* lens, size_t n_lens,
                            float scale, int flat, int mode, mlx_stream stream);

// Ragged KV append: new frames k_new/v_new [N, Hk, T, D] go to positions [starts[b], starts[b]+T) of row b
// of the storage k/v [R, Hk, capacity, D] float32 (R ≥ N, n_starts = N). One node per array, which takes
// over the storage's buffer when nothing else holds it (in-place writes, as SliceUpdate).
int zaya_kv_append_rows(mlx_array* k_out, mlx_array* v_out, mlx_array k, mlx_array v, mlx_array k_new,
                        mlx_array v_new, const int32_t* starts, size_t n_starts, int mode, mlx_stream stream);

// KV cache append without reshapes: k_out = k with positions [start, start+T) replaced by k_new, same for
// v (two SliceUpdate nodes; MLX updates in place when the old storage is not shared).
//   k, v [B, Hk, capacity, D]; k_new, v_new [B, Hk, T, D] (cast to the storage dtype).
int zaya_kv_append(mlx_array* k_out, mlx_array* v_out, mlx_array k, mlx_array v, mlx_array k_new, mlx_array v_new,
                   int start, mlx_stream stream);

#ifdef __cplusplus
}
#endif
