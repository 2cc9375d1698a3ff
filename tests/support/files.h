// Temp dirs and fixture copies for dtest's own tests.
#pragma once

#include <filesystem>
#include <string>

namespace dtest::testing {

// A fresh directory /tmp/PREFIX-XXXXXX; "" when it cannot be made.
std::string make_temp_dir(const std::string& prefix);

// Removes `dir` and everything below it; errors are ignored.
void remove_tree(const std::filesystem::path& dir);

// Copies a fixture tree, leaving out caches a developer's pytest or dtest
// run left (.pytest_cache, __pycache__, .dtest); symlinks stay symlinks.
void copy_tree(const std::filesystem::path& from, const std::filesystem::path& to);

// Writes `text` to `path` (replacing it); failing to fails the calling test
// (GoogleTest).
void write_file(const std::string& path, const std::string& text);

}  // namespace dtest::testing
