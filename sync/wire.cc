#include "sync/wire.h"

#include <cstring>

namespace dtest::sync {

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void put_zigzag(std::string& out, std::int64_t v) {
  put_varint(out, (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
}

void ByteReader::fail(const std::string& why) const {
  throw SyncError(std::string(what_) + ": " + why + " at byte " + std::to_string(pos_));
}

std::uint8_t ByteReader::byte() {
  if (pos_ >= data_.size()) fail("truncated");
  return static_cast<std::uint8_t>(data_[pos_++]);
}

std::uint64_t ByteReader::varint() {
  std::uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    const std::uint8_t b = byte();
    if (shift == 63 && b > 1) fail("varint overflows 64 bits");
    v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  fail("varint longer than 10 bytes");
}

std::int64_t ByteReader::zigzag() {
  const std::uint64_t u = varint();
  return static_cast<std::int64_t>((u >> 1) ^ (~(u & 1) + 1));
}

std::string_view ByteReader::bytes(std::uint64_t n) {
  if (n > data_.size() - pos_) fail("a length of " + std::to_string(n) + " runs past the end");
  auto v = data_.substr(pos_, static_cast<std::size_t>(n));
  pos_ += static_cast<std::size_t>(n);
  return v;
}

namespace {
constexpr std::uint8_t kExec = 1, kFirst = 2, kLast = 4;
}

void append_record(std::string& out, const Record& r) {
  out.push_back(static_cast<char>(r.kind));
  put_varint(out, r.path.size());
  out.append(r.path);
  out.push_back(static_cast<char>((r.exec ? kExec : 0) | (r.first ? kFirst : 0) | (r.last ? kLast : 0)));
  put_varint(out, r.size);
  put_zigzag(out, r.mtime_ns);
  out.append(reinterpret_cast<const char*>(r.hash.data()), r.hash.size());
  put_varint(out, r.data.size());
  out.append(r.data);
}

std::vector<Record> parse_records(std::string_view bundle) {
  ByteReader in(bundle, "sync_data bundle");
  std::vector<Record> out;
  while (!in.done()) {
    Record r;
    const std::uint8_t kind = in.byte();
    if (kind != 1 && kind != 2) throw SyncError("sync_data bundle: unknown record kind " + std::to_string(kind));
    r.kind = static_cast<RecordKind>(kind);
    r.path = in.bytes(in.varint());
    if (auto why = check_relative_path(r.path); !why.empty())
      throw SyncError("sync_data bundle: bad path '" + std::string(r.path) + "': " + why);
    const std::uint8_t flags = in.byte();
    if (flags & ~(kExec | kFirst | kLast)) throw SyncError("sync_data bundle: unknown record flags");
    r.exec = flags & kExec;
    r.first = flags & kFirst;
    r.last = flags & kLast;
    r.size = in.varint();
    r.mtime_ns = in.zigzag();
    std::memcpy(r.hash.data(), in.bytes(r.hash.size()).data(), r.hash.size());
    r.data = in.bytes(in.varint());
    out.push_back(r);
  }
  return out;
}

void append_sig(std::string& out, std::string_view path, std::string_view sig) {
  put_varint(out, path.size());
  out.append(path);
  put_varint(out, sig.size());
  out.append(sig);
}

std::vector<std::pair<std::string_view, std::string_view>> parse_sigs(std::string_view bytes) {
  ByteReader in(bytes, "sync_sigs list");
  std::vector<std::pair<std::string_view, std::string_view>> out;
  while (!in.done()) {
    auto path = in.bytes(in.varint());
    auto sig = in.bytes(in.varint());
    out.emplace_back(path, sig);
  }
  return out;
}

}  // namespace dtest::sync
