// rsync's delta algorithm; the formats and the choice of sizes are described
// in delta.h.
#include "sync/delta.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace dtest::sync {
namespace {

constexpr std::uint32_t kMinBlock = 512;
constexpr std::uint32_t kMaxBlock = 128 * 1024;
constexpr std::uint32_t kMinStrong = 2;
constexpr std::uint32_t kMaxStrong = 8;
constexpr std::uint64_t kMaxBlocks = std::numeric_limits<std::uint32_t>::max();

constexpr std::uint8_t kOpEnd = 0x00;
constexpr std::uint8_t kOpCopy = 0x01;
constexpr std::uint8_t kOpLiteral = 0x02;
constexpr std::size_t kMaxVarint = 10;
constexpr std::size_t kMaxOpHeader = 1 + 2 * kMaxVarint;

// ---- the weak rolling checksum ---------------------------------------------

constexpr std::uint64_t kMix = 0xD6E8FEB86659FD93ULL;

constexpr std::array<std::uint64_t, 256> make_table() {
  std::array<std::uint64_t, 256> t{};
  std::uint64_t state = 0;
  for (auto& v : t) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    v = z ^ (z >> 31);
  }
  return t;
}
constexpr std::array<std::uint64_t, 256> kTable = make_table();

// The rolling state of a window x[0..L): a = sum T[x_i], b = sum (L-i) T[x_i]
// (mod 2^64); weak = top half of a * kMix + b.
struct Rolling {
  std::uint64_t a = 0, b = 0;

  static Rolling of(const unsigned char* p, std::size_t n) {
    // Two interleaved halves so the additions overlap; b of the whole is
    // b1 + b2 + a1 * len(second half).
    const std::size_t half = n / 2;
    std::uint64_t a1 = 0, b1 = 0, a2 = 0, b2 = 0;
    for (std::size_t i = 0; i < half; ++i) {
      a1 += kTable[p[i]];
      b1 += a1;
      a2 += kTable[p[half + i]];
      b2 += a2;
    }
    for (std::size_t i = 2 * half; i < n; ++i) {
      a2 += kTable[p[i]];
      b2 += a2;
    }
    // b1 and b2 were summed as prefix sums: b = sum over prefixes of a
    // weighs x_i by (count of prefixes containing it) = len - i.
    Rolling r;
    r.a = a1 + a2;
    r.b = b1 + a1 * (n - half) + b2;
    return r;
  }
  std::uint32_t weak() const { return static_cast<std::uint32_t>((a * kMix + b) >> 32); }
};

std::uint64_t strong_mask(std::uint32_t strong_len) {
  return strong_len >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * strong_len)) - 1;
}

std::uint64_t strong_of(const unsigned char* p, std::size_t n, std::uint64_t mask) {
  return XXH3_64bits(p, n) & mask;
}

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

std::uint64_t block_count(std::uint64_t file_size, std::uint64_t block_size) {
  return file_size / block_size + (file_size % block_size != 0 ? 1 : 0);
}

// ---- varints ---------------------------------------------------------------

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

enum class VarintStatus { ok, incomplete };

// Reads a canonical varint from p[0..n) into v and its length into len;
// `incomplete` when the bytes end first. Throws for overlong, overflowing
// or non-canonical encodings; `what` names the field in the message.
VarintStatus get_varint(const unsigned char* p, std::size_t n, std::uint64_t& v,
                        std::size_t& len, const char* what) {
  v = 0;
  for (std::size_t i = 0; i < kMaxVarint; ++i) {
    if (i == n) return VarintStatus::incomplete;
    const std::uint64_t b = p[i];
    if (i == kMaxVarint - 1 && b > 1)
      throw DeltaError(std::string("delta: varint ") + what + " overflows 64 bits");
    v |= (b & 0x7F) << (7 * i);
    if (!(b & 0x80)) {
      if (b == 0 && i > 0)
        throw DeltaError(std::string("delta: varint ") + what + " is not minimally encoded");
      len = i + 1;
      return VarintStatus::ok;
    }
  }
  // Not reached: the 10th byte is at most 1, so it ends the varint.
  throw DeltaError(std::string("delta: varint ") + what + " is longer than 10 bytes");
}

