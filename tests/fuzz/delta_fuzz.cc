// libFuzzer target for the delta syncer's peer-facing decoders:
// decode_signature (the receiver's signature, read by the sender) and
// DeltaApplier (the sender's delta, read by the receiver).
//
// Input layout: byte 0 picks the mode (byte0 % 3), the rest is mode-specific.
//
//   0  signature   rest = signature bytes. A signature that decodes must
//                  re-encode to exactly the same bytes (the format is
//                  canonical); make_delta against it (the same bytes as the
//                  target) must succeed, its chunked output must equal the
//                  one-shot output, and applying it to a stand-in basis of the
//                  signature's size must give target.size() bytes.
//   1  delta       byte 1: block size (1 + b % 64, or 512 when b >= 0xF0)
//                  bytes 2-3: basis size (little-endian, % 4096); the basis is
//                  a fixed pattern
//                  byte 4: output limit (b * 16, unlimited when 0xFF)
//                  byte 5: n = (b % 8) + 1 chunk-size entries, then the table
//                  (entry e feeds e + 1 bytes, the whole rest when 0xFF)
//                  rest: the delta, fed to DeltaApplier in those chunks.
//                  DeltaError is the only exception allowed; what comes out
//                  must add up to written() and stay within the limit; a delta
//                  that is accepted must give the same bytes fed in one piece.
//   2  round trip  byte 1: block size (1 + b % 64, or chosen from the basis
//                  when b >= 0xC0); byte 2: strong_len (2 + b % 7);
//                  bytes 3-4: split point; rest = basis, then target.
//                  make_signature -> encode -> decode -> make_delta (chunked)
//                  -> DeltaApplier (chunked) must rebuild a file of the
//                  target's size, equal to it when strong_len is 8.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "sync/delta.h"

namespace {

using dtest::sync::DeltaApplier;
using dtest::sync::DeltaError;
using dtest::sync::Signature;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "delta_fuzz: invariant violated: %s\n", what);
  std::abort();
}

std::string pattern_basis(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131) ^ (i >> 7));
  return s;
}

std::string one_shot_delta(const Signature& sig, std::string_view target) {
  return dtest::sync::make_delta(sig, target);
}

std::string chunked_delta(const Signature& sig, std::string_view target, std::size_t chunk) {
  std::string d;
  dtest::sync::make_delta(
      sig, target,
      [&](std::string_view p) {
        if (p.empty()) fail("make_delta wrote an empty piece");
        d.append(p);
      },
      chunk);
  return d;
}

// Applies `delta` in pieces of `piece` bytes; DeltaError escapes.
std::string apply(std::string_view basis, std::uint32_t bs, std::string_view delta,
                  std::size_t piece) {
  std::string out;
  DeltaApplier a(basis, bs, [&](std::string_view p) { out.append(p); });
  for (std::size_t i = 0; i < delta.size(); i += piece) a.feed(delta.substr(i, piece));
  a.finish();
  if (a.written() != out.size()) fail("written() disagrees with the output");
  return out;
}

void fuzz_signature(std::string_view bytes) {
  Signature sig;
  try {
    sig = dtest::sync::decode_signature(bytes);
  } catch (const DeltaError&) {
    return;
  }
  if (sig.weak.size() != sig.strong.size()) fail("weak and strong counts differ");
  if (dtest::sync::encode_signature(sig) != bytes) fail("signature does not re-encode the same");
  const std::string whole = one_shot_delta(sig, bytes);
  if (chunked_delta(sig, bytes, 1 + bytes.size() % 97) != whole)
    fail("chunked delta differs from the one-shot delta");
  if (sig.file_size > (1u << 16)) return;
  const std::string stand_in(static_cast<std::size_t>(sig.file_size), 'b');
  std::string out;
  try {
    out = apply(stand_in, sig.block_size, whole, 1 + whole.size() % 13);
  } catch (const DeltaError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    fail("make_delta's own output was rejected");
  }
  if (out.size() != bytes.size()) fail("rebuilt file has the wrong size");
}

