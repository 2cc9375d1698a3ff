#include "agent/suites.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <glob.h>
#include <optional>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/ctest_adapter.h"
#include "agent/report_parse.h"
#include "common/fdio.h"
#include "common/message.h"

namespace dtest {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

namespace {

std::string str_field(const nlohmann::json& d, const char* key, const char* kind, bool required = false) {
  auto it = d.find(key);
  if (it == d.end() || it->is_null()) {
    if (required) throw ProtocolError(std::string(kind) + " source: '" + key + "' missing");
    return {};
  }
  if (!it->is_string()) throw ProtocolError(std::string(kind) + " source: '" + key + "' is not a string");
  return it->get<std::string>();
}

std::vector<std::string> list_field(const nlohmann::json& d, const char* key, const char* kind) {
  std::vector<std::string> out;
  auto it = d.find(key);
  if (it == d.end() || it->is_null()) return out;
  if (!it->is_array()) throw ProtocolError(std::string(kind) + " source: '" + key + "' is not a list");
  for (const auto& v : *it) {
    if (!v.is_string()) throw ProtocolError(std::string(kind) + " source: '" + key + "' holds a non-string");
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::map<std::string, std::string> env_field(const nlohmann::json& d) {
  std::map<std::string, std::string> env;
  if (auto it = d.find("env"); it != d.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) env[k] = v.get<std::string>();
  return env;
}

std::string tail_of(const std::string& s, std::size_t n = 2000) {
  std::string t = s.size() > n ? "..." + s.substr(s.size() - n) : s;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  return t;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string all;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) all += '\n';
    all += names[i];
  }
  return all;
}

// ----- command suites ------------------------------------------------------

struct CommandSource {
  std::string cwd, list, run, format = "exit", result_file;
  std::vector<std::string> files;
  int batch = 0;
  std::map<std::string, std::string> env;
  static CommandSource from_json(const nlohmann::json& d) {
    CommandSource s;
    s.cwd = str_field(d, "cwd", "command");
    s.list = str_field(d, "list", "command");
    s.run = str_field(d, "run", "command", true);
    s.files = list_field(d, "files", "command");
    if (auto f = str_field(d, "format", "command"); !f.empty()) s.format = f;
    if (s.format != "exit" && s.format != "junit" && s.format != "tap")
      throw ProtocolError("command source: unknown format '" + s.format + "'");
    s.result_file = str_field(d, "result_file", "command");
    if (auto b = d.find("batch"); b != d.end() && b->is_number_unsigned()) s.batch = b->get<int>();
    s.env = env_field(d);
    return s;
  }
};

// The ids of a command suite: what `list` prints (one per line), or the
// files its globs match (relative to its folder, sorted).
nlohmann::json collect_command(const CommandSource& s) {
  const std::string where = s.cwd.empty() ? "." : s.cwd;
  nlohmann::json entry = {{"path", where}};
  std::vector<std::string> ids;
  if (!s.list.empty()) {
    SpawnOptions so;
    so.argv = {"/bin/sh", "-c", s.list};
    so.cwd = s.cwd;
    so.env = s.env;
    Captured cap;
    try {
      cap = run_capture(so, 300);
    } catch (const std::exception& e) {
      entry["error"] = "list command `" + s.list + "`: " + e.what();
      return entry;
    }
    if (cap.timed_out || !WIFEXITED(cap.status) || WEXITSTATUS(cap.status) != 0) {
      entry["error"] = "list command `" + s.list + "` in " + where + " " +
                       (cap.timed_out ? std::string("did not finish in 300 s") : "failed with " + describe_wait_status(cap.status)) +
                       "; it printed:\n" + tail_of(cap.err.empty() ? cap.out : cap.err);
      return entry;
    }
    std::istringstream in(cap.out);
    std::set<std::string> seen;
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
      const auto first = line.find_first_not_of(" \t");
      if (first == std::string::npos) continue;
      line.erase(0, first);
      if (!seen.insert(line).second) {
        entry["error"] = "list command `" + s.list + "` printed the id '" + line + "' twice";
        return entry;
      }
      ids.push_back(line);
    }
  } else {
    std::set<std::string> found;
    for (const auto& pat : s.files) {
      const std::string full = pat.empty() || pat[0] == '/' || s.cwd.empty() ? pat : s.cwd + "/" + pat;
      glob_t g{};
      const int rc = ::glob(full.c_str(), GLOB_ERR, nullptr, &g);
      if (rc == 0)
        for (std::size_t i = 0; i < g.gl_pathc; ++i) {
          std::string p = g.gl_pathv[i];
          struct stat st {};
          if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
          if (!s.cwd.empty() && p.compare(0, s.cwd.size() + 1, s.cwd + "/") == 0) p.erase(0, s.cwd.size() + 1);
          found.insert(p);
        }
      ::globfree(&g);
    }
    ids.assign(found.begin(), found.end());
  }
  entry["count"] = ids.size();
  entry["names"] = join_names(ids);
  return entry;
}

// Replaces the placeholders of a command: {ids}, {id} and {file} by the
// quoted ids, {result_file} by the quoted report path, {worker} by the
// worker's id (DTEST_WORKER).
std::string expand(const std::string& text, const std::vector<std::pair<std::string, std::string>>& values) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    bool hit = false;
    for (const auto& [key, value] : values)
      if (text.compare(i, key.size(), key) == 0) {
        out += value;
        i += key.size();
        hit = true;
        break;
      }
    if (!hit) out += text[i++];
  }
  return out;
}

