#include "xspec/xspec.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dtest::xspec {
namespace {

using nlohmann::json;

// The full what() of the Error thrown for `text`, or a marker when it parses.
std::string error_of(const std::string& text) {
  try {
    const Spec spec = parse(text);
    return "<accepted: " + spec.str() + ">";
  } catch (const Error& e) {
    EXPECT_EQ(e.spec(), text);
    return e.what();
  }
}

// Builds the expected three-line message.
std::string message(const std::string& spec, const std::string& reason,
                    std::size_t column) {
  return "invalid xspec '" + spec + "': " + reason + " at column " +
         std::to_string(column) + "\n  " + spec + "\n  " +
         std::string(column - 1, ' ') + "^";
}

// Every spec the parser accepts in these tests; each must round-trip.
const std::vector<std::string> kAccepted = {
    "popen",
    "1*popen",
    "4*popen",
    "10000*popen",
    "4*popen//chdir=/tmp/w//nice=5",
    "ssh=user@host",
    "ssh=-p 22100 -i KEY user@host//id=lab",
    "2*ssh=-p 2222 user@host//python=python3.11",
    "socket=10.0.0.5:8888",
    "socket=[::1]:8888",
    "socket=localhost:1",
    "socket=h:65535",
    "exec=/opt/dtest/agent --stdio",
    "id=x//popen",
    "chdir=/w//nice=-20//popen",
    "popen//nice=19",
    "popen//nice=0",
    "popen//python=/usr/bin/python3",
    "popen//chdir=C:\\work dir\\~x:y",
    "popen//agent=/opt/dtest/bin/agent",
    "popen//id=gw-1.a_b",
    "popen//via=gw-1",
    "popen//env:FOO=bar=baz",
    "popen//env:FOO=",
    "popen//env:_X1=a b//env:Y=c",
    "popen//foo",
    "popen//foo=bar",
    "popen//foo=",
    "popen//env=plain",
    "popen//chdir=/tmp/a/b/",
    "popen//chdir=/tmp/\xc3\xa9t\xc3\xa9",
    "exec=sh -c 'a*b'//x=1",
    "ssh=user@host//chdir=~/w=1:2//id=lab//python=py//nice=3//via=gw0//"
    "agent=/a//env:A=1//mykey//other=x",
};

TEST(XspecParse, BarePopen) {
  const Spec s = parse("popen");
  EXPECT_EQ(s.original, "popen");
  EXPECT_EQ(s.count, 1);
  EXPECT_EQ(s.type(), "popen");
  ASSERT_EQ(s.items.size(), 1u);
  EXPECT_EQ(s.items[0].key, "popen");
  EXPECT_EQ(s.items[0].value, std::nullopt);
  EXPECT_EQ(s.items[0].column, 1u);
  EXPECT_TRUE(s.has("popen"));
  EXPECT_EQ(s.get("popen"), std::nullopt);
  EXPECT_TRUE(s.env().empty());
}

TEST(XspecParse, CountPrefix) {
  const Spec s = parse("4*popen//chdir=/tmp/w//nice=5");
  EXPECT_EQ(s.count, 4);
  EXPECT_EQ(s.type(), "popen");
  ASSERT_EQ(s.items.size(), 3u);
  EXPECT_EQ(s.items[0].column, 3u);
  EXPECT_EQ(s.items[1].column, 10u);
  EXPECT_EQ(s.items[2].column, 24u);
  EXPECT_EQ(s.get("chdir"), "/tmp/w");
  EXPECT_EQ(s.get("nice"), "5");
  EXPECT_EQ(parse("10000*popen").count, 10000);
  EXPECT_EQ(parse("1*popen").count, 1);
}

TEST(XspecParse, SshPlainAndExecnetFlagForm) {
  const Spec plain = parse("ssh=user@host");
  EXPECT_EQ(plain.type(), "ssh");
  EXPECT_EQ(plain.get("ssh"), "user@host");

  const Spec flags = parse("ssh=-p 22100 -i KEY user@host//id=lab");
  EXPECT_EQ(flags.type(), "ssh");
  EXPECT_EQ(flags.get("ssh"), "-p 22100 -i KEY user@host");
  EXPECT_EQ(flags.get("id"), "lab");
  EXPECT_EQ(flags.items[1].column, 32u);
}

TEST(XspecParse, SocketIpv4AndIpv6) {
  EXPECT_EQ(parse("socket=10.0.0.5:8888").get("socket"), "10.0.0.5:8888");
  const Spec v6 = parse("socket=[::1]:8888");
  EXPECT_EQ(v6.type(), "socket");
  EXPECT_EQ(v6.get("socket"), "[::1]:8888");
  EXPECT_EQ(parse("socket=h:65535").get("socket"), "h:65535");
}

TEST(XspecParse, Exec) {
  const Spec s = parse("exec=/opt/dtest/agent --stdio");
  EXPECT_EQ(s.type(), "exec");
  EXPECT_EQ(s.get("exec"), "/opt/dtest/agent --stdio");
}

TEST(XspecParse, GatewayTypeNeedNotBeFirst) {
  const Spec s = parse("id=x//popen");
  EXPECT_EQ(s.type(), "popen");
  EXPECT_EQ(s.get("id"), "x");
  EXPECT_EQ(s.items[1].column, 7u);
  EXPECT_EQ(parse("chdir=/w//nice=-20//popen").type(), "popen");
}

TEST(XspecParse, EachKnownKey) {
  const Spec s = parse(
      "ssh=user@host//chdir=~/w=1:2//id=lab//python=py//nice=3//via=gw0//"
      "agent=/a//env:A=1//mykey//other=x");
  EXPECT_EQ(s.get("chdir"), "~/w=1:2");
  EXPECT_EQ(s.get("id"), "lab");
  EXPECT_EQ(s.get("python"), "py");
  EXPECT_EQ(s.get("nice"), "3");
  EXPECT_EQ(s.get("via"), "gw0");
  EXPECT_EQ(s.get("agent"), "/a");
  EXPECT_EQ(s.get("env:A"), "1");
  EXPECT_TRUE(s.has("mykey"));
  EXPECT_EQ(s.get("mykey"), std::nullopt);
  EXPECT_EQ(s.get("other"), "x");
  EXPECT_FALSE(s.has("missing"));
  EXPECT_EQ(s.get("missing"), std::nullopt);
  EXPECT_EQ(parse("popen//nice=-20").get("nice"), "-20");
  EXPECT_EQ(parse("popen//nice=19").get("nice"), "19");
  EXPECT_EQ(parse("popen//id=gw-1.a_b").get("id"), "gw-1.a_b");
}

TEST(XspecParse, EnvItems) {
  const Spec s = parse("popen//env:FOO=bar=baz//env:_X1=a b//env:E=");
  const std::map<std::string, std::string> want = {
      {"FOO", "bar=baz"}, {"_X1", "a b"}, {"E", ""}};
  EXPECT_EQ(s.env(), want);
  EXPECT_EQ(s.get("env:FOO"), "bar=baz");
  EXPECT_EQ(s.get("env:E"), "");  // empty, not nullopt
  // A plain "env" key (no colon) is just an unknown key.
  const Spec plain = parse("popen//env=plain");
  EXPECT_TRUE(plain.env().empty());
  EXPECT_EQ(plain.get("env"), "plain");
}

TEST(XspecParse, UnknownKeysWithAndWithoutValue) {
  const Spec s = parse("popen//foo//bar=baz//empty=");
  ASSERT_EQ(s.items.size(), 4u);
  EXPECT_EQ(s.items[1].key, "foo");
  EXPECT_EQ(s.items[1].value, std::nullopt);
  EXPECT_EQ(s.items[2].value, "baz");
  EXPECT_EQ(s.items[3].value, "");
}

TEST(XspecParse, ValuesKeepSpecialCharacters) {
  const Spec s = parse("popen//chdir=C:\\work dir\\~x:y");
  EXPECT_EQ(s.get("chdir"), "C:\\work dir\\~x:y");
  EXPECT_EQ(parse("popen//chdir=/tmp/a/b/").get("chdir"), "/tmp/a/b/");
  EXPECT_EQ(parse("exec=sh -c 'a*b'//x=1").get("exec"), "sh -c 'a*b'");
  EXPECT_EQ(parse("popen//chdir=/tmp/\xc3\xa9t\xc3\xa9").get("chdir"),
            "/tmp/\xc3\xa9t\xc3\xa9");
  // A value ends at the first "//", as execnet's split("//") does.
  EXPECT_EQ(error_of("popen//chdir=/tmp///nice=5"),
            message("popen//chdir=/tmp///nice=5", "expected a key", 20));
}

TEST(XspecParse, RoundTripOfEveryAcceptedSpec) {
  for (const std::string& text : kAccepted) {
    SCOPED_TRACE(text);
    Spec s;
    ASSERT_NO_THROW(s = parse(text));
    EXPECT_EQ(s.original, text);
    EXPECT_EQ(s.str(), text);
  }
}

TEST(XspecParse, StrFromHandBuiltSpec) {
  Spec s;
  s.count = 3;
  s.items = {{"ssh", "u@h", 0}, {"flag", std::nullopt, 0}, {"env:A", "", 0}};
  EXPECT_EQ(s.str(), "3*ssh=u@h//flag//env:A=");
  EXPECT_EQ(s.type(), "ssh");
}

// --- errors, verbatim -----------------------------------------------------

TEST(XspecErrors, ExactFormat) {
  EXPECT_EQ(error_of("popen//=x"),
            "invalid xspec 'popen//=x': expected a key at column 8\n"
            "  popen//=x\n"
            "         ^");
  try {
    parse("popen//=x");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.spec(), "popen//=x");
    EXPECT_EQ(e.column(), 8u);
  }
}

