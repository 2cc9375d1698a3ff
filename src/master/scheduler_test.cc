#include "master/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <queue>
#include <set>
#include <string>

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
// process start plus its tests' true durations, and results stream as tests
// end. Checks that every test runs exactly once and measures the makespan
// against the lower bound max(longest, total / workers) + one start: every
// worker pays at least one process start before its first test, and the
// longest test needs one too.
struct SimSpec {
  std::vector<double> durations;   // true durations, seconds
  std::vector<int> group_of;       // empty: one group
  std::vector<int> order;          // empty: 0..n-1
  std::vector<double> estimates;   // empty: none given
  std::vector<bool> failed;        // failed last time
  std::vector<int> units;          // empty: none
  int workers = 2;
  double start_cost = 0.005;
};

struct SimResult {
  double makespan = 0;
  double bound = 0;
  std::size_t batches = 0;
  std::vector<Batch> handed;       // in the order handed out
  std::vector<double> handed_at;   // when
  std::vector<int> worker_of;      // per test: where it ran
  double ratio() const { return makespan / bound; }
};

SimResult simulate(const SimSpec& spec) {
  const int n = static_cast<int>(spec.durations.size());
  const auto group_of = spec.group_of.empty() ? std::vector<int>(static_cast<std::size_t>(n), 0) : spec.group_of;
  Scheduler s(group_of, spec.order.empty() ? iota_n(n) : spec.order, spec.workers);
  if (!spec.estimates.empty() || !spec.failed.empty()) s.set_estimates(spec.estimates, spec.failed);
  if (!spec.units.empty()) s.set_units(spec.units);
  struct Running {
    Batch batch;
    double start = 0;
    std::vector<double> ends;  // when each test finishes
    std::size_t reported = 0;  // results streamed so far
  };
  std::map<int, Running> running;  // by worker
  using Ev = std::pair<double, int>;  // (time the worker frees up, worker)
  std::priority_queue<Ev, std::vector<Ev>, std::greater<>> free;
  for (int w = 0; w < spec.workers; ++w) free.push({0.0, w});
  SimResult r;
  r.worker_of.assign(static_cast<std::size_t>(n), -1);
  std::vector<int> runs(static_cast<std::size_t>(n), 0);
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
      EXPECT_TRUE(s.batch_done(it->second.batch.id, t - it->second.start, spec.start_cost).empty());
      running.erase(it);
    }
    auto b = s.next(w);
    if (!b) {
      r.makespan = std::max(r.makespan, t);
      continue;
    }
    ++r.batches;
    r.handed.push_back(*b);
    r.handed_at.push_back(t);
    Running run{*b, t, {}, 0};
    double end = t + spec.start_cost;
    for (int test : b->tests) {
      EXPECT_EQ(group_of[static_cast<std::size_t>(test)], b->group) << "a batch holds one group";
      end += spec.durations[static_cast<std::size_t>(test)];
      run.ends.push_back(end);
      ++runs[static_cast<std::size_t>(test)];
      r.worker_of[static_cast<std::size_t>(test)] = w;
    }
    running[w] = std::move(run);
    free.push({end, w});
  }
  for (int c : runs) EXPECT_EQ(c, 1);
  EXPECT_TRUE(s.empty());
  EXPECT_TRUE(s.idle());
  const double total = std::accumulate(spec.durations.begin(), spec.durations.end(), 0.0);
  const double longest = *std::max_element(spec.durations.begin(), spec.durations.end());
  r.bound = std::max(longest, total / spec.workers) + spec.start_cost;
  return r;
}

