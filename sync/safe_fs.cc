#include "sync/safe_fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace dtest::sync {

namespace {

constexpr std::size_t kWriteBuf = 256 * 1024;

// 'text' with control and non-ASCII bytes escaped (a peer chose it).
std::string quoted(std::string_view s) {
  std::string out = "'";
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "'";
}

[[noreturn]] void fail(std::string_view rel, const std::string& why) {
  throw SyncError("sync: " + quoted(rel) + ": " + why);
}

[[noreturn]] void fail_errno(std::string_view rel, const std::string& what, int err) {
  fail(rel, what + ": " + std::strerror(err));
}

// Closes a descriptor from open_parent unless it is the root's own.
struct ParentFd {
  int fd;
  int root;
  ~ParentFd() {
    if (fd >= 0 && fd != root) ::close(fd);
  }
};

struct timespec to_timespec(std::int64_t ns) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1'000'000'000;
    ts.tv_sec -= 1;
  }
  return ts;
}

// ".dtest-tmp.<leaf>.<random>", the leaf shortened so the name stays
// within NAME_MAX.
std::string temp_name(std::string_view leaf) {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          (static_cast<std::uint64_t>(getpid()) << 32)};
  char rnd[17];
  std::snprintf(rnd, sizeof rnd, "%016llx", static_cast<unsigned long long>(rng()));
  return ".dtest-tmp." + std::string(leaf.substr(0, 128)) + "." + rnd;
}

// Mode bits for a regular file: exec adds x wherever r is set, not exec
// clears every x bit.
mode_t exec_mode(mode_t mode, bool exec) {
  mode &= 07777;
  if (exec) return mode | ((mode & 0444) >> 2);
  return mode & ~static_cast<mode_t>(0111);
}

// Renames `tmp` over `leaf` in `dfd`; an empty directory at the leaf is
// removed first. On failure the temp name is unlinked and SyncError thrown.
void replace_leaf(int dfd, const std::string& tmp, const std::string& leaf, std::string_view rel) {
  if (renameat(dfd, tmp.c_str(), dfd, leaf.c_str()) == 0) return;
  int err = errno;
  if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
    if (unlinkat(dfd, leaf.c_str(), AT_REMOVEDIR) != 0) {
      int rm = errno;
      unlinkat(dfd, tmp.c_str(), 0);
      if (rm == ENOTEMPTY || rm == EEXIST) fail(rel, "a non-empty directory is in the way");
      fail_errno(rel, "cannot remove the directory in the way", rm);
    }
    if (renameat(dfd, tmp.c_str(), dfd, leaf.c_str()) == 0) return;
    err = errno;
  }
  unlinkat(dfd, tmp.c_str(), 0);
  fail_errno(rel, "cannot rename into place", err);
}

}  // namespace

SafeRoot::SafeRoot(const std::string& root) : root_(root) {
  if (root.empty()) throw SyncError("sync: empty root path");
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) throw SyncError("sync: cannot create root '" + root + "': " + ec.message());
  fd_ = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd_ < 0) throw SyncError("sync: cannot open root '" + root + "': " + std::strerror(errno));
}

SafeRoot::~SafeRoot() {
  if (fd_ >= 0) ::close(fd_);
}

