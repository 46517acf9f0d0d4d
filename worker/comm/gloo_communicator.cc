#include "worker/comm/gloo_communicator.h"

#include <net/if.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/unbound_buffer.h"
#include "gloo/types.h"
#include "worker/comm/validate.h"

namespace chunkflow::comm {
namespace {

// Slot prefixes of point-to-point messages. Gloo's collectives use prefixes
// 0x01..0x08 (gloo/types.h: Slot::build(prefix, tag) = prefix << 56 |
// tag << 24), so a Send/Recv tag never collides with a collective.
constexpr uint8_t kHeaderSlotPrefix = 0x20;
constexpr uint8_t kPayloadSlotPrefix = 0x21;

// Gloo's TCP transport writes with writev, which cannot take MSG_NOSIGNAL:
// a write racing a peer's close (its process died, or it tore the
// communicator down) raises SIGPIPE, whose default action ends this whole
// process without a word, where the send should fail and the step be
// retried. Ignore SIGPIPE once, before the first pair connects, unless the
// program installed a handler of its own. gRPC and civetweb send with
// MSG_NOSIGNAL or ignore it themselves, so nothing else relies on it.
void IgnoreSigpipe() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (::sigaction(SIGPIPE, nullptr, &current) != 0) return;
    if ((current.sa_flags & SA_SIGINFO) != 0 || current.sa_handler != SIG_DFL) return;
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    (void)::sigaction(SIGPIPE, &ignore, nullptr);
  });
}

std::chrono::milliseconds ToChronoMs(absl::Duration d) {
  return std::max(absl::ToChronoMilliseconds(d), std::chrono::milliseconds(1));
}

// Time left until `deadline`, at least 1ms (Gloo reads 0 as "no timeout").
std::chrono::milliseconds Remaining(absl::Time deadline) {
  return ToChronoMs(deadline - absl::Now());
}

// ---------------------------------------------------------------------------
// Exceptions -> Status (the only place Gloo's exceptions are caught)
// ---------------------------------------------------------------------------

// Thrown by the store adapter through Gloo's rendezvous code, caught again in
// CreateGlooCommunicator, so the store's own Status comes out unchanged.
class StoreError : public gloo::IoException {
 public:
  explicit StoreError(absl::Status status)
      : gloo::IoException(std::string(status.message())),
        status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

bool IsTimeoutMessage(absl::string_view message) {
  const std::string lower = absl::AsciiStrToLower(message);
  return absl::StrContains(lower, "timeout") ||
         absl::StrContains(lower, "timed out");
}

// Runs `fn`, turning whatever Gloo throws into a Status that starts with
// `what` (the operation, this rank and the peer).
template <typename Fn>
absl::Status GuardGloo(absl::string_view what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const StoreError& e) {
    return e.status();
  } catch (const gloo::IoException& e) {
    const std::string msg = absl::StrCat(what, ": Gloo I/O error: ", e.what());
    return IsTimeoutMessage(e.what()) ? absl::DeadlineExceededError(msg)
                                      : absl::UnavailableError(msg);
  } catch (const gloo::Exception& e) {
    return absl::InternalError(absl::StrCat(what, ": Gloo error: ", e.what()));
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(
        absl::StrCat(what, ": Gloo check failed: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  } catch (...) {
    return absl::InternalError(
        absl::StrCat(what, ": unknown exception from Gloo"));
  }
}

// ---------------------------------------------------------------------------
// gloo::rendezvous::Store over KeyValueStore
// ---------------------------------------------------------------------------

// Gloo's connectFullMesh publishes one key per rank (its addresses for every
// peer) and waits for everyone else's. Keys live under "<prefix>/".
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(KeyValueStore* store, const GlooOptions& options)
      : store_(store), options_(options) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status status =
        store_->Set(FullKey(key), std::string_view(data.data(), data.size()));
    if (!status.ok()) throw StoreError(Annotate(key, status));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> value =
        store_->Get(FullKey(key), options_.timeout);
    if (!value.ok()) throw StoreError(Annotate(key, value.status()));
    return std::vector<char>(value->begin(), value->end());
  }

