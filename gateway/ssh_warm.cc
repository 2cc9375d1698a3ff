// Warm ssh connections between runs (like OpenSSH's ControlMaster with
// ControlPersist): a holder process per connection key keeps the libssh
// connection (and what it knows about the remote's agent cache) and opens
// agent channels for dtest runs, handing each its data socket over a unix
// socket. See docs/ssh.md, "Warm connections".
//
//   client (gateway)                      holder (dtest __ssh-holder)
//   connect DIR/<hash>.sock     ------>   accept, SO_PEERCRED = our uid
//   'o' OPEN {version, agent, script}     open_shared(..., ctl = this socket)
//                               <------   'O' + SCM_RIGHTS(data socket) | 'F' cause
//   data socket = the channel's stdin/stdout (as in-process)
//                               <------   'E' stderr, 'X' exit status, 'G' signal,
//                                         'Z' (data EOF follows), 'D' error (the end)
//   shutdown(SHUT_WR) / exit    ------>   stop the channel (EOF + TERM, close)
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <poll.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "gateway/gateway.h"
#include "gateway/ssh_internal.h"

extern char** environ;

namespace dtest::gateway {

namespace ssh_internal {

// ---------------------------------------------------------------------------
// the control protocol

namespace ctl {

namespace {
void put_u32(std::string& s, uint32_t v) {
  s += static_cast<char>(v >> 24);
  s += static_cast<char>(v >> 16);
  s += static_cast<char>(v >> 8);
  s += static_cast<char>(v);
}
uint32_t get_u32(std::string_view s) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[0])) << 24 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[1])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[2])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[3]));
}
constexpr std::size_t kMaxMessage = 1 << 20;
}  // namespace

std::string message(char type, std::string_view payload) {
  std::string m(1, type);
  put_u32(m, static_cast<uint32_t>(payload.size()));
  m += payload;
  return m;
}

std::string fields(const std::vector<std::string>& f) {
  std::string s;
  for (const auto& x : f) {
    put_u32(s, static_cast<uint32_t>(x.size()));
    s += x;
  }
  return s;
}

std::optional<std::vector<std::string>> parse_fields(std::string_view p) {
  std::vector<std::string> f;
  while (!p.empty()) {
    if (p.size() < 4) return std::nullopt;
    const uint32_t n = get_u32(p);
    p.remove_prefix(4);
    if (p.size() < n) return std::nullopt;
    f.emplace_back(p.substr(0, n));
    p.remove_prefix(n);
  }
  return f;
}

std::optional<Msg> pop(std::string& buf) {
  if (buf.size() < 5) return std::nullopt;
  const uint32_t n = get_u32(std::string_view(buf).substr(1));
  if (buf.size() < 5 + static_cast<std::size_t>(n)) return std::nullopt;
  Msg m{buf[0], buf.substr(5, n)};
  buf.erase(0, 5 + static_cast<std::size_t>(n));
  return m;
}

}  // namespace ctl

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// In the connection key: a holder of another protocol never gets our requests.
constexpr const char* kProtocol = "dtest-cm/1";
constexpr int kDefaultPersist = 600;

std::mutex g_exe_mu;
std::string g_exe;  // the dtest binary; empty: warm connections are off

std::string holder_exe() {
  std::lock_guard lock(g_exe_mu);
  return g_exe;
}

// DTEST_SSH_PERSIST: seconds an idle holder stays; 0 turns warm connections off.
int persist_seconds() {
  const char* v = std::getenv("DTEST_SSH_PERSIST");
  if (!v || !*v) return kDefaultPersist;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || n < 0 || n > 100L * 24 * 3600)
    throw Cause(std::string("bad DTEST_SSH_PERSIST='") + v +
                "' (seconds an idle warm ssh connection is kept; 0 turns warm connections off)");
  return static_cast<int>(n);
}

std::string key_hash(const std::string& key) {
  const std::string k = std::string(kProtocol) + '\x1f' + key;
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, XXH3_128bits(k.data(), k.size()));
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : canon.digest) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

