#include "agent/report_parse.h"

#include <pugixml.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace dtest::report {

namespace {

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

// A message is shown on one terminal line; the whole text is in `output`.
constexpr std::size_t kMaxMessage = 300;
constexpr std::size_t kMaxQuoted = 80;
// A command that prints its own chatter on stdout next to TAP would bury
// the real warnings; past this many, the rest are only counted.
constexpr std::size_t kMaxGarbageWarnings = 10;
// Numbers listed in one "missing tests" warning.
constexpr std::size_t kMaxRanges = 10;

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
         c == '\f';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::string_view ltrim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  return s;
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(),
                    [](char x, char y) { return lower(x) == lower(y); });
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence.
std::string cap(std::string_view s, std::size_t max) {
  if (s.size() <= max) return std::string(s);
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return std::string(s.substr(0, n)) + "...";
}

std::string quote(std::string_view s) { return "'" + cap(s, kMaxQuoted) + "'"; }

// Multi-line messages (gtest's "file:line\nExpected ...", pytest's
// "AssertionError: x\nassert 1 == 2") become their non-empty lines, trimmed
// and joined by spaces.
std::string one_line(std::string_view s) {
  std::string out;
  while (!s.empty()) {
    std::size_t nl = s.find('\n');
    std::string_view l = trim(s.substr(0, nl));
    s = nl == std::string_view::npos ? std::string_view{} : s.substr(nl + 1);
    if (l.empty()) continue;
    if (!out.empty()) out += ' ';
    out += l;
    if (out.size() > kMaxMessage) break;
  }
  return cap(out, kMaxMessage);
}

std::string_view first_line(std::string_view s) {
  while (!s.empty()) {
    std::size_t nl = s.find('\n');
    std::string_view l = trim(s.substr(0, nl));
    if (!l.empty()) return l;
    if (nl == std::string_view::npos) break;
    s = s.substr(nl + 1);
  }
  return {};
}

// Appends a block of text to a case's output, on a line of its own.
void append_block(std::string& out, std::string_view text) {
  if (text.empty()) return;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += text;
}

std::optional<double> parse_seconds(std::string_view s) {
  s = trim(s);
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size() ||
      !std::isfinite(v) || v < 0)
    return std::nullopt;
  return v;
}

// "4-6, 9" for the numbers in 1..n that are not in `seen` (sorted, unique);
// `count` gets how many there are. Arithmetic over the gaps, so a hostile
// plan "1..18446744073709551615" costs nothing.
std::string missing_ranges(const std::vector<std::uint64_t>& seen,
                           std::uint64_t n, std::uint64_t& count) {
  std::string out;
  std::size_t ranges = 0;
  count = 0;
  auto gap = [&](std::uint64_t from, std::uint64_t to) {  // inclusive
    if (from > to) return;
    count += to - from + 1;
    if (ranges == kMaxRanges) out += ", ...";
    if (ranges++ >= kMaxRanges) return;
    if (!out.empty()) out += ", ";
    out += std::to_string(from);
    if (to > from) out += "-" + std::to_string(to);
  };
  std::uint64_t next = 1;  // the lowest number not yet accounted for
  for (std::uint64_t s : seen) {
    if (s > n) break;
    if (s < next) continue;
    gap(next, s - 1);
    if (s == n) return out;  // also keeps s + 1 from wrapping around
    next = s + 1;
  }
  gap(next, n);
  return out;
}

// 1-based line and column of a byte offset, for errors and warnings.
class LineIndex {
 public:
  explicit LineIndex(std::string_view text) {
    for (std::size_t i = 0; i < text.size(); ++i)
      if (text[i] == '\n') newlines_.push_back(i);
  }
  std::size_t line(std::ptrdiff_t offset) const {
    return static_cast<std::size_t>(before(offset)) + 1;
  }
  std::size_t column(std::ptrdiff_t offset) const {
    auto b = before(offset);
    std::size_t start = b == 0 ? 0 : newlines_[static_cast<std::size_t>(b) - 1] + 1;
    std::size_t off = offset < 0 ? 0 : static_cast<std::size_t>(offset);
    return off - std::min(off, start) + 1;
  }

