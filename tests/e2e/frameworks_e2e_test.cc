// The frameworks beyond GoogleTest end to end: the real dtest (and through it
// the real agent) over real pytest (Debian's /usr/bin/python3), real CTest
// build trees (configured and built with the real cmake) and command suites,
// checked against what pytest and ctest themselves report on the same tests.
//
// Every test copies the fixtures it needs into a temp dir of its own (dtest
// writes .dtest/ into the rootdir, pytest its caches) and removes it at the
// end. Every subprocess runs under a hard timeout (tests/support/
// subprocess.h); no test asserts on how long something took. Without pytest
// in /usr/bin/python3 the pytest tests are skipped, with the reason.

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pugixml.hpp>

#include "support/command_suite.h"
#include "support/files.h"
#include "support/subprocess.h"
#include "support/text.h"
#include "support/verbose.h"

namespace {

namespace fs = std::filesystem;
using dtest::testing::by_id;
using dtest::testing::contains;
using dtest::testing::copy_tree;
using dtest::testing::describe;
using dtest::testing::outcomes;
using dtest::testing::parse_verbose;
using dtest::testing::ProcResult;
using dtest::testing::read_file;
using dtest::testing::RunOptions;
using dtest::testing::split_lines;
using dtest::testing::write_file;
using dtest::testing::kCommandSuiteOutcomes;
using dtest::testing::kCommandSuiteToml;

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kFixtures = FIXTURES_SRC_DIR;
const std::string kCmake = CMAKE_BIN;
const std::string kCtest = CTEST_BIN;
const std::string kPython = "/usr/bin/python3";
const std::string kPy2 = "2*popen//python=/usr/bin/python3";

// The environment the ctest_project fixture expects of both ctest and dtest
// (its `environment` test checks them).
const std::map<std::string, std::string> kCtestFixtureEnv = {{"DTEST_FX_INHERITED", "base"},
                                                             {"DTEST_FX_UNSET_ME", "present"}};

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

// ---------------------------------------------------------------------------
// Reading dtest's -v output (tests/support/verbose.h)
// ---------------------------------------------------------------------------

template <class K, class V>
std::set<K> keys(const std::map<K, V>& m) {
  std::set<K> s;
  for (const auto& [k, v] : m) s.insert(k);
  return s;
}

// The lines of the FAILURES section under "____ ID ____", up to the next rule.
std::string failure_block(const std::string& out, const std::string& id) {
  std::string block;
  bool in = false;
  for (const auto& l : split_lines(out)) {
    const bool rule = l.rfind("___", 0) == 0 || l.rfind("===", 0) == 0;
    if (rule) {
      if (in) break;
      const auto b = l.find_first_not_of('_'), e = l.find_last_not_of('_');
      if (b != std::string::npos && l.rfind("___", 0) == 0 && l.substr(b, e - b + 1) == " " + id + " ") in = true;
      continue;
    }
    if (in) block += l + "\n";
  }
  return block;
}

// ---------------------------------------------------------------------------
// JUnit XML (pytest's, ctest's and dtest's)
// ---------------------------------------------------------------------------

struct JCase {
  std::string classname, name;
  std::string status;        // the status attribute (ctest), if any
  std::string element;       // "failure", "error", "skipped" or "" (the first one)
  std::string element_type;  // its type attribute
  std::string message;       // its message attribute
  std::map<std::string, std::string> properties;
};

void collect_cases(pugi::xml_node n, std::vector<JCase>& out) {
  for (pugi::xml_node c : n.children()) {
    if (c.type() != pugi::node_element) continue;
    const std::string tag = c.name();
    if (tag == "testsuites" || tag == "testsuite") {
      collect_cases(c, out);
    } else if (tag == "testcase") {
      JCase j;
      j.classname = c.attribute("classname").value();
      j.name = c.attribute("name").value();
      j.status = c.attribute("status").value();
      for (pugi::xml_node e : c.children()) {
        const std::string en = e.name();
        if (en == "properties") {
          for (pugi::xml_node p : e.children("property"))
            j.properties[p.attribute("name").value()] = p.attribute("value").value();
        } else if (j.element.empty() && (en == "failure" || en == "error" || en == "skipped")) {
          j.element = en;
          j.element_type = e.attribute("type").value();
          j.message = e.attribute("message").value();
        }
      }
      out.push_back(std::move(j));
    }
  }
}

std::vector<JCase> junit_cases(const std::string& path) {
  pugi::xml_document doc;
  const pugi::xml_parse_result r = doc.load_file(path.c_str());
  EXPECT_TRUE(r) << path << ": " << r.description() << "\n" << read_file(path);
  std::vector<JCase> out;
  collect_cases(doc, out);
  return out;
}

// pytest's outcome of a testcase in its own JUnit XML, in dtest's words: an
// <error> (set-up or teardown) counts as failed, a non-strict XPASS is a
// plain pass in pytest's XML.
std::string pytest_outcome(const JCase& c) {
  if (c.element == "failure" || c.element == "error") return "failed";
  if (c.element == "skipped") return c.element_type == "pytest.xfail" ? "xfailed" : "skipped";
  return "passed";
}

using JKey = std::pair<std::string, std::string>;  // (classname, name)

// The (classname, name) pytest's --junitxml gives a node id
// (_pytest.junitxml.mangle_test_address): the path's '/' become '.', ".py"
// goes, "::" become '.', and the parameters stay with the last name.
JKey pytest_junit_key(const std::string& nodeid) {
  const auto bracket = nodeid.find('[');
  const std::string path = nodeid.substr(0, bracket);
  const std::string params = bracket == std::string::npos ? "" : nodeid.substr(bracket);
  std::vector<std::string> names;
  for (std::size_t start = 0;;) {
    const auto sep = path.find("::", start);
    names.push_back(path.substr(start, sep == std::string::npos ? std::string::npos : sep - start));
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  std::replace(names[0].begin(), names[0].end(), '/', '.');
  if (names[0].size() > 3 && names[0].ends_with(".py")) names[0].resize(names[0].size() - 3);
  names.back() += params;
  std::string classname;
  for (std::size_t i = 0; i + 1 < names.size(); ++i) classname += (i ? "." : "") + names[i];
  return {classname, names.back()};
}

// ---------------------------------------------------------------------------
// The fixture: a temp dir, copies of fixtures, the tools
// ---------------------------------------------------------------------------

// Processes whose working directory is under `dir`.
std::vector<std::string> processes_in(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    std::error_code ec2;
    const std::string cwd = fs::read_symlink(e.path() / "cwd", ec2).string();
    if (ec2 || (cwd != dir && cwd.rfind(dir + "/", 0) != 0)) continue;
    std::string cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    found.push_back(n + ": " + cmd);
  }
  return found;
}

class Frameworks : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = dtest::testing::make_temp_dir("dtest-fw-e2e");
    ASSERT_FALSE(tmp_.empty());
  }
  void TearDown() override { dtest::testing::remove_tree(tmp_); }

  // A copy of tests/fixtures/NAME in the temp dir.
  std::string project(const std::string& name, const std::string& as = "") {
    const std::string to = tmp_ + "/" + (as.empty() ? name : as);
    copy_tree(kFixtures + "/" + name, to);
    return to;
  }

  ProcResult run(const std::vector<std::string>& argv, const std::string& cwd,
                 const std::map<std::string, std::string>& env = {}, double timeout = 180) {
    RunOptions o;
    o.cwd = cwd;
    o.timeout = timeout;
    o.env = env;
    // ctest_project's variables reach its tests only where a test says so.
    for (const auto& [k, v] : kCtestFixtureEnv)
      if (!env.count(k)) o.unset.insert(k);
    o.env.emplace("PYTHONDONTWRITEBYTECODE", "1");
    ProcResult r = dtest::testing::run_process(argv, o);
    if (r.timed_out) {
      std::string cmd;
      for (const auto& a : argv) cmd += " " + a;
      ADD_FAILURE() << "did not finish within " << timeout << " s (killed):" << cmd << "\n" << describe(r);
    }
    return r;
  }

  ProcResult dtest(const std::vector<std::string>& args, const std::string& cwd,
                   std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {kDtest};
    argv.insert(argv.end(), args.begin(), args.end());
    env.emplace("DTEST_AGENT", kAgent);
    env.emplace("DTEST_CACHE_DIR", tmp_ + "/cache");
    return run(argv, cwd, env);
  }

  // The node ids pytest collects for `args` in `cwd`.
  std::set<std::string> pytest_ids(const std::string& cwd, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {kPython, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"};
    argv.insert(argv.end(), args.begin(), args.end());
    const ProcResult r = run(argv, cwd);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    std::set<std::string> ids;
    for (const auto& l : split_lines(r.out))
      if (contains(l, "::")) ids.insert(l);
    return ids;
  }

  // tests/fixtures/NAME configured and built into the temp dir.
  std::string build_cmake_project(const std::string& name) {
    const std::string build = tmp_ + "/" + name + "-build";
    ProcResult r = run({kCmake, "-S", kFixtures + "/" + name, "-B", build, "-G", "Ninja"}, tmp_);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    r = run({kCmake, "--build", build}, tmp_);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    return build;
  }

  // The test names `ctest -N` lists in a build tree ("  Test #25: disabled
  // (Disabled)").
  std::set<std::string> ctest_names(const std::string& build) {
    const ProcResult r = run({kCtest, "-N"}, build);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    static const std::regex re(R"(^\s*Test\s+#\d+: (.+?)(?: \(Disabled\))?$)");
    std::set<std::string> names;
    for (const auto& l : split_lines(r.out)) {
      std::smatch m;
      if (std::regex_match(l, m, re)) names.insert(m[1]);
    }
    return names;
  }

  std::string tmp_;
};

