// Warm scans: a small watcher process per tree (`dtest-agent --watch ROOT`)
// holds inotify watches on every directory of the tree and counts changes in
// an epoch. A scan first asks the watcher for its epoch; if the epoch is the
// one recorded when the tree was last scanned, nothing in the tree has been
// created, written, closed after writing, chmodded, touched, renamed or
// deleted since, and the manifest in the stat cache is the tree's manifest:
// no walk, no stat. Otherwise (or with no watcher yet) the tree is scanned
// as usual and the epoch taken just before the walk is recorded.
//
// The watcher lives in the abstract socket namespace (no file to clean up,
// no path length limit), answers only its own user (SO_PEERCRED), and exits
// after being idle for a while, or when its root goes away. Any doubt
// (overflowed event queue, a watch limit hit, a new directory) bumps the
// epoch or disables the watcher, so it can make a scan slower, never wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "sync/tree.h"

namespace dtest::sync {

struct WatchOptions {
  bool enabled = true;            // false (DTEST_WATCH=0): plain scans
  std::string agent;              // the dtest-agent to start watchers with
  int idle_seconds = 600;         // a watcher nobody asks for this long exits
};
// From the environment: DTEST_WATCH=0 disables; DTEST_WATCH_IDLE=SECONDS.
WatchOptions watch_options_from_env(std::string agent);

struct WatchedScan {
  ScanResult scan;
  bool from_watcher = false;  // served from the stat cache, no walk
};

// scan_tree() with a watcher (see above). `opts.cache_path` must be set (the
// record of the last scan's epoch sits next to it); `ignore` is the pattern
// list of opts.ignore (the watcher leaves ignored directories unwatched).
WatchedScan scan_tree_watched(const std::string& root, const ScanOptions& opts,
                              const std::vector<std::string>& ignore, const WatchOptions& w);

// The watcher itself (`dtest-agent --watch ROOT [--idle S] [--ignore P]...`):
// daemonizes, watches, serves; returns the process's exit status.
int watch_main(const std::string& root, const std::vector<std::string>& ignore, int idle_seconds);

}  // namespace dtest::sync
