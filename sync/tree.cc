#include "sync/tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <random>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace dtest::sync {

namespace {

constexpr char kMagic[4] = {'D', 'T', 'M', 'F'};
constexpr std::uint8_t kVersion = 1;
constexpr std::uint8_t kFlagLocal = 1;
constexpr std::size_t kHeaderSize = 6;
// The smallest entry: prefix, suffix length, one suffix byte, type, size, mtime.
constexpr std::size_t kMinEntryBytes = 6;
// Linux's PATH_MAX: longer paths (or link targets) cannot be used anyway,
// and the bound keeps a front-coded manifest from expanding without limit.
constexpr std::size_t kMaxPathBytes = 4096;
constexpr std::uint8_t kExecBit = 0x80;
constexpr std::uint8_t kTypeMask = 0x03;

Hash128 canonical(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  Hash128 out;
  std::memcpy(out.data(), c.digest, out.size());
  return out;
}

std::int64_t ts_ns(const struct timespec& ts) {
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string errno_text(int err) { return std::strerror(err); }

// --- varints ------------------------------------------------------------

inline char* put_varint(char* p, std::uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(static_cast<std::uint8_t>(v) | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}

inline std::uint64_t zigzag(std::int64_t v) {
  return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}

inline std::int64_t unzigzag(std::uint64_t v) {
  return static_cast<std::int64_t>(v >> 1) ^ -static_cast<std::int64_t>(v & 1);
}

[[noreturn]] void bad(const std::string& why) {
  throw SyncError("sync: bad manifest: " + why);
}

struct Reader {
  const std::uint8_t* p;
  const std::uint8_t* end;

  std::size_t left() const { return static_cast<std::size_t>(end - p); }
  std::uint8_t byte() {
    if (p == end) bad("truncated");
    return *p++;
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p == end) bad("truncated");
      std::uint8_t b = *p++;
      if (shift == 63 && b > 1) bad("varint overflow");
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint overflow");
  }
  std::string_view bytes(std::uint64_t n) {
    if (n > left()) bad("truncated");
    std::string_view s(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    p += n;
    return s;
  }
};

// The encoder behind encode_manifest and the stat cache: files whose mtime
// or ctime is at or after `racy_cutoff` get ctime_ns 0 in the local fields,
// so the next scan cannot trust them.
std::string encode_impl(const Manifest& m, bool with_local, std::int64_t racy_cutoff) {
  std::size_t bound = kHeaderSize + 10;
  for (const Entry& e : m.entries) bound += e.path.size() + e.target.size() + 100;
  std::string out(bound, '\0');
  char* p = out.data();
  std::memcpy(p, kMagic, 4);
  p[4] = static_cast<char>(kVersion);
  p[5] = static_cast<char>(with_local ? kFlagLocal : 0);
  p += kHeaderSize;
  p = put_varint(p, m.entries.size());
  const std::string* prev = nullptr;
  for (const Entry& e : m.entries) {
    std::size_t shared = 0;
    if (prev) {
      std::size_t n = std::min(prev->size(), e.path.size());
      while (shared < n && (*prev)[shared] == e.path[shared]) ++shared;
    }
    p = put_varint(p, shared);
    p = put_varint(p, e.path.size() - shared);
    std::memcpy(p, e.path.data() + shared, e.path.size() - shared);
    p += e.path.size() - shared;
    *p++ = static_cast<char>(static_cast<std::uint8_t>(e.type) | (e.exec ? kExecBit : 0));
    p = put_varint(p, e.size);
    p = put_varint(p, zigzag(e.mtime_ns));
    if (e.type == EntryType::file) {
      std::memcpy(p, e.hash.data(), e.hash.size());
      p += e.hash.size();
    } else if (e.type == EntryType::symlink) {
      p = put_varint(p, e.target.size());
      std::memcpy(p, e.target.data(), e.target.size());
      p += e.target.size();
    }
    if (with_local) {
      p = put_varint(p, e.ino);
      bool racy = e.type == EntryType::file &&
                  (e.mtime_ns >= racy_cutoff || e.ctime_ns >= racy_cutoff);
      p = put_varint(p, zigzag(racy ? 0 : e.ctime_ns));
    }
    prev = &e.path;
  }
  out.resize(static_cast<std::size_t>(p - out.data()));
  return out;
}

// --- the scanner ----------------------------------------------------------

struct Level {
  struct Item {
    std::uint32_t off;
    std::uint32_t len;
    unsigned char type;  // DT_*
  };
  struct Key {
    std::uint32_t item;
    bool block;  // the directory's subtree ("name/..."), not its own entry
  };
  std::string names;  // every name of the directory, NUL-terminated, back to back
  std::vector<Item> items;
  std::vector<Key> keys;
  std::vector<std::size_t> dir_entry;  // per item: index of its emitted dir entry, or npos
  std::string_view name(std::uint32_t i) const { return {names.data() + items[i].off, items[i].len}; }
};

// Bytewise comparison of a + (a_slash ? "/" : "") with b + (b_slash ? "/" : "").
int cmp_key(std::string_view a, bool a_slash, std::string_view b, bool b_slash) {
  std::size_t n = std::min(a.size(), b.size());
  if (int c = std::memcmp(a.data(), b.data(), n)) return c;
  std::size_t la = a.size() + a_slash, lb = b.size() + b_slash;
  for (std::size_t i = n; i < std::min(la, lb); ++i) {
    unsigned char ca = i < a.size() ? static_cast<unsigned char>(a[i]) : '/';
    unsigned char cb = i < b.size() ? static_cast<unsigned char>(b[i]) : '/';
    if (ca != cb) return ca < cb ? -1 : 1;
  }
  return la < lb ? -1 : (la > lb ? 1 : 0);
}

class Scanner {
 public:
  Scanner(const ScanOptions& opts, const Manifest& cache) : opts_(opts), cache_(cache.entries) {
    buf_.reset(new char[kBufSize]);
    dents_.reset(new char[kDentsSize]);
  }

  void run(int root_fd) {
    res_.manifest.entries.reserve(cache_.empty() ? 1024 : cache_.size() + 64);
    walk(root_fd, 0);
  }

  ScanResult take() { return std::move(res_); }

 private:
  static constexpr std::size_t kBufSize = 1 << 20;
  static constexpr std::size_t kDentsSize = 64 * 1024;

  void warn(const std::string& what) { res_.warnings.push_back((rel_.empty() ? "." : rel_) + ": " + what); }

  Level& level(std::size_t depth) {
    while (levels_.size() <= depth) levels_.push_back(std::make_unique<Level>());
    return *levels_[depth];
  }

  bool is_ignored(bool is_dir) const { return opts_.ignore && opts_.ignore->ignored(rel_, is_dir); }

  void list_one(int dfd, Level& L, const char* n, unsigned char type) {
    if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) return;
    std::size_t len = std::strlen(n);
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        type = S_ISDIR(st.st_mode)   ? DT_DIR
               : S_ISREG(st.st_mode) ? DT_REG
               : S_ISLNK(st.st_mode) ? DT_LNK
                                     : DT_UNKNOWN;
      }
    }
    L.items.push_back({static_cast<std::uint32_t>(L.names.size()), static_cast<std::uint32_t>(len), type});
    L.names.append(n, len + 1);  // with its NUL: a C string for the *at() calls
  }

