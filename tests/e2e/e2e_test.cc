// End-to-end tests: run the real `dtest` binary (and through it the real
// dtest-agent) as a subprocess over the real fixture GoogleTest binaries, and
// check its exit code, its stdout/stderr and the JUnit XML it writes.
//
// Every subprocess runs under a hard timeout (RunOptions::timeout, 60 s by
// default, from tests/support/subprocess.h): on expiry it is
// SIGKILLed and the test FAILS, so a hang never blocks CI. No test asserts on
// how long something took.
//
// Several tests pin down bugs found while writing them (crashed tests without
// a message, failures reported as errors outside any test, --tx swallowing
// the binary, output buffered until exit); they assert the fixed behaviour.

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <poll.h>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/subprocess.h"
#include "support/text.h"
#include "support/verbose.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kFixtures = FIXTURES_DIR;

std::string fixture(const std::string& name) { return kFixtures + "/" + name; }

// ---------------------------------------------------------------------------
// Subprocess runner (tests/support/subprocess.h)
// ---------------------------------------------------------------------------

using dtest::testing::contains;
using dtest::testing::describe;
using dtest::testing::read_file;
using dtest::testing::ProcResult;
using dtest::testing::run_process;
using dtest::testing::RunOptions;
// -v lines (tests/support/verbose.h): "[gw0] [ 50%] PASSED path::Suite.Name (unit) - message".
using dtest::testing::by_id;
using dtest::testing::parse_verbose;
using dtest::testing::split_lines;

// Runs dtest; a hang (hard timeout) fails the calling test.
ProcResult dtest(const std::vector<std::string>& args, RunOptions opts = {}) {
  std::vector<std::string> argv = {kDtest};
  argv.insert(argv.end(), args.begin(), args.end());
  // Use the agent from this build, whatever the environment says.
  opts.env.emplace("DTEST_AGENT", kAgent);
  ProcResult r = run_process(argv, opts);
  if (r.timed_out) {
    std::string cmd;
    for (const auto& a : argv) cmd += " " + a;
    ADD_FAILURE() << "dtest did not finish within " << opts.timeout << " s (killed):" << cmd << "\n"
                  << describe(r);
  }
  return r;
}

// ---------------------------------------------------------------------------
// Text helpers
// ---------------------------------------------------------------------------

std::string last_nonempty_line(const std::string& s) {
  const auto lines = split_lines(s);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it)
    if (!it->empty()) return *it;
  return "";
}

// A "____ path::Suite.Name [unit] ____" title rule of the FAILURES section
// (the '_' padding shrinks to nothing for long ids); returns its text.
std::optional<std::string> failure_title(const std::string& l) {
  const auto b = l.find_first_not_of('_');
  const auto e = l.find_last_not_of('_');
  if (b == std::string::npos) return std::nullopt;
  const std::string t = l.substr(b, e - b + 1);
  if (t.size() < 3 || t.front() != ' ' || t.back() != ' ' || !contains(t, "::")) return std::nullopt;
  return t.substr(1, t.size() - 2);
}

// The lines of the FAILURES section that belong to `id`: from its title rule
// to the next rule.
std::string failure_block(const std::string& out, const std::string& id) {
  std::string block;
  bool in = false;
  for (const auto& l : split_lines(out)) {
    const auto title = failure_title(l);
    if (title || l.rfind("===", 0) == 0 || l.rfind("___", 0) == 0) {
      if (in) break;
      if (title && (*title == id || title->rfind(id + " [", 0) == 0)) in = true;
      continue;
    }
    if (in) block += l + "\n";
  }
  return block;
}

// ---------------------------------------------------------------------------
// The fixture binaries run directly
// ---------------------------------------------------------------------------

struct Listed {
  std::string name;  // Suite.Name
  bool disabled = false;
};

bool disabled_part(const std::string& s) { return s.rfind("DISABLED_", 0) == 0 || contains(s, "/DISABLED_"); }

std::vector<Listed> list_tests(const std::string& binary) {
  const ProcResult r = run_process({binary, "--gtest_list_tests"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  std::vector<Listed> v;
  std::string suite;
  for (auto l : split_lines(r.out)) {
    if (l.rfind("Running main() from", 0) == 0 || l.empty()) continue;
    if (const auto c = l.find("  # "); c != std::string::npos) l.erase(c);
    if (l.rfind("  ", 0) == 0) {
      const std::string name = l.substr(2);
      v.push_back({suite + "." + name, disabled_part(suite) || disabled_part(name)});
    } else {
      suite = l.substr(0, l.size() - (l.back() == '.' ? 1 : 0));
    }
  }
  return v;
}

// Outcomes ("passed"/"failed"/"skipped") from a direct run's end markers.
std::map<std::string, std::string> direct_outcomes(const std::string& binary, const std::string& filter = "") {
  std::vector<std::string> argv = {binary, "--gtest_color=no"};
  if (!filter.empty()) argv.push_back("--gtest_filter=" + filter);
  const ProcResult r = run_process(argv);
  EXPECT_FALSE(r.timed_out);
  static const std::regex re(R"(\[ +(OK|FAILED|SKIPPED) +\] (\S+?)(?:, where .*)? \(\d+ ms\)$)");
  std::map<std::string, std::string> m;
  for (const auto& l : split_lines(r.out)) {
    std::smatch sm;
    if (!std::regex_search(l, sm, re)) continue;
    const std::string tag = sm[1];
    m[sm[2]] = tag == "OK" ? "passed" : tag == "FAILED" ? "failed" : "skipped";
  }
  return m;
}

// ---------------------------------------------------------------------------
// A small, strict XML parser (enough to check JUnit well-formedness)
// ---------------------------------------------------------------------------

struct XmlNode {
  std::string name;
  std::map<std::string, std::string> attrs;
  std::vector<XmlNode> children;
  std::string text;
  std::vector<const XmlNode*> all(const std::string& n) const {
    std::vector<const XmlNode*> v;
    for (const auto& c : children)
      if (c.name == n) v.push_back(&c);
    return v;
  }
  const XmlNode* first(const std::string& n) const {
    for (const auto& c : children)
      if (c.name == n) return &c;
    return nullptr;
  }
  std::string attr(const std::string& k) const {
    const auto it = attrs.find(k);
    return it == attrs.end() ? std::string("<missing " + k + ">") : it->second;
  }
};

class XmlParser {
 public:
  explicit XmlParser(std::string_view s) : s_(s) {}
  XmlNode parse() {
    for (unsigned char c : s_)
      if (c < 0x20 && c != '\n' && c != '\r' && c != '\t') fail("control character not allowed in XML 1.0");
    skip_ws();
    if (s_.substr(i_, 5) == "<?xml") {
      const auto e = s_.find("?>", i_);
      if (e == std::string_view::npos) fail("unterminated XML declaration");
      i_ = e + 2;
    }
    skip_misc();
    XmlNode root = element();
    skip_misc();
    if (i_ != s_.size()) fail("content after the root element");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("XML error at byte " + std::to_string(i_) + ": " + why);
  }
  void skip_ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void skip_misc() {
    for (;;) {
      skip_ws();
      if (s_.substr(i_, 4) == "<!--") {
        const auto e = s_.find("-->", i_);
        if (e == std::string_view::npos) fail("unterminated comment");
        i_ = e + 3;
      } else {
        return;
      }
    }
  }
  static bool name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }
  static bool name_char(char c) {
    return name_start(c) || std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  }
  std::string name() {
    if (i_ >= s_.size() || !name_start(s_[i_])) fail("expected a name");
    const std::size_t b = i_;
    while (i_ < s_.size() && name_char(s_[i_])) ++i_;
    return std::string(s_.substr(b, i_ - b));
  }
  std::string decode(std::string_view raw) {
    std::string o;
    for (std::size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] == '<') fail("'<' in character data");
      if (raw[k] != '&') {
        o += raw[k];
        continue;
      }
      const auto semi = raw.find(';', k);
      if (semi == std::string_view::npos) fail("unterminated entity");
      const std::string_view ent = raw.substr(k + 1, semi - k - 1);
      if (ent == "amp") o += '&';
      else if (ent == "lt") o += '<';
      else if (ent == "gt") o += '>';
      else if (ent == "quot") o += '"';
      else if (ent == "apos") o += '\'';
      else if (ent.size() > 1 && ent[0] == '#') {
        const bool hex = ent[1] == 'x';
        const unsigned long cp = std::stoul(std::string(ent.substr(hex ? 2 : 1)), nullptr, hex ? 16 : 10);
        if (cp < 0x80) o += static_cast<char>(cp);
        else o += "?";  // not needed here
      } else {
        fail("unknown entity &" + std::string(ent) + ";");
      }
      k = semi;
    }
    return o;
  }
  XmlNode element() {
    if (i_ >= s_.size() || s_[i_] != '<') fail("expected '<'");
    ++i_;
    XmlNode n;
    n.name = name();
    for (;;) {
      const std::size_t before = i_;
      skip_ws();
      if (i_ >= s_.size()) fail("unterminated start tag");
      if (s_.substr(i_, 2) == "/>") {
        i_ += 2;
        return n;
      }
      if (s_[i_] == '>') {
        ++i_;
        break;
      }
      if (i_ == before) fail("expected whitespace before an attribute");
      const std::string k = name();
      skip_ws();
      if (i_ >= s_.size() || s_[i_] != '=') fail("expected '=' after attribute " + k);
      ++i_;
      skip_ws();
      if (i_ >= s_.size() || (s_[i_] != '"' && s_[i_] != '\'')) fail("expected a quoted value");
      const char q = s_[i_++];
      const auto e = s_.find(q, i_);
      if (e == std::string_view::npos) fail("unterminated attribute value");
      const std::string v = decode(s_.substr(i_, e - i_));
      i_ = e + 1;
      if (!n.attrs.emplace(k, v).second) fail("duplicate attribute " + k);
    }
    for (;;) {
      if (i_ >= s_.size()) fail("unterminated element <" + n.name + ">");
      if (s_.substr(i_, 2) == "</") {
        i_ += 2;
        const std::string close = name();
        if (close != n.name) fail("</" + close + "> closes <" + n.name + ">");
        skip_ws();
        if (i_ >= s_.size() || s_[i_] != '>') fail("expected '>'");
        ++i_;
        return n;
      }
      if (s_.substr(i_, 4) == "<!--") {
        skip_misc();
        continue;
      }
      if (s_.substr(i_, 9) == "<![CDATA[") {
        const auto e = s_.find("]]>", i_);
        if (e == std::string_view::npos) fail("unterminated CDATA");
        n.text += std::string(s_.substr(i_ + 9, e - i_ - 9));
        i_ = e + 3;
        continue;
      }
      if (s_[i_] == '<') {
        n.children.push_back(element());
        continue;
      }
      const auto e = s_.find('<', i_);
      if (e == std::string_view::npos) fail("unterminated element <" + n.name + ">");
      n.text += decode(s_.substr(i_, e - i_));
      i_ = e;
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

// The JUnit report, parsed; fails the test (and returns nullopt) if it is
// missing or not well-formed.
std::optional<XmlNode> load_junit(const std::string& path) {
  if (!fs::exists(path)) {
    ADD_FAILURE() << "no JUnit XML written at " << path;
    return std::nullopt;
  }
  const std::string text = read_file(path);
  EXPECT_EQ(text.rfind("<?xml", 0), 0u) << "no XML declaration";
  try {
    XmlNode root = XmlParser(text).parse();
    EXPECT_EQ(root.name, "testsuites");
    return root;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "JUnit XML is not well-formed: " << e.what() << "\n" << text.substr(0, 4000);
    return std::nullopt;
  }
}

std::map<std::string, std::string> properties(const XmlNode& tc) {
  std::map<std::string, std::string> m;
  if (const XmlNode* ps = tc.first("properties"))
    for (const XmlNode* p : ps->all("property")) m[p->attr("name")] = p->attr("value");
  return m;
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

struct ProcInfo {
  pid_t pid = 0, ppid = 0;
  char state = '?';
  std::string exe, cmdline;
};

std::optional<ProcInfo> proc_info(pid_t pid) {
  const std::string base = "/proc/" + std::to_string(pid);
  std::ifstream st(base + "/stat");
  std::string stat;
  if (!std::getline(st, stat)) return std::nullopt;
  const auto rp = stat.rfind(')');
  if (rp == std::string::npos || rp + 4 > stat.size()) return std::nullopt;
  ProcInfo p;
  p.pid = pid;
  p.state = stat[rp + 2];
  p.ppid = static_cast<pid_t>(std::atoi(stat.c_str() + rp + 4));
  std::error_code ec;
  p.exe = fs::read_symlink(base + "/exe", ec).string();
  std::string cmd = read_file(base + "/cmdline");
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  p.cmdline = cmd;
  return p;
}

std::vector<ProcInfo> all_procs() {
  std::vector<ProcInfo> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    if (auto p = proc_info(static_cast<pid_t>(std::stoi(n)))) v.push_back(*p);
  }
  return v;
}

bool alive(pid_t pid) {
  const auto p = proc_info(pid);
  return p && p->state != 'Z' && p->state != 'X';
}

// Processes descended from `root` whose executable is one of `exes`.
std::vector<ProcInfo> descendants(pid_t root, const std::set<std::string>& exes) {
  const auto procs = all_procs();
  std::map<pid_t, pid_t> parent;
  for (const auto& p : procs) parent[p.pid] = p.ppid;
  std::vector<ProcInfo> v;
  for (const auto& p : procs) {
    if (!exes.count(p.exe) || p.state == 'Z') continue;
    pid_t q = p.ppid;
    for (int hops = 0; hops < 8 && q > 1 && q != root; ++hops) q = parent.count(q) ? parent[q] : 0;
    if (q == root) v.push_back(p);
  }
  return v;
}

std::string canon(const std::string& p) {
  std::error_code ec;
  auto c = fs::canonical(p, ec);
  return ec ? p : c.string();
}

// ---------------------------------------------------------------------------
// Test fixture: a fresh temp dir per test, used as dtest's cwd. (Named
// "e2e" so that `ctest -R e2e` selects these tests.)
// ---------------------------------------------------------------------------

class e2e : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kDtest)) << kDtest;
    ASSERT_TRUE(fs::exists(kAgent)) << kAgent;
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/dtest-e2e-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    tmp_ = canon(tmpl);
    // Orphans of dtest (leaked agents or tests) get reparented to us, so the
    // interrupt test can see them.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  }
  void TearDown() override {
    std::error_code ec;
    if (!tmp_.empty()) fs::remove_all(tmp_, ec);
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }
  ProcResult run(const std::vector<std::string>& args, RunOptions opts = {}) {
    if (opts.cwd.empty()) opts.cwd = tmp_;
    return dtest(args, std::move(opts));
  }
  std::string tmp_;
};

