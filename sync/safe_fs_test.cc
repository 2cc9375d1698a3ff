#include "sync/safe_fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace dtest::sync {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dtest-safefs-XXXXXX";
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

// Every test here sees the same umask, so created modes are predictable.
class SafeFs : public ::testing::Test {
 protected:
  void SetUp() override { old_umask_ = umask(022); }
  void TearDown() override { umask(old_umask_); }
  mode_t old_umask_ = 0;
};

void write_file(const std::string& path, const std::string& content, mode_t mode = 0644) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct stat lstat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << path;
  return st;
}

std::int64_t mtime_ns(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

bool exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

// Names in a directory (recursively), with file contents and link targets:
// a fingerprint to show a directory was left untouched.
std::vector<std::string> snapshot(const std::string& dir) {
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    std::string p = it->path().string();
    struct stat st = lstat_of(p);
    std::string line = p.substr(dir.size()) + " mode=" + std::to_string(st.st_mode) +
                       " mtime=" + std::to_string(mtime_ns(st));
    if (S_ISREG(st.st_mode)) line += " data=" + read_file(p);
    if (S_ISLNK(st.st_mode)) line += " -> " + fs::read_symlink(p).string();
    out.push_back(line);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it)
    if (it->path().filename().string().rfind(".dtest-tmp.", 0) == 0) out.push_back(it->path().string());
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const SyncError& e) {
    return e.what();
  }
  return "no error";
}

void write_committed(SafeRoot& r, const std::string& rel, const std::string& data, bool exec = false,
                     std::int64_t mtime = 1'600'000'000'000'000'000) {
  auto w = r.create(rel, data.size());
  w->write(data);
  w->commit(hash_bytes(data), exec, mtime);
}

// Every operation, on one path, for the refusal tests.
std::vector<std::pair<std::string, std::function<void(SafeRoot&, const std::string&)>>> operations() {
  return {
      {"make_dir", [](SafeRoot& r, const std::string& p) { r.make_dir(p); }},
      {"make_symlink", [](SafeRoot& r, const std::string& p) { r.make_symlink(p, "target", 0); }},
      {"remove", [](SafeRoot& r, const std::string& p) { r.remove(p); }},
      {"set_meta", [](SafeRoot& r, const std::string& p) { r.set_meta(p, true, 0); }},
      {"open_basis", [](SafeRoot& r, const std::string& p) { r.open_basis(p); }},
      {"create", [](SafeRoot& r, const std::string& p) { r.create(p, 100); }},
      {"create+commit",
       [](SafeRoot& r, const std::string& p) {
         auto w = r.create(p, 100);
         w->write("evil");
         w->commit(hash_bytes("evil"), true, 0);
       }},
  };
}

// --- a hostile peer ---------------------------------------------------------

TEST_F(SafeFs, MalformedPathsRefusedBeforeTouchingDisk) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/a/file", "keep");
  write_file(t / "victim", "outside");
  const std::vector<std::string> before_root = snapshot(t / "root");
  const std::vector<std::string> before_all = snapshot(t.path());
  const std::vector<std::string> bad = {"/etc/passwd", t / "victim", "..", "../victim", "a/../../victim",
                                        "a/..", ".", "./a", "a/./file", "a//file", "a/", "", "/",
                                        std::string("a\0b", 3), std::string("a/file\0x", 8)};
  for (const auto& [name, op] : operations()) {
    for (const std::string& p : bad) {
      std::string err = error_of([&] { op(r, p); });
      EXPECT_EQ(err.rfind("sync: '", 0), 0u) << name << " on '" << p << "': " << err;
    }
  }
  EXPECT_EQ(snapshot(t / "root"), before_root);
  EXPECT_EQ(snapshot(t.path()), before_all);
  EXPECT_EQ(error_of([&] { r.remove("a/../../victim"); }), "sync: 'a/../../victim': '..' component");
  EXPECT_EQ(error_of([&] { r.make_dir(std::string("a\0b", 3)); }), "sync: 'a\\x00b': NUL byte");
}

