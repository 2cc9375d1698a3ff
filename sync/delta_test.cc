#include "sync/delta.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace dtest::sync {
namespace {

// ---- helpers ---------------------------------------------------------------

// mt19937_64's output sequence is fixed by the standard (the distributions
// are not), so bytes are cut straight from it.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : gen_(seed) {}
  std::uint64_t next() { return gen_(); }
  // Uniform in [0, n) (n > 0); the tiny modulo bias is irrelevant here.
  std::uint64_t below(std::uint64_t n) { return gen_() % n; }
  std::string bytes(std::size_t n) {
    std::string s(n, '\0');
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const std::uint64_t v = gen_();
      for (int k = 0; k < 8; ++k) s[i + k] = static_cast<char>(v >> (8 * k));
    }
    for (; i < n; ++i) s[i] = static_cast<char>(gen_());
    return s;
  }

 private:
  std::mt19937_64 gen_;
};

struct Op {
  enum Kind { copy, literal, end } kind;
  std::uint64_t a = 0;  // first block / length / total
  std::uint64_t b = 0;  // block count
};

std::uint64_t read_varint(std::string_view d, std::size_t& pos) {
  std::uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    EXPECT_LT(pos, d.size());
    if (pos >= d.size()) return v;
    const auto c = static_cast<unsigned char>(d[pos++]);
    v |= std::uint64_t{c & 0x7Fu} << shift;
    if (!(c & 0x80)) return v;
  }
}

// An independent reading of the op stream (per the format in delta.h).
std::vector<Op> parse_ops(std::string_view d) {
  std::vector<Op> ops;
  std::size_t pos = 0;
  while (pos < d.size()) {
    const auto code = static_cast<unsigned char>(d[pos++]);
    if (code == 0x01) {
      Op op{Op::copy};
      op.a = read_varint(d, pos);
      op.b = read_varint(d, pos);
      ops.push_back(op);
    } else if (code == 0x02) {
      Op op{Op::literal};
      op.a = read_varint(d, pos);
      pos += op.a;
      ops.push_back(op);
    } else if (code == 0x00) {
      Op op{Op::end};
      op.a = read_varint(d, pos);
      ops.push_back(op);
    } else {
      ADD_FAILURE() << "unknown op " << int{code};
      break;
    }
  }
  EXPECT_EQ(pos, d.size());
  return ops;
}

std::uint64_t literal_bytes(const std::vector<Op>& ops) {
  std::uint64_t n = 0;
  for (const Op& op : ops)
    if (op.kind == Op::literal) n += op.a;
  return n;
}

std::size_t count_kind(const std::vector<Op>& ops, Op::Kind k) {
  return static_cast<std::size_t>(
      std::count_if(ops.begin(), ops.end(), [&](const Op& op) { return op.kind == k; }));
}

// Feeds `delta` in pieces whose sizes come from `split` (0 = all at once).
std::string apply(std::string_view basis, std::uint32_t block_size, std::string_view delta,
                  std::size_t split = 0, std::uint64_t max_output = UINT64_MAX) {
  std::string out;
  DeltaApplier a(
      basis, block_size, [&](std::string_view p) { out.append(p); }, max_output);
  if (split == 0) {
    a.feed(delta);
  } else {
    for (std::size_t i = 0; i < delta.size(); i += split) a.feed(delta.substr(i, split));
  }
  a.finish();
  EXPECT_EQ(a.written(), out.size());
  return out;
}

std::string apply_random_splits(std::string_view basis, std::uint32_t block_size,
                                std::string_view delta, Rng& rng) {
  std::string out;
  DeltaApplier a(basis, block_size, [&](std::string_view p) { out.append(p); });
  std::size_t i = 0;
  while (i < delta.size()) {
    // Mostly tiny pieces (inside headers), sometimes big ones, sometimes empty.
    const std::uint64_t kind = rng.below(4);
    const std::size_t n = kind == 0   ? 0
                          : kind == 1 ? 1 + rng.below(3)
                          : kind == 2 ? 1 + rng.below(40)
                                      : 1 + rng.below(5000);
    a.feed(delta.substr(i, n));
    i += std::min(n, delta.size() - i);
  }
  a.finish();
  return out;
}

// make_delta + apply (whole, byte by byte, random pieces); returns the delta.
std::string round_trip(std::string_view basis, std::string_view target,
                       std::optional<Signature> given = std::nullopt) {
  const Signature sig = given ? *given : make_signature(basis);
  // The signature travels encoded.
  const Signature wire = decode_signature(encode_signature(sig));
  const std::string delta = make_delta(wire, target);
  EXPECT_EQ(apply(basis, sig.block_size, delta), target);
  if (delta.size() < 200000) {
    EXPECT_EQ(apply(basis, sig.block_size, delta, 1), target);
  }
  Rng rng(delta.size());
  EXPECT_EQ(apply_random_splits(basis, sig.block_size, delta, rng), target);
  const std::vector<Op> ops = parse_ops(delta);
  EXPECT_FALSE(ops.empty());
  if (!ops.empty()) {
    EXPECT_EQ(ops.back().kind, Op::end);
    EXPECT_EQ(ops.back().a, target.size());
  }
  // No two adjacent literals, no two COPYs that should have been one.
  for (std::size_t i = 1; i < ops.size(); ++i) {
    EXPECT_FALSE(ops[i - 1].kind == Op::literal && ops[i].kind == Op::literal);
    if (ops[i - 1].kind == Op::copy && ops[i].kind == Op::copy) {
      EXPECT_NE(ops[i - 1].a + ops[i - 1].b, ops[i].a);
    }
  }
  return delta;
}

