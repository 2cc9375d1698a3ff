#include "agent/gtest_parse.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace dtest::gtest {
namespace {

// ---------------------------------------------------------------------------
// Real samples, captured from a GoogleTest 1.12.1 binary (see the report for
// its source: plain, failing, skipped, disabled, typed, type-parameterised,
// value-parameterised with a custom name generator, printf without newline,
// stderr, SetUpTestSuite failure, segfault, abort, exit(3)). Run output was
// captured with --gtest_color=no and 2>&1.
// ---------------------------------------------------------------------------

// ./sample --gtest_list_tests
constexpr std::string_view kListing = R"gt(Running main() from ./googletest/src/gtest_main.cc
Plain.
  Passes
  Fails
  Skips
  DISABLED_Off
  PrintfNoNewline
  Stderr
DISABLED_Suite.
  Test
Crash.
  Segv
  Abort
  Exit3
Typed/0.  # TypeParam = int
  Works
  FailsForString
Typed/1.  # TypeParam = std::basic_string<char, std::char_traits<char>, std::allocator<char> >
  Works
  FailsForString
My/TP/0.  # TypeParam = int
  A
My/TP/1.  # TypeParam = char
  A
DISABLED_Off/TP/0.  # TypeParam = int
  A
DISABLED_Off/TP/1.  # TypeParam = char
  A
BadSetUp.
  T
Nums/VP.
  Even/0  # GetParam() = 2
  Even/1  # GetParam() = 3
Named/VP.
  Even/n4  # GetParam() = 4
  Even/n5  # GetParam() = 5
Str/SVP.
  NonEmpty/0  # GetParam() = "a b\nc"
Pre/DISABLED_VP2.
  X/0  # GetParam() = 1
)gt";

// ./sample --gtest_color=no --gtest_filter='-Crash.*' 2>&1   (exit status 1)
constexpr std::string_view kRunAll = R"gt(Running main() from ./googletest/src/gtest_main.cc
Note: Google Test filter = -Crash.*
[==========] Running 17 tests from 9 test suites.
[----------] Global test environment set-up.
[----------] 5 tests from Plain
[ RUN      ] Plain.Passes
[       OK ] Plain.Passes (0 ms)
[ RUN      ] Plain.Fails
sample.cc:7: Failure
Expected equality of these values:
  1
  2
one is not two
[  FAILED  ] Plain.Fails (0 ms)
[ RUN      ] Plain.Skips
sample.cc:8: Skipped
not today
[  SKIPPED ] Plain.Skips (0 ms)
[ DISABLED ] Plain.DISABLED_Off
[ RUN      ] Plain.PrintfNoNewline
partial line[       OK ] Plain.PrintfNoNewline (0 ms)
[ RUN      ] Plain.Stderr
to stderr
[       OK ] Plain.Stderr (0 ms)
[----------] 5 tests from Plain (0 ms total)

[----------] 2 tests from Typed/0, where TypeParam = int
[ RUN      ] Typed/0.Works
[       OK ] Typed/0.Works (0 ms)
[ RUN      ] Typed/0.FailsForString
[       OK ] Typed/0.FailsForString (0 ms)
[----------] 2 tests from Typed/0 (0 ms total)

[----------] 2 tests from Typed/1, where TypeParam = std::basic_string<char, std::char_traits<char>, std::allocator<char> >
[ RUN      ] Typed/1.Works
[       OK ] Typed/1.Works (0 ms)
[ RUN      ] Typed/1.FailsForString
sample.cc:21: Failure
Value of: (std::is_same_v<TypeParam, std::string>)
  Actual: true
Expected: false
[  FAILED  ] Typed/1.FailsForString, where TypeParam = std::basic_string<char, std::char_traits<char>, std::allocator<char> > (0 ms)
[----------] 2 tests from Typed/1 (0 ms total)

[----------] 1 test from My/TP/0, where TypeParam = int
[ RUN      ] My/TP/0.A
[       OK ] My/TP/0.A (0 ms)
[----------] 1 test from My/TP/0 (0 ms total)

[----------] 1 test from My/TP/1, where TypeParam = char
[ RUN      ] My/TP/1.A
sample.cc:25: Failure
Expected equality of these values:
  sizeof(TypeParam)
    Which is: 1
  4u
    Which is: 4
[  FAILED  ] My/TP/1.A, where TypeParam = char (0 ms)
[----------] 1 test from My/TP/1 (0 ms total)

[----------] 1 test from BadSetUp
sample.cc:43: Failure
Failed
suite setup failed
[ RUN      ] BadSetUp.T
sample.cc:45: Skipped

[  SKIPPED ] BadSetUp.T (0 ms)
[----------] 1 test from BadSetUp (0 ms total)

