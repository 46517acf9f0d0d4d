#include "coordinator/planner/simulator.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace chunkflow::planner {
namespace {

// What one stage knows about one chunk.
struct Slot {
  double fwd_end = -1;  // first forward finished at (-1: not yet)
  double bwd_end = -1;  // backward finished at
  bool holds_activations = false;
  bool holds_input = false;
};

std::string OpName(int32_t dp, int32_t stage, size_t index, const Op& op) {
  const char* kind = op.type == OpType::kBackward ? "backward"
                     : op.recompute               ? "recompute forward"
                                                  : "forward";
  return absl::StrCat("dp ", dp, " stage ", stage, " op #", index, " (", kind, " of chunk ",
                      op.chunk, ")");
}

// Simulates one dp rank's pipeline. Slots are indexed chunk * pp + stage.
class RankSim {
 public:
  // `slots` and `live` have one entry per (chunk, stage) of the whole plan and
  // are shared by all ranks: a rank touches only its own chunks' entries.
  // `seq_length`: every sequence's length (its pieces' end, over the plan).
  RankSim(const Plan& plan, const CostModel& cost, const MemoryModel& mem, int32_t dp,
          const std::vector<int32_t>& head, const std::map<int64_t, int64_t>& seq_length,
          std::vector<Slot>* slots, std::vector<int32_t>* live)
      : plan_(plan), cost_(cost), mem_(mem), dp_(dp), pp_(plan.pp), head_(head),
        seq_length_(seq_length), slots_(*slots), next_(pp_, 0), free_at_(pp_, 0.0),
        busy_(pp_, 0.0), cur_(pp_, 0.0), peak_(pp_, 0.0), stored_(pp_), live_(*live) {}

  absl::Status Run();
  double makespan() const { return *std::max_element(free_at_.begin(), free_at_.end()); }
  const std::vector<double>& busy() const { return busy_; }
  const std::vector<double>& peak() const { return peak_; }
  int32_t max_live() const { return max_live_; }

 private:
  Slot& slot(int32_t chunk, int32_t stage) { return slots_[chunk * pp_ + stage]; }
  // Checks the op against what its own stage has done; OK or the violation.
  absl::Status CheckLocal(int32_t s, size_t i, const Op& op);
  // Earliest start given the other stages, or -1 if an input is not there yet.
  double InputReady(int32_t s, const Op& op);
  void Execute(int32_t s, const Op& op, double start);
  void Hold(int32_t s, int32_t chunk, int32_t delta);

  const Plan& plan_;
  const CostModel& cost_;
  const MemoryModel& mem_;
  const int32_t dp_, pp_;
  const std::vector<int32_t>& head_;
  const std::map<int64_t, int64_t>& seq_length_;
  std::vector<Slot>& slots_;
  std::vector<size_t> next_;
  std::vector<double> free_at_, busy_, cur_, peak_;
  std::vector<std::set<int64_t>> stored_;  // per stage: sequences with state
  std::vector<int32_t>& live_;  // chunks of a chain holding activations, by head
  int32_t max_live_ = 0;
};

absl::Status RankSim::CheckLocal(int32_t s, size_t i, const Op& op) {
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(OpName(dp_, s, i, op), ": ", why));
  };
  if (op.chunk < 0 || op.chunk >= static_cast<int32_t>(plan_.chunks.size())) {
    return fail(absl::StrCat("no such chunk; the plan has ", plan_.chunks.size()));
  }
  const Chunk& c = plan_.chunks[op.chunk];
  if (c.dp != dp_) return fail(absl::StrCat("the chunk belongs to dp rank ", c.dp));
  Slot& me = slot(op.chunk, s);
  if (me.bwd_end >= 0) return fail("the chunk's backward already ran on this stage");
  if (op.type == OpType::kForward && !op.recompute) {
    if (me.fwd_end >= 0) return fail("the chunk was already forwarded on this stage");
    if (c.prev >= 0 && slot(c.prev, s).fwd_end < 0) {
      return fail(absl::StrCat("its sequence's previous chunk ", c.prev,
                               " has not been forwarded on this stage (its K/V are missing)"));
    }
  } else if (op.type == OpType::kForward) {
    if (me.fwd_end < 0) return fail("recompute before the chunk's first forward");
    if (me.holds_activations) return fail("the chunk already holds its activations");
  } else {
    if (!me.holds_activations) {
      return fail("no activations to use: forward with keep_activations or recompute first");
    }
    if (c.next >= 0 && slot(c.next, s).bwd_end < 0) {
      return fail(absl::StrCat("the backward of chunk ", c.next,
                               ", which follows it in its sequence, has not run on this stage"));
    }
  }
  return absl::OkStatus();
}

