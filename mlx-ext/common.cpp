#include "common.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <cstdlib>
#include <mutex>

namespace zaya {

namespace {
thread_local std::string g_last_error;
}  // namespace

void set_last_error(const std::string& msg) { g_last_error = msg; }

void CpuPrimitive::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error(std::string(name()) + " has no GPU kernel");
}

std::atomic<bool> g_trace_on{false};

namespace {
struct TraceEvent {
  const char* name;
  int64_t t0, t1;
};
std::mutex g_trace_m;
std::vector<TraceEvent> g_trace;
}  // namespace

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void trace_record(const char* name, int64_t t0, int64_t t1) {
  std::lock_guard<std::mutex> lk(g_trace_m);
  if (g_trace.size() < (1u << 22)) g_trace.push_back({name, t0, t1});
}

std::string shape_str(const mx::Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

std::string dtype_str(mx::Dtype t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void expect_dtype(const mx::array& a, mx::Dtype t, const char* name) {
  if (a.dtype() != t)
    fail(std::string(name) + " must be " + dtype_str(t) + ", got " + dtype_str(a.dtype()));
}

void expect_ndim(const mx::array& a, int ndim, const char* name) {
  if (a.ndim() != (size_t)ndim)
    fail(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
         shape_str(a.shape()));
}

const void* row_major(const mx::array& a, std::vector<char>& scratch) {
  if (a.flags().row_contiguous) return a.data<void>();
  const size_t isz = a.itemsize();
  const int nd = a.ndim();
  scratch.resize(a.size() * isz);
  if (a.size() == 0) return scratch.data();
  const char* src = static_cast<const char*>(a.data<void>());
  char* dst = scratch.data();
  const auto& sh = a.shape();
  const auto& st = a.strides();
  const int64_t inner = sh[nd - 1];
  const int64_t istride = st[nd - 1] * (int64_t)isz;
  std::vector<int64_t> idx(nd > 1 ? nd - 1 : 1, 0);
  const int64_t outer = (int64_t)a.size() / inner;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t off = 0;
    for (int d = 0; d < nd - 1; ++d) off += idx[d] * st[d];
    const char* s = src + off * (int64_t)isz;
    if (istride == (int64_t)isz) {
      std::memcpy(dst, s, inner * isz);
      dst += inner * isz;
    } else {
      for (int64_t i = 0; i < inner; ++i, dst += isz) std::memcpy(dst, s + i * istride, isz);
    }
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < sh[d]) break;
      idx[d] = 0;
    }
  }
  return scratch.data();
}

void check_mode(int mode) {
  const int base = mode_base(mode);
  if (base != ZAYA_EXT_AUTO && base != ZAYA_EXT_PORTABLE && base != ZAYA_EXT_PRIMITIVE)
    fail("unknown mode " + std::to_string(mode));
}

bool use_primitive(int mode, const mx::Stream& s, const char* what) {
  check_mode(mode);
  mode = mode_base(mode);
  if (mode == ZAYA_EXT_PRIMITIVE && !has_cpu_kernel(s))
    fail(std::string("the ") + what + " primitive has no kernel for this stream's device; use the portable mode");
  return mode == ZAYA_EXT_PRIMITIVE || (mode == ZAYA_EXT_AUTO && has_cpu_kernel(s));
}

mx::array weight_input(const mx::array& a, mx::Stream s) {
  if (a.status() != mx::array::Status::unscheduled && a.flags().row_contiguous) return a;
  return mx::contiguous(a, false, s);
}

int float_type_of(const mx::array& a, const char* name) {
  if (a.dtype() == mx::float32) return 0;
  if (a.dtype() == mx::float16) return 1;
  if (a.dtype() == mx::bfloat16) return 2;
  fail(std::string(name) + " must be float16, bfloat16 or float32, got " + dtype_str(a.dtype()));
}

int num_threads() {
  static int n = [] {
    if (const char* e = std::getenv("ZAYA_THREADS")) {
      int v = std::atoi(e);
      if (v > 0) return v;
    }
    unsigned h = std::thread::hardware_concurrency();
    return h == 0 ? 1 : static_cast<int>(h);
  }();
  return n;
}

