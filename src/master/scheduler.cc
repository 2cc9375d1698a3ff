#include "master/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace dtest {

namespace {
constexpr std::int64_t kNoRank = std::numeric_limits<std::int64_t>::max();

std::size_t idx(int i) { return static_cast<std::size_t>(i); }
}  // namespace

std::vector<int> Scheduler::units_for(Distribution mode, const std::vector<int>& group_of,
                                      const std::vector<std::string>& names,
                                      const std::vector<std::string>& labels) {
  std::vector<int> out(group_of.size(), -1);
  std::map<std::pair<int, std::string>, int> ids;  // (group or -1, key) -> unit
  auto unit = [&](int group, std::string key) {
    auto [it, fresh] = ids.try_emplace({group, std::move(key)}, static_cast<int>(ids.size()));
    return it->second;
  };
  for (std::size_t t = 0; t < group_of.size(); ++t) {
    switch (mode) {
      case Distribution::load:
        break;
      case Distribution::loadfile:
        // pytest node ids carry their file ("tests/a.py::test_x"); a
        // GoogleTest binary is one file.
        if (t < names.size() && names[t].find("::") != std::string::npos)
          out[t] = unit(group_of[t], names[t].substr(0, names[t].find("::")));
        else
          out[t] = unit(group_of[t], {});
        break;
      case Distribution::loadscope:
        // pytest: the node id up to its last "::" (class or module, as
        // xdist's loadscope); GoogleTest: the test suite.
        if (t < names.size() && names[t].find("::") != std::string::npos)
          out[t] = unit(group_of[t], names[t].substr(0, names[t].rfind("::")));
        else if (t < names.size())
          out[t] = unit(group_of[t], names[t].substr(0, names[t].find('.')));
        break;
      case Distribution::loadgroup:
        if (t < labels.size() && !labels[t].empty()) out[t] = unit(-1, labels[t]);
        break;
    }
  }
  return out;
}

Scheduler::Scheduler(std::vector<int> group_of, const std::vector<int>& order, int workers)
    : group_of_(std::move(group_of)), order_(order), attempts_(group_of_.size(), 0),
      workers_(workers > 0 ? workers : 1) {
  int groups = 0;
  for (int g : group_of_) groups = std::max(groups, g + 1);
  const auto ng = idx(groups);
  queues_.resize(ng);
  stats_.resize(ng);
  untouched_.assign(ng, 1);
  has_units_.assign(ng, 0);
  shards_.resize(ng);
  shard_count_.assign(ng, 0);
  const std::size_t n = group_of_.size();
  pos_.assign(n, -1);
  for (std::size_t p = 0; p < order_.size(); ++p) pos_[idx(order_[p])] = static_cast<int>(p);
  est_.assign(n, -1.0);
  failed_.assign(n, 0);
  unit_of_.assign(n, -1);
  rebuild();
}

void Scheduler::set_estimates(std::vector<double> seconds, std::vector<bool> failed_last) {
  if (started_) return;
  seconds.resize(group_of_.size(), -1.0);
  est_ = std::move(seconds);
  for (auto& e : est_)
    if (!(e >= 0) || !std::isfinite(e)) e = -1.0;  // NaN, infinity: unknown
  failed_.assign(group_of_.size(), 0);
  for (std::size_t t = 0; t < failed_last.size() && t < failed_.size(); ++t) failed_[t] = failed_last[t] ? 1 : 0;
  rebuild();
}

void Scheduler::set_units(std::vector<int> unit_of) {
  if (started_) return;
  unit_of.resize(group_of_.size(), -1);
  for (auto& u : unit_of) u = std::max(u, -1);
  unit_of_ = std::move(unit_of);
  rebuild();
}

void Scheduler::seed(int group, double startup, double per_test) {
  if (group < 0 || idx(group) >= stats_.size()) return;
  auto& st = stats_[idx(group)];
  st.startup_seconds += startup;
  ++st.startups;
  st.work_seconds += per_test;
  ++st.tests;
  // A seeded per-test cost stands in for the unknown estimates of a group
  // without any known one.
  if (!started_ && by_seconds_ && needs_cost_[idx(group)]) rebuild();
}

