#include "master/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <regex>
#include <set>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "sync/ignore.h"
#include "xspec/xspec.h"

namespace dtest::config {

namespace fs = std::filesystem;

std::string Origin::str() const {
  if (file.empty()) return {};
  return line > 0 ? file + ":" + std::to_string(line) : file;
}

namespace {

// Counts above this are typos, not intentions (and must fit an int).
constexpr std::int64_t kMaxWhole = 1'000'000'000;

const std::vector<std::string_view> kTopKeys = {"tx",      "dist",    "numprocesses", "rsyncdirs", "rsyncignore", "groups",
                                                "timeout", "maxfail", "retries",      "setup",     "suite"};
const std::vector<std::string_view> kDists = {"load", "loadfile", "loadscope", "loadgroup", "each", "no"};
const std::vector<std::string_view> kKinds = {"gtest", "ctest", "pytest", "command"};
const std::vector<std::string_view> kFormats = {"exit", "junit", "tap"};
const std::vector<std::string_view> kSetupKeys = {"host", "worker"};
// Every suite key and the kind it belongs to ("" = every kind), in the order
// suggestions prefer.
const std::vector<std::pair<std::string_view, std::string_view>> kSuiteKeys = {
    {"kind", ""},          {"name", ""},          {"cwd", ""},           {"env", ""},
    {"timeout", ""},       {"binaries", "gtest"}, {"build_dir", "ctest"}, {"labels", "ctest"},
    {"args", "pytest"},    {"python", "pytest"},  {"run", "command"},     {"list", "command"},
    {"files", "command"},  {"format", "command"}, {"result_file", "command"}, {"batch", "command"}};

bool one_of(std::string_view v, const std::vector<std::string_view>& set) {
  return std::find(set.begin(), set.end(), v) != set.end();
}

std::string join(const std::vector<std::string_view>& items, std::string_view sep) {
  std::string out;
  for (const auto& i : items) {
    if (!out.empty()) out += sep;
    out += i;
  }
  return out;
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    case toml::node_type::none: break;
  }
  return "nothing";
}

int line_of(const toml::source_region& r) { return static_cast<int>(r.begin.line); }

// Optimal string alignment distance: an adjacent swap ("dsit") is one edit.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// " (did you mean 'dist'?)" for the closest candidate within two edits (and
// fewer edits than it has letters, so 'a' does not suggest 'tx'); "" if none.
std::string suggestion(std::string_view key, const std::vector<std::string_view>& candidates) {
  std::string lower(key);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view best;
  std::size_t best_d = 3;
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(lower, c);
    if (d < best_d && d < c.size()) {
      best = c;
      best_d = d;
    }
  }
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
}

struct Problem {
  int line = 0;
  std::string message;
};

// Walks the parsed table into a Config, collecting problems with their lines.
class Loader {
 public:
  Loader(std::string file, fs::path folder, bool pyproject, Config& cfg)
      : file_(std::move(file)), folder_(std::move(folder)), prefix_(pyproject ? "tool.dtest." : ""), cfg_(cfg) {}

  std::vector<Problem>& problems() { return problems_; }

  void top(const toml::table& t) {
    const std::string where = prefix_.empty() ? "" : " in [tool.dtest]";
    for (auto&& [k, node] : t) {
      const std::string key(k.str());
      if (key == "tx") {
        tx(node);
      } else if (key == "dist") {
        if (auto v = enum_of(node, "dist", kDists)) cfg_.dist = {*v, origin(node)};
      } else if (key == "numprocesses") {
        numprocesses(node);
      } else if (key == "rsyncdirs") {
        for (auto& v : paths_of(node, "rsyncdirs")) cfg_.rsyncdirs.push_back(std::move(v));
      } else if (key == "rsyncignore") {
        rsyncignore(node);
      } else if (key == "groups") {
        groups(node);
      } else if (key == "timeout") {
        if (auto v = seconds_of(node, "timeout")) cfg_.timeout = Value<double>{*v, origin(node)};
      } else if (key == "maxfail" || key == "retries") {
        if (auto v = whole_of(node, key, 0)) (key == "maxfail" ? cfg_.maxfail : cfg_.retries) = Value<int>{*v, origin(node)};
      } else if (key == "setup") {
        setup(node);
      } else if (key == "suite") {
        suites(node);
      } else {
        unknown(k, kTopKeys, where);
      }
    }
  }