 private:
  // How many newlines come before `offset`.
  std::ptrdiff_t before(std::ptrdiff_t offset) const {
    std::size_t off = offset < 0 ? 0 : static_cast<std::size_t>(offset);
    return std::lower_bound(newlines_.begin(), newlines_.end(), off) -
           newlines_.begin();
  }
  std::vector<std::size_t> newlines_;
};

std::string line_prefix(std::size_t line) {
  return "line " + std::to_string(line) + ": ";
}

// ---------------------------------------------------------------------------
// JUnit XML
// ---------------------------------------------------------------------------
//
// Dialects seen in the wild, all handled by the same rules:
//   pytest 7   <skipped type="pytest.skip|pytest.xfail" message>, an error
//              in set-up/teardown as <error message="failed on setup with
//              ...">, strict XPASS as <failure message="[XPASS(strict)] ...">;
//              older pytest: <skipped message="expected test failure...">
//              for xfail, "xfail-marked test passes unexpectedly" for XPASS.
//   GoogleTest <testcase status="run|notrun" result="completed|skipped|
//              suppressed">, failures with the message in CDATA too.
//   ctest      classname == name, status="run|fail|notrun|disabled",
//              <failure message=""/>, disabled tests without <skipped>.
//   Surefire   <rerunFailure>/<flakyFailure> with <stackTrace> children.

constexpr std::string_view kPytestXfail = "pytest.xfail";
constexpr std::string_view kOldPytestXfail = "expected test failure";
constexpr std::string_view kOldPytestXpass =
    "xfail-marked test passes unexpectedly";

// The element's text: its PCDATA and CDATA children concatenated (a body
// may mix both, and child_value() returns only the first piece).
std::string text_of(pugi::xml_node n) {
  std::string s;
  for (pugi::xml_node c : n.children())
    if (c.type() == pugi::node_pcdata || c.type() == pugi::node_cdata)
      s += c.value();
  return s;
}

// The one-line message of a <failure>/<error>/<skipped>: the message
// attribute, else a failure's type attribute (Ant without a message: the
// exception class; a skip's type is pytest's "pytest.skip", no reason),
// else the first line of the body (the body may be a long stack trace).
std::string element_message(pugi::xml_node e, const std::string& body) {
  std::string m = one_line(e.attribute("message").value());
  if (m.empty() && std::string_view(e.name()) != "skipped")
    m = one_line(e.attribute("type").value());
  if (m.empty()) m = one_line(first_line(body));
  return m;
}

class JunitReader {
 public:
  JunitReader(const LineIndex& lines, Parsed& out) : lines_(lines), out_(out) {}

  // Document order over the testsuite(s) elements without recursion:
  // reports nest suites at any depth, and a recursive walk would let a
  // hostile report overflow the agent's stack.
  void walk(pugi::xml_node root) {
    pugi::xml_node cur = root.first_child();
    while (cur) {
      bool descend = false;
      if (cur.type() == pugi::node_element) {
        std::string_view n = cur.name();
        if (n == "testcase") add(cur);
        descend = n == "testsuite" || n == "testsuites";
      }
      if (descend && cur.first_child()) {
        cur = cur.first_child();
        continue;
      }
      while (cur != root && !cur.next_sibling()) cur = cur.parent();
      if (cur == root) break;
      cur = cur.next_sibling();
    }
  }

 private:
  void warn(std::size_t line, std::string what) {
    out_.warnings.push_back(line_prefix(line) + std::move(what));
  }