// dtest's outcomes folded to ctest's three verdicts.
std::string ctest_class(const std::string& dtest_outcome) {
  if (dtest_outcome == "passed") return "passed";
  if (dtest_outcome == "skipped") return "skipped";
  if (dtest_outcome == "failed" || dtest_outcome == "crashed" || dtest_outcome == "timeout" ||
      dtest_outcome == "not run")
    return "failed";
  return "unexpected outcome " + dtest_outcome;
}

// ===========================================================================
// 1. pytest's outcomes, test by test
// ===========================================================================

// pytest itself, as on worker gw0 of one (test_env_worker reads the xdist
// variables), and dtest on two workers, over the same files.
struct PytestPair {
  ProcResult direct, dtest;
  std::string dir;
};

class PytestVsDtest : public Frameworks {
 protected:
  PytestPair both() {
    PytestPair p;
    p.dir = project("pytest_project");
    p.direct =
        run({kPython, "-m", "pytest", "-p", "no:cacheprovider", "--junitxml=direct.xml", "tests/test_outcomes.py",
             "tests/test_more.py"},
            p.dir, {{"PYTEST_XDIST_WORKER", "gw0"}, {"PYTEST_XDIST_WORKER_COUNT", "1"}, {"DTEST_WORKER", "gw0"}});
    p.dtest =
        dtest({"--tx", kPy2, "-v", "--junitxml=dtest.xml", "tests/test_outcomes.py", "tests/test_more.py"}, p.dir);
    return p;
  }
};

