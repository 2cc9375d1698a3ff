#include "sync/receiver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <set>

#include "sync/delta.h"
#include "sync/ignore.h"
#include "sync/safe_fs.h"
#include "sync/tree.h"
#include "sync/watch.h"
#include "sync/wire.h"

namespace dtest::sync {

namespace {

constexpr std::size_t kMaxErrors = 20;
constexpr std::size_t kSigBundle = 4 << 20;
// What one record may claim as a file's size (the frame limit bounds what
// arrives; this bounds what a peer can make us write).
constexpr std::uint64_t kMaxFileSize = std::uint64_t{1} << 40;

Hash128 to_hash(std::string_view b, const char* what) {
  if (b.size() != 16) throw ProtocolError(std::string(what) + ": digest is not 16 bytes");
  Hash128 h{};
  std::memcpy(h.data(), b.data(), 16);
  return h;
}

nlohmann::json bin(std::string_view s) {
  return nlohmann::json::binary(std::vector<std::uint8_t>(s.begin(), s.end()));
}

std::string check_name(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name == ".dtest-sync" ||
      name.find('/') != std::string::npos || name.find('\0') != std::string::npos)
    return "bad root name '" + name + "'";
  return {};
}

const nlohmann::json& list_field(const Message& m, const char* name) {
  const auto& v = field(m, name);
  if (!v.is_array())
    throw ProtocolError(std::string(to_string(m.kind)) + " message: field '" + name + "' is not a list");
  return v;
}

std::string str_at(const nlohmann::json& v, const char* what) {
  if (!v.is_string()) throw ProtocolError(std::string(what) + ": an entry is not a string");
  return v.get<std::string>();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  std::size_t off = 0;
  bool ok = true;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    off += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

}  // namespace

struct Receiver::Root {
  std::string name;
  std::string dest;
  std::string cache_path;
  IgnoreRules ignore;
  std::unique_ptr<SafeRoot> safe;
  std::map<std::string, Entry> entries;  // the receiver's tree as the sync changes it
  std::set<std::string> changed;         // written this sync: their inode/ctime are refreshed at the end
  std::map<std::string, std::uint32_t> block_size;  // files whose signature was sent
  std::vector<std::string> errors;
  std::vector<std::string> retry;
  bool fetchable = false;  // its manifest was not sent yet (sync_fetch sends it)
  // The file being received.
  std::string cur_path;
  bool cur_skip = false;
  RecordKind cur_kind = RecordKind::file;
  SafeRoot::Basis basis;
  std::unique_ptr<SafeRoot::Writer> writer;
  std::unique_ptr<DeltaApplier> applier;

