// Unit tests for the wire framing (common/frame.h).
#include "common/frame.h"

#include <gtest/gtest.h>

#include "common/test_support.h"

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------
// Allocation probe: lets a test check that no single heap allocation made
// while the probe is armed exceeds some size (used to check the decoder's
// buffer stays bounded). Replacing the global operator new is the only way to
// observe FrameDecoder's private buffer without changing its interface.
namespace {
std::atomic<bool> g_probe_armed{false};
std::atomic<std::size_t> g_probe_largest{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_probe_armed.load(std::memory_order_relaxed)) {
    std::size_t cur = g_probe_largest.load(std::memory_order_relaxed);
    while (n > cur && !g_probe_largest.compare_exchange_weak(cur, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// noinline: once inlined into a new-expression's cleanup path, GCC would flag
// the free() as mismatched with operator new (-Wmismatched-new-delete).
__attribute__((noinline)) void operator delete(void* p) noexcept { std::free(p); }
__attribute__((noinline)) void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace dtest {
namespace {

std::string bytes(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s.push_back(static_cast<char>(b));
  return s;
}

Frame make_frame(std::uint8_t kind, std::string payload, std::uint8_t flags = 0) {
  Frame f;
  f.kind = kind;
  f.flags = flags;
  f.payload = std::move(payload);
  return f;
}

// A payload containing every byte value, including the magic and NULs.
std::string all_bytes_payload(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>((i * 7 + 3) & 0xFF));
  return s;
}

std::vector<Frame> sample_frames() {
  std::vector<Frame> v;
  v.push_back(make_frame(1, "hello"));
  v.push_back(make_frame(2, ""));
  v.push_back(make_frame(3, all_bytes_payload(300)));
  v.push_back(make_frame(4, std::string(1, static_cast<char>(kFrameMagic)), kFlagZstd));
  v.push_back(make_frame(255, all_bytes_payload(17)));
  return v;
}

std::string encode_all(const std::vector<Frame>& frames) {
  std::string s;
  for (const auto& f : frames) s += encode_frame(f);
  return s;
}

void expect_same(const std::vector<Frame>& got, const std::vector<Frame>& want,
                 const std::string& ctx) {
  ASSERT_EQ(got.size(), want.size()) << ctx;
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].kind, want[i].kind) << ctx << " frame " << i;
    EXPECT_EQ(got[i].flags, want[i].flags) << ctx << " frame " << i;
    EXPECT_EQ(got[i].payload, want[i].payload) << ctx << " frame " << i;
  }
}

void drain(FrameDecoder& d, std::vector<Frame>& out) {
  while (auto f = d.pop()) out.push_back(std::move(*f));
}

using dtest::testing::protocol_error;

// ---------------------------------------------------------------------------
// encode_frame

TEST(EncodeFrame, HeaderLayout) {
  const std::string wire = encode_frame(make_frame(5, "abc", kFlagZstd));
  EXPECT_EQ(wire, bytes({0xD7, 5, 1, 0, 0, 0, 0, 3}) + "abc");
}

TEST(EncodeFrame, LengthIsBigEndian) {
  const std::string wire = encode_frame(make_frame(1, std::string(0x010203, 'x')));
  ASSERT_EQ(wire.size(), kFrameHeaderSize + 0x010203);
  EXPECT_EQ(wire.substr(0, 8), bytes({0xD7, 1, 0, 0, 0x00, 0x01, 0x02, 0x03}));
}

TEST(EncodeFrame, EmptyPayload) {
  EXPECT_EQ(encode_frame(make_frame(8, "")), bytes({0xD7, 8, 0, 0, 0, 0, 0, 0}));
}

TEST(EncodeFrame, RefusesPayloadOverLimit) {
  const Frame big = make_frame(1, std::string(std::size_t{kMaxFramePayload} + 1, 'a'));
  EXPECT_EQ(protocol_error([&] { encode_frame(big); }),
            "refusing to send a frame of 67108865 bytes (limit 67108864)");
}

TEST(EncodeFrame, AcceptsPayloadAtLimit) {
  const Frame big = make_frame(1, std::string(kMaxFramePayload, 'a'));
  const std::string wire = encode_frame(big);
  EXPECT_EQ(wire.size(), kFrameHeaderSize + kMaxFramePayload);
  EXPECT_EQ(wire.substr(4, 4), bytes({0x04, 0x00, 0x00, 0x00}));
}

// ---------------------------------------------------------------------------
// FrameDecoder: well-formed input

TEST(FrameDecoder, RoundTripSingleFrame) {
  const Frame in = make_frame(3, all_bytes_payload(1000), kFlagZstd);
  FrameDecoder d;
  d.feed(encode_frame(in));
  auto out = d.pop();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->kind, 3);
  EXPECT_EQ(out->flags, kFlagZstd);
  EXPECT_EQ(out->payload, in.payload);
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.offset(), kFrameHeaderSize + 1000);
}

