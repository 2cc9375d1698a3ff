#include "sync/tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace dtest::sync {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dtest-tree-XXXXXX";
    const char* p = mkdtemp(tmpl);
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& content, mode_t mode = 0644) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

void set_mtime(const std::string& path, std::int64_t ns, bool nofollow = false) {
  struct timespec t[2];
  t[0].tv_sec = 0;
  t[0].tv_nsec = UTIME_OMIT;
  t[1].tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  t[1].tv_nsec = static_cast<long>(ns % 1'000'000'000);
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), t, nofollow ? AT_SYMLINK_NOFOLLOW : 0), 0) << path;
}

std::int64_t mtime_of(const std::string& path) {
  struct stat st;
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::vector<std::string> paths_of(const Manifest& m) {
  std::vector<std::string> v;
  for (const Entry& e : m.entries) v.push_back(e.path);
  return v;
}

bool has_warning(const ScanResult& r, const std::string& needle) {
  for (const std::string& w : r.warnings)
    if (w.find(needle) != std::string::npos) return true;
  return false;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

ScanOptions no_racy() {
  ScanOptions o;
  o.racy_ns = 0;  // files written just now may be trusted (tests only)
  return o;
}

// --- hashing, paths ------------------------------------------------------

TEST(Hash, KnownValuesAndHex) {
  // XXH3-128 of the empty input, canonical (big-endian) form.
  EXPECT_EQ(to_hex(hash_bytes("")), "99aa06d3014798d86001c324468d497f");
  EXPECT_NE(hash_bytes("a"), hash_bytes("b"));
  EXPECT_EQ(hash_bytes("abc"), hash_bytes(std::string("abc")));
  Hash128 h{};
  h[0] = 0x01;
  h[15] = 0xab;
  EXPECT_EQ(to_hex(h), "010000000000000000000000000000ab");
}

TEST(Paths, CheckRelativePath) {
  EXPECT_EQ(check_relative_path("a"), "");
  EXPECT_EQ(check_relative_path("a/b/c.txt"), "");
  EXPECT_EQ(check_relative_path(".hidden/..x/x.."), "");
  EXPECT_EQ(check_relative_path("sp ace/ü"), "");
  EXPECT_EQ(check_relative_path(""), "empty path");
  EXPECT_EQ(check_relative_path("/etc/passwd"), "absolute path");
  EXPECT_EQ(check_relative_path("/"), "absolute path");
  EXPECT_EQ(check_relative_path("a//b"), "empty component");
  EXPECT_EQ(check_relative_path("a/"), "empty component");
  EXPECT_EQ(check_relative_path("."), "'.' component");
  EXPECT_EQ(check_relative_path("a/./b"), "'.' component");
  EXPECT_EQ(check_relative_path(".."), "'..' component");
  EXPECT_EQ(check_relative_path("a/../../x"), "'..' component");
  EXPECT_EQ(check_relative_path("a/.."), "'..' component");
  EXPECT_EQ(check_relative_path(std::string_view("a\0b", 3)), "NUL byte");
}

// --- manifests -----------------------------------------------------------

Manifest sample_manifest() {
  Manifest m;
  auto add = [&](std::string path, EntryType t) -> Entry& {
    Entry& e = m.entries.emplace_back();
    e.path = std::move(path);
    e.type = t;
    return e;
  };
  add("a", EntryType::dir);
  Entry& f = add("a.txt", EntryType::file);
  f.size = 5;
  f.mtime_ns = 1'700'000'000'123'456'789;
  f.hash = hash_bytes("hello");
  f.ino = 1234;
  f.ctime_ns = 1'700'000'001'000'000'000;
  Entry& x = add("a/run.sh", EntryType::file);
  x.exec = true;
  x.size = 1ull << 40;
  x.mtime_ns = -5'000'000'001;  // before 1970
  x.hash = hash_bytes("x");
  x.ino = ~0ull;
  x.ctime_ns = -1;
  Entry& l = add("a/sp ace/lnk", EntryType::symlink);
  l.target = "../../outside dir/ü";
  l.size = l.target.size();
  l.mtime_ns = 42;
  l.ino = 7;
  add("a/sp ace", EntryType::dir);  // out of order on purpose: sorted below
  add("émoji 😀", EntryType::dir);
  std::sort(m.entries.begin(), m.entries.end(),
            [](const Entry& p, const Entry& q) { return p.path < q.path; });
  return m;
}

void expect_same(const Manifest& a, const Manifest& b, bool local) {
  ASSERT_EQ(a.entries.size(), b.entries.size());
  for (std::size_t i = 0; i < a.entries.size(); ++i) {
    const Entry& x = a.entries[i];
    const Entry& y = b.entries[i];
    EXPECT_EQ(x.path, y.path);
    EXPECT_EQ(x.type, y.type) << x.path;
    EXPECT_EQ(x.exec, y.exec) << x.path;
    EXPECT_EQ(x.size, y.size) << x.path;
    EXPECT_EQ(x.mtime_ns, y.mtime_ns) << x.path;
    EXPECT_EQ(x.hash, y.hash) << x.path;
    EXPECT_EQ(x.target, y.target) << x.path;
    EXPECT_EQ(y.ino, local ? x.ino : 0) << x.path;
    EXPECT_EQ(y.ctime_ns, local ? x.ctime_ns : 0) << x.path;
  }
}

TEST(Manifest, RoundTripWithAndWithoutLocalFields) {
  Manifest m = sample_manifest();
  Manifest wire = decode_manifest(encode_manifest(m));
  expect_same(m, wire, false);
  EXPECT_EQ(wire.digest(), m.digest());
  Manifest cache = decode_manifest(encode_manifest(m, true), true);
  expect_same(m, cache, true);
  // The two forms are not interchangeable.
  EXPECT_THROW(decode_manifest(encode_manifest(m, true), false), SyncError);
  EXPECT_THROW(decode_manifest(encode_manifest(m, false), true), SyncError);
  // Empty manifest.
  EXPECT_TRUE(decode_manifest(encode_manifest(Manifest{})).entries.empty());
  // Front coding: the wire form is smaller than the paths alone would be.
  std::size_t path_bytes = 0;
  for (const Entry& e : m.entries) path_bytes += e.path.size();
  EXPECT_LT(encode_manifest(m).size(), path_bytes + m.entries.size() * 30);
}

TEST(Manifest, Find) {
  Manifest m = sample_manifest();
  for (const Entry& e : m.entries) {
    const Entry* f = m.find(e.path);
    ASSERT_NE(f, nullptr) << e.path;
    EXPECT_EQ(f, &e);
  }
  EXPECT_EQ(m.find(""), nullptr);
  EXPECT_EQ(m.find("a/"), nullptr);
  EXPECT_EQ(m.find("zzz"), nullptr);
  EXPECT_EQ(m.find("a.tx"), nullptr);
  EXPECT_EQ(Manifest{}.find("a"), nullptr);
}

TEST(Manifest, DigestCoversWhatMattersOnly) {
  const Manifest base = sample_manifest();
  const Hash128 d = base.digest();
  EXPECT_EQ(d, sample_manifest().digest());
  const std::size_t fi = 1;  // "a.txt"
  const std::size_t li = 4;  // "a/sp ace/lnk"
  ASSERT_EQ(base.entries[fi].path, "a.txt");
  ASSERT_EQ(base.entries[li].path, "a/sp ace/lnk");
  auto changed = [&](auto&& mutate) {
    Manifest m = base;
    mutate(m);
    return m.digest() != d;
  };
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].path = "a.txu"; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].type = EntryType::dir; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].exec = true; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].size++; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].mtime_ns++; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[fi].hash[7] ^= 1; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries[li].target += "x"; }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries.pop_back(); }));
  EXPECT_TRUE(changed([&](Manifest& m) { m.entries.push_back(m.entries.back()); m.entries.back().path += "z"; }));
  // Moving bytes between a path and a target must not collide.
  EXPECT_TRUE(changed([&](Manifest& m) {
    m.entries[li].path += "x";
    m.entries[li].target.pop_back();
  }));
  EXPECT_FALSE(changed([&](Manifest& m) { m.entries[fi].ino = 99; }));
  EXPECT_FALSE(changed([&](Manifest& m) { m.entries[fi].ctime_ns = 99; }));
  EXPECT_FALSE(changed([&](Manifest& m) { for (Entry& e : m.entries) e.ino = e.ctime_ns = 0; }));
}

