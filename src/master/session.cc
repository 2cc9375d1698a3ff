#include "master/session.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <future>
#include <regex>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <tuple>
#include <unistd.h>
#include <unordered_map>

#include <fmt/format.h>

#include "common/message.h"
#include "master/junit_reporter.h"
#include "master/repository.h"
#include "sync/sender.h"
#include "master/scheduler.h"
#include "master/terminal_reporter.h"

namespace dtest {

std::atomic<int> g_interrupt_signal{0};

namespace {

using Clock = std::chrono::steady_clock;

struct Event {
  // synced: a sync thread finished (error empty) or failed.
  enum class Kind { opened, message, closed, failed, synced };
  Event(int s, Kind k, std::string err = {}) : slot(s), kind(k), error(std::move(err)) {}
  Event(int s, Message m, std::size_t w) : slot(s), kind(Kind::message), msg(std::move(m)), wire(w) {}
  int slot;
  Kind kind;
  Message msg;
  std::string error;
  std::size_t wire = 0;  // the message's size on the wire
  std::shared_ptr<sync::SyncStats> stats;
};

// The sync_* messages of the gateway running a sync, handed from the main
// thread to the sync thread. Closing it makes the sync thread give up.
class SyncInbox {
 public:
  void push(Message m, std::size_t wire) {
    {
      std::lock_guard lock(mu_);
      q_.emplace_back(std::move(m), wire);
    }
    cv_.notify_one();
  }
  void close(const std::string& why) {
    {
      std::lock_guard lock(mu_);
      if (closed_.empty()) closed_ = why.empty() ? "closed" : why;
    }
    cv_.notify_one();
  }
  Message pop(std::size_t& wire) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty() || !closed_.empty(); });
    if (q_.empty()) throw sync::SyncError(closed_);
    auto [m, w] = std::move(q_.front());
    q_.pop_front();
    wire = w;
    return m;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Message, std::size_t>> q_;
  std::string closed_;
};

class EventQueue {
 public:
  void push(Event e) {
    {
      std::lock_guard lock(mu_);
      q_.push_back(std::move(e));
    }
    cv_.notify_one();
  }
  std::optional<Event> pop(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return !q_.empty(); })) return std::nullopt;
    Event e = std::move(q_.front());
    q_.pop_front();
    return e;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> q_;
};

// syncing: said hello; its host's copy of the --rsyncdir roots is being
// brought up to date (by this gateway or another one to the same place).
// setting_up: its place's setup.host or its own setup.worker is running.
enum class SlotState { opening, awaiting_hello, syncing, setting_up, ready, dead };

struct Slot {
  GatewayInfo info;
  xspec::Spec spec;
  std::string group_key;  // gateways with equal keys collect once
  std::string host;       // the machine it runs on (host_of), for weighted tests
  std::unique_ptr<gateway::Gateway> gw;
  std::mutex gw_mu;       // guards `gw` while the reader thread installs it
  std::thread reader;
  bool abandoned = false;  // declared dead before its gateway arrived (under gw_mu)
  SlotState state = SlotState::opening;
  Clock::time_point started;
  std::int64_t batch = 0;  // session batch id in flight, 0 if idle
  std::int64_t reserved_for = 0;  // held idle for this heavy test's batch
  int unit = -1;
  int sync = -1;           // index of its sync target, -1: nothing to sync
  int place = -1;          // index of its host set-up place (setup.host)
  bool worker_setup_done = false;
};

// A place (host and work dir) whose setup.host runs once, on one of its
// gateways, while the others wait.
struct HostSetup {
  std::string key;
  std::vector<int> slots;
  int runner = -1;  // the slot running it
  bool done = false, failed = false;
  std::string error;
};

// exec ids: which hook an exec_done answers (one at a time per slot).
constexpr std::int64_t kExecHost = 1, kExecWorker = 2;

// One place the roots are synced to (a host and work dir), shared by the
// gateways that run there; synced once, by one of them.
struct SyncTarget {
  std::string key;
  std::vector<int> slots;
  int runner = -1;  // the slot whose agent is receiving
  bool done = false, failed = false;
  std::shared_ptr<SyncInbox> inbox;
  std::thread thread;
};

struct CollectGroup {
  std::string key;
  std::vector<int> slots;
  int asked = -1;  // slot asked to collect
  bool done = false;
  bool failed = false;
  std::vector<TestCase> tests;
  std::vector<std::string> errors;
  // Per binary: what a process start and a test cost, from earlier runs.
  std::vector<std::optional<std::pair<double, double>>> costs;
};

struct UnitState {
  std::unique_ptr<Scheduler> sched;
  std::vector<int> workers;
  std::vector<std::string> paths;  // per binary index: the local path (messages); agents get path_for()
  std::vector<int> binary_of;      // per test
  // --retries: per test, the retries it was given and its latest failure
  // while it waits for (or runs) one; the queue of tests awaiting a retry.
  // --count: per test, its GoogleTest name (the unit's names carry a
  // "[k/N]" suffix); empty without --count.
  std::vector<std::string> gtest_names;
  std::vector<int> retries_used;
  std::vector<std::optional<TestResult>> last_failure;
  std::deque<int> retry_queue;
  // RUN_SERIAL tests: each runs alone, once nothing else is queued or in
  // flight in the unit.
  std::deque<int> serial_queue;
  // Tests of weight k > 1 (PROCESSORS): each goes out first, as a batch of
  // one, once k workers of one host are idle; k-1 of them then wait with it.
  std::deque<int> heavy_queue;
  // Serial and heavy tests: batches of one that ended before reaching it.
  std::map<int, int> single_attempts;
};

struct InFlight {
  int unit = -1;
  int slot = -1;
  std::int64_t sched_batch = 0;
  std::vector<int> tests;  // test indices, in the order sent (the wire's batch index)
  bool retry = false;        // a --retries batch (not the scheduler's: sched_batch 0)
  bool single = false;       // a serial or heavy test's batch of one (also a retry batch)
  std::vector<int> reserved;  // a heavy test's: the slots held idle while it runs
  bool failed_test = false;  // some test of it failed, crashed or timed out
  std::vector<char> got;     // per batch index: a result came in
};

// Where a gateway's agent works: gateways with equal keys share one copy of
// the synced roots. A popen gateway without chdir works here: no sync.
std::string sync_key_of(const xspec::Spec& s) {
  const auto type = s.type();
  const auto chdir = s.get("chdir");
  if (type == "popen" && !chdir) return {};
  return type + "=" + s.get(type).value_or("") + "//chdir=" + chdir.value_or("");
}

std::string make_id(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "::" + name;
}

// The machine a gateway runs on, as far as its spec tells: every popen
// gateway is this one; ssh gateways to one host (any user) share it; a
// socket gateway is its address.
std::string host_of(const xspec::Spec& s) {
  const auto type = s.type();
  if (type == "popen") return "popen";
  std::string where = s.get(type).value_or("");
  if (type == "ssh") where = where.substr(where.find('@') + 1);
  return type + "=" + where;
}

std::string group_key_of(const xspec::Spec& s) {
  std::string key;
  for (const auto& it : s.items) {
    if (it.key == "id") continue;
    key += it.key;
    if (it.value) key += "=" + *it.value;
    key += "//";
  }
  return key;
}

}  // namespace

struct Session::Impl {
  RunOptions opts;
  GatewayFactory factory;
  TerminalReporter reporter;
  EventQueue events;
  std::vector<std::unique_ptr<Slot>> slots;
  std::vector<GatewayInfo> infos;
  std::vector<CollectGroup> groups;
  std::vector<SyncTarget> sync_targets;
  std::vector<HostSetup> host_setups;
  std::shared_future<sync::LocalRoots> local_roots;
  std::vector<Unit> units;
  std::vector<UnitState> ustate;
  std::map<std::int64_t, InFlight> inflight;
  std::int64_t next_batch = 1;
  std::vector<std::string> run_errors;  // problems outside any test
  bool collecting = true;
  bool interrupted = false;
  std::string interrupt_reason;
  // --maxfail: failing outcomes so far; set when the last one allowed came
  // in (the main loop then stops the run); the reason the rest is not run.
  int failures = 0;
  bool stop_requested = false;
  std::string stop_reason;
  Clock::time_point t0 = Clock::now();
  std::chrono::system_clock::time_point started_sys = std::chrono::system_clock::now();
  bool debug = std::getenv("DTEST_DEBUG") != nullptr;
  // DTEST_DEBUG=1: a timestamped trace of the session's steps on stderr.
  template <typename... Args>
  void trace(fmt::format_string<Args...> f, Args&&... args) {
    if (!debug) return;
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    fmt::print(stderr, "dtest: debug: {:9.1f} ms  {}\n", ms, fmt::format(f, std::forward<Args>(args)...));
  }

  Impl(RunOptions o, GatewayFactory f, std::ostream& out)
      : opts(std::move(o)), factory(std::move(f)), reporter(out, opts.verbosity) {}

