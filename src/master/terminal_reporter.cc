#include "master/terminal_reporter.h"

#include <fmt/format.h>

namespace dtest {

namespace {
constexpr std::size_t kWidth = 80;
constexpr std::size_t kProgressWidth = 72;

std::string upper(std::string_view s) {
  std::string u(s);
  for (auto& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}
}  // namespace

char outcome_letter(Outcome o) {
  switch (o) {
    case Outcome::passed: return '.';
    case Outcome::failed: return 'F';
    case Outcome::skipped: return 's';
    case Outcome::xfailed: return 'x';
    case Outcome::crashed: return 'C';
    case Outcome::timeout: return 'T';
    case Outcome::not_run: return 'N';
    case Outcome::flaky: return 'R';
  }
  return '?';
}

void TerminalReporter::rule(const std::string& title, char fill) {
  if (title.empty()) {
    out_ << std::string(kWidth, fill) << "\n";
    return;
  }
  const std::string t = " " + title + " ";
  const std::size_t pad = t.size() < kWidth ? kWidth - t.size() : 0;
  out_ << std::string(pad / 2, fill) << t << std::string(pad - pad / 2, fill) << "\n";
}

// Output reaches a pipe (CI, tee) as it happens, without a write per test.
void TerminalReporter::flush_soon() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_flush_ >= std::chrono::milliseconds(100)) {
    out_.flush();
    last_flush_ = now;
  }
}

void TerminalReporter::progress_newline() {
  if (!in_progress_) return;
  const unsigned pct = total_ ? static_cast<unsigned>(done_ * 100 / total_) : 100;
  out_ << std::string(column_ < kProgressWidth ? kProgressWidth - column_ : 1, ' ')
       << fmt::format("[{:3}%]", pct) << "\n";
  column_ = 0;
  in_progress_ = false;
}

void TerminalReporter::session_start(const std::string& rootdir, std::size_t gateways) {
  if (verbosity_ < 0) return;
  rule("test session starts", '=');
  out_ << "dtest " << DTEST_VERSION << " -- rootdir: " << rootdir << "\n";
  out_ << "starting " << gateways << (gateways == 1 ? " gateway" : " gateways") << "\n";
  out_.flush();
}

void TerminalReporter::gateway_up(const GatewayInfo& gw) {
  if (verbosity_ < 0) return;
  const auto& h = gw.hello;
  out_ << fmt::format("[{}] {} {} -- {} cpus -- host {} -- agent {} pid {} -- {}\n", gw.id,
                      h.value("os", "?"), h.value("arch", "?"), h.value("cpus", 0),
                      h.value("hostname", "?"), h.value("agent_version", "?"), h.value("pid", 0),
                      gw.spec);
  out_.flush();
}

void TerminalReporter::gateway_failed(const GatewayInfo& gw) {
  progress_newline();
  out_ << fmt::format("[{}] gateway failed ({}): {}\n", gw.id, gw.spec, gw.error);
  out_.flush();
}

void TerminalReporter::gateway_lost(const GatewayInfo& gw, std::size_t requeued) {
  progress_newline();
  out_ << fmt::format("[{}] gateway lost ({}): {}; {} test(s) returned to the queue\n", gw.id,
                      gw.spec, gw.error, requeued);
  out_.flush();
}

void TerminalReporter::collected(std::size_t tests, std::size_t binaries, std::size_t units, bool all_gtest,
                                 const std::string& per_platform) {
  if (verbosity_ < 0) return;
  if (all_gtest)
    out_ << fmt::format("collected {} test{} from {} binar{}", tests, tests == 1 ? "" : "s", binaries,
                        binaries == 1 ? "y" : "ies");
  else
    out_ << fmt::format("collected {} test{} from {} suite{}", tests, tests == 1 ? "" : "s", binaries,
                        binaries == 1 ? "" : "s");
  if (units > 1 && per_platform.empty()) out_ << fmt::format(" (x{} platforms, --dist each)", units);
  if (units > 1 && !per_platform.empty())
    out_ << fmt::format(" (x{} platforms, --dist each; {})", units, per_platform);
  out_ << "\n";
  if (verbosity_ >= 0) out_ << "\n";
  out_.flush();
}

void TerminalReporter::collection_errors(const std::vector<std::string>& errors) {
  progress_newline();
  rule("ERRORS", '=');
  for (const auto& e : errors) {
    rule("ERROR collecting", '_');
    out_ << e << "\n";
  }
  out_.flush();
}

void TerminalReporter::warning(const std::string& text) {
  progress_newline();
  out_ << "dtest: warning: " << text << "\n";
  out_.flush();
}

void TerminalReporter::note(const std::string& text) {
  if (verbosity_ < 0) return;
  progress_newline();
  out_ << text << "\n";
  out_.flush();
}

void TerminalReporter::detail(const std::string& text) {
  if (verbosity_ <= 0) return;
  progress_newline();
  out_ << text << "\n";
  out_.flush();
}

