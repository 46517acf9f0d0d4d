#include "coordinator/cursor.h"

#include <random>
#include <utility>

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

DatasetCursor::DatasetCursor(int64_t num_documents, uint64_t seed, int64_t batch)
    : num_documents_(num_documents), seed_(seed), batch_(batch) {}

std::vector<int64_t> DatasetCursor::Batch(int64_t step) {
  const int64_t epoch = step / steps_per_epoch();
  if (epoch != epoch_) {
    order_ = EpochOrder(num_documents_, seed_, epoch);
    epoch_ = epoch;
  }
  const int64_t begin = (step % steps_per_epoch()) * batch_;
  return std::vector<int64_t>(order_.begin() + begin, order_.begin() + begin + batch_);
}

}  // namespace chunkflow
