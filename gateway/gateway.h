// Gateways carry one framed byte stream between the master and an agent.
// The rest of dtest sees only this interface, never the transport (popen
// today; ssh and socket next), and tests substitute a fake.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

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

// For transports that end in a file descriptor: blocks until `decoder` holds
// a whole frame, reading `fd` as needed. Returns nullopt at EOF (then
// `decoder.buffered()` says whether it came inside a frame). Read errors come
// out as std::system_error, for the transport to name itself in.
std::optional<Frame> read_frame(int fd, FrameDecoder& decoder);

}  // namespace dtest::gateway
