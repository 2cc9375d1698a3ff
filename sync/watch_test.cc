// The tree watcher (sync/watch.h) with the real dtest-agent: once a tree is
// warm, a scan is served without a walk, and every kind of change makes the
// next scan walk again and see it.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "sync/ignore.h"
#include "sync/watch.h"

namespace dtest::sync {
namespace {

namespace fs = std::filesystem;

void put(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << data;
}

class Watch : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dtest-watch-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    root_ = tmp_ / "tree";
    put(root_ / "a.txt", "alpha");
    put(root_ / "sub/b.txt", "beta");
    put(root_ / "build/out.o", "object");
    patterns_ = IgnoreRules::defaults();
    patterns_.push_back("build/");
    rules_ = IgnoreRules(patterns_);
    w_.agent = DTEST_AGENT_BIN;
    w_.idle_seconds = 30;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);  // the watcher sees its root go and exits
  }

  WatchedScan scan() {
    ScanOptions o;
    o.ignore = &rules_;
    o.cache_path = (tmp_ / "cache" / "tree.cache").string();
    o.racy_ns = 0;  // the watcher, not the clock, vouches for fresh files here
    return scan_tree_watched(root_.string(), o, patterns_, w_);
  }
  // Scans until one is served by the watcher (it starts on the first scan,
  // the next records its epoch, the one after is warm).
  void warm() {
    for (int i = 0; i < 100; ++i) {
      if (scan().from_watcher) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "the watcher never served a scan";
  }
  // After a change: the next scan walks and its manifest has `path` as `want`.
  void expect_seen(const std::string& what) {
    const WatchedScan s = scan();
    EXPECT_FALSE(s.from_watcher) << what << ": served from the watcher after a change";
    const WatchedScan again = scan();
    EXPECT_TRUE(again.from_watcher) << what << ": not warm again after one walk";
    EXPECT_EQ(again.scan.manifest.digest(), s.scan.manifest.digest()) << what;
  }
  const Entry* find(const std::string& p) {
    last_ = scan().scan.manifest;
    return last_.find(p);
  }

  fs::path tmp_, root_;
  std::vector<std::string> patterns_;
  IgnoreRules rules_;
  WatchOptions w_;
  Manifest last_;
};

TEST_F(Watch, WarmScanMatchesAWalk) {
  const WatchedScan cold = scan();
  EXPECT_FALSE(cold.from_watcher);
  warm();
  const WatchedScan hot = scan();
  EXPECT_TRUE(hot.from_watcher);
  EXPECT_EQ(hot.scan.manifest.digest(), cold.scan.manifest.digest());
  EXPECT_EQ(hot.scan.manifest.entries.size(), 3u);  // a.txt, sub, sub/b.txt (build/ ignored)
}

TEST_F(Watch, EveryKindOfChangeForcesAWalk) {
  warm();
  const Hash128 before = scan().scan.manifest.digest();
  // Same size, same second: only the watcher (not the stat cache's racy
  // window, which is off here) can tell.
  put(root_ / "a.txt", "ALPHA");
  expect_seen("rewrite");
  ASSERT_NE(find("a.txt"), nullptr);
  EXPECT_EQ(find("a.txt")->hash, hash_bytes("ALPHA"));
  EXPECT_NE(scan().scan.manifest.digest(), before);

  put(root_ / "new.txt", "n");
  expect_seen("create");
  EXPECT_NE(find("new.txt"), nullptr);

  put(root_ / "fresh/dir/deep.txt", "d");
  expect_seen("new directories");
  put(root_ / "fresh/dir/deeper.txt", "d2");  // inside a directory created after the watcher started
  expect_seen("a file in a new directory");
  EXPECT_NE(find("fresh/dir/deeper.txt"), nullptr);

  fs::remove(root_ / "new.txt");
  expect_seen("delete");
  EXPECT_EQ(find("new.txt"), nullptr);

  fs::permissions(root_ / "sub/b.txt", fs::perms::owner_exec, fs::perm_options::add);
  expect_seen("chmod");
  EXPECT_TRUE(find("sub/b.txt")->exec);

  fs::last_write_time(root_ / "sub/b.txt", fs::last_write_time(root_ / "sub/b.txt") - std::chrono::hours(1));
  expect_seen("touch");

  fs::rename(root_ / "sub", root_ / "sub2");
  expect_seen("rename");
  EXPECT_NE(find("sub2/b.txt"), nullptr);

  fs::create_symlink("a.txt", root_ / "lnk");
  expect_seen("symlink");

  // A write through a shared mapping, then close: IN_CLOSE_WRITE.
  {
    const int fd = ::open((root_ / "a.txt").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    void* m = ::mmap(nullptr, 5, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ASSERT_NE(m, MAP_FAILED);
    std::memcpy(m, "omega", 5);
    ::munmap(m, 5);
    ::close(fd);
  }
  expect_seen("mmap write");
  EXPECT_EQ(find("a.txt")->hash, hash_bytes("omega"));
}

TEST_F(Watch, ChangesInIgnoredDirectoriesDoNotForceAWalk) {
  warm();
  put(root_ / "build/out.o", "relinked");
  EXPECT_TRUE(scan().from_watcher);
}

TEST_F(Watch, DisabledMeansAlwaysAWalk) {
  w_.enabled = false;
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(scan().from_watcher);
}

TEST_F(Watch, AnIdleWatcherExitsAndANewOneTakesOver) {
  w_.idle_seconds = 1;
  warm();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  put(root_ / "a.txt", "while nobody watched?");  // no watcher: must still be seen
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const WatchedScan s = scan();
  EXPECT_FALSE(s.from_watcher);
  EXPECT_EQ(s.scan.manifest.find("a.txt")->hash, hash_bytes("while nobody watched?"));
  warm();  // a new watcher, a new id: the old record does not count
}

}  // namespace
}  // namespace dtest::sync
