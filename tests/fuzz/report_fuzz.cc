// libFuzzer target for the command suites' report readers: the JUnit XML and
// TAP a user's command writes (src/agent/report_parse.cc), and match().
//
// Byte 0 picks the mode (byte0 % 2), the rest is the input:
//   0  junit  parse_junit: no crash, no exception; a parse that succeeds
//             gives cases whose outcome is one a report can state.
//   1  tap    parse_tap: likewise.
// Both then match a few ids against what was parsed: one answer per id.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "agent/report_parse.h"

namespace {

using namespace dtest;

void check(bool ok) {
  if (!ok) std::abort();
}

void fuzz(std::string_view in, bool junit) {
  std::string error;
  auto parsed = junit ? report::parse_junit(in, error) : report::parse_tap(in, error);
  if (!parsed) {
    check(!error.empty());
    return;
  }
  for (const auto& c : parsed->cases)
    check(c.outcome == Outcome::passed || c.outcome == Outcome::failed || c.outcome == Outcome::skipped ||
          c.outcome == Outcome::xfailed);
  std::vector<std::string> ids = {"a", "t.a", "1", "x.py::T::t[p]"};
  for (std::size_t i = 0; i < parsed->cases.size() && i < 4; ++i) ids.push_back(parsed->cases[i].id);
  std::vector<std::string> extra;
  check(report::match(ids, *parsed, extra).size() == ids.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  fuzz(in, data[0] % 2 == 0);
  return 0;
}

#ifdef DTEST_FUZZ_SEED_MAIN
// Seed-corpus writer: report_fuzz_seeds DIR writes a JUnit and a TAP sample.
#include <fstream>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  std::ofstream(dir + "/junit", std::ios::binary)
      << std::string(1, '\0')
      << "<?xml version=\"1.0\"?><testsuites><testsuite name=\"s\" tests=\"3\">"
         "<testcase classname=\"t\" name=\"a\" time=\"0.1\"/>"
         "<testcase classname=\"t\" name=\"b\"><failure message=\"boom\">trace</failure></testcase>"
         "<testcase classname=\"t\" name=\"c\"><skipped message=\"later\"/></testcase>"
         "</testsuite></testsuites>";
  std::ofstream(dir + "/tap", std::ios::binary)
      << std::string(1, '\1')
      << "TAP version 13\n1..4\nok 1 - a\nnot ok 2 - b\n  ---\n  message: boom\n  ...\n"
         "ok 3 - c # SKIP later\nnot ok 4 - d # TODO fix\n";
  return 0;
}
#endif
