// CTest adapter, run by the agent on the host where the build tree is: reads
// the tests of a build tree from `ctest --show-only=json-v1` and judges each
// finished test process the way ctest 3.25 would. dtest runs each test's
// command itself (one process per test); the rules here were checked against
// real ctest, see ctest_adapter_test.cc.
#pragma once

#include <bitset>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/outcome.h"

namespace dtest::ctest {

struct Test {
  std::string name;
  // argv, argv[0] absolute as ctest resolved it. Empty when ctest found no
  // executable (not built, a typo): precheck() then says not_run.
  std::vector<std::string> command;
  // When `command` is empty: the executable ctest looked for, if list()
  // could learn it (`ctest -N -V`); else empty.
  std::string missing_executable;
  std::string defined_at;           // "CMakeLists.txt path:line" of add_test(), when known
  std::string working_directory;    // absolute once list() (or a build_dir) resolved it
  std::vector<std::string> environment;               // ENVIRONMENT: "NAME=VALUE", in order
  std::vector<std::string> environment_modification;  // ENVIRONMENT_MODIFICATION: "NAME=op:value"
  bool will_fail = false, disabled = false, run_serial = false;
  std::optional<int> skip_return_code;
  double timeout = 0;               // TIMEOUT in seconds; 0: none set
  int processors = 1;
  std::vector<std::string> labels;
  std::vector<std::string> pass_regex, fail_regex, skip_regex;  // PASS/FAIL/SKIP_REGULAR_EXPRESSION
  std::vector<std::string> required_files;  // REQUIRED_FILES (absolute once resolved)
  // Properties this test has that change how ctest schedules or runs it and
  // that dtest does not honour (DEPENDS, FIXTURES_*, RESOURCE_LOCK,
  // RESOURCE_GROUPS, TIMEOUT_AFTER_MATCH, TIMEOUT_SIGNAL_*,
  // GENERATED_RESOURCE_SPEC_FILE), for the caller to warn about. Reporting-
  // only ones (COST, ATTACHED_FILES, MEASUREMENT, ...) are ignored silently.
  std::vector<std::string> unsupported;
};

// Parses `ctest --show-only=json-v1` output (anything ctest printed before the
// JSON, such as its complaints about invalid regular expressions, is
// skipped). With a build_dir, relative or absent working directories are
// resolved against it as ctest does (ctest runs from the top of the build
// tree), and relative REQUIRED_FILES against the working directory. On
// malformed input returns nullopt and sets `error` naming what is wrong where.
std::optional<std::vector<Test>> parse_json_v1(std::string_view json, std::string& error,
                                               const std::string& build_dir = {});

// Runs `ctest --show-only=json-v1` in build_dir (`ctest` searched in PATH
// unless it has a '/') and parses it. Each label becomes `-L <regex>`; a
// config becomes `-C <config>` (needed for multi-config build trees, where
// ctest lists nothing without one). Errors say which: not a build tree (no
// CTestTestfile.cmake), ctest missing, ctest failing (with its stderr tail),
// an invalid label regex, a multi-config tree without a config.
std::optional<std::vector<Test>> list(const std::string& build_dir,
                                      const std::vector<std::string>& labels, std::string& error,
                                      const std::string& ctest = "ctest",
                                      const std::string& config = {});

// Applies the test's ENVIRONMENT, then its ENVIRONMENT_MODIFICATION, the way
// ctest does, to a child environment described as spawn() takes it: `env`
// (set or overriding) and `unset` (removed), on top of this process's own
// environment (from which a modification reads a variable's current value).
// Returns false with `error` when ctest would refuse to start the test (a
// modification without '=' or ':', an unknown operation).
bool apply_environment(const Test& t, std::map<std::string, std::string>& env,
                       std::vector<std::string>& unset, std::string& error);

struct Verdict {
  Outcome outcome;
  std::string message;  // why, when not plainly passed
};

// The verdict on a test that ctest would not start, checked in ctest's order
// just before starting it: DISABLED -> skipped "disabled"; a working
// directory that does not exist, a missing REQUIRED_FILES entry, no
// executable, an environment modification ctest rejects -> not_run (ctest:
// "Not Run", counted as failed). nullopt: start it.
std::optional<Verdict> precheck(const Test& t);

// The outcome of one finished test process, as ctest would judge it:
// wait_status from waitpid, the process's merged stdout+stderr, and whether
// dtest killed it for exceeding its time limit. A timeout or a death by
// signal wins over everything (WILL_FAIL and the regular expressions
// included); then SKIP_RETURN_CODE or a SKIP_REGULAR_EXPRESSION match skips;
// then a FAIL_REGULAR_EXPRESSION match fails, a PASS_REGULAR_EXPRESSION
// decides instead of the exit status, and WILL_FAIL inverts the result.
Verdict judge(const Test& t, int wait_status, std::string_view output, bool timed_out);

// --- the pieces judge() is made of, exposed for tests --------------------

// The output as ctest matches it: read line by line, a line ending at '\n'
// or a NUL byte, one '\r' before the '\n' dropped, every line (the last one
// too) ending in '\n'.
std::string normalize_output(std::string_view raw);

// CMake's regular expressions (kwsys RegularExpression, what ctest matches
// output with): ^ and $ only at the very start and end of the text; '.'
// matches any byte, newline included; [] sets with ranges, no escapes or
// classes inside; * + ? | and (); a backslash makes the next character
// literal (\d is "d"); everything else, { } included, is literal.
// Compiled to an automaton and run without recursion or backtracking, so a
// huge output cannot overflow the stack (std::regex does, at ~1 MB).
class Regex {
 public:
  // nullopt with `error` (kwsys's wording) for a pattern ctest cannot
  // compile; ctest then never matches it.
  static std::optional<Regex> compile(std::string_view pattern, std::string& error);
  bool search(std::string_view text) const;

  // One instruction of the automaton (a Pike VM without captures).
  struct Inst {
    enum Op : unsigned char { Set, Split, Jmp, Bol, Eol, Match } op;
    int x = 0, y = 0;  // Split: both targets; Jmp: x; Set: x indexes sets_
  };

 private:
  bool run(std::string_view text) const;

  std::vector<Inst> prog_;
  std::vector<std::bitset<256>> sets_;
  std::bitset<256> first_;  // the bytes a match can start with (see compile)
  // Away from the ends of the text (where ^ and $ fail), the Set states
  // reachable without reading from 0 and from after each Set, and whether
  // Match is; empty when that would be too big (run() then walks).
  std::vector<std::vector<int>> closure_;
  std::vector<char> closure_match_;
  std::string literal_;  // the whole pattern when it has no special characters
  bool is_literal_ = false;
};

}  // namespace dtest::ctest
