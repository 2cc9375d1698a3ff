#include "master/repository.h"

#include <sqlite3.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <sys/stat.h>
#include <fstream>
#include <memory>
#include <random>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "master/terminal_reporter.h"

namespace dtest {

namespace fs = std::filesystem;

namespace {

// "dtst": marks the file as a dtest repository (PRAGMA application_id).
constexpr std::int32_t kApplicationId = 0x64747374;
constexpr int kBusyTimeoutMs = 10'000;

// migrations[v] takes the schema from version v to v + 1; the schema version
// (PRAGMA user_version) is migrations.size().
const std::vector<std::string_view>& migrations() {
  static const std::vector<std::string_view> m = {
      // 0 -> 1
      R"sql(
CREATE TABLE runs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  started_at REAL NOT NULL,          -- seconds since the Unix epoch
  finished_at REAL NOT NULL,
  rootdir TEXT NOT NULL,
  args TEXT NOT NULL,                -- JSON array of strings
  exit_code INTEGER NOT NULL,
  code_id TEXT NOT NULL DEFAULT '',  -- '' = unknown
  dtest_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE results(
  id INTEGER PRIMARY KEY,            -- arrival order within a run
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  test_id TEXT NOT NULL,
  outcome TEXT NOT NULL,             -- to_string(Outcome)
  duration REAL NOT NULL,            -- seconds
  worker TEXT NOT NULL,
  gateway TEXT NOT NULL,
  message TEXT NOT NULL
);
CREATE INDEX results_by_run ON results(run_id, outcome);
CREATE INDEX results_by_test ON results(test_id, run_id);
CREATE TABLE estimates(
  test_id TEXT PRIMARY KEY,
  mean REAL NOT NULL,                -- running average duration, seconds
  samples INTEGER NOT NULL,          -- durations seen (0: none yet)
  last_outcome TEXT NOT NULL,
  last_run INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX estimates_by_mean ON estimates(mean DESC, test_id);
)sql",
  };
  return m;
}

std::int64_t schema_version() { return static_cast<std::int64_t>(migrations().size()); }

// "'failed','crashed','timeout'" for SQL IN lists, spelled as the rows are.
std::string failure_list() {
  std::string s;
  for (Outcome o : {Outcome::failed, Outcome::crashed, Outcome::timeout}) {
    if (!s.empty()) s += ",";
    s += "'" + std::string(to_string(o)) + "'";
  }
  return s;
}

double to_seconds(WallClock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

WallClock::time_point from_seconds(double s) {
  return WallClock::time_point(
      std::chrono::round<WallClock::duration>(std::chrono::duration<double>(s)));
}

std::string hint_for(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return "; move it away (or delete .dtest/) to start a new repository";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return fmt::format("; another dtest held it locked for more than {} s", kBusyTimeoutMs / 1000);
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return "; check the permissions of .dtest/ and its files";
    default:
      return "";
  }
}

[[noreturn]] void fail(sqlite3* db, const std::string& path, int rc, std::string_view doing) {
  const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  throw RepositoryError(fmt::format("{}: {} ({}){}", path, msg, doing, hint_for(rc)));
}

[[noreturn]] void fail(const std::string& path, std::string_view problem) {
  throw RepositoryError(fmt::format("{}: {}", path, problem));
}

void exec(sqlite3* db, const std::string& path, std::string_view sql) {
  const std::string s(sql);
  const int rc = sqlite3_exec(db, s.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    const std::string doing = s.substr(0, s.find_first_of("(\n"));
    fail(db, path, rc, doing.empty() ? "updating the schema" : doing);
  }
}

// A prepared statement; columns and parameters as in SQLite (params from 1).
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& path, std::string_view sql) : db_(db), path_(path) {
    const int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &st_, nullptr);
    if (rc != SQLITE_OK) fail(db_, path_, rc, "preparing a query");
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, std::string_view s) {
    check(sqlite3_bind_text64(st_, i, s.data(), s.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
    return *this;
  }
  Stmt& bind(int i, const std::string& s) { return bind(i, std::string_view(s)); }
  Stmt& bind(int i, const char* s) { return bind(i, std::string_view(s)); }
  Stmt& bind(int i, double v) {
    check(sqlite3_bind_double(st_, i, v));
    return *this;
  }
  Stmt& bind(int i, std::int64_t v) {
    check(sqlite3_bind_int64(st_, i, v));
    return *this;
  }
  Stmt& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }

  // True with a row to read, false when done.
  bool step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(db_, path_, rc, "reading or writing");
  }
  void run() {
    while (step()) {
    }
  }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }

  std::string text(int col) {
    const auto* p = sqlite3_column_text(st_, col);
    const int n = sqlite3_column_bytes(st_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n)) : std::string();
  }
  double real(int col) { return sqlite3_column_double(st_, col); }
  std::int64_t integer(int col) { return sqlite3_column_int64(st_, col); }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail(db_, path_, rc, "binding a value");
  }
  sqlite3* db_;
  const std::string& path_;
  sqlite3_stmt* st_ = nullptr;
};

