#include "agent/pytest_adapter.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/fdio.h"
#include "common/message.h"

// The plugin's source, embedded at build time (pytest_plugin_data.cc).
extern const char* const kDtestPytestPlugin;
extern const std::size_t kDtestPytestPluginSize;

namespace dtest::pytest {

namespace {

std::string cache_base() {
  if (const char* d = std::getenv("DTEST_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/dtest";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/dtest";
  return "/tmp/dtest-" + std::to_string(::getuid());
}

void mkdirs(const std::string& path) {
  for (std::size_t pos = 1; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    ::mkdir(path.substr(0, pos).c_str(), 0700);
  }
}

std::string python_of(const Source& s) {
  if (!s.python.empty()) return s.python;
  if (const char* p = std::getenv("DTEST_PYTHON"); p && *p) return p;
  return "python3";
}

std::string with_pythonpath(const std::string& dir) {
  const char* old = std::getenv("PYTHONPATH");
  return old && *old ? dir + ":" + old : dir;
}

std::string last_bytes(const std::string& s, std::size_t n = 4000) {
  std::string t = s.size() > n ? "..." + s.substr(s.size() - n) : s;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  return t;
}

struct Pipes {
  int cmd_r = -1, cmd_w = -1, ev_r = -1, ev_w = -1;
  Pipes() {
    int a[2], b[2];
    if (::pipe2(a, O_CLOEXEC) != 0 || ::pipe2(b, O_CLOEXEC) != 0)
      throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    cmd_r = a[0], cmd_w = a[1], ev_r = b[0], ev_w = b[1];
  }
};

// Starts `python -m pytest -p dtest_pytest ARGS` in `mode`; the plugin reads
// commands on fd 3 and writes events on fd 4.
Child start_pytest(const Source& src, const char* mode, const std::map<std::string, std::string>& env, Pipes& p,
                   bool list = false) {
  SpawnOptions so;
  so.argv = {python_of(src), "-m", "pytest", "-p", "dtest_pytest"};
  so.argv.insert(so.argv.end(), src.args.begin(), src.args.end());
  so.cwd = src.cwd;
  so.env = env;
  for (const auto& [k, v] : src.env) so.env[k] = v;
  so.env["DTEST_PYTEST_MODE"] = mode;
  so.env["DTEST_PYTEST_FDS"] = "3,4";
  if (list) so.env["DTEST_PYTEST_LIST"] = "1";
  so.env["PYTHONPATH"] = with_pythonpath(plugin_dir());
  so.inherit = {{p.cmd_r, 3}, {p.ev_w, 4}};
  Child c = spawn(so);
  ::close(p.cmd_r);
  ::close(p.ev_w);
  p.cmd_r = p.ev_w = -1;
  return c;
}

// Splits complete lines off `buf` and parses each as JSON; lines that are
// not JSON objects are returned as {"ev":"garbage","text":...}.
void split_events(std::string& buf, std::vector<nlohmann::json>& out) {
  std::size_t start = 0;
  for (std::size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
    const std::string_view line(buf.data() + start, nl - start);
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) j = {{"ev", "garbage"}, {"text", std::string(line)}};
    out.push_back(std::move(j));
  }
  buf.erase(0, start);
}

// The `collected` entry for the plugin's listing event.
nlohmann::json entry_from_listing(const std::string& where, const nlohmann::json& listing) {
  nlohmann::json entry = {{"path", where}};
  std::string names;
  nlohmann::json groups = nlohmann::json::array();
  std::size_t count = 0;
  for (const auto& item : listing.value("items", nlohmann::json::array())) {
    if (!item.is_object() || !item.contains("id") || !item["id"].is_string()) continue;
    const std::string id = item["id"].get<std::string>();
    if (id.empty() || id.find('\n') != std::string::npos) continue;
    if (count) names += '\n';
    names += id;
    if (auto g = item.find("group"); g != item.end() && g->is_string()) groups.push_back({count, g->get<std::string>()});
    ++count;
  }
  entry["count"] = count;
  entry["names"] = std::move(names);
  if (!groups.empty()) entry["groups"] = std::move(groups);
  nlohmann::json errors = nlohmann::json::array();
  for (const auto& e : listing.value("errors", nlohmann::json::array()))
    if (e.is_object())
      errors.push_back("ERROR collecting " + e.value("id", std::string("?")) + "\n" + e.value("text", std::string()));
  if (!errors.empty()) entry["errors"] = std::move(errors);
  return entry;
}

// What a persistent worker's environment adds: suites written for
// pytest-xdist keep working.
std::map<std::string, std::string> xdist_env(const std::map<std::string, std::string>& env) {
  std::map<std::string, std::string> e = env;
  if (auto it = env.find("DTEST_WORKER"); it != env.end()) e["PYTEST_XDIST_WORKER"] = it->second;
  if (auto it = env.find("DTEST_WORKER_COUNT"); it != env.end()) e["PYTEST_XDIST_WORKER_COUNT"] = it->second;
  if (auto it = env.find("DTEST_TESTRUNUID"); it != env.end()) e["PYTEST_XDIST_TESTRUNUID"] = it->second;
  return e;
}

std::optional<Outcome> outcome_of(const std::string& s, std::string& message) {
  if (s == "passed") return Outcome::passed;
  if (s == "failed") return Outcome::failed;
  if (s == "skipped") return Outcome::skipped;
  if (s == "xfailed") return Outcome::xfailed;
  if (s == "xpassed") {  // pytest counts a non-strict XPASS as a pass
    message = message.empty() ? "XPASS" : "XPASS: " + message;
    return Outcome::passed;
  }
  if (s == "error") return Outcome::failed;  // its message says "error in setup/teardown"
  if (s == "not_run") return Outcome::not_run;
  return std::nullopt;
}

}  // namespace

std::string plugin_dir() {
  static const std::string dir = [] {
    const auto h = XXH3_64bits(kDtestPytestPlugin, kDtestPytestPluginSize);
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    const std::string d = cache_base() + "/pytest-" + hex;
    const std::string file = d + "/dtest_pytest.py";
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && static_cast<std::size_t>(st.st_size) == kDtestPytestPluginSize) return d;
    mkdirs(d);
    // Several agents may write it at once: each writes its own temp file
    // and renames it into place.
    const std::string tmp = file + ".tmp" + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      try {
        write_all(fd, std::string_view(kDtestPytestPlugin, kDtestPytestPluginSize));
      } catch (...) {
      }
      ::close(fd);
      ::rename(tmp.c_str(), file.c_str());
    }
    return d;
  }();
  return dir;
}