// ---- the sender's block index ----------------------------------------------

std::uint64_t filter_bits(std::uint32_t w) {
  return (std::uint64_t{1} << (w & 63)) | (std::uint64_t{1} << ((w >> 6) & 63));
}
bool filter_hit(const std::uint64_t* filter, std::size_t mask, std::uint32_t w) {
  const std::uint64_t bits = filter_bits(w);
  return (filter[(w >> 12) & mask] & bits) == bits;
}

// Full-size basis blocks keyed by weak checksum. Blocks with the same weak and
// strong are stored once (the first); a bucket holds at most kMaxBucket
// entries, so a hostile signature (every weak equal) cannot make the search
// quadratic: the blocks left out only make the delta bigger.
class BlockIndex {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  static constexpr unsigned kMaxBucket = 32;

  explicit BlockIndex(const Signature& sig, std::uint64_t full_blocks) {
    if (full_blocks == 0) return;
    std::size_t size = 1024;
    while (size < 2 * full_blocks) size *= 2;
    mask_ = size - 1;
    head_.assign(size, kNone);
    // The filter (a blocked Bloom filter: two bits in one 64-bit word per
    // weak value, 16 or more bits per block) lets about one byte offset in
    // 150 through to the table, whose lookups are cache misses and
    // unpredictable branches.
    std::size_t words = 64;
    while (words * 64 < 16 * full_blocks && words < (std::size_t{1} << 20)) words *= 2;
    filter_mask_ = words - 1;
    filter_.assign(words, 0);
    entries_.reserve(full_blocks);
    for (std::uint64_t b = 0; b < full_blocks; ++b) {
      const std::uint32_t w = sig.weak[b];
      const std::uint64_t s = sig.strong[b];
      filter_[(w >> 12) & filter_mask_] |= filter_bits(w);
      std::uint32_t* link = &head_[w & mask_];
      unsigned depth = 0;
      bool keep = true;
      while (*link != kNone) {
        const Entry& e = entries_[*link];
        if ((e.weak == w && e.strong == s) || ++depth >= kMaxBucket) {
          keep = false;
          break;
        }
        link = &entries_[*link].next;
      }
      if (!keep) continue;
      *link = static_cast<std::uint32_t>(entries_.size());
      entries_.push_back({s, w, static_cast<std::uint32_t>(b), kNone});
    }
  }

  bool empty() const { return entries_.empty(); }
  // False: no block has this weak checksum. True: maybe one has.
  bool maybe(std::uint32_t weak) const { return filter_hit(filter_.data(), filter_mask_, weak); }
  std::uint32_t first(std::uint32_t weak) const { return head_[weak & mask_]; }

  // Rolls the window at t[pos..pos+bs) (state r) forward until maybe()
  // says yes or pos reaches last; returns the window's start. The hot loop
  // of make_delta when little matches: kept free of anything else.
  std::size_t scan(const unsigned char* t, std::size_t pos, std::size_t last, std::size_t bs,
                   Rolling& r, const std::uint64_t* out_term) const {
    const std::uint64_t* filter = filter_.data();
    const std::size_t fmask = filter_mask_;
    std::uint64_t a = r.a, b = r.b;
    for (;;) {
      const auto w = static_cast<std::uint32_t>((a * kMix + b) >> 32);
      if (filter_hit(filter, fmask, w) || pos == last) break;
      const unsigned char out = t[pos];
      a += kTable[t[pos + bs]] - kTable[out];
      b += a - out_term[out];
      ++pos;
    }
    r.a = a;
    r.b = b;
    return pos;
  }

  struct Entry {
    std::uint64_t strong;
    std::uint32_t weak;
    std::uint32_t block;
    std::uint32_t next;
  };
  const Entry& entry(std::uint32_t i) const { return entries_[i]; }