TEST_F(SafeFs, SymlinkedDirectoryIsNeverWrittenThrough) {
  TempDir t;
  TempDir outside;
  write_file(outside / "victim", "outside data", 0644);
  write_file(outside / "a/b", "deep");
  SafeRoot r(t / "root");
  ASSERT_EQ(symlink(outside.path().c_str(), (t / "root/lnk").c_str()), 0);
  fs::create_directories(t / "root/d");
  ASSERT_EQ(symlink(outside.path().c_str(), (t / "root/d/lnk").c_str()), 0);
  fs::create_directories(t / "root/sub");
  ASSERT_EQ(symlink("sub", (t / "root/inner").c_str()), 0);  // even one that stays inside
  const std::vector<std::string> before = snapshot(outside.path());
  const std::vector<std::string> paths = {"lnk/victim", "lnk/new", "lnk/a/b", "lnk/a/new", "d/lnk/victim",
                                          "inner/x"};
  for (const auto& [name, op] : operations()) {
    for (const std::string& p : paths) {
      std::string err = error_of([&] { op(r, p); });
      EXPECT_NE(err.find("is a symlink, refusing to write through it"), std::string::npos)
          << name << " on " << p << ": " << err;
    }
  }
  EXPECT_EQ(error_of([&] { r.create("lnk/x", 1); }),
            "sync: 'lnk/x': 'lnk' is a symlink, refusing to write through it");
  EXPECT_EQ(error_of([&] { r.remove("d/lnk/victim"); }),
            "sync: 'd/lnk/victim': 'd/lnk' is a symlink, refusing to write through it");
  EXPECT_EQ(snapshot(outside.path()), before);
  EXPECT_TRUE(temp_files(t.path()).empty());
  EXPECT_TRUE(temp_files(outside.path()).empty());
  // The links themselves are still there (and can be removed as leaves).
  EXPECT_TRUE(fs::is_symlink(t / "root/lnk"));
  EXPECT_TRUE(r.remove("lnk"));
  EXPECT_FALSE(exists(t / "root/lnk"));
  EXPECT_EQ(snapshot(outside.path()), before);
}

TEST_F(SafeFs, FileOnTheWayIsNotADirectory) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/f", "x");
  EXPECT_EQ(error_of([&] { r.create("f/x", 1); }), "sync: 'f/x': 'f' is not a directory");
  EXPECT_EQ(error_of([&] { r.make_dir("missing/x"); }), "sync: 'missing/x': 'missing' does not exist");
}

TEST_F(SafeFs, SymlinkLeafIsReplacedNeverFollowed) {
  TempDir t;
  TempDir outside;
  write_file(outside / "victim", "outside data", 0644);
  const std::vector<std::string> before = snapshot(outside.path());
  SafeRoot r(t / "root");
  const std::string leaf = t / "root/leaf";
  ASSERT_EQ(symlink((outside / "victim").c_str(), leaf.c_str()), 0);

  // Reading or chmod-ing through it is refused.
  EXPECT_NE(error_of([&] { r.set_meta("leaf", true, 0); }).find("symlink"), std::string::npos);
  EXPECT_NE(error_of([&] { r.open_basis("leaf"); }).find("symlink"), std::string::npos);
  EXPECT_EQ(snapshot(outside.path()), before);

  // Writing a file there replaces the link.
  write_committed(r, "leaf", "new data");
  EXPECT_FALSE(fs::is_symlink(leaf));
  EXPECT_EQ(read_file(leaf), "new data");
  EXPECT_EQ(snapshot(outside.path()), before);

  // A link replaced by a directory, and a link replaced by a link.
  ASSERT_EQ(symlink(outside.path().c_str(), (t / "root/l2").c_str()), 0);
  r.make_dir("l2");
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(t / "root/l2")));
  ASSERT_EQ(symlink((outside / "victim").c_str(), (t / "root/l3").c_str()), 0);
  r.make_symlink("l3", "elsewhere", 1'000'000'000);
  EXPECT_EQ(fs::read_symlink(t / "root/l3"), "elsewhere");
  // Removing a link removes the link only.
  ASSERT_EQ(symlink(outside.path().c_str(), (t / "root/l4").c_str()), 0);
  EXPECT_TRUE(r.remove("l4"));
  EXPECT_FALSE(exists(t / "root/l4"));
  EXPECT_EQ(snapshot(outside.path()), before);
}