TEST(FrameDecoder, EmptyPayloadFrame) {
  FrameDecoder d;
  d.feed(encode_frame(make_frame(8, "")));
  auto out = d.pop();
  ASSERT_TRUE(out.has_value());
  EXPECT_EQ(out->kind, 8);
  EXPECT_EQ(out->flags, 0);
  EXPECT_EQ(out->payload, "");
  EXPECT_EQ(d.offset(), kFrameHeaderSize);
  EXPECT_FALSE(d.pop().has_value());
}

TEST(FrameDecoder, NothingFedPopsNothing) {
  FrameDecoder d;
  EXPECT_FALSE(d.pop().has_value());
  d.feed("");
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.offset(), 0u);
}

TEST(FrameDecoder, SeveralFramesInOneFeed) {
  const auto frames = sample_frames();
  FrameDecoder d;
  d.feed(encode_all(frames));
  std::vector<Frame> got;
  drain(d, got);
  expect_same(got, frames, "one feed");
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.offset(), encode_all(frames).size());
}

TEST(FrameDecoder, ByteByByte) {
  const auto frames = sample_frames();
  const std::string wire = encode_all(frames);
  FrameDecoder d;
  std::vector<Frame> got;
  for (char c : wire) {
    d.feed(std::string_view(&c, 1));
    drain(d, got);
  }
  expect_same(got, frames, "byte by byte");
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.offset(), wire.size());
}

TEST(FrameDecoder, SplitAtEveryPosition) {
  const auto frames = sample_frames();
  const std::string wire = encode_all(frames);
  for (std::size_t i = 0; i <= wire.size(); ++i) {
    FrameDecoder d;
    std::vector<Frame> got;
    d.feed(std::string_view(wire).substr(0, i));
    drain(d, got);
    d.feed(std::string_view(wire).substr(i));
    drain(d, got);
    expect_same(got, frames, "split at " + std::to_string(i));
    EXPECT_EQ(d.buffered(), 0u) << "split at " << i;
    if (HasFailure()) return;
  }
}

TEST(FrameDecoder, SplitAtEveryPairOfPositions) {
  std::vector<Frame> frames;
  frames.push_back(make_frame(1, "ab"));
  frames.push_back(make_frame(2, ""));
  frames.push_back(make_frame(7, all_bytes_payload(20), kFlagZstd));
  const std::string wire = encode_all(frames);
  const std::string_view w(wire);
  for (std::size_t i = 0; i <= wire.size(); ++i) {
    for (std::size_t j = i; j <= wire.size(); ++j) {
      FrameDecoder d;
      std::vector<Frame> got;
      d.feed(w.substr(0, i));
      drain(d, got);
      d.feed(w.substr(i, j - i));
      drain(d, got);
      d.feed(w.substr(j));
      drain(d, got);
      expect_same(got, frames, "split at " + std::to_string(i) + "," + std::to_string(j));
      if (HasFailure()) return;
    }
  }
}