const std::string kPass = fixture("fx_pass_test");
const std::string kMixed = fixture("fx_mixed_test");
const std::string kEnv = fixture("fx_env_test");
const std::string kSleep = fixture("fx_sleep_test");
const std::string kCrashers[] = {"Mixed.Segfault", "Mixed.Abort", "Mixed.Exit3"};

std::string id_of(const std::string& binary, const std::string& name) { return binary + "::" + name; }

// ===========================================================================
// 1. Same per-test outcomes as running the binaries directly
// ===========================================================================

TEST_F(e2e, PassBinaryOutcomesMatchDirectRun) {
  const auto listed = list_tests(kPass);
  ASSERT_EQ(listed.size(), 34u);  // 31 enabled + 3 disabled
  const auto direct = direct_outcomes(kPass);
  // The direct run reports every enabled test and no disabled one.
  std::size_t enabled = 0;
  for (const auto& t : listed) {
    if (t.disabled) {
      EXPECT_EQ(direct.count(t.name), 0u) << t.name;
    } else {
      ++enabled;
      EXPECT_EQ(direct.count(t.name), 1u) << "direct run did not report " << t.name;
    }
  }
  EXPECT_EQ(direct.size(), enabled);

  const ProcResult r = run({"-n", "2", "-v", kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto got = by_id(parse_verbose(r.out));
  EXPECT_EQ(got.size(), listed.size()) << describe(r);
  for (const auto& t : listed) {
    const auto it = got.find(id_of(kPass, t.name));
    if (it == got.end()) {
      ADD_FAILURE() << "dtest reported no outcome for " << t.name;
      continue;
    }
    if (t.disabled) {
      EXPECT_EQ(it->second.outcome, "skipped") << t.name;
      EXPECT_EQ(it->second.message, "disabled") << t.name;
    } else {
      EXPECT_EQ(it->second.outcome, direct.at(t.name)) << t.name;
      EXPECT_TRUE(it->second.worker == "gw0" || it->second.worker == "gw1") << t.name << ": " << it->second.worker;
    }
  }
  EXPECT_EQ(direct.at("Skipping.Skipped"), "skipped");  // sanity of the fixture
}

TEST_F(e2e, MixedBinaryOutcomesMatchDirectRun) {
  const auto listed = list_tests(kMixed);
  ASSERT_EQ(listed.size(), 32u);
  // A crash ends a direct run, so the non-crashing tests run without the
  // crashers, and each crasher runs alone.
  const auto direct = direct_outcomes(kMixed, "-Mixed.Segfault:Mixed.Abort:Mixed.Exit3");
  EXPECT_EQ(direct.size(), 29u);
  const ProcResult seg = run_process({kMixed, "--gtest_filter=Mixed.Segfault"});
  EXPECT_EQ(seg.signal, SIGSEGV) << describe(seg);
  const ProcResult abrt = run_process({kMixed, "--gtest_filter=Mixed.Abort"});
  EXPECT_EQ(abrt.signal, SIGABRT) << describe(abrt);
  const ProcResult ex3 = run_process({kMixed, "--gtest_filter=Mixed.Exit3"});
  EXPECT_EQ(ex3.exit_code, 3) << describe(ex3);

  const ProcResult r = run({"-n", "2", "-v", kMixed});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto got = by_id(parse_verbose(r.out));
  EXPECT_EQ(got.size(), listed.size()) << describe(r);
  const std::set<std::string> crashers(std::begin(kCrashers), std::end(kCrashers));
  for (const auto& t : listed) {
    const auto it = got.find(id_of(kMixed, t.name));
    if (it == got.end()) {
      ADD_FAILURE() << "dtest reported no outcome for " << t.name;
      continue;
    }
    if (crashers.count(t.name)) {
      EXPECT_EQ(it->second.outcome, "crashed") << t.name;
    } else {
      ASSERT_EQ(direct.count(t.name), 1u) << t.name;
      EXPECT_EQ(it->second.outcome, direct.at(t.name)) << t.name;
    }
  }
}

// ===========================================================================
// 2. Crashes: reported as crashed, everything else still runs
// ===========================================================================

TEST_F(e2e, CrashesAreIsolatedAndEveryTestReports) {
  const auto listed = list_tests(kMixed);
  const ProcResult r = run({"-n", "2", "-v", kMixed});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(lines.size(), listed.size()) << describe(r);  // one outcome per listed test
  std::map<std::string, int> counts;
  for (const auto& l : lines) ++counts[l.outcome];
  EXPECT_EQ(counts["passed"], 27);
  EXPECT_EQ(counts["failed"], 2);
  EXPECT_EQ(counts["crashed"], 3);
  EXPECT_EQ(counts.size(), 3u) << "unexpected outcome kinds\n" << describe(r);
  const auto got = by_id(lines);
  // Every test after a crasher still ran and passed.
  for (const char* after : {"AfterSegfault", "AfterAbort", "AfterExit"})
    for (int k = 1; k <= 5; ++k) {
      const std::string id = id_of(kMixed, std::string("Mixed.") + after + std::to_string(k));
      ASSERT_EQ(got.count(id), 1u) << id;
      EXPECT_EQ(got.at(id).outcome, "passed") << id;
    }

  // The FAILURES section shows each crashed test's own output and status.
  ASSERT_TRUE(contains(r.out, "= FAILURES =")) << describe(r);
  const std::pair<std::string, std::string> status[] = {{"Mixed.Segfault", "signal 11 (SIGSEGV)"},
                                                        {"Mixed.Abort", "signal 6 (SIGABRT)"},
                                                        {"Mixed.Exit3", "exit status 3"}};
  for (const auto& [name, st] : status) {
    const std::string block = failure_block(r.out, id_of(kMixed, name));
    EXPECT_TRUE(contains(block, "crashed")) << name << ":\n" << block;
    EXPECT_TRUE(contains(block, "fx_mixed_test: stdout of " + name)) << name << ":\n" << block;
    EXPECT_TRUE(contains(block, "dtest: test process exited mid-test: " + st)) << name << ":\n" << block;
    EXPECT_TRUE(contains(r.out, "\nCRASHED " + id_of(kMixed, name))) << "short summary lacks " << name;
  }
  // The ordinary failures show their assertion message.
  EXPECT_TRUE(contains(failure_block(r.out, id_of(kMixed, "Mixed.FailFirst")), "FX_MIXED_FAILURE_1"));
  EXPECT_TRUE(contains(failure_block(r.out, id_of(kMixed, "Mixed.FailSecond")), "FX_MIXED_FAILURE_2"));
  EXPECT_TRUE(contains(r.out, "\nFAILED " + id_of(kMixed, "Mixed.FailFirst")));
  std::smatch m;
  const std::string closing = last_nonempty_line(r.out);
  EXPECT_TRUE(std::regex_match(closing, m, std::regex(R"(^=+ 2 failed, 3 crashed, 27 passed in \d+\.\d\ds =+$)")))
      << closing;
}

TEST_F(e2e, CrashedTestsCarryTheirStatusAsMessage) {
  const ProcResult r = run({"-n", "2", "-v", "--junitxml", tmp_ + "/crash.xml", kMixed});
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 1) << describe(r);
  const auto got = by_id(parse_verbose(r.out));
  const std::pair<std::string, std::string> status[] = {{"Mixed.Segfault", "signal 11 (SIGSEGV)"},
                                                        {"Mixed.Abort", "signal 6 (SIGABRT)"},
                                                        {"Mixed.Exit3", "exit status 3"}};
  bool all_empty = true;
  for (const auto& [name, st] : status) {
    const auto it = got.find(id_of(kMixed, name));
    ASSERT_NE(it, got.end()) << name;
    ASSERT_EQ(it->second.outcome, "crashed");
    if (!it->second.message.empty()) all_empty = false;
  }
  EXPECT_FALSE(all_empty) << "crashed tests must carry their exit status as message";
  for (const auto& [name, st] : status) {
    const auto& l = got.at(id_of(kMixed, name));
    EXPECT_EQ(l.message.rfind(st, 0), 0u) << name << ": '" << l.message << "'";  // may add ", core dumped"
    EXPECT_TRUE(contains(r.out, "\nCRASHED " + id_of(kMixed, name) + " - " + st)) << name;
    EXPECT_TRUE(contains(failure_block(r.out, id_of(kMixed, name)), "crashed: " + st)) << name;
  }
  const auto x = load_junit(tmp_ + "/crash.xml");
  ASSERT_TRUE(x);
  for (const XmlNode* ts : x->all("testsuite"))
    for (const XmlNode* tc : ts->all("testcase"))
      for (const auto& [name, st] : status)
        if (tc->attr("classname") + "." + tc->attr("name") == name) {
          const XmlNode* e = tc->first("error");
          ASSERT_NE(e, nullptr) << name;
          EXPECT_EQ(e->attr("message").rfind(st, 0), 0u) << name << ": " << e->attr("message");
        }
}

TEST_F(e2e, OrdinaryTestFailuresAreNotReportedAsOutsideAnyTest) {
  // A gtest process exits 1 because one of its tests failed; that is fully
  // explained by the failed test and is no error "outside any test".
  const ProcResult r = run({"-n", "2", kMixed});
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_FALSE(contains(r.out, "outside any test")) << describe(r);
  EXPECT_FALSE(contains(r.out, "dtest: warning:")) << describe(r);
}

// ===========================================================================
// 3. -n 2 really runs on two workers
// ===========================================================================

TEST_F(e2e, TwoWorkersBothRunTests) {
  const std::string xml = tmp_ + "/sleep.xml";
  const ProcResult r = run({"-n", "2", "-v", "--junitxml", xml, kSleep});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "starting 2 gateways")) << describe(r);
  const auto lines = parse_verbose(r.out);
  ASSERT_EQ(lines.size(), 12u) << describe(r);
  std::set<std::string> workers;
  for (const auto& l : lines) {
    EXPECT_EQ(l.outcome, "passed") << l.id;
    workers.insert(l.worker);
  }
  EXPECT_EQ(workers, (std::set<std::string>{"gw0", "gw1"})) << describe(r);
  // The JUnit report agrees on who ran what.
  const auto x = load_junit(xml);
  ASSERT_TRUE(x);
  const auto got = by_id(lines);
  std::set<std::string> xml_workers;
  for (const XmlNode* ts : x->all("testsuite"))
    for (const XmlNode* tc : ts->all("testcase")) {
      const auto props = properties(*tc);
      const std::string id = id_of(kSleep, tc->attr("classname") + "." + tc->attr("name"));
      ASSERT_EQ(got.count(id), 1u) << id;
      EXPECT_EQ(props.at("worker"), got.at(id).worker) << id;
      xml_workers.insert(props.at("worker"));
    }
  EXPECT_EQ(xml_workers, workers);
}

