// Session tests against fake gateways: an in-process fake agent answers the
// protocol from a script, so scheduling, requeueing and reporting are tested
// without processes.
#include "master/session.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/message.h"

namespace dtest {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct Script {
  // Test lists, by GoogleTest path or, for the other kinds, by the
  // descriptor's "key" (a field the fakes use to tell sources apart).
  std::map<std::string, std::vector<std::pair<std::string, Outcome>>> binaries;
  std::map<std::string, std::string> collect_errors;  // binary -> error
  // Listing extras of the other kinds, by key: `groups` ([index, name]),
  // `errors` (collection errors beside the listing), `serial` (indices),
  // `weights` ([index, weight]).
  std::map<std::string, std::vector<std::pair<int, std::string>>> groups;
  std::map<std::string, std::vector<std::string>> list_errors;
  std::map<std::string, std::vector<int>> serial;
  std::map<std::string, std::vector<std::pair<int, int>>> weights;
  std::set<std::string> crash;                        // the process dies in these
  std::set<std::string> time_out;                     // the agent kills the process in these
  std::set<std::string> never_reached;                // the process exits before these
  std::map<std::string, int> die_after_runs;          // gateway id -> lose link at this RUN
  std::set<std::string> garbage;                      // gateway ids that send garbage
  // The hello's `caps`; null: none.
  nlohmann::json caps;
  // Set-up hooks: the exec ids (1 host, 2 worker) that end with exit status
  // 1, by gateway id or by spec (as given); the first gateway asked to run
  // setup.host loses its link instead of answering.
  std::map<std::string, std::set<std::int64_t>> exec_fails;
  bool die_at_first_host_exec = false;
  mutable bool died_at_host_exec = false;
  // When set, no fake says hello before this many exist, so every gateway
  // is up before the first batch goes out (else a fast one may run all).
  int start_together = 0;
  mutable std::mutex start_mu;
  mutable std::condition_variable start_cv;
  mutable int started = 0;
  // When set, the other fakes hold back their results until this gateway's
  // link has dropped, so it surely gets work to lose.
  std::string hold_until_dead;
  mutable std::set<std::string> dead;
  // Gateways whose open fails with garbage (before any hello).
  std::set<std::string> garbage_at_open;
  // A gate (called under start_mu): a frame a fake is about to hand to the
  // session (its timeline label, "collected 1", "exec_done 2", "batch_done 5";
  // "EOF" for a dropped link) waits until `release(gw, label)` is true, but
  // at most `release_within_ms(gw, label)` ms when that is set (else 10 s).
  // The session reads its events in order, so whatever was delivered ("<<")
  // before is handled before that frame.
  std::function<bool(const std::string& gw, const std::string& label)> release;
  std::function<int(const std::string& gw, const std::string& label)> release_within_ms;
  // What the fakes saw (under start_mu): each run message's tests and its
  // `timeout` field, and the tests a fake reached (ran), as "gw0:Name".
  mutable std::vector<std::vector<std::string>> batches;
  mutable std::vector<std::optional<double>> run_timeouts;
  mutable std::vector<std::string> reached;
  // Every message the session sent, and one timeline of the traffic:
  // "gw0 > run 3" (sent to gw0), "gw0 < batch_done 3" (the fake handed it
  // to the session's reader), "gw0 << batch_done 3" (the reader came back
  // for the next frame: it is in the session's event queue).
  struct Sent {
    std::string gw;
    MsgKind kind;
    nlohmann::json body;
  };
  mutable std::vector<Sent> sent;
  mutable std::vector<std::string> timeline;

  // Timeline queries: call them under start_mu, or once the run is over.
  bool has(const std::string& entry) const {
    return std::find(timeline.begin(), timeline.end(), entry) != timeline.end();
  }
  // Position of `entry`; npos if none.
  std::size_t at(const std::string& entry) const {
    const auto it = std::find(timeline.begin(), timeline.end(), entry);
    return it == timeline.end() ? std::string::npos : static_cast<std::size_t>(it - timeline.begin());
  }
  // Position of the first entry starting with `prefix`; npos if none.
  std::size_t first(const std::string& prefix) const {
    for (std::size_t i = 0; i < timeline.size(); ++i)
      if (timeline[i].rfind(prefix, 0) == 0) return i;
    return std::string::npos;
  }
  // Whether something was sent to `gw` after the entry at `pos`.
  bool sent_to_after(const std::string& gw, std::size_t pos) const {
    for (std::size_t i = pos + 1; i < timeline.size(); ++i)
      if (timeline[i].rfind(gw + " > ", 0) == 0) return true;
    return false;
  }
  std::vector<Sent> sent_of(MsgKind k) const {
    std::vector<Sent> v;
    for (const auto& s : sent)
      if (s.kind == k) v.push_back(s);
    return v;
  }
};

// "events 3", "exec_done 2", "hello": how a frame shows in the timeline.
std::string label_of(const Message& m) {
  std::string l(to_string(m.kind));
  for (const char* key : {"batch", "id"})
    if (auto it = m.body.find(key); it != m.body.end() && it->is_number_integer()) return l + " " + it->dump();
  return l;
}

class FakeGateway final : public gateway::Gateway {
 public:
  FakeGateway(const Script& script, std::string id, std::string spec, std::vector<std::string>* run_log,
              std::mutex* log_mu)
      : script_(script), id_(std::move(id)), spec_(std::move(spec)), run_log_(run_log), log_mu_(log_mu) {
    if (script_.garbage_at_open.count(id_))
      throw ProtocolError("bad frame magic at byte 0 (expected 0xD7): 'xx'");
    if (script_.start_together > 0) {
      std::unique_lock lock(script_.start_mu);
      ++script_.started;
      script_.start_cv.notify_all();
      script_.start_cv.wait(lock, [&] { return script_.started >= script_.start_together; });
    }
    nlohmann::json hello = {{"proto", kProtocolVersion}, {"agent_version", "fake"}, {"os", "linux"},
                            {"arch", "x86_64"}, {"cpus", 1}, {"hostname", "fake"}, {"pid", 1}};
    if (!script_.caps.is_null()) hello["caps"] = script_.caps;
    push(MsgKind::hello, std::move(hello));
  }

  void send(const Frame& f) override {
    if (dead_) throw gateway::GatewayError("fake gateway " + id_ + ": link is down");
    const Message m = decode_message(f);
    {
      std::lock_guard lock(script_.start_mu);
      script_.sent.push_back({id_, m.kind, m.body});
      script_.timeline.push_back(id_ + " > " + label_of(m));
      script_.start_cv.notify_all();
    }
    switch (m.kind) {
      case MsgKind::collect: {
        nlohmann::json bins = nlohmann::json::array();
        if (auto suite = m.body.find("suite"); suite != m.body.end()) {
          for (const auto& p : (*suite)["binaries"]) bins.push_back(listing(p.get<std::string>()));
        } else {
          for (const auto& src : m.body.at("sources"))
            bins.push_back(listing(src.at("kind") == "gtest" ? src.at("path") : src.at("key")));
        }
        push(MsgKind::collected, {{"id", m.body["id"]}, {"binaries", bins}});
        return;
      }
      case MsgKind::run: run(m); return;
      case MsgKind::exec: exec(m); return;
      case MsgKind::warm: return;
      case MsgKind::shutdown: close(); return;
      default: FAIL() << "unexpected message to the agent";
    }
  }

  std::optional<Frame> receive() override {
    if (!last_.empty()) {  // the frame handed out last is in the session's queue now
      std::lock_guard lock(script_.start_mu);
      script_.timeline.push_back(id_ + " << " + last_);
      script_.start_cv.notify_all();
      last_.clear();
    }
    std::unique_lock lock(mu_);
    if (script_.garbage.count(id_)) throw ProtocolError("bad frame magic at byte 0 (expected 0xD7): 'xx'");
    cv_.wait(lock, [&] { return !q_.empty(); });
    auto f = std::move(q_.front());
    q_.pop_front();
    lock.unlock();
    std::optional<Message> m;
    if (f) m = decode_message(*f);
    const std::string label = m ? label_of(*m) : "EOF";
    if (script_.release) {
      std::unique_lock gate(script_.start_mu);
      const int ms = script_.release_within_ms ? script_.release_within_ms(id_, label) : 10000;
      script_.start_cv.wait_for(gate, std::chrono::milliseconds(ms), [&] { return script_.release(id_, label); });
    }
    const bool result = m && (m->kind == MsgKind::events || m->kind == MsgKind::batch_done);
    if (result && !script_.hold_until_dead.empty() && id_ != script_.hold_until_dead) {
      std::unique_lock hold(script_.start_mu);
      script_.start_cv.wait_for(hold, std::chrono::seconds(10),
                                [&] { return script_.dead.count(script_.hold_until_dead) > 0; });
    }
    {
      std::lock_guard tl(script_.start_mu);
      script_.timeline.push_back(id_ + " < " + label);
      script_.start_cv.notify_all();
    }
    if (m) last_ = label;
    return f;
  }