TEST_F(PytestVsDtest, EveryTestHasPytestsOutcome) {
  REQUIRE_PYTEST();
  const PytestPair p = both();
  EXPECT_EQ(p.direct.exit_code, 1) << describe(p.direct);
  EXPECT_EQ(p.dtest.exit_code, 1) << describe(p.dtest);

  std::map<JKey, std::string> want;
  for (const auto& c : junit_cases(p.dir + "/direct.xml"))
    EXPECT_TRUE(want.emplace(JKey{c.classname, c.name}, pytest_outcome(c)).second) << c.classname << " " << c.name;
  ASSERT_EQ(want.size(), 20u) << read_file(p.dir + "/direct.xml");

  const auto lines = by_id(parse_verbose(p.dtest.out));
  std::map<JKey, std::string> got;
  for (const auto& [id, l] : lines) {
    EXPECT_TRUE(got.emplace(pytest_junit_key(id), l.outcome).second) << id;
    EXPECT_TRUE(l.worker == "gw0" || l.worker == "gw1") << id << " ran on '" << l.worker << "'";
  }
  EXPECT_EQ(got, want) << p.dtest.out;

  // The mapping's edges: pytest's errors and output.
  const auto& setup = lines.at("tests/test_outcomes.py::test_setup_error");
  EXPECT_TRUE(setup.message.starts_with("error in setup: ")) << setup.message;
  EXPECT_TRUE(contains(setup.message, "setup exploded")) << setup.message;
  const auto& teardown = lines.at("tests/test_outcomes.py::test_teardown_error");
  EXPECT_TRUE(teardown.message.starts_with("error in teardown: ")) << teardown.message;
  EXPECT_EQ(lines.at("tests/test_outcomes.py::test_skip").message, "not today");
  EXPECT_EQ(lines.at("tests/test_outcomes.py::test_xfail").message, "known bug");
  EXPECT_TRUE(contains(failure_block(p.dtest.out, "tests/test_outcomes.py::test_prints"), "hello from a test"))
      << p.dtest.out;

  // dtest's own JUnit XML holds the same 20 results.
  const auto cases = junit_cases(p.dir + "/dtest.xml");
  EXPECT_EQ(cases.size(), 20u);
  std::multiset<std::string> xml_outcomes, v_outcomes;
  for (const auto& c : cases) xml_outcomes.insert(c.properties.count("outcome") ? c.properties.at("outcome") : "?");
  for (const auto& [id, l] : lines) v_outcomes.insert(l.outcome);
  EXPECT_EQ(xml_outcomes, v_outcomes);
}

// A JUnit consumer sees pytest's tests under the names pytest's own
// --junitxml gives them.
TEST_F(PytestVsDtest, JunitXmlNamesTestsAsPytestDoes) {
  REQUIRE_PYTEST();
  const PytestPair p = both();
  std::set<JKey> want, got;
  for (const auto& c : junit_cases(p.dir + "/direct.xml")) want.insert({c.classname, c.name});
  for (const auto& c : junit_cases(p.dir + "/dtest.xml")) got.insert({c.classname, c.name});
  ASSERT_EQ(want.size(), 20u);
  EXPECT_EQ(got, want) << read_file(p.dir + "/dtest.xml");
}

// ===========================================================================
// 2. A worker that dies mid-test, a test that hangs
// ===========================================================================

