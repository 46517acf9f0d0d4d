#include "worker/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "worker/comm/validate.h"

namespace chunkflow::comm {
namespace {

constexpr char kUniqueIdKey[] = "nccl_unique_id";

// ---------------------------------------------------------------------------
// CUDA / NCCL results -> Status (every call is checked and named)
// ---------------------------------------------------------------------------

absl::Status CudaStatus(cudaError_t err, absl::string_view call,
                        absl::string_view where) {
  if (err == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a non-sticky error so later calls start clean
  const std::string msg =
      absl::StrCat(where, ": ", call, " failed: ", cudaGetErrorName(err), " (",
                   cudaGetErrorString(err), ")");
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status NcclStatus(ncclResult_t result, absl::string_view call,
                        absl::string_view where, ncclComm_t comm) {
  if (result == ncclSuccess) return absl::OkStatus();
  const char* last = ncclGetLastError(comm);
  const std::string msg = absl::StrCat(
      where, ": ", call, " failed: ", ncclGetErrorString(result),
      (last != nullptr && last[0] != '\0') ? absl::StrCat(" (", last, ")")
                                           : std::string());
  if (result == ncclSystemError || result == ncclRemoteError) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

#define CF_RETURN_IF_CUDA_ERROR(where, expr)                              \
  do {                                                                    \
    if (absl::Status s_ = CudaStatus((expr), #expr, (where)); !s_.ok()) { \
      return s_;                                                          \
    }                                                                     \
  } while (false)

// Polling pause: spin briefly (latency of small ops), then sleep a little
// (a long pipeline wait should not burn a core).
void PollPause(int iteration) {
  if (iteration < 200) {
    std::this_thread::yield();
  } else {
    absl::SleepFor(absl::Microseconds(50));
  }
}

// Waits until the non-blocking communicator has left ncclInProgress (init
// done, or an enqueue accepted).
// `abort`, when given and set, ends the wait with ABORTED (Abort() from
// another thread while an enqueue waits for a peer's connection).
absl::Status WaitForComm(ncclComm_t comm, absl::string_view call,
                         absl::string_view where, absl::Time deadline,
                         absl::Duration timeout, absl::string_view hint,
                         const std::atomic<bool>* abort = nullptr) {
  for (int i = 0;; ++i) {
    if (abort != nullptr && abort->load()) {
      return absl::AbortedError(
          absl::StrCat(where, ": ", call, " interrupted: the communicator was aborted"));
    }
    ncclResult_t state = ncclSuccess;
    if (absl::Status s = NcclStatus(ncclCommGetAsyncError(comm, &state),
                                    "ncclCommGetAsyncError", where, comm);
        !s.ok()) {
      return s;
    }
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclStatus(state, call, where, comm);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(where, ": ", call, " still in progress after ",
                       absl::FormatDuration(timeout), "; ", hint));
    }
    PollPause(i);
  }
}

// ---------------------------------------------------------------------------
// The communicator
// ---------------------------------------------------------------------------

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int size, std::string_view prefix, int device,
                   absl::Duration timeout)
      : rank_(rank),
        size_(size),
        prefix_(prefix),
        device_(device),
        timeout_(timeout) {}

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  ~NcclCommunicator() override {
    absl::MutexLock lock(&mu_);
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      // Flush and free; if that does not finish in time, abort.
      const absl::Time deadline = absl::Now() + timeout_;
      const ncclResult_t r = ncclCommFinalize(comm_);
      const bool flushed =
          (r == ncclSuccess || r == ncclInProgress) &&
          WaitForComm(comm_, "ncclCommFinalize", Where("~Communicator"),
                      deadline, timeout_, "peers did not finalize")
              .ok();
      if (flushed) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
      comm_ = nullptr;
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Stream, barrier scratch and ncclCommInitRankConfig (non-blocking, polled
  // until `deadline`).
  absl::Status Init(const ncclUniqueId& id, absl::Time deadline,
                    const std::atomic<bool>* abort) {
    absl::MutexLock lock(&mu_);
    const std::string where = Where("CreateNcclCommunicator");
    CF_RETURN_IF_CUDA_ERROR(where, cudaSetDevice(device_));
    // A blocking stream: it waits for work issued before on the legacy
    // default stream (other streams are the caller's to synchronize).
    CF_RETURN_IF_CUDA_ERROR(
        where, cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
    CF_RETURN_IF_CUDA_ERROR(
        where, cudaMalloc(reinterpret_cast<void**>(&scratch_), sizeof(float)));
    CF_RETURN_IF_CUDA_ERROR(
        where, cudaMemsetAsync(scratch_, 0, sizeof(float), stream_));
    CF_RETURN_IF_CUDA_ERROR(where, cudaStreamSynchronize(stream_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    config.commName = prefix_.c_str();  // names it in NCCL's logs
    const ncclResult_t r =
        ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    absl::Status status =
        (r == ncclSuccess || r == ncclInProgress)
            ? WaitForComm(comm_, "ncclCommInitRankConfig", where, deadline,
                          timeout_,
                          absl::StrCat("not all ", size_,
                                       " ranks joined; check that every rank "
                                       "started with the same prefix"),
                          abort)
            : NcclStatus(r, "ncclCommInitRankConfig", where, comm_);
    if (!status.ok() && comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    return status;
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  absl::Status Send(const float* data, int64_t n, int peer,
                    uint32_t tag) override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op =
        Start(/*send=*/true, const_cast<float*>(data), n, peer, tag);
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

  absl::Status Recv(float* data, int64_t n, int peer, uint32_t tag) override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op =
        Start(/*send=*/false, data, n, peer, tag);
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartSend(const float* data,
                                                       int64_t n, int peer,
                                                       uint32_t tag) override {
    return Start(/*send=*/true, const_cast<float*>(data), n, peer, tag);
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartRecv(float* data, int64_t n,
                                                       int peer,
                                                       uint32_t tag) override {
    return Start(/*send=*/false, data, n, peer, tag);
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartAllReduceSum(
      float* data, int64_t n) override {
    const std::string what = Where(absl::StrCat("AllReduceSum(n=", n, ")"));
    if (absl::Status s = internal::ValidateBuffer(what, data, n); !s.ok()) {
      return s;
    }
    if (n > 0) {
      if (absl::Status s = CheckDevicePointer(what, data); !s.ok()) return s;
    }
    return StartChecked(what, Kind::kAllReduce, data, n, /*peer=*/-1);
  }

  absl::Status AllReduceSum(float* data, int64_t n) override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op = StartAllReduceSum(data, n);
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

  // A one-float all-reduce of the communicator's own scratch.
  absl::Status Barrier() override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op =
        StartChecked(Where("Barrier()"), Kind::kBarrier, nullptr, 1, -1);
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

  // The flag first: an enqueue polling for a peer's connection holds mu_,
  // and lets go once it sees the flag. Waits poll with mu_ released and
  // find the communicator broken at their next look.
  void Abort(const absl::Status& why) override {
    {
      absl::MutexLock lock(&abort_mu_);
      if (abort_reason_.empty()) {  // the first reason stays
        abort_reason_ = internal::AbortReason(Where(""), why);
      }
    }
    abort_requested_ = true;
    absl::MutexLock lock(&mu_);
    Break(absl::AbortedError(AbortReason()));
  }

 private:
  // A started operation: done when the event recorded after it on
  // the communicator's stream is.
  class NcclOp final : public PendingOp {
   public:
    NcclOp(NcclCommunicator* comm, std::string what, cudaEvent_t event)
        : comm_(comm), what_(std::move(what)), event_(event) {}
    // A finished op (n == 0).
    explicit NcclOp(absl::Status result)
        : comm_(nullptr), finished_(true), result_(std::move(result)) {}
    ~NcclOp() override {
      (void)Wait();
      if (event_ != nullptr) cudaEventDestroy(event_);
    }
    bool Done() override {
      if (finished_) return true;
      const cudaError_t q = cudaEventQuery(event_);
      if (q == cudaErrorNotReady) return false;
      cudaGetLastError();
      return true;  // finished, or failed: Wait says which
    }
    absl::Status Wait() override {
      if (!finished_) {
        result_ = comm_->WaitFor(what_, event_);
        finished_ = true;
      }
      return result_;
    }

   private:
    NcclCommunicator* comm_;
    std::string what_;
    cudaEvent_t event_ = nullptr;
    bool finished_ = false;
    absl::Status result_;
  };

  // Enqueues ncclSend / ncclRecv and an event after it; the first failure
  // aborts the communicator. Every operation goes through StartChecked;
  // the blocking calls wait for it at once.
  enum class Kind { kSend, kRecv, kAllReduce, kBarrier };

  absl::StatusOr<std::unique_ptr<PendingOp>> Start(bool send, float* data,
                                                   int64_t n, int peer,
                                                   uint32_t tag) {
    const std::string what = Where(absl::StrCat(send ? "Send" : "Recv", "(n=",
                                                n, ", peer=", peer,
                                                ", tag=", tag, ")"));
    if (absl::Status s = ValidateP2p(what, data, n, peer); !s.ok()) return s;
    return StartChecked(what, send ? Kind::kSend : Kind::kRecv, data, n, peer);
  }

  // Arguments checked: enqueue and record the event.
  absl::StatusOr<std::unique_ptr<PendingOp>> StartChecked(
      const std::string& what, Kind kind, float* data, int64_t n, int peer) {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = CheckUsableLocked(what); !s.ok()) return s;
    if (n == 0) return std::unique_ptr<PendingOp>(new NcclOp(absl::OkStatus()));
    const absl::Time deadline = absl::Now() + timeout_;
    cudaEvent_t event = nullptr;
    absl::Status status = StartLocked(what, kind, data, n, peer, deadline, &event);
    if (!status.ok()) {
      if (event != nullptr) cudaEventDestroy(event);
      Break(status);
      // Abort() interrupted the enqueue: its reason, not the poll's words.
      return abort_requested_ ? CheckUsableLocked(what) : status;
    }
    return std::unique_ptr<PendingOp>(new NcclOp(this, what, event));
  }

  absl::Status StartLocked(absl::string_view what, Kind kind, float* data,
                           int64_t n, int peer, absl::Time deadline,
                           cudaEvent_t* event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const char* call = kind == Kind::kSend   ? "ncclSend"
                       : kind == Kind::kRecv ? "ncclRecv"
                                             : "ncclAllReduce";
    if (kind == Kind::kBarrier) data = scratch_;
    CF_RETURN_IF_CUDA_ERROR(what, cudaSetDevice(device_));
    CF_RETURN_IF_CUDA_ERROR(
        what, cudaEventCreateWithFlags(event, cudaEventDisableTiming));
    const size_t count = static_cast<size_t>(n);
    const ncclResult_t r =
        kind == Kind::kSend
            ? ncclSend(data, count, ncclFloat, peer, comm_, stream_)
        : kind == Kind::kRecv
            ? ncclRecv(data, count, ncclFloat, peer, comm_, stream_)
            : ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_,
                            stream_);  // kAllReduce, kBarrier
    if (r != ncclSuccess && r != ncclInProgress) {
      return NcclStatus(r, call, what, comm_);
    }
    if (absl::Status s = WaitForComm(comm_, call, what, deadline, timeout_,
                                     "the enqueue did not complete", &abort_requested_);
        !s.ok()) {
      return s;
    }
    CF_RETURN_IF_CUDA_ERROR(what, cudaEventRecord(*event, stream_));
    return absl::OkStatus();
  }

  // Polls `event` (and the communicator's async error) until it completes,
  // for up to the timeout from now (an op queued behind others on the
  // stream is not charged for their time); a failure aborts the
  // communicator.
  absl::Status WaitFor(absl::string_view what, cudaEvent_t event) {
    const absl::Time deadline = absl::Now() + timeout_;
    for (int i = 0;; ++i) {
      {
        absl::MutexLock lock(&mu_);
        if (absl::Status s = CheckUsableLocked(what); !s.ok()) return s;
        absl::StatusOr<bool> done = PollLocked(what, event, deadline);
        if (!done.ok()) {
          Break(done.status());
          return done.status();
        }
        if (*done) return absl::OkStatus();
      }
      PollPause(i);
    }
  }

  // One look at `event` and the async error: true when the event completed.
  absl::StatusOr<bool> PollLocked(absl::string_view what, cudaEvent_t event,
                                  absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const cudaError_t q = cudaEventQuery(event);
    if (q != cudaSuccess && q != cudaErrorNotReady) {
      return CudaStatus(q, "cudaEventQuery", what);
    }
    ncclResult_t async = ncclSuccess;
    if (absl::Status s = NcclStatus(ncclCommGetAsyncError(comm_, &async),
                                    "ncclCommGetAsyncError", what, comm_);
        !s.ok()) {
      return s;
    }
    if (async != ncclSuccess && async != ncclInProgress) {
      return NcclStatus(async, "NCCL (async error)", what, comm_);
    }
    if (q == cudaSuccess) return true;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          what, ": did not complete within ", absl::FormatDuration(timeout_),
          "; check that the peer issued the matching call"));
    }
    return false;
  }

  // The first error breaks the communicator: recorded, and NCCL aborted.
  // After Abort() the error recorded is Abort's.
  void Break(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (first_error_.ok()) {
      first_error_ = abort_requested_ ? absl::AbortedError(AbortReason()) : status;
    }
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  std::string Where(absl::string_view op) const {
    return absl::StrCat(op, " on rank ", rank_, " of ", size_,
                        " of NCCL communicator '", prefix_, "' (CUDA device ",
                        device_, ")");
  }

  absl::Status ValidateP2p(absl::string_view what, const float* data, int64_t n,
                           int peer) const {
    if (absl::Status s = internal::ValidateBuffer(what, data, n); !s.ok()) {
      return s;
    }
    if (absl::Status s = internal::ValidatePeer(what, peer, rank_, size_);
        !s.ok()) {
      return s;
    }
    return n > 0 ? CheckDevicePointer(what, data) : absl::OkStatus();
  }

  // Errors: INVALID_ARGUMENT (host memory, or another device's memory).
  absl::Status CheckDevicePointer(absl::string_view what,
                                  const void* data) const {
    cudaPointerAttributes attr;
    std::memset(&attr, 0, sizeof(attr));
    const cudaError_t err = cudaPointerGetAttributes(&attr, data);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": data is not a CUDA pointer (cudaPointerGetAttributes: ",
          cudaGetErrorString(err), "); pass device memory"));
    }
    if (attr.type == cudaMemoryTypeManaged) return absl::OkStatus();
    if (attr.type != cudaMemoryTypeDevice) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": data is host memory (cudaMemoryType ",
          static_cast<int>(attr.type), "); NCCL needs device memory"));
    }
    if (attr.device != device_) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": data lives on CUDA device ", attr.device,
                       ", this communicator uses device ", device_));
    }
    return absl::OkStatus();
  }

  absl::Status CheckUsableLocked(absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (first_error_.ok()) return absl::OkStatus();
    if (first_error_.code() == absl::StatusCode::kAborted) {
      return absl::AbortedError(absl::StrCat(what, ": ", first_error_.message()));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        ": communicator was aborted after an earlier error (create a "
        "new one): ",
        first_error_.ToString()));
  }

  const int rank_;
  const int size_;
  const std::string prefix_;
  const int device_;
  const absl::Duration timeout_;

  // Guards the communicator: one thread issues or polls at a time.
  mutable absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_) = nullptr;
  cudaStream_t stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  float* scratch_ ABSL_GUARDED_BY(mu_) = nullptr;  // device, barrier operand
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> abort_requested_{false};  // set after abort_reason_
  absl::Mutex abort_mu_;
  std::string abort_reason_ ABSL_GUARDED_BY(abort_mu_);

  std::string AbortReason() {
    absl::MutexLock lock(&abort_mu_);
    return abort_reason_;
  }
};

