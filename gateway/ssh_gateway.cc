#include "gateway/ssh_gateway.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <thread>
#include <tuple>
#include <unistd.h>

#include <libssh/callbacks.h>
#include <libssh/libssh.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/fdio.h"
#include "gateway/ssh_internal.h"

namespace dtest::gateway {

namespace ssh_detail {

namespace {

// Splits like a shell would for the simple cases: whitespace separates,
// '...' and "..." group, backslash escapes one character outside '...'.
std::vector<std::string> split_words(const std::string& s) {
  std::vector<std::string> words;
  std::string cur;
  bool have = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == ' ' || c == '\t' || c == '\n') {
      if (have) words.push_back(cur);
      cur.clear();
      have = false;
    } else if (c == '\'') {
      const auto e = s.find('\'', i + 1);
      if (e == std::string::npos) throw GatewayError("unterminated ' in '" + s + "'");
      cur += s.substr(i + 1, e - i - 1);
      i = e;
      have = true;
    } else if (c == '"') {
      std::size_t j = i + 1;
      for (; j < s.size() && s[j] != '"'; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) ++j;
        cur += s[j];
      }
      if (j >= s.size()) throw GatewayError("unterminated \" in '" + s + "'");
      i = j;
      have = true;
    } else if (c == '\\' && i + 1 < s.size()) {
      cur += s[++i];
      have = true;
    } else {
      cur += c;
      have = true;
    }
  }
  if (have) words.push_back(cur);
  return words;
}

int parse_port(const std::string& p, const std::string& what) {
  try {
    std::size_t used = 0;
    const int n = std::stoi(p, &used);
    if (used == p.size() && n > 0 && n < 65536) return n;
  } catch (const std::exception&) {
  }
  throw GatewayError("bad port '" + p + "' in " + what);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

void apply_option(Target& t, const std::string& opt) {
  // "Key=Value" or "Key Value"
  auto sep = opt.find_first_of("= \t");
  if (sep == std::string::npos) throw GatewayError("-o needs Key=Value, got '" + opt + "'");
  const std::string key = lower(opt.substr(0, sep));
  std::string value = opt.substr(sep + 1);
  value.erase(0, value.find_first_not_of("= \t"));
  if (key == "userknownhostsfile") t.known_hosts = value;
  else if (key == "stricthostkeychecking") t.strict_host_key_checking = lower(value);
  else if (key == "identityfile") t.identities.push_back(value);
  else if (key == "port") t.port = parse_port(value, "-o Port");
  else if (key == "user") t.user = value;
  else if (key == "connecttimeout") t.connect_timeout = parse_port(value, "-o ConnectTimeout");
  else if (key == "batchmode") {  // dtest never prompts anyway
  } else {
    throw GatewayError("unsupported ssh option -o " + opt +
                       " (supported: UserKnownHostsFile, StrictHostKeyChecking, IdentityFile, Port, User, "
                       "ConnectTimeout, BatchMode; put others in an ssh config file, -F FILE or "
                       "//ssh_config=FILE)");
  }
}

}  // namespace

Target parse_target(const std::string& value) {
  Target t;
  const auto words = split_words(value);
  std::string dest;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.size() >= 2 && w[0] == '-') {
      const char f = w[1];
      if (std::string("pilFo").find(f) == std::string::npos)
        throw GatewayError("unsupported ssh flag '" + w + "' in '" + value + "' (supported: -p -i -l -F -o)");
      std::string arg = w.substr(2);
      if (arg.empty()) {
        if (i + 1 >= words.size()) throw GatewayError("ssh flag " + w + " needs a value in '" + value + "'");
        arg = words[++i];
      }
      switch (f) {
        case 'p': t.port = parse_port(arg, "'" + value + "'"); break;
        case 'i': t.identities.push_back(arg); break;
        case 'l': t.user = arg; break;
        case 'F': t.config_file = arg; break;
        case 'o': apply_option(t, arg); break;
        default: break;
      }
      continue;
    }
    if (!dest.empty())
      throw GatewayError("more than one destination in '" + value + "' ('" + dest + "' and '" + w +
                         "'); a remote command is not supported");
    dest = w;
  }
  if (dest.empty()) throw GatewayError("no host in '" + value + "' (expected [user@]host[:port])");
  if (dest.rfind("ssh://", 0) == 0) dest.erase(0, 6);
  if (const auto at = dest.rfind('@'); at != std::string::npos) {
    if (t.user.empty()) t.user = dest.substr(0, at);  // -l wins, as in OpenSSH
    dest.erase(0, at + 1);
  }
  if (!dest.empty() && dest[0] == '[') {  // [v6addr]:port or [host]:port
    const auto close = dest.find(']');
    if (close == std::string::npos) throw GatewayError("unterminated [ in '" + value + "'");
    const std::string rest = dest.substr(close + 1);
    t.host = dest.substr(1, close - 1);
    if (!rest.empty()) {
      if (rest[0] != ':') throw GatewayError("unexpected '" + rest + "' after ] in '" + value + "'");
      if (!t.port) t.port = parse_port(rest.substr(1), "'" + value + "'");
    }
  } else if (std::count(dest.begin(), dest.end(), ':') == 1) {
    const auto colon = dest.find(':');
    if (!t.port) t.port = parse_port(dest.substr(colon + 1), "'" + value + "'");
    t.host = dest.substr(0, colon);
  } else {
    t.host = dest;  // a bare IPv6 address has several colons and no port
  }
  if (t.host.empty()) throw GatewayError("no host in '" + value + "' (expected [user@]host[:port])");
  return t;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q += "'\\''";
    else q += c;
  }
  q += "'";
  return q;
}

std::string file_hash(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw GatewayError("cannot read agent " + path + ": " + std::strerror(errno));
  using Key = std::tuple<std::string, dev_t, ino_t, off_t, long, long>;
  static std::mutex mu;
  static std::map<Key, std::string> cache;
  const Key key{path, st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw GatewayError("cannot read agent " + path + ": " + std::strerror(errno));
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = in.gcount();
    if (n > 0) XXH3_128bits_update(&state, buf.data(), static_cast<std::size_t>(n));
  }
  if (in.bad()) throw GatewayError("cannot read agent " + path + ": read error");
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(&state));
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char b : canon.digest) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  std::lock_guard lock(mu);
  cache[key] = out;
  return out;
}

}  // namespace ssh_detail

namespace {

using ssh_detail::shell_quote;
using namespace ssh_internal;
using Clock = std::chrono::steady_clock;

std::string local_user() {
  if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_name) return pw->pw_name;
  if (const char* u = std::getenv("USER"); u && *u) return u;
  return "user";
}

std::string local_host() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) return "localhost";
  std::string h = host;
  if (auto dot = h.find('.'); dot != std::string::npos) h.erase(dot);
  return h.empty() ? "localhost" : h;
}

std::string local_uname() {
  utsname u{};
  if (::uname(&u) != 0) return "?";
  return std::string(u.sysname) + " " + u.machine;
}

// A path for the remote shell: "~" and "~/x" become "$HOME"/..., a relative
// path is taken from $HOME (where ssh starts), the rest is quoted.
std::string remote_path_expr(const std::string& p) {
  if (p == "~") return "\"$HOME\"";
  if (p.rfind("~/", 0) == 0) return "\"$HOME\"/" + shell_quote(p.substr(2));
  if (!p.empty() && p[0] == '/') return shell_quote(p);
  return "\"$HOME\"/" + shell_quote(p);
}

