#include "coordinator/cursor.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace chunkflow {

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    // Lemire's multiply-shift: j uniform enough in [0, i] for a shuffle.
    const unsigned __int128 product =
        static_cast<unsigned __int128>(rng()) * static_cast<uint64_t>(i + 1);
    const int64_t j = static_cast<int64_t>(product >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

absl::StatusOr<DatasetCursor> DatasetCursor::Create(int64_t num_documents, uint64_t seed,
                                                    int64_t batch) {
  if (num_documents < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the dataset has ", num_documents, " documents; need at least 1"));
  }
  if (batch < 1 || batch > num_documents) {
    return absl::InvalidArgumentError(absl::StrCat("global batch ", batch,
                                                   " must be between 1 and the dataset's ",
                                                   num_documents, " documents"));
  }
  return DatasetCursor(num_documents, seed, batch);
}

const std::vector<int64_t>& DatasetCursor::Order(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_order_ = EpochOrder(num_documents_, seed_, epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_;
}

absl::StatusOr<std::vector<int64_t>> DatasetCursor::Batch(int64_t step) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("step must be >= 0, got ", step));
  const std::vector<int64_t>& order = Order(EpochOf(step));
  const int64_t first = (step % StepsPerEpoch()) * batch_;
  const int64_t end = std::min(first + batch_, num_documents_);
  return std::vector<int64_t>(order.begin() + first, order.begin() + end);
}

}  // namespace chunkflow
