// The config file: finding it (real temporary directories), reading every
// key, and one exact message per class of mistake.
#include "master/config.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include <gtest/gtest.h>

#include "xspec/xspec.h"

namespace dtest::config {
namespace {

namespace fs = std::filesystem;
using Lines = std::vector<std::string>;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "dtest-config-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    // Canonical, so paths compare equal to what find() builds (/tmp may be a link).
    path_ = fs::canonical(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  std::string write(const std::string& rel, const std::string& text) const {
    const fs::path p = path_ / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }
  std::string mkdir(const std::string& rel) const {
    fs::create_directories(path_ / rel);
    return (path_ / rel).string();
  }

 private:
  fs::path path_;
};

// Loads `text` as /proj/dtest.toml (messages say "dtest.toml" when `path`
// is relative) and returns the errors.
std::vector<std::string> errors_of(const std::string& text, const std::string& path = "dtest.toml",
                                   bool pyproject = false) {
  std::vector<std::string> errors;
  load_string(text, path, pyproject, errors);
  return errors;
}

// ---------------------------------------------------------------- happy paths

TEST(ConfigLoad, EveryKey) {
  const std::string text = R"(# every key dtest.toml knows
tx = ["2*popen//nice=5", "ssh=me@box//chdir=/tmp/w"]
dist = "loadgroup"
numprocesses = "auto"
rsyncdirs = ["src", "build/"]
rsyncignore = ["*.o", "!keep.o"]
groups = ["^a::", "db"]
timeout = 2.5
maxfail = 3
retries = 1

[setup]
host = "make -j4"
worker = "echo ready"

[[suite]]
kind = "gtest"
name = "unit"
binaries = ["build/*_test"]
env = { LANG = "C", A = "1" }
timeout = 10

[[suite]]
kind = "ctest"
build_dir = "build"
labels = ["fast", "^net"]
cwd = "sub"

[[suite]]
kind = "pytest"
args = ["tests", "-k", "not slow"]
python = "python3.11"

[[suite]]
kind = "command"
run = "./check {ids}"
list = "./check --list"
format = "junit"
result_file = "out.xml"
batch = 20
)";
  std::vector<std::string> errors;
  const Config c = load_string(text, "/proj/dtest.toml", false, errors);
  EXPECT_EQ(errors, (Lines{}));
  EXPECT_EQ(c.path, "/proj/dtest.toml");
  EXPECT_EQ(c.rootdir, "/proj");
  ASSERT_EQ(c.tx.size(), 2u);
  EXPECT_EQ(c.tx[0].value, "2*popen//nice=5");
  EXPECT_EQ(c.tx[1].value, "ssh=me@box//chdir=/tmp/w");
  EXPECT_EQ(c.tx[1].origin.str(), "/proj/dtest.toml:2");
  ASSERT_TRUE(c.dist);
  EXPECT_EQ(c.dist->value, "loadgroup");
  EXPECT_EQ(c.dist->origin.line, 3);
  ASSERT_TRUE(c.numprocesses);
  EXPECT_EQ(c.numprocesses->value, "auto");
  ASSERT_EQ(c.rsyncdirs.size(), 2u);
  EXPECT_EQ(c.rsyncdirs[0].value, "/proj/src");
  EXPECT_EQ(c.rsyncdirs[1].value, "/proj/build");
  ASSERT_EQ(c.rsyncignore.size(), 2u);
  EXPECT_EQ(c.rsyncignore[1].value, "!keep.o");
  ASSERT_EQ(c.groups.size(), 2u);
  EXPECT_EQ(c.groups[0].value, "^a::");
  ASSERT_TRUE(c.timeout);
  EXPECT_EQ(c.timeout->value, 2.5);
  ASSERT_TRUE(c.maxfail);
  EXPECT_EQ(c.maxfail->value, 3);
  EXPECT_EQ(c.maxfail->origin.line, 9);
  ASSERT_TRUE(c.retries);
  EXPECT_EQ(c.retries->value, 1);
  ASSERT_TRUE(c.setup_host);
  EXPECT_EQ(c.setup_host->value, "make -j4");
  EXPECT_EQ(c.setup_host->origin.line, 13);
  ASSERT_TRUE(c.setup_worker);
  EXPECT_EQ(c.setup_worker->value, "echo ready");

