#include "master/scheduler.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <queue>
#include <set>

#include <gtest/gtest.h>

namespace dtest {
namespace {

std::vector<int> iota_n(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

TEST(Scheduler, HandsOutEveryTestOnceInOrderAndWithinOneGroup) {
  // Tests 0-5 in group 0, 6-9 in group 1.
  std::vector<int> group = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1};
  Scheduler s(group, iota_n(10), 2);
  std::vector<int> seen;
  int worker = 0;
  while (auto b = s.next(worker)) {
    ASSERT_FALSE(b->tests.empty());
    for (int t : b->tests) EXPECT_EQ(group[static_cast<std::size_t>(t)], b->group);
    seen.insert(seen.end(), b->tests.begin(), b->tests.end());
    for (int t : b->tests) s.finished(b->id, t);
    EXPECT_TRUE(s.batch_done(b->id).empty());
    worker ^= 1;
  }
  EXPECT_EQ(seen, iota_n(10));
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(s.idle());
}

TEST(Scheduler, BatchesShrinkAsTheQueueDrainsAndNeverExceedAFairShare) {
  const int n = 1000;
  Scheduler s(std::vector<int>(n, 0), iota_n(n), 4);
  std::vector<std::size_t> sizes;
  while (auto b = s.next(0)) {
    const std::size_t before = b->tests.size() + s.remaining();
    EXPECT_LE(b->tests.size(), (before + 3) / 4) << "more than a fair share";
    sizes.push_back(b->tests.size());
    s.batch_done(b->id);  // no durations known: sizing by count only
  }
  ASSERT_GT(sizes.size(), 10u);
  EXPECT_EQ(sizes.front(), 84u);  // ceil(1000 / (3 * 4))
  EXPECT_EQ(sizes.back(), 1u);
  EXPECT_TRUE(std::is_sorted(sizes.rbegin(), sizes.rend()));
}

TEST(Scheduler, FastTestsGetBatchesBigEnoughToAmortiseAProcessStart) {
  const int n = 10000;
  Scheduler s(std::vector<int>(n, 0), iota_n(n), 2);
  auto b1 = s.next(0);
  ASSERT_TRUE(b1);
  EXPECT_EQ(b1->tests.size(), 1667u);  // ceil(10000 / 6), nothing known yet
  for (int t : b1->tests) s.finished(b1->id, t);
  // 25 ms to start, then 10 us a test.
  s.batch_done(b1->id, 0.025 + 1667 * 1e-5, 0.025);
  // Min chunk: 0.025 / (0.25 * 1e-5) = 10000 tests; capped at a fair share
  // of what is left: ceil(8333 / 2).
  EXPECT_EQ(s.remaining(), 8333u);
  EXPECT_EQ(s.batch_size_for(0), 4167u);
  // With another worker's batch in flight, its unfinished tests count too.
  auto b2 = s.next(1);
  ASSERT_TRUE(b2);
  EXPECT_EQ(b2->tests.size(), 4167u);
  EXPECT_EQ(s.batch_size_for(0), 4166u);  // min(ceil((4166 + 4167) / 2), 4166)
}

TEST(Scheduler, SharesDoNotHalveAlongTheTail) {
  // Two workers, cheap tests, costly process starts: once measured, the
  // queue goes out in a handful of batches, not one per halving.
  Scheduler s(std::vector<int>(20000, 0), iota_n(20000), 2);
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  for (int t : b->tests) s.finished(b->id, t);
  s.batch_done(b->id, 0.026 + b->tests.size() * 7e-6, 0.026);
  int batches = 2;
  int worker = 1;
  while (auto next = s.next(worker)) {
    ++batches;
    for (int t : a->tests) s.finished(a->id, t);
    s.batch_done(a->id, 0.026 + a->tests.size() * 7e-6, 0.026);
    a = next;
    worker ^= 1;
    ASSERT_LE(batches, 6);
  }
  EXPECT_LE(batches, 5);
}

TEST(Scheduler, CostsFromEarlierRunsSizeTheFirstBatchesWithoutAProbe) {
  Scheduler s(std::vector<int>(20000, 0), iota_n(20000), 2);
  s.seed(0, 0.02, 3e-6);  // min chunk 0.02 / (0.25 * 3e-6) = 26667: a fair share
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->tests.size(), 10000u);
  EXPECT_EQ(b->tests.size(), 10000u);
  EXPECT_FALSE(s.next(0));
  // Slow tests: the seed asks for no minimum, the slice stays.
  Scheduler slow(std::vector<int>(60, 0), iota_n(60), 2);
  slow.seed(0, 0.001, 0.5);
  auto c = slow.next(0);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests.size(), 10u);  // ceil(60 / 6)
}