TEST_F(Frameworks, PytestCrashAndTimeout) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  const ProcResult r = dtest({"--tx", kPy2, "-v", "--timeout", "2", "tests/test_crash.py"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const std::map<std::string, std::string> want = {{"tests/test_crash.py::test_before_crash", "passed"},
                                                   {"tests/test_crash.py::test_crash", "crashed"},
                                                   {"tests/test_crash.py::test_after_crash", "passed"},
                                                   {"tests/test_crash.py::test_hang", "timeout"}};
  EXPECT_EQ(outcomes(r.out), want) << r.out;
  EXPECT_TRUE(contains(failure_block(r.out, "tests/test_crash.py::test_crash"), "exited mid-test")) << r.out;
  EXPECT_TRUE(contains(failure_block(r.out, "tests/test_crash.py::test_hang"), "timed out")) << r.out;
  // The hung pytest worker was killed, not left sleeping.
  std::vector<std::string> left;
  for (int k = 0; k < 100; ++k) {
    left = processes_in(p);
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(left.empty()) << "still running in " << p << ":\n" << ::testing::PrintToString(left);
}

// ===========================================================================
// 3. Selection and distribution modes
// ===========================================================================

TEST_F(Frameworks, PytestArgumentsAfterDoubleDashSelect) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  const ProcResult r = dtest({"--tx", kPy2, "-v", "tests/test_outcomes.py", "tests/test_more.py", "--", "-k", "db"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const std::map<std::string, std::string> want = {{"tests/test_more.py::test_db_1", "passed"},
                                                   {"tests/test_more.py::test_db_2", "passed"}};
  EXPECT_EQ(outcomes(r.out), want) << r.out;
}

TEST_F(Frameworks, LoadfileKeepsEachPytestFileOnOneWorker) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  const ProcResult r =
      dtest({"--tx", kPy2, "-v", "--dist", "loadfile", "tests/test_outcomes.py", "tests/test_more.py"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  EXPECT_EQ(lines.size(), 20u) << r.out;
  std::map<std::string, std::set<std::string>> workers;  // file -> workers
  for (const auto& [id, l] : lines) workers[id.substr(0, id.find("::"))].insert(l.worker);
  EXPECT_EQ(keys(workers), (std::set<std::string>{"tests/test_more.py", "tests/test_outcomes.py"}));
  for (const auto& [file, ws] : workers) EXPECT_EQ(ws.size(), 1u) << file << "\n" << r.out;
}

TEST_F(Frameworks, LoadgroupKeepsXdistGroupsOnOneWorker) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  ProcResult r = dtest({"--tx", kPy2, "-v", "--dist", "loadgroup", "tests/test_outcomes.py", "tests/test_more.py"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  auto lines = by_id(parse_verbose(r.out));
  ASSERT_TRUE(lines.count("tests/test_more.py::test_db_1") && lines.count("tests/test_more.py::test_db_2")) << r.out;
  EXPECT_EQ(lines.at("tests/test_more.py::test_db_1").worker, lines.at("tests/test_more.py::test_db_2").worker)
      << r.out;

  // Bigger groups: xdist_group(name=...) and xdist_group("...") marks, and a
  // --group regex for unmarked tests.
  const std::string p2 = project("pytest_project2");
  r = dtest({"--tx", kPy2, "-v", "--dist", "loadgroup", "--group", R"(::test_free\[)", "tests/test_groups.py"}, p2);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  lines = by_id(parse_verbose(r.out));
  EXPECT_EQ(lines.size(), 18u) << r.out;
  std::map<std::string, std::set<std::string>> workers;  // test function -> workers
  for (const auto& [id, l] : lines) {
    EXPECT_EQ(l.outcome, "passed") << id;
    workers[id.substr(0, id.find('['))].insert(l.worker);
  }
  EXPECT_EQ(workers.size(), 3u) << r.out;
  for (const auto& [fn, ws] : workers) EXPECT_EQ(ws.size(), 1u) << fn << "\n" << r.out;
}

// ===========================================================================
// 4. pytest-xdist's worker variables
// ===========================================================================

TEST_F(Frameworks, XdistVariablesNameTheWorkerThatRanTheTest) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  ProcResult r = dtest({"--tx", kPy2, "-v", "tests/test_outcomes.py::test_env_worker"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(outcomes(r.out),
            (std::map<std::string, std::string>{{"tests/test_outcomes.py::test_env_worker", "passed"}}))
      << r.out;

  // Each test writes what it saw to worker_log/<n>.txt.
  const std::string p2 = project("pytest_project2");
  r = dtest({"--tx", kPy2, "-v", "tests/test_workers.py"}, p2);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  EXPECT_EQ(lines.size(), 8u) << r.out;
  for (int n = 0; n < 8; ++n) {
    const std::string id = "tests/test_workers.py::test_records_worker[" + std::to_string(n) + "]";
    ASSERT_TRUE(lines.count(id)) << id << "\n" << r.out;
    const std::string tag = lines.at(id).worker;
    EXPECT_EQ(read_file(p2 + "/worker_log/" + std::to_string(n) + ".txt"), tag + " 2 " + tag + "\n") << id;
  }
}

// pytest-cov: each worker saves its data (the lines traced before its session
// started too); `coverage combine` of them reports what pytest-xdist's
// controller reports for the same run, line for line.
TEST_F(Frameworks, PytestCovDataOfEveryWorkerCombinesToWhatXdistReports) {
  REQUIRE_PYTEST();
  {
    RunOptions o;
    o.timeout = 60;
    ASSERT_EQ(dtest::testing::run_process({kPython, "-c", "import pytest_cov, xdist"}, o).exit_code, 0)
        << "scripts/deps.sh installs python3-pytest-cov and python3-pytest-xdist";
  }
  // The parallel data files (.coverage.*) in `dir`.
  auto data_files = [](const std::string& dir) {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().rfind(".coverage.", 0) == 0) ++n;
    return n;
  };
  // The coverage table, by `coverage report -m` in `dir` (after combining
  // the parallel data files there, if any), less its header and rules.
  auto report = [&](const std::string& dir) {
    if (data_files(dir) > 0) {
      const ProcResult c = run({kPython, "-m", "coverage", "combine"}, dir);
      EXPECT_EQ(c.exit_code, 0) << describe(c);
    }
    const ProcResult c = run({kPython, "-m", "coverage", "report", "-m"}, dir);
    EXPECT_EQ(c.exit_code, 0) << describe(c);
    std::vector<std::string> rows;
    for (const auto& l : split_lines(c.out))
      if (!l.empty() && l[0] != '-' && l.rfind("Name", 0) != 0) rows.push_back(l);
    return rows;
  };
  const std::string p = project("pytest_cov_project");
  const ProcResult r = dtest({"--tx", kPy2, "-q", "--", "--cov=."}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "dtest: pytest-cov: each pytest worker saved its coverage data")) << r.out;
  EXPECT_GE(data_files(p), 2);  // two workers at least; three or four with their early data
  const auto got = report(p);

  const std::string x = project("pytest_cov_project", "xdist");
  const ProcResult xr = run({kPython, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--cov=.",
                             "--cov-report="},
                            x);
  EXPECT_EQ(xr.exit_code, 0) << describe(xr);
  const auto want = report(x);
  ASSERT_FALSE(want.empty());
  EXPECT_EQ(got, want);
  // The package's module-level lines, run when the conftest imported it,
  // are in: only the bodies never run are missed.
  bool calc_row = false;
  for (const auto& row : want)
    if (row.rfind("calc/__init__.py", 0) == 0) {
      calc_row = true;
      EXPECT_TRUE(std::regex_search(row, std::regex(R"(\s9\s+2\s+78%\s+11, 16$)"))) << row;
    }
  EXPECT_TRUE(calc_row) << ::testing::PrintToString(want);
}

// ===========================================================================
// 5. Config files
// ===========================================================================

const std::string kMoreToml = R"(# the suites of this project
tx = ["2*popen//python=/usr/bin/python3"]

[[suite]]
kind = "pytest"
args = ["tests/test_more.py"]
)";

TEST_F(Frameworks, ConfigFileSuitesRunWithoutArguments) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  write_file(p + "/dtest.toml", kMoreToml);
  const auto want = pytest_ids(p, {"tests/test_more.py"});
  ASSERT_EQ(want.size(), 7u);
  ProcResult r = dtest({"-v"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(keys(outcomes(r.out)), want) << r.out;
  EXPECT_TRUE(contains(r.out, "starting 2 gateways")) << r.out;
  // Found walking up from a subfolder; the suite still runs in the rootdir.
  r = dtest({"-v"}, p + "/tests");
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(keys(outcomes(r.out)), want) << r.out;
  EXPECT_TRUE(fs::exists(p + "/.dtest")) << "the run repository belongs in the rootdir";
  EXPECT_FALSE(fs::exists(p + "/tests/.dtest"));
}

TEST_F(Frameworks, ShowConfigNamesWhereEachSettingCameFrom) {
  const std::string p = project("pytest_project");
  write_file(p + "/dtest.toml", kMoreToml);
  const ProcResult r = dtest({"--show-config", "--dist", "loadfile"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "tx: 2*popen//python=/usr/bin/python3  (" + p + "/dtest.toml:2)")) << r.out;
  EXPECT_TRUE(contains(r.out, "dist: loadfile  (command line)")) << r.out;
  EXPECT_TRUE(contains(r.out, "configfile: " + p + "/dtest.toml")) << r.out;
  EXPECT_TRUE(contains(r.out, "  - pytest cwd=" + p + " args=[\"tests/test_more.py\"]")) << r.out;
  EXPECT_FALSE(contains(r.out, "test session starts")) << r.out;
  EXPECT_FALSE(fs::exists(p + "/.dtest")) << "--show-config ran something";
}

TEST_F(Frameworks, PyprojectToolDtestTable) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  write_file(p + "/pyproject.toml", R"([project]
name = "fixture"
version = "0"

[tool.dtest]
tx = ["2*popen//python=/usr/bin/python3"]

[[tool.dtest.suite]]
kind = "pytest"
args = ["tests/test_more.py"]
)");
  ProcResult r = dtest({"--show-config"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "(" + p + "/pyproject.toml:6)")) << r.out;
  r = dtest({"-v"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(keys(outcomes(r.out)), pytest_ids(p, {"tests/test_more.py"})) << r.out;
  // In one folder, dtest.toml wins over pyproject.toml.
  write_file(p + "/dtest.toml", "tx = [\"popen//python=/usr/bin/python3\"]\n");
  r = dtest({"--show-config"}, p);
  EXPECT_TRUE(contains(r.out, "configfile: " + p + "/dtest.toml")) << r.out;
}

TEST_F(Frameworks, ExplicitConfigFileWinsOverTheOneFound) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  write_file(p + "/dtest.toml", kMoreToml);
  write_file(p + "/other.toml", R"(tx = ["popen//python=/usr/bin/python3"]
dist = "loadfile"

[[suite]]
kind = "pytest"
args = ["tests/test_more.py", "-k", "db"]
)");
  ProcResult r = dtest({"-c", "other.toml", "--show-config"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "dist: loadfile  (other.toml:2)")) << r.out;
  EXPECT_FALSE(contains(r.out, "2*popen")) << "dtest.toml was read as well:\n" << r.out;
  r = dtest({"-c", "other.toml", "-v"}, p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(outcomes(r.out), (std::map<std::string, std::string>{{"tests/test_more.py::test_db_1", "passed"},
                                                                 {"tests/test_more.py::test_db_2", "passed"}}))
      << r.out;
}

TEST_F(Frameworks, BadConfigReportsEveryProblemAndRunsNothing) {
  const std::string p = project("pytest_project");
  write_file(p + "/dtest.toml", R"(tx = ["popen//python=/usr/bin/python3"]
colour = "red"
dist = "sideways"

[[suite]]
kind = "pytest"
args = ["tests/test_more.py"]
)");
  const ProcResult r = dtest({"-v"}, p);
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "dtest.toml:2: unknown key 'colour'")) << r.err;
  EXPECT_TRUE(std::regex_search(r.err, std::regex(R"(dtest\.toml:3: .*sideways)"))) << r.err;
  EXPECT_FALSE(contains(r.out, "test session starts")) << r.out;
  EXPECT_TRUE(parse_verbose(r.out).empty()) << r.out;
  EXPECT_FALSE(fs::exists(p + "/.dtest")) << "a run was recorded";
}

// A [[suite]]'s env reaches its tests, whatever the kind.
TEST_F(Frameworks, SuiteEnvReachesTheTests) {
  const std::string build = build_cmake_project("ctest_project");
  const std::string p = project("command_suite");
  write_file(p + "/dtest.toml",
             "[[suite]]\nkind = \"ctest\"\nbuild_dir = \"" + build +
                 "\"\nenv = { DTEST_FX_INHERITED = \"base\", DTEST_FX_UNSET_ME = \"present\" }\n\n"
                 "[[suite]]\nkind = \"command\"\nname = \"env\"\nlist = \"echo greeting\"\n"
                 "run = 'test \"$FX_GREETING\" = \"hello there\"'\nenv = { FX_GREETING = \"hello there\" }\n");
  const ProcResult r = dtest({"-v"}, p);  // the variables are not in dtest's environment
  const auto got = outcomes(r.out);
  EXPECT_EQ(got.count("environment") ? got.at("environment") : "(not reported)", "passed") << r.out;
  EXPECT_EQ(got.count("env::greeting") ? got.at("env::greeting") : "(not reported)", "passed") << r.out;
}

// ===========================================================================
// 6. What the working directory looks like
// ===========================================================================

TEST_F(Frameworks, AutoDetectsAPytestProject) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project");
  fs::remove(p + "/tests/test_crash.py");
  // python3 on PATH must be one with pytest.
  const std::map<std::string, std::string> env = {{"PATH", "/usr/bin:/bin"}};
  const ProcResult r = dtest({"-n", "2", "-v"}, p, env);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.out, "running the pytest suite of " + p)) << r.out;
  const auto want = pytest_ids(p, {});
  EXPECT_EQ(want.size(), 20u);
  EXPECT_EQ(keys(outcomes(r.out)), want) << r.out;
}