namespace {

// A persistent fork-join pool: num_threads()-1 workers and the caller thread as worker 0. One job at a
// time; a nested or concurrent call runs inline. Workers wait for jobs (and the caller for the workers)
// on condition variables after spinning for ZAYA_SPIN_US microseconds (default 50; 0 sleeps at once).
// A decode step runs a few hundred short kernels back to back, so a worker that sleeps between them
// pays a futex wake-up per kernel: on the idle 2-core target 50 µs of spin made decode ≈15% faster
// (66 → 56 ms/token at full size). On a machine busy with other work the spin takes a core that
// others could use (measured ≈10% slower under a load of 3–5); set ZAYA_SPIN_US=0 there.
class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_.store(true);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return n_; }

  // Runs f(tid) for tid in [0, nt). Returns false (without running) if the pool is busy.
  bool run(int nt, const std::function<void(int)>& f) {
    std::unique_lock<std::mutex> busy(run_m_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    job_.store(&f, std::memory_order_relaxed);
    nt_.store(nt, std::memory_order_relaxed);
    pending_.store(nt - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);  // pairs with the sleepers' predicate check
      gen_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    f(0);
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(m_);
      done_cv_.wait(lk, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    return true;
  }

 private:
  // Spin time before sleeping: ZAYA_SPIN_US microseconds (default 50; 0 = sleep at once).
  static int64_t spin_ns() {
    static const int64_t ns = [] {
      if (const char* e = std::getenv("ZAYA_SPIN_US")) return (int64_t)std::max(0, std::atoi(e)) * 1000;
      return (int64_t)50 * 1000;
    }();
    return ns;
  }

  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  // Spins until pred() holds or spin_ns() pass; returns pred()'s last value.
  template <class P>
  static bool spin_until(P&& pred) {
    const int64_t limit = spin_ns();
    if (limit == 0) return pred();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 1;; ++i) {
      if (pred()) return true;
      relax();
      if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::nanoseconds(limit)) return pred();
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      if (!spin_until([&] { return gen_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lk(m_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      }
      // a consistent (generation, job) snapshot: the caller publishes the job before the generation
      uint64_t g;
      const std::function<void(int)>* job;
      int nt;
      do {
        g = gen_.load(std::memory_order_acquire);
        job = job_.load(std::memory_order_relaxed);
        nt = nt_.load(std::memory_order_relaxed);
      } while (gen_.load(std::memory_order_acquire) != g);
      seen = g;
      if (stop_.load()) return;
      if (job && id < nt) {
        (*job)(id);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          std::lock_guard<std::mutex> lk(m_);
          done_cv_.notify_one();
        }
      }
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex m_, run_m_;
  std::condition_variable cv_, done_cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<bool> stop_{false};
  std::atomic<const std::function<void(int)>*> job_{nullptr};
  std::atomic<int> nt_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
};

Pool& pool() {
  static Pool* p = new Pool(num_threads());  // leaked on purpose: no join at process exit
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& f,
                  int chunks_per_thread) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(min_chunk, 1);
  int64_t nt = std::min<int64_t>(num_threads(), (n + min_chunk - 1) / min_chunk);
  if (nt <= 1) {
    f(0, n);
    return;
  }
  // Dynamic chunks (up to chunks_per_thread per thread, each ≥ min_chunk, aligned to min_chunk).
  const int64_t chunks = std::min<int64_t>(nt * std::max(chunks_per_thread, 1), (n + min_chunk - 1) / min_chunk);
  const int64_t step = ((n + chunks - 1) / chunks + min_chunk - 1) / min_chunk * min_chunk;
  // The job captures one pointer so that its std::function stores it inline (no allocation per call).
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t n, step;
    const std::function<void(int64_t, int64_t)>* f;
  } sh;
  sh.n = n;
  sh.step = step;
  sh.f = &f;
  auto job = [c = &sh](int) {
    for (;;) {
      const int64_t b = c->next.fetch_add(c->step, std::memory_order_relaxed);
      if (b >= c->n) return;
      (*c->f)(b, std::min(c->n, b + c->step));
    }
  };
  if (!pool().run(static_cast<int>(nt), job)) f(0, n);
}

}  // namespace zaya

extern "C" const char* zaya_ext_last_error(void) { return zaya::g_last_error.c_str(); }
extern "C" const char* zaya_ext_version(void) { return "zaya-mlx-ext 0.1"; }

extern "C" void zaya_ext_trace_enable(int on) { zaya::g_trace_on.store(on != 0); }
extern "C" int64_t zaya_ext_now_ns(void) { return zaya::now_ns(); }
extern "C" size_t zaya_ext_trace_take(const char** names, int64_t* t0, int64_t* t1, size_t cap) {
  std::lock_guard<std::mutex> lk(zaya::g_trace_m);
  const size_t n = std::min(cap, zaya::g_trace.size());
  for (size_t i = 0; i < n; ++i) {
    names[i] = zaya::g_trace[i].name;
    t0[i] = zaya::g_trace[i].t0;
    t1[i] = zaya::g_trace[i].t1;
  }
  zaya::g_trace.erase(zaya::g_trace.begin(), zaya::g_trace.begin() + n);
  return n;
}