TEST(FrameDecoder, FeedSeveralThenPopAll) {
  // Feeding without popping in between must not lose or reorder anything.
  const auto frames = sample_frames();
  const std::string wire = encode_all(frames);
  FrameDecoder d;
  for (std::size_t i = 0; i < wire.size(); i += 5) d.feed(std::string_view(wire).substr(i, 5));
  std::vector<Frame> got;
  drain(d, got);
  expect_same(got, frames, "chunks of 5");
}

TEST(FrameDecoder, BufferedAfterPartialInput) {
  const std::string wire = encode_frame(make_frame(1, "0123456789"));
  FrameDecoder d;
  d.feed(wire.substr(0, 1));  // just the magic
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 1u);
  d.feed(wire.substr(1, 6));  // header minus one byte
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 7u);
  d.feed(wire.substr(7, 5));  // header complete, 4 payload bytes
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 12u);
  EXPECT_EQ(d.offset(), 0u);
  d.feed(wire.substr(12));
  auto f = d.pop();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->payload, "0123456789");
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_EQ(d.offset(), wire.size());
}

TEST(FrameDecoder, BufferedCountsOnlyUnconsumedBytes) {
  const std::string a = encode_frame(make_frame(1, "aaaa"));
  const std::string b = encode_frame(make_frame(2, "bbbbbb"));
  FrameDecoder d;
  d.feed(a + b.substr(0, 3));
  EXPECT_EQ(d.buffered(), a.size() + 3);
  ASSERT_TRUE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 3u);
  EXPECT_FALSE(d.pop().has_value());
  EXPECT_EQ(d.buffered(), 3u);
  EXPECT_EQ(d.offset(), a.size());
}

TEST(FrameDecoder, PayloadAtCustomLimitAccepted) {
  FrameDecoder d(16);
  d.feed(encode_frame(make_frame(1, std::string(16, 'x'))));
  auto f = d.pop();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->payload, std::string(16, 'x'));
}

TEST(FrameDecoder, PayloadOverCustomLimitRejected) {
  FrameDecoder d(16);
  d.feed(encode_frame(make_frame(1, std::string(17, 'x'))));
  EXPECT_EQ(protocol_error([&] { d.pop(); }), "oversized frame at byte 0: 17 bytes (limit 16)");
}

TEST(FrameDecoder, OversizedRejectedAsSoonAsHeaderArrives) {
  // The limit is checked on the header: no need to wait for (or buffer) the
  // announced payload.
  FrameDecoder d(16);
  const std::string wire = encode_frame(make_frame(1, std::string(1000, 'x')));
  d.feed(wire.substr(0, kFrameHeaderSize - 1));
  EXPECT_FALSE(d.pop().has_value());
  d.feed(wire.substr(kFrameHeaderSize - 1, 1));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "oversized frame at byte 0: 1000 bytes (limit 16)");
}

TEST(FrameDecoder, OversizedAfterValidFrameNamesItsOffset) {
  FrameDecoder d(16);
  const std::string ok = encode_frame(make_frame(1, std::string(16, 'x')));
  d.feed(ok + encode_frame(make_frame(2, std::string(17, 'y'))));
  ASSERT_TRUE(d.pop().has_value());
  EXPECT_EQ(protocol_error([&] { d.pop(); }), "oversized frame at byte 24: 17 bytes (limit 16)");
}

TEST(FrameDecoder, DefaultLimitRejectsHugeLength) {
  FrameDecoder d;
  d.feed(bytes({0xD7, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF}));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "oversized frame at byte 0: 4294967295 bytes (limit 67108864)");
}

