#include "agent/ctest_adapter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "agent/subprocess.h"

extern char** environ;

namespace dtest::ctest {
namespace {

namespace fs = std::filesystem;
// Inside a TEST body plain "Test" is ::testing::Test.
using CTest = dtest::ctest::Test;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---------------------------------------------------------------------------
// CMake regular expressions. Every expectation here was first checked with
// ctest 3.25 (a PASS_REGULAR_EXPRESSION over a test printing the text).
// ---------------------------------------------------------------------------

bool matches(std::string_view pattern, std::string_view text) {
  std::string error;
  const auto rx = Regex::compile(pattern, error);
  EXPECT_TRUE(rx.has_value()) << pattern << ": " << error;
  return rx && rx->search(text);
}

std::string compile_error(std::string_view pattern) {
  std::string error;
  if (Regex::compile(pattern, error)) return "(compiled)";
  return error;
}

TEST(CtestRegex, LiteralsAndTheEmptyPattern) {
  EXPECT_TRUE(matches("abc", "xxabcxx"));
  EXPECT_FALSE(matches("abd", "xxabcxx"));
  EXPECT_TRUE(matches("", "anything"));
  EXPECT_TRUE(matches("q|", "zzz\n"));  // an empty alternative matches
}

TEST(CtestRegex, AnchorsAreTheEndsOfTheWholeText) {
  EXPECT_TRUE(matches("^a", "a\nb\n"));
  EXPECT_FALSE(matches("^b", "a\nb\n"));
  EXPECT_FALSE(matches("a$", "a\nb\n"));
  EXPECT_FALSE(matches("b$", "a\nb\n"));  // the last newline is text too
  EXPECT_TRUE(matches("b\n$", "a\nb\n"));
  EXPECT_TRUE(matches("^$", ""));
  EXPECT_FALSE(matches("a$b", "ab\n"));
  EXPECT_FALSE(matches("a^b", "ab\n"));
}

TEST(CtestRegex, DotMatchesANewline) {
  EXPECT_TRUE(matches("a.b", "a\nb\n"));
  EXPECT_TRUE(matches("^a.b\n$", "a\nb\n"));
}

TEST(CtestRegex, BackslashAndBracesAreLiteral) {
  EXPECT_FALSE(matches(R"(\d)", "5\n"));
  EXPECT_TRUE(matches(R"(\d)", "d\n"));
  EXPECT_TRUE(matches(R"(a\*)", "a*"));
  EXPECT_FALSE(matches(R"(a\.b)", "axb"));
  EXPECT_FALSE(matches("a{2}", "aa\n"));
  EXPECT_TRUE(matches("a{2}", "a{2}\n"));
}

TEST(CtestRegex, BracketSets) {
  EXPECT_TRUE(matches("x|[a-c-e]", "d\n"));  // a second range starts after 'c'
  EXPECT_TRUE(matches("[]a]", "]\n"));
  EXPECT_TRUE(matches("[a-]", "-\n"));
  EXPECT_FALSE(matches(R"([\]])", "\\\n"));  // the set is {'\'}, then a literal ']'
  EXPECT_TRUE(matches(R"([\]])", "\\]"));
  EXPECT_TRUE(matches("[^a-z]", "ab1"));
  EXPECT_FALSE(matches("[^a-z]", "abc"));
  EXPECT_TRUE(matches("[^a-z]", "abc\n"));  // the newline is not in a-z
}

TEST(CtestRegex, GroupsAlternationAndRepetition) {
  EXPECT_TRUE(matches("^(ab)+c", "ababc\n"));
  EXPECT_FALSE(matches("^(ab)+c", "ac\n"));
  EXPECT_TRUE(matches("colou?r", "color"));
  EXPECT_TRUE(matches("a(b|c)*d\n$", "abcbcd\n"));
  EXPECT_TRUE(matches("x(y|)z", "xz\n"));
  EXPECT_TRUE(matches("(^)?a", "a\n"));
  EXPECT_TRUE(matches("nothing|all go+d", "all goood\n"));
  EXPECT_TRUE(matches("(((((((((a)))))))))", "a"));  // nine groups: the most kwsys takes
}

TEST(CtestRegex, InvalidPatternsFailAsKwsysDoes) {
  EXPECT_EQ(compile_error("("), "Unmatched parentheses.");
  EXPECT_EQ(compile_error("a)"), "Unmatched parentheses.");
  EXPECT_EQ(compile_error("*a"), "?+* follows nothing.");
  EXPECT_EQ(compile_error("(a*)*"), "*+ operand could be empty.");
  EXPECT_EQ(compile_error("^*a"), "*+ operand could be empty.");
  EXPECT_EQ(compile_error("a**"), "Nested *?+.");
  EXPECT_EQ(compile_error("[abc"), "Unmatched [].");
  EXPECT_EQ(compile_error("[c-a]"), "Invalid range in [].");
  EXPECT_EQ(compile_error("a\\"), "Trailing backslash.");
  EXPECT_EQ(compile_error("((((((((((a))))))))))"), "Too many parentheses.");
}

TEST(CtestRegex, SearchesHugeOutputWithoutRecursion) {
  // std::regex_search overflows an 8 MB stack on this.
  const std::string text = std::string(2u << 20, 'a') + "b";
  EXPECT_TRUE(matches("^a(a|.)*b$", text));
  // Where nothing is under way the search skips to a possible first byte.
  std::string log(2u << 20, '.');
  log += "\nERROR: 42\n";
  EXPECT_TRUE(matches("ERROR: [0-9]+\n$", log));
  EXPECT_FALSE(matches("ERROR: [0-9]+x", log));
  EXPECT_TRUE(matches("x*$", log));
  EXPECT_FALSE(matches("^E", log));
}

// A random pattern over a small alphabet, in kwsys's syntax and in
// ECMAScript's (where '.' must be spelled [\s\S] to match a newline).
struct Both {
  std::string cmake, ecma;
};

Both random_pattern(std::mt19937& rng, int depth) {
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  auto atom = [&]() -> Both {
    switch (pick(depth > 0 ? 8 : 6)) {
      case 0: return {"a", "a"};
      case 1: return {"b", "b"};
      case 2: return {".", "[\\s\\S]"};
      case 3: return {"[ab]", "[ab]"};
      case 4: return {"[^a]", "[^a]"};
      case 5: return {pick(2) ? "^" : "$", ""};  // fixed below
      default: {
        const Both inner = random_pattern(rng, depth - 1);
        return {"(" + inner.cmake + ")", "(?:" + inner.ecma + ")"};
      }
    }
  };
  Both out;
  const int branches = 1 + pick(2);
  for (int b = 0; b < branches; ++b) {
    if (b) {
      out.cmake += "|";
      out.ecma += "|";
    }
    const int pieces = pick(4);
    for (int p = 0; p < pieces; ++p) {
      Both a = atom();
      // ^ and $ mean the same in both; ECMAScript cannot repeat them.
      const bool anchor = a.ecma.empty();
      if (anchor) a.ecma = a.cmake;
      const char* mult[] = {"", "", "*", "+", "?"};
      const std::string m = anchor ? "" : mult[pick(5)];
      out.cmake += a.cmake + m;
      out.ecma += a.ecma + m;
    }
  }
  return out;
}

TEST(CtestRegex, AgreesWithABacktrackingEngineOnRandomPatterns) {
  // Whether a match exists does not depend on the engine; std::regex is
  // fine on texts this short. Patterns kwsys refuses are skipped.
  std::mt19937 rng(20240601);
  int compared = 0;
  for (int round = 0; round < 1500; ++round) {
    const Both p = random_pattern(rng, 2);
    std::string error;
    const auto rx = Regex::compile(p.cmake, error);
    if (!rx) continue;
    std::regex ecma;
    try {
      ecma = std::regex(p.ecma);
    } catch (const std::regex_error& e) {
      FAIL() << p.cmake << " as " << p.ecma << ": " << e.what();
    }
    for (int k = 0; k < 8; ++k) {
      std::string text;
      const int len = static_cast<int>(rng() % 7);
      for (int c = 0; c < len; ++c) text += "ab\n"[rng() % 3];
      ASSERT_EQ(rx->search(text), std::regex_search(text, ecma)) << p.cmake << " on \"" << text << "\"";
      ++compared;
    }
  }
  EXPECT_GT(compared, 5000);
}

TEST(CtestRegex, TextEndsAtANulByteAsInKwsys) {
  EXPECT_FALSE(matches("b", std::string_view("a\0b", 3)));
  EXPECT_FALSE(matches("a.b", std::string_view("a\0b", 3)));
}

// ---------------------------------------------------------------------------
// The output as ctest matches it (checked with printf in ctest 3.25).
// ---------------------------------------------------------------------------

TEST(CtestOutput, LinesAsCtestReadsThem) {
  EXPECT_EQ(normalize_output(""), "");
  EXPECT_EQ(normalize_output("\n"), "\n");
  EXPECT_EQ(normalize_output("b"), "b\n");             // a last partial line gets '\n'
  EXPECT_EQ(normalize_output("a\r\n"), "a\n");         // one '\r' before '\n' dropped
  EXPECT_EQ(normalize_output("a\r\r\nb"), "a\r\nb\n");  // only one
  EXPECT_EQ(normalize_output("a\rb"), "a\rb\n");       // a lone '\r' stays
  EXPECT_EQ(normalize_output("a\r"), "a\r\n");         // ... at the very end too
  EXPECT_EQ(normalize_output(std::string_view("a\0b", 3)), "a\nb\n");  // NUL ends a line
  EXPECT_EQ(normalize_output("a\tb"), "a\tb\n");
}

// ---------------------------------------------------------------------------
// parse_json_v1 on output captured from ctest 3.25.1
// ---------------------------------------------------------------------------

// `ctest --show-only=json-v1 -R '^(env|missing|dis|oldform)$'` over a tree
// whose tests were:
//   add_test(NAME env COMMAND sh -c "test \"$FOO\" = 'a b=c'")
//   set_tests_properties(env PROPERTIES ENVIRONMENT "FOO=a b=c;BAR=1"
//       ENVIRONMENT_MODIFICATION "BAR=set:2;PATH=path_list_prepend:/x")
//   add_test(NAME missing COMMAND /nonexistent/prog)
//   add_test(NAME dis COMMAND tool 0)
//   set_tests_properties(dis PROPERTIES DISABLED TRUE LABELS "a;b" PROCESSORS 2
//       RUN_SERIAL TRUE TIMEOUT 1.5 SKIP_RETURN_CODE 4 PASS_REGULAR_EXPRESSION "x;y"
//       FAIL_REGULAR_EXPRESSION "z" SKIP_REGULAR_EXPRESSION "w")
//   add_test(oldform sh -c pwd)          # in sub/, the old signature
constexpr std::string_view kCaptured = R"json({
  "backtraceGraph" : 
  {
    "commands" : 
    [
      "add_test"
    ],
    "files" : 
    [
      "/tmp/ctx/src/CMakeLists.txt",
      "/tmp/ctx/src/sub/CMakeLists.txt"
    ],
    "nodes" : 
    [
      {
        "file" : 0
      },
      {
        "command" : 0,
        "file" : 0,
        "line" : 11,
        "parent" : 0
      },
      {
        "file" : 0
      },
      {
        "command" : 0,
        "file" : 0,
        "line" : 15,
        "parent" : 2
      },
      {
        "file" : 0
      },
      {
        "command" : 0,
        "file" : 0,
        "line" : 17,
        "parent" : 4
      },
      {
        "file" : 1
      },
      {
        "command" : 0,
        "file" : 1,
        "line" : 1,
        "parent" : 6
      }
    ]
  },
  "kind" : "ctestInfo",
  "tests" : 
  [
    {
      "backtrace" : 1,
      "command" : 
      [
        "/usr/bin/sh",
        "-c",
        "test \"$FOO\" = 'a b=c'"
      ],
      "name" : "env",
      "properties" : 
      [
        {
          "name" : "ENVIRONMENT",
          "value" : 
          [
            "FOO=a b=c",
            "BAR=1"
          ]
        },
        {
          "name" : "ENVIRONMENT_MODIFICATION",
          "value" : 
          [
            "BAR=set:2",
            "PATH=path_list_prepend:/x"
          ]
        },
        {
          "name" : "WORKING_DIRECTORY",
          "value" : "/tmp/ctx/b"
        }
      ]
    },
    {
      "backtrace" : 3,
      "name" : "missing",
      "properties" : 
      [
        {
          "name" : "WORKING_DIRECTORY",
          "value" : "/tmp/ctx/b"
        }
      ]
    },
    {
      "backtrace" : 5,
      "command" : 
      [
        "/tmp/ctx/b/tool",
        "0"
      ],
      "name" : "dis",
      "properties" : 
      [
        {
          "name" : "DISABLED",
          "value" : true
        },
        {
          "name" : "FAIL_REGULAR_EXPRESSION",
          "value" : 
          [
            "z"
          ]
        },
        {
          "name" : "SKIP_REGULAR_EXPRESSION",
          "value" : 
          [
            "w"
          ]
        },
        {
          "name" : "LABELS",
          "value" : 
          [
            "a",
            "b"
          ]
        },
        {
          "name" : "PASS_REGULAR_EXPRESSION",
          "value" : 
          [
            "x",
            "y"
          ]
        },
        {
          "name" : "PROCESSORS",
          "value" : 2
        },
        {
          "name" : "RUN_SERIAL",
          "value" : true
        },
        {
          "name" : "SKIP_RETURN_CODE",
          "value" : 4
        },
        {
          "name" : "TIMEOUT",
          "value" : 1.5
        },
        {
          "name" : "WORKING_DIRECTORY",
          "value" : "/tmp/ctx/b"
        }
      ]
    },
    {
      "backtrace" : 7,
      "command" : 
      [
        "/usr/bin/sh",
        "-c",
        "pwd"
      ],
      "name" : "oldform",
      "properties" : 
      [
        {
          "name" : "WORKING_DIRECTORY",
          "value" : "/tmp/ctx/b/sub"
        }
      ]
    }
  ],
  "version" : 
  {
    "major" : 1,
    "minor" : 0
  }
})json";

