#include "agent/gtest_parse.h"

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace dtest::gtest {

namespace {

// ---------------------------------------------------------------------------
// Listing (--gtest_list_tests)
// ---------------------------------------------------------------------------
//
// GoogleTest 1.12 (UnitTestImpl::ListTestsMatchingFilter) prints, per suite
// with at least one test matching the filter:
//
//   Suite.[  # TypeParam = <type, on one line, at most 250 chars + "...">]
//     Name[  # GetParam() = <value, on one line, at most 250 chars + "...">]
//
// gtest_main additionally prints "Running main() from <file>" first.

constexpr std::string_view kCommentSep = "  # ";
constexpr std::string_view kTypeParamLabel = "TypeParam = ";
constexpr std::string_view kValueParamLabel = "GetParam() = ";
constexpr std::string_view kRunningMain = "Running main() from ";
constexpr std::size_t kMaxQuotedLine = 200;

// GoogleTest's rule (gtest.cc, kDisableTestFilter = "DISABLED_*:*/DISABLED_*"
// matched against the suite name and, separately, the test name): a name is
// disabled if it starts with "DISABLED_" or has a component after any '/'
// that does ("Prefix/DISABLED_Suite", "DISABLED_Prefix/Suite",
// "Suite/DISABLED_x" all count).
bool disabled_name(std::string_view s) {
  return s.starts_with("DISABLED_") ||
         s.find("/DISABLED_") != std::string_view::npos;
}

bool has_space(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
           c == '\f';
  });
}

[[noreturn]] void list_error(std::size_t lineno, std::string_view l) {
  std::string quoted(l.substr(0, kMaxQuotedLine));
  if (l.size() > kMaxQuotedLine) quoted += "...";
  throw ListError("line " + std::to_string(lineno) +
                  " of the test listing is not GoogleTest's format: '" +
                  quoted + "'");
}

// Splits "head  # comment" at the first comment separator.
void split_comment(std::string_view l, std::string_view& head,
                   std::optional<std::string_view>& comment) {
  const std::size_t p = l.find(kCommentSep);
  if (p == std::string_view::npos) {
    head = l;
    comment.reset();
  } else {
    head = l.substr(0, p);
    comment = l.substr(p + kCommentSep.size());
  }
}

// ---------------------------------------------------------------------------
// Run output
// ---------------------------------------------------------------------------

constexpr std::string_view kRun = "[ RUN      ] ";
constexpr std::string_view kOk = "[       OK ] ";
constexpr std::string_view kFailed = "[  FAILED  ] ";
constexpr std::string_view kSkipped = "[  SKIPPED ] ";

// Lines longer than this (without a newline) are handed to the line handler
// in pieces of this size, so an endless line cannot exhaust memory. The split
// points depend only on the byte stream, never on how it was chunked.
constexpr std::size_t kMaxLine = std::size_t{1} << 20;

// A test's stored output keeps its first kTestHead bytes and its last
// kTestTail bytes (1 MiB in total), with a truncation note in between.
constexpr std::size_t kTestHead = std::size_t{256} << 10;
constexpr std::size_t kTestTail = std::size_t{768} << 10;
// Text outside any test: 16 KiB head + 24 KiB tail (the tail buffer may
// briefly hold up to twice its size, so at most 64 KiB plus the note).
constexpr std::size_t kOutsideHead = std::size_t{16} << 10;
constexpr std::size_t kOutsideTail = std::size_t{24} << 10;

// The line appended to a crashed test's output (after a '\n' if its output
// did not end with one): "dtest: test process exited mid-test: <status>\n".
constexpr std::string_view kCrashLine = "dtest: test process exited mid-test: ";

constexpr std::string_view kNoteOpen = "\n[... ";
constexpr std::string_view kNoteClose = " bytes truncated ...]\n";

std::string note(std::size_t dropped) {
  std::string n(kNoteOpen);
  n += std::to_string(dropped);
  n += kNoteClose;
  return n;
}

// A capped buffer is either plain text of at most head + tail bytes, or
//   <head bytes> "\n[... N bytes truncated ...]\n" <tail buffer>
// where the tail buffer holds between `tail` and 2 * `tail` bytes (it is cut
// back to `tail` lazily, so appending is amortised O(1) per byte). The state
// lives in the string itself because the header gives the parser no other
// members. Returns true and fills the note's length and N if `s` is in the
// truncated form.
bool parse_note(const std::string& s, std::size_t head, std::size_t& note_len,
                std::size_t& dropped) {
  const std::string_view v(s);
  if (v.size() < head + kNoteOpen.size() ||
      v.substr(head, kNoteOpen.size()) != kNoteOpen)
    return false;
  const char* first = v.data() + head + kNoteOpen.size();
  const char* last = v.data() + v.size();
  const auto [ptr, ec] = std::from_chars(first, last, dropped);
  if (ec != std::errc() || ptr == first) return false;
  const std::string_view after(ptr, static_cast<std::size_t>(last - ptr));
  if (!after.starts_with(kNoteClose)) return false;
  note_len = static_cast<std::size_t>(ptr - (v.data() + head)) +
             kNoteClose.size();
  return true;
}

