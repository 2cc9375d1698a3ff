#include "common/auth.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <system_error>

// SHA-256 through libcrypto's low-level interface: the EVP/HMAC interfaces
// pull OpenSSL's provider, config-file and DSO machinery (dlopen,
// getaddrinfo) into the static agent and read openssl.cnf at run time; the
// low-level digest is self-contained. It is deprecated in OpenSSL 3 but
// still exported.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

namespace dtest::auth {

namespace {

using Clock = std::chrono::steady_clock;

std::string_view view(const std::array<std::uint8_t, 32>& a) {
  return {reinterpret_cast<const char*>(a.data()), a.size()};
}

bool equal_ct(const void* a, const void* b, std::size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

Mac labelled_mac(std::string_view token, std::string_view label, const Nonce& first, const Nonce& second) {
  std::string msg;
  msg.reserve(label.size() + 2 * kNonceSize);
  msg.append(label);
  msg.append(view(first));
  msg.append(view(second));
  return hmac_sha256(token, msg);
}

enum class End { full, eof, timeout, garbage, error };

struct Read {
  std::string data;
  End end = End::full;
  int err = 0;
};

// Reads exactly `n` bytes (never more) before `deadline`. With
// `check_magic`, stops as soon as the bytes stop matching kMagic.
Read read_exact(int fd, std::size_t n, Clock::time_point deadline, bool check_magic) {
  Read r;
  char buf[128];
  while (r.data.size() < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      r.end = End::timeout;
      return r;
    }
    pollfd p{fd, POLLIN, 0};
    const int pr = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (pr < 0) {
      if (errno == EINTR) continue;
      r.end = End::error;
      r.err = errno;
      return r;
    }
    if (pr == 0) continue;
    const std::size_t want = std::min(sizeof buf, n - r.data.size());
    const ssize_t got = ::recv(fd, buf, want, 0);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      r.end = End::error;
      r.err = errno;
      return r;
    }
    if (got == 0) {
      r.end = End::eof;
      return r;
    }
    r.data.append(buf, static_cast<std::size_t>(got));
    if (check_magic && !magic_prefix_ok(r.data)) {
      r.end = End::garbage;
      return r;
    }
  }
  return r;
}

// 0 on success, else errno.
int send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return 0;
}

std::string secs(std::chrono::milliseconds t) {
  char b[32];
  std::snprintf(b, sizeof b, "%g s", static_cast<double>(t.count()) / 1000.0);
  return b;
}

}  // namespace

// HMAC (RFC 2104) over libcrypto's SHA-256; checked against RFC 4231.
Mac hmac_sha256(std::string_view key, std::string_view data) {
  constexpr std::size_t kBlock = 64;
  std::uint8_t k0[kBlock] = {};
  SHA256_CTX ctx;
  if (key.size() > kBlock) {
    ::SHA256_Init(&ctx);
    ::SHA256_Update(&ctx, key.data(), key.size());
    ::SHA256_Final(k0, &ctx);
  } else if (!key.empty()) {
    std::memcpy(k0, key.data(), key.size());
  }
  std::uint8_t pad[kBlock];
  Mac inner{}, out{};
  for (std::size_t i = 0; i < kBlock; ++i) pad[i] = k0[i] ^ 0x36;
  ::SHA256_Init(&ctx);
  ::SHA256_Update(&ctx, pad, kBlock);
  ::SHA256_Update(&ctx, data.data(), data.size());
  ::SHA256_Final(inner.data(), &ctx);
  for (std::size_t i = 0; i < kBlock; ++i) pad[i] = k0[i] ^ 0x5c;
  ::SHA256_Init(&ctx);
  ::SHA256_Update(&ctx, pad, kBlock);
  ::SHA256_Update(&ctx, inner.data(), inner.size());
  ::SHA256_Final(out.data(), &ctx);
  ::OPENSSL_cleanse(k0, sizeof k0);
  ::OPENSSL_cleanse(pad, sizeof pad);
  ::OPENSSL_cleanse(inner.data(), inner.size());
  ::OPENSSL_cleanse(&ctx, sizeof ctx);
  return out;
}

