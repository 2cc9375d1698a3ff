#include "master/event_log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

namespace dtest {

std::shared_ptr<EventLog> EventLog::open(const std::string& path) {
  // As --junitxml does, the folders it names are created.
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error(fmt::format("--report-log: cannot write {}: {}", path, std::strerror(errno)));
  return std::shared_ptr<EventLog>(new EventLog(f, path));
}

EventLog::~EventLog() {
  if (f_) std::fclose(f_);
}

void EventLog::write(nlohmann::json event) {
  if (!error_.empty()) return;
  // Replace invalid UTF-8 (a test's raw output) rather than throw.
  const std::string line = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    error_ = fmt::format("--report-log: writing {} failed: {}", path_, std::strerror(errno));
}

void EventLog::session_start(const std::string& testrunuid, const std::string& rootdir, std::size_t workers) {
  const auto now = std::chrono::system_clock::now();
  const double unix_time = std::chrono::duration<double>(now.time_since_epoch()).count();
  write({{"event", "session_start"},
         {"dtest_version", DTEST_VERSION},
         {"testrunuid", testrunuid},
         {"rootdir", rootdir},
         {"workers", workers},
         {"time", unix_time}});
}

void EventLog::gateway_up(const GatewayInfo& g) {
  nlohmann::json e = {{"event", "gateway_up"}, {"id", g.id}, {"spec", g.spec}};
  for (const char* key : {"hostname", "os", "arch", "cpus", "agent_version"})
    if (g.hello.is_object() && g.hello.contains(key)) e[key] = g.hello[key];
  write(std::move(e));
}

void EventLog::gateway_down(const GatewayInfo& g, bool lost, std::size_t requeued) {
  nlohmann::json e = {
      {"event", lost ? "gateway_lost" : "gateway_failed"}, {"id", g.id}, {"spec", g.spec}, {"error", g.error}};
  if (lost) e["requeued"] = requeued;
  write(std::move(e));
}

void EventLog::collected(std::size_t tests, std::size_t units) {
  write({{"event", "collected"}, {"tests", tests}, {"platforms", units}});
}

void EventLog::test(const Unit& unit, const TestCase& tc, const TestResult& r) {
  nlohmann::json e = {{"event", "test"},
                      {"id", tc.id()},
                      {"kind", tc.kind},
                      {"outcome", std::string(to_string(r.outcome))},
                      {"duration", r.duration},
                      {"worker", r.worker},
                      {"gateway", r.gateway}};
  if (!unit.name.empty()) e["platform"] = unit.name;
  if (!r.message.empty()) e["message"] = r.message;
  if (!r.output.empty()) e["output"] = r.output;
  write(std::move(e));
}

void EventLog::warning(const std::string& text) { write({{"event", "warning"}, {"text", text}}); }

void EventLog::session_finish(int exit_code, double seconds, const std::map<Outcome, int>& counts) {
  nlohmann::json c = nlohmann::json::object();
  for (const auto& [o, n] : counts)
    if (n > 0) c[std::string(to_string(o))] = n;
  write({{"event", "session_finish"}, {"exit_code", exit_code}, {"seconds", seconds}, {"counts", c}});
}

}  // namespace dtest
