#include "worker/comm/validate.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace chunkflow::comm::internal {

absl::Status ValidateGroup(absl::string_view what, int rank, int size,
                           absl::string_view prefix, const KeyValueStore* store,
                           absl::Duration timeout) {
  if (store == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": store is null; pass the key-value store used for bootstrap"));
  }
  if (size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": size must be >= 1, got ", size));
  }
  if (rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": rank ", rank, " is outside [0, ", size, ") for size ", size));
  }
  if (prefix.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     ": prefix is empty; give each communicator its own key "
                     "namespace"));
  }
  if (timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": timeout must be > 0, got ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::Status ValidateBuffer(absl::string_view what, const void* data,
                            int64_t n) {
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": n must be >= 0, got ", n));
  }
  if (static_cast<uint64_t>(n) >
      std::numeric_limits<int64_t>::max() / sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": n=", n, " floats do not fit in memory"));
  }
  if (n > 0 && data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": data is null with n=", n));
  }
  return absl::OkStatus();
}

absl::Status ValidatePeer(absl::string_view what, int peer, int rank,
                          int size) {
  if (peer < 0 || peer >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": peer ", peer, " is outside [0, ", size, ")"));
  }
  if (peer == rank) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": peer ", peer, " is this rank; send to another rank"));
  }
  return absl::OkStatus();
}

std::string AbortReason(absl::string_view where, const absl::Status& why) {
  return absl::StrCat("aborted", where, ": ",
                      why.message().empty() ? absl::string_view("Abort()") : why.message());
}

}  // namespace chunkflow::comm::internal