TEST(XspecErrors, ExpectedAKey) {
  EXPECT_EQ(error_of(" popen"),
            "invalid xspec ' popen': expected a key at column 1\n"
            "   popen\n"
            "  ^");
  EXPECT_EQ(error_of("2*3*popen"),
            "invalid xspec '2*3*popen': expected a key at column 3\n"
            "  2*3*popen\n"
            "    ^");
  EXPECT_EQ(error_of("popen//\xc3\xa9=1"),
            message("popen//\xc3\xa9=1", "expected a key", 8));
}

TEST(XspecErrors, UnexpectedCharacterAfterKey) {
  EXPECT_EQ(error_of("popen x"),
            "invalid xspec 'popen x': expected '=', '//' or the end after "
            "'popen' at column 6\n"
            "  popen x\n"
            "       ^");
  EXPECT_EQ(error_of("3*popen//foo:bar"),
            message("3*popen//foo:bar",
                    "expected '=', '//' or the end after 'foo'", 13));
}

TEST(XspecErrors, BadEnvName) {
  EXPECT_EQ(error_of("popen//env:1X=2"),
            "invalid xspec 'popen//env:1X=2': expected a variable name after "
            "'env:' at column 12\n"
            "  popen//env:1X=2\n"
            "             ^");
  EXPECT_EQ(
      error_of("popen//env:=2"),
      message("popen//env:=2", "expected a variable name after 'env:'", 12));
}

