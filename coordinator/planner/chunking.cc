#include "coordinator/planner/chunking.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace chunkflow::planner {
namespace {

absl::Status CheckLengths(absl::Span<const Sequence> seqs) {
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].length <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", seqs[i].id, " (position ", i, " in the batch) has length ",
                       seqs[i].length, "; every sequence needs at least one token"));
    }
  }
  return absl::OkStatus();
}

// A chunk over `pieces` with real and computed work equal.
Chunk MakeChunk(int32_t id, std::vector<Piece> pieces) {
  Chunk c;
  c.id = id;
  for (const Piece& p : pieces) {
    c.tokens += p.length;
    c.compute_pairs += p.AttentionPairs();
  }
  c.compute_tokens = c.tokens;
  c.pieces = std::move(pieces);
  return c;
}

void AppendChain(const Sequence& s, int64_t chunk_size, std::vector<Chunk>* out) {
  const int32_t n = static_cast<int32_t>((s.length + chunk_size - 1) / chunk_size);
  const int32_t first = static_cast<int32_t>(out->size());
  for (int32_t j = 0; j < n; ++j) {
    const int64_t offset = j * chunk_size;
    Chunk c = MakeChunk(first + j, {{s.id, offset, std::min(chunk_size, s.length - offset)}});
    c.chain_index = j;
    c.chain_length = n;
    c.prev = j > 0 ? first + j - 1 : -1;
    c.next = j + 1 < n ? first + j + 1 : -1;
    out->push_back(std::move(c));
  }
}

}  // namespace

// ===========================================================================
// ChunkFlow: chains + best-fit decreasing
// ===========================================================================

absl::StatusOr<std::vector<Chunk>> BuildChunks(absl::Span<const Sequence> seqs,
                                               int64_t chunk_size) {
  if (chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk_size must be > 0, got ", chunk_size));
  }
  if (absl::Status s = CheckLengths(seqs); !s.ok()) return s;

  std::vector<Chunk> chunks;
  std::vector<int32_t> short_idx;  // positions in seqs
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].length > chunk_size) {
      AppendChain(seqs[i], chunk_size, &chunks);
    } else {
      short_idx.push_back(static_cast<int32_t>(i));
    }
  }
  std::stable_sort(short_idx.begin(), short_idx.end(), [&](int32_t a, int32_t b) {
    return seqs[a].length > seqs[b].length;
  });

  // Open bins keyed by (room left, bin number): lower_bound on (len, 0) finds
  // the fullest bin that still fits, the lowest-numbered among equals.
  std::set<std::pair<int64_t, int32_t>> open;
  std::vector<std::vector<Piece>> bins;
  for (int32_t i : short_idx) {
    const Sequence& s = seqs[i];
    auto it = open.lower_bound({s.length, 0});
    int32_t bin;
    int64_t room;
    if (it == open.end()) {
      bin = static_cast<int32_t>(bins.size());
      bins.emplace_back();
      room = chunk_size;
    } else {
      bin = it->second;
      room = it->first;
      open.erase(it);
    }
    bins[bin].push_back({s.id, 0, s.length});
    room -= s.length;
    if (room > 0) open.insert({room, bin});
  }
  for (std::vector<Piece>& pieces : bins) {
    chunks.push_back(MakeChunk(static_cast<int32_t>(chunks.size()), std::move(pieces)));
  }
  return chunks;
}

int64_t MinChunks(absl::Span<const Sequence> seqs, int64_t chunk_size) {
  if (chunk_size <= 0) return 0;
  int64_t chain_chunks = 0;
  int64_t short_tokens = 0;
  for (const Sequence& s : seqs) {
    if (s.length > chunk_size) {
      chain_chunks += (s.length + chunk_size - 1) / chunk_size;
    } else {
      short_tokens += s.length;
    }
  }
  return chain_chunks + (short_tokens + chunk_size - 1) / chunk_size;
}

// ===========================================================================
// Baselines
// ===========================================================================

absl::StatusOr<std::vector<Chunk>> PackInOrder(absl::Span<const Sequence> seqs,
                                               int64_t capacity) {
  if (absl::Status s = CheckLengths(seqs); !s.ok()) return s;
  std::vector<Chunk> chunks;
  std::vector<Piece> current;
  int64_t used = 0;
  for (const Sequence& s : seqs) {
    if (s.length > capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.id, " has ", s.length,
                       " tokens, more than the packing max_length ", capacity,
                       "; raise max_length to at least the longest sequence"));
    }
    if (used + s.length > capacity) {
      chunks.push_back(MakeChunk(static_cast<int32_t>(chunks.size()), std::move(current)));
      current.clear();
      used = 0;
    }
    current.push_back({s.id, 0, s.length});
    used += s.length;
  }
  if (!current.empty()) {
    chunks.push_back(MakeChunk(static_cast<int32_t>(chunks.size()), std::move(current)));
  }
  return chunks;
}

absl::StatusOr<std::vector<Chunk>> OneSequencePerChunk(absl::Span<const Sequence> seqs,
                                                       int64_t pad_to) {
  if (absl::Status s = CheckLengths(seqs); !s.ok()) return s;
  std::vector<Chunk> chunks;
  chunks.reserve(seqs.size());
  for (const Sequence& s : seqs) {
    if (s.length > pad_to) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence ", s.id, " has ", s.length, " tokens, more than the pad length ", pad_to));
    }
    Chunk c = MakeChunk(static_cast<int32_t>(chunks.size()), {{s.id, 0, s.length}});
    c.compute_tokens = pad_to;
    c.compute_pairs = pad_to * (pad_to + 1) / 2;
    chunks.push_back(std::move(c));
  }
  return chunks;
}

}  // namespace chunkflow::planner