bool valid_env_name(const std::string& n) {
  if (n.empty() || std::isdigit(static_cast<unsigned char>(n[0]))) return false;
  return std::all_of(n.begin(), n.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '_'; });
}

struct ChannelDeleter {
  void operator()(ssh_channel c) const {
    if (ssh_channel_is_open(c)) ssh_channel_close(c);
    ssh_channel_free(c);
  }
};
using ChannelPtr = std::unique_ptr<std::remove_pointer_t<ssh_channel>, ChannelDeleter>;

struct KeyDeleter {
  void operator()(ssh_key k) const { ssh_key_free(k); }
};

struct CommandResult {
  int status = -1;
  std::string out, err;
};

// The server refused another session (channel) on a connection that has
// some already: OpenSSH's MaxSessions (default 10). The gateway retries on
// another connection to the same host.
class Refused : public Cause {
 public:
  using Cause::Cause;
};

// A gateway's request for an agent channel, answered by the pump.
struct OpenCmd {
  // in
  OpenRequest req;
  int ctl_fd = -1;  // the holder: the client's control socket (the pump takes it over on success)
  bool on_warm = false;  // queued on a connection that was up already
  // out (under Connection::mu_)
  // refused: the connection is full; stale: a connection that was up has
  // died (the holder's warm connection). Both are retried elsewhere.
  enum class Status { pending, ok, failed, refused, stale } status = Status::pending;
  std::string cause;
  int fd = -1;  // the gateway's end of the socketpair (-1 with ctl_fd: sent to the client)
  std::shared_ptr<ChanState> state;
};

// Holder processes keep their connections up without channels.
std::atomic<bool> g_persist{false};
std::atomic<int> g_notify_fd{-1};

