// What the master knows about tests, gateways and results.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/outcome.h"

namespace dtest {

struct TestCase {
  std::string binary;  // as the user named it (display, JUnit)
  int binary_index = -1;  // position of `binary` on the command line
  std::string name;    // GoogleTest full name, "Suite.Name"
  bool disabled = false;
  bool serial = false;  // CTest's RUN_SERIAL: runs when nothing else does
  int weight = 1;       // CTest's PROCESSORS: the workers of one host it takes
  std::string type_param, value_param;
  std::string group;    // pytest's xdist_group mark (loadgroup), else empty
  std::string kind = "gtest";  // the source's kind: gtest, pytest, ctest, command
  // "binary::Suite.Name" for GoogleTest; sources without a display prefix
  // (pytest, CTest and command suites without a `name`) use the bare name,
  // so pytest ids are pytest's node ids.
  std::string id() const { return binary.empty() ? name : binary + "::" + name; }
  // "Suite" of "Suite.Name", "Inst/Suite" of "Inst/Suite.Name/0".
  std::string suite() const { return name.substr(0, name.find('.')); }
  std::string short_name() const {
    const auto dot = name.find('.');
    return dot == std::string::npos ? name : name.substr(dot + 1);
  }
};

struct TestResult {
  Outcome outcome = Outcome::not_run;
  double duration = 0;   // seconds
  std::string output;    // what the test printed
  std::string message;   // short reason: "signal 11 (SIGSEGV)", "disabled", ...
  std::string worker;    // gw0
  std::string gateway;   // the spec, e.g. "popen"
};

struct GatewayInfo {
  std::string id;        // gw0
  std::string spec;      // original xspec
  nlohmann::json hello;  // the agent's hello, once received
  bool up = false;
  bool lost = false;
  std::string error;     // why it failed or was lost
};

// One result table: the whole run under load/no, one per gateway under each.
struct Unit {
  std::string name;  // "" for load; the gateway id under each
  std::vector<TestCase> tests;
  std::vector<std::optional<TestResult>> results;  // parallel to tests
};

}  // namespace dtest
