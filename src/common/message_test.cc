// Unit tests for messages (common/message.h): CBOR bodies, zstd compression
// and the typed field accessors.
#include "common/message.h"

#include <gtest/gtest.h>

#include "common/test_support.h"
#include <zstd.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace dtest {
namespace {

using nlohmann::json;

using dtest::testing::protocol_error;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string cbor(const json& j) {
  const std::vector<std::uint8_t> v = json::to_cbor(j);
  return std::string(v.begin(), v.end());
}

Frame raw_frame(std::uint8_t kind, std::string payload, std::uint8_t flags = 0) {
  Frame f;
  f.kind = kind;
  f.flags = flags;
  f.payload = std::move(payload);
  return f;
}

// Goes through the whole wire path: message -> frame -> bytes -> decoder ->
// frame -> message.
Message wire_round_trip(const Message& m, std::size_t compress_over = 4096) {
  const std::string wire = encode_frame(encode_message(m, compress_over));
  FrameDecoder d;
  d.feed(wire);
  auto f = d.pop();
  if (!f) throw std::runtime_error("no frame decoded");
  if (d.buffered() != 0) throw std::runtime_error("trailing bytes");
  return decode_message(*f);
}

// Compresses with a streaming context so we control whether the frame header
// declares the content size, and can produce large inputs in small chunks.
std::string zstd_stream(std::size_t total, char fill, bool declare_size) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 1);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, declare_size ? 1 : 0);
  if (declare_size) ZSTD_CCtx_setPledgedSrcSize(cctx, total);
  const std::string chunk(1 << 20, fill);
  std::string out;
  std::vector<char> buf(ZSTD_CStreamOutSize());
  std::size_t left = total;
  for (;;) {
    const std::size_t n = left < chunk.size() ? left : chunk.size();
    left -= n;
    const ZSTD_EndDirective mode = left == 0 ? ZSTD_e_end : ZSTD_e_continue;
    ZSTD_inBuffer in{chunk.data(), n, 0};
    bool done = false;
    while (!done) {
      ZSTD_outBuffer o{buf.data(), buf.size(), 0};
      const std::size_t rem = ZSTD_compressStream2(cctx, &o, &in, mode);
      if (ZSTD_isError(rem)) {
        ZSTD_freeCCtx(cctx);
        throw std::runtime_error(ZSTD_getErrorName(rem));
      }
      out.append(buf.data(), o.pos);
      done = mode == ZSTD_e_end ? rem == 0 : in.pos == in.size;
    }
    if (mode == ZSTD_e_end) break;
  }
  ZSTD_freeCCtx(cctx);
  return out;
}

const std::vector<MsgKind> kAllKinds = {MsgKind::hello,   MsgKind::collect,    MsgKind::collected,
                                        MsgKind::run,     MsgKind::events,     MsgKind::batch_done,
                                        MsgKind::log,     MsgKind::shutdown,   MsgKind::sync_begin,
                                        MsgKind::sync_state, MsgKind::sync_plan, MsgKind::sync_data,
                                        MsgKind::sync_sigs, MsgKind::sync_end,  MsgKind::sync_done,
                                        MsgKind::sync_fetch, MsgKind::exec, MsgKind::exec_done, MsgKind::warm};