// `ctest --show-only=json-v1 -R '^re_bad_paren$'` in a tree with invalid
// regular expressions: ctest complains on stdout, before the JSON.
constexpr std::string_view kWithComplaints = R"json(RegularExpression::compile(): Unmatched parentheses.
RegularExpression::compile(): Error in compile.
RegularExpression::compile(): ?+* follows nothing.
RegularExpression::compile(): Error in compile.
RegularExpression::compile(): Unmatched parentheses.
RegularExpression::compile(): Error in compile.
RegularExpression::compile() : *+ operand could be empty.
RegularExpression::compile(): Error in compile.
{
  "backtraceGraph" : 
  {
    "commands" : 
    [
      "add_test"
    ],
    "files" : 
    [
      "/tmp/ctx/f/CMakeLists.txt"
    ],
    "nodes" : 
    [
      {
        "file" : 0
      },
      {
        "command" : 0,
        "file" : 0,
        "line" : 5,
        "parent" : 0
      }
    ]
  },
  "kind" : "ctestInfo",
  "tests" : 
  [
    {
      "backtrace" : 1,
      "command" : 
      [
        "/tmp/ctx/fb/probe",
        "print",
        "(",
        "exit",
        "0"
      ],
      "name" : "re_bad_paren",
      "properties" : 
      [
        {
          "name" : "PASS_REGULAR_EXPRESSION",
          "value" : 
          [
            "("
          ]
        },
        {
          "name" : "WORKING_DIRECTORY",
          "value" : "/tmp/ctx/fb"
        }
      ]
    }
  ],
  "version" : 
  {
    "major" : 1,
    "minor" : 0
  }
})json";

