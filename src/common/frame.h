// Wire framing: every message between master and agent is one frame.
//
//   byte 0     magic 0xD7
//   byte 1     kind (MsgKind)
//   byte 2     flags (bit 0: payload is zstd-compressed; others must be 0)
//   byte 3     reserved, must be 0
//   bytes 4-7  payload length, unsigned 32-bit big-endian
//   payload    CBOR (after zstd decompression when flagged)
//
// See docs/protocol.md. The decoder is incremental and never trusts a length
// or a byte it has not checked.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dtest {

inline constexpr std::uint8_t kFrameMagic = 0xD7;
inline constexpr std::size_t kFrameHeaderSize = 8;
inline constexpr std::uint8_t kFlagZstd = 0x01;
// Limits: a frame larger than this on the wire is refused, and so is a
// compressed payload that would expand past kMaxDecodedPayload.
inline constexpr std::uint32_t kMaxFramePayload = 64u << 20;
inline constexpr std::size_t kMaxDecodedPayload = 256u << 20;

// Raised for anything malformed coming off the wire. The message says what
// was wrong and where (byte offset in the stream).
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Frame {
  std::uint8_t kind = 0;
  std::uint8_t flags = 0;
  std::string payload;  // as on the wire (still compressed if flagged)
};

// Serialises header + payload.
std::string encode_frame(const Frame& f);

// Incremental decoder: feed() any chunk of bytes, then pop() complete frames.
class FrameDecoder {
 public:
  explicit FrameDecoder(std::uint32_t max_payload = kMaxFramePayload)
      : max_payload_(max_payload) {}
  void feed(std::string_view bytes);
  // The next complete frame, or nullopt if more bytes are needed. Throws
  // ProtocolError on a bad header; the decoder is unusable afterwards.
  std::optional<Frame> pop();
  // Bytes received but not yet consumed (a partial frame at EOF is an error).
  std::size_t buffered() const { return buf_.size() - pos_; }
  std::uint64_t offset() const { return consumed_; }

 private:
  std::string buf_;
  std::size_t pos_ = 0;
  std::uint64_t consumed_ = 0;  // stream offset of buf_[pos_]
  std::uint32_t max_payload_;
};

// Printable excerpt of raw bytes for error messages: 'abc\x01...'.
std::string quote_bytes(std::string_view bytes, std::size_t max = 32);

}  // namespace dtest