  void wait(const std::vector<std::string>& keys) override {
    wait(keys, ToChronoMs(options_.timeout));
  }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
    for (const std::string& key : keys) {
      absl::StatusOr<std::string> value =
          store_->Get(FullKey(key), deadline - absl::Now());
      if (!value.ok()) throw StoreError(Annotate(key, value.status()));
    }
  }

 private:
  std::string FullKey(absl::string_view key) const {
    return absl::StrCat(options_.prefix, "/", key);
  }

  // Gloo's keys are the publishing rank ("3"): name it.
  absl::Status Annotate(absl::string_view key, const absl::Status& status) {
    absl::string_view digits = key;
    while (!digits.empty() && !absl::ascii_isdigit(digits.front())) {
      digits.remove_prefix(1);
    }
    int publisher = -1;
    const std::string who = absl::SimpleAtoi(digits, &publisher)
                                ? absl::StrCat("rank ", publisher)
                                : std::string("a rank");
    const std::string where =
        absl::StrCat("Gloo rendezvous '", options_.prefix, "' on rank ",
                     options_.rank, " of ", options_.size, ": ");
    if (status.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(absl::StrCat(
          where, who, " did not publish its address (key '", FullKey(key),
          "') within ", absl::FormatDuration(options_.timeout), "; check that ",
          who, " started with the same prefix, size and store"));
    }
    return absl::Status(
        status.code(),
        absl::StrCat(where, "key '", FullKey(key), "': ", status.message()));
  }

  KeyValueStore* const store_;
  const GlooOptions options_;
};

// ---------------------------------------------------------------------------
// The communicator
// ---------------------------------------------------------------------------

// The result of an operation run on a TaskThread.
class AsyncResult {
 public:
  void Set(absl::Status status) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    done_ = true;
  }
  bool Done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  absl::Status Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }

 private:
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

class AsyncOp final : public PendingOp {
 public:
  explicit AsyncOp(std::shared_ptr<AsyncResult> result)
      : result_(std::move(result)) {}
  ~AsyncOp() override { (void)result_->Wait(); }
  bool Done() override { return result_->Done(); }
  absl::Status Wait() override { return result_->Wait(); }

 private:
  std::shared_ptr<AsyncResult> result_;
};

