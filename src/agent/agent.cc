#include "agent/agent.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <poll.h>
#include <sched.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>

#include "agent/gtest_adapter.h"
#include "agent/gtest_parse.h"
#include "agent/subprocess.h"
#include "agent/suites.h"
#include "common/fdio.h"
#include "common/message.h"
#include "sync/receiver.h"

namespace dtest {

namespace {

int g_signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int sig) {
  const int saved = errno;
  const char c = static_cast<char>(sig);
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &c, 1);
  errno = saved;
}

using Clock = std::chrono::steady_clock;

struct Batch {
  std::int64_t id = 0;
  std::string binary;
  std::vector<std::string> tests;
  std::unordered_map<std::string, std::uint32_t> pos;  // name -> index in `tests`
  Child child;
  gtest::RunParser parser;
  std::string flagfile;
  Clock::time_point started_at;  // of the current test
  Clock::time_point spawned_at;
  double startup = -1;  // seconds from spawn to the first test starting
  // The run message's `timeout`: seconds a test may run (0: no limit), and
  // the test whose process group was killed for running longer.
  double timeout = 0;
  std::string timed_out;
  bool exited = false;
  int status = 0;
};

// A batch of another suite kind (pytest, CTest, command), run by a Runner.
struct OtherBatch {
  std::int64_t id = 0;
  std::unique_ptr<Runner> runner;
  // An `exec` (a set-up hook) rather than a batch: answered with exec_done.
  bool exec = false;
  std::shared_ptr<nlohmann::json> exec_result;
};

// Longer limits are no limit in practice, and keep the time arithmetic
// far from overflowing.
constexpr double kMaxTimeout = 1e9;

// The running test's deadline, if it has one and has not been killed yet.
std::optional<Clock::time_point> deadline(const Batch& b) {
  if (b.timeout <= 0 || b.exited || !b.timed_out.empty() || b.parser.current().empty()) return std::nullopt;
  return b.started_at + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(b.timeout));
}

// "timed out after 2 s", "timed out after 0.5 s".
std::string timeout_message(double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "timed out after %g s", seconds);
  return buf;
}

int cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

nlohmann::json hello_body() {
  utsname u{};
  ::uname(&u);
  std::string os = u.sysname;
  std::transform(os.begin(), os.end(), os.begin(), [](unsigned char c) { return std::tolower(c); });
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  char cwd[4096] = {};
  if (!::getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
  return {{"proto", kProtocolVersion},
          {"agent_version", DTEST_VERSION},
          {"os", os},
          {"os_release", u.release},
          {"arch", u.machine},
          {"cpus", cpu_count()},
          {"hostname", host},
          {"pid", ::getpid()},
          {"cwd", cwd},
          {"caps", {"gtest", "zstd", "sync", "pytest", "ctest", "command", "exec", "warm"}}};
}

class Agent {
 public:
  Agent(int in_fd, int out_fd)
      : in_(in_fd),
        out_(out_fd),
        receiver_([this](MsgKind k, nlohmann::json b) { send(k, std::move(b)); }, cwd(),
                  sync::watch_options_from_env(self_exe())) {}
  int run();

 private:
  void send(MsgKind k, nlohmann::json body) { write_all(out_, encode_frame(encode_message({k, std::move(body)}))); }
  void log(const std::string& text) { send(MsgKind::log, {{"message", text}}); }
  void handle(const Message& m);
  void dispatch(const Message& m);
  void start_batch(const Message& m);
  std::size_t read_batch(Batch& b, bool drain);
  void parse_output(Batch& b, std::string_view bytes);
  void add_result(Batch& b, gtest::TestEvent& e, double seconds, const std::string& message);
  void add_report(std::int64_t batch, TestReport& r);
  void start_other(const Message& m, const std::string& kind);
  void start_exec(const Message& m);
  void step_others();
  void finish_batch(Batch& b);
  void check_timeouts();
  int poll_timeout_ms() const;
  void reap();
  void flush_events();
  void kill_all();

  // This agent's binary, by its real path: it also runs the tree watchers.
  static std::string self_exe() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }
  static std::string cwd() {
    char buf[4096] = {};
    return ::getcwd(buf, sizeof buf) ? std::string(buf) : std::string(".");
  }

  int in_, out_;
  sync::Receiver receiver_;
  FrameDecoder decoder_;
  std::vector<std::unique_ptr<Batch>> batches_;
  std::vector<OtherBatch> others_;
  SuiteHost suites_;
  // Results not yet sent (all of one batch): packed records, and the output
  // and message of the tests that have one, as [index, text] pairs.
  std::int64_t pending_batch_ = -1;
  std::vector<std::uint8_t> pending_records_;
  nlohmann::json pending_outputs_ = nlohmann::json::array();
  nlohmann::json pending_messages_ = nlohmann::json::array();
  bool stop_ = false;
};

