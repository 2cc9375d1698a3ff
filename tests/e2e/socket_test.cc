// End-to-end tests of the socket gateway: a real `dtest-agent --listen`
// server on loopback (with a token file), and the real `dtest` binary run as
// a subprocess with `--tx socket=127.0.0.1:PORT` over the real fixture
// GoogleTest binaries.
//
// Every subprocess runs under a hard timeout; on expiry it is SIGKILLed and
// the test FAILS. No test asserts on how long something took. Each test's
// server is stopped (SIGTERM, then SIGKILL) in TearDown.

#include <gtest/gtest.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <netinet/in.h>
#include <optional>
#include <poll.h>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "support/subprocess.h"
#include "support/text.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr double kHardTimeout = 60.0;  // seconds, per subprocess or wait

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kFixtures = FIXTURES_DIR;
const std::string kPass = kFixtures + "/fx_pass_test";
const std::string kMixed = kFixtures + "/fx_mixed_test";
const std::string kSleep = kFixtures + "/fx_sleep_test";

// ---------------------------------------------------------------------------
// Subprocesses (tests/support/subprocess.h)
// ---------------------------------------------------------------------------

using dtest::testing::contains;
using dtest::testing::describe;
using dtest::testing::read_file;
using dtest::testing::ProcResult;
using dtest::testing::run_process;
using dtest::testing::RunOptions;
using dtest::testing::spawn_process;

using Env = std::map<std::string, std::string>;

// Options with `env` overriding the environment, under a hard timeout.
RunOptions run_opts(Env env = {}, double timeout = kHardTimeout) {
  RunOptions o;
  o.env = std::move(env);
  o.timeout = timeout;
  return o;
}

// Waits (hard timeout) for `pred`; false if it never held.
bool eventually(const std::function<bool()>& pred, double timeout = kHardTimeout) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout * 1000));
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// ---------------------------------------------------------------------------
// `-v` output
// ---------------------------------------------------------------------------

struct VLine {
  std::string worker, outcome, id;
};

