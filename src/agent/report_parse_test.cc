#include "agent/report_parse.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dtest::report {
namespace {

// ---------------------------------------------------------------------------
// Real samples, captured once from the real tools (not generated at test
// time: the agent's tests must not need Python, Perl, Node or a second
// CMake). The sources, in /tmp when captured:
//
// test_sample.py (pytest):
//   def test_pass(): pass
//   def test_fail():
//       print("to stdout"); print("to stderr", file=sys.stderr)
//       assert 1 == 2, "one is not two"
//   @pytest.mark.skip(reason="not on this host")        def test_skip()
//   @pytest.mark.xfail(reason="known bug #12")          def test_xfail(): assert False
//   @pytest.mark.xfail(reason="fixed?")                 def test_xpass(): pass
//   @pytest.mark.xfail(reason="must fail", strict=True) def test_xpass_strict(): pass
//   a fixture that raises RuntimeError("setup <exploded> & died"): test_setup_error
//   test_imperative_skip: pytest.skip("skipped at runtime")
//   test_imperative_xfail: pytest.xfail("xfail at runtime")
//   class TestGroup: @pytest.mark.parametrize("x", [1, "é\u2603"]) test_param: assert x == 1
//
// g.cc (GoogleTest): Plain.{Passes, Fails (EXPECT_EQ(1, 2) << "one <is> not
//   & two"), Skips (GTEST_SKIP() << "no GPU here"), DISABLED_Off, Prints},
//   Nums/VP.Even/{0,1} (TEST_P with 2, 3), Typed/{0,1}.Works (int, char),
//   BadSetUp.T (SetUpTestSuite() { FAIL() << "suite setup broke"; }).
//
// CMakeLists.txt (ctest): t_pass (echo all good), t_fail (echo 'bad <thing>
//   & more'; exit 3), t_skip (exit 77, SKIP_RETURN_CODE 77), t_disabled
//   (DISABLED), t_timeout (sleep 5, TIMEOUT 1), t_missing (/nonexistent/prog),
//   t_segv (kill -SEGV $$).
//
// t.pl (Test::More): tests => 6; ok(1,'first passes'); is(1,2,'one is two');
//   SKIP: skip "no network here"; TODO "not implemented yet": ok(0,
//   'frobnicates'); TODO "flaky": ok(1,'sometimes works'); ok(1,'hash \# in
//   name') (single-quoted: a literal backslash before the '#').
//
// n.test.mjs (node:test): adds, compares (strictEqual(1, 2, 'one is not
//   two')), skips ({skip: 'no GPU'}), todo ({todo: 'later'}, throws), group
//   with subtests 'inner ok' and 'inner bad' (throws).
// ---------------------------------------------------------------------------

// /usr/bin/python3 -m pytest -p no:cacheprovider --junitxml=out.xml test_sample.py  (pytest 7.2.1, default junit_family=xunit2)
constexpr std::string_view kPytest = R"x(<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="3" skipped="4" tests="11" time="0.060" timestamp="2026-12-07T02:20:50.349670" hostname="vm"><testcase classname="test_sample" name="test_pass" time="0.001" /><testcase classname="test_sample" name="test_fail" time="0.001"><failure message="AssertionError: one is not two&#10;assert 1 == 2">def test_fail():
        print("to stdout")
        print("to stderr", file=sys.stderr)
&gt;       assert 1 == 2, "one is not two"
E       AssertionError: one is not two
E       assert 1 == 2

test_sample.py:10: AssertionError</failure></testcase><testcase classname="test_sample" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not on this host">/tmp/rp/test_sample.py:12: not on this host</skipped></testcase><testcase classname="test_sample" name="test_xfail" time="0.001"><skipped type="pytest.xfail" message="known bug #12" /></testcase><testcase classname="test_sample" name="test_xpass" time="0.000" /><testcase classname="test_sample" name="test_xpass_strict" time="0.000"><failure message="[XPASS(strict)] must fail">[XPASS(strict)] must fail</failure></testcase><testcase classname="test_sample" name="test_setup_error" time="0.000"><error message="failed on setup with &quot;RuntimeError: setup &lt;exploded&gt; &amp; died&quot;">@pytest.fixture
    def broken():
&gt;       raise RuntimeError("setup &lt;exploded&gt; &amp; died")
E       RuntimeError: setup &lt;exploded&gt; &amp; died

test_sample.py:30: RuntimeError</error></testcase><testcase classname="test_sample" name="test_imperative_skip" time="0.000"><skipped type="pytest.skip" message="skipped at runtime">/tmp/rp/test_sample.py:36: skipped at runtime</skipped></testcase><testcase classname="test_sample" name="test_imperative_xfail" time="0.000"><skipped type="pytest.xfail" message="xfail at runtime" /></testcase><testcase classname="test_sample.TestGroup" name="test_param[1]" time="0.001" /><testcase classname="test_sample.TestGroup" name="test_param[\xe9\u2603]" time="0.001"><failure message="AssertionError: assert 'é☃' == 1">self = &lt;test_sample.TestGroup object at 0x7f11a951d690&gt;, x = 'é☃'

    @pytest.mark.parametrize("x", [1, "é\u2603"])
    def test_param(self, x):
&gt;       assert x == 1
E       AssertionError: assert 'é☃' == 1

test_sample.py:44: AssertionError</failure></testcase></testsuite></testsuites>)x";

// the same with -o junit_logging=all -k 'fail and not xfail or setup_error'
constexpr std::string_view kPytestLogged = R"x(<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="0" tests="2" time="0.048" timestamp="2026-12-07T02:20:54.512497" hostname="vm"><testcase classname="test_sample" name="test_fail" time="0.001"><failure message="AssertionError: one is not two&#10;assert 1 == 2">def test_fail():
        print("to stdout")
        print("to stderr", file=sys.stderr)
&gt;       assert 1 == 2, "one is not two"
E       AssertionError: one is not two
E       assert 1 == 2

test_sample.py:10: AssertionError</failure><system-out>--------------------------------- Captured Log ---------------------------------

--------------------------------- Captured Out ---------------------------------
to stdout

</system-out><system-err>--------------------------------- Captured Err ---------------------------------
to stderr

</system-err></testcase><testcase classname="test_sample" name="test_setup_error" time="0.001"><error message="failed on setup with &quot;RuntimeError: setup &lt;exploded&gt; &amp; died&quot;">@pytest.fixture
    def broken():
&gt;       raise RuntimeError("setup &lt;exploded&gt; &amp; died")
E       RuntimeError: setup &lt;exploded&gt; &amp; died

test_sample.py:30: RuntimeError</error><system-out>--------------------------------- Captured Log ---------------------------------

--------------------------------- Captured Out ---------------------------------

</system-out><system-err>--------------------------------- Captured Err ---------------------------------

</system-err></testcase></testsuite></testsuites>)x";

