// The base of every primitive of this extension, after the pattern of MLX's examples/extensions: each
// concern's header declares its primitive classes and, separately, the op functions that build them
// (argument checks, then the primitive or the portable plain-MLX-ops graph); the .cpp files define
// the ops first and the CPU kernels (eval_cpu) after them.
#pragma once

#include <string>
#include <vector>

#include <mlx/primitives.h>

namespace zaya {
namespace mx = mlx::core;

// A primitive with a CPU kernel only. On other streams (GPU) the op functions build the portable graph
// instead, so eval_gpu is never reached; it throws, naming the primitive, if it ever is.
//
// Equivalence follows MLX's convention: each primitive exposes the parameters it was built with as
// `auto state() const { return std::make_tuple(...); }` and its is_equivalent compares states
// (`return same_state(*this, other);`). MLX only asks two nodes of the same primitive type whether they
// are equivalent (mlx/compile.cpp checks typeid first); same_state checks the type again regardless.
class CpuPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;

  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) final;

 protected:
  template <class P>
  static bool same_state(const P& self, const mx::Primitive& other) {
    const auto* o = dynamic_cast<const P*>(&other);
    return o != nullptr && self.state() == o->state();
  }
};

}  // namespace zaya