  // Takes ownership of `dfd`.
  void walk(int dfd, std::size_t depth) {
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{dfd};
    Level& L = level(depth);
    L.names.clear();
    L.items.clear();
    L.keys.clear();
    L.dir_entry.clear();
    // getdents64 straight into one buffer: no DIR, no fcntl() per directory.
    for (;;) {
      ssize_t got = getdents64(dfd, dents_.get(), kDentsSize);
      if (got < 0) {
        if (errno == EINTR) continue;
        if (errno == ENOENT) break;  // the directory was removed while listed
        warn("cannot read the directory: " + errno_text(errno));
        break;
      }
      if (got == 0) break;
      for (ssize_t off = 0; off < got;) {
        const auto* de = reinterpret_cast<const struct dirent64*>(dents_.get() + off);
        off += de->d_reclen;
        list_one(dfd, L, de->d_name, de->d_type);
      }
    }
    const std::uint32_t count = static_cast<std::uint32_t>(L.items.size());
    for (std::uint32_t i = 0; i < count; ++i) {
      L.keys.push_back({i, false});
      if (L.items[i].type == DT_DIR) L.keys.push_back({i, true});
    }
    // A directory's own entry ("a") and its subtree ("a/...") land at
    // different places among its siblings ("a" < "a.txt" < "a/b"): sorting
    // the keys "name" and "name/" gives the manifest's order directly.
    std::sort(L.keys.begin(), L.keys.end(), [&L](const Level::Key& x, const Level::Key& y) {
      return cmp_key(L.name(x.item), x.block, L.name(y.item), y.block) < 0;
    });
    L.dir_entry.assign(count, SIZE_MAX);

    const std::size_t base = rel_.size();
    for (std::size_t k = 0; k < L.keys.size(); ++k) {
      Level::Key key = L.keys[k];
      // `L` stays valid: deeper levels use other Level objects.
      if (base) rel_ += '/';
      rel_.append(L.names, L.items[key.item].off, L.items[key.item].len);
      const char* name = L.names.c_str() + L.items[key.item].off;
      if (rel_.size() > kMaxPathBytes) {
        // The receiver would refuse the whole manifest.
        if (!key.block) warn("path longer than " + std::to_string(kMaxPathBytes) + " bytes, skipped");
      } else if (key.block) {
        if (L.dir_entry[key.item] != SIZE_MAX) descend(dfd, name, depth, L.dir_entry[key.item]);
      } else {
        visit(dfd, name, L.items[key.item].type, L, key.item);
      }
      rel_.resize(base);
    }
  }

