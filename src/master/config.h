// The config file: dtest.toml, or the [tool.dtest] table of a pyproject.toml.
//
// It holds what the command line can say (tx, dist, numprocesses, ...) plus
// what it cannot: set-up commands and the test suites ([[suite]]). Loading
// validates everything and reports every problem at once, each as
// "PATH:LINE: message", so a user fixes a file in one go. Relative paths are
// resolved against the file's folder (the rootdir), as pytest does for its
// ini files; the command line's own options are merged elsewhere (cli.cc).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dtest::config {

// Where a setting came from, for messages that point back at it.
struct Origin {
  std::string file;  // as given or found; empty: a default or the command line
  int line = 0;      // 1-based; 0 when unknown
  // "dtest.toml:3"; "dtest.toml" without a line; "" for no file.
  std::string str() const;
};

template <class T>
struct Value {
  T value{};
  Origin origin;
};

// One [[suite]]. Only the keys of its kind are filled; paths are absolute.
struct Suite {
  std::string kind;  // gtest, ctest, pytest or command
  Origin origin;     // the [[suite]] header
  // gtest: glob patterns or paths of test binaries, not expanded here.
  std::vector<std::string> binaries;
  // ctest: the build tree, and -L style label regexes (ctest's syntax).
  std::string build_dir;
  std::vector<std::string> labels;
  // pytest: arguments passed on (paths, -k, -m ...); interpreter, empty for
  // the gateway's python= or python3.
  std::vector<std::string> args;
  std::string python;
  // command: `run` gets test ids as {ids} (or in $DTEST_IDFILE) or a file as
  // {file}; tests come from exactly one of `list` (a command printing one id
  // per line) or `files` (globs, each match is a test; not expanded here).
  std::string run, list;
  std::vector<std::string> files;
  std::string format = "exit";  // exit, junit or tap
  std::string result_file;      // as written (the run command's cwd applies); empty: its stdout
  int batch = 0;                // max ids per run; 0 when not given
  // Every kind.
  std::string name;  // display prefix; may be empty
  std::string cwd;   // absolute; the file's folder when not given
  std::map<std::string, std::string> env;
  // Seconds per test; nullopt when not given (the run's timeout applies),
  // 0 means no limit for this suite.
  std::optional<double> timeout;
};

struct Config {
  std::string path;     // absolute path of the file read; empty when none
  std::string rootdir;  // its folder
  std::vector<Value<std::string>> tx;           // xspecs as written (validated)
  std::vector<Value<std::string>> rsyncdirs;    // absolute, lexically normal
  std::vector<Value<std::string>> rsyncignore;  // gitignore-style patterns
  std::vector<Value<std::string>> groups;       // ECMAScript regexes (validated)
  std::optional<Value<std::string>> dist;
  std::optional<Value<std::string>> numprocesses;  // "auto" or a whole number >= 0
  std::optional<Value<std::string>> setup_host, setup_worker;
  std::optional<Value<double>> timeout;
  std::optional<Value<int>> maxfail, retries;
  std::vector<Suite> suites;
};

// Walks up from start_dir (made absolute) to the file system root, or to
// `ceiling` when given (not looked above it), and returns the absolute path
// of the nearest dtest.toml, or pyproject.toml with a [tool.dtest] table
// (in one folder dtest.toml wins). nullopt when there is none.
std::optional<std::string> find(const std::string& start_dir, const std::string& ceiling = "");

// Reads and validates `path` (as found, or as given with -c). A file named
// pyproject.toml is read from its [tool.dtest] table, which must exist.
// Appends every problem to `errors` ("PATH:LINE: message", PATH as given);
// the returned Config holds the settings that were valid.
Config load(const std::string& path, std::vector<std::string>& errors);

// load() on text already read: `path` names it in messages and locates the
// rootdir; `pyproject` says to read [tool.dtest].
Config load_string(std::string_view text, const std::string& path, bool pyproject,
                   std::vector<std::string>& errors);

}  // namespace dtest::config
