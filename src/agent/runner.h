// Batches of the suite kinds other than GoogleTest (pytest, CTest,
// command). GoogleTest batches stay on the agent's own tuned path (one
// process, its output parsed as it streams); these run behind one small
// interface that the agent's poll loop drives without blocking.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/subprocess.h"
#include "common/outcome.h"

namespace dtest {

using RunClock = std::chrono::steady_clock;

// One test's result, by its index in the batch's `tests`.
struct TestReport {
  std::uint32_t index = 0;
  Outcome outcome = Outcome::passed;
  double seconds = 0;
  std::string output;
  std::string message;
};

class Runner {
 public:
  virtual ~Runner() = default;
  // Descriptors the agent should wake up for.
  virtual void fds(std::vector<int>& out) const = 0;
  // Reads what is there, reaps what ended, starts what is next and enforces
  // time limits; never blocks. Finished tests go to `out`.
  virtual void step(std::vector<TestReport>& out) = 0;
  virtual bool done() const = 0;
  // When step() must run again at the latest (a test's time limit).
  virtual std::optional<RunClock::time_point> deadline() const = 0;
  // The batch_done body without `batch`: status, exit_code, unrun, crashed,
  // timed_out, seconds, startup, outside_output (docs/protocol.md).
  virtual nlohmann::json summary() = 0;
  // Shutdown: kill whatever runs, now.
  virtual void kill() = 0;
};

// "timed out after 2 s".
std::string timeout_text(double seconds);

// Output kept per process: the head and the tail, with a note between.
std::string cap_output(std::string s, std::size_t head = 256 << 10, std::size_t tail = 768 << 10);

// A batch run as a sequence of processes, one after another (CTest: one
// per test; command suites: one per test or per chunk of ids). Each job
// reports the tests it covers when its process ends.
struct Job {
  SpawnOptions spawn;
  std::vector<std::uint32_t> tests;  // batch indices this process reports
  double timeout = 0;                // seconds for the whole process; 0: none
  // Turns the ended process into exactly one report per test of the job.
  // `error`: the process could not be started (status is then 0).
  std::function<void(const Job& job, int status, const std::string& output, bool timed_out, double seconds,
                     const std::string& error, std::vector<TestReport>& out)>
      judge;
  std::function<void()> cleanup;  // after the job (temp files)
  // Nothing to start (the test has no command): judge() is called at once
  // with status 0 and no output.
  bool no_process = false;
};

class SequentialRunner : public Runner {
 public:
  explicit SequentialRunner(std::vector<Job> jobs);
  ~SequentialRunner() override;
  void fds(std::vector<int>& out) const override;
  void step(std::vector<TestReport>& out) override;
  bool done() const override { return next_ >= jobs_.size() && !running_; }
  std::optional<RunClock::time_point> deadline() const override;
  nlohmann::json summary() override;
  void kill() override;

 private:
  void start_next(std::vector<TestReport>& out);
  void drain();
  std::vector<Job> jobs_;
  std::size_t next_ = 0;  // the next job to start (the running one is next_ - 1)
  bool running_ = false;
  bool killed_ = false;
  bool timed_out_ = false;
  Child child_;
  std::string output_;
  RunClock::time_point job_started_, spawned_;
  std::vector<std::uint32_t> done_;
};

}  // namespace dtest
