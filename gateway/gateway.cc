#include "gateway/gateway.h"

#include <poll.h>

#include "common/fdio.h"

#include <cstdlib>
#include <filesystem>

#include "gateway/popen_gateway.h"
#include "gateway/socket_gateway.h"
#include "gateway/ssh_gateway.h"

namespace dtest::gateway {

std::string default_agent_path() {
  if (const char* env = std::getenv("DTEST_AGENT"); env && *env) return env;
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "dtest-agent";
  return (self.parent_path() / "dtest-agent").string();
}

std::optional<Frame> read_frame(int fd, FrameDecoder& decoder) {
  char buf[65536];
  for (;;) {
    if (auto f = decoder.pop()) return f;
    const ssize_t n = read_some(fd, buf, sizeof buf);
    if (n == 0) return std::nullopt;
    if (n > 0) {
      decoder.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    } else {  // a non-blocking descriptor with nothing yet: wait, do not spin
      pollfd p{fd, POLLIN, 0};
      ::poll(&p, 1, -1);
    }
  }
}

std::unique_ptr<Gateway> open(const xspec::Spec& spec, const OpenOptions& opts) {
  const std::string type = spec.type();
  if (type == "popen") return open_popen(spec, opts);
  if (type == "socket") return open_socket(spec, opts);
  if (type == "ssh") return open_ssh(spec, opts);
  throw GatewayError("gateway type '" + type + "' is not supported yet (spec '" +
                     spec.original + "'); this build supports popen, socket and ssh");
}

}  // namespace dtest::gateway