  void visit(int dfd, const char* name, unsigned char dtype, Level& L, std::uint32_t item) {
    if (dtype == DT_DIR) {
      if (is_ignored(true)) return;
      L.dir_entry[item] = res_.manifest.entries.size();
      Entry& e = res_.manifest.entries.emplace_back();
      e.path = rel_;
      e.type = EntryType::dir;
      return;
    }
    if (dtype == DT_REG || dtype == DT_LNK) {
      if (is_ignored(false)) return;
    }
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      int err = errno;
      if (err == ENOENT) return warn("vanished during the scan");
      return warn("cannot stat: " + errno_text(err));
    }
    if (S_ISREG(st.st_mode)) {
      if (dtype != DT_REG && is_ignored(false)) return;
      return visit_file(dfd, name, st);
    }
    if (S_ISLNK(st.st_mode)) {
      if (dtype != DT_LNK && is_ignored(false)) return;
      return visit_link(dfd, name, st);
    }
    if (S_ISDIR(st.st_mode)) return warn("changed during the scan (now a directory), skipped");
    if (is_ignored(false)) return;
    warn(S_ISFIFO(st.st_mode)    ? "a fifo, skipped"
         : S_ISSOCK(st.st_mode)  ? "a socket, skipped"
         : (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) ? "a device, skipped"
                                                         : "a special file, skipped");
  }

  void descend(int dfd, const char* name, std::size_t depth, std::size_t entry_index) {
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      std::vector<Entry>& v = res_.manifest.entries;
      // The directory's entry was emitted when its name came up; its subtree
      // is unreadable, so it is left out altogether.
      if (err == ENOENT) {
        warn("vanished during the scan");
      } else if (err == ENOTDIR || err == ELOOP) {
        warn("changed during the scan (no longer a directory), skipped");
      } else if (err == EACCES || err == EPERM) {
        warn("cannot open the directory: " + errno_text(err) + ", skipped");
      } else {
        throw SyncError("sync: cannot open directory '" + rel_ + "': " + errno_text(err));
      }
      v.erase(v.begin() + static_cast<std::ptrdiff_t>(entry_index));
      return;
    }
    walk(fd, depth + 1);
  }

  void visit_link(int dfd, const char* name, const struct stat& st) {
    char target[kMaxPathBytes + 1];
    ssize_t n = readlinkat(dfd, name, target, sizeof target);
    if (n < 0) {
      int err = errno;
      if (err == ENOENT) return warn("vanished during the scan");
      if (err == EINVAL) return warn("changed during the scan (no longer a symlink), skipped");
      return warn("cannot read the symlink: " + errno_text(err));
    }
    if (static_cast<std::size_t>(n) > kMaxPathBytes) return warn("symlink target too long, skipped");
    Entry& e = res_.manifest.entries.emplace_back();
    e.path = rel_;
    e.type = EntryType::symlink;
    e.size = static_cast<std::uint64_t>(n);
    e.mtime_ns = ts_ns(st.st_mtim);
    e.target.assign(target, static_cast<std::size_t>(n));
    e.ino = st.st_ino;
    e.ctime_ns = ts_ns(st.st_ctim);
  }

  const Entry* cached(std::int64_t ctime_ns, const struct stat& st) {
    while (cache_pos_ < cache_.size() && cache_[cache_pos_].path < rel_) ++cache_pos_;
    if (cache_pos_ == cache_.size()) return nullptr;
    const Entry& c = cache_[cache_pos_];
    if (c.path != rel_ || c.type != EntryType::file || c.ctime_ns == 0) return nullptr;
    if (c.size != static_cast<std::uint64_t>(st.st_size) || c.mtime_ns != ts_ns(st.st_mtim) ||
        c.ino != st.st_ino || c.ctime_ns != ctime_ns)
      return nullptr;
    return &c;
  }

  void visit_file(int dfd, const char* name, const struct stat& st) {
    const std::int64_t ctime = ts_ns(st.st_ctim);
    if (const Entry* c = cached(ctime, st)) {
      Entry& e = res_.manifest.entries.emplace_back();
      e.path = rel_;
      e.type = EntryType::file;
      e.exec = (st.st_mode & 0111) != 0;
      e.size = c->size;
      e.mtime_ns = c->mtime_ns;
      e.hash = c->hash;
      e.ino = c->ino;
      e.ctime_ns = ctime;
      return;
    }
    hash_file(dfd, name, st);
  }

  static bool same_stat(const struct stat& a, const struct stat& b) {
    return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size && a.st_mtim.tv_sec == b.st_mtim.tv_sec &&
           a.st_mtim.tv_nsec == b.st_mtim.tv_nsec && a.st_ctim.tv_sec == b.st_ctim.tv_sec &&
           a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
  }

  // `st` is the lstat from the directory walk: the descriptor is only
  // fstat'ed after reading, and a file replaced between the two (another
  // inode) counts as a change.
  void hash_file(int dfd, const char* name, const struct stat& st) {
    if (opts_.hash_hook) opts_.hash_hook(rel_, 0);
    int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT) return warn("vanished during the scan");
      if (err == ELOOP) return warn("changed during the scan (now a symlink), skipped");
      return warn("cannot open: " + errno_text(err) + ", skipped");
    }
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat before = st;
    if (static_cast<std::uint64_t>(before.st_size) > kBufSize)
      (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    struct stat after;
    std::uint64_t got = 0;
    for (int attempt = 0;; ++attempt) {
      XXH3_128bits_reset(&state_);
      got = 0;
      const std::uint64_t want = static_cast<std::uint64_t>(before.st_size);
      while (got < want) {
        ssize_t n = pread(fd, buf_.get(), kBufSize, static_cast<off_t>(got));
        if (n < 0) {
          int err = errno;
          if (err == EINTR) continue;
          if (err == EISDIR || err == ESPIPE || err == EINVAL)
            return warn("changed during the scan (no longer a file), skipped");
          return warn("read error: " + errno_text(err) + ", skipped");
        }
        if (n == 0) break;
        XXH3_128bits_update(&state_, buf_.get(), static_cast<std::size_t>(n));
        got += static_cast<std::uint64_t>(n);
      }
      if (opts_.hash_hook) opts_.hash_hook(rel_, attempt + 1);
      if (fstat(fd, &after) != 0) return warn("cannot stat: " + errno_text(errno) + ", skipped");
      if (!S_ISREG(after.st_mode)) return warn("changed during the scan (no longer a file), skipped");
      if (same_stat(before, after) && got == static_cast<std::uint64_t>(after.st_size)) break;
      if (attempt == 3) {
        warn("changed while being read (taken as last read)");
        break;
      }
      before = after;
    }
    res_.hashed_files++;
    res_.hashed_bytes += got;
    Entry& e = res_.manifest.entries.emplace_back();
    e.path = rel_;
    e.type = EntryType::file;
    e.exec = (after.st_mode & 0111) != 0;
    e.size = got;
    e.mtime_ns = ts_ns(after.st_mtim);
    e.hash = canonical(XXH3_128bits_digest(&state_));
    e.ino = after.st_ino;
    e.ctime_ns = ts_ns(after.st_ctim);
  }

  const ScanOptions& opts_;
  const std::vector<Entry>& cache_;
  std::size_t cache_pos_ = 0;
  ScanResult res_;
  std::string rel_;
  std::vector<std::unique_ptr<Level>> levels_;
  std::unique_ptr<char[]> buf_;
  std::unique_ptr<char[]> dents_;  // getdents64 records (8-byte aligned: operator new)
  XXH3_state_t state_;
};