[----------] 2 tests from Nums/VP
[ RUN      ] Nums/VP.Even/0
[       OK ] Nums/VP.Even/0 (0 ms)
[ RUN      ] Nums/VP.Even/1
sample.cc:32: Failure
Expected equality of these values:
  GetParam() % 2
    Which is: 1
  0
[  FAILED  ] Nums/VP.Even/1, where GetParam() = 3 (0 ms)
[----------] 2 tests from Nums/VP (0 ms total)

[----------] 2 tests from Named/VP
[ RUN      ] Named/VP.Even/n4
[       OK ] Named/VP.Even/n4 (0 ms)
[ RUN      ] Named/VP.Even/n5
sample.cc:32: Failure
Expected equality of these values:
  GetParam() % 2
    Which is: 1
  0
[  FAILED  ] Named/VP.Even/n5, where GetParam() = 5 (0 ms)
[----------] 2 tests from Named/VP (0 ms total)

[----------] 1 test from Str/SVP
[ RUN      ] Str/SVP.NonEmpty/0
sample.cc:38: Failure
Value of: GetParam().empty()
  Actual: false
Expected: true
[  FAILED  ] Str/SVP.NonEmpty/0, where GetParam() = "a b\nc" (0 ms)
[----------] 1 test from Str/SVP (0 ms total)

[----------] Global test environment tear-down
[==========] 17 tests from 9 test suites ran. (0 ms total)
[  PASSED  ] 9 tests.
[  SKIPPED ] 2 tests, listed below:
[  SKIPPED ] Plain.Skips
[  SKIPPED ] BadSetUp.T
[  FAILED  ] 6 tests, listed below:
[  FAILED  ] Plain.Fails
[  FAILED  ] Typed/1.FailsForString, where TypeParam = std::basic_string<char, std::char_traits<char>, std::allocator<char> >
[  FAILED  ] My/TP/1.A, where TypeParam = char
[  FAILED  ] Nums/VP.Even/1, where GetParam() = 3
[  FAILED  ] Named/VP.Even/n5, where GetParam() = 5
[  FAILED  ] Str/SVP.NonEmpty/0, where GetParam() = "a b\nc"

 6 FAILED TESTS
[  FAILED  ] BadSetUp: SetUpTestSuite or TearDownTestSuite

 1 FAILED TEST SUITE
  YOU HAVE 5 DISABLED TESTS

)gt";

// ./sample --gtest_color=no
//   --gtest_filter=Plain.Passes:Crash.Segv:Plain.Stderr 2>&1  (SIGSEGV)
constexpr std::string_view kRunSegv = R"gt(Running main() from ./googletest/src/gtest_main.cc
Note: Google Test filter = Plain.Passes:Crash.Segv:Plain.Stderr
[==========] Running 3 tests from 2 test suites.
[----------] Global test environment set-up.
[----------] 2 tests from Plain
[ RUN      ] Plain.Passes
[       OK ] Plain.Passes (0 ms)
[ RUN      ] Plain.Stderr
to stderr
[       OK ] Plain.Stderr (0 ms)
[----------] 2 tests from Plain (0 ms total)

[----------] 1 test from Crash
[ RUN      ] Crash.Segv
before crash
)gt";

// Same with Crash.Abort (SIGABRT).
constexpr std::string_view kRunAbort = R"gt(Running main() from ./googletest/src/gtest_main.cc
Note: Google Test filter = Plain.Passes:Crash.Abort:Plain.Stderr
[==========] Running 3 tests from 2 test suites.
[----------] Global test environment set-up.
[----------] 2 tests from Plain
[ RUN      ] Plain.Passes
[       OK ] Plain.Passes (0 ms)
[ RUN      ] Plain.Stderr
to stderr
[       OK ] Plain.Stderr (0 ms)
[----------] 2 tests from Plain (0 ms total)

[----------] 1 test from Crash
[ RUN      ] Crash.Abort
aborting
)gt";

// Same with Crash.Exit3 (exit status 3).
constexpr std::string_view kRunExit3 = R"gt(Running main() from ./googletest/src/gtest_main.cc
Note: Google Test filter = Plain.Passes:Crash.Exit3:Plain.Stderr
[==========] Running 3 tests from 2 test suites.
[----------] Global test environment set-up.
[----------] 2 tests from Plain
[ RUN      ] Plain.Passes
[       OK ] Plain.Passes (0 ms)
[ RUN      ] Plain.Stderr
to stderr
[       OK ] Plain.Stderr (0 ms)
[----------] 2 tests from Plain (0 ms total)

[----------] 1 test from Crash
[ RUN      ] Crash.Exit3
exiting
)gt";

// A binary whose global Environment::SetUp() FAILs (exit status 1).
constexpr std::string_view kRunEnvFail = R"gt([==========] Running 1 test from 1 test suite.
[----------] Global test environment set-up.
envfail.cc:2: Failure
Failed
env broken
[----------] 1 test from E
[ RUN      ] E.T
envfail.cc:3: Skipped

