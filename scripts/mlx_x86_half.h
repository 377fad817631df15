/* Force-included when building mlx-c and running bindgen on non-aarch64 targets.
 * mlx-c declares float16_t / bfloat16_t (and the f16/bf16 item/data accessors) only on aarch64,
 * while mlx-rs uses them unconditionally. Only pointers to these types cross the C API, so 16-bit
 * storage types are enough:
 *   - for bindgen (clang) `__fp16` becomes `__BindgenFloat16(pub u16)`, the shape mlx-rs expects;
 *   - for g++ both are uint16_t, with the same bits as MLX's own half types. */
#ifndef ZAYA_MLX_X86_HALF_COMPAT_H
#define ZAYA_MLX_X86_HALF_COMPAT_H
#if !defined(__aarch64__)
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
#if defined(__clang__)
typedef __fp16 float16_t;
#else
typedef uint16_t float16_t;
#endif
typedef uint16_t bfloat16_t;
#endif
#endif