int SafeRoot::open_parent(std::string_view rel, std::string* leaf, bool* missing) const {
  if (std::string why = check_relative_path(rel); !why.empty()) fail(rel, why);
  const std::size_t last = rel.rfind('/');
  if (last == std::string_view::npos) {
    leaf->assign(rel);
    return fd_;
  }
  leaf->assign(rel.substr(last + 1));
  int cur = fd_;
  std::size_t start = 0;
  std::string comp;
  for (;;) {
    std::size_t end = rel.find('/', start);
    comp.assign(rel.substr(start, end - start));
    int next = openat(cur, comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int err = errno;
    if (next < 0) {
      std::string upto = quoted(rel.substr(0, end));
      struct stat st;
      bool is_link = (err == ELOOP || err == ENOTDIR) &&
                     fstatat(cur, comp.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
      if (cur != fd_) ::close(cur);
      if (is_link) fail(rel, upto + " is a symlink, refusing to write through it");
      if (err == ENOTDIR) fail(rel, upto + " is not a directory");
      if (err == ENOENT) {
        if (missing) {
          *missing = true;
          return -1;
        }
        fail(rel, upto + " does not exist");
      }
      fail_errno(rel, "cannot open " + upto, err);
    }
    if (cur != fd_) ::close(cur);
    cur = next;
    if (end == last) return cur;
    start = end + 1;
  }
}

void SafeRoot::make_dir(std::string_view rel) {
  std::string leaf;
  ParentFd p{open_parent(rel, &leaf), fd_};
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (mkdirat(p.fd, leaf.c_str(), 0777) == 0) return;
    int err = errno;
    if (err != EEXIST) fail_errno(rel, "cannot create the directory", err);
    struct stat st;
    if (fstatat(p.fd, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      fail_errno(rel, "cannot stat", errno);
    }
    if (S_ISDIR(st.st_mode)) return;
    // A file or symlink is in the way: replace it (never following it).
    if (unlinkat(p.fd, leaf.c_str(), 0) != 0 && errno != ENOENT)
      fail_errno(rel, "cannot remove what is in the way", errno);
  }
  fail(rel, "cannot create the directory: it keeps changing");
}

void SafeRoot::make_symlink(std::string_view rel, std::string_view target, std::int64_t mtime_ns) {
  if (target.empty()) fail(rel, "empty symlink target");
  if (target.find('\0') != std::string_view::npos) fail(rel, "NUL byte in the symlink target");
  std::string leaf;
  ParentFd p{open_parent(rel, &leaf), fd_};
  const std::string tgt(target);
  std::string tmp;
  for (int attempt = 0;; ++attempt) {
    tmp = temp_name(leaf);
    if (symlinkat(tgt.c_str(), p.fd, tmp.c_str()) == 0) break;
    if (errno != EEXIST || attempt == 10) fail_errno(rel, "cannot create the symlink", errno);
  }
  struct timespec times[2];
  times[0].tv_sec = 0;
  times[0].tv_nsec = UTIME_OMIT;
  times[1] = to_timespec(mtime_ns);
  if (utimensat(p.fd, tmp.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
    int err = errno;
    unlinkat(p.fd, tmp.c_str(), 0);
    fail_errno(rel, "cannot set the symlink's mtime", err);
  }
  replace_leaf(p.fd, tmp, leaf, rel);
}

bool SafeRoot::remove(std::string_view rel) {
  std::string leaf;
  bool missing = false;
  ParentFd p{open_parent(rel, &leaf, &missing), fd_};
  if (missing) return true;
  struct stat st;
  if (fstatat(p.fd, leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return true;
    fail_errno(rel, "cannot stat", errno);
  }
  const int flags = S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0;
  if (unlinkat(p.fd, leaf.c_str(), flags) == 0) return true;
  int err = errno;
  if (err == ENOENT) return true;
  if (flags && (err == ENOTEMPTY || err == EEXIST)) return false;
  fail_errno(rel, "cannot remove", err);
}

void SafeRoot::set_meta(std::string_view rel, bool exec, std::int64_t mtime_ns) {
  std::string leaf;
  ParentFd p{open_parent(rel, &leaf), fd_};
  int fd = openat(p.fd, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP) fail(rel, "is a symlink, not a regular file");
    fail_errno(rel, "cannot open", err);
  }
  ParentFd guard{fd, -1};
  struct stat st;
  if (fstat(fd, &st) != 0) fail_errno(rel, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) fail(rel, "not a regular file");
  mode_t mode = exec_mode(st.st_mode, exec);
  if (mode != (st.st_mode & 07777) && fchmod(fd, mode) != 0) fail_errno(rel, "cannot chmod", errno);
  struct timespec times[2];
  times[0].tv_sec = 0;
  times[0].tv_nsec = UTIME_OMIT;
  times[1] = to_timespec(mtime_ns);
  if (futimens(fd, times) != 0) fail_errno(rel, "cannot set the mtime", errno);
}

// --- Basis ---------------------------------------------------------------

SafeRoot::Basis::Basis(Basis&& o) noexcept : map_(o.map_), size_(o.size_), fd_(o.fd_) {
  o.map_ = nullptr;
  o.size_ = 0;
  o.fd_ = -1;
}

SafeRoot::Basis& SafeRoot::Basis::operator=(Basis&& o) noexcept {
  if (this != &o) {
    if (map_) munmap(map_, size_);
    if (fd_ >= 0) ::close(fd_);
    map_ = o.map_;
    size_ = o.size_;
    fd_ = o.fd_;
    o.map_ = nullptr;
    o.size_ = 0;
    o.fd_ = -1;
  }
  return *this;
}

SafeRoot::Basis::~Basis() {
  if (map_) munmap(map_, size_);
  if (fd_ >= 0) ::close(fd_);
}

SafeRoot::Basis SafeRoot::open_basis(std::string_view rel) {
  std::string leaf;
  ParentFd p{open_parent(rel, &leaf), fd_};
  int fd = openat(p.fd, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP) fail(rel, "is a symlink, not a regular file");
    fail_errno(rel, "cannot open", err);
  }
  ParentFd guard{fd, -1};
  struct stat st;
  if (fstat(fd, &st) != 0) fail_errno(rel, "cannot stat", errno);
  if (!S_ISREG(st.st_mode)) fail(rel, "not a regular file");
  Basis b;
  if (st.st_size == 0) return b;
  void* m = mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) fail_errno(rel, "cannot map", errno);
  b.map_ = m;
  b.size_ = static_cast<std::size_t>(st.st_size);
  b.fd_ = guard.fd;
  guard.fd = -1;  // the Basis owns it now
  return b;
}

// --- Writer --------------------------------------------------------------

struct SafeRoot::Writer::State {
  int dir_fd = -1;  // owned
  int fd = -1;
  std::string rel, leaf, tmp;
  std::uint64_t max_size = 0;
  bool finished = false;  // committed or abandoned
  std::size_t buffered = 0;
  std::unique_ptr<char[]> buf{new char[kWriteBuf]};
  XXH3_state_t hash;

  void abandon() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    if (!finished && !tmp.empty()) unlinkat(dir_fd, tmp.c_str(), 0);
    finished = true;
  }
  void put(const char* p, std::size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        abandon();
        fail_errno(rel, "write error", err);
      }
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  void flush() {
    put(buf.get(), buffered);
    buffered = 0;
  }
  ~State() {
    abandon();
    if (dir_fd >= 0) ::close(dir_fd);
  }
};

