#include "support/files.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>

namespace dtest::testing {

namespace fs = std::filesystem;

std::string make_temp_dir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  return ::mkdtemp(tmpl.data()) ? tmpl : "";
}

void remove_tree(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string name = e.path().filename().string();
    if (name == ".pytest_cache" || name == "__pycache__" || name == ".dtest") continue;
    if (e.is_directory()) copy_tree(e.path(), to / name);
    else fs::copy(e.path(), to / name, fs::copy_options::copy_symlinks);
  }
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.flush()) << path;
}

}  // namespace dtest::testing
