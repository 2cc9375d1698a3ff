#include "agent/runner.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fdio.h"

namespace dtest {

std::string timeout_text(double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "timed out after %g s", seconds);
  return buf;
}

std::string cap_output(std::string s, std::size_t head, std::size_t tail) {
  if (s.size() <= head + tail) return s;
  const std::size_t cut = s.size() - head - tail;
  return s.substr(0, head) + "\n[... " + std::to_string(cut) + " bytes truncated ...]\n" +
         s.substr(s.size() - tail);
}

SequentialRunner::SequentialRunner(std::vector<Job> jobs) : jobs_(std::move(jobs)), spawned_(RunClock::now()) {}

SequentialRunner::~SequentialRunner() { kill(); }

void SequentialRunner::fds(std::vector<int>& out) const {
  if (running_ && child_.out_fd >= 0) out.push_back(child_.out_fd);
}

void SequentialRunner::drain() {
  char buf[65536];
  while (child_.out_fd >= 0) {
    const ssize_t n = read_some(child_.out_fd, buf, sizeof buf);
    if (n < 0) return;  // nothing more right now
    if (n == 0) {
      ::close(child_.out_fd);
      child_.out_fd = -1;
      return;
    }
    // A runaway writer must not eat the agent's memory: keep 8 MiB, then
    // only the last 4 (cap_output trims further when reporting).
    output_.append(buf, static_cast<std::size_t>(n));
    if (output_.size() > (8u << 20)) output_ = output_.substr(0, 1u << 20) + output_.substr(output_.size() - (4u << 20));
  }
}

void SequentialRunner::start_next(std::vector<TestReport>& out) {
  while (!running_ && next_ < jobs_.size() && !killed_) {
    Job& job = jobs_[next_++];
    output_.clear();
    timed_out_ = false;
    job_started_ = RunClock::now();
    if (job.no_process) {
      const std::size_t before = out.size();
      job.judge(job, 0, {}, false, 0, {}, out);
      for (std::size_t k = before; k < out.size(); ++k) done_.push_back(out[k].index);
      if (job.cleanup) job.cleanup();
      continue;
    }
    try {
      child_ = spawn(job.spawn);
      set_nonblocking(child_.out_fd, true);
      running_ = true;
    } catch (const std::exception& e) {
      const std::size_t before = out.size();
      job.judge(job, 0, {}, false, 0, e.what(), out);
      for (std::size_t k = before; k < out.size(); ++k) done_.push_back(out[k].index);
      if (job.cleanup) job.cleanup();
    }
  }
}

void SequentialRunner::step(std::vector<TestReport>& out) {
  if (!running_) start_next(out);
  while (running_) {
    drain();
    Job& job = jobs_[next_ - 1];
    if (job.timeout > 0 && !timed_out_ &&
        RunClock::now() - job_started_ >= std::chrono::duration<double>(job.timeout)) {
      timed_out_ = true;
      kill_group(child_.pid);
    }
    int status = 0;
    const pid_t r = ::waitpid(child_.pid, &status, WNOHANG);
    if (r != child_.pid) return;
    drain();
    kill_group(child_.pid);  // what it left behind dies with it
    if (child_.out_fd >= 0) {
      ::close(child_.out_fd);
      child_.out_fd = -1;
    }
    running_ = false;
    const double seconds = std::chrono::duration<double>(RunClock::now() - job_started_).count();
    const std::size_t before = out.size();
    job.judge(job, status, cap_output(std::move(output_)), timed_out_, seconds, {}, out);
    output_.clear();
    for (std::size_t k = before; k < out.size(); ++k) done_.push_back(out[k].index);
    if (job.cleanup) job.cleanup();
    start_next(out);
  }
}

std::optional<RunClock::time_point> SequentialRunner::deadline() const {
  if (!running_ || timed_out_) return std::nullopt;
  const Job& job = jobs_[next_ - 1];
  if (job.timeout <= 0) return std::nullopt;
  return job_started_ + std::chrono::duration_cast<RunClock::duration>(std::chrono::duration<double>(job.timeout));
}

nlohmann::json SequentialRunner::summary() {
  nlohmann::json unrun = nlohmann::json::array();
  std::vector<char> seen;
  for (const auto& j : jobs_)
    for (auto t : j.tests) seen.resize(std::max<std::size_t>(seen.size(), t + 1), 0);
  for (auto t : done_) seen[t] = 1;
  for (const auto& j : jobs_)
    for (auto t : j.tests)
      if (!seen[t]) unrun.push_back(t);
  const double seconds = std::chrono::duration<double>(RunClock::now() - spawned_).count();
  // Each job starts its own process: all of it is per-test cost.
  return {{"status", "exit status 0"}, {"exit_code", 0}, {"unrun", std::move(unrun)}, {"seconds", seconds},
          {"startup", 0.0}};
}

void SequentialRunner::kill() {
  killed_ = true;
  if (running_) {
    kill_group(child_.pid);
    while (::waitpid(child_.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    if (child_.out_fd >= 0) ::close(child_.out_fd);
    child_.out_fd = -1;
    running_ = false;
    if (jobs_[next_ - 1].cleanup) jobs_[next_ - 1].cleanup();
  }
}

}  // namespace dtest