  void add(pugi::xml_node tc) {
    const std::size_t line = lines_.line(tc.offset_debug());
    Case c;
    c.name = tc.attribute("name").value();
    c.classname = tc.attribute("classname").value();
    c.id = c.classname.empty() || c.classname == c.name ? c.name
           : c.name.empty()                             ? c.classname
                                                        : c.classname + "." + c.name;
    if (c.name.empty())
      warn(line, "<testcase> without a name (id " + quote(c.id) + ")");

    if (pugi::xml_attribute t = tc.attribute("time")) {
      if (auto s = parse_seconds(t.value()))
        c.seconds = *s;
      else
        warn(line, "testcase " + quote(c.id) + " has time " + quote(t.value()) +
                       ", not a number of seconds; using 0");
    }

    bool failed = false, xfailed = false, skipped = false;
    std::string fail_message, skip_message;
    for (pugi::xml_node e : tc.children()) {
      if (e.type() != pugi::node_element) continue;
      std::string_view n = e.name();
      if (n == "failure" || n == "error") {
        std::string body = text_of(e);
        std::string m = element_message(e, body);
        if (n == "error") m = m.empty() ? "error" : "error: " + m;
        if (!failed) fail_message = m;
        failed = true;
        // A failure without a body (ctest, pytest's XPASS) still says why.
        append_block(c.output, body.empty() ? std::string(e.attribute("message").value())
                                            : body);
      } else if (n == "skipped") {
        std::string body = text_of(e);
        std::string m = element_message(e, body);
        if (std::string_view(e.attribute("type").value()) == kPytestXfail) {
          if (!xfailed) skip_message = m;
          xfailed = true;
        } else if (m.starts_with(kOldPytestXfail)) {
          std::string_view reason = trim(std::string_view(m).substr(kOldPytestXfail.size()));
          if (reason.starts_with(':')) reason = trim(reason.substr(1));
          if (!xfailed) skip_message = std::string(reason);
          xfailed = true;
        } else if (m == kOldPytestXpass) {
          // A strict XPASS: pytest counts it as a failure.
          if (!failed) fail_message = m;
          failed = true;
        } else {
          if (!skipped && !xfailed) skip_message = m;
          skipped = true;
        }
        append_block(c.output, body);
      } else if (n == "system-out" || n == "system-err") {
        append_block(c.output, text_of(e));
      } else if (n == "rerunFailure" || n == "rerunError" ||
                 n == "flakyFailure" || n == "flakyError") {
        // Surefire's earlier attempts: context for the output only.
        append_block(c.output, std::string(n) + ": " +
                                   e.attribute("message").value() + "\n");
        append_block(c.output, text_of(e.child("stackTrace")));
        append_block(c.output, text_of(e));
      }
    }

    if (failed) {
      c.outcome = Outcome::failed;
      c.message = fail_message;
    } else if (xfailed) {
      c.outcome = Outcome::xfailed;
      c.message = skip_message;
    } else if (skipped) {
      c.outcome = Outcome::skipped;
      c.message = skip_message;
    } else {
      status_outcome(tc, c);
    }

    auto [it, fresh] = seen_.try_emplace(c.id, line);
    if (!fresh)
      warn(line, "testcase " + quote(c.id) + " repeats the one at line " +
                     std::to_string(it->second));
    out_.cases.push_back(std::move(c));
  }

  // A testcase without result children: GoogleTest's and ctest's status
  // attributes still tell a test that did not run from one that passed.
  static void status_outcome(pugi::xml_node tc, Case& c) {
    std::string_view status = tc.attribute("status").value();
    std::string_view result = tc.attribute("result").value();
    if (iequals(status, "disabled") || iequals(result, "suppressed")) {
      c.outcome = Outcome::skipped;
      c.message = "disabled";
    } else if (iequals(status, "notrun") || iequals(status, "skipped") ||
               iequals(result, "skipped")) {
      c.outcome = Outcome::skipped;
      c.message = "not run";
    } else if (iequals(status, "fail") || iequals(status, "failed") ||
               iequals(status, "failure") || iequals(status, "error")) {
      c.outcome = Outcome::failed;
      c.message = "status=\"" + std::string(status) + "\"";
    } else {
      c.outcome = Outcome::passed;
    }
  }

  const LineIndex& lines_;
  Parsed& out_;
  std::unordered_map<std::string, std::size_t> seen_;  // id -> line
};

// ---------------------------------------------------------------------------
// TAP
// ---------------------------------------------------------------------------
//
// Follows TAP 14 where versions differ: the description ends at the first
// unescaped '#' (node-tap's "ok 1 - name # time=12ms" names "name"), and
// "\#" / "\\" are escapes. Directives are matched like Test::Harness:
// case-insensitive "SKIP"/"skipped"/"TODO" words.

struct TestLine {
  bool ok = false;
  std::optional<std::uint64_t> number;
  bool bad_number = false;  // digits that overflow
  std::string description;  // unescaped, without "- ", trimmed
  enum class Directive { none, skip, todo } directive = Directive::none;
  std::string reason;
  std::optional<double> seconds;  // from a "# time=12ms" comment
};