template <typename F>
void expect_delta_error(F&& f, const std::string& needle = "") {
  try {
    f();
    ADD_FAILURE() << "no DeltaError";
  } catch (const DeltaError& e) {
    if (!needle.empty()) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// Applies `delta`, whole and byte by byte, and expects a DeltaError.
void expect_bad_delta(std::string_view basis, std::uint32_t block_size, std::string_view delta,
                      const std::string& needle = "", std::uint64_t max_output = UINT64_MAX) {
  SCOPED_TRACE(testing::Message() << "delta of " << delta.size() << " bytes");
  expect_delta_error([&] { apply(basis, block_size, delta, 0, max_output); }, needle);
  expect_delta_error([&] { apply(basis, block_size, delta, 1, max_output); }, needle);
  expect_delta_error([&] { apply(basis, block_size, delta, 3, max_output); }, needle);
}

std::string varint(std::uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}

std::string op_copy(std::uint64_t first, std::uint64_t count) {
  return "\x01" + varint(first) + varint(count);
}
std::string op_literal(std::string_view bytes) {
  return "\x02" + varint(bytes.size()) + std::string(bytes);
}
std::string op_end(std::uint64_t total) { return std::string(1, '\0') + varint(total); }

double mb_per_s(std::size_t bytes, std::chrono::steady_clock::duration d) {
  const double s = std::chrono::duration<double>(d).count();
  return s <= 0 ? 0 : static_cast<double>(bytes) / (1 << 20) / s;
}

// ---- sizes -----------------------------------------------------------------

TEST(DeltaSizes, BlockSizeIsSqrtRoundedAndClamped) {
  EXPECT_EQ(choose_block_size(0), 512u);
  EXPECT_EQ(choose_block_size(1), 512u);
  EXPECT_EQ(choose_block_size(512u * 512u), 512u);
  EXPECT_EQ(choose_block_size(1000000), 1000u);
  EXPECT_EQ(choose_block_size(1001 * 1001), 1000u);  // rounded down to a multiple of 8
  EXPECT_EQ(choose_block_size(100u << 20), 10240u);
  EXPECT_EQ(choose_block_size(std::uint64_t{131072} * 131072 - 1), 131064u);
  EXPECT_EQ(choose_block_size(std::uint64_t{131072} * 131072), 131072u);
  EXPECT_EQ(choose_block_size(std::uint64_t{1} << 40), 131072u);
  EXPECT_EQ(choose_block_size(UINT64_MAX), 131072u);
  std::uint32_t prev = 0;
  for (std::uint64_t n = 1; n < (std::uint64_t{1} << 40); n = n * 3 + 7) {
    const std::uint32_t b = choose_block_size(n);
    EXPECT_EQ(b % 8, 0u) << n;
    EXPECT_GE(b, 512u);
    EXPECT_LE(b, 131072u);
    EXPECT_GE(b, prev) << n;
    prev = b;
  }
}

TEST(DeltaSizes, StrongLenGrowsWithTheFile) {
  EXPECT_EQ(choose_strong_len(0, choose_block_size(0)), 2u);
  EXPECT_EQ(choose_strong_len(100, choose_block_size(100)), 2u);
  EXPECT_EQ(choose_strong_len(4096, 512), 2u);            // 10 + 24 - 9 - 24 = 1 bit
  EXPECT_EQ(choose_strong_len(1 << 20, 1024), 2u);        // 10 + 40 - 10 - 24 = 16 bits
  EXPECT_EQ(choose_strong_len(100u << 20, 10240), 4u);    // 10 + 54 - 13 - 24 = 27 bits
  EXPECT_EQ(choose_strong_len(std::uint64_t{1} << 30, 32768), 4u);  // 31 bits
  EXPECT_EQ(choose_strong_len(std::uint64_t{4} << 30, 65536), 5u);  // 34 bits
  EXPECT_EQ(choose_strong_len(UINT64_MAX, 131072), 8u);
  std::uint32_t prev = 0;
  for (std::uint64_t n = 1; n < (std::uint64_t{1} << 50); n = n * 2 + 1) {
    const std::uint32_t s = choose_strong_len(n, choose_block_size(n));
    EXPECT_GE(s, 2u);
    EXPECT_LE(s, 8u);
    EXPECT_GE(s, prev) << n;
    prev = s;
  }
}

// ---- signatures ------------------------------------------------------------

TEST(DeltaSignature, ShapeAndEncodedSize) {
  Rng rng(1);
  const std::string basis = rng.bytes(1000000 + 123);
  const Signature sig = make_signature(basis);
  EXPECT_EQ(sig.block_size, 1000u);
  EXPECT_EQ(sig.file_size, basis.size());
  EXPECT_EQ(sig.weak.size(), 1001u);
  EXPECT_EQ(sig.strong.size(), 1001u);
  EXPECT_EQ(sig.strong_len, choose_strong_len(basis.size(), 1000));
  for (std::uint64_t s : sig.strong) EXPECT_EQ(s >> (8 * sig.strong_len), 0u);
  const std::string enc = encode_signature(sig);
  // block size (2) + strong len (1) + file size (3) + count (2) + sums.
  EXPECT_EQ(enc.size(), 2 + 1 + 3 + 2 + 1001 * (4 + sig.strong_len));
  const Signature back = decode_signature(enc);
  EXPECT_EQ(back.block_size, sig.block_size);
  EXPECT_EQ(back.strong_len, sig.strong_len);
  EXPECT_EQ(back.file_size, sig.file_size);
  EXPECT_EQ(back.weak, sig.weak);
  EXPECT_EQ(back.strong, sig.strong);
  EXPECT_EQ(encode_signature(back), enc);
}

TEST(DeltaSignature, DependsOnContentAndBlockBoundaries) {
  Rng rng(2);
  std::string basis = rng.bytes(4096);
  const Signature a = make_signature(basis, 512, 8);
  basis[1000] ^= 1;  // block 1
  const Signature b = make_signature(basis, 512, 8);
  for (std::size_t i = 0; i < a.weak.size(); ++i) {
    if (i == 1) {
      EXPECT_NE(a.weak[i], b.weak[i]);
      EXPECT_NE(a.strong[i], b.strong[i]);
    } else {
      EXPECT_EQ(a.weak[i], b.weak[i]);
      EXPECT_EQ(a.strong[i], b.strong[i]);
    }
  }
  // Same bytes, same sums, whatever the block's index.
  const std::string block = rng.bytes(512);
  const Signature c = make_signature(block + block + block, 512, 4);
  EXPECT_EQ(c.weak[0], c.weak[2]);
  EXPECT_EQ(c.strong[0], c.strong[2]);
  // A zero-filled block still has a non-trivial checksum.
  const Signature z = make_signature(std::string(512, '\0'), 512, 8);
  EXPECT_NE(z.weak[0], 0u);
}

TEST(DeltaSignature, EmptyBasis) {
  const Signature sig = make_signature("");
  EXPECT_EQ(sig.file_size, 0u);
  EXPECT_EQ(sig.block_size, 512u);
  EXPECT_TRUE(sig.weak.empty());
  const std::string enc = encode_signature(sig);
  EXPECT_EQ(enc.size(), 2u + 1 + 1 + 1);
  const Signature back = decode_signature(enc);
  EXPECT_EQ(back.file_size, 0u);
  EXPECT_TRUE(back.weak.empty());
  EXPECT_TRUE(back.strong.empty());
}

TEST(DeltaSignature, ExplicitSizesAreChecked) {
  expect_delta_error([] { make_signature("abc", 0, 4); }, "block size");
  expect_delta_error([] { make_signature("abc", 131073, 4); }, "block size");
  expect_delta_error([] { make_signature("abc", 8, 1); }, "strong length");
  expect_delta_error([] { make_signature("abc", 8, 9); }, "strong length");
  EXPECT_EQ(make_signature("abcdefghi", 1, 2).weak.size(), 9u);
  EXPECT_EQ(make_signature("abcdefghi", 131072, 8).weak.size(), 1u);
}

std::string sig_bytes(std::uint64_t block_size, std::uint8_t strong_len, std::uint64_t file_size,
                      std::uint64_t count, std::size_t sum_bytes) {
  return varint(block_size) + std::string(1, static_cast<char>(strong_len)) + varint(file_size) +
         varint(count) + std::string(sum_bytes, 'x');
}

TEST(DeltaSignature, RejectsMalformed) {
  // A valid one first, so the cases below differ from it in one thing.
  EXPECT_NO_THROW(decode_signature(sig_bytes(512, 4, 1000, 2, 16)));
  EXPECT_NO_THROW(decode_signature(sig_bytes(1, 2, 3, 3, 18)));
  EXPECT_NO_THROW(decode_signature(sig_bytes(131072, 8, 131072, 1, 12)));

  expect_delta_error([] { decode_signature(""); }, "truncated");
  expect_delta_error([] { decode_signature(varint(512)); }, "truncated");
  expect_delta_error([] { decode_signature(varint(512) + "\x04"); }, "truncated");
  expect_delta_error([] { decode_signature(varint(512) + "\x04" + varint(1000)); },
                     "truncated");
  expect_delta_error([] { decode_signature("\x80"); }, "truncated");
  expect_delta_error([] { decode_signature(sig_bytes(0, 4, 1000, 2, 16)); }, "block size 0");
  expect_delta_error([] { decode_signature(sig_bytes(131073, 4, 1000, 1, 8)); },
                     "block size 131073");
  expect_delta_error([] { decode_signature(sig_bytes(512, 1, 1000, 2, 10)); },
                     "strong length 1");
  expect_delta_error([] { decode_signature(sig_bytes(512, 9, 1000, 2, 26)); },
                     "strong length 9");
  expect_delta_error([] { decode_signature(sig_bytes(512, 0, 1000, 2, 8)); }, "strong length");
  // Block count that disagrees with the file size.
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 1000, 3, 24)); }, "make 2");
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 1000, 1, 8)); }, "make 2");
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 0, 1, 8)); }, "make 0");
  // Sums too short, too long (trailing bytes).
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 1000, 2, 15)); }, "bytes of sums");
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 1000, 2, 17)); }, "bytes of sums");
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 1000, 2, 24)); }, "bytes of sums");
  expect_delta_error([] { decode_signature(sig_bytes(512, 4, 0, 0, 1)); }, "bytes of sums");
  // Absurd counts are refused before anything is allocated.
  expect_delta_error(
      [] { decode_signature(sig_bytes(1, 8, std::uint64_t{1} << 40, std::uint64_t{1} << 40, 12)); },
      "too many blocks");
  expect_delta_error([] { decode_signature(sig_bytes(1, 8, 4000000000u, 4000000000u, 12)); },
                     "bytes of sums");
  expect_delta_error([] { decode_signature(sig_bytes(1, 8, UINT64_MAX, UINT64_MAX, 12)); });
  // Varints: overlong, overflowing, not minimal.
  expect_delta_error([] { decode_signature(std::string(11, '\x80') + "\x01"); }, "varint");
  expect_delta_error([] { decode_signature(std::string(9, '\xff') + "\x02"); }, "overflows");
  expect_delta_error(
      [] { decode_signature(std::string("\x84\x00\x04", 3) + varint(0) + varint(0)); },
      "minimally");
  expect_delta_error(
      [] { decode_signature(varint(512) + std::string("\x04\x80\x00", 3) + varint(0)); },
      "minimally");
  expect_delta_error([] { decode_signature(varint(512) + "\x04" + varint(0) + "\xff\x7f"); },
                     "make 0");
  // Every proper prefix of a valid signature is rejected.
  Rng rng(3);
  const std::string good = encode_signature(make_signature(rng.bytes(3000)));
  for (std::size_t n = 0; n < good.size(); ++n)
    expect_delta_error([&] { decode_signature(good.substr(0, n)); });
  expect_delta_error([&] { decode_signature(good + std::string(1, '\0')); });
}

