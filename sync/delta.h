// rsync's algorithm: the receiver describes the file it has (its "basis") as
// a signature, one weak rolling checksum and one truncated strong hash per
// block; the sender finds those blocks in the new file at any byte offset
// and sends a delta: copies of basis blocks plus the literal bytes in
// between. The receiver rebuilds the new file from the basis and the delta
// and checks the whole-file hash (XXH3-128) the sender announced, so a
// collision of the truncated block hashes costs a resend, never a wrong file.
//
// ---------------------------------------------------------------------------
// Wire formats (copied into docs/protocol.md)
//
// varint: unsigned LEB128, 7 bits per byte, least significant group first,
//   high bit = "more bytes follow". At most 10 bytes for a 64-bit value (the
//   10th may only be 0 or 1) and canonical: no trailing 0x00 group (a value
//   needing k groups is written in exactly k bytes). Anything else is
//   rejected.
//
// Blocks: the basis is cut into ceil(file_size / block_size) blocks of
//   block_size bytes; the last one may be shorter. An empty basis has none.
//
// Weak checksum (rolling): rsync's two running sums, taken over 64-bit
//   random values per byte instead of the bytes themselves. For a window
//   x[0..L):
//     a    = sum_i T[x[i]]              (mod 2^64)
//     b    = sum_i (L - i) * T[x[i]]    (mod 2^64)
//     weak = (a * K + b) >> 32          (mod 2^64 first; the top 32 bits)
//   with K = 0xD6E8FEB86659FD93 and T[i] = the (i+1)-th output of splitmix64
//   seeded with 0 (state += 0x9E3779B97F4A7C15; z = state;
//   z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB;
//   out = z ^ z>>31). Sliding the window by one byte costs two additions
//   each: a' = a - T[out] + T[in], b' = b - L * T[out] + a'. Unlike rsync's
//   16-bit sums of raw bytes, its top bits are close to uniform on text and
//   on zero-heavy data, so weak hits that fail the strong check (each costs
//   hashing a block) stay rare.
//
// Strong hash: XXH3-64 (seed 0) of the block's bytes, truncated to its low
//   strong_len bytes (written little-endian, strong_len bytes).
//
// Signature (encode_signature / decode_signature):
//     varint block_size     1 .. 131072 (make_signature: multiple of 8, >= 512)
//     u8     strong_len     2 .. 8
//     varint file_size      of the basis
//     varint block_count    must equal ceil(file_size / block_size), < 2^32
//     block_count x { u32 weak (little-endian), strong_len bytes strong (LE) }
//   and nothing after. Size: about 4 + (4 + strong_len) * block_count bytes.
//
// Delta (make_delta / DeltaApplier): a sequence of ops, ended by END.
//     0x01 COPY     varint first, varint count   count >= 1 and
//                   first + count <= block_count: basis blocks
//                   [first, first + count) (the last one may be short)
//     0x02 LITERAL  varint len, then len bytes   len >= 1
//     0x00 END      varint total                 total = bytes of the new
//                   file; must be the last byte of the delta
//   Any other op byte is an error. make_delta coalesces consecutive blocks
//   into one COPY and adjacent literal bytes into one LITERAL, so an
//   unchanged file is "01 00 <count> 00 <size>" and a small change costs a
//   literal of about one or two blocks plus a dozen bytes of ops.
//
// Strong length (choose_strong_len): a false block match needs the weak AND
// the truncated strong hash of some target window to equal those of some
// basis block. With N target offsets and about N / block_size blocks there
// are at most N^2 / block_size window/block pairs, so we keep
//     bits = 10 + 2 * ceil(log2 N) - floor(log2 block_size) - 24
// strong bits, i.e. ceil(bits / 8) bytes clamped to 2..8. The 32 weak bits
// get 24 bits of credit, not all 32 as rsync gives them: the sums are linear
// (two windows with the same bytes and the same "centre of mass", e.g.
// "abba"/"baab", always collide) and real data is not random. What makes
// this safe is that a false match never produces a wrong file: the receiver
// checks the whole file's XXH3-128 and asks for it whole (one more round
// trip) when it does not match. The signature is most of a delta sync's
// bytes on the wire, so this keeps them at or below rsync's. Examples:
// 4 KiB and 1 MiB -> 2 bytes, 100 MiB and 1 GiB -> 4, 4 GiB -> 5. make_delta also tries "the
// block after the one just matched" by its strong hash alone (no weak
// check, one try per match): <= N / block_size tries at 2^-(8*strong_len).
// ---------------------------------------------------------------------------
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dtest::sync {

// Raised for malformed signatures and deltas (bytes from a peer).
struct DeltaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// About sqrt(size), a multiple of 8, clamped to [512, 128 KiB] (rsync's rule).
std::uint32_t choose_block_size(std::uint64_t file_size);
// Bytes of the strong hash kept per block: grows with the file's size so the
// chance of a false block match stays negligible (2..8 bytes; rsync does the
// same with its sum2 length).
std::uint32_t choose_strong_len(std::uint64_t file_size, std::uint32_t block_size);

struct Signature {
  std::uint32_t block_size = 0;
  std::uint32_t strong_len = 0;   // bytes of XXH3-64 kept per block (2..8)
  std::uint64_t file_size = 0;    // of the basis; the last block may be short
  std::vector<std::uint32_t> weak;    // one per block
  std::vector<std::uint64_t> strong;  // one per block, truncated to strong_len bytes
};

// The signature of `basis` (block size and strong length chosen from its size).
Signature make_signature(std::string_view basis);
// Same with the sizes given (tests, the fuzzer): block_size 1..128 KiB,
// strong_len 2..8, else DeltaError.
Signature make_signature(std::string_view basis, std::uint32_t block_size,
                         std::uint32_t strong_len);

// Compact encoding: header + per block 4 bytes weak + strong_len bytes strong.
std::string encode_signature(const Signature& sig);
// Throws DeltaError for anything malformed (sizes that disagree, zero or
// oversized block size, strong_len outside 2..8, trailing bytes).
Signature decode_signature(std::string_view bytes);

// The delta that turns the basis described by `sig` into `target`, as an
// op stream: COPY(first block, block count) and LITERAL(bytes). The ops are
// written through `out` in pieces of about `chunk` bytes so a 1 GB target
// never needs a 1 GB delta in memory; the pieces concatenated form one delta.
// Throws DeltaError if `sig` is inconsistent (a decoded one never is).
void make_delta(const Signature& sig, std::string_view target,
                const std::function<void(std::string_view piece)>& out,
                std::size_t chunk = 1 << 20);
// Convenience: the whole delta as one string.
std::string make_delta(const Signature& sig, std::string_view target);

// Applies a delta incrementally (pieces in the order make_delta produced
// them, split anywhere): bytes of the new file go to `out`. Throws DeltaError
// for a truncated op, an unknown op, a block index outside the basis, or an
// output larger than `max_output` (checked at the op's header, before any of
// its bytes go out); after a DeltaError the applier is unusable. block_size
// must be the signature's (0: DeltaError).
class DeltaApplier {
 public:
  DeltaApplier(std::string_view basis, std::uint32_t block_size,
               std::function<void(std::string_view)> out,
               std::uint64_t max_output = UINT64_MAX);
  void feed(std::string_view piece);
  // Throws DeltaError when the stream ends inside an op or before END.
  void finish();
  std::uint64_t written() const { return written_; }

 private:
  std::string_view basis_;
  std::uint32_t block_size_;
  std::function<void(std::string_view)> out_;
  std::uint64_t max_output_;
  std::uint64_t written_ = 0;
  std::string pending_;          // an op header split across pieces
  std::uint64_t literal_left_ = 0;
  std::uint64_t blocks_ = 0;     // in the basis
  std::uint64_t consumed_ = 0;   // delta bytes taken so far (for messages)
  bool ended_ = false;           // END seen; nothing may follow

  // Parses one op header at p[0..n); returns its length, or 0 when the
  // bytes end before it does. Runs the op (COPY, LITERAL start, END).
  std::size_t take_op(const char* p, std::size_t n);
};

}  // namespace dtest::sync
