#include "agent/gtest_adapter.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

}  // namespace

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
  SpawnOptions so;
  so.argv = {path, "--gtest_list_tests"};
  Captured cap;
  try {
    cap = run_capture(so, timeout_s);
  } catch (const std::exception& e) {
    out["error"] = e.what();
    return out;
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
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& t : tests) {
    nlohmann::json j = {{"name", t.full}};
    if (t.disabled) j["disabled"] = true;
    if (!t.type_param.empty()) j["type_param"] = t.type_param;
    if (!t.value_param.empty()) j["value_param"] = t.value_param;
    arr.push_back(std::move(j));
  }
  out["tests"] = std::move(arr);
  return out;
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