// A hand-rolled writer of the wire form, to build malformed inputs.
struct Bytes {
  std::string s;
  Bytes& header(std::uint8_t version = 1, std::uint8_t flags = 0) {
    s += "DTMF";
    s += static_cast<char>(version);
    s += static_cast<char>(flags);
    return *this;
  }
  Bytes& varint(std::uint64_t v) {
    while (v >= 0x80) {
      s += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    s += static_cast<char>(v);
    return *this;
  }
  Bytes& raw(std::string_view b) {
    s.append(b);
    return *this;
  }
  Bytes& byte(std::uint8_t b) {
    s += static_cast<char>(b);
    return *this;
  }
  // A directory entry: prefix, suffix, type byte, size 0, mtime 0.
  Bytes& dir(std::uint64_t shared, std::string_view suffix, std::uint8_t type = 1) {
    varint(shared).varint(suffix.size()).raw(suffix).byte(type).varint(0).varint(0);
    return *this;
  }
  Bytes& link(std::uint64_t shared, std::string_view suffix, std::string_view target) {
    dir(shared, suffix, 2);
    return varint(target.size()).raw(target);
  }
};

std::string decode_error(std::string_view bytes, std::size_t max_entries = 10'000'000) {
  try {
    decode_manifest(bytes, false, max_entries);
  } catch (const SyncError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Manifest, DecodeRejectsMalformedInput) {
  // The hand-rolled form is the real one.
  Manifest ok = decode_manifest(Bytes().header().varint(2).dir(0, "a").link(1, "/b", "t").s);
  ASSERT_EQ(paths_of(ok), (std::vector<std::string>{"a", "a/b"}));
  EXPECT_EQ(ok.entries[1].target, "t");

  // Every strict prefix of a valid encoding is truncated.
  const std::string good = encode_manifest(sample_manifest());
  for (std::size_t i = 0; i < good.size(); ++i)
    EXPECT_THROW(decode_manifest(std::string_view(good).substr(0, i)), SyncError) << "prefix " << i;
  const std::string good_local = encode_manifest(sample_manifest(), true);
  for (std::size_t i = 0; i < good_local.size(); ++i)
    EXPECT_THROW(decode_manifest(std::string_view(good_local).substr(0, i), true), SyncError) << i;

  EXPECT_NE(decode_error(""), "no error");
  EXPECT_NE(decode_error("DTM").find("truncated"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().raw("XXXX").byte(1).byte(0).varint(0).s).find("magic"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header(2).varint(0).s).find("version"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header(1, 4).varint(0).s).find("flags"), std::string::npos);
  // Counts: over the caller's limit, or more than the bytes could hold.
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "a").dir(0, "b").s, 1).find("limit"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1'000'000).dir(0, "a").s).find("cannot fit"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(~0ull).s, SIZE_MAX).find("cannot fit"), std::string::npos);
  // Varint overflow.
  EXPECT_NE(decode_error(Bytes().header().raw(std::string(10, '\xff')).byte(1).s).find("overflow"),
            std::string::npos);
  // Shared prefix longer than the previous path (and for the first entry).
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "a").dir(2, "b").s).find("shared prefix"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(1, "b").s).find("shared prefix"), std::string::npos);
  // Paths failing check_relative_path.
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "/etc").s).find("absolute"), std::string::npos);
  // (padded: an entry with an empty suffix is shorter than any valid one)
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "").byte(0).s).find("empty path"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "a").dir(1, "/../../x").s).find("'..'"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "..").s).find("'..'"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a/./b").s).find("'.'"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a//b").s).find("empty component"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a/").s).find("empty component"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, std::string_view("a\0b", 3)).s).find("NUL"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, std::string(5000, 'a')).s).find("longer"),
            std::string::npos);
  // Order: strictly increasing, bytewise.
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "b").dir(0, "a").s).find("order"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "a").dir(1, "").byte(0).s).find("order"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(2).dir(0, "a/b").dir(0, "a.txt").s).find("order"),
            std::string::npos);
  // Symlink targets: NUL, empty, too long.
  EXPECT_NE(decode_error(Bytes().header().varint(1).link(0, "l", std::string_view("x\0y", 3)).s).find("NUL"),
            std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).link(0, "l", "").s).find("empty symlink"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).link(0, "l", std::string(5000, 'x')).s).find("too long"),
            std::string::npos);
  // Type byte.
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a", 3).s).find("type"), std::string::npos);
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a", 0x41).s).find("type"), std::string::npos);
  // Trailing bytes.
  EXPECT_NE(decode_error(Bytes().header().varint(1).dir(0, "a").byte(0).s).find("trailing"), std::string::npos);
  EXPECT_NE(decode_error(good + "x").find("trailing"), std::string::npos);
}

