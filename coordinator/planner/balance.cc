#include "coordinator/planner/balance.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace chunkflow::planner {
namespace {

// Whether the state-aware schedule (or full recompute) forwards `c` twice.
bool Recomputed(const Chunk& c, int32_t k, bool full_recompute) {
  if (full_recompute) return true;
  return c.chain_index < c.chain_length - std::min(k, c.chain_length);
}

double Weight(const CostModel& cost, int32_t k, bool full_recompute, const Chunk& c) {
  const double fwd = cost.ForwardAllStagesSeconds(c);
  return fwd * (1.0 + cost.backward_ratio) + (Recomputed(c, k, full_recompute) ? fwd : 0.0);
}

struct Group {
  int32_t first = 0;  // chunk id of the group's first chunk
  int32_t count = 0;  // consecutive chunk ids (a chain is contiguous)
  double weight = 0;
};

std::vector<Group> Groups(const CostModel& cost, int32_t k, bool full_recompute,
                          const std::vector<Chunk>& chunks) {
  std::vector<Group> groups;
  for (const Chunk& c : chunks) {
    if (c.chain_index == 0) groups.push_back({c.id, 0, 0.0});
    groups.back().count += 1;
    groups.back().weight += Weight(cost, k, full_recompute, c);
  }
  return groups;
}

}  // namespace

absl::Status AssignRanks(const CostModel& cost, int32_t dp, int32_t k, bool full_recompute,
                         Balance balance, std::vector<Chunk>* chunks) {
  if (dp < 1) return absl::InvalidArgumentError(absl::StrCat("dp must be >= 1, got ", dp));
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("K must be >= 1, got ", k));
  if (!chunks->empty() && chunks->front().chain_index != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk 0 has chain index ", chunks->front().chain_index, "; a chain must start at 0"));
  }
  std::vector<Group> groups = Groups(cost, k, full_recompute, *chunks);
  auto assign = [&](const Group& g, int32_t rank) {
    for (int32_t i = 0; i < g.count; ++i) (*chunks)[g.first + i].dp = rank;
  };

  if (balance == Balance::kInOrder) {
    const int64_t n = static_cast<int64_t>(groups.size());
    for (int64_t i = 0; i < n; ++i) assign(groups[i], static_cast<int32_t>(i * dp / n));
    return absl::OkStatus();
  }

  std::vector<int32_t> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return groups[a].weight > groups[b].weight;
  });
  // Min-heap of (load, rank): the lightest rank, lowest rank among equals.
  using Load = std::pair<double, int32_t>;
  std::priority_queue<Load, std::vector<Load>, std::greater<Load>> ranks;
  for (int32_t r = 0; r < dp; ++r) ranks.push({0.0, r});
  for (int32_t g : order) {
    auto [load, rank] = ranks.top();
    ranks.pop();
    assign(groups[g], rank);
    ranks.push({load + groups[g].weight, rank});
  }
  return absl::OkStatus();
}

std::vector<double> RankLoads(const CostModel& cost, int32_t dp, int32_t k,
                              bool full_recompute, const std::vector<Chunk>& chunks) {
  std::vector<double> loads(dp, 0.0);
  for (const Chunk& c : chunks) {
    if (c.dp >= 0 && c.dp < dp) loads[c.dp] += Weight(cost, k, full_recompute, c);
  }
  return loads;
}

}  // namespace chunkflow::planner
