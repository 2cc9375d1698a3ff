// The delta syncer end to end: the real dtest and dtest-agent, over a popen
// gateway with chdir= and over the ssh gateway to a real OpenSSH sshd on
// loopback (tests/support/sshd.h). Trees are compared byte for byte, with
// exec bits, file mtimes and symlink texts.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/files.h"
#include "support/sshd.h"
#include "support/subprocess.h"
#include "support/text.h"
#include "support/tree.h"

namespace {

namespace fs = std::filesystem;
using dtest::testing::contains;
using dtest::testing::describe;
using dtest::testing::describe_tree;
using dtest::testing::ProcResult;
using dtest::testing::read_file;

const std::string kDtest = DTEST_BIN;
const std::string kAgent = DTEST_AGENT_BIN;
const std::string kPass = std::string(FIXTURES_DIR) + "/fx_pass_test";

dtest::testing::Sshd* g_sshd = nullptr;

class SshdEnv : public ::testing::Environment {
 public:
  void SetUp() override { sshd.start(SSHD_HARNESS); }
  void TearDown() override { sshd.stop(); }
  dtest::testing::Sshd sshd;
};

void put(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << data;
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() % 64 + 32);  // text-like: compressible
  return s;
}

// The number in "N files sent" of `dtest sync`'s report.
int files_sent(const std::string& out) {
  static const std::regex re(R"((\d+) files sent)");
  std::smatch m;
  return std::regex_search(out, m, re) ? std::stoi(m[1]) : -1;
}

int count(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (auto p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

class SyncE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = dtest::testing::make_temp_dir("dtest-synce2e");
    ASSERT_FALSE(tmp_.empty());
    src_ = tmp_ / "src";
    remote_ = tmp_ / "remote";
    fs::create_directories(src_);
  }
  void TearDown() override { dtest::testing::remove_tree(tmp_); }

  ProcResult dtest(const std::vector<std::string>& args, std::map<std::string, std::string> env = {}) {
    dtest::testing::RunOptions o;
    o.cwd = tmp_.string();
    o.timeout = 120;
    o.env = std::move(env);
    o.env.emplace("DTEST_AGENT", kAgent);
    o.env.emplace("DTEST_CACHE_DIR", (tmp_ / "cache").string());
    if (g_sshd && g_sshd->up) o.env.emplace("HOME", g_sshd->dir + "/local-home");
    o.unset = {"SSH_AUTH_SOCK", "DTEST_SSH_ACCEPT_NEW", "DTEST_SSH_KNOWN_HOSTS"};
    std::vector<std::string> argv = {kDtest};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcResult r = dtest::testing::run_process(argv, o);
    EXPECT_FALSE(r.timed_out) << describe(r);
    return r;
  }

  // A tree with every kind of entry the issue lists.
  void make_tree() {
    put(src_ / "top.txt", "top level\n");
    put(src_ / "a/b/c/deep.txt", "deep\n");
    put(src_ / "empty.txt", "");
    fs::create_directories(src_ / "empty_dir");
    put(src_ / "big/large.bin", random_bytes(6 << 20, 7));
    put(src_ / "with space/file name.txt", "spaces\n");
    put(src_ / "\xC3\xBCnic\xC3\xB8" "de/\xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC.txt", "unicode\n");
    put(src_ / "tool.sh", "#!/bin/sh\necho hi\n");
    fs::permissions(src_ / "tool.sh", fs::perms::owner_exec, fs::perm_options::add);
    fs::create_symlink("../top.txt", src_ / "a/inside_link");
    fs::create_symlink("/etc/hostname", src_ / "outside_link");
    fs::create_symlink("/nonexistent/dangling", src_ / "dangling_link");
    fs::create_symlink("a/b", src_ / "dir_link");
    put(src_ / ".git/HEAD", "ref: refs/heads/main\n");       // default ignore
    put(src_ / "pkg/__pycache__/m.cpython.pyc", "bytecode");  // default ignore
    put(src_ / "notes.tmp", "scratch");                       // --rsyncignore '*.tmp'
    put(src_ / "build/out.o", "object");                      // --rsyncignore 'build/'
  }
  std::vector<std::string> ignored() const { return {".git", "pkg/__pycache__", "notes.tmp", "build"}; }

  void modify_tree() {
    put(src_ / "top.txt", "top level, changed\n");
    fs::remove(src_ / "a/b/c/deep.txt");
    put(src_ / "new/dir/new.txt", "added\n");
    fs::permissions(src_ / "top.txt", fs::perms::owner_exec, fs::perm_options::add);
    fs::permissions(src_ / "tool.sh", fs::perms::all & ~fs::perms::owner_exec & ~fs::perms::group_exec &
                                          ~fs::perms::others_exec,
                    fs::perm_options::replace);
    std::string big = random_bytes(6 << 20, 7);
    for (int i = 0; i < 1024; ++i) big[(3 << 20) + i] = 'Z';
    put(src_ / "big/large.bin", big);
    fs::remove(src_ / "outside_link");
    fs::create_symlink("/etc/passwd", src_ / "outside_link");
  }

  // Syncs, compares, re-syncs with no change, modifies, syncs and compares.
  void round_trip(const std::string& tx) {
    make_tree();
    const std::vector<std::string> ign = {"--rsyncignore", "*.tmp", "--rsyncignore", "build/"};
    auto args = [&] {
      std::vector<std::string> a = {"sync", "--tx", tx};
      a.insert(a.end(), ign.begin(), ign.end());
      a.push_back(src_.string());
      return a;
    };
    ProcResult r = dtest(args());
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(files_sent(r.out), 7) << r.out;  // 7 files outside the ignored paths
    const fs::path dst = remote_ / "src";
    EXPECT_EQ(describe_tree(src_, ignored()), describe_tree(dst)) << r.out;
    EXPECT_FALSE(fs::exists(dst / "build"));
    EXPECT_FALSE(fs::exists(dst / ".git"));

    r = dtest(args());
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_EQ(files_sent(r.out), 0) << r.out;
    EXPECT_TRUE(contains(r.out, "1 round trip(s)")) << r.out;

    modify_tree();
    put(dst / "extra_on_receiver.txt", "delete me");
    put(dst / "build/receiver_cache", "ignored: keep me");
    r = dtest(args());
    ASSERT_EQ(r.exit_code, 0) << describe(r);
    EXPECT_TRUE(contains(r.out, "(1 as deltas")) << r.out;  // large.bin
    EXPECT_EQ(describe_tree(src_, ignored()), describe_tree(dst, {"build"})) << r.out;
    EXPECT_FALSE(fs::exists(dst / "extra_on_receiver.txt"));
    EXPECT_EQ(read_file((dst / "build/receiver_cache").string()), "ignored: keep me");
  }

  fs::path tmp_, src_, remote_;
};

