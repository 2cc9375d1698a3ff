#include "common/frame.h"

#include <cstdio>

namespace dtest {

std::string encode_frame(const Frame& f) {
  if (f.payload.size() > kMaxFramePayload)
    throw ProtocolError("refusing to send a frame of " +
                        std::to_string(f.payload.size()) +
                        " bytes (limit " + std::to_string(kMaxFramePayload) + ")");
  std::string out;
  out.reserve(kFrameHeaderSize + f.payload.size());
  const auto n = static_cast<std::uint32_t>(f.payload.size());
  out.push_back(static_cast<char>(kFrameMagic));
  out.push_back(static_cast<char>(f.kind));
  out.push_back(static_cast<char>(f.flags));
  out.push_back('\0');
  out.push_back(static_cast<char>((n >> 24) & 0xFF));
  out.push_back(static_cast<char>((n >> 16) & 0xFF));
  out.push_back(static_cast<char>((n >> 8) & 0xFF));
  out.push_back(static_cast<char>(n & 0xFF));
  out += f.payload;
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  // Compact once the consumed prefix dominates, so memory stays bounded.
  if (pos_ > 0 && pos_ >= buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

std::optional<Frame> FrameDecoder::pop() {
  const std::size_t avail = buf_.size() - pos_;
  if (avail == 0) return std::nullopt;
  const auto* h = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  // Check what we can as soon as we have it, so garbage is reported at once
  // rather than after waiting for a full header that will never come.
  if (h[0] != kFrameMagic)
    throw ProtocolError("bad frame magic at byte " + std::to_string(consumed_) +
                        " (expected 0xD7): " +
                        quote_bytes(std::string_view(buf_).substr(pos_)));
  if (avail < kFrameHeaderSize) return std::nullopt;
  if ((h[2] & ~kFlagZstd) != 0 || h[3] != 0)
    throw ProtocolError("bad frame header at byte " + std::to_string(consumed_) +
                        ": unknown flags " + quote_bytes(std::string_view(buf_).substr(pos_, 4)));
  const std::uint32_t len = (std::uint32_t{h[4]} << 24) | (std::uint32_t{h[5]} << 16) |
                            (std::uint32_t{h[6]} << 8) | std::uint32_t{h[7]};
  if (len > max_payload_)
    throw ProtocolError("oversized frame at byte " + std::to_string(consumed_) + ": " +
                        std::to_string(len) + " bytes (limit " +
                        std::to_string(max_payload_) + ")");
  if (avail < kFrameHeaderSize + len) return std::nullopt;
  Frame f;
  f.kind = h[1];
  f.flags = h[2];
  f.payload.assign(buf_, pos_ + kFrameHeaderSize, len);
  pos_ += kFrameHeaderSize + len;
  consumed_ += kFrameHeaderSize + len;
  return f;
}

std::string quote_bytes(std::string_view bytes, std::size_t max) {
  std::string out = "'";
  for (std::size_t i = 0; i < bytes.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  out += "'";
  if (bytes.size() > max) out += "...";
  return out;
}

}  // namespace dtest