  ASSERT_EQ(c.suites.size(), 4u);
  const Suite& g = c.suites[0];
  EXPECT_EQ(g.kind, "gtest");
  EXPECT_EQ(g.origin.line, 16);
  EXPECT_EQ(g.name, "unit");
  EXPECT_EQ(g.binaries, (Lines{"/proj/build/*_test"}));
  EXPECT_EQ(g.env, (std::map<std::string, std::string>{{"A", "1"}, {"LANG", "C"}}));
  EXPECT_EQ(g.timeout, 10.0);
  EXPECT_EQ(g.cwd, "/proj");

  const Suite& ct = c.suites[1];
  EXPECT_EQ(ct.kind, "ctest");
  EXPECT_EQ(ct.build_dir, "/proj/build");
  EXPECT_EQ(ct.labels, (Lines{"fast", "^net"}));
  EXPECT_EQ(ct.cwd, "/proj/sub");
  EXPECT_EQ(ct.timeout, std::nullopt);

  const Suite& py = c.suites[2];
  EXPECT_EQ(py.kind, "pytest");
  EXPECT_EQ(py.args, (Lines{"tests", "-k", "not slow"}));
  EXPECT_EQ(py.python, "python3.11");

  const Suite& cmd = c.suites[3];
  EXPECT_EQ(cmd.kind, "command");
  EXPECT_EQ(cmd.run, "./check {ids}");
  EXPECT_EQ(cmd.list, "./check --list");
  EXPECT_EQ(cmd.format, "junit");
  EXPECT_EQ(cmd.result_file, "out.xml");
  EXPECT_EQ(cmd.batch, 20);
}

TEST(ConfigLoad, CommandSuiteWithFilesAndDefaults) {
  std::vector<std::string> errors;
  const Config c = load_string(
      "numprocesses = 0\n[[suite]]\nkind = \"command\"\nrun = \"sh {file}\"\nfiles = [\"t/*.sh\"]\nbatch = 1\n",
      "/proj/dtest.toml", false, errors);
  EXPECT_EQ(errors, (Lines{}));
  ASSERT_TRUE(c.numprocesses);
  EXPECT_EQ(c.numprocesses->value, "0");
  ASSERT_EQ(c.suites.size(), 1u);
  EXPECT_EQ(c.suites[0].files, (Lines{"/proj/t/*.sh"}));
  EXPECT_EQ(c.suites[0].format, "exit");
  EXPECT_EQ(c.suites[0].batch, 1);
  EXPECT_EQ(c.suites[0].result_file, "");
  EXPECT_FALSE(c.dist);
  EXPECT_FALSE(c.timeout);
}

TEST(ConfigLoad, PyprojectToolDtest) {
  TempDir d;
  const std::string path = d.write("pyproject.toml", R"([project]
name = "thing"
version = "1.0"

[tool.black]
line-length = 100

[tool.dtest]
dist = "each"
tx = ["popen"]

[tool.dtest.setup]
worker = "true"

[[tool.dtest.suite]]
kind = "pytest"
args = ["tests"]
)");
  std::vector<std::string> errors;
  const Config c = load(path, errors);
  EXPECT_EQ(errors, (Lines{}));
  EXPECT_EQ(c.path, path);
  EXPECT_EQ(c.rootdir, d.path().string());
  ASSERT_TRUE(c.dist);
  EXPECT_EQ(c.dist->value, "each");
  EXPECT_EQ(c.dist->origin.str(), path + ":9");
  ASSERT_TRUE(c.setup_worker);
  EXPECT_EQ(c.setup_worker->value, "true");
  ASSERT_EQ(c.suites.size(), 1u);
  EXPECT_EQ(c.suites[0].kind, "pytest");
  EXPECT_EQ(c.suites[0].origin.line, 15);
  EXPECT_EQ(c.suites[0].cwd, d.path().string());
}

TEST(ConfigLoad, RelativePathsResolveAgainstTheFilesFolder) {
  TempDir d;
  const std::string path = d.write("proj/ci/dtest.toml", R"(rsyncdirs = ["..", "../src/./lib/", "/abs/dir"]
[[suite]]
kind = "gtest"
binaries = ["../build/**/*_test", "/opt/t/x_test"]
cwd = "../run"
[[suite]]
kind = "ctest"
build_dir = "../build"
)");
  std::vector<std::string> errors;
  const Config c = load(path, errors);
  EXPECT_EQ(errors, (Lines{}));
  const std::string proj = (d.path() / "proj").string();
  EXPECT_EQ(c.rootdir, proj + "/ci");
  ASSERT_EQ(c.rsyncdirs.size(), 3u);
  EXPECT_EQ(c.rsyncdirs[0].value, proj);
  EXPECT_EQ(c.rsyncdirs[1].value, proj + "/src/lib");
  EXPECT_EQ(c.rsyncdirs[2].value, "/abs/dir");
  ASSERT_EQ(c.suites.size(), 2u);
  EXPECT_EQ(c.suites[0].binaries, (Lines{proj + "/build/**/*_test", "/opt/t/x_test"}));
  EXPECT_EQ(c.suites[0].cwd, proj + "/run");
  EXPECT_EQ(c.suites[1].build_dir, proj + "/build");
  EXPECT_EQ(c.suites[1].cwd, proj + "/ci");
}

TEST(ConfigLoad, RelativeFileNameUsesTheCurrentDirectory) {
  std::vector<std::string> errors;
  const Config c = load_string("rsyncdirs = [\"src\"]\n", "dtest.toml", false, errors);
  EXPECT_EQ(errors, (Lines{}));
  const std::string cwd = fs::current_path().string();
  EXPECT_EQ(c.rootdir, cwd);
  ASSERT_EQ(c.rsyncdirs.size(), 1u);
  EXPECT_EQ(c.rsyncdirs[0].value, cwd + "/src");
  EXPECT_EQ(c.rsyncdirs[0].origin.str(), "dtest.toml:1");
}

TEST(ConfigOrigin, Str) {
  EXPECT_EQ((Origin{"dtest.toml", 3}).str(), "dtest.toml:3");
  EXPECT_EQ((Origin{"dtest.toml", 0}).str(), "dtest.toml");
  EXPECT_EQ((Origin{"", 0}).str(), "");
}

// ----------------------------------------------------------------------- find

TEST(ConfigFind, WalksUpToDtestToml) {
  TempDir d;
  const std::string cfg = d.write("proj/dtest.toml", "");
  const std::string deep = d.mkdir("proj/a/b/c");
  EXPECT_EQ(find(deep), cfg);
  EXPECT_EQ(find(deep + "/"), cfg);
  EXPECT_EQ(find((d.path() / "proj").string()), cfg);
}

TEST(ConfigFind, SkipsPyprojectWithoutTheTable) {
  TempDir d;
  const std::string cfg = d.write("proj/dtest.toml", "");
  d.write("proj/pkg/pyproject.toml", "[project]\nname = \"pkg\"\n[tool.black]\nx = 1\n");
  d.write("proj/pkg/sub/pyproject.toml", "[tool.dtestx]\na = 1\n");
  const std::string start = d.mkdir("proj/pkg/sub/deeper");
  EXPECT_EQ(find(start), cfg);
}

TEST(ConfigFind, PyprojectWithTheTable) {
  TempDir d;
  d.write("proj/dtest.toml", "");
  const std::string py = d.write("proj/pkg/pyproject.toml", "[project]\nname = \"pkg\"\n[tool.dtest]\ndist = \"no\"\n");
  EXPECT_EQ(find(d.mkdir("proj/pkg/src")), py);
  // Subtables alone make the table exist too.
  const std::string py2 = d.write("other/pyproject.toml", "[[tool.dtest.suite]]\nkind = \"pytest\"\n");
  EXPECT_EQ(find(d.mkdir("other/x")), py2);
}

TEST(ConfigFind, BrokenPyprojectCountsWhenItStartsTheTable) {
  TempDir d;
  d.write("proj/dtest.toml", "");
  d.write("proj/a/pyproject.toml", "[project\nname = 1\n");  // not ours: skipped
  EXPECT_EQ(find(d.mkdir("proj/a/x")), (d.path() / "proj/dtest.toml").string());
  const std::string py = d.write("proj/b/pyproject.toml", "[tool.dtest]\ndist = \n");
  EXPECT_EQ(find(d.mkdir("proj/b/x")), py);  // found, so load() reports the syntax error
}

TEST(ConfigFind, NearestWins) {
  TempDir d;
  d.write("proj/dtest.toml", "");
  const std::string inner = d.write("proj/sub/dtest.toml", "");
  EXPECT_EQ(find(d.mkdir("proj/sub/x")), inner);
  const std::string py = d.write("proj/sub/x/pyproject.toml", "[tool.dtest]\n");
  EXPECT_EQ(find(d.mkdir("proj/sub/x/y")), py);
}

TEST(ConfigFind, DtestTomlWinsOverPyprojectInTheSameFolder) {
  TempDir d;
  d.write("proj/pyproject.toml", "[tool.dtest]\ndist = \"no\"\n");
  const std::string cfg = d.write("proj/dtest.toml", "");
  EXPECT_EQ(find(d.mkdir("proj/x")), cfg);
}

TEST(ConfigFind, NoneFoundBelowTheCeiling) {
  TempDir d;
  const std::string start = d.mkdir("a/b");
  EXPECT_EQ(find(start, d.path().string()), std::nullopt);
  // The ceiling itself is looked at, nothing above it.
  const std::string cfg = d.write("dtest.toml", "");
  EXPECT_EQ(find(start, d.path().string()), cfg);
  EXPECT_EQ(find(start, (d.path() / "a").string()), std::nullopt);
}

// ------------------------------------------------------------------- mistakes

TEST(ConfigErrors, MissingFile) {
  TempDir d;
  const std::string path = (d.path() / "nope.toml").string();
  std::vector<std::string> errors;
  const Config c = load(path, errors);
  EXPECT_EQ(errors, (Lines{path + ": cannot read: No such file or directory"}));
  EXPECT_TRUE(c.suites.empty());
}

TEST(ConfigErrors, UnreadableFile) {
  TempDir d;
  const std::string path = d.mkdir("dtest.toml");  // a directory where the file should be
  std::vector<std::string> errors;
  load(path, errors);
  EXPECT_EQ(errors, (Lines{path + ": cannot read: Is a directory"}));
}

TEST(ConfigErrors, TomlSyntaxErrorHasLineAndColumn) {
  EXPECT_EQ(errors_of("dist = \"load\"\ntimeout = \n"), (Lines{"dtest.toml:2:11: TOML syntax error: Error while parsing key-value pair: expected "
                          "value, saw '\\n'"}));
  EXPECT_EQ(errors_of("maxfail = 1\nmaxfail = 2\n"), (Lines{"dtest.toml:2:11: TOML syntax error: Error while parsing key-value pair: cannot "
                          "redefine existing integer 'maxfail'"}));
}

TEST(ConfigErrors, UnknownKeySuggestsACloseOne) {
  EXPECT_EQ(errors_of("dsit = \"load\"\n"), (Lines{"dtest.toml:1: unknown key 'dsit' (did you mean 'dist'?)"}));
  EXPECT_EQ(errors_of("\nnprocesses = 2\n"), (Lines{"dtest.toml:2: unknown key 'nprocesses' (did you mean 'numprocesses'?)"}));
  // Two swapped pairs: two edits (four without counting a swap as one).
  EXPECT_EQ(errors_of("mxafial = 1\n"), (Lines{"dtest.toml:1: unknown key 'mxafial' (did you mean 'maxfail'?)"}));
  EXPECT_EQ(errors_of("colour = true\n"), (Lines{"dtest.toml:1: unknown key 'colour'"}));
  EXPECT_EQ(errors_of("a = 1\n"), (Lines{"dtest.toml:1: unknown key 'a'"}));
  EXPECT_EQ(errors_of("[setup]\nhots = \"x\"\n"), (Lines{"dtest.toml:2: unknown key 'hots' in [setup] (did you mean 'host'?)"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"gtest\"\nbinaries = []\nbinares = [\"a\"]\n"), (Lines{"dtest.toml:3: 'binaries' must not be empty",
                          "dtest.toml:4: unknown key 'binares' in [[suite]] (did you mean 'binaries'?)"}));
}

TEST(ConfigErrors, WrongType) {
  EXPECT_EQ(errors_of("dist = 3\n"), (Lines{"dtest.toml:1: 'dist' must be a string, got integer"}));
  EXPECT_EQ(errors_of("tx = \"popen\"\n"), (Lines{"dtest.toml:1: 'tx' must be an array of strings, got string"}));
  EXPECT_EQ(errors_of("maxfail = 1.5\n"), (Lines{"dtest.toml:1: 'maxfail' must be an integer, got float"}));
  EXPECT_EQ(errors_of("timeout = \"10\"\n"), (Lines{"dtest.toml:1: 'timeout' must be a number of seconds, got string"}));
  EXPECT_EQ(errors_of("numprocesses = true\n"), (Lines{"dtest.toml:1: 'numprocesses' must be an integer or 'auto', got boolean"}));
  EXPECT_EQ(errors_of("setup = \"make\"\n"), (Lines{"dtest.toml:1: 'setup' must be a table, got string"}));
  EXPECT_EQ(errors_of("[setup]\nhost = [\"make\"]\n"), (Lines{"dtest.toml:2: 'setup.host' must be a string, got array"}));
  EXPECT_EQ(errors_of("[suite]\nkind = \"gtest\"\n"), (Lines{"dtest.toml:1: 'suite' must be an array of tables ([[suite]]), got table"}));
  EXPECT_EQ(errors_of("suite = [\"gtest\"]\n"), (Lines{"dtest.toml:1: 'suite[0]' must be a table, got string"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"pytest\"\nenv = { A = 1 }\n"), (Lines{"dtest.toml:3: 'env.A' must be a string, got integer"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"pytest\"\nenv = [\"A=1\"]\n"), (Lines{"dtest.toml:3: 'env' must be a table, got array"}));
}

TEST(ConfigErrors, BadEnumValue) {
  EXPECT_EQ(errors_of("dist = \"lod\"\n"), (Lines{"dtest.toml:1: 'dist' must be one of load, loadfile, loadscope, loadgroup, each, no; "
                          "got 'lod'"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\nlist = \"y\"\nformat = \"xml\"\n"), (Lines{"dtest.toml:5: 'format' must be one of exit, junit, tap; got 'xml'"}));
}

TEST(ConfigErrors, BadNumbers) {
  EXPECT_EQ(errors_of("maxfail = -1\n"), (Lines{"dtest.toml:1: 'maxfail' must be >= 0, got -1"}));
  EXPECT_EQ(errors_of("retries = 5000000000\n"), (Lines{"dtest.toml:1: 'retries' must be <= 1000000000, got 5000000000"}));
  EXPECT_EQ(errors_of("timeout = -0.5\n"), (Lines{"dtest.toml:1: 'timeout' must be a number of seconds >= 0, got -0.5"}));
  EXPECT_EQ(errors_of("timeout = inf\n"), (Lines{"dtest.toml:1: 'timeout' must be a number of seconds >= 0, got inf"}));
  EXPECT_EQ(errors_of("timeout = nan\n"), (Lines{"dtest.toml:1: 'timeout' must be a number of seconds >= 0, got nan"}));
  EXPECT_EQ(errors_of("numprocesses = -2\n"), (Lines{"dtest.toml:1: 'numprocesses' must be >= 0, got -2"}));
  EXPECT_EQ(errors_of("numprocesses = \"many\"\n"), (Lines{"dtest.toml:1: 'numprocesses' must be a whole number >= 0 or 'auto', got 'many'"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\nlist = \"y\"\nformat = \"tap\"\nbatch = 0\n"), (Lines{"dtest.toml:6: 'batch' must be >= 1, got 0"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"gtest\"\nbinaries = [\"a\"]\ntimeout = -3\n"), (Lines{"dtest.toml:4: 'timeout' must be a number of seconds >= 0, got -3"}));
}

TEST(ConfigErrors, BadXspecIsPrefixedWithFileAndLine) {
  std::string xspec_error;
  try {
    xspec::parse("popen//=x");
  } catch (const xspec::Error& e) {
    xspec_error = e.what();
  }
  ASSERT_EQ(xspec_error.rfind("invalid xspec 'popen//=x': expected a key at column 8\n", 0), 0u) << xspec_error;
  std::vector<std::string> errors;
  const Config c = load_string("tx = [\n  \"popen\",\n  \"popen//=x\",\n]\n", "dtest.toml", false, errors);
  EXPECT_EQ(errors, (Lines{"dtest.toml:3: " + xspec_error}));
  ASSERT_EQ(c.tx.size(), 1u);  // the good one is kept
  EXPECT_EQ(c.tx[0].value, "popen");
}

TEST(ConfigErrors, BadRegexNamesIt) {
  std::string regex_error;
  try {
    std::regex bad("(ab");
  } catch (const std::regex_error& e) {
    regex_error = e.what();
  }
  ASSERT_FALSE(regex_error.empty());
  EXPECT_EQ(errors_of("groups = [\"ok\", \"(ab\"]\n"), (Lines{"dtest.toml:1: 'groups[1]' is not a regular expression: '(ab' (" + regex_error + ")"}));
}

TEST(ConfigErrors, BadIgnorePattern) {
  EXPECT_EQ(errors_of("rsyncignore = [\"*.o\", \"[abc\"]\n"),
            (Lines{"dtest.toml:1: 'rsyncignore[1]': ignore pattern '[abc': an unterminated '[' class"}));
}

TEST(ConfigErrors, SuiteKind) {
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"gtset\"\n"), (Lines{"dtest.toml:2: 'kind' must be one of gtest, ctest, pytest, command; got 'gtset'"}));
  EXPECT_EQ(errors_of("[[suite]]\nname = \"x\"\n"), (Lines{"dtest.toml:1: suite is missing required key 'kind' (one of gtest, ctest, pytest, command)"}));
  // With the kind unknown, keys of any kind are accepted, others still not.
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"x\"\nbinaries = [\"a\"]\nargs = [\"b\"]\nbogus = 1\n"), (Lines{"dtest.toml:2: 'kind' must be one of gtest, ctest, pytest, command; got 'x'",
                          "dtest.toml:5: unknown key 'bogus' in [[suite]]"}));
}

TEST(ConfigErrors, MissingRequiredSuiteKey) {
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"gtest\"\n"), (Lines{"dtest.toml:1: gtest suite is missing required key 'binaries'"}));
  EXPECT_EQ(errors_of("\n[[suite]]\nkind = \"ctest\"\nlabels = [\"x\"]\n"), (Lines{"dtest.toml:2: ctest suite is missing required key 'build_dir'"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nlist = \"ls\"\n"), (Lines{"dtest.toml:1: command suite is missing required key 'run'"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"pytest\"\n"), (Lines{}));  // pytest needs nothing
}

TEST(ConfigErrors, KeyOfAnotherKind) {
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"pytest\"\nbinaries = [\"a\"]\n"), (Lines{"dtest.toml:3: 'binaries' is not a key of a pytest suite"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"gtest\"\nbinaries = [\"a\"]\nbatch = 2\n"), (Lines{"dtest.toml:4: 'batch' is not a key of a gtest suite"}));
}

TEST(ConfigErrors, ListItemOfTheWrongTypeNamesTheIndex) {
  EXPECT_EQ(errors_of("tx = [\"popen\", 3]\n"), (Lines{"dtest.toml:1: 'tx[1]' must be a string, got integer"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"pytest\"\nargs = [\n  \"-k\",\n  [\"x\"],\n]\n"), (Lines{"dtest.toml:5: 'args[1]' must be a string, got array"}));
  EXPECT_EQ(errors_of("rsyncdirs = [\"\"]\n"), (Lines{"dtest.toml:1: 'rsyncdirs[0]' must not be empty"}));
}

TEST(ConfigErrors, CommandListAndFiles) {
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\nlist = \"ls\"\nfiles = [\"*.sh\"]\n"), (Lines{"dtest.toml:1: command suite has both 'list' and 'files'; give exactly one"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\n"), (Lines{"dtest.toml:1: command suite needs one of 'list' (a command printing test ids) or "
                          "'files' (globs)"}));
}

TEST(ConfigErrors, CommandFormatExitRunsOneTestAtATime) {
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\nlist = \"ls\"\nbatch = 5\n"), (Lines{"dtest.toml:5: 'batch' must be 1 with format 'exit' (one test per run), got 5"}));
  EXPECT_EQ(errors_of("[[suite]]\nkind = \"command\"\nrun = \"x\"\nlist = \"ls\"\nresult_file = \"r.xml\"\n"), (Lines{"dtest.toml:5: 'result_file' needs format 'junit' or 'tap' (format 'exit' reads only "
                          "the exit code)"}));
}

