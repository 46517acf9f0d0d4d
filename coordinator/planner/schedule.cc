#include "coordinator/planner/schedule.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace chunkflow::planner {
namespace {

struct Streams {
  std::vector<Op> forwards;
  // Backward entries: ops[entry_begin[i], entry_begin[i + 1]) of `entry_ops`.
  std::vector<Op> entry_ops;
  std::vector<int32_t> entry_begin;
  std::vector<int32_t> need;  // N_i: forwards the first i+1 entries need
};

Op Forward(int32_t chunk, bool keep, bool recompute) {
  return Op{OpType::kForward, chunk, keep, recompute};
}
Op Backward(int32_t chunk) { return Op{OpType::kBackward, chunk, false, false}; }

// Appends the backward entries of the chain c[0..n) (ids): the last `kept`
// chunks use their activations, the rest are recomputed in groups of k.
void AppendChainBackward(const std::vector<int32_t>& c, int32_t kept, int32_t k, Streams* st) {
  const int32_t n = static_cast<int32_t>(c.size());
  for (int32_t j = n - 1; j >= n - kept; --j) {
    st->entry_begin.push_back(static_cast<int32_t>(st->entry_ops.size()));
    st->entry_ops.push_back(Backward(c[j]));
  }
  for (int32_t hi = n - kept - 1; hi >= 0; hi -= k) {
    const int32_t lo = std::max(0, hi - k + 1);
    st->entry_begin.push_back(static_cast<int32_t>(st->entry_ops.size()));
    for (int32_t j = lo; j <= hi; ++j) st->entry_ops.push_back(Forward(c[j], true, true));
    st->entry_ops.push_back(Backward(c[hi]));
    for (int32_t j = hi - 1; j >= lo; --j) {
      st->entry_begin.push_back(static_cast<int32_t>(st->entry_ops.size()));
      st->entry_ops.push_back(Backward(c[j]));
    }
  }
}

// The two streams of one dp rank, `order` being its chunk ids in stream order
// with each chain contiguous and in chain order. `fwd_pos` (one slot per chunk
// of the plan, shared by all ranks) gets each of this rank's chunks' position
// in the forward stream; only those slots are read.
Streams MakeStreams(const Plan& plan, const std::vector<int32_t>& order,
                    std::vector<int32_t>& fwd_pos) {
  Streams st;
  for (size_t i = 0; i < order.size();) {
    const Chunk& c = plan.chunks[order[i]];
    if (!c.dependent()) {
      fwd_pos[c.id] = static_cast<int32_t>(st.forwards.size());
      st.forwards.push_back(Forward(c.id, !plan.full_recompute, false));
      st.entry_begin.push_back(static_cast<int32_t>(st.entry_ops.size()));
      if (plan.full_recompute) st.entry_ops.push_back(Forward(c.id, true, true));
      st.entry_ops.push_back(Backward(c.id));
      ++i;
      continue;
    }
    std::vector<int32_t> chain(order.begin() + i, order.begin() + i + c.chain_length);
    // Full recompute keeps nothing: every chunk is recomputed alone.
    const int32_t kept = plan.full_recompute ? 0 : std::min(plan.k, c.chain_length);
    for (int32_t j = 0; j < c.chain_length; ++j) {
      fwd_pos[chain[j]] = static_cast<int32_t>(st.forwards.size());
      st.forwards.push_back(Forward(chain[j], j >= c.chain_length - kept, false));
    }
    AppendChainBackward(chain, kept, plan.full_recompute ? 1 : plan.k, &st);
    i += c.chain_length;
  }
  st.entry_begin.push_back(static_cast<int32_t>(st.entry_ops.size()));
  int32_t need = 0;
  for (size_t e = 0; e + 1 < st.entry_begin.size(); ++e) {
    for (int32_t o = st.entry_begin[e]; o < st.entry_begin[e + 1]; ++o) {
      need = std::max(need, fwd_pos[st.entry_ops[o].chunk] + 1);
    }
    st.need.push_back(need);
  }
  return st;
}

std::vector<Op> StageList(const Streams& st, int32_t stage, int32_t pp) {
  const int32_t m = static_cast<int32_t>(st.forwards.size());
  std::vector<Op> ops;
  ops.reserve(st.forwards.size() + st.entry_ops.size());
  int32_t done = 0;
  for (size_t e = 0; e < st.need.size(); ++e) {
    const int32_t i = static_cast<int32_t>(e) + 1;
    const int32_t target = std::min(m, std::max(st.need[e], pp - stage + i - 1));
    while (done < target) ops.push_back(st.forwards[done++]);
    ops.insert(ops.end(), st.entry_ops.begin() + st.entry_begin[e],
               st.entry_ops.begin() + st.entry_begin[e + 1]);
  }
  while (done < m) ops.push_back(st.forwards[done++]);
  return ops;
}

}  // namespace

absl::Status BuildStageOps(ChainPlacement placement, Plan* plan) {
  if (plan->k < 1) return absl::InvalidArgumentError(absl::StrCat("K must be >= 1, got ", plan->k));
  if (plan->pp < 1) {
    return absl::InvalidArgumentError(absl::StrCat("pp must be >= 1, got ", plan->pp));
  }
  if (plan->dp < 1) {
    return absl::InvalidArgumentError(absl::StrCat("dp must be >= 1, got ", plan->dp));
  }
  std::vector<std::vector<int32_t>> standalone(plan->dp), chains(plan->dp);
  for (const Chunk& c : plan->chunks) {
    if (c.dp < 0 || c.dp >= plan->dp) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", c.id, " has dp rank ", c.dp,
                                                     ", outside [0, ", plan->dp, ")"));
    }
    const bool linked = c.chain_index == 0
                            ? c.prev == -1
                            : c.prev == c.id - 1 && plan->chunks[c.prev].dp == c.dp &&
                                  plan->chunks[c.prev].chain_index == c.chain_index - 1;
    if (!linked || c.chain_index >= c.chain_length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk ", c.id, " (chain index ", c.chain_index, " of ", c.chain_length, ", prev ",
          c.prev, ", dp ", c.dp, "): a chain's chunks need consecutive ids on one dp rank"));
    }
    (c.dependent() ? chains : standalone)[c.dp].push_back(c.id);
  }
  plan->stage_ops.clear();
  plan->stage_ops.reserve(static_cast<size_t>(plan->dp) * plan->pp);
  std::vector<int32_t> fwd_pos(plan->chunks.size(), -1);
  for (int32_t d = 0; d < plan->dp; ++d) {
    std::vector<int32_t> order;
    const auto& first = placement == ChainPlacement::kFirst ? chains[d] : standalone[d];
    const auto& second = placement == ChainPlacement::kFirst ? standalone[d] : chains[d];
    order.insert(order.end(), first.begin(), first.end());
    order.insert(order.end(), second.begin(), second.end());
    const Streams st = MakeStreams(*plan, order, fwd_pos);
    for (int32_t s = 0; s < plan->pp; ++s) {
      plan->stage_ops.push_back(StageOps{d, s, StageList(st, s, plan->pp)});
    }
  }
  return absl::OkStatus();
}

}  // namespace chunkflow::planner