TEST(DeltaSignature, InconsistentStructsAreRefused) {
  Rng rng(4);
  const std::string basis = rng.bytes(5000);
  const Signature good = make_signature(basis);
  auto both = [&](const Signature& s, const std::string& needle) {
    expect_delta_error([&] { encode_signature(s); }, needle);
    expect_delta_error([&] { make_delta(s, basis); }, needle);
  };
  Signature s = good;
  s.block_size = 0;
  both(s, "block size");
  s = good;
  s.block_size = 200000;
  both(s, "block size");
  s = good;
  s.strong_len = 1;
  both(s, "strong length");
  s = good;
  s.weak.pop_back();
  both(s, "sums");
  s = good;
  s.strong.push_back(0);
  both(s, "sums");
  s = good;
  s.file_size += 512 * 3;
  both(s, "sums");
}

// ---- round trips -----------------------------------------------------------

TEST(DeltaRoundTrip, IdenticalIsOneCopy) {
  Rng rng(10);
  for (std::size_t n : {1u, 100u, 511u, 512u, 513u, 4096u, 100000u, 1000003u}) {
    SCOPED_TRACE(n);
    const std::string basis = rng.bytes(n);
    const std::string delta = round_trip(basis, basis);
    const std::vector<Op> ops = parse_ops(delta);
    ASSERT_EQ(ops.size(), 2u);
    EXPECT_EQ(ops[0].kind, Op::copy);
    EXPECT_EQ(ops[0].a, 0u);
    EXPECT_EQ(ops[0].b, make_signature(basis).weak.size());
    EXPECT_LE(delta.size(), 16u);
  }
}

