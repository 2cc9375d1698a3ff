// The tests/fixtures/command_suite project as the framework tests configure
// it (locally and over ssh): a TAP suite and a file-glob suite, and the
// outcomes running either must give.
#pragma once

#include <map>
#include <string>

namespace dtest::testing {

// dtest.toml for the fixture: suites "tap" (list.sh + run_tap.sh) and
// "files" (cases/*.sh).
inline const std::string kCommandSuiteToml = R"([[suite]]
kind = "command"
name = "tap"
list = "./list.sh"
run = "./run_tap.sh {ids}"
format = "tap"

[[suite]]
kind = "command"
name = "files"
files = ["cases/*.sh"]
run = "sh {file}"
)";

inline const std::map<std::string, std::string> kCommandSuiteOutcomes = {
    {"tap::pass_one", "passed"},           {"tap::pass_two", "passed"},
    {"tap::fails", "failed"},              {"tap::skips", "skipped"},
    {"files::cases/pass_one.sh", "passed"}, {"files::cases/pass_two.sh", "passed"},
    {"files::cases/fails.sh", "failed"},   {"files::cases/skips.sh", "skipped"}};

}  // namespace dtest::testing