// --- the Writer ------------------------------------------------------------

TEST_F(SafeFs, WriterCommitsContentModeAndMtime) {
  TempDir t;
  SafeRoot r(t / "root");
  fs::create_directories(t / "root/sub");
  std::string big(700'000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 >> 3);
  auto w = r.create("sub/big.bin", big.size());
  // Small, large and empty writes mixed (the buffer boundary is crossed).
  w->write(std::string_view(big).substr(0, 10));
  w->write(std::string_view(big).substr(10, 0));
  w->write(std::string_view(big).substr(10, 300'000));
  w->write(std::string_view(big).substr(300'010, 1));
  w->write(std::string_view(big).substr(300'011));
  EXPECT_EQ(w->size(), big.size());
  EXPECT_EQ(temp_files(t.path()).size(), 1u);
  w->commit(hash_bytes(big), true, 1'234'567'890'123'456'789);
  w.reset();
  EXPECT_EQ(read_file(t / "root/sub/big.bin"), big);
  struct stat st = lstat_of(t / "root/sub/big.bin");
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(mtime_ns(st), 1'234'567'890'123'456'789);
  EXPECT_TRUE(temp_files(t.path()).empty());

  write_committed(r, "plain", "text", false, 5'000'000'000);
  st = lstat_of(t / "root/plain");
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  EXPECT_EQ(mtime_ns(st), 5'000'000'000);

  // Overwriting an existing file, and an empty file.
  write_committed(r, "plain", "other text", true);
  EXPECT_EQ(read_file(t / "root/plain"), "other text");
  EXPECT_EQ(lstat_of(t / "root/plain").st_mode & 07777, 0755u);
  write_committed(r, "empty", "");
  EXPECT_EQ(lstat_of(t / "root/empty").st_size, 0);
  // A name as long as NAME_MAX still gets a temp file.
  write_committed(r, std::string(255, 'n'), "long");
  EXPECT_EQ(read_file(t / ("root/" + std::string(255, 'n'))), "long");
  EXPECT_TRUE(temp_files(t.path()).empty());
}

TEST_F(SafeFs, HashMismatchKeepsTheOriginal) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/f", "original");
  auto w = r.create("f", 100);
  w->write("tampered");
  std::string err = error_of([&] { w->commit(hash_bytes("expected"), false, 0); });
  EXPECT_NE(err.find("sync: 'f': hash mismatch"), std::string::npos) << err;
  EXPECT_NE(err.find(to_hex(hash_bytes("expected"))), std::string::npos) << err;
  EXPECT_TRUE(temp_files(t.path()).empty());
  EXPECT_EQ(read_file(t / "root/f"), "original");
  // The writer is finished: no second attempt through it.
  EXPECT_THROW(w->write("x"), SyncError);
  EXPECT_THROW(w->commit(hash_bytes("tampered"), false, 0), SyncError);
  w.reset();
  EXPECT_EQ(read_file(t / "root/f"), "original");
}

TEST_F(SafeFs, MaxSizeIsEnforced) {
  TempDir t;
  SafeRoot r(t / "root");
  auto w = r.create("f", 4);
  w->write("12");
  w->write("34");  // exactly the bound: fine
  EXPECT_NE(error_of([&] { w->write("5"); }).find("more than the announced 4 bytes"), std::string::npos);
  EXPECT_TRUE(temp_files(t.path()).empty());
  EXPECT_FALSE(exists(t / "root/f"));
  auto z = r.create("z", 0);
  EXPECT_THROW(z->write("x"), SyncError);
  auto big = r.create("big", 10);
  EXPECT_THROW(big->write(std::string(1 << 20, 'x')), SyncError);
  EXPECT_TRUE(temp_files(t.path()).empty());
}

TEST_F(SafeFs, UncommittedWriterLeavesNothing) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/f", "original");
  {
    auto w = r.create("f", 1 << 20);
    w->write(std::string(300'000, 'x'));
    EXPECT_EQ(temp_files(t.path()).size(), 1u);
  }
  EXPECT_TRUE(temp_files(t.path()).empty());
  EXPECT_EQ(read_file(t / "root/f"), "original");
  { auto w = r.create("new", 10); }
  EXPECT_FALSE(exists(t / "root/new"));
  EXPECT_TRUE(temp_files(t.path()).empty());
}

// --- replacing, removing ---------------------------------------------------

TEST_F(SafeFs, FileAndDirectoryReplaceEachOther) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/x", "file");
  r.make_dir("x");  // file -> directory
  EXPECT_TRUE(fs::is_directory(t / "root/x"));
  r.make_dir("x");  // an existing directory is fine
  write_committed(r, "x", "file again");  // empty directory -> file
  EXPECT_EQ(read_file(t / "root/x"), "file again");

  write_file(t / "root/y/z", "inside");
  std::string err = error_of([&] { write_committed(r, "y", "data"); });
  EXPECT_NE(err.find("non-empty directory"), std::string::npos) << err;
  EXPECT_EQ(read_file(t / "root/y/z"), "inside");
  EXPECT_TRUE(temp_files(t.path()).empty());

  fs::create_directories(t / "root/e");
  r.make_symlink("e", "target", 0);  // empty directory -> symlink
  EXPECT_TRUE(fs::is_symlink(t / "root/e"));
  EXPECT_THROW(r.make_symlink("y", "target", 0), SyncError);  // non-empty: refused
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(t / "root/y")));
  write_file(t / "root/f", "file");
  r.make_symlink("f", "t2", 0);  // file -> symlink
  EXPECT_EQ(fs::read_symlink(t / "root/f"), "t2");
  EXPECT_TRUE(temp_files(t.path()).empty());
}

TEST_F(SafeFs, Remove) {
  TempDir t;
  TempDir outside;
  write_file(outside / "keep", "k");
  SafeRoot r(t / "root");
  write_file(t / "root/f", "x");
  fs::create_directories(t / "root/empty");
  write_file(t / "root/full/ignored.o", "o");
  ASSERT_EQ(symlink(outside.path().c_str(), (t / "root/lnk").c_str()), 0);
  EXPECT_TRUE(r.remove("f"));
  EXPECT_FALSE(exists(t / "root/f"));
  EXPECT_TRUE(r.remove("empty"));
  EXPECT_FALSE(exists(t / "root/empty"));
  EXPECT_FALSE(r.remove("full"));
  EXPECT_EQ(read_file(t / "root/full/ignored.o"), "o");
  EXPECT_TRUE(r.remove("lnk"));
  EXPECT_EQ(read_file(outside / "keep"), "k");
  EXPECT_TRUE(r.remove("missing"));
  EXPECT_TRUE(r.remove("missing/deeper/still"));
  EXPECT_TRUE(r.remove("full/missing"));
}

// --- metadata, basis, symlinks, the root -----------------------------------

TEST_F(SafeFs, SetMeta) {
  TempDir t;
  SafeRoot r(t / "root");
  struct Case {
    mode_t before;
    bool exec;
    mode_t after;
  };
  for (const Case& c : {Case{0644, true, 0755}, Case{0600, true, 0700}, Case{0640, true, 0750},
                        Case{0755, false, 0644}, Case{0711, false, 0600}, Case{0644, false, 0644},
                        Case{0755, true, 0755}}) {
    write_file(t / "root/f", "x", c.before);
    r.set_meta("f", c.exec, 987'654'321'000'000'001);
    struct stat st = lstat_of(t / "root/f");
    EXPECT_EQ(st.st_mode & 07777, c.after) << std::oct << c.before << " exec=" << c.exec;
    EXPECT_EQ(mtime_ns(st), 987'654'321'000'000'001);
  }
  fs::create_directories(t / "root/d");
  EXPECT_NE(error_of([&] { r.set_meta("d", true, 0); }).find("not a regular file"), std::string::npos);
  EXPECT_THROW(r.set_meta("missing", true, 0), SyncError);
}

TEST_F(SafeFs, OpenBasis) {
  TempDir t;
  SafeRoot r(t / "root");
  write_file(t / "root/sub/f", "basis contents");
  write_file(t / "root/empty", "");
  SafeRoot::Basis b = r.open_basis("sub/f");
  EXPECT_EQ(b.data(), "basis contents");
  SafeRoot::Basis moved(std::move(b));
  EXPECT_EQ(moved.data(), "basis contents");
  EXPECT_TRUE(b.data().empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  SafeRoot::Basis e = r.open_basis("empty");
  EXPECT_TRUE(e.data().empty());
  e = std::move(moved);
  EXPECT_EQ(e.data(), "basis contents");
  fs::create_directories(t / "root/d");
  EXPECT_NE(error_of([&] { r.open_basis("d"); }).find("not a regular file"), std::string::npos);
  EXPECT_THROW(r.open_basis("missing"), SyncError);
}

TEST_F(SafeFs, MakeSymlinkStoresTheTextAsGiven) {
  TempDir t;
  SafeRoot r(t / "root");
  fs::create_directories(t / "root/d");
  for (const std::string target : {"../../../etc/passwd", "/absolute/dangling", "with space/ü", "x"}) {
    r.make_symlink("d/l", target, 1'111'111'111'222'222'222);
    EXPECT_EQ(fs::read_symlink(t / "root/d/l").string(), target);
    EXPECT_EQ(mtime_ns(lstat_of(t / "root/d/l")), 1'111'111'111'222'222'222);
  }
  EXPECT_NE(error_of([&] { r.make_symlink("d/l2", "", 0); }).find("empty symlink target"), std::string::npos);
  EXPECT_NE(error_of([&] { r.make_symlink("d/l2", std::string("a\0b", 3), 0); }).find("NUL"), std::string::npos);
  EXPECT_FALSE(exists(t / "root/d/l2"));
  EXPECT_TRUE(temp_files(t.path()).empty());
}

TEST_F(SafeFs, MakeDir) {
  TempDir t;
  SafeRoot r(t / "root");
  r.make_dir("a");
  r.make_dir("a/b");
  EXPECT_TRUE(fs::is_directory(t / "root/a/b"));
  EXPECT_EQ(lstat_of(t / "root/a/b").st_mode & 07777, 0755u);
  EXPECT_THROW(r.make_dir("x/y"), SyncError);  // parents must exist
  EXPECT_FALSE(exists(t / "root/x"));
}

TEST_F(SafeFs, RootIsCreatedAndOpened) {
  TempDir t;
  {
    SafeRoot r(t / "deep/er/root");
    EXPECT_EQ(r.path(), t / "deep/er/root");
    EXPECT_TRUE(fs::is_directory(t / "deep/er/root"));
    write_committed(r, "f", "x");
  }
  EXPECT_EQ(read_file(t / "deep/er/root/f"), "x");
  write_file(t / "file", "x");
  EXPECT_THROW(SafeRoot(t / "file"), SyncError);
  EXPECT_THROW(SafeRoot(t / "file/sub"), SyncError);
  EXPECT_THROW(SafeRoot(""), SyncError);
}

}  // namespace
}  // namespace dtest::sync