// A transaction rolled back unless committed. Writers take the write lock up
// front (IMMEDIATE): a deferred transaction that reads first and then writes
// can fail with SQLITE_BUSY in WAL mode without waiting.
class Transaction {
 public:
  Transaction(sqlite3* db, const std::string& path, bool write) : db_(db), path_(path) {
    exec(db_, path_, write ? "BEGIN IMMEDIATE" : "BEGIN");
  }
  ~Transaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  void commit() {
    exec(db_, path_, "COMMIT");
    open_ = false;
  }

 private:
  sqlite3* db_;
  const std::string& path_;
  bool open_ = true;
};

Outcome outcome_of(const std::string& path, const std::string& s) {
  if (auto o = outcome_from_string(s)) return *o;
  fail(path, fmt::format("unknown outcome '{}' (written by a newer dtest?)", s));
}

std::vector<std::string> args_of(const std::string& path, std::int64_t run, const std::string& s) {
  const auto j = nlohmann::json::parse(s, nullptr, false);
  std::vector<std::string> out;
  bool ok = j.is_array();
  if (ok) {
    for (const auto& a : j) {
      if (!a.is_string()) {
        ok = false;
        break;
      }
      out.push_back(a.get<std::string>());
    }
  }
  if (!ok) fail(path, fmt::format("run {}: malformed args column", run));
  return out;
}

std::optional<RunSummary> read_run(sqlite3* db, const std::string& path, std::int64_t id) {
  Stmt q(db, path,
         "SELECT started_at, finished_at, args, exit_code, code_id, rootdir, dtest_version "
         "FROM runs WHERE id = ?1");
  q.bind(1, id);
  if (!q.step()) return std::nullopt;
  RunSummary s;
  s.id = id;
  s.started_at = from_seconds(q.real(0));
  s.finished_at = from_seconds(q.real(1));
  s.args = args_of(path, id, q.text(2));
  s.exit_code = static_cast<int>(q.integer(3));
  s.code_id = q.text(4);
  s.rootdir = q.text(5);
  s.dtest_version = q.text(6);
  Stmt rows(db, path,
            "SELECT test_id, outcome, duration, worker, gateway, message FROM results "
            "WHERE run_id = ?1 ORDER BY id");
  rows.bind(1, id);
  while (rows.step()) {
    TestRow r;
    r.test_id = rows.text(0);
    r.outcome = outcome_of(path, rows.text(1));
    r.duration = rows.real(2);
    r.worker = rows.text(3);
    r.gateway = rows.text(4);
    r.message = rows.text(5);
    s.rows.push_back(std::move(r));
  }
  return s;
}