void notify_holder() {
  const int fd = g_notify_fd.load();
  if (fd < 0) return;
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

// One libssh session shared by every gateway to the same connection
// parameters (like OpenSSH's ControlMaster). Its pump thread makes every
// libssh call for the session: connect, host key, auth, bootstrap, opening
// channels, moving bytes between each channel and its gateway's socketpair,
// EOF, signals, close. Gateways talk to it through the command queue
// (opens), ChanState::stop (terminate) and their socketpair (data, close =
// shutdown), and wake it with an eventfd.
class Connection {
 public:
  Connection(Prepared& p, const ssh_detail::Target& target)
      : session_(std::move(p.session)),
        target_(target),
        host_(p.host),
        user_(p.user),
        where_(p.where),
        port_(p.port),
        accept_new_(p.accept_new) {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) throw GatewayError(std::string("eventfd: ") + std::strerror(errno));
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  ~Connection() {
    {
      std::lock_guard lock(mu_);
      shutdown_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
    ::close(wake_fd_);
  }

  void start() { thread_ = std::thread([this] { pump_main(); }); }

  // Queues an open unless the connection has ended or is full.
  bool try_submit(const std::shared_ptr<OpenCmd>& c) {
    {
      std::lock_guard lock(mu_);
      if (closed_ || full_) return false;
      c->on_warm = established_;
      queue_.push_back(c);
    }
    wake();
    return true;
  }

  bool usable() {
    std::lock_guard lock(mu_);
    return !closed_;
  }

  int channels() const { return nchans_.load(); }

  void wait_answer(const std::shared_ptr<OpenCmd>& c) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return c->status != OpenCmd::Status::pending; });
  }

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
  }

 private:
  struct Chan {
    ChannelPtr ch;
    int fd = -1;  // the pump's end of the socketpair (non-blocking)
    std::shared_ptr<ChanState> state;
    ssh_channel_callbacks_struct callbacks{};
    std::string to_chan, to_sock, error;
    bool sock_eof = false, eof_sent = false, out_eof = false, err_eof = false, sock_shut = false;
    std::optional<Clock::time_point> out_eof_at;
    std::string agent_hash;  // of the agent it runs (its bootstrap entry)
    bool* activity = nullptr;  // the connection's activity_
    // The holder: the client's control socket (non-blocking). The channel's
    // stderr, exit status and end go there; its EOF (or any byte) = stop.
    int ctl = -1;
    std::string to_ctl;
    bool exit_sent = false;
  };

  static constexpr std::size_t kHigh = 1 << 20;

  std::string ssh_error() const { return ssh_get_error(session_.get()); }

  // ---------------------------------------------------------------------
  // the pump

  void pump_main() {
    try {
      establish();
    } catch (const std::exception& e) {
      fail_connection(e.what());
      session_.reset();
      return;
    }
    ssh_session s = session_.get();
    ssh_event event = ssh_event_new();
    if (event) ssh_event_add_session(event, s);
    std::string lost;  // the connection broke
    std::vector<char> buf(65536);
    for (;;) {
      std::deque<std::shared_ptr<OpenCmd>> cmds;
      {
        std::lock_guard lock(mu_);
        if (shutdown_) break;
        cmds.swap(queue_);
      }
      while (!cmds.empty() && lost.empty()) {
        auto c = cmds.front();
        cmds.pop_front();
        open_channel(*c);
        if (!ssh_is_connected(s)) lost = "connection lost: " + ssh_error();
        if (c->status == OpenCmd::Status::refused) {
          // Full: the rest go elsewhere too (they are retried on another
          // connection), and so does every later open.
          std::lock_guard lock(mu_);
          full_ = true;
          for (auto& r : cmds) {
            r->status = OpenCmd::Status::refused;
            r->cause = c->cause;
          }
          cmds.clear();
        }
        std::lock_guard lock(mu_);
        cv_.notify_all();
      }
      if (!lost.empty()) {
        std::lock_guard lock(mu_);
        for (auto& r : cmds) queue_.push_front(r);  // answered by fail_connection
        break;
      }
      activity_ = false;
      for (auto it = chans_.begin(); it != chans_.end();) {
        if (step(**it, buf.data(), buf.size())) {
          finish(**it);
          it = chans_.erase(it);
          nchans_ = static_cast<int>(chans_.size());
          if (chans_.empty()) notify_holder();
          std::lock_guard lock(mu_);
          full_ = false;  // room for one more session again
        } else {
          ++it;
        }
      }
      if (!ssh_is_connected(s)) {
        lost = "connection lost: " + ssh_error();
        break;
      }
      if (chans_.empty()) {
        std::lock_guard lock(mu_);
        if (!queue_.empty()) continue;
        if (!g_persist) {  // the last channel is gone: end the session
          closed_ = true;
          break;
        }
        // A holder's connection stays up without channels; the pump keeps
        // reading the socket (keepalives, the server going away).
      }

      std::vector<pollfd> pfds;
      pfds.push_back({wake_fd_, POLLIN, 0});
      pfds.push_back({ssh_get_fd(s), POLLIN, 0});
      for (const auto& c : chans_) {
        short events = 0;
        if (!c->sock_eof && c->to_chan.size() < kHigh) events |= POLLIN;
        if (!c->to_sock.empty()) events |= POLLOUT;
        if (events) pfds.push_back({c->fd, events, 0});
        if (c->ctl >= 0) pfds.push_back({c->ctl, static_cast<short>(POLLIN | (c->to_ctl.empty() ? 0 : POLLOUT)), 0});
      }
      // A packet read during the steps above (by another channel's read or
      // write, or a callback) may sit in a channel already served, and the
      // socket is then no longer readable: no sleeping on it.
      ::poll(pfds.data(), pfds.size(), activity_ ? 0 : chans_.empty() ? -1 : 200);
      // Takes whatever arrived off the socket into the channels' buffers
      // (and runs the exit-status callbacks), also for channels nobody
      // reads right now (at EOF, or their gateway is slow).
      if (event) ssh_event_dopoll(event, 0);
      quick_ack(ssh_get_fd(s));
      if (pfds[0].revents & POLLIN) {
        uint64_t n;
        [[maybe_unused]] ssize_t r = ::read(wake_fd_, &n, sizeof n);
      }
    }
    // Tear down: every channel left ends (the agent is asked to stop), every
    // open still queued fails, then the session is disconnected.
    for (auto& c : chans_) {
      if (!lost.empty() && c->error.empty()) c->error = lost;
      // Only a holder shuts a connection down under live channels (it was
      // stopped): their gateways must not take that for a clean end.
      if (c->error.empty() && !c->state->stop) c->error = "the connection was shut down (its holder process stopped)";
      finish(*c);
    }
    chans_.clear();
    nchans_ = 0;
    if (event) {
      ssh_event_remove_session(event, s);
      ssh_event_free(event);
    }
    fail_connection(lost.empty() ? "the connection was shut down" : lost);
    session_.reset();
  }

  // Marks the connection ended and fails every queued open with `cause`
  // (stale: retried on a new connection, if this one had been up before
  // the open was queued).
  void fail_connection(const std::string& cause) {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
      for (auto& c : queue_) {
        c->status = c->on_warm ? OpenCmd::Status::stale : OpenCmd::Status::failed;
        c->cause = cause;
      }
      queue_.clear();
      cv_.notify_all();
    }
    notify_holder();
  }

  // One round of I/O between a channel and its socketpair; true when the
  // channel is finished (remote closed and all delivered, stop, error).
  bool step(Chan& c, char* buf, std::size_t bufsize) {
    if (c.state->stop) return true;
    if (!ctl_read(c, buf, bufsize)) {  // the client terminated the gateway, or is gone
      c.state->stop = true;
      return true;
    }
    ssh_channel ch = c.ch.get();
    // channel -> to_sock, stderr -> tail
    if (!c.out_eof && c.to_sock.size() < kHigh) {
      for (;;) {
        const int n = ssh_channel_read_nonblocking(ch, buf, static_cast<uint32_t>(bufsize), 0);
        if (n > 0) {
          c.to_sock.append(buf, static_cast<std::size_t>(n));
          if (c.to_sock.size() >= kHigh) break;
          continue;
        }
        if (n == SSH_EOF) c.out_eof = true;
        else if (n < 0) c.error = "connection lost: " + ssh_error();
        break;
      }
    }
    if (!c.err_eof && c.error.empty()) {
      for (;;) {
        const int n = ssh_channel_read_nonblocking(ch, buf, static_cast<uint32_t>(bufsize), 1);
        if (n > 0) {
          std::lock_guard lock(c.state->mu);
          c.state->err_tail.append(buf, static_cast<std::size_t>(n));
          if (c.state->err_tail.size() > 8192) c.state->err_tail.erase(0, c.state->err_tail.size() - 8192);
          if (c.to_ctl.size() < kHigh) ctl_put(c, ctl::kStderr, std::string_view(buf, static_cast<std::size_t>(n)));
          continue;
        }
        if (n == SSH_EOF) c.err_eof = true;
        else if (n < 0) c.error = "connection lost: " + ssh_error();
        break;
      }
    }
    if (!c.error.empty()) return true;
    // to_sock -> socketpair
    while (!c.to_sock.empty()) {
      const ssize_t w = ::send(c.fd, c.to_sock.data(), c.to_sock.size(), MSG_NOSIGNAL);
      if (w > 0) {
        c.to_sock.erase(0, static_cast<std::size_t>(w));
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      c.to_sock.clear();  // the gateway's side is gone: drop what is left
      break;
    }
    // The gateway sees EOF once the exit status is in too (or the channel
    // closed, or 2 s passed), so diagnostics() after EOF can tell how the
    // agent ended.
    bool has_exit = false;
    {
      std::lock_guard lock(c.state->mu);
      has_exit = c.state->exit_status.has_value() || !c.state->exit_signal.empty();
    }
    if (has_exit) put_exit(c);
    if (c.out_eof && !c.out_eof_at) c.out_eof_at = Clock::now();
    if (c.out_eof && c.to_sock.empty() && !c.sock_shut &&
        (has_exit || ssh_channel_is_closed(ch) || Clock::now() - *c.out_eof_at > std::chrono::seconds(2))) {
      ctl_put(c, ctl::kEofMarker);  // what the client needs at EOF is before this
      ::shutdown(c.fd, SHUT_WR);
      c.sock_shut = true;
    }
    // socketpair -> to_chan
    while (!c.sock_eof && c.to_chan.size() < kHigh) {
      const ssize_t n = ::read(c.fd, buf, bufsize);
      if (n > 0) {
        c.to_chan.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      c.sock_eof = true;  // EOF or error: the gateway closed its side
    }
    // to_chan -> channel, never more than the window (a blocking write
    // waiting for window space would stop the pump, and the agent may be
    // blocked writing to us)
    while (!c.to_chan.empty() && ssh_channel_is_open(ch)) {
      const uint32_t window = ssh_channel_window_size(ch);
      if (window == 0) break;
      const uint32_t len = static_cast<uint32_t>(std::min<std::size_t>({c.to_chan.size(), window, 32768}));
      const int w = ssh_channel_write(ch, c.to_chan.data(), len);
      if (w < 0) {
        c.error = "connection lost while sending: " + ssh_error();
        return true;
      }
      c.to_chan.erase(0, static_cast<std::size_t>(w));
      if (w == 0) break;
    }
    if (!c.to_chan.empty() && !ssh_channel_is_open(ch)) c.to_chan.clear();
    if (c.sock_eof && c.to_chan.empty() && !c.eof_sent && ssh_channel_is_open(ch)) {
      ssh_channel_send_eof(ch);
      c.eof_sent = true;
    }
    if (!ctl_flush(c)) {
      c.state->stop = true;
      return true;
    }
    // Done when the remote closed the channel and everything is delivered.
    return (ssh_channel_is_closed(ch) || (c.out_eof && c.err_eof && has_exit)) && c.to_sock.empty();
  }

  // The holder's control socket of a channel.
  static void ctl_put(Chan& c, char type, std::string_view payload = {}) {
    if (c.ctl >= 0) c.to_ctl += ctl::message(type, payload);
  }

  // The exit status or signal, once.
  static void put_exit(Chan& c) {
    if (c.ctl < 0 || c.exit_sent) return;
    std::lock_guard lock(c.state->mu);
    if (c.state->exit_status) {
      const uint32_t v = static_cast<uint32_t>(*c.state->exit_status);
      const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                         static_cast<char>(v)};
      ctl_put(c, ctl::kExitStatus, std::string_view(b, 4));
      c.exit_sent = true;
    } else if (!c.state->exit_signal.empty()) {
      ctl_put(c, ctl::kExitSignal, c.state->exit_signal);
      c.exit_sent = true;
    }
  }

  // False when the client wants the channel stopped: EOF on the control
  // socket (terminate(), or the client is gone) or any byte.
  static bool ctl_read(Chan& c, char* buf, std::size_t bufsize) {
    if (c.ctl < 0) return true;
    for (;;) {
      const ssize_t n = ::recv(c.ctl, buf, bufsize, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  }

  // False when the client is gone.
  static bool ctl_flush(Chan& c) {
    while (c.ctl >= 0 && !c.to_ctl.empty()) {
      const ssize_t w = ::send(c.ctl, c.to_ctl.data(), c.to_ctl.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        c.to_ctl.erase(0, static_cast<std::size_t>(w));
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      c.to_ctl.clear();
      return false;
    }
    return true;
  }

  // Lets go of a channel: on stop the agent is asked to end (EOF and TERM;
  // it also ends on EOF alone), the channel is closed, the gateway's
  // receive() sees EOF and terminate()/wait() return.
  void finish(Chan& c) {
    const bool stop = c.state->stop;
    ssh_channel ch = c.ch.get();
    if (ch) {
      if (stop && ssh_is_connected(session_.get()) && ssh_channel_is_open(ch)) {
        if (!c.eof_sent) ssh_channel_send_eof(ch);
        ssh_channel_request_send_signal(ch, "TERM");
      }
      // libssh may keep a closed channel until the peer's close arrives:
      // no callback may reach `c` after this.
      ssh_remove_channel_callbacks(ch, &c.callbacks);
      c.ch.reset();
    }
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
    {
      std::lock_guard lock(c.state->mu);
      // An agent that is not there (any more: the remote cache was cleaned
      // while the connection was warm) is probed for again next time.
      if (c.state->exit_status && (*c.state->exit_status == 127 || *c.state->exit_status == 126))
        boots_.erase(c.agent_hash);
    }
    if (c.ctl >= 0) {
      put_exit(c);
      ctl_put(c, ctl::kDone, stop ? std::string() : c.error);
      // The client reads its control socket all the time; a short wait
      // covers a burst of stderr still queued.
      const auto deadline = Clock::now() + std::chrono::milliseconds(500);
      while (!c.to_ctl.empty() && ctl_flush(c) && !c.to_ctl.empty() && Clock::now() < deadline) {
        pollfd p{c.ctl, POLLOUT, 0};
        ::poll(&p, 1, 50);
      }
      ::close(c.ctl);
      c.ctl = -1;
    }
    std::lock_guard lock(c.state->mu);
    if (!c.error.empty() && !stop) c.state->error = c.error;
    c.state->done = true;
    c.state->cv.notify_all();
  }

  // ---------------------------------------------------------------------
  // opening a channel (in the pump)

  void open_channel(OpenCmd& cmd) {
    try {
      std::string hash;
      const std::string remote_agent = bootstrap(cmd.req.agent_path, cmd.req.explicit_agent, hash);
      auto c = std::make_unique<Chan>();
      c->agent_hash = hash;
      c->state = std::make_shared<ChanState>();
      c->ch = new_channel();
      ssh_callbacks_init(&c->callbacks);
      // The callbacks run inside whichever libssh call of the pump reads the
      // packet (often while another channel is being served): each notes
      // that the pump must look at the channels again before it sleeps.
      c->activity = &activity_;
      c->callbacks.userdata = c.get();
      c->callbacks.channel_exit_status_function = [](ssh_session, ssh_channel, int status, void* ud) {
        auto* ch = static_cast<Chan*>(ud);
        *ch->activity = true;
        std::lock_guard lock(ch->state->mu);
        ch->state->exit_status = status;
      };
      c->callbacks.channel_exit_signal_function = [](ssh_session, ssh_channel, const char* sig, int, const char*,
                                                     const char*, void* ud) {
        auto* ch = static_cast<Chan*>(ud);
        *ch->activity = true;
        std::lock_guard lock(ch->state->mu);
        ch->state->exit_signal = sig ? sig : "?";
      };
      // Data stays in the channel's buffer (0 bytes taken): a notification.
      c->callbacks.channel_data_function = [](ssh_session, ssh_channel, void*, uint32_t, int, void* ud) -> int {
        *static_cast<Chan*>(ud)->activity = true;
        return 0;
      };
      c->callbacks.channel_eof_function = [](ssh_session, ssh_channel, void* ud) {
        *static_cast<Chan*>(ud)->activity = true;
      };
      c->callbacks.channel_close_function = [](ssh_session, ssh_channel, void* ud) {
        *static_cast<Chan*>(ud)->activity = true;
      };
      ssh_set_channel_callbacks(c->ch.get(), &c->callbacks);
      const std::string cmdline = "/bin/sh -c " + shell_quote(cmd.req.script_prefix + " " + remote_agent);
      if (ssh_channel_request_exec(c->ch.get(), cmdline.c_str()) != SSH_OK) {
        ssh_remove_channel_callbacks(c->ch.get(), &c->callbacks);
        throw Cause("remote exec failed (" + cmdline + "): " + ssh_error());
      }
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        ssh_remove_channel_callbacks(c->ch.get(), &c->callbacks);
        throw Cause(std::string("socketpair: ") + std::strerror(errno));
      }
      set_nonblocking(sv[1], true);
      c->fd = sv[1];
      int gateway_fd = sv[0];
      if (cmd.ctl_fd >= 0) {
        // The holder: the client gets its end over the control socket, and
        // from now on hears about the channel there.
        const bool sent = send_with_fd(cmd.ctl_fd, ctl::message(ctl::kOk), sv[0]);
        ::close(sv[0]);
        gateway_fd = -1;
        if (!sent) {
          ::close(sv[1]);
          ssh_remove_channel_callbacks(c->ch.get(), &c->callbacks);
          throw Cause("the client went away");
        }
        set_nonblocking(cmd.ctl_fd, true);
        c->ctl = cmd.ctl_fd;
      }
      std::lock_guard lock(mu_);
      cmd.status = OpenCmd::Status::ok;
      cmd.fd = gateway_fd;
      cmd.state = c->state;
      chans_.push_back(std::move(c));
      nchans_ = static_cast<int>(chans_.size());
    } catch (const Refused& e) {
      std::lock_guard lock(mu_);
      // Refused on a connection that has had sessions (the agents' channels,
      // or the bootstrap's, whose slots sshd may not have freed yet): try
      // another connection. Only a first session refused is an error.
      cmd.status = sessions_opened_ == 0 ? OpenCmd::Status::failed : OpenCmd::Status::refused;
      cmd.cause = e.what();
    } catch (const std::exception& e) {
      const bool lost = !ssh_is_connected(session_.get());
      std::lock_guard lock(mu_);
      cmd.status = lost && cmd.on_warm ? OpenCmd::Status::stale : OpenCmd::Status::failed;
      cmd.cause = e.what();
    }
  }

  // One message with a file descriptor attached (SCM_RIGHTS).
  static bool send_with_fd(int sock, const std::string& data, int fd) {
    iovec iov{const_cast<char*>(data.data()), data.size()};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    for (;;) {
      const ssize_t n = ::sendmsg(sock, &m, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n != static_cast<ssize_t>(data.size())) return false;  // a few bytes on an empty socket: all or error
      return true;
    }
  }

  ChannelPtr new_channel() {
    ssh_session s = session_.get();
    ChannelPtr ch(ssh_channel_new(s));
    if (!ch) throw Cause("cannot create a channel: " + ssh_error());
    if (ssh_channel_open_session(ch.get()) != SSH_OK) {
      if (ssh_is_connected(s))
        throw Refused("the server refused to open a session (sshd's MaxSessions?): " + ssh_error());
      throw Cause("cannot open a channel: " + ssh_error());
    }
    ++sessions_opened_;
    return ch;
  }

  // Runs `script` under /bin/sh on a fresh channel, feeding `input_file`
  // (if any) to its stdin; returns its status and output.
  CommandResult run(const std::string& script, const std::string& input_file = "") {
    ChannelPtr ch = new_channel();
    const std::string cmd = "/bin/sh -c " + shell_quote(script);
    if (ssh_channel_request_exec(ch.get(), cmd.c_str()) != SSH_OK)
      throw Cause("remote exec failed (" + cmd + "): " + ssh_error());
    if (!input_file.empty()) {
      std::ifstream in(input_file, std::ios::binary);
      if (!in) throw Cause("cannot read " + input_file);
      std::vector<char> buf(1 << 16);
      bool write_failed = false;
      while (in && !write_failed) {
        in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
        std::size_t n = static_cast<std::size_t>(in.gcount());
        std::size_t off = 0;
        while (off < n) {
          const int w = ssh_channel_write(ch.get(), buf.data() + off, static_cast<uint32_t>(n - off));
          if (w <= 0) {
            write_failed = true;
            break;
          }
          off += static_cast<std::size_t>(w);
        }
      }
    }
    ssh_channel_send_eof(ch.get());
    CommandResult r;
    char buf[4096];
    for (int stream : {0, 1}) {
      for (;;) {
        const int n = ssh_channel_read(ch.get(), buf, sizeof buf, stream);
        if (n <= 0) break;
        (stream ? r.err : r.out).append(buf, static_cast<std::size_t>(n));
      }
    }
    r.status = ssh_channel_get_exit_status(ch.get());
    return r;
  }

  // Makes sure the remote has the agent (once per connection and agent);
  // returns the remote shell expression of its path.
  std::string bootstrap(const std::string& agent_path, bool explicit_agent, std::string& hash) {
    hash = ssh_detail::file_hash(agent_path);
    const std::string rel = ".cache/dtest/agent-" + hash;
    const std::string path = "\"$HOME\"/" + rel;
    auto it = boots_.find(hash);
    if (it == boots_.end()) {
      const CommandResult probe =
          run("uname -sm; if [ -x " + path + " ]; then echo present; else echo missing; fi");
      if (probe.status != 0)
        throw Cause("the bootstrap probe failed on the remote (" + std::to_string(probe.status) + "): " + probe.err);
      Boot b;
      b.uname = probe.out.substr(0, probe.out.find('\n'));
      b.present = probe.out.find("\npresent") != std::string::npos;
      it = boots_.emplace(hash, b).first;
    }
    const std::string& remote_uname = it->second.uname;
    if (!explicit_agent && remote_uname != local_uname())
      throw Cause("the remote is " + remote_uname + " but the local dtest-agent (" + agent_path +
                  ") is built for " + local_uname() + "; give a dtest-agent built for " + remote_uname +
                  " with the agent=PATH key (e.g. --tx 'ssh=HOST//agent=/path/to/dtest-agent-" + remote_uname +
                  "')");
    if (it->second.present) return path;
    std::error_code ec;
    const auto size = std::filesystem::file_size(agent_path, ec);
    if (ec) throw Cause("cannot read agent " + agent_path + ": " + ec.message());
    const std::string upload =
        "set -e; mkdir -p \"$HOME\"/.cache/dtest; t=\"$HOME\"/" + rel + ".tmp.$$; "
        "trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; "
        "n=$(wc -c < \"$t\"); if [ \"$n\" -ne " + std::to_string(size) + " ]; then "
        "echo \"upload truncated: $n of " + std::to_string(size) + " bytes\" >&2; exit 1; fi; "
        "chmod 755 \"$t\"; mv -f \"$t\" " + path + "; trap - EXIT";
    const CommandResult up = run(upload, agent_path);
    if (up.status != 0)
      throw Cause("uploading the agent to ~/" + rel + " failed (exit status " + std::to_string(up.status) +
                  "): " + up.err);
    it->second.present = true;
    return path;
  }

  // ---------------------------------------------------------------------
  // connection (in the pump)

  void establish() {
    ssh_session s = session_.get();
    if (ssh_connect(s) != SSH_OK) {
      const std::string e = ssh_error();
      std::string cause;
      if (e.find("resolve") != std::string::npos) cause = "name resolution failed: ";
      else if (e.find("refused") != std::string::npos) cause = "connection refused: ";
      else if (e.find("imeout") != std::string::npos || e.find("timed out") != std::string::npos)
        cause = "connection timed out: ";
      else if (e.find("disconnected") != std::string::npos)
        cause = "cannot connect (network unreachable, or the server closed the connection at once): ";
      else cause = "cannot connect: ";
      throw Cause(cause + e);
    }
    detect_dead_links(ssh_get_fd(s));
    quick_ack(ssh_get_fd(s));
    verify_host_key();
    authenticate();
    std::lock_guard lock(mu_);
    established_ = true;
  }

  // sshd runs non-interactive sessions with Nagle's algorithm on: a reply
  // the agent writes in two pieces waits for our ACK of the first, and a
  // delayed ACK costs 40 ms (each time: the collection, the end of a run).
  // TCP_QUICKACK is not sticky, so the pump re-arms it after every read.
  static void quick_ack(int fd) {
    if (fd < 0) return;
    const int on = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
  }

  // A cut link sends no RST: without this a read would wait for ever. TCP
  // keepalive probes an idle connection (5 s, then every 2 s, 3 misses) and
  // TCP_USER_TIMEOUT bounds unacknowledged data, so a dead link surfaces as
  // a socket error within about 15 s and the gateways' tests are requeued.
  static void detect_dead_links(int fd) {
    if (fd < 0) return;
    const int on = 1, idle = 5, interval = 2, count = 3;
    const unsigned user_timeout_ms = 15000;
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
  }

  void verify_host_key() {
    ssh_session s = session_.get();
    ssh_key raw = nullptr;
    if (ssh_get_server_publickey(s, &raw) != SSH_OK) throw Cause("no host key from the server: " + ssh_error());
    std::unique_ptr<std::remove_pointer_t<ssh_key>, KeyDeleter> key(raw);
    std::string fingerprint = "?";
    unsigned char* hash = nullptr;
    size_t hlen = 0;
    if (ssh_get_publickey_hash(key.get(), SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0) {
      if (char* fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen)) {
        fingerprint = fp;
        ssh_string_free_char(fp);
      }
      ssh_clean_pubkey_hash(&hash);
    }
    const char* type = ssh_key_type_to_char(ssh_key_type(key.get()));
    const std::string shown = std::string(type ? type : "?") + " key " + fingerprint;
    std::string kh_file = "~/.ssh/known_hosts";
    char* v = nullptr;
    if (ssh_options_get(s, SSH_OPTIONS_KNOWNHOSTS, &v) == SSH_OK && v) {
      kh_file = v;
      ssh_string_free_char(v);
    }
    const std::string entry = port_ == 22 ? host_ : "[" + host_ + "]:" + std::to_string(port_);
    switch (ssh_session_is_known_server(s)) {
      case SSH_KNOWN_HOSTS_OK:
        return;
      case SSH_KNOWN_HOSTS_CHANGED:
        throw Cause("HOST KEY CHANGED: " + entry + " now presents " + shown + ", which does not match its entry in " +
             kh_file + ". Someone may be intercepting the connection, or the host key was replaced. Refusing "
             "to connect. If the change is expected, remove the old entry (ssh-keygen -R '" + entry + "' -f " +
             kh_file + ") and connect again.");
      case SSH_KNOWN_HOSTS_OTHER:
        throw Cause("HOST KEY CHANGED: " + entry + " presents " + shown + " but " + kh_file +
             " lists a key of another type for it. Refusing to connect. If the change is expected, remove "
             "the old entry (ssh-keygen -R '" + entry + "' -f " + kh_file + ") and connect again.");
      case SSH_KNOWN_HOSTS_NOT_FOUND:
      case SSH_KNOWN_HOSTS_UNKNOWN:
        if (accept_new_) {
          if (ssh_session_update_known_hosts(s) != SSH_OK)
            throw Cause("cannot add " + entry + " to " + kh_file + ": " + ssh_error());
          return;
        }
        throw Cause("unknown host: " + entry + " presents " + shown + ", and it is not in " + kh_file +
             ". Refusing to connect. To accept it, check the fingerprint and either connect once with "
             "ssh (ssh " + (port_ != 22 ? "-p " + std::to_string(port_) + " " : std::string()) + user_ + "@" +
             host_ + "), or set DTEST_SSH_ACCEPT_NEW=1 (like StrictHostKeyChecking=accept-new) to add it to " +
             kh_file + " on first use.");
      case SSH_KNOWN_HOSTS_ERROR:
      default:
        throw Cause("cannot check the host key against " + kh_file + ": " + ssh_error());
    }
  }

  void authenticate() {
    ssh_session s = session_.get();
    int rc = ssh_userauth_none(s, nullptr);
    if (rc == SSH_AUTH_SUCCESS) return;
    if (rc == SSH_AUTH_ERROR) throw Cause("authentication failed: " + ssh_error());
    const int methods = ssh_userauth_list(s, nullptr);
    std::vector<std::string> offered;
    if (methods & SSH_AUTH_METHOD_PUBLICKEY) offered.push_back("publickey");
    if (methods & SSH_AUTH_METHOD_PASSWORD) offered.push_back("password");
    if (methods & SSH_AUTH_METHOD_INTERACTIVE) offered.push_back("keyboard-interactive");
    if (methods & SSH_AUTH_METHOD_GSSAPI_MIC) offered.push_back("gssapi-with-mic");
    if (methods & SSH_AUTH_METHOD_HOSTBASED) offered.push_back("hostbased");
    std::string tried = "none";
    if (methods & SSH_AUTH_METHOD_PUBLICKEY) {
      rc = ssh_userauth_publickey_auto(s, nullptr, nullptr);
      if (rc == SSH_AUTH_SUCCESS) return;
      if (rc == SSH_AUTH_ERROR) throw Cause("authentication failed for user " + user_ + ": " + ssh_error());
      const char* sock = std::getenv("SSH_AUTH_SOCK");
      tried += ", publickey with ssh-agent (";
      tried += sock && *sock ? std::string("SSH_AUTH_SOCK=") + sock : std::string("not running: SSH_AUTH_SOCK unset");
      tried += ")";
      std::vector<std::string> files;
      for (const auto& id : target_.identities) files.push_back(id + " (-i)");
      std::string home;
      if (const passwd* pw = ::getpwuid(::getuid()); pw && pw->pw_dir) home = pw->pw_dir;
      for (const char* name : {"id_ed25519", "id_ecdsa", "id_rsa"}) {
        const std::string p = home + "/.ssh/" + name;
        std::error_code ec;
        if (!home.empty() && std::filesystem::exists(p, ec)) files.push_back(p);
      }
      tried += ", publickey with identity files ";
      if (files.empty()) {
        tried += "(none found: give one with -i KEY)";
      } else {
        for (std::size_t i = 0; i < files.size(); ++i) tried += (i ? ", " : "") + files[i];
      }
    }
    std::string accepts;
    for (std::size_t i = 0; i < offered.size(); ++i) accepts += (i ? "," : "") + offered[i];
    throw Cause("authentication failed for user " + user_ + " (server accepts: " +
                (accepts.empty() ? "?" : accepts) + "; tried: " + tried +
                "; dtest does not prompt for passwords or passphrases: use ssh-agent or an unencrypted key)");
  }


  struct Boot {
    std::string uname;
    bool present = false;
  };

  // Touched only by the pump thread (and before it starts).
  SessionPtr session_;
  const ssh_detail::Target target_;
  const std::string host_, user_, where_;
  const unsigned port_;
  const bool accept_new_;
  std::vector<std::unique_ptr<Chan>> chans_;
  std::map<std::string, Boot> boots_;  // by agent hash
  std::thread thread_;
  int wake_fd_ = -1;

  std::mutex mu_;  // guards what follows
  std::condition_variable cv_;  // an open was answered
  std::deque<std::shared_ptr<OpenCmd>> queue_;
  bool closed_ = false;    // ended (or failed): no more opens
  bool full_ = false;      // the server refused a session: opens go to another connection
  bool established_ = false;  // connected and authenticated
  bool activity_ = false;     // pump thread only: a channel callback ran since the last round
  std::atomic<int> nchans_{0};  // chans_.size(), for the holder's idle check
  int sessions_opened_ = 0;  // on this connection, ever (pump thread only)
  bool shutdown_ = false;  // the last owner is gone
};

// The process-wide registry of shared connections. Entries are weak: the
// gateways own their connection; a connection whose last channel is gone
// ends by itself and stays in the list (closed) until it is swept.
std::mutex& registry_mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<std::string, std::vector<std::weak_ptr<Connection>>>& registry() {
  static auto* m = new std::map<std::string, std::vector<std::weak_ptr<Connection>>>;
  return *m;
}

// Queues `cmd` on a live connection for `p.key`, or on a new one (which
// takes over `p.session` and starts connecting). A holder keeps a strong
// reference to every connection it makes.
std::vector<std::shared_ptr<Connection>>& held() {
  static auto* v = new std::vector<std::shared_ptr<Connection>>;
  return *v;
}
int g_created = 0;  // connections made (under registry_mu)

std::shared_ptr<Connection> submit_open(Prepared& p, const ssh_detail::Target& target,
                                        const std::shared_ptr<OpenCmd>& cmd) {
  std::vector<std::shared_ptr<Connection>> drop;  // released after the lock
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard lock(registry_mu());
    auto& list = registry()[p.key];
    for (auto it = list.begin(); it != list.end();) {
      auto c = it->lock();
      if (!c || !c->usable()) {
        if (c) drop.push_back(std::move(c));
        it = list.erase(it);
        continue;
      }
      if (c->try_submit(cmd)) {
        conn = std::move(c);
        break;
      }
      drop.push_back(std::move(c));
      ++it;
    }
    if (!conn) {
      conn = std::make_shared<Connection>(p, target);
      conn->try_submit(cmd);
      conn->start();
      list.push_back(conn);
      ++g_created;
      if (g_persist) held().push_back(conn);
    }
  }
  return conn;
}

// In-process: terminate() = the stop flag, and the gateways own their
// connection (the last one joins its pump).
class ConnLink final : public Link {
 public:
  ConnLink(std::shared_ptr<Connection> c, std::shared_ptr<ChanState> s) : conn_(std::move(c)), state_(std::move(s)) {}
  void stop() override {
    state_->stop = true;
    conn_->wake();
  }

 private:
  std::shared_ptr<Connection> conn_;
  std::shared_ptr<ChanState> state_;
};

std::string local_path(const std::string& p, const std::filesystem::path& base) {
  if (p.empty() || p[0] == '/' || p[0] == '~') return p;
  return (base / p).lexically_normal().string();
}

class SshGateway final : public Gateway {
 public:
  SshGateway(const xspec::Spec& spec, const OpenOptions& opts) : spec_(spec.original) {
    try {
      target_ = ssh_detail::parse_target(spec.get("ssh").value_or(""));
    } catch (const GatewayError& e) {
      throw GatewayError("ssh gateway '" + spec_ + "': " + e.what());
    }
    if (auto cfg = spec.get("ssh_config"); cfg && target_.config_file.empty()) target_.config_file = *cfg;
    absolutize(target_);
    where_ = target_.host;

    OpenRequest req;
    req.explicit_agent = spec.get("agent").has_value();
    req.agent_path = spec.get("agent").value_or(opts.default_agent);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(req.agent_path, ec))
      fail("agent not found: " + req.agent_path + " (set the agent= key to a dtest-agent for the remote host)");
    req.agent_path = std::filesystem::absolute(req.agent_path, ec).string();
    int nice_value = 0;
    if (auto n = spec.get("nice")) {
      try {
        nice_value = std::stoi(*n);
      } catch (const std::exception&) {
        fail("bad nice value '" + *n + "'");
      }
    }
    auto env = spec.env();
    if (auto py = spec.get("python")) env["DTEST_PYTHON"] = *py;
    for (const auto& [k, v] : env)
      if (!valid_env_name(k)) fail("bad environment variable name '" + k + "'");
    req.script_prefix = agent_script(spec.get("chdir"), nice_value, env);

    try {
      Prepared p = prepare_session(target_, where_);
      // A warm connection (a holder process, started if needed), else one
      // of this process.
      if (auto w = open_warm(target_, p.key, req)) {
        sock_ = w->fd;
        state_ = std::move(w->state);
        link_ = std::move(w->link);
        warm_ = true;
        return;
      }
      OpenResult r = open_shared(target_, req, -1, &p);
      if (!r.ok) fail(r.cause);
      sock_ = r.fd;
      state_ = std::move(r.state);
      link_ = std::move(r.link);
    } catch (const Cause& e) {
      fail(e.what());
    }
  }

  ~SshGateway() override {
    terminate();
    if (sock_ >= 0) ::close(sock_);
    link_.reset();  // in-process: the last gateway of a connection joins its pump
  }

  void send(const Frame& f) override {
    if (closed_) fail("already closed");
    try {
      write_all(sock_, encode_frame(f));
    } catch (const std::system_error& e) {
      fail(std::string("the connection to the agent is gone (") + e.what() + ")" + exit_note());
    }
  }

  std::optional<Frame> receive() override {
    try {
      if (auto f = read_frame(sock_, decoder_)) return f;
    } catch (const std::system_error& e) {
      fail(std::string("read: ") + e.what());
    }
    {
      std::unique_lock lock(state_->mu);
      // Warm: the holder's news (exit status, stderr, error) travels on the
      // control socket; wait for what it sent before the EOF.
      if (warm_)
        state_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return state_->eof_marker || state_->done; });
      if (state_->done && !state_->error.empty()) fail(state_->error);
    }
    if (decoder_.buffered() > 0) throw ProtocolError("agent output ended inside a frame");
    return std::nullopt;
  }

  // The agent sees EOF on its stdin once the pump has written everything
  // before it; only this gateway's channel is affected.
  void close() override {
    if (!closed_.exchange(true) && sock_ >= 0) ::shutdown(sock_, SHUT_WR);
  }

  void terminate() override {
    close();
    std::lock_guard lock(terminate_mu_);
    if (!state_ || terminated_) return;
    link_->stop();
    std::unique_lock l(state_->mu);
    if (!warm_) {
      state_->cv.wait(l, [&] { return state_->done; });
    } else if (!state_->cv.wait_for(l, std::chrono::seconds(10), [&] { return state_->done; })) {
      // A holder that does not answer: let go of the channel (our control
      // socket closes with the link, and the holder stops the channel).
      l.unlock();
      link_.reset();
      l.lock();
      state_->done = true;
    }
    terminated_ = true;
  }

  std::string wait(double timeout_s) override {
    close();
    std::unique_lock lock(state_->mu);
    const bool ended = state_->cv.wait_for(
        lock, std::chrono::milliseconds(static_cast<long>(timeout_s * 1000)), [&] { return state_->done; });
    std::string how;
    if (!ended) how = "killed after " + std::to_string(timeout_s) + " s";
    else if (state_->exit_status) how = describe_exit(*state_->exit_status);
    else if (!state_->exit_signal.empty()) how = "signal " + state_->exit_signal;
    else how = state_->error.empty() ? "connection closed" : state_->error;
    lock.unlock();
    terminate();
    return how;
  }

  std::string diagnostics() override {
    std::lock_guard lock(state_->mu);
    std::string d = state_->err_tail;
    if (state_->exit_status && *state_->exit_status != 0) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] the remote agent command ended with " + describe_exit(*state_->exit_status) + "\n";
    } else if (!state_->exit_signal.empty()) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] the remote agent was killed by signal " + state_->exit_signal + "\n";
    }
    if (!state_->error.empty()) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] " + state_->error + "\n";
    }
    return d;
  }

 private:
  static std::string describe_exit(int status) {
    std::string s = "exit status " + std::to_string(status);
    if (status == 127) s += " (command not found)";
    if (status == 126) s += " (not executable)";
    return s;
  }

  [[noreturn]] void fail(const std::string& cause) const {
    throw GatewayError("ssh gateway '" + spec_ + "' (" + where_ + "): " + cause);
  }

  std::string exit_note() {
    std::lock_guard lock(state_->mu);
    if (state_->exit_status) return "; remote agent ended with " + describe_exit(*state_->exit_status);
    return "";
  }

  // The agent's command line up to (not including) the agent's path.
  static std::string agent_script(const std::optional<std::string>& chdir, int nice_value,
                                  const std::map<std::string, std::string>& env) {
    std::string dir;
    if (chdir) {
      dir = remote_path_expr(*chdir);
    } else {
      const std::string base = std::filesystem::current_path().filename().string();
      dir = "\"$HOME\"/.cache/dtest/work/" + shell_quote(local_host() + "-" + local_user()) + "/" +
            shell_quote(base.empty() ? "root" : base);
    }
    // mkdir -p (a fork and an exec, ~1 ms) only when the directory is not there yet.
    std::string script = "d=" + dir + " && { cd \"$d\" 2>/dev/null || { mkdir -p \"$d\" && cd \"$d\"; }; } && exec";
    if (!env.empty()) {
      script += " env";
      for (const auto& [k, v] : env) script += " " + shell_quote(k + "=" + v);
    }
    if (nice_value != 0) script += " nice -n " + std::to_string(nice_value);
    return script;
  }

  std::string spec_;
  ssh_detail::Target target_;
  std::string where_;
  std::unique_ptr<Link> link_;
  std::shared_ptr<ChanState> state_;
  bool warm_ = false;
  int sock_ = -1;
  std::atomic<bool> closed_{false};
  std::mutex terminate_mu_;
  bool terminated_ = false;
  FrameDecoder decoder_;
};

}  // namespace