void TerminalReporter::result(const Unit& unit, const TestCase& t, const TestResult& r) {
  ++done_;
  if (verbosity_ > 0) {
    const unsigned pct = total_ ? static_cast<unsigned>(done_ * 100 / total_) : 100;
    if (!r.worker.empty()) out_ << "[" << r.worker << "] ";
    out_ << fmt::format("[{:3}%] {} {}", pct, upper(to_string(r.outcome)), t.id());
    if (!unit.name.empty() && unit.name != r.worker) out_ << " (" << unit.name << ")";
    if (r.outcome == Outcome::flaky && !r.message.empty())
      out_ << " (" << r.message << ")";
    else if (r.outcome != Outcome::passed && !r.message.empty())
      out_ << " - " << r.message;
    out_ << "\n";
    flush_soon();
    return;
  }
  out_ << outcome_letter(r.outcome);
  in_progress_ = true;
  if (++column_ >= kProgressWidth) progress_newline();
  flush_soon();
}

std::string TerminalReporter::summary_line(const Summary& s) {
  static constexpr Outcome kOrder[] = {Outcome::failed,  Outcome::crashed, Outcome::timeout,
                                       Outcome::passed,  Outcome::flaky,   Outcome::skipped,
                                       Outcome::xfailed, Outcome::not_run};
  std::string line;
  for (Outcome o : kOrder) {
    auto it = s.counts.find(o);
    if (it == s.counts.end() || it->second == 0) continue;
    if (!line.empty()) line += ", ";
    line += fmt::format("{} {}", it->second, to_string(o));
  }
  if (line.empty()) line = "no tests ran";
  line += fmt::format(" in {:.2f}s", s.seconds);
  return line;
}

void TerminalReporter::finish(const std::vector<Unit>& units, const Summary& summary) {
  progress_newline();
  struct Bad {
    const Unit* unit;
    const TestCase* test;
    const TestResult* result;
  };
  std::vector<Bad> bad;
  // Tests not run because the whole run stopped (--maxfail, an interrupt)
  // get one line in the short summary, not a section each.
  const std::string& run_reason = summary.interrupted ? summary.interrupt_reason : summary.stop_reason;
  std::size_t stopped = 0;
  std::vector<Bad> flaky;  // a line each in the short summary, no section
  for (const auto& u : units)
    for (std::size_t i = 0; i < u.tests.size(); ++i) {
      const auto& r = u.results[i];
      if (r && r->outcome == Outcome::flaky) flaky.push_back({&u, &u.tests[i], &*r});
      if (!r || !is_failure(r->outcome)) continue;
      if (r->outcome == Outcome::not_run && !run_reason.empty() && r->message == run_reason)
        ++stopped;
      else
        bad.push_back({&u, &u.tests[i], &*r});
    }

  if (!bad.empty() && verbosity_ >= 0) {
    rule("FAILURES", '=');
    for (const auto& b : bad) {
      std::string title = b.test->id();
      if (!b.unit->name.empty()) title += " [" + b.unit->name + "]";
      rule(title, '_');
      const auto& r = *b.result;
      if (!r.worker.empty()) out_ << "[" << r.worker << "] ";
      out_ << to_string(r.outcome);
      if (!r.message.empty()) out_ << ": " << r.message;
      out_ << "\n";
      if (!r.output.empty()) {
        out_ << r.output;
        if (r.output.back() != '\n') out_ << "\n";
      }
    }
  }
  if (!bad.empty() || stopped > 0 || !flaky.empty()) {
    if (verbosity_ >= 0) rule("short test summary info", '=');
    for (const auto& f : flaky) {
      out_ << "FLAKY " << f.test->id();
      if (!f.unit->name.empty()) out_ << " [" << f.unit->name << "]";
      if (!f.result->message.empty()) out_ << " - " << f.result->message;
      out_ << "\n";
    }
    for (const auto& b : bad) {
      out_ << upper(to_string(b.result->outcome)) << " " << b.test->id();
      if (!b.unit->name.empty()) out_ << " [" << b.unit->name << "]";
      if (!b.result->message.empty() && b.result->outcome != Outcome::failed)
        out_ << " - " << b.result->message;
      out_ << "\n";
    }
    if (stopped > 0)
      out_ << fmt::format("NOT RUN {} test{} - {}\n", stopped, stopped == 1 ? "" : "s", run_reason);
  }
  if (units.size() > 1 && verbosity_ >= 0) {
    for (const auto& u : units) {
      Summary s;
      s.seconds = summary.seconds;
      for (const auto& r : u.results)
        if (r) ++s.counts[r->outcome];
      out_ << fmt::format("[{}] {}\n", u.name, summary_line(s));
    }
  }
  if (summary.interrupted) out_ << "!!!!!!!!!! Interrupted: " << summary.interrupt_reason << " !!!!!!!!!!\n";
  else if (!summary.stop_reason.empty()) out_ << "!!!!!!!!!! " << summary.stop_reason << " !!!!!!!!!!\n";
  if (verbosity_ < 0)
    out_ << summary_line(summary) << "\n";
  else
    rule(summary_line(summary), '=');
  out_.flush();
}

}  // namespace dtest