std::string temp_file(const std::string& prefix, const std::string& content) {
  const char* t = std::getenv("TMPDIR");
  std::string path = std::string(t && *t ? t : "/tmp") + "/" + prefix + "XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) throw std::runtime_error("cannot create a temp file: " + std::string(std::strerror(errno)));
  try {
    write_all(fd, content);
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  ::close(fd);
  return path;
}

Outcome outcome_of_status(int status, bool timed_out, std::string& message) {
  if (timed_out) return Outcome::timeout;
  if (WIFSIGNALED(status)) {
    message = describe_wait_status(status);
    return Outcome::crashed;
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) return Outcome::passed;
  message = describe_wait_status(status);
  // 77: "skipped", as the automake and meson test harnesses read it.
  if (code == 77) return Outcome::skipped;
  return Outcome::failed;
}

std::vector<Job> command_jobs(const CommandSource& s, const std::vector<std::string>& tests,
                              const std::map<std::string, std::string>& env, double timeout) {
  std::vector<Job> jobs;
  const std::size_t chunk = s.format == "exit" ? 1 : (s.batch > 0 ? static_cast<std::size_t>(s.batch) : tests.size());
  for (std::size_t start = 0; start < tests.size(); start += chunk) {
    const std::size_t end = std::min(tests.size(), start + chunk);
    std::vector<std::string> ids(tests.begin() + static_cast<long>(start), tests.begin() + static_cast<long>(end));
    Job job;
    for (std::size_t k = start; k < end; ++k) job.tests.push_back(static_cast<std::uint32_t>(k));
    job.timeout = timeout > 0 ? timeout * static_cast<double>(ids.size()) : 0;
    job.spawn.cwd = s.cwd;
    job.spawn.env = env;
    for (const auto& [k, v] : s.env) job.spawn.env[k] = v;
    std::string idfile;
    std::string content;
    for (const auto& id : ids) content += id + "\n";
    try {
      idfile = temp_file("dtest-ids-", content);
    } catch (const std::exception&) {
    }
    if (!idfile.empty()) job.spawn.env["DTEST_IDFILE"] = idfile;
    const auto w = env.find("DTEST_WORKER");
    const std::string worker = w == env.end() ? std::string("gw0") : w->second;
    // The report: the configured path (its {worker} makes it per worker), or
    // with {result_file} in `run` and no path configured, a private temp file
    // per run, so workers sharing a folder never read each other's.
    std::string result_file;
    bool private_result = false;
    if (!s.result_file.empty()) {
      const std::string rf = expand(s.result_file, {{"{worker}", worker}});
      result_file = rf[0] == '/' || s.cwd.empty() ? rf : s.cwd + "/" + rf;
    } else if (s.format != "exit" && s.run.find("{result_file}") != std::string::npos) {
      try {
        result_file = temp_file("dtest-result-", "");
        private_result = true;
      } catch (const std::exception&) {
      }
    }
    if (!result_file.empty()) {
      ::unlink(result_file.c_str());  // no stale results from an earlier run
      job.spawn.env["DTEST_RESULT_FILE"] = result_file;
    }
    std::string words;
    for (const auto& id : ids) words += (words.empty() ? "" : " ") + shell_quote(id);
    job.spawn.argv = {"/bin/sh", "-c",
                      expand(s.run, {{"{ids}", words}, {"{id}", words}, {"{file}", words},
                                     {"{result_file}", shell_quote(result_file)}, {"{worker}", shell_quote(worker)}})};
    job.cleanup = [idfile, result_file, private_result] {
      if (!idfile.empty()) ::unlink(idfile.c_str());
      if (private_result) ::unlink(result_file.c_str());
    };
    const std::string format = s.format;
    job.judge = [ids, format, result_file](const Job& j, int status, const std::string& output, bool timed_out,
                                           double seconds, const std::string& error, std::vector<TestReport>& out) {
      if (!error.empty()) {
        for (auto t : j.tests) out.push_back({t, Outcome::failed, 0, error + "\n", "cannot run: " + error});
        return;
      }
      std::string message;
      const Outcome whole = outcome_of_status(status, timed_out, message);
      if (timed_out) message = "timed out after " + std::to_string(static_cast<long long>(j.timeout)) + " s";
      if (format == "exit") {
        out.push_back({j.tests[0], whole, seconds, output, message});
        return;
      }
      std::string text = output, perr;
      if (!result_file.empty()) {
        std::ifstream in(result_file, std::ios::binary);
        if (in) {
          std::ostringstream ss;
          ss << in.rdbuf();
          text = ss.str();
        } else {
          text.clear();
          perr = "no result file " + result_file;
        }
      }
      std::optional<report::Parsed> parsed;
      if (perr.empty()) {
        parsed = format == "junit" ? report::parse_junit(text, perr) : report::parse_tap(text, perr);
      }
      std::vector<std::optional<report::Case>> matched(ids.size());
      if (parsed) {
        std::vector<std::string> extra;
        matched = report::match(ids, *parsed, extra);
      }
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (matched[k]) {
          auto& c = *matched[k];
          out.push_back({j.tests[k], c.outcome, c.seconds, c.output, c.message});
          continue;
        }
        // No result for it: the process's fate is its fate.
        std::string why = whole == Outcome::passed ? "exit status 0" : message;
        if (!perr.empty()) why += "; " + perr;
        const Outcome o = whole == Outcome::timeout || whole == Outcome::crashed ? whole : Outcome::failed;
        out.push_back({j.tests[k], o, 0, output, "no result reported for it (" + why + ")"});
      }
    };
    jobs.push_back(std::move(job));
  }
  return jobs;
}

}  // namespace