Nonce random_nonce() {
  Nonce n{};
  std::size_t have = 0;
  while (have < n.size()) {
    const ssize_t r = ::getrandom(n.data() + have, n.size() - have, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    have += static_cast<std::size_t>(r);
  }
  return n;
}

Mac client_mac(std::string_view token, const Nonce& server_nonce, const Nonce& client_nonce) {
  return labelled_mac(token, kClientLabel, server_nonce, client_nonce);
}

Mac server_mac(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce) {
  return labelled_mac(token, kServerLabel, client_nonce, server_nonce);
}

std::string build_challenge(const Nonce& server_nonce) {
  std::string s(kMagic);
  s.append(view(server_nonce));
  return s;
}

std::optional<Nonce> parse_challenge(std::string_view bytes) {
  if (bytes.size() != kChallengeSize || bytes.substr(0, kMagic.size()) != kMagic) return std::nullopt;
  Nonce n{};
  std::memcpy(n.data(), bytes.data() + kMagic.size(), kNonceSize);
  return n;
}

std::string build_response(std::string_view token, const Nonce& server_nonce, const Nonce& client_nonce) {
  std::string s(kMagic);
  s.append(view(client_nonce));
  const Mac m = client_mac(token, server_nonce, client_nonce);
  s.append(view(m));
  return s;
}

bool magic_prefix_ok(std::string_view bytes) {
  const std::size_t n = std::min(bytes.size(), kMagic.size());
  return bytes.substr(0, n) == kMagic.substr(0, n);
}

std::string excerpt(std::string_view bytes) {
  std::string out;
  const std::size_t n = std::min<std::size_t>(bytes.size(), 32);
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  if (bytes.size() > n) out += "...";
  return out;
}

ResponseCheck verify_response(std::string_view token, const Nonce& server_nonce, std::string_view bytes) {
  ResponseCheck c;
  if (!magic_prefix_ok(bytes)) {
    c.result = Check::garbage;
    c.reason = "not a dtest client (sent '" + excerpt(bytes) + "')";
    return c;
  }
  if (bytes.size() < kResponseSize) {
    c.result = Check::truncated;
    c.reason = "incomplete authentication (" + std::to_string(bytes.size()) + " of " +
               std::to_string(kResponseSize) + " bytes)";
    return c;
  }
  if (bytes.size() > kResponseSize) {
    c.result = Check::garbage;
    c.reason = "authentication response too long (" + std::to_string(bytes.size()) + " bytes)";
    return c;
  }
  std::memcpy(c.client_nonce.data(), bytes.data() + kMagic.size(), kNonceSize);
  const Mac want = client_mac(token, server_nonce, c.client_nonce);
  if (!equal_ct(want.data(), bytes.data() + kMagic.size() + kNonceSize, kMacSize)) {
    c.result = Check::bad_token;
    c.reason = "wrong token";
    c.client_nonce = {};
    return c;
  }
  c.result = Check::ok;
  return c;
}

std::string build_accept(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce) {
  std::string s(1, kAccept);
  const Mac m = server_mac(token, client_nonce, server_nonce);
  s.append(view(m));
  return s;
}

Verdict verify_verdict(std::string_view token, const Nonce& client_nonce, const Nonce& server_nonce,
                       std::string_view bytes) {
  if (bytes.size() == 1 && bytes[0] == kReject) return Verdict::rejected;
  if (bytes.size() != kVerdictSize || bytes[0] != kAccept) return Verdict::garbage;
  const Mac want = server_mac(token, client_nonce, server_nonce);
  return equal_ct(want.data(), bytes.data() + 1, kMacSize) ? Verdict::accepted : Verdict::bad_proof;
}

std::string read_token_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read token file " + path + ": " + std::strerror(errno));
  std::string tok;
  char buf[4096];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    tok.append(buf, static_cast<std::size_t>(f.gcount()));
    if (tok.size() > 65536) throw std::runtime_error("token file " + path + " is larger than 64 KiB");
  }
  while (!tok.empty() && (tok.back() == '\n' || tok.back() == '\r' || tok.back() == ' ' || tok.back() == '\t'))
    tok.pop_back();
  if (tok.empty()) throw std::runtime_error("token file " + path + " holds no token");
  return tok;
}

std::optional<std::string> token_from_env() {
  if (const char* t = std::getenv("DTEST_TOKEN"); t && *t) return std::string(t);
  if (const char* p = std::getenv("DTEST_TOKEN_FILE"); p && *p) return read_token_file(p);
  return std::nullopt;
}

