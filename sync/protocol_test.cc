// The sync protocol end to end in one process: the master's sync_roots()
// talking to the agent's Receiver through an in-memory link that encodes
// and decodes every message as on the wire. Real trees in temp dirs.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <deque>
#include <future>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include "common/frame.h"
#include "common/message.h"
#include "sync/ignore.h"
#include "sync/receiver.h"
#include "sync/sender.h"
#include "sync/tree.h"
#include "sync/wire.h"
#include "support/tree.h"

namespace dtest::sync {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void put(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary | std::ios::trunc) << data;
}

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

using dtest::testing::describe_tree;

class SyncProtocol : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dtest-sync-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    src_ = tmp_ / "proj";
    base_ = tmp_ / "remote";
    fs::create_directories(src_);
    fs::create_directories(base_);
    cache_ = (tmp_ / "cache").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  std::vector<std::string> ignore() const {
    auto v = IgnoreRules::defaults();
    v.insert(v.end(), extra_ignore_.begin(), extra_ignore_.end());
    return v;
  }

  // One sync of src_ into base_/proj through a fresh Receiver (a fresh agent).
  // `overlap`: the local scan is not done when the sync starts (a deferred
  // future), so the agent scans at the same time and answers with a digest.
  SyncStats sync(bool overlap = false) {
    std::shared_future<LocalRoots> roots = std::async(overlap ? std::launch::deferred : std::launch::async, [&] {
      return LocalRoots{std::make_shared<const LocalRoot>(scan_local_root(src_.string(), ignore(), cache_))};
    }).share();
    if (!overlap) roots.wait();
    std::deque<std::pair<Message, std::size_t>> to_master;
    Receiver recv([&](MsgKind k, nlohmann::json b) {
      Frame f = encode_message({k, std::move(b)});
      const std::size_t n = f.payload.size() + kFrameHeaderSize;
      to_master.emplace_back(decode_message(f), n);
    }, base_.string());
    SyncLink link;
    link.send = [&](const Message& m) {
      Frame f = encode_message(m);
      const std::size_t n = f.payload.size() + kFrameHeaderSize;
      recv.handle(decode_message(f));
      return n;
    };
    link.receive = [&](std::size_t& wire) {
      if (to_master.empty()) throw SyncError("nothing to receive: the receiver did not answer");
      auto [m, n] = std::move(to_master.front());
      to_master.pop_front();
      wire = n;
      return m;
    };
    auto st = sync_roots(link, {src_.string()}, roots, ignore());
    EXPECT_TRUE(to_master.empty()) << "the receiver sent more than was read";
    return st;
  }

  fs::path dst() const { return base_ / "proj"; }

  fs::path tmp_, src_, base_;
  std::string cache_;
  std::vector<std::string> extra_ignore_;
};

TEST_F(SyncProtocol, FirstSyncThenNoChangeIsOneRoundTrip) {
  put(src_ / "a.txt", "alpha");
  put(src_ / "d/e/f.txt", "deep");
  put(src_ / "empty", "");
  fs::create_directories(src_ / "emptydir");
  fs::create_symlink("../a.txt", src_ / "d/link");
  auto st = sync();
  EXPECT_EQ(st.whole_files, 3u);
  EXPECT_EQ(st.links, 1u);
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));

  st = sync();
  EXPECT_FALSE(st.changed());
  EXPECT_EQ(st.round_trips, 1u);
  EXPECT_EQ(st.whole_files, 0u);
}

TEST_F(SyncProtocol, OverlappedScansCostOneRoundTripWhenNothingChanged) {
  put(src_ / "a.txt", "alpha");
  put(src_ / "d/b.txt", "beta");
  auto st = sync(true);  // digests differ: the manifest is fetched
  EXPECT_EQ(st.whole_files, 2u);
  EXPECT_EQ(st.round_trips, 3u);  // digest, fetch, plan..done
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
  st = sync(true);
  EXPECT_FALSE(st.changed());
  EXPECT_EQ(st.round_trips, 1u);
  put(src_ / "d/b.txt", "beta 2");
  st = sync(true);
  EXPECT_EQ(st.whole_files, 1u);
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
}

