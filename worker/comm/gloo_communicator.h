// Communicator over Gloo's TCP transport: CPU ranks (local mode, CI, and the
// CPU "devices" of a worker). Rendezvous goes through a KeyValueStore: each
// rank publishes its listening addresses under `prefix`, reads everyone
// else's and connects a full mesh.
//
// Usage (4 ranks in one process; in the cluster each rank is a worker and
// the store is the coordinator's):
//   InMemoryKeyValueStore store;
//   // on each of 4 threads, r = 0..3:
//   GlooOptions opts;
//   opts.rank = r;
//   opts.size = 4;
//   opts.prefix = "job7/dp/stage0";
//   absl::StatusOr<std::unique_ptr<Communicator>> comm =
//       CreateGlooCommunicator(opts, &store);
//   if (comm.ok()) status = (*comm)->AllReduceSum(grads.data(), grads.size());
//
// Thread safety: Send and Recv may be called concurrently from several
// threads (e.g. a sender thread and one receiver thread per tag).
// Collectives are serialized internally; every rank must issue them in the
// same order.
#ifndef CHUNKFLOW_WORKER_COMM_GLOO_COMMUNICATOR_H_
#define CHUNKFLOW_WORKER_COMM_GLOO_COMMUNICATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::comm {

struct GlooOptions {
  // Where to listen: a network interface name ("eth0") or a hostname / IP
  // address that resolves to one of this host's addresses.
  std::string hostname = "127.0.0.1";
  // This process's rank in [0, size).
  int rank = -1;
  // Number of ranks, >= 1.
  int size = 0;
  // Key namespace in the store; must be non-empty and unique per
  // communicator (keys are "<prefix>/<gloo key>").
  std::string prefix;
  // Bounds the rendezvous (waiting for every rank's address, connecting)
  // and every later operation.
  absl::Duration timeout = absl::Seconds(30);
};

// Connects rank `options.rank` of the group; returns once all `size` ranks
// are connected. `store` must outlive the call (it is not used afterwards).
// Errors: INVALID_ARGUMENT (null store, size < 1, rank outside [0, size),
// empty prefix, timeout <= 0); DEADLINE_EXCEEDED (a rank did not publish its
// address or connect within the timeout: the message names the rank and the
// key); UNAVAILABLE (cannot resolve or listen on `hostname`, connection lost,
// or the store is unreachable); INTERNAL (other Gloo errors).
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const GlooOptions& options, KeyValueStore* store);

}  // namespace chunkflow::comm

#endif  // CHUNKFLOW_WORKER_COMM_GLOO_COMMUNICATOR_H_
