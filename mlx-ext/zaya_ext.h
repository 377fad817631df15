// zaya-mlx C++ MLX extension: the C ABI the Rust crate calls (src/ext.rs).
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

const char* zaya_ext_last_error(void);
const char* zaya_ext_version(void);

// CCA two-stage causal convolution over time (zaya-architecture.md §3.2 step 2, §3.3).
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

#ifdef __cplusplus
}
#endif