 private:
  std::size_t mask_ = 0;
  std::vector<std::uint32_t> head_;
  std::size_t filter_mask_ = 0;
  std::vector<std::uint64_t> filter_;
  std::vector<Entry> entries_;
};

// Buffers the op stream and hands it to `out` in pieces of about `chunk`
// bytes; long literals go out as views of the target, uncopied.
class OpWriter {
 public:
  OpWriter(const std::function<void(std::string_view)>& out, std::size_t chunk)
      : out_(out), chunk_(std::max<std::size_t>(chunk, 1)) {}

  void copy(std::uint64_t block) {
    if (copy_count_ != 0 && copy_first_ + copy_count_ == block) {
      ++copy_count_;
      return;
    }
    flush_copy();
    copy_first_ = block;
    copy_count_ = 1;
  }

  void literal(std::string_view bytes) {
    if (bytes.empty()) return;
    flush_copy();
    buf_.push_back(static_cast<char>(kOpLiteral));
    put_varint(buf_, bytes.size());
    while (!bytes.empty()) {
      if (buf_.empty() && bytes.size() >= chunk_) {
        out_(bytes.substr(0, chunk_));
        bytes.remove_prefix(chunk_);
        continue;
      }
      const std::size_t take = std::min(bytes.size(), chunk_ - std::min(chunk_, buf_.size()));
      buf_.append(bytes.substr(0, take));
      bytes.remove_prefix(take);
      if (buf_.size() >= chunk_) flush();
    }
    maybe_flush();
  }

  void end(std::uint64_t total) {
    flush_copy();
    buf_.push_back(static_cast<char>(kOpEnd));
    put_varint(buf_, total);
    flush();
  }

 private:
  void flush_copy() {
    if (copy_count_ == 0) return;
    buf_.push_back(static_cast<char>(kOpCopy));
    put_varint(buf_, copy_first_);
    put_varint(buf_, copy_count_);
    copy_count_ = 0;
    maybe_flush();
  }
  void maybe_flush() {
    if (buf_.size() >= chunk_) flush();
  }
  void flush() {
    if (buf_.empty()) return;
    out_(buf_);
    buf_.clear();
  }

  const std::function<void(std::string_view)>& out_;
  std::size_t chunk_;
  std::string buf_;
  std::uint64_t copy_first_ = 0;
  std::uint64_t copy_count_ = 0;
};

void check_signature(const Signature& sig) {
  if (sig.block_size == 0 || sig.block_size > kMaxBlock)
    throw DeltaError("delta: signature block size " + std::to_string(sig.block_size) +
                     " outside 1.." + std::to_string(kMaxBlock));
  if (sig.strong_len < kMinStrong || sig.strong_len > kMaxStrong)
    throw DeltaError("delta: signature strong length " + std::to_string(sig.strong_len) +
                     " outside 2..8");
  const std::uint64_t blocks = block_count(sig.file_size, sig.block_size);
  if (blocks > kMaxBlocks || sig.weak.size() != blocks || sig.strong.size() != blocks)
    throw DeltaError("delta: signature has " + std::to_string(sig.weak.size()) + " weak and " +
                     std::to_string(sig.strong.size()) + " strong sums for " +
                     std::to_string(blocks) + " blocks");
}

}  // namespace

// ---- sizes -----------------------------------------------------------------

std::uint32_t choose_block_size(std::uint64_t file_size) {
  if (file_size >= std::uint64_t{kMaxBlock} * kMaxBlock) return kMaxBlock;
  auto root = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(file_size)));
  while (root * root > file_size) --root;
  while ((root + 1) * (root + 1) <= file_size) ++root;
  const std::uint64_t rounded = root / 8 * 8;
  return static_cast<std::uint32_t>(std::clamp<std::uint64_t>(rounded, kMinBlock, kMaxBlock));
}