std::string cache_dir() {
  if (const char* d = std::getenv("DTEST_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/dtest";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/dtest";
  if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) return std::string(pw->pw_dir) + "/.cache/dtest";
  return {};
}

// The directory of control sockets, open (O_PATH) and checked: ours, mode
// 0700, not a symlink, in a parent nobody else may rename it in.
struct ControlDir {
  std::string path;
  int fd = -1;
  ControlDir() = default;
  ControlDir(const ControlDir&) = delete;
  ControlDir& operator=(const ControlDir&) = delete;
  ControlDir(ControlDir&& o) noexcept : path(std::move(o.path)), fd(std::exchange(o.fd, -1)) {}
  ControlDir& operator=(ControlDir&& o) noexcept {
    if (this != &o) {
      if (fd >= 0) ::close(fd);
      path = std::move(o.path);
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  ~ControlDir() {
    if (fd >= 0) ::close(fd);
  }
};

std::string octal_mode(mode_t m) {
  char b[8];
  std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m & 07777));
  return b;
}

// nullopt: the directory does not exist (and `create` is false).
std::optional<ControlDir> open_control_dir(const std::string& path, bool create) {
  const std::string how = " (warm ssh connections keep their control sockets there; fix it, or set "
                          "DTEST_SSH_PERSIST=0 to connect without them)";
  if (create) {
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
      throw Cause("cannot create " + path + ": " + std::strerror(errno) + how);
  }
  ControlDir d;
  d.path = path;
  d.fd = ::open(path.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (d.fd < 0) {
    if (errno == ENOENT && !create) return std::nullopt;
    throw Cause("cannot use " + path + ": " + std::strerror(errno) +
                (errno == ENOTDIR || errno == ELOOP ? " (not a directory, or a symlink)" : "") + how);
  }
  struct stat st {};
  if (::fstat(d.fd, &st) != 0) throw Cause("cannot stat " + path + ": " + std::strerror(errno) + how);
  if (st.st_uid != ::geteuid())
    throw Cause("refusing to use " + path + ": it is owned by uid " + std::to_string(st.st_uid) + ", not by you (uid " +
                std::to_string(::geteuid()) + ")" + how);
  if (st.st_mode & 077)
    throw Cause("refusing to use " + path + ": its mode is " + octal_mode(st.st_mode) +
                "; it must be accessible by you only (chmod 700 " + path + ")" + how);
  struct stat pst {};
  const std::string parent = fs::path(path).parent_path().string();
  if (!parent.empty() && ::stat(parent.c_str(), &pst) == 0) {
    const bool others_write = (pst.st_mode & 022) && !(pst.st_mode & S_ISVTX);
    if ((pst.st_uid != ::geteuid() && pst.st_uid != 0) || others_write)
      throw Cause("refusing to use " + path + ": its parent " + parent + " is writable by others or owned by uid " +
                  std::to_string(pst.st_uid) + " (mode " + octal_mode(pst.st_mode) + ")" + how);
  }
  return d;
}

std::string control_dir_path() {
  const std::string c = cache_dir();
  return c.empty() ? std::string() : c + "/cm";
}

// A socket address for NAME in the directory; through /proc/self/fd when
// the path is longer than sun_path allows.
bool make_addr(const ControlDir& d, const std::string& name, sockaddr_un& a) {
  a = {};
  a.sun_family = AF_UNIX;
  std::string p = d.path + "/" + name;
  if (p.size() >= sizeof a.sun_path) p = "/proc/self/fd/" + std::to_string(d.fd) + "/" + name;
  if (p.size() >= sizeof a.sun_path) return false;
  std::memcpy(a.sun_path, p.c_str(), p.size() + 1);
  return true;
}

// A connected socket, or -1 with errno.
int connect_to(const sockaddr_un& a) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  for (;;) {
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return fd;
    if (errno == EINTR) continue;
    const int e = errno;
    ::close(fd);
    errno = e;
    return -1;
  }
}

bool same_uid(int fd) {
  ucred cr{};
  socklen_t len = sizeof cr;
  return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.uid == ::geteuid();
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Exactly n bytes; false at EOF, on error or when `timeout_ms` (>= 0) passes.
bool recv_exact(int fd, char* buf, std::size_t n, int timeout_ms = -1) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (n > 0) {
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
    }
    const ssize_t r = ::recv(fd, buf, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// One whole message, with a file descriptor if one came with it.
struct Received {
  ctl::Msg msg;
  int fd = -1;
};
std::optional<Received> recv_message(int sock, int timeout_ms = -1) {
  if (timeout_ms >= 0) {
    pollfd p{sock, POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r <= 0) return std::nullopt;
  }
  char head[5];
  iovec iov{head, sizeof head};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  ssize_t n;
  do n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  Received r;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int)))
      std::memcpy(&r.fd, CMSG_DATA(c), sizeof(int));
  auto fail = [&]() -> std::optional<Received> {
    if (r.fd >= 0) ::close(r.fd);
    return std::nullopt;
  };
  if (n < 5 && !recv_exact(sock, head + n, 5 - static_cast<std::size_t>(n), timeout_ms)) return fail();
  const std::string h(head, 5);
  const uint32_t len = static_cast<uint32_t>(static_cast<unsigned char>(h[1])) << 24 |
                       static_cast<uint32_t>(static_cast<unsigned char>(h[2])) << 16 |
                       static_cast<uint32_t>(static_cast<unsigned char>(h[3])) << 8 |
                       static_cast<uint32_t>(static_cast<unsigned char>(h[4]));
  if (len > ctl::kMaxMessage) return fail();
  r.msg.type = head[0];
  r.msg.payload.resize(len);
  if (len > 0 && !recv_exact(sock, r.msg.payload.data(), len, timeout_ms)) return fail();
  return r;
}

