// The agent's side of the suite kinds beyond GoogleTest: collecting a
// source (one entry of the `collect` message's `sources`) and turning a
// `run` message into a Runner. GoogleTest keeps its own path in agent.cc.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/pytest_adapter.h"
#include "agent/runner.h"

namespace dtest {

class SuiteHost {
 public:
  // A `collected` entry for one source descriptor (kind ctest, pytest or
  // command): {path, count, names, disabled?, groups?, errors?} or
  // {path, error}. Throws ProtocolError for a malformed descriptor.
  // `env`: the worker's (DTEST_WORKER, ...): a pytest source is collected
  // by the worker that will then run it.
  nlohmann::json collect(const nlohmann::json& source, const nlohmann::json& env = {});
  // `warm`: start pytest workers ahead of the first batch.
  void warm(const nlohmann::json& sources, const nlohmann::json& env);
  // The runner for one batch of a non-GoogleTest source.
  std::unique_ptr<Runner> runner(const nlohmann::json& source, std::vector<std::string> tests,
                                 const std::map<std::string, std::string>& env, double timeout);
  void shutdown() { pytest_.shutdown(); }

 private:
  pytest::WorkerPool pytest_;
  struct CtestListing;
  std::map<std::string, std::shared_ptr<CtestListing>> ctest_;  // by build dir + labels
  // The build tree's listing, cached per agent; `fresh`: list it again.
  std::shared_ptr<CtestListing> ctest_listing(const nlohmann::json& source, std::string& error, bool fresh = false);
};

// "'a b'" -> a shell word that stands for exactly that string.
std::string shell_quote(const std::string& s);

}  // namespace dtest