 private:
  void error(int line, std::string message) { problems_.push_back({line, std::move(message)}); }
  void error(const toml::node& n, std::string message) { error(line_of(n.source()), std::move(message)); }
  Origin origin(const toml::node& n) const { return {file_, line_of(n.source())}; }

  void unknown(const toml::key& k, const std::vector<std::string_view>& candidates, const std::string& where) {
    error(line_of(k.source()), fmt::format("unknown key '{}'{}{}", k.str(), where, suggestion(k.str(), candidates)));
  }

  // "dir/x/../y/" -> "<folder>/dir/y"; absolute paths stay (normalised).
  std::string absolute(const std::string& p) const {
    std::string s = (folder_ / p).lexically_normal().string();
    if (s.size() > 1 && s.back() == '/') s.pop_back();
    return s;
  }

  std::optional<std::string> string_of(const toml::node& n, const std::string& what) {
    if (const auto* s = n.as_string()) return s->get();
    error(n, fmt::format("'{}' must be a string, got {}", what, type_name(n)));
    return std::nullopt;
  }

  std::optional<std::string> nonempty_of(const toml::node& n, const std::string& what) {
    auto v = string_of(n, what);
    if (v && v->empty()) {
      error(n, fmt::format("'{}' must not be empty", what));
      return std::nullopt;
    }
    return v;
  }

  std::optional<std::string> enum_of(const toml::node& n, const std::string& what,
                                     const std::vector<std::string_view>& allowed) {
    auto v = string_of(n, what);
    if (v && !one_of(*v, allowed)) {
      error(n, fmt::format("'{}' must be one of {}; got '{}'", what, join(allowed, ", "), *v));
      return std::nullopt;
    }
    return v;
  }

  // An array of strings, each with its own line; the good items only.
  std::vector<Value<std::string>> strings_of(const toml::node& n, const std::string& what) {
    std::vector<Value<std::string>> out;
    const auto* arr = n.as_array();
    if (!arr) {
      error(n, fmt::format("'{}' must be an array of strings, got {}", what, type_name(n)));
      return out;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::node& item = *arr->get(i);
      if (const auto* s = item.as_string())
        out.push_back({s->get(), origin(item)});
      else
        error(item, fmt::format("'{}[{}]' must be a string, got {}", what, i, type_name(item)));
    }
    return out;
  }

