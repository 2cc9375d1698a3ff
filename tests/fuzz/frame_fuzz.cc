// libFuzzer target for the wire protocol: FrameDecoder + decode_message.
//
// Input layout (so the fuzzer can mutate the chunking as well as the bytes):
//   byte 0          n = (byte0 % 8) + 1: number of chunk-size entries
//   bytes 1..n      chunk-size table; entry e feeds (e + 1) bytes, or the whole
//                   rest of the stream when e == 0xFF
//   rest            the byte stream, fed to FrameDecoder in chunks whose sizes
//                   cycle through the table
//
// After every feed, all complete frames are popped and each is passed to
// decode_message; a decoded message is re-encoded and decoded again (must give
// the same body) and its fields are read through field/get_string/get_int.
// ProtocolError is the only exception allowed out of the protocol code;
// anything else, a sanitizer report or a failed invariant is a bug.
//
// Build with -DDTEST_FUZZ_SKIP_KNOWN_BUGS to steer around the bugs already
// reported (deeply nested CBOR overflowing the stack; get_int wrapping
// unsigned values > INT64_MAX) so a run can look for new ones.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "common/frame.h"
#include "common/message.h"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "frame_fuzz: invariant violated: %s\n", what);
  std::abort();
}

#ifdef DTEST_FUZZ_SKIP_KNOWN_BUGS
// SAX handler that only tracks nesting depth and stops the parse (returns
// false) once it exceeds the limit, so the check itself cannot recurse deeply.
struct DepthProbe {
  using json = nlohmann::json;
  std::size_t depth = 0;
  std::size_t limit;
  bool too_deep = false;
  explicit DepthProbe(std::size_t l) : limit(l) {}
  bool open() {
    if (++depth > limit) {
      too_deep = true;
      return false;
    }
    return true;
  }
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) { return open(); }
  bool key(json::string_t&) { return true; }
  bool end_object() { --depth; return true; }
  bool start_array(std::size_t) { return open(); }
  bool end_array() { --depth; return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    return false;
  }
};

// True if the frame's CBOR nests deeper than anything sane (the known stack
// overflow in decode_message).
bool too_deep(const dtest::Frame& f) {
  std::string plain;
  std::string_view bytes = f.payload;
  if (f.flags & dtest::kFlagZstd) {
    try {
      plain = dtest::zstd_decompress(f.payload, dtest::kMaxDecodedPayload);
    } catch (const dtest::ProtocolError&) {
      return false;  // decode_message will fail the same way before parsing
    }
    bytes = plain;
  }
  DepthProbe probe(512);
  nlohmann::json::sax_parse(bytes.begin(), bytes.end(), &probe,
                            nlohmann::json::input_format_t::cbor, /*strict=*/true);
  return probe.too_deep;
}
#endif