TEST(XspecErrors, EmptySpecAndEmptyItems) {
  EXPECT_EQ(error_of(""),
            "invalid xspec '': empty spec at column 1\n"
            "  \n"
            "  ^");
  EXPECT_EQ(error_of("popen////chdir=x"),
            "invalid xspec 'popen////chdir=x': empty item at column 8\n"
            "  popen////chdir=x\n"
            "         ^");
  EXPECT_EQ(error_of("popen//"),
            "invalid xspec 'popen//': empty item at column 8\n"
            "  popen//\n"
            "         ^");
  EXPECT_EQ(error_of("3*"), message("3*", "empty item", 3));
  EXPECT_EQ(error_of("//popen"), message("//popen", "empty item", 1));
}

TEST(XspecErrors, BadCount) {
  const std::string reason =
      "bad count (expected a positive integer before '*')";
  EXPECT_EQ(error_of("0*popen"),
            "invalid xspec '0*popen': bad count (expected a positive integer "
            "before '*') at column 1\n"
            "  0*popen\n"
            "  ^");
  for (const std::string text :
       {"*popen", "x*popen", "+3*popen", "03*popen", "-1*popen", "2 *popen"}) {
    EXPECT_EQ(error_of(text), message(text, reason, 1));
  }
  EXPECT_EQ(error_of("10001*popen"),
            "invalid xspec '10001*popen': count 10001 is too large (at most "
            "10000) at column 1\n"
            "  10001*popen\n"
            "  ^");
  EXPECT_EQ(
      error_of("99999999999999999999*popen"),
      message("99999999999999999999*popen",
              "count 99999999999999999999 is too large (at most 10000)", 1));
}