SimResult simulate(const std::vector<double>& durations, int workers, double start_cost) {
  SimSpec spec;
  spec.durations = durations;
  spec.workers = workers;
  spec.start_cost = start_cost;
  auto r = simulate(spec);
  // The old bound, without the start.
  r.bound -= start_cost;
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

// The synthetic suites of the acceptance criteria, with their durations known
// (given as estimates). Deterministic: a fixed generator, no <random>
// distributions (their output differs between standard libraries).
struct Lcg {
  std::uint64_t state;
  double uniform() {  // in (0, 1)
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (static_cast<double>(state >> 11) + 0.5) / 9007199254740992.0;
  }
};

std::vector<double> uniform_suite() { return std::vector<double>(400, 0.1); }

// Pareto (shape 1.1) durations, scaled to 60 s over 200 tests, shuffled.
std::vector<double> heavy_tailed_suite() {
  Lcg g{42};
  std::vector<double> d(200);
  for (auto& x : d) x = 1.0 / std::pow(g.uniform(), 1.0 / 1.1);
  const double sum = std::accumulate(d.begin(), d.end(), 0.0);
  for (auto& x : d) x *= 60.0 / sum;
  return d;
}

// One test is 40% of the total; the rest vary between 0.1 and 1 s.
std::vector<double> giant_suite() {
  Lcg g{7};
  std::vector<double> d(120);
  for (auto& x : d) x = 0.1 + 0.9 * g.uniform();
  const double rest = std::accumulate(d.begin(), d.end(), 0.0);
  d.insert(d.begin() + 37, rest * 0.4 / 0.6);
  return d;
}

std::vector<double> tiny_suite() { return std::vector<double>(20000, 0.001); }

// The order that hurts a scheduler that trusts it: longest last.
std::vector<int> longest_last(const std::vector<double>& d) {
  auto order = iota_n(static_cast<int>(d.size()));
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return d[static_cast<std::size_t>(a)] < d[static_cast<std::size_t>(b)];
  });
  return order;
}

SimResult run_known(const std::vector<double>& d, bool bad_order, int workers = 4) {
  SimSpec spec;
  spec.durations = d;
  spec.estimates = d;
  spec.workers = workers;
  if (bad_order) spec.order = longest_last(d);
  return simulate(spec);
}

void expect_near_bound(const char* name, const std::vector<double>& d) {
  const auto good = run_known(d, false);
  const auto bad = run_known(d, true);
  std::printf("  %-13s %zu tests, longest %.3f s of %.1f s: makespan %.4f s (longest last: %.4f s), bound %.4f s, "
              "ratio %.4f / %.4f, %zu batches\n",
              name, d.size(), *std::max_element(d.begin(), d.end()), std::accumulate(d.begin(), d.end(), 0.0),
              good.makespan, bad.makespan, good.bound, good.ratio(), bad.ratio(), good.batches);
  EXPECT_LE(good.ratio(), 1.05) << name;
  EXPECT_LE(bad.ratio(), 1.05) << name << ", longest last";
  EXPECT_LE(bad.makespan, good.makespan * 1.05) << name << ": listing the longest last hurt";
}

TEST(SchedulerSimulation, UniformSuiteWithEstimatesIsWithinFivePercentOfTheBound) {
  expect_near_bound("uniform", uniform_suite());
}

TEST(SchedulerSimulation, HeavyTailedSuiteWithEstimatesIsWithinFivePercentOfTheBound) {
  const auto d = heavy_tailed_suite();
  // The suite is what it claims: a few tests carry much of the work.
  auto sorted = d;
  std::sort(sorted.rbegin(), sorted.rend());
  EXPECT_GT(std::accumulate(sorted.begin(), sorted.begin() + 10, 0.0), 0.3 * 60);
  expect_near_bound("heavy-tailed", d);
}

TEST(SchedulerSimulation, OneGiantTestWithEstimatesIsWithinFivePercentOfTheBound) {
  const auto d = giant_suite();
  const auto r = run_known(d, true);
  // The giant starts at once, alone.
  ASSERT_FALSE(r.handed.empty());
  const auto giant = static_cast<int>(std::max_element(d.begin(), d.end()) - d.begin());
  EXPECT_EQ(r.handed.front().tests, std::vector<int>{giant});
  expect_near_bound("one giant", d);
}

TEST(SchedulerSimulation, ManyTinyTestsWithEstimatesAreWithinFivePercentOfTheBound) {
  expect_near_bound("many tiny", tiny_suite());
}

TEST(SchedulerSimulation, WithoutEstimatesEveryTestStillRunsOnce) {
  // No estimates: the given order and sizing by count, whatever the order
  // costs. simulate() checks each test ran exactly once.
  const char* names[] = {"uniform", "heavy-tailed", "one giant", "many tiny"};
  int i = 0;
  for (const auto& d : {uniform_suite(), heavy_tailed_suite(), giant_suite(), tiny_suite()}) {
    SimSpec spec;
    spec.durations = d;
    spec.workers = 4;
    const auto as_listed = simulate(spec);
    spec.order = longest_last(d);
    const auto r = simulate(spec);
    std::printf("  %-13s no estimates: ratio %.4f as listed, %.4f longest last\n", names[i++], as_listed.ratio(),
                r.ratio());
    EXPECT_GT(r.makespan, 0);
  }
}

