#include "master/junit_reporter.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <tuple>
#include <map>
#include <stdexcept>
#include <unistd.h>

#include <fmt/format.h>

namespace dtest {

std::string xml_escape(std::string_view s) {
  std::string o;
  o.reserve(s.size());
  for (unsigned char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        if (c < 0x20 && c != '\n' && c != '\t' && c != '\r')
          o += fmt::format("\\x{:02x}", c);  // not representable in XML 1.0
        else
          o += static_cast<char>(c);
    }
  }
  return o;
}

namespace {

struct Counts {
  int tests = 0, failures = 0, errors = 0, skipped = 0;
  double time = 0;
};

void add(Counts& c, const TestResult& r) {
  ++c.tests;
  c.time += r.duration;
  switch (r.outcome) {
    case Outcome::failed: ++c.failures; break;
    case Outcome::crashed:
    case Outcome::timeout:
    case Outcome::not_run: ++c.errors; break;
    case Outcome::skipped:
    case Outcome::xfailed: ++c.skipped; break;
    case Outcome::passed:
    case Outcome::flaky: break;  // passed on a retry
  }
}

std::string attrs(const Counts& c) {
  return fmt::format("tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3f}\"", c.tests,
                     c.failures, c.errors, c.skipped, c.time);
}

// classname, name and file of a test case, as each framework's own JUnit
// writer names them: GoogleTest "Suite" / "Name"; pytest (its junitxml's
// mangling) "dir.test_mod.Class" / "test[param]" with the file; CTest and
// command tests their suite's name (or kind) / the id.
std::tuple<std::string, std::string, std::string> junit_names(const TestCase& t) {
  if (t.kind == "gtest") return {t.suite(), t.short_name(), t.binary};
  if (t.kind == "pytest") {
    std::vector<std::string> parts;
    for (std::size_t pos = 0;;) {
      const std::size_t next = t.name.find("::", pos);
      parts.push_back(t.name.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
      if (next == std::string::npos) break;
      pos = next + 2;
    }
    std::string file = parts.front();
    std::string cls = file;
    if (cls.size() > 3 && cls.ends_with(".py")) cls.resize(cls.size() - 3);
    std::replace(cls.begin(), cls.end(), '/', '.');
    for (std::size_t k = 1; k + 1 < parts.size(); ++k) cls += "." + parts[k];
    std::string name = parts.size() > 1 ? parts.back() : t.name;
    if (!t.binary.empty()) cls = t.binary + "." + cls;
    return {cls, name, file};
  }
  return {t.binary.empty() ? t.kind : t.binary, t.name, std::string()};
}

}  // namespace

std::string junit_xml(const std::vector<Unit>& units, double seconds, const std::string& hostname) {
  std::string body;
  Counts total;
  for (const auto& u : units) {
    // Binaries in first-seen order.
    std::vector<std::string> order;
    std::map<std::string, std::vector<std::size_t>> by_binary;
    for (std::size_t i = 0; i < u.tests.size(); ++i) {
      auto& v = by_binary[u.tests[i].binary];
      if (v.empty()) order.push_back(u.tests[i].binary);
      v.push_back(i);
    }
    for (const auto& bin : order) {
      Counts c;
      std::string cases;
      for (std::size_t i : by_binary[bin]) {
        const auto& t = u.tests[i];
        if (!u.results[i]) continue;
        const auto& r = *u.results[i];
        add(c, r);
        const auto [classname, name, file] = junit_names(t);
        cases += fmt::format("    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{:.3f}\">\n",
                             xml_escape(classname), xml_escape(name), xml_escape(file), r.duration);
        cases += fmt::format(
            "      <properties><property name=\"worker\" value=\"{}\"/><property name=\"gateway\" "
            "value=\"{}\"/><property name=\"outcome\" value=\"{}\"/></properties>\n",
            xml_escape(r.worker), xml_escape(r.gateway), to_string(r.outcome));
        const std::string out = xml_escape(r.output);
        switch (r.outcome) {
          case Outcome::failed:
            cases += fmt::format("      <failure message=\"{}\">{}</failure>\n",
                                 xml_escape(r.message.empty() ? "failed" : r.message), out);
            break;
          case Outcome::crashed:
          case Outcome::timeout:
          case Outcome::not_run:
            cases += fmt::format("      <error type=\"{}\" message=\"{}\">{}</error>\n",
                                 to_string(r.outcome), xml_escape(r.message), out);
            break;
          case Outcome::skipped:
          case Outcome::xfailed:
            cases += fmt::format("      <skipped message=\"{}\"/>\n", xml_escape(r.message));
            break;
          case Outcome::passed:
            if (!out.empty()) cases += fmt::format("      <system-out>{}</system-out>\n", out);
            break;
          case Outcome::flaky:
            // A pass (no failure element); the note says what came before.
            cases += fmt::format("      <system-out>dtest: flaky: {}\n{}</system-out>\n",
                                 xml_escape(r.message), out);
            break;
        }
        cases += "    </testcase>\n";
      }
      total.tests += c.tests;
      total.failures += c.failures;
      total.errors += c.errors;
      total.skipped += c.skipped;
      // Sources without a display prefix are named by their kind.
      const std::string shown = bin.empty() ? u.tests[by_binary[bin].front()].kind : bin;
      const std::string name = u.name.empty() ? shown : shown + " [" + u.name + "]";
      body += fmt::format("  <testsuite name=\"{}\" {} hostname=\"{}\">\n", xml_escape(name), attrs(c),
                          xml_escape(hostname));
      if (!u.name.empty())
        body += fmt::format("    <properties><property name=\"platform\" value=\"{}\"/></properties>\n",
                            xml_escape(u.name));
      body += cases;
      body += "  </testsuite>\n";
    }
  }
  total.time = seconds;
  return "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuites name=\"dtest\" " + attrs(total) +
         ">\n" + body + "</testsuites>\n";
}

void write_junit(const std::string& path, const std::string& xml) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
    f << xml;
    if (!f.flush()) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw std::runtime_error("cannot write " + path + ": " + ec.message());
  }
}

}  // namespace dtest