SafeRoot::Writer::~Writer() = default;

void SafeRoot::Writer::write(std::string_view bytes) {
  State& s = *s_;
  if (s.finished) fail(s.rel, "write after commit or failure");
  if (bytes.size() > s.max_size - size_) {
    s.abandon();
    fail(s.rel, "more than the announced " + std::to_string(s.max_size) + " bytes");
  }
  XXH3_128bits_update(&s.hash, bytes.data(), bytes.size());
  size_ += bytes.size();
  if (s.buffered + bytes.size() > kWriteBuf) {
    s.flush();
    if (bytes.size() >= kWriteBuf) {
      s.put(bytes.data(), bytes.size());
      return;
    }
  }
  std::memcpy(s.buf.get() + s.buffered, bytes.data(), bytes.size());
  s.buffered += bytes.size();
}

void SafeRoot::Writer::copy_from(int src_fd, std::uint64_t offset, std::string_view bytes) {
  State& s = *s_;
  if (s.finished) fail(s.rel, "write after commit or failure");
  if (bytes.size() > s.max_size - size_) {
    s.abandon();
    fail(s.rel, "more than the announced " + std::to_string(s.max_size) + " bytes");
  }
  if (bytes.size() < kWriteBuf / 4 || src_fd < 0) return write(bytes);
  s.flush();
  XXH3_128bits_update(&s.hash, bytes.data(), bytes.size());
  auto off = static_cast<off64_t>(offset);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::copy_file_range(src_fd, &off, s.fd, nullptr, bytes.size() - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EXDEV, ENOSYS, EINVAL, a short file: write the rest
    done += static_cast<std::size_t>(n);
  }
  size_ += done;
  if (done < bytes.size()) {
    // Not hashed twice: put() writes without hashing.
    s.put(bytes.data() + done, bytes.size() - done);
    size_ += bytes.size() - done;
  }
}

void SafeRoot::Writer::commit(const Hash128& hash, bool exec, std::int64_t mtime_ns) {
  State& s = *s_;
  if (s.finished) fail(s.rel, "commit after commit or failure");
  s.flush();
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&s.hash));
  Hash128 got;
  std::memcpy(got.data(), c.digest, got.size());
  if (got != hash) {
    s.abandon();
    fail(s.rel, "hash mismatch (got " + to_hex(got) + ", expected " + to_hex(hash) + ", " +
                    std::to_string(size_) + " bytes)");
  }
  struct stat st;
  if (fstat(s.fd, &st) != 0) {
    int err = errno;
    s.abandon();
    fail_errno(s.rel, "cannot stat the temp file", err);
  }
  if (static_cast<std::uint64_t>(st.st_size) != size_) {
    s.abandon();
    fail(s.rel, "size mismatch on disk");
  }
  mode_t mode = exec_mode(st.st_mode, exec);
  struct timespec times[2];
  times[0].tv_sec = 0;
  times[0].tv_nsec = UTIME_OMIT;
  times[1] = to_timespec(mtime_ns);
  if ((mode != (st.st_mode & 07777) && fchmod(s.fd, mode) != 0) || futimens(s.fd, times) != 0) {
    int err = errno;
    s.abandon();
    fail_errno(s.rel, "cannot set mode and mtime", err);
  }
  int fd = s.fd;
  s.fd = -1;
  if (::close(fd) != 0) {
    int err = errno;
    s.abandon();
    fail_errno(s.rel, "write error on close", err);
  }
  s.finished = true;  // from here on replace_leaf owns the temp name
  replace_leaf(s.dir_fd, s.tmp, s.leaf, s.rel);
}

std::unique_ptr<SafeRoot::Writer> SafeRoot::create(std::string_view rel, std::uint64_t max_size) {
  std::string leaf;
  int pfd = open_parent(rel, &leaf);
  if (pfd == fd_) {
    pfd = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (pfd < 0) fail_errno(rel, "cannot duplicate the root descriptor", errno);
  }
  std::unique_ptr<Writer> w(new Writer());
  w->s_ = std::make_unique<Writer::State>();
  Writer::State& s = *w->s_;
  s.dir_fd = pfd;
  s.rel.assign(rel);
  s.leaf = std::move(leaf);
  s.max_size = max_size;
  XXH3_128bits_reset(&s.hash);
  for (int attempt = 0;; ++attempt) {
    std::string tmp = temp_name(s.leaf);
    s.fd = openat(pfd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (s.fd >= 0) {
      s.tmp = std::move(tmp);
      break;
    }
    if (errno != EEXIST || attempt == 10) {
      int err = errno;
      s.finished = true;
      fail_errno(rel, "cannot create a temp file", err);
    }
  }
  return w;
}

}  // namespace dtest::sync