bool parse_test_line(std::string_view l, TestLine& t) {
  std::string_view rest;
  if (l.starts_with("ok")) {
    t.ok = true;
    rest = l.substr(2);
  } else if (l.starts_with("not ok")) {
    t.ok = false;
    rest = l.substr(6);
  } else {
    return false;
  }
  // "okay" is not a test line; "ok", "ok 1", "ok - x", "ok # skip" are.
  if (!rest.empty() && !is_space(rest[0]) && rest[0] != '-' && rest[0] != '#')
    return false;
  rest = ltrim(rest);

  std::size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
  if (digits > 0 && (digits == rest.size() || is_space(rest[digits]) ||
                     rest[digits] == '-' || rest[digits] == '#')) {
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + digits, n);
    if (ec == std::errc{} && p == rest.data() + digits)
      t.number = n;
    else
      t.bad_number = true;
    rest = ltrim(rest.substr(digits));
  }

  // Description up to the first unescaped '#', unescaping as we go.
  std::string desc;
  std::size_t i = 0;
  for (; i < rest.size() && rest[i] != '#'; ++i) {
    if (rest[i] == '\\' && i + 1 < rest.size() &&
        (rest[i + 1] == '#' || rest[i + 1] == '\\'))
      ++i;
    desc += rest[i];
  }
  std::string_view d = trim(desc);
  if (d == "-")
    d = {};
  else if (d.size() >= 2 && d[0] == '-' && is_space(d[1]))
    d = trim(d.substr(1));
  t.description = std::string(d);

  if (i < rest.size()) {
    std::string_view comment = ltrim(rest.substr(i + 1));
    std::size_t w = 0;
    while (w < comment.size() &&
           ((comment[w] >= 'a' && comment[w] <= 'z') ||
            (comment[w] >= 'A' && comment[w] <= 'Z')))
      ++w;
    std::string_view word = comment.substr(0, w);
    if (iequals(word, "skip") || iequals(word, "skipped") || iequals(word, "skipping"))
      t.directive = TestLine::Directive::skip;
    else if (iequals(word, "todo"))
      t.directive = TestLine::Directive::todo;
    if (t.directive != TestLine::Directive::none) {
      std::string_view reason = trim(comment.substr(w));
      if (reason.starts_with(':')) reason = trim(reason.substr(1));
      t.reason = std::string(reason);
    } else if (comment.starts_with("time=")) {
      std::string_view v = trim(comment.substr(5));
      double scale = 1;
      if (v.ends_with("ms")) {
        v.remove_suffix(2);
        scale = 0.001;
      } else if (v.ends_with("s")) {
        v.remove_suffix(1);
      }
      if (auto s = parse_seconds(v)) t.seconds = *s * scale;
    }
  }
  return true;
}

// "1..N" optionally followed by "# comment" ("1..0 # SKIP no database").
bool parse_plan(std::string_view l, std::uint64_t& n, std::string& skip_reason,
                bool& overflow) {
  if (!l.starts_with("1..")) return false;
  std::string_view rest = l.substr(3);
  std::size_t digits = 0;
  while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
  if (digits == 0) return false;
  std::string_view after = trim(rest.substr(digits));
  if (!after.empty() && after[0] != '#') return false;
  auto [p, ec] = std::from_chars(rest.data(), rest.data() + digits, n);
  overflow = ec != std::errc{} || p != rest.data() + digits;
  if (!after.empty()) {
    std::string_view c = ltrim(after.substr(1));
    if (istarts_with(c, "skip")) {
      std::size_t w = 4;
      while (w < c.size() && !is_space(c[w]) && c[w] != ':') ++w;
      std::string_view r = trim(c.substr(w));
      if (r.starts_with(':')) r = trim(r.substr(1));
      skip_reason = r.empty() ? "skipped" : std::string(r);
    }
  }
  return true;
}

std::size_t indent_of(std::string_view l) { return l.size() - ltrim(l).size(); }

