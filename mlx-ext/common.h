// Shared helpers of the zaya-mlx extension: error capture at the C boundary, handle conversion,
// argument checks (run while the graph is built, never inside a scheduled CPU task) and a small
// fork-join helper for kernels.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <mlx/mlx.h>
#include <mlx/primitives.h>
#include <mlx/backend/cpu/encoder.h>
#include <mlx/allocator.h>

#include "primitive.h"
#include "zaya_ext.h"

namespace zaya {
namespace mx = mlx::core;

void set_last_error(const std::string& msg);

// Runs `f`; converts any exception into a non-zero return code plus zaya_ext_last_error().
template <class F>
int guard(const char* fn, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_last_error(std::string(fn) + ": " + e.what());
  } catch (...) {
    set_last_error(std::string(fn) + ": unknown C++ exception");
  }
  return 1;
}

inline mx::array& get(mlx_array a, const char* what) {
  if (!a.ctx) throw std::invalid_argument(std::string(what) + " is an empty array handle");
  return *static_cast<mx::array*>(a.ctx);
}

inline mx::Stream get(mlx_stream s) {
  if (!s.ctx) return mx::default_stream(mx::default_device());
  return *static_cast<mx::Stream*>(s.ctx);
}

inline void set(mlx_array* dst, mx::array v) {
  if (dst->ctx) {
    *static_cast<mx::array*>(dst->ctx) = std::move(v);
  } else {
    dst->ctx = new mx::array(std::move(v));
  }
}

std::string shape_str(const mx::Shape& s);
std::string dtype_str(mx::Dtype t);

[[noreturn]] void fail(const std::string& msg);
void expect_dtype(const mx::array& a, mx::Dtype t, const char* name);
void expect_ndim(const mx::array& a, int ndim, const char* name);

// Is there a custom CPU kernel for this stream?
inline bool has_cpu_kernel(const mx::Stream& s) { return s.device == mx::Device::cpu; }

// Throws for a mode other than ZAYA_EXT_AUTO / PORTABLE / PRIMITIVE, optionally | ZAYA_EXT_BF16_DOT.
void check_mode(int mode);
// The mode without its flags, and whether it asks for the bf16 matmul precision.
inline int mode_base(int mode) { return mode & ~ZAYA_EXT_BF16_DOT; }
inline bool mode_bf16(int mode) { return (mode & ZAYA_EXT_BF16_DOT) != 0; }

// Whether an op built in `mode` on stream `s` uses its custom primitive (true) or its portable graph:
// PRIMITIVE on a stream without a CPU kernel is an error naming the primitive `what`.
bool use_primitive(int mode, const mx::Stream& s, const char* what);

// A weight read through raw row-major pointers inside a task: itself when it is already evaluated and
// row-contiguous, otherwise behind a Contiguous node. (Activations are packed inside the task instead.)
mx::array weight_input(const mx::array& a, mx::Stream s);

// Row-major contiguous elements of `a`: its own buffer when it is row-contiguous, otherwise a packed
// copy in `scratch` (strided gather; broadcast and transposed views included). Call only inside the
// scheduled task, once the input's data exist. Lets primitives take lazy views without Contiguous nodes.
const void* row_major(const mx::array& a, std::vector<char>& scratch);

// Element type code of a float array (kern::kF32 / kF16 / kBF16); throws for other dtypes.
int float_type_of(const mx::array& a, const char* name);

// Is `a` usable as an optional argument (a non-empty handle)?
inline const mx::array* opt(mlx_array a) { return a.ctx ? static_cast<const mx::array*>(a.ctx) : nullptr; }

// The prologue of every eval_cpu: allocates the outputs, registers inputs and outputs with the
// stream's CPU command encoder (which keeps them alive until the dispatched task has run) and
// returns the encoder, for `enc.dispatch(task)`.
inline mx::cpu::CommandEncoder& cpu_encoder(mx::Stream s, const std::vector<mx::array>& in,
                                            std::vector<mx::array>& out) {
  for (auto& o : out) o.set_data(mx::allocator::malloc(o.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(s);
  for (auto& a : in) enc.set_input_array(a);
  for (auto& o : out) enc.set_output_array(o);
  return enc;
}

// Number of worker threads kernels split their work over (ZAYA_THREADS or the hardware count).
int num_threads();

// Runs f(begin, end) over disjoint ranges covering [0, n), on the calling thread plus the pool's
// workers: up to `chunks_per_thread` ranges per thread of at least `min_chunk` items (multiples of it,
// except the last), handed out dynamically, so that with several per thread a late or preempted thread
// does not hold up the others. Weight-streaming kernels pass kStreamChunks instead: every range start
// costs a software-prefetch ramp-up, and one contiguous range per thread measured 10–20% faster on
// 1–3 MB matrices (alternating both in one process), also with another process busy.
constexpr int kDynamicChunks = 4;
constexpr int kStreamChunks = 1;
void parallel_for(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& f,
                  int chunks_per_thread = kDynamicChunks);

// ---- Kernel trace (profiling support) ----
// While on (zaya_ext_trace_enable), each task wrapped by traced() records its name and its start and
// end on the steady clock when it runs on the stream thread; zaya_ext_trace_take drains the records.
extern std::atomic<bool> g_trace_on;
int64_t now_ns();
void trace_record(const char* name, int64_t t0, int64_t t1);

// `task` (a dispatched eval_cpu body) wrapped so that it is traced while tracing is on.
template <class F>
auto traced(const char* name, F task) {
  return [name, task = std::move(task)]() mutable {
    if (!g_trace_on.load(std::memory_order_relaxed)) {
      task();
      return;
    }
    const int64_t t0 = now_ns();
    task();
    trace_record(name, t0, now_ns());
  };
}

}  // namespace zaya