TEST_F(Frameworks, AutoDetectsACmakeBuildTree) {
  const std::string build = build_cmake_project("ctest_project");
  const ProcResult r = dtest({"-n", "2", "-v"}, build, kCtestFixtureEnv);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.out, "running the CTest tests of this build tree")) << r.out;
  const auto got = outcomes(r.out);
  const auto want = ctest_names(build);
  EXPECT_GE(want.size(), 30u);
  EXPECT_EQ(keys(got), want) << r.out;
  EXPECT_EQ(got.count("pass") ? got.at("pass") : "", "passed");
  EXPECT_EQ(got.count("fail") ? got.at("fail") : "", "failed");
}

// ===========================================================================
// 7. CTest's verdicts, test by test
// ===========================================================================

TEST_F(Frameworks, CtestOutcomesMatchCtest) {
  const std::string build = build_cmake_project("ctest_project");
  const ProcResult c = run({kCtest, "--output-junit", "ctest.xml"}, build, kCtestFixtureEnv, 300);
  EXPECT_NE(c.exit_code, 0) << describe(c);  // the fixture has failures
  // ctest's summary names the tests that failed, "Not Run" ones included
  // (its JUnit XML files those under status="notrun", as it does skips).
  std::set<std::string> failed_by_summary;
  {
    static const std::regex re(R"(^\s*\d+ - (\S+) \(.*\)$)");
    bool in = false;
    for (const auto& l : split_lines(c.out)) {
      if (contains(l, "The following tests FAILED:")) in = true;
      else if (in) {
        std::smatch m;
        if (std::regex_match(l, m, re)) failed_by_summary.insert(m[1]);
        else in = false;
      }
    }
  }
  std::map<std::string, std::string> want;
  for (const auto& tc : junit_cases(build + "/ctest.xml")) {
    std::string v;
    if (failed_by_summary.count(tc.name) || tc.status == "fail") v = "failed";
    else if (tc.status == "run") v = "passed";
    else if (tc.status == "notrun" || tc.status == "disabled") v = "skipped";
    else v = "unknown ctest status " + tc.status;
    EXPECT_TRUE(want.emplace(tc.name, v).second) << tc.name;
  }
  EXPECT_GE(want.size(), 30u) << c.out;

  const ProcResult r = dtest({"-n", "2", "-v", "--junitxml=dtest.xml", build}, tmp_, kCtestFixtureEnv);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  std::map<std::string, std::string> got;
  for (const auto& [name, o] : outcomes(r.out)) got[name] = ctest_class(o);
  EXPECT_EQ(got, want) << "dtest:\n" << r.out << "\nctest:\n" << c.out;

  std::set<std::string> xml_names;
  for (const auto& tc : junit_cases(tmp_ + "/dtest.xml")) xml_names.insert(tc.name);
  EXPECT_EQ(xml_names, keys(want));
}