// ./g --gtest_output=xml:g.xml  (GoogleTest 1.12.1)
constexpr std::string_view kGtest = R"x(<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="10" failures="2" disabled="1" errors="0" time="0.004" timestamp="2026-12-07T02:21:09.261" name="AllTests">
  <testsuite name="Plain" tests="5" failures="1" disabled="1" skipped="1" errors="0" time="0" timestamp="2026-12-07T02:21:09.261">
    <testcase name="Passes" file="g.cc" line="3" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.261" classname="Plain" />
    <testcase name="Fails" file="g.cc" line="4" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.261" classname="Plain">
      <failure message="g.cc:4&#x0A;Expected equality of these values:&#x0A;  1&#x0A;  2&#x0A;one &lt;is&gt; not &amp; two" type=""><![CDATA[g.cc:4
Expected equality of these values:
  1
  2
one <is> not & two]]></failure>
    </testcase>
    <testcase name="Skips" file="g.cc" line="5" status="run" result="skipped" time="0" timestamp="2026-12-07T02:21:09.261" classname="Plain">
      <skipped message="g.cc:5&#x0A;no GPU here"><![CDATA[g.cc:5
no GPU here]]></skipped>
    </testcase>
    <testcase name="DISABLED_Off" file="g.cc" line="6" status="notrun" result="suppressed" time="0" timestamp="1970-01-01T00:00:00.000" classname="Plain" />
    <testcase name="Prints" file="g.cc" line="7" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.261" classname="Plain" />
  </testsuite>
  <testsuite name="Typed/0" tests="1" failures="0" disabled="0" skipped="0" errors="0" time="0" timestamp="2026-12-07T02:21:09.261">
    <testcase name="Works" type_param="int" file="g.cc" line="14" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.261" classname="Typed/0" />
  </testsuite>
  <testsuite name="Typed/1" tests="1" failures="0" disabled="0" skipped="0" errors="0" time="0" timestamp="2026-12-07T02:21:09.261">
    <testcase name="Works" type_param="char" file="g.cc" line="14" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.261" classname="Typed/1" />
  </testsuite>
  <testsuite name="BadSetUp" tests="1" failures="0" disabled="0" skipped="1" errors="0" time="0" timestamp="2026-12-07T02:21:09.261">
    <testcase name="T" file="g.cc" line="16" status="run" result="skipped" time="0" timestamp="1970-01-01T00:00:00.000" classname="BadSetUp">
      <skipped message="g.cc:16&#x0A;"><![CDATA[g.cc:16
]]></skipped>
    </testcase>
  </testsuite>
  <testsuite name="Nums/VP" tests="2" failures="1" disabled="0" skipped="0" errors="0" time="0" timestamp="2026-12-07T02:21:09.265">
    <testcase name="Even/0" value_param="2" file="g.cc" line="9" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.265" classname="Nums/VP" />
    <testcase name="Even/1" value_param="3" file="g.cc" line="9" status="run" result="completed" time="0" timestamp="2026-12-07T02:21:09.265" classname="Nums/VP">
      <failure message="g.cc:9&#x0A;Expected equality of these values:&#x0A;  GetParam() % 2&#x0A;    Which is: 1&#x0A;  0" type=""><![CDATA[g.cc:9
Expected equality of these values:
  GetParam() % 2
    Which is: 1
  0]]></failure>
    </testcase>
  </testsuite>
</testsuites>
)x";

// ctest --output-junit ct.xml  (CMake 3.25.1)
constexpr std::string_view kCtest = R"x(<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="(empty)"
	tests="7"
	failures="3"
	disabled="1"
	skipped="2"
	hostname=""
	time="1"
	timestamp="2026-12-07T02:21:31"
	>
	<testcase name="t_pass" classname="t_pass" time="0.00631798" status="run">
		<system-out>all good
</system-out>
	</testcase>
	<testcase name="t_fail" classname="t_fail" time="0.00364681" status="fail">
		<failure message=""/>
		<system-out>bad &lt;thing&gt; &amp; more
</system-out>
	</testcase>
	<testcase name="t_skip" classname="t_skip" time="0.0037387" status="notrun">
		<skipped message="SKIP_RETURN_CODE=77"/>
		<system-out>skipping
</system-out>
	</testcase>
	<testcase name="t_disabled" classname="t_disabled" time="0" status="disabled">
		<system-out>Disabled</system-out>
	</testcase>
	<testcase name="t_timeout" classname="t_timeout" time="1.00719" status="fail">
		<failure message=""/>
		<system-out></system-out>
	</testcase>
	<testcase name="t_missing" classname="t_missing" time="0" status="notrun">
		<skipped message="Unable to find executable"/>
		<system-out>Unable to find executable: /nonexistent/prog</system-out>
	</testcase>
	<testcase name="t_segv" classname="t_segv" time="0.0040822" status="fail">
		<failure message=""/>
		<system-out></system-out>
	</testcase>
</testsuite>
)x";

// perl t.pl 2>&1  (Test::More 1.302190)
constexpr std::string_view kTestMore = R"x(1..6
ok 1 - first passes
not ok 2 - one is two
#   Failed test 'one is two'
#   at t.pl line 4.
#          got: '1'
#     expected: '2'
ok 3 # skip no network here
not ok 4 - frobnicates # TODO not implemented yet
#   Failed (TODO) test 'frobnicates'
#   at t.pl line 6.
ok 5 - sometimes works # TODO flaky
ok 6 - hash \\\# in name
# Looks like you failed 1 test of 6.
)x";

// node --test --test-reporter=tap n.test.mjs  (Node 20.20.2)
constexpr std::string_view kNodeTest = R"x(TAP version 13
# Subtest: adds
ok 1 - adds
  ---
  duration_ms: 1.435068
  ...
