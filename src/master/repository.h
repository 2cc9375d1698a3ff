// The run repository: `<rootdir>/.dtest/repo.sqlite`, an SQLite database of
// every run, every test's outcome, duration, worker and gateway, and a
// per-test duration estimate (a running average). It feeds `dtest last`,
// `dtest failing`, `--lf`, `--ff`, `dtest slowest` and `dtest history`, and
// the scheduler's longest-first ordering.
//
// Concurrency: the database is in WAL mode with a busy timeout, and each run
// is written in one IMMEDIATE transaction, so two dtest processes sharing a
// rootdir neither corrupt it nor fail (one waits for the other's commit).
// A Repository object is one SQLite connection: use it from one thread at a
// time; open one per thread or process.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/outcome.h"

struct sqlite3;

namespace dtest {

// A repository that cannot be opened, read or written: the message names the
// file ("/x/.dtest/repo.sqlite: file is not a database; ...").
class RepositoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using WallClock = std::chrono::system_clock;

// One test's result as recorded. Under --dist each a test id appears once per
// gateway in the same run.
struct TestRow {
  std::string test_id;  // TestCase::id(): "binary::Suite.Name"
  Outcome outcome = Outcome::not_run;
  double duration = 0;  // seconds
  std::string worker;   // gw0
  std::string gateway;  // the gateway's spec, "popen"
  std::string message;  // short reason, TestResult::message
};

// What the session hands over at the end of a run.
struct RunRecord {
  WallClock::time_point started_at{};
  WallClock::time_point finished_at{};
  std::vector<std::string> args;  // the command line, stored as a JSON array
  int exit_code = 0;
  // Identifies "the same code" (e.g. code_id_for_files() over the test
  // binaries). A test is flaky when it both passed and failed in runs with the
  // same non-empty code_id. Empty: unknown, never compared.
  std::string code_id;
  std::vector<TestRow> rows;  // in the order the results arrived
};

struct RunSummary {
  std::int64_t id = 0;
  WallClock::time_point started_at{};
  WallClock::time_point finished_at{};
  std::vector<std::string> args;
  int exit_code = 0;
  std::string code_id;
  std::string rootdir;
  std::string dtest_version;  // of the dtest that recorded it
  std::vector<TestRow> rows;  // in recorded order
};

struct HistoryRow {
  std::int64_t run_id = 0;
  WallClock::time_point started_at{};
  std::string code_id;
  TestRow row;
};

struct History {
  std::string test_id;
  std::vector<HistoryRow> rows;  // the newest `limit` runs' rows, oldest first
  std::size_t total_runs = 0;    // runs with this test in the whole repository
  // Passed and failed (failed/crashed/timeout) in runs sharing a code_id,
  // anywhere in the repository (not only within `rows`).
  bool flaky = false;
  std::optional<double> estimate;  // running average duration, seconds
  std::int64_t estimate_samples = 0;
};

// How many samples the running average weighs at most: beyond it each new
// duration counts 1/(kEstimateWindow+1), so the estimate follows a test that
// got slower or faster (CTest keeps its cost data the same way).
inline constexpr std::int64_t kEstimateWindow = 10;

// The running average after one more sample: (mean*n + d)/(n+1) with n the
// sample count capped at kEstimateWindow.
double running_mean(double mean, std::int64_t samples, double duration);

// Outcomes whose duration feeds the estimate: the test ran to its end
// (passed, failed, xfailed). A crash or timeout cuts it short; skipped and
// not-run tests did not run.
bool updates_estimate(Outcome o);

// Outcomes that `failing()`, `--lf` and flakiness count as a failure:
// failed, crashed, timeout (not_run is not a verdict on the test).
bool is_recorded_failure(Outcome o);

class Repository {
 public:
  // The repository's file under a rootdir: <rootdir>/.dtest/repo.sqlite.
  static std::string path_for(const std::string& rootdir);

  // Opens the repository, creating .dtest/ (with a `*` .gitignore) and the
  // schema when missing. Throws RepositoryError on an unreadable or corrupt
  // file, a file that is not a dtest repository, or a newer schema.
  explicit Repository(const std::string& rootdir);

  // For the read-only subcommands: std::nullopt when no repository exists
  // (nothing is created then). Throws like the constructor otherwise.
  static std::optional<Repository> open_existing(const std::string& rootdir);

  Repository(Repository&&) noexcept;
  Repository& operator=(Repository&&) noexcept;
  Repository(const Repository&) = delete;
  Repository& operator=(const Repository&) = delete;
  ~Repository();

  const std::string& path() const { return path_; }

  // Writes the run, its rows and the estimates in one transaction; returns the
  // run's id (increasing: the last recorded run has the largest id).
  std::int64_t record_run(const RunRecord& run);

  // The most recently recorded run, or std::nullopt when there is none.
  std::optional<RunSummary> last_run();
  std::optional<RunSummary> run(std::int64_t id);
  std::size_t run_count();

  // Test ids that failed, crashed or timed out in the last run, each once, in
  // the order their first such result arrived.
  std::vector<std::string> failing();

  // Duration estimates (seconds) for tests that have one.
  std::unordered_map<std::string, double> estimates();
  std::unordered_map<std::string, double> estimates(const std::vector<std::string>& ids);

  // The n tests with the largest estimates, largest first (ties by id).
  std::vector<std::pair<std::string, double>> slowest(std::size_t n);

  // The test's rows in its newest `limit` runs (0: all).
  History history(const std::string& test_id, std::size_t limit);

  // Every test that is flaky in the sense of History::flaky, sorted.
  std::vector<std::string> flaky_tests();

  // Deletes all but the newest `keep` runs and their rows (estimates stay).
  // Returns how many runs went. Never called implicitly.
  std::size_t prune(std::size_t keep);

  // SQLite's PRAGMA integrity_check: "ok", or the problems one per line.
  std::string integrity_check();

 private:
  Repository(std::string path, std::string rootdir, int flags);
  void open(int flags);
  void setup();
  sqlite3* db_ = nullptr;
  std::string path_;
  std::string rootdir_;
};

// A code_id over the contents of files (the test binaries), in order:
// a 32-digit hex digest. Throws RepositoryError when a file cannot be read.
std::string code_id_for_files(const std::vector<std::string>& paths);

// Shown when there is nothing to show.
inline constexpr const char* kNoRunsMessage = "no runs recorded in .dtest/ yet";

// Output of the subcommands; each returns whole lines ending in '\n'.
// `dtest last`: a header, one line per row ("[gw0] PASSED id (0.12s)",
// " - message" for a non-pass with one) and the summary line.
std::string format_last(const std::optional<RunSummary>& run);
// `dtest failing`: one id per line, nothing else (the output can be fed back
// as input); "" when nothing failed or nothing was recorded.
std::string format_failing(const std::vector<std::string>& ids);
// `dtest slowest [N]`.
std::string format_slowest(const std::vector<std::pair<std::string, double>>& slowest);
// `dtest history TEST`.
std::string format_history(const History& history);

}  // namespace dtest
