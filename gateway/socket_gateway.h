// socket gateway: TCP to `dtest-agent --listen HOST:PORT`, authenticated by
// a shared token (challenge-response, docs/socket.md); frames over the
// connection. The token comes from $DTEST_TOKEN or the file named by
// $DTEST_TOKEN_FILE (the xspec grammar has no token key, so that a token
// never lands in a command line or a report).
#pragma once

#include <memory>

#include "gateway/gateway.h"

namespace dtest::gateway {

std::unique_ptr<Gateway> open_socket(const xspec::Spec& spec, const OpenOptions& opts);

}  // namespace dtest::gateway
