// Communicator: the worker's view of one group of ranks (point-to-point
// between pipeline stages, all-reduce of gradients over data-parallel ranks).
//
// In the cluster every pipeline stage pair (stage s <-> stage s+1 of one dp
// replica) and every data-parallel group (the same stage across dp replicas)
// gets its own communicator: its own rank set, numbered 0..size-1 inside the
// group, and its own key prefix in the coordinator's key-value store (for
// example "job7/pp/dp0/s1-s2" and "job7/dp/stage1"). Two communicators never
// share a prefix. Implementations: Gloo over TCP on CPUs
// (gloo_communicator.h), NCCL on GPUs (nccl_communicator.h, data pointers are
// device memory there).
//
// Usage (a 2-stage pipeline, one dp replica, in-process store):
//   InMemoryKeyValueStore store;
//   GlooOptions opts;
//   opts.rank = stage; opts.size = 2; opts.prefix = "job7/pp/dp0/s0-s1";
//   absl::StatusOr<std::unique_ptr<Communicator>> comm =
//       CreateGlooCommunicator(opts, &store);
//   if (!comm.ok()) return comm.status();
//   if (stage == 0) {
//     RETURN_IF_ERROR((*comm)->Send(act.data(), act.size(), /*peer=*/1,
//                                   /*tag=*/chunk_id));
//   } else {
//     RETURN_IF_ERROR((*comm)->Recv(act.data(), act.size(), /*peer=*/0,
//                                   /*tag=*/chunk_id));
//   }
//   RETURN_IF_ERROR((*comm)->AllReduceSum(grads.data(), grads.size()));
//
// Semantics shared by every implementation:
//  - Send blocks until the peer has posted the matching Recv and the data has
//    left (both Gloo and NCCL rendezvous before moving data). Two ranks that
//    both Send to each other first wait for each other until the timeout:
//    order the calls (even ranks send first) or Send and Recv from two
//    threads.
//  - Both sides of a Send/Recv pass the same n (Gloo checks it: the Recv
//    returns INVALID_ARGUMENT and drops the message; NCCL does not).
//  - One thread at a time per (peer, tag) and direction; Sends to different
//    peers or tags, and Recvs, may run on different threads.
//  - Collectives (AllReduceSum, Barrier) are called by every rank of the
//    group, in the same order, with the same n.
//  - StartSend / StartRecv begin a Send / Recv and return at once; the
//    returned PendingOp's Wait finishes it. One thread can so keep sends to
//    several peers (and links) in flight while it receives, which is how the
//    step runner drives NCCL (whose communicators must not be used from
//    several threads at once) and Gloo alike. The buffer belongs to the
//    operation until Wait returns.
//  - After any error other than INVALID_ARGUMENT the communicator is broken
//    (the transport has torn down its connections); every later call returns
//    FAILED_PRECONDITION carrying the first error. Create a new one.
//  - Abort (from any thread, also while others wait in this communicator)
//    breaks it on purpose: the operations in flight return ABORTED at once
//    instead of waiting out the timeout, and so do later calls. The worker
//    aborts a job's communicators when the coordinator aborts the job (a
//    lost rank): its survivors are otherwise stuck in waits for the lost
//    rank until the timeout, and cannot take up the job's next assignment.
#ifndef CHUNKFLOW_WORKER_COMM_COMMUNICATOR_H_
#define CHUNKFLOW_WORKER_COMM_COMMUNICATOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace chunkflow::comm {

// A started Send or Recv (Communicator::StartSend / StartRecv).
class PendingOp {
 public:
  // Waits for the operation if Wait was not called (its result is lost).
  virtual ~PendingOp() = default;

  // True once Wait would return without blocking. May stay false until
  // Wait where the transport cannot tell (a Gloo receive).
  virtual bool Done() = 0;