const CTest* find(const std::vector<CTest>& tests, const std::string& name) {
  for (const auto& t : tests)
    if (t.name == name) return &t;
  return nullptr;
}

TEST(CtestJson, CapturedListing) {
  std::string error;
  const auto tests = parse_json_v1(kCaptured, error);
  ASSERT_TRUE(tests) << error;
  ASSERT_EQ(tests->size(), 4u);

  const CTest& env = (*tests)[0];
  EXPECT_EQ(env.name, "env");
  EXPECT_EQ(env.command, (std::vector<std::string>{"/usr/bin/sh", "-c", "test \"$FOO\" = 'a b=c'"}));
  EXPECT_EQ(env.environment, (std::vector<std::string>{"FOO=a b=c", "BAR=1"}));
  EXPECT_EQ(env.environment_modification, (std::vector<std::string>{"BAR=set:2", "PATH=path_list_prepend:/x"}));
  EXPECT_EQ(env.working_directory, "/tmp/ctx/b");
  EXPECT_EQ(env.defined_at, "/tmp/ctx/src/CMakeLists.txt:11");
  EXPECT_FALSE(env.will_fail || env.disabled || env.run_serial);
  EXPECT_EQ(env.processors, 1);
  EXPECT_EQ(env.timeout, 0);
  EXPECT_FALSE(env.skip_return_code);

  const CTest& missing = (*tests)[1];
  EXPECT_EQ(missing.name, "missing");
  EXPECT_TRUE(missing.command.empty());  // ctest lists no command for it

  const CTest& dis = (*tests)[2];
  EXPECT_EQ(dis.name, "dis");
  EXPECT_TRUE(dis.disabled);
  EXPECT_TRUE(dis.run_serial);
  EXPECT_EQ(dis.labels, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(dis.processors, 2);
  EXPECT_EQ(dis.timeout, 1.5);
  EXPECT_EQ(dis.skip_return_code, 4);
  EXPECT_EQ(dis.pass_regex, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(dis.fail_regex, (std::vector<std::string>{"z"}));
  EXPECT_EQ(dis.skip_regex, (std::vector<std::string>{"w"}));
  EXPECT_TRUE(dis.unsupported.empty());

  const CTest& old = (*tests)[3];
  EXPECT_EQ(old.name, "oldform");
  EXPECT_EQ(old.working_directory, "/tmp/ctx/b/sub");  // where its CTestTestfile is
  EXPECT_EQ(old.defined_at, "/tmp/ctx/src/sub/CMakeLists.txt:1");
}

TEST(CtestJson, SkipsCtestsComplaintsBeforeTheJson) {
  std::string error;
  const auto tests = parse_json_v1(kWithComplaints, error);
  ASSERT_TRUE(tests) << error;
  ASSERT_EQ(tests->size(), 1u);
  EXPECT_EQ((*tests)[0].pass_regex, std::vector<std::string>{"("});
}

TEST(CtestJson, ResolvesRelativeDirectoriesAgainstTheBuildTree) {
  const std::string json = R"({"kind": "ctestInfo", "version": {"major": 1, "minor": 0}, "tests": [
      {"name": "rel", "command": ["/bin/true"], "properties": [
        {"name": "WORKING_DIRECTORY", "value": "rel/dir"},
        {"name": "REQUIRED_FILES", "value": ["data.txt", "/abs/file"]}]},
      {"name": "none", "command": ["/bin/true"]}]})";
  std::string error;
  const auto tests = parse_json_v1(json, error, "/b");
  ASSERT_TRUE(tests) << error;
  EXPECT_EQ((*tests)[0].working_directory, "/b/rel/dir");
  EXPECT_EQ((*tests)[0].required_files, (std::vector<std::string>{"/b/rel/dir/data.txt", "/abs/file"}));
  EXPECT_EQ((*tests)[1].working_directory, "/b");
}

TEST(CtestJson, ReportsUnsupportedProperties) {
  const std::string json = R"({"kind": "ctestInfo", "version": {"major": 1, "minor": 1}, "tests": [
      {"name": "t", "command": ["/bin/true"], "properties": [
        {"name": "DEPENDS", "value": ["a"]}, {"name": "COST", "value": 3.0},
        {"name": "FIXTURES_REQUIRED", "value": ["db"]}, {"name": "RESOURCE_LOCK", "value": ["r"]},
        {"name": "TIMEOUT_AFTER_MATCH", "value": {"regex": ["x"], "timeout": 1.0}},
        {"name": "MEASUREMENT", "value": [{"measurement": "m", "value": "1"}]}]}]})";
  std::string error;
  const auto tests = parse_json_v1(json, error);
  ASSERT_TRUE(tests) << error;
  EXPECT_EQ((*tests)[0].unsupported,
            (std::vector<std::string>{"DEPENDS", "FIXTURES_REQUIRED", "RESOURCE_LOCK", "TIMEOUT_AFTER_MATCH"}));
}

std::string parse_error(const std::string& json) {
  std::string error;
  if (parse_json_v1(json, error)) return "(parsed)";
  return error;
}

