#include "sync/sender.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "sync/delta.h"
#include "sync/ignore.h"
#include "sync/wire.h"

namespace dtest::sync {

namespace {

constexpr std::size_t kBundle = 4 << 20;     // raw bytes per sync_data frame
constexpr std::size_t kChunk = 1 << 20;      // bytes of one file per record
constexpr std::uint64_t kDeltaMin = 32 << 10;  // smaller changed files go whole

nlohmann::json bin(const std::string& s) {
  return nlohmann::json::binary(std::vector<std::uint8_t>(s.begin(), s.end()));
}

std::int64_t ns(const timespec& t) { return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec; }

Hash128 canonical(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  Hash128 out{};
  std::memcpy(out.data(), c.digest, 16);
  return out;
}

// A read-only mapping of a local file (the new version a delta describes).
class Mapped {
 public:
  Mapped(const std::string& path, struct stat& st) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd_ < 0) return;
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      return;
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (map_ == MAP_FAILED) {
        map_ = nullptr;
        ::close(fd_);
        fd_ = -1;
      }
    }
  }
  ~Mapped() {
    if (map_) ::munmap(map_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  bool ok() const { return fd_ >= 0; }
  std::string_view data() const { return map_ ? std::string_view(static_cast<const char*>(map_), size_) : ""; }

 private:
  int fd_ = -1;
  void* map_ = nullptr;
  std::size_t size_ = 0;
};

struct Plan {
  nlohmann::json del = nlohmann::json::array(), dirs = nlohmann::json::array(),
                 links = nlohmann::json::array(), meta = nlohmann::json::array(),
                 sigs = nlohmann::json::array();
  std::vector<std::string> whole;
};

Plan make_plan(const Manifest& local, const Manifest& remote, SyncStats& st) {
  Plan p;
  std::vector<std::string> deletes;
  const auto& L = local.entries;
  const auto& R = remote.entries;
  std::size_t i = 0, j = 0;
  auto create = [&](const Entry& e) {
    switch (e.type) {
      case EntryType::dir:
        p.dirs.push_back(e.path);
        ++st.dirs;
        break;
      case EntryType::symlink:
        p.links.push_back({e.path, e.target, e.mtime_ns});
        ++st.links;
        break;
      case EntryType::file:
        p.whole.push_back(e.path);
        break;
    }
  };
  while (i < L.size() || j < R.size()) {
    if (j == R.size() || (i < L.size() && L[i].path < R[j].path)) {
      create(L[i++]);
    } else if (i == L.size() || R[j].path < L[i].path) {
      deletes.push_back(R[j++].path);
    } else {
      const Entry& l = L[i++];
      const Entry& r = R[j++];
      if (l.type != r.type) {
        deletes.push_back(r.path);
        create(l);
        continue;
      }
      if (l.type == EntryType::symlink) {
        if (l.target != r.target || l.mtime_ns != r.mtime_ns) create(l);
      } else if (l.type == EntryType::file) {
        if (l.hash != r.hash) {
          if (l.size >= kDeltaMin && r.size >= kDeltaMin)
            p.sigs.push_back(l.path);
          else
            p.whole.push_back(l.path);
        } else if (l.exec != r.exec || l.mtime_ns != r.mtime_ns) {
          p.meta.push_back({l.path, l.exec, l.mtime_ns});
          ++st.meta;
        }
      }
    }
  }
  // Children before their directories.
  for (auto it = deletes.rbegin(); it != deletes.rend(); ++it) p.del.push_back(*it);
  st.deleted += deletes.size();
  return p;
}

class Session {
 public:
  Session(SyncLink& link, SyncStats& st) : link_(link), st_(st) {}

  void send(MsgKind k, nlohmann::json body) { st_.bytes_out += link_.send(Message{k, std::move(body)}); }

  // The next message for sync `id`; others are kept for their turn.
  Message receive(std::int64_t id, MsgKind want) {
    auto& q = stash_[id];
    Message m;
    if (!q.empty()) {
      m = std::move(q.front());
      q.pop_front();
    } else {
      for (;;) {
        std::size_t wire = 0;
        m = link_.receive(wire);
        st_.bytes_in += wire;
        const std::int64_t got = get_int(m, "sync");
        if (got == id) break;
        stash_[got].push_back(std::move(m));
      }
    }
    if (m.kind != want)
      throw ProtocolError("expected " + std::string(to_string(want)) + " for a sync, got " +
                          std::string(to_string(m.kind)));
    return m;
  }

  // Whole files and deltas, bundled.
  void add(const Record& r) {
    append_record(buf_, r);
    if (buf_.size() >= kBundle) flush();
  }
  void flush() {
    if (buf_.empty()) return;
    send(MsgKind::sync_data, {{"sync", id_}, {"data", bin(buf_)}});
    buf_.clear();
  }
  void set_id(std::int64_t id) { id_ = id; }

  void send_whole(const LocalRoot& root, const std::string& path) {
    const std::string full = root.path + "/" + path;
    const int fd = ::open(full.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat s {};
    if (fd < 0 || ::fstat(fd, &s) != 0 || !S_ISREG(s.st_mode)) {
      st_.warnings.push_back(root.name + "/" + path + ": " + (fd < 0 ? std::strerror(errno) : "no longer a file") +
                             " (changed during the sync; not sent)");
      if (fd >= 0) ::close(fd);
      return;
    }
    XXH3_state_t hs;
    XXH3_128bits_reset(&hs);
    const std::uint64_t size = static_cast<std::uint64_t>(s.st_size);
    std::uint64_t off = 0;
    bool first = true;
    chunk_.resize(kChunk);
    for (;;) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, size - off));
      ssize_t n = 0;
      if (want > 0) {
        n = ::read(fd, chunk_.data(), want);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) n = 0;  // an I/O error ends the file; its hash will not match the manifest's
      }
      off += static_cast<std::uint64_t>(n);
      XXH3_128bits_update(&hs, chunk_.data(), static_cast<std::size_t>(n));
      const bool last = n == 0 || off >= size;
      Record r;
      r.kind = RecordKind::file;
      r.path = path;
      r.exec = (s.st_mode & 0111) != 0;
      r.first = first;
      r.last = last;
      r.size = size;
      r.mtime_ns = ns(s.st_mtim);
      if (last) r.hash = canonical(XXH3_128bits_digest(&hs));
      r.data = std::string_view(chunk_.data(), static_cast<std::size_t>(n));
      add(r);
      first = false;
      if (last) break;
    }
    ::close(fd);
    ++st_.whole_files;
    st_.file_bytes += off;
  }

  void send_delta(const LocalRoot& root, const std::string& path, const Signature& sig) {
    struct stat s {};
    Mapped m(root.path + "/" + path, s);
    if (!m.ok()) {
      st_.warnings.push_back(root.name + "/" + path + ": changed during the sync; not sent");
      return;
    }
    const auto data = m.data();
    Record r;
    r.kind = RecordKind::delta;
    r.path = path;
    r.exec = (s.st_mode & 0111) != 0;
    r.size = data.size();
    r.mtime_ns = ns(s.st_mtim);
    // The scan hashed it; unless it changed since, do not hash 100 MB again.
    const Entry* e = root.manifest.find(path);
    if (e && e->type == EntryType::file && e->size == data.size() && e->mtime_ns == ns(s.st_mtim) &&
        e->ino == static_cast<std::uint64_t>(s.st_ino) && e->ctime_ns == ns(s.st_ctim))
      r.hash = e->hash;
    else
      r.hash = hash_bytes(data);
    // Hold each piece back one step so the last one can carry `last`.
    std::string held;
    bool have = false, first = true;
    make_delta(sig, data, [&](std::string_view piece) {
      if (have) {
        Record c = r;
        c.first = first;
        c.data = held;
        add(c);
        first = false;
      }
      held.assign(piece);
      have = true;
    }, kChunk);
    Record c = r;
    c.first = first;
    c.last = true;
    c.data = have ? std::string_view(held) : std::string_view();
    add(c);
    ++st_.delta_files;
    st_.file_bytes += data.size();
  }

 private:
  SyncLink& link_;
  SyncStats& st_;
  std::map<std::int64_t, std::deque<Message>> stash_;
  std::string buf_;
  std::vector<char> chunk_;
  std::int64_t id_ = 0;
};