// Bits of the 32-bit weak sum counted towards a false match's odds (see delta.h).
constexpr int kWeakCredit = 24;

std::uint32_t choose_strong_len(std::uint64_t file_size, std::uint32_t block_size) {
  // bits = 10 + 2 * ceil(log2 N) - floor(log2 block_size) - 24; see delta.h.
  const int ceil_log_n = file_size <= 1 ? 0 : static_cast<int>(std::bit_width(file_size - 1));
  const int floor_log_b = block_size == 0 ? 0 : static_cast<int>(std::bit_width(block_size)) - 1;
  const int bits = 10 + 2 * ceil_log_n - floor_log_b - kWeakCredit;
  const int bytes = (bits + 7) / 8;
  return static_cast<std::uint32_t>(
      std::clamp(bytes, static_cast<int>(kMinStrong), static_cast<int>(kMaxStrong)));
}

// ---- signatures ------------------------------------------------------------

Signature make_signature(std::string_view basis) {
  const std::uint32_t block_size = choose_block_size(basis.size());
  return make_signature(basis, block_size, choose_strong_len(basis.size(), block_size));
}

Signature make_signature(std::string_view basis, std::uint32_t block_size,
                         std::uint32_t strong_len) {
  if (block_size == 0 || block_size > kMaxBlock)
    throw DeltaError("delta: block size " + std::to_string(block_size) + " outside 1.." +
                     std::to_string(kMaxBlock));
  if (strong_len < kMinStrong || strong_len > kMaxStrong)
    throw DeltaError("delta: strong length " + std::to_string(strong_len) + " outside 2..8");
  Signature sig;
  sig.file_size = basis.size();
  sig.block_size = block_size;
  sig.strong_len = strong_len;
  const std::uint64_t blocks = block_count(sig.file_size, sig.block_size);
  if (blocks > kMaxBlocks) throw DeltaError("delta: basis too large for a signature");
  sig.weak.resize(blocks);
  sig.strong.resize(blocks);
  const std::uint64_t mask = strong_mask(sig.strong_len);
  const unsigned char* p = bytes_of(basis);
  for (std::uint64_t b = 0; b < blocks; ++b) {
    const std::size_t off = b * sig.block_size;
    const std::size_t len = std::min<std::size_t>(sig.block_size, basis.size() - off);
    sig.weak[b] = Rolling::of(p + off, len).weak();
    sig.strong[b] = strong_of(p + off, len, mask);
  }
  return sig;
}

std::string encode_signature(const Signature& sig) {
  check_signature(sig);
  std::string out;
  out.reserve(32 + sig.weak.size() * (4 + sig.strong_len));
  put_varint(out, sig.block_size);
  out.push_back(static_cast<char>(sig.strong_len));
  put_varint(out, sig.file_size);
  put_varint(out, sig.weak.size());
  for (std::size_t b = 0; b < sig.weak.size(); ++b) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(sig.weak[b] >> (8 * i)));
    for (std::uint32_t i = 0; i < sig.strong_len; ++i)
      out.push_back(static_cast<char>(sig.strong[b] >> (8 * i)));
  }
  return out;
}

