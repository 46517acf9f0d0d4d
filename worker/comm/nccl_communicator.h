// Communicator over NCCL: GPU ranks, one CUDA device per rank. Every data
// pointer passed to Send/Recv/AllReduceSum is DEVICE memory on this
// communicator's device (cudaMalloc / managed); host pointers are rejected
// with INVALID_ARGUMENT.
//
// Bootstrap: rank 0 creates the ncclUniqueId and Sets its raw bytes under
// "<prefix>/nccl_unique_id"; the other ranks Get it (waiting up to
// `timeout`), then all call ncclCommInitRankConfig (non-blocking, polled
// against the same timeout).
//
// Usage:
//   absl::StatusOr<std::unique_ptr<Communicator>> comm =
//       CreateNcclCommunicator(/*rank=*/dp, /*size=*/dp_size,
//                              "job7/dp/stage1", store, /*cuda_device=*/0);
//   if (!comm.ok()) return comm.status();
//   RETURN_IF_ERROR((*comm)->AllReduceSum(d_grads, n));  // d_grads: device
//
// Differences from Gloo (see communicator.h for the shared contract):
//  - Tags do not take part in matching: NCCL has none. The Sends and Recvs
//    between two ranks match in the order they are issued, whatever the tag,
//    so both sides must issue them in the same order.
//  - A Send/Recv n mismatch is not detected (NCCL's behaviour is undefined).
//  - Data must be ready when a call starts: NCCL runs on the communicator's
//    own stream, which is ordered after the legacy default stream but not
//    after other streams; synchronize those (or record/wait an event) first.
//  - Send / Recv / collectives return when their work on the GPU is complete
//    (polled, with the timeout). StartSend / StartRecv enqueue ncclSend /
//    ncclRecv and an event on the communicator's stream and return; the op's
//    Wait polls the event. NCCL communicators are not thread-safe, and NCCL
//    does not support issuing to several communicators of one device from
//    several threads at once: drive all of a rank's communicators from one
//    thread, keeping sends in flight with StartSend where two ranks may send
//    to each other at the same time (each direction of a pipeline link is
//    its own communicator, so such sends never queue behind each other).
//    Ops on one communicator run in the order they were started.
//  - AllReduceSum is bit-identical on all ranks (ring and tree both reduce an
//    element once and broadcast it); set NCCL_ALGO=Ring and NCCL_PROTO for
//    bit-identical results across runs with different topologies.
//  - On any transport error or timeout the communicator calls ncclCommAbort.
#ifndef CHUNKFLOW_WORKER_COMM_NCCL_COMMUNICATOR_H_
#define CHUNKFLOW_WORKER_COMM_NCCL_COMMUNICATOR_H_

#include <atomic>
#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/kv_store.h"

namespace chunkflow::comm {

// Joins rank `rank` of a `size`-rank NCCL communicator on CUDA device
// `cuda_device`. `store` is only used during the call.
// Errors: INVALID_ARGUMENT (null store, size < 1, rank outside [0, size),
// empty prefix, timeout <= 0, cuda_device outside [0, device count), a
// malformed unique id in the store); UNAVAILABLE (no CUDA device or driver,
// NCCL system/remote errors, store unreachable); DEADLINE_EXCEEDED (rank 0
// did not publish the unique id, or not every rank joined, within
// `timeout`); INTERNAL (other CUDA/NCCL errors, naming the call);
// ABORTED when `abort` (optional) is set while the ranks join (the worker
// sets it when the coordinator aborts the generation being set up; the
// unique id's wait in the store is the store's to abort).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    int rank, int size, std::string_view prefix, KeyValueStore* store,
    int cuda_device, absl::Duration timeout = absl::Seconds(30),
    const std::atomic<bool>* abort = nullptr);

}  // namespace chunkflow::comm

#endif  // CHUNKFLOW_WORKER_COMM_NCCL_COMMUNICATOR_H_
