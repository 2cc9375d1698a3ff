#include "support/sshd.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "support/subprocess.h"
#include "support/text.h"

namespace dtest::testing {

std::string local_user() {
  const passwd* pw = ::getpwuid(::getuid());
  return pw ? pw->pw_name : "root";
}

void Sshd::start(const std::string& harness) {
  harness_ = harness;
  char tmpl[] = "/tmp/dtest-sshd-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    error = std::string("mkdtemp: ") + std::strerror(errno);
    return;
  }
  dir = tmpl;
  RunOptions o;
  o.timeout = 60;
  const ProcResult r = run_process({"/bin/bash", harness, "start", dir}, o);
  if (r.exit_code == 77) {
    skip_reason = "no OpenSSH sshd: " + r.err;
    return;
  }
  if (r.exit_code != 0) {
    error = "sshd harness failed to start:\n" + describe(r) + "\nsshd.log:\n" + log();
    return;
  }
  port = std::stoi(read_file(dir + "/port"));
  // Wait for sshd to log the harness's readiness probe, so later log reads
  // see only the tests' own connections.
  for (int k = 0; k < 200 && !contains(log(), "Connection closed by"); ++k)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::ofstream{dir + "/empty_ssh_config"};
  std::filesystem::create_directories(dir + "/local-home");
  up = true;
}

void Sshd::stop() {
  if (dir.empty()) return;
  RunOptions o;
  o.timeout = 30;
  run_process({"/bin/bash", harness_, "stop", dir}, o);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  dir.clear();
  up = false;
}

std::string Sshd::ssh_value() const {
  return "-F " + dir + "/empty_ssh_config -i " + dir + "/id_ed25519 -o UserKnownHostsFile=" + dir +
         "/known_hosts " + local_user() + "@127.0.0.1:" + std::to_string(port);
}

std::vector<pid_t> holders(const std::string& under) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    std::string cmd = read_file(e.path().string() + "/cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (contains(cmd, " __ssh-holder ") && contains(cmd, under + "/")) pids.push_back(std::stoi(n));
  }
  return pids;
}

std::string Sshd::log() const { return read_file(dir + "/sshd.log"); }

}  // namespace dtest::testing
