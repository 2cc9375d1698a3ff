// Process spawning for the agent: posix_spawn (no Boost runtime, so the agent
// can be linked statically), each test process in a process group of its own
// so that it and anything it forks can be killed as one.
#pragma once

#include <map>
#include <string>
#include <sys/types.h>
#include <vector>

namespace dtest {

struct SpawnOptions {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // added to / overriding the agent's
  std::vector<std::string> unset;          // removed from the agent's
  bool merge_stderr = true;  // stderr into the same pipe as stdout
  std::string cwd;           // working directory; empty: the agent's
  // Extra descriptors the child inherits: {parent fd, fd number in the
  // child} (numbers >= 3). A persistent pytest worker gets its command and
  // event pipes this way.
  std::vector<std::pair<int, int>> inherit;
};

struct Child {
  pid_t pid = -1;     // also the process group id
  int out_fd = -1;    // read end: stdout (and stderr when merged)
  int err_fd = -1;    // read end of stderr when not merged, else -1
};

// Starts argv[0] (searched in PATH when it has no '/') with stdin from
// /dev/null. Throws std::runtime_error naming the program and the errno text
// when it cannot be started.
Child spawn(const SpawnOptions& opts);

// SIGKILL to the whole process group; ignores a group that is already gone.
void kill_group(pid_t pgid);

struct Captured {
  std::string out;
  std::string err;
  int status = 0;         // waitpid status
  bool timed_out = false;
};

// Runs to completion (or until timeout_s, then kills the group), capturing
// stdout and stderr separately, each capped at max_bytes.
Captured run_capture(const SpawnOptions& opts, double timeout_s,
                     std::size_t max_bytes = 256u << 20);

}  // namespace dtest
