// `dtest sync --tx SPEC... DIR...`: the sync alone, with what moved.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "master/session.h"

namespace dtest {

struct SyncCommandOptions {
  std::vector<xspec::Spec> specs;
  std::vector<std::string> roots;   // absolute, normalised
  std::vector<std::string> ignore;  // the full pattern list
  std::string cache_dir;
  std::string agent;  // the local dtest-agent (it also runs the tree watchers)
};

// Syncs the roots to every distinct place the specs name (once per host and
// work dir), concurrently, and prints one line per place. Returns 0 when
// every sync succeeded, 1 otherwise.
int run_sync_command(const SyncCommandOptions& opts, const GatewayFactory& factory, std::ostream& out,
                     std::ostream& err);

}  // namespace dtest