// A plausible body for each kind (the codec does not look at fields, but
// exercising realistic shapes catches CBOR type-mapping surprises).
json sample_body(MsgKind k) {
  switch (k) {
    case MsgKind::hello:
      return {{"version", kProtocolVersion}, {"agent", "host-1"}, {"pid", 4242}, {"slots", 8}};
    case MsgKind::collect:
      return {{"suite", "unit"}, {"binaries", {"/bin/a_test", "/bin/b_test"}}};
    case MsgKind::collected:
      return {{"tests", {{{"id", "A.b"}, {"file", "a.cc"}, {"line", 12}}}},
              {"errors", json::array()}};
    case MsgKind::run:
      return {{"batch", 17}, {"tests", {"A.b", "A.c"}}, {"timeout", 2.5}, {"env", json::object()}};
    case MsgKind::events:
      return {{"batch", 17},
              {"results", {{{"test", "A.b"}, {"outcome", "passed"}, {"ms", 3}}}},
              {"unicode", "h\xC3\xA9llo \xE2\x9C\x93"},
              {"neg", -9223372036854775807LL - 1},
              {"big", std::numeric_limits<std::uint64_t>::max()},
              {"null", nullptr},
              {"flag", false}};
    case MsgKind::batch_done:
      return {{"batch", 17}, {"exit_code", -11}, {"signal", 11}};
    case MsgKind::log:
      return {{"level", "warn"}, {"line", std::string("nul\0byte", 8)}};
    case MsgKind::shutdown:
      return json::object();
    case MsgKind::sync_begin:
      return {{"sync", 1}, {"name", "src"}, {"ignore", {".git/", "*.pyc"}},
              {"digest", json::binary({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})}};
    case MsgKind::sync_state:
      return {{"sync", 1}, {"current", false}, {"manifest", json::binary({0xD7, 0x53, 0, 0})}};
    case MsgKind::sync_plan:
      return {{"sync", 1}, {"delete", {"old.txt"}}, {"dirs", {"a", "a/b"}},
              {"links", {{"l", "../x", 123}}}, {"meta", {{"run.sh", true, 456}}}, {"sigs", {"big.bin"}}};
    case MsgKind::sync_data:
    case MsgKind::sync_sigs:
      return {{"sync", 1}, {"data", json::binary(std::vector<std::uint8_t>(5000, 7))}};
    case MsgKind::sync_end:
      return {{"sync", 1}, {"digest", json::binary(std::vector<std::uint8_t>(16, 0xAB))}};
    case MsgKind::sync_done:
      return {{"sync", 1}, {"ok", true}, {"retry", json::array()}, {"errors", json::array()}};
    case MsgKind::sync_fetch:
      return {{"sync", 1}};
    case MsgKind::exec:
      return {{"id", 1}, {"command", "make -j2"}, {"cwd", "src"}, {"env", {{"DTEST_WORKER", "gw0"}}}};
    case MsgKind::exec_done:
      return {{"id", 1}, {"status", "exit status 0"}, {"exit_code", 0}, {"output", "built\n"}, {"seconds", 1.5}};
    case MsgKind::warm:
      return {{"sources", {{{"kind", "pytest"}, {"cwd", "/w"}, {"args", {"tests"}}}}}, {"env", {{"DTEST_WORKER", "gw1"}}}};
  }
  return json::object();
}

// ---------------------------------------------------------------------------
// Round trips

class MessageRoundTrip : public ::testing::TestWithParam<MsgKind> {};

TEST_P(MessageRoundTrip, ThroughTheWire) {
  Message m;
  m.kind = GetParam();
  m.body = sample_body(GetParam());
  const Message out = wire_round_trip(m);
  EXPECT_EQ(out.kind, m.kind);
  EXPECT_EQ(out.body, m.body);
  EXPECT_TRUE(out.body.is_object());
}

TEST_P(MessageRoundTrip, FrameKindIsTheEnumValue) {
  Message m;
  m.kind = GetParam();
  const Frame f = encode_message(m);
  EXPECT_EQ(f.kind, static_cast<std::uint8_t>(GetParam()));
  EXPECT_EQ(f.flags, 0);
  EXPECT_EQ(f.payload, cbor(json::object()));
}

TEST_P(MessageRoundTrip, CompressedThroughTheWire) {
  Message m;
  m.kind = GetParam();
  m.body = sample_body(GetParam());
  m.body["padding"] = std::string(10000, 'p');
  const Frame f = encode_message(m);
  EXPECT_EQ(f.flags, kFlagZstd);
  const Message out = wire_round_trip(m);
  EXPECT_EQ(out.kind, m.kind);
  EXPECT_EQ(out.body, m.body);
}

INSTANTIATE_TEST_SUITE_P(AllKinds, MessageRoundTrip, ::testing::ValuesIn(kAllKinds),
                         [](const ::testing::TestParamInfo<MsgKind>& p) {
                           return std::string(to_string(p.param));
                         });