Source Source::from_json(const nlohmann::json& d) {
  Source s;
  if (auto it = d.find("python"); it != d.end() && it->is_string()) s.python = it->get<std::string>();
  if (auto it = d.find("cwd"); it != d.end() && it->is_string()) s.cwd = it->get<std::string>();
  if (auto it = d.find("args"); it != d.end()) {
    if (!it->is_array()) throw ProtocolError("pytest source: 'args' is not a list");
    for (const auto& a : *it) {
      if (!a.is_string()) throw ProtocolError("pytest source: 'args' holds a non-string");
      s.args.push_back(a.get<std::string>());
    }
  }
  if (auto it = d.find("env"); it != d.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) s.env[k] = v.get<std::string>();
  return s;
}

std::string Source::key() const {
  std::string k = python + '\0' + cwd;
  for (const auto& a : args) k += '\0' + a;
  for (const auto& [n, v] : env) k += '\0' + n + '=' + v;
  return k;
}

// ---------------------------------------------------------------------------

class Worker {
 public:
  Worker(const Source& src, const std::map<std::string, std::string>& env, bool list = false) : key(src.key()) {
    Pipes p;
    try {
      child = start_pytest(src, "worker", xdist_env(env), p, list);
    } catch (...) {
      for (int fd : {p.cmd_r, p.cmd_w, p.ev_r, p.ev_w})
        if (fd >= 0) ::close(fd);
      throw;
    }
    cmd_fd = p.cmd_w;
    ev_fd = p.ev_r;
    set_nonblocking(ev_fd, true);
    set_nonblocking(child.out_fd, true);
  }
  ~Worker() { kill(); }

