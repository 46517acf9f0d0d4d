#include "worker/engine/pipeline.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace chunkflow::engine {
namespace {

std::string OpName(const planner::Op& op) {
  const char* kind = op.type == planner::OpType::kBackward ? "backward"
                     : op.recompute                         ? "recompute"
                     : op.keep_activations                  ? "forward"
                                                            : "forward (dropping)";
  return absl::StrCat(kind, " of chunk ", op.chunk);
}

}  // namespace

absl::Status RunOp(StageExecutor& stage, const planner::Op& op, const ChunkInput& chunk, const float* in,
                   float* out) {
  if (op.type == planner::OpType::kBackward) return stage.Backward(chunk, in, out);
  const ForwardKind kind = op.recompute          ? ForwardKind::kRecompute
                           : op.keep_activations ? ForwardKind::kKeep
                                                 : ForwardKind::kDrop;
  return stage.Forward(chunk, in, out, kind);
}

absl::Status LocalPipeline::Run(const std::vector<std::vector<planner::Op>>& ops,
                                const std::map<int32_t, ChunkInput>& chunks) {
  const size_t pp = stages_.size();
  if (ops.size() != pp) {
    return absl::InvalidArgumentError(
        absl::StrCat(ops.size(), " op lists for ", pp, " pipeline stages"));
  }
  // mail_fwd[s]: activations waiting for stage s; mail_bwd[s]: gradients.
  std::vector<std::map<int32_t, std::vector<float>>> mail_fwd(pp), mail_bwd(pp);
  std::vector<size_t> next(pp, 0);
  std::vector<float> out;
  for (;;) {
    bool progress = false, done = true;
    for (size_t s = 0; s < pp; ++s) {
      while (next[s] < ops[s].size()) {
        const planner::Op& op = ops[s][next[s]];
        auto ci = chunks.find(op.chunk);
        if (ci == chunks.end()) {
          return absl::NotFoundError(absl::StrCat("stage ", s, ": ", OpName(op), " names a chunk "
                                                  "that is not in the step"));
        }
        const bool backward = op.type == planner::OpType::kBackward;
        const bool receives = backward ? s + 1 < pp : s > 0 && !op.recompute;
        auto& box = backward ? mail_bwd[s] : mail_fwd[s];
        auto msg = box.find(op.chunk);
        if (receives && msg == box.end()) break;  // wait for the neighbour
        const bool sends = backward ? s > 0 : s + 1 < pp && !op.recompute;
        // A stage writes an output wherever it has a neighbour that way (a
        // recompute's is not sent).
        const bool writes = backward ? s > 0 : s + 1 < pp;
        out.assign(writes ? ci->second.rows * stages_[s]->hidden_size() : 0, 0.0f);
        absl::Status st = RunOp(*stages_[s], op, ci->second, receives ? msg->second.data() : nullptr,
                                out.data());
        if (!st.ok()) {
          return absl::Status(st.code(), absl::StrCat("stage ", s, ", ", OpName(op), ": ",
                                                      st.message()));
        }
        if (receives) box.erase(msg);
        if (sends) (backward ? mail_bwd[s - 1] : mail_fwd[s + 1])[op.chunk] = std::move(out);
        out = {};
        ++next[s];
        progress = true;
      }
      done = done && next[s] == ops[s].size();
    }
    if (done) {
      // Every message sent was consumed: the lists match each other.
      for (size_t s = 0; s < pp; ++s) {
        for (const auto* box : {&mail_fwd[s], &mail_bwd[s]}) {
          if (!box->empty()) {
            return absl::FailedPreconditionError(absl::StrCat(
                "stage ", s, " never used the ", box == &mail_fwd[s] ? "activation" : "gradient",
                " of chunk ", box->begin()->first, " that a neighbouring stage sent"));
          }
        }
      }
      // A list that forgot a backward would leave partial gradients.
      for (size_t s = 0; s < pp; ++s) {
        if (stages_[s]->live_chunks() != 0 || stages_[s]->live_sequences() != 0) {
          return absl::FailedPreconditionError(absl::StrCat(
              "stage ", s, " ended the step with ", stages_[s]->live_chunks(),
              " chunk(s) not backwarded and ", stages_[s]->live_sequences(),
              " sequence(s) in the state store: the op list lacks backwards"));
        }
      }
      return absl::OkStatus();
    }
    if (!progress) {
      std::vector<std::string> blocked;
      for (size_t s = 0; s < pp; ++s) {
        if (next[s] < ops[s].size()) {
          blocked.push_back(absl::StrCat("stage ", s, " waits at ", OpName(ops[s][next[s]])));
        }
      }
      return absl::FailedPreconditionError(
          absl::StrCat("the op lists deadlock: ", absl::StrJoin(blocked, "; ")));
    }
  }
}

}  // namespace chunkflow::engine