// Rank 0 publishes the unique id, the others wait for it.
absl::Status ExchangeUniqueId(int rank, absl::string_view prefix,
                              KeyValueStore* store, absl::Duration timeout,
                              absl::string_view where, ncclUniqueId* id) {
  const std::string key = absl::StrCat(prefix, "/", kUniqueIdKey);
  if (rank == 0) {
    if (absl::Status s =
            NcclStatus(ncclGetUniqueId(id), "ncclGetUniqueId", where, nullptr);
        !s.ok()) {
      return s;
    }
    absl::Status s =
        store->Set(key, std::string_view(id->internal, sizeof(id->internal)));
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat(where, ": publishing key '",
                                                 key, "': ", s.message()));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> bytes = store->Get(key, timeout);
  if (!bytes.ok()) {
    if (bytes.status().code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(absl::StrCat(
          where, ": rank 0 did not publish the NCCL unique id (key '", key,
          "') within ", absl::FormatDuration(timeout),
          "; check that rank 0 started with the same prefix and store"));
    }
    return absl::Status(bytes.status().code(),
                        absl::StrCat(where, ": reading key '", key,
                                     "': ", bytes.status().message()));
  }
  if (bytes->size() != sizeof(id->internal)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": key '", key, "' holds ", bytes->size(),
                     " bytes, an ncclUniqueId has ", sizeof(id->internal),
                     "; is another communicator using the same prefix?"));
  }
  std::memcpy(id->internal, bytes->data(), sizeof(id->internal));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    int rank, int size, std::string_view prefix, KeyValueStore* store,
    int cuda_device, absl::Duration timeout, const std::atomic<bool>* abort) {
  const absl::string_view prefix_view(prefix.data(), prefix.size());
  if (absl::Status s = internal::ValidateGroup(
          "CreateNcclCommunicator", rank, size, prefix_view, store, timeout);
      !s.ok()) {
    return s;
  }
  const std::string where =
      absl::StrCat("CreateNcclCommunicator(rank ", rank, " of ", size, ", '",
                   prefix_view, "', CUDA device ", cuda_device, ")");
  if (cuda_device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": CUDA device ", cuda_device, " is negative"));
  }
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    const std::string why = err != cudaSuccess
                                ? absl::StrCat(cudaGetErrorName(err), " (",
                                               cudaGetErrorString(err), ")")
                                : std::string("0 devices");
    cudaGetLastError();
    return absl::UnavailableError(
        absl::StrCat(where, ": no CUDA device: cudaGetDeviceCount: ", why,
                     "; run on a GPU host or use the Gloo communicator"));
  }
  if (cuda_device >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": CUDA device ", cuda_device, " is outside [0, ", count, ")"));
  }
  CF_RETURN_IF_CUDA_ERROR(where, cudaSetDevice(cuda_device));

  const absl::Time deadline = absl::Now() + timeout;
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (absl::Status s =
          ExchangeUniqueId(rank, prefix_view, store, timeout, where, &id);
      !s.ok()) {
    return s;
  }
  auto comm = std::make_unique<NcclCommunicator>(rank, size, prefix,
                                                 cuda_device, timeout);
  if (absl::Status s = comm->Init(id, deadline, abort); !s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace chunkflow::comm
