// ssh gateway tests against a real OpenSSH sshd on 127.0.0.1, started once
// for this binary by tests/ssh/sshd_harness.sh. The real `dtest` runs as a
// subprocess (hard timeout, no timing assertions) with HOME pointing into a
// temp dir; the harness gives the remote sessions a HOME of their own
// (DIR/remote-home), so the agent cache ~/.cache/dtest of either side is
// isolated. The "remote" is this machine, so binaries are given by absolute
// path. Without sshd every test is skipped with the reason.
//
// Warm connections are on (the default): each test has a control directory
// of its own (DTEST_CACHE_DIR=WORK/cache) and closes its holders when it
// ends (`dtest __ssh-close`), checking that none is left running.

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <pwd.h>
#include <regex>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "gateway/gateway.h"
#include "support/sshd.h"
#include "support/subprocess.h"
#include "support/text.h"
#include "support/verbose.h"
#include "gateway/ssh_gateway.h"
#include "gateway/ssh_internal.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr double kHardTimeout = 90.0;

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kFixtures = FIXTURES_DIR;
const std::string kHarness = SSHD_HARNESS;
const std::string kPass = kFixtures + "/fx_pass_test";
const std::string kMixed = kFixtures + "/fx_mixed_test";
const std::string kEnv = kFixtures + "/fx_env_test";
const std::string kSleep = kFixtures + "/fx_sleep_test";

using dtest::testing::contains;
using dtest::testing::describe;
using dtest::testing::holders;
using dtest::testing::local_user;
using dtest::testing::read_file;
using dtest::testing::ProcResult;

// Runs argv with `env` overriding (an empty value unsets), stdout and stderr
// captured, killed after `timeout` seconds (tests/support/subprocess.h).
ProcResult run_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
                       const std::string& cwd = "", double timeout = kHardTimeout) {
  dtest::testing::RunOptions o;
  o.cwd = cwd;
  o.timeout = timeout;
  for (const auto& [k, v] : env) {
    if (v.empty()) o.unset.insert(k);
    else o.env[k] = v;
  }
  return dtest::testing::run_process(argv, o);
}

// id -> outcome ("passed", ...) from `-v` lines (tests/support/verbose.h); an
// id reported twice keeps its last.
std::map<std::string, std::string> outcomes(const std::string& out) {
  std::map<std::string, std::string> m;
  for (const auto& l : dtest::testing::parse_verbose(out)) m[l.id] = l.outcome;
  return m;
}

// Waits (up to `seconds`) until no holder under `under` runs.
bool no_holders_within(const std::string& under, double seconds) {
  const auto end = Clock::now() + std::chrono::milliseconds(static_cast<long>(seconds * 1000));
  while (!holders(under).empty()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// The control sockets in a control directory.
std::vector<fs::path> control_sockets(const std::string& cm) {
  std::vector<fs::path> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cm, ec))
    if (e.path().extension() == ".sock") v.push_back(e.path());
  return v;
}

// ---------------------------------------------------------------------------
// The sshd, once for the binary
// ---------------------------------------------------------------------------

