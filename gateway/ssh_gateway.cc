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

struct SessionDeleter {
  void operator()(ssh_session s) const {
    if (ssh_is_connected(s)) ssh_disconnect(s);
    ssh_free(s);
  }
};
using SessionPtr = std::unique_ptr<std::remove_pointer_t<ssh_session>, SessionDeleter>;

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

// A failure of one step, without the "ssh gateway 'SPEC' (where): " prefix
// (each gateway adds its own).
class Cause : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The server refused another session (channel) on a connection that has
// some already: OpenSSH's MaxSessions (default 10). The gateway retries on
// another connection to the same host.
class Refused : public Cause {
 public:
  using Cause::Cause;
};

// What a gateway and its connection's pump share about one agent channel.
struct ChanState {
  std::mutex mu;  // guards what follows
  std::condition_variable cv;
  bool done = false;  // the pump has let go of the channel; the socketpair end is closed
  std::optional<int> exit_status;
  std::string exit_signal;
  std::string err_tail;  // the agent's stderr, last 8 KiB
  std::string error;     // why the channel ended abnormally (connection lost ...)
  std::atomic<bool> stop{false};  // terminate(): the pump closes the channel
};

// A gateway's request for an agent channel, answered by the pump.
struct OpenCmd {
  // in
  std::string agent_path;
  bool explicit_agent = false;
  std::string script_prefix;  // "d=... && cd "$d" && exec [env ...] [nice -n N]"; the agent's path follows
  // out (under Connection::mu_)
  enum class Status { pending, ok, failed, refused } status = Status::pending;
  std::string cause;
  int fd = -1;  // the gateway's end of the socketpair
  std::shared_ptr<ChanState> state;
};

