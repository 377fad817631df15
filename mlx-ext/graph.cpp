// Graph introspection for benchmarks: how many primitive nodes (and which kinds) an evaluation of some
// outputs will run. Counts each unevaluated node (an array with a primitive, siblings counted once)
// reachable from the outputs; evaluated arrays are leaves.
#include <algorithm>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "common.h"

namespace zaya {
namespace {

// Visits each unevaluated node once; returns the node count and fills `by_name` when given.
int64_t walk(const std::vector<mx::array>& outs, std::unordered_map<std::string, int64_t>* by_name,
             int64_t* casts) {
  std::unordered_set<std::uintptr_t> seen;
  std::vector<mx::array> stack(outs.begin(), outs.end());
  int64_t n = 0, c = 0;
  while (!stack.empty()) {
    mx::array a = std::move(stack.back());
    stack.pop_back();
    if (!a.has_primitive() || a.is_available()) continue;
    if (!seen.insert(a.primitive_id()).second) continue;
    ++n;
    std::string name = a.primitive().name();
    if (name == "AsType") ++c;
    if (by_name) ++(*by_name)[name];
    for (auto& in : a.inputs()) stack.push_back(in);
  }
  if (casts) *casts = c;
  return n;
}

}  // namespace
}  // namespace zaya

extern "C" int zaya_graph_nodes(const mlx_array* outs, size_t n, int64_t* nodes, int64_t* casts) {
  using namespace zaya;
  return guard("graph_nodes", [&] {
    std::vector<mx::array> v;
    for (size_t i = 0; i < n; ++i) v.push_back(get(outs[i], "output"));
    *nodes = walk(v, nullptr, casts);
  });
}

// "Name count" lines, most frequent first, as one NUL-terminated string valid until the next call on
// this thread.
extern "C" const char* zaya_graph_histogram(const mlx_array* outs, size_t n) {
  using namespace zaya;
  static thread_local std::string text;
  text.clear();
  const int rc = guard("graph_histogram", [&] {
    std::vector<mx::array> v;
    for (size_t i = 0; i < n; ++i) v.push_back(get(outs[i], "output"));
    std::unordered_map<std::string, int64_t> by_name;
    walk(v, &by_name, nullptr);
    std::vector<std::pair<int64_t, std::string>> rows;
    for (auto& [k, c] : by_name) rows.emplace_back(-c, k);
    std::sort(rows.begin(), rows.end());
    for (auto& [c, k] : rows) text += k + " " + std::to_string(-c) + "\n";
  });
  return rc == 0 ? text.c_str() : nullptr;
}