std::vector<VLine> parse_verbose(const std::string& out) {
  static const std::regex re(
      R"(^(?:\[([^\]]*)\] )?\[ *\d+%\] (PASSED|FAILED|SKIPPED|XFAILED|CRASHED|TIMEOUT|NOT RUN) (\S+)(?: \(([^)]*)\))?(?: - (.*))?$)");
  std::vector<VLine> v;
  std::istringstream in(out);
  std::string l;
  while (std::getline(in, l)) {
    std::smatch m;
    if (!std::regex_match(l, m, re)) continue;
    VLine x{m[1], m[2], m[3]};
    std::transform(x.outcome.begin(), x.outcome.end(), x.outcome.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    v.push_back(std::move(x));
  }
  return v;
}

// id -> outcome; fails the test if an id shows up twice.
std::map<std::string, std::string> outcomes(const std::vector<VLine>& v) {
  std::map<std::string, std::string> m;
  for (const auto& x : v) EXPECT_TRUE(m.emplace(x.id, x.outcome).second) << "test reported twice: " << x.id;
  return m;
}

// ---------------------------------------------------------------------------
// Processes left behind
// ---------------------------------------------------------------------------

// Live (non-zombie) processes whose parent is this test process, other than
// `except`. With PR_SET_CHILD_SUBREAPER, orphans of the server land here.
std::vector<std::string> live_children(const std::set<pid_t>& except = {}) {
  std::vector<std::string> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    const std::string stat = read_file("/proc/" + n + "/stat");
    const auto rp = stat.rfind(')');
    if (rp == std::string::npos || rp + 4 > stat.size()) continue;
    const char state = stat[rp + 2];
    const auto ppid = static_cast<pid_t>(std::atoi(stat.c_str() + rp + 4));
    const auto pid = static_cast<pid_t>(std::stoi(n));
    if (ppid != ::getpid() || state == 'Z' || except.count(pid)) continue;
    std::string cmd = read_file("/proc/" + n + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    v.push_back(n + ": " + cmd);
  }
  return v;
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

class Server {
 public:
  Server(std::string dir, std::string token_file, std::string address = "127.0.0.1:0")
      : dir_(std::move(dir)), token_file_(std::move(token_file)), address_(std::move(address)) {}
  ~Server() { stop(); }

  // Starts the server; false (with the log) if it did not report its port.
  bool start() {
    static int n = 0;
    const std::string tag = std::to_string(n++);
    log_ = dir_ + "/server" + tag + ".log";
    port_file_ = dir_ + "/server" + tag + ".port";
    const int logfd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) return false;
    pid_ = spawn_process({kAgent, "--listen", address_, "--token-file", token_file_, "--port-file", port_file_},
                         run_opts({{"DTEST_TOKEN", ""}}), logfd, logfd);
    ::close(logfd);
    const bool up = eventually([&] { return fs::exists(port_file_) || !running(); });
    if (!up || !fs::exists(port_file_)) return false;
    port_ = std::stoi(read_file(port_file_));
    return true;
  }

  // SIGTERM, a grace period (bounded), then SIGKILL. Returns the exit code.
  int stop(int sig = SIGTERM) {
    if (pid_ <= 0) return exit_code_;
    ::kill(pid_, sig);
    if (!eventually([&] { return !running(); }, 20)) {
      ADD_FAILURE() << "dtest-agent --listen did not stop after signal " << sig << "\n" << log();
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, &status_, 0);
    }
    exit_code_ = WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
    pid_ = -1;
    return exit_code_;
  }

  bool running() {
    if (pid_ <= 0) return false;
    if (reaped_) return false;
    const pid_t w = ::waitpid(pid_, &status_, WNOHANG);
    if (w == pid_ || (w < 0 && errno == ECHILD)) reaped_ = true;
    return !reaped_;
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string spec() const { return "socket=127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return read_file(log_); }

 private:
  std::string dir_, token_file_, address_, log_, port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
  int status_ = 0;
  bool reaped_ = false;
  int exit_code_ = -1;
};

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Reads until EOF (bounded by the hard timeout); returns the bytes.
std::string read_to_eof(int fd) {
  std::string s;
  const auto deadline = Clock::now() + std::chrono::seconds(static_cast<long>(kHardTimeout));
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
  }
  ADD_FAILURE() << "the server did not close the connection";
  return s;
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

class socket_e2e : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kDtest)) << kDtest;
    ASSERT_TRUE(fs::exists(kAgent)) << kAgent;
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/dtest-socket-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    tmp_ = tmpl;
    token_file_ = tmp_ + "/token";
    std::ofstream(token_file_) << "correct horse battery staple\n";
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    server_ = std::make_unique<Server>(tmp_, token_file_);
    ASSERT_TRUE(server_->start()) << "the server did not start:\n" << server_->log();
  }
  void TearDown() override {
    servers_.clear();
    if (server_) server_->stop();
    std::error_code ec;
    if (!tmp_.empty()) fs::remove_all(tmp_, ec);
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }

  // Runs dtest with the token file (or the given env) in the temp dir.
  ProcResult dtest(std::vector<std::string> args, Env env = {},
                   const std::function<void(const std::string&)>& tick = {}) {
    env.emplace("DTEST_AGENT", kAgent);
    env.emplace("DTEST_TOKEN", "");
    env.emplace("DTEST_TOKEN_FILE", token_file_);
    args.insert(args.begin(), kDtest);
    RunOptions opts = run_opts(std::move(env));
    if (tick) opts.tick = [&tick](pid_t, const std::string& out) { tick(out); };
    ProcResult r = run_process(args, opts);
    if (r.timed_out) ADD_FAILURE() << "dtest did not finish within " << kHardTimeout << " s\n" << describe(r);
    return r;
  }

  std::string tmp_, token_file_;
  std::unique_ptr<Server> server_;
  std::vector<std::unique_ptr<Server>> servers_;  // extra ones
};

// ===========================================================================