// --- scanning ------------------------------------------------------------

TEST(Scan, NestedTreeFilesLinksAndDirs) {
  TempDir t;
  TempDir outside;
  const std::string root = t / "root";
  write_file(root + "/a/b/c.txt", "hello");
  write_file(root + "/a.txt", "top");
  write_file(root + "/a/e", "");  // empty file
  write_file(root + "/sp ace/ü é.txt", "unicode", 0600);
  write_file(root + "/bin/run", "#!/bin/sh\n", 0755);
  write_file(root + "/bin/owner-x", "x", 0744);
  write_file(root + "/bin/other-x", "x", 0641);
  fs::create_directories(root + "/empty_dir");
  write_file(outside / "secret", "outside");
  ASSERT_EQ(symlink("a/b/c.txt", (root + "/lnk_in").c_str()), 0);
  ASSERT_EQ(symlink((outside / "secret").c_str(), (root + "/lnk_out").c_str()), 0);
  ASSERT_EQ(symlink("../../x y/ü", (root + "/a/rel_out").c_str()), 0);
  ASSERT_EQ(symlink("no/such/file", (root + "/dangling").c_str()), 0);
  ASSERT_EQ(symlink(outside.path().c_str(), (root + "/lnk_dir").c_str()), 0);  // never followed
  set_mtime(root + "/a.txt", 1'600'000'000'123'456'789);
  set_mtime(root + "/lnk_in", 1'500'000'000'000'000'007, /*nofollow=*/true);

  ScanResult r = scan_tree(root, ScanOptions{});
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
  const std::vector<std::string> want = {
      "a", "a.txt", "a/b", "a/b/c.txt", "a/e", "a/rel_out", "bin", "bin/other-x", "bin/owner-x", "bin/run",
      "dangling", "empty_dir", "lnk_dir", "lnk_in", "lnk_out", "sp ace", "sp ace/ü é.txt"};
  EXPECT_EQ(paths_of(r.manifest), want) << joined(paths_of(r.manifest));
  EXPECT_EQ(r.hashed_files, 7u);
  EXPECT_EQ(r.hashed_bytes, 5u + 3 + 0 + 7 + 10 + 1 + 1);

  const Manifest& m = r.manifest;
  auto get = [&](const std::string& p) -> const Entry& {
    const Entry* e = m.find(p);
    if (!e) throw std::runtime_error("missing " + p);
    return *e;
  };
  const Entry& dir = get("a");
  EXPECT_EQ(dir.type, EntryType::dir);
  EXPECT_EQ(dir.size, 0u);
  EXPECT_EQ(dir.mtime_ns, 0);
  EXPECT_EQ(dir.hash, Hash128{});
  const Entry& f = get("a/b/c.txt");
  EXPECT_EQ(f.type, EntryType::file);
  EXPECT_EQ(f.size, 5u);
  EXPECT_EQ(f.hash, hash_bytes("hello"));
  EXPECT_EQ(f.mtime_ns, mtime_of(root + "/a/b/c.txt"));
  EXPECT_FALSE(f.exec);
  EXPECT_NE(f.ino, 0u);
  EXPECT_NE(f.ctime_ns, 0);
  EXPECT_EQ(get("a.txt").mtime_ns, 1'600'000'000'123'456'789);
  EXPECT_EQ(get("a/e").size, 0u);
  EXPECT_EQ(get("a/e").hash, hash_bytes(""));
  EXPECT_EQ(get("sp ace/ü é.txt").hash, hash_bytes("unicode"));
  EXPECT_TRUE(get("bin/run").exec);
  EXPECT_TRUE(get("bin/owner-x").exec);
  EXPECT_TRUE(get("bin/other-x").exec);
  EXPECT_FALSE(get("sp ace/ü é.txt").exec);

  const Entry& in = get("lnk_in");
  EXPECT_EQ(in.type, EntryType::symlink);
  EXPECT_EQ(in.target, "a/b/c.txt");
  EXPECT_EQ(in.size, in.target.size());
  EXPECT_EQ(in.mtime_ns, 1'500'000'000'000'000'007);  // the link's own mtime
  EXPECT_EQ(in.hash, Hash128{});
  EXPECT_EQ(get("lnk_out").target, outside / "secret");
  EXPECT_EQ(get("a/rel_out").target, "../../x y/ü");
  EXPECT_EQ(get("dangling").target, "no/such/file");
  EXPECT_EQ(get("lnk_dir").type, EntryType::symlink);
  EXPECT_EQ(get("lnk_dir").target, outside.path());

  // The same tree scanned again gives the same digest, and a round trip
  // through the wire form keeps it.
  EXPECT_EQ(scan_tree(root, ScanOptions{}).manifest.digest(), m.digest());
  EXPECT_EQ(decode_manifest(encode_manifest(m)).digest(), m.digest());
}