  void start_slots();
  void reader_main(int i);
  void handle(Event& e);
  void on_message(int i, const Message& m, std::size_t wire);
  void on_hello(int i, const Message& m);
  void slot_ready(int i);
  void start_sync(SyncTarget& t, int i);
  void setup_or_ready(int i);
  void send_exec(int i, std::int64_t id, const std::string& command);
  void on_exec_done(int i, const Message& m);
  void on_synced(Event& e);
  void stop_syncs();
  void record_run(int exit_code);
  std::string path_for(int slot, std::size_t binary) const;
  std::string map_path(int slot, const std::string& p) const;
  bool all_gtest() const {
    return std::all_of(opts.kinds.begin(), opts.kinds.end(), [](const std::string& k) { return k == "gtest"; });
  }
  const std::string& kind_of(std::size_t source) const {
    static const std::string gtest = "gtest";
    return source < opts.kinds.size() ? opts.kinds[source] : gtest;
  }
  nlohmann::json source_for(int slot, std::size_t source) const;
  nlohmann::json worker_env(int slot) const {
    return {{"DTEST_WORKER", slots[static_cast<std::size_t>(slot)]->info.id},
            {"DTEST_WORKER_COUNT", std::to_string(slots.size())},
            {"DTEST_TESTRUNUID", opts.testrunuid}};
  }
  void fill_run(nlohmann::json& run, int slot, std::size_t source) const;
  void on_collected(int i, const Message& m);
  void on_events(int i, const Message& m);
  void on_batch_done(int i, const Message& m);
  void slot_down(int i, const std::string& why);
  void ask_collect(CollectGroup& g);
  bool collection_settled() const;
  int start_run();
  void dispatch();
  void record(int unit, int test, TestResult r);
  void on_result(int unit, int test, TestResult r);
  void settle(int unit, int test, TestResult fallback);
  bool dispatch_retry(int slot);
  bool dispatch_heavy(int slot);
  std::int64_t send_batch(int slot, InFlight f, nlohmann::json names, std::optional<std::pair<int, int>> shard = {});
  void send_single(int slot, int test, std::vector<int> reserved);
  void requeue(int unit, int test, bool front);
  // Drops the tests at the front of `q` that got their outcome meanwhile.
  void drop_settled(int unit, std::deque<int>& q) const {
    const auto& results = units[static_cast<std::size_t>(unit)].results;
    while (!q.empty() && results[static_cast<std::size_t>(q.front())]) q.pop_front();
  }
  void release(const InFlight& f, std::int64_t id);
  const std::string& gtest_name(int unit, int test) const {
    const auto& us = ustate[static_cast<std::size_t>(unit)];
    if (!us.gtest_names.empty()) return us.gtest_names[static_cast<std::size_t>(test)];
    return units[static_cast<std::size_t>(unit)].tests[static_cast<std::size_t>(test)].name;
  }
  void settle_orphans();
  bool run_finished() const;
  void interrupt(const std::string& why);
  void stop_run();
  void shutdown();
  // The closing report, JUnit XML, the run repository, the report log's
  // last line; the run's exit code.
  int finish(int forced_code);
  int outcome_code(const Summary& sum) const;
  void send(int i, MsgKind k, nlohmann::json body);
  void warn(const std::string& text) {
    reporter.warning(text);
    if (opts.event_log) opts.event_log->warning(text);
  }
};

void Session::Impl::send(int i, MsgKind k, nlohmann::json body) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  try {
    s.gw->send(encode_message({k, std::move(body)}));
  } catch (const std::exception& e) {
    slot_down(i, std::string("send failed: ") + e.what());
  }
}

void Session::Impl::start_slots() {
  int n = 0;
  for (const auto& spec : opts.specs) {
    const auto id = spec.get("id");
    for (int k = 0; k < spec.count; ++k) {
      auto s = std::make_unique<Slot>();
      s->info.id = id ? (spec.count > 1 ? fmt::format("{}-{}", *id, k) : *id) : fmt::format("gw{}", n);
      s->info.spec = spec.original;
      s->spec = spec;
      s->group_key = group_key_of(spec);
      s->host = host_of(spec);
      s->started = Clock::now();
      slots.push_back(std::move(s));
      ++n;
    }
  }
  // Collection groups, in order of first appearance.
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const CollectGroup& g) { return g.key == slots[i]->group_key; });
    if (it == groups.end()) {
      CollectGroup g;
      g.key = slots[i]->group_key;
      groups.push_back(std::move(g));
      it = groups.end() - 1;
    }
    it->slots.push_back(static_cast<int>(i));
  }
  // Sync targets, and the one scan of the local roots they share (it runs
  // while the gateways come up).
  if (!opts.rsyncdirs.empty()) {
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const std::string key = sync_key_of(slots[i]->spec);
      if (key.empty()) continue;
      auto it = std::find_if(sync_targets.begin(), sync_targets.end(),
                             [&](const SyncTarget& t) { return t.key == key; });
      if (it == sync_targets.end()) {
        sync_targets.emplace_back();
        sync_targets.back().key = key;
        it = sync_targets.end() - 1;
      }
      it->slots.push_back(static_cast<int>(i));
      slots[i]->sync = static_cast<int>(it - sync_targets.begin());
    }
    if (!sync_targets.empty()) {
      auto dirs = opts.rsyncdirs;
      auto ignore = opts.rsyncignore;
      auto cache = opts.sync_cache_dir;
      auto watch = sync::watch_options_from_env(gateway::default_agent_path());
      local_roots = std::async(std::launch::async, [dirs, ignore, cache, watch] {
                      std::vector<std::shared_ptr<const sync::LocalRoot>> roots;
                      for (const auto& d : dirs)
                        roots.push_back(std::make_shared<const sync::LocalRoot>(
                            sync::scan_local_root(d, ignore, cache, watch)));
                      return roots;
                    }).share();
    }
  }
  // setup.host places: where the synced copy lives, or this machine.
  if (!opts.setup_host.empty())
    for (std::size_t i = 0; i < slots.size(); ++i) {
      std::string key = sync_key_of(slots[i]->spec);
      if (key.empty()) key = "local";
      auto it = std::find_if(host_setups.begin(), host_setups.end(), [&](const HostSetup& h) { return h.key == key; });
      if (it == host_setups.end()) {
        host_setups.emplace_back();
        host_setups.back().key = key;
        it = host_setups.end() - 1;
      }
      it->slots.push_back(static_cast<int>(i));
      slots[i]->place = static_cast<int>(it - host_setups.begin());
    }
  for (std::size_t i = 0; i < slots.size(); ++i)
    slots[i]->reader = std::thread([this, i] { reader_main(static_cast<int>(i)); });
}

std::string Session::Impl::path_for(int slot, std::size_t binary) const {
  return map_path(slot, opts.binary_paths[binary]);
}

// What a non-GoogleTest source looks like to one gateway's agent: its
// folders inside a synced root point at the agent's copy.
nlohmann::json Session::Impl::source_for(int slot, std::size_t source) const {
  nlohmann::json d = opts.descriptors[source];
  d["kind"] = kind_of(source);
  for (const char* key : {"cwd", "build_dir"})
    if (auto it = d.find(key); it != d.end() && it->is_string()) *it = map_path(slot, it->get<std::string>());
  // A CTest tree names its programs and folders by absolute local paths:
  // the agent rewrites those inside a synced root to its copy.
  if (kind_of(source) == "ctest" && slots[static_cast<std::size_t>(slot)]->sync >= 0) {
    nlohmann::json rw = nlohmann::json::array();
    for (const auto& root : opts.rsyncdirs) rw.push_back({root, map_path(slot, root)});
    d["rewrite"] = std::move(rw);
  }
  return d;
}

// The kind-specific part of a run message.
void Session::Impl::fill_run(nlohmann::json& run, int slot, std::size_t source) const {
  run["kind"] = kind_of(source);
  if (kind_of(source) == "gtest") {
    run["binary"] = path_for(slot, source);
  } else {
    run["binary"] = opts.binaries[source];
    run["source"] = source_for(slot, source);
  }
  const double t = source < opts.source_timeouts.size() && opts.source_timeouts[source] >= 0
                       ? opts.source_timeouts[source]
                       : opts.timeout;
  if (t > 0) run["timeout"] = t;
}

std::string Session::Impl::map_path(int slot, const std::string& p) const {
  if (slots[static_cast<std::size_t>(slot)]->sync < 0) return p;
  // A binary inside a synced root runs from the agent's copy of that root.
  for (const auto& root : opts.rsyncdirs) {
    const auto slash = root.find_last_of('/');
    const std::string name = slash == std::string::npos ? root : root.substr(slash + 1);
    if (p.size() > root.size() + 1 && p.compare(0, root.size(), root) == 0 && p[root.size()] == '/')
      return name + "/" + p.substr(root.size() + 1);
    if (p == root) return name;
    // The folder holding a root is the work dir that holds its copy.
    if (slash != std::string::npos && p == (slash == 0 ? std::string("/") : root.substr(0, slash))) return ".";
  }
  return p;
}

void Session::Impl::start_sync(SyncTarget& t, int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  t.runner = i;
  t.inbox = std::make_shared<SyncInbox>();
  if (t.thread.joinable()) t.thread.join();
  trace("{} syncs {} root(s) to {}", s.info.id, opts.rsyncdirs.size(), t.key);
  gateway::Gateway* gw = s.gw.get();
  t.thread = std::thread([this, i, gw, inbox = t.inbox] {
    Event done(i, Event::Kind::synced);
    try {
      sync::SyncLink link;
      link.send = [gw](const Message& m) {
        Frame f = encode_message(m);
        const std::size_t n = f.payload.size() + kFrameHeaderSize;
        gw->send(f);
        return n;
      };
      link.receive = [inbox](std::size_t& wire) { return inbox->pop(wire); };
      done.stats = std::make_shared<sync::SyncStats>(sync::sync_roots(link, opts.rsyncdirs, local_roots, opts.rsyncignore));
    } catch (const std::exception& e) {
      done.error = e.what();
      if (done.error.empty()) done.error = "sync failed";
    }
    events.push(std::move(done));
  });
}