void Agent::flush_events() {
  if (pending_records_.empty()) return;
  nlohmann::json body = {{"batch", pending_batch_},
                         {"results", nlohmann::json::binary(std::move(pending_records_))}};
  if (!pending_outputs_.empty()) body["outputs"] = std::move(pending_outputs_);
  if (!pending_messages_.empty()) body["messages"] = std::move(pending_messages_);
  send(MsgKind::events, std::move(body));
  pending_records_.clear();
  pending_outputs_ = nlohmann::json::array();
  pending_messages_ = nlohmann::json::array();
  pending_batch_ = -1;
}

void Agent::add_result(Batch& b, gtest::TestEvent& e, double seconds, const std::string& message) {
  const auto it = b.pos.find(e.name);
  if (it == b.pos.end()) {
    // gtest ran something we did not ask for: not ours to report.
    log("ignoring a result for '" + e.name + "', which is not in batch " + std::to_string(b.id));
    return;
  }
  if (pending_batch_ != b.id) flush_events();
  pending_batch_ = b.id;
  append_record(pending_records_, {it->second, e.outcome, seconds});
  if (!e.output.empty()) pending_outputs_.push_back({it->second, std::move(e.output)});
  if (!message.empty()) pending_messages_.push_back({it->second, message});
}

void Agent::add_report(std::int64_t batch, TestReport& r) {
  if (pending_batch_ != batch) flush_events();
  pending_batch_ = batch;
  append_record(pending_records_, {r.index, r.outcome, r.seconds});
  if (!r.output.empty()) pending_outputs_.push_back({r.index, std::move(r.output)});
  if (!r.message.empty()) pending_messages_.push_back({r.index, std::move(r.message)});
}

void Agent::start_other(const Message& m, const std::string& kind) {
  OtherBatch b;
  b.id = get_int(m, "batch");
  const auto& tests = field(m, "tests");
  if (!tests.is_array()) throw ProtocolError("run message: 'tests' is not a list");
  std::vector<std::string> names;
  for (const auto& t : tests) {
    if (!t.is_string()) throw ProtocolError("run message: 'tests' holds a non-string");
    names.push_back(t.get<std::string>());
  }
  double timeout = 0;
  if (auto t = m.body.find("timeout"); t != m.body.end()) {
    const double v = t->is_number() ? t->get<double>() : -1;
    if (!(v >= 0) || !std::isfinite(v))
      throw ProtocolError("run message: 'timeout' is not a number of seconds >= 0");
    timeout = std::min(v, kMaxTimeout);
  }
  std::map<std::string, std::string> env;
  if (auto it = m.body.find("env"); it != m.body.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) env[k] = v.get<std::string>();
  nlohmann::json source = field(m, "source");
  if (!source.is_object()) throw ProtocolError("run message: 'source' is not a map");
  source["kind"] = kind;
  b.runner = suites_.runner(source, std::move(names), env, timeout);
  others_.push_back(std::move(b));
  step_others();
}

