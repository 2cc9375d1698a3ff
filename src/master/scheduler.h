// The scheduler: a queue of test indices that workers pull batches from.
// Pure logic with no I/O, so it is unit-tested against a simulated clock and
// driven in production by the session.
//
// Batches hold tests of one group (one gtest binary: one process runs them).
// Sizing: a batch is a slice of what is left, remaining / (3 * workers), so
// batches shrink as the queue drains and the tail stays short; but at least
// the "minimum chunk" that keeps the process start below kMaxOverhead of the
// batch's time (start-up S and per-test cost c are measured per group from
// finished batches: min chunk = S / (kMaxOverhead * c)); and at most a fair
// share ((queued + other workers' unfinished) / workers): guided
// self-scheduling with a minimum chunk size.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
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

class Scheduler {
 public:
  static constexpr double kMaxOverhead = 0.25;      // process start / batch time
  static constexpr double kDefaultStartup = 0.0125;  // seconds, until measured
  static constexpr int kMaxAttempts = 3;  // batches a test may stall without progress

  // `group_of[t]` is test t's group; `order` lists the tests to run, first
  // first. `workers` is how many workers will pull (for sizing).
  Scheduler(std::vector<int> group_of, const std::vector<int>& order, int workers);

  void set_workers(int n) { workers_ = n > 0 ? n : 1; }
  // Whether batches may be handed out as shards (see Batch).
  void set_sharding(bool on) { sharding_ = on; }
  // What a group's process start and tests cost, as known from earlier
  // runs; counts as one observation, so real batches soon outweigh it. With
  // it the first batches are sized at once, without a probe round.
  void seed(int group, double startup, double per_test);
  // The next batch for `worker`, or nullopt when the queue is empty.
  std::optional<Batch> next(int worker);
  // A test of an in-flight batch got its outcome.
  void finished(std::int64_t batch, int test);
  // The batch's process is gone; its tests without an outcome go back to the
  // front of the queue (whatever the agent listed as unrun: none is lost). When
  // nothing in the batch ran, its first test is charged an attempt; after
  // kMaxAttempts it is returned (the caller reports it not run).
  // `wall` is the process's run time and `startup` the time to its first
  // test, both in seconds (negative when unknown); they feed sizing.
  std::vector<int> batch_done(std::int64_t batch, double wall = -1, double startup = -1);
  // The worker's connection is lost: its in-flight tests are requeued.
  void worker_lost(int worker);
  // Stop handing out work; returns every queued test (not in flight).
  std::vector<int> drain();

  bool idle() const { return inflight_.empty(); }
  bool empty() const { return remaining_ == 0; }
  std::size_t remaining() const { return remaining_; }
  std::size_t batch_size_for(int group) const;

 private:
  struct GroupStats {
    double work_seconds = 0;  // batch time minus start-up, summed
    long tests = 0;           // tests that finished in those batches
    double startup_seconds = 0;
    int startups = 0;
  };
  std::vector<int> group_of_;
  std::vector<std::deque<int>> queues_;  // per group, in order
  std::deque<int> group_order_;          // groups with queued tests, by first test
  std::map<std::int64_t, Batch> inflight_;
  std::map<std::int64_t, std::unordered_set<int>> inflight_left_;  // tests without outcome yet
  // In-flight tests without an outcome, in batch order.
  std::vector<int> left_in_order(std::int64_t batch) const;
  std::vector<GroupStats> stats_;
  // Sharding: a group nothing has been taken from yet can be split into
  // shards when the batches would be at most one per worker anyway (cheap
  // tests, costly starts). Pending shards of a group, and their count.
  std::vector<char> untouched_;
  std::vector<std::deque<std::vector<int>>> shards_;
  std::vector<int> shard_count_;
  std::vector<int> next_shard_;
  bool sharding_ = true;
  Batch take(int worker, int group, std::vector<int> tests);
  std::vector<int> attempts_;
  std::size_t remaining_ = 0;
  std::int64_t next_id_ = 1;
  int workers_;
  void requeue_front(const std::vector<int>& tests);
};

}  // namespace dtest