void Scheduler::rebuild() {
  const std::size_t groups = queues_.size();
  for (auto& q : queues_) q.clear();
  has_units_.assign(groups, 0);
  untouched_.assign(groups, 1);
  needs_cost_.assign(groups, 0);

  // Weights: estimated seconds when any test to run has an estimate.
  by_seconds_ = false;
  for (int t : order_)
    if (est_[idx(t)] >= 0) by_seconds_ = true;
  weight_.assign(group_of_.size(), 1.0);
  if (by_seconds_) {
    std::vector<double> gsum(groups, 0.0);
    std::vector<long> gcount(groups, 0);
    double sum = 0;
    long count = 0;
    for (int t : order_) {
      const double e = est_[idx(t)];
      if (e < 0) continue;
      const auto g = idx(group_of_[idx(t)]);
      gsum[g] += e;
      ++gcount[g];
      sum += e;
      ++count;
    }
    for (int t : order_) {
      const auto g = idx(group_of_[idx(t)]);
      double w = est_[idx(t)];
      if (w < 0) {
        if (gcount[g] > 0) {
          w = gsum[g] / static_cast<double>(gcount[g]);
        } else {
          needs_cost_[g] = 1;
          w = stats_[g].tests > 0 ? stats_[g].work_seconds / static_cast<double>(stats_[g].tests)
                                  : sum / static_cast<double>(count);
        }
      }
      weight_[idx(t)] = std::max(w, kMinWeight);
    }
  }
  auto tier = [&](int t) {
    if (failed_[idx(t)]) return 0;
    return by_seconds_ && est_[idx(t)] < 0 ? 1 : 2;
  };

  // Entries: a test on its own, or a unit (its parts, one per group).
  struct Entry {
    int tier = 2;
    double weight = 0;
    int first = 0;  // position of its first test
    int unit = -1;
    std::vector<std::pair<int, std::vector<int>>> parts;  // (group, tests)
  };
  std::vector<Entry> entries;
  std::unordered_map<int, std::size_t> entry_of_unit;
  bool any_unit = false;
  for (int t : order_) {
    const int u = unit_of_[idx(t)];
    const int g = group_of_[idx(t)];
    Entry* e = nullptr;
    if (u < 0) {
      entries.emplace_back();
      e = &entries.back();
      e->first = pos_[idx(t)];
      e->tier = tier(t);
    } else {
      any_unit = true;
      has_units_[idx(g)] = 1;
      auto [it, fresh] = entry_of_unit.try_emplace(u, entries.size());
      if (fresh) {
        entries.emplace_back();
        entries.back().first = pos_[idx(t)];
        entries.back().unit = u;
        entries.back().tier = 2;
      }
      e = &entries[it->second];
      e->tier = std::min(e->tier, tier(t));
    }
    e->weight += weight_[idx(t)];
    auto part = std::find_if(e->parts.begin(), e->parts.end(), [&](const auto& p) { return p.first == g; });
    if (part == e->parts.end()) part = e->parts.insert(e->parts.end(), {g, {}});
    part->second.push_back(t);
  }
  // Longest first when estimates (or units, by test count) say something;
  // otherwise the given order, failures first.
  const bool by_weight = by_seconds_ || any_unit;
  std::stable_sort(entries.begin(), entries.end(), [&](const Entry& a, const Entry& b) {
    if (a.tier != b.tier) return a.tier < b.tier;
    if (by_weight && a.weight != b.weight) return a.weight > b.weight;
    return a.first < b.first;
  });
  remaining_ = 0;
  remaining_weight_ = 0;
  for (std::size_t r = 0; r < entries.size(); ++r) {
    for (auto& [g, tests] : entries[r].parts) {  // tests in collection order, as batches run them
      Item item;
      item.weight = weight_of(tests);
      item.rank = static_cast<std::int64_t>(r);
      item.unit = entries[r].unit;
      remaining_ += tests.size();
      remaining_weight_ += item.weight;
      item.tests = std::move(tests);
      queues_[idx(g)].push_back(std::move(item));
    }
  }
  unit_groups_.clear();
  for (int t : order_)
    if (const int u = unit_of_[idx(t)]; u >= 0) {
      auto& gs = unit_groups_[u];
      if (std::find(gs.begin(), gs.end(), group_of_[idx(t)]) == gs.end()) gs.push_back(group_of_[idx(t)]);
    }
  front_rank_ = 0;
}

