// ssh gateway: dtest-agent on a remote host over a libssh connection shared
// by every gateway to the same host (like OpenSSH's ControlMaster).
//
// The first gateway to a connection (same resolved user, host, port,
// identities, config, known hosts) connects, checks the host key,
// authenticates (ssh-agent, then identity files) and makes sure the remote
// has this build's agent (by content hash, uploaded when missing); every
// gateway then runs its agent on a channel of its own whose stdin/stdout
// carry the frames. One pump thread per connection owns the libssh session
// (libssh is not thread-safe) and shuttles bytes between each channel and
// its gateway's socketpair, so send()/receive() work on a plain fd as the
// popen gateway does. See docs/ssh.md.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gateway/gateway.h"

namespace dtest::gateway {

std::unique_ptr<Gateway> open_ssh(const xspec::Spec& spec, const OpenOptions& opts);

// `dtest __ssh-holder DIR NAME PERSIST TARGET...`: the process that holds a
// warm connection (started by the gateway, never by hand). argv as main's.
int ssh_holder_main(int argc, char** argv);

namespace ssh_detail {

// What the value of ssh= says: "[user@]host[:port]" or OpenSSH-style
// "-p PORT -i KEY -l USER -F CONFIG -o Key=Value [user@]host".
struct Target {
  std::string user;  // empty: from ssh config, else the local user
  std::string host;
  std::optional<int> port;
  std::vector<std::string> identities;  // -i / -o IdentityFile, in order
  std::string config_file;              // -F
  std::string known_hosts;              // -o UserKnownHostsFile
  std::string strict_host_key_checking;  // -o StrictHostKeyChecking (lowercase)
  std::optional<long> connect_timeout;   // -o ConnectTimeout (seconds)
};

// Throws GatewayError (without the "ssh gateway ..." prefix) on bad input.
Target parse_target(const std::string& value);

// POSIX sh single-quoting: abc -> 'abc', it's -> 'it'\''s'.
std::string shell_quote(const std::string& s);

// XXH3-128 of a file as 32 hex digits; cached per (path, inode, size, mtime).
std::string file_hash(const std::string& path);

}  // namespace ssh_detail

}  // namespace dtest::gateway
