// Challenge-response authentication for the socket gateway
// (`dtest-agent --listen`). The token never crosses the wire: each side
// proves it holds the token with an HMAC-SHA256 over both sides' random
// nonces. Byte layout: docs/socket.md.
//
// The message functions are pure (build/verify bytes); the two handshake
// functions drive them over a connected socket with a deadline.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dtest::auth {

inline constexpr std::string_view kMagic = "DTEST-AUTH 1\n";  // 13 bytes
inline constexpr std::string_view kClientLabel = "dtest-auth-v1";
inline constexpr std::string_view kServerLabel = "dtest-auth-v1-server";
inline constexpr std::size_t kNonceSize = 32;
inline constexpr std::size_t kMacSize = 32;
// server -> client: magic, server nonce
inline constexpr std::size_t kChallengeSize = kMagic.size() + kNonceSize;  // 45
// client -> server: magic, client nonce, client MAC
inline constexpr std::size_t kResponseSize = kMagic.size() + kNonceSize + kMacSize;  // 77
// server -> client: 'Y' + server MAC (accepted), or the single byte 'N'
inline constexpr std::size_t kVerdictSize = 1 + kMacSize;  // 33
inline constexpr char kAccept = 'Y';
inline constexpr char kReject = 'N';

using Nonce = std::array<std::uint8_t, kNonceSize>;
using Mac = std::array<std::uint8_t, kMacSize>;

// HMAC-SHA256 (OpenSSL libcrypto).
Mac hmac_sha256(std::string_view key, std::string_view data);
// 32 bytes from getrandom(2). Throws std::system_error.
Nonce random_nonce();

// --- pure message logic ---------------------------------------------------

// HMAC(token, "dtest-auth-v1" || server_nonce || client_nonce)
Mac client_mac(std::string_view token, const Nonce& server_nonce, const Nonce& client_nonce);
// HMAC(token, "dtest-auth-v1-server" || client_nonce || server_nonce)
Mac server_mac(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce);

std::string build_challenge(const Nonce& server_nonce);
// The server nonce of a complete challenge; nullopt if `bytes` is not one.
std::optional<Nonce> parse_challenge(std::string_view bytes);

std::string build_response(std::string_view token, const Nonce& server_nonce, const Nonce& client_nonce);

enum class Check { ok, garbage, truncated, bad_token };
struct ResponseCheck {
  Check result = Check::garbage;
  Nonce client_nonce{};  // valid when result == ok
  std::string reason;    // for the server's log line; empty when ok
};
// Server side: checks a client's response (constant-time MAC comparison).
ResponseCheck verify_response(std::string_view token, const Nonce& server_nonce, std::string_view bytes);

std::string build_accept(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce);
inline std::string build_reject() { return std::string(1, kReject); }

enum class Verdict { accepted, rejected, bad_proof, garbage };
// Client side: checks the server's verdict (constant-time MAC comparison).
Verdict verify_verdict(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce,
                       std::string_view bytes);

// True while `bytes` could still be the beginning of `kMagic`-prefixed input
// (used to drop garbage as soon as it shows).
bool magic_prefix_ok(std::string_view bytes);

// Up to 32 bytes of `bytes`, printable: "\n" escaped, others as \xNN.
std::string excerpt(std::string_view bytes);

// --- tokens ---------------------------------------------------------------

// Reads a token file: trailing whitespace (the newline of `echo tok > f`) is
// dropped. Throws std::runtime_error naming the file if it cannot be read, is
// larger than 64 KiB, or holds an empty token.
std::string read_token_file(const std::string& path);
// The master's token: $DTEST_TOKEN, else the file named by $DTEST_TOKEN_FILE;
// nullopt when neither is set. Throws like read_token_file.
std::optional<std::string> token_from_env();

// --- handshakes over a connected socket -----------------------------------

// A failed client handshake; what() says what happened, without naming the
// peer (the caller adds that).
class AuthError : public std::runtime_error {
 public:
  enum class Kind { rejected, bad_proof, not_dtest, timeout, closed, io };
  AuthError(Kind k, const std::string& what) : std::runtime_error(what), kind_(k) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// Server: sends the challenge, checks the response, sends the verdict.
// Returns nullopt on success, else the reason the peer was refused.
std::optional<std::string> server_handshake(int fd, std::string_view token, std::chrono::milliseconds timeout);
// Client: reads the challenge, answers, checks the server's proof. Throws
// AuthError. Reads exactly the handshake's bytes, so the protocol stream
// starts right after it.
void client_handshake(int fd, std::string_view token, std::chrono::milliseconds timeout);

}  // namespace dtest::auth