  void error(const std::string& e) {
    if (errors.size() < kMaxErrors) errors.push_back(e);
  }
  void drop_current() {
    applier.reset();
    writer.reset();
    basis = SafeRoot::Basis();
    cur_path.clear();
    cur_skip = false;
  }
};

Receiver::Receiver(Send send, std::string base_dir, WatchOptions watch)
    : send_(std::move(send)), base_(std::move(base_dir)), watch_(std::move(watch)) {}
Receiver::~Receiver() = default;

void Receiver::handle(const Message& m) {
  if (m.kind == MsgKind::sync_begin) return begin(m);
  const std::int64_t id = get_int(m, "sync");
  auto it = roots_.find(id);
  if (it == roots_.end())
    throw ProtocolError(std::string(to_string(m.kind)) + " message for sync " + std::to_string(id) +
                        ", which is not in progress");
  Root& r = *it->second;
  switch (m.kind) {
    case MsgKind::sync_plan: return plan(r, m);
    case MsgKind::sync_data: return data(r, m);
    case MsgKind::sync_fetch: {
      if (!r.fetchable) throw ProtocolError("sync_fetch for sync " + std::to_string(id) + ": already sent");
      r.fetchable = false;
      Manifest mf;
      mf.entries.reserve(r.entries.size());
      for (const auto& [p, e] : r.entries) mf.entries.push_back(e);
      send_(MsgKind::sync_state, {{"sync", id}, {"current", false}, {"manifest", bin(encode_manifest(mf))}});
      return;
    }
    case MsgKind::sync_end:
      if (auto c = m.body.find("current"); c != m.body.end() && c->is_boolean() && c->get<bool>()) {
        roots_.erase(id);  // the digests matched: nothing to do, nothing to say
        return;
      }
      return end(r, id, m);
    default:
      throw ProtocolError("unexpected " + std::string(to_string(m.kind)) + " message from the master");
  }
}

void Receiver::begin(const Message& m) {
  const std::int64_t id = get_int(m, "sync");
  const std::string name = get_string(m, "name");
  // Without the sender's digest (it is still scanning), answer with ours and
  // wait for sync_fetch or sync_end.
  std::optional<Hash128> digest;
  if (m.body.contains("digest")) digest = to_hash(get_bytes(m, "digest"), "sync_begin message");
  std::vector<std::string> patterns;
  for (const auto& p : list_field(m, "ignore")) patterns.push_back(str_at(p, "sync_begin ignore list"));
  auto fail = [&](const std::string& why) {
    send_(MsgKind::sync_state, {{"sync", id}, {"current", false}, {"error", why}});
  };
  if (auto why = check_name(name); !why.empty()) return fail(why);
  auto r = std::make_unique<Root>();
  r->name = name;
  r->dest = base_ + "/" + name;
  r->cache_path = base_ + "/.dtest-sync/" + name + ".cache";
  try {
    r->ignore = IgnoreRules(patterns);
  } catch (const std::invalid_argument& e) {
    return fail(e.what());
  }
  ScanResult scan;
  try {
    r->safe = std::make_unique<SafeRoot>(r->dest);
    ScanOptions so;
    so.ignore = &r->ignore;
    so.cache_path = r->cache_path;
    ::mkdir((base_ + "/.dtest-sync").c_str(), 0755);
    scan = scan_tree_watched(r->dest, so, patterns, watch_).scan;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  const Hash128 mine = scan.manifest.digest();
  if (!digest) {
    send_(MsgKind::sync_state, {{"sync", id},
                                {"current", false},
                                {"digest", nlohmann::json::binary(std::vector<std::uint8_t>(mine.begin(), mine.end()))}});
    r->fetchable = true;
  } else if (mine == *digest) {
    send_(MsgKind::sync_state, {{"sync", id}, {"current", true}});
    return;
  } else {
    send_(MsgKind::sync_state,
          {{"sync", id}, {"current", false}, {"manifest", bin(encode_manifest(scan.manifest))}});
  }
  for (auto& e : scan.manifest.entries) {
    std::string p = e.path;
    r->entries.emplace(std::move(p), std::move(e));
  }
  roots_[id] = std::move(r);
}

void Receiver::plan(Root& r, const Message& m) {
  const std::int64_t id = get_int(m, "sync");
  for (const auto& v : list_field(m, "delete")) {
    const std::string p = str_at(v, "sync_plan delete list");
    try {
      if (r.safe->remove(p)) r.entries.erase(p);
    } catch (const SyncError& e) {
      r.error(e.what());
    }
  }
  for (const auto& v : list_field(m, "dirs")) {
    const std::string p = str_at(v, "sync_plan dirs list");
    try {
      r.safe->make_dir(p);
      Entry e;
      e.path = p;
      e.type = EntryType::dir;
      r.entries[p] = e;
    } catch (const SyncError& e) {
      r.error(e.what());
    }
  }
  for (const auto& v : list_field(m, "links")) {
    if (!v.is_array() || v.size() != 3 || !v[0].is_string() || !v[1].is_string() || !v[2].is_number_integer())
      throw ProtocolError("sync_plan message: a link is not [path, target, mtime]");
    const std::string p = v[0].get<std::string>(), target = v[1].get<std::string>();
    const std::int64_t mtime = v[2].get<std::int64_t>();
    try {
      r.safe->make_symlink(p, target, mtime);
      Entry e;
      e.path = p;
      e.type = EntryType::symlink;
      e.size = target.size();
      e.mtime_ns = mtime;
      e.target = target;
      r.entries[p] = e;
      r.changed.insert(p);
    } catch (const SyncError& e) {
      r.error(e.what());
    }
  }
  for (const auto& v : list_field(m, "meta")) {
    if (!v.is_array() || v.size() != 3 || !v[0].is_string() || !v[1].is_boolean() || !v[2].is_number_integer())
      throw ProtocolError("sync_plan message: a meta entry is not [path, exec, mtime]");
    const std::string p = v[0].get<std::string>();
    const bool exec = v[1].get<bool>();
    const std::int64_t mtime = v[2].get<std::int64_t>();
    try {
      r.safe->set_meta(p, exec, mtime);
      if (auto it = r.entries.find(p); it != r.entries.end()) {
        it->second.exec = exec;
        it->second.mtime_ns = mtime;
      }
      r.changed.insert(p);
    } catch (const SyncError& e) {
      r.error(e.what());
    }
  }
  std::string sigs;
  auto flush = [&](bool last) {
    send_(MsgKind::sync_sigs, {{"sync", id}, {"data", bin(sigs)}, {"last", last}});
    sigs.clear();
  };
  const auto& want = list_field(m, "sigs");
  for (const auto& v : want) {
    const std::string p = str_at(v, "sync_plan sigs list");
    std::string enc;
    try {
      auto it = r.entries.find(p);
      if (it == r.entries.end() || it->second.type != EntryType::file)
        throw SyncError("sync: '" + p + "' is not a file here, no signature to give");
      auto basis = r.safe->open_basis(p);
      const Signature sig = make_signature(basis.data());
      r.block_size[p] = sig.block_size;
      enc = encode_signature(sig);
    } catch (const SyncError& e) {
      r.error(e.what());
      enc.clear();  // an empty signature: the sender sends the whole file
    }
    append_sig(sigs, p, enc);
    if (sigs.size() >= kSigBundle) flush(false);
  }
  if (!want.empty()) flush(true);
}

void Receiver::data(Root& r, const Message& m) {
  std::vector<Record> recs;
  try {
    recs = parse_records(get_bytes(m, "data"));
  } catch (const SyncError& e) {
    throw ProtocolError(e.what());
  }
  for (const auto& rec : recs) {
    if (rec.first) {
      if (!r.cur_path.empty()) {
        r.error("sync: '" + r.cur_path + "' was not finished before the next file began");
        r.drop_current();
      }
      r.cur_path = std::string(rec.path);
      r.cur_kind = rec.kind;
      try {
        if (rec.size > kMaxFileSize) throw SyncError("sync: '" + r.cur_path + "' claims an absurd size");
        r.writer = r.safe->create(rec.path, rec.size);
        if (rec.kind == RecordKind::delta) {
          auto bs = r.block_size.find(r.cur_path);
          if (bs == r.block_size.end())
            throw SyncError("sync: a delta for '" + r.cur_path + "', whose signature was not asked for");
          r.basis = r.safe->open_basis(rec.path);
          auto* w = r.writer.get();
          const std::string_view base = r.basis.data();
          const int base_fd = r.basis.fd();
          // Copies of basis blocks arrive as views into the mapping: those
          // are copied in the kernel; literals are written.
          r.applier = std::make_unique<DeltaApplier>(
              base, bs->second,
              [w, base, base_fd](std::string_view piece) {
                if (!base.empty() && piece.data() >= base.data() && piece.data() < base.data() + base.size())
                  w->copy_from(base_fd, static_cast<std::uint64_t>(piece.data() - base.data()), piece);
                else
                  w->write(piece);
              },
              rec.size);
        }
      } catch (const std::exception& e) {
        r.error(e.what());
        r.writer.reset();
        r.applier.reset();
        r.cur_skip = true;
      }
    } else if (rec.path != r.cur_path || rec.kind != r.cur_kind) {
      throw ProtocolError("sync_data: a continuation record for '" + std::string(rec.path) +
                          "' while receiving '" + r.cur_path + "'");
    }
    if (r.cur_skip) {
      if (rec.last) r.drop_current();
      continue;
    }
    try {
      if (r.applier)
        r.applier->feed(rec.data);
      else
        r.writer->write(rec.data);
      if (rec.last) {
        if (r.applier) r.applier->finish();
        const std::uint64_t size = r.writer->size();
        r.writer->commit(rec.hash, rec.exec, rec.mtime_ns);
        Entry e;
        e.path = r.cur_path;
        e.type = EntryType::file;
        e.exec = rec.exec;
        e.size = size;
        e.mtime_ns = rec.mtime_ns;
        e.hash = rec.hash;
        r.entries[r.cur_path] = e;
        r.changed.insert(r.cur_path);
        r.drop_current();
      }
    } catch (const std::exception& e) {
      // A delta that does not rebuild the announced file (a block-hash
      // collision, a basis changed under us) is asked for whole.
      if (r.cur_kind == RecordKind::delta)
        r.retry.push_back(r.cur_path);
      else
        r.error(e.what());
      r.writer.reset();
      r.applier.reset();
      r.cur_skip = true;
      if (rec.last) r.drop_current();
    }
  }
}

void Receiver::end(Root& r, std::int64_t id, const Message& m) {
  const Hash128 digest = to_hash(get_bytes(m, "digest"), "sync_end message");
  if (!r.cur_path.empty()) {
    r.error("sync: '" + r.cur_path + "' was not finished");
    r.drop_current();
  }
  // Refresh the stat-cache fields of what this sync wrote (we know their
  // contents: we checked the hashes) and merge into the cache the scan wrote.
  Manifest now;
  now.entries.reserve(r.entries.size());
  for (auto& [p, e] : r.entries) {
    if (r.changed.count(p)) {
      struct stat st {};
      if (::fstatat(AT_FDCWD, (r.dest + "/" + p).c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
        e.ino = st.st_ino;
        e.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
      }
    }
    now.entries.push_back(e);
  }
  const bool match = now.digest() == digest;
  if (r.retry.empty()) {
    // Entries the scan marked untrustworthy (racy) stay so: take the cache
    // file's view of untouched entries.
    Manifest cached;
    try {
      std::string bytes;
      if (FILE* f = std::fopen(r.cache_path.c_str(), "rb")) {
        char buf[65536];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
        std::fclose(f);
      }
      if (!bytes.empty()) cached = decode_manifest(bytes, true);
    } catch (const SyncError&) {
      cached.entries.clear();
    }
    for (auto& e : now.entries) {
      if (r.changed.count(e.path)) continue;
      const Entry* c = cached.find(e.path);
      if (c) {
        e.ino = c->ino;
        e.ctime_ns = c->ctime_ns;
      } else {
        e.ctime_ns = 0;  // unknown: hash again next time
      }
    }
    ::mkdir((base_ + "/.dtest-sync").c_str(), 0755);
    write_file_atomic(r.cache_path, encode_manifest(now, true));
  }
  nlohmann::json retry = r.retry, errors = r.errors;
  const bool again = !r.retry.empty();
  send_(MsgKind::sync_done,
        {{"sync", id}, {"ok", r.errors.empty()}, {"match", match}, {"retry", retry}, {"errors", errors}});
  if (again) {
    for (const auto& p : r.retry) r.block_size.erase(p);
    r.retry.clear();
  } else {
    roots_.erase(id);
  }
}

}  // namespace dtest::sync
