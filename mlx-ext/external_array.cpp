// Zero-copy MLX arrays over external memory (the memory-mapped safetensors shards of a bundle).
//
// mlx-c's `mlx_array_new_data_managed` goes through `allocator::make_buffer`, which the CPU allocator of
// MLX 0.32 does not implement, so it always copies. With that allocator (CPU-only builds) a `Buffer` is a
// pointer to a `size_t` size header followed by the data (`Buffer::raw_ptr()` = ptr + sizeof(size_t)),
// and an array built from a Buffer with a custom deleter never goes through the allocator again. We
// therefore build the Buffer from `data - sizeof(size_t)`. Whether the allocator has that layout is
// checked once at run time on a real allocation (Metal and CUDA buffers are objects, for which the
// check fails without dereferencing anything foreign), and again per array (`raw_ptr()` must give back
// `data` exactly); otherwise we fall back to MLX's own managed constructor (which copies, or wraps
// page-aligned memory on Metal).
//
// Contract with the caller (src/bundle/mmap.rs):
//   * the 8 bytes before `data` are readable (MLX may read them as the "buffer size" when deciding
//     whether an op can reuse (donate) the input buffer; garbage there only changes that decision);
//   * the memory is writable copy-on-write (MAP_PRIVATE, PROT_READ|PROT_WRITE): a donated buffer is
//     written in place, which then only dirties private pages and never the file;
//   * once an array has been constructed (`*consumed` set to 1), ownership of `payload` has passed to
//     MLX: `release(payload)` runs exactly once, when the last array sharing the data is freed (or right
//     after the copy in the fallback path). While `*consumed` is 0 (argument errors), `release` is never
//     called and the caller keeps the payload.
#include "common.h"

namespace zaya {
namespace {

mx::Dtype dtype_from_code(int code) {
  // The numbering of mlx-c's mlx_dtype enum.
  switch (code) {
    case MLX_BOOL: return mx::bool_;
    case MLX_UINT8: return mx::uint8;
    case MLX_UINT16: return mx::uint16;
    case MLX_UINT32: return mx::uint32;
    case MLX_UINT64: return mx::uint64;
    case MLX_INT8: return mx::int8;
    case MLX_INT16: return mx::int16;
    case MLX_INT32: return mx::int32;
    case MLX_INT64: return mx::int64;
    case MLX_FLOAT16: return mx::float16;
    case MLX_FLOAT32: return mx::float32;
    case MLX_FLOAT64: return mx::float64;
    case MLX_BFLOAT16: return mx::bfloat16;
    default: fail("unsupported dtype code " + std::to_string(code));
  }
}

// True when the allocator is MLX's common CPU allocator: a buffer is [size_t size][data...].
bool cpu_buffer_layout() {
  static const bool ok = [] {
    try {
      auto b = mx::allocator::malloc(16);
      bool r = b.ptr() != nullptr && static_cast<char*>(b.raw_ptr()) == static_cast<char*>(b.ptr()) + sizeof(size_t) &&
               *static_cast<size_t*>(b.ptr()) == 16;
      mx::allocator::free(b);
      return r;
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

}  // namespace
}  // namespace zaya

extern "C" int zaya_array_from_external(mlx_array* out, void* data, const int* shape, int ndim, int dtype,
                                        void* payload, void (*release)(void*), int* zero_copy,
                                        int* consumed) {
  using namespace zaya;
  return guard("zaya_array_from_external", [&] {
    if (consumed) *consumed = 0;
    if (!out) fail("null output handle");
    if (!data) fail("null data pointer");
    if (!release) fail("null release callback");
    if (ndim < 0 || (ndim > 0 && !shape)) fail("bad shape");
    mx::Shape shp;
    for (int i = 0; i < ndim; ++i) {
      if (shape[i] < 0) fail("negative dimension in shape");
      shp.push_back(shape[i]);
    }
    mx::Dtype dt = dtype_from_code(dtype);
    char* p = static_cast<char*>(data);
    mx::allocator::Buffer probe(p - sizeof(size_t));
    auto deleter_payload = payload;
    auto deleter_release = release;
    if (cpu_buffer_layout() && probe.raw_ptr() == data) {
      mx::array a(probe, std::move(shp), dt,
                  [deleter_payload, deleter_release](mx::allocator::Buffer) { deleter_release(deleter_payload); });
      if (consumed) *consumed = 1;
      if (zero_copy) *zero_copy = 1;
      set(out, std::move(a));
    } else {
      mx::array a(data, std::move(shp), dt,
                  [deleter_payload, deleter_release](void*) { deleter_release(deleter_payload); });
      if (consumed) *consumed = 1;
      if (zero_copy) *zero_copy = 0;
      set(out, std::move(a));
    }
  });
}