  void close() override {
    if (!closed_) {
      closed_ = true;
      std::lock_guard lock(mu_);
      q_.push_back(std::nullopt);
      cv_.notify_all();
    }
  }
  void terminate() override {
    dead_ = true;
    close();
  }
  std::string wait(double) override {
    close();
    return "exit status 0";
  }
  std::string diagnostics() override { return ""; }

 private:
  void push(MsgKind k, nlohmann::json body) {
    std::lock_guard lock(mu_);
    q_.push_back(encode_message({k, std::move(body)}));
    cv_.notify_all();
  }

  // One `collected` entry: the listing of a GoogleTest path or of a source key.
  nlohmann::json listing(const std::string& key) const {
    if (auto e = script_.collect_errors.find(key); e != script_.collect_errors.end())
      return {{"path", key}, {"error", e->second}};
    std::string names;
    nlohmann::json disabled = nlohmann::json::array();
    const auto& tests = script_.binaries.at(key);
    for (std::size_t i = 0; i < tests.size(); ++i) {
      names += (i ? "\n" : "") + tests[i].first;
      if (tests[i].first.find("DISABLED_") != std::string::npos) disabled.push_back(i);
    }
    nlohmann::json entry = {{"path", key}, {"count", tests.size()}, {"names", names}, {"disabled", disabled}};
    if (auto g = script_.groups.find(key); g != script_.groups.end()) {
      entry["groups"] = nlohmann::json::array();
      for (const auto& [index, name] : g->second) entry["groups"].push_back({index, name});
    }
    if (auto e = script_.list_errors.find(key); e != script_.list_errors.end()) entry["errors"] = e->second;
    if (auto s = script_.serial.find(key); s != script_.serial.end()) entry["serial"] = s->second;
    if (auto w = script_.weights.find(key); w != script_.weights.end()) {
      entry["weights"] = nlohmann::json::array();
      for (const auto& [index, weight] : w->second) entry["weights"].push_back({index, weight});
    }
    return entry;
  }

  void exec(const Message& m) {
    const std::int64_t id = m.body.at("id");
    if (id == 1 && script_.die_at_first_host_exec) {
      bool die = false;
      {
        std::lock_guard lock(script_.start_mu);
        if (!script_.died_at_host_exec) die = script_.died_at_host_exec = true;
      }
      if (die) {
        dead_ = true;
        close();
        return;
      }
    }
    auto fails = [&](const std::string& who) {
      auto it = script_.exec_fails.find(who);
      return it != script_.exec_fails.end() && it->second.count(id) > 0;
    };
    const int code = fails(id_) || fails(spec_) ? 1 : 0;
    push(MsgKind::exec_done, {{"id", id},
                              {"status", "exit status " + std::to_string(code)},
                              {"exit_code", code},
                              {"output", "hook output on " + id_ + "\n"},
                              {"seconds", 0.01}});
  }

  void run(const Message& m) {
    ++runs_;
    if (auto d = script_.die_after_runs.find(id_); d != script_.die_after_runs.end() && runs_ >= d->second) {
      dead_ = true;
      close();
      std::lock_guard lock(script_.start_mu);
      script_.dead.insert(id_);
      script_.start_cv.notify_all();
      return;
    }
    const auto batch = m.body["batch"];
    const std::string kind = m.body.value("kind", "gtest");
    const std::string key = kind == "gtest" ? m.body["binary"].get<std::string>()
                                            : m.body.at("source").at("key").get<std::string>();
    std::vector<std::string> tests = m.body["tests"];
    {
      std::lock_guard lock(*log_mu_);
      for (const auto& t : tests) run_log_->push_back(id_ + ":" + t);
    }
    {
      std::lock_guard lock(script_.start_mu);
      script_.batches.push_back(tests);
      auto t = m.body.find("timeout");
      script_.run_timeouts.push_back(t == m.body.end() ? std::nullopt : std::optional<double>(t->get<double>()));
    }
    std::map<std::string, Outcome> outcome;
    for (const auto& [name, o] : script_.binaries.at(key)) outcome[name] = o;
    std::vector<std::uint8_t> records;
    nlohmann::json outputs = nlohmann::json::array();
    nlohmann::json messages = nlohmann::json::array();
    nlohmann::json unrun = nlohmann::json::array();
    std::string status = "exit status 0";
    bool stopped = false;
    for (std::uint32_t i = 0; i < tests.size(); ++i) {
      const auto& t = tests[i];
      if (stopped || script_.never_reached.count(t)) {
        stopped = true;
        unrun.push_back(i);
        continue;
      }
      {
        std::lock_guard lock(script_.start_mu);
        script_.reached.push_back(id_ + ":" + t);
      }
      if (script_.crash.count(t)) {
        append_record(records, {i, Outcome::crashed, 0.01});
        messages.push_back({i, "signal 11 (SIGSEGV)"});
        outputs.push_back({i, "about to crash\n"});
        status = "signal 11 (SIGSEGV)";
        stopped = true;
        continue;
      }
      if (script_.time_out.count(t)) {
        append_record(records, {i, Outcome::timeout, 2.01});
        messages.push_back({i, "timed out after 2 s"});
        outputs.push_back({i, "hanging\ndtest: timed out after 2 s (its test process was killed)\n"});
        status = "signal 9 (SIGKILL)";
        stopped = true;
        continue;
      }
      EXPECT_EQ(m.body["env"]["DTEST_WORKER"], id_);
      append_record(records, {i, outcome.at(t), 0.01});
    }
    push(MsgKind::events, {{"batch", batch},
                           {"results", nlohmann::json::binary(std::move(records))},
                           {"outputs", outputs},
                           {"messages", messages}});
    push(MsgKind::batch_done, {{"batch", batch}, {"status", status}, {"unrun", unrun}});
  }

  const Script& script_;
  std::string id_;
  std::string spec_;
  std::vector<std::string>* run_log_;
  std::mutex* log_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::optional<Frame>> q_;
  std::atomic<bool> dead_{false};
  std::atomic<bool> closed_{false};
  int runs_ = 0;
  std::string last_;   // label of the frame receive() handed out last (reader thread)
};

// A source of any kind for Harness::sources: GoogleTest sources are named by
// their path (`display`, also the key into Script::binaries); the others by
// their descriptor's "key".
struct Source {
  std::string kind;
  std::string display;
  nlohmann::json descriptor = nlohmann::json::object();
  double timeout = -1;
};

struct Harness {
  Script script;
  std::vector<std::string> run_log;
  std::mutex log_mu;
  std::ostringstream out;
  std::unique_ptr<Session> session;
  double timeout = 0;
  int maxfail = 0;
  std::string maxfail_option;
  int retries = 0;
  int count = 1;
  // When set, what runs (else every binary of the script, as GoogleTest).
  std::vector<Source> sources;
  bool continue_on_collection_errors = false;
  std::string setup_host, setup_worker;
  std::shared_ptr<EventLog> event_log;

  int run(const std::vector<std::string>& specs, const std::string& dist = "load") {
    RunOptions o;
    for (const auto& s : specs) o.specs.push_back(xspec::parse(s));
    if (!sources.empty()) {
      for (const auto& s : sources) {
        o.binaries.push_back(s.display);
        o.binary_paths.push_back(s.kind == "gtest" ? s.display : s.descriptor.value("cwd", std::string()));
        o.kinds.push_back(s.kind);
        o.descriptors.push_back(s.descriptor);
        o.source_timeouts.push_back(s.timeout);
      }
    } else {
      for (const auto& [path, tests] : script.binaries) {
        o.binaries.push_back(path);
        o.binary_paths.push_back(path);
      }
      for (const auto& [path, err] : script.collect_errors)
        if (!script.binaries.count(path)) {
          o.binaries.push_back(path);
          o.binary_paths.push_back(path);
        }
    }
    o.dist = dist;
    o.verbosity = 1;
    o.testrunuid = "uid";
    o.rootdir = "/work/project";
    o.timeout = timeout;
    o.maxfail = maxfail;
    o.maxfail_option = maxfail_option;
    o.retries = retries;
    o.count = count;
    o.continue_on_collection_errors = continue_on_collection_errors;
    o.setup_host = setup_host;
    o.setup_worker = setup_worker;
    o.event_log = event_log;
    session = std::make_unique<Session>(
        o,
        [this](const xspec::Spec& spec, const std::string& id) {
          return std::make_unique<FakeGateway>(script, id, spec.original, &run_log, &log_mu);
        },
        out);
    return session->run();
  }