std::string read_pipe_line(int fd) {
  std::string s;
  char c;
  for (;;) {
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    s += c;
    if (s.size() > 4096) break;
  }
  return s;
}

// ---------------------------------------------------------------------------
// the client side

// A warm gateway's control socket: a thread turns the holder's messages into
// the ChanState the gateway reads; stop() = shutdown(SHUT_WR), which the
// holder takes as terminate (as it takes the socket closing when this
// process dies).
class WarmLink final : public Link {
 public:
  WarmLink(int ctl, std::shared_ptr<ChanState> st) : ctl_(ctl), st_(std::move(st)) {
    quit_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    thread_ = std::thread([this] { run(); });
  }
  ~WarmLink() override {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(quit_, &one, sizeof one);
    thread_.join();
    ::close(ctl_);
    ::close(quit_);
  }
  void stop() override {
    stopping_ = true;
    ::shutdown(ctl_, SHUT_WR);
  }

 private:
  void run() {
    std::string buf;
    char tmp[16384];
    bool saw_done = false;
    for (;;) {
      pollfd p[2] = {{ctl_, POLLIN, 0}, {quit_, POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (p[1].revents & POLLIN) break;
      const ssize_t n = ::read(ctl_, tmp, sizeof tmp);
      if (n > 0) {
        buf.append(tmp, static_cast<std::size_t>(n));
        while (auto m = ctl::pop(buf)) saw_done |= handle(*m);
        continue;
      }
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      break;  // EOF: the holder let go of the channel (or is gone)
    }
    std::lock_guard lock(st_->mu);
    if (!saw_done && !stopping_ && st_->error.empty())
      st_->error = "the warm connection's holder process went away";
    st_->done = true;
    st_->cv.notify_all();
  }

  bool handle(const ctl::Msg& m) {
    std::lock_guard lock(st_->mu);
    bool done = false;
    switch (m.type) {
      case ctl::kStderr:
        st_->err_tail += m.payload;
        if (st_->err_tail.size() > 8192) st_->err_tail.erase(0, st_->err_tail.size() - 8192);
        break;
      case ctl::kExitStatus:
        if (m.payload.size() == 4) {
          const auto* b = reinterpret_cast<const unsigned char*>(m.payload.data());
          st_->exit_status = static_cast<int>(static_cast<uint32_t>(b[0]) << 24 | static_cast<uint32_t>(b[1]) << 16 |
                                              static_cast<uint32_t>(b[2]) << 8 | b[3]);
        }
        break;
      case ctl::kExitSignal:
        st_->exit_signal = m.payload;
        break;
      case ctl::kEofMarker:
        st_->eof_marker = true;
        break;
      case ctl::kDone:
        if (!m.payload.empty()) st_->error = m.payload;
        st_->done = true;
        done = true;
        break;
      default:
        break;
    }
    st_->cv.notify_all();
    return done;
  }

  int ctl_ = -1;
  int quit_ = -1;
  std::shared_ptr<ChanState> st_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Per connection key: the gateways of this process start at most one holder
// at a time.
std::mutex& spawn_mu(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<std::mutex>> m;
  std::lock_guard lock(mu);
  auto& p = m[name];
  if (!p) p = std::make_unique<std::mutex>();
  return *p;
}

// Starts `dtest __ssh-holder` detached (own session, stdio away from ours,
// no inherited descriptors). It binds the socket before it answers, so
// when this returns true the socket is there (its own, or another holder's
// that won the race).
bool spawn_holder(const std::string& exe, const std::string& dir, const std::string& name, int persist,
                  const ssh_detail::Target& t) {
  std::error_code ec;
  std::string shown = fs::read_symlink(exe, ec).string();  // "/proc/self/exe" -> the real path, for ps
  if (ec || shown.empty()) shown = exe;
  std::vector<std::string> args = {shown, "__ssh-holder", dir, name, std::to_string(persist)};
  for (auto& a : target_to_args(t)) args.push_back(std::move(a));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return false;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &defaults);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, exe.c_str(), &fa, &at, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  ::close(p[1]);
  if (rc != 0) {
    ::close(p[0]);
    return false;
  }
  const std::string answer = read_pipe_line(p[0]);
  ::close(p[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return answer.rfind("ok", 0) == 0;
}

}  // namespace

std::vector<std::string> target_to_args(const ssh_detail::Target& t) {
  std::vector<std::string> a;
  auto add = [&](const char* k, const std::string& v) {
    a.emplace_back(k);
    a.push_back(v);
  };
  add("--host", t.host);
  if (!t.user.empty()) add("--user", t.user);
  if (t.port) add("--port", std::to_string(*t.port));
  for (const auto& id : t.identities) add("--identity", id);
  if (!t.config_file.empty()) add("--config", t.config_file);
  if (!t.known_hosts.empty()) add("--known-hosts", t.known_hosts);
  if (!t.strict_host_key_checking.empty()) add("--strict", t.strict_host_key_checking);
  if (t.connect_timeout) add("--timeout", std::to_string(*t.connect_timeout));
  return a;
}

ssh_detail::Target target_from_args(const std::vector<std::string>& a) {
  ssh_detail::Target t;
  for (std::size_t i = 0; i + 1 < a.size(); i += 2) {
    const std::string& k = a[i];
    const std::string& v = a[i + 1];
    if (k == "--host") t.host = v;
    else if (k == "--user") t.user = v;
    else if (k == "--port") t.port = std::stoi(v);
    else if (k == "--identity") t.identities.push_back(v);
    else if (k == "--config") t.config_file = v;
    else if (k == "--known-hosts") t.known_hosts = v;
    else if (k == "--strict") t.strict_host_key_checking = v;
    else if (k == "--timeout") t.connect_timeout = std::stol(v);
    else throw Cause("unknown holder argument " + k);
  }
  if (a.size() % 2 != 0) throw Cause("holder arguments come in pairs");
  return t;
}

std::optional<WarmOpen> open_warm(const ssh_detail::Target& target, const std::string& key, const OpenRequest& req) {
  const std::string exe = holder_exe();
  if (exe.empty()) return std::nullopt;
  const int persist = persist_seconds();
  if (persist == 0) return std::nullopt;
  const std::string path = control_dir_path();
  if (path.empty()) return std::nullopt;
  const auto dir = open_control_dir(path, true);
  const std::string name = key_hash(key);
  sockaddr_un addr{};
  if (!make_addr(*dir, name + ".sock", addr)) return std::nullopt;
  const std::string request =
      ctl::message(ctl::kOpen, ctl::fields({kProtocol, req.agent_path, req.explicit_agent ? "1" : "0",
                                            req.script_prefix, std::to_string(persist)}));
  int spawned = 0;
  // A holder may be exiting (idle) just as we connect: we then see EOF
  // before the answer and start over (a new holder).
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = connect_to(addr);
    if (fd < 0) {
      if (errno != ENOENT && errno != ECONNREFUSED) return std::nullopt;
      std::lock_guard lock(spawn_mu(name));
      fd = connect_to(addr);  // another gateway of this run may have started it meanwhile
      if (fd < 0) {
        if (spawned++ >= 2 || !spawn_holder(exe, dir->path, name, persist, target)) return std::nullopt;
        fd = connect_to(addr);
        if (fd < 0) continue;
      }
    }
    if (!same_uid(fd)) {
      ::close(fd);
      return std::nullopt;
    }
    if (!send_all(fd, request)) {
      ::close(fd);
      continue;
    }
    auto r = recv_message(fd);
    if (!r) {
      ::close(fd);
      continue;
    }
    if (r->msg.type == ctl::kFailed) {
      ::close(fd);
      if (r->fd >= 0) ::close(r->fd);
      throw Cause(r->msg.payload);
    }
    if (r->msg.type != ctl::kOk || r->fd < 0) {
      ::close(fd);
      if (r->fd >= 0) ::close(r->fd);
      return std::nullopt;
    }
    WarmOpen w;
    w.fd = r->fd;
    w.state = std::make_shared<ChanState>();
    w.link = std::make_unique<WarmLink>(fd, w.state);
    return w;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// the holder

namespace {

class Holder {
 public:
  Holder(ControlDir dir, std::string name, int persist, ssh_detail::Target target, Prepared& p, int listen_fd,
         int lock_fd, ino_t sock_ino)
      : dir_(std::move(dir)),
        name_(std::move(name)),
        persist_(persist),
        target_(std::move(target)),
        where_(p.where),
        user_(p.user),
        host_(p.host),
        port_(p.port),
        listen_fd_(listen_fd),
        lock_fd_(lock_fd),
        sock_ino_(sock_ino) {}

  int serve() {
    // Signals become a descriptor to poll (blocked in every thread).
    sigset_t sigs;
    sigemptyset(&sigs);
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&sigs, s);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    const int sig_fd = ::signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    notify_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    hold_connections(notify_fd_);
    // Our socket removed (rm -rf of the cache directory, by hand or by a
    // test's clean-up): nobody can reach us any more, so we close as if
    // asked to.
    const int watch_fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (watch_fd >= 0)
      ::inotify_add_watch(watch_fd, ("/proc/self/fd/" + std::to_string(dir_.fd)).c_str(),
                          IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_ONLYDIR);
    log("holding " + where_ + " (pid " + std::to_string(::getpid()) + ", idle timeout " +
        std::to_string(persist_.load()) + " s)");

    std::string reason;
    bool idle = false;
    Clock::time_point idle_since{};
    for (;;) {
      reap_threads();
      if (closing_ && listen_fd_ >= 0) stop_listening();
      ack_exit_requests();
      const PoolStats st = pool_stats();
      const bool busy = st.channels > 0 || active_ > 0;
      if (busy) {
        idle = false;
      } else if (!idle) {
        idle = true;
        idle_since = Clock::now();
      }
      if (!reason.empty()) break;
      if (!busy && closing_) {
        reason = "closed on request";
        break;
      }
      if (!busy && st.created > 0 && st.usable == 0) {
        reason = "the connection ended";
        break;
      }
      int timeout = -1;
      if (idle) {
        const auto left = idle_since + std::chrono::seconds(persist_.load()) - Clock::now();
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count();
        if (ms <= 0) {
          reason = "idle for " + std::to_string(persist_.load()) + " s";
          break;
        }
        timeout = static_cast<int>(std::min<long long>(ms + 1, 1 << 30));
      }
      pollfd p[4] = {{notify_fd_, POLLIN, 0}, {sig_fd, POLLIN, 0}, {watch_fd, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      const int r = ::poll(p, listen_fd_ >= 0 ? 4 : 3, timeout);
      if (r < 0 && errno != EINTR) {
        reason = std::string("poll: ") + std::strerror(errno);
        break;
      }
      if (p[0].revents & POLLIN) {
        uint64_t n;
        [[maybe_unused]] ssize_t x = ::read(notify_fd_, &n, sizeof n);
      }
      if (p[1].revents & POLLIN) {
        signalfd_siginfo si{};
        if (::read(sig_fd, &si, sizeof si) > 0) reason = "signal " + std::to_string(si.ssi_signo);
      }
      if ((p[2].revents & POLLIN) && socket_removed(watch_fd) && listen_fd_ >= 0) {
        log("the control socket was removed; closing");
        closing_ = true;
      }
      if (listen_fd_ >= 0 && (p[3].revents & POLLIN)) accept_clients();
    }
    log("exiting: " + reason);
    stop_listening();
    ack_exit_requests();
    // Every connection ends: channels still open (a signal) are stopped,
    // agents see EOF.
    release_connections();
    const auto deadline = Clock::now() + std::chrono::seconds(3);
    while (active_ > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (active_ > 0) {
      log("clients still waiting; leaving now");
      ::_exit(0);  // threads blocked on a connection still coming up: do not wait for them
    }
    reap_threads(true);
    // exit_waiters_ stay open: the kernel closes them when this process is
    // gone, which is what `close_warm_connections` waits for.
    ::close(sig_fd);
    if (watch_fd >= 0) ::close(watch_fd);
    return 0;
  }

 private:
  // Reads the directory's events: true if our socket (or the directory)
  // was deleted or moved away.
  bool socket_removed(int watch_fd) const {
    alignas(inotify_event) char buf[4096];
    bool gone = false;
    for (;;) {
      const ssize_t n = ::read(watch_fd, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
        if (e->mask & IN_DELETE_SELF) gone = true;
        if ((e->mask & (IN_DELETE | IN_MOVED_FROM)) && e->len > 0 && name_ + ".sock" == e->name) gone = true;
        off += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
      }
    }
    return gone;
  }

  void log(const std::string& line) {
    char ts[32];
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::localtime_r(&now, &tm);
    std::strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
    const std::string s = std::string(ts) + " " + line + "\n";
    [[maybe_unused]] ssize_t n = ::write(2, s.data(), s.size());
  }

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(notify_fd_, &one, sizeof one);
  }

  // No new clients: the socket is removed (if it is still ours) under the
  // lock that starting holders take, so a new holder never loses its socket
  // to an old one.
  void stop_listening() {
    if (listen_fd_ < 0) return;
    ::flock(lock_fd_, LOCK_EX);
    struct stat st {};
    const std::string sock = name_ + ".sock";
    if (::fstatat(dir_.fd, sock.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == sock_ino_)
      ::unlinkat(dir_.fd, sock.c_str(), 0);
    ::close(listen_fd_);
    listen_fd_ = -1;
    ::flock(lock_fd_, LOCK_UN);
  }

  void ack_exit_requests() {
    if (listen_fd_ >= 0) return;
    std::lock_guard lock(mu_);
    for (; acked_ < exit_waiters_.size(); ++acked_) {
      const PoolStats st = pool_stats();
      send_all(exit_waiters_[acked_], ctl::message(ctl::kExitAck, ctl::fields({std::to_string(::getpid()),
                                                                               std::to_string(st.channels)})));
    }
  }

  void accept_clients() {
    for (;;) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN (non-blocking listener) or an error
      }
      if (!same_uid(fd)) {
        log("refused a client of another user");
        ::close(fd);
        continue;
      }
      ++active_;
      auto t = std::make_unique<Client>();
      Client* c = t.get();
      t->thread = std::thread([this, c, fd] {
        handle(fd);
        c->done = true;
        --active_;
        wake();
      });
      std::lock_guard lock(mu_);
      clients_.push_back(std::move(t));
    }
  }

  void reap_threads(bool all = false) {
    std::lock_guard lock(mu_);
    for (auto it = clients_.begin(); it != clients_.end();) {
      if (all || (*it)->done) {
        (*it)->thread.join();
        it = clients_.erase(it);
      } else {
        ++it;
      }
    }
  }

  void handle(int fd) {
    auto r = recv_message(fd, 10000);
    if (!r) {
      ::close(fd);
      return;
    }
    if (r->fd >= 0) ::close(r->fd);
    const auto f = ctl::parse_fields(r->msg.payload);
    if (r->msg.type == ctl::kOpen) {
      if (!f || f->size() != 5 || (*f)[0] != kProtocol) {
        send_all(fd, ctl::message(ctl::kFailed, "the warm connection's holder speaks another protocol"));
        ::close(fd);
        return;
      }
      OpenRequest req;
      req.agent_path = (*f)[1];
      req.explicit_agent = (*f)[2] == "1";
      req.script_prefix = (*f)[3];
      // The idle timeout of the latest run is the one that counts.
      if (const int n = std::atoi((*f)[4].c_str()); n > 0 && n != persist_) {
        persist_ = n;
        log("idle timeout now " + std::to_string(n) + " s");
      }
      OpenResult res = open_shared(target_, req, fd);
      if (res.ok) return;  // the pump owns `fd` now
      log("open failed: " + res.cause);
      send_all(fd, ctl::message(ctl::kFailed, res.cause));
      ::close(fd);
    } else if (r->msg.type == ctl::kStatus) {
      const PoolStats st = pool_stats();
      send_all(fd, ctl::message(ctl::kStatusReply,
                                ctl::fields({std::to_string(::getpid()), where_, target_.host, user_, host_,
                                             std::to_string(port_), std::to_string(st.channels),
                                             std::to_string(st.usable), std::to_string(persist_.load())})));
      ::close(fd);
    } else if (r->msg.type == ctl::kExit) {
      log("asked to close");
      std::lock_guard lock(mu_);
      exit_waiters_.push_back(fd);  // answered once the socket is gone; closed when we exit
      closing_ = true;
    } else {
      ::close(fd);
    }
  }

  struct Client {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  ControlDir dir_;
  const std::string name_;
  std::atomic<int> persist_;
  const ssh_detail::Target target_;
  const std::string where_, user_, host_;
  const unsigned port_;
  int listen_fd_;
  const int lock_fd_;
  const ino_t sock_ino_;
  int notify_fd_ = -1;
  std::atomic<int> active_{0};
  std::atomic<bool> closing_{false};
  std::mutex mu_;  // guards what follows
  std::list<std::unique_ptr<Client>> clients_;
  std::vector<int> exit_waiters_;
  std::size_t acked_ = 0;
};

}  // namespace

}  // namespace ssh_internal

using namespace ssh_internal;

void enable_warm_connections(const std::string& exe) {
  std::lock_guard lock(g_exe_mu);
  g_exe = exe;
}

int ssh_holder_main(int argc, char** argv) {
  // Answers on fd 2 (the starting gateway's pipe): "ok" once the socket is
  // bound (by us or by a holder that won the race), else "error: ...".
  auto say = [](const std::string& s) {
    const std::string line = s + "\n";
    [[maybe_unused]] ssize_t n = ::write(2, line.data(), line.size());
  };
  ::umask(077);
  ::close_range(3, ~0U, 0);
  std::signal(SIGPIPE, SIG_IGN);
  if (argc < 5) {
    say("error: usage: dtest __ssh-holder DIR NAME PERSIST TARGET...");
    return 2;
  }
  const std::string dir_path = argv[2], name = argv[3];
  int persist = 0;
  ssh_detail::Target target;
  std::optional<ControlDir> dir;
  Prepared p;
  int lock_fd = -1, listen_fd = -1;
  struct stat sock_st {};
  try {
    persist = std::stoi(argv[4]);
    target = target_from_args(std::vector<std::string>(argv + 5, argv + argc));
    dir = open_control_dir(dir_path, false);
    if (!dir) throw Cause(dir_path + " does not exist");
    std::string where;
    p = prepare_session(target, where);
    if (key_hash(p.key) != name) throw Cause("the connection key does not match " + name);
    const std::string lock_name = name + ".lock", sock_name = name + ".sock";
    lock_fd = ::openat(dir->fd, lock_name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lock_fd < 0) throw Cause("cannot open " + lock_name + ": " + std::strerror(errno));
    sockaddr_un addr{};
    if (!make_addr(*dir, sock_name, addr)) throw Cause("socket path too long");
    ::flock(lock_fd, LOCK_EX);
    // A live holder answers: it serves this key. Anything else at the path
    // (a holder killed outright left its socket) is replaced.
    if (const int fd = connect_to(addr); fd >= 0) {
      ::close(fd);
      ::flock(lock_fd, LOCK_UN);
      say("ok (another holder serves " + name + ")");
      return 0;
    }
    ::unlinkat(dir->fd, sock_name.c_str(), 0);
    listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd < 0 || ::bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd, 128) != 0 || ::fstatat(dir->fd, sock_name.c_str(), &sock_st, AT_SYMLINK_NOFOLLOW) != 0) {
      const std::string e = std::strerror(errno);
      ::flock(lock_fd, LOCK_UN);
      throw Cause("cannot listen on " + dir_path + "/" + sock_name + ": " + e);
    }
    ::flock(lock_fd, LOCK_UN);
  } catch (const std::exception& e) {
    say(std::string("error: ") + e.what());
    return 1;
  }
  const std::string log_name = name + ".log";
  const int log_fd = ::openat(dir->fd, log_name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  const pid_t pid = ::fork();
  if (pid < 0) {
    say(std::string("error: fork: ") + std::strerror(errno));
    ::unlinkat(dir->fd, (name + ".sock").c_str(), 0);
    return 1;
  }
  if (pid > 0) {  // the starter's child: its answer, then gone (the holder is reparented)
    say("ok");
    ::_exit(0);
  }
  // The holder: not a session leader (no controlling terminal ever), cwd /,
  // stderr to the log.
  const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  ::dup2(log_fd >= 0 ? log_fd : devnull, 2);
  if (log_fd >= 0) ::close(log_fd);
  if (devnull >= 0) ::close(devnull);
  if (::chdir("/") != 0) {
  }
  Holder h(std::move(*dir), name, persist, std::move(target), p, listen_fd, lock_fd, sock_st.st_ino);
  const int rc = h.serve();
  return rc;
}

int close_warm_connections(const std::vector<std::string>& ssh_targets, std::ostream& out) {
  const std::string path = control_dir_path();
  std::optional<ControlDir> dir;
  try {
    if (!path.empty()) dir = open_control_dir(path, false);
  } catch (const Cause& e) {
    out << "dtest: " << e.what() << "\n";
    return 1;
  }
  std::vector<ssh_detail::Target> targets;
  for (std::string v : ssh_targets) {
    if (v.rfind("ssh=", 0) == 0) v.erase(0, 4);
    if (auto cut = v.find("//"); cut != std::string::npos) v.erase(cut);
    try {
      targets.push_back(ssh_detail::parse_target(v));
    } catch (const GatewayError& e) {
      out << "dtest: bad ssh target '" << v << "': " << e.what() << "\n";
      return 1;
    }
  }
  std::vector<bool> matched(targets.size(), false);
  int closed = 0;
  std::vector<std::string> names;
  if (dir) {
    if (DIR* d = ::opendir(path.c_str())) {
      while (const dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n.size() > 5 && n.compare(n.size() - 5, 5, ".sock") == 0) names.push_back(n.substr(0, n.size() - 5));
      }
      ::closedir(d);
    }
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    sockaddr_un addr{};
    if (!make_addr(*dir, name + ".sock", addr)) continue;
    const int fd = connect_to(addr);
    if (fd < 0) {
      if (errno == ECONNREFUSED) {  // left by a holder that was killed: tidy up (under the holders' lock)
        const int lock_fd = ::openat(dir->fd, (name + ".lock").c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (lock_fd >= 0) {
          ::flock(lock_fd, LOCK_EX);
          const int again = connect_to(addr);
          if (again >= 0) ::close(again);
          else if (errno == ECONNREFUSED) ::unlinkat(dir->fd, (name + ".sock").c_str(), 0);
          ::close(lock_fd);
        }
      }
      continue;
    }
    std::optional<Received> st;
    if (same_uid(fd) && send_all(fd, ctl::message(ctl::kStatus))) st = recv_message(fd, 5000);
    ::close(fd);
    if (!st || st->msg.type != ctl::kStatusReply) continue;
    const auto f = ctl::parse_fields(st->msg.payload);
    if (!f || f->size() < 6) continue;
    const std::string& pid = (*f)[0];
    const std::string& where = (*f)[1];
    const std::string& written = (*f)[2];
    const std::string& user = (*f)[3];
    const std::string& host = (*f)[4];
    const int port = std::atoi((*f)[5].c_str());
    bool match = targets.empty();
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const auto& t = targets[i];
      if ((t.host == written || t.host == host) && (t.user.empty() || t.user == user) && (!t.port || *t.port == port)) {
        match = true;
        matched[i] = true;
      }
    }
    if (!match) continue;
    const int xfd = connect_to(addr);
    if (xfd < 0) continue;
    std::optional<Received> ack;
    if (send_all(xfd, ctl::message(ctl::kExit))) ack = recv_message(xfd, 5000);
    int channels = 0;
    if (ack && ack->msg.type == ctl::kExitAck)
      if (auto af = ctl::parse_fields(ack->msg.payload); af && af->size() >= 2) channels = std::atoi((*af)[1].c_str());
    if (ack && channels == 0) {
      // It exits now; its end closes this socket.
      char c;
      pollfd p{xfd, POLLIN, 0};
      const auto deadline = Clock::now() + std::chrono::seconds(5);
      while (Clock::now() < deadline) {
        if (::poll(&p, 1, 100) > 0 && ::recv(xfd, &c, 1, 0) <= 0) break;
      }
    }
    ::close(xfd);
    if (!ack) {
      out << "could not close the warm connection to " << where << " (holder pid " << pid << ")\n";
      continue;
    }
    ++closed;
    out << "closed the warm connection to " << where << " (holder pid " << pid << ")";
    if (channels > 0)
      out << "; " << channels << " channel" << (channels == 1 ? "" : "s")
          << " still in use by a running dtest: it ends when they finish";
    out << "\n";
  }
  for (std::size_t i = 0; i < targets.size(); ++i)
    if (!matched[i]) out << "no warm connection to " << ssh_targets[i] << "\n";
  if (targets.empty() && closed == 0) out << "no warm ssh connections\n";
  return 0;
}

}  // namespace dtest::gateway