Signature decode_signature(std::string_view bytes) {
  const unsigned char* p = bytes_of(bytes);
  std::size_t pos = 0;
  auto varint = [&](const char* what) {
    std::uint64_t v = 0;
    std::size_t len = 0;
    if (get_varint(p + pos, bytes.size() - pos, v, len, what) == VarintStatus::incomplete)
      throw DeltaError(std::string("delta: signature truncated in its ") + what);
    pos += len;
    return v;
  };
  Signature sig;
  const std::uint64_t block_size = varint("block size");
  if (block_size == 0 || block_size > kMaxBlock)
    throw DeltaError("delta: signature block size " + std::to_string(block_size) +
                     " outside 1.." + std::to_string(kMaxBlock));
  if (pos == bytes.size()) throw DeltaError("delta: signature truncated in its strong length");
  const std::uint32_t strong_len = p[pos++];
  if (strong_len < kMinStrong || strong_len > kMaxStrong)
    throw DeltaError("delta: signature strong length " + std::to_string(strong_len) +
                     " outside 2..8");
  const std::uint64_t file_size = varint("file size");
  const std::uint64_t blocks = varint("block count");
  const std::uint64_t expected = block_count(file_size, block_size);
  if (blocks != expected)
    throw DeltaError("delta: signature has " + std::to_string(blocks) + " blocks, but " +
                     std::to_string(file_size) + " bytes in blocks of " +
                     std::to_string(block_size) + " make " + std::to_string(expected));
  if (blocks > kMaxBlocks)
    throw DeltaError("delta: signature has too many blocks (" + std::to_string(blocks) + ")");
  const std::size_t per_block = 4 + strong_len;
  const std::size_t rest = bytes.size() - pos;
  // Checked before allocating: the sums must be exactly what is left.
  if (rest / per_block != blocks || rest % per_block != 0)
    throw DeltaError("delta: signature has " + std::to_string(rest) + " bytes of sums for " +
                     std::to_string(blocks) + " blocks of " + std::to_string(per_block) +
                     " bytes");
  sig.block_size = static_cast<std::uint32_t>(block_size);
  sig.strong_len = strong_len;
  sig.file_size = file_size;
  sig.weak.resize(blocks);
  sig.strong.resize(blocks);
  for (std::size_t b = 0; b < blocks; ++b) {
    std::uint32_t w = 0;
    for (int i = 0; i < 4; ++i) w |= std::uint32_t{p[pos++]} << (8 * i);
    std::uint64_t s = 0;
    for (std::uint32_t i = 0; i < strong_len; ++i) s |= std::uint64_t{p[pos++]} << (8 * i);
    sig.weak[b] = w;
    sig.strong[b] = s;
  }
  return sig;
}

// ---- the sender ------------------------------------------------------------

