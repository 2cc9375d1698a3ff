#include "agent/gtest_adapter.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "agent/gtest_parse.h"
#include "agent/subprocess.h"
#include "common/fdio.h"

namespace dtest::gtest {

namespace {

// Every GoogleTest binary carries its flag help text, which names
// --gtest_list_tests; a program that lists nothing and lacks it is not one.
bool mentions_gtest_flags(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  bool found = false;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      std::string_view data(static_cast<const char*>(p), static_cast<std::size_t>(st.st_size));
      found = data.find("gtest_list_tests") != std::string_view::npos;
      ::munmap(p, static_cast<std::size_t>(st.st_size));
    }
  }
  ::close(fd);
  return found;
}

std::string tail(const std::string& s, std::size_t n = 2000) {
  std::string t = s.size() > n ? "..." + s.substr(s.size() - n) : s;
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
  return t;
}

// The listing cache. Listing a binary costs a process start plus printing
// every name (20,000 tests: ~60 ms, as much as running them); CTest's
// gtest_discover_tests likewise lists once per build. The key is the file's
// identity (device, inode, size, mtime and ctime in ns) plus the GTEST_*
// variables that change what a listing prints; a rebuilt binary never hits.
// DTEST_LIST_CACHE=0 turns it off.
std::string list_cache_path(const std::string& path, const struct stat& st) {
  if (const char* off = std::getenv("DTEST_LIST_CACHE"); off && std::string(off) == "0") return {};
  std::string dir;
  if (const char* d = std::getenv("DTEST_CACHE_DIR"); d && *d) {
    dir = d;
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    dir = std::string(x) + "/dtest";
  } else if (const char* h = std::getenv("HOME"); h && *h) {
    dir = std::string(h) + "/.cache/dtest";
  } else {
    return {};
  }
  std::string key = path;
  for (long long v : {static_cast<long long>(st.st_dev), static_cast<long long>(st.st_ino),
                      static_cast<long long>(st.st_size), static_cast<long long>(st.st_mtim.tv_sec),
                      static_cast<long long>(st.st_mtim.tv_nsec), static_cast<long long>(st.st_ctim.tv_sec),
                      static_cast<long long>(st.st_ctim.tv_nsec)})
    key += '\0' + std::to_string(v);
  for (const char* var : {"GTEST_FILTER", "GTEST_ALSO_RUN_DISABLED_TESTS"}) {
    const char* v = std::getenv(var);
    key += std::string("\0") + var + "=" + (v ? v : "\x01unset");
  }
  char name[40];
  std::snprintf(name, sizeof name, "%016llx", static_cast<unsigned long long>(XXH3_64bits(key.data(), key.size())));
  return dir + "/lists/" + name;
}

bool read_file(const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return static_cast<bool>(f) || f.eof();
}

// Best effort: a cache that cannot be written is no error.
void write_file_atomically(const std::string& path, const std::string& data) {
  const auto slash = path.rfind('/');
  std::error_code ec;
  std::filesystem::create_directories(path.substr(0, slash), ec);
  if (ec) return;
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return;
  bool ok = true;
  try {
    write_all(fd, data);
  } catch (...) {
    ok = false;
  }
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

std::string cost_path(const std::string& binary) {
  struct stat st {};
  if (::stat(binary.c_str(), &st) != 0) return {};
  const std::string list = list_cache_path(binary, st);
  return list.empty() ? std::string() : list + ".cost";
}

}  // namespace

std::optional<Cost> read_cost(const std::string& binary) {
  const std::string path = cost_path(binary);
  std::string text;
  if (path.empty() || !read_file(path, text)) return std::nullopt;
  Cost c;
  if (std::sscanf(text.c_str(), "%lf %lf", &c.startup, &c.per_test) != 2) return std::nullopt;
  if (!(c.startup >= 0 && c.startup < 3600 && c.per_test > 0 && c.per_test < 3600)) return std::nullopt;
  return c;
}

void record_cost(const std::string& binary, double startup, double per_test) {
  const std::string path = cost_path(binary);
  if (path.empty() || !(startup >= 0) || !(per_test > 0)) return;
  if (auto old = read_cost(binary)) {
    startup = (startup + old->startup) / 2;
    per_test = (per_test + old->per_test) / 2;
  }
  char text[64];
  std::snprintf(text, sizeof text, "%.9g %.9g\n", startup, per_test);
  write_file_atomically(path, text);
}