std::string with_test(const std::string& test) {
  return R"({"kind": "ctestInfo", "version": {"major": 1, "minor": 0}, "tests": [)"
         R"({"name": "ok", "command": ["/bin/true"]}, )" + test + "]}";
}

TEST(CtestJson, MalformedInputNamesWhatIsWrong) {
  EXPECT_THAT(parse_error(""), HasSubstr("no JSON object in ctest's output (it is empty)"));
  EXPECT_THAT(parse_error("No tests were found!!!\n"), HasSubstr("begins: No tests were found!!!"));
  EXPECT_THAT(parse_error("{\"kind\": \"ctestInfo\", "), HasSubstr("not valid JSON"));
  EXPECT_THAT(parse_error("{} trailing"), HasSubstr("not valid JSON"));
  EXPECT_THAT(parse_error("\n[1, 2]"), HasSubstr("no JSON object in ctest's output, which begins: [1, 2]"));
  EXPECT_THAT(parse_error("{\"kind\": \"codemodel\"}"), HasSubstr("not of kind \"ctestInfo\""));
  EXPECT_THAT(parse_error(R"({"kind": "ctestInfo", "version": {"major": 2, "minor": 0}, "tests": []})"),
              HasSubstr("dtest reads major version 1"));
  EXPECT_THAT(parse_error(R"({"kind": "ctestInfo", "version": {"major": 1}, "tests": {}})"),
              HasSubstr("no \"tests\" array"));
  EXPECT_THAT(parse_error(with_test("42")), HasSubstr("tests[1]: expected an object, got number"));
  EXPECT_THAT(parse_error(with_test(R"({"command": ["/bin/true"]})")), HasSubstr("tests[1]: no \"name\" string"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "command": "/bin/true"})")),
              HasSubstr("tests[1] (x): \"command\": expected a non-empty array of strings, got \"/bin/true\""));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "command": ["/bin/true", 3]})")),
              HasSubstr("tests[1] (x): \"command\": expected a non-empty array of strings, got a number element 3"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": {}})")),
              HasSubstr("tests[1] (x): \"properties\": expected an array, got object"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"value": 1}]})")),
              HasSubstr("tests[1] (x): a property is not {\"name\": string, \"value\": ...}"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"name": "TIMEOUT", "value": "10"}]})")),
              HasSubstr("tests[1] (x): property TIMEOUT: expected a number, got string \"10\""));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"name": "WILL_FAIL", "value": "yes"}]})")),
              HasSubstr("property WILL_FAIL: expected true or false"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"name": "PROCESSORS", "value": 1.5}]})")),
              HasSubstr("property PROCESSORS: expected an integer"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"name": "LABELS", "value": ["a", 1]}]})")),
              HasSubstr("tests[1] (x): property LABELS: expected an array of strings, got a number element 1"));
  EXPECT_THAT(parse_error(with_test(R"({"name": "x", "properties": [{"name": "ENVIRONMENT", "value": "A=1"}]})")),
              HasSubstr("property ENVIRONMENT: expected an array of strings, got string"));
}

// ---------------------------------------------------------------------------
// ENVIRONMENT and ENVIRONMENT_MODIFICATION (checked with ctest 3.25)
// ---------------------------------------------------------------------------

struct EnvResult {
  std::map<std::string, std::string> env;
  std::vector<std::string> unset;
  std::string error;
  bool ok = false;
};

EnvResult environment_of(std::vector<std::string> environment, std::vector<std::string> modification,
                         std::map<std::string, std::string> env = {}, std::vector<std::string> unset = {}) {
  CTest t;
  t.environment = std::move(environment);
  t.environment_modification = std::move(modification);
  EnvResult r{std::move(env), std::move(unset), {}, false};
  r.ok = apply_environment(t, r.env, r.unset, r.error);
  return r;
}

class CtestEnvironment : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("DTEST_CT_BASE", "base", 1);
    ::unsetenv("DTEST_CT_NONE");
  }
  void TearDown() override { ::unsetenv("DTEST_CT_BASE"); }
};

TEST_F(CtestEnvironment, EntriesApplyInOrderAndOneWithoutEqualsUnsets) {
  const auto r = environment_of({"A=1", "A=2", "B=x=y", "DTEST_CT_BASE"}, {});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.env, (std::map<std::string, std::string>{{"A", "2"}, {"B", "x=y"}}));
  EXPECT_EQ(r.unset, std::vector<std::string>{"DTEST_CT_BASE"});
}

