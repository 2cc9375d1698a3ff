#include "support/subprocess.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <poll.h>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace dtest::testing {

namespace {

using Clock = std::chrono::steady_clock;

// The inherited environment with `opts.env` applied, then `opts.unset`
// removed; built before fork.
std::vector<std::string> make_env(const RunOptions& opts) {
  std::map<std::string, std::string> envmap;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    envmap[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& [k, v] : opts.env) envmap[k] = v;
  for (const auto& k : opts.unset) envmap.erase(k);
  std::vector<std::string> envs;
  for (const auto& [k, v] : envmap) envs.push_back(k + "=" + v);
  return envs;
}

}  // namespace

std::string describe(const ProcResult& r) {
  auto cut = [](const std::string& s) {
    constexpr std::size_t kMax = 6000;
    return s.size() > kMax ? s.substr(0, kMax / 2) + "\n[...]\n" + s.substr(s.size() - kMax / 2) : s;
  };
  std::ostringstream o;
  o << "exit_code=" << r.exit_code << " signal=" << r.signal << (r.timed_out ? " TIMED OUT" : "")
    << "\n--- stdout ---\n"
    << cut(r.out) << "\n--- stderr ---\n"
    << cut(r.err) << "\n--------------";
  return o.str();
}

pid_t spawn_process(const std::vector<std::string>& argv, const RunOptions& opts, int out_fd, int err_fd) {
  // Everything the child needs is allocated before fork.
  std::vector<std::string> envs = make_env(opts);
  std::vector<char*> envp;
  for (auto& s : envs) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::setpgid(0, 0);
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    if (!opts.cwd.empty() && ::chdir(opts.cwd.c_str()) != 0) _exit(126);
    ::execve(cargv[0], cargv.data(), envp.data());
    _exit(127);
  }
  // Also in the parent, so that kill(-pid) works as soon as we return.
  ::setpgid(pid, pid);
  return pid;
}

ProcResult run_process(const std::vector<std::string>& argv, const RunOptions& opts) {
  ProcResult res;
  int outp[2], errp[2];
  if (::pipe2(outp, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
  if (::pipe2(errp, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(outp[0]);
    ::close(outp[1]);
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(e));
  }
  pid_t pid = -1;
  try {
    pid = spawn_process(argv, opts, outp[1], errp[1]);
  } catch (...) {
    for (int fd : {outp[0], outp[1], errp[0], errp[1]}) ::close(fd);
    throw;
  }
  res.pid = pid;
  ::close(outp[1]);
  ::close(errp[1]);
  int fds[2] = {outp[0], errp[0]};
  std::string* sinks[2] = {&res.out, &res.err};
  for (int fd : fds) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);

  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(opts.timeout * 1000));
  bool exited = false;
  int status = 0;
  std::optional<Clock::time_point> exited_at;
  for (;;) {
    pollfd pfds[2];
    int n = 0;
    int which[2];
    for (int k = 0; k < 2; ++k)
      if (fds[k] >= 0) {
        pfds[n] = {fds[k], POLLIN, 0};
        which[n++] = k;
      }
    if (n == 0 && exited) break;
    if (n > 0) ::poll(pfds, static_cast<nfds_t>(n), 20);
    else std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (int k = 0; k < n; ++k) {
      if (!(pfds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[65536];
      for (;;) {
        const ssize_t got = ::read(pfds[k].fd, buf, sizeof buf);
        if (got > 0) {
          sinks[which[k]]->append(buf, static_cast<std::size_t>(got));
          continue;
        }
        if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
          ::close(fds[which[k]]);
          fds[which[k]] = -1;
        }
        break;
      }
    }
    if (!exited && ::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      exited_at = Clock::now();
    }
    if (exited) {
      // Something else (a leaked grandchild) may still hold the pipes: stop
      // reading after a grace period instead of hanging.
      if (Clock::now() - *exited_at > std::chrono::seconds(3)) break;
      continue;
    }
    if (opts.tick) opts.tick(pid, res.out);
    if (Clock::now() > deadline) {
      res.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      exited = true;
      exited_at = Clock::now();
    }
  }
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  if (WIFEXITED(status)) res.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) res.signal = WTERMSIG(status);
  return res;
}

}  // namespace dtest::testing
