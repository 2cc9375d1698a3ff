#include "sync/watch.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

extern char** environ;

namespace dtest::sync {

namespace {

constexpr char kQuery = 'E';

// "\0dtest-watch-<uid>-<hash of the root's real path and the rules>"
std::string socket_name(const std::string& real_root, const std::vector<std::string>& ignore) {
  std::string key = real_root;
  for (const auto& p : ignore) key += '\0' + p;
  const XXH128_hash_t h = XXH3_128bits(key.data(), key.size());
  char buf[96];
  std::snprintf(buf, sizeof buf, "dtest-watch-%u-%016llx%016llx", static_cast<unsigned>(::getuid()),
                static_cast<unsigned long long>(h.high64), static_cast<unsigned long long>(h.low64));
  return buf;
}

socklen_t make_addr(const std::string& name, sockaddr_un& a) {
  std::memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

bool read_all(int fd, void* p, std::size_t n, int timeout_ms) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

struct Answer {
  bool usable = false;
  std::uint64_t id = 0, epoch = 0;
};

std::optional<Answer> ask(const std::string& name) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_un a;
  const socklen_t len = make_addr(name, a);
  std::optional<Answer> out;
  unsigned char buf[17];
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), len) == 0 && ::write(fd, &kQuery, 1) == 1 &&
      read_all(fd, buf, sizeof buf, 2000)) {
    Answer ans;
    ans.usable = buf[0] == 1;
    std::memcpy(&ans.id, buf + 1, 8);
    std::memcpy(&ans.epoch, buf + 9, 8);
    out = ans;
  }
  ::close(fd);
  return out;
}

std::string slurp(const std::string& path) {
  std::string s;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return s;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    s.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return s;
}

void write_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const bool ok = ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

// The record next to the stat cache: watcher id, epoch before the scan, and
// the hash of the cache file that scan wrote.
std::string record(const Answer& a, const std::string& cache_bytes) {
  std::string r(32, '\0');
  std::memcpy(r.data(), &a.id, 8);
  std::memcpy(r.data() + 8, &a.epoch, 8);
  const Hash128 h = hash_bytes(cache_bytes);
  std::memcpy(r.data() + 16, h.data(), 16);
  return r;
}

void start_watcher(const WatchOptions& w, const std::string& root, const std::vector<std::string>& ignore) {
  std::vector<std::string> args = {w.agent, "--watch", root, "--idle", std::to_string(w.idle_seconds)};
  for (const auto& p : ignore) {
    args.push_back("--ignore");
    args.push_back(p);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  for (int fd = 0; fd < 3; ++fd) posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", O_RDWR, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  pid_t pid = -1;
  if (::posix_spawn(&pid, w.agent.c_str(), &fa, &attr, argv.data(), environ) == 0)
    ::waitpid(pid, nullptr, 0);  // it forks and its first process exits at once
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
}

}  // namespace

WatchOptions watch_options_from_env(std::string agent) {
  WatchOptions w;
  w.agent = std::move(agent);
  if (const char* e = std::getenv("DTEST_WATCH"); e && std::string(e) == "0") w.enabled = false;
  if (const char* e = std::getenv("DTEST_WATCH_IDLE"); e && *e) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (end && *end == '\0' && v >= 0 && v < 86400 * 30) w.idle_seconds = static_cast<int>(v);
  }
  if (w.idle_seconds == 0 || w.agent.empty()) w.enabled = false;
  return w;
}

WatchedScan scan_tree_watched(const std::string& root, const ScanOptions& opts,
                              const std::vector<std::string>& ignore, const WatchOptions& w) {
  WatchedScan out;
  if (!w.enabled || opts.cache_path.empty()) {
    out.scan = scan_tree(root, opts);
    return out;
  }
  const std::string real = real_path(root);
  if (real.empty()) {
    out.scan = scan_tree(root, opts);  // throws the usual error for a missing root
    return out;
  }
  const std::string name = socket_name(real, ignore);
  const std::string rec_path = opts.cache_path + ".watch";
  const auto ans = ask(name);
  if (ans && ans->usable) {
    const std::string rec = slurp(rec_path);
    if (rec.size() == 32 && std::memcmp(rec.data(), &ans->id, 8) == 0 &&
        std::memcmp(rec.data() + 8, &ans->epoch, 8) == 0) {
      const std::string cache = slurp(opts.cache_path);
      const Hash128 h = hash_bytes(cache);
      if (std::memcmp(rec.data() + 16, h.data(), 16) == 0) {
        try {
          out.scan.manifest = decode_manifest(cache, true);
          out.from_watcher = true;
          return out;
        } catch (const SyncError&) {
          // fall through to a walk
        }
      }
    }
  }
  if (!ans) start_watcher(w, real, ignore);
  ::unlink(rec_path.c_str());
  out.scan = scan_tree(root, opts);
  if (ans && ans->usable && out.scan.warnings.empty()) write_atomic(rec_path, record(*ans, slurp(opts.cache_path)));
  return out;
}

// ---------------------------------------------------------------------------
// The watcher process

namespace {

class Watcher {
 public:
  Watcher(std::string root, const std::vector<std::string>& ignore) : root_(std::move(root)), rules_(ignore) {}

