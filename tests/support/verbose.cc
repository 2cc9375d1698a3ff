#include "support/verbose.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <regex>
#include <sstream>
#include <utility>

namespace dtest::testing {

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

std::vector<VLine> parse_verbose(const std::string& out) {
  static const std::regex re(
      R"(^(?:\[(gw\d+)\] )?\[ *\d+%\] (PASSED|FAILED|SKIPPED|XFAILED|CRASHED|TIMEOUT|NOT RUN|FLAKY) (.+?)(?: \((gw\d+)\))?(?: - (.*))?$)");
  std::vector<VLine> v;
  for (const auto& l : split_lines(out)) {
    std::smatch m;
    if (!std::regex_match(l, m, re)) continue;
    VLine x;
    x.worker = m[1];
    x.outcome = m[2];
    std::transform(x.outcome.begin(), x.outcome.end(), x.outcome.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    x.id = m[3];
    x.unit = m[4];
    x.message = m[5];
    v.push_back(std::move(x));
  }
  return v;
}

std::map<std::string, VLine> by_id(const std::vector<VLine>& lines) {
  std::map<std::string, VLine> m;
  for (const auto& l : lines) EXPECT_TRUE(m.emplace(l.id, l).second) << "test reported twice: " << l.id;
  return m;
}

std::map<std::string, std::string> outcomes(const std::string& out) {
  std::map<std::string, std::string> m;
  for (const auto& [id, l] : by_id(parse_verbose(out))) m[id] = l.outcome;
  return m;
}

}  // namespace dtest::testing