TEST(ConfigErrors, PyprojectWithoutTheTableNamedExplicitly) {
  TempDir d;
  const std::string path = d.write("pyproject.toml", "[project]\nname = \"x\"\n");
  std::vector<std::string> errors;
  load(path, errors);
  EXPECT_EQ(errors, (Lines{path + ": no [tool.dtest] table"}));
  EXPECT_EQ(errors_of("[tool]\ndtest = 3\n", "pyproject.toml", true), (Lines{"pyproject.toml:2: 'tool.dtest' must be a table, got integer"}));
}

TEST(ConfigErrors, PyprojectMessagesNameItsTables) {
  EXPECT_EQ(errors_of("[tool.other]\nanything = 1\n[tool.dtest]\ndsit = \"no\"\n[tool.dtest.setup]\nx = 1\n",
                        "pyproject.toml", true), (Lines{"pyproject.toml:4: unknown key 'dsit' in [tool.dtest] (did you mean 'dist'?)",
                          "pyproject.toml:6: unknown key 'x' in [tool.dtest.setup]"}));
  EXPECT_EQ(errors_of("[tool.dtest.suite]\nkind = \"gtest\"\n", "pyproject.toml", true), (Lines{"pyproject.toml:1: 'suite' must be an array of tables ([[tool.dtest.suite]]), got table"}));
}

