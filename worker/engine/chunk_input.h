// The token-level view of one planned chunk: which rows belong to which
// sequence piece, their positions, token ids and next-token targets.
//
// A piece covers positions [offset, offset + length) of its sequence. The
// target of position p is labels[p + 1] (Hugging Face's unshifted labels,
// equal to the tokens unless the data says otherwise): a chunk's last row is
// trained on the next chunk's first token; a sequence's last position has no
// target.
//
//   StepData data;                        // the global batch's sequences
//   data.sequences[7] = {7, tokens, {}};  // labels empty: labels = tokens
//   absl::StatusOr<ChunkInput> in = MakeChunkInput(plan.chunks[3], data, vocab);

#ifndef CHUNKFLOW_WORKER_ENGINE_CHUNK_INPUT_H_
#define CHUNKFLOW_WORKER_ENGINE_CHUNK_INPUT_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::engine {

inline constexpr int32_t kIgnoreIndex = -100;

struct SequenceData {
  int64_t id = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> labels;  // empty: labels = tokens; else same length, kIgnoreIndex allowed
};

// The sequences of one global batch, by id.
struct StepData {
  std::map<int64_t, SequenceData> sequences;

  // Positions with a target (the loss's denominator), over every sequence.
  int64_t TargetCount() const;
};

struct PieceRows {
  int64_t seq = 0;
  int64_t offset = 0;   // position of the first row in its sequence
  int64_t length = 0;
  int64_t row = 0;      // first row in the chunk
  int64_t seq_length = 0;  // tokens of the whole sequence
};

struct ChunkInput {
  int32_t id = 0;
  int64_t rows = 0;                 // T
  std::vector<PieceRows> pieces;
  std::vector<int32_t> tokens;      // (T)
  std::vector<int32_t> targets;     // (T), kIgnoreIndex where none
  std::vector<int64_t> positions;   // (T)
};

// Errors: NOT_FOUND (a piece's sequence is not in `data`), INVALID_ARGUMENT (a
// piece outside its sequence, a token id or label outside [0, vocab), labels
// of the wrong length, two pieces of one sequence in a chunk).
absl::StatusOr<ChunkInput> MakeChunkInput(const planner::Chunk& chunk, const StepData& data,
                                          int64_t vocab);

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_CHUNK_INPUT_H_