// A set-up hook: `/bin/sh -c COMMAND` in `cwd` (the agent's own when
// empty) with `env`, its output captured; exec_done says how it ended.
void Agent::start_exec(const Message& m) {
  OtherBatch b;
  b.id = get_int(m, "id");
  b.exec = true;
  b.exec_result = std::make_shared<nlohmann::json>();
  Job job;
  job.spawn.argv = {"/bin/sh", "-c", get_string(m, "command")};
  if (auto c = m.body.find("cwd"); c != m.body.end() && c->is_string()) job.spawn.cwd = c->get<std::string>();
  if (auto it = m.body.find("env"); it != m.body.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) job.spawn.env[k] = v.get<std::string>();
  if (auto t = m.body.find("timeout"); t != m.body.end() && t->is_number() && t->get<double>() > 0)
    job.timeout = std::min(t->get<double>(), kMaxTimeout);
  job.tests = {0};
  auto result = b.exec_result;
  job.judge = [result](const Job& j, int status, const std::string& output, bool timed_out, double seconds,
                       const std::string& error, std::vector<TestReport>&) {
    if (!error.empty()) {
      *result = {{"status", error}, {"exit_code", -1}, {"output", error}, {"seconds", 0.0}};
      return;
    }
    *result = {{"status", timed_out ? timeout_text(j.timeout) : describe_wait_status(status)},
               {"exit_code", WIFEXITED(status) && !timed_out ? WEXITSTATUS(status) : -1},
               {"output", output},
               {"seconds", seconds}};
  };
  std::vector<Job> jobs;
  jobs.push_back(std::move(job));
  b.runner = std::make_unique<SequentialRunner>(std::move(jobs));
  others_.push_back(std::move(b));
  step_others();
}

// Drives every non-GoogleTest batch one step; a finished one reports.
void Agent::step_others() {
  for (auto it = others_.begin(); it != others_.end();) {
    std::vector<TestReport> reports;
    it->runner->step(reports);
    for (auto& r : reports) add_report(it->id, r);
    if (!it->runner->done()) {
      ++it;
      continue;
    }
    if (it->exec) {
      nlohmann::json body = *it->exec_result;
      if (body.is_null()) body = {{"status", "killed"}, {"exit_code", -1}, {"output", ""}};
      body["id"] = it->id;
      send(MsgKind::exec_done, std::move(body));
      it = others_.erase(it);
      continue;
    }
    flush_events();
    nlohmann::json body = it->runner->summary();
    body["batch"] = it->id;
    it->runner->kill();  // hands a pytest worker back to the pool
    send(MsgKind::batch_done, std::move(body));
    it = others_.erase(it);
  }
}

void Agent::parse_output(Batch& b, std::string_view bytes) {
  std::vector<gtest::TestEvent> evs;
  b.parser.feed(bytes, evs);
  for (auto& e : evs) {
    const auto now = Clock::now();
    if (e.kind == gtest::TestEvent::Kind::started) {
      b.started_at = now;
      if (b.startup < 0) b.startup = std::chrono::duration<double>(now - b.spawned_at).count();
      continue;
    }
    const double measured = std::chrono::duration<double>(now - b.started_at).count();
    add_result(b, e, std::max(measured, e.duration_ms / 1000.0), {});
  }
}

// Returns the bytes read.
std::size_t Agent::read_batch(Batch& b, bool drain) {
  char buf[65536];
  std::size_t total = 0;
  for (;;) {
    if (b.child.out_fd < 0) return total;
    const ssize_t n = read_some(b.child.out_fd, buf, sizeof buf);
    if (n < 0) return total;  // EAGAIN: nothing more right now
    if (n == 0) {
      ::close(b.child.out_fd);
      b.child.out_fd = -1;
      return total;
    }
    total += static_cast<std::size_t>(n);
    parse_output(b, std::string_view(buf, static_cast<std::size_t>(n)));
    if (!drain) return total;
  }
}

