// A synced tree's manifest: every entry below a root, its type, executable
// bit, size, mtime and content hash (XXH3-128), sorted by path. The sender
// scans its roots into manifests (re-hashing only files whose size, mtime,
// inode or ctime changed since the stat cache was written); the receiver
// scans its copy the same way and the two compare digests, so an unchanged
// tree costs one round trip.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sync/ignore.h"

namespace dtest::sync {

// Malformed manifests / cache files, unreadable roots.
struct SyncError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Hash128 = std::array<std::uint8_t, 16>;  // XXH3-128, canonical (big-endian) form
Hash128 hash_bytes(std::string_view data);
std::string to_hex(const Hash128& h);

enum class EntryType : std::uint8_t { file = 0, dir = 1, symlink = 2 };

struct Entry {
  std::string path;           // relative, '/'-separated, never empty, no "." / ".." parts
  EntryType type = EntryType::file;
  bool exec = false;          // files: any execute bit set
  std::uint64_t size = 0;     // files: bytes; symlinks: target length
  std::int64_t mtime_ns = 0;  // files and symlinks (directories: 0, not reproduced)
  Hash128 hash{};             // files: contents; others: zero
  std::string target;         // symlinks: the link's text, as readlink() gives it
  // Local-only stat-cache fields; never sent, never part of the digest.
  std::uint64_t ino = 0;
  std::int64_t ctime_ns = 0;
};

struct Manifest {
  std::vector<Entry> entries;  // sorted by path (bytewise), each path once
  // XXH3-128 over every entry's path, type, exec, size, mtime, hash, target
  // (not ino/ctime). Two trees with equal digests are the same for the sync.
  Hash128 digest() const;
  const Entry* find(std::string_view path) const;  // binary search
};

// Wire form (also the stat-cache file's form when `with_local` is true):
// a compact binary layout with paths front-coded against the previous one.
std::string encode_manifest(const Manifest& m, bool with_local = false);
// Throws SyncError for anything malformed, including a path that is absolute,
// empty, has "."/".." components, a NUL, or is not in sorted order; a symlink
// target containing a NUL. `max_entries` bounds what a peer can make us
// allocate.
Manifest decode_manifest(std::string_view bytes, bool with_local = false,
                         std::size_t max_entries = 10'000'000);

// A checked relative path: returns an empty string when `p` is acceptable
// as an entry path, else what is wrong with it ("absolute path", "'..'
// component", "empty component", "NUL byte").
std::string check_relative_path(std::string_view p);

struct ScanOptions {
  const IgnoreRules* ignore = nullptr;  // null: nothing ignored
  std::string cache_path;               // stat cache; empty: none (read and rewritten atomically)
  bool follow_root_symlink = true;      // the root itself may be a link
  // Racy entries: a file whose mtime or ctime is this close to the scan's
  // start (or later) is written to the stat cache with ctime_ns = 0, so the
  // next scan hashes it again (timestamps are coarse: a same-size rewrite in
  // the same tick would otherwise keep a stale hash). Tests lower it.
  std::int64_t racy_ns = 2'000'000'000;
  // Test hook (null normally): called with a file's relative path and 0 just
  // before it is opened for hashing, then with 1, 2, ... after each read
  // pass, before the file is checked for changes. Tests delete or rewrite
  // the file there to make "vanished" and "changed while read" deterministic.
  std::function<void(const std::string& rel, int pass)> hash_hook;
};

struct ScanResult {
  Manifest manifest;
  std::vector<std::string> warnings;  // "src/x.cc: vanished during the scan", unreadable files
  std::size_t hashed_files = 0;       // files read this time (not served by the cache)
  std::uint64_t hashed_bytes = 0;
};

// Walks `root`. Files that vanish mid-scan are left out with a warning; a
// file that changes while it is read is read again (a few times, then taken
// as it was last read, with a warning). Unreadable entries (EACCES) and
// special files (fifos, sockets, devices) are skipped with a warning. A
// missing root or one that is not a directory throws SyncError.
ScanResult scan_tree(const std::string& root, const ScanOptions& opts);

}  // namespace dtest::sync
