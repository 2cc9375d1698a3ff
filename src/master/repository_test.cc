// The run repository against real SQLite files in temporary directories.
#include "master/repository.h"

#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

namespace dtest {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

WallClock::time_point at(std::int64_t unix_seconds) { return WallClock::time_point(seconds(unix_seconds)); }

TestRow row(std::string id, Outcome o, double d, std::string worker = "gw0", std::string message = "") {
  TestRow r;
  r.test_id = std::move(id);
  r.outcome = o;
  r.duration = d;
  r.worker = std::move(worker);
  r.gateway = "popen";
  r.message = std::move(message);
  return r;
}

RunRecord record(std::vector<TestRow> rows, std::string code_id = "c1", std::int64_t start = 1'700'000'000) {
  RunRecord r;
  r.started_at = at(start);
  r.finished_at = at(start + 2);
  r.args = {"dtest", "-n", "2", "./a"};
  r.exit_code = 0;
  for (const auto& x : rows)
    if (is_failure(x.outcome)) r.exit_code = 1;
  r.code_id = std::move(code_id);
  r.rows = std::move(rows);
  return r;
}

// Raw SQLite access, to prepare files a dtest would not write.
void raw_exec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  const std::string msg = err ? err : "";
  sqlite3_free(err);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << msg;
}

