// The run repository end to end: the real dtest records every run in
// <cwd>/.dtest, and `dtest last`, `dtest failing`, `dtest slowest`,
// `dtest history` and `--lf` read it back.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/files.h"
#include "support/subprocess.h"
#include "support/text.h"

namespace {

namespace fs = std::filesystem;
using dtest::testing::contains;
using dtest::testing::describe;
using dtest::testing::ProcResult;

const std::string kDtest = DTEST_BIN;
const std::string kMixed = std::string(FIXTURES_DIR) + "/fx_mixed_test";
const std::string kPass = std::string(FIXTURES_DIR) + "/fx_pass_test";

// Ids of the tests a -v run reported with one of `outcomes`.
std::set<std::string> ids_with(const std::string& out, const std::set<std::string>& outcomes) {
  static const std::regex re(R"(^(?:\[[^\]]*\] )?\[ *\d+%\] ([A-Z ]+?) (\S+::\S+).*$)");
  std::set<std::string> ids;
  std::istringstream in(out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (std::regex_match(l, m, re) && outcomes.count(m[1])) ids.insert(m[2]);
  }
  return ids;
}

std::set<std::string> lines(const std::string& s) {
  std::set<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty()) out.insert(l);
  return out;
}

class Repo : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = dtest::testing::make_temp_dir("dtest-repo-e2e");
    ASSERT_FALSE(tmp_.empty());
  }
  void TearDown() override { dtest::testing::remove_tree(tmp_); }
  ProcResult dtest(const std::vector<std::string>& args) {
    dtest::testing::RunOptions o;
    o.cwd = tmp_;
    o.timeout = 120;
    o.env["DTEST_AGENT"] = DTEST_AGENT_BIN;
    o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
    std::vector<std::string> argv = {kDtest};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcResult r = dtest::testing::run_process(argv, o);
    EXPECT_FALSE(r.timed_out) << describe(r);
    return r;
  }
  std::string tmp_;
};