TEST(SchedulerSimulation, RoughEstimatesStayCloseToTheBound) {
  // Estimates off by up to a factor of 1.5 either way.
  for (const auto& d : {uniform_suite(), heavy_tailed_suite(), giant_suite(), tiny_suite()}) {
    Lcg g{3};
    SimSpec spec;
    spec.durations = d;
    spec.workers = 4;
    for (double x : d) spec.estimates.push_back(x * std::pow(1.5, 2 * g.uniform() - 1));
    spec.order = longest_last(d);
    const auto r = simulate(spec);
    std::printf("  rough estimates: ratio %.4f\n", r.ratio());
    EXPECT_LE(r.ratio(), 1.15);
  }
}

TEST(SchedulerSimulation, BatchesAreSizedBySecondsAndNeverExceedAFairShare) {
  const auto d = heavy_tailed_suite();
  Scheduler s(std::vector<int>(d.size(), 0), iota_n(static_cast<int>(d.size())), 4);
  s.set_estimates(d);
  ASSERT_TRUE(s.by_seconds());
  double left = std::accumulate(d.begin(), d.end(), 0.0);
  EXPECT_NEAR(s.seconds_left(), left, 1e-9);
  std::vector<double> sizes;
  while (auto b = s.next(0)) {
    double w = 0;
    for (int t : b->tests) w += d[static_cast<std::size_t>(t)];
    // Nothing in flight at the time: at most a quarter of what was left,
    // unless one test alone is more.
    if (b->tests.size() > 1) {
      EXPECT_LE(w, left / 4 + 1e-9);
    }
    left -= w;
    sizes.push_back(w);
    for (int t : b->tests) s.finished(b->id, t);
    s.batch_done(b->id, 0.005 + w, 0.005);
  }
  // The longest tests went out first and alone; the tail is short.
  EXPECT_EQ(sizes.front(), *std::max_element(d.begin(), d.end()));
  EXPECT_LT(sizes.back(), 0.1);
}

TEST(SchedulerSimulation, ShardsWithEstimatesOnlyWhenBalanced) {
  // Cheap, even tests and a costly start: two shards, as without estimates.
  {
    Scheduler s(std::vector<int>(20000, 0), iota_n(20000), 2);
    s.set_estimates(std::vector<double>(20000, 7e-6));
    s.seed(0, 0.025, 7e-6);
    auto a = s.next(0);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->shard_count, 2);
    EXPECT_EQ(a->tests.size(), 10000u);
  }
  // One test costs as much as the rest: shards by position would be
  // lopsided, so it goes alone and the rest in plain batches.
  {
    std::vector<double> d(1000, 1e-4);
    d[10] = 0.1;
    Scheduler s(std::vector<int>(d.size(), 0), iota_n(1000), 2);
    s.set_estimates(d);
    s.seed(0, 0.1, 1e-4);
    auto a = s.next(0);
    ASSERT_TRUE(a);
    EXPECT_EQ(a->shard_count, 0);
    EXPECT_EQ(a->tests, std::vector<int>{10});
  }
}

TEST(SchedulerSimulation, FailuresFirstThenUnknownThenLongest) {
  const int n = 100;
  std::vector<double> est(n);
  for (int t = 0; t < n; ++t) est[static_cast<std::size_t>(t)] = 0.01 * (t + 1);  // longest last
  std::vector<bool> failed(n, false);
  failed[40] = failed[7] = failed[1] = true;
  est[60] = -1;  // never timed
  // Two binaries, so the urgent tests sit in different groups.
  std::vector<int> group(n, 0);
  for (int t = 50; t < n; ++t) group[static_cast<std::size_t>(t)] = 1;
  Scheduler s(group, iota_n(n), 4);
  s.set_estimates(est, failed);
  auto has = [](const Batch& b, int t) { return std::count(b.tests.begin(), b.tests.end(), t) > 0; };
  // The last failures lead, all in the first batch; then the unknown test
  // with the longest of its binary.
  auto b1 = s.next(0);
  ASSERT_TRUE(b1);
  EXPECT_TRUE(has(*b1, 1) && has(*b1, 7) && has(*b1, 40));
  auto b2 = s.next(1);
  ASSERT_TRUE(b2);
  EXPECT_EQ(b2->group, 1);
  EXPECT_TRUE(has(*b2, 60) && has(*b2, 99));
  EXPECT_EQ(b2->tests.front(), 60) << "collection order within a batch";
  // The first batch's room after the failures went to its binary's longest.
  EXPECT_TRUE(has(*b1, 49));
  EXPECT_FALSE(has(*b1, 0));
}

