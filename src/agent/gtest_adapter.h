// GoogleTest adapter, run by the agent on the host where the binaries are.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dtest::gtest {

// Lists one binary with --gtest_list_tests. Returns
//   {"path": P, "count": N, "names": "A.x\nA.y\n...", "disabled": [i...]?,
//    "type_params": [[i, text]...]?, "value_params": [[i, text]...]?}
// or {"path": P, "error": "..."} saying clearly why it could not be listed.
nlohmann::json collect_binary(const std::string& path, double timeout_s = 120);

// What running this binary costs, remembered beside its cached listing (so
// a rebuilt binary starts afresh): seconds from spawn to the first test, and
// seconds per test after that. `record_cost` folds one batch in (an average
// weighted towards recent batches); both are no-ops when the cache is off.
struct Cost {
  double startup = 0;
  double per_test = 0;
};
std::optional<Cost> read_cost(const std::string& binary);
void record_cost(const std::string& binary, double startup, double per_test);

// The command line that runs `tests` of `binary` in one process. A filter
// too long for one argument goes through a --gtest_flagfile written to
// `flagfile_path` (the caller deletes it afterwards); `flagfile_path` is
// cleared when no file was needed.
std::vector<std::string> batch_command(const std::string& binary,
                                       const std::vector<std::string>& tests,
                                       std::string& flagfile_path);

// A shard k of n runs with no filter: GoogleTest's own sharding picks the
// runnable tests at positions p % n == k (GTEST_TOTAL_SHARDS /
// GTEST_SHARD_INDEX), which is how the master cut the batch. Returns false
// when this environment would make GoogleTest count differently
// (GTEST_ALSO_RUN_DISABLED_TESTS set): the caller then uses a filter.
bool shard_command(const std::string& binary, int index, int count, std::vector<std::string>& argv,
                   std::map<std::string, std::string>& env);

}  // namespace dtest::gtest