double Scheduler::weight_of(const std::vector<int>& tests) const {
  double w = 0;
  for (int t : tests) w += weight_[idx(t)];
  return w;
}

double Scheduler::seconds_left() const {
  return by_seconds_ ? std::max(remaining_weight_ + unfinished_weight_, 0.0) : -1.0;
}

Scheduler::Sizing Scheduler::sizing(int group) const {
  const double w = static_cast<double>(workers_);
  const auto& st = stats_[idx(group)];
  Sizing z;
  if (!by_seconds_) {
    const double rem = static_cast<double>(remaining_);
    z.slice = std::ceil(rem / (kCountSlice * w));
    // A fair share counts the other workers' unfinished tests too: a worker
    // that frees up while another is busy takes half of everything left, not
    // half the queue, so shares do not halve at every step of the tail.
    const double unfinished = std::round(unfinished_weight_);  // one per test
    z.share = std::min(std::ceil((rem + unfinished) / w), rem);
    z.min_chunk = 1;
    if (st.tests > 0) {
      const double per_test = std::max(st.work_seconds / static_cast<double>(st.tests), 1e-7);
      const double startup = st.startups ? st.startup_seconds / st.startups : kDefaultStartup;
      z.min_chunk = std::ceil(startup / (kMaxOverhead * per_test) - 1e-9);  // 1e-9: float noise
    }
    // Never more than a fair share: splitting beats one worker doing it all
    // in wall time whenever the others are idle.
    z.target = std::max(std::min(std::max(z.slice, z.min_chunk), z.share), 1.0);
    return z;
  }
  const double rem = std::max(remaining_weight_, 0.0);
  z.slice = rem / (kSecondsSlice * w);
  z.share = std::min((rem + std::max(unfinished_weight_, 0.0)) / w, rem);
  const double startup = st.startups ? st.startup_seconds / st.startups : kDefaultStartup;
  z.min_chunk = startup / kMaxOverhead;
  z.target = std::max(std::min(std::max(z.slice, z.min_chunk), z.share), kMinWeight);
  return z;
}

std::size_t Scheduler::items_fitting(int group, double target) const {
  const auto& q = queues_[idx(group)];
  const double limit = target * (1 + 1e-9);
  double sum = 0;
  std::size_t k = 0;
  for (const auto& item : q) {
    if (k > 0 && sum + item.weight > limit) break;
    sum += item.weight;
    ++k;
  }
  return k;
}

std::size_t Scheduler::batch_size_for(int group) const {
  if (group < 0 || idx(group) >= queues_.size()) return 0;
  if (!by_seconds_ && unit_groups_.empty()) return static_cast<std::size_t>(sizing(group).target);
  const auto& q = queues_[idx(group)];
  const std::size_t k = items_fitting(group, sizing(group).target);
  std::size_t n = 0;
  for (std::size_t i = 0; i < k; ++i) n += q[i].tests.size();
  return n;
}

std::int64_t Scheduler::head_rank(int group) const {
  std::int64_t r = shards_[idx(group)].empty() ? kNoRank : shards_[idx(group)].front().rank;
  const auto& q = queues_[idx(group)];
  if (!q.empty()) r = std::min(r, q.front().rank);
  return r;
}

