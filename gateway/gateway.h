// Gateways carry one framed byte stream between the master and an agent.
// The rest of dtest sees only this interface, never the transport (popen
// today; ssh and socket next), and tests substitute a fake.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/frame.h"
#include "xspec/xspec.h"

namespace dtest::gateway {

// Failure to bring a gateway up or to talk to it; the message names the
// gateway and the cause.
class GatewayError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Gateway {
 public:
  virtual ~Gateway() = default;
  // Sends one frame. Called from one thread at a time.
  virtual void send(const Frame& f) = 0;
  // Blocks for the next frame; nullopt when the agent closed the stream
  // cleanly. Throws ProtocolError for garbage, GatewayError for I/O errors.
  // Called from one reader thread.
  virtual std::optional<Frame> receive() = 0;
  // Closes the master's side: the agent sees EOF, kills its tests and exits.
  virtual void close() = 0;
  // Ends the transport now (kills the local process that carries it).
  virtual void terminate() = 0;
  // Waits (up to `timeout_s`) for the transport to finish after close(), then
  // terminates it. Returns a description of how it ended.
  virtual std::string wait(double timeout_s) = 0;
  // The last lines the agent or transport wrote to stderr, for error
  // messages; may be empty.
  virtual std::string diagnostics() = 0;
};

struct OpenOptions {
  std::string default_agent;  // path of dtest-agent for popen when no agent= key
};

// Opens the gateway a spec describes. Throws GatewayError.
std::unique_ptr<Gateway> open(const xspec::Spec& spec, const OpenOptions& opts);

// The dtest-agent beside the running executable (or $DTEST_AGENT).
std::string default_agent_path();

// Warm ssh connections (docs/ssh.md, "Warm connections"): a dtest run leaves
// each ssh target's connection to a small background process of `exe` (the
// dtest binary, started as `dtest __ssh-holder ...`) that the next runs
// reuse until it has been idle for DTEST_SSH_PERSIST seconds (default 600;
// 0 turns warm connections off). Without this call (a program that only
// links the gateways) ssh gateways connect in-process.
void enable_warm_connections(const std::string& exe);

// Closes the warm connections whose target matches one of `ssh_targets`
// ("[user@]host[:port]" or an ssh= value; the host as written or as
// resolved), or all of them when it is empty. Idle ones end at once; one
// whose channels are in use by a running dtest stops taking new ones and
// ends with its last channel. Reports each to `out`; returns 0, or 1 if the
// control directory cannot be used.
int close_warm_connections(const std::vector<std::string>& ssh_targets, std::ostream& out);

// For transports that end in a file descriptor: blocks until `decoder` holds
// a whole frame, reading `fd` as needed. Returns nullopt at EOF (then
// `decoder.buffered()` says whether it came inside a frame). Read errors come
// out as std::system_error, for the transport to name itself in.
std::optional<Frame> read_frame(int fd, FrameDecoder& decoder);

}  // namespace dtest::gateway