TEST(Scan, OrderIsBytewiseOnFullPaths) {
  TempDir t;
  // Names around '/' (0x2f): ' ', '-', '.', '0', 'A', and a dir name that
  // is a prefix of its siblings.
  for (const char* d : {"a", "a-b", "a.d", "a0", "a b", "aa", "a/b", "a/b-c", "a/b.d", "a/b/c", "A", "-"})
    fs::create_directories(t / d);
  for (const char* f : {"a.txt", "a-b/x", "a/b/c/d", "a/b.e", "a/b/c-d", "a/b/c.d", "a0/f", "a!", "a~", "A/-"})
    write_file(t / f, "x");
  ScanResult r = scan_tree(t.path(), ScanOptions{});
  std::vector<std::string> got = paths_of(r.manifest);
  std::vector<std::string> want;
  for (auto it = fs::recursive_directory_iterator(t.path()); it != fs::recursive_directory_iterator(); ++it)
    want.push_back(it->path().string().substr(t.path().size() + 1));
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want) << joined(got);
  EXPECT_TRUE(std::adjacent_find(got.begin(), got.end(), std::greater_equal<>()) == got.end());
}

TEST(Scan, IgnoredSubtreesArePruned) {
  TempDir t;
  write_file(t / ".git/objects/ab/cdef", "obj");
  write_file(t / ".git/HEAD", "ref");
  write_file(t / "sub/.git", "gitdir: ../.git/modules/sub");  // a file: kept
  write_file(t / "build/out/y.o", "o");
  write_file(t / "src/build", "a file named build: kept (dir-only rule)");
  write_file(t / "src/a.log", "log");
  write_file(t / "src/keep.log", "keep");
  write_file(t / "src/__pycache__/m.cpython.pyc", "pyc");
  write_file(t / "src/m.pyc", "pyc");
  write_file(t / "src/m.py", "py");
  write_file(t / "docs/_build/html/index.html", "html");
  write_file(t / "docs/index.rst", "rst");
  fs::create_directories(t / "build/deep/er");
  IgnoreRules rules = IgnoreRules::with_defaults({"build/", "*.log", "!keep.log", "/docs/_build"});
  ScanOptions o;
  o.ignore = &rules;
  int hashed_in_ignored = 0;
  o.hash_hook = [&](const std::string& rel, int) {
    if (rel.find("build/") != std::string::npos || rel.rfind(".git/", 0) == 0) ++hashed_in_ignored;
  };
  ScanResult r = scan_tree(t.path(), o);
  EXPECT_EQ(paths_of(r.manifest), (std::vector<std::string>{"docs", "docs/index.rst", "src", "src/build",
                                                             "src/keep.log", "src/m.py", "sub", "sub/.git"}))
      << joined(paths_of(r.manifest));
  EXPECT_EQ(hashed_in_ignored, 0);
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
}

