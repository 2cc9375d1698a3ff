#include "sync/ignore.h"

#include <stdexcept>
#include <utility>

namespace dtest::sync {

namespace {

[[noreturn]] void malformed(const std::string& pattern, const char* why) {
  throw std::invalid_argument("ignore pattern '" + pattern + "': " + why);
}

// Where the class starting at pat[i] == '[' ends (the index just past its
// closing ']'), or npos when it is not terminated.
std::size_t class_end(std::string_view pat, std::size_t i) {
  std::size_t j = i + 1;
  if (j < pat.size() && (pat[j] == '!' || pat[j] == '^')) ++j;
  if (j < pat.size() && pat[j] == ']') ++j;  // a leading ']' is literal
  while (j < pat.size()) {
    char c = pat[j];
    if (c == ']') return j + 1;
    if (c == '\\') {
      j += 2;
      continue;
    }
    if (c == '[' && j + 1 < pat.size() && pat[j + 1] == ':') {
      std::size_t k = pat.find(":]", j + 2);
      if (k != std::string_view::npos) {
        j = k + 2;
        continue;
      }
    }
    ++j;
  }
  return std::string_view::npos;
}

bool named_class(std::string_view name, unsigned char c) {
  if (name == "alpha") return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  if (name == "digit") return c >= '0' && c <= '9';
  if (name == "alnum") return named_class("alpha", c) || named_class("digit", c);
  if (name == "upper") return c >= 'A' && c <= 'Z';
  if (name == "lower") return c >= 'a' && c <= 'z';
  if (name == "space") return c == ' ' || (c >= '\t' && c <= '\r');
  if (name == "blank") return c == ' ' || c == '\t';
  if (name == "xdigit")
    return named_class("digit", c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
  if (name == "punct") return c > ' ' && c < 0x7f && !named_class("alnum", c);
  if (name == "print") return c >= ' ' && c < 0x7f;
  if (name == "graph") return c > ' ' && c < 0x7f;
  if (name == "cntrl") return c < ' ' || c == 0x7f;
  return false;
}

// Matches one character against the class at pat[i] (a '['); `end` is
// class_end(). The pattern was validated at construction.
bool class_match(std::string_view pat, std::size_t i, std::size_t end, unsigned char c) {
  std::size_t j = i + 1;
  bool negated = false;
  if (pat[j] == '!' || pat[j] == '^') {
    negated = true;
    ++j;
  }
  bool hit = false;
  std::size_t last = end - 1;  // the closing ']'
  while (j < last) {
    if (pat[j] == '[' && j + 1 < last && pat[j + 1] == ':') {
      std::size_t k = pat.find(":]", j + 2);
      if (k != std::string_view::npos && k + 2 <= end) {
        if (named_class(pat.substr(j + 2, k - (j + 2)), c)) hit = true;
        j = k + 2;
        continue;
      }
    }
    unsigned char lo = static_cast<unsigned char>(pat[j]);
    if (lo == '\\') lo = static_cast<unsigned char>(pat[++j]);
    ++j;
    unsigned char hi = lo;
    if (j + 1 < last && pat[j] == '-') {
      hi = static_cast<unsigned char>(pat[j + 1]);
      j += 2;
      if (hi == '\\') hi = static_cast<unsigned char>(pat[j++]);
    }
    if (c >= lo && c <= hi) hit = true;
  }
  return hit != negated;
}

// One path component against one glob segment ('*', '?', '[...]', '\').
bool segment_match(std::string_view pat, std::string_view str) {
  std::size_t p = 0, s = 0;
  std::size_t star_p = std::string_view::npos, star_s = 0;
  while (s < str.size()) {
    if (p < pat.size()) {
      char c = pat[p];
      if (c == '*') {
        while (p < pat.size() && pat[p] == '*') ++p;
        if (p == pat.size()) return true;  // a trailing '*' takes the rest
        star_p = p;
        star_s = s;
        continue;
      }
      bool ok = false;
      std::size_t next = p + 1;
      if (c == '?') {
        ok = true;
      } else if (c == '[') {
        std::size_t e = class_end(pat, p);
        ok = class_match(pat, p, e, static_cast<unsigned char>(str[s]));
        next = e;
      } else if (c == '\\') {
        ok = pat[p + 1] == str[s];
        next = p + 2;
      } else {
        ok = c == str[s];
      }
      if (ok) {
        p = next;
        ++s;
        continue;
      }
    }
    if (star_p == std::string_view::npos) return false;
    p = star_p;
    s = ++star_s;
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

bool has_meta(std::string_view g) {
  return g.find_first_of("*?[\\") != std::string_view::npos;
}

}  // namespace

IgnoreRules::IgnoreRules(const std::vector<std::string>& patterns) : patterns_(patterns) {
  for (const std::string& raw : patterns) {
    std::string_view p = raw;
    // Trailing blanks (and a CR) are dropped unless escaped with '\'.
    while (!p.empty() && (p.back() == ' ' || p.back() == '\t' || p.back() == '\r')) {
      std::size_t bs = 0;
      for (std::size_t k = p.size() - 1; k > 0 && p[k - 1] == '\\'; --k) ++bs;
      if (bs % 2 == 1) break;
      p.remove_suffix(1);
    }
    if (p.empty() || p.front() == '#') continue;
    Rule r;
    if (p.front() == '!') {
      r.negate = true;
      p.remove_prefix(1);
      if (p.empty()) malformed(raw, "a lone '!'");
    }
    if (p.back() == '/') {
      r.dir_only = true;
      p.remove_suffix(1);
    }
    if (!p.empty() && p.front() == '/') {
      r.anchored = true;
      p.remove_prefix(1);
    }
    if (p.empty()) malformed(raw, "no name to match");
    // Validate escapes and classes; split into '/'-separated segments.
    std::size_t seg_start = 0;
    for (std::size_t i = 0; i <= p.size(); ++i) {
      if (i == p.size() || p[i] == '/') {
        std::string_view seg = p.substr(seg_start, i - seg_start);
        if (seg.empty()) malformed(raw, "empty path component");
        Segment s;
        s.glob = std::string(seg);
        s.any_depth = seg == "**";
        s.literal = !has_meta(seg);
        r.segments.push_back(std::move(s));
        seg_start = i + 1;
        if (i < p.size()) r.anchored = true;
        continue;
      }
      if (p[i] == '\\') {
        if (i + 1 >= p.size()) malformed(raw, "a trailing '\\'");
        if (p[i + 1] == '/') malformed(raw, "an escaped '/'");
        ++i;
      } else if (p[i] == '[') {
        std::size_t e = class_end(p, i);
        if (e == std::string_view::npos) malformed(raw, "an unterminated '[' class");
        if (p.substr(i, e - i).find('/') != std::string_view::npos)
          malformed(raw, "a '/' inside a '[...]' class");
        i = e - 1;
      }
    }
    r.glob = std::string(p);
    if (!r.anchored) {
      // A basename pattern: "**" alone is just "*".
      r.segments.front().any_depth = false;
    } else if (r.segments.back().any_depth) {
      // A trailing "/**" matches everything below, not the directory itself:
      // one component, then any depth.
      Segment one;
      one.glob = "*";
      r.segments.insert(r.segments.end() - 1, std::move(one));
    }
    rules_.push_back(std::move(r));
  }
}

const std::vector<std::string>& IgnoreRules::defaults() {
  static const std::vector<std::string> d = {".git/", ".hg/", ".svn/", ".dtest/",
                                             "__pycache__/", "*.pyc"};
  return d;
}

IgnoreRules IgnoreRules::with_defaults(const std::vector<std::string>& extra) {
  std::vector<std::string> all = defaults();
  all.insert(all.end(), extra.begin(), extra.end());
  return IgnoreRules(all);
}

bool IgnoreRules::segment_matches(const Segment& seg, std::string_view component) {
  if (seg.literal) return seg.glob == component;
  return segment_match(seg.glob, component);
}

// The anchored match: segments against the '/'-separated components of
// `rel`, "**" standing for zero or more whole components (the classic
// single-backtrack wildcard walk, one level up).
bool IgnoreRules::path_matches(const Rule& r, std::string_view rel) {
  const std::vector<Segment>& segs = r.segments;
  std::size_t si = 0;            // segment index
  std::size_t pos = 0;           // start of the current component in rel
  std::size_t star_si = SIZE_MAX, star_pos = 0;
  auto comp_end = [&](std::size_t at) {
    std::size_t e = rel.find('/', at);
    return e == std::string_view::npos ? rel.size() : e;
  };
  while (pos <= rel.size()) {
    std::size_t e = comp_end(pos);
    if (si < segs.size()) {
      if (segs[si].any_depth) {
        ++si;
        star_si = si;
        star_pos = pos;
        continue;
      }
      if (segment_matches(segs[si], rel.substr(pos, e - pos))) {
        ++si;
        pos = e + 1;
        continue;
      }
    }
    if (star_si == SIZE_MAX) return false;
    // Let the last "**" swallow one more component.
    star_pos = comp_end(star_pos) + 1;
    si = star_si;
    pos = star_pos;
  }
  while (si < segs.size() && segs[si].any_depth) ++si;
  return si == segs.size();
}

bool IgnoreRules::ignored(std::string_view rel, bool is_dir) const {
  if (rules_.empty() || rel.empty()) return false;
  std::string_view base = rel;
  if (std::size_t slash = rel.rfind('/'); slash != std::string_view::npos)
    base = rel.substr(slash + 1);
  for (std::size_t i = rules_.size(); i-- > 0;) {
    const Rule& r = rules_[i];
    if (r.dir_only && !is_dir) continue;
    bool hit = r.anchored ? path_matches(r, rel) : segment_matches(r.segments.front(), base);
    if (hit) return !r.negate;
  }
  return false;
}

}  // namespace dtest::sync
