// Chunk construction: turns a global batch of sequences into chunks.
//
// ChunkFlow (BuildChunks): a sequence longer than chunk_size is cut into a chain
// of dependent chunks of chunk_size tokens (the last may be shorter); the other
// sequences are bin-packed whole into standalone chunks of at most chunk_size
// tokens, by best-fit decreasing (BFD):
//
//   sort the short sequences by length, longest first (ties: batch order);
//   put each into the open chunk with the least room that still fits it, or
//   open a new chunk.
//
// BFD uses at most 11/9 OPT + 6/9 chunks for the short sequences (Johnson's
// bound, shared with first-fit decreasing) and O(n log n) time. The planner's
// tests and benchmark report it against the lower bound
//   chain chunks + ceil(short tokens / chunk_size)   (MinChunks below);
// on the long-tailed mixes in dataset/synthetic.h it is within 0.1% of it (under
// one extra chunk per batch of 1,024; planner_bench's ChunkingQuality rows,
// table in docs/planner.md).
//
// The baselines' constructions live here too, so every strategy goes through
// the same code path afterwards:
//   PackInOrder: Megatron-style packing, next-fit in batch order, never splits.
//   OneSequencePerChunk: Megatron-style padding, one sequence per micro-batch.
//
//   std::vector<Sequence> batch = {{0, 20000}, {1, 300}, {2, 900}};
//   absl::StatusOr<std::vector<Chunk>> chunks = BuildChunks(batch, 8192);
//   // chunks: 3 dependent chunks of sequence 0, then one standalone {1, 2}.

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_CHUNKING_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_CHUNKING_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner {

// Chains first (in batch order), then the standalone chunks in the order BFD
// opened them. Chunk ids are positions in the returned vector.
// Errors: INVALID_ARGUMENT for chunk_size <= 0 or a sequence of length <= 0.
absl::StatusOr<std::vector<Chunk>> BuildChunks(absl::Span<const Sequence> seqs,
                                               int64_t chunk_size);

// Next-fit in batch order to `capacity` tokens (Megatron's packed loader).
// Errors: INVALID_ARGUMENT if a sequence is longer than capacity.
absl::StatusOr<std::vector<Chunk>> PackInOrder(absl::Span<const Sequence> seqs,
                                               int64_t capacity);

// One chunk per sequence, computed at `pad_to` tokens (>= every length).
absl::StatusOr<std::vector<Chunk>> OneSequencePerChunk(absl::Span<const Sequence> seqs,
                                                       int64_t pad_to);

// Lower bound on the chunks a construction with this chunk_size needs when
// it never packs a long sequence's tail with other sequences (ChunkFlow's
// does not): sum over long sequences of ceil(len / chunk_size) + ceil(short
// tokens / chunk_size). 0 when chunk_size <= 0.
int64_t MinChunks(absl::Span<const Sequence> seqs, int64_t chunk_size);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_CHUNKING_H_