class SshdEnv : public ::testing::Environment {
 public:
  void SetUp() override {
    char tmpl[] = "/tmp/dtest-ssh-XXXXXX";
    if (!::mkdtemp(tmpl)) {
      skip_reason = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir = tmpl;
    const ProcResult r = run_process({"/bin/bash", kHarness, "start", dir}, {}, "", 60);
    if (r.exit_code == 77) {
      skip_reason = "no OpenSSH sshd: " + r.err;
      return;
    }
    if (r.exit_code != 0) {
      start_error = "sshd harness failed to start:\n" + describe(r) + "\nsshd.log:\n" + read_file(dir + "/sshd.log");
      return;
    }
    port = std::stoi(read_file(dir + "/port"));
    // sshd logs the harness's readiness probe (a connection closed at once)
    // after it accepted it; wait for that line (up to 10 s), so the tests
    // that count connections in the log see only their own.
    for (int k = 0; k < 200 && !contains(read_file(dir + "/sshd.log"), "Connection closed by"); ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    fs::create_directories(dir + "/local-home");
    up = true;
  }
  void TearDown() override {
    if (dir.empty()) return;
    run_process({"/bin/bash", kHarness, "stop", dir}, {}, "", 30);
    if (!std::getenv("DTEST_SSH_TEST_KEEP")) {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
  bool up = false;
  std::string dir, skip_reason, start_error;
  int port = 0;
};

SshdEnv* g_env = nullptr;

class Ssh : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_env->skip_reason.empty()) GTEST_SKIP() << g_env->skip_reason;
    ASSERT_TRUE(g_env->up) << g_env->start_error;
    dir_ = g_env->dir;
    port_ = g_env->port;
    work_ = dir_ + "/work-" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    cache_ = work_ + "/cache";
    fs::create_directories(work_);
  }
  void TearDown() override {
    if (!dir_.empty()) {
      close_holders();
      if (!no_holders_within(cache_, 10)) {
        ADD_FAILURE() << "warm-connection holders left running after __ssh-close";
        for (pid_t p : holders(cache_)) ::kill(p, SIGKILL);
      }
    }
    if (HasFailure()) {
      // The tail of sshd's log explains most ssh failures.
      const std::string log = read_file(dir_ + "/sshd.log");
      std::cerr << "--- sshd.log (tail) ---\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0) << "\n";
    }
  }

  // ssh=-F EMPTY -i KEY -o UserKnownHostsFile=KH USER@127.0.0.1:PORT; the
  // empty config keeps the caller's ~/.ssh/config out of the tests.
  std::string tx(const std::string& key = "id_ed25519", const std::string& known_hosts = "known_hosts") const {
    return "ssh=-F " + empty_config() + " -i " + dir_ + "/" + key + " -o UserKnownHostsFile=" + dir_ + "/" +
           known_hosts + " " + local_user() + "@127.0.0.1:" + std::to_string(port_);
  }
  std::string empty_config() const {
    const std::string p = dir_ + "/empty_ssh_config";
    if (!fs::exists(p)) std::ofstream{p};
    return p;
  }

  ProcResult dtest(const std::vector<std::string>& args, std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {kDtest};
    argv.insert(argv.end(), args.begin(), args.end());
    env.emplace("DTEST_AGENT", kAgent);
    env.emplace("DTEST_CACHE_DIR", cache_);
    env.emplace("DTEST_SSH_PERSIST", "");
    env.emplace("HOME", dir_ + "/local-home");
    env.emplace("SSH_AUTH_SOCK", "");  // unset: no ssh-agent of the caller's
    env.emplace("DTEST_SSH_ACCEPT_NEW", "");
    env.emplace("DTEST_SSH_KNOWN_HOSTS", "");
    ProcResult r = run_process(argv, env, work_);
    if (r.timed_out) ADD_FAILURE() << "dtest did not finish within " << kHardTimeout << " s\n" << describe(r);
    return r;
  }

  std::string remote_cache() const { return dir_ + "/remote-home/.cache/dtest"; }
  std::string cm() const { return cache_ + "/cm"; }


 public:
  // `dtest __ssh-close [TARGET...]` on this test's control directory.
  ProcResult close_holders(const std::vector<std::string>& targets = {}) {
    std::vector<std::string> args = {"__ssh-close"};
    args.insert(args.end(), targets.begin(), targets.end());
    return dtest(args);
  }

 protected:
  // The agent-<hash> files in the remote cache (no temp files).
  std::vector<fs::path> cached_agents() const {
    std::vector<fs::path> v;
    std::error_code ec;
    static const std::regex re("agent-[0-9a-f]{32}");
    for (const auto& e : fs::directory_iterator(remote_cache(), ec))
      if (std::regex_match(e.path().filename().string(), re)) v.push_back(e.path());
    return v;
  }

  std::string dir_, work_, cache_;
  int port_ = 0;
};

// ---------------------------------------------------------------------------
// Unit level: the ssh= value and quoting
// ---------------------------------------------------------------------------

TEST(SshTarget, PlainForms) {
  using dtest::gateway::ssh_detail::parse_target;
  auto t = parse_target("host");
  EXPECT_EQ(t.host, "host");
  EXPECT_EQ(t.user, "");
  EXPECT_FALSE(t.port);
  t = parse_target("me@host:2222");
  EXPECT_EQ(t.user, "me");
  EXPECT_EQ(t.host, "host");
  EXPECT_EQ(t.port, 2222);
  t = parse_target("me@[::1]:2200");
  EXPECT_EQ(t.host, "::1");
  EXPECT_EQ(t.port, 2200);
  t = parse_target("fe80::1");
  EXPECT_EQ(t.host, "fe80::1");
  EXPECT_FALSE(t.port);
}

TEST(SshTarget, ExecnetFlags) {
  using dtest::gateway::ssh_detail::parse_target;
  auto t = parse_target("-p 22100 -i KEY -l bob -F cfg -o UserKnownHostsFile=/kh -oStrictHostKeyChecking=accept-new "
                        "alice@host");
  EXPECT_EQ(t.port, 22100);
  EXPECT_EQ(t.identities, std::vector<std::string>{"KEY"});
  EXPECT_EQ(t.user, "bob");  // -l wins over user@, as in OpenSSH
  EXPECT_EQ(t.host, "host");
  EXPECT_EQ(t.config_file, "cfg");
  EXPECT_EQ(t.known_hosts, "/kh");
  EXPECT_EQ(t.strict_host_key_checking, "accept-new");
  t = parse_target("-p2200 -i '/a b/key' host:22");
  EXPECT_EQ(t.port, 2200);  // -p wins over :port
  EXPECT_EQ(t.identities, std::vector<std::string>{"/a b/key"});
}

TEST(SshTarget, BadValuesAreClearErrors) {
  using dtest::gateway::GatewayError;
  using dtest::gateway::ssh_detail::parse_target;
  auto msg = [](const std::string& v) {
    try {
      parse_target(v);
    } catch (const GatewayError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_TRUE(contains(msg("-x host"), "unsupported ssh flag '-x'")) << msg("-x host");
  EXPECT_TRUE(contains(msg("-p"), "needs a value")) << msg("-p");
  EXPECT_TRUE(contains(msg("host:99999"), "bad port '99999'")) << msg("host:99999");
  EXPECT_TRUE(contains(msg("-p 22"), "no host")) << msg("-p 22");
  EXPECT_TRUE(contains(msg("a b"), "more than one destination")) << msg("a b");
  EXPECT_TRUE(contains(msg("-o Foo=1 host"), "unsupported ssh option -o Foo=1")) << msg("-o Foo=1 host");
}

TEST(SshTarget, ShellQuote) {
  using dtest::gateway::ssh_detail::shell_quote;
  EXPECT_EQ(shell_quote("abc"), "'abc'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
  EXPECT_EQ(shell_quote(""), "''");
  // And the shell agrees.
  const std::string tricky = "a b'c\"d$HOME`x`\\e\n;f";
  const ProcResult r = run_process({"/bin/sh", "-c", "printf %s " + shell_quote(tricky)});
  EXPECT_EQ(r.out, tricky);
}

TEST(SshWarm, ControlMessagesAndHolderArguments) {
  namespace si = dtest::gateway::ssh_internal;
  // Messages split anywhere are put back together; fields round-trip.
  const std::string f = si::ctl::fields({"dtest-cm/1", "", std::string("a\0b", 3), std::string(70000, 'x')});
  std::string wire = si::ctl::message('o', f) + si::ctl::message('Z');
  std::string buf;
  std::vector<si::ctl::Msg> got;
  for (char c : wire) {
    buf += c;
    while (auto m = si::ctl::pop(buf)) got.push_back(*m);
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, 'o');
  const auto parsed = si::ctl::parse_fields(got[0].payload);
  ASSERT_TRUE(parsed.has_value());
  ASSERT_EQ(parsed->size(), 4u);
  EXPECT_EQ((*parsed)[2], std::string("a\0b", 3));
  EXPECT_EQ((*parsed)[3].size(), 70000u);
  EXPECT_EQ(got[1].type, 'Z');
  EXPECT_TRUE(got[1].payload.empty());
  EXPECT_FALSE(si::ctl::parse_fields(std::string("\0\0\0\5" "abc", 7)).has_value());  // truncated
  // The target travels to the holder as arguments.
  using dtest::gateway::ssh_detail::parse_target;
  const auto t = parse_target("-p 2200 -i /k1 -i '/k 2' -F /cfg -o UserKnownHostsFile=/kh "
                              "-o StrictHostKeyChecking=accept-new -o ConnectTimeout=7 bob@host");
  const auto back = si::target_from_args(si::target_to_args(t));
  EXPECT_EQ(back.host, "host");
  EXPECT_EQ(back.user, "bob");
  EXPECT_EQ(back.port, 2200);
  EXPECT_EQ(back.identities, (std::vector<std::string>{"/k1", "/k 2"}));
  EXPECT_EQ(back.config_file, "/cfg");
  EXPECT_EQ(back.known_hosts, "/kh");
  EXPECT_EQ(back.strict_host_key_checking, "accept-new");
  EXPECT_EQ(back.connect_timeout, 7);
}

// ---------------------------------------------------------------------------
// Against the real sshd
// ---------------------------------------------------------------------------

TEST_F(Ssh, OutcomesMatchPopen) {
  const ProcResult p = dtest({"-v", "--tx", "popen", kPass, kMixed});
  ASSERT_FALSE(p.timed_out);
  const ProcResult s = dtest({"-v", "--tx", tx(), kPass, kMixed});
  ASSERT_FALSE(s.timed_out);
  EXPECT_EQ(s.exit_code, p.exit_code) << "ssh:\n" << describe(s) << "\npopen:\n" << describe(p);
  EXPECT_EQ(p.exit_code, 1) << describe(p);  // fx_mixed_test has failures
  const auto po = outcomes(p.out), so = outcomes(s.out);
  EXPECT_GT(po.size(), 30u) << describe(p);
  EXPECT_EQ(so, po) << describe(s);
}

TEST_F(Ssh, FirstRunUploadsTheAgentSecondReusesIt) {
  std::error_code ec;
  fs::remove_all(remote_cache(), ec);
  const ProcResult r1 = dtest({"--tx", tx(), kPass});
  ASSERT_FALSE(r1.timed_out);
  EXPECT_EQ(r1.exit_code, 0) << describe(r1);
  const auto agents = cached_agents();
  ASSERT_EQ(agents.size(), 1u) << "no agent-<hash> in " << remote_cache() << "\n" << describe(r1);
  EXPECT_EQ(fs::file_size(agents[0]), fs::file_size(kAgent));
  EXPECT_EQ(read_file(agents[0].string()), read_file(kAgent));
  struct stat st1 {};
  ASSERT_EQ(::stat(agents[0].c_str(), &st1), 0);
  EXPECT_TRUE(st1.st_mode & S_IXUSR);
  // The default working directory: ~/.cache/dtest/work/<host>-<user>/<cwd's name>.
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::string h = host;
  h = h.substr(0, h.find('.'));
  const std::string work = remote_cache() + "/work/" + h + "-" + local_user() + "/" + fs::path(work_).filename().string();
  EXPECT_TRUE(fs::is_directory(work)) << work;

  const ProcResult r2 = dtest({"--tx", tx(), kPass});
  ASSERT_FALSE(r2.timed_out);
  EXPECT_EQ(r2.exit_code, 0) << describe(r2);
  struct stat st2 {};
  ASSERT_EQ(::stat(agents[0].c_str(), &st2), 0);
  EXPECT_EQ(st2.st_ino, st1.st_ino) << "the agent was uploaded again";
  EXPECT_EQ(st2.st_mtim.tv_sec, st1.st_mtim.tv_sec);
  EXPECT_EQ(st2.st_mtim.tv_nsec, st1.st_mtim.tv_nsec);
  EXPECT_EQ(cached_agents().size(), 1u);
  // No temp files left behind.
  for (const auto& e : fs::directory_iterator(remote_cache(), ec))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.")) << e.path();
}

TEST_F(Ssh, SeveralGatewaysToOneHost) {
  // Two masters bootstrap at the same time (both may upload; temp + rename),
  // each with two gateways on one connection.
  std::error_code ec;
  fs::remove_all(remote_cache(), ec);
  ProcResult other;
  std::thread t([&] { other = dtest({"-v", "--tx", "2*" + tx(), kPass}); });
  const ProcResult r = dtest({"-v", "--tx", "2*" + tx(), kPass});
  t.join();
  for (const ProcResult* p : std::vector<const ProcResult*>{&r, &other}) {
    ASSERT_FALSE(p->timed_out);
    EXPECT_EQ(p->exit_code, 0) << describe(*p);
    EXPECT_GT(outcomes(p->out).size(), 30u) << describe(*p);
  }
  EXPECT_EQ(cached_agents().size(), 1u);
  for (const auto& e : fs::directory_iterator(remote_cache(), ec))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.")) << e.path();
}

// How often `needle` occurs in `text`.
std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + needle.size())) ++n;
  return n;
}

// The number of `-v` outcome lines (an id reported twice counts twice).
std::size_t outcome_lines(const std::string& out) { return dtest::testing::parse_verbose(out).size(); }

// sshd (LogLevel VERBOSE) logs "Connection from" per TCP connection and
// "Accepted publickey" per authentication. The tests run one at a time, so
// what a run adds to the log is the run's.
struct LogMark {
  std::string path;
  std::size_t at;
  explicit LogMark(std::string p) : path(std::move(p)), at(read_file(path).size()) {}
  std::string since() const {
    const std::string log = read_file(path);
    return log.size() > at ? log.substr(at) : std::string();
  }
};

TEST_F(Ssh, ManyGatewaysShareOneConnection) {
  const LogMark mark(dir_ + "/sshd.log");
  const ProcResult r = dtest({"-v", "--tx", "8*" + tx(), kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const std::string log = mark.since();
  EXPECT_EQ(count_of(log, "Connection from"), 1u) << log;
  EXPECT_EQ(count_of(log, "Accepted publickey"), 1u) << log;
  // Eight agents ran on it: eight agent sessions (plus the bootstrap probe).
  EXPECT_GE(count_of(log, "Starting session: command"), 9u) << log;
  const auto o = outcomes(r.out);
  EXPECT_GT(o.size(), 30u) << describe(r);
  EXPECT_EQ(outcome_lines(r.out), o.size()) << "a test with more than one outcome\n" << describe(r);
  for (const auto& [id, outcome] : o) EXPECT_TRUE(outcome == "passed" || outcome == "skipped") << id << " " << outcome;
}

TEST_F(Ssh, GatewaysWithOtherKeysShareTheConnection) {
  // chdir (and env, nice, agent) belong to the channel, not the connection.
  const LogMark mark(dir_ + "/sshd.log");
  const std::string other = work_ + "/other";
  const ProcResult r = dtest({"-v", "--tx", "2*" + tx(), "--tx", tx() + "//chdir=" + other, kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const std::string log = mark.since();
  EXPECT_EQ(count_of(log, "Connection from"), 1u) << log;
  EXPECT_EQ(count_of(log, "Accepted publickey"), 1u) << log;
  EXPECT_TRUE(fs::is_directory(other)) << other;
  const auto o = outcomes(r.out);
  EXPECT_GT(o.size(), 30u) << describe(r);
  EXPECT_EQ(outcome_lines(r.out), o.size()) << describe(r);
}

TEST_F(Ssh, ConnectionFailureFailsEveryGatewayOnIt) {
  const ProcResult r = dtest({"--tx", "4*" + tx("other_ed25519"), kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  const std::string all = r.out + r.err;
  EXPECT_EQ(count_of(all, "authentication failed for user " + local_user()), 4u) << describe(r);
  // The same message for each (the gateways share the spec, so the lines
  // are equal). Not asserted: that there was one handshake, since a
  // gateway that starts after the failure tries a connection of its own.
  std::map<std::string, int> lines;
  std::istringstream in(all);
  for (std::string l; std::getline(in, l);)
    if (contains(l, "authentication failed")) ++lines[l.substr(l.find("ssh gateway"))];
  EXPECT_EQ(lines.size(), 1u) << describe(r);
}

// A server that allows fewer sessions per connection than there are
// gateways (OpenSSH's default MaxSessions is 10): the gateways that do not
// fit open another connection.
TEST_F(Ssh, MaxSessionsSpillsOverToAnotherConnection) {
  char tmpl[] = "/tmp/dtest-ssh2-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string d2 = tmpl;
  struct Stop {
    std::string d;
    ~Stop() {
      run_process({"/bin/bash", kHarness, "stop", d}, {}, "", 30);
      if (!std::getenv("DTEST_SSH_TEST_KEEP")) {
        std::error_code ec;
        fs::remove_all(d, ec);
      }
    }
  } stop{d2};
  // The holder's connections end before that sshd does.
  struct Close {
    Ssh* t;
    ~Close() { t->close_holders(); }
  } close{this};
  const ProcResult h = run_process({"/bin/bash", kHarness, "start", d2},
                                   {{"HARNESS_MAX_SESSIONS", "2"}, {"HARNESS_MAX_STARTUPS", "10:30:100"}}, "", 60);
  ASSERT_EQ(h.exit_code, 0) << describe(h);
  const std::string port = read_file(d2 + "/port");
  const std::string spec = "ssh=-F " + empty_config() + " -i " + d2 + "/id_ed25519 -o UserKnownHostsFile=" + d2 +
                           "/known_hosts " + local_user() + "@127.0.0.1:" + port.substr(0, port.find('\n'));
  // A suite slow enough (12 x 200 ms) for every gateway to come up before
  // it ends (the run starts with the first one; a fast suite may be done
  // before the last connection is).
  const ProcResult r = dtest({"-v", "--tx", "5*" + spec, kSleep});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r) << "\nsshd.log:\n" << read_file(d2 + "/sshd.log");
  // 2 + 2 + 1 gateways.
  EXPECT_EQ(count_of(read_file(d2 + "/sshd.log"), "Accepted publickey"), 3u) << read_file(d2 + "/sshd.log");
  EXPECT_EQ(count_of(r.out, "gateway failed"), 0u) << describe(r);
  EXPECT_EQ(count_of(r.out, " -- agent "), 5u) << "not every gateway came up\n" << describe(r);
  const auto o = outcomes(r.out);
  EXPECT_EQ(o.size(), 12u) << describe(r);
  EXPECT_EQ(outcome_lines(r.out), o.size()) << describe(r);
}

TEST_F(Ssh, ChdirEnvNicePythonAndAgentKey) {
  // A wrapper "agent" records what it was started with, then runs the real
  // agent; agent= makes the gateway upload it instead of dtest-agent.
  const std::string rec = work_ + "/record.txt";
  const std::string wrapper = work_ + "/agent-wrapper.sh";
  {
    std::ofstream w(wrapper);
    w << "#!/bin/sh\n"
      << "{ printf 'PWD=%s\\n' \"$(pwd)\"; printf 'FOO=%s\\n' \"$FOO\"; printf 'PY=%s\\n' \"$DTEST_PYTHON\";"
      << " printf 'NICE=%s\\n' \"$(nice)\"; } > '" << rec << "'\n"
      << "exec '" << kAgent << "' \"$@\"\n";
  }
  fs::permissions(wrapper, fs::perms::owner_all);
  const std::string chdir = work_ + "/remote wd/sub";
  const std::string value = "it's a \"b\" $HOME `x`";
  const ProcResult r = dtest({"--tx", tx() + "//chdir=" + chdir + "//env:FOO=" + value + "//nice=3//python=py3" +
                                     "//agent=" + wrapper,
                              kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const std::string got = read_file(rec);
  EXPECT_TRUE(contains(got, "PWD=" + chdir + "\n")) << got;
  EXPECT_TRUE(contains(got, "FOO=" + value + "\n")) << got;
  EXPECT_TRUE(contains(got, "PY=py3\n")) << got;
  const int base = ::nice(0);
  EXPECT_TRUE(contains(got, "NICE=" + std::to_string(std::min(base + 3, 19)) + "\n")) << got;
}

TEST_F(Ssh, KnownHostsFromTheEnvironment) {
  const std::string spec =
      "ssh=-F " + empty_config() + " -p " + std::to_string(port_) + " -i " + dir_ + "/id_ed25519 -l " + local_user() +
      " 127.0.0.1";
  const ProcResult r = dtest({"--tx", spec, kPass}, {{"DTEST_SSH_KNOWN_HOSTS", dir_ + "/known_hosts"}});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
}

TEST_F(Ssh, HostAliasFromAnSshConfigFile) {
  const std::string cfg = work_ + "/ssh_config";
  {
    std::ofstream c(cfg);
    c << "Host dtestbox\n"
      << "  HostName 127.0.0.1\n"
      << "  Port " << port_ << "\n"
      << "  User " << local_user() << "\n"
      << "  IdentityFile " << dir_ << "/id_ed25519\n"
      << "  UserKnownHostsFile " << dir_ << "/known_hosts\n";
  }
  const ProcResult r = dtest({"-v", "--tx", "ssh=dtestbox//ssh_config=" + cfg, kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_GT(outcomes(r.out).size(), 30u) << describe(r);
  // -F works the same way.
  const ProcResult f = dtest({"--tx", "ssh=-F " + cfg + " dtestbox", kPass});
  EXPECT_EQ(f.exit_code, 0) << describe(f);
}

TEST_F(Ssh, WrongKeyIsAnAuthenticationError) {
  // Warm (the holder makes the attempt and passes its error on) and not.
  for (const std::string persist : {"", "0"}) {
    SCOPED_TRACE("DTEST_SSH_PERSIST=" + persist);
    const ProcResult r = dtest({"--tx", tx("other_ed25519"), kPass}, {{"DTEST_SSH_PERSIST", persist}});
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 3) << describe(r);
    const std::string all = r.out + r.err;
    EXPECT_TRUE(contains(all, "authentication failed for user " + local_user())) << describe(r);
    EXPECT_TRUE(contains(all, "127.0.0.1")) << describe(r);
    EXPECT_TRUE(contains(all, "other_ed25519 (-i)")) << describe(r);
    EXPECT_TRUE(contains(all, "ssh-agent")) << describe(r);
    // A holder whose connection failed does not stay.
    EXPECT_TRUE(no_holders_within(cache_, 5));
  }
  // The warm attempt went through a holder (its log says so).
  std::string logs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cm(), ec))
    if (e.path().extension() == ".log") logs += read_file(e.path().string());
  EXPECT_TRUE(contains(logs, "open failed: authentication failed")) << logs;
}

TEST_F(Ssh, UnknownHostIsRefusedWithHowToAccept) {
  fs::copy_file(dir_ + "/empty_known_hosts", work_ + "/kh", fs::copy_options::overwrite_existing);
  const std::string spec = "ssh=-F " + empty_config() + " -i " + dir_ + "/id_ed25519 -o UserKnownHostsFile=" + work_ +
                           "/kh " + local_user() +
                           "@127.0.0.1:" + std::to_string(port_);
  const ProcResult r = dtest({"--tx", spec, kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  const std::string all = r.out + r.err;
  EXPECT_TRUE(contains(all, "unknown host")) << describe(r);
  EXPECT_TRUE(contains(all, "DTEST_SSH_ACCEPT_NEW=1")) << describe(r);
  EXPECT_TRUE(contains(all, "SHA256:")) << describe(r);
  EXPECT_EQ(read_file(work_ + "/kh"), "");

  // Opting in accepts it and records it.
  const ProcResult a = dtest({"--tx", spec, kPass}, {{"DTEST_SSH_ACCEPT_NEW", "1"}});
  ASSERT_FALSE(a.timed_out);
  EXPECT_EQ(a.exit_code, 0) << describe(a);
  EXPECT_TRUE(contains(read_file(work_ + "/kh"), "[127.0.0.1]:" + std::to_string(port_)))
      << read_file(work_ + "/kh");
  // ... and from then on it is known.
  const ProcResult b = dtest({"--tx", spec, kPass});
  EXPECT_EQ(b.exit_code, 0) << describe(b);
}

TEST_F(Ssh, ChangedHostKeyIsAlwaysRefused) {
  for (const std::string accept : {"", "1"}) {
    const ProcResult r = dtest({"--tx", tx("id_ed25519", "wrong_known_hosts"), kPass},
                               {{"DTEST_SSH_ACCEPT_NEW", accept}});
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 3) << describe(r);
    EXPECT_TRUE(contains(r.out + r.err, "HOST KEY CHANGED")) << describe(r);
  }
}

TEST_F(Ssh, ConnectionRefusedNamesTheHost) {
  // A port nobody listens on: bind one, note it, close it.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(fd);
  const ProcResult r =
      dtest({"--tx", "ssh=-i " + dir_ + "/id_ed25519 127.0.0.1:" + std::to_string(port), kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "connection refused")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "127.0.0.1:" + std::to_string(port))) << describe(r);
}

TEST_F(Ssh, UnresolvableHostIsANameResolutionError) {
  const ProcResult r = dtest({"--tx", "ssh=no-such-host.invalid", kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "name resolution failed")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "no-such-host.invalid")) << describe(r);
}

TEST_F(Ssh, AgentThatDiesDuringStartIsReported) {
  const std::string wrapper = work_ + "/dying-agent.sh";
  {
    std::ofstream w(wrapper);
    w << "#!/bin/sh\necho 'dying-agent: cannot start' >&2\nexit 42\n";
  }
  fs::permissions(wrapper, fs::perms::owner_all);
  const ProcResult r = dtest({"--tx", tx() + "//agent=" + wrapper, kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "dying-agent: cannot start")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "exit status 42")) << describe(r);
}


// ---------------------------------------------------------------------------
// Warm connections between runs
// ---------------------------------------------------------------------------

std::string tail_of(const std::string& text) { return text.substr(text.size() > 3000 ? text.size() - 3000 : 0); }

TEST_F(Ssh, WarmSecondRunReusesTheConnection) {
  const LogMark mark(dir_ + "/sshd.log");
  const ProcResult r1 = dtest({"-v", "--tx", tx(), kPass, kMixed});
  ASSERT_FALSE(r1.timed_out);
  EXPECT_EQ(r1.exit_code, 1) << describe(r1);
  ASSERT_EQ(holders(cache_).size(), 1u) << "no holder after the first run";
  const std::string after_first = mark.since();
  const ProcResult r2 = dtest({"-v", "--tx", tx(), kPass, kMixed});
  ASSERT_FALSE(r2.timed_out);
  EXPECT_EQ(r2.exit_code, 1) << describe(r2);
  EXPECT_EQ(outcomes(r2.out), outcomes(r1.out)) << describe(r2);
  EXPECT_GT(outcomes(r2.out).size(), 30u) << describe(r2);
  const std::string log = mark.since();
  // One connection, one authentication for both runs.
  EXPECT_EQ(count_of(log, "Connection from"), 1u) << log;
  EXPECT_EQ(count_of(log, "Accepted publickey"), 1u) << log;
  // The second run opened its agent's channel and nothing else: no probe,
  // no upload.
  const std::string second = log.substr(after_first.size());
  EXPECT_EQ(count_of(second, "Starting session: command"), 1u) << second;
  // The control directory: private, one socket.
  struct stat st {};
  ASSERT_EQ(::stat(cm().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(control_sockets(cm()).size(), 1u);
}

TEST_F(Ssh, WarmManyGatewaysAndAnotherChdir) {
  // 4 gateways in two runs (one with another chdir): one connection.
  const LogMark mark(dir_ + "/sshd.log");
  const ProcResult r1 = dtest({"-v", "--tx", "3*" + tx(), kPass});
  EXPECT_EQ(r1.exit_code, 0) << describe(r1);
  const ProcResult r2 = dtest({"-v", "--tx", "2*" + tx(), "--tx", tx() + "//chdir=" + work_ + "/other", kPass});
  EXPECT_EQ(r2.exit_code, 0) << describe(r2);
  EXPECT_EQ(outcome_lines(r2.out), outcomes(r2.out).size()) << describe(r2);
  EXPECT_TRUE(fs::is_directory(work_ + "/other"));
  const std::string log = mark.since();
  EXPECT_EQ(count_of(log, "Connection from"), 1u) << log;
  EXPECT_EQ(holders(cache_).size(), 1u);
}

TEST_F(Ssh, PersistZeroConnectsEveryTime) {
  const LogMark mark(dir_ + "/sshd.log");
  for (int i = 0; i < 2; ++i) {
    const ProcResult r = dtest({"--tx", tx(), kPass}, {{"DTEST_SSH_PERSIST", "0"}});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
  }
  const std::string log = mark.since();
  EXPECT_EQ(count_of(log, "Connection from"), 2u) << log;
  EXPECT_EQ(count_of(log, "Accepted publickey"), 2u) << log;
  EXPECT_TRUE(holders(cache_).empty());
  EXPECT_TRUE(control_sockets(cm()).empty());
  // A bad value is an error, not a silent default.
  const ProcResult bad = dtest({"--tx", tx(), kPass}, {{"DTEST_SSH_PERSIST", "ten"}});
  EXPECT_EQ(bad.exit_code, 3) << describe(bad);
  EXPECT_TRUE(contains(bad.out + bad.err, "bad DTEST_SSH_PERSIST='ten'")) << describe(bad);
}

TEST_F(Ssh, HolderExitsWhenIdle) {
  // Started with the default (600 s); the latest run's value counts.
  const ProcResult r0 = dtest({"--tx", tx(), kPass});
  ASSERT_EQ(r0.exit_code, 0) << describe(r0);
  const auto first = holders(cache_);
  ASSERT_EQ(first.size(), 1u);
  const ProcResult r = dtest({"--tx", tx(), kPass}, {{"DTEST_SSH_PERSIST", "2"}});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  ASSERT_EQ(holders(cache_), first);
  ASSERT_EQ(control_sockets(cm()).size(), 1u);
  EXPECT_TRUE(no_holders_within(cache_, 15)) << "the holder outlived DTEST_SSH_PERSIST=2";
  EXPECT_TRUE(control_sockets(cm()).empty()) << "the holder left its socket";
  std::string logs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cm(), ec))
    if (e.path().extension() == ".log") logs += read_file(e.path().string());
  EXPECT_TRUE(contains(logs, "exiting: idle for 2 s")) << logs;
  // The next run starts over.
  const LogMark mark(dir_ + "/sshd.log");
  const ProcResult again = dtest({"--tx", tx(), kPass}, {{"DTEST_SSH_PERSIST", "2"}});
  EXPECT_EQ(again.exit_code, 0) << describe(again);
  EXPECT_EQ(count_of(mark.since(), "Accepted publickey"), 1u) << mark.since();
}

TEST_F(Ssh, StaleSocketIsReplaced) {
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  const auto before = holders(cache_);
  ASSERT_EQ(before.size(), 1u);
  const auto socks = control_sockets(cm());
  ASSERT_EQ(socks.size(), 1u);
  // A holder killed outright leaves its socket file with nobody listening.
  ::kill(before[0], SIGKILL);
  ASSERT_TRUE(no_holders_within(cache_, 5));
  ASSERT_TRUE(fs::exists(socks[0]));
  const LogMark mark(dir_ + "/sshd.log");
  const ProcResult r = dtest({"-v", "--tx", tx(), kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_GT(outcomes(r.out).size(), 30u) << describe(r);
  EXPECT_EQ(count_of(mark.since(), "Accepted publickey"), 1u) << mark.since();
  const auto after = holders(cache_);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_NE(after[0], before[0]);
  // Something that is not a socket at all is replaced too.
  close_holders();
  ASSERT_TRUE(no_holders_within(cache_, 5));
  std::ofstream{socks[0].string()} << "junk";
  const ProcResult j = dtest({"--tx", tx(), kPass});
  EXPECT_EQ(j.exit_code, 0) << describe(j);
  EXPECT_EQ(holders(cache_).size(), 1u);
}

TEST_F(Ssh, ControlDirectoryMustBePrivate) {
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  struct stat st {};
  ASSERT_EQ(::stat(cm().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  close_holders();
  // Group or others may enter: refused, with the fix.
  ASSERT_EQ(::chmod(cm().c_str(), 0755), 0);
  ProcResult r = dtest({"--tx", tx(), kPass});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "refusing to use " + cm())) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "chmod 700")) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "DTEST_SSH_PERSIST=0")) << describe(r);
  // ... and without warm connections the run does not need it.
  r = dtest({"--tx", tx(), kPass}, {{"DTEST_SSH_PERSIST", "0"}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  ASSERT_EQ(::chmod(cm().c_str(), 0700), 0);
  // Another user's directory.
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(cm().c_str(), 65534, 65534), 0);
    r = dtest({"--tx", tx(), kPass});
    EXPECT_EQ(r.exit_code, 3) << describe(r);
    EXPECT_TRUE(contains(r.out + r.err, "owned by uid 65534")) << describe(r);
    ASSERT_EQ(::chown(cm().c_str(), 0, 0), 0);
  }
  // A symlink in its place.
  fs::rename(cm(), cache_ + "/real-cm");
  fs::create_directory_symlink(cache_ + "/real-cm", cm());
  r = dtest({"--tx", tx(), kPass});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "symlink")) << describe(r);
  fs::remove(cm());
  fs::rename(cache_ + "/real-cm", cm());
  EXPECT_TRUE(holders(cache_).empty());
}

TEST_F(Ssh, CloseWarmConnections) {
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  ASSERT_EQ(holders(cache_).size(), 1u);
  const std::string where = local_user() + "@127.0.0.1:" + std::to_string(port_);
  // Another target: nothing closed.
  ProcResult c = close_holders({"127.0.0.1:1"});
  EXPECT_EQ(c.exit_code, 0) << describe(c);
  EXPECT_TRUE(contains(c.out, "no warm connection to 127.0.0.1:1")) << describe(c);
  EXPECT_EQ(holders(cache_).size(), 1u);
  // This one.
  c = close_holders({"ssh=" + where});
  EXPECT_EQ(c.exit_code, 0) << describe(c);
  EXPECT_TRUE(contains(c.out, "closed the warm connection to " + where)) << describe(c);
  EXPECT_TRUE(holders(cache_).empty()) << "the holder still runs when __ssh-close returns";
  EXPECT_TRUE(control_sockets(cm()).empty());
  // The next run connects again.
  const LogMark mark(dir_ + "/sshd.log");
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  EXPECT_EQ(count_of(mark.since(), "Accepted publickey"), 1u) << mark.since();
  // All of them.
  c = close_holders();
  EXPECT_TRUE(contains(c.out, "closed the warm connection to " + where)) << describe(c);
  EXPECT_TRUE(holders(cache_).empty());
  c = close_holders();
  EXPECT_TRUE(contains(c.out, "no warm ssh connections")) << describe(c);
}

TEST_F(Ssh, RemovingTheCacheDirectoryEndsTheHolder) {
  // What a test's clean-up (rm -rf of its temp dir) does: the holder can no
  // longer be reached, so it goes (at once when idle).
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  ASSERT_EQ(holders(cache_).size(), 1u);
  fs::remove_all(cache_);
  EXPECT_TRUE(no_holders_within(cache_, 5)) << "the holder outlived its socket";
}

// The pids of every descendant of `root`.
std::vector<pid_t> descendants(pid_t root) {
  std::map<pid_t, std::vector<pid_t>> kids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    const std::string stat = read_file(e.path().string() + "/stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream in(stat.substr(close + 2));
    char state;
    pid_t ppid = 0;
    in >> state >> ppid;
    kids[ppid].push_back(std::stoi(n));
  }
  std::vector<pid_t> out, todo = {root};
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    for (pid_t k : kids[p]) {
      out.push_back(k);
      todo.push_back(k);
    }
  }
  return out;
}