[  SKIPPED ] E.T (0 ms)
[----------] 1 test from E (0 ms total)

[----------] Global test environment tear-down
[==========] 1 test from 1 test suite ran. (0 ms total)
[  PASSED  ] 0 tests.
[  SKIPPED ] 1 test, listed below:
[  SKIPPED ] E.T
[  FAILED  ] 0 tests, listed below:

 0 FAILED TESTS
)gt";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const ListedTest* find_listed(const std::vector<ListedTest>& v,
                              std::string_view full) {
  for (const auto& t : v)
    if (t.full == full) return &t;
  return nullptr;
}

std::vector<TestEvent> feed_chunked(RunParser& p, std::string_view bytes,
                                    std::size_t chunk) {
  std::vector<TestEvent> out;
  while (!bytes.empty()) {
    const std::size_t n = std::min(chunk, bytes.size());
    p.feed(bytes.substr(0, n), out);
    bytes.remove_prefix(n);
  }
  return out;
}

struct Parsed {
  std::vector<TestEvent> events;
  bool crashed = false;
  std::vector<std::string> finished;
  std::string outside;
  std::string current;
};

// chunk == 0: feed everything in one call.
Parsed parse_run(std::string_view bytes, std::size_t chunk,
                 std::string_view status = "exit status 1") {
  RunParser p;
  Parsed r;
  if (chunk == 0) {
    p.feed(bytes, r.events);
  } else {
    r.events = feed_chunked(p, bytes, chunk);
  }
  r.crashed = p.finish(status, r.events);
  r.finished = p.finished();
  r.outside = p.outside_output();
  r.current = p.current();
  return r;
}

void expect_same_events(const std::vector<TestEvent>& a,
                        const std::vector<TestEvent>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i) + " " + a[i].name);
    EXPECT_EQ(a[i].kind, b[i].kind);
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].outcome, b[i].outcome);
    EXPECT_EQ(a[i].duration_ms, b[i].duration_ms);
    EXPECT_EQ(a[i].output, b[i].output);
  }
}

void expect_same(const Parsed& a, const Parsed& b) {
  expect_same_events(a.events, b.events);
  EXPECT_EQ(a.crashed, b.crashed);
  EXPECT_EQ(a.finished, b.finished);
  EXPECT_EQ(a.outside, b.outside);
  EXPECT_EQ(a.current, b.current);
}

struct Want {
  std::string name;
  Outcome outcome;
  std::string output;
  double ms = 0;
};

// Checks that `events` is exactly started/finished pairs matching `want`.
void expect_events(const std::vector<TestEvent>& events,
                   const std::vector<Want>& want) {
  ASSERT_EQ(events.size(), 2 * want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].name);
    const TestEvent& s = events[2 * i];
    const TestEvent& f = events[2 * i + 1];
    EXPECT_EQ(s.kind, TestEvent::Kind::started);
    EXPECT_EQ(s.name, want[i].name);
    EXPECT_EQ(f.kind, TestEvent::Kind::finished);
    EXPECT_EQ(f.name, want[i].name);
    EXPECT_EQ(f.outcome, want[i].outcome)
        << to_string(f.outcome) << " vs " << to_string(want[i].outcome);
    EXPECT_EQ(f.output, want[i].output);
    EXPECT_EQ(f.duration_ms, want[i].ms);
  }
}

std::string crlf(std::string_view s) {
  std::string r;
  for (char c : s) {
    if (c == '\n') r += '\r';
    r += c;
  }
  return r;
}

// ---------------------------------------------------------------------------
// parse_list
// ---------------------------------------------------------------------------

TEST(ParseList, RealListingCountsAndOrder) {
  const auto tests = parse_list(kListing);
  ASSERT_EQ(tests.size(), 25u);
  EXPECT_EQ(tests.front().full, "Plain.Passes");
  EXPECT_EQ(tests.back().full, "Pre/DISABLED_VP2.X/0");
  // "Running main() from ..." is not a suite.
  for (const auto& t : tests) EXPECT_FALSE(t.suite.starts_with("Running"));
}

TEST(ParseList, Plain) {
  const auto tests = parse_list(kListing);
  const ListedTest* t = find_listed(tests, "Plain.Fails");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->suite, "Plain");
  EXPECT_EQ(t->name, "Fails");
  EXPECT_EQ(t->type_param, "");
  EXPECT_EQ(t->value_param, "");
  EXPECT_FALSE(t->disabled);
}

