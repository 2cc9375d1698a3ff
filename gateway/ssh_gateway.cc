#include "gateway/ssh_gateway.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
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

    explicit_agent_ = spec.get("agent").has_value();
    agent_path_ = spec.get("agent").value_or(opts.default_agent);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(agent_path_, ec))
      fail("agent not found: " + agent_path_ + " (set the agent= key to a dtest-agent for the remote host)");
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

    connect();
    verify_host_key();
    authenticate();
    const std::string remote_agent = bootstrap();
    start_agent(remote_agent, spec.get("chdir"), nice_value, env);
    start_pump();
  }

  ~SshGateway() override {
    terminate();
    if (sock_ >= 0) ::close(sock_);
    for (int fd : wake_)
      if (fd >= 0) ::close(fd);
  }

  void send(const Frame& f) override {
    if (closed_) fail_io("already closed");
    try {
      write_all(sock_, encode_frame(f));
    } catch (const std::system_error& e) {
      fail_io(std::string("the connection to the agent is gone (") + e.what() + ")" + exit_note());
    }
  }

  std::optional<Frame> receive() override {
    char buf[65536];
    for (;;) {
      if (auto f = decoder_.pop()) return f;
      ssize_t n = 0;
      try {
        n = read_some(sock_, buf, sizeof buf);
      } catch (const std::system_error& e) {
        fail_io(std::string("read: ") + e.what());
      }
      if (n == 0) {
        {
          std::lock_guard lock(mu_);
          if (!pump_error_.empty()) fail_io(pump_error_);
        }
        if (decoder_.buffered() > 0) throw ProtocolError("agent output ended inside a frame");
        return std::nullopt;
      }
      if (n > 0) decoder_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    }
  }

  void close() override {
    if (!closed_.exchange(true) && sock_ >= 0) ::shutdown(sock_, SHUT_WR);
  }

  void terminate() override {
    close();
    std::lock_guard lock(terminate_mu_);
    if (!pump_.joinable()) return;
    stop_ = true;
    wake();
    pump_.join();
  }

  std::string wait(double timeout_s) override {
    close();
    std::unique_lock lock(mu_);
    const bool ended = done_cv_.wait_for(lock, std::chrono::milliseconds(static_cast<long>(timeout_s * 1000)),
                                         [&] { return pump_done_; });
    std::string how;
    if (!ended) how = "killed after " + std::to_string(timeout_s) + " s";
    else if (exit_status_) how = describe_exit(*exit_status_);
    else if (!exit_signal_.empty()) how = "signal " + exit_signal_;
    else how = pump_error_.empty() ? "connection closed" : pump_error_;
    lock.unlock();
    terminate();
    return how;
  }

  std::string diagnostics() override {
    std::lock_guard lock(mu_);
    std::string d = err_tail_;
    if (exit_status_ && *exit_status_ != 0) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] the remote agent command ended with " + describe_exit(*exit_status_) + "\n";
    } else if (!exit_signal_.empty()) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] the remote agent was killed by signal " + exit_signal_ + "\n";
    }
    if (!pump_error_.empty()) {
      if (!d.empty() && d.back() != '\n') d += '\n';
      d += "[ssh " + where_ + "] " + pump_error_ + "\n";
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
  [[noreturn]] void fail_io(const std::string& cause) const { fail(cause); }

  std::string exit_note() {
    std::lock_guard lock(mu_);
    if (exit_status_) return "; remote agent ended with " + describe_exit(*exit_status_);
    return "";
  }

  std::string ssh_error() const { return ssh_get_error(session_.get()); }

  // ---------------------------------------------------------------------
  // connection

  void connect() {
    session_.reset(ssh_new());
    if (!session_) fail("ssh_new failed (out of memory?)");
    ssh_session s = session_.get();
    int verbosity = SSH_LOG_NOLOG;
    if (const char* v = std::getenv("DTEST_SSH_DEBUG"); v && *v) verbosity = std::atoi(v);
    ssh_options_set(s, SSH_OPTIONS_LOG_VERBOSITY, &verbosity);
    if (ssh_options_set(s, SSH_OPTIONS_HOST, target_.host.c_str()) != 0) fail("bad host: " + ssh_error());
    long timeout = 30;
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
    // The config may rewrite the host (HostName), port, user, identities,
    // known hosts; what the xspec says explicitly is applied afterwards and
    // wins, as on OpenSSH's command line.
    if (!target_.config_file.empty()) {
      std::error_code ec;
      if (!std::filesystem::exists(target_.config_file, ec)) fail("ssh config file not found: " + target_.config_file);
      if (ssh_options_parse_config(s, target_.config_file.c_str()) != 0)
        fail("cannot parse ssh config " + target_.config_file + ": " + ssh_error());
    } else if (ssh_options_parse_config(s, nullptr) != 0) {
      fail("cannot parse ~/.ssh/config or /etc/ssh/ssh_config: " + ssh_error());
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

    // Names for messages: what libssh will actually use.
    char* v = nullptr;
    if (ssh_options_get(s, SSH_OPTIONS_HOST, &v) == SSH_OK && v) {
      host_ = v;
      ssh_string_free_char(v);
    } else {
      host_ = target_.host;
    }
    v = nullptr;
    if (ssh_options_get(s, SSH_OPTIONS_USER, &v) == SSH_OK && v) {
      user_ = v;
      ssh_string_free_char(v);
    } else {
      user_ = local_user();
    }
    unsigned port = 22;
    ssh_options_get_port(s, &port);
    port_ = port;
    where_ = user_ + "@" + host_ + (port_ != 22 ? ":" + std::to_string(port_) : "");

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
      fail(cause + e);
    }
    detect_dead_links(ssh_get_fd(s));
  }

  // A cut link sends no RST: without this a read would wait for ever. TCP
  // keepalive probes an idle connection (5 s, then every 2 s, 3 misses) and
  // TCP_USER_TIMEOUT bounds unacknowledged data, so a dead link surfaces as
  // a socket error within about 15 s and the gateway's tests are requeued.
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
    if (ssh_get_server_publickey(s, &raw) != SSH_OK) fail("no host key from the server: " + ssh_error());
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
    const bool accept_new = target_.strict_host_key_checking == "accept-new" ||
                            target_.strict_host_key_checking == "no" ||
                            (std::getenv("DTEST_SSH_ACCEPT_NEW") && std::string(std::getenv("DTEST_SSH_ACCEPT_NEW")) == "1");
    switch (ssh_session_is_known_server(s)) {
      case SSH_KNOWN_HOSTS_OK:
        return;
      case SSH_KNOWN_HOSTS_CHANGED:
        fail("HOST KEY CHANGED: " + entry + " now presents " + shown + ", which does not match its entry in " +
             kh_file + ". Someone may be intercepting the connection, or the host key was replaced. Refusing "
             "to connect. If the change is expected, remove the old entry (ssh-keygen -R '" + entry + "' -f " +
             kh_file + ") and connect again.");
      case SSH_KNOWN_HOSTS_OTHER:
        fail("HOST KEY CHANGED: " + entry + " presents " + shown + " but " + kh_file +
             " lists a key of another type for it. Refusing to connect. If the change is expected, remove "
             "the old entry (ssh-keygen -R '" + entry + "' -f " + kh_file + ") and connect again.");
      case SSH_KNOWN_HOSTS_NOT_FOUND:
      case SSH_KNOWN_HOSTS_UNKNOWN:
        if (accept_new) {
          if (ssh_session_update_known_hosts(s) != SSH_OK)
            fail("cannot add " + entry + " to " + kh_file + ": " + ssh_error());
          return;
        }
        fail("unknown host: " + entry + " presents " + shown + ", and it is not in " + kh_file +
             ". Refusing to connect. To accept it, check the fingerprint and either connect once with "
             "ssh (ssh " + (port_ != 22 ? "-p " + std::to_string(port_) + " " : std::string()) + user_ + "@" +
             host_ + "), or set DTEST_SSH_ACCEPT_NEW=1 (like StrictHostKeyChecking=accept-new) to add it to " +
             kh_file + " on first use.");
      case SSH_KNOWN_HOSTS_ERROR:
      default:
        fail("cannot check the host key against " + kh_file + ": " + ssh_error());
    }
  }

  void authenticate() {
    ssh_session s = session_.get();
    int rc = ssh_userauth_none(s, nullptr);
    if (rc == SSH_AUTH_SUCCESS) return;
    if (rc == SSH_AUTH_ERROR) fail("authentication failed: " + ssh_error());
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
      if (rc == SSH_AUTH_ERROR) fail("authentication failed for user " + user_ + ": " + ssh_error());
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
    fail("authentication failed for user " + user_ + " (server accepts: " + (accepts.empty() ? "?" : accepts) +
         "; tried: " + tried + "; dtest does not prompt for passwords or passphrases: use ssh-agent or an "
         "unencrypted key)");
  }

  // ---------------------------------------------------------------------
  // bootstrap

  // Runs `script` under /bin/sh on a fresh channel, feeding `input` (if any)
  // to its stdin; returns its status and output.
  CommandResult run(const std::string& script, const std::string& input_file = "") {
    ssh_session s = session_.get();
    ChannelPtr ch(ssh_channel_new(s));
    if (!ch) fail("cannot create a channel: " + ssh_error());
    if (ssh_channel_open_session(ch.get()) != SSH_OK) fail("cannot open a channel: " + ssh_error());
    const std::string cmd = "/bin/sh -c " + shell_quote(script);
    if (ssh_channel_request_exec(ch.get(), cmd.c_str()) != SSH_OK)
      fail("remote exec failed (" + cmd + "): " + ssh_error());
    if (!input_file.empty()) {
      std::ifstream in(input_file, std::ios::binary);
      if (!in) fail("cannot read " + input_file);
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

  // Makes sure the remote has the agent; returns the remote shell expression
  // of its path.
  std::string bootstrap() {
    const std::string hash = ssh_detail::file_hash(agent_path_);
    const std::string rel = ".cache/dtest/agent-" + hash;
    const std::string path = "\"$HOME\"/" + rel;
    const CommandResult probe = run("uname -sm; if [ -x " + path + " ]; then echo present; else echo missing; fi");
    if (probe.status != 0)
      fail("the bootstrap probe failed on the remote (" + std::to_string(probe.status) + "): " + probe.err);
    const auto nl = probe.out.find('\n');
    const std::string remote_uname = probe.out.substr(0, nl);
    const bool present = probe.out.find("\npresent") != std::string::npos;
    {
      std::lock_guard lock(mu_);
      remote_uname_ = remote_uname;
    }
    if (!explicit_agent_ && remote_uname != local_uname())
      fail("the remote is " + remote_uname + " but the local dtest-agent (" + agent_path_ + ") is built for " +
           local_uname() + "; give a dtest-agent built for " + remote_uname +
           " with the agent=PATH key (e.g. --tx 'ssh=HOST//agent=/path/to/dtest-agent-" + remote_uname + "')");
    if (present) return path;
    std::error_code ec;
    const auto size = std::filesystem::file_size(agent_path_, ec);
    if (ec) fail("cannot read agent " + agent_path_ + ": " + ec.message());
    const std::string upload =
        "set -e; mkdir -p \"$HOME\"/.cache/dtest; t=\"$HOME\"/" + rel + ".tmp.$$; "
        "trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; "
        "n=$(wc -c < \"$t\"); if [ \"$n\" -ne " + std::to_string(size) + " ]; then "
        "echo \"upload truncated: $n of " + std::to_string(size) + " bytes\" >&2; exit 1; fi; "
        "chmod 755 \"$t\"; mv -f \"$t\" " + path + "; trap - EXIT";
    const CommandResult up = run(upload, agent_path_);
    if (up.status != 0)
      fail("uploading the agent to ~/" + rel + " failed (exit status " + std::to_string(up.status) + "): " +
           up.err);
    return path;
  }

  void start_agent(const std::string& remote_agent, const std::optional<std::string>& chdir, int nice_value,
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
    script += " " + remote_agent;
    ssh_session s = session_.get();
    channel_.reset(ssh_channel_new(s));
    if (!channel_) fail("cannot create a channel: " + ssh_error());
    if (ssh_channel_open_session(channel_.get()) != SSH_OK) fail("cannot open a channel: " + ssh_error());
    ssh_callbacks_init(&callbacks_);
    callbacks_.userdata = this;
    callbacks_.channel_exit_status_function = [](ssh_session, ssh_channel, int status, void* self) {
      auto* g = static_cast<SshGateway*>(self);
      std::lock_guard lock(g->mu_);
      g->exit_status_ = status;
    };
    callbacks_.channel_exit_signal_function = [](ssh_session, ssh_channel, const char* sig, int, const char*,
                                                 const char*, void* self) {
      auto* g = static_cast<SshGateway*>(self);
      std::lock_guard lock(g->mu_);
      g->exit_signal_ = sig ? sig : "?";
    };
    ssh_set_channel_callbacks(channel_.get(), &callbacks_);
    const std::string cmd = "/bin/sh -c " + shell_quote(script);
    if (ssh_channel_request_exec(channel_.get(), cmd.c_str()) != SSH_OK)
      fail("remote exec failed (" + cmd + "): " + ssh_error());
  }

  // ---------------------------------------------------------------------
  // pump: channel <-> socketpair

  void start_pump() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      fail(std::string("socketpair: ") + std::strerror(errno));
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
      ::close(sv[0]);
      ::close(sv[1]);
      fail(std::string("pipe: ") + std::strerror(errno));
    }
    sock_ = sv[0];
    set_nonblocking(sv[1], true);
    pump_ = std::thread([this, fd = sv[1]] { pump(fd); });
  }

  void wake() {
    const char c = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_[1], &c, 1);
  }

  void append_stderr(const char* p, std::size_t n) {
    std::lock_guard lock(mu_);
    err_tail_.append(p, n);
    if (err_tail_.size() > 8192) err_tail_.erase(0, err_tail_.size() - 8192);
  }

  void pump(int fd) {
    static constexpr std::size_t kHigh = 1 << 20;
    ssh_session s = session_.get();
    ssh_channel ch = channel_.get();
    std::string to_chan, to_sock;
    bool sock_eof = false, eof_sent = false, out_eof = false, err_eof = false, sock_shut = false;
    std::string error;
    char buf[65536];
    // After the channel's EOF nothing reads the channel any more, but the
    // exit status and the close still have to be taken off the socket.
    ssh_event event = ssh_event_new();
    if (event) ssh_event_add_session(event, s);
    while (!stop_) {
      // channel -> to_sock, stderr -> tail
      if (!out_eof && to_sock.size() < kHigh) {
        for (;;) {
          const int n = ssh_channel_read_nonblocking(ch, buf, sizeof buf, 0);
          if (n > 0) {
            to_sock.append(buf, static_cast<std::size_t>(n));
            if (to_sock.size() >= kHigh) break;
            continue;
          }
          if (n == SSH_EOF) out_eof = true;
          else if (n < 0) error = "connection lost: " + ssh_error();
          break;
        }
      }
      if (!err_eof && error.empty()) {
        for (;;) {
          const int n = ssh_channel_read_nonblocking(ch, buf, sizeof buf, 1);
          if (n > 0) {
            append_stderr(buf, static_cast<std::size_t>(n));
            continue;
          }
          if (n == SSH_EOF) err_eof = true;
          else if (n < 0) error = "connection lost: " + ssh_error();
          break;
        }
      }
      if (!error.empty()) break;
      // to_sock -> socketpair
      while (!to_sock.empty()) {
        const ssize_t w = ::send(fd, to_sock.data(), to_sock.size(), MSG_NOSIGNAL);
        if (w > 0) {
          to_sock.erase(0, static_cast<std::size_t>(w));
          continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        to_sock.clear();  // the gateway's side is gone: drop what is left
        break;
      }
      if (out_eof && to_sock.empty() && !sock_shut) {
        ::shutdown(fd, SHUT_WR);
        sock_shut = true;
      }
      // socketpair -> to_chan
      while (!sock_eof && to_chan.size() < kHigh) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n > 0) {
          to_chan.append(buf, static_cast<std::size_t>(n));
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        sock_eof = true;  // EOF or error: the master closed its side
      }
      // to_chan -> channel, never more than the window (a blocking write
      // waiting for window space would stop us reading, and the agent may be
      // blocked writing to us)
      while (!to_chan.empty() && ssh_channel_is_open(ch)) {
        const uint32_t window = ssh_channel_window_size(ch);
        if (window == 0) break;
        const uint32_t len = static_cast<uint32_t>(std::min<std::size_t>({to_chan.size(), window, 32768}));
        const int w = ssh_channel_write(ch, to_chan.data(), len);
        if (w < 0) {
          error = "connection lost while sending: " + ssh_error();
          break;
        }
        to_chan.erase(0, static_cast<std::size_t>(w));
        if (w == 0) break;
      }
      if (!error.empty()) break;
      if (!to_chan.empty() && !ssh_channel_is_open(ch)) to_chan.clear();
      if (sock_eof && to_chan.empty() && !eof_sent && ssh_channel_is_open(ch)) {
        ssh_channel_send_eof(ch);
        eof_sent = true;
      }
      // Done when the remote closed the channel and everything is delivered.
      if ((ssh_channel_is_closed(ch) || (out_eof && err_eof && has_exit())) && to_sock.empty()) break;
      if (!ssh_is_connected(s)) {
        error = "connection lost: " + ssh_error();
        break;
      }

      pollfd pfds[3];
      nfds_t n = 0;
      pfds[n++] = {wake_[0], POLLIN, 0};
      short sock_events = 0;
      if (!sock_eof && to_chan.size() < kHigh) sock_events |= POLLIN;
      if (!to_sock.empty()) sock_events |= POLLOUT;
      if (sock_events) pfds[n++] = {fd, sock_events, 0};
      if (to_sock.size() < kHigh) pfds[n++] = {ssh_get_fd(s), POLLIN, 0};
      ::poll(pfds, n, 200);
      if (out_eof && err_eof && event) ssh_event_dopoll(event, 0);
      if (pfds[0].revents & POLLIN) {
        char drain[64];
        while (::read(wake_[0], drain, sizeof drain) > 0) {
        }
      }
    }
    // Tear down. On stop, ask the agent to stop (it also stops on EOF), then
    // close the channel and the connection.
    if (stop_ && ssh_channel_is_open(ch)) {
      if (!eof_sent) ssh_channel_send_eof(ch);
      ssh_channel_request_send_signal(ch, "TERM");
    }
    if (event) {
      ssh_event_remove_session(event, s);
      ssh_event_free(event);
    }
    channel_.reset();
    session_.reset();
    ::close(fd);  // receive() sees EOF
    std::lock_guard lock(mu_);
    if (!error.empty() && !stop_) pump_error_ = error;
    pump_done_ = true;
    done_cv_.notify_all();
  }

  bool has_exit() {
    std::lock_guard lock(mu_);
    return exit_status_.has_value() || !exit_signal_.empty();
  }

  std::string spec_;
  ssh_detail::Target target_;
  std::string where_, host_, user_;
  unsigned port_ = 22;
  bool explicit_agent_ = false;
  std::string agent_path_;
  SessionPtr session_;
  ChannelPtr channel_;
  ssh_channel_callbacks_struct callbacks_{};

  int sock_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> closed_{false};
  std::atomic<bool> stop_{false};
  std::thread pump_;
  std::mutex terminate_mu_;
  FrameDecoder decoder_;

  std::mutex mu_;  // guards what follows
  std::condition_variable done_cv_;
  bool pump_done_ = false;
  std::optional<int> exit_status_;
  std::string exit_signal_;
  std::string err_tail_;
  std::string pump_error_;
  std::string remote_uname_;
};

}  // namespace

std::unique_ptr<Gateway> open_ssh(const xspec::Spec& spec, const OpenOptions& opts) {
  return std::make_unique<SshGateway>(spec, opts);
}

}  // namespace dtest::gateway
