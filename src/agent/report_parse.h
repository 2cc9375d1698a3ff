// Parsers for the result files of the "command" suite kind (testrepository
// style): the user's command runs a set of test ids and reports per-test
// results as JUnit XML or TAP, in a file or on stdout. These map each case
// to a dtest outcome, and match() pairs the cases with the requested ids.
// Pure functions over bytes, no I/O, so they are unit-testable and fuzzable.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/outcome.h"

namespace dtest::report {

struct Case {
  // The test's id as the report names it. JUnit: classname + "." + name, or
  // name alone when classname is empty or equal to name (ctest writes
  // classname="t" name="t"), classname alone when name is empty. TAP: the
  // description without a leading "- ", trimmed; the test number when there
  // is no description.
  std::string id;
  std::string name;       // JUnit name attribute; TAP: same as id
  std::string classname;  // JUnit classname attribute; TAP: empty
  // passed, failed, skipped or xfailed: a report cannot tell a crash.
  Outcome outcome = Outcome::passed;
  double seconds = 0;   // 0 when the report has no time
  std::string message;  // one line: the failure, skip or TODO message
  // JUnit: failure/error text, then system-out, then system-err.
  // TAP: the YAML block and the "#" lines that follow the test line.
  std::string output;
};

struct Parsed {
  std::vector<Case> cases;            // in report order
  std::vector<std::string> warnings;  // each names its line
};

// JUnit XML in the Ant/Surefire/pytest/GoogleTest/ctest dialects:
// <testsuites>/<testsuite> nested at any depth around <testcase name
// classname time>. Children <failure> -> failed, <error> -> failed with the
// message prefixed "error: ", <skipped> -> skipped (pytest's
// type="pytest.xfail" -> xfailed), no child -> passed unless a status
// attribute says the test did not run (gtest DISABLED_, ctest disabled).
// Malformed XML, or a root that is not <testsuites>/<testsuite>, -> nullopt
// and `error` names the line, column and offset.
std::optional<Parsed> parse_junit(std::string_view xml, std::string& error);

// TAP 12/13/14: plan "1..N" first or last; "ok N - desc" / "not ok N desc";
// directives "# SKIP reason" -> skipped, "# TODO reason" -> xfailed when not
// ok, passed with a warning when ok; the YAML block (---/...) and "#" lines
// after a test line go into its output. "Bail out!" ends the parse; the
// planned tests that did not run are named in a warning. Indented lines
// (subtests) are ignored; lines that are not TAP are ignored with a warning.
// Input with no plan, test line or bail out at all -> nullopt and `error`.
std::optional<Parsed> parse_tap(std::string_view tap, std::string& error);

// For each requested id, its case in the report (nullopt when missing),
// trying in order: the case id exactly; classname + "." + name; classname +
// "::" + name; a pytest node id ("dir/test_m.py::Class::test[p]") in the
// classname pytest's junitxml derives from it ("dir.test_m.Class"); the bare
// name when exactly one case id has it. A test the report names more than
// once (reruns, a teardown error written as a second testcase) resolves to
// its first failing case, else its first. `unmatched_case_ids` is replaced
// by the ids of the report's cases that no requested id resolved to, in
// report order, each once.
std::vector<std::optional<Case>> match(
    const std::vector<std::string>& ids, const Parsed& report,
    std::vector<std::string>& unmatched_case_ids);

}  // namespace dtest::report