void Session::Impl::on_synced(Event& e) {
  auto& s = *slots[static_cast<std::size_t>(e.slot)];
  if (s.sync < 0) return;
  auto& t = sync_targets[static_cast<std::size_t>(s.sync)];
  if (t.runner != e.slot) return;
  if (t.thread.joinable()) t.thread.join();
  t.runner = -1;
  t.inbox.reset();
  if (e.error.empty() && e.stats) {
    t.done = true;
    const auto& st = *e.stats;
    trace("{} synced: {} whole, {} delta, {} deleted, {} B out, {} B in", s.info.id, st.whole_files,
          st.delta_files, st.deleted, st.bytes_out, st.bytes_in);
    reporter.detail(fmt::format("[{}] rsync: {} entries, {} file(s) sent ({} as deltas), {} deleted; {} bytes on the wire",
                                s.info.id, st.files, st.whole_files + st.delta_files, st.delta_files, st.deleted,
                                st.bytes_out + st.bytes_in));
    for (const auto& w : st.warnings) warn(fmt::format("[{}] rsync: {}", s.info.id, w));
    for (int j : t.slots)
      if (slots[static_cast<std::size_t>(j)]->state == SlotState::syncing) setup_or_ready(j);
    return;
  }
  if (s.state == SlotState::dead) {
    // The link went while syncing: another gateway to the same place takes over.
    for (int j : t.slots)
      if (slots[static_cast<std::size_t>(j)]->state == SlotState::syncing) return start_sync(t, j);
    return;
  }
  t.failed = true;
  for (int j : t.slots)
    if (slots[static_cast<std::size_t>(j)]->state == SlotState::syncing)
      slot_down(j, "rsync failed: " + e.error);
}

void Session::Impl::stop_syncs() {
  for (auto& t : sync_targets) {
    if (!t.thread.joinable()) continue;
    if (t.inbox) t.inbox->close("interrupted");
    {
      auto& s = *slots[static_cast<std::size_t>(t.runner)];
      std::lock_guard lock(s.gw_mu);
      if (s.gw) s.gw->terminate();
    }
    t.thread.join();
  }
}

void Session::Impl::reader_main(int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  gateway::Gateway* gw = nullptr;
  try {
    auto g = factory(s.spec, s.info.id);
    {
      std::lock_guard lock(s.gw_mu);
      if (s.abandoned) {  // given up on (hello timeout) while it was opening
        g->terminate();
        return;
      }
      s.gw = std::move(g);
      gw = s.gw.get();
    }
    events.push(Event(i, Event::Kind::opened));
    while (auto f = gw->receive()) {
      Message m;
      try {
        m = decode_message(*f);
      } catch (const ProtocolError& e) {
        throw ProtocolError(std::string("bad message from the agent: ") + e.what());
      }
      events.push(Event(i, std::move(m), f->payload.size() + kFrameHeaderSize));
    }
    events.push(Event(i, Event::Kind::closed, "the agent closed the connection"));
  } catch (const ProtocolError& e) {
    std::string why = e.what();
    if (why.rfind("bad message", 0) != 0)
      why = "garbage from the agent (its stdout must carry only frames): " + why;
    if (gw) {
      gw->terminate();
      const std::string diag = gw->diagnostics();
      if (!diag.empty()) why += "\nagent stderr:\n" + diag;
    }
    events.push(Event(i, Event::Kind::failed, why));
  } catch (const std::exception& e) {
    events.push(Event(i, Event::Kind::failed, e.what()));
  }
}

void Session::Impl::slot_down(int i, const std::string& why) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  if (s.state == SlotState::dead) return;
  const bool was_up = s.state == SlotState::ready;
  s.state = SlotState::dead;
  s.info.error = why;
  if (s.sync >= 0) {
    auto& t = sync_targets[static_cast<std::size_t>(s.sync)];
    if (t.runner == i && t.inbox) t.inbox->close("the gateway was lost during the sync: " + why);
  }
  {
    std::lock_guard lock(s.gw_mu);
    s.abandoned = true;
    if (s.gw) {
      s.gw->terminate();
      const std::string diag = s.gw->diagnostics();
      if (!diag.empty() && why.find("agent stderr:") == std::string::npos)
        s.info.error += "\nagent stderr:\n" + diag;
    }
  }
  std::size_t requeued = 0;
  if (s.batch) {
    auto it = inflight.find(s.batch);
    if (it != inflight.end()) {
      auto& us = ustate[static_cast<std::size_t>(it->second.unit)];
      const std::size_t before = us.sched->remaining();
      us.sched->worker_lost(i);
      requeued = us.sched->remaining() - before;
      const auto& f = it->second;
      if (f.retry) {
        // Its tests without a new result wait for a retry elsewhere (a
        // serial or heavy one in its own queue, at the front).
        for (std::size_t k = 0; k < f.tests.size(); ++k)
          if (!f.got[k] && !units[static_cast<std::size_t>(f.unit)].results[static_cast<std::size_t>(f.tests[k])]) {
            if (f.single) requeue(f.unit, f.tests[k], true);
            else us.retry_queue.push_back(f.tests[k]);
            ++requeued;
          }
      }
      release(f, s.batch);
      inflight.erase(it);
    }
    s.batch = 0;
  }
  if (was_up && !collecting) {
    s.info.lost = true;
    reporter.gateway_lost(s.info, requeued);
  } else {
    reporter.gateway_failed(s.info);
  }
  if (opts.event_log) opts.event_log->gateway_down(s.info, s.info.lost, requeued);
  // A place's setup.host moves to another of its gateways.
  if (s.place >= 0) {
    auto& h = host_setups[static_cast<std::size_t>(s.place)];
    if (h.runner == i) {
      h.runner = -1;
      for (int j : h.slots)
        if (slots[static_cast<std::size_t>(j)]->state == SlotState::setting_up) {
          h.runner = j;
          send_exec(j, kExecHost, opts.setup_host);
          break;
        }
    }
  }
  // A collecting gateway that dies hands the job to another of its group.
  for (auto& g : groups)
    if (g.asked == i && !g.done) {
      g.asked = -1;
      ask_collect(g);
    }
}

void Session::Impl::handle(Event& e) {
  auto& s = *slots[static_cast<std::size_t>(e.slot)];
  switch (e.kind) {
    case Event::Kind::opened:
      if (s.state == SlotState::opening) s.state = SlotState::awaiting_hello;
      return;
    case Event::Kind::message:
      if (s.state == SlotState::dead) return;
      try {
        on_message(e.slot, e.msg, e.wire);
      } catch (const ProtocolError& err) {
        slot_down(e.slot, std::string("protocol error: ") + err.what());
      } catch (const nlohmann::json::exception& err) {
        // A field of the wrong type read with value(): as bad as a missing one.
        slot_down(e.slot, fmt::format("protocol error: {} message: a field has the wrong type ({})",
                                      to_string(e.msg.kind), err.what()));
      }
      return;
    case Event::Kind::closed:
    case Event::Kind::failed:
      slot_down(e.slot, e.error);
      return;
    case Event::Kind::synced:
      on_synced(e);
      return;
  }
}

void Session::Impl::on_message(int i, const Message& m, std::size_t wire) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  if (s.state == SlotState::awaiting_hello && m.kind != MsgKind::hello)
    throw ProtocolError("expected a hello first, got " + std::string(to_string(m.kind)));
  switch (m.kind) {
    case MsgKind::sync_state:
    case MsgKind::sync_sigs:
    case MsgKind::sync_done:
      if (s.state != SlotState::syncing || s.sync < 0 ||
          sync_targets[static_cast<std::size_t>(s.sync)].runner != i)
        throw ProtocolError("unexpected " + std::string(to_string(m.kind)) + " message from the agent");
      sync_targets[static_cast<std::size_t>(s.sync)].inbox->push(m, wire);
      return;
    case MsgKind::hello: return on_hello(i, m);
    case MsgKind::exec_done: return on_exec_done(i, m);
    case MsgKind::collected: return on_collected(i, m);
    case MsgKind::events: return on_events(i, m);
    case MsgKind::batch_done: return on_batch_done(i, m);
    case MsgKind::log:
      warn(fmt::format("[{}] agent: {}", s.info.id, m.body.value("message", "")));
      return;
    default:
      throw ProtocolError("unexpected " + std::string(to_string(m.kind)) + " message from the agent");
  }
}

void Session::Impl::on_hello(int i, const Message& m) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  if (s.state != SlotState::awaiting_hello) throw ProtocolError("a second hello");
  const auto proto = get_int(m, "proto");
  if (proto != kProtocolVersion)
    throw ProtocolError(fmt::format("agent speaks protocol {}, this dtest speaks {} (agent version {})", proto,
                                    kProtocolVersion, m.body.value("agent_version", "?")));
  s.info.hello = m.body;
  s.info.up = true;
  trace("{} hello", s.info.id);
  reporter.gateway_up(s.info);
  if (opts.event_log) opts.event_log->gateway_up(s.info);
  if (s.sync >= 0 && !sync_targets[static_cast<std::size_t>(s.sync)].done) {
    auto& t = sync_targets[static_cast<std::size_t>(s.sync)];
    s.state = SlotState::syncing;
    if (t.runner < 0) start_sync(t, i);
    return;
  }
  setup_or_ready(i);
}