TEST(FrameDecoder, DefaultLimitBoundary) {
  // Header only: the decoder must accept kMaxFramePayload (waits for more)
  // and reject kMaxFramePayload + 1.
  FrameDecoder ok;
  ok.feed(bytes({0xD7, 1, 0, 0, 0x04, 0x00, 0x00, 0x00}));
  EXPECT_FALSE(ok.pop().has_value());
  FrameDecoder bad;
  bad.feed(bytes({0xD7, 1, 0, 0, 0x04, 0x00, 0x00, 0x01}));
  EXPECT_EQ(protocol_error([&] { bad.pop(); }),
            "oversized frame at byte 0: 67108865 bytes (limit 67108864)");
}

// ---------------------------------------------------------------------------
// FrameDecoder: garbage

TEST(FrameDecoder, BadMagicReportedWithExcerpt) {
  FrameDecoder d;
  d.feed("GET / HTTP/1.1\r\n");
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame magic at byte 0 (expected 0xD7): 'GET / HTTP/1.1\\x0d\\n'");
}

TEST(FrameDecoder, BadMagicReportedOnFirstByte) {
  // Garbage is reported at once, not after waiting for a full header.
  FrameDecoder d;
  d.feed(bytes({0x00}));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame magic at byte 0 (expected 0xD7): '\\x00'");
}

TEST(FrameDecoder, BadMagicExcerptIsTruncated) {
  FrameDecoder d;
  d.feed(std::string(100, 'z'));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame magic at byte 0 (expected 0xD7): '" + std::string(32, 'z') + "'...");
}

TEST(FrameDecoder, GarbageAfterValidFrameReportsOffset) {
  const std::string ok = encode_frame(make_frame(1, "hello"));  // 13 bytes
  FrameDecoder d;
  d.feed(ok + "oops");
  auto f = d.pop();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->payload, "hello");
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame magic at byte 13 (expected 0xD7): 'oops'");
}

TEST(FrameDecoder, GarbageAfterSeveralFramesFedSeparately) {
  const auto frames = sample_frames();
  const std::string wire = encode_all(frames);
  FrameDecoder d;
  std::vector<Frame> got;
  for (const auto& f : frames) {
    d.feed(encode_frame(f));
    drain(d, got);
  }
  d.feed("\x01\x02");
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame magic at byte " + std::to_string(wire.size()) +
                " (expected 0xD7): '\\x01\\x02'");
}

TEST(FrameDecoder, ErrorIsSticky) {
  FrameDecoder d;
  d.feed("x");
  EXPECT_THROW(d.pop(), ProtocolError);
  d.feed(encode_frame(make_frame(1, "ok")));
  EXPECT_THROW(d.pop(), ProtocolError);
}

TEST(FrameDecoder, UnknownFlagsRejected) {
  FrameDecoder d;
  d.feed(bytes({0xD7, 1, 0x02, 0, 0, 0, 0, 0}));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame header at byte 0: unknown flags '\\xd7\\x01\\x02\\x00'");
}

TEST(FrameDecoder, EveryUnknownFlagBitRejected) {
  for (int bit = 1; bit < 8; ++bit) {
    FrameDecoder d;
    d.feed(bytes({0xD7, 1, (1 << bit) | kFlagZstd, 0, 0, 0, 0, 0}));
    EXPECT_THROW(d.pop(), ProtocolError) << "flag bit " << bit;
  }
}

TEST(FrameDecoder, NonzeroReservedByteRejected) {
  FrameDecoder d;
  d.feed(bytes({0xD7, 1, 0, 0x05, 0, 0, 0, 0}));
  EXPECT_EQ(protocol_error([&] { d.pop(); }),
            "bad frame header at byte 0: unknown flags '\\xd7\\x01\\x00\\x05'");
}

TEST(FrameDecoder, BadHeaderAfterValidFrameReportsOffset) {
  FrameDecoder d;
  d.feed(encode_frame(make_frame(1, "")) + bytes({0xD7, 2, 0x80, 0, 0, 0, 0, 0}));
  ASSERT_TRUE(d.pop().has_value());
  std::string msg = protocol_error([&] { d.pop(); });
  EXPECT_EQ(msg, "bad frame header at byte 8: unknown flags '\\xd7\\x02\\x80\\x00'");
}