std::string local_time(WallClock::time_point t) {
  const std::time_t tt = WallClock::to_time_t(t);
  std::tm tm{};
  if (!localtime_r(&tt, &tm)) return "?";
  char buf[32];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string(buf, n);
}

std::string upper(std::string_view s) {
  std::string u(s);
  for (auto& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}

}  // namespace

double running_mean(double mean, std::int64_t samples, double duration) {
  const double n = static_cast<double>(std::clamp<std::int64_t>(samples, 0, kEstimateWindow));
  return (mean * n + duration) / (n + 1);
}

bool updates_estimate(Outcome o) {
  return o == Outcome::passed || o == Outcome::failed || o == Outcome::xfailed;
}

bool is_recorded_failure(Outcome o) {
  return o == Outcome::failed || o == Outcome::crashed || o == Outcome::timeout;
}

// --- opening

std::string Repository::path_for(const std::string& rootdir) {
  return (fs::path(rootdir) / ".dtest" / "repo.sqlite").string();
}

Repository::Repository(const std::string& rootdir) : path_(path_for(rootdir)), rootdir_(rootdir) {
  const fs::path dir = fs::path(path_).parent_path();
  std::error_code ec;
  if (fs::create_directories(dir, ec)) {
    // Like .pytest_cache: the repository is never committed by accident.
    std::ofstream(dir / ".gitignore") << "# created by dtest\n*\n";
  } else if (ec) {
    fail(dir.string(), "cannot create the directory: " + ec.message());
  }
  open(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
}

Repository::Repository(std::string path, std::string rootdir, int flags)
    : path_(std::move(path)), rootdir_(std::move(rootdir)) {
  open(flags);
}

std::optional<Repository> Repository::open_existing(const std::string& rootdir) {
  std::string path = path_for(rootdir);
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (ec) fail(path, ec.message());
    return std::nullopt;
  }
  return Repository(std::move(path), rootdir, SQLITE_OPEN_READWRITE);
}

Repository::Repository(Repository&& o) noexcept
    : db_(std::exchange(o.db_, nullptr)), path_(std::move(o.path_)), rootdir_(std::move(o.rootdir_)) {}

Repository& Repository::operator=(Repository&& o) noexcept {
  if (this != &o) {
    sqlite3_close_v2(db_);
    db_ = std::exchange(o.db_, nullptr);
    path_ = std::move(o.path_);
    rootdir_ = std::move(o.rootdir_);
  }
  return *this;
}

Repository::~Repository() { sqlite3_close_v2(db_); }

void Repository::open(int flags) {
  const int rc = sqlite3_open_v2(path_.c_str(), &db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw RepositoryError(fmt::format("{}: cannot open: {}{}", path_, msg, hint_for(rc)));
  }
  try {
    setup();
  } catch (...) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw;
  }
}