std::string join_errors(const nlohmann::json& errors) {
  std::string out;
  for (const auto& e : errors) {
    if (!out.empty()) out += "\n";
    out += e.is_string() ? e.get<std::string>() : e.dump();
  }
  return out;
}

}  // namespace

std::string root_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

LocalRoot scan_local_root(const std::string& path, const std::vector<std::string>& ignore,
                          const std::string& cache_dir, const WatchOptions& watch) {
  const auto t0 = std::chrono::steady_clock::now();
  LocalRoot root;
  root.path = path;
  root.name = root_name(path);
  IgnoreRules rules(ignore);
  ScanOptions so;
  so.ignore = &rules;
  if (!cache_dir.empty()) {
    std::string key = path;
    for (const auto& p : ignore) key += '\0' + p;
    char name[40];
    std::snprintf(name, sizeof name, "%016llx.cache",
                  static_cast<unsigned long long>(XXH3_64bits(key.data(), key.size())));
    so.cache_path = cache_dir + "/" + name;
  }
  WatchedScan ws = so.cache_path.empty() ? WatchedScan{scan_tree(path, so), false}
                                         : scan_tree_watched(path, so, ignore, watch);
  ScanResult& r = ws.scan;
  root.from_watcher = ws.from_watcher;
  root.manifest = std::move(r.manifest);
  root.digest = root.manifest.digest();
  root.warnings = std::move(r.warnings);
  root.hashed_files = r.hashed_files;
  root.scan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return root;
}

