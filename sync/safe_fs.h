// The receiver's writes, confined to one root. Every path comes from a peer
// and is checked (check_relative_path); every directory on the way is opened
// with O_NOFOLLOW from the root's descriptor, so a symlink planted in the
// tree (or a hostile manifest naming "link/../../etc") can never lead a
// write, a delete or a chmod outside the root. Files are written to a
// temporary name in their directory, checked against the announced hash, and
// renamed into place.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "sync/tree.h"

namespace dtest::sync {

class SafeRoot {
 public:
  // Opens (creating it and its parents when missing) the root directory.
  // Throws SyncError.
  explicit SafeRoot(const std::string& root);
  ~SafeRoot();
  SafeRoot(const SafeRoot&) = delete;
  SafeRoot& operator=(const SafeRoot&) = delete;

  const std::string& path() const { return root_; }

  // All of these throw SyncError naming the path and the reason; a path
  // that fails check_relative_path, or whose parent is a symlink or not a
  // directory, is refused.

  // Creates the directory (parents must exist). An existing directory is
  // fine; an existing file or symlink at that path is replaced.
  void make_dir(std::string_view rel);
  // Creates or replaces a symlink with `target` (stored as given: never
  // resolved, never followed) and sets its mtime.
  void make_symlink(std::string_view rel, std::string_view target, std::int64_t mtime_ns);
  // Removes a file or symlink, or an empty directory. A directory that is
  // not empty (ignored files left in it) is left alone: returns false.
  // A path that does not exist is fine (returns true).
  bool remove(std::string_view rel);
  // Sets the executable bits (from the umask-derived mode) and the mtime of
  // an existing regular file.
  void set_meta(std::string_view rel, bool exec, std::int64_t mtime_ns);

  // Maps an existing regular file for reading (the basis of a delta); an
  // empty view for an empty file. Valid until the Basis is destroyed.
  class Basis {
   public:
    Basis() = default;
    Basis(Basis&&) noexcept;
    Basis& operator=(Basis&&) noexcept;
    ~Basis();
    std::string_view data() const { return {static_cast<const char*>(map_), size_}; }
    int fd() const { return fd_; }  // open while the Basis lives (-1 for an empty file)
   private:
    friend class SafeRoot;
    void* map_ = nullptr;
    std::size_t size_ = 0;
    int fd_ = -1;
  };
  Basis open_basis(std::string_view rel);

  // A file being written: a temp file in the target's directory.
  class Writer {
   public:
    ~Writer();  // abandons (unlinks the temp file) unless committed
    void write(std::string_view bytes);
    // Appends `bytes`, which are the contents of `src_fd` at `offset` (a span
    // of a mapped basis): copied in the kernel (copy_file_range: no trip
    // through user space, a reflink where the file system shares extents),
    // hashed from the mapping. Falls back to write().
    void copy_from(int src_fd, std::uint64_t offset, std::string_view bytes);
    std::uint64_t size() const { return size_; }
    // Checks size and XXH3-128 of what was written against `hash`, sets
    // mode (exec) and mtime, renames over the target (replacing a file or
    // symlink there; a directory there is removed first if empty). Throws
    // SyncError on a hash mismatch (the temp file is removed).
    void commit(const Hash128& hash, bool exec, std::int64_t mtime_ns);
   private:
    friend class SafeRoot;
    Writer() = default;
    struct State;
    std::unique_ptr<State> s_;
    std::uint64_t size_ = 0;
  };
  // `max_size` bounds the bytes a peer can make us write to this file.
  std::unique_ptr<Writer> create(std::string_view rel, std::uint64_t max_size);

 private:
  // Opens the directory containing `rel` (O_NOFOLLOW each step) and returns
  // its fd (fd_ itself for a top-level name: the caller must not close that
  // one) plus the last component; throws SyncError. With `missing`, a
  // directory on the way that does not exist gives -1 and *missing = true
  // instead of an error.
  int open_parent(std::string_view rel, std::string* leaf, bool* missing = nullptr) const;
  std::string root_;
  int fd_ = -1;
};

}  // namespace dtest::sync
