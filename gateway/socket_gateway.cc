#include "gateway/socket_gateway.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/auth.h"

namespace dtest::gateway {

namespace {

using Clock = std::chrono::steady_clock;

constexpr double kDefaultConnectTimeout = 10.0;  // seconds; $DTEST_CONNECT_TIMEOUT overrides
constexpr auto kHandshakeTimeout = std::chrono::seconds(10);

double connect_timeout() {
  if (const char* e = std::getenv("DTEST_CONNECT_TIMEOUT"); e && *e) {
    char* end = nullptr;
    const double v = std::strtod(e, &end);
    if (end && *end == '\0' && v > 0) return v;
  }
  return kDefaultConnectTimeout;
}

std::string fmt_seconds(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%g s", s);
  return b;
}

// "host:port" or "[v6]:port" -> host (brackets removed), port.
std::pair<std::string, std::string> split_host_port(const std::string& v) {
  if (!v.empty() && v.front() == '[') {
    const auto close = v.find("]:");
    if (close != std::string::npos) return {v.substr(1, close - 1), v.substr(close + 2)};
  }
  const auto colon = v.rfind(':');
  if (colon == std::string::npos) return {v, ""};
  return {v.substr(0, colon), v.substr(colon + 1)};
}

class SocketGateway final : public Gateway {
 public:
  explicit SocketGateway(const xspec::Spec& spec) : spec_(spec.original) {
    const auto value = spec.get("socket");
    if (!value) fail("needs host:port");
    where_ = *value;
    std::optional<std::string> token;
    try {
      token = auth::token_from_env();
    } catch (const std::exception& e) {
      fail(e.what());
    }
    if (!token)
      fail("no token configured: set DTEST_TOKEN, or DTEST_TOKEN_FILE to a file holding it (the token "
           "`dtest-agent --listen` was started with)");
    fd_ = connect_to(where_);
    try {
      auth::client_handshake(fd_, *token, kHandshakeTimeout);
    } catch (const auth::AuthError& e) {
      ::close(fd_);
      fd_ = -1;
      using K = auth::AuthError::Kind;
      switch (e.kind()) {
        case K::rejected:  // "rejected the token[ (how)]"
          fail("the agent at " + where_ + " " + e.what() +
               "; give dtest the agent's token in DTEST_TOKEN or DTEST_TOKEN_FILE");
        case K::bad_proof:  // "failed to prove it holds the token (...)"
          fail("the agent at " + where_ + " " + e.what());
        case K::not_dtest:  // "is not a dtest agent: ..." / "answered ... with garbage"
          fail(where_ + " " + e.what());
        case K::timeout:
        case K::closed:
        case K::io:
          break;
      }
      fail("authenticating with the agent at " + where_ + " failed: " + e.what());
    } catch (const std::exception& e) {
      ::close(fd_);
      fd_ = -1;
      fail("authenticating with the agent at " + where_ + " failed: " + e.what());
    }
  }

  ~SocketGateway() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void send(const Frame& f) override {
    std::string_view data;
    const std::string bytes = encode_frame(f);
    data = bytes;
    if (fd_ < 0 || write_closed_) fail("already closed");
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(std::string("the agent at ") + where_ + " stopped reading (" + std::strerror(errno) + ")");
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  std::optional<Frame> receive() override {
    struct MarkEnded {
      SocketGateway* g;
      bool armed = true;
      ~MarkEnded() {
        if (armed) g->mark_ended();
      }
    } guard{this};
    try {
      if (auto f = read_frame(fd_, decoder_)) {
        guard.armed = false;
        return f;
      }
    } catch (const std::system_error& e) {
      if (terminated_) return std::nullopt;
      fail(std::string("connection to the agent at ") + where_ + " failed: " + e.code().message());
    }
    if (decoder_.buffered() > 0 && !terminated_) throw ProtocolError("agent output ended inside a frame");
    return std::nullopt;
  }

  void close() override {
    std::lock_guard lock(mu_);
    if (fd_ >= 0 && !write_closed_) ::shutdown(fd_, SHUT_WR);
    write_closed_ = true;
  }

  // Shuts the socket down both ways, which wakes a reader blocked in recv();
  // the descriptor itself is closed by the destructor, once no thread can be
  // using it (closing it here would race with that read).
  void terminate() override {
    std::lock_guard lock(mu_);
    terminated_ = true;
    write_closed_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }

  std::string wait(double timeout_s) override {
    close();
    std::unique_lock lock(mu_);
    const bool done = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return ended_; });
    lock.unlock();
    if (done) return "connection closed";
    terminate();
    return "disconnected after " + fmt_seconds(timeout_s) + " without the agent closing";
  }

  std::string diagnostics() override { return ""; }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw GatewayError("socket gateway '" + spec_ + "': " + why);
  }

  void mark_ended() {
    {
      std::lock_guard lock(mu_);
      ended_ = true;
    }
    cv_.notify_all();
  }

  int connect_to(const std::string& hostport) {
    const auto [host, port] = split_host_port(hostport);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0 || !res) {
      const std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
      fail("cannot resolve host '" + host + "': " + why);
    }
    const double timeout = connect_timeout();
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(timeout));
    int last_err = 0;
    bool timed_out = false;
    int fd = -1;
    for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
      const int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
      if (s < 0) {
        last_err = errno;
        continue;
      }
      int err = 0;
      if (::connect(s, ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
          err = 0;
          for (;;) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            if (left <= 0) {
              err = ETIMEDOUT;
              timed_out = true;
              break;
            }
            pollfd p{s, POLLOUT, 0};
            const int pr = ::poll(&p, 1, static_cast<int>(left));
            if (pr < 0 && errno == EINTR) continue;
            if (pr < 0) {
              err = errno;
              break;
            }
            if (pr == 0) continue;
            socklen_t len = sizeof err;
            ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            break;
          }
        }
      }
      if (err != 0) {
        last_err = err;
        ::close(s);
        if (timed_out) break;
        continue;
      }
      fd = s;
    }
    ::freeaddrinfo(res);
    if (fd < 0) {
      if (timed_out) fail("connecting to " + hostport + " timed out after " + fmt_seconds(timeout));
      if (last_err == ECONNREFUSED)
        fail("connection refused by " + hostport + " (is `dtest-agent --listen " + hostport + "` running there?)");
      fail("cannot connect to " + hostport + ": " + std::strerror(last_err));
    }
    const int fl = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return fd;
  }

  std::string spec_;
  std::string where_;
  int fd_ = -1;
  FrameDecoder decoder_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> write_closed_{false};
  bool ended_ = false;
  std::atomic<bool> terminated_{false};
};

}  // namespace

std::unique_ptr<Gateway> open_socket(const xspec::Spec& spec, const OpenOptions&) {
  return std::make_unique<SocketGateway>(spec);
}

}  // namespace dtest::gateway