TEST_F(socket_e2e, OutcomesMatchAPopenRun) {
  const ProcResult p = dtest({"-v", "--tx", "popen", kPass, kMixed});
  ASSERT_FALSE(p.timed_out);
  const ProcResult s = dtest({"-v", "--tx", server_->spec(), kPass, kMixed});
  ASSERT_FALSE(s.timed_out);
  EXPECT_EQ(p.exit_code, 1) << describe(p);  // fx_mixed_test fails
  EXPECT_EQ(s.exit_code, p.exit_code) << describe(s);
  const auto pl = parse_verbose(p.out), sl = parse_verbose(s.out);
  EXPECT_EQ(pl.size(), 66u) << describe(p);
  EXPECT_EQ(outcomes(sl), outcomes(pl)) << describe(s);
  for (const auto& l : sl)
    if (!l.worker.empty()) {
      EXPECT_EQ(l.worker, "gw0") << l.id;
    }
  EXPECT_TRUE(contains(s.out, "[gw0] linux")) << describe(s);
  EXPECT_TRUE(contains(s.out, server_->spec())) << describe(s);
  EXPECT_TRUE(contains(server_->log(), "accepted 127.0.0.1:")) << server_->log();
}

TEST_F(socket_e2e, TokenFromTheEnvironmentWorks) {
  const ProcResult r = dtest({"--tx", server_->spec(), kPass},
                             {{"DTEST_TOKEN", "correct horse battery staple"}, {"DTEST_TOKEN_FILE", ""}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
}

TEST_F(socket_e2e, WrongTokenIsAClearErrorAndTheServerKeepsServing) {
  const ProcResult bad = dtest({"--tx", server_->spec(), kPass}, {{"DTEST_TOKEN", "s3cr3t-wr0ng-t0ken"}});
  ASSERT_FALSE(bad.timed_out);
  EXPECT_EQ(bad.exit_code, 3) << describe(bad);
  const std::string all = bad.out + bad.err;
  EXPECT_TRUE(contains(all, "socket gateway '" + server_->spec() + "'")) << describe(bad);
  EXPECT_TRUE(contains(all, "the agent at 127.0.0.1:" + std::to_string(server_->port()) + " rejected the token"))
      << describe(bad);
  EXPECT_TRUE(contains(all, "no gateway came up")) << describe(bad);
  EXPECT_FALSE(contains(all + server_->log(), "s3cr3t")) << "the token must not be echoed\n" << describe(bad);
  EXPECT_TRUE(eventually([&] { return contains(server_->log(), ": wrong token"); })) << server_->log();
  EXPECT_TRUE(std::regex_search(server_->log(), std::regex(R"(refused 127\.0\.0\.1:\d+: wrong token)")))
      << server_->log();

  const ProcResult good = dtest({"--tx", server_->spec(), kPass});
  EXPECT_EQ(good.exit_code, 0) << describe(good);
  EXPECT_TRUE(server_->running());
}

TEST_F(socket_e2e, NoTokenIsAClearError) {
  const ProcResult r = dtest({"--tx", server_->spec(), kPass}, {{"DTEST_TOKEN_FILE", ""}});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "no token configured: set DTEST_TOKEN, or DTEST_TOKEN_FILE")) << describe(r);
  const ProcResult m = dtest({"--tx", server_->spec(), kPass}, {{"DTEST_TOKEN_FILE", tmp_ + "/missing"}});
  EXPECT_EQ(m.exit_code, 3) << describe(m);
  EXPECT_TRUE(contains(m.out + m.err, "cannot read token file " + tmp_ + "/missing")) << describe(m);
}