// ----- CTest ---------------------------------------------------------------

struct SuiteHost::CtestListing {
  std::vector<ctest::Test> tests;
  std::map<std::string, std::size_t> by_name;
};

std::shared_ptr<SuiteHost::CtestListing> SuiteHost::ctest_listing(const nlohmann::json& source, std::string& error,
                                                                 bool fresh) {
  const std::string dir = str_field(source, "build_dir", "ctest", true);
  const auto labels = list_field(source, "labels", "ctest");
  std::string key = dir;
  for (const auto& l : labels) key += '\0' + l;
  if (auto it = ctest_.find(key); it != ctest_.end() && !fresh) return it->second;
  auto tests = ctest::list(dir, labels, error);
  if (!tests) return nullptr;
  // [local root, its copy here (relative to this agent's folder)]: the
  // tree's absolute local paths point into the copy instead.
  if (auto rw = source.find("rewrite"); rw != source.end() && rw->is_array()) {
    char buf[4096] = {};
    const std::string here = ::getcwd(buf, sizeof buf) ? buf : ".";
    std::vector<std::pair<std::string, std::string>> map;
    for (const auto& p : *rw)
      if (p.is_array() && p.size() == 2 && p[0].is_string() && p[1].is_string() && !p[0].get<std::string>().empty()) {
        std::string to = p[1].get<std::string>();
        if (to.empty() || to[0] != '/') to = to == "." ? here : here + "/" + to;
        map.emplace_back(p[0].get<std::string>(), to);
      }
    auto fix = [&](std::string& s) {
      for (const auto& [from, to] : map)
        if (s == from || (s.size() > from.size() && s.compare(0, from.size(), from) == 0 && s[from.size()] == '/')) {
          s = to + s.substr(from.size());
          return;
        }
    };
    for (auto& t : *tests) {
      for (auto& a : t.command) fix(a);
      fix(t.working_directory);
      for (auto& f : t.required_files) fix(f);
      for (auto& e : t.environment) {
        const auto eq = e.find('=');
        if (eq == std::string::npos) continue;
        std::string v = e.substr(eq + 1);
        fix(v);
        e = e.substr(0, eq + 1) + v;
      }
    }
  }
  auto l = std::make_shared<CtestListing>();
  l->tests = std::move(*tests);
  for (std::size_t i = 0; i < l->tests.size(); ++i) l->by_name.emplace(l->tests[i].name, i);
  ctest_[key] = l;
  return l;
}

