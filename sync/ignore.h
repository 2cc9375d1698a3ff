// gitignore-style ignore rules for the delta syncer (--rsyncignore).
//
// A pattern is matched against a path relative to the synced root, with '/'
// separators and no leading "./":
//   - a trailing '/' restricts the pattern to directories ("build/");
//   - a pattern with no other '/' matches the basename at any depth
//     ("*.pyc", "__pycache__");
//   - a pattern containing a '/' (a leading one is dropped) is anchored at
//     the root and matched against the whole relative path ("docs/_build",
//     "/out");
//   - '*' and '?' never match '/', '[...]' is a character class, '\' escapes;
//     "**/" matches zero or more directories, a trailing "/**" everything
//     below, and "a/**/b" any depth between;
//   - '!' negates: a later "!keep.pyc" re-includes what an earlier rule
//     ignored (the last matching rule wins, as in gitignore). A file inside an
//     ignored directory is never reconsidered: the directory is pruned.
//   - blank patterns and patterns starting with '#' are ignored.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dtest::sync {

class IgnoreRules {
 public:
  IgnoreRules() = default;
  // Throws std::invalid_argument naming the pattern for a malformed one
  // (an unterminated '[' class, a lone "!").
  explicit IgnoreRules(const std::vector<std::string>& patterns);

  // The rules every sync starts with (listed in docs/sync.md):
  // .git/ .hg/ .svn/ .dtest/ __pycache__/ *.pyc
  static const std::vector<std::string>& defaults();
  // defaults() followed by `extra`.
  static IgnoreRules with_defaults(const std::vector<std::string>& extra);

  // `rel` is relative to the root ("src/a.cc"); `is_dir` says whether it
  // names a directory. The caller prunes an ignored directory's subtree.
  bool ignored(std::string_view rel, bool is_dir) const;

  const std::vector<std::string>& patterns() const { return patterns_; }

 private:
  struct Segment {
    std::string glob;        // one '/'-free component pattern
    bool any_depth = false;  // "**": zero or more whole components
    bool literal = false;    // no metacharacters: a plain comparison
  };
  struct Rule {
    std::string glob;       // without '!', leading '/', trailing '/'
    bool negate = false;
    bool dir_only = false;
    bool anchored = false;  // contains '/': match the whole relative path
    std::vector<Segment> segments;  // glob split at '/' (one when not anchored)
  };
  static bool segment_matches(const Segment& seg, std::string_view component);
  static bool path_matches(const Rule& r, std::string_view rel);
  std::vector<std::string> patterns_;
  std::vector<Rule> rules_;
};

}  // namespace dtest::sync
