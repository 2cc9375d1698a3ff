// A directory tree as one comparable map, for sync tests: per relative path,
// its type, and for files their bytes (hashed), size, exec bit and mtime, for
// symlinks their text and mtime (never followed). Directory mtimes are left
// out (the sync does not reproduce them).
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace dtest::testing {

inline std::map<std::string, std::string> describe_tree(const std::filesystem::path& root,
                                                        const std::vector<std::string>& skip = {}) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> m;
  auto ts = [](const timespec& t) { return std::to_string(t.tv_sec) + "." + std::to_string(t.tv_nsec); };
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const std::string rel = it->path().lexically_relative(root).generic_string();
    bool skipped = false;
    for (const auto& s : skip) skipped |= rel == s || rel.rfind(s + "/", 0) == 0;
    struct stat st {};
    ::lstat(it->path().c_str(), &st);
    if (skipped) {
      if (S_ISDIR(st.st_mode)) it.disable_recursion_pending();
      continue;
    }
    std::string d;
    if (S_ISLNK(st.st_mode)) {
      d = "link:" + fs::read_symlink(it->path()).string() + " mtime:" + ts(st.st_mtim);
    } else if (S_ISDIR(st.st_mode)) {
      d = "dir";
    } else {
      std::ifstream f(it->path(), std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      d = "file:" + std::to_string(std::hash<std::string>{}(bytes)) + " size:" + std::to_string(st.st_size) +
          " x:" + std::to_string((st.st_mode & 0111) != 0) + " mtime:" + ts(st.st_mtim);
    }
    m[rel] = d;
  }
  return m;
}

}  // namespace dtest::testing