  bool start() {
    ifd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ifd_ < 0) return false;
    add_tree("");
    return root_wd_ >= 0;
  }
  int fd() const { return ifd_; }
  bool usable() const { return usable_; }
  std::uint64_t epoch() const { return epoch_; }

  // Reads every queued event; returns false when the root itself is gone.
  bool drain() {
    alignas(inotify_event) char buf[64 * 1024];
    bool root_gone = false;
    for (;;) {
      const ssize_t n = ::read(ifd_, buf, sizeof buf);
      if (n <= 0) break;
      ++epoch_;
      std::vector<std::string> new_dirs;
      for (char* p = buf; p < buf + n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(p);
        p += sizeof(inotify_event) + ev->len;
        if (ev->mask & IN_Q_OVERFLOW) {
          new_dirs.push_back("");  // events were lost: re-walk everything
          continue;
        }
        if (ev->wd == root_wd_ && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF))) root_gone = true;
        if (ev->mask & IN_IGNORED) {
          dirs_.erase(ev->wd);
          continue;
        }
        if ((ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)) && ev->len > 0) {
          auto it = dirs_.find(ev->wd);
          if (it != dirs_.end()) new_dirs.push_back(join(it->second, ev->name));
        }
      }
      for (const auto& d : new_dirs) add_tree(d);
    }
    return !root_gone;
  }

 private:
  static std::string join(const std::string& a, const char* b) { return a.empty() ? std::string(b) : a + "/" + b; }

  // Watches `rel` (relative to the root, "" = the root) and every
  // directory below it that the rules do not ignore. Symlinks are not
  // followed. Running out of watches makes the watcher unusable.
  void add_tree(const std::string& rel) {
    const std::string path = rel.empty() ? root_ : root_ + "/" + rel;
    const std::uint32_t mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_DELETE_SELF |
                               IN_MOVE_SELF | IN_MOVED_FROM | IN_MOVED_TO | IN_DONT_FOLLOW | IN_ONLYDIR;
    const int wd = ::inotify_add_watch(ifd_, path.c_str(), mask);
    if (wd < 0) {
      if (errno == ENOSPC || errno == ENOMEM) usable_ = false;
      return;  // vanished, or not a directory any more: the events said so
    }
    if (rel.empty()) root_wd_ = wd;
    dirs_[wd] = rel;
    DIR* d = ::opendir(path.c_str());
    if (!d) return;
    std::vector<std::string> subdirs;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0'))) continue;
      bool is_dir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN) {
        struct stat st {};
        is_dir = ::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
      }
      if (!is_dir) continue;
      const std::string child = join(rel, e->d_name);
      if (!rules_.ignored(child, true)) subdirs.push_back(child);
    }
    ::closedir(d);
    for (const auto& s : subdirs) add_tree(s);
  }

  std::string root_;
  IgnoreRules rules_;
  int ifd_ = -1;
  int root_wd_ = -1;
  std::map<int, std::string> dirs_;
  std::uint64_t epoch_ = 1;
  bool usable_ = true;
};

}  // namespace

int watch_main(const std::string& root_arg, const std::vector<std::string>& ignore, int idle_seconds) {
  const std::string root = real_path(root_arg);
  if (root.empty()) return 1;
  // Detach: the starter waits for this first process only.
  const pid_t pid = ::fork();
  if (pid < 0) return 1;
  if (pid > 0) return 0;
  ::setsid();
  const int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    for (int fd = 0; fd < 3; ++fd) ::dup2(devnull, fd);
    ::close(devnull);
  }
  ::chdir("/");

  Watcher w(root, ignore);
  try {
    if (!w.start()) _exit(1);
  } catch (const std::exception&) {
    _exit(1);
  }
  // Listen only once every directory is watched: an epoch handed out is
  // then a promise.
  const int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a;
  const socklen_t len = make_addr(socket_name(root, ignore), a);
  if (lfd < 0 || ::bind(lfd, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(lfd, 16) != 0)
    _exit(0);  // another watcher has it
  std::uint64_t id = 0;
  {
    std::random_device rd;
    id = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^ static_cast<std::uint64_t>(::getpid());
  }
  using Clock = std::chrono::steady_clock;
  auto last = Clock::now();
  for (;;) {
    const auto idle_left = std::chrono::seconds(idle_seconds) - (Clock::now() - last);
    if (idle_left <= Clock::duration::zero()) break;
    pollfd fds[2] = {{w.fd(), POLLIN, 0}, {lfd, POLLIN, 0}};
    const int timeout = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(idle_left).count()) + 1;
    const int r = ::poll(fds, 2, timeout);
    if (r < 0 && errno != EINTR) break;
    if (fds[0].revents && !w.drain()) break;
    if (!(fds[1].revents & POLLIN)) continue;
    const int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ucred cred{};
    socklen_t cl = sizeof cred;
    char q = 0;
    if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 && cred.uid == ::getuid() &&
        read_all(c, &q, 1, 1000) && q == kQuery) {
      if (!w.drain()) {
        ::close(c);
        break;
      }
      unsigned char out[17];
      out[0] = w.usable() ? 1 : 0;
      const std::uint64_t e = w.epoch();
      std::memcpy(out + 1, &id, 8);
      std::memcpy(out + 9, &e, 8);
      [[maybe_unused]] ssize_t n = ::write(c, out, sizeof out);
      last = Clock::now();
    }
    ::close(c);
  }
  _exit(0);
}

}  // namespace dtest::sync