void Agent::finish_batch(Batch& b) {
  read_batch(b, true);  // whatever it wrote before it exited
  // Anything the test process left behind (daemons holding the pipe) dies
  // with the batch.
  kill_group(b.child.pid);
  if (b.child.out_fd >= 0) {
    ::close(b.child.out_fd);
    b.child.out_fd = -1;
  }
  const std::string status = describe_wait_status(b.status);
  std::vector<gtest::TestEvent> evs;
  std::string crashed, timed_out;
  // The test we killed for its time limit ends as a timeout, with what it
  // printed so far; any other test running when the process died crashed.
  const std::string limit = timeout_message(b.timeout);
  if (!b.timed_out.empty() && b.parser.current() == b.timed_out) {
    timed_out = b.timed_out;
    b.parser.finish(evs, Outcome::timeout, "dtest: " + limit + " (its test process was killed)");
  } else {
    if (!b.parser.current().empty()) crashed = b.parser.current();
    b.parser.finish(status, evs);
  }
  for (auto& e : evs) {
    if (e.kind != gtest::TestEvent::Kind::finished) continue;
    const double measured = std::chrono::duration<double>(Clock::now() - b.started_at).count();
    add_result(b, e, measured,
               e.outcome == Outcome::crashed   ? status
               : e.outcome == Outcome::timeout ? limit
                                               : std::string());
  }
  flush_events();
  std::unordered_set<std::string> done(b.parser.finished().begin(), b.parser.finished().end());
  nlohmann::json unrun = nlohmann::json::array();
  for (std::uint32_t i = 0; i < b.tests.size(); ++i)
    if (!done.count(b.tests[i]) && b.tests[i] != crashed) unrun.push_back(i);
  nlohmann::json body = {{"batch", b.id}, {"status", status}, {"unrun", std::move(unrun)}};
  body["exit_code"] = WIFEXITED(b.status) ? WEXITSTATUS(b.status) : -1;
  const double seconds = std::chrono::duration<double>(Clock::now() - b.spawned_at).count();
  body["seconds"] = seconds;
  if (b.startup >= 0) body["startup"] = b.startup;
  // Remember what this binary costs, for the next run's batch sizing.
  if (b.startup >= 0 && !done.empty() && WIFEXITED(b.status))
    gtest::record_cost(b.binary, b.startup,
                       std::max(seconds - b.startup, 0.0) / static_cast<double>(done.size()) + 1e-9);
  if (auto it = b.pos.find(crashed); it != b.pos.end()) body["crashed"] = it->second;
  if (auto it = b.pos.find(timed_out); it != b.pos.end()) body["timed_out"] = it->second;
  if (!(WIFEXITED(b.status) && WEXITSTATUS(b.status) == 0) && !b.parser.outside_output().empty())
    body["outside_output"] = b.parser.outside_output();
  if (!b.flagfile.empty()) ::unlink(b.flagfile.c_str());
  send(MsgKind::batch_done, std::move(body));
}

// Kills the process group of every batch whose running test has passed its
// deadline. finish_batch() then reports that test as a timeout and the rest
// of the batch as unrun.
void Agent::check_timeouts() {
  for (auto& b : batches_) {
    auto d = deadline(*b);
    if (!d || Clock::now() < *d) continue;
    // A result already in the pipe wins over the limit (bounded: a test
    // that prints without pause must not keep us here).
    for (int k = 0; k < 16 && read_batch(*b, false) > 0; ++k) {
    }
    d = deadline(*b);
    if (!d || Clock::now() < *d) continue;  // it ended; maybe the next one started
    b->timed_out = b->parser.current();
    kill_group(b->child.pid);
  }
}

// How long poll() may sleep: until the nearest test deadline, and at most
// 200 ms while batches run (a safety net for reaping; SIGCHLD normally
// wakes us), forever when idle.
int Agent::poll_timeout_ms() const {
  if (batches_.empty() && others_.empty()) return -1;
  int ms = 200;
  const auto now = Clock::now();
  for (const auto& b : others_) {
    const auto d = b.runner->deadline();
    if (!d) continue;
    if (*d <= now) return 0;
    const double left = std::ceil(std::chrono::duration<double, std::milli>(*d - now).count());
    if (left < ms) ms = static_cast<int>(left);
  }
  for (const auto& b : batches_) {
    const auto d = deadline(*b);
    if (!d) continue;
    if (*d <= now) return 0;
    const double left = std::ceil(std::chrono::duration<double, std::milli>(*d - now).count());
    if (left < ms) ms = static_cast<int>(left);
  }
  return ms;
}

void Agent::reap() {
  for (auto& b : batches_) {
    if (b->exited) continue;
    int st = 0;
    const pid_t r = ::waitpid(b->child.pid, &st, WNOHANG);
    if (r == b->child.pid) {
      b->exited = true;
      b->status = st;
    }
  }
  for (auto it = batches_.begin(); it != batches_.end();) {
    if ((*it)->exited) {
      finish_batch(**it);
      it = batches_.erase(it);
    } else {
      ++it;
    }
  }
}