TEST_F(SyncE2E, PopenChdirRoundTrip) { round_trip("popen//chdir=" + remote_.string()); }

TEST_F(SyncE2E, SshRoundTrip) {
  if (!g_sshd->skip_reason.empty()) GTEST_SKIP() << g_sshd->skip_reason;
  ASSERT_TRUE(g_sshd->up) << g_sshd->error;
  round_trip("ssh=" + g_sshd->ssh_value() + "//chdir=" + remote_.string());
}

TEST_F(SyncE2E, RunOverSshUsesTheSyncedCopyOncePerHost) {
  if (!g_sshd->skip_reason.empty()) GTEST_SKIP() << g_sshd->skip_reason;
  ASSERT_TRUE(g_sshd->up) << g_sshd->error;
  fs::create_directories(src_ / "bin");
  fs::copy_file(kPass, src_ / "bin/fx_pass_test");
  const std::string tx = "3*ssh=" + g_sshd->ssh_value() + "//chdir=" + remote_.string();
  const ProcResult r = dtest({"-v", "--tx", tx, "--rsyncdir", src_.string(), (src_ / "bin/fx_pass_test").string()},
                             {{"DTEST_DEBUG", "1"}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(count(r.err, " syncs 1 root(s)"), 1) << r.err;  // three gateways, one host and dir: one sync
  EXPECT_TRUE(contains(r.err, "collects [\"src/bin/fx_pass_test\"]")) << r.err;
  EXPECT_EQ(count(r.out, "PASSED"), 30) << r.out;
  EXPECT_TRUE(contains(r.out, "] rsync: 2 entries, 1 file(s) sent")) << r.out;
  struct stat st {};
  ASSERT_EQ(::stat((remote_ / "src/bin/fx_pass_test").c_str(), &st), 0);
  EXPECT_TRUE(st.st_mode & S_IXUSR);
}

TEST_F(SyncE2E, PopenWithoutChdirDoesNotSync) {
  fs::create_directories(src_ / "bin");
  fs::copy_file(kPass, src_ / "bin/fx_pass_test");
  const ProcResult r = dtest({"-n", "2", "--rsyncdir", src_.string(), (src_ / "bin/fx_pass_test").string()},
                             {{"DTEST_DEBUG", "1"}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_FALSE(contains(r.err, " syncs ")) << r.err;
  const ProcResult s = dtest({"sync", "--tx", "popen", src_.string()});
  EXPECT_EQ(s.exit_code, 0) << describe(s);
  EXPECT_TRUE(contains(s.out, "nothing to sync")) << s.out;
}

TEST_F(SyncE2E, SeveralPlacesSyncConcurrentlyFromOneScan) {
  make_tree();
  const fs::path r1 = tmp_ / "r1", r2 = tmp_ / "r2";
  const ProcResult r = dtest({"sync", "--tx", "popen//chdir=" + r1.string(), "--tx", "2*popen//chdir=" + r2.string(),
                              src_.string()});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(count(r.out, "files sent"), 2) << r.out;  // two places, the second one named twice
  EXPECT_EQ(describe_tree(src_, {".git", "pkg/__pycache__"}), describe_tree(r1 / "src"));
  EXPECT_EQ(describe_tree(r1 / "src"), describe_tree(r2 / "src"));
}

TEST_F(SyncE2E, AFailedSyncTakesOnlyThatPlaceOut) {
  fs::create_directories(src_ / "bin");
  fs::copy_file(kPass, src_ / "bin/fx_pass_test");
  put(src_ / "x", "a file here");
  // On the receiver "x" is a directory that keeps an ignored file: it cannot
  // be replaced by the file.
  put(remote_ / "src/x/keep.pyc", "ignored, left alone");
  const ProcResult r = dtest({"-v", "--tx", "popen//chdir=" + remote_.string(), "--tx", "popen", "--rsyncdir",
                              src_.string(), (src_ / "bin/fx_pass_test").string()});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(contains(r.out, "[gw0] gateway failed")) << r.out;
  EXPECT_TRUE(contains(r.out, "rsync failed: 'src': ")) << r.out;
  EXPECT_EQ(count(r.out, "[gw1] ["), 31) << r.out;  // every test ran on the other gateway (3 are disabled)
  EXPECT_EQ(read_file((remote_ / "src/x/keep.pyc").string()), "ignored, left alone");
}

TEST_F(SyncE2E, FilesChangingDuringTheScanDoNotBreakTheSync) {
  for (int i = 0; i < 2000; ++i) put(src_ / ("stable/f" + std::to_string(i)), std::to_string(i));
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    for (int i = 0; !stop; ++i) {
      const fs::path p = src_ / "churn" / ("c" + std::to_string(i % 50));
      std::error_code ec;
      if (i % 2) fs::remove(p, ec);
      else put(p, std::string(static_cast<std::size_t>(i % 5000), 'x'));
    }
  });
  const std::string tx = "popen//chdir=" + remote_.string();
  for (int k = 0; k < 3; ++k) {
    const ProcResult r = dtest({"sync", "--tx", tx, src_.string()});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
  }
  stop = true;
  churn.join();
  const ProcResult r = dtest({"sync", "--tx", tx, src_.string()});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(describe_tree(src_), describe_tree(remote_ / "src"));
}

TEST_F(SyncE2E, BadInputIsAUsageError) {
  ProcResult r = dtest({"sync", "--tx", "popen//chdir=" + remote_.string(), (tmp_ / "missing").string()});
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "not a directory")) << r.err;
  r = dtest({"sync", "--tx", "popen//chdir=" + remote_.string(), "--rsyncignore", "[abc", src_.string()});
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "[abc")) << r.err;
  fs::create_directories(tmp_ / "other" / "src");
  r = dtest({"--rsyncdir", src_.string(), "--rsyncdir", (tmp_ / "other/src").string(), kPass});
  EXPECT_EQ(r.exit_code, 4) << describe(r);
  EXPECT_TRUE(contains(r.err, "same name 'src'")) << r.err;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto* env = new SshdEnv;
  ::testing::AddGlobalTestEnvironment(env);
  g_sshd = &env->sshd;
  return RUN_ALL_TESTS();
}
