// The syncer's byte layouts inside sync_* messages (docs/protocol.md, "Sync"):
// varints, and the records of sync_data bundles and sync_sigs lists. Every
// reader is bounds-checked and throws SyncError naming what was malformed.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sync/tree.h"

namespace dtest::sync {

void put_varint(std::string& out, std::uint64_t v);
void put_zigzag(std::string& out, std::int64_t v);

class ByteReader {
 public:
  ByteReader(std::string_view data, const char* what) : data_(data), what_(what) {}
  bool done() const { return pos_ == data_.size(); }
  std::uint8_t byte();
  std::uint64_t varint();
  std::int64_t zigzag();
  std::string_view bytes(std::uint64_t n);

 private:
  [[noreturn]] void fail(const std::string& why) const;
  std::string_view data_;
  const char* what_;
  std::size_t pos_ = 0;
};

// One piece of a file in a sync_data bundle. A file travels as one record
// (first and last set) or as several in order; `data` is the file's bytes
// (kind file) or a piece of an rsync delta against the receiver's copy
// (kind delta). `size` bounds the file's final size; `hash`, `exec` and
// `mtime_ns` describe the finished file and count on the last record.
enum class RecordKind : std::uint8_t { file = 1, delta = 2 };
struct Record {
  RecordKind kind = RecordKind::file;
  std::string_view path;
  bool exec = false, first = false, last = false;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  Hash128 hash{};
  std::string_view data;
};
void append_record(std::string& out, const Record& r);
// Views into `bundle`. Throws SyncError for malformed bytes or a path that
// fails check_relative_path.
std::vector<Record> parse_records(std::string_view bundle);

// sync_sigs: (path, encoded signature) pairs.
void append_sig(std::string& out, std::string_view path, std::string_view sig);
std::vector<std::pair<std::string_view, std::string_view>> parse_sigs(std::string_view bytes);

}  // namespace dtest::sync
