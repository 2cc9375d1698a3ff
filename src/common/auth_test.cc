// Unit tests of the socket gateway's authentication (src/common/auth.*) and
// of the agent's --listen address parsing (src/agent/listen.*).
#include "common/auth.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

#include "agent/listen.h"

namespace dtest::auth {
namespace {

using namespace std::chrono_literals;

std::string hex(const Mac& m) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (auto b : m) {
    s += d[b >> 4];
    s += d[b & 15];
  }
  return s;
}

Nonce nonce_of(std::uint8_t fill) {
  Nonce n{};
  n.fill(fill);
  return n;
}

// RFC 4231 test cases 1, 2 and 6 (6: a key longer than the block size).
TEST(Auth, HmacSha256MatchesRfc4231) {
  EXPECT_EQ(hex(hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hex(hmac_sha256(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(Auth, MacsAreLabelledHmacsOverBothNonces) {
  const Nonce s = nonce_of(1), c = nonce_of(2);
  std::string m(kClientLabel);
  m.append(32, '\1');
  m.append(32, '\2');
  EXPECT_EQ(client_mac("tok", s, c), hmac_sha256("tok", m));
  std::string n(kServerLabel);
  n.append(32, '\2');
  n.append(32, '\1');
  EXPECT_EQ(server_mac("tok", c, s), hmac_sha256("tok", n));
  EXPECT_NE(client_mac("tok", s, c), server_mac("tok", c, s));
}

TEST(Auth, RandomNoncesDiffer) { EXPECT_NE(random_nonce(), random_nonce()); }

TEST(Auth, MessageSizesAndLayout) {
  const Nonce s = nonce_of(0xaa), c = nonce_of(0xbb);
  const std::string ch = build_challenge(s);
  ASSERT_EQ(ch.size(), kChallengeSize);
  EXPECT_EQ(ch.substr(0, 13), "DTEST-AUTH 1\n");
  EXPECT_EQ(parse_challenge(ch), s);
  const std::string resp = build_response("tok", s, c);
  ASSERT_EQ(resp.size(), kResponseSize);
  EXPECT_EQ(resp.substr(0, 13), "DTEST-AUTH 1\n");
  EXPECT_EQ(resp.substr(13, 32), std::string(32, '\xbb'));
  const Mac cm = client_mac("tok", s, c);
  EXPECT_EQ(resp.substr(45), std::string(reinterpret_cast<const char*>(cm.data()), 32));
  const std::string acc = build_accept("tok", c, s);
  ASSERT_EQ(acc.size(), kVerdictSize);
  EXPECT_EQ(acc[0], 'Y');
  EXPECT_EQ(build_reject(), "N");
}

TEST(Auth, ParseChallengeRejectsWrongInput) {
  const std::string ch = build_challenge(nonce_of(3));
  EXPECT_FALSE(parse_challenge(ch.substr(0, 44)));
  EXPECT_FALSE(parse_challenge(ch + "x"));
  EXPECT_FALSE(parse_challenge("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n12345"));
}

TEST(Auth, CorrectResponseIsAccepted) {
  const Nonce s = random_nonce(), c = random_nonce();
  const ResponseCheck r = verify_response("secret", s, build_response("secret", s, c));
  EXPECT_EQ(r.result, Check::ok) << r.reason;
  EXPECT_EQ(r.client_nonce, c);
  EXPECT_EQ(verify_verdict("secret", c, s, build_accept("secret", c, s)), Verdict::accepted);
}

TEST(Auth, WrongTokenIsRejected) {
  const Nonce s = random_nonce(), c = random_nonce();
  const ResponseCheck r = verify_response("secret", s, build_response("Secret", s, c));
  EXPECT_EQ(r.result, Check::bad_token);
  EXPECT_EQ(r.reason, "wrong token");
  // A response for another challenge (a replay) is a wrong token too.
  EXPECT_EQ(verify_response("secret", s, build_response("secret", random_nonce(), c)).result, Check::bad_token);
}

TEST(Auth, ServerWithWrongTokenFailsItsProof) {
  const Nonce s = random_nonce(), c = random_nonce();
  EXPECT_EQ(verify_verdict("secret", c, s, build_accept("other", c, s)), Verdict::bad_proof);
  // The proof is bound to the client's nonce: a replayed proof fails.
  EXPECT_EQ(verify_verdict("secret", c, s, build_accept("secret", random_nonce(), s)), Verdict::bad_proof);
  EXPECT_EQ(verify_verdict("secret", c, s, "N"), Verdict::rejected);
  EXPECT_EQ(verify_verdict("secret", c, s, "Y"), Verdict::garbage);
  EXPECT_EQ(verify_verdict("secret", c, s, std::string(33, 'Z')), Verdict::garbage);
}

TEST(Auth, TruncatedResponseIsReported) {
  const Nonce s = random_nonce(), c = random_nonce();
  const std::string full = build_response("secret", s, c);
  for (std::size_t n : {std::size_t{0}, std::size_t{5}, std::size_t{13}, std::size_t{45}, std::size_t{76}}) {
    const ResponseCheck r = verify_response("secret", s, full.substr(0, n));
    EXPECT_EQ(r.result, Check::truncated) << n;
    EXPECT_EQ(r.reason, "incomplete authentication (" + std::to_string(n) + " of 77 bytes)");
  }
  EXPECT_EQ(verify_response("secret", s, full + "x").result, Check::garbage);
}

TEST(Auth, GarbageIsNotADtestClient) {
  const Nonce s = random_nonce();
  const ResponseCheck r = verify_response("secret", s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(60, 'x'));
  EXPECT_EQ(r.result, Check::garbage);
  EXPECT_EQ(r.reason, "not a dtest client (sent 'GET / HTTP/1.1\\x0d\\nHost: x\\x0d\\n\\x0d\\nxxxxx...')");
  EXPECT_FALSE(magic_prefix_ok("DTEST-AUTH 2"));
  EXPECT_TRUE(magic_prefix_ok("DTEST-AU"));
  EXPECT_TRUE(magic_prefix_ok(""));
}

TEST(Auth, TokenFileDropsTrailingNewlineAndRejectsEmpty) {
  const std::string dir = ::testing::TempDir();
  const std::string p = dir + "/dtest-auth-test-token";
  {
    std::ofstream(p) << "  s3cret tok \n\n";
  }
  EXPECT_EQ(read_token_file(p), "  s3cret tok");
  {
    std::ofstream(p) << "\n";
  }
  EXPECT_THROW(read_token_file(p), std::runtime_error);
  std::filesystem::remove(p);
  try {
    read_token_file(p);
    ADD_FAILURE() << "no throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// --- both handshakes over a real socket pair ------------------------------

struct Pair {
  int a = -1, b = -1;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
      a = fds[0];
      b = fds[1];
    }
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
};

struct Outcome {
  std::optional<std::string> server_refusal;
  std::optional<AuthError::Kind> client_error;
  std::string client_message;
};

Outcome handshake(const std::string& server_token, const std::string& client_token) {
  Pair p;
  Outcome o;
  std::thread server([&] {
    o.server_refusal = server_handshake(p.a, server_token, 5s);
    ::shutdown(p.a, SHUT_RDWR);
  });
  try {
    client_handshake(p.b, client_token, 5s);
  } catch (const AuthError& e) {
    o.client_error = e.kind();
    o.client_message = e.what();
  }
  server.join();
  return o;
}

TEST(AuthHandshake, SameTokenSucceedsBothWays) {
  const Outcome o = handshake("tok", "tok");
  EXPECT_FALSE(o.server_refusal) << *o.server_refusal;
  EXPECT_FALSE(o.client_error) << o.client_message;
}

TEST(AuthHandshake, WrongClientTokenIsRejected) {
  const Outcome o = handshake("tok", "wrong");
  ASSERT_TRUE(o.server_refusal);
  EXPECT_EQ(*o.server_refusal, "wrong token");
  ASSERT_TRUE(o.client_error);
  EXPECT_EQ(*o.client_error, AuthError::Kind::rejected) << o.client_message;
}

TEST(AuthHandshake, ProtocolStreamStartsRightAfterTheHandshake) {
  Pair p;
  std::thread server([&] {
    EXPECT_FALSE(server_handshake(p.a, "tok", 5s));
    ASSERT_EQ(::write(p.a, "\xd7hello", 6), 6);
  });
  client_handshake(p.b, "tok", 5s);
  server.join();
  char buf[16];
  ASSERT_EQ(::read(p.b, buf, sizeof buf), 6);
  EXPECT_EQ(std::string(buf, 6), "\xd7hello");
}

TEST(AuthHandshake, SilentClientIsDroppedAtTheTimeout) {
  Pair p;
  const auto why = server_handshake(p.a, "tok", 200ms);
  ASSERT_TRUE(why);
  EXPECT_EQ(*why, "sent nothing within 0.2 s");
}

TEST(AuthHandshake, ClientSendingTooLittleIsDropped) {
  Pair p;
  ASSERT_EQ(::write(p.b, "DTEST-AUTH 1\nabc", 16), 16);
  const auto why = server_handshake(p.a, "tok", 200ms);
  ASSERT_TRUE(why);
  EXPECT_EQ(*why, "sent only 16 of 77 bytes within 0.2 s");
  ::shutdown(p.b, SHUT_WR);
  Pair q;
  ASSERT_EQ(::write(q.b, "DTEST", 5), 5);
  ::shutdown(q.b, SHUT_WR);
  EXPECT_EQ(server_handshake(q.a, "tok", 5s), "closed the connection after 5 of 77 bytes");
}

TEST(AuthHandshake, GarbageClientIsRefusedAtOnce) {
  Pair p;
  ASSERT_EQ(::write(p.b, "\x16\x03\x01\x02\x00", 5), 5);  // a TLS ClientHello
  const auto why = server_handshake(p.a, "tok", 5s);
  ASSERT_TRUE(why);
  // What arrived in the first read is quoted (one write on a socket pair).
  EXPECT_EQ(*why, "not a dtest client (sent '\\x16\\x03\\x01\\x02\\x00')");
}

TEST(AuthHandshake, ClientNoticesAServerThatIsNotAnAgent) {
  Pair p;
  ASSERT_EQ(::write(p.a, "SSH-2.0-OpenSSH_9.2\r\n", 21), 21);
  try {
    client_handshake(p.b, "tok", 5s);
    ADD_FAILURE() << "no throw";
  } catch (const AuthError& e) {
    EXPECT_EQ(e.kind(), AuthError::Kind::not_dtest);
    EXPECT_EQ(std::string(e.what()), "is not a dtest agent: it greeted with 'SSH-2.0-OpenSSH_9.2\\x0d\\n'");
  }
}

TEST(AuthHandshake, ClientNoticesAServerWithTheWrongToken) {
  Pair p;
  std::thread server([&] {
    // A server that accepts anything and proves with another token.
    const Nonce s = random_nonce();
    const std::string ch = build_challenge(s);
    ASSERT_EQ(::write(p.a, ch.data(), ch.size()), static_cast<ssize_t>(ch.size()));
    char buf[kResponseSize];
    std::size_t have = 0;
    while (have < sizeof buf) {
      const ssize_t n = ::read(p.a, buf + have, sizeof buf - have);
      if (n <= 0) return;
      have += static_cast<std::size_t>(n);
    }
    Nonce c{};
    std::memcpy(c.data(), buf + 13, 32);
    const std::string acc = build_accept("other", c, s);
    ASSERT_EQ(::write(p.a, acc.data(), acc.size()), static_cast<ssize_t>(acc.size()));
  });
  try {
    client_handshake(p.b, "tok", 5s);
    ADD_FAILURE() << "no throw";
  } catch (const AuthError& e) {
    EXPECT_EQ(e.kind(), AuthError::Kind::bad_proof) << e.what();
  }
  server.join();
}

}  // namespace
}  // namespace dtest::auth

// --- --listen address parsing ----------------------------------------------

namespace dtest::listen {
namespace {

std::string roundtrip(const std::string& text) {
  std::string err;
  const auto ep = parse_endpoint(text, err);
  if (!ep) return "error: " + err;
  return format_address(reinterpret_cast<const sockaddr*>(&ep->addr));
}

TEST(ListenAddress, NumericAddressesAndLocalhost) {
  EXPECT_EQ(roundtrip("127.0.0.1:8888"), "127.0.0.1:8888");
  EXPECT_EQ(roundtrip("0.0.0.0:0"), "0.0.0.0:0");
  EXPECT_EQ(roundtrip("[::1]:8888"), "[::1]:8888");
  EXPECT_EQ(roundtrip("[::]:65535"), "[::]:65535");
  EXPECT_EQ(roundtrip("localhost:1"), "127.0.0.1:1");
}

TEST(ListenAddress, ErrorsSayWhatIsWrong) {
  EXPECT_EQ(roundtrip("example.com:80"),
            "error: 'example.com' is not a numeric address (dtest-agent looks up no names: use an IP address "
            "or localhost)");
  EXPECT_EQ(roundtrip("::1:80"), "error: IPv6 addresses go in brackets: '[::1]:80'");
  EXPECT_EQ(roundtrip("127.0.0.1"), "error: expected HOST:PORT, got '127.0.0.1'");
  EXPECT_EQ(roundtrip("8888"), "error: expected HOST:PORT, got '8888'");
  EXPECT_EQ(roundtrip("127.0.0.1:65536"), "error: bad port '65536' in '127.0.0.1:65536' (expected 0 to 65535)");
  EXPECT_EQ(roundtrip("127.0.0.1:x"), "error: bad port 'x' in '127.0.0.1:x' (expected 0 to 65535)");
  EXPECT_EQ(roundtrip("[zz]:1"), "error: '[zz]' is not an IPv6 address");
  EXPECT_EQ(roundtrip(":1"), "error: no host in ':1' (use 0.0.0.0:PORT or [::]:PORT for all interfaces)");
}

}  // namespace
}  // namespace dtest::listen