// The set-up hooks a slot still needs, then ready.
void Session::Impl::setup_or_ready(int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  if (s.place >= 0) {
    auto& h = host_setups[static_cast<std::size_t>(s.place)];
    if (h.failed) return slot_down(i, h.error);
    if (!h.done) {
      s.state = SlotState::setting_up;
      if (h.runner < 0) {
        h.runner = i;
        send_exec(i, kExecHost, opts.setup_host);
      }
      return;
    }
  }
  if (!opts.setup_worker.empty() && !s.worker_setup_done) {
    s.state = SlotState::setting_up;
    send_exec(i, kExecWorker, opts.setup_worker);
    return;
  }
  s.state = SlotState::ready;
  slot_ready(i);
}

void Session::Impl::send_exec(int i, std::int64_t id, const std::string& command) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  // In the rootdir, or its synced copy; a remote without one: its work dir.
  std::string cwd = map_path(i, opts.rootdir);
  if (s.sync >= 0 && cwd == opts.rootdir) cwd.clear();
  trace("{} runs setup.{} in '{}': {}", s.info.id, id == kExecHost ? "host" : "worker", cwd, command);
  nlohmann::json env = {{"DTEST_WORKER_COUNT", std::to_string(slots.size())}, {"DTEST_TESTRUNUID", opts.testrunuid}};
  if (id == kExecWorker) env["DTEST_WORKER"] = s.info.id;
  send(i, MsgKind::exec, {{"id", id}, {"command", command}, {"cwd", cwd}, {"env", std::move(env)}});
}

void Session::Impl::on_exec_done(int i, const Message& m) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  const std::int64_t id = get_int(m, "id");
  if (s.state != SlotState::setting_up || (id != kExecHost && id != kExecWorker))
    throw ProtocolError(fmt::format("an unrequested exec_done {}", id));
  const std::string status = m.body.value("status", std::string("?"));
  const bool ok = m.body.value("exit_code", -1) == 0;
  std::string output = m.body.value("output", std::string());
  while (!output.empty() && output.back() == '\n') output.pop_back();
  const char* which = id == kExecHost ? "setup.host" : "setup.worker";
  const std::string seconds = fmt::format("{:.2f}", m.body.value("seconds", 0.0));
  if (ok) reporter.detail(fmt::format("[{}] {} passed in {} s{}{}", s.info.id, which, seconds, output.empty() ? "" : ":\n", output));
  if (id == kExecHost) {
    if (s.place < 0) throw ProtocolError("an unrequested exec_done 1");
    auto& h = host_setups[static_cast<std::size_t>(s.place)];
    if (h.runner != i) throw ProtocolError("an unrequested exec_done 1");
    h.runner = -1;
    if (ok) {
      h.done = true;
    } else {
      h.failed = true;
      h.error = fmt::format("setup.host failed ({}) on {}: `{}`{}{}", status, h.key, opts.setup_host,
                            output.empty() ? "" : "\n", output);
    }
    for (int j : h.slots)
      if (slots[static_cast<std::size_t>(j)]->state == SlotState::setting_up) setup_or_ready(j);
    return;
  }
  if (!ok)
    return slot_down(i, fmt::format("setup.worker failed ({}): `{}`{}{}", status, opts.setup_worker,
                                    output.empty() ? "" : "\n", output));
  s.worker_setup_done = true;
  setup_or_ready(i);
}

void Session::Impl::slot_ready(int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  bool collects = false;
  for (auto& g : groups) {
    if (!g.done && g.asked < 0 && std::find(g.slots.begin(), g.slots.end(), i) != g.slots.end()) ask_collect(g);
    collects |= g.asked == i && !g.done;
  }
  // pytest workers take a whole collection to start: the others start theirs
  // while one gateway collects, not after.
  if (!collects && collecting) {
    const auto& caps = s.info.hello.value("caps", nlohmann::json::array());
    if (caps.is_array() && std::find(caps.begin(), caps.end(), "warm") != caps.end()) {
      nlohmann::json sources = nlohmann::json::array();
      for (std::size_t b = 0; b < opts.binaries.size(); ++b)
        if (kind_of(b) == "pytest") sources.push_back(source_for(i, b));
      if (!sources.empty()) send(i, MsgKind::warm, {{"sources", std::move(sources)}, {"env", worker_env(i)}});
    }
  }
  if (!collecting) {
    // A late gateway joins the run under load.
    if (opts.dist != "each" && opts.dist != "no" && !units.empty()) {
      s.unit = 0;
      ustate[0].workers.push_back(i);
    }
  }
}

void Session::Impl::ask_collect(CollectGroup& g) {
  for (int i : g.slots) {
    if (slots[static_cast<std::size_t>(i)]->state != SlotState::ready) continue;
    g.asked = i;
    if (all_gtest()) {
      nlohmann::json bins = nlohmann::json::array();
      for (std::size_t b = 0; b < opts.binary_paths.size(); ++b) bins.push_back(path_for(i, b));
      trace("{} collects {}", slots[static_cast<std::size_t>(i)]->info.id, bins.dump());
      send(i, MsgKind::collect, {{"id", 1}, {"suite", {{"kind", "gtest"}, {"binaries", bins}}}});
      return;
    }
    nlohmann::json sources = nlohmann::json::array();
    for (std::size_t b = 0; b < opts.binaries.size(); ++b)
      sources.push_back(kind_of(b) == "gtest" ? nlohmann::json{{"kind", "gtest"}, {"path", path_for(i, b)}}
                                              : source_for(i, b));
    trace("{} collects {}", slots[static_cast<std::size_t>(i)]->info.id, sources.dump());
    send(i, MsgKind::collect, {{"id", 1}, {"sources", std::move(sources)}, {"env", worker_env(i)}});
    return;
  }
  // Nobody of the group is up (yet): if all are dead the group failed.
  bool any_alive = false;
  for (int i : g.slots) any_alive |= slots[static_cast<std::size_t>(i)]->state != SlotState::dead;
  if (!any_alive) g.failed = true;
}

void Session::Impl::on_collected(int i, const Message& m) {
  auto it = std::find_if(groups.begin(), groups.end(), [&](const CollectGroup& g) { return g.asked == i; });
  if (it == groups.end() || it->done) throw ProtocolError("an unrequested collected message");
  trace("{} collected message decoded", slots[static_cast<std::size_t>(i)]->info.id);
  const auto& bins = field(m, "binaries");
  if (!bins.is_array() || bins.size() != opts.binaries.size())
    throw ProtocolError("collected message: expected one entry per binary");
  std::vector<TestCase> tests;
  std::vector<std::string> errors;
  std::vector<std::optional<std::pair<double, double>>> costs(bins.size());
  for (std::size_t b = 0; b < bins.size(); ++b) {
    const auto& entry = bins[b];
    if (!entry.is_object()) throw ProtocolError("collected message: an entry is not a map");
    if (auto c = entry.find("cost"); c != entry.end()) {
      if (!c->is_object() || !(*c)["startup"].is_number() || !(*c)["per_test"].is_number())
        throw ProtocolError("collected message: 'cost' is not {startup, per_test}");
      costs[b] = std::make_pair((*c)["startup"].get<double>(), (*c)["per_test"].get<double>());
    }
    if (auto e = entry.find("error"); e != entry.end()) {
      errors.push_back(e->is_string() ? e->get<std::string>() : "unknown error");
      continue;
    }
    if (auto w = entry.find("warnings"); w != entry.end() && w->is_array())
      for (const auto& x : *w)
        if (x.is_string()) warn(x.get<std::string>());
    // Errors beside a listing (pytest: a file that failed to import).
    if (auto e = entry.find("errors"); e != entry.end()) {
      if (!e->is_array()) throw ProtocolError("collected message: 'errors' is not a list");
      for (const auto& x : *e) errors.push_back(x.is_string() ? x.get<std::string>() : "unknown error");
    }
    const auto names = entry.find("names");
    const auto count = entry.find("count");
    if (names == entry.end() || !names->is_string() || count == entry.end() || !count->is_number_unsigned())
      throw ProtocolError("collected message: 'names' or 'count' missing");
    const std::size_t first = tests.size();
    const std::string& all = names->get_ref<const std::string&>();
    const std::size_t n = count->get<std::size_t>();
    for (std::size_t pos = 0; n > 0 && pos <= all.size();) {
      const std::size_t nl = std::min(all.find('\n', pos), all.size());
      TestCase tc;
      tc.binary = opts.binaries[b];
      tc.binary_index = static_cast<int>(b);
      tc.kind = kind_of(b);
      tc.name = all.substr(pos, nl - pos);
      if (tc.name.empty()) throw ProtocolError("collected message: an empty test name");
      tests.push_back(std::move(tc));
      pos = nl + 1;
    }
    if (tests.size() - first != n)
      throw ProtocolError(fmt::format("collected message: {} names for a count of {}", tests.size() - first, n));
    auto mark = [&](const char* key, auto&& apply) {
      auto list = entry.find(key);
      if (list == entry.end()) return;
      if (!list->is_array()) throw ProtocolError(fmt::format("collected message: '{}' is not a list", key));
      for (const auto& v : *list) apply(v);
    };
    auto index = [&](const nlohmann::json& v, const char* key) -> TestCase& {
      if (!v.is_number_unsigned() || v.get<std::size_t>() >= n)
        throw ProtocolError(fmt::format("collected message: bad index in '{}'", key));
      return tests[first + v.get<std::size_t>()];
    };
    mark("disabled", [&](const nlohmann::json& v) { index(v, "disabled").disabled = true; });
    mark("serial", [&](const nlohmann::json& v) { index(v, "serial").serial = true; });
    mark("weights", [&](const nlohmann::json& v) {
      if (!v.is_array() || v.size() != 2 || !v[1].is_number_unsigned() || v[1].get<std::uint64_t>() < 1 ||
          v[1].get<std::uint64_t>() > (1u << 20))
        throw ProtocolError("collected message: 'weights' holds something other than [index, weight 1..2^20]");
      index(v[0], "weights").weight = v[1].get<int>();
    });
    mark("groups", [&](const nlohmann::json& v) {
      if (!v.is_array() || v.size() != 2 || !v[1].is_string())
        throw ProtocolError("collected message: 'groups' holds something other than [index, name]");
      index(v[0], "groups").group = v[1].get<std::string>();
    });
    for (const char* key : {"type_params", "value_params"})
      mark(key, [&](const nlohmann::json& v) {
        if (!v.is_array() || v.size() != 2 || !v[1].is_string())
          throw ProtocolError(fmt::format("collected message: '{}' holds something other than [index, text]", key));
        auto& tc = index(v[0], key);
        (key[0] == 't' ? tc.type_param : tc.value_param) = v[1].get<std::string>();
      });
  }
  trace("{} collected {} tests; costs known for {} of {} binaries", slots[static_cast<std::size_t>(i)]->info.id,
        tests.size(), std::count_if(costs.begin(), costs.end(), [](const auto& c) { return c.has_value(); }),
        costs.size());
  it->costs = std::move(costs);
  it->tests = std::move(tests);
  it->errors = std::move(errors);
  it->done = true;
}