TEST(XspecErrors, DuplicateKey) {
  EXPECT_EQ(error_of("popen//chdir=a//chdir=b"),
            "invalid xspec 'popen//chdir=a//chdir=b': duplicate key 'chdir' "
            "at column 17\n"
            "  popen//chdir=a//chdir=b\n"
            "                  ^");
  EXPECT_EQ(error_of("popen//env:A=1//env:A=2"),
            message("popen//env:A=1//env:A=2", "duplicate key 'env:A'", 17));
  EXPECT_EQ(error_of("popen//popen"),
            message("popen//popen", "duplicate key 'popen'", 8));
  EXPECT_EQ(error_of("popen//foo//foo=1"),
            message("popen//foo//foo=1", "duplicate key 'foo'", 13));
}

TEST(XspecErrors, GatewayTypeMissingOrDoubled) {
  EXPECT_EQ(error_of("chdir=/tmp//nice=5"),
            "invalid xspec 'chdir=/tmp//nice=5': no gateway type (one of "
            "popen, ssh=, socket=, exec=) at column 1\n"
            "  chdir=/tmp//nice=5\n"
            "  ^");
  EXPECT_EQ(error_of("popen//ssh=u@h"),
            "invalid xspec 'popen//ssh=u@h': more than one gateway type "
            "('popen' and 'ssh') at column 8\n"
            "  popen//ssh=u@h\n"
            "         ^");
  EXPECT_EQ(error_of("id=a//exec=x//socket=h:1"),
            message("id=a//exec=x//socket=h:1",
                    "more than one gateway type ('exec' and 'socket')", 15));
}

TEST(XspecErrors, PopenTakesNoValue) {
  EXPECT_EQ(error_of("popen=x"),
            "invalid xspec 'popen=x': 'popen' takes no value at column 6\n"
            "  popen=x\n"
            "       ^");
  EXPECT_EQ(error_of("popen="), message("popen=", "'popen' takes no value", 6));
}

TEST(XspecErrors, SshNeedsValue) {
  EXPECT_EQ(error_of("ssh"),
            "invalid xspec 'ssh': 'ssh' needs a value (ssh=user@host) at "
            "column 1\n"
            "  ssh\n"
            "  ^");
  EXPECT_EQ(error_of("ssh=//id=a"),
            message("ssh=//id=a", "'ssh' needs a value (ssh=user@host)", 5));
  EXPECT_EQ(error_of("ssh=  "),
            message("ssh=  ", "'ssh' needs a value (ssh=user@host)", 5));
}