TEST(DeltaRoundTrip, EditsAtStartMiddleEnd) {
  Rng rng(11);
  for (std::size_t n : {3000u, 65536u, 300007u}) {
    const std::string basis = rng.bytes(n);
    const std::size_t bs = choose_block_size(n);
    for (std::size_t at : {std::size_t{0}, n / 2, n - 10}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " at=" << at);
      std::string target = basis;
      for (std::size_t i = at; i < std::min(n, at + 10); ++i) target[i] ^= 0x5A;
      const std::string delta = round_trip(basis, target);
      const std::vector<Op> ops = parse_ops(delta);
      // The damaged block goes literal (plus a partial one at the end).
      EXPECT_LE(literal_bytes(ops), 2 * bs) << delta.size();
      EXPECT_LE(delta.size(), 2 * bs + 40);
    }
  }
}

TEST(DeltaRoundTrip, InsertionsShiftTheRest) {
  Rng rng(12);
  const std::string basis = rng.bytes(200000);
  const std::size_t bs = choose_block_size(basis.size());
  for (std::size_t ins : {1u, 7u, 1000u}) {
    for (std::size_t at : {std::size_t{0}, std::size_t{1}, std::size_t{12345}, basis.size() / 2,
                           basis.size() - 1, basis.size()}) {
      SCOPED_TRACE(testing::Message() << "insert " << ins << " at " << at);
      std::string target = basis;
      target.insert(at, rng.bytes(ins));
      const std::string delta = round_trip(basis, target);
      const std::vector<Op> ops = parse_ops(delta);
      // At most the block the insertion landed in, the inserted bytes and
      // the short tail the shift pushes out of alignment.
      EXPECT_LE(literal_bytes(ops), 2 * bs + ins);
      EXPECT_LE(count_kind(ops, Op::copy), 4u);
    }
  }
}

TEST(DeltaRoundTrip, Deletions) {
  Rng rng(13);
  const std::string basis = rng.bytes(200000);
  const std::size_t bs = choose_block_size(basis.size());
  for (std::size_t del : {1u, 7u, 3000u}) {
    for (std::size_t at : {std::size_t{0}, std::size_t{999}, basis.size() / 2,
                           basis.size() - del}) {
      SCOPED_TRACE(testing::Message() << "delete " << del << " at " << at);
      std::string target = basis;
      target.erase(at, del);
      const std::string delta = round_trip(basis, target);
      EXPECT_LE(literal_bytes(parse_ops(delta)), 2 * bs);
    }
  }
}

TEST(DeltaRoundTrip, AppendedAndTruncated) {
  Rng rng(14);
  const std::string basis = rng.bytes(100000 + 77);  // short last block
  const std::size_t bs = choose_block_size(basis.size());
  {
    // Appending keeps every block, the short last one included.
    const std::string extra = rng.bytes(5000);
    const std::string delta = round_trip(basis, basis + extra);
    const std::vector<Op> ops = parse_ops(delta);
    ASSERT_EQ(ops.size(), 3u);
    EXPECT_EQ(ops[0].kind, Op::copy);
    EXPECT_EQ(ops[0].b, make_signature(basis).weak.size());
    EXPECT_EQ(ops[1].kind, Op::literal);
    EXPECT_EQ(ops[1].a, extra.size());
  }
  {
    // Prepending: every block, shifted.
    const std::string extra = rng.bytes(333);
    const std::vector<Op> ops = parse_ops(round_trip(basis, extra + basis));
    EXPECT_EQ(literal_bytes(ops), extra.size());
  }
  for (std::size_t cut : {1u, 77u, 78u, 5000u, 99000u}) {
    SCOPED_TRACE(cut);
    const std::string target = basis.substr(0, basis.size() - cut);
    EXPECT_LT(literal_bytes(parse_ops(round_trip(basis, target))), bs);
  }
  // Cut at the front: the last (short) block is found at the target's end.
  const std::string tail = basis.substr(4321);
  const std::vector<Op> ops = parse_ops(round_trip(basis, tail));
  EXPECT_LT(literal_bytes(ops), bs);
}

