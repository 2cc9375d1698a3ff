#include "gateway/popen_gateway.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <mutex>
#include <sys/prctl.h>
#include <thread>
#include <unistd.h>

#include <boost/process/child.hpp>
#include <boost/process/env.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/environment.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/start_dir.hpp>

#include "common/fdio.h"

namespace bp = boost::process;

namespace dtest::gateway {

namespace {

// Runs in the child between fork and exec: wires the pipes to fds 0-2, puts
// the agent in a process group of its own (a Ctrl-C at the terminal goes to
// the master, which then shuts agents down in order), applies nice, and asks
// the kernel to signal the agent if the master dies without closing its pipe.
struct ChildSetup : bp::extend::handler {
  int in_fd, out_fd, err_fd, nice_value;
  template <class Executor>
  void on_exec_setup(Executor&) const {
    ::dup2(in_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    ::setpgid(0, 0);
    if (nice_value != 0) {
      errno = 0;
      [[maybe_unused]] int n = ::nice(nice_value);
    }
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  }
};

std::pair<int, int> make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw GatewayError(std::string("popen gateway: pipe: ") + std::strerror(errno));
  return {fds[0], fds[1]};
}

class PopenGateway final : public Gateway {
 public:
  PopenGateway(const xspec::Spec& spec, const OpenOptions& opts) : spec_(spec.original) {
    std::string agent = spec.get("agent").value_or(opts.default_agent);
    std::error_code ec;
    if (!std::filesystem::exists(agent, ec))
      throw GatewayError("popen gateway '" + spec_ + "': agent not found: " + agent);
    std::filesystem::path dir = std::filesystem::current_path();
    if (auto chdir = spec.get("chdir")) {
      dir = std::filesystem::absolute(*chdir);
      std::filesystem::create_directories(dir, ec);
      if (ec)
        throw GatewayError("popen gateway '" + spec_ + "': cannot create chdir " +
                           dir.string() + ": " + ec.message());
    }
    int nice_value = 0;
    if (auto n = spec.get("nice")) nice_value = std::stoi(*n);

    auto [in_r, in_w] = make_pipe();
    auto [out_r, out_w] = make_pipe();
    auto [err_r, err_w] = make_pipe();
    bp::environment env = boost::this_process::environment();
    for (const auto& [k, v] : spec.env()) env[k] = v;
    if (auto py = spec.get("python")) env["DTEST_PYTHON"] = *py;
    try {
      // Boost.Process makes its exec-error pipe with pipe() and only then
      // sets FD_CLOEXEC; an agent forked by another gateway's thread in that
      // window would inherit it and stall this start. One spawn at a time.
      static std::mutex spawn_mu;
      std::lock_guard spawn_lock(spawn_mu);
      child_ = bp::child(bp::exe = agent, bp::start_dir = dir.string(), env,
                         ChildSetup{{}, in_r, out_w, err_w, nice_value});
    } catch (const std::exception& e) {
      for (int fd : {in_r, in_w, out_r, out_w, err_r, err_w}) ::close(fd);
      throw GatewayError("popen gateway '" + spec_ + "': cannot start agent " + agent + ": " + e.what());
    }
    ::close(in_r);
    ::close(out_w);
    ::close(err_w);
    in_w_ = in_w;
    out_r_ = out_r;
    err_r_ = err_r;
    stderr_thread_ = std::thread([this] { pump_stderr(); });
  }

  ~PopenGateway() override {
    terminate();
    if (stderr_thread_.joinable()) stderr_thread_.join();
    if (out_r_ >= 0) ::close(out_r_);
    if (err_r_ >= 0) ::close(err_r_);
  }

  void send(const Frame& f) override {
    if (in_w_ < 0) throw GatewayError("popen gateway '" + spec_ + "': already closed");
    try {
      write_all(in_w_, encode_frame(f));
    } catch (const std::system_error& e) {
      throw GatewayError("popen gateway '" + spec_ + "': agent stopped reading (" + e.what() + ")");
    }
  }

  std::optional<Frame> receive() override {
    try {
      if (auto f = read_frame(out_r_, decoder_)) return f;
    } catch (const std::system_error& e) {
      throw GatewayError("popen gateway '" + spec_ + "': read: " + e.what());
    }
    if (decoder_.buffered() > 0) throw ProtocolError("agent output ended inside a frame");
    return std::nullopt;
  }

  void close() override {
    if (in_w_ >= 0) {
      ::close(in_w_);
      in_w_ = -1;
    }
  }

  void terminate() override {
    close();
    std::error_code ec;
    if (child_.valid() && child_.running(ec)) {
      ::kill(-child_.id(), SIGKILL);  // the agent's group: agent only, tests have their own
      child_.terminate(ec);
    }
    if (child_.valid()) child_.wait(ec);
  }

  std::string wait(double timeout_s) override {
    close();
    std::error_code ec;
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
    while (child_.valid() && child_.running(ec) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (child_.valid() && child_.running(ec)) {
      terminate();
      return "killed after " + std::to_string(timeout_s) + " s";
    }
    if (!child_.valid()) return "gone";
    child_.wait(ec);
    const int native = child_.native_exit_code();
    return describe_wait_status(native);
  }

  std::string diagnostics() override {
    std::lock_guard lock(err_mu_);
    return err_tail_;
  }

 private:
  void pump_stderr() {
    char buf[4096];
    for (;;) {
      ssize_t n = 0;
      try {
        n = read_some(err_r_, buf, sizeof buf);
      } catch (...) {
        return;
      }
      if (n <= 0) return;
      std::lock_guard lock(err_mu_);
      err_tail_.append(buf, static_cast<std::size_t>(n));
      if (err_tail_.size() > 8192) err_tail_.erase(0, err_tail_.size() - 8192);
    }
  }

  std::string spec_;
  bp::child child_;
  int in_w_ = -1, out_r_ = -1, err_r_ = -1;
  FrameDecoder decoder_;
  std::thread stderr_thread_;
  std::mutex err_mu_;
  std::string err_tail_;
};

}  // namespace

std::unique_ptr<Gateway> open_popen(const xspec::Spec& spec, const OpenOptions& opts) {
  return std::make_unique<PopenGateway>(spec, opts);
}

}  // namespace dtest::gateway