TEST(SchedulerSimulation, TheShardHoldingALastFailureGoesFirst) {
  // Cheap tests, costly start: shards; test 5 failed last time.
  std::vector<bool> failed(20000, false);
  failed[5] = true;
  Scheduler s(std::vector<int>(20000, 0), iota_n(20000), 4);
  s.set_estimates(std::vector<double>(20000, 7e-6), failed);
  s.seed(0, 0.025, 7e-6);
  auto a = s.next(0);
  ASSERT_TRUE(a);
  ASSERT_EQ(a->shard_count, 4);  // a fair share each
  EXPECT_EQ(a->shard_index, 1);   // 5 % 4
  EXPECT_TRUE(std::count(a->tests.begin(), a->tests.end(), 5));
}

TEST(SchedulerSimulation, FailuresFirstWithoutEstimatesKeepsTheGivenOrderOtherwise) {
  std::vector<bool> failed(30, false);
  failed[25] = true;
  Scheduler s(std::vector<int>(30, 0), iota_n(30), 1);
  s.set_estimates({}, failed);
  EXPECT_FALSE(s.by_seconds());
  EXPECT_EQ(s.seconds_left(), -1);
  auto b = s.next(0);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 25}));  // ceil(30 / 3) by count
}

TEST(SchedulerSimulation, UnknownTestsCountAsTheirGroupsMeanEstimate) {
  // Group 0's known tests take 1 s; its unknown test counts as 1 s too, so
  // with a target of 2 s it shares its batch with one other.
  std::vector<double> est = {1, 1, 1, 1, -1, 1, 1, 1};
  Scheduler s(std::vector<int>(8, 0), iota_n(8), 1);
  s.set_estimates(est);
  EXPECT_NEAR(s.seconds_left(), 8, 1e-9);
  auto b = s.next(0);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests.size(), 4u);  // slice 8 / 2
  EXPECT_TRUE(std::count(b->tests.begin(), b->tests.end(), 4));
}

TEST(Scheduler, SettingsAfterTheFirstBatchChangeNothing) {
  Scheduler s(std::vector<int>(12, 0), iota_n(12), 2);
  auto a = s.next(0);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->tests, (std::vector<int>{0, 1}));  // ceil(12 / 6)
  s.set_estimates(std::vector<double>(12, 1.0), std::vector<bool>(12, true));
  s.set_units(std::vector<int>(12, 0));
  EXPECT_FALSE(s.by_seconds());
  EXPECT_EQ(s.remaining(), 10u);
  auto b = s.next(1);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests, (std::vector<int>{2, 3}));
}

// Units (--dist loadfile | loadscope | loadgroup).
TEST(Scheduler, UnitsForEachDistribution) {
  const std::vector<int> group = {0, 0, 0, 1, 1};
  const std::vector<std::string> names = {"A.x", "A.y", "B.x", "A.x", "Inst/C.y/0"};
  const std::vector<std::string> labels = {"db", "", "db", "db", "net"};
  EXPECT_EQ(Scheduler::units_for(Distribution::load, group, names), (std::vector<int>(5, -1)));
  EXPECT_EQ(Scheduler::units_for(Distribution::loadfile, group, names), (std::vector<int>{0, 0, 0, 1, 1}));
  EXPECT_EQ(Scheduler::units_for(Distribution::loadscope, group, names), (std::vector<int>{0, 0, 1, 2, 3}));
  EXPECT_EQ(Scheduler::units_for(Distribution::loadgroup, group, names, labels),
            (std::vector<int>{0, -1, 0, 0, 1}));
}

void expect_units_whole(const SimResult& r, const std::vector<int>& units) {
  std::map<int, int> where;
  for (std::size_t t = 0; t < units.size(); ++t) {
    if (units[t] < 0) continue;
    auto [it, fresh] = where.try_emplace(units[t], r.worker_of[t]);
    EXPECT_EQ(it->second, r.worker_of[t]) << "unit " << units[t] << " split across workers";
  }
}

// Four binaries of uneven size; tests of 10 suites each.
SimSpec unit_suite() {
  SimSpec spec;
  Lcg g{11};
  const int sizes[] = {400, 120, 60, 20};
  for (int b = 0; b < 4; ++b)
    for (int i = 0; i < sizes[b]; ++i) {
      spec.group_of.push_back(b);
      spec.durations.push_back(0.002 + 0.05 * g.uniform());
    }
  spec.workers = 3;
  return spec;
}