bool Session::Impl::collection_settled() const {
  for (const auto& g : groups)
    if (!g.done && !g.failed) return false;
  return true;
}

void Session::Impl::record(int unit, int test, TestResult r) {
  auto& u = units[static_cast<std::size_t>(unit)];
  auto& slot = u.results[static_cast<std::size_t>(test)];
  if (slot) return;  // already has its one outcome
  slot = std::move(r);
  reporter.result(u, u.tests[static_cast<std::size_t>(test)], *slot);
  if (opts.event_log) opts.event_log->test(u, u.tests[static_cast<std::size_t>(test)], *slot);
  const Outcome o = slot->outcome;
  if (opts.maxfail > 0 && (o == Outcome::failed || o == Outcome::crashed || o == Outcome::timeout) &&
      ++failures >= opts.maxfail)
    stop_requested = true;
}

// A result from an agent. Under --retries a failure with retries left is
// held back (the test waits for a retry batch); a pass after a failure is
// flaky. Everything else is the test's one outcome.
void Session::Impl::on_result(int unit, int test, TestResult r) {
  auto& us = ustate[static_cast<std::size_t>(unit)];
  const auto t = static_cast<std::size_t>(test);
  if (units[static_cast<std::size_t>(unit)].results[t]) return;
  const bool failing = r.outcome == Outcome::failed || r.outcome == Outcome::crashed || r.outcome == Outcome::timeout;
  int& used = us.retries_used[t];
  if (failing && used < opts.retries && !stop_requested && !interrupted) {
    ++used;
    reporter.detail(fmt::format("{}RETRY {} ({}; retry {} of {})", r.worker.empty() ? "" : "[" + r.worker + "] ",
                                units[static_cast<std::size_t>(unit)].tests[t].id(), to_string(r.outcome), used,
                                opts.retries));
    us.last_failure[t] = std::move(r);
    requeue(unit, test, false);
    return;
  }
  if (used > 0 && r.outcome == Outcome::passed && us.last_failure[t]) {
    const TestResult& before = *us.last_failure[t];
    r.outcome = Outcome::flaky;
    r.message = fmt::format("passed on retry {} of {}", used, opts.retries);
    // The failure is what is worth reading: its output, after the pass's.
    std::string note = fmt::format("--- attempt {} ({}{}{}) ---\n", used, to_string(before.outcome),
                                   before.message.empty() ? "" : ": ", before.message);
    r.output = note + before.output + (r.output.empty() ? "" : "--- passing run ---\n" + r.output);
  }
  us.last_failure[t].reset();
  record(unit, test, std::move(r));
}

// The test gets no further run: its latest failure if it had one (it was
// waiting for a retry), else `fallback`.
void Session::Impl::settle(int unit, int test, TestResult fallback) {
  auto& lf = ustate[static_cast<std::size_t>(unit)].last_failure[static_cast<std::size_t>(test)];
  if (lf) {
    TestResult r = std::move(*lf);
    lf.reset();
    record(unit, test, std::move(r));
  } else {
    record(unit, test, std::move(fallback));
  }
}

// Sends the slot a batch of tests awaiting a retry, if its unit has any:
// those of the binary of the first in line, one per GoogleTest name (--count
// repeats share names; the agent maps results by name).
bool Session::Impl::dispatch_retry(int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  auto& us = ustate[static_cast<std::size_t>(s.unit)];
  auto& u = units[static_cast<std::size_t>(s.unit)];
  if (us.retry_queue.empty() || stop_requested) return false;
  const int binary = us.binary_of[static_cast<std::size_t>(us.retry_queue.front())];
  InFlight f;
  f.unit = s.unit;
  f.slot = i;
  f.retry = true;
  std::set<std::string> names_seen;
  nlohmann::json names = nlohmann::json::array();
  std::deque<int> rest;
  for (int t : us.retry_queue) {
    const std::string& name = gtest_name(s.unit, t);
    if (u.results[static_cast<std::size_t>(t)]) continue;  // settled meanwhile
    if (us.binary_of[static_cast<std::size_t>(t)] != binary || !names_seen.insert(name).second) {
      rest.push_back(t);
      continue;
    }
    f.tests.push_back(t);
    names.push_back(name);
  }
  us.retry_queue = std::move(rest);
  if (f.tests.empty()) return false;
  send_batch(i, std::move(f), std::move(names));
  return true;
}

// Sends the slot the batch `f` (its tests named `names`): the batch's id.
// The batch is in flight before it is sent, so a failed send (which takes
// the slot down) requeues it like any batch of a lost gateway.
std::int64_t Session::Impl::send_batch(int i, InFlight f, nlohmann::json names,
                                       std::optional<std::pair<int, int>> shard) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  const auto& us = ustate[static_cast<std::size_t>(f.unit)];
  const auto binary = static_cast<std::size_t>(us.binary_of[static_cast<std::size_t>(f.tests.front())]);
  const std::int64_t id = next_batch++;
  trace("{} <- {}batch {} of {} test(s){}{} ({} left in the queue)", s.info.id,
        f.single ? "single " : f.retry ? "retry " : "", id, f.tests.size(),
        shard ? fmt::format(", shard {}/{}", shard->first, shard->second) : "",
        f.reserved.empty() ? "" : fmt::format(", holding {} more worker(s)", f.reserved.size()),
        us.sched->remaining());
  f.got.assign(f.tests.size(), 0);
  for (int r : f.reserved) slots[static_cast<std::size_t>(r)]->reserved_for = id;
  inflight.emplace(id, std::move(f));
  s.batch = id;
  nlohmann::json run = {{"batch", id}, {"tests", std::move(names)}, {"env", worker_env(i)}};
  fill_run(run, i, binary);
  if (shard) run["shard"] = {shard->first, shard->second};
  send(i, MsgKind::run, std::move(run));
  return id;
}

// A serial or heavy test alone in a batch (a retry batch: it is outside the
// scheduler).
void Session::Impl::send_single(int i, int test, std::vector<int> reserved) {
  InFlight f;
  f.unit = slots[static_cast<std::size_t>(i)]->unit;
  f.slot = i;
  f.retry = true;
  f.single = true;
  f.tests = {test};
  f.reserved = std::move(reserved);
  nlohmann::json names = nlohmann::json::array({gtest_name(f.unit, test)});
  send_batch(i, std::move(f), std::move(names));
}

// A serial or heavy test that was not reached (or awaits a retry) waits in
// its own queue again; any other test waits for a retry batch.
void Session::Impl::requeue(int unit, int test, bool front) {
  auto& us = ustate[static_cast<std::size_t>(unit)];
  const auto& tc = units[static_cast<std::size_t>(unit)].tests[static_cast<std::size_t>(test)];
  auto& q = tc.serial ? us.serial_queue : tc.weight > 1 ? us.heavy_queue : us.retry_queue;
  if (front) q.push_front(test);
  else q.push_back(test);
}

// The slots a heavy test's batch held idle are free again.
void Session::Impl::release(const InFlight& f, std::int64_t id) {
  for (int r : f.reserved)
    if (slots[static_cast<std::size_t>(r)]->reserved_for == id) slots[static_cast<std::size_t>(r)]->reserved_for = 0;
}

// A heavy test (weight k) takes min(k, live workers of the unit on this
// slot's host) workers of that host: it goes out on this slot once enough
// of them are idle, and holds the others idle until it ends, as ctest -j
// counts PROCESSORS against its job slots. Until then this slot waits for
// it (true) rather than taking other work, so heavy tests are not starved
// by a stream of light ones; they go first, being the long ones as a rule.
bool Session::Impl::dispatch_heavy(int i) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  auto& us = ustate[static_cast<std::size_t>(s.unit)];
  const auto& u = units[static_cast<std::size_t>(s.unit)];
  drop_settled(s.unit, us.heavy_queue);
  if (us.heavy_queue.empty() || stop_requested) return false;
  const int test = us.heavy_queue.front();
  std::vector<int> idle;
  int live = 0;
  for (int w : us.workers) {
    const auto& o = *slots[static_cast<std::size_t>(w)];
    if (o.state == SlotState::dead || o.unit != s.unit || o.host != s.host) continue;
    ++live;
    if (w != i && o.state == SlotState::ready && !o.batch && !o.reserved_for) idle.push_back(w);
  }
  const int need = std::min(u.tests[static_cast<std::size_t>(test)].weight, live);
  if (static_cast<int>(idle.size()) + 1 < need) return true;
  idle.resize(static_cast<std::size_t>(need - 1));
  us.heavy_queue.pop_front();
  send_single(i, test, std::move(idle));
  return true;
}