TEST_F(CtestEnvironment, ModificationsStartFromTheEnvironment) {
  const auto r = environment_of({"FOO=env"}, {"FOO=string_append:!", "DTEST_CT_BASE=string_prepend:pre-",
                                              "P=path_list_prepend:a", "P=path_list_append:b",
                                              "L=cmake_list_append:x", "L=cmake_list_prepend:w",
                                              "E=path_list_append:", "DTEST_CT_NONE=set:now"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.env, (std::map<std::string, std::string>{{"FOO", "env!"},
                                                       {"DTEST_CT_BASE", "pre-base"},
                                                       {"P", "a:b"},
                                                       {"L", "w;x"},
                                                       {"E", ""},
                                                       {"DTEST_CT_NONE", "now"}}));
  EXPECT_TRUE(r.unset.empty());
}

TEST_F(CtestEnvironment, ResetUnsetAndCtestsQuirkAfterUnset) {
  // reset forgets earlier modifications; an edit after an unset starts from
  // the environment again (ctest 3.25 gives "envX" here).
  const auto r = environment_of({"FOO=env", "BAR=env"}, {"FOO=set:a", "FOO=reset:", "BAR=unset:", "BAR=string_append:X",
                                                         "DTEST_CT_BASE=unset:"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.env, (std::map<std::string, std::string>{{"FOO", "env"}, {"BAR", "envX"}}));
  EXPECT_EQ(r.unset, std::vector<std::string>{"DTEST_CT_BASE"});
}

TEST_F(CtestEnvironment, ComposesWithTheCallersOwnChanges) {
  // What the caller already set or unset is the "current" value.
  const auto r = environment_of({}, {"W=string_append:-1", "DTEST_CT_BASE=string_append:!", "Z=set:z"},
                                {{"W", "worker"}, {"Z", "old"}}, {"DTEST_CT_BASE"});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.env, (std::map<std::string, std::string>{{"W", "worker-1"}, {"DTEST_CT_BASE", "!"}, {"Z", "z"}}));
  EXPECT_TRUE(r.unset.empty());
}

TEST_F(CtestEnvironment, RejectsWhatCtestRejects) {
  EXPECT_EQ(environment_of({}, {"FOO=bogus:1"}).error, "ENVIRONMENT_MODIFICATION \"FOO=bogus:1\": unknown operation \"bogus\"");
  EXPECT_EQ(environment_of({}, {"FOO=set"}).error, "ENVIRONMENT_MODIFICATION \"FOO=set\": no ':' after the operation");
  EXPECT_EQ(environment_of({}, {"FOO"}).error, "ENVIRONMENT_MODIFICATION \"FOO\": no '=' after the variable name");
}

// ---------------------------------------------------------------------------
// Verdicts. Each row was run through ctest 3.25 first (a C program exiting,
// printing or raising as the row says); "ctest:" is what ctest reported.
// ---------------------------------------------------------------------------

int exited(int code) { return (code & 0xff) << 8; }
int killed(int sig) { return sig & 0x7f; }

struct Row {
  const char* what;
  CTest test;
  int status;
  std::string output;
  bool timed_out;
  Outcome expected;
  const char* message;  // a part of it
};

CTest with(std::function<void(CTest&)> f) {
  CTest t;
  t.name = "t";
  t.command = {"/bin/true"};
  f(t);
  return t;
}

TEST(CtestJudge, AsCtestJudges) {
  const auto none = [](CTest&) {};
  const auto will_fail = [](CTest& t) { t.will_fail = true; };
  const auto skip77 = [](CTest& t) { t.skip_return_code = 77; };
  const std::vector<Row> rows = {
      {"exit 0 (ctest: Passed)", with(none), exited(0), "", false, Outcome::passed, ""},
      {"exit 3 (ctest: Failed)", with(none), exited(3), "", false, Outcome::failed, "exit status 3"},
      {"SIGSEGV (ctest: SEGFAULT)", with(none), killed(SIGSEGV), "", false, Outcome::crashed, "signal 11 (SIGSEGV)"},
      {"SIGKILL (ctest: Subprocess killed)", with(none), killed(SIGKILL), "", false, Outcome::crashed, "signal 9 (SIGKILL)"},
      {"timeout (ctest: Timeout)", with([](CTest& t) { t.timeout = 2; }), killed(SIGKILL), "", true, Outcome::timeout,
       "timed out after 2 s"},
      {"WILL_FAIL exit 1 (ctest: Passed)", with(will_fail), exited(1), "", false, Outcome::passed,
       "failed as expected (WILL_FAIL): exit status 1"},
      {"WILL_FAIL exit 0 (ctest: Failed)", with(will_fail), exited(0), "", false, Outcome::failed,
       "passed, but WILL_FAIL expects a failure: exit status 0"},
      {"WILL_FAIL SIGSEGV (ctest: SEGFAULT)", with(will_fail), killed(SIGSEGV), "", false, Outcome::crashed, "signal 11"},
      {"WILL_FAIL timeout (ctest: Timeout)", with([](CTest& t) { t.will_fail = true; t.timeout = 1.5; }), killed(SIGKILL), "",
       true, Outcome::timeout, "timed out after 1.5 s"},
      {"SKIP_RETURN_CODE hit (ctest: Skipped)", with(skip77), exited(77), "", false, Outcome::skipped,
       "exit status 77 is its SKIP_RETURN_CODE"},
      {"SKIP_RETURN_CODE 0 (ctest: Skipped)", with([](CTest& t) { t.skip_return_code = 0; }), exited(0), "", false,
       Outcome::skipped, "SKIP_RETURN_CODE"},
      {"SKIP_RETURN_CODE + WILL_FAIL (ctest: Skipped)", with([](CTest& t) { t.skip_return_code = 77; t.will_fail = true; }),
       exited(77), "", false, Outcome::skipped, ""},
      {"SKIP_RETURN_CODE other code (ctest: Failed)", with(skip77), exited(5), "", false, Outcome::failed, "exit status 5"},
      {"SKIP_RETURN_CODE 137, SIGKILL (ctest: Subprocess killed)", with([](CTest& t) { t.skip_return_code = 137; }),
       killed(SIGKILL), "", false, Outcome::crashed, "signal 9"},
      {"SKIP_RETURN_CODE beats a FAIL match (ctest: Skipped)",
       with([](CTest& t) { t.skip_return_code = 4; t.fail_regex = {"bad"}; }), exited(4), "bad\n", false, Outcome::skipped, ""},
      {"SKIP_RETURN_CODE beats a missing PASS match (ctest: Skipped)",
       with([](CTest& t) { t.skip_return_code = 4; t.pass_regex = {"zzz"}; }), exited(4), "", false, Outcome::skipped, ""},
      {"PASS match, exit 1 (ctest: Passed)", with([](CTest& t) { t.pass_regex = {"ok"}; }), exited(1), "ok\n", false,
       Outcome::passed, ""},
      {"PASS match on stderr's text (ctest: Passed)", with([](CTest& t) { t.pass_regex = {"one", "two"}; }), exited(0),
       "two\n", false, Outcome::passed, ""},
      {"PASS no match, exit 0 (ctest: Failed)", with([](CTest& t) { t.pass_regex = {"ok", "fine"}; }), exited(0), "nope\n",
       false, Outcome::failed, "output matches no PASS_REGULAR_EXPRESSION [ok] [fine]"},
      {"PASS match, SIGSEGV (ctest: SEGFAULT)", with([](CTest& t) { t.pass_regex = {"ok"}; }), killed(SIGSEGV), "ok\n",
       false, Outcome::crashed, "signal 11"},
      {"PASS match, timeout (ctest: Timeout)", with([](CTest& t) { t.pass_regex = {"ok"}; t.timeout = 1; }),
       killed(SIGKILL), "ok\n", true, Outcome::timeout, "timed out after 1 s"},
      {"PASS match + WILL_FAIL (ctest: Failed)", with([](CTest& t) { t.pass_regex = {"ok"}; t.will_fail = true; }),
       exited(0), "ok\n", false, Outcome::failed, "WILL_FAIL expects a failure: output matches PASS_REGULAR_EXPRESSION [ok]"},
      {"PASS no match + WILL_FAIL (ctest: Passed)", with([](CTest& t) { t.pass_regex = {"ok"}; t.will_fail = true; }),
       exited(0), "no\n", false, Outcome::passed, "failed as expected"},
      {"FAIL match, exit 0 (ctest: Failed)", with([](CTest& t) { t.fail_regex = {"bad"}; }), exited(0), "bad\n", false,
       Outcome::failed, "output matches FAIL_REGULAR_EXPRESSION [bad]"},
      {"FAIL no match, exit 1 (ctest: Failed)", with([](CTest& t) { t.fail_regex = {"bad"}; }), exited(1), "fine\n", false,
       Outcome::failed, "exit status 1"},
      {"FAIL and PASS both match (ctest: Failed)", with([](CTest& t) { t.fail_regex = {"bad"}; t.pass_regex = {"ok"}; }),
       exited(0), "ok bad\n", false, Outcome::failed, "FAIL_REGULAR_EXPRESSION [bad]"},
      {"FAIL match + WILL_FAIL (ctest: Passed)", with([](CTest& t) { t.fail_regex = {"bad"}; t.will_fail = true; }),
       exited(0), "bad\n", false, Outcome::passed, "failed as expected (WILL_FAIL): output matches FAIL_REGULAR_EXPRESSION"},
      {"FAIL match, SIGSEGV (ctest: SEGFAULT)", with([](CTest& t) { t.fail_regex = {"bad"}; }), killed(SIGSEGV), "bad\n",
       false, Outcome::crashed, "signal 11"},
      {"SKIP match, exit 1 (ctest: Skipped)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; }), exited(1), "SKIPME\n",
       false, Outcome::skipped, "output matches SKIP_REGULAR_EXPRESSION [SKIPME]"},
      {"SKIP beats FAIL (ctest: Skipped)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; t.fail_regex = {"bad"}; }),
       exited(0), "SKIPME bad\n", false, Outcome::skipped, ""},
      {"SKIP beats a missing PASS (ctest: Skipped)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; t.pass_regex = {"ok"}; }),
       exited(0), "SKIPME\n", false, Outcome::skipped, ""},
      {"SKIP + WILL_FAIL (ctest: Skipped)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; t.will_fail = true; }), exited(0),
       "SKIPME\n", false, Outcome::skipped, ""},
      {"SKIP match, SIGSEGV (ctest: SEGFAULT)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; }), killed(SIGSEGV),
       "SKIPME\n", false, Outcome::crashed, ""},
      {"SKIP match, timeout (ctest: Timeout)", with([](CTest& t) { t.skip_regex = {"SKIPME"}; t.timeout = 1; }),
       killed(SIGKILL), "SKIPME\n", true, Outcome::timeout, ""},
      {"invalid PASS never matches (ctest: Failed)", with([](CTest& t) { t.pass_regex = {"("}; }), exited(0), "(\n", false,
       Outcome::failed, "PASS_REGULAR_EXPRESSION [(] is invalid (Unmatched parentheses.), ctest never matches it"},
      {"invalid FAIL never matches (ctest: Passed)", with([](CTest& t) { t.fail_regex = {"("}; }), exited(0), "(\n", false,
       Outcome::passed, "FAIL_REGULAR_EXPRESSION [(] is invalid"},
      {"regex over CRLF output (ctest: Passed)", with([](CTest& t) { t.pass_regex = {"^a\nb\n$"}; }), exited(1),
       "a\r\nb\r\n", false, Outcome::passed, ""},
      {"regex over a NUL byte (ctest: Passed)", with([](CTest& t) { t.pass_regex = {"a\nb\n$"}; }), exited(0),
       std::string("a\0b", 3), false, Outcome::passed, ""},
  };
  for (const auto& r : rows) {
    const Verdict v = judge(r.test, r.status, r.output, r.timed_out);
    EXPECT_EQ(to_string(v.outcome), to_string(r.expected)) << r.what << ": " << v.message;
    EXPECT_THAT(v.message, HasSubstr(r.message)) << r.what;
    if (r.expected == Outcome::passed && !r.test.will_fail && r.test.pass_regex.empty() && r.test.fail_regex.empty()) {
      EXPECT_EQ(v.message, "") << r.what;
    }
  }
}

TEST(CtestPrecheck, WhatCtestWouldNotStart) {
  const fs::path dir = fs::temp_directory_path() / ("dtest_precheck_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "present.txt") << "x";
  auto base = [&] {
    CTest t;
    t.name = "t";
    t.command = {"/bin/true"};
    t.working_directory = dir.string();
    return t;
  };
  EXPECT_FALSE(precheck(base()));

  CTest t = base();
  t.disabled = true;
  t.command.clear();  // ctest says Disabled before anything else
  auto v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::skipped);
  EXPECT_EQ(v->message, "disabled");

  t = base();
  t.working_directory = (dir / "nope").string();
  v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::not_run);
  EXPECT_EQ(v->message, "cannot change to its WORKING_DIRECTORY " + (dir / "nope").string() + ": No such file or directory");

  t = base();
  t.required_files = {"present.txt", "absent.txt"};  // relative to the working directory
  v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::not_run);
  EXPECT_EQ(v->message, "REQUIRED_FILES: " + (dir / "absent.txt").string() + " does not exist");

  t = base();
  t.command.clear();
  t.defined_at = "/src/CMakeLists.txt:7";
  v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::not_run);
  EXPECT_EQ(v->message, "ctest found no executable for this test (add_test at /src/CMakeLists.txt:7)");
  t.missing_executable = "/b/never_built";
  EXPECT_EQ(precheck(t)->message, "executable not found: /b/never_built (add_test at /src/CMakeLists.txt:7)");

  t = base();
  t.command = {(dir / "present.txt").string()};  // gone or not executable since the listing
  v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::not_run);
  EXPECT_THAT(v->message, StartsWith("executable not found: "));

  t = base();
  t.environment_modification = {"X=frobnicate:1"};
  v = precheck(t);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->outcome, Outcome::not_run);
  EXPECT_THAT(v->message, HasSubstr("unknown operation \"frobnicate\""));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------