SyncStats sync_roots(SyncLink& link, const LocalRoots& roots, const std::vector<std::string>& ignore) {
  std::promise<LocalRoots> p;
  p.set_value(roots);
  std::vector<std::string> paths;
  for (const auto& r : roots) paths.push_back(r->path);
  return sync_roots(link, paths, p.get_future().share(), ignore);
}

SyncStats sync_roots(SyncLink& link, const std::vector<std::string>& paths,
                     const std::shared_future<LocalRoots>& scanned, const std::vector<std::string>& ignore) {
  SyncStats st;
  Session s(link, st);
  nlohmann::json ign = ignore;
  auto bin16 = [](const Hash128& h) { return nlohmann::json::binary(std::vector<std::uint8_t>(h.begin(), h.end())); };
  // The local scan done already: send our digests (the agent answers
  // "current" or its manifest). Still scanning: let the agent scan too.
  const bool have_digests = scanned.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  for (std::size_t k = 0; k < paths.size(); ++k) {
    nlohmann::json begin = {{"sync", static_cast<std::int64_t>(k + 1)}, {"name", root_name(paths[k])}, {"ignore", ign}};
    if (have_digests) begin["digest"] = bin16(scanned.get()[k]->digest);
    s.send(MsgKind::sync_begin, std::move(begin));
  }
  const LocalRoots& roots = scanned.get();
  if (roots.size() != paths.size()) throw SyncError("internal: scanned roots do not match the paths");
  st.round_trips = roots.empty() ? 0 : 1;
  for (std::size_t k = 0; k < roots.size(); ++k) {
    const auto& root = *roots[k];
    const auto id = static_cast<std::int64_t>(k + 1);
    st.files += root.manifest.entries.size();
    s.set_id(id);
    Message state = s.receive(id, MsgKind::sync_state);
    if (auto e = state.body.find("error"); e != state.body.end())
      throw SyncError("'" + root.name + "': the agent could not prepare it: " +
                      (e->is_string() ? e->get<std::string>() : e->dump()));
    const auto& cur = field(state, "current");
    if (!cur.is_boolean()) throw ProtocolError("sync_state message: 'current' is not a boolean");
    if (cur.get<bool>()) continue;
    if (state.body.contains("digest")) {
      const auto theirs = get_bytes(state, "digest");
      if (theirs.size() == 16 && std::memcmp(theirs.data(), root.digest.data(), 16) == 0) {
        s.send(MsgKind::sync_end, {{"sync", id}, {"digest", bin16(root.digest)}, {"current", true}});
        continue;
      }
      s.send(MsgKind::sync_fetch, {{"sync", id}});
      ++st.round_trips;
      state = s.receive(id, MsgKind::sync_state);
    }
    Manifest remote;
    try {
      remote = decode_manifest(get_bytes(state, "manifest"));
    } catch (const SyncError& e) {
      throw ProtocolError(std::string("sync_state message: ") + e.what());
    }
    Plan plan = make_plan(root.manifest, remote, st);
    const bool want_sigs = !plan.sigs.empty();
    const std::size_t nsigs = plan.sigs.size();
    s.send(MsgKind::sync_plan, {{"sync", id},
                                {"delete", std::move(plan.del)},
                                {"dirs", std::move(plan.dirs)},
                                {"links", std::move(plan.links)},
                                {"meta", std::move(plan.meta)},
                                {"sigs", std::move(plan.sigs)}});
    ++st.round_trips;
    for (const auto& p : plan.whole) s.send_whole(root, p);
    s.flush();
    if (want_sigs) {
      ++st.round_trips;
      std::size_t got = 0;
      for (bool last = false; !last;) {
        Message sm = s.receive(id, MsgKind::sync_sigs);
        const auto& lf = field(sm, "last");
        if (!lf.is_boolean()) throw ProtocolError("sync_sigs message: 'last' is not a boolean");
        last = lf.get<bool>();
        std::vector<std::pair<std::string_view, std::string_view>> list;
        try {
          list = parse_sigs(get_bytes(sm, "data"));
        } catch (const SyncError& e) {
          throw ProtocolError(e.what());
        }
        for (const auto& [path, enc] : list) {
          ++got;
          const std::string p(path);
          if (root.manifest.find(p) == nullptr)
            throw ProtocolError("sync_sigs message: a signature for '" + p + "', which was not asked for");
          if (enc.empty()) {
            s.send_whole(root, p);
            continue;
          }
          Signature sig;
          try {
            sig = decode_signature(enc);
          } catch (const DeltaError& e) {
            throw ProtocolError(std::string("sync_sigs message: ") + e.what());
          }
          s.send_delta(root, p, sig);
        }
      }
      if (got != nsigs)
        throw ProtocolError("sync_sigs: asked for " + std::to_string(nsigs) + " signatures, got " +
                            std::to_string(got));
      s.flush();
    }
    auto digest = nlohmann::json::binary(std::vector<std::uint8_t>(root.digest.begin(), root.digest.end()));
    s.send(MsgKind::sync_end, {{"sync", id}, {"digest", digest}});
    Message done = s.receive(id, MsgKind::sync_done);
    for (int round = 0;; ++round) {
      const auto& retry = field(done, "retry");
      if (!retry.is_array()) throw ProtocolError("sync_done message: 'retry' is not a list");
      if (retry.empty()) break;
      if (round > 0) throw SyncError("'" + root.name + "': files still differ after a whole resend");
      ++st.round_trips;
      for (const auto& p : retry) {
        if (!p.is_string() || root.manifest.find(p.get<std::string>()) == nullptr)
          throw ProtocolError("sync_done message: a retry for a path that was not sent");
        s.send_whole(root, p.get<std::string>());
      }
      s.flush();
      s.send(MsgKind::sync_end, {{"sync", id}, {"digest", digest}});
      done = s.receive(id, MsgKind::sync_done);
    }
    const auto& errors = field(done, "errors");
    if (!errors.is_array()) throw ProtocolError("sync_done message: 'errors' is not a list");
    if (!errors.empty()) throw SyncError("'" + root.name + "': " + join_errors(errors));
    if (!done.body.value("match", false))
      st.warnings.push_back("'" + root.name + "' changed during the sync; the next run catches up");
  }
  return st;
}

}  // namespace dtest::sync
