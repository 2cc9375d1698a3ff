// popen gateway: dtest-agent as a local child process (Boost.Process),
// frames over its stdin/stdout.
#pragma once

#include <memory>

#include "gateway/gateway.h"

namespace dtest::gateway {

std::unique_ptr<Gateway> open_popen(const xspec::Spec& spec, const OpenOptions& opts);

}  // namespace dtest::gateway