// Real ctest: the fixture project (tests/fixtures/ctest_project), configured
// and built once into a temporary directory.
// ---------------------------------------------------------------------------

std::string run_ok(const std::vector<std::string>& argv, std::string& error) {
  SpawnOptions o;
  o.argv = argv;
  const Captured c = run_capture(o, 240);
  if (c.status != 0 || c.timed_out) {
    error = argv[0] + " " + argv[1] + "... failed: " + c.out + c.err;
    return {};
  }
  return c.out;
}

// "path:line" of the fixture's add_test(NAME name ...).
std::string added_at(const std::string& name) {
  const std::string path = std::string(CTEST_FIXTURE_DIR) + "/CMakeLists.txt";
  std::ifstream in(path);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.rfind("add_test(NAME " + name + " ", 0) == 0) return path + ":" + std::to_string(n);
  return "(no add_test for " + name + ")";
}

class CtestReal : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // What the fixture's `environment` test expects to inherit or lose.
    ::setenv("DTEST_FX_INHERITED", "base", 1);
    ::setenv("DTEST_FX_UNSET_ME", "present", 1);
    ::unsetenv("FX_PATH");
    char tmpl[] = "/tmp/dtest_ctest_XXXXXX";
    if (!::mkdtemp(tmpl)) {
      setup_error_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    root_ = tmpl;
    build_ = root_ + "/build";
    run_ok({"cmake", "-S", CTEST_FIXTURE_DIR, "-B", build_, "-G", "Ninja"}, setup_error_);
    if (setup_error_.empty()) run_ok({"cmake", "--build", build_}, setup_error_);
  }
  static void TearDownTestSuite() {
    if (!root_.empty()) fs::remove_all(root_);
  }
  void SetUp() override { ASSERT_EQ(setup_error_, "") << "building the fixture project"; }

  static std::vector<CTest> listed(const std::vector<std::string>& labels = {}) {
    std::string error;
    auto tests = list(build_, labels, error);
    EXPECT_TRUE(tests) << error;
    return tests ? *tests : std::vector<CTest>{};
  }

  static std::string root_, build_, setup_error_;
};
std::string CtestReal::root_, CtestReal::build_, CtestReal::setup_error_;