  // An array of paths (or glob patterns) made absolute against the folder.
  std::vector<Value<std::string>> paths_of(const toml::node& n, const std::string& what) {
    std::vector<Value<std::string>> out;
    const auto* arr = n.as_array();
    const auto items = strings_of(n, what);
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (items[i].value.empty()) {
        error(items[i].origin.line, fmt::format("'{}[{}]' must not be empty", what, i));
        continue;
      }
      out.push_back({absolute(items[i].value), items[i].origin});
    }
    if (arr && arr->empty()) error(n, fmt::format("'{}' must not be empty", what));
    return out;
  }

  std::optional<int> whole_of(const toml::node& n, const std::string& what, std::int64_t least) {
    const auto* i = n.as_integer();
    if (!i) {
      error(n, fmt::format("'{}' must be an integer, got {}", what, type_name(n)));
      return std::nullopt;
    }
    const std::int64_t v = i->get();
    if (v < least) {
      error(n, fmt::format("'{}' must be >= {}, got {}", what, least, v));
    } else if (v > kMaxWhole) {
      error(n, fmt::format("'{}' must be <= {}, got {}", what, kMaxWhole, v));
    } else {
      return static_cast<int>(v);
    }
    return std::nullopt;
  }

  std::optional<double> seconds_of(const toml::node& n, const std::string& what) {
    double v = 0;
    if (const auto* i = n.as_integer()) {
      v = static_cast<double>(i->get());
    } else if (const auto* f = n.as_floating_point()) {
      v = f->get();
    } else {
      error(n, fmt::format("'{}' must be a number of seconds, got {}", what, type_name(n)));
      return std::nullopt;
    }
    if (!(v >= 0) || !std::isfinite(v)) {  // negatives, nan, inf
      error(n, fmt::format("'{}' must be a number of seconds >= 0, got {}", what, v));
      return std::nullopt;
    }
    return v;
  }

  const toml::table* table_of(const toml::node& n, const std::string& what) {
    const auto* t = n.as_table();
    if (!t) error(n, fmt::format("'{}' must be a table, got {}", what, type_name(n)));
    return t;
  }

  void tx(const toml::node& n) {
    for (auto& item : strings_of(n, "tx")) {
      std::vector<std::string> errs;
      xspec::parse_all({item.value}, errs);
      for (auto& e : errs) error(item.origin.line, std::move(e));
      if (errs.empty()) cfg_.tx.push_back(std::move(item));
    }
  }

  void numprocesses(const toml::node& n) {
    if (const auto* s = n.as_string()) {
      if (s->get() == "auto")
        cfg_.numprocesses = {"auto", origin(n)};
      else
        error(n, fmt::format("'numprocesses' must be a whole number >= 0 or 'auto', got '{}'", s->get()));
    } else if (n.is_integer()) {
      if (auto v = whole_of(n, "numprocesses", 0)) cfg_.numprocesses = {std::to_string(*v), origin(n)};
    } else {
      error(n, fmt::format("'numprocesses' must be an integer or 'auto', got {}", type_name(n)));
    }
  }

  void rsyncignore(const toml::node& n) {
    auto items = strings_of(n, "rsyncignore");
    for (std::size_t i = 0; i < items.size(); ++i) {
      try {
        sync::IgnoreRules check({items[i].value});
        cfg_.rsyncignore.push_back(std::move(items[i]));
      } catch (const std::invalid_argument& e) {
        error(items[i].origin.line, fmt::format("'rsyncignore[{}]': {}", i, e.what()));
      }
    }
  }

  void groups(const toml::node& n) {
    auto items = strings_of(n, "groups");
    for (std::size_t i = 0; i < items.size(); ++i) {
      try {
        std::regex check(items[i].value);
        cfg_.groups.push_back(std::move(items[i]));
      } catch (const std::regex_error& e) {
        error(items[i].origin.line, fmt::format("'groups[{}]' is not a regular expression: '{}' ({})", i,
                                                items[i].value, e.what()));
      }
    }
  }

  void setup(const toml::node& n) {
    const auto* t = table_of(n, "setup");
    if (!t) return;
    const std::string where = " in [" + prefix_ + "setup]";
    for (auto&& [k, node] : *t) {
      const std::string key(k.str());
      if (!one_of(key, kSetupKeys)) {
        unknown(k, kSetupKeys, where);
        continue;
      }
      if (auto v = string_of(node, "setup." + key))
        (key == "host" ? cfg_.setup_host : cfg_.setup_worker) = Value<std::string>{*v, origin(node)};
    }
  }

  void suites(const toml::node& n) {
    const auto* arr = n.as_array();
    if (!arr) {
      error(n, fmt::format("'suite' must be an array of tables ([[{}suite]]), got {}", prefix_, type_name(n)));
      return;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::node& item = *arr->get(i);
      if (const auto* t = table_of(item, fmt::format("suite[{}]", i))) suite(*t);
    }
  }

  void suite(const toml::table& t);

  std::string file_;
  fs::path folder_;
  std::string prefix_;  // "tool.dtest." in a pyproject.toml, for table names in messages
  Config& cfg_;
  std::vector<Problem> problems_;
};

