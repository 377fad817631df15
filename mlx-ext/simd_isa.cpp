// Run-time choice of the kernel instruction set: what the CPU supports (cpuid, including the OS's
// AVX/AVX-512 state support) capped by ZAYA_EXT_ISA=scalar|avx2|avx512 or zaya_ext_set_max_isa().
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "simd_kernels.h"
#include "zaya_ext.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace zaya::kern {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

// What the CPU and OS support, whatever is compiled in.
int probe_cpu() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return kScalar;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return kScalar;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return kScalar;  // XMM and YMM state enabled by the OS
  if (__get_cpuid_max(0, nullptr) < 7) return kScalar;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  if (!avx2) return kScalar;
  const bool avx512 = (b & (1u << 16)) /*F*/ && (b & (1u << 17)) /*DQ*/ && (b & (1u << 30)) /*BW*/ &&
                      (b & (1u << 31)) /*VL*/ && (xcr0 & 0xe6) == 0xe6; /* opmask, ZMM state */
  return avx512 ? kAvx512 : kAvx2;
}
#else
int probe_cpu() { return kScalar; }
#endif

int probe() {
  const int c = probe_cpu();
  if (c >= kAvx512 && avx512_table()) return kAvx512;
  if (c >= kAvx2 && avx2_table()) return kAvx2;
  return kScalar;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
bool probe_bf16() {
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, a, b, c, d);
  return (a & (1u << 5)) != 0;  // AVX512_BF16 (the AVX-512 state check is part of probe_cpu())
}
#else
bool probe_bf16() { return false; }
#endif

int env_cap() {
  const char* e = std::getenv("ZAYA_EXT_ISA");
  if (!e) return kAvx512;
  if (!strcmp(e, "scalar")) return kScalar;
  if (!strcmp(e, "avx2")) return kAvx2;
  return kAvx512;
}

std::atomic<int>& cap() {
  static std::atomic<int> c{env_cap()};
  return c;
}

}  // namespace

int detected_isa() {
  static const int d = probe();
  return d;
}

int max_isa() { return cap().load(); }

bool cpu_has_avx512bf16() {
  static const bool b = probe_cpu() == kAvx512 && probe_bf16();
  return b;
}

int set_max_isa(int level) {
  if (level < kScalar) level = kScalar;
  if (level > kAvx512) level = kAvx512;
  return cap().exchange(level);
}

namespace {
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
};
}  // namespace

float* scratch_f32(ScratchSlot slot, size_t n) {
  if (slot < 0 || slot >= kScratchSlots) throw std::out_of_range("scratch_f32: no such slot");
  thread_local Scratch s[kScratchSlots];
  Scratch& b = s[slot];
  if (b.n < n) {
    std::free(b.p);
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    b.p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!b.p) {
      b.n = 0;
      throw std::bad_alloc();
    }
    b.n = n;
  }
  return b.p;
}

const Table* best_table() {
  const int level = detected_isa() < max_isa() ? detected_isa() : max_isa();
  if (level >= kAvx512) return avx512_table();
  if (level >= kAvx2) return avx2_table();
  return scalar_table();
}

}  // namespace zaya::kern

extern "C" int zaya_ext_detected_isa(void) { return zaya::kern::detected_isa(); }
extern "C" int zaya_ext_kernel_isa(void) { return zaya::kern::best_table()->isa; }
extern "C" int zaya_ext_bf16_dot(void) {
  const zaya::kern::Table* t = zaya::kern::best_table();
  return t->aff_rows_bf16 != t->aff_rows;
}
extern "C" int zaya_ext_panel_min_rows(int kind) {
  switch (kind) {
    case 0:
    case 2: return zaya::kern::kAffPanelMinRows;
    case 1: return zaya::kern::kTqBf16MinRows;
    case 3: return zaya::kern::kTqLanesMinRows;
    default: return -1;
  }
}
extern "C" int zaya_ext_set_max_isa(int level) { return zaya::kern::set_max_isa(level); }