TEST(Message, KindNames) {
  EXPECT_EQ(to_string(MsgKind::hello), "hello");
  EXPECT_EQ(to_string(MsgKind::collect), "collect");
  EXPECT_EQ(to_string(MsgKind::collected), "collected");
  EXPECT_EQ(to_string(MsgKind::run), "run");
  EXPECT_EQ(to_string(MsgKind::events), "events");
  EXPECT_EQ(to_string(MsgKind::batch_done), "batch_done");
  EXPECT_EQ(to_string(MsgKind::log), "log");
  EXPECT_EQ(to_string(MsgKind::shutdown), "shutdown");
  EXPECT_EQ(to_string(static_cast<MsgKind>(200)), "unknown");
}

TEST(Message, BinaryValueRoundTrips) {
  Message m;
  m.kind = MsgKind::events;
  m.body = {{"blob", json::binary({0x00, 0xD7, 0xFF})}};
  EXPECT_EQ(wire_round_trip(m).body, m.body);
}

// ---------------------------------------------------------------------------
// Compression

TEST(MessageCompression, OverThresholdIsCompressed) {
  Message m;
  m.kind = MsgKind::events;
  m.body = {{"out", std::string(20000, 'a')}};
  const std::string plain = cbor(m.body);
  const Frame f = encode_message(m);
  EXPECT_EQ(f.flags & kFlagZstd, kFlagZstd);
  EXPECT_LT(f.payload.size(), plain.size());
  EXPECT_EQ(zstd_decompress(f.payload, kMaxDecodedPayload), plain);
  EXPECT_EQ(decode_message(f).body, m.body);
}

TEST(MessageCompression, UnderThresholdIsNotCompressed) {
  Message m;
  m.kind = MsgKind::events;
  m.body = {{"out", std::string(1000, 'a')}};
  const Frame f = encode_message(m);
  EXPECT_EQ(f.flags, 0);
  EXPECT_EQ(f.payload, cbor(m.body));
}

TEST(MessageCompression, ThresholdIsStrictlyGreaterThan) {
  Message m;
  m.kind = MsgKind::log;
  m.body = {{"line", std::string(500, 'x')}};
  const std::size_t n = cbor(m.body).size();
  const Frame at = encode_message(m, n);
  EXPECT_EQ(at.flags, 0) << "payload == compress_over must not be compressed";
  EXPECT_EQ(at.payload, cbor(m.body));
  const Frame over = encode_message(m, n - 1);
  EXPECT_EQ(over.flags, kFlagZstd);
  EXPECT_LT(over.payload.size(), n);
  EXPECT_EQ(decode_message(over).body, m.body);
}

TEST(MessageCompression, IncompressibleStaysPlain) {
  // Over the threshold, but zstd cannot make it smaller: sent as is.
  std::string noise;
  std::uint32_t x = 12345;
  for (int i = 0; i < 8000; ++i) {
    x = x * 1103515245u + 12345u;
    noise.push_back(static_cast<char>(x >> 24));
  }
  Message m;
  m.kind = MsgKind::events;
  m.body = {{"blob", json::binary(std::vector<std::uint8_t>(noise.begin(), noise.end()))}};
  const Frame f = encode_message(m, 100);
  EXPECT_EQ(f.flags, 0);
  EXPECT_EQ(f.payload, cbor(m.body));
  EXPECT_EQ(decode_message(f).body, m.body);
}

TEST(MessageCompression, CustomThresholdZeroCompressesSmallCompressibleBody) {
  Message m;
  m.kind = MsgKind::log;
  m.body = {{"line", std::string(200, 'z')}};
  const Frame f = encode_message(m, 0);
  EXPECT_EQ(f.flags, kFlagZstd);
  EXPECT_EQ(decode_message(f).body, m.body);
}

// ---------------------------------------------------------------------------
// decode_message errors

TEST(DecodeMessage, UnknownKind) {
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(200, cbor(json::object()))); }),
            "unknown message kind 200");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(0, cbor(json::object()))); }),
            "unknown message kind 0");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(20, cbor(json::object()))); }),
            "unknown message kind 20");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(255, "")); }),
            "unknown message kind 255");
}