TEST(Scan, SpecialFilesSkippedWithAWarning) {
  TempDir t;
  write_file(t / "a", "a");
  ASSERT_EQ(mkfifo((t / "fifo").c_str(), 0644), 0);
  ASSERT_EQ(mkfifo((t / "ignored.fifo").c_str(), 0644), 0);
  IgnoreRules rules({"*.fifo"});
  ScanOptions o;
  o.ignore = &rules;
  ScanResult r = scan_tree(t.path(), o);  // must not block on the fifo
  EXPECT_EQ(paths_of(r.manifest), std::vector<std::string>{"a"});
  ASSERT_EQ(r.warnings.size(), 1u) << joined(r.warnings);
  EXPECT_EQ(r.warnings[0], "fifo: a fifo, skipped");
}

TEST(Scan, RootErrors) {
  TempDir t;
  EXPECT_THROW(scan_tree(t / "missing", ScanOptions{}), SyncError);
  write_file(t / "file", "x");
  EXPECT_THROW(scan_tree(t / "file", ScanOptions{}), SyncError);
  try {
    scan_tree(t / "missing", ScanOptions{});
  } catch (const SyncError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  // A root that is a symlink to a directory: followed unless told not to.
  write_file(t / "real/x", "x");
  ASSERT_EQ(symlink("real", (t / "via").c_str()), 0);
  ScanResult r = scan_tree(t / "via", ScanOptions{});
  EXPECT_EQ(paths_of(r.manifest), std::vector<std::string>{"x"});
  ScanOptions strict;
  strict.follow_root_symlink = false;
  EXPECT_THROW(scan_tree(t / "via", strict), SyncError);
  EXPECT_NO_THROW(scan_tree(t / "real", strict));
  // An empty root is an empty manifest.
  fs::create_directories(t / "empty");
  EXPECT_TRUE(scan_tree(t / "empty", ScanOptions{}).manifest.entries.empty());
}

TEST(Scan, UnreadableEntriesSkipped) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads everything";
  TempDir t;
  write_file(t / "ok", "ok");
  write_file(t / "secret", "s", 0000);
  write_file(t / "closed/x", "x");
  ASSERT_EQ(chmod((t / "closed").c_str(), 0000), 0);
  ScanResult r = scan_tree(t.path(), ScanOptions{});
  chmod((t / "closed").c_str(), 0755);
  EXPECT_EQ(paths_of(r.manifest), std::vector<std::string>{"ok"});
  EXPECT_TRUE(has_warning(r, "secret: cannot open")) << joined(r.warnings);
  EXPECT_TRUE(has_warning(r, "closed: cannot open the directory")) << joined(r.warnings);
}