TEST(DeltaRoundTrip, EmptyAndTinyFiles) {
  Rng rng(15);
  const std::string some = rng.bytes(3000);
  // Empty basis: one literal.
  std::vector<Op> ops = parse_ops(round_trip("", some));
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0].kind, Op::literal);
  EXPECT_EQ(ops[0].a, some.size());
  // Empty target: just END(0).
  EXPECT_EQ(round_trip(some, ""), std::string("\x00\x00", 2));
  // Both empty.
  EXPECT_EQ(round_trip("", ""), std::string("\x00\x00", 2));
  // Shorter than one block, equal to a short basis: a COPY of the only block.
  const std::string small = rng.bytes(100);
  ops = parse_ops(round_trip(small, small));
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0].kind, Op::copy);
  // Shorter than one block, different.
  round_trip(small, rng.bytes(99));
  round_trip(some, small);
  round_trip(some, some.substr(0, 10));
  round_trip(small, std::string(1, 'x'));
  round_trip(std::string(1, 'x'), std::string(1, 'x'));
  // Target = a prefix + the short last block of the basis.
  ops = parse_ops(round_trip(some, "hello" + some.substr(2560)));
  EXPECT_EQ(literal_bytes(ops), 5u);
}

TEST(DeltaRoundTrip, ManyIdenticalBlocks) {
  const std::string zeros(512 * 400, '\0');
  // Same: one run.
  std::vector<Op> ops = parse_ops(round_trip(zeros, zeros));
  ASSERT_EQ(ops.size(), 2u);
  // Longer and shorter, with a little noise.
  std::string target(512 * 600 + 5, '\0');
  target[100000] = 'x';
  const std::string delta = round_trip(zeros, target);
  ops = parse_ops(delta);
  EXPECT_LE(literal_bytes(ops), 2 * 512u + 5);
  EXPECT_LT(delta.size(), 2 * 512u + 64);
  round_trip(zeros, std::string(512 * 3 + 1, '\0'));
  // A repeating pattern with a period that does not divide the block size.
  std::string pattern;
  for (int i = 0; i < 30000; ++i) pattern += "abcdefg";
  std::string changed = pattern;
  changed.insert(5000, "XYZ");
  EXPECT_LT(round_trip(pattern, changed).size(), 3 * choose_block_size(pattern.size()));
}

TEST(DeltaRoundTrip, ReorderedAndDuplicatedBlocks) {
  Rng rng(16);
  const std::size_t bs = 512;
  const std::string basis = rng.bytes(bs * 64);
  const Signature sig = make_signature(basis, bs, 4);
  std::string target;
  for (int b : {5, 6, 7, 0, 1, 63, 63, 20, 21, 22, 23, 5}) target += basis.substr(b * bs, bs);
  const std::vector<Op> ops = parse_ops(round_trip(basis, target, sig));
  EXPECT_EQ(literal_bytes(ops), 0u);
  // 5-7, 0-1, 63, 63, 20-23, 5
  EXPECT_EQ(count_kind(ops, Op::copy), 6u);
}

TEST(DeltaRoundTrip, SmallBlocksManyEdits) {
  Rng rng(17);
  for (std::uint32_t bs : {1u, 2u, 3u, 8u, 13u, 64u}) {
    for (int round = 0; round < 20; ++round) {
      SCOPED_TRACE(testing::Message() << "bs=" << bs << " round=" << round);
      const std::string basis = rng.bytes(rng.below(3000));
      std::string target = basis;
      const int edits = static_cast<int>(rng.below(6));
      for (int e = 0; e < edits; ++e) {
        const std::size_t at = target.empty() ? 0 : rng.below(target.size());
        switch (rng.below(3)) {
          case 0: target.insert(at, rng.bytes(rng.below(20))); break;
          case 1: target.erase(at, rng.below(20)); break;
          default:
            if (!target.empty()) target[at] = static_cast<char>(rng.next());
        }
      }
      round_trip(basis, target, make_signature(basis, bs, 8));
    }
  }
}

TEST(DeltaRoundTrip, RandomMutations) {
  Rng rng(18);
  for (int round = 0; round < 60; ++round) {
    SCOPED_TRACE(round);
    const std::string basis = rng.bytes(rng.below(70000));
    std::string target = basis;
    const int edits = static_cast<int>(rng.below(5));
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = target.empty() ? 0 : rng.below(target.size() + 1);
      switch (rng.below(4)) {
        case 0: target.insert(at, rng.bytes(rng.below(3000))); break;
        case 1: target.erase(at, rng.below(3000)); break;
        case 2:
          target.insert(at, basis.substr(rng.below(basis.size() + 1), rng.below(5000)));
          break;
        default:
          if (at < target.size()) target[at] ^= 0x40;
      }
    }
    round_trip(basis, target);
  }
}

// ---- weak collisions ---------------------------------------------------------

TEST(DeltaCollision, RealWeakCollisionIsNotAMatch) {
  // Birthday search for two different 16-byte blocks with the same weak sum:
  // 2^18 blocks of a 32-bit checksum give ~8 colliding pairs.
  Rng rng(20);
  constexpr std::uint32_t bs = 16;
  const std::string pool = rng.bytes(bs << 18);
  const Signature all = make_signature(pool, bs, 8);
  std::map<std::uint32_t, std::size_t> seen;
  std::optional<std::pair<std::size_t, std::size_t>> pair;
  for (std::size_t i = 0; i < all.weak.size() && !pair; ++i) {
    auto [it, fresh] = seen.emplace(all.weak[i], i);
    if (!fresh && pool.compare(it->second * bs, bs, pool, i * bs, bs) != 0)
      pair.emplace(it->second, i);
  }
  ASSERT_TRUE(pair) << "no weak collision found";
  const std::string a = pool.substr(pair->first * bs, bs);
  const std::string b = pool.substr(pair->second * bs, bs);
  const Signature sa = make_signature(a, bs, 8);
  const Signature sb = make_signature(b, bs, 8);
  ASSERT_EQ(sa.weak[0], sb.weak[0]);
  ASSERT_NE(sa.strong[0], sb.strong[0]);
  // B against a basis of A: the weak hits, the strong says no.
  std::vector<Op> ops = parse_ops(round_trip(a, b, sa));
  EXPECT_EQ(count_kind(ops, Op::copy), 0u);
  // In context: basis X A Y, target X B Y (every strong length).
  const std::string x = rng.bytes(bs * 10), y = rng.bytes(bs * 10);
  for (std::uint32_t sl = 2; sl <= 8; ++sl) {
    const std::string basis = x + a + y;
    ops = parse_ops(round_trip(basis, x + b + y, make_signature(basis, bs, sl)));
    EXPECT_EQ(literal_bytes(ops), bs);
    // and the other way round, with B where the rolling search finds it
    ops = parse_ops(round_trip(basis, x + "q" + b + y, make_signature(basis, bs, sl)));
    EXPECT_EQ(literal_bytes(ops), bs + 1);
  }
}

