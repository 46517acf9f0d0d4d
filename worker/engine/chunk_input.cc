#include "worker/engine/chunk_input.h"

#include <set>

#include "absl/strings/str_cat.h"

namespace chunkflow::engine {

int64_t StepData::TargetCount() const {
  int64_t n = 0;
  for (const auto& [id, s] : sequences) {
    const std::vector<int32_t>& labels = s.labels.empty() ? s.tokens : s.labels;
    for (size_t p = 1; p < labels.size(); ++p) n += labels[p] != kIgnoreIndex;
  }
  return n;
}

absl::StatusOr<ChunkInput> MakeChunkInput(const planner::Chunk& chunk, const StepData& data,
                                          int64_t vocab) {
  ChunkInput in;
  in.id = chunk.id;
  std::set<int64_t> seen;
  for (const planner::Piece& p : chunk.pieces) {
    auto it = data.sequences.find(p.seq);
    if (it == data.sequences.end()) {
      return absl::NotFoundError(
          absl::StrCat("chunk ", chunk.id, " names sequence ", p.seq, ", not in the step's data"));
    }
    if (!seen.insert(p.seq).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", chunk.id, " holds two pieces of sequence ", p.seq));
    }
    const SequenceData& s = it->second;
    const int64_t len = static_cast<int64_t>(s.tokens.size());
    if (p.offset < 0 || p.length < 1 || p.offset + p.length > len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk ", chunk.id, ": piece [", p.offset, ", ", p.offset + p.length,
          ") is outside sequence ", p.seq, " of ", len, " tokens"));
    }
    if (!s.labels.empty() && static_cast<int64_t>(s.labels.size()) != len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", p.seq, " has ", s.labels.size(),
                                                     " labels for ", len, " tokens"));
    }
    const std::vector<int32_t>& labels = s.labels.empty() ? s.tokens : s.labels;
    in.pieces.push_back(PieceRows{p.seq, p.offset, p.length, in.rows, len});
    for (int64_t i = p.offset; i < p.offset + p.length; ++i) {
      const int32_t tok = s.tokens[i];
      if (tok < 0 || tok >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", p.seq, " position ", i,
                                                       ": token id ", tok,
                                                       " is outside the vocabulary [0, ", vocab,
                                                       ")"));
      }
      int32_t target = kIgnoreIndex;
      if (i + 1 < len) {
        target = labels[i + 1];
        if (target != kIgnoreIndex && (target < 0 || target >= vocab)) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", p.seq, " position ", i + 1,
                                                         s.labels.empty() ? ": token id " : ": label ", target,
                                                         " is outside the vocabulary [0, ", vocab,
                                                         ")", s.labels.empty() ? "" : absl::StrCat(" and is not ", kIgnoreIndex)));
        }
      }
      in.tokens.push_back(tok);
      in.targets.push_back(target);
      in.positions.push_back(i);
    }
    in.rows += p.length;
  }
  return in;
}

}  // namespace chunkflow::engine
