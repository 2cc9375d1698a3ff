// Subprocess runner shared by dtest's end-to-end tests: fork/exec with stdout
// and stderr captured, under a hard timeout.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace dtest::testing {

struct ProcResult {
  int exit_code = -1;  // WEXITSTATUS, or -1 if killed by a signal
  int signal = 0;      // WTERMSIG, or 0
  bool timed_out = false;
  pid_t pid = -1;
  std::string out, err;
};

struct RunOptions {
  std::string cwd;                         // empty: inherit
  std::map<std::string, std::string> env;  // overrides of the inherited environment
  std::set<std::string> unset;             // variables to remove (wins over `env`)
  double timeout = 60;                     // seconds; on expiry the process group is SIGKILLed
  // Called about every 20 ms while the process runs, with its pid and the
  // stdout read so far.
  std::function<void(pid_t, const std::string& out)> tick;
};

// fork + execve(argv[0]) (no PATH lookup) in a new process group, with default
// SIGPIPE/SIGINT/SIGTERM dispositions, an empty signal mask, stdin from
// /dev/null, the environment and cwd from `opts`, and stdout/stderr on
// `out_fd`/`err_fd` (-1: inherit). `opts.timeout` and `opts.tick` are not used.
// The child exits 126 if it cannot chdir, 127 if it cannot exec. Throws
// std::runtime_error if fork fails.
pid_t spawn_process(const std::vector<std::string>& argv, const RunOptions& opts, int out_fd, int err_fd);

// Runs argv to completion (spawn_process) with stdout and stderr captured.
// On timeout the whole process group is SIGKILLed and `timed_out` set. After
// the process exits, the pipes are read until EOF, but for at most 3 s (a
// leaked grandchild may hold them open).
ProcResult run_process(const std::vector<std::string>& argv, const RunOptions& opts = {});

// Exit status, timeout and (head and tail of) stdout/stderr, for failure
// messages.
std::string describe(const ProcResult& r);

}  // namespace dtest::testing
