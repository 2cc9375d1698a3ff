#include "master/cli.h"

#include <cmath>
#include <csignal>
#include <filesystem>
#include <map>
#include <regex>
#include <random>
#include <sched.h>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "gateway/gateway.h"
#include "master/config.h"
#include "master/repository.h"
#include "master/sources.h"
#include "master/session.h"
#include "master/sync_command.h"
#include "sync/ignore.h"
#include "xspec/xspec.h"

namespace dtest {

namespace {

extern "C" void on_interrupt(int sig) {
  if (g_interrupt_signal.exchange(sig) != 0) {
    // Second Ctrl-C: stop now. Agents get SIGTERM through PDEATHSIG and
    // still kill their tests.
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

int cpu_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

std::string random_uid() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}{:08x}{:08x}", rd(), rd(), rd(), rd());
}

int cmd_spec(const std::vector<std::string>& specs, std::ostream& out, std::ostream& err) {
  std::vector<std::string> errors;
  auto parsed = xspec::parse_all(specs, errors);
  for (const auto& e : errors) err << "dtest: error: " << e << "\n";
  if (!errors.empty()) return kExitUsageError;
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& s : parsed) arr.push_back(xspec::to_json(s));
  out << arr.dump(2) << "\n";
  return kExitOk;
}

std::string cache_dir() {
  if (const char* d = std::getenv("DTEST_CACHE_DIR"); d && *d) return d;
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/dtest";
  return {};
}

// --rsyncdir roots: absolute, normalised, existing directories with distinct
// basenames (each becomes <workdir>/<basename> on the other side).
std::vector<std::string> check_roots(const std::vector<std::string>& dirs, std::vector<std::string>& errors) {
  namespace fs = std::filesystem;
  std::vector<std::string> roots;
  std::map<std::string, std::string> by_name;
  for (const auto& d : dirs) {
    std::error_code ec;
    fs::path p = fs::absolute(d, ec).lexically_normal();
    if (p.has_parent_path() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
    if (!fs::is_directory(p, ec)) {
      errors.push_back("--rsyncdir " + d + ": not a directory");
      continue;
    }
    const std::string name = p.filename().string();
    if (name.empty() || p == p.root_path()) {
      errors.push_back("--rsyncdir " + d + ": cannot sync the file system root");
      continue;
    }
    if (auto it = by_name.find(name); it != by_name.end()) {
      errors.push_back("--rsyncdir " + d + ": same name '" + name + "' as --rsyncdir " + it->second +
                       " (both would land in <workdir>/" + name + ")");
      continue;
    }
    by_name[name] = d;
    roots.push_back(p.string());
  }
  return roots;
}

// --timeout SECONDS: a number >= 0 (0: no limit); NaN, infinities,
// negatives and trailing junk are usage errors.
double parse_timeout(const std::string& text, std::vector<std::string>& errors) {
  double v = -1;
  try {
    std::size_t used = 0;
    v = std::stod(text, &used);
    if (used != text.size()) v = -1;
  } catch (const std::exception&) {
    v = -1;
  }
  if (!(v >= 0) || !std::isfinite(v)) {
    errors.push_back("--timeout expects a number of seconds >= 0 (0 = no limit), got '" + text + "'");
    return 0;
  }
  return v;
}

// --maxfail N: a whole number >= 0 (0: never stop).
int parse_maxfail(const std::string& text, std::vector<std::string>& errors) {
  try {
    std::size_t used = 0;
    const long v = std::stol(text, &used);
    if (used == text.size() && v >= 0 && v <= 1'000'000'000) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  errors.push_back("--maxfail expects a whole number >= 0 (0 = no limit), got '" + text + "'");
  return 0;
}

// --retries, --count, --repeat-until-fail: a whole number >= `least`.
int parse_whole(const std::string& text, const std::string& option, long least, std::vector<std::string>& errors) {
  try {
    std::size_t used = 0;
    const long v = std::stol(text, &used);
    if (used == text.size() && v >= least && v <= 1'000'000) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  errors.push_back(fmt::format("{} expects a whole number >= {}, got '{}'", option, least, text));
  return static_cast<int>(least);
}

std::vector<std::string> ignore_patterns(const std::vector<std::string>& extra, std::vector<std::string>& errors) {
  std::vector<std::string> all = sync::IgnoreRules::defaults();
  all.insert(all.end(), extra.begin(), extra.end());
  try {
    sync::IgnoreRules check(all);
  } catch (const std::invalid_argument& e) {
    errors.push_back(std::string("--rsyncignore: ") + e.what());
  }
  return all;
}

// The config file's folder, or the working directory: where .dtest/ lives.
std::string find_rootdir(const std::string& config_file) {
  namespace fs = std::filesystem;
  const std::string cwd = fs::current_path().string();
  if (!config_file.empty()) return fs::absolute(config_file).lexically_normal().parent_path().string();
  if (auto found = config::find(cwd)) return fs::path(*found).parent_path().string();
  return cwd;
}

// --show-config: every merged setting and where it came from.
void show_config(const config::Config& cfg, const RunOptions& opts, const std::vector<std::pair<std::string, std::string>>& settings,
                 std::ostream& out) {
  out << "rootdir: " << opts.rootdir << "\n";
  out << "configfile: " << (cfg.path.empty() ? "(none)" : cfg.path) << "\n";
  for (const auto& [k, v] : settings) out << k << ": " << v << "\n";
  out << "suites:\n";
  for (std::size_t k = 0; k < opts.binaries.size(); ++k) out << "  - " << describe_source(opts, k) << "\n";
}

std::string origin_text(const config::Origin& o) { return o.file.empty() ? "command line" : o.str(); }

}  // namespace

int dtest_main(int argc_in, char** argv_in, std::ostream& out, std::ostream& err) {
  // Everything after `--` goes to pytest.
  std::vector<char*> args(argv_in, argv_in + argc_in);
  std::vector<std::string> pytest_args;
  for (std::size_t i = 1; i < args.size(); ++i)
    if (std::string(args[i]) == "--") {
      for (std::size_t j = i + 1; j < args.size(); ++j) pytest_args.emplace_back(args[j]);
      args.resize(i);
      break;
    }
  const int argc = static_cast<int>(args.size());
  char** argv = args.data();
  CLI::App app{"dtest: run test suites across local workers and remote hosts", "dtest"};
  app.set_version_flag("--version", std::string("dtest ") + DTEST_VERSION);
  std::vector<std::string> binaries;
  std::string numprocesses;
  std::vector<std::string> tx;
  std::string dist;
  int quiet = 0, verbose = 0;
  std::string junitxml;
  std::string report_log;
  bool continue_on_errors = false;
  double hello_timeout = 30;
  std::vector<std::string> rsyncdirs, rsyncignore;

  app.add_option("binaries", binaries,
                 "what to run: GoogleTest binaries, a CMake build tree, pytest paths or node ids (default: the "
                 "config file's [[suite]]s, else the working directory's build tree or pytest project); "
                 "arguments after -- go to pytest");
  std::string config_file;
  bool show_config_flag = false;
  app.add_option("-c,--config", config_file, "the config file (default: the nearest dtest.toml, or pyproject.toml "
                                               "with [tool.dtest], from the working directory up)");
  app.add_flag("--show-config", show_config_flag, "print the merged settings and where each came from, then exit");
  app.add_option("-n,--numprocesses", numprocesses, "number of local workers, or 'auto' (one per CPU); means --tx N*popen");
  app.add_option("--tx", tx, "gateway xspec, repeatable: popen, 3*popen//chdir=/tmp/w, ...")
      ->allow_extra_args(false);
  app.add_option("--dist", dist,
                 "load (default with workers), loadfile (a binary stays on one worker), loadscope (a test "
                 "suite stays on one worker), loadgroup, each (whole suite on every gateway), no (serial)")
      ->check(CLI::IsMember({"load", "loadfile", "loadscope", "loadgroup", "each", "no"}));
  app.add_flag("-q,--quiet", quiet, "less output");
  app.add_flag("-v,--verbose", verbose, "one line per test");
  app.add_option("--junitxml", junitxml, "write a JUnit XML report to PATH");
  app.add_option("--report-log", report_log,
                 "write the run's events (gateways, each test's result, the summary) to PATH as JSON Lines, as "
                 "they happen");
  app.add_flag("--continue-on-collection-errors", continue_on_errors,
               "run the tests that were collected even if some binaries failed to list");
  app.add_option("--gateway-timeout", hello_timeout, "seconds for a gateway's agent to say hello (default 30)");
  std::string timeout_text, maxfail_text;
  bool exitfirst = false;
  app.add_option("--timeout", timeout_text,
                 "seconds one test may run before its process is killed (outcome: timeout); 0 = no limit")
      ->type_name("SECONDS");
  app.add_flag("-x,--exitfirst", exitfirst, "stop after the first failure (--maxfail 1)");
  app.add_option("--maxfail", maxfail_text,
                 "stop after N failures (failed, crashed, timeout): the rest is not run; 0 = never")
      ->type_name("N");
  std::string retries_text, count_text, until_fail_text;
  bool flaky_fails = false, failed_first = false;
  app.add_option("--retries", retries_text,
                 "run a test that failed, crashed or timed out again, up to N more times (in a new batch); "
                 "passing on a retry makes it flaky")
      ->type_name("N");
  app.add_flag("--flaky-fails", flaky_fails, "flaky tests (passed on a retry) make the run fail (exit code 1)");
  app.add_flag("--ff,--failed-first", failed_first,
               "run last run's failures first (always the order when the run repository knows them; "
               "accepted for pytest compatibility)");
  app.add_option("--count", count_text, "run every selected test N times; results are suffixed [k/N]")
      ->type_name("N");
  app.add_option("--repeat-until-fail", until_fail_text,
                 "run the whole session up to N times, stopping after the first that fails")
      ->type_name("N");

  app.add_option("--rsyncdir", rsyncdirs,
                 "directory to mirror into each remote gateway's work dir (as <workdir>/<basename>), repeatable")
      ->allow_extra_args(false);
  app.add_option("--rsyncignore", rsyncignore, "gitignore-style pattern to leave out of --rsyncdir trees, repeatable")
      ->allow_extra_args(false);

  auto* spec_cmd = app.add_subcommand("spec", "parse xspecs and print them as JSON");
  std::vector<std::string> spec_args;
  spec_cmd->add_option("specs", spec_args, "xspecs")->required();

  std::vector<std::string> group_regexes;
  app.add_option("--group", group_regexes,
                 "with --dist loadgroup: tests whose id (binary::Suite.Name) matches this regex run on one "
                 "worker, repeatable (one group per regex)")
      ->allow_extra_args(false);
  bool last_failed = false;
  app.add_flag("--lf,--last-failed", last_failed, "run only the tests that failed in the last run (all if none did)");

  // The run repository (<cwd>/.dtest).
  auto* last_cmd = app.add_subcommand("last", "show the last run's results again, with worker tags");
  auto* failing_cmd = app.add_subcommand("failing", "print the ids of the tests that failed in the last run");
  auto* slowest_cmd = app.add_subcommand("slowest", "the tests with the longest duration estimates");
  std::size_t slowest_n = 10;
  slowest_cmd->add_option("n", slowest_n, "how many (default 10)");
  auto* history_cmd = app.add_subcommand("history", "one test's outcomes and durations over the recorded runs");
  std::string history_test;
  std::size_t history_limit = 20;
  history_cmd->add_option("test", history_test, "test id, as `dtest failing` prints them")->required();
  history_cmd->add_option("--limit", history_limit, "runs to show (default 20, 0 = all)");

  auto* disconnect_cmd =
      app.add_subcommand("disconnect", "close warm ssh connections (all, or those to the given ssh= targets)");
  std::vector<std::string> disconnect_targets;
  disconnect_cmd->add_option("targets", disconnect_targets, "ssh= values, as in --tx ssh=VALUE");

  auto* sync_cmd = app.add_subcommand("sync", "mirror directories to gateways' work dirs and report what moved");
  std::vector<std::string> sync_tx, sync_dirs, sync_ignore;
  sync_cmd->add_option("--tx", sync_tx, "gateway xspec, repeatable")->required()->allow_extra_args(false);
  sync_cmd->add_option("--rsyncignore", sync_ignore, "gitignore-style pattern to leave out, repeatable")
      ->allow_extra_args(false);
  sync_cmd->add_option("dirs", sync_dirs, "directories to mirror")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::CallForVersion&) {
    out << "dtest " << DTEST_VERSION << "\n";
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    err << "dtest: error: " << e.what() << "\n";
    return kExitUsageError;
  }
  if (*spec_cmd) return cmd_spec(spec_args, out, err);
  if (*disconnect_cmd) return gateway::close_warm_connections(disconnect_targets, out);
  if (*last_cmd || *failing_cmd || *slowest_cmd || *history_cmd) {
    try {
      auto repo = Repository::open_existing(find_rootdir(config_file));
      if (*failing_cmd) {
        if (!repo) {
          err << "dtest: " << kNoRunsMessage << "\n";
          return kExitOk;
        }
        out << format_failing(repo->failing());
      } else if (*last_cmd) {
        out << format_last(repo ? repo->last_run() : std::nullopt);
      } else if (!repo) {
        out << kNoRunsMessage << "\n";
      } else if (*slowest_cmd) {
        out << format_slowest(repo->slowest(slowest_n));
      } else {
        out << format_history(repo->history(history_test, history_limit));
      }
    } catch (const std::exception& e) {
      err << "dtest: error: " << e.what() << "\n";
      return kExitInternalError;
    }
    return kExitOk;
  }
  if (*sync_cmd) {
    std::vector<std::string> errs;
    SyncCommandOptions so;
    so.specs = xspec::parse_all(sync_tx, errs);
    so.roots = check_roots(sync_dirs, errs);
    so.ignore = ignore_patterns(sync_ignore, errs);
    so.cache_dir = cache_dir();
    if (!so.cache_dir.empty()) so.cache_dir += "/sync";
    for (const auto& e : errs) err << "dtest: error: " << e << "\n";
    if (!errs.empty()) return kExitUsageError;
    gateway::OpenOptions gopts;
    gopts.default_agent = gateway::default_agent_path();
    so.agent = gopts.default_agent;
    std::signal(SIGPIPE, SIG_IGN);
    return run_sync_command(
        so, [gopts](const xspec::Spec& s, const std::string&) { return gateway::open(s, gopts); }, out, err);
  }

  std::vector<std::string> errors;
  namespace fs = std::filesystem;
  // The config file, merged under the command line: lists add up (tx,
  // rsyncdir, rsyncignore, groups), single values are overridden.
  config::Config cfg;
  {
    std::optional<std::string> path;
    if (!config_file.empty()) path = config_file;
    else path = config::find(fs::current_path().string());
    if (path) {
      std::vector<std::string> cfg_errors;
      cfg = config::load(*path, cfg_errors);
      if (!cfg_errors.empty()) {
        for (const auto& e : cfg_errors) err << "dtest: error: " << e << "\n";
        return kExitUsageError;
      }
    }
  }
  std::vector<std::pair<std::string, std::string>> shown;  // --show-config
  auto note_value = [&](const std::string& key, const std::string& value, const std::string& from) {
    shown.emplace_back(key, value + "  (" + from + ")");
  };
  if (numprocesses.empty() && cfg.numprocesses) {
    numprocesses = cfg.numprocesses->value;
    note_value("numprocesses", numprocesses, origin_text(cfg.numprocesses->origin));
  } else if (!numprocesses.empty()) {
    note_value("numprocesses", numprocesses, "command line");
  }
  if (dist.empty() && cfg.dist) {
    dist = cfg.dist->value;
    note_value("dist", dist, origin_text(cfg.dist->origin));
  } else if (!dist.empty()) {
    note_value("dist", dist, "command line");
  }
  // Lists: the file's values first, then the command line's.
  auto merge_list = [&](const char* key, const std::vector<config::Value<std::string>>& from_file,
                        std::vector<std::string>& from_cli) {
    std::vector<std::string> merged;
    for (const auto& v : from_file) {
      merged.push_back(v.value);
      note_value(key, v.value, origin_text(v.origin));
    }
    for (const auto& v : from_cli) note_value(key, v, "command line");
    merged.insert(merged.end(), from_cli.begin(), from_cli.end());
    from_cli = std::move(merged);
  };
  merge_list("tx", cfg.tx, tx);
  merge_list("rsyncdir", cfg.rsyncdirs, rsyncdirs);
  merge_list("rsyncignore", cfg.rsyncignore, rsyncignore);
  merge_list("group", cfg.groups, group_regexes);
  if (timeout_text.empty() && cfg.timeout) {
    timeout_text = fmt::format("{}", cfg.timeout->value);
    note_value("timeout", timeout_text, origin_text(cfg.timeout->origin));
  } else if (!timeout_text.empty()) {
    note_value("timeout", timeout_text, "command line");
  }
  if (maxfail_text.empty() && !exitfirst && cfg.maxfail) {
    maxfail_text = std::to_string(cfg.maxfail->value);
    note_value("maxfail", maxfail_text, origin_text(cfg.maxfail->origin));
  }
  if (retries_text.empty() && cfg.retries) {
    retries_text = std::to_string(cfg.retries->value);
    note_value("retries", retries_text, origin_text(cfg.retries->origin));
  }
  if (cfg.setup_host) note_value("setup.host", cfg.setup_host->value, origin_text(cfg.setup_host->origin));
  if (cfg.setup_worker) note_value("setup.worker", cfg.setup_worker->value, origin_text(cfg.setup_worker->origin));

  std::vector<std::string> spec_texts;
  if (!numprocesses.empty()) {
    int n = 0;
    if (numprocesses == "auto") {
      n = cpu_count();
    } else {
      try {
        std::size_t used = 0;
        n = std::stoi(numprocesses, &used);
        if (used != numprocesses.size() || n < 0) throw std::invalid_argument("");
      } catch (const std::exception&) {
        errors.push_back("-n expects a number or 'auto', got '" + numprocesses + "'");
      }
    }
    if (n == 0 && errors.empty()) {
      if (dist.empty()) dist = "no";
      n = 1;
    }
    if (n > 0) spec_texts.push_back(fmt::format("{}*popen", n));
  }
  spec_texts.insert(spec_texts.end(), tx.begin(), tx.end());
  if (spec_texts.empty()) {
    spec_texts.push_back("popen");
    if (dist.empty()) dist = "no";
  }
  if (dist.empty()) dist = "load";
  std::vector<std::string> spec_errors;
  auto specs = xspec::parse_all(spec_texts, spec_errors);
  errors.insert(errors.end(), spec_errors.begin(), spec_errors.end());

  RunOptions opts;
  opts.rootdir = cfg.rootdir.empty() ? fs::current_path().string() : cfg.rootdir;
  opts.rsyncdirs = check_roots(rsyncdirs, errors);
  opts.rsyncignore = ignore_patterns(rsyncignore, errors);
  opts.sync_cache_dir = cache_dir();
  if (!opts.sync_cache_dir.empty()) opts.sync_cache_dir += "/sync";
  if (!timeout_text.empty()) opts.timeout = parse_timeout(timeout_text, errors);
  if (!maxfail_text.empty()) {
    opts.maxfail = parse_maxfail(maxfail_text, errors);
    opts.maxfail_option = "--maxfail " + std::to_string(opts.maxfail);
  }
  // -x is --maxfail 1; given with --maxfail, the stricter limit counts.
  if (exitfirst && opts.maxfail != 1) {
    opts.maxfail = 1;
    opts.maxfail_option = "-x";
  }
  if (!retries_text.empty()) opts.retries = parse_whole(retries_text, "--retries", 0, errors);
  opts.flaky_fails = flaky_fails;
  // --ff: failures first is the scheduler's order whenever the repository
  // knows last run's failures (with or without duration estimates); the flag
  // changes nothing.
  (void)failed_first;
  if (!count_text.empty()) opts.count = parse_whole(count_text, "--count", 1, errors);
  int until_fail = 0;
  if (!until_fail_text.empty()) until_fail = parse_whole(until_fail_text, "--repeat-until-fail", 1, errors);
  std::vector<std::string> notes;
  resolve_sources(binaries, pytest_args, cfg, fs::current_path().string(), opts, errors, notes);
  if (show_config_flag) {
    for (const auto& e : errors) err << "dtest: error: " << e << "\n";
    show_config(cfg, opts, shown, out);
    return errors.empty() ? kExitOk : kExitUsageError;
  }
  if (!errors.empty()) {
    for (const auto& e : errors) err << "dtest: error: " << e << "\n";
    return kExitUsageError;
  }

  opts.specs = std::move(specs);
  opts.dist = dist;
  opts.verbosity = verbose > 0 ? 1 : (quiet > 0 ? -1 : 0);
  opts.junitxml = junitxml;
  if (!report_log.empty()) {
    try {
      opts.event_log = EventLog::open(report_log);
    } catch (const std::exception& e) {
      err << "dtest: error: " << e.what() << "\n";
      return kExitUsageError;
    }
  }
  for (const auto& n : notes) out << "dtest: " << n << "\n";
  opts.testrunuid = random_uid();
  opts.continue_on_collection_errors = continue_on_errors;
  opts.hello_timeout = hello_timeout;
  opts.record = true;
  opts.args.assign(argv_in, argv_in + argc_in);  // with what followed --
  opts.last_failed = last_failed;
  for (const auto& g : group_regexes) {
    try {
      std::regex check(g);
    } catch (const std::regex_error& e) {
      err << "dtest: error: --group '" << g << "': not a regular expression (" << e.what() << ")\n";
      return kExitUsageError;
    }
  }
  opts.groups = group_regexes;
  if (cfg.setup_host) opts.setup_host = cfg.setup_host->value;
  if (cfg.setup_worker) opts.setup_worker = cfg.setup_worker->value;
  // History from the run repository: last failures (first in the queue, and
  // all that --lf runs) and duration estimates (longest first).
  try {
    if (auto repo = Repository::open_existing(opts.rootdir)) {
      opts.failed_ids = repo->failing();
      opts.estimates = repo->estimates();
    }
  } catch (const std::exception& e) {
    err << "dtest: warning: the run repository cannot be read (scheduling without history): " << e.what() << "\n";
  }

  gateway::OpenOptions gopts;
  gopts.default_agent = gateway::default_agent_path();
  auto factory = [gopts](const xspec::Spec& s, const std::string&) { return gateway::open(s, gopts); };

  g_interrupt_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  std::signal(SIGPIPE, SIG_IGN);
  int code = kExitInternalError;
  // --repeat-until-fail N: whole sessions, one after the other, until one
  // fails (any exit code but 0) or N passed.
  const int iterations = until_fail > 0 ? until_fail : 1;
  for (int it = 1; it <= iterations; ++it) {
    if (until_fail > 0) {
      out << fmt::format("dtest: --repeat-until-fail: iteration {} of {}\n", it, iterations);
      out.flush();
    }
    RunOptions run_opts = opts;
    if (it > 1) run_opts.testrunuid = random_uid();
    try {
      Session session(std::move(run_opts), factory, out);
      code = session.run();
    } catch (const std::exception& e) {
      err << "dtest: error: internal: " << e.what() << "\n";
      code = kExitInternalError;
    }
    if (until_fail == 0) break;
    if (code != kExitOk) {
      out << fmt::format("dtest: --repeat-until-fail: iteration {} of {} failed (exit code {})\n", it, iterations,
                         code);
      break;
    }
    if (it == iterations)
      out << fmt::format("dtest: --repeat-until-fail: all {} iterations passed\n", iterations);
    if (g_interrupt_signal.load()) break;
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  // pytest-cov has no controller process to combine and report under dtest
  // (docs/design.md, "Suite kinds"): say where the data is.
  bool cov = false;
  for (std::size_t k = 0; k < opts.kinds.size(); ++k)
    if (opts.kinds[k] == "pytest" && opts.descriptors[k].contains("args"))
      for (const auto& a : opts.descriptors[k]["args"])
        if (a.is_string() && a.get<std::string>().rfind("--cov", 0) == 0) cov = true;
  if (cov)
    out << "dtest: pytest-cov: each pytest worker saved its coverage data as .coverage.* files in its folder "
           "(on its host); `coverage combine` merges them, then `coverage report` (or html, xml) reports\n";
  return code;
}

}  // namespace dtest