template <typename Fn>
std::string repository_error(Fn&& fn) {
  try {
    fn();
  } catch (const RepositoryError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a RepositoryError";
  return {};
}

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Times in the formatted output are local: pin the zone.
    ::setenv("TZ", "UTC", 1);
    ::tzset();
    std::string tmpl = (fs::path(::testing::TempDir()) / "dtest-repo-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  std::string db_path() const { return Repository::path_for(root_); }
  std::string root_;
};

// --- recording and reading back

TEST_F(RepositoryTest, RecordsARunAndReadsItBack) {
  Repository repo(root_);
  EXPECT_EQ(repo.path(), root_ + "/.dtest/repo.sqlite");
  EXPECT_TRUE(fs::exists(root_ + "/.dtest/.gitignore"));
  EXPECT_FALSE(repo.last_run());
  EXPECT_EQ(repo.run_count(), 0u);

  RunRecord r = record({row("a::S.one", Outcome::passed, 0.125),
                        row("a::S.two", Outcome::failed, 1.5, "gw1", "boom"),
                        row("a::S.three", Outcome::not_run, 0, "", "gateway lost")});
  r.args.push_back("with \"quotes\" and ünïcode");
  const auto id = repo.record_run(r);
  EXPECT_GT(id, 0);

  const auto last = repo.last_run();
  ASSERT_TRUE(last);
  EXPECT_EQ(last->id, id);
  EXPECT_EQ(last->started_at, r.started_at);
  EXPECT_EQ(last->finished_at, r.finished_at);
  EXPECT_EQ(last->args, r.args);
  EXPECT_EQ(last->exit_code, 1);
  EXPECT_EQ(last->code_id, "c1");
  EXPECT_EQ(last->rootdir, root_);
  EXPECT_EQ(last->dtest_version, DTEST_VERSION);
  ASSERT_EQ(last->rows.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(last->rows[i].test_id, r.rows[i].test_id);
    EXPECT_EQ(last->rows[i].outcome, r.rows[i].outcome);
    EXPECT_EQ(last->rows[i].duration, r.rows[i].duration);
    EXPECT_EQ(last->rows[i].worker, r.rows[i].worker);
    EXPECT_EQ(last->rows[i].gateway, r.rows[i].gateway);
    EXPECT_EQ(last->rows[i].message, r.rows[i].message);
  }

  // A second run becomes the last; the first stays readable by id.
  const auto id2 = repo.record_run(record({row("a::S.one", Outcome::passed, 0.1)}));
  EXPECT_GT(id2, id);
  EXPECT_EQ(repo.last_run()->id, id2);
  EXPECT_EQ(repo.run(id)->rows.size(), 3u);
  EXPECT_FALSE(repo.run(id2 + 1));
  EXPECT_EQ(repo.run_count(), 2u);
}

TEST_F(RepositoryTest, LargeRunRoundTrips) {
  Repository repo(root_);
  std::vector<TestRow> rows;
  for (int i = 0; i < 20'000; ++i)
    rows.push_back(row("big::S.t" + std::to_string(i), i % 100 ? Outcome::passed : Outcome::failed, i * 1e-4,
                       "gw" + std::to_string(i % 8)));
  repo.record_run(record(rows));
  repo.record_run(record(rows));
  const auto last = repo.last_run();
  ASSERT_TRUE(last);
  ASSERT_EQ(last->rows.size(), rows.size());
  EXPECT_EQ(last->rows.back().test_id, rows.back().test_id);
  EXPECT_EQ(repo.failing().size(), 200u);
  EXPECT_EQ(repo.estimates().size(), rows.size());
  EXPECT_EQ(repo.slowest(1).front().first, "big::S.t19999");
}

TEST_F(RepositoryTest, EveryOutcomeRoundTrips) {
  Repository repo(root_);
  std::vector<TestRow> rows;
  for (Outcome o : {Outcome::passed, Outcome::failed, Outcome::skipped, Outcome::xfailed,
                    Outcome::crashed, Outcome::timeout, Outcome::not_run})
    rows.push_back(row("t::" + std::string(to_string(o)), o, 0.5));
  repo.record_run(record(rows));
  const auto last = repo.last_run();
  ASSERT_TRUE(last);
  ASSERT_EQ(last->rows.size(), rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(last->rows[i].outcome, rows[i].outcome);
}

TEST_F(RepositoryTest, DataSurvivesReopening) {
  std::int64_t id = 0;
  {
    Repository repo(root_);
    id = repo.record_run(record({row("a::S.one", Outcome::failed, 2)}));
  }
  auto repo = Repository::open_existing(root_);
  ASSERT_TRUE(repo);
  EXPECT_EQ(repo->last_run()->id, id);
  EXPECT_EQ(repo->failing(), std::vector<std::string>{"a::S.one"});
  EXPECT_EQ(repo->integrity_check(), "ok");
}

TEST_F(RepositoryTest, OpenExistingCreatesNothing) {
  EXPECT_FALSE(Repository::open_existing(root_));
  EXPECT_FALSE(fs::exists(root_ + "/.dtest"));
}

TEST_F(RepositoryTest, RepositoryMoves) {
  Repository a(root_);
  a.record_run(record({row("x", Outcome::passed, 1)}));
  Repository b = std::move(a);
  EXPECT_EQ(b.run_count(), 1u);
  auto c = Repository::open_existing(root_);
  ASSERT_TRUE(c);
  *c = std::move(b);
  EXPECT_EQ(c->run_count(), 1u);
}

// --- estimates

TEST(RunningMean, IsThePlainMeanUpToTheWindowThenAdapts) {
  EXPECT_DOUBLE_EQ(running_mean(0, 0, 4), 4);
  EXPECT_DOUBLE_EQ(running_mean(4, 1, 2), 3);
  EXPECT_DOUBLE_EQ(running_mean(3, 2, 6), 4);
  // Past the window each sample weighs 1/(kEstimateWindow + 1).
  EXPECT_DOUBLE_EQ(running_mean(1, 1000, 12), (1.0 * kEstimateWindow + 12) / (kEstimateWindow + 1));
  EXPECT_DOUBLE_EQ(running_mean(1, kEstimateWindow, 12), running_mean(1, kEstimateWindow + 5, 12));
}

TEST_F(RepositoryTest, EstimateIsARunningAverageOfTimedOutcomes) {
  Repository repo(root_);
  double expect = 0;
  std::int64_t n = 0;
  std::int64_t start = 1'700'000'000;
  // 1, 2, 3: the plain mean; then 20 runs at 10 s pull it towards 10.
  std::vector<double> samples = {1, 2, 3};
  for (int i = 0; i < 20; ++i) samples.push_back(10);
  for (std::size_t i = 0; i < samples.size(); ++i) {
    const Outcome o = i % 2 ? Outcome::failed : Outcome::passed;
    repo.record_run(record({row("a::S.t", o, samples[i])}, "c1", start++));
    expect = running_mean(expect, n++, samples[i]);
    if (i == 2) {
      EXPECT_DOUBLE_EQ(repo.estimates().at("a::S.t"), 2.0);
    }
    EXPECT_DOUBLE_EQ(repo.estimates().at("a::S.t"), expect) << "after sample " << i;
  }
  EXPECT_GT(expect, 9.0);
  EXPECT_LT(expect, 10.0);

  // Durations of skipped, not-run, crashed and timed-out tests, and insane
  // ones, leave it alone; xfailed counts.
  for (Outcome o : {Outcome::skipped, Outcome::not_run, Outcome::crashed, Outcome::timeout})
    repo.record_run(record({row("a::S.t", o, 1000)}, "c1", start++));
  repo.record_run(record({row("a::S.t", Outcome::passed, std::nan(""))}, "c1", start++));
  repo.record_run(record({row("a::S.t", Outcome::passed, -5)}, "c1", start++));
  EXPECT_DOUBLE_EQ(repo.estimates().at("a::S.t"), expect);
  EXPECT_EQ(repo.last_run()->rows[0].duration, 0.0);  // the insane duration is kept as 0
  repo.record_run(record({row("a::S.t", Outcome::xfailed, 0)}, "c1", start++));
  expect = running_mean(expect, n++, 0);
  EXPECT_DOUBLE_EQ(repo.estimates().at("a::S.t"), expect);

  const History h = repo.history("a::S.t", 1);
  ASSERT_TRUE(h.estimate);
  EXPECT_DOUBLE_EQ(*h.estimate, expect);
  EXPECT_EQ(h.estimate_samples, n);
}

TEST_F(RepositoryTest, TestsWithoutATimedRunHaveNoEstimate) {
  Repository repo(root_);
  repo.record_run(record({row("a::S.skip", Outcome::skipped, 0.5), row("a::S.run", Outcome::passed, 0.5),
                          row("a::S.crash", Outcome::crashed, 3)}));
  const auto all = repo.estimates();
  EXPECT_EQ(all.size(), 1u);
  EXPECT_EQ(all.count("a::S.run"), 1u);
  const auto some = repo.estimates({"a::S.skip", "a::S.run", "a::S.unknown"});
  EXPECT_EQ(some.size(), 1u);
  EXPECT_DOUBLE_EQ(some.at("a::S.run"), 0.5);
  EXPECT_TRUE(repo.estimates(std::vector<std::string>{}).empty());
}

TEST_F(RepositoryTest, DistEachRowsEachFeedTheEstimate) {
  Repository repo(root_);
  repo.record_run(record({row("a::S.t", Outcome::passed, 1, "gw0"), row("a::S.t", Outcome::passed, 3, "gw1")}));
  EXPECT_DOUBLE_EQ(repo.estimates().at("a::S.t"), 2.0);
}

// --- failing

TEST_F(RepositoryTest, FailingListsOnlyTheLastRunsFailures) {
  Repository repo(root_);
  EXPECT_TRUE(repo.failing().empty());
  repo.record_run(record({row("a::S.old1", Outcome::failed, 1), row("a::S.old2", Outcome::crashed, 1)}));
  repo.record_run(record({row("a::S.old1", Outcome::passed, 1), row("a::S.e", Outcome::timeout, 1),
                          row("a::S.c", Outcome::failed, 1), row("a::S.skip", Outcome::skipped, 0),
                          row("a::S.nr", Outcome::not_run, 0), row("a::S.x", Outcome::xfailed, 0),
                          row("a::S.d", Outcome::crashed, 1),
                          // --dist each: failed on one gateway, listed once, at its first failure
                          row("a::S.e", Outcome::failed, 1, "gw1")}));
  EXPECT_EQ(repo.failing(), (std::vector<std::string>{"a::S.e", "a::S.c", "a::S.d"}));
  repo.record_run(record({row("a::S.c", Outcome::passed, 1)}));
  EXPECT_TRUE(repo.failing().empty());
}

// --- slowest

TEST_F(RepositoryTest, SlowestOrdersByEstimateThenId) {
  Repository repo(root_);
  EXPECT_TRUE(repo.slowest(5).empty());
  repo.record_run(record({row("a::S.mid", Outcome::passed, 2), row("a::S.fast", Outcome::passed, 0.1),
                          row("a::S.slow", Outcome::failed, 9), row("a::S.tie_b", Outcome::passed, 2),
                          row("a::S.skip", Outcome::skipped, 100)}));
  using V = std::vector<std::pair<std::string, double>>;
  EXPECT_EQ(repo.slowest(3), (V{{"a::S.slow", 9}, {"a::S.mid", 2}, {"a::S.tie_b", 2}}));
  EXPECT_EQ(repo.slowest(100).size(), 4u);
  EXPECT_EQ(repo.slowest(100).back().first, "a::S.fast");
  EXPECT_TRUE(repo.slowest(0).empty());
  EXPECT_EQ(repo.slowest(std::numeric_limits<std::size_t>::max()).size(), 4u);
}

// --- history and flakiness

TEST_F(RepositoryTest, HistoryShowsTheNewestRunsOldestFirst) {
  Repository repo(root_);
  for (int i = 0; i < 5; ++i)
    repo.record_run(record({row("a::S.t", Outcome::passed, i), row("a::S.other", Outcome::passed, 1)}, "c1",
                           1'700'000'000 + i * 60));
  repo.record_run(record({row("a::S.other", Outcome::passed, 1)}));  // without a::S.t
  const History h = repo.history("a::S.t", 3);
  EXPECT_EQ(h.test_id, "a::S.t");
  EXPECT_EQ(h.total_runs, 5u);
  ASSERT_EQ(h.rows.size(), 3u);
  EXPECT_EQ(h.rows[0].run_id, 3);
  EXPECT_EQ(h.rows[2].run_id, 5);
  EXPECT_EQ(h.rows[0].row.duration, 2);
  EXPECT_EQ(h.rows[0].started_at, at(1'700'000'120));
  EXPECT_EQ(h.rows[0].code_id, "c1");
  EXPECT_FALSE(h.flaky);
  EXPECT_EQ(repo.history("a::S.t", 0).rows.size(), 5u);
  const History none = repo.history("a::S.nope", 10);
  EXPECT_TRUE(none.rows.empty());
  EXPECT_EQ(none.total_runs, 0u);
  EXPECT_FALSE(none.estimate);
}

TEST_F(RepositoryTest, FlakyWhenPassedAndFailedOnTheSameCode) {
  Repository repo(root_);
  // Same code: passed, then crashed -> flaky.
  repo.record_run(record({row("a::S.flaky", Outcome::passed, 1), row("a::S.fixed", Outcome::failed, 1),
                          row("a::S.nocode", Outcome::passed, 1)},
                         "code-A"));
  repo.record_run(record({row("a::S.flaky", Outcome::crashed, 1)}, "code-A"));
  // Failed on code A, passed on code B (a fix): not flaky.
  repo.record_run(record({row("a::S.fixed", Outcome::passed, 1)}, "code-B"));
  // Unknown code never counts.
  repo.record_run(record({row("a::S.nocode", Outcome::passed, 1)}, ""));
  repo.record_run(record({row("a::S.nocode", Outcome::failed, 1)}, ""));
  // Skipped / not run next to a pass is not flaky either.
  repo.record_run(record({row("a::S.skippy", Outcome::passed, 1)}, "code-B"));
  repo.record_run(record({row("a::S.skippy", Outcome::skipped, 0), row("a::S.fixed", Outcome::not_run, 0)},
                         "code-B"));

  EXPECT_TRUE(repo.history("a::S.flaky", 10).flaky);
  EXPECT_FALSE(repo.history("a::S.fixed", 10).flaky);
  EXPECT_FALSE(repo.history("a::S.nocode", 10).flaky);
  EXPECT_FALSE(repo.history("a::S.skippy", 10).flaky);
  // Flakiness looks past the rows shown.
  repo.record_run(record({row("a::S.flaky", Outcome::passed, 1)}, "code-C"));
  const History h = repo.history("a::S.flaky", 1);
  EXPECT_EQ(h.rows.size(), 1u);
  EXPECT_TRUE(h.flaky);
  EXPECT_EQ(repo.flaky_tests(), std::vector<std::string>{"a::S.flaky"});
}

TEST_F(RepositoryTest, FlakyWithinOneDistEachRun) {
  Repository repo(root_);
  repo.record_run(record({row("a::S.t", Outcome::passed, 1, "gw0"), row("a::S.t", Outcome::timeout, 9, "gw1")}));
  const History h = repo.history("a::S.t", 10);
  EXPECT_TRUE(h.flaky);
  EXPECT_EQ(h.rows.size(), 2u);
  EXPECT_EQ(h.total_runs, 1u);
}

// --- pruning

TEST_F(RepositoryTest, PruneKeepsTheNewestRunsAndTheEstimates) {
  Repository repo(root_);
  for (int i = 0; i < 5; ++i) repo.record_run(record({row("a::S.t", Outcome::passed, 1)}));
  EXPECT_EQ(repo.prune(2), 3u);
  EXPECT_EQ(repo.run_count(), 2u);
  EXPECT_EQ(repo.history("a::S.t", 0).rows.size(), 2u);
  EXPECT_EQ(repo.history("a::S.t", 0).rows[0].run_id, 4);
  EXPECT_EQ(repo.estimates().size(), 1u);
  EXPECT_EQ(repo.prune(10), 0u);
  // Ids are never reused after a prune.
  EXPECT_EQ(repo.record_run(record({})), 6);
  EXPECT_EQ(repo.integrity_check(), "ok");
}

// --- concurrency

constexpr int kRunsEach = 50;
constexpr int kRowsPerRun = 20;

RunRecord numbered_run(const std::string& writer, int i) {
  std::vector<TestRow> rows;
  for (int k = 0; k < kRowsPerRun; ++k)
    rows.push_back(row("a::S.t" + std::to_string(k), k == i % kRowsPerRun ? Outcome::failed : Outcome::passed,
                       0.01 * k, writer));
  RunRecord r = record(std::move(rows), writer);
  r.args = {"dtest", writer, std::to_string(i)};
  return r;
}

// Every run present once, whole, and the file sound.
void expect_all_runs(const std::string& root, const std::vector<std::string>& writers) {
  Repository repo(root);
  EXPECT_EQ(repo.integrity_check(), "ok");
  EXPECT_EQ(repo.run_count(), writers.size() * kRunsEach);
  std::map<std::string, std::set<std::string>> seen;
  for (std::int64_t id = 1; id <= static_cast<std::int64_t>(writers.size() * kRunsEach); ++id) {
    const auto run = repo.run(id);
    ASSERT_TRUE(run) << "run " << id;
    ASSERT_EQ(run->args.size(), 3u);
    EXPECT_EQ(run->rows.size(), static_cast<std::size_t>(kRowsPerRun));
    for (const auto& r : run->rows) EXPECT_EQ(r.worker, run->args[1]);
    EXPECT_TRUE(seen[run->args[1]].insert(run->args[2]).second) << "duplicate run";
  }
  for (const auto& w : writers) EXPECT_EQ(seen[w].size(), static_cast<std::size_t>(kRunsEach)) << w;
}

TEST_F(RepositoryTest, TwoConnectionsInOneThread) {
  Repository a(root_);
  Repository b(root_);
  for (int i = 0; i < kRunsEach; ++i) {
    a.record_run(numbered_run("A", i));
    // b reads what a just committed.
    ASSERT_EQ(b.last_run()->args[1], "A");
    b.record_run(numbered_run("B", i));
  }
  expect_all_runs(root_, {"A", "B"});
}

TEST_F(RepositoryTest, TwoThreadsWriteWhileAThirdReads) {
  std::atomic<bool> done{false};
  std::atomic<int> errors{0};
  std::atomic<int> torn{0};
  // Both writers open the fresh repository at once: creating the schema races too.
  auto writer = [&](std::string name) {
    try {
      Repository repo(root_);
      for (int i = 0; i < kRunsEach; ++i) repo.record_run(numbered_run(name, i));
    } catch (const std::exception& e) {
      ++errors;
      std::fprintf(stderr, "writer %s: %s\n", name.c_str(), e.what());
    }
  };
  std::thread w1(writer, "A"), w2(writer, "B");
  std::thread reader([&] {
    try {
      while (!done) {
        auto repo = Repository::open_existing(root_);
        if (!repo) continue;
        for (int i = 0; i < 20 && !done; ++i)
          if (auto last = repo->last_run(); last && last->rows.size() != kRowsPerRun) ++torn;
      }
    } catch (const std::exception& e) {
      ++errors;
      std::fprintf(stderr, "reader: %s\n", e.what());
    }
  });
  w1.join();
  w2.join();
  done = true;
  reader.join();
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(torn, 0) << "a reader saw a run without all its rows";
  expect_all_runs(root_, {"A", "B"});
}

TEST_F(RepositoryTest, TwoProcessesWriteAtOnce) {
  const pid_t child = ::fork();
  ASSERT_NE(child, -1);
  if (child == 0) {
    int rc = 0;
    try {
      Repository repo(root_);
      for (int i = 0; i < kRunsEach; ++i) repo.record_run(numbered_run("child", i));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      rc = 1;
    }
    ::_exit(rc);
  }
  std::string parent_error;
  try {
    Repository repo(root_);
    for (int i = 0; i < kRunsEach; ++i) repo.record_run(numbered_run("parent", i));
  } catch (const std::exception& e) {
    parent_error = e.what();
  }
  EXPECT_EQ(parent_error, "");
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  expect_all_runs(root_, {"parent", "child"});
}

// --- damaged and foreign files

TEST_F(RepositoryTest, GarbageFileIsAClearError) {
  fs::create_directories(root_ + "/.dtest");
  std::ofstream(db_path()) << std::string(8192, 'x');
  const std::string msg = repository_error([&] { Repository repo(root_); });
  EXPECT_NE(msg.find(db_path() + ": "), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a database"), std::string::npos) << msg;
  EXPECT_NE(msg.find("delete .dtest/"), std::string::npos) << msg;
  // The open_existing path says the same; the file is left as it was.
  EXPECT_NE(repository_error([&] { (void)Repository::open_existing(root_); }).find("not a database"),
            std::string::npos);
  EXPECT_EQ(fs::file_size(db_path()), 8192u);
}

TEST_F(RepositoryTest, DamagedPagesAreAClearError) {
  {
    Repository repo(root_);
    for (int i = 0; i < 30; ++i) repo.record_run(numbered_run("A", i));
  }
  // Closing checkpointed the WAL into the main file: wreck everything after
  // the first page (the header and schema stay readable).
  ASSERT_FALSE(fs::exists(db_path() + "-wal") && fs::file_size(db_path() + "-wal") > 0);
  const auto size = fs::file_size(db_path());
  ASSERT_GT(size, 8192u);
  {
    std::fstream f(db_path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096);
    const std::string junk(size - 4096, '\xA5');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  const std::string msg = repository_error([&] {
    Repository repo(root_);
    (void)repo.last_run();
    (void)repo.failing();
    (void)repo.slowest(10);
    repo.record_run(numbered_run("B", 0));
  });
  EXPECT_NE(msg.find(db_path() + ": "), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed"), std::string::npos) << msg;
}

TEST_F(RepositoryTest, NewerSchemaIsAClearError) {
  { Repository repo(root_); }
  raw_exec(db_path(), "PRAGMA user_version=99");
  const std::string msg = repository_error([&] { Repository repo(root_); });
  EXPECT_NE(msg.find(db_path() + ": written by a newer dtest"), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 99"), std::string::npos) << msg;
}

TEST_F(RepositoryTest, AnotherProgramsDatabaseIsLeftAlone) {
  fs::create_directories(root_ + "/.dtest");
  raw_exec(db_path(), "CREATE TABLE theirs(x); INSERT INTO theirs VALUES(42);");
  const std::string msg = repository_error([&] { Repository repo(root_); });
  EXPECT_NE(msg.find(db_path() + ": not a dtest repository"), std::string::npos) << msg;
  // Untouched: still in rollback-journal mode, no tables of ours.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "delete");
  sqlite3_finalize(st);
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 1);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(RepositoryTest, EmptyFileBecomesARepository) {
  fs::create_directories(root_ + "/.dtest");
  std::ofstream{db_path()};
  auto repo = Repository::open_existing(root_);
  ASSERT_TRUE(repo);
  repo->record_run(record({row("x", Outcome::passed, 1)}));
  EXPECT_EQ(repo->run_count(), 1u);
}

TEST_F(RepositoryTest, UncreatableDirectoryIsAClearError) {
  // A file where .dtest/ should be.
  std::ofstream(root_ + "/.dtest") << "x";
  const std::string msg = repository_error([&] { Repository repo(root_); });
  EXPECT_NE(msg.find(root_ + "/.dtest: cannot create the directory"), std::string::npos) << msg;
}

// --- code ids

TEST_F(RepositoryTest, CodeIdFollowsTheContents) {
  const auto write = [&](const std::string& name, const std::string& content) {
    std::ofstream(root_ + "/" + name, std::ios::binary) << content;
    return root_ + "/" + name;
  };
  const auto a = write("a", "ab"), b = write("b", "c"), c = write("c", "a"), d = write("d", "bc");
  const auto a2 = write("a2", "ab");
  const std::string id = code_id_for_files({a, b});
  EXPECT_EQ(id.size(), 32u);
  EXPECT_EQ(id, code_id_for_files({a2, b}));   // names do not matter
  EXPECT_NE(id, code_id_for_files({c, d}));    // "ab"+"c" is not "a"+"bc"
  EXPECT_NE(id, code_id_for_files({b, a}));    // order does
  write("b", "C");
  EXPECT_NE(id, code_id_for_files({a, b}));
  const std::string msg = repository_error([&] { code_id_for_files({root_ + "/missing"}); });
  EXPECT_NE(msg.find(root_ + "/missing: cannot read"), std::string::npos) << msg;
}

// --- formatting

TEST_F(RepositoryTest, FormatLast) {
  EXPECT_EQ(format_last(std::nullopt), "no runs recorded in .dtest/ yet\n");
  Repository repo(root_);
  RunRecord r = record({row("a::S.one", Outcome::passed, 0.123), row("a::S.two", Outcome::failed, 1.5, "gw1", "boom"),
                        row("a::S.three", Outcome::not_run, 0, "", "gateway lost"),
                        row("a::S.four", Outcome::passed, 2, "gw0", "ignored for a pass")});
  r.finished_at = r.started_at + std::chrono::milliseconds(3250);
  repo.record_run(r);
  EXPECT_EQ(format_last(repo.last_run()),
            "run 1 -- 2023-11-14 22:13:20 -- exit code 1 -- dtest -n 2 ./a\n"
            "[gw0] PASSED a::S.one (0.12s)\n"
            "[gw1] FAILED a::S.two (1.50s) - boom\n"
            "NOT RUN a::S.three (0.00s) - gateway lost\n"
            "[gw0] PASSED a::S.four (2.00s)\n"
            "1 failed, 2 passed, 1 not run in 3.25s\n");
  RunSummary empty;
  empty.id = 7;
  empty.started_at = empty.finished_at = at(0);
  EXPECT_EQ(format_last(empty), "run 7 -- 1970-01-01 00:00:00 -- exit code 0\nno tests ran in 0.00s\n");
}

TEST_F(RepositoryTest, FormatFailing) {
  EXPECT_EQ(format_failing({}), "");
  EXPECT_EQ(format_failing({"a::S.one", "b::T.two/0"}), "a::S.one\nb::T.two/0\n");
}

TEST_F(RepositoryTest, FormatSlowest) {
  EXPECT_EQ(format_slowest({}), "no test durations recorded in .dtest/ yet\n");
  EXPECT_EQ(format_slowest({{"a::S.slow", 123.456}, {"a::S.fast", 0.004}}),
            "slowest 2 tests (running average durations):\n"
            "    123.46s  a::S.slow\n"
            "      0.00s  a::S.fast\n");
  EXPECT_EQ(format_slowest({{"x", 1}}), "slowest 1 test (running average durations):\n      1.00s  x\n");
}

TEST_F(RepositoryTest, FormatHistory) {
  Repository repo(root_);
  EXPECT_EQ(format_history(repo.history("a::S.t", 10)), "no results for a::S.t in .dtest/\n");
  repo.record_run(record({row("a::S.t", Outcome::passed, 1)}, "0123456789abcdef", 1'700'000'000));
  repo.record_run(record({row("a::S.t", Outcome::failed, 3, "gw12345", "boom")}, "0123456789abcdef",
                         1'700'000'060));
  repo.record_run(record({row("a::S.t", Outcome::skipped, 0, "", "disabled")}, "", 1'700'000'120));
  EXPECT_EQ(format_history(repo.history("a::S.t", 10)),
            "history of a::S.t (3 of 3 runs)\n"
            "run  started              code      worker   outcome   duration\n"
            "  1  2023-11-14 22:13:20  01234567  gw0      PASSED       1.00s\n"
            "  2  2023-11-14 22:14:20  01234567  gw12345  FAILED       3.00s  boom\n"
            "  3  2023-11-14 22:15:20  -         -        SKIPPED      0.00s  disabled\n"
            "estimate: 2.00s (running average of 2 samples)\n"
            "flaky: yes (passed and failed on the same code)\n");
  EXPECT_EQ(format_history(repo.history("a::S.t", 1)),
            "history of a::S.t (1 of 3 runs)\n"
            "run  started              code      worker  outcome   duration\n"
            "  3  2023-11-14 22:15:20  -         -       SKIPPED      0.00s  disabled\n"
            "estimate: 2.00s (running average of 2 samples)\n"
            "flaky: yes (passed and failed on the same code)\n");
  Repository other((fs::path(root_) / "sub").string());
  other.record_run(record({row("a::S.t", Outcome::passed, 0.5)}, "c", 1'700'000'000));
  EXPECT_EQ(format_history(other.history("a::S.t", 10)),
            "history of a::S.t (1 of 1 run)\n"
            "run  started              code      worker  outcome   duration\n"
            "  1  2023-11-14 22:13:20  c         gw0     PASSED       0.50s\n"
            "estimate: 0.50s (running average of 1 sample)\n"
            "flaky: no\n");
}

}  // namespace
}  // namespace dtest