// Returns an exit code if the run cannot start, else -1.
int Session::Impl::start_run() {
  collecting = false;
  std::vector<std::string> errors;
  CollectGroup* first = nullptr;
  for (auto& g : groups) {
    if (!g.done) continue;
    for (const auto& e : g.errors)
      if (std::find(errors.begin(), errors.end(), e) == errors.end()) errors.push_back(e);
    if (!first) first = &g;
  }
  if (!first) {
    warn("no gateway came up; nothing was run");
    return kExitInternalError;
  }
  if (!errors.empty()) {
    reporter.collection_errors(errors);
    if (!opts.continue_on_collection_errors) {
      interrupted = true;
      interrupt_reason = fmt::format("{} error{} during collection", errors.size(), errors.size() == 1 ? "" : "s");
      return kExitInterrupted;
    }
    // As pytest --continue-on-collection-errors: the rest runs, and the
    // errors still fail the run.
    for (const auto& e : errors) run_errors.push_back("collection error: " + e.substr(0, e.find('\n')));
  }
  if (opts.dist != "each") {
    // Every platform must have collected the same tests (pytest-xdist's
    // "Different tests were collected between gw0 and gw1").
    for (const auto& g : groups) {
      if (!g.done || &g == first) continue;
      std::size_t k = 0;
      while (k < g.tests.size() && k < first->tests.size() && g.tests[k].id() == first->tests[k].id()) ++k;
      if (k == g.tests.size() && k == first->tests.size()) continue;
      std::string msg = fmt::format("Different tests were collected between {} and {}:",
                                    slots[static_cast<std::size_t>(first->slots[0])]->info.id,
                                    slots[static_cast<std::size_t>(g.slots[0])]->info.id);
      msg += fmt::format("\n  first difference at #{}: {} vs {}", k,
                         k < first->tests.size() ? first->tests[k].id() : "(end)",
                         k < g.tests.size() ? g.tests[k].id() : "(end)");
      reporter.collection_errors({msg});
      interrupted = true;
      interrupt_reason = "collections differ";
      return kExitInterrupted;
    }
  }

  bool deselected = false;
  if (opts.last_failed) {
    // --lf: keep the tests that failed last time, if any of them is still
    // there (pytest's default when none is: run everything).
    const std::set<std::string> want(opts.failed_ids.begin(), opts.failed_ids.end());
    std::size_t keep = 0;
    for (const auto& t : first->tests) keep += want.count(t.id());
    if (keep == 0) {
      reporter.note("--lf: no previously failed tests in this collection; running all");
    } else {
      const std::size_t before = first->tests.size();
      for (auto& g : groups) {
        if (!g.done) continue;
        std::erase_if(g.tests, [&](const TestCase& t) { return !want.count(t.id()); });
      }
      deselected = true;
      reporter.note(fmt::format("--lf: running the {} test(s) that failed last time ({} deselected)", keep,
                                before - keep));
    }
  }
  const std::set<std::string> failed_last(opts.failed_ids.begin(), opts.failed_ids.end());
  const std::size_t collected = first->tests.size();
  // `steal`: the collection is used by this unit only (load): move it.
  auto make_unit = [&](const std::string& name, CollectGroup& g, std::vector<int> workers, bool steal) {
    Unit u;
    u.name = name;
    u.tests = steal ? std::move(g.tests) : g.tests;
    UnitState us;
    // --count N: N copies of every test, repetition by repetition; copy k
    // of a binary's tests is scheduler group binary + k * binaries, so two
    // repetitions of one test never share a batch (a batch is one group).
    const int count = std::max(1, opts.count);
    const int nbin = static_cast<int>(opts.binaries.size());
    std::vector<int> group_of;
    if (count > 1) {
      std::vector<TestCase> copies;
      copies.reserve(u.tests.size() * static_cast<std::size_t>(count));
      for (int k = 0; k < count; ++k)
        for (const auto& tc : u.tests) {
          copies.push_back(tc);
          us.gtest_names.push_back(tc.name);
          copies.back().name += fmt::format("[{}/{}]", k + 1, count);
          group_of.push_back(tc.binary_index + k * nbin);
        }
      u.tests = std::move(copies);
    }
    const auto& tests = u.tests;
    u.results.resize(tests.size());
    us.paths = opts.binary_paths;
    std::vector<int> order;
    us.binary_of.reserve(tests.size());
    us.retries_used.assign(tests.size(), 0);
    us.last_failure.resize(tests.size());
    order.reserve(tests.size());
    for (std::size_t t = 0; t < tests.size(); ++t) {
      us.binary_of.push_back(tests[t].binary_index);
      if (tests[t].disabled) continue;
      if (tests[t].serial) us.serial_queue.push_back(static_cast<int>(t));
      else if (tests[t].weight > 1) us.heavy_queue.push_back(static_cast<int>(t));
      else order.push_back(static_cast<int>(t));
    }
    if (count == 1) group_of = us.binary_of;
    us.sched = std::make_unique<Scheduler>(group_of, order, static_cast<int>(workers.size()));
    for (std::size_t b = 0; b < g.costs.size(); ++b)
      if (g.costs[b])
        for (int k = 0; k < count; ++k)
          us.sched->seed(static_cast<int>(b) + k * nbin, g.costs[b]->first, g.costs[b]->second);
    // History: last failures first, then unknown, then longest estimate first.
    if (!opts.estimates.empty() || !failed_last.empty()) {
      std::vector<double> est(tests.size(), -1);
      std::vector<bool> failed(tests.size(), false);
      for (std::size_t t = 0; t < tests.size(); ++t) {
        const std::string id = count > 1 ? make_id(tests[t].binary, us.gtest_names[t]) : tests[t].id();
        if (auto it = opts.estimates.find(id); it != opts.estimates.end()) est[t] = it->second;
        failed[t] = failed_last.count(id) > 0;
      }
      // Heavy tests go out in the same order.
      std::stable_sort(us.heavy_queue.begin(), us.heavy_queue.end(), [&](int a, int b) {
        auto key = [&](int t) {
          const auto k = static_cast<std::size_t>(t);
          return std::make_tuple(!failed[k], est[k] >= 0, -est[k]);
        };
        return key(a) < key(b);
      });
      us.sched->set_estimates(std::move(est), std::move(failed));
    }
    if (opts.dist == "loadfile" || opts.dist == "loadscope" || opts.dist == "loadgroup") {
      const Distribution mode = opts.dist == "loadfile"    ? Distribution::loadfile
                                : opts.dist == "loadscope" ? Distribution::loadscope
                                                           : Distribution::loadgroup;
      std::vector<std::string> names;
      names.reserve(tests.size());
      for (std::size_t t = 0; t < tests.size(); ++t) names.push_back(count > 1 ? us.gtest_names[t] : tests[t].name);
      // loadgroup: a test's label is the first --group regex its id matches;
      // a test matching none is scheduled on its own, as under load.
      // pytest's xdist_group mark wins over the regexes.
      std::vector<std::string> labels;
      if (mode == Distribution::loadgroup) {
        std::vector<std::regex> res;
        for (const auto& rx : opts.groups) res.emplace_back(rx);
        labels.resize(tests.size());
        for (std::size_t t = 0; t < tests.size(); ++t) {
          if (!tests[t].group.empty()) {
            labels[t] = "mark:" + tests[t].group;
            continue;
          }
          const std::string id = make_id(tests[t].binary, names[t]);
          for (std::size_t k = 0; k < res.size(); ++k)
            if (std::regex_search(id, res[k])) {
              labels[t] = "group" + std::to_string(k);
              break;
            }
        }
      }
      // CTest and command tests are each their own file and scope.
      for (std::size_t t = 0; t < tests.size(); ++t) {
        const std::string& k = kind_of(static_cast<std::size_t>(tests[t].binary_index));
        if (k == "ctest" || k == "command") names[t] += "::";
      }
      us.sched->set_units(Scheduler::units_for(mode, group_of, names, labels));
    }
    // GoogleTest's shards run every test of the binary: not when some were
    // deselected (--lf).
    if (deselected) us.sched->set_sharding(false);
    us.workers = std::move(workers);
    const int idx = static_cast<int>(units.size());
    for (int w : us.workers) slots[static_cast<std::size_t>(w)]->unit = idx;
    units.push_back(std::move(u));
    ustate.push_back(std::move(us));
  };

  std::vector<int> live;
  for (std::size_t i = 0; i < slots.size(); ++i)
    if (slots[i]->state != SlotState::dead) live.push_back(static_cast<int>(i));
  if (opts.dist == "each") {
    for (auto& g : groups) {
      if (!g.done) continue;
      for (int w : g.slots)
        if (slots[static_cast<std::size_t>(w)]->state != SlotState::dead)
          make_unit(slots[static_cast<std::size_t>(w)]->info.id, g, {w}, false);
    }
  } else {
    make_unit("", *first, live, true);
  }
  std::size_t total = 0;
  for (const auto& u : units) total += u.tests.size();
  trace("run set up: {} unit(s), {} tests", units.size(), total);
  reporter.set_total(total);
  // Platforms that collected different numbers of tests: each one's count.
  std::string per_platform;
  if (std::any_of(units.begin(), units.end(),
                  [&](const Unit& u) { return u.tests.size() != units.front().tests.size(); }))
    for (const auto& u : units)
      per_platform += fmt::format("{}{}: {}", per_platform.empty() ? "" : ", ", u.name,
                                  u.tests.size() / static_cast<std::size_t>(std::max(1, opts.count)));
  reporter.collected(collected, opts.binaries.size(), units.size(), all_gtest(), per_platform);
  if (opts.event_log) opts.event_log->collected(total, units.size());
  if (opts.count > 1)
    reporter.note(fmt::format("--count {}: every test runs {} times ({} results)", opts.count, opts.count, total));
  if (total == 0) return kExitNoTests;
  for (std::size_t u = 0; u < units.size(); ++u)
    for (std::size_t t = 0; t < units[u].tests.size(); ++t)
      if (units[u].tests[t].disabled) {
        TestResult r;
        r.outcome = Outcome::skipped;
        r.message = "disabled";
        record(static_cast<int>(u), static_cast<int>(t), std::move(r));
      }
  return -1;
}