// Reads a top-level key of a TAP YAML block as one line: "message: 'x'",
// quoted or plain, or a block scalar ("error: |-" and the more indented
// lines after it, as node's test runner writes). Top level is the first
// line's indentation (tape indents its keys deeper than the "---").
std::optional<std::string> yaml_value(const std::vector<std::string>& lines,
                                      std::string_view key) {
  std::optional<std::size_t> base;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::string_view l = lines[i];
    if (trim(l).empty()) continue;
    if (!base) base = indent_of(l);
    if (indent_of(l) != *base) continue;
    l = l.substr(*base);
    if (!l.starts_with(key) || l.size() <= key.size() || l[key.size()] != ':')
      continue;
    std::string_view v = trim(l.substr(key.size() + 1));
    if (v.empty() || v[0] == '|' || v[0] == '>') {
      std::string joined;
      for (std::size_t j = i + 1; j < lines.size(); ++j) {
        if (!trim(lines[j]).empty() && indent_of(lines[j]) <= *base) break;
        joined += lines[j] + "\n";
      }
      return one_line(joined);
    }
    std::string out;
    if (v.size() >= 2 && v.front() == '\'' && v.back() == '\'') {
      v = v.substr(1, v.size() - 2);
      for (std::size_t k = 0; k < v.size(); ++k) {
        out += v[k];
        if (v[k] == '\'' && k + 1 < v.size() && v[k + 1] == '\'') ++k;
      }
    } else if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
      v = v.substr(1, v.size() - 2);
      for (std::size_t k = 0; k < v.size(); ++k) {
        if (v[k] == '\\' && k + 1 < v.size()) {
          char e = v[++k];
          out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        } else {
          out += v[k];
        }
      }
    } else {
      out = std::string(v);
    }
    return one_line(out);
  }
  return std::nullopt;
}

class TapReader {
 public:
  explicit TapReader(Parsed& out) : out_(out) {}

  bool any_tap() const { return any_tap_; }
  std::size_t lines() const { return lineno_; }

  void read(std::string_view text) {
    while (!text.empty() && !bailed_) {
      std::size_t nl = text.find('\n');
      std::string_view l = text.substr(0, nl);
      text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
      if (l.ends_with('\r')) l.remove_suffix(1);
      ++lineno_;
      line(l);
    }
    finish();
  }

 private:
  struct Aux {  // per case, for warnings and the failure message
    std::uint64_t number = 0;
    std::string first_comment;
    std::optional<std::string> yaml_message;
  };

  void warn(std::size_t line, std::string what) {
    out_.warnings.push_back(line_prefix(line) + std::move(what));
  }

  void line(std::string_view l) {
    if (in_yaml_) {
      std::string_view t = trim(l);
      std::size_t indent = l.size() - ltrim(l).size();
      if (t == "...") {
        close_yaml();
        return;
      }
      if (t.empty() || indent >= yaml_indent_) {
        std::string_view body = t.empty() ? t : l.substr(yaml_indent_);
        yaml_.emplace_back(body);
        append_block(out_.cases.back().output, std::string(body) + "\n");
        return;
      }
      warn(yaml_start_, "YAML block ends at line " + std::to_string(lineno_) +
                            " without '...'");
      close_yaml();  // and read this line as TAP
    }

    const bool after_test = after_test_;
    after_test_ = false;
    if (trim(l).empty()) return;
    if (is_space(l[0])) {
      // The YAML block of the test line just read; anything else indented
      // is a subtest (TAP 14) or a continuation, not ours to read.
      if (after_test && trim(l) == "---") {
        in_yaml_ = true;
        yaml_indent_ = l.size() - ltrim(l).size();
        yaml_start_ = lineno_;
        yaml_.clear();
      }
      return;
    }

    TestLine t;
    if (parse_test_line(l, t)) {
      test(t);
      after_test_ = true;
      return;
    }
    std::uint64_t n = 0;
    std::string skip_reason;
    bool overflow = false;
    if (parse_plan(l, n, skip_reason, overflow)) {
      plan(n, skip_reason, overflow);
      return;
    }
    if (istarts_with(l, "Bail out!")) {
      bail_out(trim(l.substr(9)));
      return;
    }
    if (l[0] == '#') {
      std::string_view c = l.substr(1);
      if (c.starts_with(' ')) c.remove_prefix(1);
      // "# Subtest: x" introduces the next test's subtests (TAP 14).
      if (attach_ && !ltrim(c).starts_with("Subtest")) {
        append_block(out_.cases.back().output, std::string(c) + "\n");
        Aux& a = aux_.back();
        if (a.first_comment.empty()) a.first_comment = one_line(c);
      }
      return;
    }
    if (l.starts_with("TAP version ")) {
      std::string_view v = trim(l.substr(12));
      if (v != "12" && v != "13" && v != "14")
        warn(lineno_, "unknown TAP version " + quote(v) + ", read as TAP 14");
      return;
    }
    if (l.starts_with("pragma ")) return;
    if (garbage_++ < kMaxGarbageWarnings)
      warn(lineno_, "not TAP, ignored: " + quote(l));
  }