TEST(Scan, VanishingFileAndDirectory) {
  TempDir t;
  write_file(t / "a.txt", "a");
  write_file(t / "b.txt", "b");
  write_file(t / "c.txt", "c");
  write_file(t / "d/x", "x");
  write_file(t / "d.txt", "d");  // hashed before the subtree "d/..." is walked
  ScanOptions o;
  o.hash_hook = [&](const std::string& rel, int pass) {
    if (pass != 0) return;
    if (rel == "b.txt") fs::remove(t / "b.txt");
    if (rel == "d.txt") fs::remove_all(t / "d");
  };
  ScanResult r;
  ASSERT_NO_THROW(r = scan_tree(t.path(), o));
  EXPECT_EQ(paths_of(r.manifest), (std::vector<std::string>{"a.txt", "c.txt", "d.txt"}));
  EXPECT_TRUE(has_warning(r, "b.txt: vanished during the scan")) << joined(r.warnings);
  EXPECT_TRUE(has_warning(r, "d: vanished during the scan")) << joined(r.warnings);
  EXPECT_EQ(r.warnings.size(), 2u) << joined(r.warnings);
}

TEST(Scan, PathsTooLongForAManifestAreSkipped) {
  TempDir t;
  // 20 levels of 250-byte names: 5,020 bytes, more than a manifest allows
  // (built with *at() calls: the full path is too long for open()).
  const std::string name(250, 'd');
  int fd = ::open(t.path().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(mkdirat(fd, name.c_str(), 0755), 0);
    int next = openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY);
    ::close(fd);
    ASSERT_GE(next, 0);
    fd = next;
  }
  int f = openat(fd, "leaf", O_WRONLY | O_CREAT, 0644);
  ASSERT_GE(f, 0);
  ::close(f);
  ::close(fd);
  ScanResult r = scan_tree(t.path(), ScanOptions{});
  // 16 levels fit (16 * 251 - 1 = 4,015 bytes); the 17th is skipped.
  EXPECT_EQ(r.manifest.entries.size(), 16u);
  ASSERT_EQ(r.warnings.size(), 1u) << joined(r.warnings);
  EXPECT_NE(r.warnings[0].find("path longer than 4096 bytes, skipped"), std::string::npos);
  EXPECT_NO_THROW(decode_manifest(encode_manifest(r.manifest)));
  ASSERT_EQ(std::system(("rm -rf '" + t.path() + "/" + name + "'").c_str()), 0);
}

TEST(Scan, FileChangingWhileReadIsReadAgain) {
  TempDir t;
  write_file(t / "f", "12345");
  // Changed once, after the first read: read again, no warning.
  ScanOptions once;
  once.hash_hook = [&](const std::string&, int pass) {
    if (pass == 1) std::ofstream(t / "f", std::ios::app) << "6";
  };
  ScanResult r = scan_tree(t.path(), once);
  EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
  ASSERT_EQ(r.manifest.entries.size(), 1u);
  EXPECT_EQ(r.manifest.entries[0].size, 6u);
  EXPECT_EQ(r.manifest.entries[0].hash, hash_bytes("123456"));

  // Changing after every read: four reads, then taken as last read.
  int passes = 0;
  ScanOptions always;
  always.hash_hook = [&](const std::string&, int pass) {
    if (pass == 0) return;
    passes = pass;
    std::ofstream(t / "f", std::ios::app) << "x";
  };
  r = scan_tree(t.path(), always);
  EXPECT_EQ(passes, 4);
  ASSERT_EQ(r.manifest.entries.size(), 1u);
  EXPECT_TRUE(has_warning(r, "f: changed while being read")) << joined(r.warnings);
  // The fourth read saw "123456" + three appended bytes.
  EXPECT_EQ(r.manifest.entries[0].size, 9u);
  EXPECT_EQ(r.manifest.entries[0].hash, hash_bytes("123456xxx"));
}

// --- the stat cache --------------------------------------------------------