TEST(XspecErrors, SocketNeedsHostPort) {
  EXPECT_EQ(error_of("socket=localhost"),
            "invalid xspec 'socket=localhost': 'socket' needs host:port at "
            "column 8\n"
            "  socket=localhost\n"
            "         ^");
  const std::string need = "'socket' needs host:port";
  EXPECT_EQ(error_of("socket"), message("socket", need, 1));
  EXPECT_EQ(error_of("socket="), message("socket=", need, 8));
  EXPECT_EQ(error_of("socket=:80"), message("socket=:80", need, 8));
  EXPECT_EQ(error_of("socket=::1:80"), message("socket=::1:80", need, 8));
  EXPECT_EQ(error_of("socket=[::1]8"), message("socket=[::1]8", need, 8));
  EXPECT_EQ(error_of("socket=[]:8"), message("socket=[]:8", need, 8));
  const std::string port = "'socket' port must be from 1 to 65535";
  EXPECT_EQ(error_of("socket=h:0"),
            "invalid xspec 'socket=h:0': 'socket' port must be from 1 to "
            "65535 at column 10\n"
            "  socket=h:0\n"
            "           ^");
  EXPECT_EQ(error_of("socket=h:65536"), message("socket=h:65536", port, 10));
  EXPECT_EQ(error_of("socket=h:-1"), message("socket=h:-1", port, 10));
  EXPECT_EQ(error_of("socket=h:"), message("socket=h:", port, 10));
  EXPECT_EQ(error_of("socket=[::1]:x"), message("socket=[::1]:x", port, 14));
}

TEST(XspecErrors, OtherKeysNeedValues) {
  EXPECT_EQ(error_of("exec"),
            "invalid xspec 'exec': 'exec' needs a value (exec=COMMAND) at "
            "column 1\n"
            "  exec\n"
            "  ^");
  EXPECT_EQ(error_of("popen//chdir="),
            "invalid xspec 'popen//chdir=': 'chdir' needs a value (chdir=DIR) "
            "at column 14\n"
            "  popen//chdir=\n"
            "               ^");
  EXPECT_EQ(error_of("popen//python"),
            message("popen//python",
                    "'python' needs a value (python=INTERPRETER)", 8));
  EXPECT_EQ(error_of("popen//id="),
            message("popen//id=", "'id' needs a value (id=NAME)", 11));
  EXPECT_EQ(error_of("popen//via"),
            message("popen//via", "'via' needs a value (via=GATEWAY_ID)", 8));
  EXPECT_EQ(error_of("popen//agent="),
            message("popen//agent=", "'agent' needs a value (agent=PATH)", 14));
  EXPECT_EQ(
      error_of("popen//env:FOO"),
      message("popen//env:FOO", "'env:FOO' needs a value (env:FOO=VALUE)", 8));
}

TEST(XspecErrors, IdAndViaCharacters) {
  EXPECT_EQ(error_of("popen//id=a b"),
            "invalid xspec 'popen//id=a b': 'id' must be a gateway id "
            "([A-Za-z0-9_.-]+) at column 11\n"
            "  popen//id=a b\n"
            "            ^");
  EXPECT_EQ(error_of("popen//via=x/y"),
            message("popen//via=x/y",
                    "'via' must be a gateway id ([A-Za-z0-9_.-]+)", 12));
}

TEST(XspecErrors, Nice) {
  const std::string reason = "'nice' needs an integer from -20 to 19";
  EXPECT_EQ(error_of("popen//nice=20"),
            "invalid xspec 'popen//nice=20': 'nice' needs an integer from -20 "
            "to 19 at column 13\n"
            "  popen//nice=20\n"
            "              ^");
  EXPECT_EQ(error_of("popen//nice=-21"),
            message("popen//nice=-21", reason, 13));
  EXPECT_EQ(error_of("popen//nice=abc"),
            message("popen//nice=abc", reason, 13));
  EXPECT_EQ(error_of("popen//nice=+5"), message("popen//nice=+5", reason, 13));
  EXPECT_EQ(error_of("popen//nice=1.5"),
            message("popen//nice=1.5", reason, 13));
  EXPECT_EQ(error_of("popen//nice="), message("popen//nice=", reason, 13));
  EXPECT_EQ(error_of("popen//nice"), message("popen//nice", reason, 8));
  EXPECT_EQ(error_of("popen//nice=99999999999999999999"),
            message("popen//nice=99999999999999999999", reason, 13));
}