void Session::Impl::dispatch() {
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto& s = *slots[i];
    if (s.state != SlotState::ready || s.batch || s.reserved_for || s.unit < 0) continue;
    if (dispatch_retry(static_cast<int>(i))) continue;
    if (dispatch_heavy(static_cast<int>(i))) continue;
    auto& us = ustate[static_cast<std::size_t>(s.unit)];
    auto b = us.sched->next(static_cast<int>(i));
    if (!b) {
      // RUN_SERIAL: one at a time, when the unit has nothing else to do.
      drop_settled(s.unit, us.serial_queue);
      if (us.serial_queue.empty() || !us.sched->empty() || !us.retry_queue.empty() || !us.heavy_queue.empty() ||
          stop_requested)
        continue;
      const bool busy = std::any_of(inflight.begin(), inflight.end(),
                                    [&](const auto& kv) { return kv.second.unit == s.unit; });
      if (busy) continue;
      const int t = us.serial_queue.front();
      us.serial_queue.pop_front();
      send_single(static_cast<int>(i), t, {});
      continue;
    }
    InFlight f;
    f.unit = s.unit;
    f.slot = static_cast<int>(i);
    f.sched_batch = b->id;
    nlohmann::json names = nlohmann::json::array();
    for (int t : b->tests) names.push_back(gtest_name(s.unit, t));
    f.tests = b->tests;
    std::optional<std::pair<int, int>> shard;
    if (b->shard_count > 0) shard.emplace(b->shard_index, b->shard_count);
    send_batch(static_cast<int>(i), std::move(f), std::move(names), shard);
  }
}

void Session::Impl::on_events(int i, const Message& m) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  const std::int64_t id = get_int(m, "batch");
  auto it = inflight.find(id);
  if (it == inflight.end() || it->second.slot != i) throw ProtocolError(fmt::format("events for unknown batch {}", id));
  auto& f = it->second;
  auto& us = ustate[static_cast<std::size_t>(f.unit)];
  const auto records = decode_records(field(m, "results"));
  // Texts by batch index: [[index, text], ...].
  auto texts = [&](const char* name) {
    std::unordered_map<std::uint32_t, std::string> out;
    auto t = m.body.find(name);
    if (t == m.body.end()) return out;
    if (!t->is_array()) throw ProtocolError(fmt::format("events message: '{}' is not a list", name));
    for (const auto& pair : *t) {
      if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_unsigned() || !pair[1].is_string())
        throw ProtocolError(fmt::format("events message: '{}' holds something other than [index, text]", name));
      out[pair[0].get<std::uint32_t>()] = pair[1].get<std::string>();
    }
    return out;
  };
  auto outputs = texts("outputs");
  auto messages = texts("messages");
  for (const auto& rec : records) {
    // The last failure --maxfail allows came in: what follows it is not
    // counted (the run stops; those tests are reported not run).
    if (stop_requested) break;
    if (rec.index >= f.tests.size())
      throw ProtocolError(fmt::format("events message: result for index {} in a batch of {}", rec.index,
                                      f.tests.size()));
    const int test = f.tests[rec.index];
    TestResult r;
    r.outcome = rec.outcome;
    r.duration = rec.seconds;
    if (auto o = outputs.find(rec.index); o != outputs.end()) r.output = std::move(o->second);
    if (auto msg = messages.find(rec.index); msg != messages.end()) r.message = std::move(msg->second);
    r.worker = s.info.id;
    r.gateway = s.info.spec;
    f.got[rec.index] = 1;
    if (is_failure(r.outcome)) f.failed_test = true;
    if (f.sched_batch) us.sched->finished(f.sched_batch, test);
    on_result(f.unit, test, std::move(r));
  }
}

void Session::Impl::on_batch_done(int i, const Message& m) {
  auto& s = *slots[static_cast<std::size_t>(i)];
  const std::int64_t id = get_int(m, "batch");
  auto it = inflight.find(id);
  if (it == inflight.end() || it->second.slot != i) throw ProtocolError(fmt::format("batch_done for unknown batch {}", id));
  InFlight f = std::move(it->second);
  inflight.erase(it);
  s.batch = 0;
  release(f, id);
  trace("{} -> batch {} done: {} in {:.1f} ms, first test after {:.1f} ms", s.info.id, id, m.body.value("status", "?"),
        m.body.value("seconds", -1.0) * 1e3, m.body.value("startup", -1.0) * 1e3);
  auto& us = ustate[static_cast<std::size_t>(f.unit)];
  const std::string status = m.body.value("status", "?");
  // `unrun` is advisory: the scheduler requeues every test of the batch
  // that has no outcome, listed or not.
  if (auto se = m.body.find("spawn_error"); se != m.body.end())
    warn(fmt::format("[{}] could not start a test process: {}", s.info.id, se->dump()));
  std::vector<int> give_up;
  if (f.sched_batch) {
    give_up = us.sched->batch_done(f.sched_batch, m.body.value("seconds", -1.0), m.body.value("startup", -1.0));
  } else if (f.single) {
    // A serial or heavy test its process never reached: as for the
    // scheduler's tests, it is tried again (in its own way, later) up to
    // kMaxAttempts times; one awaiting a retry then keeps its failure.
    const int t = f.tests[0];
    if (!f.got[0] && !units[static_cast<std::size_t>(f.unit)].results[static_cast<std::size_t>(t)]) {
      if (++us.single_attempts[t] < Scheduler::kMaxAttempts) requeue(f.unit, t, true);
      else if (us.last_failure[static_cast<std::size_t>(t)]) settle(f.unit, t, {});
      else give_up.push_back(t);
    }
  } else {
    // A retry batch: what it did not reach waits for a retry again. When it
    // reached nothing, its first test is charged a retry (so a process that
    // never gets to a test cannot loop forever).
    bool any = false;
    for (char g : f.got) any |= g != 0;
    for (std::size_t k = 0; k < f.tests.size(); ++k) {
      const int t = f.tests[k];
      if (f.got[k] || units[static_cast<std::size_t>(f.unit)].results[static_cast<std::size_t>(t)]) continue;
      if (!any && k == 0) {
        if (us.retries_used[static_cast<std::size_t>(t)] >= opts.retries) {
          settle(f.unit, t, {});
          continue;
        }
        ++us.retries_used[static_cast<std::size_t>(t)];
      }
      us.retry_queue.push_back(t);
    }
  }
  for (int t : give_up) {
    TestResult r;
    r.outcome = Outcome::not_run;
    r.message = fmt::format("its test process ended before reaching it {} times (last: {})",
                            Scheduler::kMaxAttempts, status);
    r.worker = s.info.id;
    r.gateway = s.info.spec;
    record(f.unit, t, std::move(r));
  }
  // A process that failed while none of its tests did failed outside any
  // test (global set-up or tear-down, a sanitizer at exit): say so.
  bool explained = m.body.contains("crashed") || f.failed_test;
  for (int t : f.tests) {
    const auto& r = units[static_cast<std::size_t>(f.unit)].results[static_cast<std::size_t>(t)];
    if (r && is_failure(r->outcome)) explained = true;
  }
  if (auto o = m.body.find("outside_output"); o != m.body.end() && o->is_string() && !explained) {
    const auto& bin = us.paths[static_cast<std::size_t>(us.binary_of[static_cast<std::size_t>(f.tests.front())])];
    run_errors.push_back(fmt::format("[{}] {} ended with {} outside any test:\n{}", s.info.id, bin, status,
                                     o->get<std::string>()));
    warn(run_errors.back());
  }
}

bool Session::Impl::run_finished() const {
  for (const auto& us : ustate)
    if (!us.sched->empty() || !us.sched->idle() || !us.retry_queue.empty() || !us.serial_queue.empty() ||
        !us.heavy_queue.empty())
      return false;
  for (const auto& [id, f] : inflight)
    if (f.retry) return false;
  return true;
}

