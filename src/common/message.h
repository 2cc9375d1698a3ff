// Messages: a frame kind plus a CBOR-encoded map. See docs/protocol.md for
// every kind and its fields.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/frame.h"
#include "common/outcome.h"

namespace dtest {

inline constexpr int kProtocolVersion = 1;

enum class MsgKind : std::uint8_t {
  hello = 1,         // agent -> master, first frame: who the agent is
  collect = 2,       // master -> agent: list the tests of a suite
  collected = 3,     // agent -> master: the listing (or per-binary errors)
  run = 4,           // master -> agent: run a batch of tests
  events = 5,        // agent -> master: results of finished tests
  batch_done = 6,    // agent -> master: the batch's process has exited
  log = 7,           // agent -> master: a diagnostic line
  shutdown = 8,      // master -> agent: kill everything and exit
  // The delta syncer (docs/protocol.md, "Sync"):
  sync_begin = 9,    // master -> agent: a root's name, ignore rules, the sender's digest
  sync_state = 10,   // agent -> master: "current", or the receiver's manifest
  sync_plan = 11,    // master -> agent: deletes, dirs, links, metadata, signature requests
  sync_data = 12,    // master -> agent: a bundle of whole files and deltas
  sync_sigs = 13,    // agent -> master: block signatures of the requested files
  sync_end = 14,     // master -> agent: the sender's digest; finish the root
  sync_done = 15,    // agent -> master: the root's outcome (ok, digest, retries, errors)
  sync_fetch = 16,   // master -> agent: send the manifest (after a sync_begin without digest)
  // Set-up hooks (docs/protocol.md, "Set-up hooks"):
  exec = 17,         // master -> agent: run one shell command, capture its output
  exec_done = 18,    // agent -> master: its exit status and output
  warm = 19,         // master -> agent: start the pytest workers of these sources now
};
inline constexpr MsgKind kLastMsgKind = MsgKind::warm;

std::string_view to_string(MsgKind k);

struct Message {
  MsgKind kind{};
  nlohmann::json body = nlohmann::json::object();  // always an object
};

// Encodes as CBOR; payloads over `compress_over` bytes are zstd-compressed
// when that makes them smaller.
Frame encode_message(const Message& m, std::size_t compress_over = 4096);
// Decodes and checks the kind is known and the body is a map. Throws
// ProtocolError naming the kind and the problem.
Message decode_message(const Frame& f);

// zstd helpers (also used for bulk payloads).
std::string zstd_compress(std::string_view in, int level = 3);
std::string zstd_decompress(std::string_view in, std::size_t max_out);

// Per-test results travel packed, 16 bytes each, in an `events` message's
// `results` byte string: u32 index in the batch, u32 outcome code (the
// Outcome enum's value), f64 seconds; all little-endian. 20,000 results are
// one 320 KB string, not 20,000 maps.
struct ResultRecord {
  std::uint32_t index = 0;
  Outcome outcome = Outcome::passed;
  double seconds = 0;
};
inline constexpr std::size_t kResultRecordSize = 16;
void append_record(std::vector<std::uint8_t>& out, const ResultRecord& r);
// Throws ProtocolError unless `bytes` is a byte string of whole, valid records.
std::vector<ResultRecord> decode_records(const nlohmann::json& bytes);

// Typed accessors that raise ProtocolError instead of a json exception:
// "run message: field 'batch' missing or not an integer".
const nlohmann::json& field(const Message& m, const char* name);
std::string get_string(const Message& m, const char* name);
std::int64_t get_int(const Message& m, const char* name);
// A byte string field (CBOR major type 2), as a view into the message.
std::string_view get_bytes(const Message& m, const char* name);

}  // namespace dtest