  void test(const TestLine& t) {
    any_tap_ = true;
    if (plan_ && !plan_first_ && !warned_after_plan_) {
      warned_after_plan_ = true;
      warn(lineno_, "test line after the plan at line " +
                        std::to_string(plan_line_) +
                        " (a plan goes first or last)");
    }
    std::uint64_t number = last_number_ + 1;
    if (t.bad_number)
      warn(lineno_, "test number too large; numbered " + std::to_string(number));
    if (t.number) {
      number = *t.number;
      auto it = number_line_.find(number);
      if (it != number_line_.end())
        warn(lineno_, "test number " + std::to_string(number) +
                          " repeats line " + std::to_string(it->second));
      else if (number != last_number_ + 1)
        warn(lineno_, "test number " + std::to_string(number) +
                          " out of sequence (expected " +
                          std::to_string(last_number_ + 1) + ")");
    }
    last_number_ = number;
    number_line_.try_emplace(number, lineno_);

    Case c;
    c.id = t.description.empty() ? std::to_string(number) : t.description;
    c.name = c.id;
    if (t.seconds) c.seconds = *t.seconds;
    switch (t.directive) {
      case TestLine::Directive::skip:
        c.outcome = Outcome::skipped;
        c.message = one_line(t.reason);
        break;
      case TestLine::Directive::todo:
        if (t.ok) {
          c.outcome = Outcome::passed;
          c.message = "unexpectedly passed";
          if (!t.reason.empty()) c.message += " (TODO " + one_line(t.reason) + ")";
          warn(lineno_, "test " + std::to_string(number) + " " + quote(c.id) +
                            " is TODO but unexpectedly passed");
        } else {
          c.outcome = Outcome::xfailed;
          c.message = one_line(t.reason);
        }
        break;
      case TestLine::Directive::none:
        c.outcome = t.ok ? Outcome::passed : Outcome::failed;
        break;
    }
    out_.cases.push_back(std::move(c));
    aux_.push_back(Aux{number, {}, std::nullopt});
    attach_ = true;
  }

  void plan(std::uint64_t n, const std::string& skip_reason, bool overflow) {
    any_tap_ = true;
    attach_ = false;  // "# Looks like you failed 1 test of 5." is no test's
    if (overflow) {
      warn(lineno_, "plan number too large, ignored");
      return;
    }
    if (plan_) {
      warn(lineno_, "second plan 1.." + std::to_string(n) +
                        " ignored (the plan is on line " +
                        std::to_string(plan_line_) + ")");
      return;
    }
    plan_ = n;
    plan_line_ = lineno_;
    plan_first_ = out_.cases.empty();
    if (n == 0)
      warn(lineno_, skip_reason.empty()
                        ? std::string("plan 1..0: no tests")
                        : "plan 1..0 skips every test: " + one_line(skip_reason));
  }

  void bail_out(std::string_view reason) {
    any_tap_ = true;
    bailed_ = true;
    std::string w = "Bail out!";
    if (!reason.empty()) w += " " + cap(reason, kMaxMessage);
    if (plan_) {
      std::uint64_t count = 0;
      std::string r = missing_ranges(seen_numbers(), *plan_, count);
      if (count > 0)
        w += "; " + std::to_string(count) + " of the " + std::to_string(*plan_) +
             " planned tests did not run: " + r;
    } else {
      w += "; no plan came first, so which tests did not run is unknown";
    }
    warn(lineno_, std::move(w));
  }