// ===========================================================================
// 4. The environment the tests see
// ===========================================================================

TEST_F(e2e, WorkerEnvironment) {
  const std::string xml = tmp_ + "/env.xml";
  const ProcResult r = run({"-n", "2", "-v", "--junitxml", xml, kEnv});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);  // EnvRequired.WorkerIsSet passes
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(lines.size(), 7u) << describe(r);
  for (const auto& l : lines) EXPECT_EQ(l.outcome, "passed") << l.id;

  const auto x = load_junit(xml);
  ASSERT_TRUE(x);
  std::set<std::string> uids;
  int cases = 0;
  static const std::regex worker_re(R"(DTEST_WORKER=(\S*))"), count_re(R"(DTEST_WORKER_COUNT=(\S*))"),
      uid_re(R"(DTEST_TESTRUNUID=(\S*))");
  for (const XmlNode* ts : x->all("testsuite"))
    for (const XmlNode* tc : ts->all("testcase")) {
      ++cases;
      const XmlNode* so = tc->first("system-out");
      ASSERT_NE(so, nullptr) << tc->attr("name");
      const std::string& out = so->text;
      std::smatch m;
      ASSERT_TRUE(std::regex_search(out, m, worker_re)) << out;
      const std::string w = m[1];
      EXPECT_TRUE(w == "gw0" || w == "gw1") << w;
      EXPECT_EQ(w, properties(*tc).at("worker")) << "the test saw the worker that ran it";
      ASSERT_TRUE(std::regex_search(out, m, count_re)) << out;
      EXPECT_EQ(m[1], "2");
      ASSERT_TRUE(std::regex_search(out, m, uid_re)) << out;
      EXPECT_TRUE(std::regex_match(std::string(m[1]), std::regex("[0-9a-f]{16,}"))) << m[1];
      uids.insert(m[1]);
      EXPECT_FALSE(contains(out, "unset")) << out;
    }
  EXPECT_EQ(cases, 7);
  EXPECT_EQ(uids.size(), 1u) << "DTEST_TESTRUNUID differs between tests/workers";

  // A second run gets a different run uid.
  const ProcResult r2 = run({"-n", "2", "--junitxml", tmp_ + "/env2.xml", kEnv});
  ASSERT_EQ(r2.exit_code, 0) << describe(r2);
  std::smatch m;
  const std::string t2 = read_file(tmp_ + "/env2.xml");
  ASSERT_TRUE(std::regex_search(t2, m, uid_re));
  EXPECT_EQ(uids.count(m[1]), 0u) << "two runs share a DTEST_TESTRUNUID";
}

// ===========================================================================
// 5. --dist each / --dist no / no -n
// ===========================================================================

TEST_F(e2e, DistEachRunsEverythingOnEveryGateway) {
  const auto listed = list_tests(kPass);
  // (binary first: see OptionsBeforeBinaryAreNotSwallowedByTx)
  const ProcResult r = run({kPass, "-v", "--dist", "each", "--tx", "popen", "--tx", "popen"});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "collected 34 tests from 1 binary (x2 platforms, --dist each)")) << describe(r);
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(lines.size(), 2 * listed.size()) << describe(r);
  std::map<std::string, std::multiset<std::string>> where;  // id -> gateways
  std::map<std::string, std::map<std::string, int>> per_gw;  // gw -> outcome -> n
  for (const auto& l : lines) {
    where[l.id].insert(l.where());
    ++per_gw[l.where()][l.outcome];
    if (l.outcome != "skipped" || l.message != "disabled") {
      EXPECT_EQ(l.worker, l.where()) << l.id;
    }
  }
  for (const auto& t : listed)
    EXPECT_EQ(where[id_of(kPass, t.name)], (std::multiset<std::string>{"gw0", "gw1"})) << t.name;
  for (const char* gw : {"gw0", "gw1"}) {
    EXPECT_EQ(per_gw[gw]["passed"], 30) << gw;
    EXPECT_EQ(per_gw[gw]["skipped"], 4) << gw;
    EXPECT_TRUE(std::regex_search(r.out, std::regex(std::string(R"((^|\n)\[)") + gw +
                                                    R"(\] 30 passed, 4 skipped in \d+\.\d\ds\n)")))
        << gw << "\n" << describe(r);
  }
  // Twice the single-gateway counts in the closing line.
  EXPECT_TRUE(std::regex_match(last_nonempty_line(r.out), std::regex(R"(^=+ 60 passed, 8 skipped in \d+\.\d\ds =+$)")))
      << last_nonempty_line(r.out);
}