// A session with its options applied but not connected, and what identifies
// it for sharing.
struct Prepared {
  SessionPtr session;
  std::string host, user, where, key;
  unsigned port = 22;
  bool accept_new = false;
};

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
      queue_.push_back(c);
    }
    wake();
    return true;
  }

  bool usable() {
    std::lock_guard lock(mu_);
    return !closed_;
  }

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
      for (auto it = chans_.begin(); it != chans_.end();) {
        if (step(**it, buf.data(), buf.size())) {
          finish(**it);
          it = chans_.erase(it);
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
        if (queue_.empty()) {  // the last channel is gone: end the session
          closed_ = true;
          break;
        }
        continue;
      }

      std::vector<pollfd> pfds;
      pfds.push_back({wake_fd_, POLLIN, 0});
      pfds.push_back({ssh_get_fd(s), POLLIN, 0});
      for (const auto& c : chans_) {
        short events = 0;
        if (!c->sock_eof && c->to_chan.size() < kHigh) events |= POLLIN;
        if (!c->to_sock.empty()) events |= POLLOUT;
        if (events) pfds.push_back({c->fd, events, 0});
      }
      ::poll(pfds.data(), pfds.size(), 200);
      // Takes whatever arrived off the socket into the channels' buffers
      // (and runs the exit-status callbacks), also for channels nobody
      // reads right now (at EOF, or their gateway is slow).
      if (event) ssh_event_dopoll(event, 0);
      if (pfds[0].revents & POLLIN) {
        uint64_t n;
        [[maybe_unused]] ssize_t r = ::read(wake_fd_, &n, sizeof n);
      }
    }
    // Tear down: every channel left ends (the agent is asked to stop), every
    // open still queued fails, then the session is disconnected.
    for (auto& c : chans_) {
      if (!lost.empty() && c->error.empty()) c->error = lost;
      finish(*c);
    }
    chans_.clear();
    if (event) {
      ssh_event_remove_session(event, s);
      ssh_event_free(event);
    }
    fail_connection(lost.empty() ? "the connection was shut down" : lost);
    session_.reset();
  }

  // Marks the connection ended and fails every queued open with `cause`.
  void fail_connection(const std::string& cause) {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (auto& c : queue_) {
      c->status = OpenCmd::Status::failed;
      c->cause = cause;
    }
    queue_.clear();
    cv_.notify_all();
  }

  // One round of I/O between a channel and its socketpair; true when the
  // channel is finished (remote closed and all delivered, stop, error).
  bool step(Chan& c, char* buf, std::size_t bufsize) {
    if (c.state->stop) return true;
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
    if (c.out_eof && !c.out_eof_at) c.out_eof_at = Clock::now();
    if (c.out_eof && c.to_sock.empty() && !c.sock_shut &&
        (has_exit || ssh_channel_is_closed(ch) || Clock::now() - *c.out_eof_at > std::chrono::seconds(2))) {
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
    // Done when the remote closed the channel and everything is delivered.
    return (ssh_channel_is_closed(ch) || (c.out_eof && c.err_eof && has_exit)) && c.to_sock.empty();
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
    std::lock_guard lock(c.state->mu);
    if (!c.error.empty() && !stop) c.state->error = c.error;
    c.state->done = true;
    c.state->cv.notify_all();
  }

  // ---------------------------------------------------------------------
  // opening a channel (in the pump)

  void open_channel(OpenCmd& cmd) {
    try {
      const std::string remote_agent = bootstrap(cmd.agent_path, cmd.explicit_agent);
      auto c = std::make_unique<Chan>();
      c->state = std::make_shared<ChanState>();
      c->ch = new_channel();
      ssh_callbacks_init(&c->callbacks);
      c->callbacks.userdata = c->state.get();
      c->callbacks.channel_exit_status_function = [](ssh_session, ssh_channel, int status, void* st) {
        auto* state = static_cast<ChanState*>(st);
        std::lock_guard lock(state->mu);
        state->exit_status = status;
      };
      c->callbacks.channel_exit_signal_function = [](ssh_session, ssh_channel, const char* sig, int, const char*,
                                                     const char*, void* st) {
        auto* state = static_cast<ChanState*>(st);
        std::lock_guard lock(state->mu);
        state->exit_signal = sig ? sig : "?";
      };
      ssh_set_channel_callbacks(c->ch.get(), &c->callbacks);
      const std::string cmdline = "/bin/sh -c " + shell_quote(cmd.script_prefix + " " + remote_agent);
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
      std::lock_guard lock(mu_);
      cmd.status = OpenCmd::Status::ok;
      cmd.fd = sv[0];
      cmd.state = c->state;
      chans_.push_back(std::move(c));
    } catch (const Refused& e) {
      std::lock_guard lock(mu_);
      // Refused on a connection that has had sessions (the agents' channels,
      // or the bootstrap's, whose slots sshd may not have freed yet): try
      // another connection. Only a first session refused is an error.
      cmd.status = sessions_opened_ == 0 ? OpenCmd::Status::failed : OpenCmd::Status::refused;
      cmd.cause = e.what();
    } catch (const std::exception& e) {
      std::lock_guard lock(mu_);
      cmd.status = OpenCmd::Status::failed;
      cmd.cause = e.what();
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
  std::string bootstrap(const std::string& agent_path, bool explicit_agent) {
    const std::string hash = ssh_detail::file_hash(agent_path);
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
    verify_host_key();
    authenticate();
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
// takes over `p.session` and starts connecting).
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
    }
  }
  return conn;
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
    where_ = target_.host;

    const bool explicit_agent = spec.get("agent").has_value();
    const std::string agent_path = spec.get("agent").value_or(opts.default_agent);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(agent_path, ec))
      fail("agent not found: " + agent_path + " (set the agent= key to a dtest-agent for the remote host)");
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
    const std::string script = agent_script(spec.get("chdir"), nice_value, env);

    // A refusal (the connection has as many sessions as the server allows)
    // moves on to another connection; a fresh connection that refuses fails.
    for (int attempt = 0;; ++attempt) {
      Prepared p = prepare();
      auto cmd = std::make_shared<OpenCmd>();
      cmd->agent_path = agent_path;
      cmd->explicit_agent = explicit_agent;
      cmd->script_prefix = script;
      auto conn = submit_open(p, target_, cmd);
      conn->wait_answer(cmd);
      if (cmd->status == OpenCmd::Status::ok) {
        conn_ = std::move(conn);
        sock_ = cmd->fd;
        state_ = cmd->state;
        return;
      }
      if (cmd->status != OpenCmd::Status::refused || attempt >= 63) fail(cmd->cause);
    }
  }

  ~SshGateway() override {
    terminate();
    if (sock_ >= 0) ::close(sock_);
    conn_.reset();  // the last gateway of a connection joins its pump
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
      std::lock_guard lock(state_->mu);
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
    state_->stop = true;
    conn_->wake();
    std::unique_lock l(state_->mu);
    state_->cv.wait(l, [&] { return state_->done; });
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
    std::string script = "d=" + dir + " && mkdir -p \"$d\" && cd \"$d\" && exec";
    if (!env.empty()) {
      script += " env";
      for (const auto& [k, v] : env) script += " " + shell_quote(k + "=" + v);
    }
    if (nice_value != 0) script += " nice -n " + std::to_string(nice_value);
    return script;
  }

  // A session with the options applied (config file, then the xspec's
  // explicit values), not connected; and the key of the connections it may
  // share: everything that decides where it goes and how it authenticates.
  Prepared prepare() {
    Prepared p;
    p.session.reset(ssh_new());
    if (!p.session) fail("ssh_new failed (out of memory?)");
    ssh_session s = p.session.get();
    auto err = [&] { return std::string(ssh_get_error(s)); };
    int verbosity = SSH_LOG_NOLOG;
    if (const char* v = std::getenv("DTEST_SSH_DEBUG"); v && *v) verbosity = std::atoi(v);
    ssh_options_set(s, SSH_OPTIONS_LOG_VERBOSITY, &verbosity);
    if (ssh_options_set(s, SSH_OPTIONS_HOST, target_.host.c_str()) != 0) fail("bad host: " + err());
    long timeout = 30;
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
    // The config may rewrite the host (HostName), port, user, identities,
    // known hosts; what the xspec says explicitly is applied afterwards and
    // wins, as on OpenSSH's command line.
    if (!target_.config_file.empty()) {
      std::error_code ec;
      if (!std::filesystem::exists(target_.config_file, ec)) fail("ssh config file not found: " + target_.config_file);
      if (ssh_options_parse_config(s, target_.config_file.c_str()) != 0)
        fail("cannot parse ssh config " + target_.config_file + ": " + err());
    } else if (ssh_options_parse_config(s, nullptr) != 0) {
      fail("cannot parse ~/.ssh/config or /etc/ssh/ssh_config: " + err());
    }
    bool no = false;
    ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no);
    if (target_.port) {
      unsigned port = static_cast<unsigned>(*target_.port);
      ssh_options_set(s, SSH_OPTIONS_PORT, &port);
    }
    if (!target_.user.empty()) ssh_options_set(s, SSH_OPTIONS_USER, target_.user.c_str());
    for (const auto& id : target_.identities) {
      std::error_code ec;
      if (!std::filesystem::exists(id, ec)) fail("identity file not found: " + id);
      ssh_options_set(s, SSH_OPTIONS_ADD_IDENTITY, id.c_str());
    }
    std::string kh = target_.known_hosts;
    if (kh.empty())
      if (const char* e = std::getenv("DTEST_SSH_KNOWN_HOSTS"); e && *e) kh = e;
    if (!kh.empty()) ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, kh.c_str());
    if (target_.connect_timeout) {
      long t = *target_.connect_timeout;
      ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &t);
    }
    const char* an = std::getenv("DTEST_SSH_ACCEPT_NEW");
    p.accept_new = target_.strict_host_key_checking == "accept-new" || target_.strict_host_key_checking == "no" ||
                   (an && std::string(an) == "1");

    // Names for messages: what libssh will actually use.
    char* v = nullptr;
    if (ssh_options_get(s, SSH_OPTIONS_HOST, &v) == SSH_OK && v) {
      p.host = v;
      ssh_string_free_char(v);
    } else {
      p.host = target_.host;
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
    where_ = p.where;
    // The name as written is part of the key: a config file may give two
    // aliases of one host different identities or options.
    std::string ids;
    for (const auto& id : target_.identities) ids += id + '\x1e';
    const std::string parts[] = {p.user, p.host, std::to_string(p.port), target_.host, target_.config_file, ids,
                                 kh_in_effect, p.accept_new ? "accept-new" : "strict",
                                 std::to_string(target_.connect_timeout.value_or(0))};
    for (const auto& part : parts) p.key += part + '\x1f';
    return p;
  }

  std::string spec_;
  ssh_detail::Target target_;
  std::string where_;
  std::shared_ptr<Connection> conn_;
  std::shared_ptr<ChanState> state_;
  int sock_ = -1;
  std::atomic<bool> closed_{false};
  std::mutex terminate_mu_;
  bool terminated_ = false;
  FrameDecoder decoder_;
};

}  // namespace

std::unique_ptr<Gateway> open_ssh(const xspec::Spec& spec, const OpenOptions& opts) {
  return std::make_unique<SshGateway>(spec, opts);
}

}  // namespace dtest::gateway