bool Scheduler::try_shard(int group) {
  auto& q = queues_[idx(group)];
  if (q.empty()) return false;
  const Sizing z = sizing(group);
  const double target = z.target;
  std::size_t count = 0;
  if (!by_seconds_) {
    const std::size_t size = std::min(static_cast<std::size_t>(target), q.size());
    count = (q.size() + size - 1) / size;
  } else {
    double total = 0;
    for (const auto& item : q) total += item.weight;
    count = static_cast<std::size_t>(std::max(std::ceil(total / target - 1e-9), 1.0));
    count = std::min(count, q.size());
  }
  // Shard only when the group goes out whole, or in at most one batch per
  // worker because the minimum chunk reaches a fair share (cheap tests,
  // costly starts), where a filter naming thousands of tests would cost more
  // than the tail it saves. Batches of that size are what the group would
  // get anyway. Not merely because the slice is large early in the run: with
  // several groups, shards cut then would stay large for the tail. (A probe
  // round, or slow tests, keep shrinking batches.)
  if (count > 1 && (count > idx(workers_) || z.min_chunk < z.share)) return false;
  std::vector<int> tests;
  std::unordered_map<int, std::int64_t> rank;
  for (const auto& item : q)
    for (int t : item.tests) {
      tests.push_back(t);
      rank[t] = item.rank;
    }
  std::sort(tests.begin(), tests.end(), [&](int a, int b) { return pos_[idx(a)] < pos_[idx(b)]; });
  std::vector<std::vector<int>> lists(count);
  for (std::size_t p = 0; p < tests.size(); ++p) lists[p % count].push_back(tests[p]);
  // With estimates: only when no shard is heavier than a batch would be,
  // so sharding never lengthens the tail.
  if (by_seconds_ && count > 1)
    for (const auto& l : lists)
      if (weight_of(l) > target * kShardSlack) return false;
  // Out by rank: the shard holding the most urgent test first.
  std::vector<Shard> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    out[i].index = static_cast<int>(i);
    out[i].rank = kNoRank;
    for (int t : lists[i]) out[i].rank = std::min(out[i].rank, rank[t]);
    out[i].tests = std::move(lists[i]);
  }
  std::stable_sort(out.begin(), out.end(), [](const Shard& a, const Shard& b) { return a.rank < b.rank; });
  q.clear();
  shards_[idx(group)].assign(out.begin(), out.end());
  shard_count_[idx(group)] = static_cast<int>(count);
  return true;
}

Batch Scheduler::take(int worker, int group, std::vector<int> tests) {
  // Collection order within a batch: the order the process runs them in, so
  // the first test without an outcome is the one it should have reached.
  std::sort(tests.begin(), tests.end(), [&](int a, int b) { return pos_[idx(a)] < pos_[idx(b)]; });
  started_ = true;
  Flight f;
  f.batch.id = next_id_++;
  f.batch.worker = worker;
  f.batch.group = group;
  f.batch.tests = std::move(tests);
  f.left = std::unordered_set<int>(f.batch.tests.begin(), f.batch.tests.end());
  f.left_weight = weight_of(f.batch.tests);
  remaining_ -= f.batch.tests.size();
  remaining_weight_ -= f.left_weight;
  if (remaining_ == 0) remaining_weight_ = 0;  // no float residue
  unfinished_weight_ += f.left_weight;
  const std::int64_t id = f.batch.id;
  return inflight_.emplace(id, std::move(f)).first->second.batch;
}

void Scheduler::reserve_unit(int worker, int unit) {
  owner_[unit] = worker;
  // A unit spanning groups: its parts elsewhere wait for this worker.
  auto spans = unit_groups_.find(unit);
  if (spans == unit_groups_.end() || spans->second.size() < 2) return;
  auto& mine = pinned_[worker];
  for (int g : spans->second) {
    auto& q = queues_[idx(g)];
    for (auto it = q.begin(); it != q.end();) {
      if (it->unit == unit) {
        mine.push_back(std::move(*it));
        it = q.erase(it);
        // Its tests are no longer all in the queue: never hand the rest of
        // the group out whole (shard 0 of 1 would run them again).
        untouched_[idx(g)] = 0;
      } else {
        ++it;
      }
    }
  }
}