  void read_events(std::vector<nlohmann::json>& out) {
    char buf[65536];
    while (ev_fd >= 0) {
      const ssize_t n = read_some(ev_fd, buf, sizeof buf);
      if (n < 0) break;
      if (n == 0) {
        ::close(ev_fd);
        ev_fd = -1;
        ev_eof = true;
        break;
      }
      ev_buf.append(buf, static_cast<std::size_t>(n));
    }
    split_events(ev_buf, out);
  }
  // Keeps the last 64 KiB of what pytest printed outside the protocol.
  void drain_out() {
    char buf[65536];
    while (child.out_fd >= 0) {
      const ssize_t n = read_some(child.out_fd, buf, sizeof buf);
      if (n < 0) return;
      if (n == 0) {
        ::close(child.out_fd);
        child.out_fd = -1;
        return;
      }
      tail.append(buf, static_cast<std::size_t>(n));
      out_total += static_cast<std::uint64_t>(n);
      if (tail.size() > (128u << 10)) tail.erase(0, tail.size() - (64u << 10));
    }
  }
  bool send(const nlohmann::json& cmd) {
    if (cmd_fd < 0) return false;
    try {
      write_all(cmd_fd, cmd.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  bool exited() {
    if (reaped) return true;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) reaped = true;
    return reaped;
  }
  void kill() {
    if (child.pid > 0) {
      kill_group(child.pid);
      if (!reaped)
        while (::waitpid(child.pid, &status, 0) < 0 && errno == EINTR) {
        }
      reaped = true;
    }
    for (int* fd : {&cmd_fd, &ev_fd, &child.out_fd})
      if (*fd >= 0) ::close(*fd), *fd = -1;
  }

  std::string key;
  Child child;
  int cmd_fd = -1, ev_fd = -1;
  std::string ev_buf, tail;
  std::uint64_t out_total = 0;  // bytes pytest printed so far
  bool ready = false, ev_eof = false, reaped = false;
  int status = 0;
};

WorkerPool::~WorkerPool() { shutdown(0); }

std::shared_ptr<Worker> WorkerPool::take(const Source& src, const std::map<std::string, std::string>& env) {
  auto it = idle_.find(src.key());
  while (it != idle_.end()) {
    auto w = it->second;
    idle_.erase(it);
    if (!w->exited()) return w;
    it = idle_.find(src.key());
  }
  return std::make_shared<Worker>(src, env);
}

void WorkerPool::give_back(std::shared_ptr<Worker> w) { idle_.emplace(w->key, std::move(w)); }

void WorkerPool::warm(const Source& src, const std::map<std::string, std::string>& env) {
  if (idle_.count(src.key())) return;
  try {
    give_back(std::make_shared<Worker>(src, env));
  } catch (const std::exception&) {
    // The first batch tries again and reports why it cannot start.
  }
}

nlohmann::json WorkerPool::collect(const Source& src, const std::map<std::string, std::string>& env, double timeout_s) {
  const std::string where = src.cwd.empty() ? "." : src.cwd;
  // A fresh worker: one left from an earlier collection may have stale code.
  for (auto it = idle_.find(src.key()); it != idle_.end(); it = idle_.find(src.key())) idle_.erase(it);
  std::shared_ptr<Worker> w;
  try {
    w = std::make_shared<Worker>(src, env, true);
  } catch (const std::exception& e) {
    return {{"path", where}, {"error", std::string("pytest in ") + where + ": " + e.what()}};
  }
  const auto deadline = RunClock::now() + std::chrono::duration<double>(timeout_s);
  std::optional<nlohmann::json> listing;
  while (!listing) {
    std::vector<nlohmann::json> evs;
    w->read_events(evs);
    w->drain_out();
    for (auto& e : evs) {
      const std::string ev = e.value("ev", "");
      if (ev == "collected") listing = std::move(e);
      else if (ev == "ready") w->ready = true;
    }
    if (listing) break;
    const bool gone = w->ev_eof || w->exited();
    if (gone || RunClock::now() >= deadline) {
      w->kill();
      return {{"path", where},
              {"error", "pytest in " + where +
                            (gone ? " failed to collect (" + describe_wait_status(w->status) + ")"
                                  : std::string(" did not finish collecting in time")) +
                            "; it printed:\n" + last_bytes(w->tail)}};
    }
    pollfd pf[2] = {{w->ev_fd, POLLIN, 0}, {w->child.out_fd, POLLIN, 0}};
    ::poll(pf, 2, 50);
  }
  nlohmann::json entry = entry_from_listing(where, *listing);
  give_back(std::move(w));
  return entry;
}

void WorkerPool::shutdown(double grace_s) {
  for (auto& [k, w] : idle_) {
    w->send({{"cmd", "shutdown"}});
    if (w->cmd_fd >= 0) ::close(w->cmd_fd), w->cmd_fd = -1;
  }
  // Session teardown runs in each worker; give it a moment, then kill.
  const auto until = RunClock::now() + std::chrono::duration<double>(grace_s);
  for (;;) {
    bool all = true;
    for (auto& [k, w] : idle_) {
      w->drain_out();
      all &= w->exited();
    }
    if (all || RunClock::now() >= until) break;
    ::usleep(5000);
  }
  idle_.clear();  // ~Worker kills what is left
}

namespace {

class PytestRunner : public Runner {
 public:
  PytestRunner(WorkerPool& pool, const Source& src, std::vector<std::string> ids,
               const std::map<std::string, std::string>& env, double timeout)
      : pool_(pool), ids_(std::move(ids)), got_(ids_.size(), 0), timeout_(timeout), started_(RunClock::now()) {
    try {
      w_ = pool_.take(src, env);
    } catch (const std::exception& ex) {
      spawn_error_ = ex.what();
      finished_ = true;
    }
  }
  ~PytestRunner() override { kill(); }

  void fds(std::vector<int>& out) const override {
    if (finished_ || !w_) return;
    if (w_->ev_fd >= 0) out.push_back(w_->ev_fd);
    if (w_->child.out_fd >= 0) out.push_back(w_->child.out_fd);
  }

  void step(std::vector<TestReport>& out) override {
    if (finished_) return;
    w_->drain_out();
    std::vector<nlohmann::json> evs;
    w_->read_events(evs);
    for (const auto& e : evs) handle(e, out);
    if (finished_) return;
    if (w_->ready && !sent_) {
      sent_ = true;
      if (!w_->send({{"cmd", "run"}, {"ids", ids_}})) return lost(out);
    }
    if (auto d = deadline(); d && RunClock::now() >= *d) {
      // Over its time limit: the worker dies with the test.
      w_->kill();
      TestReport r{static_cast<std::uint32_t>(current_), Outcome::timeout,
                   std::chrono::duration<double>(RunClock::now() - test_started_).count(),
                   test_output() + "\ndtest: " + timeout_text(timeout_) + " (its pytest worker was killed)\n",
                   timeout_text(timeout_)};
      got_[static_cast<std::size_t>(current_)] = 1;
      extra_["timed_out"] = current_;
      out.push_back(std::move(r));
      status_ = "killed: " + timeout_text(timeout_);
      exit_code_ = -1;
      finished_ = true;
      w_.reset();
      return;
    }
    if (w_->ev_eof || w_->exited()) lost(out);
  }

  bool done() const override { return finished_; }

  std::optional<RunClock::time_point> deadline() const override {
    if (finished_ || current_ < 0 || timeout_ <= 0) return std::nullopt;
    return test_started_ + std::chrono::duration_cast<RunClock::duration>(std::chrono::duration<double>(timeout_));
  }

  nlohmann::json summary() override {
    nlohmann::json unrun = nlohmann::json::array();
    for (std::size_t i = 0; i < ids_.size(); ++i)
      if (!got_[i]) unrun.push_back(i);
    nlohmann::json body = extra_;
    body["status"] = status_;
    body["exit_code"] = exit_code_;
    body["unrun"] = std::move(unrun);
    body["seconds"] = std::chrono::duration<double>(RunClock::now() - started_).count();
    if (startup_ >= 0) body["startup"] = startup_;
    if (!spawn_error_.empty()) body["spawn_error"] = spawn_error_;
    return body;
  }

  void kill() override {
    if (w_) {
      if (finished_ && ok_) pool_.give_back(std::move(w_));
      else w_->kill();
      w_.reset();
    }
    finished_ = true;
  }

 private:
  void handle(const nlohmann::json& e, std::vector<TestReport>& out) {
    const std::string ev = e.value("ev", "");
    auto index = [&]() -> int {
      auto it = e.find("i");
      if (it == e.end() || !it->is_number_unsigned() || it->get<std::size_t>() >= ids_.size()) return -1;
      return static_cast<int>(it->get<std::size_t>());
    };
    if (ev == "ready") {
      w_->ready = true;
    } else if (ev == "start") {
      current_ = index();
      test_started_ = RunClock::now();
      w_->drain_out();
      out_mark_ = w_->out_total;
      if (startup_ < 0) startup_ = std::chrono::duration<double>(test_started_ - started_).count();
    } else if (ev == "result") {
      const int i = index();
      if (i < 0 || got_[static_cast<std::size_t>(i)]) return;
      TestReport r;
      r.index = static_cast<std::uint32_t>(i);
      r.message = e.value("message", "");
      r.output = cap_output(e.value("output", ""));
      const auto o = outcome_of(e.value("outcome", ""), r.message);
      r.outcome = o.value_or(Outcome::failed);
      if (!o) r.message = "unknown outcome '" + e.value("outcome", "") + "' from the pytest worker";
      const auto d = e.find("duration");
      r.seconds = d != e.end() && d->is_number() && d->get<double>() >= 0 && d->get<double>() < 1e9 ? d->get<double>() : 0;
      got_[r.index] = 1;
      if (i == current_) current_ = -1;
      out.push_back(std::move(r));
    } else if (ev == "batch_done") {
      finished_ = true;
      ok_ = true;
      pool_.give_back(std::move(w_));
      w_.reset();
    }
    // "log" and garbage lines: pytest's own business, kept out of results.
  }

  // What the worker printed since the running test started (pytest's own
  // capture is gone with the process).
  std::string test_output() const {
    const std::uint64_t n = std::min<std::uint64_t>(w_->out_total - out_mark_, w_->tail.size());
    return w_->tail.substr(w_->tail.size() - static_cast<std::size_t>(n));
  }

  // The worker went away (it crashed, or never got going).
  void lost(std::vector<TestReport>& out) {
    // Whatever it said last still counts.
    std::vector<nlohmann::json> evs;
    w_->read_events(evs);
    for (const auto& e : evs) handle(e, out);
    if (finished_) return;
    w_->drain_out();
    w_->kill();
    const std::string st = describe_wait_status(w_->status);
    if (current_ >= 0 && !got_[static_cast<std::size_t>(current_)]) {
      TestReport r{static_cast<std::uint32_t>(current_), Outcome::crashed,
                   std::chrono::duration<double>(RunClock::now() - test_started_).count(),
                   test_output() + "\ndtest: pytest worker exited mid-test: " + st + "\n", st};
      got_[r.index] = 1;
      extra_["crashed"] = current_;
      out.push_back(std::move(r));
      status_ = st;
    } else if (!w_->ready) {
      status_ = "the pytest worker exited while starting (" + st + ")";
      extra_["outside_output"] = last_bytes(w_->tail, 16000);
    } else {
      status_ = "the pytest worker exited between tests (" + st + ")";
      extra_["outside_output"] = last_bytes(w_->tail, 16000);
    }
    exit_code_ = WIFEXITED(w_->status) ? WEXITSTATUS(w_->status) : -1;
    if (exit_code_ == 0) exit_code_ = -1;
    finished_ = true;
    w_.reset();
  }

  WorkerPool& pool_;
  std::vector<std::string> ids_;
  std::vector<char> got_;
  double timeout_;
  std::shared_ptr<Worker> w_;
  bool sent_ = false, finished_ = false, ok_ = false;
  int current_ = -1;
  RunClock::time_point started_, test_started_;
  double startup_ = -1;
  std::uint64_t out_mark_ = 0;  // the worker's out_total when the running test started
  std::string status_ = "exit status 0", spawn_error_;
  int exit_code_ = 0;
  nlohmann::json extra_ = nlohmann::json::object();
};

}  // namespace

std::unique_ptr<Runner> make_runner(WorkerPool& pool, const Source& src, std::vector<std::string> ids,
                                    const std::map<std::string, std::string>& env, double timeout) {
  return std::make_unique<PytestRunner>(pool, src, std::move(ids), env, timeout);
}

}  // namespace dtest::pytest