void check_message(const dtest::Message& m) {
  if (!m.body.is_object()) fail("decoded body is not an object");

  // Re-encoding must round-trip (compare CBOR so NaN != NaN does not matter).
  for (std::size_t threshold : {std::size_t{0}, std::size_t{4096}}) {
    const dtest::Frame again = dtest::encode_message(m, threshold);
    std::string wire;
    try {
      wire = dtest::encode_frame(again);
    } catch (const dtest::ProtocolError&) {
      continue;  // a body that re-encodes over the frame limit: legitimate
    }
    dtest::FrameDecoder d;
    d.feed(wire);
    auto f = d.pop();
    if (!f || d.buffered() != 0) fail("re-encoded frame does not decode as one frame");
    const dtest::Message back = dtest::decode_message(*f);
    if (back.kind != m.kind) fail("kind changed on re-encode");
    if (nlohmann::json::to_cbor(back.body) != nlohmann::json::to_cbor(m.body))
      fail("body changed on re-encode");
  }

  // The typed accessors must either succeed or raise ProtocolError.
  for (const auto& [key, value] : m.body.items()) {
    try {
      (void)dtest::field(m, key.c_str());
    } catch (const dtest::ProtocolError&) {
      // A key containing NUL is looked up truncated and may be missing.
      if (key.find('\0') == std::string::npos) fail("field() missed a present key");
    }
    try {
      const std::string s = dtest::get_string(m, key.c_str());
      if (key.find('\0') == std::string::npos && !value.is_string())
        fail("get_string accepted a non-string");
    } catch (const dtest::ProtocolError&) {
    }
    try {
      const std::int64_t v = dtest::get_int(m, key.c_str());
      (void)v;
#ifndef DTEST_FUZZ_SKIP_KNOWN_BUGS
      if (key.find('\0') == std::string::npos && value.is_number_unsigned() &&
          value.get<std::uint64_t>() >
              static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail("get_int wrapped an unsigned value > INT64_MAX");
#endif
    } catch (const dtest::ProtocolError&) {
    }
  }
}

void handle_frame(const dtest::Frame& f) {
#ifdef DTEST_FUZZ_SKIP_KNOWN_BUGS
  if (too_deep(f)) return;
#endif
  dtest::Message m;
  try {
    m = dtest::decode_message(f);
  } catch (const dtest::ProtocolError&) {
    return;
  }
  check_message(m);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t ntable = (data[0] % 8) + 1;
  if (size < 1 + ntable) return 0;
  const std::uint8_t* table = data + 1;
  const std::string_view stream(reinterpret_cast<const char*>(data + 1 + ntable),
                                size - 1 - ntable);

  dtest::FrameDecoder decoder;
  std::size_t pos = 0;
  std::size_t popped_bytes = 0;
  for (std::size_t i = 0; pos < stream.size(); ++i) {
    const std::uint8_t e = table[i % ntable];
    const std::size_t n = e == 0xFF ? stream.size() - pos : std::size_t{e} + 1;
    const std::string_view chunk = stream.substr(pos, n);
    pos += chunk.size();
    decoder.feed(chunk);
    try {
      while (auto f = decoder.pop()) {
        popped_bytes += dtest::kFrameHeaderSize + f->payload.size();
        if (decoder.offset() != popped_bytes) fail("offset() disagrees with popped frames");
        if (f->flags & ~dtest::kFlagZstd) fail("popped a frame with unknown flags");
        handle_frame(*f);
      }
    } catch (const dtest::ProtocolError&) {
      return 0;  // the stream is bad; the decoder is unusable from here on
    }
    if (decoder.buffered() != pos - popped_bytes) fail("buffered() is wrong");
  }
  return 0;
}

#ifdef DTEST_FUZZ_SEED_MAIN
// Seed-corpus writer (built without -fsanitize=fuzzer by build.sh):
//   frame_fuzz_seeds DIR   writes a few valid inputs into DIR.
#include <fstream>

namespace {

std::string wire(dtest::MsgKind kind, nlohmann::json body, std::size_t compress_over = 4096) {
  dtest::Message m;
  m.kind = kind;
  m.body = std::move(body);
  return dtest::encode_frame(dtest::encode_message(m, compress_over));
}

void write_seed(const std::string& dir, const char* name, std::string table,
                const std::string& stream) {
  std::string data(1, static_cast<char>(table.size() - 1));
  data += table;
  data += stream;
  std::ofstream(dir + "/" + name, std::ios::binary) << data;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  using dtest::MsgKind;
  using nlohmann::json;
  const std::string dir = argv[1];
  // One hello, fed in one go.
  write_seed(dir, "hello", "\xFF",
             wire(MsgKind::hello, {{"version", dtest::kProtocolVersion}, {"agent", "host-1"},
                                   {"pid", 4242}, {"slots", 8}}));
  // run + events + batch_done, fed in chunks of 1, 3 and 7 bytes.
  write_seed(dir, "run_events_done", std::string("\x00\x02\x06", 3),
             wire(MsgKind::run, {{"batch", 17}, {"tests", {"A.b", "A.c"}}, {"timeout", 2.5}}) +
                 wire(MsgKind::events,
                      {{"batch", 17},
                       {"results", {{{"test", "A.b"}, {"outcome", "passed"}, {"ms", 3}}}}}) +
                 wire(MsgKind::batch_done, {{"batch", 17}, {"exit_code", -11}}));
  // A zstd-compressed events message, fed in chunks of 64 bytes.
  json results = json::array();
  for (int i = 0; i < 40; ++i)
    results.push_back({{"test", "Suite.case_" + std::to_string(i)}, {"outcome", "failed"}});
  write_seed(dir, "events_zstd", "\x3F", wire(MsgKind::events, {{"results", results}}, 0));
  // collect, collected, log, shutdown, byte by byte.
  write_seed(dir, "misc_bytewise", std::string("\x00", 1),
             wire(MsgKind::collect, {{"suite", "unit"}, {"binaries", {"/bin/a_test"}}}) +
                 wire(MsgKind::collected, {{"tests", json::array()}, {"errors", json::array()}}) +
                 wire(MsgKind::log, {{"level", "warn"}, {"line", "x"}}) +
                 wire(MsgKind::shutdown, json::object()));
  return 0;
}
#endif