namespace ssh_internal {

void absolutize(ssh_detail::Target& t) {
  std::error_code ec;
  const auto cwd = std::filesystem::current_path(ec);
  if (ec) return;
  for (auto& id : t.identities) id = local_path(id, cwd);
  t.config_file = local_path(t.config_file, cwd);
  t.known_hosts = local_path(t.known_hosts, cwd);
}

// A session with the options applied (config file, then the target's
// explicit values), not connected; and the key of the connections it may
// share: everything that decides where it goes and how it authenticates.
Prepared prepare_session(const ssh_detail::Target& target, std::string& where) {
  Prepared p;
  p.session.reset(ssh_new());
  if (!p.session) throw Cause("ssh_new failed (out of memory?)");
  ssh_session s = p.session.get();
  auto err = [&] { return std::string(ssh_get_error(s)); };
  int verbosity = SSH_LOG_NOLOG;
  if (const char* v = std::getenv("DTEST_SSH_DEBUG"); v && *v) verbosity = std::atoi(v);
  ssh_options_set(s, SSH_OPTIONS_LOG_VERBOSITY, &verbosity);
  if (ssh_options_set(s, SSH_OPTIONS_HOST, target.host.c_str()) != 0) throw Cause("bad host: " + err());
  long timeout = 30;
  ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
  // Frames are small and latency-bound: without TCP_NODELAY a frame waits
  // for the ACK of the previous packet, which sshd delays by up to 40 ms.
  int nodelay = 1;
  ssh_options_set(s, SSH_OPTIONS_NODELAY, &nodelay);
  // The config may rewrite the host (HostName), port, user, identities,
  // known hosts; what the xspec says explicitly is applied afterwards and
  // wins, as on OpenSSH's command line.
  if (!target.config_file.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(target.config_file, ec))
      throw Cause("ssh config file not found: " + target.config_file);
    if (ssh_options_parse_config(s, target.config_file.c_str()) != 0)
      throw Cause("cannot parse ssh config " + target.config_file + ": " + err());
  } else if (ssh_options_parse_config(s, nullptr) != 0) {
    throw Cause("cannot parse ~/.ssh/config or /etc/ssh/ssh_config: " + err());
  }
  bool no = false;
  ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no);
  if (target.port) {
    unsigned port = static_cast<unsigned>(*target.port);
    ssh_options_set(s, SSH_OPTIONS_PORT, &port);
  }
  if (!target.user.empty()) ssh_options_set(s, SSH_OPTIONS_USER, target.user.c_str());
  for (const auto& id : target.identities) {
    std::error_code ec;
    if (!std::filesystem::exists(id, ec)) throw Cause("identity file not found: " + id);
    ssh_options_set(s, SSH_OPTIONS_ADD_IDENTITY, id.c_str());
  }
  std::string kh = target.known_hosts;
  if (kh.empty())
    if (const char* e = std::getenv("DTEST_SSH_KNOWN_HOSTS"); e && *e) kh = e;
  if (!kh.empty()) ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, kh.c_str());
  if (target.connect_timeout) {
    long t = *target.connect_timeout;
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &t);
  }
  const char* an = std::getenv("DTEST_SSH_ACCEPT_NEW");
  p.accept_new = target.strict_host_key_checking == "accept-new" || target.strict_host_key_checking == "no" ||
                 (an && std::string(an) == "1");

  // Names for messages: what libssh will actually use.
  char* v = nullptr;
  if (ssh_options_get(s, SSH_OPTIONS_HOST, &v) == SSH_OK && v) {
    p.host = v;
    ssh_string_free_char(v);
  } else {
    p.host = target.host;
  }
  v = nullptr;
  if (ssh_options_get(s, SSH_OPTIONS_USER, &v) == SSH_OK && v) {
    p.user = v;
    ssh_string_free_char(v);
  } else {
    p.user = local_user();
  }
  std::string kh_in_effect = kh;
  v = nullptr;
  if (ssh_options_get(s, SSH_OPTIONS_KNOWNHOSTS, &v) == SSH_OK && v) {
    kh_in_effect = v;
    ssh_string_free_char(v);
  }
  unsigned port = 22;
  ssh_options_get_port(s, &port);
  p.port = port;
  p.where = p.user + "@" + p.host + (p.port != 22 ? ":" + std::to_string(p.port) : "");
  where = p.where;
  // The name as written is part of the key: a config file may give two
  // aliases of one host different identities or options.
  std::string ids;
  for (const auto& id : target.identities) ids += id + '\x1e';
  const std::string parts[] = {p.user, p.host, std::to_string(p.port), target.host, target.config_file, ids,
                               kh_in_effect, p.accept_new ? "accept-new" : "strict",
                               std::to_string(target.connect_timeout.value_or(0))};
  for (const auto& part : parts) p.key += part + '\x1f';
  return p;
}