TEST_F(e2e, OptionsBeforeBinaryAreNotSwallowedByTx) {
  // The natural spelling puts the binary last. --tx takes ONE spec per use.
  const ProcResult r = run({"--dist", "each", "--tx", "popen", "--tx", "popen", "-q", "--tx", "popen", kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(std::regex_match(last_nonempty_line(r.out), std::regex(R"(^90 passed, 12 skipped in \d+\.\d\ds$)")))
      << describe(r);
}

TEST_F(e2e, DistNoRunsSeriallyOnOneGateway) {
  const auto listed = list_tests(kPass);
  for (const auto& args : std::vector<std::vector<std::string>>{{"-n", "2", "--dist", "no", "-v", kPass},
                                                                {"-v", kPass}}) {
    const ProcResult r = run(args);
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(contains(r.out, "starting 1 gateway\n")) << describe(r);
    EXPECT_FALSE(contains(r.out, "[gw1]")) << describe(r);
    const auto lines = parse_verbose(r.out);
    EXPECT_EQ(lines.size(), listed.size()) << describe(r);
    for (const auto& l : lines) {
      if (l.message == "disabled") continue;  // never ran anywhere
      EXPECT_EQ(l.worker, "gw0") << l.id;
    }
    EXPECT_TRUE(std::regex_match(last_nonempty_line(r.out), std::regex(R"(^=+ 30 passed, 4 skipped in \d+\.\d\ds =+$)")))
        << last_nonempty_line(r.out);
  }
}

// ===========================================================================
// 6. JUnit XML
// ===========================================================================

// --report-log: one JSON object a line; the tests' events say what -v says,
// once each, between session_start and session_finish (with the exit code).
TEST_F(e2e, ReportLogHasEveryResultAsJsonLines) {
  const std::string log = tmp_ + "/logs/run.jsonl";  // parent dirs are created
  const ProcResult r = run({"-n", "2", "-v", "--report-log", log, kPass, kMixed});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  std::ifstream in(log);
  ASSERT_TRUE(in) << log;
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(in, line);) {
    auto e = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << "not JSON: " << line;
    events.push_back(std::move(e));
  }
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.front()["event"], "session_start");
  EXPECT_EQ(events.back()["event"], "session_finish");
  EXPECT_EQ(events.back()["exit_code"], 1);
  std::map<std::string, std::string> logged;
  int gateways_up = 0;
  for (const auto& e : events) {
    if (e["event"] == "gateway_up") ++gateways_up;
    if (e["event"] != "test") continue;
    EXPECT_TRUE(logged.emplace(e["id"], e["outcome"]).second) << e["id"] << " twice";
  }
  EXPECT_EQ(gateways_up, 2);
  std::map<std::string, std::string> shown;
  for (const auto& l : parse_verbose(r.out)) shown[l.id] = l.outcome;
  EXPECT_EQ(logged.size(), 66u);
  EXPECT_EQ(logged, shown);
}

// --repeat-until-fail: every session's events, one after the other, in the
// one file.
TEST_F(e2e, ReportLogKeepsEverySessionOfRepeatUntilFail) {
  const std::string log = tmp_ + "/repeat.jsonl";
  const ProcResult r = run({"-n", "2", "--repeat-until-fail", "2", "--report-log", log, kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  std::ifstream in(log);
  std::vector<std::string> kinds;
  std::set<std::string> uids;
  int tests = 0;
  for (std::string line; std::getline(in, line);) {
    const auto e = nlohmann::json::parse(line);
    const std::string kind = e["event"];
    if (kind == "test") {
      ++tests;
      continue;
    }
    if (kind == "session_start") uids.insert(e["testrunuid"].get<std::string>());
    if (kind == "session_start" || kind == "session_finish") kinds.push_back(kind);
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"session_start", "session_finish", "session_start", "session_finish"}));
  EXPECT_EQ(uids.size(), 2u);
  EXPECT_EQ(tests, 2 * 34);
}

TEST_F(e2e, ReportLogThatCannotBeWrittenIsAUsageError) {
  std::ofstream(tmp_ + "/plain") << "a file, not a folder\n";
  const ProcResult r = run({"-n", "2", "--report-log", tmp_ + "/plain/run.jsonl", kPass});
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_NE(r.err.find("--report-log: cannot write " + tmp_ + "/plain/run.jsonl"), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find("passed"), std::string::npos) << r.out;
}

TEST_F(e2e, JUnitXmlIsWellFormedWithCorrectCounts) {
  const std::string xml = tmp_ + "/sub/dir/report.xml";  // parent dirs are created
  const ProcResult r = run({"-n", "2", "--junitxml", xml, kPass, kMixed});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto x = load_junit(xml);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->attr("tests"), "66");
  EXPECT_EQ(x->attr("failures"), "2");
  EXPECT_EQ(x->attr("errors"), "3");
  EXPECT_EQ(x->attr("skipped"), "4");
  const auto suites = x->all("testsuite");
  ASSERT_EQ(suites.size(), 2u);

  struct Want {
    std::string binary;
    int tests, failures, errors, skipped;
  };
  const Want want[] = {{kPass, 34, 0, 0, 4}, {kMixed, 32, 2, 3, 0}};
  for (std::size_t s = 0; s < 2; ++s) {
    const XmlNode& ts = *suites[s];
    const Want& w = want[s];
    SCOPED_TRACE(w.binary);
    EXPECT_EQ(ts.attr("name"), w.binary);
    EXPECT_EQ(ts.attr("tests"), std::to_string(w.tests));
    EXPECT_EQ(ts.attr("failures"), std::to_string(w.failures));
    EXPECT_EQ(ts.attr("errors"), std::to_string(w.errors));
    EXPECT_EQ(ts.attr("skipped"), std::to_string(w.skipped));
    const auto cases = ts.all("testcase");
    ASSERT_EQ(cases.size(), static_cast<std::size_t>(w.tests));
    // The testcases are exactly the listed tests.
    std::set<std::string> names, want_names;
    for (const auto& t : list_tests(w.binary)) want_names.insert(t.name);
    int failures = 0, errors = 0, skipped = 0;
    for (const XmlNode* tc : cases) {
      const std::string name = tc->attr("classname") + "." + tc->attr("name");
      names.insert(name);
      EXPECT_EQ(tc->attr("file"), w.binary) << name;
      const auto props = properties(*tc);
      ASSERT_EQ(props.count("worker"), 1u) << name;
      ASSERT_EQ(props.count("gateway"), 1u) << name;
      ASSERT_EQ(props.count("outcome"), 1u) << name;
      const std::string outcome = props.at("outcome");
      if (outcome == "skipped" && tc->first("skipped") && tc->first("skipped")->attr("message") == "disabled") {
        EXPECT_TRUE(disabled_part(name.substr(0, name.find('.'))) || disabled_part(name.substr(name.find('.') + 1)))
            << name;
      } else {
        EXPECT_TRUE(props.at("worker") == "gw0" || props.at("worker") == "gw1") << name << " " << props.at("worker");
        EXPECT_EQ(props.at("gateway"), "2*popen") << name;
      }
      if (outcome == "passed") {
        ASSERT_NE(tc->first("system-out"), nullptr) << name;
        if (name != "Mixed.NoTrailingNewline") {
          EXPECT_TRUE(contains(tc->first("system-out")->text, "stdout of " + name)) << name;
        }
      } else if (outcome == "failed") {
        ++failures;
        ASSERT_NE(tc->first("failure"), nullptr) << name;
        EXPECT_TRUE(contains(tc->first("failure")->text, "FX_MIXED_FAILURE_")) << name;
      } else if (outcome == "crashed") {
        ++errors;
        const XmlNode* e = tc->first("error");
        ASSERT_NE(e, nullptr) << name;
        EXPECT_EQ(e->attr("type"), "crashed");
        EXPECT_TRUE(contains(e->text, "stdout of " + name)) << name;
        EXPECT_TRUE(contains(e->text, "dtest: test process exited mid-test: ")) << name;
      } else if (outcome == "skipped") {
        ++skipped;
        EXPECT_NE(tc->first("skipped"), nullptr) << name;
      } else {
        ADD_FAILURE() << name << ": unexpected outcome " << outcome;
      }
    }
    EXPECT_EQ(names, want_names);
    EXPECT_EQ(failures, w.failures);
    EXPECT_EQ(errors, w.errors);
    EXPECT_EQ(skipped, w.skipped);
  }
  // Special characters in test output are escaped, not breaking the XML:
  // the failure text of EXPECT_EQ holds none, but the parser above already
  // rejected any raw '<' or '&'.
}

// ===========================================================================
// 7. Bad input: clear errors, fitting exit codes, no hang
// ===========================================================================

TEST_F(e2e, MalformedXspecIsAUsageErrorWithACaret) {
  const ProcResult r = run({kPass, "--tx", "popen//=x"});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "invalid xspec 'popen//=x'")) << describe(r);
  EXPECT_TRUE(contains(r.err, "column 8")) << describe(r);
  const auto lines = split_lines(r.err);
  bool caret_ok = false;
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    const auto at = lines[i].find("popen//=x");
    if (at == std::string::npos || lines[i].find("invalid xspec") != std::string::npos) continue;
    const std::string& caret = lines[i + 1];
    const auto c = caret.find('^');
    caret_ok = c != std::string::npos && c == at + 7 && caret.find_first_not_of(' ') == c;
  }
  EXPECT_TRUE(caret_ok) << "no caret under the '=':\n" << r.err;
  EXPECT_FALSE(contains(r.out, "test session starts")) << "nothing should start";
}