TEST(FrameDecoder, ZstdFlagAloneIsAccepted) {
  FrameDecoder d;
  d.feed(bytes({0xD7, 1, kFlagZstd, 0, 0, 0, 0, 1, 'z'}));
  auto f = d.pop();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->flags, kFlagZstd);
  EXPECT_EQ(f->payload, "z");
}

// ---------------------------------------------------------------------------
// Memory stays bounded

TEST(FrameDecoder, BufferedSmallAfterPoppingManyFrames) {
  const std::string wire = encode_frame(make_frame(5, all_bytes_payload(1000)));
  FrameDecoder d;
  for (int i = 0; i < 5000; ++i) {
    d.feed(wire);
    auto f = d.pop();
    ASSERT_TRUE(f.has_value());
    ASSERT_EQ(d.buffered(), 0u);
  }
  EXPECT_EQ(d.offset(), 5000u * wire.size());
}

TEST(FrameDecoder, MemoryBoundedWhenFeedingManyFrames) {
  // 5000 frames of ~1 KB (5 MB in all), fed in odd-sized chunks that often end
  // mid-frame and popped as they complete. Without compaction the internal
  // buffer would grow to the whole stream; with it no allocation should ever
  // exceed a small multiple of one frame.
  const std::string one = encode_frame(make_frame(5, all_bytes_payload(1000)));
  std::string stream;
  for (int i = 0; i < 100; ++i) stream += one;  // 100 frames, reused 50 times
  FrameDecoder d;
  std::size_t popped = 0;
  g_probe_largest = 0;
  g_probe_armed = true;
  for (int rep = 0; rep < 50; ++rep) {
    for (std::size_t i = 0; i < stream.size(); i += 777) {
      d.feed(std::string_view(stream).substr(i, 777));
      while (auto f = d.pop()) ++popped;
    }
  }
  g_probe_armed = false;
  EXPECT_EQ(popped, 5000u);
  EXPECT_EQ(d.buffered(), 0u);
  EXPECT_LT(g_probe_largest.load(), std::size_t{64 * 1024})
      << "largest allocation while decoding a 5 MB stream";
}

// ---------------------------------------------------------------------------
// quote_bytes

TEST(QuoteBytes, Printable) { EXPECT_EQ(quote_bytes("abc XYZ 09~"), "'abc XYZ 09~'"); }

TEST(QuoteBytes, Empty) { EXPECT_EQ(quote_bytes(""), "''"); }

TEST(QuoteBytes, EscapesQuoteAndBackslash) {
  EXPECT_EQ(quote_bytes("it's a\\b"), "'it\\'s a\\\\b'");
}

TEST(QuoteBytes, EscapesNewlineAsBackslashN) { EXPECT_EQ(quote_bytes("a\nb"), "'a\\nb'"); }

TEST(QuoteBytes, EscapesControlAndHighBytesAsHex) {
  EXPECT_EQ(quote_bytes(bytes({0x00, 0x01, '\t', '\r', 0x1F, 0x7F, 0x80, 0xD7, 0xFF})),
            "'\\x00\\x01\\x09\\x0d\\x1f\\x7f\\x80\\xd7\\xff'");
}

TEST(QuoteBytes, TruncatesAtMax) {
  EXPECT_EQ(quote_bytes(std::string(40, 'a')), "'" + std::string(32, 'a') + "'...");
  EXPECT_EQ(quote_bytes("abcdef", 3), "'abc'...");
  EXPECT_EQ(quote_bytes("abc", 3), "'abc'");
  EXPECT_EQ(quote_bytes("abc", 0), "''...");
}

TEST(QuoteBytes, MaxCountsInputBytesNotOutputChars) {
  EXPECT_EQ(quote_bytes(bytes({0xFF, 0xFF, 0xFF}), 2), "'\\xff\\xff'...");
}

}  // namespace
}  // namespace dtest