TEST(Scheduler, CheapTestsOfAFreshBinaryGoOutAsShards) {
  Scheduler s(std::vector<int>(10, 0), iota_n(10), 2);
  s.seed(0, 0.02, 1e-6);  // a fair share each: two shards
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->shard_index, 0);
  EXPECT_EQ(a->shard_count, 2);
  EXPECT_EQ(b->shard_index, 1);
  EXPECT_EQ(b->shard_count, 2);
  // GoogleTest's sharding: runnable position p goes to shard p % count.
  EXPECT_EQ(a->tests, (std::vector<int>{0, 2, 4, 6, 8}));
  EXPECT_EQ(b->tests, (std::vector<int>{1, 3, 5, 7, 9}));
  EXPECT_FALSE(s.next(0));
  // A crash in shard 0 after two tests: the rest comes back as a plain
  // (filtered) batch, never as a shard.
  s.finished(a->id, 0);
  s.finished(a->id, 2);
  EXPECT_TRUE(s.batch_done(a->id).empty());
  auto again = s.next(0);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->shard_count, 0);
  EXPECT_EQ(again->tests.front(), 4);
}

TEST(Scheduler, NoShardsForAProbeRoundOrWhenSwitchedOff) {
  Scheduler probe(std::vector<int>(60, 0), iota_n(60), 2);  // nothing known: slices
  auto p = probe.next(0);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->shard_count, 0);
  EXPECT_EQ(p->tests.size(), 10u);
  Scheduler off(std::vector<int>(10, 0), iota_n(10), 2);
  off.seed(0, 0.02, 1e-6);
  off.set_sharding(false);
  auto o = off.next(0);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->shard_count, 0);
  EXPECT_EQ(o->tests, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Scheduler, AWholeSmallBinaryIsOneShardWithNoFilter) {
  // Binary 0 has 2 tests out of 12: its first batch takes it whole.
  Scheduler s({0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, iota_n(12), 1);
  auto b = s.next(0);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests, (std::vector<int>{0, 1}));
  EXPECT_EQ(b->shard_index, 0);
  EXPECT_EQ(b->shard_count, 1);
}

TEST(Scheduler, MinChunkBeatsTheSliceWithinAFairShare) {
  const int n = 100;
  Scheduler s(std::vector<int>(n, 0), iota_n(n), 2);
  auto b1 = s.next(0);
  ASSERT_TRUE(b1);
  EXPECT_EQ(b1->tests.size(), 17u);  // ceil(100 / 6)
  for (int t : b1->tests) s.finished(b1->id, t);
  s.batch_done(b1->id, 0.02 + 17 * 0.002, 0.02);  // min chunk 0.02 / (0.25 * 0.002) = 40
  EXPECT_EQ(s.remaining(), 83u);
  // slice ceil(83 / 6) = 14 < 40 <= fair share ceil(83 / 2) = 42
  EXPECT_EQ(s.batch_size_for(0), 40u);
}

TEST(Scheduler, SlowTestsKeepTheSlice) {
  Scheduler s(std::vector<int>(60, 0), iota_n(60), 2);
  auto b1 = s.next(0);
  ASSERT_TRUE(b1);
  for (int t : b1->tests) s.finished(b1->id, t);
  s.batch_done(b1->id, 0.001 + 10 * 0.5, 0.001);  // half a second a test
  EXPECT_EQ(s.remaining(), 50u);
  EXPECT_EQ(s.batch_size_for(0), 9u);  // ceil(50 / 6)
}

TEST(Scheduler, UnrunTestsGoBackToTheFrontForFreeWhenTheBatchMadeProgress) {
  Scheduler s(std::vector<int>(40, 0), iota_n(40), 1);
  auto first = s.next(0);
  ASSERT_TRUE(first);
  s.finished(first->id, 0);
  EXPECT_TRUE(s.batch_done(first->id).empty());
  // Test 1 keeps coming back unrun while others in its batch run: more
  // rounds than kMaxAttempts, never given up, always first.
  int rounds = 0;
  while (auto b = s.next(0)) {
    if (b->tests.size() < 2) break;
    EXPECT_EQ(b->tests.front(), 1);
    for (std::size_t i = 1; i < b->tests.size(); ++i) s.finished(b->id, b->tests[i]);
    EXPECT_TRUE(s.batch_done(b->id).empty());
    ++rounds;
  }
  EXPECT_GT(rounds, Scheduler::kMaxAttempts);
}

TEST(Scheduler, ABatchWhereNothingRanChargesItsFirstTestUntilGivenUp) {
  Scheduler s(std::vector<int>(6, 0), iota_n(6), 1);
  std::vector<int> given_up;
  int batches = 0;
  while (given_up.empty()) {
    auto b = s.next(0);
    ASSERT_TRUE(b);
    ASSERT_EQ(b->tests.front(), 0) << "the stalled test stays first";
    ++batches;
    given_up = s.batch_done(b->id);  // the process died before any test
    ASSERT_LE(batches, Scheduler::kMaxAttempts);
  }
  EXPECT_EQ(batches, Scheduler::kMaxAttempts);
  EXPECT_EQ(given_up, std::vector<int>{0});
  // The others were not charged: they all come out again, test 1 first.
  EXPECT_EQ(s.remaining(), 5u);
  auto next = s.next(0);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->tests.front(), 1);
}