static std::map<std::string, std::string> env_of(const nlohmann::json& env) {
  std::map<std::string, std::string> out;
  if (env.is_object())
    for (const auto& [k, v] : env.items())
      if (v.is_string()) out[k] = v.get<std::string>();
  return out;
}

void SuiteHost::warm(const nlohmann::json& sources, const nlohmann::json& env) {
  if (!sources.is_array()) throw ProtocolError("warm message: 'sources' is not a list");
  for (const auto& s : sources)
    if (s.is_object() && s.value("kind", "") == "pytest") pytest_.warm(pytest::Source::from_json(s), env_of(env));
}

nlohmann::json SuiteHost::collect(const nlohmann::json& source, const nlohmann::json& env) {
  if (!source.is_object()) throw ProtocolError("collect message: a source is not a map");
  const std::string kind = str_field(source, "kind", "a", true);
  if (kind == "pytest") return pytest_.collect(pytest::Source::from_json(source), env_of(env));
  if (kind == "command") return collect_command(CommandSource::from_json(source));
  if (kind == "ctest") {
    std::string error;
    const std::string dir = str_field(source, "build_dir", "ctest", true);
    // A fresh listing at collection time (the build may have changed).
    auto l = ctest_listing(source, error, true);
    if (!l) return {{"path", dir}, {"error", error}};
    std::vector<std::string> names;
    nlohmann::json disabled = nlohmann::json::array(), serial = nlohmann::json::array(),
                   weights = nlohmann::json::array();
    for (std::size_t i = 0; i < l->tests.size(); ++i) {
      names.push_back(l->tests[i].name);
      if (l->tests[i].disabled) disabled.push_back(i);
      if (l->tests[i].run_serial) serial.push_back(i);
      if (l->tests[i].processors > 1) weights.push_back({i, l->tests[i].processors});
    }
    nlohmann::json entry = {{"path", dir}, {"count", names.size()}, {"names", join_names(names)}};
    if (!disabled.empty()) entry["disabled"] = std::move(disabled);
    if (!serial.empty()) entry["serial"] = std::move(serial);
    if (!weights.empty()) entry["weights"] = std::move(weights);
    // Properties that change how ctest would schedule or run a test, which
    // dtest does not honour: say so once per property.
    std::map<std::string, std::vector<std::string>> unsupported;
    for (const auto& t : l->tests)
      for (const auto& p : t.unsupported) unsupported[p].push_back(t.name);
    nlohmann::json warnings = nlohmann::json::array();
    for (const auto& [prop, tests] : unsupported)
      warnings.push_back(std::to_string(tests.size()) + " test(s) in " + dir + " set " + prop + " (first: " +
                         tests.front() + "), which dtest does not honour: they run as if it were not set");
    if (!warnings.empty()) entry["warnings"] = std::move(warnings);
    return entry;
  }
  throw ProtocolError("collect message: unsupported suite kind '" + kind + "'");
}

