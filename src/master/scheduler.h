// The scheduler: a queue of test indices that workers pull batches from.
// Pure logic with no I/O, so it is unit-tested against a simulated clock and
// driven in production by the session.
//
// Items. The queue holds items: a single test, or the part of a unit (see
// set_units) that lies in one group. Batches hold tests of one group only
// (one gtest binary: one process runs them), and a unit is never split: its
// items go whole into batches of one worker.
//
// Order. Items are ranked once, before the first batch: tests that failed
// last time first, then tests without an estimate (both inform soonest),
// then the rest; within each tier the longest estimate first (LPT), ties in
// the given order. A unit ranks as its summed estimate, in the tier of its
// most urgent test. Without estimates the given order stays (failures still
// first); units then rank by their test count. A worker's batch comes from
// the group holding the best-ranked item; tests that come back (a crash, a
// lost worker) go to the front.
//
// Sizing. Work is measured in weights: estimated seconds when estimates are
// given (an unknown test counts as its group's mean estimate, else the
// group's measured per-test cost, else the suite's mean estimate), else one
// per test (today's behaviour, exactly). A batch takes items from the front
// while they fit a target (at least one item, so a long test goes alone):
//
//   target = min(max(slice, min chunk), fair share)
//   slice      = R / (k * workers)  R: queued weight; k = 3 by count,
//                                   kSecondsSlice by seconds. Batches shrink
//                                   as the queue drains: the tail is short.
//   min chunk  = by seconds: S / kMaxOverhead; by count: S / (kMaxOverhead
//                * c). S (process start) and c (per-test cost) are measured
//                per group from finished batches (or seeded): a process
//                start is at most kMaxOverhead of its batch.
//   fair share = (R + U) / workers, U: weight of in-flight tests without an
//                outcome, so a worker freeing up while others are busy takes
//                its share of everything left, and never more.
//
// This is guided self-scheduling with a minimum chunk; with estimates it
// hands out the longest tests alone first and fills the tail with short
// ones (LPT), so the makespan stays near max(longest, total / workers) plus
// a process start (within 1.1% on the synthetic suites of scheduler_test).
// Within a batch, tests keep their collection order (the order the process
// runs them in).
//
// Shards. A group nothing has been taken from, without units, is cut
// GoogleTest's way (position p to shard p % n, see Batch) so the agent needs
// no filter, when it would go out in one batch, or in at most one batch per
// worker because the minimum chunk reaches a fair share (cheap tests, costly
// starts): batches of that size are what it would get anyway. Not merely
// because the slice is large early in a run: shards cut then would stay
// large for the tail. With estimates, only when no shard's estimate exceeds
// the target by more than kShardSlack (a lopsided cut would lengthen the
// tail). Shards go out in order of their most urgent test. A batch that
// takes a whole untouched group is shard 0 of 1 (no filter).
//
// Units. A unit is never spread over workers: a unit spanning several groups
// (loadgroup across binaries) is reserved for the worker that takes its first
// part (its other parts wait for that worker and are handed to it next), and
// what comes back from a unit's crashed batch goes back to that worker. Only a
// lost worker's units return to the common queue, whole.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace dtest {

struct Batch {
  std::int64_t id = 0;
  int worker = -1;
  int group = -1;
  std::vector<int> tests;  // indices into the session's test table
  // A shard (shard_count > 0): `tests` are exactly the group's runnable
  // tests at positions p with p % shard_count == shard_index, in collection
  // order, so GoogleTest's own sharding runs them without any filter.
  int shard_index = -1;
  int shard_count = 0;
};

// How tests are tied to workers (--dist). each and no are the session's
// business (a scheduler per gateway; one worker).
enum class Distribution {
  load,       // every test on its own
  loadfile,   // a unit per group (gtest binary)
  loadscope,  // a unit per test suite ("Suite" of "Suite.Name") within a group
  loadgroup,  // a unit per explicit label; unlabelled tests on their own
};

class Scheduler {
 public:
  static constexpr double kMaxOverhead = 0.25;      // process start / batch time
  static constexpr double kDefaultStartup = 0.0125;  // seconds, until measured
  static constexpr int kMaxAttempts = 3;  // batches a test may stall without progress
  static constexpr int kCountSlice = 3;          // slice = R / (3 * workers), by count
  static constexpr double kSecondsSlice = 2.0;   // slice = R / (2 * workers), by seconds
  static constexpr double kShardSlack = 1.05;    // a shard's estimate / the target
  static constexpr double kMinWeight = 1e-6;     // seconds: an estimate of 0 still costs

  // Per test, its unit under `mode` (-1: scheduled on its own). `names` are
  // GoogleTest full names ("Suite.Name"; loadscope); `labels` the explicit
  // groups ("" for none; loadgroup), which may span groups. Unit ids are
  // dense from 0. Either vector may be empty when `mode` does not use it.
  static std::vector<int> units_for(Distribution mode, const std::vector<int>& group_of,
                                    const std::vector<std::string>& names,
                                    const std::vector<std::string>& labels = {});

  // `group_of[t]` is test t's group; `order` lists the tests to run, first
  // first, in collection order (shards rely on it). `workers` is how many
  // workers will pull (for sizing).
  Scheduler(std::vector<int> group_of, const std::vector<int>& order, int workers);