// Rewrites `s` (already truncated) so its tail buffer holds at most
// `keep` bytes.
void cut_tail(std::string& s, std::size_t head, std::size_t note_len,
              std::size_t dropped, std::size_t keep) {
  const std::size_t tail_at = head + note_len;
  const std::size_t tail_len = s.size() - tail_at;
  if (tail_len <= keep) return;
  const std::size_t excess = tail_len - keep;
  std::string rebuilt;
  rebuilt.reserve(head + note_len + 8 + keep);
  rebuilt.append(s, 0, head);
  rebuilt += note(dropped + excess);
  rebuilt.append(s, tail_at + excess, std::string::npos);
  s = std::move(rebuilt);
}

void append_capped(std::string& s, std::string_view add, std::size_t head,
                   std::size_t tail) {
  std::size_t note_len = 0;
  std::size_t dropped = 0;
  if (!parse_note(s, head, note_len, dropped)) {
    if (s.size() + add.size() <= head + tail) {
      s += add;
      return;
    }
    // Becomes truncated now: split plain text into head, note, tail.
    std::string all = std::move(s);
    all += add;
    const std::size_t cut = all.size() - head - tail;
    s.clear();
    s.reserve(head + 64 + 2 * tail);
    s.append(all, 0, head);
    s += note(cut);
    s.append(all, head + cut, std::string::npos);
    return;
  }
  s += add;
  if (s.size() - head - note_len > 2 * tail)
    cut_tail(s, head, note_len, dropped, tail);
}

// Canonical form: tail buffer cut back to exactly `tail` bytes.
void finalize_capped(std::string& s, std::size_t head, std::size_t tail) {
  std::size_t note_len = 0;
  std::size_t dropped = 0;
  if (parse_note(s, head, note_len, dropped))
    cut_tail(s, head, note_len, dropped, tail);
}

// Parses " (N ms)" exactly; returns false if `s` is not that.
bool parse_duration(std::string_view s, double& ms) {
  if (!s.starts_with(" (") || !s.ends_with(" ms)")) return false;
  const std::string_view num = s.substr(2, s.size() - 2 - 4);
  if (num.empty() || num.front() < '0' || num.front() > '9') return false;
  double v = 0;
  const auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
  if (ec != std::errc() || ptr != num.data() + num.size()) return false;
  ms = v;
  return true;
}

// Checks whether `after` (what follows the test name after an end marker) is
// one of gtest's forms: "", " (N ms)", ", where ..." or ", where ... (N ms)".
bool end_suffix(std::string_view after, double& ms) {
  ms = 0;
  if (after.empty()) return true;
  if (after.starts_with(", where ")) {
    // The value may itself contain " (", so only the last one can be the
    // time; if it is not "(N ms)" the time was simply not printed.
    const std::size_t p = after.rfind(" (");
    if (p != std::string_view::npos) {
      double v = 0;
      if (parse_duration(after.substr(p), v)) ms = v;
    }
    return true;
  }
  return parse_duration(after, ms);
}

struct EndMarker {
  std::size_t pos = std::string_view::npos;
  Outcome outcome = Outcome::passed;
  double ms = 0;
};

// Finds the earliest end marker for test `name` in `body` (a line without
// its terminator). Markers may appear mid-line when the test's own output did
// not end with a newline.
EndMarker find_end(std::string_view body, std::string_view name) {
  EndMarker best;
  const std::pair<std::string_view, Outcome> tags[] = {
      {kOk, Outcome::passed},
      {kFailed, Outcome::failed},
      {kSkipped, Outcome::skipped},
  };
  for (const auto& [tag, outcome] : tags) {
    for (std::size_t p = body.find(tag); p != std::string_view::npos && p < best.pos;
         p = body.find(tag, p + 1)) {
      const std::string_view rest = body.substr(p + tag.size());
      if (!rest.starts_with(name)) continue;
      double ms = 0;
      if (!end_suffix(rest.substr(name.size()), ms)) continue;
      best.pos = p;
      best.outcome = outcome;
      best.ms = ms;
      break;
    }
  }
  return best;
}

std::string_view strip_eol(std::string_view l) {
  if (l.ends_with('\n')) l.remove_suffix(1);
  if (l.ends_with('\r')) l.remove_suffix(1);
  return l;
}

}  // namespace