TEST_F(CtestReal, ListsEveryProperty) {
  const auto tests = listed();
  ASSERT_EQ(tests.size(), 31u);
  auto get = [&](const std::string& name) -> const CTest& {
    const CTest* t = find(tests, name);
    if (!t) throw std::runtime_error("not listed: " + name);
    return *t;
  };
  const CTest& pass = get("pass");
  EXPECT_EQ(pass.command, (std::vector<std::string>{build_ + "/probe", "print", "hello"}));
  EXPECT_EQ(pass.working_directory, build_);
  EXPECT_EQ(pass.labels, (std::vector<std::string>{"fast", "unit"}));
  EXPECT_EQ(pass.defined_at, added_at("pass"));
  EXPECT_EQ(pass.timeout, 0);
  EXPECT_EQ(pass.processors, 1);
  EXPECT_FALSE(pass.will_fail || pass.disabled || pass.run_serial || pass.skip_return_code);

  EXPECT_TRUE(get("will_fail_passes").will_fail);
  EXPECT_EQ(get("will_fail_timeout").timeout, 1);
  EXPECT_EQ(get("skip_code_will_fail").skip_return_code, 77);
  EXPECT_TRUE(get("skip_code_will_fail").will_fail);

  const CTest& env = get("environment");
  EXPECT_EQ(env.environment, (std::vector<std::string>{"FX_GREETING=hello world", "FX_EQ=a=b", "FX_DROPPED=1",
                                                        "FX_DROPPED", "FX_RESET=env", "FX_QUIRK=env"}));
  EXPECT_EQ(env.environment_modification,
            (std::vector<std::string>{"FX_GREETING=string_append:!", "FX_PATH=path_list_prepend:/opt/fx",
                                      "DTEST_FX_INHERITED=string_prepend:pre-", "DTEST_FX_UNSET_ME=unset:",
                                      "FX_RESET=set:a", "FX_RESET=reset:", "FX_QUIRK=unset:",
                                      "FX_QUIRK=string_append:X"}));

  EXPECT_EQ(get("working_directory").working_directory, build_ + "/wd");
  EXPECT_EQ(get("default_directory").working_directory, build_ + "/sub");

  EXPECT_EQ(get("pass_regex").pass_regex, (std::vector<std::string>{"nothing", "all go+d"}));
  EXPECT_EQ(get("fail_regex").fail_regex, std::vector<std::string>{"ERROR:"});
  EXPECT_EQ(get("skip_regex").skip_regex, std::vector<std::string>{"SKIPPED:"});
  EXPECT_EQ(get("regex_dot_newline").pass_regex, std::vector<std::string>{"^a.b\n$"});
  EXPECT_EQ(get("regex_literal_braces").pass_regex, std::vector<std::string>{R"(x{2} \d)"});

  EXPECT_EQ(get("timeout").timeout, 1);
  EXPECT_TRUE(get("disabled").disabled);
  const CTest& processors = get("processors");
  EXPECT_EQ(processors.processors, 2);
  EXPECT_EQ(processors.timeout, 2.5);
  EXPECT_EQ(processors.labels, std::vector<std::string>{"slow"});
  EXPECT_TRUE(get("run_serial").run_serial);

  const CTest& missing = get("missing_executable");
  EXPECT_TRUE(missing.command.empty());
  EXPECT_EQ(missing.missing_executable, build_ + "/never_built");
  EXPECT_EQ(get("required_file").required_files, std::vector<std::string>{build_ + "/never_created"});
  EXPECT_EQ(get("unsupported").unsupported, (std::vector<std::string>{"DEPENDS", "RESOURCE_LOCK"}));
}

TEST_F(CtestReal, LabelsFilter) {
  auto names = [](const std::vector<CTest>& tests) {
    std::set<std::string> s;
    for (const auto& t : tests) s.insert(t.name);
    return s;
  };
  EXPECT_EQ(names(listed({"fast"})), (std::set<std::string>{"pass", "fail"}));
  EXPECT_EQ(names(listed({"^unit$"})), std::set<std::string>{"pass"});
  EXPECT_EQ(names(listed({"fast", "unit"})), std::set<std::string>{"pass"});  // each -L must match
  // A relative build directory with a trailing slash comes out absolute and clean.
  const fs::path cwd = fs::current_path();
  fs::current_path(root_);
  std::string error;
  const auto tests = list("build/", {"^unit$"}, error);
  fs::current_path(cwd);
  ASSERT_TRUE(tests) << error;
  ASSERT_EQ(tests->size(), 1u);
  EXPECT_EQ((*tests)[0].working_directory, build_);
}

// Runs one test's command as dtest's agent would: its working directory, its
// environment, stdout and stderr merged, killed (with its process group) at
// its TIMEOUT.
struct Finished {
  int status = 0;
  std::string output;
  bool timed_out = false;
};

Finished run_test(const CTest& t) {
  std::map<std::string, std::string> env;
  std::vector<std::string> unset;
  std::string error;
  if (!apply_environment(t, env, unset, error)) throw std::runtime_error(error);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string kv(*e);
    const std::string name = kv.substr(0, kv.find('='));
    if (!env.count(name) && std::find(unset.begin(), unset.end(), name) == unset.end()) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : envs) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = t.command;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);

  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, 0);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    if (::chdir(t.working_directory.c_str()) != 0) ::_exit(126);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(fds[1]);
  Finished f;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<long>((t.timeout > 0 ? t.timeout : 60) * 1000));
  char buf[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 && !f.timed_out) {
      f.timed_out = true;
      ::kill(-pid, SIGKILL);
    }
    pollfd p{fds[0], POLLIN, 0};
    const int r = ::poll(&p, 1, f.timed_out ? 1000 : static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    f.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  ::waitpid(pid, &f.status, 0);
  return f;
}

