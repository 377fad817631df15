// The CCA two-stage causal convolution (docs/model.md §3.2 step 2 and §3.3) of one sequence, as the CPU
// kernels of cca_conv (cca_conv.cpp) and of the fused q/k chain cca_qk (cca_qk.cpp) both run it.
//
// With S = (K0-1)+(K1-1) carried frames, the padded stream is P = [state_0..state_{S-1}, u_0..u_{T-1}]
// (T+S frames). The depthwise conv (kernel K0, bias) gives a_i = b0 + sum_k w0[c,k] P_{i+k} for
// i < T+S-K0+1; the grouped conv (kernel K1, G groups, bias) gives
// z_t = b1 + sum_k sum_{j in group(c)} w1[c,k,j] a_{t+k}. The new state is the last S frames of P.
// The zero frames at sequence start pass through conv 0 with its bias, exactly as a literal zero pad.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "simd_kernels.h"

namespace zaya {

// The conv's geometry: batch B, frames T, channels C, kernel sizes K0 and K1, carried frames
// S = (K0-1)+(K1-1), G groups of Cg channels in the grouped stage.
struct ConvDims {
  int B, T, C, K0, K1, S, G, Cg;
};

// The conv's parameters as the kernel reads them: the depthwise taps transposed to [K0, C] and both
// biases in f32 (converted once per call from f16/bf16/f32), the grouped taps [C, K1·Cg] as stored.
struct ConvWeights {
  std::vector<float> w0t, b0, b1;
  kern::DenseMat w1;
  ConvWeights(const ConvDims& d, const void* w0, int w0_type, const void* b0, int b0_type, const void* w1,
              int w1_type, const void* b1, int b1_type);
};

// The per-call buffers: P [T+S, C] time-major and the depthwise output A of T+K1-1 frames (time-major
// [T+K1-1, C] for the per-channel order, group-major [G, T+K1-1, Cg] for the per-group GEMMs).
// Left uninitialised: every element is written before it is read.
struct ConvScratch {
  std::unique_ptr<float[]> P, A;
  explicit ConvScratch(const ConvDims& d);
};

// One sequence: u [T, C] time-major and its carried frames state [C, S] (channel-major) give
// z [T, C] (time-major) and new_state [C, S].
//
// The grouped stage sums in one of two orders, each kept bit for bit from the kernel it came from:
//   * tab != nullptr (cca_qk): per group, one tab->dense_rows GEMV/GEMM over the window
//     [a_t[g] ‖ a_{t+1}[g] ‖ …] of K1·Cg values, then + b1; weights of any float type; threads over groups.
//   * tab == nullptr (cca_conv): per output channel, acc = b1 then + (sum over the group) tap by tap,
//     in plain scalar f32; f32 weights only; threads over channels.
void causal_conv(const ConvDims& d, const ConvWeights& w, const float* u, const float* state, ConvScratch& sc,
                 float* z, float* new_state, const kern::Table* tab);

// B sequences of one new frame each (a batched decode step, d.T == 1): u [B, C], state [B, C, S] give
// z [B, C] and new_state [B, C, S]. Each sequence's depthwise stage is causal_conv's; the grouped stage
// is one tab->dense_rows call per group over the B windows, so each group's taps are read once for
// every row instead of once per sequence. A row's z can differ from causal_conv's in the last bits (the
// GEMM sums tiles of 2–4 rows in one accumulator per row where a single row splits two).
void causal_conv_frames(const ConvDims& d, const ConvWeights& w, int64_t B, const float* u, const float* state,
                        float* z, float* new_state, const kern::Table* tab);

}  // namespace zaya