void Repository::setup() {
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);

  // Look before changing anything: a file of another program stays untouched.
  auto identify = [&] {
    // One statement, so one snapshot: another dtest may be creating the schema.
    Stmt q(db_, path_,
           "SELECT a.application_id, v.user_version, (SELECT count(*) FROM sqlite_master) "
           "FROM pragma_application_id() a, pragma_user_version() v");
    if (!q.step()) fail(path_, "cannot read the database header");
    const auto app = q.integer(0), version = q.integer(1), n = q.integer(2);
    if (app != kApplicationId && (app != 0 || version != 0 || n != 0))
      fail(path_, "not a dtest repository (an SQLite database of another program); move it away");
    if (version > schema_version())
      fail(path_, fmt::format("written by a newer dtest (repository schema version {}; this dtest "
                              "reads up to version {}); upgrade dtest or move .dtest/ away",
                              version, schema_version()));
    return version;
  };
  identify();

  // WAL: readers never wait for the writer and the writer appends, so two
  // runs sharing the repository only queue for the short write transaction.
  // (Filesystems without shared memory keep the rollback journal: slower,
  // equally safe.)
  // Two connections switching a fresh file at once can deadlock on the
  // exclusive lock the switch needs; SQLite then answers SQLITE_BUSY at once,
  // without its busy handler, so wait here.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  for (;;) {
    const int rc = sqlite3_exec(db_, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) break;
    if ((rc & 0xff) != SQLITE_BUSY || std::chrono::steady_clock::now() >= deadline)
      fail(db_, path_, rc, "PRAGMA journal_mode=WAL");
    // Jitter, so two waiters fall out of step.
    thread_local std::minstd_rand jitter(std::random_device{}());
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + jitter() % 20));
  }
  exec(db_, path_, "PRAGMA synchronous=NORMAL");
  exec(db_, path_, "PRAGMA foreign_keys=ON");

  // Create or migrate under the write lock; another dtest may have done it
  // since we looked.
  Transaction t(db_, path_, true);
  const auto version = identify();
  if (version < schema_version()) {
    for (auto v = static_cast<std::size_t>(version); v < migrations().size(); ++v)
      exec(db_, path_, migrations()[v]);
    exec(db_, path_, fmt::format("PRAGMA application_id={}", kApplicationId));
    exec(db_, path_, fmt::format("PRAGMA user_version={}", schema_version()));
  }
  t.commit();
}

// --- writing

