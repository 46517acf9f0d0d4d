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
#include <set>
#include <memory>
#include <mutex>
#include <optional>
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
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"
#include "gloo/transport/pair.h"
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
// The ring all-reduce's messages (AllReduceSum and Barrier), tagged with
// the collective's sequence number.
constexpr uint8_t kRingSlotPrefix = 0x22;

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

// Thrown where a wait of ours returned false: Abort() interrupted it.
class AbortedWait : public std::exception {
 public:
  explicit AbortedWait(std::string reason) : reason_(std::move(reason)) {}
  const char* what() const noexcept override { return reason_.c_str(); }

 private:
  std::string reason_;
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
  } catch (const AbortedWait& e) {
    return absl::AbortedError(absl::StrCat(what, ": ", e.what()));
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
      Tracked header_buffer(this, &header, sizeof(header));
      header_buffer->send(peer, gloo::Slot::build(kHeaderSlotPrefix, tag));
      std::optional<Tracked> payload;
      if (n > 0) {
        // Gloo only reads a buffer it sends from.
        payload.emplace(this, const_cast<float*>(data), Bytes(n));
        (*payload)->send(peer, gloo::Slot::build(kPayloadSlotPrefix, tag));
      }
      header_buffer.WaitSend(deadline);
      if (payload) payload->WaitSend(deadline);
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
      Tracked header_buffer(this, &sent, sizeof(sent));
      header_buffer->recv(peer, gloo::Slot::build(kHeaderSlotPrefix, tag));
      header_buffer.WaitRecv(deadline);
      if (sent <= 0) return;
      // On a size mismatch, drain the message so the stream stays in step.
      std::vector<float> drain(sent == n ? 0 : sent);
      Tracked payload(this, sent == n ? data : drain.data(), Bytes(sent));
      payload->recv(peer, gloo::Slot::build(kPayloadSlotPrefix, tag));
      payload.WaitRecv(deadline);
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

  // Every wait of this communicator is on an unbound buffer of its own
  // (Tracked): Abort interrupts each (abortWaitRecv / abortWaitSend), and
  // marks the ones created later to return at once. Then it closes the
  // connections (with a reset), so the peers' waits on this rank fail now
  // too, and nothing more is read into or written from the callers' data.
  void Abort(const absl::Status& why) override {
    const std::string reason = internal::AbortReason(Where(), why);
    {
      absl::MutexLock lock(&error_mu_);
      if (first_error_.ok()) first_error_ = absl::AbortedError(reason);
    }
    {
      absl::MutexLock lock(&live_mu_);
      if (abort_reason_.empty()) abort_reason_ = reason;
      for (gloo::transport::UnboundBuffer* b : live_) Interrupt(b);
    }
    for (int peer = 0; peer < options_.size; ++peer) {
      if (peer == options_.rank) continue;
      try {
        std::unique_ptr<gloo::transport::Pair>& pair = context_->getPair(peer);
        if (pair != nullptr) pair->close();
      } catch (...) {
        // A pair already torn down has nothing left to close.
      }
    }
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
    return Record(GuardGloo(what, [&] { RingAllReduce(data, n, tag); }));
  }

  // Every rank has entered once every rank's contribution went around the
  // ring: an all-reduce of one float per rank.
  absl::Status RunBarrier() {
    const std::string what = absl::StrCat("Barrier()", Where());
    if (absl::Status s = CheckUsable(what); !s.ok()) return s;
    if (options_.size == 1) return absl::OkStatus();
    absl::MutexLock lock(&collective_mu_);
    const uint32_t tag = next_collective_tag_++;
    std::vector<float> token(options_.size, 1.0f);
    return Record(GuardGloo(what, [&] { RingAllReduce(token.data(), options_.size, tag); }));
  }

  // Ring all-reduce (reduce-scatter, then all-gather) over our own unbound
  // buffers rather than gloo::allreduce: Gloo's collectives wait on buffers
  // of their own, which Abort could not reach (Debian's libgloo-dev lacks
  // gloo/common/memory.h, so tcp::Pair's own abort is not callable either).
  // Each element is summed once, along the ring in a fixed order, on the
  // rank that owns its segment, then copied to the others: bit-identical
  // on every rank and deterministic. Throws what GuardGloo turns into a
  // Status.
  void RingAllReduce(float* data, int64_t n, uint32_t tag) {
    const int p = options_.size, r = options_.rank;
    const int next = (r + 1) % p, prev = (r + p - 1) % p;
    const uint64_t slot = gloo::Slot::build(kRingSlotPrefix, tag);
    const absl::Time deadline = absl::Now() + options_.timeout;
    // Segment s (taken mod p) is [n s / p, n (s + 1) / p).
    auto mod = [p](int seg) { return (seg % p + p) % p; };
    auto begin = [&](int seg) { return n * mod(seg) / p; };
    auto seg_len = [&](int seg) { return n * (mod(seg) + 1) / p - begin(seg); };
    // 2 (p - 1) rounds: in each, send segment `out` to the next rank and
    // receive segment `in` from the previous one, into `into`; in the
    // reduce-scatter (the first p - 1) add it to this rank's segment
    // (round i: i + 2 contributions of segment r - i - 1 here; in the end
    // all p of segment r + 1), in the all-gather keep it as it came.
    struct Round {
      int out, in;
      float* into;
      bool reduce;
    };
    // Two reduce rounds are in flight at once (one being added up, the
    // next one's receive posted); not zeroed, every float is received
    // before it is read.
    const int64_t most = (n + p - 1) / p;
    const int buffers = std::min(2, p - 1);
    std::unique_ptr<float[]> incoming(new float[static_cast<size_t>(buffers * most)]);
    std::vector<Round> rounds;
    for (int i = 0; i + 1 < p; ++i) {
      rounds.push_back({r - i, r - i - 1, incoming.get() + (i % buffers) * most, true});
    }
    for (int i = 0; i + 1 < p; ++i) {
      rounds.push_back({r + 1 - i, r - i, data + begin(r - i), false});
    }
    // Each receive is posted one round early: Gloo then finds it posted
    // when the previous rank's send arrives and writes the data at once,
    // instead of a ready/ready exchange before every segment. Causality
    // keeps an early receive from overwriting a segment still being sent.
    std::vector<std::optional<Tracked>> recvs(rounds.size());
    auto post_recv = [&](size_t i) {
      if (seg_len(rounds[i].in) == 0) return;
      recvs[i].emplace(this, rounds[i].into, Bytes(seg_len(rounds[i].in)));
      (*recvs[i])->recv(prev, slot);
    };
    post_recv(0);
    for (size_t i = 0; i < rounds.size(); ++i) {
      const Round& rd = rounds[i];
      if (i + 1 < rounds.size()) post_recv(i + 1);
      std::optional<Tracked> send;
      if (seg_len(rd.out) > 0) {
        send.emplace(this, data + begin(rd.out), Bytes(seg_len(rd.out)));
        (*send)->send(next, slot);
      }
      if (recvs[i]) {
        recvs[i]->WaitRecv(deadline);
        recvs[i].reset();
        if (rd.reduce) {
          float* acc = data + begin(rd.in);
          for (int64_t k = 0, m = seg_len(rd.in); k < m; ++k) acc[k] += rd.into[k];
        }
      }
      if (send) send->WaitSend(deadline);
    }
  }

  // An unbound buffer that Abort can interrupt, known to the communicator
  // while it lives. Its waits throw AbortedWait once interrupted, and Gloo's
  // exceptions otherwise (a timeout, a lost connection).
  class Tracked {
   public:
    Tracked(GlooCommunicator* comm, void* ptr, size_t bytes)
        : comm_(comm), buffer_(comm->context_->createUnboundBuffer(ptr, bytes)) {
      comm_->Enlist(buffer_.get());
    }
    ~Tracked() { comm_->Delist(buffer_.get()); }
    Tracked(const Tracked&) = delete;
    Tracked& operator=(const Tracked&) = delete;

    gloo::transport::UnboundBuffer* operator->() const { return buffer_.get(); }
    void WaitSend(absl::Time deadline) {
      if (!buffer_->waitSend(Remaining(deadline))) throw AbortedWait(comm_->AbortReason());
    }
    void WaitRecv(absl::Time deadline) {
      if (!buffer_->waitRecv(Remaining(deadline))) throw AbortedWait(comm_->AbortReason());
    }

   private:
    GlooCommunicator* const comm_;
    const std::unique_ptr<gloo::transport::UnboundBuffer> buffer_;
  };

  // A wait interrupted before it starts returns at once (Gloo keeps the
  // flag until a wait consumes it).
  static void Interrupt(gloo::transport::UnboundBuffer* b) {
    b->abortWaitRecv();
    b->abortWaitSend();
  }
  void Enlist(gloo::transport::UnboundBuffer* b) {
    absl::MutexLock lock(&live_mu_);
    live_.insert(b);
    if (!abort_reason_.empty()) Interrupt(b);
  }
  void Delist(gloo::transport::UnboundBuffer* b) {
    absl::MutexLock lock(&live_mu_);
    live_.erase(b);
  }
  std::string AbortReason() {
    absl::MutexLock lock(&live_mu_);
    return abort_reason_;
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
  // After Abort every call is ABORTED.
  absl::Status CheckUsable(absl::string_view what) const {
    absl::MutexLock lock(&error_mu_);
    if (first_error_.ok()) return absl::OkStatus();
    if (first_error_.code() == absl::StatusCode::kAborted) {
      return absl::AbortedError(absl::StrCat(what, ": ", first_error_.message()));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        what,
        ": communicator is unusable after an earlier error (create a "
        "new one): ",
        first_error_.ToString()));
  }

  // An operation that failed after Abort failed because of it: ABORTED,
  // with the reason (an interrupted wait names it; a call that met a pair
  // Abort had closed does not).
  absl::Status Record(absl::Status status) {
    if (!status.ok()) {
      absl::MutexLock lock(&error_mu_);
      if (first_error_.ok()) {
        first_error_ = status;
      } else if (first_error_.code() == absl::StatusCode::kAborted) {
        if (absl::StrContains(status.message(), first_error_.message())) {
          return absl::AbortedError(status.message());
        }
        return absl::AbortedError(absl::StrCat(status.message(), "; ", first_error_.message()));
      }
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

  // The unbound buffers alive now, for Abort; its reason once aborted.
  absl::Mutex live_mu_;
  std::set<gloo::transport::UnboundBuffer*> live_ ABSL_GUARDED_BY(live_mu_);
  std::string abort_reason_ ABSL_GUARDED_BY(live_mu_);

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
