// Graph introspection for benchmarks: how many primitive nodes (and which kinds) an evaluation of some
// outputs will run. Counts each unevaluated node (an array with a primitive, siblings counted once)
// reachable from the outputs; evaluated arrays are leaves.
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "common.h"

namespace zaya {
namespace {

void count_nodes(const std::vector<mx::array>& outs, int64_t* nodes, int64_t* casts) {
  std::unordered_set<std::uintptr_t> seen;
  std::vector<mx::array> stack(outs.begin(), outs.end());
  int64_t n = 0, c = 0;
  while (!stack.empty()) {
    mx::array a = std::move(stack.back());
    stack.pop_back();
    if (!a.has_primitive() || a.is_available()) continue;
    if (!seen.insert(a.primitive_id()).second) continue;
    ++n;
    if (std::string(a.primitive().name()) == "AsType") ++c;
    for (auto& in : a.inputs()) stack.push_back(in);
  }
  *nodes = n;
  *casts = c;
}

}  // namespace
}  // namespace zaya

extern "C" int zaya_graph_nodes(const mlx_array* outs, size_t n, int64_t* nodes, int64_t* casts) {
  using namespace zaya;
  return guard("graph_nodes", [&] {
    std::vector<mx::array> v;
    for (size_t i = 0; i < n; ++i) v.push_back(get(outs[i], "output"));
    count_nodes(v, nodes, casts);
  });
}
