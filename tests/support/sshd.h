// A real OpenSSH sshd on 127.0.0.1 for tests, started by
// tests/ssh/sshd_harness.sh (generated host and user keys, a known_hosts
// file, remote sessions with HOME=DIR/remote-home).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace dtest::testing {

class Sshd {
 public:
  // Starts the harness in a fresh temp dir. On failure `up` stays false and
  // `skip_reason` (no sshd installed: skip) or `error` says why.
  void start(const std::string& harness);
  void stop();
  // The ssh= value of an xspec for this sshd: an empty ssh config (the
  // caller's ~/.ssh/config stays out), the harness's key and known_hosts.
  std::string ssh_value() const;
  std::string log() const;  // sshd.log

  bool up = false;
  std::string dir, skip_reason, error;
  int port = 0;

 private:
  std::string harness_;
};

std::string local_user();

// The pids of dtest's warm-connection holders (`dtest __ssh-holder`) whose
// control directory is under `under` (their command line names it).
std::vector<pid_t> holders(const std::string& under);

}  // namespace dtest::testing
