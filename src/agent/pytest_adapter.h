// pytest adapter, run by the agent on the host where the code is. dtest
// ships a small pytest plugin (src/agent/pytest/dtest_pytest.py, embedded in
// the agent and written to its cache on first use) and drives pytest through
// it: `collect` mode lists node ids, `worker` mode keeps one pytest process
// per worker slot alive across batches, fed node ids over a pipe, answering
// with JSON-line events (docs/protocol.md, "pytest worker").
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/runner.h"

namespace dtest::pytest {

// Where the plugin lives on this host (written there if missing).
std::string plugin_dir();

struct Source {
  std::string python;             // interpreter; empty: $DTEST_PYTHON, else python3
  std::string cwd;                // where pytest runs (its rootdir search starts here)
  std::vector<std::string> args;  // the user's pytest arguments
  std::map<std::string, std::string> env;
  static Source from_json(const nlohmann::json& d);  // throws ProtocolError
  std::string key() const;
};

class Worker;

// The persistent workers of this agent, by source. Shutdown asks each to
// finish (session teardown runs) and kills those that do not in time.
class WorkerPool {
 public:
  ~WorkerPool();
  // Collects with a worker process that then stays in the pool for this
  // source's batches (one collection instead of two). Returns a `collected`
  // entry: {path, count, names, groups?: [[i, name]], errors?: [text]} or
  // {path, error}.
  nlohmann::json collect(const Source& src, const std::map<std::string, std::string>& env, double timeout_s = 300);
  // Starts a worker now (it collects while the master is still collecting
  // elsewhere); the first batch takes it.
  void warm(const Source& src, const std::map<std::string, std::string>& env);
  std::shared_ptr<Worker> take(const Source& src, const std::map<std::string, std::string>& env);
  void give_back(std::shared_ptr<Worker> w);
  void shutdown(double grace_s = 5);

 private:
  std::multimap<std::string, std::shared_ptr<Worker>> idle_;
};

// One batch on a persistent worker.
std::unique_ptr<Runner> make_runner(WorkerPool& pool, const Source& src, std::vector<std::string> ids,
                                    const std::map<std::string, std::string>& env, double timeout);

}  // namespace dtest::pytest