nlohmann::json collect_binary(const std::string& path, double timeout_s) {
  nlohmann::json out = {{"path", path}};
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    out["error"] = path + ": " + std::strerror(errno);
    return out;
  }
  if (!S_ISREG(st.st_mode)) {
    out["error"] = path + ": not a regular file";
    return out;
  }
  if (::access(path.c_str(), X_OK) != 0) {
    out["error"] = path + ": not executable";
    return out;
  }
  const std::string cache = list_cache_path(path, st);
  Captured cap;
  if (cache.empty() || !read_file(cache, cap.out)) {
    SpawnOptions so;
    so.argv = {path, "--gtest_list_tests"};
    try {
      cap = run_capture(so, timeout_s);
    } catch (const std::exception& e) {
      out["error"] = e.what();
      return out;
    }
  } else {
    out["cached"] = true;
  }
  if (cap.timed_out) {
    out["error"] = path + " --gtest_list_tests did not finish within " +
                   std::to_string(static_cast<int>(timeout_s)) + " s (is it a GoogleTest binary?)";
    return out;
  }
  if (!WIFEXITED(cap.status) || WEXITSTATUS(cap.status) != 0) {
    std::string msg = path + " --gtest_list_tests failed with " +
                      describe_wait_status(cap.status) + " (is it a GoogleTest binary?)";
    const std::string err = tail(cap.err.empty() ? cap.out : cap.err);
    if (!err.empty()) msg += "; it printed:\n" + err;
    out["error"] = msg;
    return out;
  }
  std::vector<ListedTest> tests;
  try {
    tests = parse_list(cap.out);
  } catch (const ListError& e) {
    out["error"] = path + " is not a GoogleTest binary: " + e.what();
    return out;
  }
  if (tests.empty() && !mentions_gtest_flags(path)) {
    out["error"] = path + " is not a GoogleTest binary: --gtest_list_tests printed no tests"
                          " and the file has no GoogleTest flags";
    return out;
  }
  if (!cache.empty() && !out.contains("cached")) write_file_atomically(cache, cap.out);
  if (auto c = read_cost(path)) out["cost"] = {{"startup", c->startup}, {"per_test", c->per_test}};
  // Compact: one string of names, and only the exceptions as indices, so a
  // 20,000-test listing is a few hundred KB of CBOR and no per-test maps.
  std::string names;
  nlohmann::json disabled = nlohmann::json::array();
  nlohmann::json type_params = nlohmann::json::array();
  nlohmann::json value_params = nlohmann::json::array();
  for (std::size_t i = 0; i < tests.size(); ++i) {
    const auto& t = tests[i];
    if (i) names += '\n';
    names += t.full;
    if (t.disabled) disabled.push_back(i);
    if (!t.type_param.empty()) type_params.push_back({i, t.type_param});
    if (!t.value_param.empty()) value_params.push_back({i, t.value_param});
  }
  out["count"] = tests.size();
  out["names"] = std::move(names);
  if (!disabled.empty()) out["disabled"] = std::move(disabled);
  if (!type_params.empty()) out["type_params"] = std::move(type_params);
  if (!value_params.empty()) out["value_params"] = std::move(value_params);
  return out;
}

bool shard_command(const std::string& binary, int index, int count, std::vector<std::string>& argv,
                   std::map<std::string, std::string>& env) {
  if (const char* v = std::getenv("GTEST_ALSO_RUN_DISABLED_TESTS"); v && *v) return false;
  if (count < 1 || index < 0 || index >= count) return false;
  argv = {binary, "--gtest_color=no", "--gtest_print_time=1"};
  if (count > 1) {
    env["GTEST_TOTAL_SHARDS"] = std::to_string(count);
    env["GTEST_SHARD_INDEX"] = std::to_string(index);
  }
  return true;
}

std::vector<std::string> batch_command(const std::string& binary,
                                       const std::vector<std::string>& tests,
                                       std::string& flagfile_path) {
  flagfile_path.clear();
  std::string filter = "--gtest_filter=";
  for (std::size_t i = 0; i < tests.size(); ++i) {
    if (i) filter += ':';
    filter += tests[i];
  }
  std::vector<std::string> argv = {binary, "--gtest_color=no", "--gtest_print_time=1"};
  // Linux limits one argument to 128 KiB (MAX_ARG_STRLEN); beyond a safe
  // margin the filter goes through a flag file.
  if (filter.size() < 64 * 1024) {
    argv.push_back(std::move(filter));
    return argv;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/dtest-filter-XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) throw std::runtime_error("cannot create a gtest flag file: " + std::string(std::strerror(errno)));
  try {
    write_all(fd, filter + "\n");
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  ::close(fd);
  flagfile_path = path;
  argv.push_back("--gtest_flagfile=" + path);
  return argv;
}

}  // namespace dtest::gtest