  // Blocks until the operation finished; returns its result (the errors of
  // Send / Recv / AllReduceSum). Bounded by the communicator's timeout per
  // operation (NCCL: from this call; Gloo: from when the transport took the
  // op up, after the ones started before it). Later calls return the same
  // result. The communicator must outlive the op.
  virtual absl::Status Wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's rank in the group, in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks in the group.
  virtual int size() const = 0;

  // Sends n floats from `data` to rank `peer`. Messages to one peer with the
  // same tag arrive in the order they were sent; with Gloo a message only
  // matches a Recv with the same (sender, tag), with NCCL Sends and Recvs of
  // a pair match in issue order whatever the tag (see nccl_communicator.h).
  // Errors: INVALID_ARGUMENT (n < 0, data null with n > 0, peer == rank() or
  // outside [0, size())); DEADLINE_EXCEEDED (the peer did not receive within
  // the communicator's timeout); UNAVAILABLE (connection to the peer lost);
  // INTERNAL (transport error); FAILED_PRECONDITION (broken by an earlier
  // error).
  virtual absl::Status Send(const float* data, int64_t n, int peer,
                            uint32_t tag) = 0;

  // Receives n floats from rank `peer` into `data`, blocking until they have
  // arrived.
  // Errors: as Send; DEADLINE_EXCEEDED when the peer did not send in time.
  virtual absl::Status Recv(float* data, int64_t n, int peer, uint32_t tag) = 0;

  // Start the Send / Recv above and return at once. `data` must stay valid
  // (and, for a send, unchanged) until the op's Wait returns. Sends and
  // receives between two ranks match in the order they are started, as
  // with Send / Recv; do not mix started and blocking calls to one peer and
  // tag (their relative order is not defined). Argument errors come back
  // here (INVALID_ARGUMENT, FAILED_PRECONDITION), and transport errors where
  // the transport fails at once (NCCL's enqueue); the others from Wait.
  virtual absl::StatusOr<std::unique_ptr<PendingOp>> StartSend(const float* data, int64_t n,
                                                               int peer, uint32_t tag) = 0;
  virtual absl::StatusOr<std::unique_ptr<PendingOp>> StartRecv(float* data, int64_t n, int peer,
                                                               uint32_t tag) = 0;

  // In place: afterwards data[i] on every rank is the sum over ranks of
  // data[i], bit-for-bit identical on every rank and deterministic for given
  // inputs (each element is reduced once, in a fixed order, then copied).
  // Errors: INVALID_ARGUMENT (n < 0, data null with n > 0);
  // DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL, FAILED_PRECONDITION as Send.
  virtual absl::Status AllReduceSum(float* data, int64_t n) = 0;

  // Starts AllReduceSum and returns at once; the op's Wait finishes it. A
  // started collective takes its place in the group's order when it starts
  // (every rank starts and calls its collectives in the same order); `data`
  // belongs to the op until Wait returns. Lets a rank overlap the reduction
  // of finished gradients with the rest of its backward.
  virtual absl::StatusOr<std::unique_ptr<PendingOp>> StartAllReduceSum(float* data,
                                                                       int64_t n) = 0;

  // Returns once every rank of the group has entered Barrier.
  // Errors: DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL, FAILED_PRECONDITION as
  // Send.
  virtual absl::Status Barrier() = 0;

  // Breaks the communicator now: every operation in flight (blocking or
  // started) and every later one returns ABORTED carrying `why`'s message.
  // Thread-safe; may be called while other threads wait in Send, Recv, a
  // collective or a PendingOp's Wait, and more than once (the first reason
  // stays; after another error it changes nothing). The peers' operations
  // with this rank fail too, as after a lost connection: on Gloo the
  // connections close with a reset (the posted ones fail at once; one in
  // the middle of a transfer may wait its timeout), on NCCL within their
  // own timeout at worst.
  virtual void Abort(const absl::Status& why) = 0;
};

}  // namespace chunkflow::comm

#endif  // CHUNKFLOW_WORKER_COMM_COMMUNICATOR_H_