TEST(XspecErrors, FirstErrorFromTheLeftWins) {
  // The bad nice comes before the duplicate; the missing type is reported
  // only once every item is fine.
  EXPECT_EQ(error_of("nice=x//chdir=a//chdir=b"),
            message("nice=x//chdir=a//chdir=b",
                    "'nice' needs an integer from -20 to 19", 6));
}

// --- parse_all --------------------------------------------------------------

TEST(XspecParseAll, CollectsEveryError) {
  std::vector<std::string> errors;
  const std::vector<Spec> specs = parse_all(
      {"popen", "popen//=x", "2*ssh=u@h", "0*popen", "socket=h", "exec=a"},
      errors);
  ASSERT_EQ(specs.size(), 3u);
  EXPECT_EQ(specs[0].original, "popen");
  EXPECT_EQ(specs[1].original, "2*ssh=u@h");
  EXPECT_EQ(specs[2].original, "exec=a");
  const std::vector<std::string> want = {
      message("popen//=x", "expected a key", 8),
      message("0*popen", "bad count (expected a positive integer before '*')",
              1),
      message("socket=h", "'socket' needs host:port", 8),
  };
  EXPECT_EQ(errors, want);
}

TEST(XspecParseAll, AllGood) {
  std::vector<std::string> errors;
  const std::vector<Spec> specs = parse_all(kAccepted, errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(specs.size(), kAccepted.size());
}

// --- to_json ----------------------------------------------------------------

TEST(XspecJson, Popen) {
  const json want = {
      {"spec", "popen"},
      {"count", 1},
      {"type", "popen"},
      {"popen", nullptr},
      {"env", json::object()},
      {"items", json::array({{{"key", "popen"}, {"value", nullptr}}})},
  };
  EXPECT_EQ(to_json(parse("popen")), want);
}

TEST(XspecJson, EveryField) {
  const std::string text =
      "2*ssh=-p 22 u@h//id=lab//python=py3//chdir=/w//nice=5//via=gw0//"
      "agent=/a//env:A=1=2//env:B=//foo=bar//flag";
  const json j = to_json(parse(text));
  const json want = {
      {"spec", text},
      {"count", 2},
      {"type", "ssh"},
      {"ssh", "-p 22 u@h"},
      {"id", "lab"},
      {"python", "py3"},
      {"chdir", "/w"},
      {"nice", 5},
      {"via", "gw0"},
      {"agent", "/a"},
      {"env", {{"A", "1=2"}, {"B", ""}}},
      {"other", {{"foo", "bar"}, {"flag", nullptr}}},
      {"items", json::array({
                    {{"key", "ssh"}, {"value", "-p 22 u@h"}},
                    {{"key", "id"}, {"value", "lab"}},
                    {{"key", "python"}, {"value", "py3"}},
                    {{"key", "chdir"}, {"value", "/w"}},
                    {{"key", "nice"}, {"value", "5"}},
                    {{"key", "via"}, {"value", "gw0"}},
                    {{"key", "agent"}, {"value", "/a"}},
                    {{"key", "env:A"}, {"value", "1=2"}},
                    {{"key", "env:B"}, {"value", ""}},
                    {{"key", "foo"}, {"value", "bar"}},
                    {{"key", "flag"}, {"value", nullptr}},
                })},
  };
  EXPECT_EQ(j, want) << j.dump(2);
  EXPECT_TRUE(j["nice"].is_number_integer());
}

TEST(XspecJson, OnlyPresentKeys) {
  const json j = to_json(parse("id=w1//socket=[::1]:8888"));
  EXPECT_EQ(j["type"], "socket");
  EXPECT_EQ(j["socket"], "[::1]:8888");
  EXPECT_EQ(j["id"], "w1");
  for (const char* absent : {"popen", "ssh", "exec", "python", "chdir", "nice",
                             "via", "agent", "other"}) {
    EXPECT_FALSE(j.contains(absent)) << absent;
  }
  EXPECT_TRUE(j.contains("env"));
  EXPECT_EQ(j["items"].size(), 2u);
}

}  // namespace
}  // namespace dtest::xspec