std::vector<std::string> suite_names(const SimSpec& spec) {
  std::vector<std::string> names;
  for (std::size_t t = 0; t < spec.durations.size(); ++t) names.push_back("S" + std::to_string(t % 10) + ".t");
  return names;
}

TEST(SchedulerSimulation, LoadfileRunsEachBinaryWholeOnOneWorker) {
  for (bool known : {false, true}) {
    auto spec = unit_suite();
    if (known) spec.estimates = spec.durations;
    spec.units = Scheduler::units_for(Distribution::loadfile, spec.group_of, {});
    const auto r = simulate(spec);
    expect_units_whole(r, spec.units);
    EXPECT_EQ(r.batches, 4u);  // one process a binary
    for (const auto& b : r.handed) EXPECT_EQ(b.shard_count, 1) << "a whole binary needs no filter";
    // The biggest binary first (longest first, by estimate or test count).
    EXPECT_EQ(r.handed.front().group, 0);
    // The bound for units: the biggest unit.
    double big = 0;
    for (int t = 0; t < 400; ++t) big += spec.durations[static_cast<std::size_t>(t)];
    EXPECT_LE(r.makespan, big + spec.start_cost + 1e-9);
  }
}

TEST(SchedulerSimulation, LoadscopeKeepsEachSuiteOnOneWorker) {
  for (bool known : {false, true}) {
    auto spec = unit_suite();
    if (known) spec.estimates = spec.durations;
    spec.units = Scheduler::units_for(Distribution::loadscope, spec.group_of, suite_names(spec));
    const auto r = simulate(spec);
    expect_units_whole(r, spec.units);
    for (const auto& b : r.handed) {
      // Whole suites only: a batch holds all of a suite's tests of its binary.
      std::set<int> in(b.tests.begin(), b.tests.end());
      for (int t : b.tests)
        for (std::size_t u = 0; u < spec.units.size(); ++u)
          if (spec.units[u] == spec.units[static_cast<std::size_t>(t)]) {
            EXPECT_TRUE(in.count(static_cast<int>(u)));
          }
    }
    if (known) {
      EXPECT_LE(r.ratio(), 1.10);
    }
  }
}

TEST(SchedulerSimulation, LoadgroupKeepsALabelOnOneWorkerAcrossBinaries) {
  for (bool known : {false, true}) {
    auto spec = unit_suite();
    if (known) spec.estimates = spec.durations;
    std::vector<std::string> labels(spec.durations.size());
    // "db" spans all four binaries; "net" two; the rest unlabelled.
    for (std::size_t t = 0; t < labels.size(); t += 37) labels[t] = "db";
    for (std::size_t t = 5; t < 450; t += 53) labels[t] = "net";
    spec.units = Scheduler::units_for(Distribution::loadgroup, spec.group_of, {}, labels);
    const auto r = simulate(spec);
    expect_units_whole(r, spec.units);
    // Unlabelled tests spread over every worker.
    std::set<int> used(r.worker_of.begin(), r.worker_of.end());
    EXPECT_EQ(used.size(), 3u);
    // No batch runs a whole binary while a part of it belongs to a unit on
    // another worker (shard 0 of 1 would run that part again).
    for (const auto& b : r.handed)
      if (b.shard_count == 1)
        for (std::size_t t = 0; t < spec.units.size(); ++t)
          if (spec.group_of[t] == b.group) {
            EXPECT_TRUE(std::count(b.tests.begin(), b.tests.end(), static_cast<int>(t)));
          }
  }
}

TEST(Scheduler, AUnitSpanningBinariesIsReservedForTheWorkerThatTookIt) {
  // Unit 0: tests 0 (binary 0) and 3 (binary 1); the rest on their own.
  Scheduler s({0, 0, 0, 1, 1, 1}, iota_n(6), 2);
  s.set_estimates({5, 1, 1, 5, 1, 1});
  s.set_units({0, -1, -1, 0, -1, -1});
  auto a = s.next(0);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->tests, std::vector<int>{0});  // the unit (10 s) first
  auto b = s.next(1);
  ASSERT_TRUE(b);
  EXPECT_FALSE(std::count(b->tests.begin(), b->tests.end(), 3)) << "unit 0 is worker 0's";
  for (int t : b->tests) s.finished(b->id, t);
  s.batch_done(b->id);
  for (int t : a->tests) s.finished(a->id, t);
  s.batch_done(a->id);
  auto c = s.next(0);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests, std::vector<int>{3});
  EXPECT_EQ(c->shard_count, 0) << "its binary was not handed out whole";
}