// PROCESSORS k holds k-1 more of the workers of its host idle while the test
// runs (no more than the host has); RUN_SERIAL runs alone. Each test logs
// when it starts and ends; the intervals show what ran beside what.
TEST_F(Frameworks, CtestProcessorsAndRunSerialHoldWorkers) {
  const std::string src = tmp_ + "/weights", build = tmp_ + "/weights-build";
  fs::create_directories(src);
  write_file(src + "/span.sh",
             "echo \"$2 start $(date +%s%N)\" >> \"$1\"\nsleep 0.3\necho \"$2 end $(date +%s%N)\" >> \"$1\"\n");
  std::string cmake = "cmake_minimum_required(VERSION 3.16)\nproject(weights LANGUAGES NONE)\nenable_testing()\n";
  for (const std::string name : {"light0", "light1", "light2", "light3", "light4", "light5", "light6", "light7",
                                 "heavy2", "heavy9", "serial"})
    cmake += "add_test(NAME " + name + " COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/span.sh " +
             "${CMAKE_CURRENT_BINARY_DIR}/spans.log " + name + ")\n";
  cmake += "set_tests_properties(heavy2 PROPERTIES PROCESSORS 2)\n"
           "set_tests_properties(heavy9 PROPERTIES PROCESSORS 9)\n"
           "set_tests_properties(serial PROPERTIES RUN_SERIAL TRUE)\n";
  write_file(src + "/CMakeLists.txt", cmake);
  ProcResult c = run({kCmake, "-S", src, "-B", build, "-G", "Ninja"}, tmp_);
  ASSERT_EQ(c.exit_code, 0) << describe(c);

  const ProcResult r = dtest({"-n", "3", "-v", build}, tmp_);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto got = outcomes(r.out);
  EXPECT_EQ(got.size(), 11u) << r.out;
  for (const auto& [name, o] : got) EXPECT_EQ(o, "passed") << name;

  std::map<std::string, std::pair<long long, long long>> span;
  for (const auto& l : split_lines(read_file(build + "/spans.log"))) {
    std::istringstream in(l);
    std::string name, what;
    long long ns = 0;
    ASSERT_TRUE(in >> name >> what >> ns) << l;
    (what == "start" ? span[name].first : span[name].second) = ns;
  }
  ASSERT_EQ(span.size(), 11u);
  // The most other tests running at one moment while `name` ran.
  auto beside = [&](const std::string& name) {
    const auto [from, to] = span.at(name);
    std::vector<std::pair<long long, int>> edges;
    for (const auto& [other, s] : span)
      if (other != name && s.first < to && from < s.second) {
        edges.emplace_back(std::max(s.first, from), 1);
        edges.emplace_back(std::min(s.second, to), -1);
      }
    std::sort(edges.begin(), edges.end());  // an end sorts before a start at the same instant
    int now = 0, most = 0;
    for (const auto& e : edges) most = std::max(most, now += e.second);
    return most;
  };
  EXPECT_LE(beside("heavy2"), 1) << r.out;
  EXPECT_EQ(beside("heavy9"), 0) << r.out;  // all three workers of the host
  EXPECT_EQ(beside("serial"), 0) << r.out;
  // Otherwise the workers did run side by side.
  int most = 0;
  for (const auto& [name, s] : span)
    if (name.rfind("light", 0) == 0) most = std::max(most, beside(name));
  EXPECT_GE(most, 1) << r.out;
}

