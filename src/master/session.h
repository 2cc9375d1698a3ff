// The session: brings gateways up in parallel, collects on one gateway per
// platform, feeds batches to workers as they free up, and turns the agents'
// events into exactly one result per collected test.
//
// Threads: one reader per gateway (blocking receive, pushing events into a
// queue); everything else happens on the calling thread, which owns all
// state, so no state is shared but the queue.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "gateway/gateway.h"
#include "master/event_log.h"
#include "master/model.h"
#include "xspec/xspec.h"

namespace dtest {

struct RunOptions {
  std::vector<xspec::Spec> specs;         // as given; N* expanded by the session
  std::string dist = "load";              // load | each | no
  std::vector<std::string> binaries;      // as the user named them
  std::vector<std::string> binary_paths;  // as sent to the agents
  // Per source (parallel to `binaries`; empty: all GoogleTest): its kind
  // (gtest | pytest | ctest | command), and for the other kinds the
  // descriptor sent to the agents in `collect` and `run` (docs/protocol.md);
  // its "cwd"/"build_dir" are local paths, mapped into synced roots per
  // gateway as binaries are. `binaries[k]` is then the ids' display prefix
  // ("" for none). `source_timeouts[k]` >= 0 overrides --timeout.
  std::vector<std::string> kinds;
  std::vector<nlohmann::json> descriptors;
  std::vector<double> source_timeouts;
  int verbosity = 0;                      // -1 quiet, 0 normal, 1 verbose
  std::string junitxml;
  // --report-log: the run's events as JSON Lines (shared by the sessions of
  // --repeat-until-fail); null: none.
  std::shared_ptr<EventLog> event_log;
  std::string rootdir;
  std::string testrunuid;
  bool continue_on_collection_errors = false;
  double hello_timeout = 30;              // seconds for an agent to say hello
  // --timeout: seconds one test may run before the agent kills its process
  // (the test ends as `timeout`, the rest of its batch runs in a new one);
  // 0: no limit.
  double timeout = 0;
  // -x / --maxfail N: after this many failing outcomes (failed, crashed,
  // timeout) stop: no new batches, the agents stop the running ones, and
  // every test without an outcome is not run. 0: never. `maxfail_option`
  // is how the user asked ("-x", "--maxfail 3"), quoted in the reason.
  int maxfail = 0;
  std::string maxfail_option;
  // --retries N: a test that ends failed, crashed or timeout runs again, in
  // a new batch (possibly on another worker), up to N more times before its
  // result counts. Passing on a retry makes it `flaky` (a pass, unless
  // `flaky_fails`); failing every retry leaves its last failure. Only final
  // outcomes count towards --maxfail.
  int retries = 0;
  bool flaky_fails = false;
  // --count N: every selected test runs N times, each repetition its own
  // result (ids suffixed "[k/N]"); two repetitions of one test never share a
  // batch (each repetition is its own scheduler group).
  int count = 1;
  // --rsyncdir: absolute, normalised roots, mirrored into the work dir of
  // every gateway that is not a plain local popen (once per host and dir).
  std::vector<std::string> rsyncdirs;
  std::vector<std::string> rsyncignore;   // the full pattern list, defaults first
  std::string sync_cache_dir;             // the local stat caches; empty: none
  // The run repository (<rootdir>/.dtest): record the run there (the CLI
  // turns it on), and --lf: only the tests that failed last time (when any
  // of them is collected).
  bool record = false;
  std::vector<std::string> args;          // the command line, for the record
  bool last_failed = false;
  std::vector<std::string> failed_ids;    // from the repository: --lf, and failures first
  // Per test id: the repository's duration estimate (seconds). The scheduler
  // orders by them (longest first) and sizes batches in seconds.
  std::unordered_map<std::string, double> estimates;
  // --dist loadgroup: a test whose id matches groups[k] (the first that
  // does; ECMAScript regex, searched) belongs to group k, whose tests all run
  // on one worker. (The config file's `groups` list, issue 5, feeds it too.)
  std::vector<std::string> groups;
  // Set-up hooks (config [setup]): a shell command run once per place (host
  // and work dir) after the sync and before collection, and one run on every
  // worker (with DTEST_WORKER set) before it gets tests. A failure takes the
  // place / the worker out of the run; the others go on.
  std::string setup_host, setup_worker;
};

using GatewayFactory =
    std::function<std::unique_ptr<gateway::Gateway>(const xspec::Spec& spec, const std::string& id)>;

// Exit codes (pytest's, plus crashed/timeout tests counting as failures).
enum ExitCode {
  kExitOk = 0,
  kExitTestsFailed = 1,
  kExitInterrupted = 2,
  kExitInternalError = 3,
  kExitUsageError = 4,
  kExitNoTests = 5,
};

// Set from a signal handler; the session stops at its next step.
extern std::atomic<int> g_interrupt_signal;

class Session {
 public:
  Session(RunOptions opts, GatewayFactory factory, std::ostream& out);
  ~Session();
  int run();
  const std::vector<Unit>& units() const;
  const std::vector<GatewayInfo>& gateways() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dtest
