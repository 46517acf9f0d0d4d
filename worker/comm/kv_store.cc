#include "worker/comm/kv_store.h"

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace chunkflow::comm {

absl::Status InMemoryKeyValueStore::Set(std::string_view key,
                                        std::string_view value) {
  if (key.empty()) {
    return absl::InvalidArgumentError(
        "KeyValueStore::Set: empty key; every key needs a name");
  }
  absl::MutexLock lock(&mu_);
  values_.insert_or_assign(std::string(key), std::string(value));
  return absl::OkStatus();
}

absl::StatusOr<std::string> InMemoryKeyValueStore::Get(std::string_view key,
                                                       absl::Duration timeout) {
  if (key.empty()) {
    return absl::InvalidArgumentError(
        "KeyValueStore::Get: empty key; every key needs a name");
  }
  const std::string k(key);
  absl::MutexLock lock(&mu_);
  auto has_key = [this, &k]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return values_.contains(k);
  };
  if (!has_key()) {
    ++waiters_;
    const bool found = mu_.AwaitWithTimeout(absl::Condition(&has_key), timeout);
    --waiters_;
    if (!found) {
      return absl::DeadlineExceededError(absl::StrCat(
          "KeyValueStore::Get: key '", k, "' was not set within ",
          absl::FormatDuration(timeout),
          "; check that the rank that publishes it started and uses the same "
          "store and prefix"));
    }
  }
  return values_.at(k);
}

int InMemoryKeyValueStore::NumWaiters() const {
  absl::MutexLock lock(&mu_);
  return waiters_;
}

}  // namespace chunkflow::comm