TEST_F(socket_e2e, GarbageAndSilentClientsAreRefusedAndLogged) {
  // Random bytes, a client that says nothing, one that stops half-way, and
  // one that speaks the wrong protocol; all at once.
  std::mt19937 rng(12345);
  std::string junk(200, '\0');
  for (auto& c : junk) c = static_cast<char>(rng());
  junk[0] = '\x01';  // not 'D'
  const int g = connect_to(server_->port());
  const int silent = connect_to(server_->port());
  const int partial = connect_to(server_->port());
  const int http = connect_to(server_->port());
  ASSERT_GE(g, 0);
  ASSERT_GE(silent, 0);
  ASSERT_GE(partial, 0);
  ASSERT_GE(http, 0);
  ASSERT_EQ(::write(g, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  ASSERT_EQ(::write(partial, "DTEST-AUTH 1\n0123", 17), 17);
  ASSERT_EQ(::write(http, "GET / HTTP/1.0\r\n\r\n", 18), 18);
  // The server sends its challenge to each, then hangs up on it.
  for (int fd : {g, silent, partial, http}) {
    const std::string got = read_to_eof(fd);
    EXPECT_EQ(got.substr(0, 13), "DTEST-AUTH 1\n");
    EXPECT_LE(got.size(), 45u);  // nothing beyond the challenge
    ::close(fd);
  }
  const auto log_has = [&](const std::string& re) {
    return eventually([&] { return std::regex_search(server_->log(), std::regex(re)); });
  };
  EXPECT_TRUE(log_has(R"(refused 127\.0\.0\.1:\d+: not a dtest client \(sent '\\x01)")) << server_->log();
  EXPECT_TRUE(log_has(R"(refused 127\.0\.0\.1:\d+: sent nothing within 5 s)")) << server_->log();
  EXPECT_TRUE(log_has(R"(refused 127\.0\.0\.1:\d+: sent only 17 of 77 bytes within 5 s)")) << server_->log();
  EXPECT_TRUE(log_has(R"(refused 127\.0\.0\.1:\d+: not a dtest client \(sent 'GET / HTTP/1\.0)")) << server_->log();

  // Still serving.
  ASSERT_TRUE(server_->running());
  const ProcResult r = dtest({"--tx", server_->spec(), kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
}

TEST_F(socket_e2e, ConnectionRefusedIsAClearError) {
  // A port that is bound but not listening refuses connections.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string where = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  const ProcResult r = dtest({"--tx", "socket=" + where, kPass});
  ::close(fd);
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "socket gateway 'socket=" + where + "': connection refused by " + where))
      << describe(r);
}

TEST_F(socket_e2e, UnresolvableHostIsAClearError) {
  const ProcResult r = dtest({"--tx", "socket=no-such-host.invalid:8888", kPass});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_TRUE(contains(r.out + r.err, "cannot resolve host 'no-such-host.invalid'")) << describe(r);
}

TEST_F(socket_e2e, TwoSocketGatewaysAtOnce) {
  const ProcResult r = dtest({"-v", "--tx", "2*" + server_->spec(), kSleep, kPass});
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(outcomes(lines).size(), 46u) << describe(r);
  std::set<std::string> workers;
  for (const auto& l : lines)
    if (!l.worker.empty()) workers.insert(l.worker);
  EXPECT_EQ(workers, (std::set<std::string>{"gw0", "gw1"})) << describe(r);
  EXPECT_TRUE(contains(r.out, "[gw0] linux")) << describe(r);
  EXPECT_TRUE(contains(r.out, "[gw1] linux")) << describe(r);
  const std::string log = server_->log();
  std::size_t accepted = 0;
  for (auto p = log.find("accepted "); p != std::string::npos; p = log.find("accepted ", p + 1)) ++accepted;
  EXPECT_EQ(accepted, 2u) << log;
}

TEST_F(socket_e2e, TwoServersAtOnce) {
  servers_.push_back(std::make_unique<Server>(tmp_, token_file_));
  ASSERT_TRUE(servers_[0]->start()) << servers_[0]->log();
  const ProcResult r = dtest({"-v", "--tx", server_->spec(), "--tx", servers_[0]->spec(), kSleep});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto lines = parse_verbose(r.out);
  EXPECT_EQ(outcomes(lines).size(), 12u) << describe(r);
  EXPECT_TRUE(contains(server_->log(), "accepted ")) << server_->log();
  EXPECT_TRUE(contains(servers_[0]->log(), "accepted ")) << servers_[0]->log();
}

TEST_F(socket_e2e, Ipv6Loopback) {
  servers_.push_back(std::make_unique<Server>(tmp_, token_file_, "[::1]:0"));
  if (!servers_[0]->start()) {
    if (contains(servers_[0]->log(), "cannot listen on [::1]:0")) GTEST_SKIP() << "no IPv6 here: " << servers_[0]->log();
    FAIL() << servers_[0]->log();
  }
  const std::string spec = "socket=[::1]:" + std::to_string(servers_[0]->port());
  const ProcResult r = dtest({"--tx", spec, kPass});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(servers_[0]->log(), "accepted [::1]:")) << servers_[0]->log();
}

void kill_server_mid_run(socket_e2e* self, Server& server, const ProcResult& r, bool killed) {
  (void)self;
  ASSERT_FALSE(r.timed_out);
  EXPECT_TRUE(killed) << "the socket gateway never reported a result, so the server was not killed mid-run\n"
                      << describe(r);
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  const auto lines = parse_verbose(r.out);
  const auto got = outcomes(lines);
  EXPECT_EQ(got.size(), 12u) << describe(r);
  for (const auto& [id, o] : got) EXPECT_EQ(o, "passed") << id;
  EXPECT_TRUE(contains(r.out, "[gw1] gateway lost (" + server.spec() + ")")) << describe(r);
}

TEST_F(socket_e2e, KillingTheServerMidRunRequeuesToPopen) {
  bool killed = false;
  const ProcResult r = dtest({"-v", "--tx", "popen", "--tx", server_->spec(), kSleep}, {},
                             [&](const std::string& out) {
                               if (!killed && contains(out, "[gw1] [")) {
                                 killed = true;
                                 ::kill(server_->pid(), SIGTERM);
                               }
                             });
  kill_server_mid_run(this, *server_, r, killed);
  EXPECT_EQ(server_->stop(), 0) << server_->log();
  EXPECT_TRUE(contains(server_->log(), "stopping (SIGTERM); 1 agent(s) to stop")) << server_->log();
  // The server's agent and its tests are gone (orphans would be reparented
  // to this process, a subreaper).
  std::vector<std::string> left;
  EXPECT_TRUE(eventually([&] {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left = live_children();
    return left.empty();
  }, 20)) << "left behind: " << (left.empty() ? "" : left[0]);
}

TEST_F(socket_e2e, ServerKilledOutrightStillTakesItsAgentsDown) {
  bool killed = false;
  const ProcResult r = dtest({"-v", "--tx", "popen", "--tx", server_->spec(), kSleep}, {},
                             [&](const std::string& out) {
                               if (!killed && contains(out, "[gw1] [")) {
                                 killed = true;
                                 ::kill(server_->pid(), SIGKILL);
                               }
                             });
  kill_server_mid_run(this, *server_, r, killed);
  std::vector<std::string> left;
  EXPECT_TRUE(eventually([&] {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left = live_children({server_->pid()});
    return left.empty();
  }, 20)) << "left behind: " << (left.empty() ? "" : left[0]);
}

TEST_F(socket_e2e, AgentRejectsBadListenArguments) {
  const ProcResult name = run_process({kAgent, "--listen", "example.com:80", "--token-file", token_file_}, run_opts({}, 20));
  EXPECT_EQ(name.exit_code, 4) << describe(name);
  EXPECT_TRUE(contains(name.err, "not a numeric address")) << describe(name);
  const ProcResult notoken = run_process({kAgent, "--listen", "127.0.0.1:0"},
                                          run_opts({{"DTEST_TOKEN", ""}, {"DTEST_TOKEN_FILE", ""}}, 20));
  EXPECT_EQ(notoken.exit_code, 4) << describe(notoken);
  EXPECT_TRUE(contains(notoken.err, "--listen needs a token")) << describe(notoken);
  // The port is taken: a clear error, exit 3.
  const ProcResult busy = run_process({kAgent, "--listen", "127.0.0.1:" + std::to_string(server_->port()),
                                       "--token-file", token_file_}, run_opts({}, 20));
  EXPECT_EQ(busy.exit_code, 3) << describe(busy);
  EXPECT_TRUE(contains(busy.err, "Address already in use")) << describe(busy);
}

}  // namespace