TEST(DeltaCollision, SimulatedStrongMismatchGoesLiteral) {
  // A signature whose weak sums match the target but whose strong sum for
  // one block does not (as if the weak collided): that block must be sent.
  Rng rng(21);
  const std::string basis = rng.bytes(512 * 40);
  Signature sig = make_signature(basis, 512, 6);
  sig.strong[17] ^= 1;
  std::string expect;
  std::string delta = make_delta(sig, basis);
  EXPECT_EQ(apply(basis, 512, delta), basis);
  std::vector<Op> ops = parse_ops(delta);
  EXPECT_EQ(literal_bytes(ops), 512u);
  // Every block "collides": nothing but literals, still correct.
  for (auto& s : sig.strong) s ^= 2;
  delta = make_delta(sig, basis);
  EXPECT_EQ(apply(basis, 512, delta), basis);
  EXPECT_EQ(count_kind(parse_ops(delta), Op::copy), 0u);
  // All weak sums equal and strong sums distinct (a hostile signature):
  // still finishes, still correct for what it found.
  Signature hostile = make_signature(basis, 512, 8);
  for (auto& w : hostile.weak) w = 0x12345678;
  delta = make_delta(hostile, basis);
  EXPECT_EQ(apply(basis, 512, delta), basis);
}

TEST(DeltaCollision, AWeakHitAtEveryOffsetStaysCheap) {
  // One basis block whose weak sum equals that of an all-zero window, but
  // whose strong sum does not (only a hostile signature does that): a
  // zero-filled target hits the weak check at every offset. The search must
  // stay linear (a budget of hashing on false alarms, then only sequential
  // blocks are tried) and correct; the delta may be bigger.
  Rng rng(22);
  const std::uint32_t bs = 4096;
  const std::string basis = rng.bytes(bs * 64);
  Signature sig = make_signature(basis, bs, 8);
  sig.weak[5] = make_signature(std::string(bs, '\0'), bs, 8).weak[0];
  const std::string target = std::string(8 << 20, '\0') + basis.substr(bs * 10, bs * 20);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string delta = make_delta(sig, target);
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_EQ(apply(basis, bs, delta), target);
  std::printf("[bench] weak hit at every offset: make_delta %.0f MiB/s\n",
              mb_per_s(target.size(), t1 - t0));
  const std::vector<Op> ops = parse_ops(delta);
  EXPECT_GE(literal_bytes(ops), std::uint64_t{8} << 20);
  EXPECT_LE(literal_bytes(ops), target.size());
  // The same target against the honest signature: the zeros go literal,
  // the 20 blocks after them are found.
  const std::vector<Op> honest = parse_ops(round_trip(basis, target));
  EXPECT_EQ(literal_bytes(honest), std::uint64_t{8} << 20);
  EXPECT_EQ(count_kind(honest, Op::copy), 1u);
}

// ---- streaming -------------------------------------------------------------

TEST(DeltaStreaming, ChunkedOutputConcatenatesToTheWhole) {
  Rng rng(30);
  const std::string basis = rng.bytes(300000);
  std::string target = basis;
  target.insert(1000, rng.bytes(70000));
  target.erase(200000, 5000);
  target.insert(250000, rng.bytes(3));
  const Signature sig = make_signature(basis);
  const std::string whole = make_delta(sig, target);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{100}, std::size_t{4096},
                            std::size_t{65536}, std::size_t{1} << 20}) {
    SCOPED_TRACE(chunk);
    std::string joined;
    std::size_t pieces = 0, biggest = 0;
    make_delta(
        sig, target,
        [&](std::string_view p) {
          EXPECT_FALSE(p.empty());
          joined.append(p);
          ++pieces;
          biggest = std::max(biggest, p.size());
        },
        chunk);
    EXPECT_EQ(joined, whole);
    // Pieces are about `chunk` bytes: never much bigger.
    EXPECT_LE(biggest, chunk + 2 * 21);
    if (chunk < whole.size()) {
      EXPECT_GE(pieces, whole.size() / (chunk + 42));
    }
  }
}

TEST(DeltaStreaming, ApplierTakesAnySplit) {
  Rng rng(31);
  const std::string basis = rng.bytes(50000);
  std::string target = basis;
  target.insert(7, "inserted");
  target.replace(20000, 100, rng.bytes(300));
  target += rng.bytes(200);
  const Signature sig = make_signature(basis, 512, 4);
  const std::string delta = make_delta(sig, target);
  ASSERT_GT(count_kind(parse_ops(delta), Op::copy), 1u);
  for (std::size_t split = 1; split <= 25; ++split)
    EXPECT_EQ(apply(basis, 512, delta, split), target) << split;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(apply_random_splits(basis, 512, delta, rng), target);
  // Every split point into two pieces.
  for (std::size_t cut = 0; cut <= delta.size(); ++cut) {
    std::string out;
    DeltaApplier a(basis, 512, [&](std::string_view p) { out.append(p); });
    a.feed(delta.substr(0, cut));
    a.feed(delta.substr(cut));
    a.finish();
    ASSERT_EQ(out, target) << cut;
  }
}

