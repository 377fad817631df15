// Force-included (-include) when building mlx-c on toolchains whose libstdc++ lacks <format>
// (Debian 12 / GCC 12). mlx-c only uses `std::format` with `{}` placeholders; this provides
// exactly that and nothing else. It is a no-op where the standard library has <format>.
#pragma once
#include <version>
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
namespace zaya_format_compat {
inline void put(std::ostringstream& os, std::string_view f) { os << f; }
template <class T, class... R>
void put(std::ostringstream& os, std::string_view f, const T& v, const R&... r) {
  auto p = f.find("{}");
  if (p == std::string_view::npos) {
    os << f;
    return;
  }
  os << f.substr(0, p) << v;
  put(os, f.substr(p + 2), r...);
}
}  // namespace zaya_format_compat
template <class... A>
inline std::string format(std::string_view f, const A&... a) {
  std::ostringstream os;
  zaya_format_compat::put(os, f, a...);
  return os.str();
}
}  // namespace std
#endif
