// pytest-like terminal output.
#pragma once

#include <chrono>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "master/model.h"

namespace dtest {

struct Summary {
  std::map<Outcome, int> counts;
  double seconds = 0;
  bool interrupted = false;
  std::string interrupt_reason;
  // --maxfail stopped the run: the reason its remaining tests are not run.
  std::string stop_reason;
};

class TerminalReporter {
 public:
  // verbosity: -1 quiet, 0 normal, 1 verbose.
  TerminalReporter(std::ostream& out, int verbosity) : out_(out), verbosity_(verbosity) {}

  void session_start(const std::string& rootdir, std::size_t gateways);
  void gateway_up(const GatewayInfo& gw);
  void gateway_failed(const GatewayInfo& gw);
  void gateway_lost(const GatewayInfo& gw, std::size_t requeued);
  // `binaries`: how many sources; `all_gtest`: name them binaries, else suites.
  // `per_platform` ("gw0: 10, gw1: 12"): under --dist each, when the
  // platforms collected different numbers of tests (`tests` is the first's).
  void collected(std::size_t tests, std::size_t binaries, std::size_t units, bool all_gtest = true,
                 const std::string& per_platform = "");
  void collection_errors(const std::vector<std::string>& errors);
  void warning(const std::string& text);
  // A line of its own at -v (what a sync moved, say).
  void detail(const std::string& text);
  // A line of its own unless -q.
  void note(const std::string& text);
  void set_total(std::size_t total) { total_ = total; }
  void result(const Unit& unit, const TestCase& t, const TestResult& r);
  // Failure sections, short summary and the closing line.
  void finish(const std::vector<Unit>& units, const Summary& summary);

  static std::string summary_line(const Summary& s);

 private:
  void rule(const std::string& title, char fill);
  void progress_newline();
  void flush_soon();
  std::chrono::steady_clock::time_point last_flush_{};
  std::ostream& out_;
  int verbosity_;
  std::size_t total_ = 0;
  std::size_t done_ = 0;
  std::size_t column_ = 0;
  bool in_progress_ = false;
};

// Short letter for progress output: '.', 'F', 's', 'C', 'T', 'x', 'N', 'R' (flaky).
char outcome_letter(Outcome o);

}  // namespace dtest