TEST(ParseList, Typed) {
  const auto tests = parse_list(kListing);
  const ListedTest* t0 = find_listed(tests, "Typed/0.Works");
  const ListedTest* t1 = find_listed(tests, "Typed/1.FailsForString");
  const ListedTest* tp = find_listed(tests, "My/TP/1.A");
  ASSERT_NE(t0, nullptr);
  ASSERT_NE(t1, nullptr);
  ASSERT_NE(tp, nullptr);
  EXPECT_EQ(t0->suite, "Typed/0");
  EXPECT_EQ(t0->name, "Works");
  EXPECT_EQ(t0->type_param, "int");
  EXPECT_EQ(t1->type_param,
            "std::basic_string<char, std::char_traits<char>, "
            "std::allocator<char> >");
  EXPECT_EQ(t1->value_param, "");
  EXPECT_EQ(tp->suite, "My/TP/1");
  EXPECT_EQ(tp->type_param, "char");
  // The type parameter does not leak into the next, untyped suite.
  const ListedTest* after = find_listed(tests, "BadSetUp.T");
  ASSERT_NE(after, nullptr);
  EXPECT_EQ(after->type_param, "");
}

TEST(ParseList, ValueParameterised) {
  const auto tests = parse_list(kListing);
  const ListedTest* e1 = find_listed(tests, "Nums/VP.Even/1");
  const ListedTest* n4 = find_listed(tests, "Named/VP.Even/n4");
  const ListedTest* s = find_listed(tests, "Str/SVP.NonEmpty/0");
  ASSERT_NE(e1, nullptr);
  ASSERT_NE(n4, nullptr);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(e1->suite, "Nums/VP");
  EXPECT_EQ(e1->name, "Even/1");
  EXPECT_EQ(e1->value_param, "3");
  EXPECT_EQ(n4->name, "Even/n4");
  EXPECT_EQ(n4->value_param, "4");
  // gtest prints the value on one line with '\n' escaped as backslash-n.
  EXPECT_EQ(s->value_param, "\"a b\\nc\"");
  EXPECT_EQ(s->type_param, "");
}

TEST(ParseList, DisabledFollowsGoogleTestRule) {
  const auto tests = parse_list(kListing);
  const auto disabled = [&](std::string_view full) {
    const ListedTest* t = find_listed(tests, full);
    EXPECT_NE(t, nullptr) << full;
    return t != nullptr && t->disabled;
  };
  EXPECT_TRUE(disabled("Plain.DISABLED_Off"));        // test name
  EXPECT_TRUE(disabled("DISABLED_Suite.Test"));       // suite name
  EXPECT_TRUE(disabled("DISABLED_Off/TP/0.A"));       // instantiation prefix
  EXPECT_TRUE(disabled("Pre/DISABLED_VP2.X/0"));      // "Prefix/DISABLED_Suite"
  EXPECT_FALSE(disabled("Plain.Passes"));
  EXPECT_FALSE(disabled("My/TP/0.A"));
  int n = 0;
  for (const auto& t : tests) n += t.disabled;
  EXPECT_EQ(n, 5);  // the four above plus DISABLED_Off/TP/1.A

  const auto synth = parse_list(
      "NOT_DISABLED_Suite.\n"
      "  Test\n"
      "  NOT_DISABLED_Test\n"
      "  P/DISABLED_x  # GetParam() = 1\n"
      "Inst/Suite_DISABLED_x.\n"
      "  T\n");
  ASSERT_EQ(synth.size(), 4u);
  EXPECT_FALSE(synth[0].disabled);  // "DISABLED_" must start a component
  EXPECT_FALSE(synth[1].disabled);
  EXPECT_TRUE(synth[2].disabled);   // gtest's "*/DISABLED_*" on the test name
  EXPECT_FALSE(synth[3].disabled);
}

TEST(ParseList, RunningMainLineToleratedOnlyFirst) {
  const auto tests =
      parse_list("Running main() from gmock_main.cc\nS.\n  T\n");
  ASSERT_EQ(tests.size(), 1u);
  EXPECT_EQ(tests[0].full, "S.T");
  EXPECT_THROW(parse_list("S.\n  T\nRunning main() from gmock_main.cc\n"),
               ListError);
}

TEST(ParseList, GarbageThrowsWithLineAndQuote) {
  try {
    parse_list("usage: foo [-x]\n");
    FAIL() << "no ListError";
  } catch (const ListError& e) {
    EXPECT_STREQ(e.what(),
                 "line 1 of the test listing is not GoogleTest's format: "
                 "'usage: foo [-x]'");
  }
  try {
    parse_list("S.\n  T\nwarning: something odd\n  U\n");
    FAIL() << "no ListError";
  } catch (const ListError& e) {
    EXPECT_STREQ(e.what(),
                 "line 3 of the test listing is not GoogleTest's format: "
                 "'warning: something odd'");
  }
}

TEST(ParseList, OtherMalformedLines) {
  EXPECT_THROW(parse_list("  T\n"), ListError);              // test before suite
  EXPECT_THROW(parse_list("Hello world.\n  T\n"), ListError);  // spaces in suite
  EXPECT_THROW(parse_list("S.\n    T\n"), ListError);         // wrong indent
  EXPECT_THROW(parse_list("S.\n  T  # Foo = 1\n"), ListError);  // unknown comment
  EXPECT_THROW(parse_list("S.  # Bar = int\n  T\n"), ListError);
  EXPECT_THROW(parse_list(".\n  T\n"), ListError);             // empty suite name
  EXPECT_THROW(parse_list("S\n  T\n"), ListError);             // no trailing dot
}