// Tests that can no longer run: their unit has no live worker.
void Session::Impl::settle_orphans() {
  for (std::size_t u = 0; u < ustate.size(); ++u) {
    auto& us = ustate[u];
    bool alive = false;
    std::string lost;
    for (int w : us.workers) {
      const auto& s = *slots[static_cast<std::size_t>(w)];
      if (s.state != SlotState::dead) alive = true;
      else if (lost.empty()) lost = s.info.id + ": " + s.info.error.substr(0, s.info.error.find('\n'));
    }
    // Slots still coming up may join a load unit later.
    if (!alive && opts.dist != "each")
      for (const auto& s : slots)
        if (s->state == SlotState::opening || s->state == SlotState::awaiting_hello) alive = true;
    if (alive) continue;
    // Tests awaiting a retry keep the failure they had.
    while (!us.retry_queue.empty()) {
      const int t = us.retry_queue.front();
      us.retry_queue.pop_front();
      settle(static_cast<int>(u), t, {});
    }
    for (auto* q : {&us.serial_queue, &us.heavy_queue})
      for (; !q->empty(); q->pop_front()) {
        TestResult r;
        r.outcome = Outcome::not_run;
        r.message = "no gateway left to run it (" + lost + ")";
        settle(static_cast<int>(u), q->front(), std::move(r));
      }
    if (us.sched->empty()) continue;
    for (int t : us.sched->drain()) {
      TestResult r;
      r.outcome = Outcome::not_run;
      r.message = "no gateway left to run it (" + lost + ")";
      record(static_cast<int>(u), t, std::move(r));
    }
  }
}

void Session::Impl::interrupt(const std::string& why) {
  interrupted = true;
  interrupt_reason = why;
  for (std::size_t u = 0; u < units.size(); ++u)
    for (std::size_t t = 0; t < units[u].tests.size(); ++t)
      if (!units[u].results[t]) {
        TestResult r;
        r.outcome = Outcome::not_run;
        r.message = why;
        settle(static_cast<int>(u), static_cast<int>(t), std::move(r));
      }
}

// --maxfail reached: nothing more is dispatched, every test without an
// outcome is not run, and shutdown() then tells each agent to stop, which
// kills the batches still running (their results are no longer read).
void Session::Impl::stop_run() {
  stop_reason = fmt::format("stopped after {} failure{} ({})", failures, failures == 1 ? "" : "s",
                            opts.maxfail_option.empty() ? fmt::format("--maxfail {}", opts.maxfail)
                                                        : opts.maxfail_option);
  trace("{}; {} batch(es) in flight", stop_reason, inflight.size());
  std::size_t stopped = 0;
  for (std::size_t u = 0; u < units.size(); ++u)
    for (std::size_t t = 0; t < units[u].tests.size(); ++t)
      if (!units[u].results[t]) {
        TestResult r;
        r.outcome = Outcome::not_run;
        r.message = stop_reason;
        settle(static_cast<int>(u), static_cast<int>(t), std::move(r));
        if (units[u].results[t]->outcome == Outcome::not_run) ++stopped;
      }
  // The last test was the one that reached the limit: nothing was stopped.
  if (stopped == 0) stop_reason.clear();
}

void Session::Impl::shutdown() {
  stop_syncs();
  // Ask every agent to stop (it kills its tests), then wait for them in
  // parallel-ish: closing first lets all of them wind down at once.
  for (std::size_t i = 0; i < slots.size(); ++i) {
    auto& s = *slots[i];
    std::lock_guard lock(s.gw_mu);
    // A gateway still opening is terminated by its reader when it arrives.
    s.abandoned = true;
    if (!s.gw) continue;
    if (s.state != SlotState::dead) {
      try {
        s.gw->send(encode_message({MsgKind::shutdown, nlohmann::json::object()}));
      } catch (...) {
      }
    }
    s.gw->close();
  }
  for (auto& s : slots) {
    std::lock_guard lock(s->gw_mu);
    if (s->gw) s->gw->wait(5.0);
  }
  for (auto& s : slots)
    if (s->reader.joinable()) s->reader.join();
  // A gateway that failed to come up while the others finished the run is
  // still reported; the closing of healthy ones is not news.
  while (auto e = events.pop(std::chrono::milliseconds(0))) {
    auto& s = *slots[static_cast<std::size_t>(e->slot)];
    if (e->kind == Event::Kind::failed && s.state != SlotState::ready && s.state != SlotState::dead)
      slot_down(e->slot, e->error);
  }
}

int Session::Impl::finish(int forced_code) {
  Summary sum;
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  sum.interrupted = interrupted;
  sum.interrupt_reason = interrupt_reason;
  sum.stop_reason = stop_reason;
  for (std::size_t u = 0; u < units.size(); ++u)
    for (std::size_t t = 0; t < units[u].tests.size(); ++t) {
      if (!units[u].results[t]) {  // never happens by design; never lose one silently
        TestResult r;
        r.outcome = Outcome::not_run;
        r.message = "internal error: no outcome was recorded";
        settle(static_cast<int>(u), static_cast<int>(t), std::move(r));
      }
      ++sum.counts[units[u].results[t]->outcome];
    }
  reporter.finish(units, sum);
  int code = forced_code;
  if (!opts.junitxml.empty() && !units.empty()) {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    try {
      write_junit(opts.junitxml, junit_xml(units, sum.seconds, host));
    } catch (const std::exception& e) {
      warn(e.what());
      if (code < 0) code = kExitInternalError;
    }
  }
  if (code < 0) code = outcome_code(sum);
  if (opts.record && !units.empty()) record_run(code);
  if (auto& log = opts.event_log) {
    log->session_finish(code, sum.seconds, sum.counts);
    // As for --junitxml: a report that could not be written is an error.
    if (!log->ok()) {
      reporter.warning(log->error());
      if (code == kExitOk || code == kExitTestsFailed) code = kExitInternalError;
    }
  }
  return code;
}

// The exit code the outcomes make: interrupted, a failing outcome (or a
// flaky one under --flaky-fails), a failure outside any test, or all well.
int Session::Impl::outcome_code(const Summary& sum) const {
  if (interrupted) return kExitInterrupted;
  for (const auto& [o, n] : sum.counts)
    if (n > 0 && (is_failure(o) || (o == Outcome::flaky && opts.flaky_fails))) return kExitTestsFailed;
  if (!run_errors.empty()) return kExitTestsFailed;
  return kExitOk;
}

Session::Session(RunOptions opts, GatewayFactory factory, std::ostream& out)
    : impl_(std::make_unique<Impl>(std::move(opts), std::move(factory), out)) {}

Session::~Session() = default;

const std::vector<Unit>& Session::units() const { return impl_->units; }
const std::vector<GatewayInfo>& Session::gateways() const {
  impl_->infos.clear();
  for (const auto& s : impl_->slots) impl_->infos.push_back(s->info);
  return impl_->infos;
}

int Session::run() {
  auto& im = *impl_;
  if (im.opts.dist == "no" && !im.opts.specs.empty()) {
    im.opts.specs.resize(1);
    im.opts.specs[0].count = 1;
  }
  std::size_t nslots = 0;
  for (const auto& s : im.opts.specs) nslots += static_cast<std::size_t>(s.count);
  im.reporter.session_start(im.opts.rootdir, nslots);
  if (im.opts.event_log) im.opts.event_log->session_start(im.opts.testrunuid, im.opts.rootdir, nslots);
  im.start_slots();
  int code = -1;
  for (;;) {
    if (int sig = g_interrupt_signal.load()) {
      im.interrupt(sig == SIGTERM ? "terminated (SIGTERM)" : "KeyboardInterrupt");
      break;
    }
    if (auto e = im.events.pop(std::chrono::milliseconds(100))) im.handle(*e);
    if (im.stop_requested) {
      im.stop_run();
      break;
    }
    // Agents that never say hello.
    for (std::size_t i = 0; i < im.slots.size(); ++i) {
      auto& s = *im.slots[i];
      if ((s.state == SlotState::opening || s.state == SlotState::awaiting_hello) &&
          Clock::now() - s.started > std::chrono::duration<double>(im.opts.hello_timeout))
        im.slot_down(static_cast<int>(i),
                     fmt::format("no hello from the agent within {:.0f} s", im.opts.hello_timeout));
    }
    if (im.collecting) {
      for (auto& g : im.groups)
        if (!g.done && !g.failed && g.asked < 0) im.ask_collect(g);
      if (!im.collection_settled()) continue;
      code = im.start_run();
      if (code >= 0) break;
    }
    im.dispatch();
    im.settle_orphans();
    if (im.run_finished()) break;
  }
  im.shutdown();
  return im.finish(code);
}

void Session::Impl::record_run(int exit_code) {
  RunRecord rec;
  rec.started_at = started_sys;
  rec.finished_at = std::chrono::system_clock::now();
  rec.args = opts.args;
  rec.exit_code = exit_code;
  try {
    rec.code_id = code_id_for_files(opts.binary_paths);
    // --count repetitions are rows of their test's own id.
    for (std::size_t ui = 0; ui < units.size(); ++ui) {
      const auto& u = units[ui];
      for (std::size_t t = 0; t < u.tests.size(); ++t) {
        const auto& r = u.results[t];
        if (!r) continue;
        const std::string id = make_id(u.tests[t].binary, gtest_name(static_cast<int>(ui), static_cast<int>(t)));
        rec.rows.push_back(TestRow{id, r->outcome, r->duration, r->worker, r->gateway, r->message});
      }
    }
    Repository repo(opts.rootdir);
    repo.record_run(rec);
  } catch (const std::exception& e) {
    warn(std::string("the run was not recorded in .dtest/: ") + e.what());
  }
}

}  // namespace dtest