TEST_F(e2e, BadNumprocessesIsAUsageError) {
  const ProcResult r = run({"-n", "abc", kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "-n expects a number or 'auto', got 'abc'")) << describe(r);
}

TEST_F(e2e, MissingBinaryIsAUsageError) {
  const std::string missing = tmp_ + "/no_such_test_binary";
  const ProcResult r = run({missing});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "no such file: " + missing)) << describe(r);
  const ProcResult none = run({"-q"});
  EXPECT_EQ(none.exit_code, 4) << describe(none);
  EXPECT_TRUE(contains(none.err, "nothing to run: name GoogleTest binaries")) << describe(none);
}

TEST_F(e2e, NonGtestBinaryIsACollectionError) {
  const std::string bin = fixture("fx_not_gtest");
  const ProcResult r = run({bin});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  const std::string all = r.out + r.err;
  const auto at = all.find("ERROR collecting");
  ASSERT_NE(at, std::string::npos) << describe(r);
  const std::string section = all.substr(at);
  EXPECT_TRUE(contains(section, bin)) << describe(r);
  EXPECT_TRUE(contains(section, "is it a GoogleTest binary")) << describe(r);
  EXPECT_TRUE(contains(section, "usage: fx_not_gtest")) << "its stderr should be shown\n" << describe(r);
  EXPECT_TRUE(contains(r.out, "Interrupted: 1 error during collection")) << describe(r);
  EXPECT_TRUE(parse_verbose(r.out).empty());
}

TEST_F(e2e, SilentBinaryIsNotAGtestBinary) {
  const std::string bin = fixture("fx_silent");
  const ProcResult r = run({bin});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  const std::string all = r.out + r.err;
  EXPECT_TRUE(contains(all, "ERROR collecting")) << describe(r);
  EXPECT_TRUE(contains(all, bin + " is not a GoogleTest binary")) << describe(r);
}

TEST_F(e2e, CollectionErrorInOneBinaryStopsTheRun) {
  const ProcResult r = run({"-v", kPass, fixture("fx_not_gtest")});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_TRUE(contains(r.out, "ERROR collecting")) << describe(r);
  EXPECT_TRUE(parse_verbose(r.out).empty()) << "nothing should run\n" << describe(r);
}

TEST_F(e2e, GarbageAgentFailsPromptly) {
  // The fake agent sleeps 30 s after its garbage, and the default hello
  // timeout is 30 s too: a 20 s hard timeout proves dtest reacted to the
  // garbage itself.
  RunOptions o;
  o.timeout = 20;
  const ProcResult r = run({kPass, "--tx", "popen//agent=" + fixture("fx_garbage_agent.sh")}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  const std::string all = r.out + r.err;
  EXPECT_TRUE(contains(all, "bad frame magic")) << describe(r);
  EXPECT_TRUE(contains(all, "gateway failed")) << describe(r);
  EXPECT_TRUE(contains(all, "no gateway came up")) << describe(r);
  // The fake agent (its `sleep 30`) does not outlive dtest.
  bool left = false;
  for (int k = 0; k < 20; ++k) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left = false;
    for (const auto& p : all_procs())
      if (p.ppid == ::getpid() && p.state != 'Z' && contains(p.cmdline, "sleep 30")) left = true;
    if (!left) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(left) << "the garbage agent outlived dtest";
}

TEST_F(e2e, MissingAgentIsAClearError) {
  const std::string agent = tmp_ + "/no-such-agent";
  const ProcResult r = run({kPass, "--tx", "popen//agent=" + agent});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  const std::string all = r.out + r.err;
  EXPECT_TRUE(contains(all, "agent not found: " + agent)) << describe(r);
  EXPECT_TRUE(contains(all, "no gateway came up")) << describe(r);
}

TEST_F(e2e, OneBadGatewayDoesNotStopTheOthers) {
  const ProcResult r =
      run({kPass, "-v", "--tx", "popen", "--tx", "popen//agent=" + fixture("fx_garbage_agent.sh")});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "bad frame magic")) << describe(r);
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(lines.size(), 34u) << describe(r);
  for (const auto& l : lines)
    if (l.message != "disabled") {
      EXPECT_EQ(l.worker, "gw0") << l.id;
    }
}

// ===========================================================================
// 8. dtest spec
// ===========================================================================

TEST_F(e2e, SpecSubcommandPrintsJson) {
  const ProcResult r = run({"spec", "2*popen//chdir=/tmp/x//env:A=1"});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    FAIL() << "not JSON: " << e.what() << "\n" << r.out;
  }
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  const auto& s = j[0];
  EXPECT_EQ(s.value("count", 0), 2);
  EXPECT_EQ(s.value("type", ""), "popen");
  EXPECT_EQ(s.value("chdir", ""), "/tmp/x");
  EXPECT_EQ(s.value("spec", ""), "2*popen//chdir=/tmp/x//env:A=1");
  ASSERT_TRUE(s.contains("env"));
  EXPECT_EQ(s["env"], (nlohmann::json{{"A", "1"}}));

  const ProcResult bad = run({"spec", "popen//=x"});
  EXPECT_EQ(bad.exit_code, 4) << describe(bad);
  EXPECT_TRUE(contains(bad.err, "invalid xspec 'popen//=x'")) << describe(bad);
}

// ===========================================================================
// 10. -q and the default closing line
// ===========================================================================

TEST_F(e2e, QuietAndDefaultClosingLines) {
  const ProcResult q = run({"-q", kPass});
  ASSERT_FALSE(q.timed_out);
  EXPECT_EQ(q.exit_code, 0) << describe(q);
  EXPECT_TRUE(std::regex_match(last_nonempty_line(q.out), std::regex(R"(^30 passed, 4 skipped in \d+\.\d\ds$)")))
      << describe(q);
  EXPECT_FALSE(contains(q.out, "test session starts")) << describe(q);
  EXPECT_FALSE(contains(q.out, "====")) << describe(q);

  const ProcResult d = run({kPass});
  ASSERT_FALSE(d.timed_out);
  EXPECT_EQ(d.exit_code, 0) << describe(d);
  const std::string closing = last_nonempty_line(d.out);
  EXPECT_TRUE(std::regex_match(closing, std::regex(R"(^=+ 30 passed, 4 skipped in \d+\.\d\ds =+$)"))) << closing;
  EXPECT_EQ(closing.size(), 80u) << closing;
  EXPECT_TRUE(contains(d.out, "test session starts")) << describe(d);
  EXPECT_TRUE(contains(d.out, "collected 34 tests from 1 binary")) << describe(d);
  EXPECT_TRUE(parse_verbose(d.out).empty()) << "no per-test lines without -v";
}

// ===========================================================================
// 11. chdir
// ===========================================================================

TEST_F(e2e, ChdirIsCreatedAndUsed) {
  const std::string dir = tmp_ + "/newdir/sub";
  ASSERT_FALSE(fs::exists(dir));
  const std::string xml = tmp_ + "/chdir.xml";
  const ProcResult r = run({kEnv, "-v", "--junitxml", xml, "--tx", "popen//chdir=" + dir});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(fs::is_directory(dir)) << dir;
  const auto x = load_junit(xml);
  ASSERT_TRUE(x);
  int n = 0;
  for (const XmlNode* ts : x->all("testsuite"))
    for (const XmlNode* tc : ts->all("testcase")) {
      ++n;
      const XmlNode* so = tc->first("system-out");
      ASSERT_NE(so, nullptr);
      EXPECT_TRUE(contains(so->text, "CWD=" + canon(dir) + "\n")) << so->text;
    }
  EXPECT_EQ(n, 7);

  // A relative chdir is relative to where dtest runs, and a relative binary
  // path still works from inside it.
  fs::copy_file(kEnv, tmp_ + "/fx_env_copy");
  const ProcResult rel = run({"./fx_env_copy", "--junitxml", "rel.xml", "--tx", "popen//chdir=rel/dir"});
  ASSERT_FALSE(rel.timed_out);
  EXPECT_EQ(rel.exit_code, 0) << describe(rel);
  EXPECT_TRUE(fs::is_directory(tmp_ + "/rel/dir"));
  EXPECT_TRUE(contains(read_file(tmp_ + "/rel.xml"), "CWD=" + tmp_ + "/rel/dir\n"));
}

// ===========================================================================
// Output is streamed, not held back until exit
// ===========================================================================

TEST_F(e2e, ProgressIsStreamedWhileTestsRun) {
  // With stdout a pipe (CI logs, `| tee`), per-test lines must appear while
  // the run is still going: seen on the pipe at a moment when a test process
  // of the same run is alive.
  const std::string sleep_exe = canon(kSleep);
  bool streamed = false, saw_running = false;
  RunOptions o;
  o.tick = [&](pid_t dt, const std::string& out) {
    if (streamed) return;
    const bool running = !descendants(dt, {sleep_exe}).empty();
    saw_running |= running;
    if (running && contains(out, "collected 12 tests from 1 binary") && contains(out, "PASSED")) streamed = true;
  };
  const ProcResult r = run({"-n", "2", "-v", kSleep}, o);
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  ASSERT_TRUE(saw_running) << "never saw a test process running";
  EXPECT_TRUE(streamed);
}