void Agent::start_batch(const Message& m) {
  auto b = std::make_unique<Batch>();
  b->id = get_int(m, "batch");
  b->binary = get_string(m, "binary");
  const auto& tests = field(m, "tests");
  if (!tests.is_array()) throw ProtocolError("run message: 'tests' is not a list");
  for (const auto& t : tests) {
    if (!t.is_string()) throw ProtocolError("run message: 'tests' holds a non-string");
    b->pos.emplace(t.get<std::string>(), static_cast<std::uint32_t>(b->tests.size()));
    b->tests.push_back(t.get<std::string>());
  }
  if (auto t = m.body.find("timeout"); t != m.body.end()) {
    const double v = t->is_number() ? t->get<double>() : -1;
    if (!(v >= 0) || !std::isfinite(v))
      throw ProtocolError("run message: 'timeout' is not a number of seconds >= 0");
    b->timeout = std::min(v, kMaxTimeout);
  }
  SpawnOptions so;
  if (auto it = m.body.find("env"); it != m.body.end() && it->is_object())
    for (const auto& [k, v] : it->items())
      if (v.is_string()) so.env[k] = v.get<std::string>();
  // A user's own GTEST_TOTAL_SHARDS (sharding at a higher level) must not
  // silently drop tests of a batch: dtest decides what each process runs.
  so.unset = {"GTEST_TOTAL_SHARDS", "GTEST_SHARD_INDEX"};
  bool sharded = false;
  if (auto sh = m.body.find("shard"); sh != m.body.end()) {
    if (!sh->is_array() || sh->size() != 2 || !(*sh)[0].is_number_unsigned() || !(*sh)[1].is_number_unsigned())
      throw ProtocolError("run message: 'shard' is not [index, count]");
    sharded = gtest::shard_command(b->binary, (*sh)[0].get<int>(), (*sh)[1].get<int>(), so.argv, so.env);
  }
  try {
    if (!sharded) so.argv = gtest::batch_command(b->binary, b->tests, b->flagfile);
    b->child = spawn(so);
  } catch (const std::exception& e) {
    // Could not start: every test goes back to the master unrun.
    nlohmann::json unrun = nlohmann::json::array();
    for (std::uint32_t i = 0; i < b->tests.size(); ++i) unrun.push_back(i);
    send(MsgKind::batch_done, {{"batch", b->id}, {"status", e.what()}, {"exit_code", -1},
                               {"unrun", std::move(unrun)}, {"spawn_error", e.what()}});
    if (!b->flagfile.empty()) ::unlink(b->flagfile.c_str());
    return;
  }
  set_nonblocking(b->child.out_fd, true);
  b->started_at = b->spawned_at = Clock::now();
  batches_.push_back(std::move(b));
}

void Agent::handle(const Message& m) {
  try {
    dispatch(m);
  } catch (const nlohmann::json::exception& e) {
    throw ProtocolError(std::string(to_string(m.kind)) + " message: a field is missing or has the wrong type (" +
                        e.what() + ")");
  }
}

void Agent::dispatch(const Message& m) {
  switch (m.kind) {
    case MsgKind::collect: {
      const std::int64_t id = get_int(m, "id");
      if (auto srcs = m.body.find("sources"); srcs != m.body.end()) {
        // One entry per source, any kind; GoogleTest binaries by `path`.
        if (!srcs->is_array()) throw ProtocolError("collect message: 'sources' is not a list");
        nlohmann::json entries = nlohmann::json::array();
        for (const auto& src : *srcs) {
          if (src.is_object() && src.value("kind", "") == "gtest") {
            if (!src.contains("path") || !src["path"].is_string())
              throw ProtocolError("collect message: a gtest source without a 'path'");
            entries.push_back(gtest::collect_binary(src["path"].get<std::string>()));
          } else {
            entries.push_back(suites_.collect(src, m.body.value("env", nlohmann::json())));
          }
        }
        send(MsgKind::collected, {{"id", id}, {"binaries", std::move(entries)}});
        return;
      }
      const auto& suite = field(m, "suite");
      if (!suite.is_object() || !suite.contains("kind") || suite["kind"] != "gtest")
        throw ProtocolError("collect message: unsupported suite kind");
      if (!suite.contains("binaries") || !suite["binaries"].is_array())
        throw ProtocolError("collect message: 'suite.binaries' is not a list");
      nlohmann::json bins = nlohmann::json::array();
      for (const auto& p : suite["binaries"]) {
        if (!p.is_string()) throw ProtocolError("collect message: a binary path is not a string");
        bins.push_back(gtest::collect_binary(p.get<std::string>()));
      }
      send(MsgKind::collected, {{"id", id}, {"binaries", std::move(bins)}});
      return;
    }
    case MsgKind::run: {
      const auto k = m.body.find("kind");
      if (k != m.body.end() && k->is_string() && *k != "gtest") return start_other(m, k->get<std::string>());
      start_batch(m);
      return;
    }
    case MsgKind::shutdown:
      stop_ = true;
      return;
    case MsgKind::exec:
      start_exec(m);
      return;
    case MsgKind::warm:
      suites_.warm(field(m, "sources"), m.body.value("env", nlohmann::json()));
      return;
    case MsgKind::sync_begin:
    case MsgKind::sync_plan:
    case MsgKind::sync_data:
    case MsgKind::sync_end:
    case MsgKind::sync_fetch:
      receiver_.handle(m);
      return;
    default:
      throw ProtocolError("unexpected " + std::string(to_string(m.kind)) + " message from the master");
  }
}