TEST(DecodeMessage, UnknownKindCheckedBeforePayload) {
  // Even with a garbage zstd payload, the kind is what gets reported.
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(200, "junk", kFlagZstd)); }),
            "unknown message kind 200");
}

TEST(DecodeMessage, MalformedCbor) {
  const std::string msg =
      protocol_error([] { decode_message(raw_frame(4, std::string(1, '\xFF'))); });
  EXPECT_TRUE(starts_with(msg, "run message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, TruncatedCbor) {
  std::string p = cbor({{"batch", 1}, {"name", "abcdef"}});
  p.pop_back();
  const std::string msg = protocol_error([&] { decode_message(raw_frame(5, p)); });
  EXPECT_TRUE(starts_with(msg, "events message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, EmptyPayloadIsMalformed) {
  const std::string msg = protocol_error([] { decode_message(raw_frame(8, "")); });
  EXPECT_TRUE(starts_with(msg, "shutdown message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, TrailingBytesAfterCborAreMalformed) {
  const std::string msg =
      protocol_error([] { decode_message(raw_frame(1, cbor(json::object()) + "x")); });
  EXPECT_TRUE(starts_with(msg, "hello message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, CborTagIsMalformed) {
  // Tag 0 (date/time string) wrapping "": tags are not part of the protocol.
  const std::string msg = protocol_error([] { decode_message(raw_frame(7, "\xC0\x60")); });
  EXPECT_TRUE(starts_with(msg, "log message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, NonStringMapKeyIsMalformed) {
  // {1: 2}
  const std::string msg = protocol_error([] { decode_message(raw_frame(7, "\xA1\x01\x02")); });
  EXPECT_TRUE(starts_with(msg, "log message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, HugeDeclaredLengthsDoNotAllocate) {
  // A map / string announcing 2^32-1 entries/bytes but carrying none: must be
  // a clean error, not an attempt to reserve 4 GB.
  for (const std::string& p : {std::string("\xBA\xFF\xFF\xFF\xFF", 5),
                              std::string("\xA1\x61k\x7A\xFF\xFF\xFF\xFF", 8),
                              std::string("\xA1\x61k\x9A\xFF\xFF\xFF\xFF", 8)}) {
    const std::string msg = protocol_error([&] { decode_message(raw_frame(3, p)); });
    EXPECT_TRUE(starts_with(msg, "collected message: malformed CBOR: ")) << msg;
  }
}

TEST(DecodeMessage, BodyNotAMap) {
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(5, cbor(json::array({1, 2})))); }),
            "events message: body is not a map");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(1, cbor("hi"))); }),
            "hello message: body is not a map");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(6, cbor(42))); }),
            "batch_done message: body is not a map");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(8, cbor(nullptr))); }),
            "shutdown message: body is not a map");
}

TEST(DecodeMessage, BodyNotAMapInsideZstd) {
  const Frame f = raw_frame(2, zstd_compress(cbor(json::array())), kFlagZstd);
  EXPECT_EQ(protocol_error([&] { decode_message(f); }), "collect message: body is not a map");
}

TEST(DecodeMessage, MalformedCborInsideZstd) {
  const Frame f = raw_frame(4, zstd_compress("\xFF\xFF\xFF"), kFlagZstd);
  const std::string msg = protocol_error([&] { decode_message(f); });
  EXPECT_TRUE(starts_with(msg, "run message: malformed CBOR: ")) << msg;
}

TEST(DecodeMessage, ZstdFlagOnNonZstdPayload) {
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(4, cbor(json::object()), kFlagZstd)); }),
            "zstd payload is not a zstd frame");
  EXPECT_EQ(protocol_error([] { decode_message(raw_frame(4, "", kFlagZstd)); }),
            "zstd payload is not a zstd frame");
}

TEST(DecodeMessage, TruncatedZstdPayload) {
  Message m;
  m.kind = MsgKind::events;
  m.body = {{"out", std::string(20000, 'a') + std::string(20000, 'b')}};
  Frame f = encode_message(m);
  ASSERT_EQ(f.flags, kFlagZstd);
  f.payload.resize(f.payload.size() - 3);
  const std::string msg = protocol_error([&] { decode_message(f); });
  EXPECT_TRUE(starts_with(msg, "corrupt zstd payload: ")) << msg;
}