TEST(DeltaStreaming, LongLiteralIsStreamedNotBuffered) {
  // A literal arriving in pieces comes out in pieces, as it arrives.
  const std::string lit(100000, 'z');
  const std::string delta = op_literal(lit) + op_end(lit.size());
  std::size_t calls = 0;
  std::string out;
  DeltaApplier a("", 512, [&](std::string_view p) {
    ++calls;
    out.append(p);
  });
  a.feed(delta.substr(0, 1000));
  EXPECT_EQ(out.size(), 1000u - 4);  // header: 1 op byte + 3 varint bytes
  a.feed(delta.substr(1000));
  a.finish();
  EXPECT_EQ(out, lit);
  EXPECT_EQ(calls, 2u);
}

// ---- sizes of deltas -------------------------------------------------------

TEST(DeltaSize, SmallChangeInALargeFile) {
  Rng rng(40);
  const std::string basis = rng.bytes(4 << 20);
  std::string target = basis;
  const std::string change = rng.bytes(1024);
  target.replace(target.size() / 2 + 333, change.size(), change);
  const Signature sig = make_signature(basis);
  const std::string delta = make_delta(sig, target);
  EXPECT_EQ(apply(basis, sig.block_size, delta), target);
  EXPECT_LT(delta.size(), 3 * sig.block_size + 64);
  const std::vector<Op> ops = parse_ops(delta);
  EXPECT_EQ(ops.size(), 4u);  // COPY LITERAL COPY END
  // The same change as an insertion.
  target = basis;
  target.insert(target.size() / 3, change);
  EXPECT_LT(make_delta(sig, target).size(), 3 * sig.block_size + 64);
}

// ---- malformed deltas ------------------------------------------------------

TEST(DeltaApply, RejectsMalformed) {
  const std::string basis(100 * 64 + 10, 'b');  // 101 blocks of 64, the last of 10
  const std::uint32_t bs = 64;
  // Sanity: the pieces below are well-formed in a good stream.
  EXPECT_EQ(apply(basis, bs, op_copy(0, 101) + op_end(basis.size())), basis);
  EXPECT_EQ(apply(basis, bs, op_copy(100, 1) + op_end(10)), std::string(10, 'b'));
  EXPECT_EQ(apply(basis, bs, op_literal("xy") + op_end(2)), "xy");

  expect_bad_delta(basis, bs, "\x07", "unknown op 0x07");
  expect_bad_delta(basis, bs, "\xff", "unknown op 0xff");
  expect_bad_delta(basis, bs, op_copy(101, 1) + op_end(64),
                   "COPY of block 101 past the basis's 101 blocks");
  expect_bad_delta(basis, bs, op_copy(12345, 1), "COPY of block 12345 past the basis's 101");
  expect_bad_delta(basis, bs, op_copy(100, 2), "past the basis's 101 blocks");
  expect_bad_delta(basis, bs, op_copy(1, UINT64_MAX), "past the basis");
  expect_bad_delta(basis, bs, op_copy(UINT64_MAX, UINT64_MAX), "past the basis");
  expect_bad_delta(basis, bs, op_copy(0, 0), "COPY of 0 blocks");
  expect_bad_delta(basis, bs, op_literal(""), "LITERAL of 0 bytes");
  expect_bad_delta("", bs, op_copy(0, 1), "past the basis's 0 blocks");
  // Truncated: inside a header, inside a literal, before END.
  expect_bad_delta(basis, bs, "\x01", "truncated inside an op header");
  expect_bad_delta(basis, bs, "\x01\x05", "truncated inside an op header");
  expect_bad_delta(basis, bs, "\x01\x85", "truncated inside an op header");
  expect_bad_delta(basis, bs, "\x02", "truncated inside an op header");
  expect_bad_delta(basis, bs, std::string(1, '\0'), "truncated inside an op header");
  expect_bad_delta(basis, bs, "\x02\x05" "abc", "truncated inside a literal (2 bytes missing)");
  expect_bad_delta(basis, bs, "", "no END");
  expect_bad_delta(basis, bs, op_copy(0, 1), "no END");
  // END that disagrees; anything after END.
  expect_bad_delta(basis, bs, op_copy(0, 1) + op_end(65), "END says 65 bytes but the ops made 64");
  expect_bad_delta(basis, bs, op_end(0) + op_end(0), "after the END");
  expect_bad_delta(basis, bs, op_end(0) + "x", "1 bytes after the END");
  // Varints: overflowing, overlong, not minimal.
  expect_bad_delta(basis, bs, "\x02" + std::string(9, '\xff') + "\x02", "overflows");
  expect_bad_delta(basis, bs, "\x01" + std::string(10, '\x80') + "\x01", "overflows");
  expect_bad_delta(basis, bs, std::string("\x01\x80\x00\x01", 4), "not minimally encoded");
  expect_bad_delta(basis, bs, std::string("\x01\x00\x81\x00", 4), "not minimally encoded");
  expect_bad_delta(basis, bs, std::string("\x00\x80\x00", 3), "not minimally encoded");
  // A huge literal length is refused at its header (with a limit) ...
  expect_bad_delta(basis, bs, "\x02" + varint(UINT64_MAX), "exceeds the output limit",
                   1 << 20);
  // ... and without one, the stream simply ends short.
  expect_bad_delta(basis, bs, "\x02" + varint(UINT64_MAX) + "abc", "truncated inside a literal");
  // Error messages say where.
  expect_bad_delta(basis, bs, op_literal("abc") + "\x09", "op at delta byte 5");
}

