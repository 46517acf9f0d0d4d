// Key-value store used to bootstrap communicators (Gloo rendezvous, NCCL
// unique id). In the cluster the coordinator brokers it over gRPC; in tests
// and single-process runs InMemoryKeyValueStore stands in for it.
//
// Keys are write-once in practice (each rank publishes its own keys under a
// communicator's prefix); Set overwrites, and the last value wins.
//
// Usage:
//   InMemoryKeyValueStore store;
//   CHECK_OK(store.Set("dp0/nccl_id", id_bytes));              // rank 0
//   absl::StatusOr<std::string> id =
//       store.Get("dp0/nccl_id", absl::Seconds(30));           // other ranks
#ifndef CHUNKFLOW_WORKER_COMM_KV_STORE_H_
#define CHUNKFLOW_WORKER_COMM_KV_STORE_H_

#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace chunkflow::comm {

// ---------------------------------------------------------------------------
// Interface
// ---------------------------------------------------------------------------

// Thread-safe: implementations accept concurrent calls from many threads.
class KeyValueStore {
 public:
  virtual ~KeyValueStore() = default;

  // Stores `value` (arbitrary bytes) under `key`, waking every Get waiting on
  // it.
  // Errors: INVALID_ARGUMENT (empty key); UNAVAILABLE (a remote store cannot
  // be reached).
  virtual absl::Status Set(std::string_view key, std::string_view value) = 0;

  // Returns the value of `key`, waiting up to `timeout` for it to be set
  // (timeout <= 0: no wait).
  // Errors: INVALID_ARGUMENT (empty key); DEADLINE_EXCEEDED (key still unset
  // after `timeout`, the message names the key); UNAVAILABLE (a remote store
  // cannot be reached).
  virtual absl::StatusOr<std::string> Get(std::string_view key,
                                          absl::Duration timeout) = 0;
};

// ---------------------------------------------------------------------------
// In-process implementation
// ---------------------------------------------------------------------------

class InMemoryKeyValueStore final : public KeyValueStore {
 public:
  InMemoryKeyValueStore() = default;
  InMemoryKeyValueStore(const InMemoryKeyValueStore&) = delete;
  InMemoryKeyValueStore& operator=(const InMemoryKeyValueStore&) = delete;

  // Errors: INVALID_ARGUMENT (empty key).
  absl::Status Set(std::string_view key, std::string_view value) override;

  // Errors: INVALID_ARGUMENT (empty key); DEADLINE_EXCEEDED (naming the key).
  absl::StatusOr<std::string> Get(std::string_view key,
                                  absl::Duration timeout) override;

  // Number of Get calls blocked right now. Lets a test order "Get is waiting"
  // before "Set happens" without sleeping.
  int NumWaiters() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace chunkflow::comm

#endif  // CHUNKFLOW_WORKER_COMM_KV_STORE_H_