std::optional<std::string> server_handshake(int fd, std::string_view token, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  Nonce sn{};
  try {
    sn = random_nonce();
  } catch (const std::exception& e) {
    return std::string("internal error: ") + e.what();
  }
  if (int e = send_all(fd, build_challenge(sn)))
    return std::string("could not send the challenge: ") + std::strerror(e);
  const Read r = read_exact(fd, kResponseSize, deadline, true);
  switch (r.end) {
    case End::full:
      break;
    case End::garbage:
      return "not a dtest client (sent '" + excerpt(r.data) + "')";
    case End::timeout:
      if (r.data.empty()) return "sent nothing within " + secs(timeout);
      return "sent only " + std::to_string(r.data.size()) + " of " + std::to_string(kResponseSize) +
             " bytes within " + secs(timeout);
    case End::eof:
      return "closed the connection after " + std::to_string(r.data.size()) + " of " +
             std::to_string(kResponseSize) + " bytes";
    case End::error:
      return std::string("read error: ") + std::strerror(r.err);
  }
  const ResponseCheck c = verify_response(token, sn, r.data);
  if (c.result != Check::ok) {
    if (c.result == Check::bad_token) (void)send_all(fd, build_reject());
    return c.reason;
  }
  if (int e = send_all(fd, build_accept(token, c.client_nonce, sn)))
    return std::string("could not send the proof: ") + std::strerror(e);
  return std::nullopt;
}

void client_handshake(int fd, std::string_view token, std::chrono::milliseconds timeout) {
  using K = AuthError::Kind;
  const auto deadline = Clock::now() + timeout;
  const Read ch = read_exact(fd, kChallengeSize, deadline, true);
  switch (ch.end) {
    case End::full:
      break;
    case End::garbage:
      throw AuthError(K::not_dtest, "is not a dtest agent: it greeted with '" + excerpt(ch.data) + "'");
    case End::timeout:
      throw AuthError(K::timeout, "no dtest-agent greeting within " + secs(timeout) +
                                      (ch.data.empty() ? std::string(" (it sent nothing)")
                                                       : " (got '" + excerpt(ch.data) + "')"));
    case End::eof:
      throw AuthError(K::closed, "the connection closed before the agent's greeting" +
                                     (ch.data.empty() ? std::string() : " (got '" + excerpt(ch.data) + "')"));
    case End::error:
      throw AuthError(K::io, std::string("reading the agent's greeting: ") + std::strerror(ch.err));
  }
  const Nonce sn = *parse_challenge(ch.data);
  const Nonce cn = random_nonce();
  if (int e = send_all(fd, build_response(token, sn, cn)))
    throw AuthError(e == EPIPE || e == ECONNRESET ? K::closed : K::io,
                    std::string("sending the authentication: ") + std::strerror(e));
  // Read the verdict: one byte first ('N' ends it), then the proof.
  Read v = read_exact(fd, 1, deadline, false);
  if (v.end == End::full && v.data[0] == kAccept) {
    Read rest = read_exact(fd, kMacSize, deadline, false);
    v.data += rest.data;
    v.end = rest.end;
    v.err = rest.err;
  }
  switch (v.end) {
    case End::full:
    case End::garbage:
      break;
    case End::timeout:
      throw AuthError(K::timeout, "no answer to the authentication within " + secs(timeout));
    case End::eof:
      if (v.data.empty()) throw AuthError(K::rejected, "rejected the token (it closed the connection)");
      throw AuthError(K::closed, "the connection closed inside the agent's answer");
    case End::error:
      if (v.err == ECONNRESET) throw AuthError(K::rejected, "rejected the token (it reset the connection)");
      throw AuthError(K::io, std::string("reading the agent's answer: ") + std::strerror(v.err));
  }
  switch (verify_verdict(token, cn, sn, v.data)) {
    case Verdict::accepted:
      return;
    case Verdict::rejected:
      throw AuthError(K::rejected, "rejected the token");
    case Verdict::bad_proof:
      throw AuthError(K::bad_proof,
                      "failed to prove it holds the token (it runs with a different token, or it is not the "
                      "agent you meant)");
    case Verdict::garbage:
      throw AuthError(K::not_dtest, "answered the authentication with garbage ('" + excerpt(v.data) + "')");
  }
}

}  // namespace dtest::auth