TEST(DeltaApply, MaxOutputIsEnforced) {
  const std::string basis(1000, 'b');
  const std::uint32_t bs = 100;
  const std::string delta = op_copy(0, 5) + op_literal("0123456789") + op_copy(9, 1) + op_end(610);
  EXPECT_EQ(apply(basis, bs, delta, 0, 610).size(), 610u);
  EXPECT_EQ(apply(basis, bs, delta, 1, 610).size(), 610u);
  expect_bad_delta(basis, bs, delta, "output exceeds the limit of 609", 609);
  expect_bad_delta(basis, bs, delta, "LITERAL of 10 bytes exceeds", 505);
  expect_bad_delta(basis, bs, delta, "output exceeds the limit of 499", 499);
  expect_bad_delta(basis, bs, delta, "output exceeds the limit of 0", 0);
  // Nothing past the limit is written before the error.
  std::string out;
  DeltaApplier a(basis, bs, [&](std::string_view p) { out.append(p); }, 505);
  EXPECT_THROW(a.feed(delta), DeltaError);
  EXPECT_LE(out.size(), 505u);
  EXPECT_LE(a.written(), 505u);
  // make_delta's output against a real basis, with a limit just too small.
  Rng rng(50);
  const std::string real = rng.bytes(20000);
  const std::string target = real.substr(5000) + rng.bytes(100);
  const Signature sig = make_signature(real);
  const std::string d = make_delta(sig, target);
  EXPECT_EQ(apply(real, sig.block_size, d, 0, target.size()), target);
  expect_bad_delta(real, sig.block_size, d, "exceeds", target.size() - 1);
}

TEST(DeltaApply, ZeroBlockSizeIsRefused) {
  expect_delta_error([] { DeltaApplier a("abc", 0, [](std::string_view) {}); }, "block size 0");
}

TEST(DeltaApply, EveryTruncationOfAGoodDeltaIsCaught) {
  Rng rng(51);
  const std::string basis = rng.bytes(20000);
  std::string target = basis;
  target.insert(3000, "some new bytes");
  target.erase(15000, 10);
  const Signature sig = make_signature(basis);
  const std::string delta = make_delta(sig, target);
  for (std::size_t n = 0; n < delta.size(); ++n) {
    SCOPED_TRACE(n);
    expect_delta_error([&] { apply(basis, sig.block_size, delta.substr(0, n)); });
  }
  EXPECT_EQ(apply(basis, sig.block_size, delta), target);
}

// ---- speed and the sizes for the design notes (printed, not asserted) -----

std::size_t bench_mib() {
  if (const char* e = std::getenv("DTEST_DELTA_BENCH_MIB")) return std::strtoul(e, nullptr, 10);
  return 100;
}

TEST(DeltaBench, HundredMegabytesWithOneKilobyteChanged) {
  using clock = std::chrono::steady_clock;
  const std::size_t n = bench_mib() << 20;
  Rng rng(60);
  const std::string basis = rng.bytes(n);
  std::string target = basis;
  const std::string change = rng.bytes(1024);
  target.replace(n / 2 + 12345, change.size(), change);

  auto t0 = clock::now();
  const Signature sig = make_signature(basis);
  auto t1 = clock::now();
  const std::string sig_wire = encode_signature(sig);
  std::size_t delta_size = 0, pieces = 0;
  std::string delta;
  auto t2 = clock::now();
  make_delta(sig, target, [&](std::string_view p) {
    delta_size += p.size();
    ++pieces;
    delta.append(p);
  });
  auto t3 = clock::now();
  // The receiver copies what it gets (into a file; here into memory).
  std::string rebuilt(target.size(), '\0');
  std::uint64_t out_bytes = 0;
  DeltaApplier a(basis, sig.block_size, [&](std::string_view p) {
    ASSERT_LE(p.size(), rebuilt.size() - out_bytes);
    std::copy(p.begin(), p.end(), rebuilt.begin() + static_cast<std::ptrdiff_t>(out_bytes));
    out_bytes += p.size();
  });
  a.feed(delta);
  a.finish();
  auto t4 = clock::now();
  EXPECT_EQ(out_bytes, target.size());
  EXPECT_TRUE(rebuilt == target);
  const std::vector<Op> ops = parse_ops(delta);
  EXPECT_EQ(ops.size(), 4u);

  // Worst case for the search: nothing matches, the checksum rolls over
  // every byte.
  const std::string other = rng.bytes(std::min<std::size_t>(n, 32 << 20));
  auto t5 = clock::now();
  std::size_t unrelated = 0;
  make_delta(sig, other, [&](std::string_view p) { unrelated += p.size(); });
  auto t6 = clock::now();
  // A shifted copy: one rolling search, then sequential blocks.
  const std::string shifted = "x" + basis;
  auto t7 = clock::now();
  std::size_t shifted_size = 0;
  make_delta(sig, shifted, [&](std::string_view p) { shifted_size += p.size(); });
  auto t8 = clock::now();

  std::printf(
      "[bench] %zu MiB, block %u, strong_len %u, %zu blocks\n"
      "[bench] signature: %zu bytes encoded; make_signature %.0f MiB/s\n"
      "[bench] delta (1 KiB changed): %zu bytes (%zu literal, %zu ops), %zu pieces; "
      "make_delta %.0f MiB/s, apply %.0f MiB/s\n"
      "[bench] unrelated %zu MiB: make_delta %.0f MiB/s (delta %zu bytes)\n"
      "[bench] shifted by 1 byte: make_delta %.0f MiB/s (delta %zu bytes)\n",
      n >> 20, sig.block_size, sig.strong_len, sig.weak.size(), sig_wire.size(),
      mb_per_s(n, t1 - t0), delta_size, static_cast<std::size_t>(literal_bytes(ops)), ops.size(),
      pieces, mb_per_s(n, t3 - t2), mb_per_s(n, t4 - t3), other.size() >> 20,
      mb_per_s(other.size(), t6 - t5), unrelated, mb_per_s(shifted.size(), t8 - t7),
      shifted_size);
}

}  // namespace
}  // namespace dtest::sync
