// The run repository end to end: the real dtest records every run in
// <cwd>/.dtest, and `dtest last`, `dtest failing`, `dtest slowest`,
// `dtest history` and `--lf` read it back.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

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
    char tmpl[] = "/tmp/dtest-repo-e2e-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
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

TEST_F(Repo, LastFailedWithNothingFailedRunsEverything) {
  ProcResult r = dtest({"-q", kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  r = dtest({"-v", "--lf", kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "--lf: no previously failed tests in this collection; running all")) << r.out;
  EXPECT_GE(ids_with(r.out, {"PASSED"}).size(), 20u) << r.out;
}

}  // namespace