void Agent::kill_all() {
  for (auto& b : batches_) {
    kill_group(b->child.pid);
    if (!b->exited) ::waitpid(b->child.pid, nullptr, 0);
    if (b->child.out_fd >= 0) ::close(b->child.out_fd);
    if (!b->flagfile.empty()) ::unlink(b->flagfile.c_str());
  }
  batches_.clear();
  for (auto& b : others_) b.runner->kill();
  others_.clear();
  suites_.shutdown();
}

int Agent::run() {
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return 3;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::sigaction(s, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  int rc = 0;
  try {
    send(MsgKind::hello, hello_body());
    char buf[65536];
    while (!stop_) {
      std::vector<pollfd> fds = {{in_, POLLIN, 0}, {g_signal_pipe[0], POLLIN, 0}};
      for (auto& b : batches_)
        if (b->child.out_fd >= 0) fds.push_back({b->child.out_fd, POLLIN, 0});
      std::vector<int> other_fds;
      for (auto& b : others_) b.runner->fds(other_fds);
      for (int fd : other_fds) fds.push_back({fd, POLLIN, 0});
      const int r = ::poll(fds.data(), fds.size(), poll_timeout_ms());
      if (r < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
      if (r > 0 && fds[1].revents) {
        char sigs[64];
        const ssize_t n = ::read(g_signal_pipe[0], sigs, sizeof sigs);
        for (ssize_t i = 0; i < n; ++i)
          if (sigs[i] != SIGCHLD) stop_ = true;
      }
      bool trickle = false;
      if (r > 0) {
        std::size_t k = 2;
        for (auto& b : batches_) {
          if (b->child.out_fd < 0) continue;
          if (fds[k].revents) {
            const std::size_t n = read_batch(*b, false);
            trickle |= n > 0 && n < 4096;
          }
          ++k;
        }
      }
      check_timeouts();
      reap();
      step_others();
      flush_events();
      if (r > 0 && fds[0].revents) {
        const ssize_t n = read_some(in_, buf, sizeof buf);
        if (n == 0) {
          if (decoder_.buffered() > 0)
            throw ProtocolError("the master's stream ended inside a frame");
          break;  // master went away: clean up and exit
        }
        if (n > 0) decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
        while (auto f = decoder_.pop()) handle(decode_message(*f));
      }
      // GoogleTest flushes every line: reading each as it comes costs a
      // wake-up per line (two per test) on both sides of the pipe. When
      // output trickles in, let it gather for a millisecond; the pipe holds
      // 64 KiB, so the test process does not stall.
      if (trickle && !stop_) {
        const timespec pause{0, 1'000'000};
        ::nanosleep(&pause, nullptr);
      }
    }
  } catch (const ProtocolError& e) {
    std::cerr << "dtest-agent: protocol error: " << e.what() << "\n";
    try { log(std::string("protocol error: ") + e.what()); } catch (...) {}
    rc = 3;
  } catch (const std::system_error& e) {
    // Writing to a master that went away (EPIPE): nothing to tell anyone.
    if (e.code().value() != EPIPE) {
      std::cerr << "dtest-agent: error: " << e.what() << "\n";
      rc = 3;
    }
  } catch (const std::exception& e) {
    std::cerr << "dtest-agent: error: " << e.what() << "\n";
    rc = 3;
  }
  kill_all();
  return rc;
}

}  // namespace

int run_agent(int in_fd, int out_fd) { return Agent(in_fd, out_fd).run(); }

}  // namespace dtest