// The stat cache (and its bytes, to skip rewriting an unchanged one).
Manifest read_cache(const std::string& path, std::string& bytes) {
  Manifest m;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return m;
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    bytes.resize(static_cast<std::size_t>(st.st_size));
    std::size_t got = 0;
    while (got < bytes.size()) {
      ssize_t n = read(fd, bytes.data() + got, bytes.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    bytes.resize(got);
  }
  ::close(fd);
  try {
    m = decode_manifest(bytes, /*with_local=*/true);
  } catch (const SyncError&) {
    m.entries.clear();  // a corrupt cache is an empty one
  }
  return m;
}

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          (static_cast<std::uint64_t>(getpid()) << 32)};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// Returns an empty string on success, else what went wrong.
std::string write_cache(const std::string& path, const std::string& bytes) {
  std::filesystem::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return ec.message();
  }
  std::string tmp = path + ".tmp." + random_suffix();
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return errno_text(errno);
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::close(fd);
      unlink(tmp.c_str());
      return errno_text(err);
    }
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return errno_text(err);
  }
  return {};
}

}  // namespace

Hash128 hash_bytes(std::string_view data) { return canonical(XXH3_128bits(data.data(), data.size())); }

std::string to_hex(const Hash128& h) {
  static const char digits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (std::size_t i = 0; i < h.size(); ++i) {
    s[2 * i] = digits[h[i] >> 4];
    s[2 * i + 1] = digits[h[i] & 15];
  }
  return s;
}