// ===========================================================================
// 8. Command suites
// ===========================================================================

TEST_F(Frameworks, CommandSuitesTapAndFiles) {
  const std::string p = project("command_suite");
  write_file(p + "/dtest.toml", kCommandSuiteToml);
  const ProcResult r = dtest({"-n", "2", "-v"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_EQ(outcomes(r.out), kCommandSuiteOutcomes) << r.out;
  // What the failing case printed reaches the report, both ways.
  EXPECT_TRUE(contains(failure_block(r.out, "tap::fails"), "expected 2, got 3")) << r.out;
  EXPECT_TRUE(contains(failure_block(r.out, "files::cases/fails.sh"), "expected 2, got 3")) << r.out;
}

std::string junit_suite_toml(const std::string& extra = "") {
  return R"([[suite]]
kind = "command"
name = "junit"
list = "./list.sh"
run = "./run_junit.sh {ids}"
format = "junit"
result_file = "results/report-{worker}.xml"
)" + extra;
}

const std::map<std::string, std::string> kJunitSuiteOutcomes = {
    {"junit::Math.adds", "passed"},  {"junit::Math.divides", "passed"},       {"junit::Math.overflows", "failed"},
    {"junit::Io.reads", "passed"},   {"junit::Io.needs_network", "skipped"}, {"junit::Io.writes", "passed"}};

TEST_F(Frameworks, CommandSuiteWithAJunitResultFile) {
  const std::string p = project("junit_command_suite");
  write_file(p + "/dtest.toml", junit_suite_toml());
  const ProcResult r = dtest({"-v"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  std::map<std::string, std::string> got;
  for (const auto& [id, l] : lines) got[id] = l.outcome;
  EXPECT_EQ(got, kJunitSuiteOutcomes) << r.out;
  if (lines.count("junit::Math.overflows")) {
    EXPECT_EQ(lines.at("junit::Math.overflows").message, "2147483647 + 1 < 0");
  }
  if (lines.count("junit::Io.needs_network")) {
    EXPECT_EQ(lines.at("junit::Io.needs_network").message, "no network here");
  }
  EXPECT_TRUE(contains(failure_block(r.out, "junit::Math.overflows"), "overflow in Math.overflows")) << r.out;
}

// Two workers on one host run two batches of the suite at once, in the same
// folder: each batch must be judged by its own report. (The run script
// waits, after writing its report, until both batches have started.)
TEST_F(Frameworks, CommandSuiteJunitResultFileWithTwoWorkers) {
  const std::string p = project("junit_command_suite");
  write_file(p + "/dtest.toml", junit_suite_toml("env = { RENDEZVOUS_DIR = \"" + tmp_ + "/rendezvous\" }\n"));
  const ProcResult r = dtest({"-n", "2", "-v"}, p);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  std::set<std::string> workers;
  for (const auto& l : parse_verbose(r.out)) workers.insert(l.worker);
  EXPECT_EQ(outcomes(r.out), kJunitSuiteOutcomes) << r.out << "\nworkers: " << ::testing::PrintToString(workers);
}

// ===========================================================================
// 9. Gateways that collect different tests
// ===========================================================================

TEST_F(Frameworks, DifferentCollectionsStopTheRun) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project2");
  const ProcResult r = dtest({"-v", "--tx", "popen//python=/usr/bin/python3//env:EXTRA=1", "--tx",
                              "popen//python=/usr/bin/python3", "tests/test_platform.py"},
                             p);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "Different tests were collected")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "tests/test_platform.py::test_flavour[extra]")) << describe(r);
  EXPECT_TRUE(parse_verbose(r.out).empty()) << r.out;
}

