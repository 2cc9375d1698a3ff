// pytest, CTest and command suites over ssh: a real OpenSSH sshd on
// 127.0.0.1 (tests/ssh/sshd_harness.sh, one for the binary), the real dtest
// as a subprocess, the suites' trees mirrored with --rsyncdir. Each suite
// runs over popen and over ssh and must end the same; and since the "remote"
// is this machine, where the local paths exist too, fixture tests leave
// markers where they ran: over ssh they must have run from the agent's copy
// (under the harness's remote HOME), never from the local tree.
//
// Without sshd every test is skipped with the reason; without pytest in
// /usr/bin/python3 the pytest ones are. Hard timeouts on every subprocess,
// no timing assertions. Warm connections are off (DTEST_SSH_PERSIST=0).

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support/command_suite.h"
#include "support/files.h"
#include "support/sshd.h"
#include "support/subprocess.h"
#include "support/text.h"
#include "support/verbose.h"

namespace {

namespace fs = std::filesystem;
using dtest::testing::contains;
using dtest::testing::copy_tree;
using dtest::testing::describe;
using dtest::testing::holders;
using dtest::testing::kCommandSuiteOutcomes;
using dtest::testing::kCommandSuiteToml;
using dtest::testing::outcomes;  // id -> outcome of the -v lines ("passed", ...)
using dtest::testing::ProcResult;
using dtest::testing::read_file;
using dtest::testing::RunOptions;
using dtest::testing::write_file;

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kFixtures = FIXTURES_SRC_DIR;
const std::string kHarness = SSHD_HARNESS;
const std::string kCmake = CMAKE_BIN;
const std::string kPython = "/usr/bin/python3";
// What ctest_project's `environment` test expects to inherit; given through
// the xspec, as an ssh session inherits nothing of the master's environment.
const std::string kCtestFixtureEnv = "//env:DTEST_FX_INHERITED=base//env:DTEST_FX_UNSET_ME=present";

bool have_pytest() {
  static const bool have = [] {
    RunOptions o;
    o.timeout = 60;
    return dtest::testing::run_process({kPython, "-c", "import pytest"}, o).exit_code == 0;
  }();
  return have;
}

#define REQUIRE_PYTEST() \
  if (!have_pytest()) GTEST_SKIP() << "no pytest in " << kPython << " (Debian's python3-pytest)"

// Every file named `name` under `root`.
std::vector<std::string> find_named(const std::string& root, const std::string& name) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->path().filename() == name) found.push_back(it->path().string());
  std::sort(found.begin(), found.end());
  return found;
}

// ---------------------------------------------------------------------------
// The sshd, once for the binary
// ---------------------------------------------------------------------------

class SshdEnv : public ::testing::Environment {
 public:
  void SetUp() override { sshd.start(kHarness); }
  void TearDown() override { sshd.stop(); }
  dtest::testing::Sshd sshd;
};

SshdEnv* g_env = nullptr;