  void close_yaml() {
    in_yaml_ = false;
    // "message" (TAP 13's example, tap-parser); node's test runner says "error".
    auto m = yaml_value(yaml_, "message");
    if (!m) m = yaml_value(yaml_, "error");
    if (m) aux_.back().yaml_message = *m;
    if (auto d = yaml_value(yaml_, "duration_ms"))
      if (auto s = parse_seconds(*d)) out_.cases.back().seconds = *s / 1000;
  }

  std::vector<std::uint64_t> seen_numbers() const {
    std::vector<std::uint64_t> v;
    v.reserve(number_line_.size());
    for (const auto& [n, l] : number_line_) v.push_back(n);
    std::sort(v.begin(), v.end());
    return v;
  }

  void finish() {
    if (in_yaml_) {
      warn(yaml_start_, "YAML block never ends ('...' missing)");
      close_yaml();
    }
    if (garbage_ > kMaxGarbageWarnings)
      warn(lineno_, std::to_string(garbage_ - kMaxGarbageWarnings) +
                        " more lines that are not TAP ignored");
    for (std::size_t i = 0; i < out_.cases.size(); ++i) {
      Case& c = out_.cases[i];
      if (c.outcome != Outcome::failed || !c.message.empty()) continue;
      c.message = aux_[i].yaml_message ? *aux_[i].yaml_message : aux_[i].first_comment;
    }
    if (bailed_) return;  // the bail-out warning said what did not run
    if (!plan_) {
      if (!out_.cases.empty())
        warn(lineno_, "no plan (1..N), so missing tests cannot be told");
      return;
    }
    std::vector<std::uint64_t> seen = seen_numbers();
    std::uint64_t missing = 0;
    std::string r = missing_ranges(seen, *plan_, missing);
    std::string plan = "plan 1.." + std::to_string(*plan_) + " (line " +
                       std::to_string(plan_line_) + ")";
    if (missing > 0)
      warn(plan_line_, plan + ": " + std::to_string(missing) + " of " +
                           std::to_string(*plan_) + " tests missing: " + r);
    std::size_t beyond = static_cast<std::size_t>(
        seen.end() - std::upper_bound(seen.begin(), seen.end(), *plan_));
    std::uint64_t zero = 0;
    beyond += number_line_.count(zero);
    if (beyond > 0)
      warn(plan_line_, plan + ": " + std::to_string(beyond) +
                           " tests numbered outside it");
  }

  Parsed& out_;
  std::size_t lineno_ = 0;
  bool any_tap_ = false;
  bool bailed_ = false;
  bool after_test_ = false;  // the previous line was a test line
  bool attach_ = false;      // "#" lines go to the last case's output
  std::size_t garbage_ = 0;

  std::optional<std::uint64_t> plan_;
  std::size_t plan_line_ = 0;
  bool plan_first_ = false;
  bool warned_after_plan_ = false;

  std::uint64_t last_number_ = 0;
  std::unordered_map<std::uint64_t, std::size_t> number_line_;  // first line
  std::vector<Aux> aux_;  // parallel to out_.cases

  bool in_yaml_ = false;
  std::size_t yaml_indent_ = 0;
  std::size_t yaml_start_ = 0;
  std::vector<std::string> yaml_;  // de-indented lines
};

// ---------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------

// pytest's junitxml (mangle_test_address) turns the node id
// "dir/test_m.py::Class::test[a::b]" into classname "dir.test_m.Class" and
// name "test[a::b]": the case id is their dotted join.
std::optional<std::string> pytest_junit_id(std::string_view nodeid) {
  std::size_t bracket = nodeid.find('[');
  std::string_view path = nodeid.substr(0, bracket);
  std::string_view params =
      bracket == std::string_view::npos ? std::string_view{} : nodeid.substr(bracket);
  std::size_t sep = path.find("::");
  if (sep == std::string_view::npos) return std::nullopt;
  std::string file(path.substr(0, sep));
  std::replace(file.begin(), file.end(), '/', '.');
  if (file.ends_with(".py")) file.resize(file.size() - 3);
  std::string out = file;
  for (std::string_view rest = path.substr(sep + 2);;) {
    std::size_t next = rest.find("::");
    out += "." + std::string(rest.substr(0, next));
    if (next == std::string_view::npos) break;
    rest = rest.substr(next + 2);
  }
  return out + std::string(params);
}

}  // namespace