TEST(StatCache, ReusesHashesAndCatchesChanges) {
  TempDir t;
  const std::string root = t / "root";
  write_file(root + "/a", "aaaa");
  write_file(root + "/d/b", "bbbb");
  write_file(root + "/d/c", "cccc");
  ASSERT_EQ(symlink("a", (root + "/l").c_str()), 0);
  ScanOptions o = no_racy();
  o.cache_path = t / "cache/dir/stat.cache";  // parents created

  ScanResult first = scan_tree(root, o);
  EXPECT_EQ(first.hashed_files, 3u);
  EXPECT_TRUE(first.warnings.empty()) << joined(first.warnings);
  ASSERT_TRUE(fs::exists(o.cache_path));

  ScanResult second = scan_tree(root, o);
  EXPECT_EQ(second.hashed_files, 0u);
  EXPECT_EQ(second.hashed_bytes, 0u);
  EXPECT_EQ(second.manifest.digest(), first.manifest.digest());
  expect_same(first.manifest, second.manifest, true);

  // Content and size change: re-hashed.
  write_file(root + "/d/b", "bbbbbb");
  ScanResult third = scan_tree(root, o);
  EXPECT_EQ(third.hashed_files, 1u);
  EXPECT_EQ(third.manifest.find("d/b")->hash, hash_bytes("bbbbbb"));
  EXPECT_NE(third.manifest.digest(), first.manifest.digest());

  // Only the mtime changes: re-hashed, same hash.
  set_mtime(root + "/a", 1'000'000'000'000'000'000);
  ScanResult fourth = scan_tree(root, o);
  EXPECT_EQ(fourth.hashed_files, 1u);
  EXPECT_EQ(fourth.manifest.find("a")->hash, hash_bytes("aaaa"));

  // Replaced by another file (new inode) with the same size and mtime.
  const std::int64_t mt = mtime_of(root + "/d/c");
  write_file(root + "/d/c.new", "CCCC");
  set_mtime(root + "/d/c.new", mt);
  ASSERT_EQ(rename((root + "/d/c.new").c_str(), (root + "/d/c").c_str()), 0);
  ScanResult fifth = scan_tree(root, o);
  EXPECT_EQ(fifth.hashed_files, 1u);
  EXPECT_EQ(fifth.manifest.find("d/c")->hash, hash_bytes("CCCC"));

  // A file that became a directory, a new file.
  fs::remove(root + "/a");
  write_file(root + "/a/inner", "i");
  ScanResult sixth = scan_tree(root, o);
  EXPECT_EQ(sixth.hashed_files, 1u);
  EXPECT_EQ(sixth.manifest.find("a")->type, EntryType::dir);
}

