// Reading dtest's `-v` output: one line per test result,
//   "[gw0] [ 50%] PASSED tests/t.py::test_x[a b] (gw1) - message"
// (no "[gw0] " for a test that never reached a worker, such as a disabled
// one; " (gw1)", the unit, only under --dist each where it differs from the
// worker; " - message" only for a result with a message).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace dtest::testing {

struct VLine {
  std::string worker, outcome, id, unit, message;
  // Which gateway's table the result belongs to: the unit name under
  // --dist each (shown only when it differs from the worker), else the worker.
  std::string where() const { return unit.empty() ? worker : unit; }
};

std::vector<std::string> split_lines(const std::string& s);

// The result lines of `out`, in order. The outcome is in lower case
// ("passed", "not run", "flaky", ...). Ids may hold spaces (pytest
// parameters); none of the fixtures' has " - ".
std::vector<VLine> parse_verbose(const std::string& out);

// id -> line; a test reported twice fails the calling test (GoogleTest).
std::map<std::string, VLine> by_id(const std::vector<VLine>& lines);

// id -> outcome ("passed", "not run", ...) of the lines of `out`, by by_id().
std::map<std::string, std::string> outcomes(const std::string& out);

}  // namespace dtest::testing
