// Helpers shared by the protocol unit tests.
#pragma once

#include <string>

#include <gtest/gtest.h>

#include "common/frame.h"

namespace dtest::testing {

// Runs `fn`, expects a ProtocolError and returns its message.
template <typename Fn>
std::string protocol_error(Fn&& fn) {
  try {
    fn();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ProtocolError";
  return {};
}

}  // namespace dtest::testing