std::optional<Parsed> parse_junit(std::string_view xml, std::string& error) {
  pugi::xml_document doc;
  pugi::xml_parse_result r = doc.load_buffer(xml.data(), xml.size(),
                                             pugi::parse_default, pugi::encoding_auto);
  LineIndex lines(xml);
  if (!r) {
    error = "malformed JUnit XML at line " + std::to_string(lines.line(r.offset)) +
            ", column " + std::to_string(lines.column(r.offset)) + " (offset " +
            std::to_string(r.offset) + "): " + r.description();
    return std::nullopt;
  }
  pugi::xml_node root = doc.document_element();
  std::string_view root_name = root.name();
  if (root_name != "testsuites" && root_name != "testsuite") {
    error = "not a JUnit report: the root element at line " +
            std::to_string(lines.line(root.offset_debug())) + " is <" +
            cap(root_name, kMaxQuoted) + ">, not <testsuites> or <testsuite>";
    return std::nullopt;
  }
  Parsed out;
  JunitReader reader(lines, out);
  reader.walk(doc);  // from the document, so a <testsuite> root counts too
  if (out.cases.empty())
    out.warnings.push_back(line_prefix(lines.line(root.offset_debug())) +
                           "no <testcase> in the report");
  return out;
}

std::optional<Parsed> parse_tap(std::string_view tap, std::string& error) {
  Parsed out;
  TapReader reader(out);
  reader.read(tap);
  if (!reader.any_tap()) {
    error = "not TAP: no plan, test line or Bail out! in " +
            std::to_string(reader.lines()) + " lines";
    return std::nullopt;
  }
  return out;
}

std::vector<std::optional<Case>> match(const std::vector<std::string>& ids,
                                       const Parsed& report,
                                       std::vector<std::string>& unmatched_case_ids) {
  using Index = std::unordered_map<std::string, std::vector<std::size_t>>;
  Index by_id, by_dot, by_colons, by_name;
  for (std::size_t i = 0; i < report.cases.size(); ++i) {
    const Case& c = report.cases[i];
    by_id[c.id].push_back(i);
    if (!c.classname.empty()) {
      by_dot[c.classname + "." + c.name].push_back(i);
      by_colons[c.classname + "::" + c.name].push_back(i);
    }
    by_name[c.name].push_back(i);
  }

  // The case a set of candidates stands for: none, or ambiguous when they
  // carry different ids; the same id twice is one test reported twice.
  enum class Found { none, ambiguous, one };
  auto lookup = [&](const Index& index, const std::string& key,
                    std::size_t& pick) -> Found {
    auto it = index.find(key);
    if (it == index.end()) return Found::none;
    const std::vector<std::size_t>& cand = it->second;
    const std::string& id = report.cases[cand.front()].id;
    for (std::size_t i : cand)
      if (report.cases[i].id != id) return Found::ambiguous;
    const std::vector<std::size_t>& same = by_id.at(id);
    pick = same.front();
    for (std::size_t i : same)
      if (is_failure(report.cases[i].outcome)) {
        pick = i;
        break;
      }
    return Found::one;
  };

  std::vector<std::optional<Case>> result;
  result.reserve(ids.size());
  std::unordered_set<std::string> claimed;
  for (const std::string& want : ids) {
    std::optional<std::string> pytest = pytest_junit_id(want);
    const std::pair<const Index*, const std::string*> rules[] = {
        {&by_id, &want},
        {&by_dot, &want},
        {&by_colons, &want},
        {&by_id, pytest ? &*pytest : nullptr},
        {&by_name, &want},
    };
    std::optional<Case> found;
    for (const auto& [index, key] : rules) {
      if (key == nullptr) continue;
      std::size_t pick = 0;
      Found f = lookup(*index, *key, pick);
      if (f == Found::none) continue;
      if (f == Found::one) {
        found = report.cases[pick];
        claimed.insert(found->id);
      }
      break;  // ambiguous: no guessing, and no weaker rule either
    }
    result.push_back(std::move(found));
  }

  unmatched_case_ids.clear();
  std::unordered_set<std::string> listed;
  for (const Case& c : report.cases)
    if (!claimed.contains(c.id) && listed.insert(c.id).second)
      unmatched_case_ids.push_back(c.id);
  return result;
}

}  // namespace dtest::report