TEST_F(Ssh, WarmConnectionToARestartedServerReconnects) {
  char tmpl[] = "/tmp/dtest-ssh3-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string d2 = tmpl;
  struct Stop {
    std::string d;
    ~Stop() {
      run_process({"/bin/bash", kHarness, "stop", d}, {}, "", 30);
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } stop{d2};
  struct Close {
    Ssh* t;
    ~Close() { t->close_holders(); }
  } close{this};
  ProcResult h = run_process({"/bin/bash", kHarness, "start", d2}, {}, "", 60);
  ASSERT_EQ(h.exit_code, 0) << describe(h);
  const std::string port = read_file(d2 + "/port").substr(0, read_file(d2 + "/port").find('\n'));
  const std::string spec = "ssh=-F " + empty_config() + " -i " + d2 + "/id_ed25519 -o UserKnownHostsFile=" + d2 +
                           "/known_hosts " + local_user() + "@127.0.0.1:" + port;
  ProcResult r = dtest({"--tx", spec, kPass});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const auto first = holders(cache_);
  ASSERT_EQ(first.size(), 1u);
  // sshd dies with every session it runs (the warm connection's too), and
  // comes back on the same port.
  const pid_t sshd = std::stoi(read_file(d2 + "/sshd.pid"));
  std::vector<pid_t> all = descendants(sshd);
  all.push_back(sshd);
  for (pid_t p : all) ::kill(p, SIGKILL);
  h = run_process({"/bin/bash", kHarness, "start", d2}, {{"HARNESS_PORT", port}}, "", 60);
  ASSERT_EQ(h.exit_code, 0) << describe(h);
  r = dtest({"-v", "--tx", spec, kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r) << "\n" << tail_of(read_file(d2 + "/sshd.log"));
  EXPECT_GT(outcomes(r.out).size(), 30u) << describe(r);
  EXPECT_EQ(count_of(read_file(d2 + "/sshd.log"), "Accepted publickey"), 1u) << read_file(d2 + "/sshd.log");
  // The old holder is gone (its link died); one serves the new connection.
  const auto now = holders(cache_);
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now[0], first[0]);
}

TEST_F(Ssh, WarmAgentRemovedFromTheRemoteIsUploadedAgain) {
  ASSERT_EQ(dtest({"--tx", tx(), kPass}).exit_code, 0);
  // Someone cleans the remote cache while the connection is warm: that run
  // fails (the agent is not there), the next probes and uploads again.
  std::error_code ec;
  for (const auto& a : cached_agents()) fs::remove(a, ec);
  const ProcResult bad = dtest({"--tx", tx(), kPass});
  EXPECT_NE(bad.exit_code, 0) << describe(bad);
  EXPECT_TRUE(contains(bad.out + bad.err, "exit status 127")) << describe(bad);
  const ProcResult good = dtest({"--tx", tx(), kPass});
  EXPECT_EQ(good.exit_code, 0) << describe(good);
  EXPECT_EQ(cached_agents().size(), 1u);
}

// How long a gateway takes to open (up to the agent's first frame) in this
// process: cold (a connection of its own) against warm (a holder's). Printed,
// not asserted.
TEST_F(Ssh, GatewayOpenTimeWarmAndCold) {
  namespace gw = dtest::gateway;
  struct Env {
    std::map<std::string, std::optional<std::string>> saved;
    void set(const std::string& k, const std::optional<std::string>& v) {
      if (!saved.count(k)) {
        const char* old = std::getenv(k.c_str());
        saved[k] = old ? std::optional<std::string>(old) : std::nullopt;
      }
      if (v) ::setenv(k.c_str(), v->c_str(), 1);
      else ::unsetenv(k.c_str());
    }
    ~Env() {
      for (const auto& [k, v] : saved) {
        if (v) ::setenv(k.c_str(), v->c_str(), 1);
        else ::unsetenv(k.c_str());
      }
    }
  } env;
  env.set("HOME", dir_ + "/local-home");
  env.set("DTEST_CACHE_DIR", cache_);
  env.set("SSH_AUTH_SOCK", std::nullopt);
  gw::enable_warm_connections(kDtest);
  struct Off {
    ~Off() { dtest::gateway::enable_warm_connections(""); }
  } off;
  auto open_once = [&](const std::string& persist) {
    env.set("DTEST_SSH_PERSIST", persist);
    const auto t0 = Clock::now();
    auto g = gw::open(dtest::xspec::parse(tx()), gw::OpenOptions{kAgent});
    auto hello = g->receive();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    EXPECT_TRUE(hello.has_value());
    g->close();
    g->wait(10);
    return ms;
  };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<double> cold, warm;
  open_once("");  // the agent is uploaded, a holder started
  for (int i = 0; i < 7; ++i) cold.push_back(open_once("0"));
  for (int i = 0; i < 7; ++i) warm.push_back(open_once(""));
  std::printf("gateway open to the first frame: cold %.1f ms, warm %.1f ms (medians of 7)\n", median(cold),
              median(warm));
  RecordProperty("cold_ms", std::to_string(median(cold)));
  RecordProperty("warm_ms", std::to_string(median(warm)));
}
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  g_env = new SshdEnv;
  ::testing::AddGlobalTestEnvironment(g_env);
  return RUN_ALL_TESTS();
}
