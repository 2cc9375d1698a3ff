#include "master/sources.h"

#include <filesystem>
#include <fstream>
#include <glob.h>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

namespace dtest {

namespace fs = std::filesystem;

namespace {

bool file_contains(const fs::path& p, const std::string& needle) {
  std::ifstream in(p);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str().find(needle) != std::string::npos;
}

bool is_executable_file(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

void add_gtest(RunOptions& opts, const std::string& shown, const std::string& path) {
  opts.binaries.push_back(shown);
  opts.binary_paths.push_back(path);
  opts.kinds.push_back("gtest");
  opts.descriptors.push_back(nlohmann::json::object());
  opts.source_timeouts.push_back(-1);
}

void add_source(RunOptions& opts, const std::string& kind, const std::string& prefix, nlohmann::json d,
                double timeout) {
  opts.binaries.push_back(prefix);
  // Sources other than binaries are told apart by their folder (code id,
  // messages).
  std::string where = d.value("build_dir", d.value("cwd", std::string()));
  opts.binary_paths.push_back(where);
  opts.kinds.push_back(kind);
  opts.descriptors.push_back(std::move(d));
  opts.source_timeouts.push_back(timeout);
}

nlohmann::json env_json(const std::map<std::string, std::string>& env) {
  nlohmann::json e = nlohmann::json::object();
  for (const auto& [k, v] : env) e[k] = v;
  return e;
}

void add_suite(const config::Suite& s, const std::vector<std::string>& pytest_args, RunOptions& opts,
               std::vector<std::string>& errors) {
  const double timeout = s.timeout ? *s.timeout : -1;
  if (s.kind == "gtest") {
    for (const auto& pat : s.binaries) {
      glob_t g{};
      const int rc = ::glob(pat.c_str(), 0, nullptr, &g);
      std::size_t added = 0;
      if (rc == 0)
        for (std::size_t i = 0; i < g.gl_pathc; ++i)
          if (is_executable_file(g.gl_pathv[i])) {
            const std::string p = fs::path(g.gl_pathv[i]).lexically_normal().string();
            add_gtest(opts, p, p);
            opts.source_timeouts.back() = timeout;
            ++added;
          }
      ::globfree(&g);
      if (added == 0) errors.push_back(fmt::format("{}: gtest suite: '{}' matches no executable file", s.origin.str(), pat));
    }
    return;
  }
  nlohmann::json d = {{"cwd", s.cwd}};
  if (!s.env.empty()) d["env"] = env_json(s.env);
  if (s.kind == "ctest") {
    d.erase("cwd");  // a CTest test runs in its own WORKING_DIRECTORY
    d["build_dir"] = s.build_dir;
    d["labels"] = s.labels;
    if (!fs::exists(fs::path(s.build_dir) / "CTestTestfile.cmake"))
      errors.push_back(fmt::format("{}: ctest suite: {} is not a CMake build tree with tests (no CTestTestfile.cmake)",
                                   s.origin.str(), s.build_dir));
  } else if (s.kind == "pytest") {
    auto args = s.args;
    args.insert(args.end(), pytest_args.begin(), pytest_args.end());
    d["args"] = args;
    if (!s.python.empty()) d["python"] = s.python;
  } else if (s.kind == "command") {
    d["run"] = s.run;
    if (!s.list.empty()) d["list"] = s.list;
    if (!s.files.empty()) {
      // Globs relative to the suite's folder, so a synced copy matches the
      // same ids (the config resolves them against its own folder).
      nlohmann::json files = nlohmann::json::array();
      for (const auto& f : s.files) {
        const fs::path rel = fs::path(f).lexically_relative(s.cwd);
        const bool inside = !rel.empty() && *rel.begin() != "..";
        files.push_back(inside ? rel.string() : f);
      }
      d["files"] = std::move(files);
    }
    d["format"] = s.format;
    if (!s.result_file.empty()) d["result_file"] = s.result_file;
    if (s.batch > 0) d["batch"] = s.batch;
  }
  add_source(opts, s.kind, s.name, std::move(d), timeout);
}

}  // namespace

bool looks_like_pytest_project(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  if (fs::exists(d / "pytest.ini", ec) || fs::exists(d / "conftest.py", ec)) return true;
  if (file_contains(d / "pyproject.toml", "[tool.pytest")) return true;
  if (file_contains(d / "setup.cfg", "[tool:pytest]") || file_contains(d / "tox.ini", "[pytest]")) return true;
  for (const auto& sub : {d, d / "tests", d / "test"}) {
    if (!fs::is_directory(sub, ec)) continue;
    for (const auto& e : fs::directory_iterator(sub, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 3 && n.ends_with(".py") && (n.starts_with("test_") || n.ends_with("_test.py"))) return true;
    }
  }
  return false;
}

void resolve_sources(const std::vector<std::string>& positionals, const std::vector<std::string>& pytest_args,
                     const config::Config& cfg, const std::string& cwd, RunOptions& opts,
                     std::vector<std::string>& errors, std::vector<std::string>& notes) {
  if (!positionals.empty()) {
    std::vector<std::string> py;
    for (const auto& a : positionals) {
      std::error_code ec;
      const std::string file_part = a.substr(0, a.find("::"));
      const fs::path p = fs::absolute(file_part, ec).lexically_normal();
      if (a.find("::") == std::string::npos && fs::is_directory(p, ec) && fs::exists(p / "CTestTestfile.cmake", ec)) {
        add_source(opts, "ctest", "", {{"build_dir", p.string()}, {"labels", nlohmann::json::array()}}, -1);
      } else if (a.find("::") == std::string::npos && is_executable_file(p) && !a.ends_with(".py")) {
        add_gtest(opts, a, p.string());
      } else if (fs::exists(p, ec) && (fs::is_directory(p, ec) || a.ends_with(".py") || a.find("::") != std::string::npos)) {
        py.push_back(a);
      } else if (!fs::exists(p, ec)) {
        errors.push_back("no such file: " + a);
      } else {
        errors.push_back("not a test binary, build tree or pytest path: " + a + " (is it executable?)");
      }
    }
    if (!py.empty()) {
      auto args = py;
      args.insert(args.end(), pytest_args.begin(), pytest_args.end());
      add_source(opts, "pytest", "", {{"cwd", cwd}, {"args", args}}, -1);
    }
    return;
  }
  if (!cfg.suites.empty()) {
    for (const auto& s : cfg.suites) add_suite(s, pytest_args, opts, errors);
    return;
  }
  // Nothing named: what does the working directory look like?
  std::error_code ec;
  if (fs::exists(fs::path(cwd) / "CTestTestfile.cmake", ec)) {
    add_source(opts, "ctest", "", {{"build_dir", cwd}, {"labels", nlohmann::json::array()}}, -1);
    notes.push_back("running the CTest tests of this build tree (" + cwd + ")");
    return;
  }
  const std::string dir = cfg.rootdir.empty() ? cwd : cfg.rootdir;
  if (looks_like_pytest_project(dir)) {
    add_source(opts, "pytest", "", {{"cwd", dir}, {"args", pytest_args}}, -1);
    notes.push_back("running the pytest suite of " + dir);
    return;
  }
  errors.push_back(
      "nothing to run: name GoogleTest binaries, a CMake build tree or pytest paths, or list [[suite]]s in "
      "dtest.toml (usage: dtest [options] [BINARY | BUILD_DIR | PYTEST_PATH]... [-- PYTEST_ARGS])");
}

std::string describe_source(const RunOptions& opts, std::size_t k) {
  const std::string kind = k < opts.kinds.size() ? opts.kinds[k] : "gtest";
  if (kind == "gtest") return "gtest " + opts.binary_paths[k];
  const auto& d = opts.descriptors[k];
  std::string s = kind;
  if (!opts.binaries[k].empty()) s += " '" + opts.binaries[k] + "'";
  if (kind == "ctest") s += " build_dir=" + d.value("build_dir", std::string());
  else s += " cwd=" + d.value("cwd", std::string());
  for (const char* key : {"args", "labels", "files"})
    if (auto it = d.find(key); it != d.end() && it->is_array() && !it->empty()) s += std::string(" ") + key + "=" + it->dump();
  for (const char* key : {"python", "list", "run", "format", "result_file"})
    if (auto it = d.find(key); it != d.end() && it->is_string()) s += std::string(" ") + key + "=" + it->dump();
  if (k < opts.source_timeouts.size() && opts.source_timeouts[k] >= 0) s += fmt::format(" timeout={}", opts.source_timeouts[k]);
  return s;
}

}  // namespace dtest