Hash128 Manifest::digest() const {
  // Canonical form, per entry: u32 path length, path, type, exec, u64 size,
  // i64 mtime, 16-byte hash, u32 target length, target (little-endian).
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  char buf[4096];
  std::size_t n = 0;
  auto flush = [&] {
    XXH3_128bits_update(&st, buf, n);
    n = 0;
  };
  auto put_le = [&](std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) buf[n++] = static_cast<char>(v >> (8 * i));
  };
  auto put_str = [&](const std::string& s) {
    put_le(s.size(), 4);
    if (s.size() > sizeof buf - n) {
      flush();
      XXH3_128bits_update(&st, s.data(), s.size());
    } else {
      std::memcpy(buf + n, s.data(), s.size());
      n += s.size();
    }
  };
  put_le(entries.size(), 8);
  for (const Entry& e : entries) {
    if (sizeof buf - n < 64) flush();
    put_str(e.path);
    if (sizeof buf - n < 64) flush();
    buf[n++] = static_cast<char>(e.type);
    buf[n++] = static_cast<char>(e.exec ? 1 : 0);
    put_le(e.size, 8);
    put_le(static_cast<std::uint64_t>(e.mtime_ns), 8);
    std::memcpy(buf + n, e.hash.data(), e.hash.size());
    n += e.hash.size();
    put_str(e.target);
  }
  flush();
  return canonical(XXH3_128bits_digest(&st));
}

const Entry* Manifest::find(std::string_view path) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), path,
                             [](const Entry& e, std::string_view p) { return e.path < p; });
  if (it == entries.end() || it->path != path) return nullptr;
  return &*it;
}

std::string encode_manifest(const Manifest& m, bool with_local) {
  return encode_impl(m, with_local, INT64_MAX);
}

