#include "agent/subprocess.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdexcept>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fdio.h"

extern char** environ;

namespace dtest {

namespace {

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
    r = fds[0];
    w = fds[1];
  }
};

std::vector<std::string> build_env(const std::map<std::string, std::string>& overrides,
                                   const std::vector<std::string>& unset) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    const auto eq = kv.find('=');
    const std::string name(kv.substr(0, eq));
    if (!overrides.count(name) && std::find(unset.begin(), unset.end(), name) == unset.end()) env.emplace_back(kv);
  }
  for (const auto& [k, v] : overrides) env.push_back(k + "=" + v);
  return env;
}

std::vector<char*> c_array(std::vector<std::string>& v) {
  std::vector<char*> out;
  out.reserve(v.size() + 1);
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

Child spawn(const SpawnOptions& opts) {
  if (opts.argv.empty()) throw std::runtime_error("spawn: empty command");
  Pipe out;
  Pipe err;  // unused when merged; cheap
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.w, 1);
  posix_spawn_file_actions_adddup2(&fa, opts.merge_stderr ? out.w : err.w, 2);
  // Inherited descriptors go through private high copies first, so that a
  // source whose number is another's target is not clobbered by the order of
  // the dup2s (and dup2 onto itself would leave close-on-exec set).
  std::vector<int> staged;
  for (const auto& [from, to] : opts.inherit) {
    const int hi = ::fcntl(from, F_DUPFD_CLOEXEC, 64);
    if (hi < 0) {
      for (int fd : staged) ::close(fd);
      posix_spawn_file_actions_destroy(&fa);
      for (int fd : {out.r, out.w, err.r, err.w}) ::close(fd);
      throw std::runtime_error(std::string("spawn: cannot pass a descriptor: ") + std::strerror(errno));
    }
    staged.push_back(hi);
    posix_spawn_file_actions_adddup2(&fa, hi, to);
  }
  if (!opts.cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, opts.cwd.c_str());

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGQUIT}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);

  std::vector<std::string> argv = opts.argv;
  std::vector<std::string> env = build_env(opts.env, opts.unset);
  auto cargv = c_array(argv);
  auto cenv = c_array(env);
  pid_t pid = -1;
  const bool search = opts.argv[0].find('/') == std::string::npos;
  const int rc = search ? ::posix_spawnp(&pid, cargv[0], &fa, &attr, cargv.data(), cenv.data())
                        : ::posix_spawn(&pid, cargv[0], &fa, &attr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  for (int fd : staged) ::close(fd);
  ::close(out.w);
  ::close(err.w);
  if (rc != 0) {
    ::close(out.r);
    ::close(err.r);
    throw std::runtime_error("cannot run " + opts.argv[0] + (opts.cwd.empty() ? "" : " in " + opts.cwd) + ": " +
                             std::strerror(rc));
  }
  Child c;
  c.pid = pid;
  c.out_fd = out.r;
  if (opts.merge_stderr) {
    ::close(err.r);
  } else {
    c.err_fd = err.r;
  }
  return c;
}

void kill_group(pid_t pgid) {
  if (pgid > 0) ::kill(-pgid, SIGKILL);
}

Captured run_capture(const SpawnOptions& opts, double timeout_s, std::size_t max_bytes) {
  SpawnOptions o = opts;
  o.merge_stderr = false;
  Child c = spawn(o);
  Captured cap;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
  int fds[2] = {c.out_fd, c.err_fd};
  std::string* sinks[2] = {&cap.out, &cap.err};
  char buf[65536];
  while (fds[0] >= 0 || fds[1] >= 0) {
    pollfd p[2];
    nfds_t n = 0;
    int idx[2];
    for (int i = 0; i < 2; ++i)
      if (fds[i] >= 0) {
        p[n] = {fds[i], POLLIN, 0};
        idx[n++] = i;
      }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      cap.timed_out = true;
      break;
    }
    const int r = ::poll(p, n, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    for (nfds_t k = 0; k < n; ++k) {
      if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int i = idx[k];
      const ssize_t got = read_some(fds[i], buf, sizeof buf);
      if (got == 0) {
        ::close(fds[i]);
        fds[i] = -1;
      } else if (got > 0 && sinks[i]->size() < max_bytes) {
        sinks[i]->append(buf, static_cast<std::size_t>(got));
      }
    }
  }
  kill_group(c.pid);  // stragglers it left behind, or the whole thing on timeout
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  while (::waitpid(c.pid, &cap.status, 0) < 0 && errno == EINTR) {
  }
  return cap;
}

}  // namespace dtest
