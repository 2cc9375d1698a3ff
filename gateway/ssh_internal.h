// Internals shared by the ssh gateway (ssh_gateway.cc: target parsing,
// libssh connections and their pump, the gateway) and its warm connections
// (ssh_warm.cc: the per-target holder process, its control socket and the
// client side of it). Not for use outside gateway/.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <libssh/libssh.h>

#include "gateway/ssh_gateway.h"

namespace dtest::gateway::ssh_internal {

// A failure of one step, without the "ssh gateway 'SPEC' (where): " prefix
// (each gateway adds its own).
class Cause : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a gateway knows about its agent channel's end. In-process, the
// connection's pump fills it; over a warm connection, the gateway's control
// reader fills it from the holder's messages.
struct ChanState {
  std::mutex mu;  // guards what follows
  std::condition_variable cv;
  bool done = false;  // the channel is gone; its data socket is closed
  std::optional<int> exit_status;
  std::string exit_signal;
  std::string err_tail;  // the agent's stderr, last 8 KiB
  std::string error;     // why the channel ended abnormally (connection lost ...)
  bool eof_marker = false;        // warm: the holder is about to shut the data socket down (all state before it is in)
  std::atomic<bool> stop{false};  // in-process terminate(): the pump closes the channel
};

// Ends a gateway's channel (terminate()) and owns what keeps it alive (the
// shared connection, or the control socket to the holder).
class Link {
 public:
  virtual ~Link() = default;
  virtual void stop() = 0;
};

// What a gateway asks for: its agent's command and the agent to bootstrap.
struct OpenRequest {
  std::string agent_path;  // absolute
  bool explicit_agent = false;
  std::string script_prefix;  // "d=DIR && {cd or mkdir -p} && exec [env ...] [nice -n N]"; the agent's path follows
};

struct SessionDeleter {
  void operator()(ssh_session s) const {
    if (ssh_is_connected(s)) ssh_disconnect(s);
    ssh_free(s);
  }
};
using SessionPtr = std::unique_ptr<std::remove_pointer_t<ssh_session>, SessionDeleter>;

// A session with its options applied but not connected, and what identifies
// it for sharing.
struct Prepared {
  SessionPtr session;
  std::string host, user, where, key;
  unsigned port = 22;
  bool accept_new = false;
};

// Applies a target's options (config file, then its explicit values) to a new
// session. `where` is set as soon as it is known (for messages). Throws Cause.
Prepared prepare_session(const ssh_detail::Target& target, std::string& where);

// Relative identity, config and known-hosts paths made absolute (from the
// current directory), so a holder process started elsewhere and the
// connection key mean the same files.
void absolutize(ssh_detail::Target& target);

// An agent channel on a shared connection of this process (created when
// none is usable; a full one spills over to another).
struct OpenResult {
  bool ok = false;
  std::string cause;  // when !ok
  int fd = -1;        // the data socket (in-process: the gateway's end)
  std::shared_ptr<ChanState> state;
  std::unique_ptr<Link> link;
};
// `ctl_fd` >= 0 (the holder): the channel reports to that control socket
// (the reply with the data socket first) and the pump takes it over when the
// open succeeds. `first` (optional) is used for the first attempt.
OpenResult open_shared(const ssh_detail::Target& target, const OpenRequest& req, int ctl_fd,
                       Prepared* first = nullptr);

// Holder process: connections stay up without channels (until released) and
// `notify_fd` (an eventfd) is written when a connection ends or loses its
// last channel.
void hold_connections(int notify_fd);
struct PoolStats {
  int usable = 0;    // connections still up (or coming up)
  int channels = 0;  // agent channels on them
  int created = 0;   // connections ever made
};
PoolStats pool_stats();
void release_connections();  // ends every held connection (joins the pumps)

// ---------------------------------------------------------------------------
// warm connections (ssh_warm.cc)

struct WarmOpen {
  int fd = -1;  // the data socket
  std::shared_ptr<ChanState> state;
  std::unique_ptr<Link> link;
};
// Opens the channel through the target's holder (started if needed).
// nullopt: warm connections are off or unavailable here (use open_shared).
// Throws Cause for what the holder reports (host key, authentication, ...)
// and for an unsafe control directory.
std::optional<WarmOpen> open_warm(const ssh_detail::Target& target, const std::string& key,
                                  const OpenRequest& req);

// The ssh_detail::Target as command-line words and back (for the holder).
std::vector<std::string> target_to_args(const ssh_detail::Target& t);
ssh_detail::Target target_from_args(const std::vector<std::string>& args);

// The control protocol's messages: [type][u32 length, big endian][payload].
namespace ctl {
inline constexpr char kOpen = 'o', kStatus = 's', kExit = 'x';                  // client -> holder
inline constexpr char kOk = 'O', kFailed = 'F', kStderr = 'E', kExitStatus = 'X', kExitSignal = 'G',
                      kEofMarker = 'Z', kDone = 'D', kStatusReply = 'S', kExitAck = 'K';  // holder -> client
std::string message(char type, std::string_view payload = {});
// Several strings as one payload, each [u32 length][bytes].
std::string fields(const std::vector<std::string>& f);
std::optional<std::vector<std::string>> parse_fields(std::string_view payload);
// Splits whole messages off the front of `buf`.
struct Msg {
  char type;
  std::string payload;
};
std::optional<Msg> pop(std::string& buf);
}  // namespace ctl

}  // namespace dtest::gateway::ssh_internal