void Loader::suite(const toml::table& t) {
  Suite s;
  s.origin = origin(t);
  s.cwd = folder_.string();
  const int at = s.origin.line;
  // The kind first: which keys are valid depends on it.
  bool known = false;
  if (const toml::node* k = t.get("kind")) {
    if (auto v = enum_of(*k, "kind", kKinds)) {
      s.kind = *v;
      known = true;
    }
  } else {
    error(at, fmt::format("suite is missing required key 'kind' (one of {})", join(kKinds, ", ")));
  }
  std::vector<std::string_view> candidates;  // keys of this kind (of any kind when unknown)
  for (const auto& [key, owner] : kSuiteKeys)
    if (!known || owner.empty() || owner == s.kind) candidates.push_back(key);

  std::map<std::string, int> seen;  // present keys (valid or not) -> line
  const std::string where = " in [[" + prefix_ + "suite]]";
  for (auto&& [k, node] : t) {
    const std::string key(k.str());
    if (key == "kind") continue;
    const auto def = std::find_if(kSuiteKeys.begin(), kSuiteKeys.end(), [&](const auto& p) { return p.first == key; });
    if (def == kSuiteKeys.end()) {
      unknown(k, candidates, where);
      continue;
    }
    if (known && !def->second.empty() && def->second != s.kind) {
      error(line_of(k.source()), fmt::format("'{}' is not a key of a {} suite", key, s.kind));
      continue;
    }
    seen[key] = line_of(node.source());
    if (key == "binaries") {
      for (auto& v : paths_of(node, key)) s.binaries.push_back(std::move(v.value));
    } else if (key == "files") {
      for (auto& v : paths_of(node, key)) s.files.push_back(std::move(v.value));
    } else if (key == "labels" || key == "args") {
      for (auto& v : strings_of(node, key)) (key == "labels" ? s.labels : s.args).push_back(std::move(v.value));
    } else if (key == "build_dir" || key == "cwd") {
      if (auto v = nonempty_of(node, key)) (key == "cwd" ? s.cwd : s.build_dir) = absolute(*v);
    } else if (key == "run" || key == "list" || key == "result_file") {
      if (auto v = nonempty_of(node, key)) (key == "run" ? s.run : key == "list" ? s.list : s.result_file) = *v;
    } else if (key == "python" || key == "name") {
      if (auto v = string_of(node, key)) (key == "python" ? s.python : s.name) = *v;
    } else if (key == "format") {
      if (auto v = enum_of(node, key, kFormats)) s.format = *v;
    } else if (key == "batch") {
      if (auto v = whole_of(node, key, 1)) s.batch = *v;
    } else if (key == "timeout") {
      s.timeout = seconds_of(node, key);
    } else if (key == "env") {
      if (const auto* env = table_of(node, key)) {
        for (auto&& [name, value] : *env)
          if (auto v = string_of(value, fmt::format("env.{}", name.str()))) s.env[std::string(name.str())] = *v;
      }
    }
  }

  if (s.kind == "gtest" && !seen.contains("binaries")) {
    error(at, "gtest suite is missing required key 'binaries'");
  } else if (s.kind == "ctest" && !seen.contains("build_dir")) {
    error(at, "ctest suite is missing required key 'build_dir'");
  } else if (s.kind == "command") {
    if (!seen.contains("run")) error(at, "command suite is missing required key 'run'");
    const bool list = seen.contains("list"), files = seen.contains("files");
    if (list && files)
      error(at, "command suite has both 'list' and 'files'; give exactly one");
    else if (!list && !files)
      error(at, "command suite needs one of 'list' (a command printing test ids) or 'files' (globs)");
    // Format exit runs one test per process: its exit code is the outcome.
    if (s.format == "exit" && s.batch > 1)
      error(seen["batch"], fmt::format("'batch' must be 1 with format 'exit' (one test per run), got {}", s.batch));
    if (s.format == "exit" && seen.contains("result_file"))
      error(seen["result_file"], "'result_file' needs format 'junit' or 'tap' (format 'exit' reads only the exit code)");
  }
  cfg_.suites.push_back(std::move(s));
}

