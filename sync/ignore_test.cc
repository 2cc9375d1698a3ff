#include "sync/ignore.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace dtest::sync {
namespace {

struct Case {
  std::vector<std::string> patterns;
  std::string path;
  bool is_dir;
  bool expected;
};

std::string describe(const Case& c) {
  std::string s = "patterns {";
  for (const auto& p : c.patterns) s += " \"" + p + "\"";
  s += " } path \"" + c.path + "\"" + (c.is_dir ? " (dir)" : " (file)");
  return s;
}

constexpr bool F = false;  // is_dir = false
constexpr bool D = true;

const std::vector<Case>& cases() {
  static const std::vector<Case> v = {
      // basename patterns (no '/'): any depth
      {{"*.pyc"}, "a.pyc", F, true},
      {{"*.pyc"}, "src/deep/a.pyc", F, true},
      {{"*.pyc"}, "a.pyc.txt", F, false},
      {{"*.pyc"}, "a.py", F, false},
      {{"*.pyc"}, "x.pyc", D, true},  // not dir-only: directories too
      {{"build"}, "build", F, true},
      {{"build"}, "x/y/build", D, true},
      {{"build"}, "xbuild", F, false},
      {{"build"}, "buildx", F, false},
      {{"build"}, "build/x", F, false},  // children: the caller prunes "build"
      {{"*"}, ".hidden", F, true},       // '*' matches a leading dot
      {{"é*"}, "dir/été", F, true},
      // trailing '/': directories only
      {{"build/"}, "build", D, true},
      {{"build/"}, "build", F, false},
      {{"build/"}, "a/b/build", D, true},
      {{"/build/"}, "build", D, true},
      {{"/build/"}, "a/build", D, false},
      // anchored patterns (leading '/' or an inner '/')
      {{"/out"}, "out", F, true},
      {{"/out"}, "a/out", F, false},
      {{"docs/_build"}, "docs/_build", D, true},
      {{"docs/_build"}, "x/docs/_build", D, false},
      {{"docs/_build"}, "_build", D, false},
      {{"/docs/*.md"}, "docs/a.md", F, true},
      {{"/docs/*.md"}, "docs/sub/a.md", F, false},  // '*' never matches '/'
      {{"a/*.c"}, "a/x.c", F, true},
      {{"a/*.c"}, "a/b/x.c", F, false},
      {{"a/*"}, "a/.x", F, true},
      // '?'
      {{"?.txt"}, "a.txt", F, true},
      {{"?.txt"}, "ab.txt", F, false},
      {{"?.txt"}, ".txt", F, false},
      {{"x/a?b"}, "x/a/b", F, false},  // '?' never matches '/'
      {{"x/a?b"}, "x/acb", F, true},
      // '*' backtracking
      {{"a*b*c"}, "aXbYc", F, true},
      {{"a*b*c"}, "abc", F, true},
      {{"a*b*c"}, "acb", F, false},
      {{"*a*b"}, "xaxxaxb", F, true},
      {{"*a*b"}, "xaxxaxbc", F, false},
      // character classes
      {{"[abc].o"}, "b.o", F, true},
      {{"[abc].o"}, "d.o", F, false},
      {{"[a-c]x"}, "bx", F, true},
      {{"[a-c]x"}, "dx", F, false},
      {{"[!a]x"}, "bx", F, true},
      {{"[!a]x"}, "ax", F, false},
      {{"[^a]x"}, "bx", F, true},
      {{"[^a]x"}, "ax", F, false},
      {{"[]]x"}, "]x", F, true},
      {{"[]]x"}, "ax", F, false},
      {{"[a-]x"}, "-x", F, true},
      {{"[a-]x"}, "bx", F, false},
      {{"[\\]a]x"}, "]x", F, true},
      {{"[[:digit:]]x"}, "5x", F, true},
      {{"[[:digit:]]x"}, "ax", F, false},
      {{"[![:upper:]]x"}, "Ax", F, false},
      {{"[![:upper:]]x"}, "ax", F, true},
      // '\' escapes
      {{"\\*.c"}, "*.c", F, true},
      {{"\\*.c"}, "a.c", F, false},
      {{"\\?"}, "a", F, false},
      {{"\\?"}, "?", F, true},
      {{"\\[a]"}, "[a]", F, true},
      {{"\\#x"}, "#x", F, true},
      {{"\\!x"}, "!x", F, true},
      {{"a\\ "}, "a ", F, true},  // an escaped trailing blank is kept
      {{"a  "}, "a", F, true},    // unescaped trailing blanks are dropped
      {{"a  "}, "a  ", F, false},
      // leading "**/"
      {{"**/foo"}, "foo", F, true},
      {{"**/foo"}, "a/foo", F, true},
      {{"**/foo"}, "a/b/c/foo", D, true},
      {{"**/foo"}, "a/xfoo", F, false},
      {{"**/foo/bar"}, "foo/bar", F, true},
      {{"**/foo/bar"}, "x/y/foo/bar", F, true},
      {{"**/foo/bar"}, "foo/x/bar", F, false},
      // trailing "/**": everything below, not the directory itself
      {{"abc/**"}, "abc/x", F, true},
      {{"abc/**"}, "abc/x/y/z", F, true},
      {{"abc/**"}, "abc", D, false},
      {{"abc/**"}, "x/abc/y", F, false},
      // "a/**/b": any depth in between, zero included
      {{"a/**/b"}, "a/b", F, true},
      {{"a/**/b"}, "a/x/b", F, true},
      {{"a/**/b"}, "a/x/y/b", F, true},
      {{"a/**/b"}, "a/x/y/c", F, false},
      {{"a/**/b"}, "b/a/b", F, false},
      {{"a/**/b"}, "a/b/c", F, false},
      {{"a/**/b/**/c"}, "a/1/b/2/3/c", F, true},
      {{"a/**/b/**/c"}, "a/b/c", F, true},
      {{"a/**/b/**/c"}, "a/c/b", F, false},
      {{"a/**/*.o"}, "a/x/y.o", F, true},
      // "**" not between slashes is a plain '*'
      {{"a**b"}, "axxb", F, true},
      {{"a**b"}, "x/ab", F, true},
      {{"**"}, "any/thing", F, true},
      // '!' negation, the last matching rule wins
      {{"*.pyc", "!keep.pyc"}, "keep.pyc", F, false},
      {{"*.pyc", "!keep.pyc"}, "x.pyc", F, true},
      {{"!keep.pyc", "*.pyc"}, "keep.pyc", F, true},
      {{"*.log", "!important.log", "important.log"}, "important.log", F, true},
      {{"build/", "!build/"}, "build", D, false},
      {{"/a/**", "!/a/keep"}, "a/keep", F, false},
      {{"/a/**", "!/a/keep"}, "a/other", F, true},
      {{"!x"}, "x", F, false},  // negating nothing: not ignored
      // comments and blank patterns
      {{"#*.c", "", "   "}, "a.c", F, false},
      {{"#*.c"}, "#x.c", F, false},
      {{"# comment", "*.o"}, "a.o", F, true},
      // nothing
      {{}, "a", F, false},
  };
  return v;
}

TEST(Ignore, Table) {
  for (const Case& c : cases()) {
    IgnoreRules rules(c.patterns);
    EXPECT_EQ(rules.ignored(c.path, c.is_dir), c.expected) << describe(c);
  }
}

TEST(Ignore, Defaults) {
  const std::vector<std::string> want = {".git/", ".hg/", ".svn/", ".dtest/", "__pycache__/", "*.pyc"};
  EXPECT_EQ(IgnoreRules::defaults(), want);
  IgnoreRules r = IgnoreRules::with_defaults({"*.tmp", "!keep.pyc"});
  EXPECT_EQ(r.patterns().size(), want.size() + 2);
  EXPECT_TRUE(r.ignored(".git", true));
  EXPECT_TRUE(r.ignored("sub/.git", true));
  EXPECT_FALSE(r.ignored(".git", false));  // a worktree's ".git" file is synced
  EXPECT_TRUE(r.ignored(".hg", true));
  EXPECT_TRUE(r.ignored(".svn", true));
  EXPECT_TRUE(r.ignored(".dtest", true));
  EXPECT_TRUE(r.ignored("pkg/__pycache__", true));
  EXPECT_TRUE(r.ignored("pkg/m.pyc", false));
  EXPECT_FALSE(r.ignored("pkg/keep.pyc", false));
  EXPECT_TRUE(r.ignored("a.tmp", false));
  EXPECT_FALSE(r.ignored(".gitignore", false));
  EXPECT_FALSE(r.ignored("src/main.cc", false));
}

TEST(Ignore, PatternsKeptAsGiven) {
  IgnoreRules r({"# c", "", "a/"});
  EXPECT_EQ(r.patterns(), (std::vector<std::string>{"# c", "", "a/"}));
  EXPECT_TRUE(IgnoreRules().patterns().empty());
  EXPECT_FALSE(IgnoreRules().ignored("x", false));
}

TEST(Ignore, MalformedPatternsThrow) {
  for (const std::string bad : {"[abc", "x/[a-", "!", "a\\", "/", "!/", "a//b", "[a/b]", "a\\/b", "//"}) {
    try {
      IgnoreRules r({"ok", bad});
      ADD_FAILURE() << "no error for '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("'" + bad + "'"), std::string::npos) << e.what();
    }
  }
  // A class that looks unterminated because ']' comes first is still one.
  EXPECT_THROW(IgnoreRules({"[]"}), std::invalid_argument);
  EXPECT_THROW(IgnoreRules({"[!]"}), std::invalid_argument);
  EXPECT_NO_THROW(IgnoreRules({"[]]", "[!]]", "\\[", "a\\\\"}));
}

}  // namespace
}  // namespace dtest::sync