TEST_F(e2e, ShardedBatchesGiveTheSameOutcomes) {
  // Once the agent knows fx_mixed_test is cheap to run, the next run hands
  // out GoogleTest shards (no filter); crashes inside a shard still leave
  // every other test to run, and the outcomes are those of the first run.
  RunOptions o;
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  o.env["DTEST_DEBUG"] = "1";
  const ProcResult first = run({"-n", "2", "-v", kMixed}, o);
  ASSERT_FALSE(first.timed_out);
  EXPECT_EQ(first.exit_code, 1) << describe(first);
  std::map<std::string, std::string> a;
  for (const auto& l : parse_verbose(first.out)) a[l.id] = l.outcome;
  EXPECT_EQ(a.size(), 32u);
  // Whether shards are chosen depends on the start-up and per-test costs the
  // first runs measured; on a loaded machine a crash test can look slow and
  // keep the batches filtered. Every run must give the same outcomes; within
  // a few runs the costs settle and shards are used.
  bool sharded = false;
  std::string last_err;
  for (int k = 0; k < 5 && !sharded; ++k) {
    fs::remove_all(tmp_ + "/.dtest");  // shards, not batches sized from recorded durations
    const ProcResult again = run({"-n", "2", "-v", kMixed}, o);
    ASSERT_FALSE(again.timed_out);
    EXPECT_EQ(again.exit_code, 1) << describe(again);
    std::map<std::string, std::string> b;
    for (const auto& l : parse_verbose(again.out)) b[l.id] = l.outcome;
    EXPECT_EQ(a, b);
    sharded = contains(again.err, ", shard 0/2");
    last_err = again.err;
  }
  EXPECT_TRUE(sharded) << last_err;
}

TEST_F(e2e, ListingCacheIsUsedAndNeverServesAStaleBinary) {
  // The agent caches --gtest_list_tests output keyed on the binary's
  // identity. A binary replaced at the same path must be listed afresh.
  RunOptions o;
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  const std::string bin = tmp_ + "/suite_test";
  fs::copy_file(kPass, bin);
  const ProcResult first = run({"-q", bin}, o);
  ASSERT_FALSE(first.timed_out);
  EXPECT_EQ(first.exit_code, 0) << describe(first);
  ASSERT_TRUE(fs::is_directory(tmp_ + "/cache/lists"));
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(tmp_ + "/cache/lists")) entries += !e.path().has_extension();
  EXPECT_EQ(entries, 1u);  // one listing (and its .cost)
  const ProcResult again = run({"-q", bin}, o);
  EXPECT_EQ(last_nonempty_line(again.out).substr(0, 20), last_nonempty_line(first.out).substr(0, 20));

  // Same path, other tests (a rebuild): 12 sleep tests, not the pass suite.
  fs::remove(bin);
  fs::copy_file(kSleep, bin);
  const ProcResult rebuilt = run({"-q", bin}, o);
  ASSERT_FALSE(rebuilt.timed_out);
  EXPECT_EQ(rebuilt.exit_code, 0) << describe(rebuilt);
  EXPECT_TRUE(std::regex_match(last_nonempty_line(rebuilt.out), std::regex(R"(^12 passed in \d+\.\d\ds$)")))
      << describe(rebuilt);

  // What running the binary cost is remembered beside its listing, and the
  // next run sizes its batches from it (DTEST_DEBUG traces it); a replaced
  // binary starts afresh.
  std::size_t costs = 0;
  for (const auto& e : fs::directory_iterator(tmp_ + "/cache/lists")) costs += e.path().extension() == ".cost";
  EXPECT_GE(costs, 1u);
  RunOptions traced = o;
  traced.env["DTEST_DEBUG"] = "1";
  const ProcResult known = run({"-q", bin}, traced);
  EXPECT_EQ(known.exit_code, 0) << describe(known);
  EXPECT_TRUE(contains(known.err, "costs known for 1 of 1 binaries")) << known.err;
  fs::remove(bin);
  fs::copy_file(kPass, bin);
  const ProcResult fresh = run({"-q", bin}, traced);
  EXPECT_TRUE(contains(fresh.err, "costs known for 0 of 1 binaries")) << fresh.err;

  // DTEST_LIST_CACHE=0 lists without the cache.
  o.env["DTEST_LIST_CACHE"] = "0";
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/other-cache";
  const ProcResult off = run({"-q", bin}, o);
  EXPECT_EQ(off.exit_code, 0) << describe(off);
  EXPECT_FALSE(fs::exists(tmp_ + "/other-cache"));
}

// ===========================================================================
// 12. Interrupt
// ===========================================================================

void interrupt_test(const std::string& tmp, int sig, const std::string& reason) {
  const std::string sleep_exe = canon(kSleep);
  const std::string agent_exe = canon(kAgent);
  std::set<pid_t> seen;  // agents and test processes of this run
  bool sent = false;
  bool saw_test_running = false;
  const auto t0 = Clock::now();
  RunOptions o;
  o.cwd = tmp;
  o.tick = [&](pid_t dt, const std::string&) {
    for (const auto& p : descendants(dt, {sleep_exe, agent_exe})) {
      seen.insert(p.pid);
      if (p.exe == sleep_exe) saw_test_running = true;
    }
    // Interrupt once tests are really running (or, as a fallback, after 5 s).
    if (!sent && (saw_test_running || Clock::now() - t0 > std::chrono::seconds(5))) {
      ::kill(dt, sig);
      sent = true;
    }
  };
  const ProcResult r = dtest({"-n", "2", "-v", kSleep}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_TRUE(sent);
  EXPECT_TRUE(saw_test_running) << "never saw a test process running";
  EXPECT_EQ(r.exit_code, 2) << describe(r);
  EXPECT_TRUE(contains(r.out, "Interrupted: " + reason)) << describe(r);
  // Every test still has exactly one outcome: passed, or not run.
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(lines.size(), 12u) << describe(r);
  int not_run = 0;
  for (const auto& l : lines) {
    EXPECT_TRUE(l.outcome == "passed" || l.outcome == "not run") << l.id << ": " << l.outcome;
    if (l.outcome == "not run") {
      ++not_run;
      EXPECT_EQ(l.message, reason) << l.id;
    }
  }
  EXPECT_GT(not_run, 0) << describe(r);
  // Afterwards no agent or test process of this run is left (orphans would be
  // reparented to us, the subreaper, so look for those as well).
  std::vector<std::string> left;
  for (int k = 0; k < 20; ++k) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left.clear();
    for (pid_t p : seen)
      if (alive(p)) left.push_back(std::to_string(p) + " (seen during the run)");
    for (const auto& p : all_procs())
      if (p.ppid == ::getpid() && p.state != 'Z' && (p.exe == sleep_exe || p.exe == agent_exe))
        left.push_back(std::to_string(p.pid) + " " + p.cmdline);
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(left.empty()) << "processes left behind: " << ::testing::PrintToString(left);
  EXPECT_FALSE(seen.empty());
}

TEST_F(e2e, SigintStopsTheRunAndLeavesNoProcesses) { interrupt_test(tmp_, SIGINT, "KeyboardInterrupt"); }

TEST_F(e2e, SigtermStopsTheRunAndLeavesNoProcesses) { interrupt_test(tmp_, SIGTERM, "terminated (SIGTERM)"); }

// ===========================================================================
// 13. --timeout and -x / --maxfail (fx_slow_test)
// ===========================================================================

const std::string kSlow = fixture("fx_slow_test");
const std::string kSlowTests[] = {"Quick.Fails", "Slow.T1", "Slow.T2",      "Slow.T3",   "Slow.T4",
                                  "Slow.T5",     "Slow.T6", "Hang.Forever", "Hang.After"};

// fx_slow_test processes that outlived their run: orphans are reparented to
// us (the subreaper). Waits up to 2 s for them to go.
std::vector<std::string> slow_tests_left() {
  const std::string exe = canon(kSlow);
  std::vector<std::string> left;
  for (int k = 0; k < 20; ++k) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left.clear();
    for (const auto& p : all_procs())
      if (p.ppid == ::getpid() && p.exe == exe && p.state != 'Z') left.push_back(std::to_string(p.pid) + " " + p.cmdline);
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return left;
}

TEST_F(e2e, TimeoutKillsAHangingTestAndTheRestRunsOn) {
  RunOptions o;
  o.env["FX_SLEEP_MS"] = "0";
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  const std::string xml = tmp_ + "/timeout.xml";
  const ProcResult r = run({"-n", "2", "-v", "--timeout", "1", "--junitxml", xml, kSlow}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  EXPECT_EQ(lines.size(), 9u) << describe(r);
  const std::string hang = id_of(kSlow, "Hang.Forever");
  for (const auto& name : kSlowTests) {
    const auto it = lines.find(id_of(kSlow, name));
    ASSERT_NE(it, lines.end()) << name << "\n" << describe(r);
    const std::string want = name == "Quick.Fails" ? "failed" : name == "Hang.Forever" ? "timeout" : "passed";
    EXPECT_EQ(it->second.outcome, want) << name;
  }
  EXPECT_EQ(lines.at(hang).message, "timed out after 1 s");
  // Its output so far, and what happened to it.
  const std::string block = failure_block(r.out, hang);
  EXPECT_TRUE(contains(block, "timeout: timed out after 1 s")) << block;
  EXPECT_TRUE(contains(block, "fx_slow_test: hanging now\n")) << block;
  EXPECT_TRUE(contains(block, "dtest: timed out after 1 s (its test process was killed)")) << block;
  EXPECT_TRUE(contains(r.out, "TIMEOUT " + hang + " - timed out after 1 s\n")) << describe(r);
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "1 failed, 1 timeout, 7 passed in")) << describe(r);
  // JUnit: an error of type timeout, with the output.
  const auto x = load_junit(xml);
  ASSERT_TRUE(x);
  EXPECT_EQ(x->attr("tests"), "9");
  EXPECT_EQ(x->attr("failures"), "1");
  EXPECT_EQ(x->attr("errors"), "1");
  bool found = false;
  const auto suites = x->all("testsuite");
  ASSERT_EQ(suites.size(), 1u);
  for (const XmlNode* tc : suites[0]->all("testcase")) {
    if (tc->attr("classname") != "Hang" || tc->attr("name") != "Forever") continue;
    found = true;
    EXPECT_EQ(properties(*tc).at("outcome"), "timeout");
    const XmlNode* e = tc->first("error");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->attr("type"), "timeout");
    EXPECT_EQ(e->attr("message"), "timed out after 1 s");
    EXPECT_TRUE(contains(e->text, "fx_slow_test: hanging now")) << e->text;
  }
  EXPECT_TRUE(found);
  const auto left = slow_tests_left();
  EXPECT_TRUE(left.empty()) << ::testing::PrintToString(left);
}