# Subtest: compares
not ok 2 - compares
  ---
  duration_ms: 1.743474
  location: '/tmp/rp/n.test.mjs:4:1'
  failureType: 'testCodeFailure'
  error: |-
    one is not two
    
    1 !== 2
    
  code: 'ERR_ASSERTION'
  name: 'AssertionError'
  expected: 2
  actual: 1
  operator: 'strictEqual'
  stack: |-
    TestContext.<anonymous> (file:///tmp/rp/n.test.mjs:4:33)
    Test.runInAsyncScope (node:async_hooks:206:9)
    Test.run (node:internal/test_runner/test:796:25)
    Test.processPendingSubtests (node:internal/test_runner/test:526:18)
    Test.postRun (node:internal/test_runner/test:889:19)
    Test.run (node:internal/test_runner/test:835:12)
    async Test.processPendingSubtests (node:internal/test_runner/test:526:7)
  ...
# Subtest: skips
ok 3 - skips # SKIP no GPU
  ---
  duration_ms: 0.164878
  ...
# Subtest: todo
not ok 4 - todo # TODO later
  ---
  duration_ms: 0.17731
  location: '/tmp/rp/n.test.mjs:6:1'
  failureType: 'testCodeFailure'
  error: 'nope'
  code: 'ERR_TEST_FAILURE'
  stack: |-
    TestContext.<anonymous> (file:///tmp/rp/n.test.mjs:6:47)
    Test.runInAsyncScope (node:async_hooks:206:9)
    Test.run (node:internal/test_runner/test:796:25)
    Test.processPendingSubtests (node:internal/test_runner/test:526:18)
    Test.postRun (node:internal/test_runner/test:889:19)
    Test.run (node:internal/test_runner/test:835:12)
    async Test.processPendingSubtests (node:internal/test_runner/test:526:7)
  ...
# Subtest: group
    # Subtest: inner ok
    ok 1 - inner ok
      ---
      duration_ms: 0.190115
      ...
    # Subtest: inner bad
    not ok 2 - inner bad
      ---
      duration_ms: 0.151422
      location: '/tmp/rp/n.test.mjs:9:11'
      failureType: 'testCodeFailure'
      error: 'inner broke'
      code: 'ERR_TEST_FAILURE'
      stack: |-
        TestContext.<anonymous> (file:///tmp/rp/n.test.mjs:9:43)
        Test.runInAsyncScope (node:async_hooks:206:9)
        Test.run (node:internal/test_runner/test:796:25)
        Test.start (node:internal/test_runner/test:702:17)
        TestContext.test (node:internal/test_runner/test:292:20)
        TestContext.<anonymous> (file:///tmp/rp/n.test.mjs:9:11)
        async Test.run (node:internal/test_runner/test:797:9)
        async Test.processPendingSubtests (node:internal/test_runner/test:526:7)
      ...
    1..2
not ok 5 - group
  ---
  duration_ms: 0.893457
  location: '/tmp/rp/n.test.mjs:7:1'
  failureType: 'subtestsFailed'
  error: '1 subtest failed'
  code: 'ERR_TEST_FAILURE'
  ...
1..5
# tests 7
# suites 0
# pass 2
# fail 3
# cancelled 0
# skipped 1
# todo 1
# duration_ms 302.82983
)x";

const Case& find(const Parsed& p, std::string_view id) {
  for (const Case& c : p.cases)
    if (c.id == id) return c;
  ADD_FAILURE() << "no case " << id;
  static const Case none;
  return none;
}

std::vector<std::string> ids_of(const Parsed& p) {
  std::vector<std::string> v;
  for (const Case& c : p.cases) v.push_back(c.id);
  return v;
}

Parsed junit_ok(std::string_view xml) {
  std::string error;
  std::optional<Parsed> p = parse_junit(xml, error);
  EXPECT_TRUE(p) << error;
  return p ? *p : Parsed{};
}

std::string junit_error(std::string_view xml) {
  std::string error;
  EXPECT_FALSE(parse_junit(xml, error));
  return error;
}

Parsed tap_ok(std::string_view tap) {
  std::string error;
  std::optional<Parsed> p = parse_tap(tap, error);
  EXPECT_TRUE(p) << error;
  return p ? *p : Parsed{};
}

using Strings = std::vector<std::string>;

// ---------------------------------------------------------------------------
// JUnit: real samples
// ---------------------------------------------------------------------------

TEST(JunitPytest, EveryOutcome) {
  Parsed p = junit_ok(kPytest);
  EXPECT_EQ(ids_of(p),
            (Strings{"test_sample.test_pass", "test_sample.test_fail",
                     "test_sample.test_skip", "test_sample.test_xfail",
                     "test_sample.test_xpass", "test_sample.test_xpass_strict",
                     "test_sample.test_setup_error",
                     "test_sample.test_imperative_skip",
                     "test_sample.test_imperative_xfail",
                     "test_sample.TestGroup.test_param[1]",
                     "test_sample.TestGroup.test_param[\\xe9\\u2603]"}));
  EXPECT_EQ(p.warnings, Strings{});

  const Case& pass = find(p, "test_sample.test_pass");
  EXPECT_EQ(pass.outcome, Outcome::passed);
  EXPECT_EQ(pass.name, "test_pass");
  EXPECT_EQ(pass.classname, "test_sample");
  EXPECT_DOUBLE_EQ(pass.seconds, 0.001);
  EXPECT_EQ(pass.message, "");
  EXPECT_EQ(pass.output, "");

  const Case& fail = find(p, "test_sample.test_fail");
  EXPECT_EQ(fail.outcome, Outcome::failed);
  EXPECT_EQ(fail.message, "AssertionError: one is not two assert 1 == 2");
  EXPECT_EQ(fail.output,
            "def test_fail():\n"
            "        print(\"to stdout\")\n"
            "        print(\"to stderr\", file=sys.stderr)\n"
            ">       assert 1 == 2, \"one is not two\"\n"
            "E       AssertionError: one is not two\n"
            "E       assert 1 == 2\n"
            "\n"
            "test_sample.py:10: AssertionError");

  const Case& skip = find(p, "test_sample.test_skip");
  EXPECT_EQ(skip.outcome, Outcome::skipped);
  EXPECT_EQ(skip.message, "not on this host");
  EXPECT_EQ(skip.output, "/tmp/rp/test_sample.py:12: not on this host");

  const Case& xfail = find(p, "test_sample.test_xfail");
  EXPECT_EQ(xfail.outcome, Outcome::xfailed);
  EXPECT_EQ(xfail.message, "known bug #12");

  // A non-strict XPASS is a plain pass in pytest's XML.
  EXPECT_EQ(find(p, "test_sample.test_xpass").outcome, Outcome::passed);
  const Case& strict = find(p, "test_sample.test_xpass_strict");
  EXPECT_EQ(strict.outcome, Outcome::failed);
  EXPECT_EQ(strict.message, "[XPASS(strict)] must fail");
  EXPECT_EQ(strict.output, "[XPASS(strict)] must fail");

  const Case& setup = find(p, "test_sample.test_setup_error");
  EXPECT_EQ(setup.outcome, Outcome::failed);
  EXPECT_EQ(setup.message,
            "error: failed on setup with \"RuntimeError: setup <exploded> & died\"");
  EXPECT_NE(setup.output.find("raise RuntimeError(\"setup <exploded> & died\")"),
            std::string::npos);

  const Case& iskip = find(p, "test_sample.test_imperative_skip");
  EXPECT_EQ(iskip.outcome, Outcome::skipped);
  EXPECT_EQ(iskip.message, "skipped at runtime");
  const Case& ixfail = find(p, "test_sample.test_imperative_xfail");
  EXPECT_EQ(ixfail.outcome, Outcome::xfailed);
  EXPECT_EQ(ixfail.message, "xfail at runtime");

  EXPECT_EQ(find(p, "test_sample.TestGroup.test_param[1]").outcome, Outcome::passed);
  const Case& uni = find(p, "test_sample.TestGroup.test_param[\\xe9\\u2603]");
  EXPECT_EQ(uni.outcome, Outcome::failed);
  EXPECT_EQ(uni.name, "test_param[\\xe9\\u2603]");
  EXPECT_EQ(uni.classname, "test_sample.TestGroup");
  EXPECT_EQ(uni.message, "AssertionError: assert '\u00e9\u2603' == 1");
}

TEST(JunitPytest, SystemOutAndErrFollowTheFailure) {
  Parsed p = junit_ok(kPytestLogged);
  ASSERT_EQ(p.cases.size(), 2u);
  const Case& fail = p.cases[0];
  EXPECT_EQ(fail.id, "test_sample.test_fail");
  EXPECT_EQ(fail.outcome, Outcome::failed);
  std::size_t trace = fail.output.find("test_sample.py:10: AssertionError\n");
  std::size_t out = fail.output.find("Captured Out ---------------------------------\nto stdout\n");
  std::size_t err = fail.output.find("Captured Err ---------------------------------\nto stderr\n");
  ASSERT_NE(trace, std::string::npos) << fail.output;
  ASSERT_NE(out, std::string::npos) << fail.output;
  ASSERT_NE(err, std::string::npos) << fail.output;
  EXPECT_LT(trace, out);
  EXPECT_LT(out, err);
  EXPECT_EQ(p.cases[1].message,
            "error: failed on setup with \"RuntimeError: setup <exploded> & died\"");
}

TEST(JunitGtest, EveryOutcome) {
  Parsed p = junit_ok(kGtest);
  EXPECT_EQ(ids_of(p),
            (Strings{"Plain.Passes", "Plain.Fails", "Plain.Skips",
                     "Plain.DISABLED_Off", "Plain.Prints", "Typed/0.Works",
                     "Typed/1.Works", "BadSetUp.T", "Nums/VP.Even/0",
                     "Nums/VP.Even/1"}));
  EXPECT_EQ(p.warnings, Strings{});
  EXPECT_EQ(find(p, "Plain.Passes").outcome, Outcome::passed);

  const Case& fails = find(p, "Plain.Fails");
  EXPECT_EQ(fails.outcome, Outcome::failed);
  EXPECT_EQ(fails.message,
            "g.cc:4 Expected equality of these values: 1 2 one <is> not & two");
  EXPECT_EQ(fails.output,
            "g.cc:4\nExpected equality of these values:\n  1\n  2\none <is> not & two");

  const Case& skips = find(p, "Plain.Skips");
  EXPECT_EQ(skips.outcome, Outcome::skipped);
  EXPECT_EQ(skips.message, "g.cc:5 no GPU here");

  const Case& disabled = find(p, "Plain.DISABLED_Off");
  EXPECT_EQ(disabled.outcome, Outcome::skipped);
  EXPECT_EQ(disabled.message, "disabled");

  EXPECT_EQ(find(p, "Typed/1.Works").name, "Works");
  EXPECT_EQ(find(p, "Typed/1.Works").classname, "Typed/1");
  // GoogleTest 1.12 records a failed SetUpTestSuite as skipped tests.
  EXPECT_EQ(find(p, "BadSetUp.T").outcome, Outcome::skipped);
  EXPECT_EQ(find(p, "BadSetUp.T").message, "g.cc:16");
  EXPECT_EQ(find(p, "Nums/VP.Even/0").outcome, Outcome::passed);
  EXPECT_EQ(find(p, "Nums/VP.Even/1").outcome, Outcome::failed);
  EXPECT_EQ(find(p, "Nums/VP.Even/1").message,
            "g.cc:9 Expected equality of these values: GetParam() % 2 Which is: 1 0");
}

TEST(JunitCtest, EveryOutcome) {
  Parsed p = junit_ok(kCtest);
  // ctest's classname repeats the name; the id is the name once.
  EXPECT_EQ(ids_of(p), (Strings{"t_pass", "t_fail", "t_skip", "t_disabled",
                                "t_timeout", "t_missing", "t_segv"}));
  EXPECT_EQ(p.warnings, Strings{});

  const Case& pass = find(p, "t_pass");
  EXPECT_EQ(pass.outcome, Outcome::passed);
  EXPECT_EQ(pass.classname, "t_pass");
  EXPECT_DOUBLE_EQ(pass.seconds, 0.00631798);
  EXPECT_EQ(pass.output, "all good\n");

  const Case& fail = find(p, "t_fail");
  EXPECT_EQ(fail.outcome, Outcome::failed);
  EXPECT_EQ(fail.message, "");
  EXPECT_EQ(fail.output, "bad <thing> & more\n");

  const Case& skip = find(p, "t_skip");
  EXPECT_EQ(skip.outcome, Outcome::skipped);
  EXPECT_EQ(skip.message, "SKIP_RETURN_CODE=77");
  EXPECT_EQ(skip.output, "skipping\n");

  const Case& disabled = find(p, "t_disabled");
  EXPECT_EQ(disabled.outcome, Outcome::skipped);
  EXPECT_EQ(disabled.message, "disabled");
  EXPECT_EQ(disabled.output, "Disabled");

  EXPECT_EQ(find(p, "t_timeout").outcome, Outcome::failed);
  EXPECT_DOUBLE_EQ(find(p, "t_timeout").seconds, 1.00719);
  EXPECT_EQ(find(p, "t_missing").outcome, Outcome::skipped);
  EXPECT_EQ(find(p, "t_missing").message, "Unable to find executable");
  EXPECT_EQ(find(p, "t_segv").outcome, Outcome::failed);
}

// ---------------------------------------------------------------------------
// JUnit: shapes
// ---------------------------------------------------------------------------

TEST(Junit, NestedSuitesInDocumentOrder) {
  Parsed p = junit_ok(R"(<?xml version="1.0"?>
<testsuites>
  <testsuite name="outer">
    <properties><property name="testcase" value="not a test"/></properties>
    <testcase classname="o" name="first"/>
    <testsuite name="mid">
      <testsuite name="inner">
        <testcase classname="i" name="deep" time="2.5"/>
      </testsuite>
      <testcase classname="m" name="middle"/>
    </testsuite>
    <testcase classname="o" name="last"/>
    <other><testcase classname="x" name="not inside a suite"/></other>
  </testsuite>
  <testsuite name="second"><testcase name="bare"/></testsuite>
</testsuites>
)");
  EXPECT_EQ(ids_of(p), (Strings{"o.first", "i.deep", "m.middle", "o.last", "bare"}));
  EXPECT_DOUBLE_EQ(find(p, "i.deep").seconds, 2.5);
  EXPECT_EQ(find(p, "bare").classname, "");
  EXPECT_EQ(p.warnings, Strings{});
}

TEST(Junit, DeepNestingDoesNotRecurse) {
  constexpr int kDepth = 200000;
  std::string xml;
  for (int i = 0; i < kDepth; ++i) xml += "<testsuite>";
  xml += "<testcase name=\"bottom\"/>";
  for (int i = 0; i < kDepth; ++i) xml += "</testsuite>";
  Parsed p = junit_ok(xml);
  EXPECT_EQ(ids_of(p), Strings{"bottom"});
}

TEST(Junit, SuitesWithoutCases) {
  Parsed empty = junit_ok("<testsuite name=\"empty\" tests=\"0\"/>");
  EXPECT_EQ(empty.cases.size(), 0u);
  EXPECT_EQ(empty.warnings, Strings{"line 1: no <testcase> in the report"});

  Parsed some = junit_ok(
      "<testsuites>\n<testsuite name=\"a\"/>\n<testsuite name=\"b\">"
      "<testcase name=\"x\"/></testsuite>\n</testsuites>");
  EXPECT_EQ(ids_of(some), Strings{"x"});
  EXPECT_EQ(some.warnings, Strings{});

  Parsed none = junit_ok("<?xml version=\"1.0\"?>\n\n<testsuites/>");
  EXPECT_EQ(none.warnings, Strings{"line 3: no <testcase> in the report"});
}

TEST(Junit, MissingAndBadTimes) {
  Parsed p = junit_ok(
      "<testsuite>\n"
      "<testcase classname=\"S\" name=\"none\"/>\n"
      "<testcase classname=\"S\" name=\"comma\" time=\"1,5\"/>\n"
      "<testcase classname=\"S\" name=\"negative\" time=\"-1\"/>\n"
      "<testcase classname=\"S\" name=\"spaced\" time=\" 3 \"/>\n"
      "</testsuite>");
  EXPECT_EQ(find(p, "S.none").seconds, 0);
  EXPECT_EQ(find(p, "S.comma").seconds, 0);
  EXPECT_EQ(find(p, "S.negative").seconds, 0);
  EXPECT_EQ(find(p, "S.spaced").seconds, 3);
  EXPECT_EQ(p.warnings,
            (Strings{"line 3: testcase 'S.comma' has time '1,5', not a number of "
                     "seconds; using 0",
                     "line 4: testcase 'S.negative' has time '-1', not a number of "
                     "seconds; using 0"}));
}

TEST(Junit, EntitiesCdataUnicode) {
  Parsed p = junit_ok(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<testsuite name=\"\xc3\x9c\">\n"
      "  <testcase classname=\"\xc3\x9cn\xc3\xaf.Suite\" name=\"caf&#233; &amp; &lt;b&gt;\">\n"
      "    <failure message=\"a &quot;q&quot; &#x2603;&#10;second line\">before <![CDATA[<raw> & ]]>after</failure>\n"
      "    <system-out><![CDATA[out ]]]]><![CDATA[> end]]></system-out>\n"
      "  </testcase>\n"
      "</testsuite>\n");
  ASSERT_EQ(p.cases.size(), 1u);
  const Case& c = p.cases[0];
  EXPECT_EQ(c.name, "caf\u00e9 & <b>");
  EXPECT_EQ(c.classname, "\u00dcn\u00ef.Suite");
  EXPECT_EQ(c.id, "\u00dcn\u00ef.Suite.caf\u00e9 & <b>");
  EXPECT_EQ(c.outcome, Outcome::failed);
  EXPECT_EQ(c.message, "a \"q\" \u2603 second line");
  EXPECT_EQ(c.output, "before <raw> & after\nout ]]> end");
}

TEST(Junit, AntAndSurefireDialects) {
  Parsed p = junit_ok(R"(<testsuite name="com.example.FooTest" tests="5">
  <testcase classname="com.example.FooTest" name="noMessage" time="0.01">
    <failure type="java.lang.AssertionError">java.lang.AssertionError
	at com.example.FooTest.noMessage(FooTest.java:12)
</failure>
  </testcase>
  <testcase classname="com.example.FooTest" name="npe" time="0.02">
    <error type="java.lang.NullPointerException" message="boom">java.lang.NullPointerException: boom</error>
  </testcase>
  <testcase classname="com.example.FooTest" name="bare">
    <error>first line of the trace
second line</error>
  </testcase>
  <testcase classname="com.example.FooTest" name="ignored"><skipped/></testcase>
  <testcase classname="com.example.FooTest" name="flaky" time="0.5">
    <flakyFailure message="expected 1" type="java.lang.AssertionError">
      <stackTrace>at FooTest.flaky(FooTest.java:40)</stackTrace>
    </flakyFailure>
  </testcase>
  <testcase classname="com.example.FooTest" name="both">
    <failure message="first"/>
    <error message="second"/>
    <skipped message="third"/>
  </testcase>
</testsuite>)");
  const Case& no_message = find(p, "com.example.FooTest.noMessage");
  EXPECT_EQ(no_message.outcome, Outcome::failed);
  EXPECT_EQ(no_message.message, "java.lang.AssertionError");
  EXPECT_EQ(no_message.output,
            "java.lang.AssertionError\n\tat com.example.FooTest.noMessage(FooTest.java:12)\n");

  EXPECT_EQ(find(p, "com.example.FooTest.npe").message, "error: boom");
  EXPECT_EQ(find(p, "com.example.FooTest.bare").message, "error: first line of the trace");

  const Case& ignored = find(p, "com.example.FooTest.ignored");
  EXPECT_EQ(ignored.outcome, Outcome::skipped);
  EXPECT_EQ(ignored.message, "");

  // Passed on a rerun: passed, with the earlier failure kept as output.
  const Case& flaky = find(p, "com.example.FooTest.flaky");
  EXPECT_EQ(flaky.outcome, Outcome::passed);
  EXPECT_EQ(flaky.output, "flakyFailure: expected 1\nat FooTest.flaky(FooTest.java:40)");

  const Case& both = find(p, "com.example.FooTest.both");
  EXPECT_EQ(both.outcome, Outcome::failed);
  EXPECT_EQ(both.message, "first");
  EXPECT_EQ(both.output, "first\nsecond");
}

TEST(Junit, PytestXfailEncodings) {
  Parsed p = junit_ok(R"(<testsuite>
<testcase classname="m" name="no_reason"><skipped type="pytest.xfail" message=""/></testcase>
<testcase classname="m" name="xf"><skipped message="expected test failure: flaky network"/></testcase>
<testcase classname="m" name="xf_bare"><skipped message="expected test failure"/></testcase>
<testcase classname="m" name="xpass_strict"><skipped message="xfail-marked test passes unexpectedly"/></testcase>
</testsuite>)");
  EXPECT_EQ(find(p, "m.no_reason").outcome, Outcome::xfailed);
  EXPECT_EQ(find(p, "m.no_reason").message, "");
  // Older pytest:
  EXPECT_EQ(find(p, "m.xf").outcome, Outcome::xfailed);
  EXPECT_EQ(find(p, "m.xf").message, "flaky network");
  EXPECT_EQ(find(p, "m.xf_bare").outcome, Outcome::xfailed);
  EXPECT_EQ(find(p, "m.xf_bare").message, "");
  EXPECT_EQ(find(p, "m.xpass_strict").outcome, Outcome::failed);
  EXPECT_EQ(find(p, "m.xpass_strict").message, "xfail-marked test passes unexpectedly");
}

TEST(Junit, StatusAttributesWithoutChildren) {
  Parsed p = junit_ok(R"(<testsuite>
<testcase name="a" status="fail"/>
<testcase name="b" status="notrun"/>
<testcase name="c" status="run" result="completed"/>
</testsuite>)");
  EXPECT_EQ(find(p, "a").outcome, Outcome::failed);
  EXPECT_EQ(find(p, "a").message, "status=\"fail\"");
  EXPECT_EQ(find(p, "b").outcome, Outcome::skipped);
  EXPECT_EQ(find(p, "b").message, "not run");
  EXPECT_EQ(find(p, "c").outcome, Outcome::passed);
}

TEST(Junit, DuplicatesAndNamelessCasesWarn) {
  Parsed p = junit_ok(
      "<testsuite>\r\n"
      "<testcase classname=\"S\" name=\"t\"/>\r\n"
      "<testcase classname=\"S\" name=\"t\"><failure message=\"teardown\"/></testcase>\r\n"
      "<testcase classname=\"S\"/>\r\n"
      "</testsuite>\r\n");
  EXPECT_EQ(ids_of(p), (Strings{"S.t", "S.t", "S"}));
  EXPECT_EQ(p.warnings,
            (Strings{"line 3: testcase 'S.t' repeats the one at line 2",
                     "line 4: <testcase> without a name (id 'S')"}));
}

TEST(Junit, MalformedXmlNamesTheLine) {
  EXPECT_EQ(junit_error("<testsuite>\n  <testcase name=\"a\">\n  </testsuite>\n"),
            "malformed JUnit XML at line 3, column 5 (offset 38): Start-end tags mismatch");
  EXPECT_EQ(junit_error("<testsuite>\n<testcase name=\"a></testsuite>"),
            "malformed JUnit XML at line 2, column 17 (offset 28): Error parsing element attribute");
  EXPECT_EQ(junit_error(""),
            "malformed JUnit XML at line 1, column 1 (offset 0): No document element found");
  // An unclosed root: pugixml stops at the end of the input.
  EXPECT_EQ(junit_error("<testsuite>\n<testcase name=\"a\"/>\n"),
            "malformed JUnit XML at line 2, column 21 (offset 32): Start-end tags mismatch");
  EXPECT_EQ(junit_error("\n<html><body/></html>"),
            "not a JUnit report: the root element at line 2 is <html>, not "
            "<testsuites> or <testsuite>");
}

// ---------------------------------------------------------------------------
// TAP: real samples
// ---------------------------------------------------------------------------

TEST(TapTestMore, PlanSkipTodoAndDiagnostics) {
  Parsed p = tap_ok(kTestMore);
  EXPECT_EQ(ids_of(p), (Strings{"first passes", "one is two", "3", "frobnicates",
                                "sometimes works", "hash \\# in name"}));
  EXPECT_EQ(p.warnings,
            Strings{"line 12: test 5 'sometimes works' is TODO but unexpectedly passed"});

  EXPECT_EQ(find(p, "first passes").outcome, Outcome::passed);
  EXPECT_EQ(find(p, "first passes").output, "");

  const Case& fail = find(p, "one is two");
  EXPECT_EQ(fail.outcome, Outcome::failed);
  EXPECT_EQ(fail.message, "Failed test 'one is two'");
  EXPECT_EQ(fail.output,
            "  Failed test 'one is two'\n"
            "  at t.pl line 4.\n"
            "         got: '1'\n"
            "    expected: '2'\n");

  const Case& skip = find(p, "3");
  EXPECT_EQ(skip.outcome, Outcome::skipped);
  EXPECT_EQ(skip.message, "no network here");

  const Case& todo = find(p, "frobnicates");
  EXPECT_EQ(todo.outcome, Outcome::xfailed);
  EXPECT_EQ(todo.message, "not implemented yet");
  EXPECT_EQ(todo.output, "  Failed (TODO) test 'frobnicates'\n  at t.pl line 6.\n");

  const Case& xpass = find(p, "sometimes works");
  EXPECT_EQ(xpass.outcome, Outcome::passed);
  EXPECT_EQ(xpass.message, "unexpectedly passed (TODO flaky)");

  // Test::More's closing summary follows test 6 directly (its plan came
  // first), so it reads as test 6's diagnostics.
  EXPECT_EQ(find(p, "hash \\# in name").output, "Looks like you failed 1 test of 6.\n");
}

TEST(TapNodeTest, YamlBlocksAndSubtests) {
  Parsed p = tap_ok(kNodeTest);
  EXPECT_EQ(ids_of(p), (Strings{"adds", "compares", "skips", "todo", "group"}));
  EXPECT_EQ(p.warnings, Strings{});

  const Case& adds = find(p, "adds");
  EXPECT_EQ(adds.outcome, Outcome::passed);
  EXPECT_DOUBLE_EQ(adds.seconds, 0.001435068);
  EXPECT_EQ(adds.output, "duration_ms: 1.435068\n");

  const Case& compares = find(p, "compares");
  EXPECT_EQ(compares.outcome, Outcome::failed);
  EXPECT_EQ(compares.message, "one is not two 1 !== 2");
  EXPECT_TRUE(compares.output.starts_with(
      "duration_ms: 1.743474\n"
      "location: '/tmp/rp/n.test.mjs:4:1'\n"
      "failureType: 'testCodeFailure'\n"
      "error: |-\n"
      "  one is not two\n"))
      << compares.output;
  EXPECT_NE(compares.output.find("  async Test.processPendingSubtests"), std::string::npos);

  EXPECT_EQ(find(p, "skips").outcome, Outcome::skipped);
  EXPECT_EQ(find(p, "skips").message, "no GPU");
  EXPECT_EQ(find(p, "todo").outcome, Outcome::xfailed);
  EXPECT_EQ(find(p, "todo").message, "later");

  // The subtests are not cases, and their YAML is not the parent's.
  const Case& group = find(p, "group");
  EXPECT_EQ(group.outcome, Outcome::failed);
  EXPECT_EQ(group.message, "1 subtest failed");
  EXPECT_EQ(group.output.find("inner broke"), std::string::npos);
  EXPECT_DOUBLE_EQ(group.seconds, 0.000893457);
}

// ---------------------------------------------------------------------------
// TAP: shapes
// ---------------------------------------------------------------------------

TEST(Tap, PlanLast) {
  Parsed p = tap_ok("ok 1 - a\nnot ok 2 - b\n1..2\n# trailing summary\n");
  EXPECT_EQ(ids_of(p), (Strings{"a", "b"}));
  EXPECT_EQ(p.cases[1].outcome, Outcome::failed);
  EXPECT_EQ(p.cases[1].message, "");
  EXPECT_EQ(p.cases[1].output, "");  // the summary after the plan is no test's
  EXPECT_EQ(p.warnings, Strings{});
}

TEST(Tap, DescriptionsNumbersAndEscapes) {
  Parsed p = tap_ok(
      "TAP version 14\n"
      "1..7\n"
      "ok 1 - dash and spaces   \n"
      "ok 2 no dash\n"
      "ok 3\n"
      "ok - numberless\n"
      "ok 5 - a \\# b \\\\ c # time=12.5ms\n"
      "ok 6 -1 is negative\n"
      "not ok 7 - # skip: no disk\n");
  EXPECT_EQ(ids_of(p), (Strings{"dash and spaces", "no dash", "3", "numberless",
                                "a # b \\ c", "-1 is negative", "7"}));
  EXPECT_DOUBLE_EQ(p.cases[4].seconds, 0.0125);
  EXPECT_EQ(p.cases[6].outcome, Outcome::skipped);
  EXPECT_EQ(p.cases[6].message, "no disk");
  EXPECT_EQ(p.warnings, Strings{});
}

TEST(Tap, YamlMessageForms) {
  Parsed p = tap_ok(
      "1..4\n"
      "not ok 1 - single\n"
      "  ---\n"
      "  message: 'it''s broken'\n"
      "  severity: fail\n"
      "  ...\n"
      "not ok 2 - double\n"
      "  ---\n"
      "  message: \"line\\none\"\n"
      "  ...\n"
      "not ok 3 should be equal\n"  // tape: keys indented under the marker
      "  ---\n"
      "    operator: equal\n"
      "    expected: 2\n"
      "    actual:   1\n"
      "  ...\n"
      "not ok 4 - block\n"
      "   ---\n"
      "   message: >\n"
      "     folded\n"
      "\n"
      "     text\n"
      "   duration_ms: 250\n"
      "   ...\n");
  EXPECT_EQ(p.cases[0].message, "it's broken");
  EXPECT_EQ(p.cases[0].output, "message: 'it''s broken'\nseverity: fail\n");
  EXPECT_EQ(p.cases[1].message, "line one");
  EXPECT_EQ(p.cases[2].message, "");
  EXPECT_EQ(p.cases[2].output, "  operator: equal\n  expected: 2\n  actual:   1\n");
  EXPECT_EQ(p.cases[3].message, "folded text");
  EXPECT_DOUBLE_EQ(p.cases[3].seconds, 0.25);
  EXPECT_EQ(p.warnings, Strings{});
}

TEST(Tap, UnterminatedYaml) {
  Parsed p = tap_ok("1..2\nnot ok 1 - a\n  ---\n  message: gone\nok 2 - b\n");
  EXPECT_EQ(ids_of(p), (Strings{"a", "b"}));
  EXPECT_EQ(p.cases[0].message, "gone");
  EXPECT_EQ(p.warnings, Strings{"line 3: YAML block ends at line 5 without '...'"});

  Parsed eof = tap_ok("1..1\nnot ok 1 - a\n  ---\n  message: cut\n");
  EXPECT_EQ(eof.cases[0].message, "cut");
  EXPECT_EQ(eof.warnings, Strings{"line 3: YAML block never ends ('...' missing)"});
}

TEST(Tap, BailOutNamesTheTestsThatDidNotRun) {
  Parsed p = tap_ok(
      "1..6\n"
      "ok 1 - a\n"
      "ok 3 - c\n"
      "Bail out! database gone\n"
      "ok 4 - after the bail out\n");
  EXPECT_EQ(ids_of(p), (Strings{"a", "c"}));
  EXPECT_EQ(p.warnings,
            (Strings{"line 3: test number 3 out of sequence (expected 2)",
                     "line 4: Bail out! database gone; 4 of the 6 planned tests "
                     "did not run: 2, 4-6"}));

  Parsed unplanned = tap_ok("ok 1 - a\nBail out!\n");
  EXPECT_EQ(unplanned.warnings,
            Strings{"line 2: Bail out!; no plan came first, so which tests did "
                    "not run is unknown"});
}

TEST(Tap, MissingAndExtraTestsAgainstThePlan) {
  Parsed p = tap_ok("1..5\nok 1\nok 2\nok 4\n");
  EXPECT_EQ(p.warnings,
            (Strings{"line 4: test number 4 out of sequence (expected 3)",
                     "line 1: plan 1..5 (line 1): 2 of 5 tests missing: 3, 5"}));

  Parsed extra = tap_ok("ok 1\nok 2\nok 3\n1..2\n");
  EXPECT_EQ(extra.warnings,
            Strings{"line 4: plan 1..2 (line 4): 1 tests numbered outside it"});

  Parsed huge = tap_ok("1..18446744073709551615\nok 1\n");
  EXPECT_EQ(huge.warnings,
            Strings{"line 1: plan 1..18446744073709551615 (line 1): "
                    "18446744073709551614 of 18446744073709551615 tests missing: "
                    "2-18446744073709551615"});

  Parsed last = tap_ok("1..18446744073709551615\nok 18446744073709551615\n");
  EXPECT_EQ(last.warnings,
            (Strings{"line 2: test number 18446744073709551615 out of sequence (expected 1)",
                     "line 1: plan 1..18446744073709551615 (line 1): "
                     "18446744073709551614 of 18446744073709551615 tests missing: "
                     "1-18446744073709551614"}));
}

TEST(Tap, NoPlan) {
  Parsed p = tap_ok("ok 1 - a\nok 2 - b\n");
  EXPECT_EQ(ids_of(p), (Strings{"a", "b"}));
  EXPECT_EQ(p.warnings, Strings{"line 2: no plan (1..N), so missing tests cannot be told"});
}

TEST(Tap, SkipAllPlan) {
  Parsed p = tap_ok("1..0 # SKIP no database\n");
  EXPECT_EQ(p.cases.size(), 0u);
  EXPECT_EQ(p.warnings, Strings{"line 1: plan 1..0 skips every test: no database"});
}

TEST(Tap, GarbageLinesAreIgnoredWithAWarning) {
  std::string tap = "1..2\nokay then\nok 1 - a\nrandom chatter\n";
  for (int i = 0; i < 12; ++i) tap += "noise " + std::to_string(i) + "\n";
  tap += "ok 2 - b\n";
  Parsed p = tap_ok(tap);
  EXPECT_EQ(ids_of(p), (Strings{"a", "b"}));
  ASSERT_EQ(p.warnings.size(), 11u);
  EXPECT_EQ(p.warnings[0], "line 2: not TAP, ignored: 'okay then'");
  EXPECT_EQ(p.warnings[1], "line 4: not TAP, ignored: 'random chatter'");
  EXPECT_EQ(p.warnings[9], "line 12: not TAP, ignored: 'noise 7'");
  EXPECT_EQ(p.warnings[10], "line 17: 4 more lines that are not TAP ignored");
  // Garbage is not diagnostics either.
  EXPECT_EQ(p.cases[0].output, "");
}

TEST(Tap, DuplicateNumbers) {
  Parsed p = tap_ok("1..3\nok 1 - a\nok 2 - b\nnot ok 2 - b again\nok 3 - c\n");
  EXPECT_EQ(ids_of(p), (Strings{"a", "b", "b again", "c"}));
  EXPECT_EQ(p.warnings, Strings{"line 4: test number 2 repeats line 3"});
}

TEST(Tap, SecondPlanAndTestsAfterAPlan) {
  Parsed p = tap_ok("ok 1\n1..3\nok 2\n1..2\nok 3\n");
  EXPECT_EQ(p.warnings,
            (Strings{"line 3: test line after the plan at line 2 (a plan goes first or last)",
                     "line 4: second plan 1..2 ignored (the plan is on line 2)"}));
}

TEST(Tap, CrlfAndIndentedSubtestsOfOtherFormats) {
  Parsed p = tap_ok(
      "TAP version 13\r\n"
      "1..2\r\n"
      "    1..1\r\n"
      "    not ok 1 - inner\r\n"
      "    Bail out! only the subtest\r\n"
      "not ok 1 - outer\r\n"
      "# diag\r\n"
      "ok 2 - next\r\n");
  EXPECT_EQ(ids_of(p), (Strings{"outer", "next"}));
  EXPECT_EQ(p.cases[0].message, "diag");
  EXPECT_EQ(p.cases[0].output, "diag\n");
  EXPECT_EQ(p.warnings, Strings{});
}

TEST(Tap, NotTapAtAll) {
  std::string error;
  EXPECT_FALSE(parse_tap("hello\nworld\n", error));
  EXPECT_EQ(error, "not TAP: no plan, test line or Bail out! in 2 lines");
  EXPECT_FALSE(parse_tap("", error));
  EXPECT_EQ(error, "not TAP: no plan, test line or Bail out! in 0 lines");
  EXPECT_FALSE(parse_tap("TAP version 13\n", error));
}

TEST(Tap, UnknownVersionWarns) {
  Parsed p = tap_ok("TAP version 15\n1..1\nok 1\n");
  EXPECT_EQ(p.warnings, Strings{"line 1: unknown TAP version '15', read as TAP 14"});
}

// ---------------------------------------------------------------------------
// match()
// ---------------------------------------------------------------------------

Case junit_case(std::string classname, std::string name, Outcome o = Outcome::passed) {
  Case c;
  c.id = classname.empty() || classname == name ? name : classname + "." + name;
  c.name = std::move(name);
  c.classname = std::move(classname);
  c.outcome = o;
  return c;
}

std::vector<std::string> matched_ids(const std::vector<std::optional<Case>>& m) {
  std::vector<std::string> v;
  for (const auto& c : m) v.push_back(c ? c->id : "<missing>");
  return v;
}

TEST(Match, EachRule) {
  Parsed r;
  r.cases = {junit_case("pkg.Suite", "exact"),      // 0: exact id
             junit_case("t_ctest", "t_ctest"),      // 1: id "t_ctest"
             junit_case("Suite", "colons"),         // 2
             junit_case("tests.test_x.TestGroup", "test_p[a::b]"),  // 3
             junit_case("m", "unique_name"),        // 4
             junit_case("", "extra")};              // 5: nobody asks
  std::vector<std::string> unmatched{"stale"};
  auto m = match({"pkg.Suite.exact", "t_ctest.t_ctest", "Suite::colons",
                  "tests/test_x.py::TestGroup::test_p[a::b]", "unique_name",
                  "not_there"},
                 r, unmatched);
  EXPECT_EQ(matched_ids(m),
            (Strings{"pkg.Suite.exact", "t_ctest", "Suite.colons",
                     "tests.test_x.TestGroup.test_p[a::b]", "m.unique_name",
                     "<missing>"}));
  EXPECT_EQ(unmatched, Strings{"extra"});
}

TEST(Match, AmbiguousBareNamesAreNotGuessed) {
  Parsed r;
  r.cases = {junit_case("A", "run", Outcome::failed), junit_case("B", "run")};
  std::vector<std::string> unmatched;
  auto m = match({"run", "A.run"}, r, unmatched);
  EXPECT_EQ(matched_ids(m), (Strings{"<missing>", "A.run"}));
  EXPECT_EQ(unmatched, Strings{"B.run"});

  // An exact id wins over the ambiguous name.
  r.cases.push_back(junit_case("", "run"));
  m = match({"run"}, r, unmatched);
  EXPECT_EQ(matched_ids(m), Strings{"run"});
  EXPECT_EQ(unmatched, (Strings{"A.run", "B.run"}));
}

TEST(Match, ATestReportedTwiceResolvesToItsFailure) {
  Parsed r;
  r.cases = {junit_case("S", "t", Outcome::passed), junit_case("S", "t", Outcome::failed),
             junit_case("S", "u", Outcome::skipped), junit_case("S", "u", Outcome::passed)};
  r.cases[1].message = "teardown";
  std::vector<std::string> unmatched;
  auto m = match({"S.t", "u"}, r, unmatched);
  ASSERT_TRUE(m[0]);
  EXPECT_EQ(m[0]->outcome, Outcome::failed);
  EXPECT_EQ(m[0]->message, "teardown");
  ASSERT_TRUE(m[1]);  // the same id twice is not ambiguous
  EXPECT_EQ(m[1]->outcome, Outcome::skipped);
  EXPECT_EQ(unmatched, Strings{});
}

TEST(Match, RealReports) {
  std::vector<std::string> unmatched;
  Parsed pytest = junit_ok(kPytest);
  auto m = match({"test_sample.py::test_fail", "test_sample.py::TestGroup::test_param[1]",
                  "test_sample.py::test_gone", "test_xfail"},
                 pytest, unmatched);
  EXPECT_EQ(matched_ids(m), (Strings{"test_sample.test_fail",
                                     "test_sample.TestGroup.test_param[1]",
                                     "<missing>", "test_sample.test_xfail"}));
  EXPECT_EQ(unmatched.size(), 8u);

  Parsed tap = tap_ok(kTestMore);
  m = match({"one is two", "3", "frobnicates", "nope"}, tap, unmatched);
  EXPECT_EQ(matched_ids(m), (Strings{"one is two", "3", "frobnicates", "<missing>"}));
  EXPECT_EQ(m[0]->outcome, Outcome::failed);
  EXPECT_EQ(unmatched, (Strings{"first passes", "sometimes works", "hash \\# in name"}));
}

}  // namespace
}  // namespace dtest::report