TEST(StatCache, SameSizeRewriteWithinTheSameTickIsCaught) {
  TempDir t;
  write_file(t / "root/f", "old!");
  ScanOptions o;  // the default racy window
  o.cache_path = t / "cache";
  ScanResult first = scan_tree(t / "root", o);
  EXPECT_EQ(first.manifest.find("f")->hash, hash_bytes("old!"));
  // The file was written just now, so the cache does not vouch for it.
  std::ifstream in(o.cache_path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Manifest cached = decode_manifest(bytes, true);
  ASSERT_EQ(cached.entries.size(), 1u);
  EXPECT_EQ(cached.entries[0].ctime_ns, 0);
  EXPECT_EQ(cached.entries[0].hash, hash_bytes("old!"));

  // Rewrite in place: same size, same inode, mtime put back, as if in the
  // same timestamp tick.
  const std::int64_t mt = mtime_of(t / "root/f");
  {
    std::ofstream out(t / "root/f", std::ios::binary | std::ios::in | std::ios::out);
    out << "new!";
  }
  set_mtime(t / "root/f", mt);
  ScanResult second = scan_tree(t / "root", o);
  EXPECT_EQ(second.hashed_files, 1u);
  EXPECT_EQ(second.manifest.find("f")->hash, hash_bytes("new!"));
}

TEST(StatCache, CtimeCatchesARestoredMtime) {
  TempDir t;
  write_file(t / "root/f", "old!");
  ScanOptions o = no_racy();
  o.cache_path = t / "cache";
  scan_tree(t / "root", o);
  // Past the coarse timestamp tick, so the ctime moves.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  const std::int64_t mt = mtime_of(t / "root/f");
  {
    std::ofstream out(t / "root/f", std::ios::binary | std::ios::in | std::ios::out);
    out << "new!";
  }
  set_mtime(t / "root/f", mt);
  ScanResult r = scan_tree(t / "root", o);
  EXPECT_EQ(r.hashed_files, 1u);
  EXPECT_EQ(r.manifest.find("f")->hash, hash_bytes("new!"));
}

TEST(StatCache, CorruptOrForeignCacheIsIgnored) {
  TempDir t;
  write_file(t / "root/f", "x");
  ScanOptions o = no_racy();
  o.cache_path = t / "cache";
  for (const std::string& junk : {std::string("garbage"), std::string(),
                                 encode_manifest(sample_manifest()),  // the wire form, not a cache
                                 encode_manifest(sample_manifest(), true).substr(0, 20)}) {
    write_file(o.cache_path, junk);
    ScanResult r = scan_tree(t / "root", o);
    EXPECT_EQ(r.hashed_files, 1u);
    EXPECT_TRUE(r.warnings.empty()) << joined(r.warnings);
    // Rewritten as a valid cache.
    EXPECT_EQ(scan_tree(t / "root", o).hashed_files, 0u);
  }
  // A cache from another tree with the same paths: inode and ctime differ.
  write_file(t / "other/f", "y");
  EXPECT_EQ(scan_tree(t / "other", o).hashed_files, 1u);
  EXPECT_EQ(scan_tree(t / "other", o).manifest.find("f")->hash, hash_bytes("y"));
}

TEST(StatCache, UnchangedCacheIsNotRewritten) {
  TempDir t;
  write_file(t / "root/f", "x");
  ScanOptions o = no_racy();
  o.cache_path = t / "cache";
  scan_tree(t / "root", o);
  struct stat before;
  ASSERT_EQ(stat(o.cache_path.c_str(), &before), 0);
  scan_tree(t / "root", o);
  struct stat after;
  ASSERT_EQ(stat(o.cache_path.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);  // no temp + rename happened
  // No temp files left next to it.
  int files = 0;
  for (const auto& e : fs::directory_iterator(t.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

// --- speed (figures printed, not asserted) --------------------------------

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

TEST(Speed, TwentyThousandFiles) {
  if (!std::getenv("DTEST_SYNC_BENCH")) GTEST_SKIP() << "set DTEST_SYNC_BENCH=1 to time a 20,000-file scan";
  TempDir t;
  const std::string root = t / "root";
  // 20,000 files in 1,000 directories (50 x 20), ~100 bytes each.
  std::string content(100, 'x');
  for (int i = 0; i < 50; ++i) {
    for (int j = 0; j < 20; ++j) {
      std::string dir = root + "/top" + std::to_string(i) + "/sub" + std::to_string(j);
      fs::create_directories(dir);
      for (int k = 0; k < 20; ++k) {
        content[0] = static_cast<char>('a' + k);
        int fd = ::open((dir + "/file" + std::to_string(k) + ".cc").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
        ::close(fd);
      }
    }
  }
  ScanOptions o = no_racy();
  o.cache_path = t / "cache";
  IgnoreRules rules = IgnoreRules::with_defaults({});
  o.ignore = &rules;
  auto t0 = std::chrono::steady_clock::now();
  ScanResult cold = scan_tree(root, o);
  double cold_ms = ms_since(t0);
  ASSERT_EQ(cold.hashed_files, 20'000u);
  ASSERT_EQ(cold.manifest.entries.size(), 20'000u + 1'000 + 50);

  double best = 1e9;
  for (int i = 0; i < 5; ++i) {
    t0 = std::chrono::steady_clock::now();
    ScanResult warm = scan_tree(root, o);
    best = std::min(best, ms_since(t0));
    ASSERT_EQ(warm.hashed_files, 0u);
    ASSERT_EQ(warm.manifest.digest(), cold.manifest.digest());
  }
  ScanOptions nocache = no_racy();
  nocache.ignore = &rules;
  t0 = std::chrono::steady_clock::now();
  scan_tree(root, nocache);
  double nocache_ms = ms_since(t0);

  t0 = std::chrono::steady_clock::now();
  std::string wire = encode_manifest(cold.manifest);
  double enc_ms = ms_since(t0);
  t0 = std::chrono::steady_clock::now();
  Manifest back = decode_manifest(wire);
  double dec_ms = ms_since(t0);
  t0 = std::chrono::steady_clock::now();
  Hash128 dg = back.digest();
  double dig_ms = ms_since(t0);
  EXPECT_EQ(dg, cold.manifest.digest());
  std::printf(
      "[ speed    ] 21,050 entries: first scan (hashing, cache written) %.1f ms; warm scan with stat cache "
      "%.1f ms (best of 5); no cache %.1f ms; encode %.2f ms, decode %.2f ms (%zu bytes), digest %.2f ms\n",
      cold_ms, best, nocache_ms, enc_ms, dec_ms, wire.size(), dig_ms);
}

TEST(Speed, HashingThroughput) {
  if (!std::getenv("DTEST_SYNC_BENCH")) GTEST_SKIP() << "set DTEST_SYNC_BENCH=1 to hash ~200 MB";
  TempDir t;
  std::string chunk(4 << 20, '\0');
  for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<char>(i * 2654435761u >> 13);
  for (int i = 0; i < 50; ++i) {
    chunk[0] = static_cast<char>(i);
    write_file(t / ("big" + std::to_string(i)), chunk);
  }
  auto t0 = std::chrono::steady_clock::now();
  ScanResult r = scan_tree(t.path(), ScanOptions{});
  double ms = ms_since(t0);
  ASSERT_EQ(r.hashed_files, 50u);
  std::printf("[ speed    ] first scan of %.0f MB (page cache warm): %.1f ms, %.0f MB/s\n",
              static_cast<double>(r.hashed_bytes) / 1e6, ms, static_cast<double>(r.hashed_bytes) / 1e3 / ms);
}

}  // namespace
}  // namespace dtest::sync