TEST_F(e2e, TimeoutAlsoLimitsTestsOfAShard) {
  // As in ShardedBatchesGiveTheSameOutcomes: once the agent knows the
  // binary is cheap, batches go out as GoogleTest shards; the limit is the
  // same there (the agent follows the running test in either).
  RunOptions o;
  o.env["FX_SLEEP_MS"] = "0";
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  o.env["DTEST_DEBUG"] = "1";
  bool sharded = false;
  std::string last_err;
  for (int k = 0; k < 6 && !sharded; ++k) {
    // Shards come from the agent's cost memory; recorded durations (the run
    // repository in the cwd) would size batches by seconds instead.
    fs::remove_all(tmp_ + "/.dtest");
    const ProcResult r = run({"-n", "2", "-v", "--timeout", "0.5", kSlow}, o);
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    const auto lines = by_id(parse_verbose(r.out));
    EXPECT_EQ(lines.size(), 9u) << describe(r);
    for (const auto& name : kSlowTests) {
      const auto it = lines.find(id_of(kSlow, name));
      ASSERT_NE(it, lines.end()) << name << "\n" << describe(r);
      const std::string want = name == "Quick.Fails" ? "failed" : name == "Hang.Forever" ? "timeout" : "passed";
      EXPECT_EQ(it->second.outcome, want) << name;
      if (want == "timeout") {
        EXPECT_EQ(it->second.message, "timed out after 0.5 s");
      }
    }
    sharded = contains(r.err, ", shard 0/2") || contains(r.err, ", shard 1/2");
    last_err = r.err;
  }
  EXPECT_TRUE(sharded) << last_err;
}

TEST_F(e2e, TestsAfterATimeoutRunInANewProcess) {
  // One worker: Hang.After comes after Hang.Forever, in its batch or a later
  // one; either way it runs after the killed process, in a new one.
  RunOptions o;
  o.env["FX_SLEEP_MS"] = "0";
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  o.env["DTEST_DEBUG"] = "1";
  const ProcResult r = run({"-n", "1", "-v", "--timeout", "0.5", kSlow}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  ASSERT_EQ(lines.size(), 9u) << describe(r);
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.Forever")).outcome, "timeout");
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.After")).outcome, "passed");
  const auto killed = r.err.find("done: signal 9 (SIGKILL)");
  ASSERT_NE(killed, std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" <- batch ", killed), std::string::npos) << r.err;
}

TEST_F(e2e, MaxfailOneStopsSoonAfterTheFirstFailure) {
  // Quick.Fails fails at once; the six Slow tests sleep 10 s each (30 s on
  // two workers) and Hang.Forever 10 minutes. With -x the run ends right
  // after the failure; the bound below is coarse on purpose.
  RunOptions o;
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  o.env["DTEST_DEBUG"] = "1";
  const auto t0 = Clock::now();
  const ProcResult r = run({"-n", "2", "-v", "-x", kSlow}, o);
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const std::string reason = "stopped after 1 failure (-x)";
  const auto lines = by_id(parse_verbose(r.out));
  EXPECT_EQ(lines.size(), 9u) << describe(r);
  int failed = 0, not_run = 0;
  for (const auto& [id, l] : lines) {
    if (l.outcome == "failed") {
      ++failed;
      EXPECT_EQ(id, id_of(kSlow, "Quick.Fails"));
    } else if (l.outcome == "not run") {
      ++not_run;
      EXPECT_EQ(l.message, reason) << id;
    } else {
      EXPECT_EQ(l.outcome, "passed") << id;  // only if the machine is very slow
    }
  }
  EXPECT_EQ(failed, 1) << describe(r);
  EXPECT_GE(not_run, 1) << describe(r);
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.Forever")).outcome, "not run");
  EXPECT_TRUE(contains(r.out, "!!!!!!!!!! " + reason + " !!!!!!!!!!")) << describe(r);
  EXPECT_TRUE(contains(r.out, "NOT RUN " + std::to_string(not_run) + " test")) << describe(r);
  EXPECT_FALSE(contains(r.out, "Interrupted")) << describe(r);
  // Without -x this run takes 30 s at least; a stop that waited for the
  // running tests would take 10 s.
  EXPECT_LT(wall, 8.0) << describe(r);
  // For the record: when the session decided to stop (its trace clock
  // starts as dtest starts) and when dtest had exited.
  std::smatch m;
  if (std::regex_search(r.err, m, std::regex(R"(debug: +([0-9.]+) ms  stopped after)")))
    std::cout << "[ info ] -x: stop decided at " << m[1] << " ms; dtest exited after " << wall * 1e3
              << " ms (wall, from spawn)\n";
  const auto left = slow_tests_left();
  EXPECT_TRUE(left.empty()) << ::testing::PrintToString(left);
}

TEST_F(e2e, TimeoutsCountTowardsMaxfail) {
  // One worker, in listing order: Quick.Fails fails (1), the Slow tests
  // pass, Hang.Forever times out (2): Hang.After is not run.
  RunOptions o;
  o.env["FX_SLEEP_MS"] = "0";
  o.env["DTEST_CACHE_DIR"] = tmp_ + "/cache";
  const ProcResult r = run({"-n", "1", "-v", "--timeout", "1", "--maxfail", "2", kSlow}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto lines = by_id(parse_verbose(r.out));
  ASSERT_EQ(lines.size(), 9u) << describe(r);
  EXPECT_EQ(lines.at(id_of(kSlow, "Quick.Fails")).outcome, "failed");
  EXPECT_EQ(lines.at(id_of(kSlow, "Slow.T6")).outcome, "passed");
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.Forever")).outcome, "timeout");
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.After")).outcome, "not run");
  EXPECT_EQ(lines.at(id_of(kSlow, "Hang.After")).message, "stopped after 2 failures (--maxfail 2)");
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "1 failed, 1 timeout, 6 passed, 1 not run in")) << describe(r);
}

TEST_F(e2e, BadTimeoutOrMaxfailIsAUsageError) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--timeout", "-1"}, "--timeout expects a number of seconds >= 0 (0 = no limit), got '-1'"},
      {{"--timeout", "abc"}, "--timeout expects a number of seconds >= 0 (0 = no limit), got 'abc'"},
      {{"--timeout=nan"}, "--timeout expects a number of seconds >= 0 (0 = no limit), got 'nan'"},
      {{"--timeout", "2s"}, "--timeout expects a number of seconds >= 0 (0 = no limit), got '2s'"},
      {{"--maxfail", "-2"}, "--maxfail expects a whole number >= 0 (0 = no limit), got '-2'"},
      {{"--maxfail", "x"}, "--maxfail expects a whole number >= 0 (0 = no limit), got 'x'"},
      {{"--maxfail", "1.5"}, "--maxfail expects a whole number >= 0 (0 = no limit), got '1.5'"},
  };
  for (const auto& [args, message] : cases) {
    std::vector<std::string> argv = args;
    argv.push_back(kPass);
    const ProcResult r = run(argv);
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 4) << describe(r);
    EXPECT_TRUE(contains(r.err, "dtest: error: " + message)) << describe(r);
    EXPECT_FALSE(contains(r.out, "test session starts")) << describe(r);
  }
  // 0 means no limit for both.
  const ProcResult ok = run({"-q", "--timeout", "0", "--maxfail", "0", kPass});
  EXPECT_EQ(ok.exit_code, 0) << describe(ok);
}


// ===========================================================================
// 14. --retries, --count, --repeat-until-fail, --ff (fx_flaky_test)
// ===========================================================================

namespace flaky {

const std::string kFlaky = fixture("fx_flaky_test");

// How many times a test of fx_flaky_test ran (lines of its runs file).
int runs_of(const std::string& dir, const std::string& name) {
  std::ifstream in(dir + "/" + name + ".runs");
  int n = 0;
  std::string line;
  while (std::getline(in, line)) ++n;
  return n;
}

// -v lines, flaky ones included: id -> {OUTCOME, rest of the line}.
std::map<std::string, std::pair<std::string, std::string>> outcomes(const std::string& out) {
  static const std::regex re(
      R"(^(?:\[[^\]]*\] )?\[ *\d+%\] (PASSED|FAILED|SKIPPED|XFAILED|CRASHED|TIMEOUT|NOT RUN|FLAKY) (\S+)(.*)$)");
  std::map<std::string, std::pair<std::string, std::string>> m;
  for (const auto& l : split_lines(out)) {
    std::smatch sm;
    if (!std::regex_match(l, sm, re)) continue;
    EXPECT_TRUE(m.emplace(sm[2], std::make_pair(sm[1].str(), sm[3].str())).second) << "reported twice: " << l;
  }
  return m;
}

}  // namespace flaky