TEST(ParseList, EmptyAndCrlfAndNoFinalNewline) {
  EXPECT_TRUE(parse_list("").empty());
  EXPECT_TRUE(parse_list("Running main() from gtest_main.cc\n").empty());
  const auto crlf_tests = parse_list(crlf(kListing));
  const auto lf_tests = parse_list(kListing);
  ASSERT_EQ(crlf_tests.size(), lf_tests.size());
  for (std::size_t i = 0; i < lf_tests.size(); ++i) {
    EXPECT_EQ(crlf_tests[i].full, lf_tests[i].full);
    EXPECT_EQ(crlf_tests[i].type_param, lf_tests[i].type_param);
    EXPECT_EQ(crlf_tests[i].value_param, lf_tests[i].value_param);
  }
  const auto t = parse_list("S.\n  T  # GetParam() = 7");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].value_param, "7");
}

// ---------------------------------------------------------------------------
// RunParser on the real samples
// ---------------------------------------------------------------------------

const std::vector<Want>& run_all_expected() {
  static const std::vector<Want> w = {
      {"Plain.Passes", Outcome::passed, ""},
      {"Plain.Fails", Outcome::failed,
       "sample.cc:7: Failure\nExpected equality of these values:\n  1\n  2\n"
       "one is not two\n"},
      {"Plain.Skips", Outcome::skipped, "sample.cc:8: Skipped\nnot today\n"},
      {"Plain.PrintfNoNewline", Outcome::passed, "partial line"},
      {"Plain.Stderr", Outcome::passed, "to stderr\n"},
      {"Typed/0.Works", Outcome::passed, ""},
      {"Typed/0.FailsForString", Outcome::passed, ""},
      {"Typed/1.Works", Outcome::passed, ""},
      {"Typed/1.FailsForString", Outcome::failed,
       "sample.cc:21: Failure\n"
       "Value of: (std::is_same_v<TypeParam, std::string>)\n"
       "  Actual: true\nExpected: false\n"},
      {"My/TP/0.A", Outcome::passed, ""},
      {"My/TP/1.A", Outcome::failed,
       "sample.cc:25: Failure\nExpected equality of these values:\n"
       "  sizeof(TypeParam)\n    Which is: 1\n  4u\n    Which is: 4\n"},
      {"BadSetUp.T", Outcome::skipped, "sample.cc:45: Skipped\n\n"},
      {"Nums/VP.Even/0", Outcome::passed, ""},
      {"Nums/VP.Even/1", Outcome::failed,
       "sample.cc:32: Failure\nExpected equality of these values:\n"
       "  GetParam() % 2\n    Which is: 1\n  0\n"},
      {"Named/VP.Even/n4", Outcome::passed, ""},
      {"Named/VP.Even/n5", Outcome::failed,
       "sample.cc:32: Failure\nExpected equality of these values:\n"
       "  GetParam() % 2\n    Which is: 1\n  0\n"},
      {"Str/SVP.NonEmpty/0", Outcome::failed,
       "sample.cc:38: Failure\nValue of: GetParam().empty()\n"
       "  Actual: false\nExpected: true\n"},
  };
  return w;
}

TEST(RunParser, RealRunWhole) {
  const Parsed r = parse_run(kRunAll, 0);
  expect_events(r.events, run_all_expected());
  EXPECT_FALSE(r.crashed);
  EXPECT_EQ(r.current, "");
  ASSERT_EQ(r.finished.size(), run_all_expected().size());
  for (std::size_t i = 0; i < r.finished.size(); ++i)
    EXPECT_EQ(r.finished[i], run_all_expected()[i].name);
}

TEST(RunParser, RealRunAnyChunkingGivesSameResult) {
  const Parsed whole = parse_run(kRunAll, 0);
  for (std::size_t chunk : {1u, 2u, 3u, 7u, 13u, 64u, 4096u}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    expect_same(parse_run(kRunAll, chunk), whole);
  }
  for (std::string_view sample :
       {kRunSegv, kRunAbort, kRunExit3, kRunEnvFail}) {
    expect_same(parse_run(sample, 1), parse_run(sample, 0));
  }
}