TEST(DecodeMessage, CorruptZstdPayloadNeverEscapesAsOtherError) {
  // Flip each byte after the zstd frame header in turn: every result must be
  // a clean ProtocolError or a successfully decoded map, never a crash or a
  // different exception type.
  Message m;
  m.kind = MsgKind::events;
  json results = json::array();
  for (int i = 0; i < 200; ++i) results.push_back({{"test", "T." + std::to_string(i)}, {"ms", i}});
  m.body = {{"results", results}};
  const Frame good = encode_message(m, 0);
  ASSERT_EQ(good.flags, kFlagZstd);
  int errors = 0;
  for (std::size_t i = 0; i < good.payload.size(); ++i) {
    Frame f = good;
    f.payload[i] = static_cast<char>(f.payload[i] ^ 0x5A);
    try {
      const Message out = decode_message(f);
      EXPECT_TRUE(out.body.is_object());
    } catch (const ProtocolError&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(DecodeMessage, ConcatenatedZstdFramesRejected) {
  // The first frame's declared size is what gets allocated; a second frame
  // with more content must not overflow it.
  const std::string p = zstd_compress(cbor(json::object())) + zstd_compress(std::string(100, 'x'));
  EXPECT_THROW(decode_message(raw_frame(1, p, kFlagZstd)), ProtocolError);
}

TEST(DecodeMessage, ZstdBombHeaderRefused) {
  // A hand-made zstd frame header declaring kMaxDecodedPayload + 1 bytes
  // (single-segment, 8-byte content size), followed by an empty last block.
  const std::uint64_t size = kMaxDecodedPayload + 1;
  std::string p = "\x28\xB5\x2F\xFD\xE0";
  for (int i = 0; i < 8; ++i) p.push_back(static_cast<char>((size >> (8 * i)) & 0xFF));
  p += std::string("\x01\x00\x00", 3);  // last block, raw, size 0
  EXPECT_EQ(protocol_error([&] { decode_message(raw_frame(5, p, kFlagZstd)); }),
            "zstd payload would expand to 268435457 bytes (limit 268435456)");
}

TEST(DecodeMessage, RealZstdBombRefused) {
  // 256 MB + 1 of zeros compresses to a few KB; it must be refused from the
  // header, without inflating it.
  const std::string p = zstd_stream(kMaxDecodedPayload + 1, '\0', /*declare_size=*/true);
  ASSERT_LT(p.size(), kMaxFramePayload);
  EXPECT_EQ(protocol_error([&] { decode_message(raw_frame(5, p, kFlagZstd)); }),
            "zstd payload would expand to 268435457 bytes (limit 268435456)");
}

TEST(DecodeMessage, ZstdWithoutDeclaredSizeRefused) {
  const std::string p = zstd_stream(1000, 'a', /*declare_size=*/false);
  ASSERT_EQ(ZSTD_getFrameContentSize(p.data(), p.size()), ZSTD_CONTENTSIZE_UNKNOWN);
  EXPECT_EQ(protocol_error([&] { decode_message(raw_frame(5, p, kFlagZstd)); }),
            "zstd payload does not declare its size");
}

TEST(DecodeMessage, DeeplyNestedCborRejectedCleanly) {
  for (std::size_t depth : {std::size_t{100000}, std::size_t{10000000}}) {
    std::string nested(depth, '\x81');  // [[[[...
    nested += '\xA0';                   // {}
    for (const Frame& f : {raw_frame(5, nested), raw_frame(5, zstd_compress(nested), kFlagZstd)}) {
      if (f.payload.size() > kMaxFramePayload) continue;
      const std::string msg = protocol_error([&] { decode_message(f); });
      EXPECT_EQ(msg, "events message: nesting deeper than 128 levels");
    }
  }
}

TEST(DecodeMessage, ModeratelyNestedCborIsFine) {
  // Shallow nesting (well within any sane limit) decodes normally.
  json j = json::object();
  for (int i = 0; i < 64; ++i) j = json{{"x", j}};
  const Message out = decode_message(raw_frame(5, cbor(j)));
  EXPECT_EQ(out.body, j);
}

// ---------------------------------------------------------------------------
// zstd helpers

TEST(Zstd, RoundTrip) {
  const std::string in = std::string(5000, 'q') + "tail";
  const std::string z = zstd_compress(in);
  EXPECT_LT(z.size(), in.size());
  EXPECT_EQ(zstd_decompress(z, in.size()), in);
}

TEST(Zstd, EmptyRoundTrip) {
  const std::string z = zstd_compress("");
  EXPECT_EQ(zstd_decompress(z, 0), "");
}

TEST(Zstd, MaxOutIsInclusive) {
  const std::string in(1000, 'r');
  const std::string z = zstd_compress(in);
  EXPECT_EQ(zstd_decompress(z, 1000), in);
  EXPECT_EQ(protocol_error([&] { zstd_decompress(z, 999); }),
            "zstd payload would expand to 1000 bytes (limit 999)");
}

// ---------------------------------------------------------------------------
// Field accessors

Message run_msg() {
  Message m;
  m.kind = MsgKind::run;
  m.body = {{"batch", 7}, {"name", "b7"}, {"ratio", 1.5}, {"neg", -3}, {"flag", true},
            {"num_str", "12"}, {"null", nullptr}};
  return m;
}

TEST(Fields, FieldPresent) {
  const Message m = run_msg();
  EXPECT_EQ(field(m, "batch"), 7);
  EXPECT_TRUE(field(m, "null").is_null());  // present, even if null
}

TEST(Fields, FieldMissing) {
  const Message m = run_msg();
  EXPECT_EQ(protocol_error([&] { field(m, "nope"); }), "run message: field 'nope' missing");
  Message empty;
  empty.kind = MsgKind::run;
  EXPECT_EQ(protocol_error([&] { field(empty, "batch"); }), "run message: field 'batch' missing");
}

TEST(Fields, GetString) {
  const Message m = run_msg();
  EXPECT_EQ(get_string(m, "name"), "b7");
  EXPECT_EQ(get_string(m, "num_str"), "12");
  EXPECT_EQ(protocol_error([&] { get_string(m, "batch"); }),
            "run message: field 'batch' is not a string");
  EXPECT_EQ(protocol_error([&] { get_string(m, "null"); }),
            "run message: field 'null' is not a string");
  EXPECT_EQ(protocol_error([&] { get_string(m, "missing"); }),
            "run message: field 'missing' missing");
}

TEST(Fields, GetInt) {
  const Message m = run_msg();
  EXPECT_EQ(get_int(m, "batch"), 7);
  EXPECT_EQ(get_int(m, "neg"), -3);
  EXPECT_EQ(protocol_error([&] { get_int(m, "name"); }),
            "run message: field 'name' is not an integer");
  EXPECT_EQ(protocol_error([&] { get_int(m, "num_str"); }),
            "run message: field 'num_str' is not an integer");
  EXPECT_EQ(protocol_error([&] { get_int(m, "ratio"); }),
            "run message: field 'ratio' is not an integer");
  EXPECT_EQ(protocol_error([&] { get_int(m, "flag"); }),
            "run message: field 'flag' is not an integer");
  EXPECT_EQ(protocol_error([&] { get_int(m, "batch2"); }),
            "run message: field 'batch2' missing");
}

TEST(Fields, GetBytes) {
  Message m;
  m.kind = MsgKind::sync_data;
  m.body = {{"data", json::binary({0, 1, 0xFF})}, {"text", "abc"}};
  const Message out = wire_round_trip(m);
  EXPECT_EQ(get_bytes(out, "data"), std::string_view("\x00\x01\xFF", 3));
  EXPECT_EQ(protocol_error([&] { get_bytes(out, "text"); }),
            "sync_data message: field 'text' is not a byte string");
  EXPECT_EQ(protocol_error([&] { get_bytes(out, "nope"); }),
            "sync_data message: field 'nope' missing");
}

TEST(Fields, GetIntExtremesAfterWireRoundTrip) {
  Message m;
  m.kind = MsgKind::batch_done;
  m.body = {{"min", std::numeric_limits<std::int64_t>::min()},
            {"max", std::numeric_limits<std::int64_t>::max()},
            {"umax_fits", std::uint64_t{9223372036854775807ULL}}};
  const Message out = wire_round_trip(m);
  EXPECT_EQ(get_int(out, "min"), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(get_int(out, "max"), std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(get_int(out, "umax_fits"), std::numeric_limits<std::int64_t>::max());
}

TEST(Fields, GetIntRejectsUnsignedOutOfRange) {
  Message m;
  m.kind = MsgKind::run;
  m.body = {{"batch", std::numeric_limits<std::uint64_t>::max()}};
  const Message out = wire_round_trip(m);
  EXPECT_THROW(get_int(out, "batch"), ProtocolError);
}

TEST(Fields, ErrorsNameTheKind) {
  Message m;
  m.kind = MsgKind::batch_done;
  EXPECT_EQ(protocol_error([&] { get_int(m, "exit_code"); }),
            "batch_done message: field 'exit_code' missing");
  m.kind = MsgKind::hello;
  m.body = {{"agent", 3}};
  EXPECT_EQ(protocol_error([&] { get_string(m, "agent"); }),
            "hello message: field 'agent' is not a string");
}

}  // namespace
}  // namespace dtest

namespace {

TEST(ResultRecords, RoundTripThroughAnEventsMessage) {
  std::vector<std::uint8_t> bytes;
  dtest::append_record(bytes, {0, dtest::Outcome::passed, 0.25});
  dtest::append_record(bytes, {7, dtest::Outcome::crashed, 1e-6});
  dtest::append_record(bytes, {4294967295u, dtest::Outcome::not_run, 0});
  ASSERT_EQ(bytes.size(), 3 * dtest::kResultRecordSize);
  // Little-endian on the wire whatever the host.
  EXPECT_EQ(bytes[16], 7);
  EXPECT_EQ(bytes[20], static_cast<std::uint8_t>(dtest::Outcome::crashed));
  dtest::Message m{dtest::MsgKind::events, {{"batch", 1}, {"results", nlohmann::json::binary(bytes)}}};
  const dtest::Message out = dtest::decode_message(dtest::encode_message(m));
  const auto recs = dtest::decode_records(out.body["results"]);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].index, 0u);
  EXPECT_EQ(recs[0].outcome, dtest::Outcome::passed);
  EXPECT_EQ(recs[0].seconds, 0.25);
  EXPECT_EQ(recs[1].index, 7u);
  EXPECT_EQ(recs[1].outcome, dtest::Outcome::crashed);
  EXPECT_EQ(recs[1].seconds, 1e-6);
  EXPECT_EQ(recs[2].index, 4294967295u);
  EXPECT_EQ(recs[2].outcome, dtest::Outcome::not_run);
}

std::string records_error(const nlohmann::json& j) {
  return dtest::testing::protocol_error([&] { dtest::decode_records(j); });
}

TEST(ResultRecords, MalformedRecordsAreProtocolErrors) {
  EXPECT_EQ(records_error("text"), "events message: 'results' is not a byte string");
  EXPECT_EQ(records_error(nlohmann::json::binary(std::vector<std::uint8_t>(17))),
            "events message: 'results' is 17 bytes, not a multiple of 16");
  std::vector<std::uint8_t> bad_outcome(16, 0);
  bad_outcome[4] = 7;
  EXPECT_EQ(records_error(nlohmann::json::binary(bad_outcome)), "events message: unknown outcome code 7");
  std::vector<std::uint8_t> negative;
  dtest::append_record(negative, {0, dtest::Outcome::passed, -1.0});
  EXPECT_EQ(records_error(nlohmann::json::binary(negative)), "events message: bad duration in record 0");
  std::vector<std::uint8_t> nan;
  dtest::append_record(nan, {0, dtest::Outcome::passed, std::numeric_limits<double>::quiet_NaN()});
  EXPECT_EQ(records_error(nlohmann::json::binary(nan)), "events message: bad duration in record 0");
  EXPECT_TRUE(dtest::decode_records(nlohmann::json::binary(std::vector<std::uint8_t>{})).empty());
}

}  // namespace