Manifest decode_manifest(std::string_view bytes, bool with_local, std::size_t max_entries) {
  Reader r{reinterpret_cast<const std::uint8_t*>(bytes.data()),
           reinterpret_cast<const std::uint8_t*>(bytes.data()) + bytes.size()};
  if (bytes.size() < kHeaderSize) bad("truncated header");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) bad("wrong magic");
  if (static_cast<std::uint8_t>(bytes[4]) != kVersion)
    bad("unsupported version " + std::to_string(static_cast<std::uint8_t>(bytes[4])));
  std::uint8_t flags = static_cast<std::uint8_t>(bytes[5]);
  if (flags & ~kFlagLocal) bad("unknown flags");
  if (((flags & kFlagLocal) != 0) != with_local)
    bad(with_local ? "no local fields (not a stat cache)" : "unexpected local fields");
  r.p += kHeaderSize;
  std::uint64_t count = r.varint();
  if (count > max_entries)
    bad(std::to_string(count) + " entries, more than the limit of " + std::to_string(max_entries));
  if (count > r.left() / kMinEntryBytes)
    bad(std::to_string(count) + " entries cannot fit in " + std::to_string(r.left()) + " bytes");
  Manifest m;
  m.entries.resize(static_cast<std::size_t>(count));
  const std::string* prev = nullptr;
  for (std::size_t i = 0; i < count; ++i) {
    Entry& e = m.entries[i];
    std::uint64_t shared = r.varint();
    std::uint64_t suffix_len = r.varint();
    std::size_t prev_len = prev ? prev->size() : 0;
    if (shared > prev_len)
      bad("entry " + std::to_string(i) + ": shared prefix longer than the previous path");
    if (suffix_len > kMaxPathBytes || shared + suffix_len > kMaxPathBytes)
      bad("entry " + std::to_string(i) + ": path longer than " + std::to_string(kMaxPathBytes) + " bytes");
    std::string_view suffix = r.bytes(suffix_len);
    e.path.reserve(static_cast<std::size_t>(shared + suffix_len));
    if (prev) e.path.assign(*prev, 0, static_cast<std::size_t>(shared));
    e.path.append(suffix);
    if (std::string why = check_relative_path(e.path); !why.empty()) bad("entry " + std::to_string(i) + ": " + why);
    if (prev && !(*prev < e.path)) bad("entry " + std::to_string(i) + ": paths not in strictly increasing order");
    std::uint8_t tb = r.byte();
    if ((tb & ~(kExecBit | kTypeMask)) != 0 || (tb & kTypeMask) > 2)
      bad("entry " + std::to_string(i) + ": unknown type byte " + std::to_string(tb));
    e.type = static_cast<EntryType>(tb & kTypeMask);
    e.exec = (tb & kExecBit) != 0;
    e.size = r.varint();
    e.mtime_ns = unzigzag(r.varint());
    if (e.type == EntryType::file) {
      std::string_view h = r.bytes(e.hash.size());
      std::memcpy(e.hash.data(), h.data(), h.size());
    } else if (e.type == EntryType::symlink) {
      std::uint64_t tl = r.varint();
      if (tl == 0) bad("entry " + std::to_string(i) + ": empty symlink target");
      if (tl > kMaxPathBytes) bad("entry " + std::to_string(i) + ": symlink target too long");
      std::string_view t = r.bytes(tl);
      if (t.find('\0') != std::string_view::npos) bad("entry " + std::to_string(i) + ": NUL byte in a symlink target");
      e.target.assign(t);
    }
    if (with_local) {
      e.ino = r.varint();
      e.ctime_ns = unzigzag(r.varint());
    }
    prev = &e.path;
  }
  if (r.left() != 0) bad(std::to_string(r.left()) + " trailing bytes");
  return m;
}

std::string check_relative_path(std::string_view p) {
  if (p.empty()) return "empty path";
  if (p.find('\0') != std::string_view::npos) return "NUL byte";
  if (p.front() == '/') return "absolute path";
  std::size_t start = 0;
  for (;;) {
    std::size_t slash = p.find('/', start);
    std::string_view c = p.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (c.empty()) return "empty component";
    if (c == ".") return "'.' component";
    if (c == "..") return "'..' component";
    if (slash == std::string_view::npos) return {};
    start = slash + 1;
  }
}

ScanResult scan_tree(const std::string& root, const ScanOptions& opts) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const std::int64_t start_ns = ts_ns(now);

  int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  if (!opts.follow_root_symlink) flags |= O_NOFOLLOW;
  int fd = open(root.c_str(), flags);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) throw SyncError("sync: root '" + root + "' does not exist");
    if (err == ENOTDIR) throw SyncError("sync: root '" + root + "' is not a directory");
    if (err == ELOOP && !opts.follow_root_symlink)
      throw SyncError("sync: root '" + root + "' is a symlink");
    throw SyncError("sync: cannot open root '" + root + "': " + errno_text(err));
  }

  Manifest cache;
  std::string old_bytes;
  if (!opts.cache_path.empty()) cache = read_cache(opts.cache_path, old_bytes);
  Scanner sc(opts, cache);
  sc.run(fd);  // takes the descriptor
  ScanResult res = sc.take();

  if (!opts.cache_path.empty()) {
    std::string bytes = encode_impl(res.manifest, /*with_local=*/true, start_ns - opts.racy_ns);
    // Unchanged: leave the file alone (no write, no rename).
    if (bytes != old_bytes) {
      if (std::string err = write_cache(opts.cache_path, bytes); !err.empty())
        res.warnings.push_back(opts.cache_path + ": cannot write the stat cache: " + err);
    }
  }
  return res;
}

}  // namespace dtest::sync