std::int64_t Repository::record_run(const RunRecord& run) {
  Transaction t(db_, path_, true);
  Stmt ins_run(db_, path_,
               "INSERT INTO runs(started_at, finished_at, rootdir, args, exit_code, code_id, "
               "dtest_version) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  ins_run.bind(1, to_seconds(run.started_at))
      .bind(2, to_seconds(run.finished_at))
      .bind(3, rootdir_)
      .bind(4, nlohmann::json(run.args).dump())
      .bind(5, run.exit_code)
      .bind(6, run.code_id)
      .bind(7, DTEST_VERSION);
  ins_run.run();
  const std::int64_t id = sqlite3_last_insert_rowid(db_);

  Stmt ins_row(db_, path_,
               "INSERT INTO results(run_id, test_id, outcome, duration, worker, gateway, message) "
               "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  Stmt get_est(db_, path_, "SELECT mean, samples FROM estimates WHERE test_id = ?1");
  Stmt put_timed(db_, path_,
                 "INSERT INTO estimates(test_id, mean, samples, last_outcome, last_run) "
                 "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(test_id) DO UPDATE SET "
                 "mean = excluded.mean, samples = excluded.samples, "
                 "last_outcome = excluded.last_outcome, last_run = excluded.last_run");
  Stmt put_untimed(db_, path_,
                   "INSERT INTO estimates(test_id, mean, samples, last_outcome, last_run) "
                   "VALUES(?1, 0, 0, ?2, ?3) ON CONFLICT(test_id) DO UPDATE SET "
                   "last_outcome = excluded.last_outcome, last_run = excluded.last_run");
  for (const auto& r : run.rows) {
    // NaN or negative durations (a clock gone wrong) are kept as 0 and do not
    // move the estimate.
    const bool sane = std::isfinite(r.duration) && r.duration >= 0;
    const double d = sane ? r.duration : 0.0;
    const std::string_view outcome = to_string(r.outcome);
    ins_row.reset();
    ins_row.bind(1, id).bind(2, r.test_id).bind(3, outcome).bind(4, d).bind(5, r.worker)
        .bind(6, r.gateway).bind(7, r.message);
    ins_row.run();

    if (sane && updates_estimate(r.outcome)) {
      double mean = 0;
      std::int64_t samples = 0;
      get_est.reset();
      get_est.bind(1, r.test_id);
      if (get_est.step()) {
        mean = get_est.real(0);
        samples = get_est.integer(1);
      }
      put_timed.reset();
      put_timed.bind(1, r.test_id).bind(2, running_mean(mean, samples, d)).bind(3, samples + 1)
          .bind(4, outcome).bind(5, id);
      put_timed.run();
    } else {
      put_untimed.reset();
      put_untimed.bind(1, r.test_id).bind(2, outcome).bind(3, id);
      put_untimed.run();
    }
  }
  t.commit();
  return id;
}

std::size_t Repository::prune(std::size_t keep) {
  Transaction t(db_, path_, true);
  Stmt del(db_, path_,
           "DELETE FROM runs WHERE id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?1)");
  del.bind(1, static_cast<std::int64_t>(keep));
  del.run();
  const auto n = static_cast<std::size_t>(sqlite3_changes64(db_));
  t.commit();
  return n;
}

// --- reading

std::optional<RunSummary> Repository::run(std::int64_t id) {
  Transaction t(db_, path_, false);
  auto s = read_run(db_, path_, id);
  t.commit();
  return s;
}

std::optional<RunSummary> Repository::last_run() {
  // One read transaction: the run found is the run read.
  Transaction t(db_, path_, false);
  Stmt q(db_, path_, "SELECT max(id) FROM runs");
  const std::int64_t id = q.step() ? q.integer(0) : 0;  // NULL (no runs) reads as 0
  std::optional<RunSummary> s;
  if (id != 0) s = read_run(db_, path_, id);
  t.commit();
  return s;
}

std::size_t Repository::run_count() {
  Stmt q(db_, path_, "SELECT count(*) FROM runs");
  return q.step() ? static_cast<std::size_t>(q.integer(0)) : 0;
}

std::vector<std::string> Repository::failing() {
  Stmt q(db_, path_,
         "SELECT test_id FROM results WHERE run_id = (SELECT max(id) FROM runs) AND outcome IN (" +
             failure_list() + ") GROUP BY test_id ORDER BY min(id)");
  std::vector<std::string> ids;
  while (q.step()) ids.push_back(q.text(0));
  return ids;
}

std::unordered_map<std::string, double> Repository::estimates() {
  Stmt q(db_, path_, "SELECT test_id, mean FROM estimates WHERE samples > 0");
  std::unordered_map<std::string, double> m;
  while (q.step()) m.emplace(q.text(0), q.real(1));
  return m;
}

std::unordered_map<std::string, double> Repository::estimates(const std::vector<std::string>& ids) {
  Transaction t(db_, path_, false);
  Stmt q(db_, path_, "SELECT mean FROM estimates WHERE test_id = ?1 AND samples > 0");
  std::unordered_map<std::string, double> m;
  for (const auto& id : ids) {
    q.reset();
    q.bind(1, id);
    if (q.step()) m.emplace(id, q.real(0));
  }
  t.commit();
  return m;
}

std::vector<std::pair<std::string, double>> Repository::slowest(std::size_t n) {
  Stmt q(db_, path_,
         "SELECT test_id, mean FROM estimates WHERE samples > 0 "
         "ORDER BY mean DESC, test_id LIMIT ?1");
  q.bind(1, static_cast<std::int64_t>(std::min<std::size_t>(n, INT64_MAX)));
  std::vector<std::pair<std::string, double>> out;
  while (q.step()) out.emplace_back(q.text(0), q.real(1));
  return out;
}

History Repository::history(const std::string& test_id, std::size_t limit) {
  Transaction t(db_, path_, false);
  History h;
  h.test_id = test_id;
  Stmt rows(db_, path_,
            "SELECT r.run_id, u.started_at, u.code_id, r.outcome, r.duration, r.worker, "
            "r.gateway, r.message FROM results r JOIN runs u ON u.id = r.run_id "
            "WHERE r.test_id = ?1 AND r.run_id IN (SELECT DISTINCT run_id FROM results "
            "WHERE test_id = ?1 ORDER BY run_id DESC LIMIT ?2) ORDER BY r.run_id, r.id");
  rows.bind(1, test_id).bind(2, limit == 0 ? std::int64_t{-1} : static_cast<std::int64_t>(limit));
  while (rows.step()) {
    HistoryRow hr;
    hr.run_id = rows.integer(0);
    hr.started_at = from_seconds(rows.real(1));
    hr.code_id = rows.text(2);
    hr.row.test_id = test_id;
    hr.row.outcome = outcome_of(path_, rows.text(3));
    hr.row.duration = rows.real(4);
    hr.row.worker = rows.text(5);
    hr.row.gateway = rows.text(6);
    hr.row.message = rows.text(7);
    h.rows.push_back(std::move(hr));
  }
  Stmt total(db_, path_, "SELECT count(DISTINCT run_id) FROM results WHERE test_id = ?1");
  total.bind(1, test_id);
  if (total.step()) h.total_runs = static_cast<std::size_t>(total.integer(0));
  Stmt flaky(db_, path_,
             "SELECT 1 FROM results r JOIN runs u ON u.id = r.run_id "
             "WHERE r.test_id = ?1 AND u.code_id <> '' GROUP BY u.code_id "
             "HAVING sum(r.outcome = 'passed') > 0 AND sum(r.outcome IN (" +
                 failure_list() + ")) > 0 LIMIT 1");
  flaky.bind(1, test_id);
  h.flaky = flaky.step();
  Stmt est(db_, path_, "SELECT mean, samples FROM estimates WHERE test_id = ?1 AND samples > 0");
  est.bind(1, test_id);
  if (est.step()) {
    h.estimate = est.real(0);
    h.estimate_samples = est.integer(1);
  }
  t.commit();
  return h;
}

std::vector<std::string> Repository::flaky_tests() {
  Stmt q(db_, path_,
         "SELECT DISTINCT r.test_id FROM results r JOIN runs u ON u.id = r.run_id "
         "WHERE u.code_id <> '' GROUP BY r.test_id, u.code_id "
         "HAVING sum(r.outcome = 'passed') > 0 AND sum(r.outcome IN (" +
             failure_list() + ")) > 0 ORDER BY r.test_id");
  std::vector<std::string> ids;
  while (q.step()) ids.push_back(q.text(0));
  return ids;
}

std::string Repository::integrity_check() {
  Stmt q(db_, path_, "PRAGMA integrity_check");
  std::string out;
  while (q.step()) {
    if (!out.empty()) out += "\n";
    out += q.text(0);
  }
  return out;
}

// --- code ids

std::string code_id_for_files(const std::vector<std::string>& paths) {
  struct StateFree {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  std::unique_ptr<XXH3_state_t, StateFree> st(XXH3_createState());
  if (!st) throw std::bad_alloc();
  XXH3_128bits_reset(st.get());
  std::vector<char> buf(1 << 20);
  for (const auto& p : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      // A source folder (pytest project, build tree, command suite): its
      // files' names, sizes and mtimes stand for its code (hashing every
      // byte of a large tree on each run would cost more than it tells).
      std::vector<std::string> entries;
      namespace fs = std::filesystem;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (it->is_directory(ec) && (name.starts_with(".") || name == "__pycache__")) {
          it.disable_recursion_pending();
          continue;
        }
        if (!it->is_regular_file(ec)) continue;
        struct stat sb {};
        if (::stat(it->path().c_str(), &sb) != 0) continue;
        entries.push_back(fmt::format("{}\t{}\t{}.{}", it->path().lexically_relative(p).string(), sb.st_size,
                                      sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec));
        if (entries.size() > 200000) break;
      }
      std::sort(entries.begin(), entries.end());
      for (const auto& e : entries) XXH3_128bits_update(st.get(), e.data(), e.size() + 1);
      continue;
    }
    std::ifstream in(p, std::ios::binary);
    if (!in) throw RepositoryError(p + ": cannot read (computing the code id)");
    std::uint64_t size = 0;
    while (in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const auto got = static_cast<std::size_t>(in.gcount());
      XXH3_128bits_update(st.get(), buf.data(), got);
      size += got;
    }
    if (in.bad()) throw RepositoryError(p + ": read error (computing the code id)");
    // The length after each file keeps (ab, c) and (a, bc) apart.
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(size >> (8 * i));
    XXH3_128bits_update(st.get(), len, sizeof len);
  }
  const XXH128_hash_t h = XXH3_128bits_digest(st.get());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

// --- formatting

std::string format_last(const std::optional<RunSummary>& run) {
  if (!run) return std::string(kNoRunsMessage) + "\n";
  std::string out = fmt::format("run {} -- {} -- exit code {}", run->id, local_time(run->started_at),
                                run->exit_code);
  if (!run->args.empty()) {
    out += " --";
    for (const auto& a : run->args) out += " " + a;
  }
  out += "\n";
  Summary s;
  for (const auto& r : run->rows) {
    if (!r.worker.empty()) out += "[" + r.worker + "] ";
    out += fmt::format("{} {} ({:.2f}s)", upper(to_string(r.outcome)), r.test_id, r.duration);
    if (r.outcome != Outcome::passed && !r.message.empty()) out += " - " + r.message;
    out += "\n";
    ++s.counts[r.outcome];
  }
  s.seconds = std::max(0.0, std::chrono::duration<double>(run->finished_at - run->started_at).count());
  out += TerminalReporter::summary_line(s) + "\n";
  return out;
}

std::string format_failing(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) out += id + "\n";
  return out;
}

std::string format_slowest(const std::vector<std::pair<std::string, double>>& slowest) {
  if (slowest.empty()) return "no test durations recorded in .dtest/ yet\n";
  std::string out = fmt::format("slowest {} test{} (running average durations):\n", slowest.size(),
                                slowest.size() == 1 ? "" : "s");
  for (const auto& [id, secs] : slowest) out += fmt::format("{:>10.2f}s  {}\n", secs, id);
  return out;
}

std::string format_history(const History& h) {
  if (h.rows.empty()) return fmt::format("no results for {} in .dtest/\n", h.test_id);
  std::size_t run_w = 3, worker_w = 6;
  for (const auto& r : h.rows) {
    run_w = std::max(run_w, std::to_string(r.run_id).size());
    worker_w = std::max(worker_w, r.row.worker.size());
  }
  std::size_t shown = 0;
  for (std::size_t i = 0; i < h.rows.size(); ++i)
    if (i == 0 || h.rows[i].run_id != h.rows[i - 1].run_id) ++shown;
  std::string out = fmt::format("history of {} ({} of {} run{})\n", h.test_id, shown, h.total_runs,
                                h.total_runs == 1 ? "" : "s");
  out += fmt::format("{:>{}}  {:<19}  {:<8}  {:<{}}  {:<7}  {:>9}\n", "run", run_w, "started", "code",
                     "worker", worker_w, "outcome", "duration");
  for (const auto& r : h.rows) {
    const std::string code = r.code_id.empty() ? "-" : r.code_id.substr(0, 8);
    std::string line = fmt::format("{:>{}}  {:<19}  {:<8}  {:<{}}  {:<7}  {:>8.2f}s", r.run_id, run_w,
                                   local_time(r.started_at), code,
                                   r.row.worker.empty() ? "-" : r.row.worker, worker_w,
                                   upper(to_string(r.row.outcome)), r.row.duration);
    if (r.row.outcome != Outcome::passed && !r.row.message.empty()) line += "  " + r.row.message;
    out += line + "\n";
  }
  if (h.estimate)
    out += fmt::format("estimate: {:.2f}s (running average of {} sample{})\n", *h.estimate,
                       h.estimate_samples, h.estimate_samples == 1 ? "" : "s");
  out += h.flaky ? "flaky: yes (passed and failed on the same code)\n" : "flaky: no\n";
  return out;
}

}  // namespace dtest
