// Session tests against fake gateways: an in-process fake agent answers the
// protocol from a script, so scheduling, requeueing and reporting are tested
// without processes.
#include "master/session.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/message.h"

namespace dtest {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct Script {
  std::map<std::string, std::vector<std::pair<std::string, Outcome>>> binaries;
  std::map<std::string, std::string> collect_errors;  // binary -> error
  std::set<std::string> crash;                        // the process dies in these
  std::set<std::string> time_out;                     // the agent kills the process in these
  std::set<std::string> never_reached;                // the process exits before these
  std::map<std::string, int> die_after_runs;          // gateway id -> lose link at this RUN
  std::set<std::string> garbage;                      // gateway ids that send garbage
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
  // What the fakes saw (under start_mu): each run message's tests and its
  // `timeout` field, and the tests a fake reached (ran), as "gw0:Name".
  mutable std::vector<std::vector<std::string>> batches;
  mutable std::vector<std::optional<double>> run_timeouts;
  mutable std::vector<std::string> reached;
};

class FakeGateway final : public gateway::Gateway {
 public:
  FakeGateway(const Script& script, std::string id, std::vector<std::string>* run_log, std::mutex* log_mu)
      : script_(script), id_(std::move(id)), run_log_(run_log), log_mu_(log_mu) {
    if (script_.garbage_at_open.count(id_))
      throw ProtocolError("bad frame magic at byte 0 (expected 0xD7): 'xx'");
    if (script_.start_together > 0) {
      std::unique_lock lock(script_.start_mu);
      ++script_.started;
      script_.start_cv.notify_all();
      script_.start_cv.wait(lock, [&] { return script_.started >= script_.start_together; });
    }
    push(MsgKind::hello, {{"proto", kProtocolVersion}, {"agent_version", "fake"}, {"os", "linux"},
                          {"arch", "x86_64"}, {"cpus", 1}, {"hostname", "fake"}, {"pid", 1}});
  }

  void send(const Frame& f) override {
    if (dead_) throw gateway::GatewayError("fake gateway " + id_ + ": link is down");
    const Message m = decode_message(f);
    switch (m.kind) {
      case MsgKind::collect: {
        nlohmann::json bins = nlohmann::json::array();
        for (const auto& p : m.body["suite"]["binaries"]) {
          const std::string path = p.get<std::string>();
          if (auto e = script_.collect_errors.find(path); e != script_.collect_errors.end()) {
            bins.push_back({{"path", path}, {"error", e->second}});
            continue;
          }
          std::string names;
          nlohmann::json disabled = nlohmann::json::array();
          const auto& tests = script_.binaries.at(path);
          for (std::size_t i = 0; i < tests.size(); ++i) {
            names += (i ? "\n" : "") + tests[i].first;
            if (tests[i].first.find("DISABLED_") != std::string::npos) disabled.push_back(i);
          }
          bins.push_back({{"path", path}, {"count", tests.size()}, {"names", names}, {"disabled", disabled}});
        }
        push(MsgKind::collected, {{"id", m.body["id"]}, {"binaries", bins}});
        return;
      }
      case MsgKind::run: run(m); return;
      case MsgKind::shutdown: close(); return;
      default: FAIL() << "unexpected message to the agent";
    }
  }

  std::optional<Frame> receive() override {
    std::unique_lock lock(mu_);
    if (script_.garbage.count(id_)) throw ProtocolError("bad frame magic at byte 0 (expected 0xD7): 'xx'");
    cv_.wait(lock, [&] { return !q_.empty(); });
    auto f = std::move(q_.front());
    q_.pop_front();
    lock.unlock();
    const bool result = f && (f->kind == static_cast<std::uint8_t>(MsgKind::events) ||
                              f->kind == static_cast<std::uint8_t>(MsgKind::batch_done));
    if (result && !script_.hold_until_dead.empty() && id_ != script_.hold_until_dead) {
      std::unique_lock hold(script_.start_mu);
      script_.start_cv.wait_for(hold, std::chrono::seconds(10),
                                [&] { return script_.dead.count(script_.hold_until_dead) > 0; });
    }
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
    const std::string binary = m.body["binary"];
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
    for (const auto& [name, o] : script_.binaries.at(binary)) outcome[name] = o;
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
  std::vector<std::string>* run_log_;
  std::mutex* log_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::optional<Frame>> q_;
  std::atomic<bool> dead_{false};
  std::atomic<bool> closed_{false};
  int runs_ = 0;
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

  int run(const std::vector<std::string>& specs, const std::string& dist = "load") {
    RunOptions o;
    for (const auto& s : specs) o.specs.push_back(xspec::parse(s));
    for (const auto& [path, tests] : script.binaries) {
      o.binaries.push_back(path);
      o.binary_paths.push_back(path);
    }
    for (const auto& [path, err] : script.collect_errors)
      if (!script.binaries.count(path)) {
        o.binaries.push_back(path);
        o.binary_paths.push_back(path);
      }
    o.dist = dist;
    o.verbosity = 1;
    o.testrunuid = "uid";
    o.timeout = timeout;
    o.maxfail = maxfail;
    o.maxfail_option = maxfail_option;
    o.retries = retries;
    o.count = count;
    session = std::make_unique<Session>(
        o,
        [this](const xspec::Spec&, const std::string& id) {
          return std::make_unique<FakeGateway>(script, id, &run_log, &log_mu);
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
  std::map<std::string, int> runs;
  for (const auto& e : h.run_log) ++runs[e.substr(e.find(':') + 1)];
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

}  // namespace
}  // namespace dtest