std::vector<ListedTest> parse_list(std::string_view output) {
  std::vector<ListedTest> tests;
  bool have_suite = false;
  std::string suite;
  std::string type_param;
  std::size_t lineno = 0;
  while (!output.empty()) {
    const std::size_t nl = output.find('\n');
    std::string_view l = output.substr(0, nl);
    output.remove_prefix(nl == std::string_view::npos ? output.size() : nl + 1);
    ++lineno;
    if (l.ends_with('\r')) l.remove_suffix(1);
    if (l.empty()) continue;  // tolerated anywhere (gtest prints none)

    std::string_view head;
    std::optional<std::string_view> comment;
    if (l.starts_with("  ")) {
      // Test line: "  Name" ["  # GetParam() = value"].
      if (!have_suite) list_error(lineno, l);
      split_comment(l.substr(2), head, comment);
      if (head.empty() || has_space(head)) list_error(lineno, l);
      ListedTest t;
      if (comment) {
        if (!comment->starts_with(kValueParamLabel)) list_error(lineno, l);
        t.value_param = std::string(comment->substr(kValueParamLabel.size()));
      }
      t.suite = suite;
      t.name = std::string(head);
      t.full = suite + "." + t.name;
      t.type_param = type_param;
      t.disabled = disabled_name(t.suite) || disabled_name(t.name);
      tests.push_back(std::move(t));
      continue;
    }
    if (!have_suite && l.starts_with(kRunningMain)) continue;
    // Suite line: "Suite." ["  # TypeParam = type"].
    split_comment(l, head, comment);
    if (head.size() < 2 || !head.ends_with('.') || has_space(head))
      list_error(lineno, l);
    type_param.clear();
    if (comment) {
      if (!comment->starts_with(kTypeParamLabel)) list_error(lineno, l);
      type_param = std::string(comment->substr(kTypeParamLabel.size()));
    }
    suite = std::string(head.substr(0, head.size() - 1));
    have_suite = true;
  }
  return tests;
}

void RunParser::feed(std::string_view bytes, std::vector<TestEvent>& out) {
  while (!bytes.empty()) {
    const std::size_t room = kMaxLine - partial_.size();
    const std::string_view window = bytes.substr(0, room);
    const std::size_t nl = window.find('\n');
    const bool complete = nl != std::string_view::npos;
    const std::size_t take = complete ? nl + 1 : window.size();
    if (partial_.empty() && complete) {
      line(bytes.substr(0, take), out);  // common case: no copy
    } else {
      partial_.append(bytes.substr(0, take));
      if (complete || partial_.size() >= kMaxLine) {
        const std::string piece = std::move(partial_);
        partial_.clear();
        line(piece, out);
      }
    }
    bytes.remove_prefix(take);
  }
}

// `l` is one line including its "\n" (or "\r\n"), or a piece without one (a
// line longer than kMaxLine, or the unterminated end of the stream). Output
// is stored verbatim, terminators included.
void RunParser::line(std::string_view l, std::vector<TestEvent>& out) {
  const std::string_view body = strip_eol(l);
  if (current_.empty()) {
    // "[ RUN      ] X" may follow text that did not end with a newline
    // (e.g. printed by SetUpTestSuite); that text is outside output.
    const std::size_t p = body.find(kRun);
    if (p != std::string_view::npos && p + kRun.size() < body.size()) {
      append_capped(outside_, l.substr(0, p), kOutsideHead, kOutsideTail);
      current_ = std::string(body.substr(p + kRun.size()));
      output_.clear();
      TestEvent ev;
      ev.kind = TestEvent::Kind::started;
      ev.name = current_;
      out.push_back(std::move(ev));
      return;
    }
    // Includes gtest's summary ("[  FAILED  ] X" repeated for tests that are
    // no longer running): never events.
    append_capped(outside_, l, kOutsideHead, kOutsideTail);
    return;
  }
  // A test is running: everything but its own end marker is its output
  // (including a "[ RUN      ] Y" it might print itself).
  const EndMarker m = find_end(body, current_);
  if (m.pos == std::string_view::npos) {
    append_capped(output_, l, kTestHead, kTestTail);
    return;
  }
  append_capped(output_, body.substr(0, m.pos), kTestHead, kTestTail);
  finalize_capped(output_, kTestHead, kTestTail);
  TestEvent ev;
  ev.kind = TestEvent::Kind::finished;
  ev.name = current_;
  ev.outcome = m.outcome;
  ev.duration_ms = m.ms;
  ev.output = std::move(output_);
  output_.clear();
  finished_.push_back(std::move(current_));
  current_.clear();
  out.push_back(std::move(ev));
}

bool RunParser::finish(std::string_view status, std::vector<TestEvent>& out) {
  std::string last_line(kCrashLine);
  last_line += status;
  return finish(out, Outcome::crashed, last_line);
}

bool RunParser::finish(std::vector<TestEvent>& out, Outcome outcome, std::string_view last_line) {
  if (!partial_.empty()) {
    const std::string rest = std::move(partial_);
    partial_.clear();
    line(rest, out);
  }
  finalize_capped(outside_, kOutsideHead, kOutsideTail);
  if (current_.empty()) return false;
  finalize_capped(output_, kTestHead, kTestTail);
  TestEvent ev;
  ev.kind = TestEvent::Kind::finished;
  ev.name = current_;
  ev.outcome = outcome;
  ev.duration_ms = 0;
  ev.output = std::move(output_);
  if (!ev.output.empty() && ev.output.back() != '\n') ev.output += '\n';
  ev.output += last_line;
  ev.output += '\n';
  output_.clear();
  finished_.push_back(std::move(current_));
  current_.clear();
  out.push_back(std::move(ev));
  return true;
}

}  // namespace dtest::gtest
