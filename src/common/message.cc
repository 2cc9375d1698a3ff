#include "common/message.h"

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

Message decode_message(const Frame& f) {
  Message m;
  if (f.kind < static_cast<std::uint8_t>(MsgKind::hello) ||
      f.kind > static_cast<std::uint8_t>(MsgKind::shutdown))
    throw ProtocolError("unknown message kind " + std::to_string(f.kind));
  m.kind = static_cast<MsgKind>(f.kind);
  std::string plain;
  std::string_view bytes = f.payload;
  if (f.flags & kFlagZstd) {
    plain = zstd_decompress(f.payload, kMaxDecodedPayload);
    bytes = plain;
  }
  try {
    m.body = nlohmann::json::from_cbor(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw ProtocolError(std::string(to_string(m.kind)) + " message: malformed CBOR: " + e.what());
  }
  if (!m.body.is_object())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: body is not a map");
  return m;
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
  return v.get<std::int64_t>();
}

}  // namespace dtest
