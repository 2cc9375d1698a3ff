// Parsers for GoogleTest's text output: the test listing
// (--gtest_list_tests) and the streamed run output. Pure functions over
// bytes, no I/O, so they are unit-testable and fuzzable.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/outcome.h"

namespace dtest::gtest {

struct ListedTest {
  std::string full;         // "Suite.Name", "Inst/Suite.Name/0", "Typed/0.Name"
  std::string suite;        // "Suite", "Inst/Suite", "Typed/0"
  std::string name;         // "Name", "Name/0"
  std::string type_param;   // from "# TypeParam = int", else empty
  std::string value_param;  // from "# GetParam() = 4", else empty
  bool disabled = false;    // suite or name starts with DISABLED_
};

// Thrown when the listing is not GoogleTest's format; what() names the
// 1-based line number and quotes the offending line.
class ListError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

std::vector<ListedTest> parse_list(std::string_view output);

struct TestEvent {
  enum class Kind { started, finished };
  Kind kind = Kind::started;
  std::string name;  // full gtest name
  Outcome outcome = Outcome::passed;  // finished only: passed/failed/skipped/crashed
  double duration_ms = 0;             // finished only: gtest's own "(N ms)"
  std::string output;  // finished only: everything printed between the RUN and end markers
};

// Incremental parser for a test process's merged stdout+stderr. Feed bytes as
// they arrive (any chunking, including mid-line); complete events are
// appended to `out`.
class RunParser {
 public:
  void feed(std::string_view bytes, std::vector<TestEvent>& out);
  // The process has exited. `status` describes how ("exit status 1",
  // "signal 11 (SIGSEGV)"). If a test was running, appends a finished event
  // with Outcome::crashed whose output is what it printed so far followed by
  // a line naming the status, and returns true.
  bool finish(std::string_view status, std::vector<TestEvent>& out);
  // Like finish(), for a process the caller killed: the running test (if
  // any) ends with `outcome` (Outcome::timeout, say) and its output so far
  // followed by the line `last_line` (a '\n' is added).
  bool finish(std::vector<TestEvent>& out, Outcome outcome, std::string_view last_line);
  // The test that has started and not finished, or empty.
  const std::string& current() const { return current_; }
  // Names of every test that finished (any outcome), in order.
  const std::vector<std::string>& finished() const { return finished_; }
  // Text printed outside any test (global set-up errors, summary), capped.
  const std::string& outside_output() const { return outside_; }

 private:
  void line(std::string_view l, std::vector<TestEvent>& out);
  std::string partial_;  // bytes after the last newline
  std::string current_;
  std::string output_;
  std::string outside_;
  std::vector<std::string> finished_;
};

}  // namespace dtest::gtest