double RankSim::InputReady(int32_t s, const Op& op) {
  if (op.type == OpType::kForward && !op.recompute && s > 0) {
    return slot(op.chunk, s - 1).fwd_end;
  }
  if (op.type == OpType::kBackward && s + 1 < pp_) return slot(op.chunk, s + 1).bwd_end;
  return 0.0;
}

void RankSim::Hold(int32_t s, int32_t chunk, int32_t delta) {
  int32_t& n = live_[head_[chunk] * pp_ + s];
  n += delta;
  max_live_ = std::max(max_live_, n);
}

void RankSim::Execute(int32_t s, const Op& op, double start) {
  const Chunk& c = plan_.chunks[op.chunk];
  Slot& me = slot(op.chunk, s);
  const double tokens = static_cast<double>(c.compute_tokens);
  const double act = mem_.activation_bytes_per_token[s] * tokens;
  double duration;
  if (op.type == OpType::kForward) {
    duration = cost_.ForwardSeconds(s, c);
    if (!op.recompute) {  // a sequence's first piece reserves its whole state
      for (const Piece& p : c.pieces) {
        if (stored_[s].insert(p.seq).second) {
          cur_[s] += mem_.state_bytes_per_token[s] * static_cast<double>(seq_length_.at(p.seq));
        }
      }
    }
    peak_[s] = std::max(peak_[s], cur_[s] + act);  // live while the forward runs
    if (op.keep_activations) {
      cur_[s] += act;
      me.holds_activations = true;
      Hold(s, op.chunk, +1);
    } else if (!op.recompute) {
      cur_[s] += mem_.input_bytes_per_token[s] * tokens;
      me.holds_input = true;
    }
  } else {
    duration = cost_.BackwardSeconds(s, c);
    peak_[s] = std::max(peak_[s], cur_[s]);
    cur_[s] -= act;
    me.holds_activations = false;
    Hold(s, op.chunk, -1);
    if (me.holds_input) cur_[s] -= mem_.input_bytes_per_token[s] * tokens;
    me.holds_input = false;
    for (const Piece& p : c.pieces) {  // a sequence's first chunk frees its state
      if (p.offset == 0 && stored_[s].erase(p.seq) > 0) {
        cur_[s] -= mem_.state_bytes_per_token[s] * static_cast<double>(seq_length_.at(p.seq));
      }
    }
  }
  peak_[s] = std::max(peak_[s], cur_[s]);
  const double end = start + duration;
  if (op.type == OpType::kBackward) {
    me.bwd_end = end;
  } else if (!op.recompute) {
    me.fwd_end = end;
  }
  free_at_[s] = end;
  busy_[s] += duration;
}