TEST_F(e2e, RetriesTurnAPassOnRetryIntoFlakyAndKeepTheLastFailure) {
  using namespace flaky;
  const std::string dir = tmp_ + "/runs";
  fs::create_directories(dir);
  RunOptions o;
  o.env["FX_FLAKY_DIR"] = dir;
  const std::string xml = tmp_ + "/out.xml";
  const ProcResult r = run({"-n", "2", "-v", "--retries", "2", "--junitxml", xml, kFlaky}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto m = outcomes(r.out);
  ASSERT_EQ(m.size(), 5u) << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.FailsOnce")).first, "FLAKY") << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.FailsOnce")).second, " (passed on retry 1 of 2)") << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.CrashesOnce")).first, "FLAKY") << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.AlwaysFails")).first, "FAILED") << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.Passes")).first, "PASSED") << describe(r);
  EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.FailsOnThird")).first, "PASSED") << describe(r);
  // A failure runs 1 + 2 times at most; a pass is not run again.
  EXPECT_EQ(runs_of(dir, "Flaky.AlwaysFails"), 3);
  EXPECT_EQ(runs_of(dir, "Flaky.FailsOnce"), 2);
  EXPECT_EQ(runs_of(dir, "Flaky.CrashesOnce"), 2);
  EXPECT_EQ(runs_of(dir, "Flaky.Passes"), 1);
  EXPECT_TRUE(contains(r.out, "RETRY " + id_of(kFlaky, "Flaky.AlwaysFails") + " (failed; retry 2 of 2)"))
      << describe(r);
  EXPECT_TRUE(contains(r.out, "FLAKY " + id_of(kFlaky, "Flaky.CrashesOnce") + " - passed on retry 1 of 2"))
      << describe(r);
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "1 failed, 2 passed, 2 flaky in")) << describe(r);
  // JUnit: a flaky test is a pass with a note.
  const auto doc = load_junit(xml);
  ASSERT_TRUE(doc.has_value());
  EXPECT_TRUE(contains(read_file(xml), "failures=\"1\" errors=\"0\" skipped=\"0\"")) << read_file(xml);
  EXPECT_TRUE(contains(read_file(xml), "<property name=\"outcome\" value=\"flaky\"/>")) << read_file(xml);
  EXPECT_TRUE(contains(read_file(xml), "dtest: flaky: passed on retry 1 of 2")) << read_file(xml);
  // The repository: flaky is stored, and is not a failure.
  const ProcResult failing = run({"failing"});
  EXPECT_EQ(failing.out, id_of(kFlaky, "Flaky.AlwaysFails") + "\n") << describe(failing);
  const ProcResult last = run({"last"});
  EXPECT_TRUE(contains(last.out, "FLAKY " + id_of(kFlaky, "Flaky.FailsOnce"))) << describe(last);
}

TEST_F(e2e, FlakyTestsPassUnlessFlakyFails) {
  using namespace flaky;
  for (const bool flaky_fails : {false, true}) {
    const std::string dir = tmp_ + (flaky_fails ? "/strict" : "/lenient");
    fs::create_directories(dir);
    RunOptions o;
    o.env["FX_FLAKY_DIR"] = dir;
    o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
    std::vector<std::string> args = {"-n", "1", "--retries", "1"};
    if (flaky_fails) args.push_back("--flaky-fails");
    args.push_back(kFlaky);
    const ProcResult r = run(args, o);
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, flaky_fails ? 1 : 0) << describe(r);
    EXPECT_TRUE(contains(last_nonempty_line(r.out), "2 passed, 2 flaky, 1 skipped in")) << describe(r);
  }
  // Without --retries the first failures count.
  const std::string dir = tmp_ + "/none";
  fs::create_directories(dir);
  RunOptions o;
  o.env["FX_FLAKY_DIR"] = dir;
  o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
  const ProcResult r = run({"-n", "1", kFlaky}, o);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "1 failed, 1 crashed, 2 passed, 1 skipped in")) << describe(r);
}

TEST_F(e2e, MaxfailCountsOnlyFailuresAfterRetries) {
  using namespace flaky;
  {
    // Two tests fail once each: with a retry neither is a failure.
    const std::string dir = tmp_ + "/a";
    fs::create_directories(dir);
    RunOptions o;
    o.env["FX_FLAKY_DIR"] = dir;
    o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
    const ProcResult r = run({"-n", "1", "-x", "--retries", "1", kFlaky}, o);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_FALSE(contains(r.out, "stopped after")) << describe(r);
    EXPECT_TRUE(contains(last_nonempty_line(r.out), "2 passed, 2 flaky, 1 skipped in")) << describe(r);
  }
  {
    const std::string dir = tmp_ + "/b";
    fs::create_directories(dir);
    RunOptions o;
    o.env["FX_FLAKY_DIR"] = dir;
    const ProcResult r = run({"-n", "1", "-v", "-x", "--retries", "1", kFlaky}, o);
    // The first failures of FailsOnce and CrashesOnce (listed first) did
    // not stop the run; AlwaysFails' second one is the one -x counts.
    EXPECT_EQ(r.exit_code, 1) << describe(r);
    const auto m = outcomes(r.out);
    EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.FailsOnce")).first, "FLAKY") << describe(r);
    EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.CrashesOnce")).first, "FLAKY") << describe(r);
    EXPECT_EQ(m.size(), 5u) << describe(r);
    EXPECT_EQ(m.at(id_of(kFlaky, "Flaky.AlwaysFails")).first, "FAILED") << describe(r);
    EXPECT_EQ(runs_of(dir, "Flaky.AlwaysFails"), 2);
    int failures = 0;
    for (const auto& [id, v] : m) failures += v.first == "FAILED" || v.first == "CRASHED";
    EXPECT_EQ(failures, 1) << describe(r);
  }
}

// One worker: repetitions of a test do not race on its runs file. Two
// repetitions of one test in one batch would be ambiguous (results map back
// by name): every repetition must run and report.
TEST_F(e2e, CountRunsEveryTestNTimesNeverTwiceInOneBatch) {
  using namespace flaky;
  const std::string dir = tmp_ + "/runs";
  fs::create_directories(dir);
  RunOptions o;
  o.env["FX_FLAKY_DIR"] = dir;
  o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
  const std::string xml = tmp_ + "/out.xml";
  const ProcResult r = run({"-n", "1", "-v", "--count", "3", "--junitxml", xml, kFlaky}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  const auto m = outcomes(r.out);
  ASSERT_EQ(m.size(), 15u) << describe(r);
  for (const char* name : {"Flaky.FailsOnce", "Flaky.CrashesOnce", "Flaky.Passes", "Flaky.FailsOnThird"}) {
    EXPECT_EQ(runs_of(dir, name), 3) << name;
    int bad = 0;
    for (int k = 1; k <= 3; ++k) {
      const std::string id = id_of(kFlaky, std::string(name) + "[" + std::to_string(k) + "/3]");
      ASSERT_TRUE(m.count(id)) << id << describe(r);
      bad += m.at(id).first != "PASSED";
    }
    EXPECT_EQ(bad, std::string(name) == "Flaky.Passes" ? 0 : 1) << name << describe(r);
  }
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "2 failed, 1 crashed, 9 passed, 3 skipped in")) << describe(r);
  EXPECT_TRUE(contains(read_file(xml), "name=\"Passes[2/3]\"")) << read_file(xml);
  // The repository keeps the tests' own ids.
  const ProcResult failing = run({"failing"});
  EXPECT_TRUE(contains(failing.out, id_of(kFlaky, "Flaky.FailsOnce") + "\n")) << describe(failing);
  EXPECT_FALSE(contains(failing.out, "[")) << describe(failing);
}

TEST_F(e2e, CountWithRetries) {
  using namespace flaky;
  const std::string dir = tmp_ + "/runs";
  fs::create_directories(dir);
  RunOptions o;
  o.env["FX_FLAKY_DIR"] = dir;
  o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
  const ProcResult r = run({"-n", "1", "--count", "2", "--retries", "1", kFlaky}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  // FailsOnce, CrashesOnce: one repetition flaky; FailsOnThird runs twice.
  EXPECT_TRUE(contains(last_nonempty_line(r.out), "6 passed, 2 flaky, 2 skipped in")) << describe(r);
}

TEST_F(e2e, RepeatUntilFailStopsAtTheFirstFailingIteration) {
  using namespace flaky;
  const std::string dir = tmp_ + "/runs";
  fs::create_directories(dir);
  // FailsOnce and CrashesOnce already had their first run: only
  // FailsOnThird fails, on the third iteration.
  for (const char* name : {"Flaky.FailsOnce", "Flaky.CrashesOnce"}) std::ofstream(dir + "/" + name + ".runs") << "run\n";
  RunOptions o;
  o.env["FX_FLAKY_DIR"] = dir;
  o.env["FX_FLAKY_SKIP_ALWAYS"] = "1";
  const ProcResult r = run({"-n", "1", "-q", "--repeat-until-fail", "5", kFlaky}, o);
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_TRUE(contains(r.out, "dtest: --repeat-until-fail: iteration 3 of 5\n")) << describe(r);
  EXPECT_FALSE(contains(r.out, "iteration 4 of 5")) << describe(r);
  EXPECT_TRUE(contains(r.out, "dtest: --repeat-until-fail: iteration 3 of 5 failed (exit code 1)")) << describe(r);
  EXPECT_EQ(runs_of(dir, "Flaky.Passes"), 3);

  const ProcResult ok = run({"-n", "1", "-q", "--repeat-until-fail", "2", kPass});
  EXPECT_EQ(ok.exit_code, 0) << describe(ok);
  EXPECT_TRUE(contains(ok.out, "dtest: --repeat-until-fail: all 2 iterations passed")) << describe(ok);
}

TEST_F(e2e, RetryCountRepeatOptionsValidateAndFfIsAccepted) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--retries", "-1"}, "--retries expects a whole number >= 0, got '-1'"},
      {{"--retries", "x"}, "--retries expects a whole number >= 0, got 'x'"},
      {{"--count", "0"}, "--count expects a whole number >= 1, got '0'"},
      {{"--repeat-until-fail", "0"}, "--repeat-until-fail expects a whole number >= 1, got '0'"},
  };
  for (const auto& [args, message] : cases) {
    std::vector<std::string> argv = args;
    argv.push_back(kPass);
    const ProcResult r = run(argv);
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 4) << describe(r);
    EXPECT_TRUE(contains(r.err, "dtest: error: " + message)) << describe(r);
  }
  for (const char* ff : {"--ff", "--failed-first"}) {
    const ProcResult ok = run({"-q", ff, "--retries", "0", kPass});
    EXPECT_EQ(ok.exit_code, 0) << describe(ok);
  }
}

}  // namespace
