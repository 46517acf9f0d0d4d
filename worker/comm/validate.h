// Argument checks shared by the Communicator implementations, so Gloo and
// NCCL reject the same calls with the same messages. Internal to
// worker/comm.
#ifndef CHUNKFLOW_WORKER_COMM_VALIDATE_H_
#define CHUNKFLOW_WORKER_COMM_VALIDATE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::comm::internal {

// Options of a Create*Communicator call. `what` names the call.
// Errors: INVALID_ARGUMENT (null store, size < 1, rank outside [0, size),
// empty prefix, timeout <= 0), naming the value.
absl::Status ValidateGroup(absl::string_view what, int rank, int size,
                           absl::string_view prefix, const KeyValueStore* store,
                           absl::Duration timeout);

// A buffer of n floats. Errors: INVALID_ARGUMENT (n < 0, n too large, data
// null with n > 0).
absl::Status ValidateBuffer(absl::string_view what, const void* data,
                            int64_t n);

// The peer of a Send/Recv. Errors: INVALID_ARGUMENT (peer outside
// [0, size), peer == rank).
absl::Status ValidatePeer(absl::string_view what, int peer, int rank, int size);

// The message every operation of a communicator aborted by Abort(why)
// carries: "aborted<where>: <why's message>" ("Abort()" when it is empty).
std::string AbortReason(absl::string_view where, const absl::Status& why);

}  // namespace chunkflow::comm::internal

#endif  // CHUNKFLOW_WORKER_COMM_VALIDATE_H_