// ctest's verdict on each test of the tree: the summary of a real run, in
// dtest's outcomes, and the JUnit report for the list of every test.
std::map<std::string, Outcome> ctest_verdicts(const std::string& build, std::string& error) {
  SpawnOptions o;
  const std::string junit = build + "/ctest-junit.xml";
  o.argv = {"ctest", "--test-dir", build, "-j8", "--output-junit", junit};
  const Captured c = run_capture(o, 240);
  std::map<std::string, Outcome> out;
  std::ifstream in(junit);
  const std::string xml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::regex testcase(R"re(<testcase name="([^"]+)"[^>]* status="([a-z]+)")re");
  for (auto it = std::sregex_iterator(xml.begin(), xml.end(), testcase); it != std::sregex_iterator(); ++it) {
    if ((*it)[2] == "run") out[(*it)[1]] = Outcome::passed;
  }
  // The summary's sections name every test that did not pass:
  //   The following tests did not run:
  //   	  9 - skip_code (Skipped)
  //   The following tests FAILED:
  //   	  4 - crash (SEGFAULT)
  const std::regex entry(R"re(^\s+\d+ - (\S+) \((.+)\)$)re");
  std::istringstream lines(c.out);
  std::string line;
  while (std::getline(lines, line)) {
    std::smatch m;
    if (!std::regex_match(line, m, entry)) continue;
    const std::string name = m[1], status = m[2];
    if (status == "Skipped" || status == "Disabled") {
      out[name] = Outcome::skipped;
    } else if (status == "Failed") {
      out[name] = Outcome::failed;
    } else if (status == "Timeout") {
      out[name] = Outcome::timeout;
    } else if (status == "Not Run" || status == "BAD_COMMAND") {
      out[name] = Outcome::not_run;
    } else if (status == "SEGFAULT" || status == "ILLEGAL" || status == "INTERRUPT" || status == "NUMERICAL" ||
               status == "OTHER_FAULT" || status.rfind("Subprocess ", 0) == 0) {
      out[name] = Outcome::crashed;
    } else {
      error += "unknown ctest status " + status + " for " + name + "\n";
    }
  }
  if (out.empty()) error += "no verdicts from ctest: " + c.out + c.err;
  return out;
}

TEST_F(CtestReal, VerdictsMatchCtest) {
  // What the fixture's tests are meant to give; both ctest and dtest must.
  const std::map<std::string, Outcome> expected = {
      {"pass", Outcome::passed},
      {"fail", Outcome::failed},
      {"exit_three", Outcome::failed},
      {"crash", Outcome::crashed},
      {"will_fail_passes", Outcome::passed},
      {"will_fail_fails", Outcome::failed},
      {"will_fail_crash", Outcome::crashed},
      {"will_fail_timeout", Outcome::timeout},
      {"skip_code", Outcome::skipped},
      {"skip_code_will_fail", Outcome::skipped},
      {"skip_code_other", Outcome::failed},
      {"environment", Outcome::passed},
      {"bad_environment_modification", Outcome::not_run},
      {"working_directory", Outcome::passed},
      {"default_directory", Outcome::passed},
      {"pass_regex", Outcome::passed},
      {"pass_regex_missing", Outcome::failed},
      {"fail_regex", Outcome::failed},
      {"fail_regex_will_fail", Outcome::passed},
      {"skip_regex", Outcome::skipped},
      {"skip_regex_crash", Outcome::crashed},
      {"regex_dot_newline", Outcome::passed},
      {"regex_literal_braces", Outcome::passed},
      {"regex_invalid", Outcome::failed},
      {"timeout", Outcome::timeout},
      {"disabled", Outcome::skipped},
      {"processors", Outcome::passed},
      {"run_serial", Outcome::passed},
      {"missing_executable", Outcome::not_run},
      {"required_file", Outcome::not_run},
      {"unsupported", Outcome::passed},
  };
  std::string error;
  const auto theirs = ctest_verdicts(build_, error);
  EXPECT_EQ(error, "");

  std::map<std::string, Outcome> ours;
  std::map<std::string, std::string> messages;
  for (const CTest& t : listed()) {
    std::optional<Verdict> v = precheck(t);
    if (!v) {
      const Finished f = run_test(t);
      v = judge(t, f.status, f.output, f.timed_out);
    }
    ours[t.name] = v->outcome;
    messages[t.name] = v->message;
  }
  ASSERT_EQ(ours.size(), expected.size());
  ASSERT_EQ(theirs.size(), expected.size());
  for (const auto& [name, want] : expected) {
    ASSERT_TRUE(theirs.count(name) && ours.count(name)) << name;
    EXPECT_EQ(to_string(theirs.at(name)), to_string(want)) << "ctest on " << name;
    EXPECT_EQ(to_string(ours.at(name)), to_string(theirs.at(name))) << name << ": " << messages[name];
  }
  EXPECT_EQ(messages["pass"], "");
  EXPECT_EQ(messages["fail"], "exit status 1");
  EXPECT_EQ(messages["exit_three"], "exit status 3");
  EXPECT_THAT(messages["crash"], StartsWith("signal 11 (SIGSEGV)"));
  EXPECT_THAT(messages["will_fail_crash"], StartsWith("signal 6 (SIGABRT)"));
  EXPECT_EQ(messages["timeout"], "timed out after 1 s");
  EXPECT_EQ(messages["disabled"], "disabled");
  EXPECT_EQ(messages["skip_code"], "exit status 77 is its SKIP_RETURN_CODE");
  EXPECT_EQ(messages["skip_regex"], "output matches SKIP_REGULAR_EXPRESSION [SKIPPED:]");
  EXPECT_EQ(messages["fail_regex"], "output matches FAIL_REGULAR_EXPRESSION [ERROR:]");
  EXPECT_EQ(messages["missing_executable"],
            "executable not found: " + build_ + "/never_built (add_test at " + added_at("missing_executable") + ")");
  EXPECT_EQ(messages["required_file"], "REQUIRED_FILES: " + build_ + "/never_created does not exist");
  EXPECT_THAT(messages["bad_environment_modification"], HasSubstr("unknown operation \"frobnicate\""));
}

TEST_F(CtestReal, MultiConfigTreeNeedsAConfig) {
  const std::string mc = root_ + "/multi";
  std::string error;
  run_ok({"cmake", "-S", CTEST_FIXTURE_DIR, "-B", mc, "-G", "Ninja Multi-Config"}, error);
  ASSERT_EQ(error, "");
  EXPECT_FALSE(list(mc, {}, error));
  EXPECT_THAT(error, HasSubstr("is a multi-config build tree"));
  error.clear();
  const auto tests = list(mc, {}, error, "ctest", "Debug");
  ASSERT_TRUE(tests) << error;
  EXPECT_EQ(tests->size(), 31u);
  // Not built: ctest finds no probe and says where it looked for one.
  const CTest* pass = find(*tests, "pass");
  ASSERT_TRUE(pass);
  EXPECT_TRUE(pass->command.empty());
  EXPECT_EQ(pass->missing_executable, mc + "/Debug/probe");
}

TEST_F(CtestReal, ClearErrors) {
  std::string error;
  EXPECT_FALSE(list(root_, {}, error));  // the temporary directory itself
  EXPECT_EQ(error, root_ + " is not a CMake build tree with tests: it has no CTestTestfile.cmake "
                           "(configure the project, with enable_testing(), first)");
  EXPECT_FALSE(list(root_ + "/nope", {}, error));
  EXPECT_THAT(error, HasSubstr("(no such directory)"));

  EXPECT_FALSE(list(build_, {}, error, "dtest-no-such-ctest"));
  EXPECT_EQ(error, "ctest not found in PATH (install CMake >= 3.14 on this host, or name ctest's path)");
  EXPECT_FALSE(list(build_, {}, error, "/nonexistent/ctest"));
  EXPECT_EQ(error, "cannot run /nonexistent/ctest: not an executable file");

  EXPECT_FALSE(list(build_, {"("}, error));
  EXPECT_EQ(error, "label regex \"(\" is invalid: Unmatched parentheses.");

  const std::string broken = root_ + "/broken";
  fs::create_directories(broken);
  std::ofstream(broken + "/CTestTestfile.cmake") << "add_test(x \"/bin/true\"\n";
  EXPECT_FALSE(list(broken, {}, error));
  EXPECT_THAT(error, StartsWith("ctest --show-only=json-v1 in " + broken + " failed (exit status 8): "));
  EXPECT_THAT(error, HasSubstr("Parse error.  Function missing ending \")\""));
}

}  // namespace
}  // namespace dtest::ctest