  std::map<std::string, Outcome> outcomes(std::size_t unit = 0) const {
    std::map<std::string, Outcome> m;
    const auto& u = session->units().at(unit);
    for (std::size_t i = 0; i < u.tests.size(); ++i) {
      EXPECT_TRUE(u.results[i].has_value()) << u.tests[i].id();
      if (u.results[i]) m[u.tests[i].name] = u.results[i]->outcome;
    }
    return m;
  }

  GatewayInfo gateway(const std::string& id) const {
    for (const auto& g : session->gateways())
      if (g.id == id) return g;
    throw std::runtime_error("no gateway " + id);
  }
};

std::vector<std::pair<std::string, Outcome>> passing(const std::string& suite, int n) {
  std::vector<std::pair<std::string, Outcome>> v;
  for (int i = 0; i < n; ++i) v.emplace_back(suite + ".T" + std::to_string(i), Outcome::passed);
  return v;
}

TEST(Session, EveryTestGetsExactlyOneOutcomeAcrossTwoWorkers) {
  Harness h;
  h.script.binaries["a"] = passing("A", 40);
  h.script.binaries["a"].emplace_back("A.Broken", Outcome::failed);
  h.script.binaries["a"].emplace_back("A.DISABLED_Off", Outcome::passed);
  h.script.binaries["b"] = passing("B", 20);
  EXPECT_EQ(h.run({"2*popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 62u);
  EXPECT_EQ(o.at("A.Broken"), Outcome::failed);
  EXPECT_EQ(o.at("A.DISABLED_Off"), Outcome::skipped);
  EXPECT_EQ(o.at("B.T7"), Outcome::passed);
  // Each test ran exactly once. (Which workers ran them depends on how fast
  // each fake says hello; e2e_test checks that real workers share a run.)
  std::multiset<std::string> names;
  for (const auto& e : h.run_log) names.insert(e.substr(e.find(':') + 1));
  EXPECT_EQ(names.size(), 61u);
  for (const auto& n : names) EXPECT_EQ(names.count(n), 1u) << n;
  EXPECT_THAT(h.out.str(), HasSubstr("1 failed, 60 passed, 1 skipped"));
}

TEST(Session, AllPassingIsExitZero) {
  Harness h;
  h.script.binaries["a"] = passing("A", 5);
  EXPECT_EQ(h.run({"popen"}), kExitOk);
  EXPECT_THAT(h.out.str(), HasSubstr("5 passed"));
}

TEST(Session, CrashMarksOneTestAndTheRestOfTheBatchStillRuns) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.script.crash = {"A.T3", "A.T17"};
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 30u);
  EXPECT_EQ(o.at("A.T3"), Outcome::crashed);
  EXPECT_EQ(o.at("A.T17"), Outcome::crashed);
  EXPECT_EQ(o.at("A.T4"), Outcome::passed);
  EXPECT_EQ(o.at("A.T29"), Outcome::passed);
  EXPECT_THAT(h.out.str(), HasSubstr("CRASHED a::A.T3 - signal 11 (SIGSEGV)"));
}

TEST(Session, LostGatewayRequeuesItsTestsOnTheOthers) {
  Harness h;
  h.script.binaries["a"] = passing("A", 60);
  h.script.die_after_runs["gw1"] = 1;  // its link drops with its first batch
  h.script.hold_until_dead = "gw1";    // gw0 cannot finish everything first
  EXPECT_EQ(h.run({"2*popen"}), kExitOk);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 60u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  EXPECT_THAT(h.out.str(), HasSubstr("[gw1] gateway lost"));
}

// --report-log: the run as JSON Lines; every test's one outcome is in it
// exactly once, and a lost gateway and the final exit code too.
TEST(Session, TheReportLogHasEveryOutcomeOnceAndTheGatewaysAndTheExitCode) {
  const std::string path = ::testing::TempDir() + "/session_report_log.jsonl";
  Harness h;
  h.script.binaries["a"] = passing("A", 40);
  h.script.crash = {"A.T5"};
  h.script.die_after_runs["gw1"] = 1;
  h.script.hold_until_dead = "gw1";
  h.event_log = EventLog::open(path);
  const int code = h.run({"2*popen"});
  EXPECT_EQ(code, kExitTestsFailed);
  h.event_log.reset();
  std::ifstream in(path);
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(in, line);) events.push_back(nlohmann::json::parse(line));
  std::filesystem::remove(path);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["event"], "session_start");
  EXPECT_EQ(events.front()["testrunuid"], "uid");
  EXPECT_EQ(events.back()["event"], "session_finish");
  EXPECT_EQ(events.back()["exit_code"], code);
  EXPECT_EQ(events.back()["counts"], (nlohmann::json{{"passed", 39}, {"crashed", 1}}));
  std::map<std::string, std::string> outcomes;
  std::set<std::string> up, lost;
  for (const auto& e : events) {
    if (e["event"] == "test") {
      EXPECT_TRUE(outcomes.emplace(e["id"], e["outcome"]).second) << e["id"] << " twice";
      EXPECT_FALSE(e["worker"].get<std::string>().empty()) << e.dump();
    }
    if (e["event"] == "gateway_up") up.insert(e["id"]);
    if (e["event"] == "gateway_lost") {
      lost.insert(e["id"]);
      EXPECT_THAT(e["error"].get<std::string>(), HasSubstr("closed the connection"));
    }
    if (e["event"] == "collected") {
      EXPECT_EQ(e["tests"], 40);
    }
  }
  EXPECT_EQ(up, (std::set<std::string>{"gw0", "gw1"}));
  EXPECT_EQ(lost, std::set<std::string>{"gw1"});
  const auto o = h.outcomes();
  ASSERT_EQ(outcomes.size(), o.size());
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcomes["a::" + name], std::string(to_string(outcome))) << name;
}

TEST(Session, WithNoGatewayLeftTheRestIsNotRunWithAReason) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.script.die_after_runs["gw0"] = 2;
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto& u = h.session->units().at(0);
  int passed = 0, not_run = 0;
  for (const auto& r : u.results) {
    ASSERT_TRUE(r.has_value());
    if (r->outcome == Outcome::passed) ++passed;
    if (r->outcome == Outcome::not_run) {
      ++not_run;
      EXPECT_THAT(r->message, HasSubstr("no gateway left to run it (gw0:"));
    }
  }
  EXPECT_GT(passed, 0);
  EXPECT_GT(not_run, 0);
  EXPECT_EQ(passed + not_run, 30);
}

TEST(Session, GarbageFromOneGatewayTakesItOutAndTheOtherRunsEverything) {
  Harness h;
  h.script.binaries["a"] = passing("A", 10);
  h.script.garbage_at_open = {"gw0"};  // fails before gw1 can finish the run
  EXPECT_EQ(h.run({"2*popen"}), kExitOk);
  EXPECT_EQ(h.outcomes().size(), 10u);
  EXPECT_THAT(h.out.str(), HasSubstr("[gw0] gateway failed (2*popen): garbage from the agent"));
  EXPECT_THAT(h.out.str(), HasSubstr("bad frame magic"));
  for (const auto& e : h.run_log) EXPECT_EQ(e.substr(0, 4), "gw1:");
}

TEST(Session, NoGatewayUpIsAnInternalError) {
  Harness h;
  h.script.binaries["a"] = passing("A", 3);
  h.script.garbage = {"gw0"};
  EXPECT_EQ(h.run({"popen"}), kExitInternalError);
  EXPECT_THAT(h.out.str(), HasSubstr("no gateway came up"));
}

TEST(Session, TestsNeverReachedAreNotRunAfterRepeatedAttempts) {
  Harness h;
  h.script.binaries["a"] = passing("A", 4);
  h.script.never_reached = {"A.T2"};
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.at("A.T2"), Outcome::not_run);
  EXPECT_EQ(o.at("A.T3"), Outcome::passed);
  EXPECT_THAT(h.out.str(), HasSubstr("ended before reaching it 3 times"));
}

TEST(Session, CollectionErrorsStopTheRunLikePytest) {
  Harness h;
  h.script.binaries["a"] = passing("A", 3);
  h.script.collect_errors["bad"] = "bad is not a GoogleTest binary: line 1 ...";
  EXPECT_EQ(h.run({"popen"}), kExitInterrupted);
  EXPECT_THAT(h.out.str(), HasSubstr("ERROR collecting"));
  EXPECT_THAT(h.out.str(), HasSubstr("bad is not a GoogleTest binary"));
  EXPECT_TRUE(h.run_log.empty());
}