std::string where(const std::string& path, int line) {
  return line > 0 ? fmt::format("{}:{}", path, line) : path;
}

bool read_file(const std::string& path, std::string& text, std::string& why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    why = std::strerror(errno);
    return false;
  }
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      why = std::strerror(errno);  // e.g. a directory: EISDIR
      ::close(fd);
      return false;
    }
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return true;
}

// Whether a pyproject.toml has a [tool.dtest] table. When the file is not
// valid TOML, a line that starts the table decides: then load() reports the
// syntax error instead of dtest silently ignoring its settings.
bool has_dtest_table(const fs::path& p) {
  std::string text, why;
  if (!read_file(p.string(), text, why)) return false;  // unreadable: not ours to judge
  try {
    const toml::table doc = toml::parse(text, std::string_view(p.string()));
    return doc["tool"]["dtest"].node() != nullptr;
  } catch (const toml::parse_error&) {
  }
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t' || line.front() == '[')) line.remove_prefix(1);
    if (!line.starts_with("tool.dtest")) continue;
    line.remove_prefix(10);
    if (line.empty() || std::string_view(" \t.=]").find(line.front()) != std::string_view::npos) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> find(const std::string& start_dir, const std::string& ceiling) {
  std::error_code ec;
  auto normal = [&ec](const std::string& d) {
    fs::path p = fs::absolute(d, ec).lexically_normal();
    if (p.has_parent_path() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
    return p;
  };
  fs::path dir = normal(start_dir);
  if (ec) return std::nullopt;
  const fs::path stop = ceiling.empty() ? fs::path() : normal(ceiling);
  for (;;) {
    const fs::path toml = dir / "dtest.toml";
    if (fs::exists(toml, ec) && !fs::is_directory(toml, ec)) return toml.string();
    const fs::path py = dir / "pyproject.toml";
    if (fs::is_regular_file(py, ec) && has_dtest_table(py)) return py.string();
    if (dir == stop || dir == dir.root_path()) break;
    dir = dir.parent_path();
  }
  return std::nullopt;
}

Config load(const std::string& path, std::vector<std::string>& errors) {
  std::string text, why;
  if (!read_file(path, text, why)) {
    errors.push_back(fmt::format("{}: cannot read: {}", path, why));
    return {};
  }
  return load_string(text, path, fs::path(path).filename() == "pyproject.toml", errors);
}

Config load_string(std::string_view text, const std::string& path, bool pyproject,
                   std::vector<std::string>& errors) {
  Config cfg;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec).lexically_normal();
  cfg.path = abs.string();
  cfg.rootdir = abs.parent_path().string();
  toml::table doc;
  try {
    doc = toml::parse(text, std::string_view(path));
  } catch (const toml::parse_error& e) {
    errors.push_back(fmt::format("{}:{}:{}: TOML syntax error: {}", path, e.source().begin.line,
                                 e.source().begin.column, e.description()));
    return cfg;
  }
  const toml::table* t = &doc;
  if (pyproject) {
    const toml::node* n = doc["tool"]["dtest"].node();
    if (!n) {
      errors.push_back(path + ": no [tool.dtest] table");
      return cfg;
    }
    t = n->as_table();
    if (!t) {
      errors.push_back(fmt::format("{}: 'tool.dtest' must be a table, got {}", where(path, line_of(n->source())),
                                   type_name(*n)));
      return cfg;
    }
  }
  Loader loader(path, abs.parent_path(), pyproject, cfg);
  loader.top(*t);
  // toml++ iterates keys in sorted order; report in file order.
  auto& problems = loader.problems();
  std::stable_sort(problems.begin(), problems.end(), [](const Problem& a, const Problem& b) { return a.line < b.line; });
  for (const auto& p : problems) errors.push_back(fmt::format("{}: {}", where(path, p.line), p.message));
  return cfg;
}

}  // namespace dtest::config