OpenResult open_shared(const ssh_detail::Target& target, const OpenRequest& req, int ctl_fd, Prepared* first) {
  // A refusal (the connection has as many sessions as the server allows)
  // moves on to another connection; a fresh connection that refuses fails.
  // A warm connection found dead moves on too (twice at most).
  int stale = 0;
  for (int attempt = 0;; ++attempt) {
    std::string where;
    Prepared p = first && attempt == 0 ? std::move(*first) : prepare_session(target, where);
    auto cmd = std::make_shared<OpenCmd>();
    cmd->req = req;
    cmd->ctl_fd = ctl_fd;
    auto conn = submit_open(p, target, cmd);
    conn->wait_answer(cmd);
    OpenResult r;
    if (cmd->status == OpenCmd::Status::ok) {
      r.ok = true;
      r.fd = cmd->fd;
      r.state = cmd->state;
      r.link = std::make_unique<ConnLink>(std::move(conn), cmd->state);
      return r;
    }
    if (cmd->status == OpenCmd::Status::refused && attempt < 63) continue;
    if (cmd->status == OpenCmd::Status::stale && ++stale <= 2) continue;
    r.cause = cmd->cause;
    return r;
  }
}

void hold_connections(int notify_fd) {
  g_notify_fd = notify_fd;
  g_persist = true;
}

PoolStats pool_stats() {
  PoolStats st;
  std::lock_guard lock(registry_mu());
  st.created = g_created;
  for (const auto& c : held()) {
    if (c->usable()) ++st.usable;
    st.channels += c->channels();
  }
  return st;
}

void release_connections() {
  std::vector<std::shared_ptr<Connection>> v;
  {
    std::lock_guard lock(registry_mu());
    v.swap(held());
  }
  v.clear();  // each joins its pump (channels end, the session disconnects)
}

}  // namespace ssh_internal

std::unique_ptr<Gateway> open_ssh(const xspec::Spec& spec, const OpenOptions& opts) {
  return std::make_unique<SshGateway>(spec, opts);
}

}  // namespace dtest::gateway