TEST(Session, DistEachRunsTheWholeSuiteOnEveryGateway) {
  Harness h;
  h.script.binaries["a"] = passing("A", 12);
  EXPECT_EQ(h.run({"popen", "popen"}, "each"), kExitOk);
  ASSERT_EQ(h.session->units().size(), 2u);
  EXPECT_EQ(h.outcomes(0).size(), 12u);
  EXPECT_EQ(h.outcomes(1).size(), 12u);
  int gw0 = 0, gw1 = 0;
  for (const auto& e : h.run_log) (e.rfind("gw0:", 0) == 0 ? gw0 : gw1)++;
  EXPECT_EQ(gw0, 12);
  EXPECT_EQ(gw1, 12);
  EXPECT_THAT(h.out.str(), HasSubstr("24 passed"));
  EXPECT_THAT(h.out.str(), HasSubstr("[gw0] 12 passed"));
}

TEST(Session, DistNoUsesOneWorker) {
  Harness h;
  h.script.binaries["a"] = passing("A", 10);
  EXPECT_EQ(h.run({"3*popen"}, "no"), kExitOk);
  for (const auto& e : h.run_log) EXPECT_EQ(e.substr(0, 4), "gw0:");
  EXPECT_EQ(h.run_log.size(), 10u);
}

TEST(Session, TimeoutIsSentWithEveryBatchAndATimedOutTestIsNotRetried) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.script.time_out = {"A.T3"};
  h.timeout = 2.5;
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 30u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, name == "A.T3" ? Outcome::timeout : Outcome::passed) << name;
  // The tests after the killed one ran in a new batch; the timed-out test
  // itself ran once (it has its outcome), as did every other.
  ASSERT_GE(h.script.batches.size(), 2u);
  std::multiset<std::string> reached(h.script.reached.begin(), h.script.reached.end());
  EXPECT_EQ(reached.size(), 30u);
  for (const auto& n : reached) EXPECT_EQ(reached.count(n), 1u) << n;
  for (const auto& t : h.script.run_timeouts) EXPECT_EQ(t, std::optional<double>(2.5));
  EXPECT_THAT(h.out.str(), HasSubstr("TIMEOUT a::A.T3 - timed out after 2 s"));
  EXPECT_THAT(h.out.str(), HasSubstr("[gw0] timeout: timed out after 2 s\nhanging\n"));
  EXPECT_THAT(h.out.str(), HasSubstr("1 timeout, 29 passed"));
}

TEST(Session, NoTimeoutFieldWithoutALimit) {
  Harness h;
  h.script.binaries["a"] = passing("A", 5);
  EXPECT_EQ(h.run({"popen"}), kExitOk);
  ASSERT_FALSE(h.script.run_timeouts.empty());
  for (const auto& t : h.script.run_timeouts) EXPECT_EQ(t, std::nullopt);
}

TEST(Session, MaxfailOneStopsAtTheFirstFailureAndTheRestIsNotRun) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.script.binaries["a"][3].second = Outcome::failed;
  h.script.binaries["a"][17].second = Outcome::failed;
  h.maxfail = 1;
  h.maxfail_option = "-x";
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  ASSERT_EQ(o.size(), 30u);
  const auto& u = h.session->units().at(0);
  int failed = 0, passed = 0, not_run = 0;
  for (std::size_t i = 0; i < u.tests.size(); ++i) {
    const auto& r = *u.results[i];
    if (r.outcome == Outcome::failed) ++failed;
    if (r.outcome == Outcome::passed) ++passed;
    if (r.outcome == Outcome::not_run) {
      ++not_run;
      EXPECT_EQ(r.message, "stopped after 1 failure (-x)") << u.tests[i].name;
    }
  }
  // One worker, results in order: A.T0-T2 passed, A.T3 failed, and what
  // came after it (even in the same message) is not counted.
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(o.at("A.T3"), Outcome::failed);
  EXPECT_EQ(passed, 3);
  EXPECT_EQ(not_run, 26);
  EXPECT_EQ(o.at("A.T17"), Outcome::not_run);
  // No batch went out after the one holding the failure.
  ASSERT_FALSE(h.script.batches.empty());
  const auto& last = h.script.batches.back();
  EXPECT_NE(std::find(last.begin(), last.end(), "A.T3"), last.end());
  // One summary line for the stopped tests, no FAILURES section each.
  const std::string out = h.out.str();
  EXPECT_THAT(out, HasSubstr("NOT RUN 26 tests - stopped after 1 failure (-x)\n"));
  EXPECT_THAT(out, HasSubstr("!!!!!!!!!! stopped after 1 failure (-x) !!!!!!!!!!\n"));
  EXPECT_THAT(out, HasSubstr("1 failed, 3 passed, 26 not run"));
  EXPECT_THAT(out, Not(HasSubstr("not run: stopped")));
  EXPECT_THAT(out, Not(HasSubstr("Interrupted")));
}

