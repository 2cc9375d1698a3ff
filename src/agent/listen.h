// `dtest-agent --listen HOST:PORT`: a TCP server that runs one agent per
// authenticated connection (execnet's socketserver, with a token). See
// docs/socket.md.
#pragma once

#include <netinet/in.h>
#include <optional>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace dtest::listen {

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// Parses "IPv4:PORT", "[IPv6]:PORT" or "localhost:PORT" (= 127.0.0.1),
// without any name lookup (the agent is static: no NSS). Port 0 lets the
// kernel choose. On error returns nullopt and sets `error`.
std::optional<Endpoint> parse_endpoint(std::string_view text, std::string& error);
// "127.0.0.1:8888", "[::1]:8888".
std::string format_address(const sockaddr* sa);

struct Options {
  std::string address;    // HOST:PORT
  std::string token;      // non-empty
  std::string port_file;  // if set, the bound port is written there (atomically)
};

// Serves until SIGTERM/SIGINT/SIGHUP; returns the exit code (4 for a bad
// address, 3 when it cannot listen, 0 after a signal).
int serve(const Options& opts);

}  // namespace dtest::listen