// A plain, whole-buffer reading of the delta format (delta.h), to check the
// incremental applier against: returns whether the delta is valid and the
// bytes produced up to the first error (literal bytes as far as they go).
bool reference_apply(std::string_view basis, std::uint32_t bs, std::string_view d,
                     std::uint64_t limit, std::string& out) {
  const std::uint64_t blocks = basis.size() / bs + (basis.size() % bs != 0);
  std::size_t pos = 0;
  auto varint = [&](std::uint64_t& v) {
    v = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos == d.size()) return false;
      const auto b = static_cast<unsigned char>(d[pos++]);
      if (i == 9 && b > 1) return false;
      v |= std::uint64_t{b & 0x7Fu} << (7 * i);
      if (!(b & 0x80)) return !(b == 0 && i > 0);
    }
    return false;
  };
  while (pos < d.size()) {
    const auto op = static_cast<unsigned char>(d[pos++]);
    std::uint64_t a = 0, b = 0;
    if (op == 0x00) {
      return varint(a) && a == out.size() && pos == d.size();
    } else if (op == 0x01) {
      if (!varint(a) || !varint(b) || b == 0 || a >= blocks || b > blocks - a) return false;
      const std::uint64_t start = a * bs;
      const std::uint64_t end = std::min<std::uint64_t>((a + b) * bs, basis.size());
      if (end - start > limit - out.size()) return false;
      out.append(basis.substr(start, end - start));
    } else if (op == 0x02) {
      if (!varint(a) || a == 0 || a > limit - out.size()) return false;
      const std::size_t have = std::min<std::uint64_t>(a, d.size() - pos);
      out.append(d.substr(pos, have));
      pos += have;
      if (have != a) return false;
    } else {
      return false;
    }
  }
  return false;  // no END
}

void fuzz_delta(const std::uint8_t* data, std::size_t size) {
  if (size < 6) return;
  const std::uint32_t bs = data[0] >= 0xF0 ? 512 : 1 + data[0] % 64;
  const std::size_t basis_size = (data[1] | (std::size_t{data[2]} << 8)) % 4096;
  const std::uint64_t limit = data[3] == 0xFF ? UINT64_MAX : std::uint64_t{data[3]} * 16;
  const std::size_t ntable = (data[4] % 8) + 1;
  if (size < 5 + ntable) return;
  const std::uint8_t* table = data + 5;
  const std::string_view stream(reinterpret_cast<const char*>(data + 5 + ntable),
                                size - 5 - ntable);
  const std::string basis = pattern_basis(basis_size);

  std::string out;
  DeltaApplier a(
      basis, bs, [&](std::string_view p) { out.append(p); }, limit);
  bool ok = true;
  try {
    std::size_t pos = 0;
    for (std::size_t i = 0; pos < stream.size(); ++i) {
      const std::uint8_t e = table[i % ntable];
      const std::size_t n = e == 0xFF ? stream.size() - pos : std::size_t{e} + 1;
      a.feed(stream.substr(pos, n));
      pos += std::min(n, stream.size() - pos);
      if (a.written() != out.size()) fail("written() disagrees with the output");
      if (a.written() > limit) fail("output beyond the limit");
    }
    a.finish();
  } catch (const DeltaError&) {
    ok = false;
  }
  if (a.written() != out.size()) fail("written() disagrees with the output");
  if (a.written() > limit) fail("output beyond the limit");
  std::string expect;
  const bool valid = reference_apply(basis, bs, stream, limit, expect);
  if (ok != valid)
    fail(ok ? "the applier accepted an invalid delta" : "the applier rejected a valid delta");
  if (out != expect) fail("the applier's output differs from the reference reading");
  if (!ok) return;
  // Accepted: the same stream in one piece gives the same file.
  std::string again;
  DeltaApplier b(
      basis, bs, [&](std::string_view p) { again.append(p); }, limit);
  try {
    b.feed(stream);
    b.finish();
  } catch (const DeltaError&) {
    fail("a delta accepted in pieces was rejected whole");
  }
  if (again != out) fail("a delta gave different bytes in pieces and whole");
}

