// Small string and file helpers shared by dtest's own tests.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

namespace dtest::testing {

inline bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// The whole file, or "" when it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream o;
  o << f.rdbuf();
  return o.str();
}

}  // namespace dtest::testing