TEST(Scheduler, AUnitsCrashedRestGoesBackToItsWorker) {
  Scheduler s({0, 0, 0, 0, 0, 0}, iota_n(6), 2);
  s.set_units({0, 0, 0, 1, 1, 1});
  auto a = s.next(0);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->tests, (std::vector<int>{0, 1, 2}));
  // Test 1 crashes the process: 2 is unrun.
  s.finished(a->id, 0);
  s.finished(a->id, 1);
  EXPECT_TRUE(s.batch_done(a->id).empty());
  auto b = s.next(1);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests, (std::vector<int>{3, 4, 5}));
  EXPECT_FALSE(s.next(1)) << "test 2 is worker 0's";
  auto c = s.next(0);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests, std::vector<int>{2});
  // A batch where nothing ran still charges attempts, on the same worker.
  std::vector<int> given_up;
  for (int i = 0; i < Scheduler::kMaxAttempts && given_up.empty(); ++i) {
    if (i > 0) {
      c = s.next(0);
      ASSERT_TRUE(c);
    }
    given_up = s.batch_done(c->id);
  }
  EXPECT_EQ(given_up, std::vector<int>{2});
}

TEST(Scheduler, ALostWorkersUnitsGoWholeToAnother) {
  Scheduler s({0, 0, 1, 1, 0, 1}, iota_n(6), 2);
  s.set_units({0, 0, 0, 0, -1, -1});  // unit 0 spans both binaries
  auto a = s.next(0);
  ASSERT_TRUE(a);
  ASSERT_EQ(a->tests, (std::vector<int>{0, 1}));
  s.finished(a->id, 0);
  const std::size_t before = s.remaining();
  s.worker_lost(0);
  // Test 1 (in flight) and 2, 3 (reserved) come back.
  EXPECT_EQ(s.remaining(), before + 1);
  auto b = s.next(1);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->tests, std::vector<int>{1});
  for (int t : b->tests) s.finished(b->id, t);
  s.batch_done(b->id);
  auto c = s.next(1);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests, (std::vector<int>{2, 3}));
}

TEST(Scheduler, LostWorkerRequeuesFirstWithEstimates) {
  std::vector<double> est(40, 0.5);
  Scheduler s(std::vector<int>(40, 0), iota_n(40), 2);
  s.set_estimates(est);
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  const double left = s.seconds_left();
  s.finished(a->id, a->tests[0]);
  s.worker_lost(0);
  EXPECT_NEAR(s.seconds_left(), left - 0.5, 1e-9);
  auto c = s.next(1);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->tests.front(), a->tests[1]);
}


TEST(SchedulerSimulation, SuitesStayWithinFivePercentOverWorkerCountsAndBinaries) {
  // The same suites, longest last, on 2 to 16 workers, in one binary or
  // spread over five (batches never mix binaries).
  for (const auto& d : {uniform_suite(), heavy_tailed_suite(), giant_suite(), tiny_suite()}) {
    for (int workers : {2, 3, 8, 16}) {
      for (int binaries : {1, 5}) {
        SimSpec spec;
        spec.durations = d;
        spec.estimates = d;
        spec.workers = workers;
        for (std::size_t t = 0; t < d.size(); ++t) spec.group_of.push_back(static_cast<int>(t % 5) % binaries);
        spec.order = longest_last(d);
        const auto r = simulate(spec);
        EXPECT_LE(r.ratio(), 1.05) << d.size() << " tests, " << workers << " workers, " << binaries << " binaries";
      }
    }
  }
}

TEST(SchedulerSimulation, SeveralBinariesAreNotCutIntoShardsEarly) {
  // Without estimates: five binaries of 80 tests, three workers. Early on
  // the slice is large, so each binary would fit in two batches, but shards
  // cut then stay large for the tail (they made this run 10% longer).
  SimSpec spec;
  spec.durations = uniform_suite();
  spec.workers = 3;
  for (std::size_t t = 0; t < spec.durations.size(); ++t) spec.group_of.push_back(static_cast<int>(t / 80));
  const auto r = simulate(spec);
  for (const auto& b : r.handed) EXPECT_EQ(b.shard_count, 0);
  EXPECT_LE(r.ratio(), 1.05);
}

}  // namespace
}  // namespace dtest