TEST(RunParser, SummaryLinesAreNotEvents) {
  const Parsed r = parse_run(kRunAll, 0);
  // 17 tests ran; the summary repeats 6 FAILED and 2 SKIPPED names, which
  // must not produce extra events or extra finished() entries.
  EXPECT_EQ(r.events.size(), 34u);
  EXPECT_EQ(r.finished.size(), 17u);
  for (const auto& name : r.finished)
    EXPECT_EQ(std::count(r.finished.begin(), r.finished.end(), name), 1)
        << name;
  // They end up in the outside output, with the rest of gtest's framing.
  EXPECT_NE(r.outside.find("[  FAILED  ] Plain.Fails\n"), std::string::npos);
  EXPECT_NE(r.outside.find("[  FAILED  ] Nums/VP.Even/1, where GetParam() = 3\n"),
            std::string::npos);
  EXPECT_NE(r.outside.find("[  SKIPPED ] Plain.Skips\n"), std::string::npos);
  EXPECT_NE(r.outside.find("[  PASSED  ] 9 tests.\n"), std::string::npos);
  EXPECT_NE(r.outside.find("YOU HAVE 5 DISABLED TESTS"), std::string::npos);
  EXPECT_NE(r.outside.find("[ DISABLED ] Plain.DISABLED_Off\n"),
            std::string::npos);
  EXPECT_NE(r.outside.find("[==========] Running 17 tests from 9 test suites.\n"),
            std::string::npos);
  // SetUpTestSuite's failure is printed outside any test.
  EXPECT_NE(r.outside.find("suite setup failed\n"), std::string::npos);
  // No test output leaks outside.
  EXPECT_EQ(r.outside.find("one is not two"), std::string::npos);
  EXPECT_EQ(r.outside.find("to stderr"), std::string::npos);
}

TEST(RunParser, MarkerMidLineAfterOutputWithoutNewline) {
  const Parsed r = parse_run(kRunAll, 0);
  const auto it = std::find_if(r.events.begin(), r.events.end(), [](const TestEvent& e) {
    return e.kind == TestEvent::Kind::finished && e.name == "Plain.PrintfNoNewline";
  });
  ASSERT_NE(it, r.events.end());
  EXPECT_EQ(it->outcome, Outcome::passed);
  EXPECT_EQ(it->output, "partial line");

  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("[ RUN      ] S.F\nabc[  FAILED  ] S.F, where GetParam() = 1 (5 ms)\n"
         "[ RUN      ] S.K\nx\ny[  SKIPPED ] S.K (2 ms)\n",
         ev);
  expect_events(ev, {{"S.F", Outcome::failed, "abc", 5},
                     {"S.K", Outcome::skipped, "x\ny", 2}});
}

TEST(RunParser, CrashSegvMidTest) {
  RunParser p;
  std::vector<TestEvent> ev;
  p.feed(kRunSegv, ev);
  EXPECT_EQ(p.current(), "Crash.Segv");
  ASSERT_EQ(ev.size(), 5u);  // Passes, Stderr, Segv started
  EXPECT_TRUE(p.finish("signal 11 (SIGSEGV)", ev));
  EXPECT_EQ(p.current(), "");
  expect_events(ev, {{"Plain.Passes", Outcome::passed, ""},
                     {"Plain.Stderr", Outcome::passed, "to stderr\n"},
                     {"Crash.Segv", Outcome::crashed,
                      "before crash\n"
                      "dtest: test process exited mid-test: signal 11 (SIGSEGV)\n"}});
  EXPECT_EQ(p.finished(),
            (std::vector<std::string>{"Plain.Passes", "Plain.Stderr", "Crash.Segv"}));
  // A second finish has nothing left to report.
  EXPECT_FALSE(p.finish("signal 11 (SIGSEGV)", ev));
  EXPECT_EQ(ev.size(), 6u);
}

TEST(RunParser, CrashAbortAndExitMidTest) {
  const Parsed a = parse_run(kRunAbort, 1, "signal 6 (SIGABRT)");
  EXPECT_TRUE(a.crashed);
  ASSERT_EQ(a.events.size(), 6u);
  EXPECT_EQ(a.events.back().name, "Crash.Abort");
  EXPECT_EQ(a.events.back().outcome, Outcome::crashed);
  EXPECT_EQ(a.events.back().output,
            "aborting\ndtest: test process exited mid-test: signal 6 (SIGABRT)\n");

  const Parsed e = parse_run(kRunExit3, 0, "exit status 3");
  EXPECT_TRUE(e.crashed);
  ASSERT_EQ(e.events.size(), 6u);
  EXPECT_EQ(e.events.back().name, "Crash.Exit3");
  EXPECT_EQ(e.events.back().outcome, Outcome::crashed);
  EXPECT_EQ(e.events.back().output,
            "exiting\ndtest: test process exited mid-test: exit status 3\n");
}

TEST(RunParser, CrashWithPartialLineAndNoOutput) {
  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("[ RUN      ] A.B\nno newline", ev);
  ASSERT_TRUE(p.finish("signal 9 (SIGKILL)", ev));
  expect_events(ev, {{"A.B", Outcome::crashed,
                      "no newline\ndtest: test process exited mid-test: "
                      "signal 9 (SIGKILL)\n"}});

  ev.clear();
  RunParser q;
  q.feed("[ RUN      ] A.C\n", ev);
  ASSERT_TRUE(q.finish("exit status 0", ev));
  expect_events(ev, {{"A.C", Outcome::crashed,
                      "dtest: test process exited mid-test: exit status 0\n"}});
}