void make_delta(const Signature& sig, std::string_view target,
                const std::function<void(std::string_view piece)>& out, std::size_t chunk) {
  check_signature(sig);
  OpWriter w(out, chunk);
  const unsigned char* t = bytes_of(target);
  const std::size_t n = target.size();
  const std::size_t bs = sig.block_size;
  const std::uint64_t blocks = sig.weak.size();
  const std::uint64_t mask = strong_mask(sig.strong_len);
  // The last block is in the index only if it is full size: a short one can
  // only match right after its predecessor or at the very end of the target.
  const std::size_t last_len = blocks == 0 ? 0 : sig.file_size - (blocks - 1) * bs;
  const std::uint64_t full_blocks = last_len == bs ? blocks : blocks - (blocks != 0);
  const BlockIndex index(sig, full_blocks);
  auto block_len = [&](std::uint64_t b) { return b + 1 == blocks ? last_len : bs; };

  // The strong hash of the window being looked at, computed at most once.
  std::size_t cached_pos = SIZE_MAX, cached_len = 0;
  std::uint64_t cached_strong = 0;
  auto strong_at = [&](std::size_t pos, std::size_t len) {
    if (pos != cached_pos || len != cached_len) {
      cached_pos = pos;
      cached_len = len;
      cached_strong = strong_of(t + pos, len, mask);
    }
    return cached_strong;
  };
  // Hashing spent on weak hits that fail the strong check. A signature
  // crafted so that weak checksums hit everywhere would make the search
  // O(n * block size); past this budget (a few passes over the target at
  // XXH3's speed) only sequential blocks are tried: the delta may grow, it
  // never gets wrong.
  const std::uint64_t false_budget = 4 * std::uint64_t{n} + (std::uint64_t{64} << 20);
  std::uint64_t false_spent = 0;

  std::size_t pos = 0;  // the window's start
  std::size_t lit = 0;  // the literal run starts here
  std::uint64_t next = blocks == 0 ? UINT64_MAX : 0;  // the block we guess comes next
  auto matched = [&](std::uint64_t b, std::size_t len) {
    w.literal(target.substr(lit, pos - lit));
    w.copy(b);
    pos += len;
    lit = pos;
    next = b + 1 < blocks ? b + 1 : UINT64_MAX;
  };

  std::array<std::uint64_t, 256> out_term{};  // L * T[x]: what b loses with x
  for (std::size_t i = 0; i < 256; ++i) out_term[i] = kTable[i] * bs;

  for (;;) {
    // The block after the last match: tried by its strong hash alone.
    if (next != UINT64_MAX) {
      const std::size_t len = block_len(next);
      if (n - pos >= len && strong_at(pos, len) == sig.strong[next]) {
        matched(next, len);
        continue;
      }
    }
    if (index.empty() || n - pos < bs) break;
    Rolling r = Rolling::of(t + pos, bs);
    bool found = false;
    for (;;) {
      const std::size_t last = n - bs;  // the last full window
      pos = index.scan(t, pos, last, bs, r, out_term.data());
      const std::uint32_t weak = r.weak();
      std::uint32_t e = index.first(weak);
      if (e != BlockIndex::kNone && false_spent <= false_budget) {
        // Prefer the sequential block (longer COPY runs), then the chain.
        std::uint64_t hit = UINT64_MAX;
        bool compared = false;
        if (next != UINT64_MAX && block_len(next) == bs && sig.weak[next] == weak) {
          compared = true;
          if (strong_at(pos, bs) == sig.strong[next]) hit = next;
        }
        for (; hit == UINT64_MAX && e != BlockIndex::kNone; e = index.entry(e).next) {
          const BlockIndex::Entry& entry = index.entry(e);
          if (entry.weak != weak) continue;
          compared = true;
          if (strong_at(pos, bs) == entry.strong) hit = entry.block;
        }
        if (hit != UINT64_MAX) {
          matched(hit, bs);
          found = true;
          break;
        }
        if (compared) false_spent += bs;
      }
      if (pos == last) break;
      const unsigned char out_byte = t[pos];
      r.a += kTable[t[pos + bs]] - kTable[out_byte];
      r.b += r.a - out_term[out_byte];
      ++pos;
    }
    if (!found) break;
  }

  // The short last block can still match the target's last bytes.
  if (blocks != 0 && last_len < bs && n - lit >= last_len) {
    const std::size_t at = n - last_len;
    if (Rolling::of(t + at, last_len).weak() == sig.weak[blocks - 1] &&
        strong_at(at, last_len) == sig.strong[blocks - 1]) {
      w.literal(target.substr(lit, at - lit));
      w.copy(blocks - 1);
      lit = n;
    }
  }
  w.literal(target.substr(lit));
  w.end(n);
}

std::string make_delta(const Signature& sig, std::string_view target) {
  std::string delta;
  make_delta(
      sig, target, [&](std::string_view piece) { delta.append(piece); }, SIZE_MAX);
  return delta;
}

// ---- the receiver ----------------------------------------------------------

DeltaApplier::DeltaApplier(std::string_view basis, std::uint32_t block_size,
                           std::function<void(std::string_view)> out, std::uint64_t max_output)
    : basis_(basis), block_size_(block_size), out_(std::move(out)), max_output_(max_output) {
  if (block_size_ == 0) throw DeltaError("delta: block size 0");
  blocks_ = block_count(basis_.size(), block_size_);
}