  // Per test (indexed like group_of; shorter vectors are padded): its
  // estimated duration in seconds (< 0: unknown) and whether it failed last
  // time. With at least one estimate >= 0 among the tests to run, sizing is
  // by estimated seconds; otherwise by count as before. set_estimates and
  // set_units take effect only before the first next() or drain(); later
  // calls change nothing.
  void set_estimates(std::vector<double> seconds, std::vector<bool> failed_last = {});
  // Per test, its unit (>= 0) or -1 (see units_for). A unit is never split
  // over workers.
  void set_units(std::vector<int> unit_of);

  void set_workers(int n) { workers_ = n > 0 ? n : 1; }
  // Whether batches may be handed out as shards (see Batch).
  void set_sharding(bool on) { sharding_ = on; }
  // What a group's process start and tests cost, as known from earlier
  // runs; counts as one observation, so real batches soon outweigh it. With
  // it the first batches are sized at once, without a probe round.
  void seed(int group, double startup, double per_test);
  // The next batch for `worker`, or nullopt when nothing is left for it (work
  // reserved for another worker's unit may still be queued: see empty()).
  std::optional<Batch> next(int worker);
  // A test of an in-flight batch got its outcome.
  void finished(std::int64_t batch, int test);
  // The batch's process is gone; its tests without an outcome go back to the
  // front of the queue (whatever the agent listed as unrun: none is lost); a
  // unit's tests go back to the same worker. When nothing in the batch ran,
  // its first test is charged an attempt; after kMaxAttempts it is returned
  // (the caller reports it not run).
  // `wall` is the process's run time and `startup` the time to its first
  // test, both in seconds (negative when unknown); they feed sizing.
  std::vector<int> batch_done(std::int64_t batch, double wall = -1, double startup = -1);
  // The worker's connection is lost: its in-flight tests and the units
  // reserved for it go back to the front of the common queue.
  void worker_lost(int worker);
  // Stop handing out work; returns every queued test (not in flight).
  std::vector<int> drain();

  bool idle() const { return inflight_.empty(); }
  bool empty() const { return remaining_ == 0; }
  std::size_t remaining() const { return remaining_; }
  // Whether sizing is by estimated seconds (set_estimates gave one).
  bool by_seconds() const { return by_seconds_; }
  // Estimated seconds of work left (queued plus in flight without an
  // outcome), or -1 when sizing is by count.
  double seconds_left() const;
  // How many tests the next batch from `group` would hold. By count: the
  // batch size, whatever the group holds (as before); by seconds: the tests
  // of the items that fit the target.
  std::size_t batch_size_for(int group) const;

 private:
  struct GroupStats {
    double work_seconds = 0;  // batch time minus start-up, summed
    long tests = 0;           // tests that finished in those batches
    double startup_seconds = 0;
    int startups = 0;
  };
  struct Item {
    std::vector<int> tests;  // one group's, in rank order
    double weight = 0;
    std::int64_t rank = 0;   // smaller first
    int unit = -1;
  };
  struct Flight {
    Batch batch;
    std::unordered_set<int> left;  // tests without an outcome yet
    double left_weight = 0;
  };

  void rebuild();  // ranks and items from scratch (before the first next())
  struct Sizing {  // in weight units: seconds, or tests by count
    double slice = 0, min_chunk = 0, share = 0, target = 0;
  };
  Sizing sizing(int group) const;
  std::size_t items_fitting(int group, double target) const;
  std::int64_t head_rank(int group) const;
  bool try_shard(int group);
  Batch take(int worker, int group, std::vector<int> tests);
  std::vector<int> left_in_order(const Flight& f) const;
  void requeue_front(const std::vector<int>& tests);               // common queue
  void pin_front(int worker, const std::vector<int>& tests);       // a worker's own
  void reserve_unit(int worker, int unit);
  double weight_of(const std::vector<int>& tests) const;

  std::vector<int> group_of_;
  std::vector<int> order_;
  std::vector<int> pos_;            // per test: position in order_, -1 if absent
  std::vector<double> est_;         // per test, < 0 unknown
  std::vector<char> failed_;        // per test
  std::vector<int> unit_of_;        // per test, -1 none
  std::vector<double> weight_;      // per test: seconds, or 1 by count
  bool by_seconds_ = false;
  bool started_ = false;            // a batch was handed out

  std::vector<std::deque<Item>> queues_;  // per group, by rank
  std::vector<GroupStats> stats_;
  // Sharding: a group nothing has been taken from yet can be split into
  // shards when the batches would be at most one per worker anyway (cheap
  // tests, costly starts). Pending shards of a group, and their count.
  std::vector<char> untouched_;
  std::vector<char> has_units_;
  std::vector<char> needs_cost_;  // unknown estimates fall back on the group's measured cost
  struct Shard {
    int index = 0;
    std::vector<int> tests;
    std::int64_t rank = 0;  // its best-ranked test's: shards go out by rank
  };
  std::vector<std::deque<Shard>> shards_;
  std::vector<int> shard_count_;
  bool sharding_ = true;

  std::map<int, std::deque<Item>> pinned_;  // per worker: its units' parts
  std::unordered_map<int, int> owner_;      // unit -> the worker it is reserved for
  std::unordered_map<int, std::vector<int>> unit_groups_;  // unit -> the groups it spans
  std::map<std::int64_t, Flight> inflight_;
  std::vector<int> attempts_;
  std::size_t remaining_ = 0;       // queued tests, pinned and sharded included
  double remaining_weight_ = 0;     // their weight
  double unfinished_weight_ = 0;    // in flight without an outcome
  std::int64_t front_rank_ = 0;     // ranks below it go before everything queued
  std::int64_t next_id_ = 1;
  int workers_;
};

}  // namespace dtest