TEST(Scheduler, TestsMissingFromBothResultsAndUnrunAreNotLost) {
  Scheduler s(std::vector<int>(3, 0), iota_n(3), 1);
  auto b = s.next(0);
  ASSERT_TRUE(b);
  ASSERT_EQ(b->tests, std::vector<int>{0});
  s.batch_done(b->id);  // the agent said nothing about test 0
  auto again = s.next(0);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->tests.front(), 0);
}

TEST(Scheduler, LostWorkerRequeuesOnlyTestsWithoutAnOutcome) {
  Scheduler s(std::vector<int>(30, 0), iota_n(30), 2);
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  s.finished(a->id, a->tests[0]);
  const std::size_t before = s.remaining();
  s.worker_lost(0);
  EXPECT_EQ(s.remaining(), before + a->tests.size() - 1);
  auto c = s.next(1);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests.front(), a->tests[1]);
  EXPECT_FALSE(s.idle());  // b is still in flight
}

TEST(Scheduler, DrainReturnsEverythingQueued) {
  Scheduler s({0, 0, 1, 1, 1}, iota_n(5), 1);
  auto b = s.next(0);
  ASSERT_TRUE(b);
  auto rest = s.drain();
  std::set<int> all(rest.begin(), rest.end());
  for (int t : b->tests) all.insert(t);
  EXPECT_EQ(all.size(), 5u);
  EXPECT_TRUE(s.empty());
  EXPECT_FALSE(s.next(0));
}

// A deterministic simulation: workers pull batches; each batch costs a
// process start plus its tests' durations. Checks that every test runs once
// and the makespan stays near its lower bound max(longest, total/workers).
struct SimResult {
  double makespan = 0;
  double bound = 0;
  std::size_t batches = 0;
};

SimResult simulate(const std::vector<double>& durations, int workers, double start_cost) {
  const int n = static_cast<int>(durations.size());
  Scheduler s(std::vector<int>(static_cast<std::size_t>(n), 0), iota_n(n), workers);
  struct Running {
    Batch batch;
    double start = 0;
    std::vector<double> ends;  // when each test finishes
    std::size_t reported = 0;  // results streamed so far
  };
  std::map<int, Running> running;  // by worker
  using Ev = std::pair<double, int>;  // (time the worker frees up, worker)
  std::priority_queue<Ev, std::vector<Ev>, std::greater<>> free;
  for (int w = 0; w < workers; ++w) free.push({0.0, w});
  std::vector<int> runs(static_cast<std::size_t>(n), 0);
  SimResult r;
  // Results stream as tests finish, as the agent streams them.
  auto stream_until = [&](double t) {
    for (auto& [w, run] : running)
      while (run.reported < run.ends.size() && run.ends[run.reported] <= t)
        s.finished(run.batch.id, run.batch.tests[run.reported++]);
  };
  while (!free.empty()) {
    auto [t, w] = free.top();
    free.pop();
    stream_until(t);
    if (auto it = running.find(w); it != running.end()) {
      EXPECT_TRUE(s.batch_done(it->second.batch.id, t - it->second.start, start_cost).empty());
      running.erase(it);
    }
    auto b = s.next(w);
    if (!b) {
      r.makespan = std::max(r.makespan, t);
      continue;
    }
    ++r.batches;
    Running run{*b, t, {}, 0};
    double end = t + start_cost;
    for (int test : b->tests) {
      end += durations[static_cast<std::size_t>(test)];
      run.ends.push_back(end);
      ++runs[static_cast<std::size_t>(test)];
    }
    running[w] = std::move(run);
    free.push({end, w});
  }
  for (int c : runs) EXPECT_EQ(c, 1);
  const double total = std::accumulate(durations.begin(), durations.end(), 0.0);
  r.bound = std::max(*std::max_element(durations.begin(), durations.end()), total / workers);
  return r;
}

TEST(SchedulerSimulation, UniformTestsFinishCloseToTheBound) {
  const auto r = simulate(std::vector<double>(200, 0.05), 2, 0.002);
  EXPECT_LE(r.makespan, r.bound * 1.10);
}

TEST(SchedulerSimulation, ManyTinyTestsUseFewProcesses) {
  // 20,000 tests of 10 us and a 5 ms process start: every batch keeps its
  // start under kMaxOverhead of its time, so the whole run pays at most
  // kMaxOverhead / (1 - kMaxOverhead) on top of the work, plus the probes.
  const auto r = simulate(std::vector<double>(20000, 1e-5), 2, 0.005);
  EXPECT_LE(r.batches, 25u);
  const double overhead = Scheduler::kMaxOverhead / (1 - Scheduler::kMaxOverhead);
  EXPECT_LE(r.makespan, r.bound * (1 + overhead) + 2 * 0.005) << r.makespan << " vs bound " << r.bound;
}

TEST(SchedulerSimulation, CostlyStartsGiveFewBigBatches) {
  // As measured on a real 20,000-test binary: 25 ms to start, 7 us a test.
  const auto r = simulate(std::vector<double>(20000, 7e-6), 2, 0.025);
  EXPECT_LE(r.batches, 5u);
  EXPECT_LE(r.makespan, r.bound + 2 * 0.025 + 0.01) << r.makespan << " vs bound " << r.bound;
}

}  // namespace
}  // namespace dtest
