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
    for (int t : b->tests) s.finished(b->id, t, 0.5);
    EXPECT_TRUE(s.batch_done(b->id, {}).empty());
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
    s.batch_done(b->id, {});  // no durations known: sizing by count only
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
  for (int t : b1->tests) s.finished(b1->id, t, 1e-5);  // 10 us each
  s.batch_done(b1->id, {});
  // Now 0.05 s / 10 us = 5000 tests amortise a start; a fair share of what
  // is left (4167) is less than that, so the batch is the amortising size.
  EXPECT_EQ(s.remaining(), 8333u);
  EXPECT_EQ(s.batch_size_for(0), 5000u);
}

TEST(Scheduler, AmortisingSizeBeatsTheCountSliceWithinAFairShare) {
  const int n = 100;
  Scheduler s(std::vector<int>(n, 0), iota_n(n), 2);
  auto b1 = s.next(0);
  ASSERT_TRUE(b1);
  EXPECT_EQ(b1->tests.size(), 17u);  // ceil(100 / 6)
  for (int t : b1->tests) s.finished(b1->id, t, 0.002);  // 25 tests amortise
  s.batch_done(b1->id, {});
  EXPECT_EQ(s.remaining(), 83u);
  // count slice ceil(83 / 6) = 14 < 25 <= fair share ceil(83 / 2) = 42
  EXPECT_EQ(s.batch_size_for(0), 25u);
  for (int t = 0; t < 20; ++t) s.finished(b1->id, t, 0.01);  // ignored: batch is done
  EXPECT_EQ(s.batch_size_for(0), 25u);
}

TEST(Scheduler, UnrunTestsGoBackToTheFrontForFreeWhenTheBatchMadeProgress) {
  Scheduler s(std::vector<int>(40, 0), iota_n(40), 1);
  auto first = s.next(0);
  ASSERT_TRUE(first);
  s.finished(first->id, 0, 0.1);
  std::vector<int> unrun(first->tests.begin() + 1, first->tests.end());
  EXPECT_TRUE(s.batch_done(first->id, unrun).empty());
  // Test 1 keeps coming back unrun while others in its batch run: more
  // rounds than kMaxAttempts, never given up, always first.
  int rounds = 0;
  while (auto b = s.next(0)) {
    if (b->tests.size() < 2) break;
    EXPECT_EQ(b->tests.front(), 1);
    for (std::size_t i = 1; i < b->tests.size(); ++i) s.finished(b->id, b->tests[i], 0.001);
    EXPECT_TRUE(s.batch_done(b->id, {1}).empty());
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
    given_up = s.batch_done(b->id, b->tests);  // the process died before any test
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
  s.batch_done(b->id, {});  // the agent said nothing about test 0
  auto again = s.next(0);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->tests.front(), 0);
}

TEST(Scheduler, LostWorkerRequeuesOnlyTestsWithoutAnOutcome) {
  Scheduler s(std::vector<int>(30, 0), iota_n(30), 2);
  auto a = s.next(0);
  auto b = s.next(1);
  ASSERT_TRUE(a && b);
  s.finished(a->id, a->tests[0], 0.1);
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
  using Ev = std::pair<double, int>;  // (time free, worker)
  std::priority_queue<Ev, std::vector<Ev>, std::greater<>> free;
  for (int w = 0; w < workers; ++w) free.push({0.0, w});
  std::vector<int> runs(static_cast<std::size_t>(n), 0);
  SimResult r;
  while (!free.empty()) {
    auto [t, w] = free.top();
    free.pop();
    auto b = s.next(w);
    if (!b) {
      r.makespan = std::max(r.makespan, t);
      continue;
    }
    ++r.batches;
    double end = t + start_cost;
    for (int test : b->tests) {
      end += durations[static_cast<std::size_t>(test)];
      s.finished(b->id, test, durations[static_cast<std::size_t>(test)]);
      ++runs[static_cast<std::size_t>(test)];
    }
    EXPECT_TRUE(s.batch_done(b->id, {}).empty());
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
  const auto r = simulate(std::vector<double>(20000, 1e-5), 2, 0.005);
  EXPECT_LE(r.batches, 12u);
  EXPECT_LE(r.makespan, r.bound + 12 * 0.005);
}

}  // namespace
}  // namespace dtest