std::optional<Batch> Scheduler::next(int worker) {
  // Parts of this worker's units first.
  if (auto it = pinned_.find(worker); it != pinned_.end()) {
    if (!it->second.empty()) {
      Item item = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) pinned_.erase(it);
      const int g = group_of_[idx(item.tests.front())];
      untouched_[idx(g)] = 0;
      return take(worker, g, std::move(item.tests));
    }
    pinned_.erase(it);
  }
  int g = -1;
  std::int64_t best = kNoRank;
  for (std::size_t i = 0; i < queues_.size(); ++i) {
    const std::int64_t r = head_rank(static_cast<int>(i));
    if (r < best) {
      best = r;
      g = static_cast<int>(i);
    }
  }
  if (g < 0) return std::nullopt;
  const auto gi = idx(g);
  const bool whole = untouched_[gi] != 0;
  if (whole) {
    untouched_[gi] = 0;
    if (sharding_ && !has_units_[gi]) try_shard(g);
  }
  auto& q = queues_[gi];
  if (!shards_[gi].empty() && (q.empty() || shards_[gi].front().rank < q.front().rank)) {
    Shard shard = std::move(shards_[gi].front());
    shards_[gi].pop_front();
    const int index = shard.index;
    Batch b = take(worker, g, std::move(shard.tests));
    auto& f = inflight_.at(b.id);
    f.batch.shard_index = b.shard_index = index;
    f.batch.shard_count = b.shard_count = shard_count_[gi];
    return b;
  }
  const std::size_t k = items_fitting(g, sizing(g).target);
  std::vector<int> tests;
  std::vector<int> units;
  for (std::size_t i = 0; i < k; ++i) {
    Item& item = q.front();
    tests.insert(tests.end(), item.tests.begin(), item.tests.end());
    if (item.unit >= 0) units.push_back(item.unit);
    q.pop_front();
  }
  for (int u : units) reserve_unit(worker, u);
  Batch b = take(worker, g, std::move(tests));
  // The whole of a group nothing was taken from: no filter needed.
  if (whole && sharding_ && q.empty() && shards_[gi].empty()) {
    auto& f = inflight_.at(b.id);
    f.batch.shard_index = b.shard_index = 0;
    f.batch.shard_count = b.shard_count = 1;
  }
  return b;
}

void Scheduler::finished(std::int64_t batch, int test) {
  auto it = inflight_.find(batch);
  if (it == inflight_.end()) return;
  if (it->second.left.erase(test)) {
    it->second.left_weight -= weight_[idx(test)];
    unfinished_weight_ -= weight_[idx(test)];
  }
}

void Scheduler::requeue_front(const std::vector<int>& tests) {
  if (tests.empty()) return;
  // Items in the order given: a test on its own, or a unit's tests of one
  // group together (at its first test's place); a unit's parts share a rank.
  std::vector<Item> items;
  std::map<std::pair<int, int>, std::size_t> part;  // (unit, group) -> item
  std::unordered_map<int, std::int64_t> slot_of_unit;
  std::int64_t slots = 0;
  for (int t : tests) {
    const int u = unit_of_[idx(t)];
    const int g = group_of_[idx(t)];
    if (u >= 0) {
      auto [it, fresh] = part.try_emplace({u, g}, items.size());
      if (fresh) {
        Item item;
        item.unit = u;
        auto [s, new_unit] = slot_of_unit.try_emplace(u, slots);
        if (new_unit) ++slots;
        item.rank = s->second;
        items.push_back(std::move(item));
      }
      items[it->second].tests.push_back(t);
    } else {
      Item item;
      item.rank = slots++;
      item.tests.push_back(t);
      items.push_back(std::move(item));
    }
  }
  // Ranks below everything queued, in the given order.
  for (auto& item : items) {
    item.rank = front_rank_ - slots + item.rank;
    item.weight = weight_of(item.tests);
    remaining_ += item.tests.size();
    remaining_weight_ += item.weight;
  }
  front_rank_ -= slots;
  for (auto it = items.rbegin(); it != items.rend(); ++it) {
    const int g = group_of_[idx(it->tests.front())];
    queues_[idx(g)].push_front(std::move(*it));
  }
}