// Runs queued tasks in order on its own thread. StartSend / StartRecv run
// the blocking Send / Recv on one of these per (peer, direction): Gloo's
// unbound buffers cannot be polled for completion (a timed-out wait tears
// the whole context down), and a thread per peer keeps messages to one peer
// in order while a slow peer never holds up another.
class TaskThread {
 public:
  TaskThread() : thread_([this] { Loop(); }) {}
  ~TaskThread() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
    }
    thread_.join();
  }
  void Push(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](TaskThread* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu_) {
              return t->closed_ || !t->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // closed and drained
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(const GlooOptions& options,
                   std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::Context> context)
      : options_(options),
        timeout_(ToChronoMs(options.timeout)),
        device_(std::move(device)),
        context_(std::move(context)) {}

  ~GlooCommunicator() override {
    // Finish the started operations first (each is bounded by the timeout).
    {
      absl::MutexLock lock(&threads_mu_);
      threads_.clear();
    }
    // Closing may throw on an already broken pair; nothing to report to.
    try {
      context_.reset();
      device_.reset();
    } catch (...) {
    }
  }

  int rank() const override { return options_.rank; }
  int size() const override { return options_.size; }

  // A message is a header (the float count, on its own slot) and, for n > 0,
  // the payload. The receiver posts the payload buffer only once the header
  // matches: Gloo aborts the process (a check in its I/O thread) when more
  // bytes arrive than were posted, and silently accepts fewer.
  absl::Status Send(const float* data, int64_t n, int peer,
                    uint32_t tag) override {
    const std::string what = absl::StrCat("Send(n=", n, ", peer=", peer,
                                          ", tag=", tag, ")", Where());
    if (absl::Status s = ValidateP2p(what, data, n, peer); !s.ok()) return s;
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    const absl::Time deadline = absl::Now() + options_.timeout;
    int64_t header = n;
    return Record(GuardGloo(what, [&] {
      auto header_buffer =
          context_->createUnboundBuffer(&header, sizeof(header));
      header_buffer->send(peer, gloo::Slot::build(kHeaderSlotPrefix, tag));
      std::unique_ptr<gloo::transport::UnboundBuffer> payload;
      if (n > 0) {
        // Gloo only reads a buffer it sends from.
        payload =
            context_->createUnboundBuffer(const_cast<float*>(data), Bytes(n));
        payload->send(peer, gloo::Slot::build(kPayloadSlotPrefix, tag));
      }
      header_buffer->waitSend(Remaining(deadline));
      if (payload) payload->waitSend(Remaining(deadline));
    }));
  }

  absl::Status Recv(float* data, int64_t n, int peer, uint32_t tag) override {
    const std::string what = absl::StrCat("Recv(n=", n, ", peer=", peer,
                                          ", tag=", tag, ")", Where());
    if (absl::Status s = ValidateP2p(what, data, n, peer); !s.ok()) return s;
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    const absl::Time deadline = absl::Now() + options_.timeout;
    int64_t sent = -1;
    absl::Status status = Record(GuardGloo(what, [&] {
      auto header_buffer = context_->createUnboundBuffer(&sent, sizeof(sent));
      header_buffer->recv(peer, gloo::Slot::build(kHeaderSlotPrefix, tag));
      header_buffer->waitRecv(Remaining(deadline));
      if (sent <= 0) return;
      // On a size mismatch, drain the message so the stream stays in step.
      std::vector<float> drain(sent == n ? 0 : sent);
      auto payload = context_->createUnboundBuffer(
          sent == n ? data : drain.data(), Bytes(sent));
      payload->recv(peer, gloo::Slot::build(kPayloadSlotPrefix, tag));
      payload->waitRecv(Remaining(deadline));
    }));
    if (status.ok() && sent != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": peer ", peer, " sent n=", sent,
          " floats, this Recv expects n=", n,
          "; the message was dropped. Both sides must pass the same n"));
    }
    return status;
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartSend(const float* data,
                                                       int64_t n, int peer,
                                                       uint32_t tag) override {
    const std::string what = absl::StrCat("StartSend(n=", n, ", peer=", peer,
                                          ", tag=", tag, ")", Where());
    if (absl::Status s = ValidateP2p(what, data, n, peer); !s.ok()) return s;
    return Start(what, peer, /*send=*/true,
                 [this, data, n, peer, tag] { return Send(data, n, peer, tag); });
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartRecv(float* data, int64_t n,
                                                       int peer,
                                                       uint32_t tag) override {
    const std::string what = absl::StrCat("StartRecv(n=", n, ", peer=", peer,
                                          ", tag=", tag, ")", Where());
    if (absl::Status s = ValidateP2p(what, data, n, peer); !s.ok()) return s;
    return Start(what, peer, /*send=*/false,
                 [this, data, n, peer, tag] { return Recv(data, n, peer, tag); });
  }

  // Collectives run on one task thread, in the order they were called or
  // started on this rank.
  absl::Status AllReduceSum(float* data, int64_t n) override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op = StartAllReduceSum(data, n);
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

  absl::StatusOr<std::unique_ptr<PendingOp>> StartAllReduceSum(
      float* data, int64_t n) override {
    const std::string what = absl::StrCat("AllReduceSum(n=", n, ")", Where());
    if (absl::Status s = internal::ValidateBuffer(what, data, n); !s.ok()) {
      return s;
    }
    return Start(what, kCollectives, /*send=*/false,
                 [this, data, n] { return RunAllReduceSum(data, n); });
  }

  absl::Status Barrier() override {
    absl::StatusOr<std::unique_ptr<PendingOp>> op =
        Start(absl::StrCat("Barrier()", Where()), kCollectives,
              /*send=*/false, [this] { return RunBarrier(); });
    if (!op.ok()) return op.status();
    return (*op)->Wait();
  }

 private:
  // The task-thread key of the collectives (peers are >= 0).
  static constexpr int kCollectives = -1;

  // Queues `task` on the task thread of (key, send); its result is the op's.
  absl::StatusOr<std::unique_ptr<PendingOp>> Start(
      absl::string_view what, int key, bool send,
      std::function<absl::Status()> task) {
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    auto result = std::make_shared<AsyncResult>();
    Thread(key, send).Push([task = std::move(task), result] {
      result->Set(task());
    });
    return std::unique_ptr<PendingOp>(new AsyncOp(std::move(result)));
  }

  absl::Status RunAllReduceSum(float* data, int64_t n) {
    const std::string what = absl::StrCat("AllReduceSum(n=", n, ")", Where());
    if (absl::Status s = internal::ValidateBuffer(what, data, n); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    if (n == 0 || options_.size == 1) return absl::OkStatus();
    absl::MutexLock lock(&collective_mu_);
    const uint32_t tag = next_collective_tag_++;
    return Record(GuardGloo(what, [&] {
      gloo::AllreduceOptions opts(context_);
      opts.setOutput(data, static_cast<size_t>(n));
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      // Ring all-reduce: each element is summed on exactly one rank (in
      // ring order) and then copied to the others, hence bit-identical.
      opts.setReduceFunction(
          [](void* c, const void* a, const void* b, size_t count) {
            float* out = static_cast<float*>(c);
            const float* x = static_cast<const float*>(a);
            const float* y = static_cast<const float*>(b);
            for (size_t i = 0; i < count; ++i) out[i] = x[i] + y[i];
          });
      opts.setTag(tag);
      opts.setTimeout(timeout_);
      gloo::allreduce(opts);
    }));
  }

  absl::Status RunBarrier() {
    const std::string what = absl::StrCat("Barrier()", Where());
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    if (options_.size == 1) return absl::OkStatus();
    absl::MutexLock lock(&collective_mu_);
    const uint32_t tag = next_collective_tag_++;
    return Record(GuardGloo(what, [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(tag);
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    }));
  }

  static size_t Bytes(int64_t n) {
    return static_cast<size_t>(n) * sizeof(float);
  }

  // " on rank 2 of 4 of Gloo communicator 'job7/dp/stage0'"
  std::string Where() const {
    return absl::StrCat(" on rank ", options_.rank, " of ", options_.size,
                        " of Gloo communicator '", options_.prefix, "'");
  }

  absl::Status ValidateP2p(absl::string_view what, const float* data, int64_t n,
                           int peer) const {
    if (absl::Status s = internal::ValidateBuffer(what, data, n); !s.ok()) {
      return s;
    }
    return internal::ValidatePeer(what, peer, options_.rank, options_.size);
  }

  // The first transport error wins; after it Gloo has torn the pairs down.
  absl::Status CheckUsable(absl::string_view what) const {
    absl::MutexLock lock(&error_mu_);
    if (first_error_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        ": communicator is unusable after an earlier error (create a "
        "new one): ",
        first_error_.ToString()));
  }

  absl::Status Record(absl::Status status) {
    if (!status.ok()) {
      absl::MutexLock lock(&error_mu_);
      if (first_error_.ok()) first_error_ = status;
    }
    return status;
  }

  // The task thread of (peer, direction), started on first use.
  TaskThread& Thread(int peer, bool send) {
    absl::MutexLock lock(&threads_mu_);
    std::unique_ptr<TaskThread>& t = threads_[{peer, send}];
    if (t == nullptr) t = std::make_unique<TaskThread>();
    return *t;
  }

  const GlooOptions options_;
  const std::chrono::milliseconds timeout_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;

  absl::Mutex collective_mu_;
  uint32_t next_collective_tag_ ABSL_GUARDED_BY(collective_mu_) = 0;

  mutable absl::Mutex error_mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(error_mu_);

  absl::Mutex threads_mu_;
  std::map<std::pair<int, bool>, std::unique_ptr<TaskThread>> threads_
      ABSL_GUARDED_BY(threads_mu_);
};