TEST(RunParser, FinishWithoutRunningTest) {
  const Parsed r = parse_run(kRunEnvFail, 1);
  EXPECT_FALSE(r.crashed);
  expect_events(r.events, {{"E.T", Outcome::skipped, "envfail.cc:3: Skipped\n\n"}});
  EXPECT_NE(r.outside.find("env broken\n"), std::string::npos);

  // Nothing at all.
  RunParser p;
  std::vector<TestEvent> ev;
  EXPECT_FALSE(p.finish("exit status 0", ev));
  EXPECT_TRUE(ev.empty());

  // A trailing partial line goes outside.
  RunParser q;
  q.feed("[ RUN      ] A.B\n[       OK ] A.B (1 ms)\n 0 FAILED TESTS", ev);
  EXPECT_FALSE(q.finish("exit status 0", ev));
  EXPECT_EQ(q.outside_output(), " 0 FAILED TESTS");
  expect_events(ev, {{"A.B", Outcome::passed, "", 1}});
}

TEST(RunParser, EndMarkerWithoutNewlineAtExit) {
  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("[ RUN      ] A.B\nout\n[       OK ] A.B (3 ms)", ev);
  EXPECT_EQ(ev.size(), 1u);  // end marker is not complete until the exit
  EXPECT_FALSE(p.finish("exit status 0", ev));
  expect_events(ev, {{"A.B", Outcome::passed, "out\n", 3}});
}

TEST(RunParser, SuffixFormsAndDurations) {
  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("[ RUN      ] T/0.A\n"
         "[  FAILED  ] T/0.A, where TypeParam = std::map<int, int> (12 ms)\n"
         "[ RUN      ] V/P.A/3\n"
         "[  FAILED  ] V/P.A/3, where GetParam() = (1 ms) (7 ms)\n"
         "[ RUN      ] TV/0.A/1\n"
         "[  FAILED  ] TV/0.A/1, where TypeParam = int and GetParam() = 2 (1234 ms)\n"
         "[ RUN      ] S.NoTime\n"
         "[       OK ] S.NoTime\n"  // --gtest_print_time=0
         "[ RUN      ] S.Where\n"
         "[  FAILED  ] S.Where, where GetParam() = 1\n",
         ev);
  expect_events(ev, {{"T/0.A", Outcome::failed, "", 12},
                     {"V/P.A/3", Outcome::failed, "", 7},
                     {"TV/0.A/1", Outcome::failed, "", 1234},
                     {"S.NoTime", Outcome::passed, "", 0},
                     {"S.Where", Outcome::failed, "", 0}});
}

TEST(RunParser, OnlyTheCurrentTestsMarkerEndsIt) {
  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("[ RUN      ] S.T\n"
         "[       OK ] S.T2 (0 ms)\n"       // a different test (prefix)
         "[       OK ] Other.T (0 ms)\n"    // a different test
         "[       OK ] S.T (not a time)\n"  // not gtest's form
         "[ RUN      ] Nested.X\n"          // printed by the test itself
         "[  FAILED  ] S.T (4 ms)\n"
         "[  FAILED  ] S.T\n",              // summary repeat: outside
         ev);
  expect_events(ev, {{"S.T", Outcome::failed,
                      "[       OK ] S.T2 (0 ms)\n"
                      "[       OK ] Other.T (0 ms)\n"
                      "[       OK ] S.T (not a time)\n"
                      "[ RUN      ] Nested.X\n",
                      4}});
  EXPECT_EQ(p.outside_output(), "[  FAILED  ] S.T\n");
  EXPECT_EQ(p.current(), "");
}

TEST(RunParser, RunMarkerAfterUnterminatedOutsideText) {
  std::vector<TestEvent> ev;
  RunParser p;
  p.feed("setup said hi[ RUN      ] A.B\n[       OK ] A.B (0 ms)\n", ev);
  expect_events(ev, {{"A.B", Outcome::passed, ""}});
  EXPECT_EQ(p.outside_output(), "setup said hi");
}

TEST(RunParser, CrlfLineEndings) {
  const std::string bytes = crlf(kRunAll);
  const Parsed whole = parse_run(bytes, 0);
  const Parsed bytewise = parse_run(bytes, 1);
  expect_same(whole, bytewise);
  const auto& want = run_all_expected();
  ASSERT_EQ(whole.events.size(), 2 * want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const TestEvent& f = whole.events[2 * i + 1];
    EXPECT_EQ(f.name, want[i].name);  // no '\r' in names
    EXPECT_EQ(f.outcome, want[i].outcome) << f.name;
    EXPECT_EQ(f.output, crlf(want[i].output)) << f.name;  // verbatim
  }
}

