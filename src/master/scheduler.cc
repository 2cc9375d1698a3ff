#include "master/scheduler.h"

#include <algorithm>
#include <cmath>

namespace dtest {

Scheduler::Scheduler(std::vector<int> group_of, const std::vector<int>& order, int workers)
    : group_of_(std::move(group_of)), attempts_(group_of_.size(), 0), workers_(workers > 0 ? workers : 1) {
  int groups = 0;
  for (int g : group_of_) groups = std::max(groups, g + 1);
  queues_.resize(static_cast<std::size_t>(groups));
  stats_.resize(static_cast<std::size_t>(groups));
  untouched_.assign(static_cast<std::size_t>(groups), 1);
  shards_.resize(static_cast<std::size_t>(groups));
  shard_count_.assign(static_cast<std::size_t>(groups), 0);
  next_shard_.assign(static_cast<std::size_t>(groups), 0);
  for (int t : order) {
    auto& q = queues_[static_cast<std::size_t>(group_of_[static_cast<std::size_t>(t)])];
    if (q.empty()) group_order_.push_back(group_of_[static_cast<std::size_t>(t)]);
    q.push_back(t);
    ++remaining_;
  }
}

std::size_t Scheduler::batch_size_for(int group) const {
  const double rem = static_cast<double>(remaining_);
  const double w = static_cast<double>(workers_);
  const double slice = std::ceil(rem / (3 * w));
  // A fair share counts the other workers' unfinished tests too: a worker
  // that frees up while another is busy takes half of everything left, not
  // half the queue, so shares do not halve at every step of the tail.
  std::size_t unfinished = 0;
  for (const auto& [id, left] : inflight_left_) unfinished += left.size();
  const double share = std::min(std::ceil((rem + static_cast<double>(unfinished)) / w), rem);
  double min_chunk = 1;
  const auto& st = stats_[static_cast<std::size_t>(group)];
  if (st.tests > 0) {
    const double per_test = std::max(st.work_seconds / static_cast<double>(st.tests), 1e-7);
    const double startup = st.startups ? st.startup_seconds / st.startups : kDefaultStartup;
    min_chunk = std::ceil(startup / (kMaxOverhead * per_test) - 1e-9);  // 1e-9: float noise
  }
  // Never more than a fair share: splitting beats one worker doing it all
  // in wall time whenever the others are idle.
  const double size = std::min(std::max(slice, min_chunk), share);
  return static_cast<std::size_t>(std::max(size, 1.0));
}

void Scheduler::seed(int group, double startup, double per_test) {
  if (group < 0 || static_cast<std::size_t>(group) >= stats_.size()) return;
  auto& st = stats_[static_cast<std::size_t>(group)];
  st.startup_seconds += startup;
  ++st.startups;
  st.work_seconds += per_test;
  ++st.tests;
}

Batch Scheduler::take(int worker, int group, std::vector<int> tests) {
  Batch b;
  b.id = next_id_++;
  b.worker = worker;
  b.group = group;
  b.tests = std::move(tests);
  remaining_ -= b.tests.size();
  inflight_left_[b.id] = std::unordered_set<int>(b.tests.begin(), b.tests.end());
  inflight_[b.id] = b;
  return b;
}

std::optional<Batch> Scheduler::next(int worker) {
  auto has_work = [&](int g) {
    return !queues_[static_cast<std::size_t>(g)].empty() || !shards_[static_cast<std::size_t>(g)].empty();
  };
  while (!group_order_.empty() && !has_work(group_order_.front())) group_order_.pop_front();
  if (group_order_.empty()) return std::nullopt;
  const int g = group_order_.front();
  const auto gi = static_cast<std::size_t>(g);
  auto& q = queues_[gi];
  if (shards_[gi].empty() && untouched_[gi]) {
    untouched_[gi] = 0;
    const std::size_t size = std::min(batch_size_for(g), q.size());
    const std::size_t count = (q.size() + size - 1) / size;
    // Shard only when that is at most one batch per worker: cheap tests and
    // costly starts, where a filter naming thousands of tests would cost
    // more than the tail it saves. (A probe round, or slow tests, keep
    // shrinking batches.)
    if (sharding_ && count <= static_cast<std::size_t>(workers_)) {
      std::vector<std::vector<int>> lists(count);
      for (std::size_t p = 0; p < q.size(); ++p) lists[p % count].push_back(q[p]);
      q.clear();
      shards_[gi].assign(lists.begin(), lists.end());
      shard_count_[gi] = static_cast<int>(count);
      next_shard_[gi] = 0;
    }
  }
  if (!shards_[gi].empty()) {
    std::vector<int> tests = std::move(shards_[gi].front());
    shards_[gi].pop_front();
    Batch b = take(worker, g, std::move(tests));
    b.shard_index = next_shard_[gi]++;
    b.shard_count = shard_count_[gi];
    inflight_[b.id] = b;
    return b;
  }
  const std::size_t n = std::min(batch_size_for(g), q.size());
  std::vector<int> tests(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(n));
  q.erase(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(n));
  return take(worker, g, std::move(tests));
}

void Scheduler::finished(std::int64_t batch, int test) {
  auto it = inflight_left_.find(batch);
  if (it != inflight_left_.end()) it->second.erase(test);
}

void Scheduler::requeue_front(const std::vector<int>& tests) {
  // Preserve their relative order at the front of each group's queue, and
  // put their groups first so they run next.
  for (auto it = tests.rbegin(); it != tests.rend(); ++it) {
    const int g = group_of_[static_cast<std::size_t>(*it)];
    queues_[static_cast<std::size_t>(g)].push_front(*it);
    ++remaining_;
  }
  std::vector<int> seen;
  for (auto it = tests.rbegin(); it != tests.rend(); ++it) {
    const int g = group_of_[static_cast<std::size_t>(*it)];
    if (std::find(seen.begin(), seen.end(), g) == seen.end()) {
      seen.push_back(g);
      group_order_.push_front(g);
    }
  }
}

std::vector<int> Scheduler::batch_done(std::int64_t batch, double wall, double startup) {
  std::vector<int> give_up;
  auto it = inflight_left_.find(batch);
  if (it == inflight_left_.end()) return give_up;
  const Batch& b = inflight_.at(batch);
  const std::size_t ran = b.tests.size() - it->second.size();
  const bool progress = ran > 0;
  auto& st = stats_[static_cast<std::size_t>(b.group)];
  if (startup >= 0) {
    st.startup_seconds += startup;
    ++st.startups;
  }
  if (wall >= 0 && ran > 0) {
    st.work_seconds += std::max(wall - std::max(startup, 0.0), 0.0);
    st.tests += static_cast<long>(ran);
  }
  // Every test still without an outcome goes back, whether the agent listed
  // it as unrun or (a protocol slip) said nothing about it: none is lost.
  std::vector<int> again = left_in_order(batch);
  // A batch that made progress requeues its rest for free: each such batch
  // shrinks the work, so this ends. A batch where nothing ran charges its
  // first test, the one the process should have reached; after kMaxAttempts
  // that test is given up (reported not run) and the others go on.
  if (!progress && !again.empty()) {
    const int first = again.front();
    if (++attempts_[static_cast<std::size_t>(first)] >= kMaxAttempts) {
      give_up.push_back(first);
      again.erase(again.begin());
    }
  }
  inflight_left_.erase(it);
  inflight_.erase(batch);
  requeue_front(again);
  return give_up;
}

void Scheduler::worker_lost(int worker) {
  std::vector<int> again;
  for (auto it = inflight_.begin(); it != inflight_.end();) {
    if (it->second.worker == worker) {
      const auto left = left_in_order(it->first);
      again.insert(again.end(), left.begin(), left.end());
      inflight_left_.erase(it->first);
      it = inflight_.erase(it);
    } else {
      ++it;
    }
  }
  requeue_front(again);
}

std::vector<int> Scheduler::left_in_order(std::int64_t batch) const {
  std::vector<int> out;
  const auto& left = inflight_left_.at(batch);
  for (int t : inflight_.at(batch).tests)
    if (left.count(t)) out.push_back(t);
  return out;
}

std::vector<int> Scheduler::drain() {
  std::vector<int> out;
  for (auto& pending : shards_) {
    for (auto& list : pending) out.insert(out.end(), list.begin(), list.end());
    pending.clear();
  }
  for (int g : group_order_) {
    auto& q = queues_[static_cast<std::size_t>(g)];
    out.insert(out.end(), q.begin(), q.end());
    q.clear();
  }
  group_order_.clear();
  remaining_ = 0;
  return out;
}

}  // namespace dtest
