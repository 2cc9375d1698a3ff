// Test outcomes shared by the agent, the wire protocol and the reporters.
#pragma once

#include <optional>
#include <string_view>

namespace dtest {

// Every collected test ends with exactly one of these.
enum class Outcome {
  passed,
  failed,
  skipped,
  xfailed,
  crashed,   // the test process died (signal, abort, exit) while running it
  timeout,   // killed after exceeding its time limit
  not_run,   // never ran; the result carries the reason
  // Failed (or crashed, timed out), then passed when --retries ran it again.
  // Master-only: the agent never sends it, and decode_records rejects its
  // wire code (anything above not_run) from an agent.
  flaky,
};

std::string_view to_string(Outcome o);
std::optional<Outcome> outcome_from_string(std::string_view s);

// True for outcomes that make the run fail (exit code 1). `flaky` is not
// one (it counts as passed; --flaky-fails is the session's business).
bool is_failure(Outcome o);

}  // namespace dtest