class FrameworksSsh : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto& s = g_env->sshd;
    if (!s.skip_reason.empty()) GTEST_SKIP() << s.skip_reason;
    ASSERT_TRUE(s.up) << s.error;
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    work_ = s.dir + "/work-" + name_;
    fs::create_directories(work_);
    remote_home_ = s.dir + "/remote-home";
  }
  void TearDown() override {
    if (work_.empty()) return;
    dtest({"__ssh-close"}, work_);
    for (pid_t p : holders(work_ + "/cache")) {
      ADD_FAILURE() << "warm-connection holder " << p << " left running";
      ::kill(p, SIGKILL);
    }
    if (HasFailure()) {
      const std::string log = g_env->sshd.log();
      std::cerr << "--- sshd.log (tail) ---\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0) << "\n";
    }
    std::error_code ec;
    fs::remove_all(work_, ec);
  }

  // An ssh xspec for the harness's sshd, with `n` gateways and `keys` added.
  std::string ssh_tx(int n, const std::string& keys = "") const {
    return (n > 1 ? std::to_string(n) + "*" : "") + "ssh=" + g_env->sshd.ssh_value() + keys;
  }

  // A copy of tests/fixtures/FIXTURE in the work dir, under a name of this
  // test's own (the agent's work dir is named after the master's cwd).
  std::string project(const std::string& fixture) {
    const std::string to = work_ + "/" + name_ + "-" + fixture;
    copy_tree(kFixtures + "/" + fixture, to);
    return to;
  }

  ProcResult run(const std::vector<std::string>& argv, const std::string& cwd, double timeout = 180) {
    RunOptions o;
    o.cwd = cwd;
    o.timeout = timeout;
    o.env["PYTHONDONTWRITEBYTECODE"] = "1";
    ProcResult r = dtest::testing::run_process(argv, o);
    if (r.timed_out) ADD_FAILURE() << "did not finish within " << timeout << " s: " << argv[0] << "\n" << describe(r);
    return r;
  }

  ProcResult dtest(const std::vector<std::string>& args, const std::string& cwd) {
    std::vector<std::string> argv = {kDtest};
    argv.insert(argv.end(), args.begin(), args.end());
    RunOptions o;
    o.cwd = cwd;
    o.timeout = 180;
    o.env = {{"DTEST_AGENT", kAgent},
             {"DTEST_CACHE_DIR", work_ + "/cache"},
             {"DTEST_SSH_PERSIST", "0"},
             {"HOME", g_env->sshd.dir + "/local-home"},
             {"PYTHONDONTWRITEBYTECODE", "1"}};
    o.unset = {"SSH_AUTH_SOCK", "DTEST_SSH_ACCEPT_NEW", "DTEST_SSH_KNOWN_HOSTS"};
    ProcResult r = dtest::testing::run_process(argv, o);
    if (r.timed_out) ADD_FAILURE() << "dtest did not finish within 180 s\n" << describe(r);
    return r;
  }

  // The copies of marker file `name` the agent's copies of this test's
  // trees hold, and the local ones under the work dir.
  std::vector<std::string> remote_markers(const std::string& name) const {
    std::vector<std::string> mine;
    for (const auto& p : find_named(remote_home_, name))
      if (contains(p, "/" + name_ + "-")) mine.push_back(p);
    return mine;
  }
  std::vector<std::string> local_markers(const std::string& name) const { return find_named(work_, name); }
  void remove_markers(const std::string& name) {
    for (const auto& p : local_markers(name)) fs::remove(p);
    for (const auto& p : remote_markers(name)) fs::remove(p);
  }

  // tests/fixtures/NAME configured and built into the work dir.
  std::string build_cmake_project(const std::string& fixture) {
    const std::string build = work_ + "/" + name_ + "-" + fixture + "-build";
    ProcResult r = run({kCmake, "-S", kFixtures + "/" + fixture, "-B", build, "-G", "Ninja"}, work_);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    r = run({kCmake, "--build", build}, work_);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    return build;
  }

  std::string name_, work_, remote_home_;
};

// ---------------------------------------------------------------------------
// pytest
// ---------------------------------------------------------------------------

const std::vector<std::string> kPytestFiles = {"tests/test_outcomes.py", "tests/test_more.py", "tests/test_where.py"};

// Run from inside the synced project: the pytest cwd maps to the copy.
TEST_F(FrameworksSsh, PytestOverSshMatchesPopen) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  fs::copy(kFixtures + "/pytest_project2/where/test_where.py", p + "/tests/test_where.py");
  std::vector<std::string> args = {"-v", "--tx", "2*popen//python=/usr/bin/python3"};
  args.insert(args.end(), kPytestFiles.begin(), kPytestFiles.end());
  const ProcResult local = dtest(args, p);
  EXPECT_EQ(local.exit_code, 1) << describe(local);
  const auto want = outcomes(local.out);
  EXPECT_EQ(want.size(), 21u) << local.out;
  EXPECT_EQ(local_markers("ran_here.txt"), std::vector<std::string>{p + "/tests/ran_here.txt"});
  remove_markers("ran_here.txt");

  args = {"-v", "--tx", ssh_tx(2, "//python=/usr/bin/python3"), "--rsyncdir", p};
  args.insert(args.end(), kPytestFiles.begin(), kPytestFiles.end());
  const ProcResult remote = dtest(args, p);
  EXPECT_EQ(remote.exit_code, 1) << describe(remote);
  EXPECT_TRUE(contains(remote.out, "rsync:")) << remote.out;
  EXPECT_EQ(outcomes(remote.out), want) << remote.out;
  EXPECT_TRUE(local_markers("ran_here.txt").empty()) << "the local tree ran, not the agent's copy";
  const auto copies = remote_markers("ran_here.txt");
  ASSERT_EQ(copies.size(), 1u) << ::testing::PrintToString(find_named(remote_home_, "ran_here.txt"));
  // pytest ran in the copy of the project (the master's cwd).
  const std::string cwd = read_file(copies[0]);
  EXPECT_TRUE(cwd.rfind(remote_home_ + "/", 0) == 0 && cwd.ends_with("/" + fs::path(p).filename().string() + "\n"))
      << cwd;
}