TEST_F(SyncProtocol, ModifyAddDeleteChmodTypeChanges) {
  put(src_ / "keep.txt", "same");
  put(src_ / "mod.txt", "before");
  put(src_ / "gone.txt", "bye");
  put(src_ / "tool.sh", "#!/bin/sh\n");
  put(src_ / "becomes_dir", "file now");
  put(src_ / "dir_becomes_file/x", "x");
  fs::create_symlink("keep.txt", src_ / "link_becomes_file");
  sync();
  put(src_ / "mod.txt", "after, longer");
  fs::remove(src_ / "gone.txt");
  put(src_ / "new/nested/n.txt", "new");
  fs::permissions(src_ / "tool.sh", fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  fs::remove(src_ / "becomes_dir");
  put(src_ / "becomes_dir/inner", "inner");
  fs::remove_all(src_ / "dir_becomes_file");
  put(src_ / "dir_becomes_file", "a file");
  fs::remove(src_ / "link_becomes_file");
  put(src_ / "link_becomes_file", "real");
  // An extra file on the receiver is deleted.
  put(dst() / "extra.txt", "not in the source");
  const auto st = sync();
  EXPECT_GE(st.deleted, 4u);  // gone.txt, extra.txt, becomes_dir (file), dir_becomes_file/x + dir, link
  EXPECT_EQ(st.meta, 1u);     // tool.sh: exec bit only
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
  EXPECT_TRUE(sync().round_trips == 1);
}

TEST_F(SyncProtocol, MtimeOnlyChangeIsMetadataNotData) {
  put(src_ / "t.txt", "content");
  sync();
  const auto t = fs::last_write_time(src_ / "t.txt");
  fs::last_write_time(src_ / "t.txt", t - std::chrono::hours(5));
  const auto st = sync();
  EXPECT_EQ(st.whole_files, 0u);
  EXPECT_EQ(st.meta, 1u);
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
}

TEST_F(SyncProtocol, LargeFileChangedInTheMiddleGoesAsDelta) {
  std::string big = random_bytes(3 << 20, 1);
  put(src_ / "big.bin", big);
  sync();
  for (std::size_t i = 0; i < 1024; ++i) big[(3 << 19) + i] ^= 0x5A;
  put(src_ / "big.bin", big);
  const auto st = sync();
  EXPECT_EQ(st.delta_files, 1u);
  EXPECT_EQ(st.whole_files, 0u);
  EXPECT_LT(st.bytes_out, 64u << 10) << "a 1 KiB change should not resend much of a 3 MiB file";
  EXPECT_EQ(slurp(dst() / "big.bin"), big);
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
}

TEST_F(SyncProtocol, LargeNewFileIsChunkedAcrossBundles) {
  const std::string big = random_bytes((9 << 20) + 77, 2);
  put(src_ / "huge.bin", big);
  const auto st = sync();
  EXPECT_EQ(st.whole_files, 1u);
  EXPECT_EQ(slurp(dst() / "huge.bin"), big);
}

TEST_F(SyncProtocol, SymlinksAreNeverFollowed) {
  const fs::path outside = tmp_ / "outside";
  put(outside / "secret", "outside data");
  fs::create_symlink(outside, src_ / "out_dir_link");
  fs::create_symlink(outside / "secret", src_ / "out_file_link");
  fs::create_symlink("does/not/exist", src_ / "dangling");
  sync();
  EXPECT_TRUE(fs::is_symlink(dst() / "out_dir_link"));
  EXPECT_EQ(fs::read_symlink(dst() / "out_dir_link"), outside);
  EXPECT_EQ(fs::read_symlink(dst() / "dangling"), "does/not/exist");
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
  // Nothing was written into the link's target.
  EXPECT_EQ(describe_tree(outside).size(), 1u);
}

TEST_F(SyncProtocol, UnicodeAndSpaces) {
  put(src_ / "with space/file name.txt", "s");
  put(src_ / "\xC3\xBCn\xC3\xAF c\xC3\xB8" "d\xC3\xA9 \xE2\x9C\x93.txt", "u");
  sync();
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
}

TEST_F(SyncProtocol, IgnoredFilesAreNotSentAndLeftAloneOnTheReceiver) {
  extra_ignore_ = {"build/", "*.log"};
  put(src_ / "src/a.cc", "a");
  put(src_ / "build/out.o", "obj");
  put(src_ / "x.log", "log");
  put(src_ / ".git/HEAD", "ref");
  put(src_ / "__pycache__/m.pyc", "pyc");
  // Already on the receiver and ignored: kept.
  put(dst() / "build/cache.bin", "receiver's own");
  put(dst() / "run.log", "receiver's log");
  sync();
  EXPECT_TRUE(fs::exists(dst() / "src/a.cc"));
  EXPECT_FALSE(fs::exists(dst() / "build/out.o"));
  EXPECT_FALSE(fs::exists(dst() / "x.log"));
  EXPECT_FALSE(fs::exists(dst() / ".git"));
  EXPECT_FALSE(fs::exists(dst() / "__pycache__"));
  EXPECT_EQ(slurp(dst() / "build/cache.bin"), "receiver's own");
  EXPECT_EQ(slurp(dst() / "run.log"), "receiver's log");
  EXPECT_EQ(sync().round_trips, 1u);
}

TEST_F(SyncProtocol, ReceiverSideTamperingIsRepaired) {
  put(src_ / "a.txt", "original");
  put(src_ / "b.txt", "b");
  sync();
  put(dst() / "a.txt", "tampered");  // same run: the receiver's scan notices
  fs::remove(dst() / "b.txt");
  const auto st = sync();
  EXPECT_EQ(st.whole_files, 2u);
  EXPECT_EQ(describe_tree(src_), describe_tree(dst()));
}

// ---------------------------------------------------------------------------
// A hostile master: paths that try to leave the root.

class HostileMaster : public SyncProtocol {
 protected:
  void SetUp() override {
    SyncProtocol::SetUp();
    outside_ = tmp_ / "outside";
    put(outside_ / "victim.txt", "precious");
    recv_ = std::make_unique<Receiver>(
        [this](MsgKind k, nlohmann::json b) { replies_.push_back(Message{k, std::move(b)}); }, base_.string());
  }
  void send(MsgKind k, nlohmann::json body) { recv_->handle(decode_message(encode_message({k, std::move(body)}))); }
  void begin(const std::string& name) {
    send(MsgKind::sync_begin, {{"sync", 1}, {"name", name}, {"ignore", nlohmann::json::array()},
                               {"digest", nlohmann::json::binary(std::vector<std::uint8_t>(16, 0))}});
  }
  nlohmann::json end_errors() {
    send(MsgKind::sync_end, {{"sync", 1}, {"digest", nlohmann::json::binary(std::vector<std::uint8_t>(16, 0))}});
    EXPECT_EQ(replies_.back().kind, MsgKind::sync_done);
    return replies_.back().body["errors"];
  }
  void expect_outside_untouched() {
    EXPECT_EQ(slurp(outside_ / "victim.txt"), "precious");
    EXPECT_EQ(describe_tree(outside_).size(), 1u);
  }
  fs::path outside_;
  std::vector<Message> replies_;
  std::unique_ptr<Receiver> recv_;
};

TEST_F(HostileMaster, BadRootNamesAreRefused) {
  for (const std::string name : {"..", ".", "a/b", "", ".dtest-sync", "../outside"}) {
    replies_.clear();
    begin(name);
    ASSERT_EQ(replies_.size(), 1u);
    EXPECT_EQ(replies_[0].kind, MsgKind::sync_state);
    EXPECT_TRUE(replies_[0].body.contains("error")) << name;
  }
  expect_outside_untouched();
}

TEST_F(HostileMaster, PlanPathsOutsideTheRootAreRefused) {
  fs::create_directories(base_ / "proj");
  fs::create_symlink(outside_, base_ / "proj" / "lnk");
  begin("proj");
  send(MsgKind::sync_plan, {{"sync", 1},
                            {"delete", {"../outside/victim.txt", "/etc/passwd", "lnk/victim.txt"}},
                            {"dirs", {"lnk/newdir", "a/../../x"}},
                            {"links", {{"lnk/l2", "/etc", 0}}},
                            {"meta", {{"lnk/victim.txt", true, 0}}},
                            {"sigs", nlohmann::json::array()}});
  const auto errors = end_errors();
  EXPECT_GE(errors.size(), 7u) << errors.dump();
  expect_outside_untouched();
}

TEST_F(HostileMaster, DataThroughASymlinkIsRefused) {
  fs::create_directories(base_ / "proj");
  fs::create_symlink(outside_, base_ / "proj" / "lnk");
  begin("proj");
  send(MsgKind::sync_plan, {{"sync", 1}, {"delete", nlohmann::json::array()}, {"dirs", nlohmann::json::array()},
                            {"links", nlohmann::json::array()}, {"meta", nlohmann::json::array()},
                            {"sigs", nlohmann::json::array()}});
  std::string bundle;
  Record r;
  r.path = "lnk/victim.txt";
  r.first = r.last = true;
  r.data = "overwritten";
  r.size = r.data.size();
  r.hash = hash_bytes(r.data);
  append_record(bundle, r);
  send(MsgKind::sync_data, {{"sync", 1}, {"data", nlohmann::json::binary(std::vector<std::uint8_t>(bundle.begin(), bundle.end()))}});
  const auto errors = end_errors();
  EXPECT_EQ(errors.size(), 1u) << errors.dump();
  expect_outside_untouched();
}

TEST_F(HostileMaster, MalformedRecordPathsAreProtocolErrors) {
  begin("proj");
  for (const std::string bad : {"../x", "/abs", "a//b", "a/./b"}) {
    std::string bundle;
    Record r;
    r.path = bad;
    r.first = r.last = true;
    append_record(bundle, r);
    EXPECT_THROW(send(MsgKind::sync_data, {{"sync", 1}, {"data", nlohmann::json::binary(std::vector<std::uint8_t>(
                                                                    bundle.begin(), bundle.end()))}}),
                 ProtocolError)
        << bad;
  }
  expect_outside_untouched();
}

TEST_F(HostileMaster, WrongHashIsNotInstalled) {
  put(base_ / "proj/f.txt", "good");
  begin("proj");
  send(MsgKind::sync_plan, {{"sync", 1}, {"delete", nlohmann::json::array()}, {"dirs", nlohmann::json::array()},
                            {"links", nlohmann::json::array()}, {"meta", nlohmann::json::array()},
                            {"sigs", nlohmann::json::array()}});
  std::string bundle;
  Record r;
  r.path = "f.txt";
  r.first = r.last = true;
  r.data = "evil";
  r.size = 4;
  r.hash = hash_bytes("something else");
  append_record(bundle, r);
  send(MsgKind::sync_data, {{"sync", 1}, {"data", nlohmann::json::binary(std::vector<std::uint8_t>(bundle.begin(), bundle.end()))}});
  EXPECT_EQ(end_errors().size(), 1u);
  EXPECT_EQ(slurp(base_ / "proj/f.txt"), "good");
}

TEST_F(HostileMaster, MessagesForUnknownSyncsAreProtocolErrors) {
  EXPECT_THROW(send(MsgKind::sync_end, {{"sync", 7}, {"digest", nlohmann::json::binary(std::vector<std::uint8_t>(16, 0))}}),
               ProtocolError);
}

}  // namespace
}  // namespace dtest::sync