void Scheduler::pin_front(int worker, const std::vector<int>& tests) {
  if (tests.empty()) return;
  std::vector<Item> items;  // one per group, in the order given
  for (int t : tests) {
    const int g = group_of_[idx(t)];
    auto it = std::find_if(items.begin(), items.end(),
                           [&](const Item& i) { return group_of_[idx(i.tests.front())] == g; });
    if (it == items.end()) {
      items.emplace_back();
      it = items.end() - 1;
      it->unit = unit_of_[idx(t)];
    }
    it->tests.push_back(t);
  }
  auto& mine = pinned_[worker];
  for (auto it = items.rbegin(); it != items.rend(); ++it) {
    it->weight = weight_of(it->tests);
    remaining_ += it->tests.size();
    remaining_weight_ += it->weight;
    mine.push_front(std::move(*it));
  }
}

std::vector<int> Scheduler::batch_done(std::int64_t batch, double wall, double startup) {
  std::vector<int> give_up;
  auto it = inflight_.find(batch);
  if (it == inflight_.end()) return give_up;
  Flight& f = it->second;
  const std::size_t ran = f.batch.tests.size() - f.left.size();
  const bool progress = ran > 0;
  auto& st = stats_[idx(f.batch.group)];
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
  std::vector<int> again = left_in_order(f);
  // A batch that made progress requeues its rest for free: each such batch
  // shrinks the work, so this ends. A batch where nothing ran charges its
  // first test, the one the process should have reached; after kMaxAttempts
  // that test is given up (reported not run) and the others go on.
  if (!progress && !again.empty()) {
    const int first = again.front();
    if (++attempts_[idx(first)] >= kMaxAttempts) {
      give_up.push_back(first);
      again.erase(again.begin());
    }
  }
  const int worker = f.batch.worker;
  unfinished_weight_ -= f.left_weight;
  inflight_.erase(it);
  if (inflight_.empty()) unfinished_weight_ = 0;  // no float residue
  // A unit's tests stay with the worker it is reserved for.
  std::vector<int> common, own;
  for (int t : again) {
    const int u = unit_of_[idx(t)];
    auto o = u >= 0 ? owner_.find(u) : owner_.end();
    (o != owner_.end() && o->second == worker ? own : common).push_back(t);
  }
  pin_front(worker, own);
  requeue_front(common);
  return give_up;
}

void Scheduler::worker_lost(int worker) {
  std::vector<int> again;
  for (auto it = inflight_.begin(); it != inflight_.end();) {
    if (it->second.batch.worker == worker) {
      const auto left = left_in_order(it->second);
      again.insert(again.end(), left.begin(), left.end());
      unfinished_weight_ -= it->second.left_weight;
      it = inflight_.erase(it);
    } else {
      ++it;
    }
  }
  if (inflight_.empty()) unfinished_weight_ = 0;
  if (auto p = pinned_.find(worker); p != pinned_.end()) {
    for (auto& item : p->second) {
      remaining_ -= item.tests.size();
      remaining_weight_ -= item.weight;
      again.insert(again.end(), item.tests.begin(), item.tests.end());
    }
    pinned_.erase(p);
  }
  std::erase_if(owner_, [&](const auto& kv) { return kv.second == worker; });
  requeue_front(again);
}

std::vector<int> Scheduler::left_in_order(const Flight& f) const {
  std::vector<int> out;
  for (int t : f.batch.tests)
    if (f.left.count(t)) out.push_back(t);
  return out;
}

std::vector<int> Scheduler::drain() {
  started_ = true;  // settings no longer rebuild the queue
  std::vector<int> out;
  for (auto& pending : shards_) {
    for (auto& shard : pending) out.insert(out.end(), shard.tests.begin(), shard.tests.end());
    pending.clear();
  }
  for (auto& q : queues_) {
    for (auto& item : q) out.insert(out.end(), item.tests.begin(), item.tests.end());
    q.clear();
  }
  for (auto& [w, items] : pinned_)
    for (auto& item : items) out.insert(out.end(), item.tests.begin(), item.tests.end());
  pinned_.clear();
  remaining_ = 0;
  remaining_weight_ = 0;
  return out;
}

}  // namespace dtest
