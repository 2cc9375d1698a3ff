#include "common/message.h"

#include <cstring>

#include <zstd.h>

namespace dtest {

std::string_view to_string(MsgKind k) {
  switch (k) {
    case MsgKind::hello: return "hello";
    case MsgKind::collect: return "collect";
    case MsgKind::collected: return "collected";
    case MsgKind::run: return "run";
    case MsgKind::events: return "events";
    case MsgKind::batch_done: return "batch_done";
    case MsgKind::log: return "log";
    case MsgKind::shutdown: return "shutdown";
    case MsgKind::sync_begin: return "sync_begin";
    case MsgKind::sync_state: return "sync_state";
    case MsgKind::sync_plan: return "sync_plan";
    case MsgKind::sync_data: return "sync_data";
    case MsgKind::sync_sigs: return "sync_sigs";
    case MsgKind::sync_end: return "sync_end";
    case MsgKind::sync_done: return "sync_done";
    case MsgKind::sync_fetch: return "sync_fetch";
    case MsgKind::exec: return "exec";
    case MsgKind::exec_done: return "exec_done";
    case MsgKind::warm: return "warm";
  }
  return "unknown";
}

std::string zstd_compress(std::string_view in, int level) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  const std::size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
  if (ZSTD_isError(n)) throw ProtocolError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

std::string zstd_decompress(std::string_view in, std::size_t max_out) {
  const unsigned long long size = ZSTD_getFrameContentSize(in.data(), in.size());
  if (size == ZSTD_CONTENTSIZE_ERROR)
    throw ProtocolError("zstd payload is not a zstd frame");
  if (size == ZSTD_CONTENTSIZE_UNKNOWN)
    throw ProtocolError("zstd payload does not declare its size");
  if (size > max_out)
    throw ProtocolError("zstd payload would expand to " + std::to_string(size) +
                        " bytes (limit " + std::to_string(max_out) + ")");
  std::string out(static_cast<std::size_t>(size), '\0');
  const std::size_t n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n) || n != size)
    throw ProtocolError(std::string("corrupt zstd payload: ") +
                        (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size mismatch"));
  return out;
}

Frame encode_message(const Message& m, std::size_t compress_over) {
  Frame f;
  f.kind = static_cast<std::uint8_t>(m.kind);
  std::vector<std::uint8_t> cbor = nlohmann::json::to_cbor(m.body);
  f.payload.assign(cbor.begin(), cbor.end());
  if (f.payload.size() > compress_over) {
    std::string z = zstd_compress(f.payload);
    if (z.size() < f.payload.size()) {
      f.payload = std::move(z);
      f.flags |= kFlagZstd;
    }
  }
  return f;
}

namespace {

// Rejects nesting deeper than kMaxDepth before the real (recursive) parse,
// so a hostile peer cannot overflow the stack with [[[[...]]]].
constexpr int kMaxDepth = 128;

struct DepthCheck : nlohmann::json_sax<nlohmann::json> {
  int depth = 0;
  bool too_deep = false;
  bool push() {
    if (++depth > kMaxDepth) {
      too_deep = true;
      return false;
    }
    return true;
  }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return push(); }
  bool key(string_t&) override { return true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return push(); }
  bool end_array() override { return --depth, true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }
};

}  // namespace

Message decode_message(const Frame& f) {
  Message m;
  if (f.kind < static_cast<std::uint8_t>(MsgKind::hello) ||
      f.kind > static_cast<std::uint8_t>(kLastMsgKind))
    throw ProtocolError("unknown message kind " + std::to_string(f.kind));
  m.kind = static_cast<MsgKind>(f.kind);
  std::string plain;
  std::string_view bytes = f.payload;
  if (f.flags & kFlagZstd) {
    plain = zstd_decompress(f.payload, kMaxDecodedPayload);
    bytes = plain;
  }
  DepthCheck depth;
  nlohmann::json::sax_parse(bytes.begin(), bytes.end(), &depth, nlohmann::json::input_format_t::cbor);
  if (depth.too_deep)
    throw ProtocolError(std::string(to_string(m.kind)) + " message: nesting deeper than " +
                        std::to_string(kMaxDepth) + " levels");
  try {
    m.body = nlohmann::json::from_cbor(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw ProtocolError(std::string(to_string(m.kind)) + " message: malformed CBOR: " + e.what());
  }
  if (!m.body.is_object())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: body is not a map");
  return m;
}

void append_record(std::vector<std::uint8_t>& out, const ResultRecord& r) {
  std::uint64_t secs;
  static_assert(sizeof secs == sizeof r.seconds);
  std::memcpy(&secs, &r.seconds, sizeof secs);
  const auto code = static_cast<std::uint32_t>(r.outcome);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(r.index >> (8 * i)));
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(code >> (8 * i)));
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(secs >> (8 * i)));
}

std::vector<ResultRecord> decode_records(const nlohmann::json& bytes) {
  if (!bytes.is_binary()) throw ProtocolError("events message: 'results' is not a byte string");
  const auto& b = bytes.get_binary();
  if (b.size() % kResultRecordSize != 0)
    throw ProtocolError("events message: 'results' is " + std::to_string(b.size()) +
                        " bytes, not a multiple of " + std::to_string(kResultRecordSize));
  std::vector<ResultRecord> out;
  out.reserve(b.size() / kResultRecordSize);
  for (std::size_t off = 0; off < b.size(); off += kResultRecordSize) {
    auto u = [&](std::size_t at, int n) {
      std::uint64_t v = 0;
      for (int i = 0; i < n; ++i) v |= std::uint64_t{b[off + at + static_cast<std::size_t>(i)]} << (8 * i);
      return v;
    };
    ResultRecord r;
    r.index = static_cast<std::uint32_t>(u(0, 4));
    const auto code = u(4, 4);
    // Codes above not_run (flaky: the master's own verdict after --retries)
    // never come from an agent.
    if (code > static_cast<std::uint64_t>(Outcome::not_run))
      throw ProtocolError("events message: unknown outcome code " + std::to_string(code));
    r.outcome = static_cast<Outcome>(code);
    const std::uint64_t secs = u(8, 8);
    std::memcpy(&r.seconds, &secs, sizeof secs);
    if (!(r.seconds >= 0 && r.seconds < 1e9))
      throw ProtocolError("events message: bad duration in record " + std::to_string(off / kResultRecordSize));
    out.push_back(r);
  }
  return out;
}

const nlohmann::json& field(const Message& m, const char* name) {
  auto it = m.body.find(name);
  if (it == m.body.end())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name + "' missing");
  return *it;
}

std::string get_string(const Message& m, const char* name) {
  const auto& v = field(m, name);
  if (!v.is_string())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name +
                        "' is not a string");
  return v.get<std::string>();
}

std::int64_t get_int(const Message& m, const char* name) {
  const auto& v = field(m, name);
  if (!v.is_number_integer())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name +
                        "' is not an integer");
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name +
                        "' is out of range");
  return v.get<std::int64_t>();
}

std::string_view get_bytes(const Message& m, const char* name) {
  const auto& v = field(m, name);
  if (!v.is_binary())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name +
                        "' is not a byte string");
  const auto& b = v.get_binary();
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

}  // namespace dtest
