// --report-log PATH: the run as JSON Lines, one event a line, written and
// flushed as it happens (so a CI step or a dashboard can follow it), in the
// spirit of pytest-reportlog. The events and their fields are in
// docs/design.md ("Reporting and exit codes").
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "master/model.h"

namespace dtest {

class EventLog {
 public:
  // Creates (or truncates) `path`; throws std::runtime_error naming it.
  static std::shared_ptr<EventLog> open(const std::string& path);
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  void session_start(const std::string& testrunuid, const std::string& rootdir, std::size_t workers);
  void gateway_up(const GatewayInfo& g);
  // `lost`: it was up and the run had started; else it failed to come up.
  void gateway_down(const GatewayInfo& g, bool lost, std::size_t requeued);
  void collected(std::size_t tests, std::size_t units);
  void test(const Unit& unit, const TestCase& tc, const TestResult& r);
  void warning(const std::string& text);
  void session_finish(int exit_code, double seconds, const std::map<Outcome, int>& counts);

  // Whether every write so far succeeded; the first failure's description.
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  EventLog(std::FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
  void write(nlohmann::json event);

  std::FILE* f_;
  std::string path_;
  std::string error_;
};

}  // namespace dtest