std::size_t DeltaApplier::take_op(const char* data, std::size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  const std::uint64_t at = consumed_;  // the op's offset in the delta
  const auto where = [&] { return " (op at delta byte " + std::to_string(at) + ")"; };
  if (n == 0) return 0;
  const std::uint8_t op = p[0];
  std::uint64_t a = 0, b = 0;
  std::size_t len = 1, l = 0;
  switch (op) {
    case kOpEnd:
      if (get_varint(p + len, n - len, a, l, "END size") == VarintStatus::incomplete) return 0;
      len += l;
      if (a != written_)
        throw DeltaError("delta: END says " + std::to_string(a) + " bytes but the ops made " +
                         std::to_string(written_) + where());
      ended_ = true;
      consumed_ += len;
      return len;
    case kOpCopy: {
      if (get_varint(p + len, n - len, a, l, "COPY block") == VarintStatus::incomplete)
        return 0;
      len += l;
      if (get_varint(p + len, n - len, b, l, "COPY count") == VarintStatus::incomplete)
        return 0;
      len += l;
      if (b == 0) throw DeltaError("delta: COPY of 0 blocks" + where());
      if (a >= blocks_)
        throw DeltaError("delta: COPY of block " + std::to_string(a) + " past the basis's " +
                         std::to_string(blocks_) + " blocks" + where());
      if (b > blocks_ - a)
        throw DeltaError("delta: COPY of blocks " + std::to_string(a) + "+" +
                         std::to_string(b) + " past the basis's " + std::to_string(blocks_) +
                         " blocks" + where());
      const std::uint64_t start = a * block_size_;
      const std::uint64_t end =
          a + b == blocks_ ? basis_.size() : (a + b) * std::uint64_t{block_size_};
      const std::uint64_t size = end - start;
      if (size > max_output_ - written_)
        throw DeltaError("delta: output exceeds the limit of " + std::to_string(max_output_) +
                         " bytes" + where());
      consumed_ += len;
      written_ += size;
      out_(basis_.substr(start, size));
      return len;
    }
    case kOpLiteral:
      if (get_varint(p + len, n - len, a, l, "LITERAL length") == VarintStatus::incomplete)
        return 0;
      len += l;
      if (a == 0) throw DeltaError("delta: LITERAL of 0 bytes" + where());
      if (a > max_output_ - written_)
        throw DeltaError("delta: LITERAL of " + std::to_string(a) +
                         " bytes exceeds the output limit of " + std::to_string(max_output_) +
                         " bytes" + where());
      literal_left_ = a;
      consumed_ += len;
      return len;
    default: {
      static const char hex[] = "0123456789abcdef";
      const std::string code = {'0', 'x', hex[op >> 4], hex[op & 15]};
      throw DeltaError("delta: unknown op " + code + where());
    }
  }
}

void DeltaApplier::feed(std::string_view piece) {
  while (!piece.empty()) {
    if (ended_)
      throw DeltaError("delta: " + std::to_string(piece.size()) + " bytes after the END op");
    if (literal_left_ != 0) {
      const std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(literal_left_, piece.size()));
      literal_left_ -= take;
      consumed_ += take;
      written_ += take;
      out_(piece.substr(0, take));
      piece.remove_prefix(take);
      continue;
    }
    if (pending_.empty()) {
      const std::size_t used = take_op(piece.data(), piece.size());
      if (used == 0) {
        pending_.assign(piece);  // shorter than kMaxOpHeader, or take_op threw
        return;
      }
      piece.remove_prefix(used);
      continue;
    }
    const std::size_t old = pending_.size();
    const std::size_t add = std::min(piece.size(), kMaxOpHeader - old);
    pending_.append(piece.substr(0, add));
    const std::size_t used = take_op(pending_.data(), pending_.size());
    if (used == 0) {
      piece.remove_prefix(add);  // all of it (an op header is never longer)
      continue;
    }
    piece.remove_prefix(used - old);
    pending_.clear();
  }
}

void DeltaApplier::finish() {
  if (!pending_.empty())
    throw DeltaError("delta: truncated inside an op header (" + std::to_string(pending_.size()) +
                     " bytes at delta byte " + std::to_string(consumed_) + ")");
  if (literal_left_ != 0)
    throw DeltaError("delta: truncated inside a literal (" + std::to_string(literal_left_) +
                     " bytes missing)");
  if (!ended_) throw DeltaError("delta: truncated (no END op)");
}

}  // namespace dtest::sync