void fuzz_round_trip(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return;
  const std::uint8_t bs_sel = data[0];
  const std::uint32_t strong_len = 2 + data[1] % 7;
  const std::string_view rest(reinterpret_cast<const char*>(data + 4), size - 4);
  const std::size_t split = (data[2] | (std::size_t{data[3]} << 8)) % (rest.size() + 1);
  const std::string_view basis = rest.substr(0, split);
  const std::string_view target = rest.substr(split);
  const std::uint32_t bs =
      bs_sel >= 0xC0 ? dtest::sync::choose_block_size(basis.size()) : 1 + bs_sel % 64;

  const Signature made = dtest::sync::make_signature(basis, bs, strong_len);
  const Signature sig = dtest::sync::decode_signature(dtest::sync::encode_signature(made));
  if (sig.weak != made.weak || sig.strong != made.strong || sig.file_size != made.file_size)
    fail("signature changed on the wire");
  const std::string delta = chunked_delta(sig, target, 1 + size % 29);
  if (delta != one_shot_delta(sig, target)) fail("chunked delta differs from the one-shot delta");
  std::string out;
  try {
    out = apply(basis, bs, delta, 1 + size % 7);
  } catch (const DeltaError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    fail("make_delta's own output was rejected");
  }
  if (out.size() != target.size()) fail("rebuilt file has the wrong size");
  // With 8 strong bytes a false block match is out of reach.
  if (strong_len == 8 && out != target) fail("round trip changed the file");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  switch (data[0] % 3) {
    case 0:
      fuzz_signature(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
      break;
    case 1:
      fuzz_delta(data + 1, size - 1);
      break;
    default:
      fuzz_round_trip(data + 1, size - 1);
      break;
  }
  return 0;
}

#ifdef DTEST_FUZZ_SEED_MAIN
// Seed-corpus writer (built without -fsanitize=fuzzer by build.sh):
//   delta_fuzz_seeds DIR   writes a few valid inputs into DIR.
#include <fstream>

namespace {

void write_seed(const std::string& dir, const char* name, const std::string& data) {
  std::ofstream(dir + "/" + name, std::ios::binary) << data;
}

std::string edited(std::string s) {
  if (s.size() > 40) {
    s.insert(17, "inserted");
    s.erase(s.size() / 2, 5);
    s[s.size() / 3] ^= 0x55;
  }
  return s + "appended";
}

// A mode-1 input: a delta against pattern_basis(basis_size) with blocks of
// bs_byte's size, fed in chunks from `table`.
std::string delta_seed(std::uint8_t bs_byte, std::size_t basis_size, std::string table) {
  const std::uint32_t bs = bs_byte >= 0xF0 ? 512 : 1 + bs_byte % 64;
  const std::string basis = pattern_basis(basis_size);
  const std::string delta = dtest::sync::make_delta(
      dtest::sync::make_signature(basis, bs, 8), edited(basis));
  std::string s(1, '\x01');
  s += static_cast<char>(bs_byte);
  s += static_cast<char>(basis_size & 0xFF);
  s += static_cast<char>(basis_size >> 8);
  s += '\xFF';
  s += static_cast<char>(table.size() - 1);
  s += table;
  return s + delta;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const std::string text =
      "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
      "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.";
  // Signatures.
  write_seed(dir, "sig_small",
             std::string(1, '\0') +
                 dtest::sync::encode_signature(dtest::sync::make_signature(text, 16, 4)));
  write_seed(dir, "sig_default",
             std::string(1, '\0') +
                 dtest::sync::encode_signature(dtest::sync::make_signature(text)));
  write_seed(dir, "sig_empty",
             std::string(1, '\0') +
                 dtest::sync::encode_signature(dtest::sync::make_signature("")));
  // Deltas, whole and in small chunks.
  write_seed(dir, "delta_whole", delta_seed(7, 600, "\xFF"));
  write_seed(dir, "delta_chunks", delta_seed(15, 1000, std::string("\x00\x02\x06", 3)));
  write_seed(dir, "delta_512", delta_seed(0xF0, 3000, "\x3F"));
  // Round trips.
  std::string rt("\x02\x07\x06", 3);  // block size 8, strong_len 8
  rt += static_cast<char>(text.size() & 0xFF);
  rt += static_cast<char>(text.size() >> 8);
  write_seed(dir, "round_trip", rt + text + edited(text));
  std::string rt2("\x02\xC0\x06", 3);  // chosen block size
  const std::string big = pattern_basis(1500);
  rt2 += static_cast<char>(big.size() & 0xFF);
  rt2 += static_cast<char>(big.size() >> 8);
  write_seed(dir, "round_trip_default", rt2 + big + edited(big));
  return 0;
}
#endif