std::unique_ptr<Runner> SuiteHost::runner(const nlohmann::json& source, std::vector<std::string> tests,
                                          const std::map<std::string, std::string>& env, double timeout) {
  if (!source.is_object()) throw ProtocolError("run message: 'source' is not a map");
  const std::string kind = str_field(source, "kind", "a", true);
  if (kind == "pytest") return pytest::make_runner(pytest_, pytest::Source::from_json(source), std::move(tests), env, timeout);
  if (kind == "command") return std::make_unique<SequentialRunner>(command_jobs(CommandSource::from_json(source), tests, env, timeout));
  if (kind != "ctest") throw ProtocolError("run message: unsupported suite kind '" + kind + "'");
  std::string error;
  auto l = ctest_listing(source, error);
  std::vector<Job> jobs;
  for (std::size_t k = 0; k < tests.size(); ++k) {
    Job job;
    job.tests = {static_cast<std::uint32_t>(k)};
    const ctest::Test* t = nullptr;
    if (l)
      if (auto it = l->by_name.find(tests[k]); it != l->by_name.end()) t = &l->tests[it->second];
    const std::string why = !l ? error : "no test named '" + tests[k] + "' in this build tree";
    std::optional<ctest::Verdict> pre;
    if (t) pre = ctest::precheck(*t);
    std::string env_error;
    if (t && !pre) {
      job.spawn.env = env;
      for (const auto& [name, value] : env_field(source)) job.spawn.env[name] = value;
      if (!ctest::apply_environment(*t, job.spawn.env, job.spawn.unset, env_error))
        pre = ctest::Verdict{Outcome::not_run, env_error};
    }
    if (!t || pre) {
      // Nothing to start: say why (a missing executable, DISABLED, ...).
      job.no_process = true;
      const Outcome o = pre ? pre->outcome : Outcome::failed;
      const std::string msg = pre ? pre->message : why;
      job.judge = [l, o, msg](const Job& j, int, const std::string&, bool, double, const std::string&,
                              std::vector<TestReport>& out) {
        out.push_back({j.tests[0], o, 0, msg.empty() ? std::string() : msg + "\n", msg});
      };
    } else {
      job.spawn.argv = t->command;
      job.spawn.cwd = t->working_directory;
      job.timeout = t->timeout > 0 ? t->timeout : timeout;
      job.judge = [l, t](const Job& j, int status, const std::string& output, bool timed_out, double seconds,
                         const std::string& err, std::vector<TestReport>& out) {
        if (!err.empty()) {
          out.push_back({j.tests[0], Outcome::not_run, 0, err + "\n", "cannot run: " + err});
          return;
        }
        auto v = ctest::judge(*t, status, output, timed_out);
        if (timed_out) v.message = timeout_text(j.timeout);
        out.push_back({j.tests[0], v.outcome, seconds, output, v.message});
      };
    }
    jobs.push_back(std::move(job));
  }
  // The jobs hold the listing they point into.
  return std::make_unique<SequentialRunner>(std::move(jobs));
}

}  // namespace dtest