TEST(Session, MaxfailCountsFailuresCrashesAndTimeoutsAcrossWorkers) {
  Harness h;
  h.script.binaries["a"] = passing("A", 40);
  h.script.binaries["a"][5].second = Outcome::failed;
  h.script.binaries["a"][25].second = Outcome::failed;
  h.script.crash = {"A.T12"};
  h.script.time_out = {"A.T33"};
  h.script.start_together = 2;
  h.maxfail = 2;
  h.maxfail_option = "--maxfail 2";
  EXPECT_EQ(h.run({"2*popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  ASSERT_EQ(o.size(), 40u);
  int failing = 0;
  for (const auto& [name, outcome] : o) {
    if (outcome == Outcome::failed || outcome == Outcome::crashed || outcome == Outcome::timeout) ++failing;
    else EXPECT_TRUE(outcome == Outcome::passed || outcome == Outcome::not_run) << name;
  }
  EXPECT_EQ(failing, 2);
  const auto& u = h.session->units().at(0);
  for (const auto& r : u.results) {
    if (r->outcome == Outcome::not_run) {
      EXPECT_EQ(r->message, "stopped after 2 failures (--maxfail 2)");
    }
  }
  EXPECT_THAT(h.out.str(), HasSubstr("!!!!!!!!!! stopped after 2 failures (--maxfail 2) !!!!!!!!!!"));
}

TEST(Session, MaxfailNotReachedRunsEverything) {
  Harness h;
  h.script.binaries["a"] = passing("A", 20);
  h.script.binaries["a"][4].second = Outcome::failed;
  h.script.binaries["a"][9].second = Outcome::failed;
  h.maxfail = 3;
  h.maxfail_option = "--maxfail 3";
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  for (const auto& [name, outcome] : o) EXPECT_NE(outcome, Outcome::not_run) << name;
  EXPECT_THAT(h.out.str(), HasSubstr("2 failed, 18 passed"));
  EXPECT_THAT(h.out.str(), Not(HasSubstr("stopped after")));
}

TEST(Session, MaxfailReachedByTheLastTestStopsNothing) {
  Harness h;
  h.script.binaries["a"] = passing("A", 6);
  h.script.binaries["a"][5].second = Outcome::failed;
  h.maxfail = 1;
  h.maxfail_option = "-x";
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  EXPECT_THAT(h.out.str(), HasSubstr("1 failed, 5 passed"));
  EXPECT_THAT(h.out.str(), Not(HasSubstr("stopped after")));
}

TEST(Session, RetriesRunAFailureAgainInNewBatchesAndKeepTheLastFailure) {
  Harness h;
  h.script.binaries["a"] = passing("A", 20);
  h.script.binaries["a"][4].second = Outcome::failed;
  h.script.crash = {"A.T9"};
  h.retries = 2;
  EXPECT_EQ(h.run({"2*popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 20u);
  EXPECT_EQ(o.at("A.T4"), Outcome::failed);
  EXPECT_EQ(o.at("A.T9"), Outcome::crashed);
  EXPECT_EQ(o.at("A.T10"), Outcome::passed);
  // Counted as reached: a retry batch may hold A.T4 behind A.T9, whose crash
  // leaves it unrun (it goes back to the retry queue, uncharged).
  std::map<std::string, int> runs;
  for (const auto& e : h.script.reached) ++runs[e.substr(e.find(':') + 1)];
  EXPECT_EQ(runs["A.T4"], 3);
  EXPECT_EQ(runs["A.T9"], 3);
  EXPECT_EQ(runs["A.T10"], 1);
  // Never twice in one batch.
  for (const auto& b : h.script.batches) {
    std::set<std::string> names(b.begin(), b.end());
    EXPECT_EQ(names.size(), b.size());
  }
  EXPECT_THAT(h.out.str(), HasSubstr("RETRY a::A.T9 (crashed; retry 2 of 2)"));
  EXPECT_THAT(h.out.str(), HasSubstr("1 failed, 1 crashed, 18 passed"));
}

TEST(Session, MaxfailCountsAFailureOnlyOnceItsRetriesAreSpent) {
  Harness h;
  h.script.binaries["a"] = passing("A", 10);
  h.script.binaries["a"][2].second = Outcome::failed;
  h.retries = 1;
  h.maxfail = 1;
  h.maxfail_option = "-x";
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.at("A.T2"), Outcome::failed);
  int runs = 0;
  for (const auto& e : h.run_log) runs += e.substr(e.find(':') + 1) == "A.T2";
  EXPECT_EQ(runs, 2);
  int failed = 0;
  for (const auto& [name, outcome] : o) failed += outcome == Outcome::failed;
  EXPECT_EQ(failed, 1);
}

TEST(Session, CountRunsEveryTestNTimesNeverTwiceInABatch) {
  Harness h;
  h.script.binaries["a"] = passing("A", 12);
  h.script.binaries["b"] = passing("B", 5);
  h.script.binaries["b"][1].second = Outcome::failed;
  h.count = 3;
  EXPECT_EQ(h.run({"2*popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 51u);
  EXPECT_EQ(o.at("A.T0[1/3]"), Outcome::passed);
  EXPECT_EQ(o.at("B.T1[3/3]"), Outcome::failed);
  std::map<std::string, int> runs;
  for (const auto& e : h.run_log) ++runs[e.substr(e.find(':') + 1)];
  EXPECT_EQ(runs.size(), 17u);
  for (const auto& [name, n] : runs) EXPECT_EQ(n, 3) << name;
  for (const auto& b : h.script.batches) {
    std::set<std::string> names(b.begin(), b.end());
    EXPECT_EQ(names.size(), b.size());
  }
  EXPECT_THAT(h.out.str(), HasSubstr("3 failed, 48 passed"));
}

// ---- Sources of other kinds, warm, set-up hooks, RUN_SERIAL ----

std::vector<std::pair<std::string, Outcome>> node_ids(const std::string& file, int n) {
  std::vector<std::pair<std::string, Outcome>> v;
  for (int i = 0; i < n; ++i) v.emplace_back(file + "::test_" + std::to_string(i), Outcome::passed);
  return v;
}

nlohmann::json with_kind(nlohmann::json d, const std::string& kind) {
  d["kind"] = kind;
  return d;
}

// gw0 .. gw(n-1).
std::vector<std::string> gateway_ids(int n) {
  std::vector<std::string> v;
  for (int i = 0; i < n; ++i) v.push_back("gw" + std::to_string(i));
  return v;
}

TEST(Session, OtherKindsAreCollectedAsSourcesAndRunWithTheirDescriptor) {
  Harness h;
  h.script.binaries["bin/a"] = passing("A", 3);
  h.script.binaries["py"] = {{"tests/test_x.py::test_one", Outcome::passed},
                             {"tests/test_x.py::test_two", Outcome::failed}};
  h.script.binaries["ct"] = {{"ct_one", Outcome::passed}, {"ct_two", Outcome::passed}};
  h.script.binaries["cm"] = {{"check-1", Outcome::passed}};
  const nlohmann::json py = {{"key", "py"}, {"cwd", "/work/project"}, {"args", {"-q"}}};
  const nlohmann::json ct = {{"key", "ct"}, {"build_dir", "/work/project/build"}, {"labels", nlohmann::json::array()}};
  const nlohmann::json cm = {{"key", "cm"}, {"cwd", "/work/project/checks"}, {"run", "./check"}, {"format", "exit"}};
  // --timeout 5; the pytest source's own 7 and the CTest source's 0 (no
  // limit) win over it.
  h.sources = {{"gtest", "bin/a"}, {"pytest", "", py, 7}, {"ctest", "ctest", ct, 0}, {"command", "checks", cm}};
  h.timeout = 5;
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);

  const auto collects = h.script.sent_of(MsgKind::collect);
  ASSERT_EQ(collects.size(), 1u);
  const auto& c = collects[0].body;
  EXPECT_FALSE(c.contains("suite"));
  const nlohmann::json want_sources = nlohmann::json::array(
      {nlohmann::json{{"kind", "gtest"}, {"path", "bin/a"}}, with_kind(py, "pytest"), with_kind(ct, "ctest"),
       with_kind(cm, "command")});
  EXPECT_EQ(c.at("sources"), want_sources);
  EXPECT_EQ(c.at("env"),
            (nlohmann::json{{"DTEST_WORKER", "gw0"}, {"DTEST_WORKER_COUNT", "1"}, {"DTEST_TESTRUNUID", "uid"}}));

  // Every run: its kind, the display name as `binary`, the descriptor as
  // `source` (not for GoogleTest), the source's time limit, its own tests.
  std::map<std::string, int> runs_by_kind;
  for (const auto& r : h.script.sent_of(MsgKind::run)) {
    const auto& b = r.body;
    const std::string kind = b.at("kind");
    ++runs_by_kind[kind];
    std::string key;
    std::optional<double> timeout;
    if (auto t = b.find("timeout"); t != b.end()) timeout = t->get<double>();
    if (kind == "gtest") {
      key = "bin/a";
      EXPECT_EQ(b.at("binary"), "bin/a");
      EXPECT_FALSE(b.contains("source"));
      EXPECT_EQ(timeout, std::optional<double>(5));
    } else if (kind == "pytest") {
      key = "py";
      EXPECT_EQ(b.at("binary"), "");
      EXPECT_EQ(b.at("source"), with_kind(py, "pytest"));
      EXPECT_EQ(timeout, std::optional<double>(7));
    } else if (kind == "ctest") {
      key = "ct";
      EXPECT_EQ(b.at("binary"), "ctest");
      EXPECT_EQ(b.at("source"), with_kind(ct, "ctest"));
      EXPECT_EQ(timeout, std::nullopt);
    } else {
      key = "cm";
      EXPECT_EQ(kind, "command");
      EXPECT_EQ(b.at("binary"), "checks");
      EXPECT_EQ(b.at("source"), with_kind(cm, "command"));
      EXPECT_EQ(timeout, std::optional<double>(5));
    }
    std::set<std::string> names;
    for (const auto& [n, o] : h.script.binaries.at(key)) names.insert(n);
    for (const auto& t : b.at("tests")) EXPECT_TRUE(names.count(t.get<std::string>())) << kind << ": " << t;
  }
  EXPECT_EQ(runs_by_kind.size(), 4u);

  // Ids: the display prefix, none for "".
  std::map<std::string, Outcome> by_id;
  const auto& u = h.session->units().at(0);
  for (std::size_t i = 0; i < u.tests.size(); ++i) {
    ASSERT_TRUE(u.results[i].has_value()) << u.tests[i].id();
    by_id[u.tests[i].id()] = u.results[i]->outcome;
  }
  const std::map<std::string, Outcome> want = {
      {"bin/a::A.T0", Outcome::passed},       {"bin/a::A.T1", Outcome::passed},
      {"bin/a::A.T2", Outcome::passed},       {"tests/test_x.py::test_one", Outcome::passed},
      {"tests/test_x.py::test_two", Outcome::failed}, {"ctest::ct_one", Outcome::passed},
      {"ctest::ct_two", Outcome::passed},     {"checks::check-1", Outcome::passed}};
  EXPECT_EQ(by_id, want);
  EXPECT_THAT(h.out.str(), HasSubstr("] FAILED tests/test_x.py::test_two\n"));
}

TEST(Session, TestIdsWithoutADisplayPrefixAreTheNames) {
  Harness h;
  h.script.binaries["py"] = node_ids("tests/test_a.py", 3);
  h.script.binaries["py2"] = node_ids("tests/test_b.py", 2);
  h.sources = {{"pytest", "", {{"key", "py"}, {"cwd", "/work/project"}}},
               {"pytest", "other", {{"key", "py2"}, {"cwd", "/work/other"}}}};
  EXPECT_EQ(h.run({"popen"}), kExitOk);
  std::vector<std::string> ids;
  for (const auto& t : h.session->units().at(0).tests) ids.push_back(t.id());
  EXPECT_EQ(ids, (std::vector<std::string>{"tests/test_a.py::test_0", "tests/test_a.py::test_1",
                                           "tests/test_a.py::test_2", "other::tests/test_b.py::test_0",
                                           "other::tests/test_b.py::test_1"}));
  EXPECT_THAT(h.out.str(), HasSubstr("] PASSED tests/test_a.py::test_1\n"));
  EXPECT_THAT(h.out.str(), Not(HasSubstr("::tests/test_a.py")));
}

TEST(Session, CollectionErrorsBesideAListingStopTheRun) {
  Harness h;
  h.script.binaries["py"] = node_ids("tests/test_ok.py", 2);
  h.script.list_errors["py"] = {"tests/test_bad.py: ImportError: No module named 'nope'"};
  h.sources = {{"pytest", "", {{"key", "py"}, {"cwd", "/work/project"}}}};
  EXPECT_EQ(h.run({"popen"}), kExitInterrupted);
  EXPECT_THAT(h.out.str(), HasSubstr("ERROR collecting"));
  EXPECT_THAT(h.out.str(), HasSubstr("tests/test_bad.py: ImportError: No module named 'nope'"));
  EXPECT_TRUE(h.script.sent_of(MsgKind::run).empty());
}

// As pytest --continue-on-collection-errors (and the end-to-end test
// Frameworks.ContinueOnCollectionErrorsRunsTheRest): the listed tests run,
// and the error still fails the run.
TEST(Session, ContinueOnCollectionErrorsRunsTheListingAndStillFails) {
  Harness h;
  h.script.binaries["py"] = node_ids("tests/test_ok.py", 2);
  h.script.list_errors["py"] = {"tests/test_bad.py: ImportError: No module named 'nope'"};
  h.sources = {{"pytest", "", {{"key", "py"}, {"cwd", "/work/project"}}}};
  h.continue_on_collection_errors = true;
  const int code = h.run({"popen"});
  const auto o = h.outcomes();
  EXPECT_EQ(o, (std::map<std::string, Outcome>{{"tests/test_ok.py::test_0", Outcome::passed},
                                               {"tests/test_ok.py::test_1", Outcome::passed}}));
  EXPECT_THAT(h.out.str(), HasSubstr("tests/test_bad.py: ImportError"));
  EXPECT_EQ(code, kExitTestsFailed);
}

TEST(Session, LoadgroupKeepsAnXdistGroupOnOneWorker) {
  Harness h;
  h.script.binaries["py"] = node_ids("tests/test_g.py", 24);
  for (int i = 0; i < 6; ++i) h.script.groups["py"].emplace_back(i, "db");
  for (int i = 6; i < 12; ++i) h.script.groups["py"].emplace_back(i, "net");
  h.sources = {{"pytest", "", {{"key", "py"}, {"cwd", "/work/project"}}}};
  // Both workers are in the run before it starts.
  h.script.release = [&s = h.script](const std::string&, const std::string& label) {
    return label != "collected 1" || (s.has("gw0 << hello") && s.has("gw1 << hello"));
  };
  EXPECT_EQ(h.run({"2*popen"}, "loadgroup"), kExitOk);
  const auto& u = h.session->units().at(0);
  ASSERT_EQ(u.tests.size(), 24u);
  for (std::size_t i = 0; i < u.tests.size(); ++i)
    EXPECT_EQ(u.tests[i].group, i < 6 ? "db" : i < 12 ? "net" : "") << u.tests[i].name;
  std::map<std::string, std::set<std::string>> workers_of;  // group -> workers
  std::multiset<std::string> ran;
  for (const auto& e : h.run_log) {
    const std::string gw = e.substr(0, e.find(':'));
    const std::string name = e.substr(e.find(':') + 1);
    ran.insert(name);
    const int n = std::stoi(name.substr(name.rfind('_') + 1));
    if (n < 12) workers_of[n < 6 ? "db" : "net"].insert(gw);
  }
  EXPECT_EQ(ran.size(), 24u);
  for (const auto& n : ran) EXPECT_EQ(ran.count(n), 1u) << n;
  ASSERT_EQ(workers_of.size(), 2u);
  for (const auto& [group, workers] : workers_of) EXPECT_EQ(workers.size(), 1u) << group;
}

// Two gateways, one pytest source: the one that collects gets `collect`,
// the other (up while the collection runs) `warm` with the pytest sources.
struct WarmRun {
  Harness h;
  nlohmann::json py = {{"key", "py"}, {"cwd", "/work/project"}, {"args", {"-q"}}};
  std::string collector, other;

  int run(nlohmann::json caps, bool with_pytest = true) {
    h.script.binaries["bin/a"] = passing("A", 4);
    h.script.binaries["py"] = node_ids("tests/test_w.py", 6);
    h.script.binaries["ct"] = {{"ct_one", Outcome::passed}};
    h.script.caps = std::move(caps);
    h.sources = {{"gtest", "bin/a"}, {"ctest", "ctest", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
    if (with_pytest) h.sources.push_back({"pytest", "", py});
    // Both hellos are in before the collection is.
    h.script.release = [&s = h.script](const std::string&, const std::string& label) {
      return label != "collected 1" || (s.has("gw0 << hello") && s.has("gw1 << hello"));
    };
    const int code = h.run({"2*popen"});
    const auto collects = h.script.sent_of(MsgKind::collect);
    EXPECT_EQ(collects.size(), 1u);
    if (collects.empty()) return code;
    collector = collects[0].gw;
    other = collector == "gw0" ? "gw1" : "gw0";
    // The other gateway was ready while the collection ran.
    EXPECT_LT(h.script.first(other + " << hello"), h.script.first(collector + " < collected"));
    return code;
  }
};

TEST(Session, WarmStartsThePytestWorkersOfTheGatewayThatDoesNotCollect) {
  WarmRun w;
  EXPECT_EQ(w.run({"gtest", "zstd", "pytest", "warm"}), kExitOk);
  ASSERT_FALSE(w.collector.empty());
  const auto warms = w.h.script.sent_of(MsgKind::warm);
  ASSERT_EQ(warms.size(), 1u);
  EXPECT_EQ(warms[0].gw, w.other);
  EXPECT_EQ(warms[0].body.at("sources"), nlohmann::json::array({with_kind(w.py, "pytest")}));
  EXPECT_EQ(warms[0].body.at("env"), (nlohmann::json{{"DTEST_WORKER", w.other},
                                                      {"DTEST_WORKER_COUNT", "2"},
                                                      {"DTEST_TESTRUNUID", "uid"}}));
  // Before any batch went out.
  const std::size_t warm_at = w.h.script.first(w.other + " > warm");
  for (std::size_t i = 0; i < w.h.script.timeline.size(); ++i)
    if (w.h.script.timeline[i].find(" > run ") != std::string::npos) {
      EXPECT_LT(warm_at, i);
      break;
    }
  EXPECT_EQ(w.h.outcomes().size(), 11u);
}

TEST(Session, NoWarmWithoutTheCapability) {
  WarmRun w;
  EXPECT_EQ(w.run({"gtest", "zstd", "pytest"}), kExitOk);
  EXPECT_FALSE(w.collector.empty());
  EXPECT_TRUE(w.h.script.sent_of(MsgKind::warm).empty());
}

TEST(Session, NoWarmWithoutPytestSources) {
  WarmRun w;
  EXPECT_EQ(w.run({"gtest", "zstd", "pytest", "warm"}, false), kExitOk);
  EXPECT_FALSE(w.collector.empty());
  EXPECT_TRUE(w.h.script.sent_of(MsgKind::warm).empty());
}

std::vector<Script::Sent> execs(const Harness& h, std::int64_t id) {
  std::vector<Script::Sent> v;
  for (const auto& e : h.script.sent_of(MsgKind::exec))
    if (e.body.at("id") == id) v.push_back(e);
  return v;
}

TEST(Session, SetupHostOncePerPlaceThenSetupWorkerOnEveryGatewayBeforeItGetsTests) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.setup_host = "make fixtures";
  h.setup_worker = "prepare-db $DTEST_WORKER";
  h.script.release_within_ms = [](const std::string&, const std::string& label) {
    return label == "exec_done 2" ? 50 : 10000;
  };
  h.script.release = [&s = h.script](const std::string& gw, const std::string& label) {
    // setup.host answers once every gateway is waiting for it; a
    // setup.worker answer lingers while nothing else is sent to its gateway
    // (a session that does not wait for it shows); the collection is in once
    // every worker's hook is.
    if (label == "exec_done 1") return s.has("gw0 << hello") && s.has("gw1 << hello") && s.has("gw2 << hello");
    if (label == "exec_done 2") return s.sent_to_after(gw, s.at(gw + " > exec 2"));
    if (label == "collected 1")
      return s.has("gw0 << exec_done 2") && s.has("gw1 << exec_done 2") && s.has("gw2 << exec_done 2");
    return true;
  };
  EXPECT_EQ(h.run({"3*popen"}), kExitOk);
  const auto host = execs(h, 1);
  ASSERT_EQ(host.size(), 1u);
  EXPECT_EQ(host[0].body.at("command"), "make fixtures");
  EXPECT_EQ(host[0].body.at("cwd"), "/work/project");
  EXPECT_FALSE(host[0].body.at("env").contains("DTEST_WORKER"));
  EXPECT_EQ(host[0].body.at("env").at("DTEST_WORKER_COUNT"), "3");
  std::map<std::string, int> worker;
  for (const auto& e : execs(h, 2)) {
    ++worker[e.gw];
    EXPECT_EQ(e.body.at("command"), "prepare-db $DTEST_WORKER");
    EXPECT_EQ(e.body.at("env").at("DTEST_WORKER"), e.gw);
  }
  EXPECT_EQ(worker, (std::map<std::string, int>{{"gw0", 1}, {"gw1", 1}, {"gw2", 1}}));
  const auto& s = h.script;
  const std::size_t host_done = s.first(host[0].gw + " < exec_done 1");
  ASSERT_NE(host_done, std::string::npos);
  for (const auto& gw : gateway_ids(3)) {
    const std::size_t answered = s.first(gw + " < exec_done 2");
    ASSERT_NE(answered, std::string::npos) << gw;
    EXPECT_LT(host_done, s.first(gw + " > exec 2")) << gw;
    EXPECT_LT(answered, s.first(gw + " > collect")) << gw;
    EXPECT_LT(answered, s.first(gw + " > run")) << gw;
  }
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 30u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  EXPECT_THAT(h.out.str(), HasSubstr("setup.host passed"));
}

TEST(Session, AFailingSetupWorkerTakesOutOnlyItsGateway) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.setup_worker = "prepare-db";
  h.script.exec_fails["gw1"] = {2};
  h.script.release = [&s = h.script](const std::string&, const std::string& label) {
    return label != "collected 1" ||
           (s.has("gw0 << exec_done 2") && s.has("gw1 << exec_done 2") && s.has("gw2 << exec_done 2"));
  };
  EXPECT_EQ(h.run({"3*popen"}), kExitOk);
  const std::string err = h.gateway("gw1").error;
  EXPECT_THAT(err, HasSubstr("setup.worker failed (exit status 1)"));
  EXPECT_THAT(err, HasSubstr("`prepare-db`"));
  EXPECT_THAT(err, HasSubstr("hook output on gw1"));
  EXPECT_EQ(h.gateway("gw0").error, "");
  EXPECT_EQ(h.gateway("gw2").error, "");
  EXPECT_THAT(h.out.str(), HasSubstr("[gw1] gateway failed"));
  for (const auto& m : h.script.sent)
    if (m.gw == "gw1") {
      EXPECT_EQ(m.kind, MsgKind::exec) << "gw1 got " << to_string(m.kind);
    }
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 30u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  std::multiset<std::string> ran;
  for (const auto& e : h.run_log) {
    EXPECT_NE(e.substr(0, 4), "gw1:");
    ran.insert(e.substr(e.find(':') + 1));
  }
  EXPECT_EQ(ran.size(), 30u);
  for (const auto& n : ran) EXPECT_EQ(ran.count(n), 1u) << n;
}

TEST(Session, AFailingSetupHostTakesOutItsPlaceAndTheOtherPlaceRunsEverything) {
  Harness h;
  h.script.binaries["a"] = passing("A", 30);
  h.setup_host = "make fixtures";
  h.setup_worker = "prepare-db";
  // Two places: here (gw0, gw1) and popen//chdir=/tmp/x (gw2, gw3).
  h.script.exec_fails["2*popen//chdir=/tmp/x"] = {1};
  h.script.release = [&s = h.script](const std::string&, const std::string& label) {
    // The collection is in once the failed place knows it failed, and the
    // other place's gateways are both ready.
    if (label != "collected 1") return true;
    return s.has("gw0 << exec_done 2") && s.has("gw1 << exec_done 2") && s.has("gw2 << hello") &&
           s.has("gw3 << hello") &&
           (s.has("gw2 << exec_done 1") || s.has("gw3 << exec_done 1"));
  };
  EXPECT_EQ(h.run({"2*popen", "2*popen//chdir=/tmp/x"}), kExitOk);
  std::map<std::string, int> host;
  for (const auto& e : execs(h, 1)) ++host[e.gw == "gw0" || e.gw == "gw1" ? "here" : "chdir"];
  EXPECT_EQ(host, (std::map<std::string, int>{{"chdir", 1}, {"here", 1}}));
  for (const std::string gw : {"gw2", "gw3"}) {
    const std::string err = h.gateway(gw).error;
    EXPECT_THAT(err, HasSubstr("setup.host failed (exit status 1) on popen=//chdir=/tmp/x: `make fixtures`")) << gw;
    EXPECT_THAT(err, HasSubstr("hook output on gw")) << gw;
    EXPECT_THAT(h.out.str(), HasSubstr("[" + gw + "] gateway failed"));
    for (const auto& m : h.script.sent)
      if (m.gw == gw) {
        EXPECT_TRUE(m.kind == MsgKind::exec && m.body.at("id") == 1) << gw << " got " << to_string(m.kind);
      }
  }
  std::map<std::string, int> worker;
  for (const auto& e : execs(h, 2)) ++worker[e.gw];
  EXPECT_EQ(worker, (std::map<std::string, int>{{"gw0", 1}, {"gw1", 1}}));
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 30u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  for (const auto& e : h.run_log) EXPECT_TRUE(e.rfind("gw0:", 0) == 0 || e.rfind("gw1:", 0) == 0) << e;
  EXPECT_EQ(h.run_log.size(), 30u);
}

TEST(Session, SetupHostMovesToAnotherGatewayOfThePlaceWhenItsRunnerDies) {
  Harness h;
  h.script.binaries["a"] = passing("A", 20);
  h.setup_host = "make fixtures";
  h.script.die_at_first_host_exec = true;
  // The link drops once the other two wait for the hook.
  h.script.release = [&s = h.script](const std::string&, const std::string& label) {
    return label != "EOF" || (s.has("gw0 << hello") && s.has("gw1 << hello") && s.has("gw2 << hello"));
  };
  EXPECT_EQ(h.run({"3*popen"}), kExitOk);
  const auto host = execs(h, 1);
  ASSERT_EQ(host.size(), 2u);
  const std::string died = host[0].gw, took_over = host[1].gw;
  EXPECT_NE(died, took_over);
  EXPECT_THAT(h.gateway(died).error, HasSubstr("the agent closed the connection"));
  EXPECT_EQ(h.gateway(took_over).error, "");
  EXPECT_THAT(h.out.str(), HasSubstr("[" + died + "] gateway failed"));
  // Handed over when the link dropped, not on a hello.
  EXPECT_LT(h.script.first(died + " < EOF"), h.script.first(took_over + " > exec 1"));
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 20u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  for (const auto& e : h.run_log) EXPECT_NE(e.substr(0, 4), died + ":");
  EXPECT_EQ(h.run_log.size(), 20u);
}

// Each run message of a finished run: its gateway, its tests, and where in
// the timeline it went out and its batch_done came back.
struct Run {
  std::string gw;
  std::vector<std::string> tests;
  std::size_t sent, done;
  // Whether the two were in flight at one time.
  bool overlaps(const Run& o) const { return sent < o.done && o.sent < done; }
};

std::vector<Run> runs_of(const Script& s) {
  std::vector<Run> runs;
  for (const auto& m : s.sent_of(MsgKind::run)) {
    const std::string batch = m.body.at("batch").dump();
    runs.push_back({m.gw, m.body.at("tests").get<std::vector<std::string>>(), s.at(m.gw + " > run " + batch),
                    s.at(m.gw + " < batch_done " + batch)});
  }
  return runs;
}

// Both workers are in before the run starts; a batch_done waits (a little)
// for another batch to go out, so batches that may overlap do.
void overlap_batches(Script& script) {
  script.release_within_ms = [](const std::string&, const std::string& label) {
    return label.rfind("batch_done", 0) == 0 ? 100 : 10000;
  };
  script.release = [&s = script](const std::string& gw, const std::string& label) {
    if (label == "collected 1") {
      std::set<std::string> hellos;
      for (const auto& e : s.timeline)
        if (e.size() > 9 && e.compare(e.size() - 9, 9, " << hello") == 0) hellos.insert(e);
      return static_cast<int>(hellos.size()) >= s.start_together;
    }
    if (label.rfind("batch_done ", 0) == 0) {
      const std::size_t sent = s.at(gw + " > run " + label.substr(11));
      for (std::size_t i = sent + 1; i < s.timeline.size(); ++i)
        if (s.timeline[i].find(" > run ") != std::string::npos) return true;
      return false;
    }
    return true;
  };
}

// Every test of the run reached exactly once.
void expect_each_reached_once(const Script& s, std::size_t n) {
  std::multiset<std::string> names;
  for (const auto& r : s.reached) names.insert(r.substr(r.find(':') + 1));
  EXPECT_EQ(names.size(), n);
  for (const auto& name : names) EXPECT_EQ(names.count(name), 1u) << name;
}

TEST(Session, SerialTestsRunAloneOneAtATimeOnceTheRestIsDone) {
  Harness h;
  std::vector<std::pair<std::string, Outcome>> tests;
  for (int i = 0; i < 16; ++i) tests.emplace_back(fmt::format("t{:02}", i), Outcome::passed);
  h.script.binaries["ct"] = tests;
  h.script.serial["ct"] = {1, 6, 11, 14};
  const std::set<std::string> serial = {"t01", "t06", "t11", "t14"};
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  h.script.start_together = 2;
  overlap_batches(h.script);
  EXPECT_EQ(h.run({"2*popen"}), kExitOk);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 16u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  expect_each_reached_once(h.script, 16);
  const auto runs = runs_of(h.script);
  int serial_runs = 0;
  std::size_t last_normal = 0;
  for (const auto& r : runs) {
    const bool has_serial = std::any_of(r.tests.begin(), r.tests.end(), [&](const auto& t) { return serial.count(t) > 0; });
    if (!has_serial) {
      last_normal = std::max(last_normal, r.sent);
      continue;
    }
    ++serial_runs;
    EXPECT_EQ(r.tests.size(), 1u) << r.tests.front();
    // No other batch in flight when it went out, none sent while it ran.
    for (const auto& other : runs) {
      if (&other == &r) continue;
      if (other.sent < r.sent) {
        EXPECT_LT(other.done, r.sent) << r.tests.front() << " went out while " << other.tests.front() << " ran";
      } else {
        EXPECT_GT(other.sent, r.done) << other.tests.front() << " went out while " << r.tests.front() << " ran";
      }
    }
  }
  EXPECT_EQ(serial_runs, 4);
  for (const auto& r : runs)
    if (r.tests.size() == 1 && serial.count(r.tests.front())) {
      EXPECT_GT(r.sent, last_normal) << r.tests.front();
    }
}

// A serial test whose process ends before reaching it is charged an attempt
// like any other: not run after three, saying why.
TEST(Session, ASerialTestNeverReachedIsNotRunAfterThreeAttemptsWithTheReason) {
  Harness h;
  h.script.binaries["ct"] = {{"t0", Outcome::passed}, {"t1", Outcome::passed}, {"t2", Outcome::passed}};
  h.script.serial["ct"] = {1};
  h.script.never_reached = {"t1"};
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  EXPECT_EQ(h.run({"popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.at("t0"), Outcome::passed);
  EXPECT_EQ(o.at("t2"), Outcome::passed);
  EXPECT_EQ(o.at("t1"), Outcome::not_run);
  const auto& u = h.session->units().at(0);
  EXPECT_THAT(u.results.at(1)->message, HasSubstr("ended before reaching it 3 times"));
  int attempts = 0;
  for (const auto& b : h.script.batches) attempts += std::count(b.begin(), b.end(), "t1");
  EXPECT_EQ(attempts, 3);
}

// PROCESSORS: a heavy test holds idle min(weight, its host's workers) - 1
// other workers of its own host while it runs, and the heavy tests go out
// before the rest.
TEST(Session, HeavyTestsHoldWorkersOfTheirOwnHostWhileTheyRun) {
  Harness h;
  std::vector<std::pair<std::string, Outcome>> tests;
  for (int i = 0; i < 14; ++i) tests.emplace_back(fmt::format("t{:02}", i), Outcome::passed);
  h.script.binaries["ct"] = tests;
  // t07 wants more workers than a host has: it takes both of its host's.
  h.script.weights["ct"] = {{2, 2}, {7, 3}, {9, 2}};
  const std::set<std::string> heavy = {"t02", "t07", "t09"};
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  h.script.start_together = 4;
  overlap_batches(h.script);
  EXPECT_EQ(h.run({"2*popen", "2*ssh=u@box"}), kExitOk);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 14u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  expect_each_reached_once(h.script, 14);
  const auto host = [](const std::string& gw) { return gw == "gw0" || gw == "gw1" ? "popen" : "box"; };
  const auto runs = runs_of(h.script);
  std::size_t first_light = std::string::npos, last_heavy = 0;
  int heavy_runs = 0, light_beside_heavy = 0;
  for (const auto& r : runs) {
    if (!heavy.count(r.tests.front())) {
      first_light = std::min(first_light, r.sent);
      continue;
    }
    ++heavy_runs;
    last_heavy = std::max(last_heavy, r.sent);
    ASSERT_EQ(r.tests.size(), 1u) << r.tests.front();
    for (const auto& other : runs) {
      if (&other == &r || !other.overlaps(r)) continue;
      EXPECT_NE(host(other.gw), host(r.gw)) << other.tests.front() << " on " << other.gw << " ran beside "
                                            << r.tests.front() << " on " << r.gw;
      ++light_beside_heavy;
    }
  }
  EXPECT_EQ(heavy_runs, 3);
  EXPECT_LT(last_heavy, first_light);
  // The other host was not held: work ran there meanwhile.
  EXPECT_GT(light_beside_heavy, 0);
}

// The gateway running a heavy test is lost: the test runs again elsewhere,
// holding workers as before, and those it held the first time are free.
TEST(Session, AHeavyTestWhoseGatewayIsLostRunsAgainElsewhere) {
  Harness h;
  h.script.binaries["ct"] = {{"t0", Outcome::passed}, {"t1", Outcome::passed}, {"t2", Outcome::passed},
                             {"t3", Outcome::passed}, {"t4", Outcome::passed}, {"t5", Outcome::passed}};
  h.script.weights["ct"] = {{0, 2}};
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  h.script.start_together = 3;
  overlap_batches(h.script);
  h.script.die_after_runs["gw0"] = 1;
  EXPECT_EQ(h.run({"3*popen"}), kExitOk);
  const auto o = h.outcomes();
  EXPECT_EQ(o.size(), 6u);
  for (const auto& [name, outcome] : o) EXPECT_EQ(outcome, Outcome::passed) << name;
  EXPECT_THAT(h.out.str(), HasSubstr("[gw0] gateway lost"));
  expect_each_reached_once(h.script, 6);
  const auto runs = runs_of(h.script);
  // gw0 took it first (the first ready slot), holding another; it ran on
  // one of the two left, the other held idle meanwhile.
  ASSERT_FALSE(runs.empty());
  EXPECT_EQ(runs.front().gw, "gw0");
  EXPECT_EQ(runs.front().tests, std::vector<std::string>{"t0"});
  int ran = 0;
  for (const auto& r : runs) {
    if (r.tests.front() != "t0" || r.gw == "gw0") continue;
    ++ran;
    for (const auto& other : runs) {
      if (&other == &r || other.gw == "gw0") continue;
      EXPECT_FALSE(other.overlaps(r)) << other.tests.front();
    }
  }
  EXPECT_EQ(ran, 1);
}

// Under --retries a heavy test's retry is a heavy test too; one its process
// never reaches is charged attempts like a serial test.
TEST(Session, HeavyTestsAreRetriedAsHeavyAndNotRunAfterThreeUnreachedAttempts) {
  Harness h;
  h.script.binaries["ct"] = {{"t0", Outcome::passed}, {"t1", Outcome::failed}, {"t2", Outcome::passed},
                             {"t3", Outcome::passed}, {"t4", Outcome::passed}};
  h.script.weights["ct"] = {{1, 2}, {3, 2}};
  h.script.never_reached = {"t3"};
  h.retries = 1;
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  h.script.start_together = 2;
  overlap_batches(h.script);
  EXPECT_EQ(h.run({"2*popen"}), kExitTestsFailed);
  const auto o = h.outcomes();
  EXPECT_EQ(o.at("t1"), Outcome::failed);
  EXPECT_EQ(o.at("t3"), Outcome::not_run);
  for (const char* t : {"t0", "t2", "t4"}) EXPECT_EQ(o.at(t), Outcome::passed) << t;
  EXPECT_THAT(h.session->units().at(0).results.at(3)->message, HasSubstr("ended before reaching it 3 times"));
  const auto runs = runs_of(h.script);
  int t1_runs = 0, t3_runs = 0;
  for (const auto& r : runs) {
    const bool heavy = r.tests.front() == "t1" || r.tests.front() == "t3";
    if (!heavy) continue;
    (r.tests.front() == "t1" ? t1_runs : t3_runs) += 1;
    ASSERT_EQ(r.tests.size(), 1u);
    for (const auto& other : runs) {
      if (&other == &r) continue;
      EXPECT_FALSE(other.overlaps(r)) << other.tests.front() << " beside " << r.tests.front();
    }
  }
  EXPECT_EQ(t1_runs, 2);
  EXPECT_EQ(t3_runs, 3);
}

TEST(Session, AWeightOutOfRangeIsAProtocolErrorNamingTheField) {
  Harness h;
  h.script.binaries["ct"] = {{"t0", Outcome::passed}};
  h.script.weights["ct"] = {{0, 0}};
  h.sources = {{"ctest", "", {{"key", "ct"}, {"build_dir", "/work/project/build"}}}};
  EXPECT_NE(h.run({"popen"}), kExitOk);
  EXPECT_THAT(h.gateway("gw0").error, HasSubstr("'weights'"));
}

}  // namespace
}  // namespace dtest