TEST_F(Frameworks, DistEachKeepsEachPlatformsCollection) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project2");
  const ProcResult r = dtest({"-v", "--dist", "each", "--tx", "popen//python=/usr/bin/python3//env:EXTRA=1", "--tx",
                              "popen//python=/usr/bin/python3", "tests/test_platform.py"},
                             p);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  std::map<std::string, std::map<std::string, std::string>> by_gateway;
  for (const auto& l : parse_verbose(r.out)) {
    const std::string where = l.unit.empty() ? l.worker : l.unit;
    EXPECT_TRUE(by_gateway[where].emplace(l.id, l.outcome).second) << where << " ran " << l.id << " twice";
  }
  const std::string t = "tests/test_platform.py::";
  const std::map<std::string, std::map<std::string, std::string>> want = {
      {"gw0",
       {{t + "test_common", "passed"}, {t + "test_flavour[plain]", "passed"}, {t + "test_flavour[extra]", "passed"}}},
      {"gw1", {{t + "test_common", "passed"}, {t + "test_flavour[plain]", "passed"}}}};
  EXPECT_EQ(by_gateway, want) << r.out;
  EXPECT_TRUE(contains(r.out, "collected 3 tests from 1 suite (x2 platforms, --dist each; gw0: 3, gw1: 2)")) << r.out;
}

// ===========================================================================
// 10. pytest collection errors
// ===========================================================================

TEST_F(Frameworks, PytestCollectionErrorStopsTheRun) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project2");
  const ProcResult r = dtest({"--tx", kPy2, "-v", "tests/test_platform.py", "broken"}, p);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "broken/test_syntax_error.py")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "SyntaxError")) << describe(r);
  EXPECT_TRUE(parse_verbose(r.out).empty()) << r.out;
}

TEST_F(Frameworks, ContinueOnCollectionErrorsRunsTheRest) {
  REQUIRE_PYTEST();
  const std::string p = project("pytest_project2");
  const ProcResult r =
      dtest({"--tx", kPy2, "-v", "--continue-on-collection-errors", "tests/test_platform.py", "broken"}, p);
  EXPECT_TRUE(contains(r.out + r.err, "broken/test_syntax_error.py")) << describe(r);
  const std::map<std::string, std::string> want = {{"tests/test_platform.py::test_common", "passed"},
                                                   {"tests/test_platform.py::test_flavour[plain]", "passed"}};
  EXPECT_EQ(outcomes(r.out), want) << r.out;
  // As pytest --continue-on-collection-errors: the error still fails the run.
  EXPECT_EQ(r.exit_code, 1) << describe(r);
}

}  // namespace