absl::Status RankSim::Run() {
  size_t remaining = 0;
  for (int32_t s = 0; s < pp_; ++s) remaining += plan_.ops(dp_, s).ops.size();
  while (remaining > 0) {
    bool progress = false;
    for (int32_t s = 0; s < pp_; ++s) {
      const std::vector<Op>& ops = plan_.ops(dp_, s).ops;
      while (next_[s] < ops.size()) {
        const Op& op = ops[next_[s]];
        if (absl::Status st = CheckLocal(s, next_[s], op); !st.ok()) return st;
        const double ready = InputReady(s, op);
        if (ready < 0) break;
        Execute(s, op, std::max(ready, free_at_[s]));
        ++next_[s];
        --remaining;
        progress = true;
      }
    }
    if (!progress) {
      std::vector<std::string> waiting;
      for (int32_t s = 0; s < pp_; ++s) {
        const std::vector<Op>& ops = plan_.ops(dp_, s).ops;
        if (next_[s] < ops.size()) waiting.push_back(OpName(dp_, s, next_[s], ops[next_[s]]));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "deadlock: no stage can move; waiting: ", absl::StrJoin(waiting, "; ")));
    }
  }
  for (const Chunk& c : plan_.chunks) {
    if (c.dp != dp_) continue;
    for (int32_t s = 0; s < pp_; ++s) {
      if (slot(c.id, s).fwd_end < 0 || slot(c.id, s).bwd_end < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("chunk ", c.id, " (dp ", dp_, ") has no ",
                         slot(c.id, s).fwd_end < 0 ? "forward" : "backward", " on stage ", s));
      }
    }
  }
  for (int32_t s = 0; s < pp_; ++s) {
    // Every allocation has its free; a plan that passed the checks above ends
    // where it started. Anything else is a bug in this accounting.
    if (std::abs(cur_[s]) > 1e-6 * std::max(1.0, peak_[s])) {
      return absl::InternalError(absl::StrCat("dp ", dp_, " stage ", s, ": ", cur_[s],
                                              " bytes still held after the step"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckShapes(const Plan& plan, const CostModel& cost, const MemoryModel& mem) {
  const size_t pp = static_cast<size_t>(std::max(plan.pp, 0));
  if (plan.pp < 1 || plan.dp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan has dp ", plan.dp, " and pp ", plan.pp, "; both must be >= 1"));
  }
  if (plan.stage_ops.size() != pp * plan.dp) {
    return absl::InvalidArgumentError(absl::StrCat("plan has ", plan.stage_ops.size(),
                                                   " op lists; dp x pp = ", pp * plan.dp));
  }
  // Non-negative times keep -1 free as the "not finished" mark of a Slot.
  if (absl::Status s = ValidateCostModel(cost, plan.pp); !s.ok()) return s;
  if (absl::Status s = ValidateMemoryModel(mem, plan.pp); !s.ok()) return s;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const Chunk& c = plan.chunks[i];
    if (c.dp < 0 || c.dp >= plan.dp) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, " has dp rank ", c.dp,
                                                     ", outside [0, ", plan.dp, ")"));
    }
    if (c.id != static_cast<int32_t>(i) || c.prev >= c.id ||
        (c.next >= 0 && c.next <= c.id) || c.next >= static_cast<int32_t>(plan.chunks.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk at index ", i, " has id ", c.id, ", prev ", c.prev, ", next ", c.next,
          "; ids must equal positions and chains must run to higher ids"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SimResult> Simulate(const Plan& plan, const CostModel& cost,
                                   const MemoryModel& memory) {
  if (absl::Status s = CheckShapes(plan, cost, memory); !s.ok()) return s;
  std::vector<int32_t> head(plan.chunks.size());
  for (const Chunk& c : plan.chunks) head[c.id] = c.prev >= 0 ? head[c.prev] : c.id;
  std::map<int64_t, int64_t> seq_length;
  for (const Chunk& c : plan.chunks) {
    for (const Piece& p : c.pieces) {
      int64_t& n = seq_length[p.seq];
      n = std::max(n, p.offset + p.length);
    }
  }

  std::vector<Slot> slots(plan.chunks.size() * plan.pp);
  std::vector<int32_t> live(plan.chunks.size() * plan.pp, 0);
  SimResult r;
  r.stage_busy_s.assign(plan.pp, 0.0);
  r.peak_memory_bytes.assign(plan.pp, 0);
  double total_busy = 0;
  for (int32_t d = 0; d < plan.dp; ++d) {
    RankSim sim(plan, cost, memory, d, head, seq_length, &slots, &live);
    if (absl::Status s = sim.Run(); !s.ok()) return s;
    double rank_busy = 0;
    for (int32_t s = 0; s < plan.pp; ++s) {
      r.stage_busy_s[s] = std::max(r.stage_busy_s[s], sim.busy()[s]);
      const int64_t peak = memory.static_bytes[s] + static_cast<int64_t>(sim.peak()[s]);
      r.peak_memory_bytes[s] = std::max(r.peak_memory_bytes[s], peak);
      rank_busy += sim.busy()[s];
      r.ops += static_cast<int64_t>(plan.ops(d, s).ops.size());
    }
    r.dp_makespan_s.push_back(sim.makespan());
    r.dp_busy_s.push_back(rank_busy);
    r.makespan_s = std::max(r.makespan_s, sim.makespan());
    r.max_live_chunks_per_sequence = std::max(r.max_live_chunks_per_sequence, sim.max_live());
    total_busy += rank_busy;
  }
  if (r.makespan_s > 0) {
    // (capacity - busy) / capacity, not 1 - busy / capacity: with integer-valued
    // times both terms are exact and the ratio is correctly rounded.
    const double capacity = r.makespan_s * plan.dp * plan.pp;
    r.bubble_ratio = (capacity - total_busy) / capacity;
  }
  const double mean = total_busy / plan.dp;
  if (mean > 0) {
    r.dp_imbalance = *std::max_element(r.dp_busy_s.begin(), r.dp_busy_s.end()) / mean;
  }
  return r;
}

}  // namespace chunkflow::planner
