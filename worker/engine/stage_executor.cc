#include "worker/engine/stage_executor.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"

namespace chunkflow::engine {
namespace {

// Every piece's rows up to the chunk's end are in the state store.
absl::Status CheckState(const ChunkInput& in, absl::FunctionRef<int64_t(int64_t)> state_rows) {
  for (const PieceRows& p : in.pieces) {
    if (state_rows(p.seq) < p.offset + p.length) {
      return absl::FailedPreconditionError(absl::StrCat(
          "chunk ", in.id, ": the state store holds ", state_rows(p.seq), " rows of sequence ",
          p.seq, ", the chunk needs ", p.offset + p.length));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckForwardOrder(const ChunkInput& in, ForwardKind kind, bool held,
                               bool has_activations,
                               absl::FunctionRef<int64_t(int64_t)> state_rows) {
  if (kind == ForwardKind::kRecompute) {
    if (!held || has_activations) {
      return absl::FailedPreconditionError(absl::StrCat(
          "recompute of chunk ", in.id, " without an earlier forward that dropped activations"));
    }
    return CheckState(in, state_rows);
  }
  if (held) {
    return absl::FailedPreconditionError(
        absl::StrCat("chunk ", in.id, " forwarded twice before its backward"));
  }
  // A first forward continues its sequence exactly where the state ends: the
  // earlier chunks are forwarded, the later ones are not.
  for (const PieceRows& p : in.pieces) {
    if (state_rows(p.seq) != p.offset) {
      return absl::FailedPreconditionError(absl::StrCat(
          "chunk ", in.id, ": sequence ", p.seq, " piece at position ", p.offset,
          " but the state store holds ", state_rows(p.seq),
          " rows: forward the sequence's chunks in order, each once"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckBackwardOrder(const ChunkInput& in, bool held, bool has_activations,
                                absl::FunctionRef<int64_t(int64_t)> state_rows) {
  if (!held || !has_activations) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backward of chunk ", in.id, " without activations: forward it keeping them (or "
        "recompute it) first"));
  }
  return CheckState(in, state_rows);
}

int64_t MaxChunksHeld(const std::vector<planner::Op>& ops) {
  int64_t held = 0, most = 1;
  for (const planner::Op& op : ops) {
    if (op.type == planner::OpType::kBackward) {
      --held;
    } else if (op.keep_activations) {
      most = std::max(most, ++held);
    }
  }
  return most;
}

StateTimeline StateTimelineOf(const planner::Plan& plan, const std::vector<planner::Op>& ops,
                              const StepData& data) {
  StateTimeline out;
  std::map<int64_t, int64_t> live;  // reached and not yet freed: id -> tokens
  int64_t held = 0;
  for (const planner::Op& op : ops) {
    const bool known = op.chunk >= 0 && op.chunk < static_cast<int32_t>(plan.chunks.size());
    const bool forward = op.type == planner::OpType::kForward;
    if (known && !(forward && op.recompute)) {  // a recompute's Forward does not Grow
      const planner::Chunk& c = plan.chunks[op.chunk];
      if (forward) out.chunk_rows = std::max(out.chunk_rows, c.tokens);
      for (const planner::Piece& p : c.pieces) {
        if (forward) {
          auto s = data.sequences.find(p.seq);
          if (s == data.sequences.end() || live.count(p.seq) > 0) continue;
          const int64_t tokens = static_cast<int64_t>(s->second.tokens.size());
          live.emplace(p.seq, tokens);
          out.events.push_back({p.seq, tokens, /*freed=*/false, c.tokens, held});
        } else if (p.offset == 0) {
          auto s = live.find(p.seq);
          if (s == live.end()) continue;
          out.events.push_back({p.seq, s->second, /*freed=*/true, 0, 0});
          live.erase(s);
        }
      }
    }
    if (!forward) {
      held = std::max<int64_t>(held - 1, 0);
    } else if (op.keep_activations) {
      ++held;
    }
  }
  return out;
}

}  // namespace chunkflow::engine