TEST(RunParser, OutputIsCappedKeepingHeadAndTail) {
  std::string body;
  for (int i = 0; body.size() < (std::size_t{3} << 20); ++i)
    body += "line " + std::to_string(i) + " of a chatty test\n";
  const std::string bytes =
      "[ RUN      ] Big.Test\n" + body + "[       OK ] Big.Test (9 ms)\n";

  const Parsed whole = parse_run(bytes, 0);
  ASSERT_EQ(whole.events.size(), 2u);
  const std::string& out = whole.events[1].output;
  EXPECT_EQ(whole.events[1].outcome, Outcome::passed);
  EXPECT_EQ(whole.events[1].duration_ms, 9);

  const std::size_t head = std::size_t{256} << 10;
  const std::size_t tail = std::size_t{768} << 10;
  const std::string note =
      "\n[... " + std::to_string(body.size() - head - tail) +
      " bytes truncated ...]\n";
  ASSERT_EQ(out.size(), head + note.size() + tail);
  EXPECT_EQ(out.substr(0, head), body.substr(0, head));
  EXPECT_EQ(out.substr(head, note.size()), note);
  EXPECT_EQ(out.substr(head + note.size()), body.substr(body.size() - tail));

  expect_same(parse_run(bytes, 1), whole);
  expect_same(parse_run(bytes, 4093), whole);
}

TEST(RunParser, HugeLineWithoutNewlineIsBounded) {
  const std::string blob(std::size_t{5} << 19, 'x');  // 2.5 MiB, no newline
  const std::string bytes =
      "[ RUN      ] Big.Line\n" + blob + "[       OK ] Big.Line (1 ms)\n";
  const Parsed whole = parse_run(bytes, 0);
  ASSERT_EQ(whole.events.size(), 2u);
  const std::string& out = whole.events[1].output;
  EXPECT_EQ(whole.events[1].outcome, Outcome::passed);
  const std::string note = "\n[... " + std::to_string(blob.size() - (1u << 20)) +
                           " bytes truncated ...]\n";
  EXPECT_EQ(out.size(), (std::size_t{1} << 20) + note.size());
  EXPECT_NE(out.find(note), std::string::npos);
  expect_same(parse_run(bytes, 1000), whole);

  // Crash in the middle of such a line still reports a bounded output.
  const Parsed crash =
      parse_run("[ RUN      ] Big.Line\n" + blob, 0, "signal 11 (SIGSEGV)");
  ASSERT_TRUE(crash.crashed);
  EXPECT_LE(crash.events.back().output.size(), (std::size_t{1} << 20) + 200);
  EXPECT_TRUE(crash.events.back().output.ends_with(
      "x\ndtest: test process exited mid-test: signal 11 (SIGSEGV)\n"));
}

TEST(RunParser, OutsideOutputIsCapped) {
  std::string bytes;
  for (int i = 0; bytes.size() < (std::size_t{200} << 10); ++i)
    bytes += "global noise " + std::to_string(i) + "\n";
  bytes += "THE END\n";
  RunParser p;
  std::vector<TestEvent> ev;
  p.feed(bytes, ev);
  EXPECT_LE(p.outside_output().size(), (std::size_t{64} << 10) + 64);
  EXPECT_FALSE(p.finish("exit status 0", ev));
  EXPECT_TRUE(ev.empty());
  const std::string& o = p.outside_output();
  EXPECT_LE(o.size(), (std::size_t{40} << 10) + 64);
  EXPECT_TRUE(o.starts_with("global noise 0\n"));
  EXPECT_TRUE(o.ends_with("THE END\n"));
  EXPECT_NE(o.find(" bytes truncated ...]\n"), std::string::npos);
}

TEST(RunParser, KilledForItsTimeLimitEndsWithTheGivenOutcomeAndLine) {
  RunParser p;
  std::vector<TestEvent> ev;
  p.feed("[ RUN      ] Slow.Done\n[       OK ] Slow.Done (3 ms)\n[ RUN      ] Slow.Hangs\nhanging", ev);
  EXPECT_EQ(p.current(), "Slow.Hangs");
  EXPECT_TRUE(p.finish(ev, Outcome::timeout, "dtest: timed out after 2 s"));
  EXPECT_EQ(p.current(), "");
  expect_events(ev, {{"Slow.Done", Outcome::passed, "", 3},
                     {"Slow.Hangs", Outcome::timeout, "hanging\ndtest: timed out after 2 s\n"}});
  EXPECT_EQ(p.finished(), (std::vector<std::string>{"Slow.Done", "Slow.Hangs"}));
  EXPECT_FALSE(p.finish("signal 9 (SIGKILL)", ev));
}

}  // namespace
}  // namespace dtest::gtest
