#include "agent/listen.h"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <set>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "agent/agent.h"
#include "common/auth.h"

namespace dtest::listen {

namespace {

constexpr auto kAuthTimeout = std::chrono::seconds(5);
constexpr std::size_t kMaxChildren = 256;
constexpr auto kStopGrace = std::chrono::seconds(5);

int g_sig_pipe[2] = {-1, -1};

extern "C" void on_listener_signal(int sig) {
  const int saved = errno;
  const char c = static_cast<char>(sig);
  [[maybe_unused]] auto n = ::write(g_sig_pipe[1], &c, 1);
  errno = saved;
}

void log_line(const std::string& s) {
  const std::string line = "dtest-agent: " + s + "\n";
  [[maybe_unused]] auto n = ::write(2, line.data(), line.size());
}

bool parse_port(std::string_view s, std::uint16_t& port) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  port = static_cast<std::uint16_t>(v);
  return true;
}

bool write_port_file(const std::string& path, int port) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "%d\n", port);
  if (std::fclose(f) != 0) return false;
  return ::rename(tmp.c_str(), path.c_str()) == 0;
}

// In the forked child: authenticate, then be an agent on the socket.
[[noreturn]] void child_main(int fd, const std::string& peer, const std::string& token, pid_t listener) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE}) ::sigaction(s, &dfl, nullptr);
  ::close(g_sig_pipe[0]);
  ::close(g_sig_pipe[1]);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::setpgid(0, 0);
  // A listener killed outright still takes its agents (and so their tests)
  // down.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != listener) ::_exit(0);

  if (auto why = auth::server_handshake(fd, token, kAuthTimeout)) {
    log_line("refused " + peer + ": " + *why);
    ::_exit(1);
  }
  log_line("accepted " + peer + " (agent pid " + std::to_string(::getpid()) + ")");
  const int rc = run_agent(fd, fd);
  std::fflush(nullptr);
  ::_exit(rc);
}

}  // namespace

std::optional<Endpoint> parse_endpoint(std::string_view text, std::string& error) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    error = "expected HOST:PORT, got '" + std::string(text) + "'";
    return std::nullopt;
  }
  const std::string host(text.substr(0, colon));
  std::uint16_t port = 0;
  if (!parse_port(text.substr(colon + 1), port)) {
    error = "bad port '" + std::string(text.substr(colon + 1)) + "' in '" + std::string(text) +
            "' (expected 0 to 65535)";
    return std::nullopt;
  }
  Endpoint ep;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ep.addr);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    if (::inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1) {
      error = "'" + host + "' is not an IPv6 address";
      return std::nullopt;
    }
    ep.len = sizeof(sockaddr_in6);
    return ep;
  }
  auto* a4 = reinterpret_cast<sockaddr_in*>(&ep.addr);
  a4->sin_family = AF_INET;
  a4->sin_port = htons(port);
  ep.len = sizeof(sockaddr_in);
  if (host == "localhost") {
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return ep;
  }
  if (::inet_pton(AF_INET, host.c_str(), &a4->sin_addr) == 1) return ep;
  if (host.find(':') != std::string::npos)
    error = "IPv6 addresses go in brackets: '[" + host + "]:" + std::to_string(port) + "'";
  else if (host.empty())
    error = "no host in '" + std::string(text) + "' (use 0.0.0.0:PORT or [::]:PORT for all interfaces)";
  else
    error = "'" + host + "' is not a numeric address (dtest-agent looks up no names: use an IP address or localhost)";
  return std::nullopt;
}

std::string format_address(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "(unknown address family " + std::to_string(sa->sa_family) + ")";
}

