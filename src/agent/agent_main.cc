// dtest-agent: started by a gateway; speaks frames on stdin/stdout.
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

#include "agent/agent.h"

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--version") == 0)) {
    std::printf("dtest-agent %s\n", DTEST_VERSION);
    return 0;
  }
  if (argc > 1) {
    std::fprintf(stderr, "usage: dtest-agent   (started by dtest; speaks its protocol on stdin/stdout)\n");
    return 4;
  }
  // Keep the protocol stream private: fd 1 becomes stderr, so nothing the
  // agent or a library prints by accident can corrupt a frame.
  const int out = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
  const int in = ::fcntl(0, F_DUPFD_CLOEXEC, 3);
  if (out < 0 || in < 0) return 3;
  ::dup2(2, 1);
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) ::dup2(devnull, 0);
  return dtest::run_agent(in, out);
}