TEST_F(Repo, EmptyRepositorySaysSo) {
  ProcResult r = dtest({"last"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "no runs recorded in .dtest/ yet")) << r.out;
  r = dtest({"failing"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(r.out, "");  // stdout stays usable as a list of ids
  EXPECT_TRUE(contains(r.err, "no runs recorded")) << r.err;
  EXPECT_FALSE(fs::exists(tmp_ + "/.dtest")) << "reading must not create the repository";
}

TEST_F(Repo, RunsAreRecordedAndLastFailedRunsExactlyTheFailures) {
  const ProcResult run = dtest({"-v", "-n", "2", kMixed, kPass});
  EXPECT_EQ(run.exit_code, 1) << describe(run);
  ASSERT_TRUE(fs::exists(tmp_ + "/.dtest/repo.sqlite"));
  const auto failed = ids_with(run.out, {"FAILED", "CRASHED", "TIMEOUT"});
  ASSERT_GE(failed.size(), 3u) << run.out;

  ProcResult r = dtest({"failing"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(lines(r.out), failed);

  r = dtest({"last"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  for (const auto& id : failed) EXPECT_TRUE(contains(r.out, "FAILED " + id) || contains(r.out, "CRASHED " + id)) << id << "\n" << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\[gw[01]\] PASSED )"))) << r.out;

  // --lf: exactly the failures run again (and fail again).
  const ProcResult lf = dtest({"-v", "-n", "2", "--lf", kMixed, kPass});
  EXPECT_EQ(lf.exit_code, 1) << describe(lf);
  EXPECT_TRUE(contains(lf.out, "--lf: running the " + std::to_string(failed.size()) + " test(s) that failed last time"))
      << lf.out;
  const auto ran = ids_with(lf.out, {"PASSED", "FAILED", "CRASHED", "TIMEOUT", "SKIPPED", "XFAILED", "NOT RUN"});
  EXPECT_EQ(ran, failed) << lf.out;

  r = dtest({"slowest", "3"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "::")) << r.out;

  const std::string one = *failed.begin();
  r = dtest({"history", one});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, one)) << r.out;
  EXPECT_TRUE(contains(r.out, "flaky: no")) << r.out;  // failed both times on the same binaries
}

// The first reported result of a -v run.
std::string first_result(const std::string& out) {
  static const std::regex re(R"(^(?:\[[^\]]*\] )?\[ *\d+%\] [A-Z ]+? \S+::(\S+).*$)");
  std::istringstream in(out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (std::regex_match(l, m, re)) return m[1];
  }
  return "";
}

TEST_F(Repo, TheSecondRunFollowsTheRecordedDurations) {
  const std::string uneven = std::string(FIXTURES_DIR) + "/fx_uneven_test";
  // No history: collection order (the long test is listed last).
  const ProcResult first = dtest({"-v", "-n", "1", uneven});
  EXPECT_EQ(first.exit_code, 0) << describe(first);
  EXPECT_EQ(first_result(first.out), "Uneven.Short1") << first.out;
  // With the durations recorded: longest first.
  const ProcResult second = dtest({"-v", "-n", "1", uneven});
  EXPECT_EQ(second.exit_code, 0) << describe(second);
  EXPECT_EQ(first_result(second.out), "Uneven.Long") << second.out;
  const ProcResult slowest = dtest({"slowest", "1"});
  EXPECT_TRUE(contains(slowest.out, "Uneven.Long")) << slowest.out;
}

// --dist loadscope / loadfile: a suite (a binary) never spans two workers.
std::map<std::string, std::set<std::string>> workers_by(const std::string& out, bool by_suite) {
  static const std::regex re(R"(^\[(gw\d+)\] \[ *\d+%\] [A-Z ]+? (\S+)::([^.\s]+)\.\S+.*$)");
  std::map<std::string, std::set<std::string>> m;
  std::istringstream in(out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch sm;
    if (std::regex_match(l, sm, re)) m[by_suite ? sm[2].str() + "::" + sm[3].str() : sm[2].str()].insert(sm[1]);
  }
  return m;
}

TEST_F(Repo, LoadscopeAndLoadfileKeepUnitsOnOneWorker) {
  const std::string sleep = std::string(FIXTURES_DIR) + "/fx_sleep_test";
  ProcResult r = dtest({"-v", "-n", "2", "--dist", "loadscope", sleep});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  auto m = workers_by(r.out, true);
  EXPECT_EQ(m.size(), 3u) << r.out;  // SleepA, SleepB, SleepC
  for (const auto& [suite, ws] : m) EXPECT_EQ(ws.size(), 1u) << suite << "\n" << r.out;

  r = dtest({"-v", "-n", "2", "--dist", "loadfile", sleep, kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  m = workers_by(r.out, false);
  EXPECT_EQ(m.size(), 2u) << r.out;
  for (const auto& [bin, ws] : m) EXPECT_EQ(ws.size(), 1u) << bin << "\n" << r.out;
}

TEST_F(Repo, LoadgroupKeepsEachGroupOnOneWorker) {
  const std::string sleep = std::string(FIXTURES_DIR) + "/fx_sleep_test";
  ProcResult r = dtest({"-v", "-n", "2", "--dist", "loadgroup", "--group", "SleepA\\.|SleepB\\.T1", sleep});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  // SleepA.* and SleepB.T1 form one group: one worker for all five.
  std::set<std::string> ws;
  static const std::regex re(R"(^\[(gw\d+)\] \[ *\d+%\] PASSED \S+::(SleepA\.\S+|SleepB\.T1)\b.*$)");
  std::istringstream in(r.out);
  std::string l;
  int n = 0;
  while (std::getline(in, l)) {
    std::smatch m;
    if (std::regex_match(l, m, re)) {
      ws.insert(m[1]);
      ++n;
    }
  }
  EXPECT_EQ(n, 5) << r.out;
  EXPECT_EQ(ws.size(), 1u) << r.out;
  r = dtest({"--dist", "loadgroup", "--group", "(", sleep});
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "--group '(': not a regular expression")) << r.err;
}

TEST_F(Repo, LastFailedWithNothingFailedRunsEverything) {
  ProcResult r = dtest({"-q", kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  r = dtest({"-v", "--lf", kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "--lf: no previously failed tests in this collection; running all")) << r.out;
  EXPECT_GE(ids_with(r.out, {"PASSED"}).size(), 20u) << r.out;
}

}  // namespace
