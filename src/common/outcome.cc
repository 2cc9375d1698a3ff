#include "common/outcome.h"

#include <array>
#include <utility>

namespace dtest {

namespace {
constexpr std::array<std::pair<Outcome, std::string_view>, 8> kNames{{
    {Outcome::passed, "passed"},
    {Outcome::failed, "failed"},
    {Outcome::skipped, "skipped"},
    {Outcome::xfailed, "xfailed"},
    {Outcome::crashed, "crashed"},
    {Outcome::timeout, "timeout"},
    {Outcome::not_run, "not run"},
    {Outcome::flaky, "flaky"},
}};
}  // namespace

std::string_view to_string(Outcome o) {
  for (const auto& [k, name] : kNames)
    if (k == o) return name;
  return "unknown";
}

std::optional<Outcome> outcome_from_string(std::string_view s) {
  for (const auto& [k, name] : kNames)
    if (name == s) return k;
  return std::nullopt;
}

bool is_failure(Outcome o) {
  return o == Outcome::failed || o == Outcome::crashed ||
         o == Outcome::timeout || o == Outcome::not_run;
}

}  // namespace dtest