// Run from the synced root's parent, naming paths inside it: the tests that
// run are still the agent's copies.
TEST_F(FrameworksSsh, PytestFromTheParentOfTheSyncedProject) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  fs::copy(kFixtures + "/pytest_project2/where/test_where.py", p + "/tests/test_where.py");
  const std::string base = fs::path(p).filename().string();
  std::vector<std::string> files;
  for (const auto& f : kPytestFiles) files.push_back(base + "/" + f);
  std::vector<std::string> args = {"-v", "--tx", "2*popen//python=/usr/bin/python3"};
  args.insert(args.end(), files.begin(), files.end());
  const ProcResult local = dtest(args, work_);
  EXPECT_EQ(local.exit_code, 1) << describe(local);
  const auto want = outcomes(local.out);
  EXPECT_EQ(want.size(), 21u) << local.out;
  remove_markers("ran_here.txt");

  args = {"-v", "--tx", ssh_tx(2, "//python=/usr/bin/python3"), "--rsyncdir", base};
  args.insert(args.end(), files.begin(), files.end());
  const ProcResult remote = dtest(args, work_);
  EXPECT_EQ(remote.exit_code, 1) << describe(remote);
  EXPECT_EQ(outcomes(remote.out), want) << remote.out;
  EXPECT_TRUE(local_markers("ran_here.txt").empty())
      << "the local tree ran, not the agent's copy: " << ::testing::PrintToString(local_markers("ran_here.txt"));
  EXPECT_EQ(remote_markers("ran_here.txt").size(), 1u)
      << ::testing::PrintToString(find_named(remote_home_, "ran_here.txt"));
}

// ---------------------------------------------------------------------------
// CTest
// ---------------------------------------------------------------------------

TEST_F(FrameworksSsh, CtestBuildTreeOverSshMatchesPopen) {
  const std::string build = build_cmake_project("ctest_project");
  const ProcResult local = dtest({"-v", "--tx", "2*popen" + kCtestFixtureEnv, build}, work_);
  EXPECT_EQ(local.exit_code, 1) << describe(local);
  const auto want = outcomes(local.out);
  EXPECT_GE(want.size(), 30u) << local.out;
  const ProcResult remote = dtest({"-v", "--tx", ssh_tx(2, kCtestFixtureEnv), "--rsyncdir", build, build}, work_);
  EXPECT_EQ(remote.exit_code, 1) << describe(remote);
  EXPECT_EQ(outcomes(remote.out), want) << "ssh:\n" << remote.out << "\npopen:\n" << local.out;
}

// The tree's programs, WORKING_DIRECTORY folders and default folders are
// the copy's: the local tree stays untouched.
TEST_F(FrameworksSsh, CtestBuildTreeRunsFromTheRemoteCopy) {
  const std::string build = build_cmake_project("ctest_remote");
  const ProcResult r = dtest({"-v", "--tx", ssh_tx(1), "--rsyncdir", build, build}, work_);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const std::map<std::string, std::string> want = {{"tool_in_tree", "passed"}, {"default_directory", "passed"},
                                                   {"working_directory", "passed"}, {"passes", "passed"},
                                                   {"fails", "failed"},         {"skips", "skipped"}};
  EXPECT_EQ(outcomes(r.out), want) << r.out;
  for (const std::string marker : {"ran_tool.txt", "ran_default.txt", "ran_wd.txt"}) {
    EXPECT_TRUE(local_markers(marker).empty())
        << marker << " written in the local tree: " << read_file(local_markers(marker)[0]);
    const auto copies = remote_markers(marker);
    EXPECT_EQ(copies.size(), 1u) << marker << " not written in the agent's copy";
    for (const auto& c : copies) {
      const std::string text = read_file(c);
      EXPECT_TRUE(text.rfind(remote_home_ + "/", 0) == 0) << marker << ": " << text;
    }
  }
}

// ---------------------------------------------------------------------------
// Command suites
// ---------------------------------------------------------------------------

TEST_F(FrameworksSsh, CommandSuitesOverSshMatchPopen) {
  const std::string p = project("command_suite");
  write_file(p + "/dtest.toml", kCommandSuiteToml + R"(
[[suite]]
kind = "command"
name = "where"
list = "echo here"
run = "pwd > ran_here.txt"
)");
  const ProcResult local = dtest({"-v", "--tx", "2*popen"}, p);
  EXPECT_EQ(local.exit_code, 1) << describe(local);
  const auto want = outcomes(local.out);
  auto expected = kCommandSuiteOutcomes;
  expected.emplace("where::here", "passed");
  EXPECT_EQ(want, expected) << local.out;
  remove_markers("ran_here.txt");

  const ProcResult remote = dtest({"-v", "--tx", ssh_tx(2), "--rsyncdir", "."}, p);
  EXPECT_EQ(remote.exit_code, 1) << describe(remote);
  EXPECT_EQ(outcomes(remote.out), expected) << remote.out;
  EXPECT_TRUE(local_markers("ran_here.txt").empty()) << "the local tree ran, not the agent's copy";
  const auto copies = remote_markers("ran_here.txt");
  ASSERT_EQ(copies.size(), 1u) << ::testing::PrintToString(find_named(remote_home_, "ran_here.txt"));
  EXPECT_TRUE(read_file(copies[0]).rfind(remote_home_ + "/", 0) == 0) << read_file(copies[0]);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  g_env = new SshdEnv;
  ::testing::AddGlobalTestEnvironment(g_env);
  return RUN_ALL_TESTS();
}