int serve(const Options& opts) {
  std::string error;
  const auto ep = parse_endpoint(opts.address, error);
  if (!ep) {
    log_line("--listen: " + error);
    return 4;
  }
  const int lfd = ::socket(ep->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    log_line(std::string("socket: ") + std::strerror(errno));
    return 3;
  }
  const int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(lfd, reinterpret_cast<const sockaddr*>(&ep->addr), ep->len) != 0) {
    log_line("cannot listen on " + opts.address + ": bind: " + std::strerror(errno));
    ::close(lfd);
    return 3;
  }
  if (::listen(lfd, 128) != 0) {
    log_line("cannot listen on " + opts.address + ": listen: " + std::strerror(errno));
    ::close(lfd);
    return 3;
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&bound), &blen);
  const std::string where = format_address(reinterpret_cast<const sockaddr*>(&bound));
  const int port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                     : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  if (::pipe2(g_sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    log_line(std::string("pipe: ") + std::strerror(errno));
    ::close(lfd);
    return 3;
  }
  struct sigaction sa {};
  sa.sa_handler = on_listener_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::sigaction(s, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  if (!opts.port_file.empty() && !write_port_file(opts.port_file, port)) {
    log_line("cannot write the port file " + opts.port_file + ": " + std::strerror(errno));
    ::close(lfd);
    return 3;
  }
  log_line("listening on " + where + " (pid " + std::to_string(::getpid()) + ")");

  const pid_t self = ::getpid();
  std::set<pid_t> children;
  int stop_signal = 0;
  auto reap = [&] {
    for (;;) {
      const pid_t p = ::waitpid(-1, nullptr, WNOHANG);
      if (p <= 0) break;
      children.erase(p);
    }
  };
  while (stop_signal == 0) {
    pollfd fds[2] = {{lfd, POLLIN, 0}, {g_sig_pipe[0], POLLIN, 0}};
    const int r = ::poll(fds, 2, -1);
    if (r < 0 && errno != EINTR) {
      log_line(std::string("poll: ") + std::strerror(errno));
      break;
    }
    if (r > 0 && fds[1].revents) {
      char sigs[64];
      const ssize_t n = ::read(g_sig_pipe[0], sigs, sizeof sigs);
      for (ssize_t i = 0; i < n; ++i)
        if (sigs[i] != SIGCHLD) stop_signal = sigs[i];
    }
    reap();
    if (stop_signal != 0 || r <= 0 || !(fds[0].revents & POLLIN)) continue;

    sockaddr_storage peer_addr{};
    socklen_t plen = sizeof peer_addr;
    const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer_addr), &plen, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
      log_line(std::string("accept: ") + std::strerror(errno));
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    const std::string peer = format_address(reinterpret_cast<const sockaddr*>(&peer_addr));
    if (children.size() >= kMaxChildren) {
      log_line("refused " + peer + ": too many connections (" + std::to_string(children.size()) + ")");
      ::close(fd);
      continue;
    }
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    // Signals stay blocked across fork so that the child never runs the
    // listener's handler.
    sigset_t all, old;
    sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, &old);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(lfd);
      child_main(fd, peer, opts.token, self);
    }
    ::sigprocmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) {
      log_line("refused " + peer + ": fork: " + std::strerror(errno));
    } else {
      ::setpgid(pid, pid);  // also done by the child; whichever runs first
      children.insert(pid);
    }
    ::close(fd);
  }

  ::close(lfd);
  if (stop_signal != 0) {
    const char* abbrev = sigabbrev_np(stop_signal);
    log_line(std::string("stopping (SIG") + (abbrev ? abbrev : "?") + "); " + std::to_string(children.size()) +
             " agent(s) to stop");
  }
  // Each agent kills its tests' process groups on SIGTERM; agents that do
  // not exit in time lose their group to SIGKILL.
  for (pid_t p : children) ::kill(-p, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + kStopGrace;
  while (!children.empty() && std::chrono::steady_clock::now() < deadline) {
    reap();
    if (!children.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (pid_t p : children) {
    ::kill(-p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
  return stop_signal != 0 || children.empty() ? 0 : 3;
}

}  // namespace dtest::listen
