// The master's side of a sync: brings one agent's copies of the local roots
// up to date. Pipelined so that an unchanged tree costs one round trip for
// all roots together:
//   -> sync_begin (per root: name, ignore rules, digest of the local scan)
//   <- sync_state (current, or the receiver's manifest)
//   -> sync_plan (deletes, dirs, links, metadata, signature requests)
//   -> sync_data... (whole files, zstd by the frame layer)
//   <- sync_sigs (when files changed on both sides)   -> sync_data (deltas)
//   -> sync_end (digest)                               <- sync_done
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "common/message.h"
#include "sync/tree.h"
#include "sync/watch.h"

namespace dtest::sync {

// A scanned local root, shared read-only by every target's sync.
struct LocalRoot {
  std::string path;  // absolute
  std::string name;  // its basename: the directory it becomes in the agent's work dir
  Manifest manifest;
  Hash128 digest{};
  std::vector<std::string> warnings;  // from the scan
  std::size_t hashed_files = 0;
  double scan_seconds = 0;
  bool from_watcher = false;  // unchanged since the last scan: no walk (sync/watch.h)
};

// Scans `path` (absolute) with `ignore` (the full pattern list, defaults
// included), using the stat cache in `cache_dir` (empty: none) and, when
// `watch` is enabled, a watcher (sync/watch.h).
LocalRoot scan_local_root(const std::string& path, const std::vector<std::string>& ignore,
                          const std::string& cache_dir, const WatchOptions& watch = WatchOptions{false, {}, 0});

struct SyncStats {
  std::size_t files = 0;         // entries in the local roots
  std::size_t whole_files = 0;   // sent whole
  std::size_t delta_files = 0;   // sent as deltas
  std::size_t deleted = 0;
  std::size_t dirs = 0, links = 0, meta = 0;
  std::uint64_t file_bytes = 0;  // of the files sent (whole or delta), before any encoding
  std::uint64_t bytes_out = 0;   // on the wire, framed and compressed
  std::uint64_t bytes_in = 0;
  std::size_t round_trips = 0;
  std::vector<std::string> warnings;
  bool changed() const { return whole_files + delta_files + deleted + dirs + links + meta > 0; }
};

// The agent end. `send` writes a message and returns its size on the wire;
// `receive` blocks for the next sync_* message from the agent (setting its
// wire size) and throws when the link is gone.
struct SyncLink {
  std::function<std::size_t(const Message&)> send;
  std::function<Message(std::size_t& wire_bytes)> receive;
};

using LocalRoots = std::vector<std::shared_ptr<const LocalRoot>>;

// The name a root gets on the other side: its basename.
std::string root_name(const std::string& path);

// Syncs every root to the agent. `roots` may still be scanning: then the
// agent is asked to scan its copies at the same time, answers with its
// digests, and only a root whose digests differ costs a second round trip
// (sync_fetch) before the plan. `paths` are the roots' paths, in order.
// Throws SyncError when the agent reports a failure (its messages, first
// ones first) or answers out of turn.
SyncStats sync_roots(SyncLink& link, const std::vector<std::string>& paths,
                     const std::shared_future<LocalRoots>& roots, const std::vector<std::string>& ignore);
// The same with roots already scanned.
SyncStats sync_roots(SyncLink& link, const LocalRoots& roots, const std::vector<std::string>& ignore);

}  // namespace dtest::sync