// Gloo's tcp::CreateDevice checks getaddrinfo() only for -1 and then walks
// an uninitialized result list when the name does not resolve (EAI_NONAME is
// -2): it crashes. So the name is resolved here first.
absl::Status CheckResolves(absl::string_view what, const std::string& host) {
  struct addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* result = nullptr;
  const int rv = getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (rv != 0 || result == nullptr) {
    return absl::UnavailableError(
        absl::StrCat(what, ": cannot resolve '", host,
                     "': ", rv != 0 ? gai_strerror(rv) : "no addresses",
                     "; pass an interface name or an address of this host"));
  }
  freeaddrinfo(result);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(
    const GlooOptions& options, KeyValueStore* store) {
  IgnoreSigpipe();
  if (absl::Status s = internal::ValidateGroup(
          "CreateGlooCommunicator", options.rank, options.size, options.prefix,
          store, options.timeout);
      !s.ok()) {
    return s;
  }

  const std::string listen_what =
      absl::StrCat("CreateGlooCommunicator: listen on '", options.hostname,
                   "' (rank ", options.rank, " of '", options.prefix, "')");
  const bool is_interface = if_nametoindex(options.hostname.c_str()) != 0;
  if (!is_interface) {
    if (absl::Status s = CheckResolves(listen_what, options.hostname);
        !s.ok()) {
      return s;
    }
  }
  std::shared_ptr<gloo::transport::Device> device;
  absl::Status status = GuardGloo(listen_what, [&] {
    gloo::transport::tcp::attr attr;
    if (is_interface) {
      attr.iface = options.hostname;
    } else {
      attr.hostname = options.hostname;
    }
    device = gloo::transport::tcp::CreateDevice(attr);
  });
  if (!status.ok()) {
    if (status.code() == absl::StatusCode::kInternal) {
      // An interface without an address surfaces as a Gloo check failure.
      return absl::UnavailableError(status.message());
    }
    return status;
  }

  auto context =
      std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
  StoreAdapter adapter(store, options);
  status = GuardGloo(
      absl::StrCat("CreateGlooCommunicator: rendezvous of rank ", options.rank,
                   " of ", options.size, " in '", options.prefix, "'"),
      [&] {
        context->setTimeout(ToChronoMs(options.timeout));
        context->connectFullMesh(adapter, device);
      });
  if (!status.ok()) return status;
  return std::unique_ptr<Communicator>(
      new GlooCommunicator(options, std::move(device), std::move(context)));
}

}  // namespace chunkflow::comm
