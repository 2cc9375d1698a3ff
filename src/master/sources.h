// What a run runs: the sources (GoogleTest binaries, CTest build trees,
// pytest projects, command suites) from the command line, the config file's
// [[suite]]s, or what the working directory looks like.
#pragma once

#include <string>
#include <vector>

#include "master/config.h"
#include "master/session.h"

namespace dtest {

// Fills opts.binaries / binary_paths / kinds / descriptors /
// source_timeouts. Positional arguments win over the config's suites:
// executables are GoogleTest binaries, a folder holding CTestTestfile.cmake
// is a CTest build tree, anything else (a .py file, a node id, a folder) is
// a pytest argument. With neither, the working directory is looked at: a
// CMake build tree, else a pytest project. `pytest_args` (after `--`) go to
// every pytest source. Problems are appended to `errors`; `notes` say what
// was detected.
void resolve_sources(const std::vector<std::string>& positionals, const std::vector<std::string>& pytest_args,
                     const config::Config& cfg, const std::string& cwd, RunOptions& opts,
                     std::vector<std::string>& errors, std::vector<std::string>& notes);

// True when `dir` looks like a pytest project (pytest.ini, conftest.py, a
// [tool.pytest...] table, test_*.py files in it or in tests/).
bool looks_like_pytest_project(const std::string& dir);

// A one-line description of a source, for --show-config and messages.
std::string describe_source(const RunOptions& opts, std::size_t k);

}  // namespace dtest