TEST(ConfigErrors, EveryMistakeInOneLoadInFileOrder) {
  std::vector<std::string> errors;
  const Config c = load_string(R"(tx = ["popen", 7]
dist = "lod"
maxfail = -1
retries = 2
colour = "yes"

[setup]
host = 1

[[suite]]
kind = "pytest"
binaries = ["x"]

[[suite]]
kind = "command"
run = "go"
batch = 0
)",
                               "dtest.toml", false, errors);
  EXPECT_EQ(errors, (Lines{"dtest.toml:1: 'tx[1]' must be a string, got integer",
                                  "dtest.toml:2: 'dist' must be one of load, loadfile, loadscope, loadgroup, each, "
                                  "no; got 'lod'",
                                  "dtest.toml:3: 'maxfail' must be >= 0, got -1",
                                  "dtest.toml:5: unknown key 'colour'",
                                  "dtest.toml:8: 'setup.host' must be a string, got integer",
                                  "dtest.toml:12: 'binaries' is not a key of a pytest suite",
                                  "dtest.toml:14: command suite needs one of 'list' (a command printing test ids) "
                                  "or 'files' (globs)",
                                  "dtest.toml:17: 'batch' must be >= 1, got 0"}));
  // What was valid is still there.
  ASSERT_TRUE(c.retries);
  EXPECT_EQ(c.retries->value, 2);
  ASSERT_EQ(c.tx.size(), 1u);
  EXPECT_FALSE(c.dist);
}

}  // namespace
}  // namespace dtest::config
