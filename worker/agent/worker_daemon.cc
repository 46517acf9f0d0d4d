#include "worker/agent/worker_daemon.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "coordinator/planner/plan_proto.h"
#include "dataset/tokens.h"
#include "grpcpp/grpcpp.h"
#include "metrics/metrics.h"
#include "proto/chunkflow.grpc.pb.h"
#include "worker/agent/step_runner.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/comm/nccl_communicator.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/model_config.h"
#include "worker/engine/params.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::worker {
namespace v1 = ::chunkflow::v1;

constexpr int kKeepaliveMs = 10000;
constexpr int kKeepaliveTimeoutMs = 5000;

std::shared_ptr<grpc::Channel> CoordinatorChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // gRPC's default reconnect backoff grows to minutes; a worker must find a
  // restarted coordinator well within its heartbeat timeout.
  // (The "min" backoff is also the connect timeout of one attempt.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // HTTP/2 keepalive pings: a coordinator whose node vanished sends no RST,
  // and without pings the Connect stream's Read would wait for TCP to give
  // up (minutes), long past the restarted coordinator's rejoin window. With
  // them the stream fails within kKeepalive + kKeepaliveTimeout and the
  // worker reconnects. The coordinator allows pings this often
  // (coordinator/service/service.cc).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

namespace {

// The host a worker reports: --host itself, or for a network interface
// name (what Gloo listens on, e.g. eth0) its IPv4 address and the name,
// "10.1.2.3 (eth0)": an address an operator can reach, not just "eth0".
std::string ReportedHost(const std::string& host) {
  if (if_nametoindex(host.c_str()) == 0) return host;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return host;
  std::string out = host;
  for (const ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET || host != a->ifa_name) {
      continue;
    }
    char buf[INET_ADDRSTRLEN] = {};
    if (inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr, buf,
                  sizeof(buf)) != nullptr) {
      out = absl::StrCat(buf, " (", host, ")");
    }
    break;
  }
  freeifaddrs(list);
  return out;
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

class RemoteKeyValueStore final : public comm::KeyValueStore {
 public:
  // `abort` (optional, outliving the store): when set, a Get waiting for a
  // key gives up at its next poll (a rendezvous for a rank that will not
  // come, in a job's setup the coordinator aborted).
  explicit RemoteKeyValueStore(const std::string& target,
                               const std::atomic<bool>* abort = nullptr)
      : abort_(abort),
        target_(target),
        stub_(v1::WorkerService::NewStub(CoordinatorChannel(target))) {}

  absl::Status Set(std::string_view key, std::string_view value) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::KvSetRequest req;
    req.set_key(std::string(key));
    req.set_value(std::string(value));
    v1::KvSetResponse resp;
    absl::Status s = FromGrpc(stub_->KvSet(&ctx, req, &resp));
    if (!s.ok() && s.code() != absl::StatusCode::kInvalidArgument) {
      return absl::UnavailableError(absl::StrCat("key-value store at ", target_, ": ", s.message()));
    }
    return s;
  }

  absl::StatusOr<std::string> Get(std::string_view key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    absl::Duration wait = absl::Milliseconds(5);
    while (true) {
      if (abort_ != nullptr && abort_->load()) {
        return absl::AbortedError(absl::StrCat("waiting for key '", std::string(key),
                                               "': the job's setup was aborted"));
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::KvGetRequest req;
      req.set_key(std::string(key));
      v1::KvGetResponse resp;
      absl::Status s = FromGrpc(stub_->KvGet(&ctx, req, &resp));
      if (s.ok()) return resp.value();
      if (s.code() == absl::StatusCode::kInvalidArgument) return s;
      if (s.code() != absl::StatusCode::kNotFound) {
        return absl::UnavailableError(
            absl::StrCat("key-value store at ", target_, ": ", s.message()));
      }
      if (absl::Now() + wait > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("key '", std::string(key), "' still unset after ",
                                                        absl::FormatDuration(timeout)));
      }
      absl::SleepFor(wait);
      wait = std::min(wait * 2, absl::Milliseconds(100));
    }
  }

 private:
  const std::atomic<bool>* const abort_;
  std::string target_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

int64_t ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

// Everything one rank of one job holds.
struct JobState {
  v1::RankAssignment a;
  engine::ModelConfig config;
  std::unique_ptr<dataset::TokenSource> data;
  std::unique_ptr<comm::KeyValueStore> kv;
  // Appended to under Daemon::abort_mu_ (the stream thread may abort them
  // while the setup connects the next).
  std::vector<std::unique_ptr<comm::Communicator>> comms;
  bool ready = false;  // the setup finished
  // Set by AbortRunning (under Daemon::abort_mu_): ends the setup's waits
  // (the key-value store's, NCCL's init) as the communicators' Abort ends
  // theirs.
  std::atomic<bool> aborted{false};
  StageLinks links;
  std::unique_ptr<StepRunner> runner;
  std::optional<v1::StepReport> last_report;
};

class Daemon final : public WorkerDaemon {
 public:
  explicit Daemon(const WorkerDaemonOptions& o) : options_(o) {
    std::random_device rd;
    while (incarnation_ == 0) incarnation_ = (static_cast<uint64_t>(rd()) << 32) | rd();
    stub_ = v1::WorkerService::NewStub(CoordinatorChannel(o.coordinator));
  }

  absl::Status Init() {
    registry_ = std::make_shared<prometheus::Registry>();
    absl::StatusOr<std::unique_ptr<metrics::WorkerMetrics>> m =
        metrics::WorkerMetrics::Create(registry_);
    if (!m.ok()) return m.status();
    metrics_ = std::move(*m);
    if (!options_.metrics_listen.empty()) {
      absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> s =
          metrics::MetricsServer::Start(options_.metrics_listen, registry_);
      if (!s.ok()) return s.status();
      metrics_server_ = std::move(*s);
    }
    return absl::OkStatus();
  }

  ~Daemon() override {
    Stop();
    if (job_thread_.joinable()) job_thread_.join();
  }

  int metrics_port() const override { return metrics_server_ ? metrics_server_->port() : 0; }

  // Stops the daemon; Run returns `s`.
  void Fail(const absl::Status& s) {
    Log(s.ToString());
    {
      absl::MutexLock lock(&fatal_mu_);
      if (fatal_.ok()) fatal_ = s;
    }
    Stop();
  }

  void Stop() override {
    stopping_ = true;
    // A step in flight cannot report once the stream is gone: end its
    // waits now, so Run returns within the caller's grace period.
    AbortRunning("", 0, "the worker is stopping");
    {
      // Not stream_mu_: a Write blocked on a stalled stream holds it, and
      // the cancel is what unblocks that Write.
      absl::MutexLock lock(&ctx_mu_);
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    absl::MutexLock lock(&q_mu_);
    q_cv_.SignalAll();
  }

  absl::Status Run() override {
    job_thread_ = std::thread([this] { JobLoop(); });
    absl::Status result;
    absl::Time last_contact = absl::Now();
    int failures = 0;
    while (!stopping_) {
      bool established = false;
      absl::Status s = Session(&last_contact, &established);
      if (stopping_) break;
      if (established) failures = 0;
      ++failures;
      if (failures == 1 || failures % 20 == 0) {
        Log(absl::StrCat("coordinator ", options_.coordinator, ": ", s.ToString(),
                         "; retrying"));
      }
      if (options_.give_up_after > absl::ZeroDuration() &&
          absl::Now() - last_contact > options_.give_up_after) {
        result = absl::UnavailableError(
            absl::StrCat("coordinator ", options_.coordinator, " unreachable for ",
                         absl::FormatDuration(options_.give_up_after), ": ", s.message()));
        break;
      }
      absl::SleepFor(absl::Milliseconds(std::min(500, 50 * failures)));
    }
    stopping_ = true;
    {
      absl::MutexLock lock(&q_mu_);
      q_cv_.SignalAll();
    }
    if (job_thread_.joinable()) job_thread_.join();
    absl::MutexLock lock(&fatal_mu_);
    return fatal_.ok() ? result : fatal_;
  }

 private:
  void Log(const std::string& line) {
    absl::MutexLock lock(&log_mu_);
    *options_.log << absl::FormatTime("%H:%M:%E3S ", absl::Now(), absl::LocalTimeZone())
                  << "[worker " << (worker_id_.empty() ? options_.name : worker_id_) << "] "
                  << line << std::endl;
  }

  // One Register + Connect stream, until it ends. OK when it ended after
  // having been established.
  absl::Status Session(absl::Time* last_contact, bool* established) {
    v1::RegisterRequest req;
    // After the first registration: the id the coordinator gave (a worker
    // without a name would otherwise get a new id on every reconnect).
    req.set_worker_name(worker_id_.empty() ? options_.name : worker_id_);
    req.set_host(ReportedHost(options_.host));
    req.set_incarnation(incarnation_);
    req.set_peer_address(options_.host);
    req.set_version("chunkflow v1");
    req.set_links(Links());
    v1::DeviceFacts* d = req.mutable_device();
    d->set_kind(v1::DEVICE_KIND_CPU);
    d->set_name("cpu");
    d->set_memory_bytes(static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGESIZE));
    d->set_cpu_threads(static_cast<int32_t>(std::thread::hardware_concurrency()));
    if (on_cuda()) {
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, options_.cuda_device) == cudaSuccess) {
        d->set_kind(v1::DEVICE_KIND_CUDA);
        d->set_name(prop.name);
        d->set_memory_bytes(static_cast<int64_t>(prop.totalGlobalMem));
        d->set_compute_capability(prop.major * 10 + prop.minor);
        d->set_device_index(options_.cuda_device);
      }
    }
    v1::RegisterResponse resp;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      ctx.set_wait_for_ready(true);  // wait for the channel instead of failing fast
      absl::Status s = FromGrpc(stub_->Register(&ctx, req, &resp));
      if (!s.ok()) return s;
    }
    *last_contact = absl::Now();
    if (worker_id_.empty()) {
      worker_id_ = resp.worker_id();
      Log(absl::StrCat("registered with ", options_.coordinator, " (incarnation ", incarnation_,
                       ")"));
    }
    v1::WorkerMessage hello;
    {
      absl::MutexLock lock(&state_mu_);
      v1::Hello* h = hello.mutable_hello();
      h->set_worker_id(worker_id_);
      h->set_incarnation(incarnation_);
      if (!held_job_.empty()) {
        h->set_job_id(held_job_);
        h->set_stage(held_stage_);
        h->set_dp_index(held_dp_);
        h->set_generation(held_generation_);
        h->set_last_step(held_last_step_);
      }
    }
    grpc::ClientContext ctx;
    {
      absl::MutexLock lock(&stream_mu_);
      if (stopping_) return absl::CancelledError("stopping");
      {
        absl::MutexLock ctx_lock(&ctx_mu_);
        ctx_ = &ctx;
      }
      stream_ = stub_->Connect(&ctx);
      // The Hello is the stream's first message (the coordinator refuses a
      // stream that starts otherwise): written before the lock lets the job
      // thread's report or error at the new stream. A report sent before it
      // went nowhere and is resent when the coordinator asks.
      if (!stream_->Write(hello)) {
        ctx.TryCancel();
        (void)stream_->Finish();
        stream_.reset();
        absl::MutexLock ctx_lock(&ctx_mu_);
        ctx_ = nullptr;  // ctx dies with this call
        return absl::UnavailableError("the Connect stream broke at once");
      }
    }
    *established = true;
    const absl::Duration interval =
        absl::Seconds(resp.heartbeat_interval_s() > 0 ? resp.heartbeat_interval_s() : 1.0);
    absl::Notification hb_stop;
    std::thread heartbeat([&] {
      while (!hb_stop.WaitForNotificationWithTimeout(interval)) {
        v1::WorkerMessage m;
        m.mutable_heartbeat()->set_sent_unix_nanos(absl::ToUnixNanos(absl::Now()));
        m.mutable_heartbeat()->set_current_memory_bytes(ResidentBytes());
        m.mutable_heartbeat()->set_state(state_.load());
        Send(m);
        metrics_->OnHeartbeat();
      }
    });
    v1::CoordinatorMessage msg;
    while (stream_->Read(&msg)) {
      *last_contact = absl::Now();
      if (msg.has_assignment()) {
        // Claimed from the moment it is read: a reconnect before the job
        // thread gets to it must not look like a worker that lost its rank.
        const v1::RankAssignment& a = msg.assignment();
        SetHeld(a.job_id(), a.stage(), a.dp_index(), a.generation(), a.checkpoint_step());
      }
      if (msg.has_control() && (msg.control().action() == v1::Control::ACTION_ABORT ||
                                msg.control().action() == v1::Control::ACTION_RELEASE)) {
        // Now, not when the job thread reaches the queued control: that
        // thread may be waiting in a step (or the setup) for the rank whose
        // loss caused it. A RELEASE (the job completed or was cancelled)
        // ends a step a cancel interrupted; after the last step nothing
        // waits in the links any more.
        AbortRunning(msg.control().job_id(), msg.control().generation(),
                     absl::StrCat(msg.control().action() == v1::Control::ACTION_ABORT
                                      ? "aborted"
                                      : "released",
                                  " by the coordinator: ", msg.control().reason()));
      }
      if (msg.has_control() && msg.control().action() == v1::Control::ACTION_SHUTDOWN) {
        Log("shutdown requested by the coordinator");
        stopping_ = true;
        AbortRunning("", 0, "shutdown requested by the coordinator");
        ctx.TryCancel();
        break;
      }
      absl::MutexLock lock(&q_mu_);
      queue_.push_back(std::move(msg));
      q_cv_.Signal();
    }
    *last_contact = absl::Now();  // the coordinator was there until now
    hb_stop.Notify();
    heartbeat.join();
    absl::Status s;
    {
      absl::MutexLock lock(&stream_mu_);
      s = FromGrpc(stream_->Finish());
      stream_.reset();
      absl::MutexLock ctx_lock(&ctx_mu_);
      ctx_ = nullptr;
    }
    if (s.ok()) return absl::UnavailableError("the coordinator ended the stream");
    return s;
  }

  bool Send(const v1::WorkerMessage& m) {
    absl::MutexLock lock(&stream_mu_);
    // A broken stream drops it; reports are kept for resends.
    return stream_ != nullptr && stream_->Write(m);
  }

  void SendError(const std::string& job, int64_t step, const absl::Status& s,
                 int64_t generation = -1) {
    Log(absl::StrCat("job ", job, " step ", step, ": ", s.ToString()));
    v1::WorkerMessage m;
    v1::WorkerError* e = m.mutable_error();
    e->set_generation(generation >= 0 ? generation : job_ ? job_->a.generation() : 0);
    e->set_job_id(job);
    e->set_step(step);
    e->set_code(static_cast<int32_t>(s.code()));
    e->set_message(std::string(s.message()));
    Send(m);
  }

  void SetHeld(const JobState* j, int64_t last_step) {
    if (j == nullptr) {
      SetHeld("", -1, -1, 0, -1);
    } else {
      SetHeld(j->a.job_id(), j->a.stage(), j->a.dp_index(), j->a.generation(), last_step);
    }
  }
  void SetHeld(const std::string& job, int32_t stage, int32_t dp, int64_t generation,
               int64_t last_step) {
    absl::MutexLock lock(&state_mu_);
    held_job_ = job;
    held_stage_ = stage;
    held_dp_ = dp;
    held_generation_ = generation;
    held_last_step_ = last_step;
  }

  void Teardown() {
    if (job_) Log(absl::StrCat("dropping job ", job_->a.job_id()));
    const v1::RankAssignment* a = job_ ? &job_->a : pending_ ? &*pending_ : nullptr;
    const std::string dropped_job = a != nullptr ? a->job_id() : "";
    const int64_t dropped = a != nullptr ? a->generation() : 0;
    DropJob();
    pending_.reset();
    {
      // Keep a newer claim the stream thread already made for an assignment
      // still queued behind this teardown (another job, or a later generation).
      absl::MutexLock lock(&state_mu_);
      if (held_job_ == dropped_job && held_generation_ <= dropped) {
        held_job_.clear();
        held_last_step_ = -1;
      }
    }
    state_ = v1::WORKER_STATE_IDLE;
  }

  // Destroys job_, out of the stream thread's reach first.
  void DropJob() {
    {
      absl::MutexLock lock(&abort_mu_);
      abortable_ = nullptr;
    }
    job_.reset();
  }

  // From the stream thread (or Stop): breaks the communicators of the job
  // set up now if it is `job_id` at `generation` or older (0: any), so a
  // step waiting in them for a lost rank fails now instead of at the
  // communication timeout. The job thread then tears the job down as after
  // any failed step, and is free for the job's next assignment.
  // The same filter as JobLoop's for the queued control: generation 0 ends
  // whatever is held.
  void AbortRunning(const std::string& job_id, int64_t generation, const std::string& why) {
    absl::MutexLock lock(&abort_mu_);
    if (abortable_ == nullptr || abortable_->aborted) return;
    const v1::RankAssignment& a = abortable_->a;  // fixed from the setup's start
    if (generation != 0 && (a.job_id() != job_id || a.generation() > generation)) return;
    if (!abortable_->ready) {
      Log(absl::StrCat("job ", a.job_id(), ": interrupting the setup (", why, ")"));
    } else if (state_ == v1::WORKER_STATE_TRAINING) {
      Log(absl::StrCat("job ", a.job_id(), ": interrupting the running step (", why, ")"));
    }
    abortable_->aborted = true;
    const absl::Status status = absl::AbortedError(
        absl::StrCat("job ", a.job_id(), " generation ", a.generation(), ": ", why));
    for (const std::unique_ptr<comm::Communicator>& c : abortable_->comms) c->Abort(status);
  }

  void JobLoop() {
    while (true) {
      v1::CoordinatorMessage m;
      {
        absl::MutexLock lock(&q_mu_);
        while (queue_.empty() && !stopping_) q_cv_.Wait(&q_mu_);
        if (stopping_) break;
        m = std::move(queue_.front());
        queue_.pop_front();
      }
      if (m.has_assignment()) {
        Teardown();  // keeps the claim the stream thread made for this assignment
        pending_ = m.assignment();
        SetHeld(pending_->job_id(), pending_->stage(), pending_->dp_index(),
                pending_->generation(), pending_->checkpoint_step());
      } else if (m.has_bootstrap()) {
        if (!pending_) {
          SendError("", -1, absl::FailedPreconditionError("CommBootstrap before RankAssignment"));
          continue;
        }
        const v1::RankAssignment a = *pending_;
        pending_.reset();
        absl::Status s = m.bootstrap().backend() == Links()
                             ? Setup(a, m.bootstrap())
                             : absl::FailedPreconditionError(absl::StrCat(
                                   "the coordinator bootstraps this job's links on ",
                                   v1::CommBootstrap::Backend_Name(m.bootstrap().backend()),
                                   " but this worker's run on ",
                                   v1::CommBootstrap::Backend_Name(Links())));
        if (!s.ok()) {
          DropJob();
          SendError(a.job_id(), -1, s, a.generation());
          // Keep a newer claim the stream thread made meanwhile (an ABORT
          // and the next generation's assignment read during the setup).
          {
            absl::MutexLock lock(&state_mu_);
            if (held_job_ == a.job_id() && held_generation_ <= a.generation()) {
              held_job_.clear();
              held_last_step_ = -1;
            }
          }
          state_ = v1::WORKER_STATE_IDLE;
        }
      } else if (m.has_step()) {
        RunStep(m.step());
      } else if (m.has_control()) {
        const v1::Control& c = m.control();
        switch (c.action()) {
          case v1::Control::ACTION_ABORT:
          case v1::Control::ACTION_RELEASE: {
            // Ignore the end of an older assignment than the one held now.
            const v1::RankAssignment* holding = job_ ? &job_->a : pending_ ? &*pending_ : nullptr;
            if (holding != nullptr && c.generation() != 0 &&
                (holding->job_id() != c.job_id() || holding->generation() > c.generation())) {
              break;  // the end of an older (or another job's) assignment
            }
            Log(absl::StrCat(c.action() == v1::Control::ACTION_ABORT ? "abort" : "release",
                             " job ", c.job_id(), ": ", c.reason()));
            Teardown();
            break;
          }
          case v1::Control::ACTION_DRAIN:
            Log(absl::StrCat("draining: ", c.reason()));
            break;
          default:
            break;
        }
      }
    }
    DropJob();
  }

  bool on_cuda() const { return options_.device == "cuda"; }

  // The transport this worker's links run on (Connect below).
  v1::CommBootstrap::Backend Links() const {
    return on_cuda() && options_.links == "nccl" ? v1::CommBootstrap::BACKEND_NCCL
                                                 : v1::CommBootstrap::BACKEND_GLOO;
  }

  absl::Status Connect(JobState* j, const std::string& prefix, int rank, int size,
                       comm::Communicator** out) {
    const absl::Duration timeout =
        absl::Seconds(j->a.comm_timeout_s() > 0 ? j->a.comm_timeout_s() : 600);
    absl::StatusOr<std::unique_ptr<comm::Communicator>> c;
    if (on_cuda() && options_.links == "nccl") {
      // The unique id travels through the coordinator's key-value store.
      c = comm::CreateNcclCommunicator(rank, size, prefix, j->kv.get(), options_.cuda_device,
                                       timeout, &j->aborted);
    } else {
      comm::GlooOptions o;
      o.hostname = options_.host;
      o.rank = rank;
      o.size = size;
      o.prefix = prefix;
      o.timeout = timeout;
      c = comm::CreateGlooCommunicator(o, j->kv.get());
    }
    if (!c.ok()) {
      return absl::Status(c.status().code(),
                          absl::StrCat("communicator ", prefix, ": ", c.status().message()));
    }
    absl::MutexLock lock(&abort_mu_);
    j->comms.push_back(std::move(*c));
    *out = j->comms.back().get();
    // Aborted while this one connected: it is broken like the others.
    if (j->aborted) j->comms.back()->Abort(absl::AbortedError("the job's setup was aborted"));
    return absl::OkStatus();
  }

  absl::Status Setup(const v1::RankAssignment& a, const v1::CommBootstrap& boot) {
    auto j = std::make_unique<JobState>();
    j->a = a;
    absl::StatusOr<engine::ModelConfig> config =
        engine::ParseHfConfig(a.model_config_json(), "RankAssignment.model_config_json");
    if (!config.ok()) return config.status();
    j->config = *config;
    absl::StatusOr<std::vector<engine::StageRange>> ranges =
        engine::PartitionStages(j->config.num_hidden_layers, a.pp());
    if (!ranges.ok()) return ranges.status();
    if (a.stage() < 0 || a.stage() >= a.pp() || a.dp_index() < 0 || a.dp_index() >= a.dp()) {
      return absl::InvalidArgumentError(absl::StrCat("rank stage ", a.stage(), " dp ",
                                                     a.dp_index(), " outside ", a.dp(), " x ",
                                                     a.pp()));
    }
    const engine::StageRange range = (*ranges)[a.stage()];
    if (range.first_layer != a.first_layer() || range.end_layer != a.end_layer()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the coordinator assigned layers [", a.first_layer(), ", ", a.end_layer(),
          ") but this worker partitions stage ", a.stage(), " as [", range.first_layer, ", ",
          range.end_layer, ")"));
    }
    absl::StatusOr<std::unique_ptr<dataset::TokenSource>> data =
        dataset::TokenSource::Open(a.dataset_path(), j->config.vocab_size);
    if (!data.ok()) return data.status();
    j->data = std::move(*data);
    j->kv = std::make_unique<RemoteKeyValueStore>(options_.coordinator, &j->aborted);
    // From here an ABORT of this generation ends the rendezvous waits (for
    // a rank that was lost meanwhile) instead of the timeout.
    {
      absl::MutexLock lock(&abort_mu_);
      abortable_ = j.get();
    }
    absl::Cleanup unlist = [&] {
      if (j == nullptr) return;  // it became job_
      absl::MutexLock lock(&abort_mu_);
      if (abortable_ == j.get()) abortable_ = nullptr;
    };
    const std::string p = boot.store_prefix();
    const std::string ds = std::to_string(a.dp_index());
    const int32_t s = a.stage(), pp = a.pp(), dp = a.dp();
    Log(absl::StrFormat("job %s: stage %d of %d, dp %d of %d, layers [%d, %d), generation %d; "
                        "connecting",
                        a.job_id(), s, pp, a.dp_index(), dp, a.first_layer(), a.end_layer(),
                        a.generation()));
    // Left links first, then right ones: the rendezvous chain along the
    // pipeline cannot cross (as in step_runner_test).
    if (s > 0) {
      const std::string link = ds + "/" + std::to_string(s - 1);
      if (absl::Status st = Connect(j.get(), p + "/act/" + link, 1, 2, &j->links.act_in); !st.ok()) return st;
      if (absl::Status st = Connect(j.get(), p + "/grad/" + link, 0, 2, &j->links.grad_out); !st.ok()) return st;
    }
    if (s + 1 < pp) {
      const std::string link = ds + "/" + std::to_string(s);
      if (absl::Status st = Connect(j.get(), p + "/act/" + link, 0, 2, &j->links.act_out); !st.ok()) return st;
      if (absl::Status st = Connect(j.get(), p + "/grad/" + link, 1, 2, &j->links.grad_in); !st.ok()) return st;
    }
    if (dp > 1) {
      if (absl::Status st = Connect(j.get(), p + "/dp/" + std::to_string(s), a.dp_index(), dp,
                                    &j->links.dp_group);
          !st.ok()) {
        return st;
      }
    }
    if (j->config.tie_word_embeddings && pp > 1 && (s == 0 || s == pp - 1)) {
      if (absl::Status st = Connect(j.get(), p + "/tied/" + ds, s == 0 ? 0 : 1, 2, &j->links.tied);
          !st.ok()) {
        return st;
      }
    }
    if (dp * pp > 1) {
      if (absl::Status st = Connect(j.get(), p + "/world", a.dp_index() * pp + s, dp * pp,
                                    &j->links.world);
          !st.ok()) {
        return st;
      }
    }
    StepRunnerOptions ro;
    if (on_cuda()) {
      ro.cuda_device = options_.cuda_device;
      ro.precision = options_.precision == "fp32" ? engine::cuda::Precision::kFp32
                                                  : engine::cuda::Precision::kBf16;
      // The job's budget is the coordinator's planning target (it replans on
      // the reported peak); the allocator's hard limit is the device.
      ro.device_links = options_.links == "nccl";
      ro.offload_state = *engine::cuda::ParseStateOffload(options_.offload_state);  // checked
    }
    absl::StatusOr<std::unique_ptr<StepRunner>> runner =
        StepRunner::Create(j->config, range, &j->links, ro);
    if (!runner.ok()) return runner.status();
    j->runner = std::move(*runner);
    int64_t last_step = -1;
    if (!a.checkpoint_path().empty()) {
      if (absl::Status st = j->runner->LoadShard(a.checkpoint_path(), s); !st.ok()) return st;
      last_step = a.checkpoint_step();
      Log(absl::StrCat("loaded the checkpoint after step ", last_step, " from ",
                       a.checkpoint_path()));
    } else if (!a.model_path().empty()) {
      absl::StatusOr<engine::SafetensorsReader> reader =
          engine::SafetensorsReader::Open(a.model_path());
      // The coordinator found weights there at submit: missing here means
      // this machine does not see them (a volume not mounted), and random
      // weights on one stage would train silently wrong.
      if (!reader.ok()) {
        return absl::Status(reader.status().code(),
                            absl::StrCat("worker ", worker_id_, " cannot read the model's weights ",
                                         "at ", a.model_path(), ": ", reader.status().message()));
      }
      if (absl::Status st = j->runner->params().Load(*reader); !st.ok()) return st;
    } else {
      j->runner->params().InitRandom(static_cast<uint64_t>(a.seed()));
    }
    if (absl::Status st = j->runner->ParamsChanged(); !st.ok()) return st;  // to the device
    {
      absl::MutexLock lock(&abort_mu_);
      if (j->aborted) return absl::AbortedError("the job's setup was aborted");
      j->ready = true;
    }
    job_ = std::move(j);
    SetHeld(job_.get(), last_step);
    last_step_ = last_step;
    state_ = v1::WORKER_STATE_ASSIGNED;
    return absl::OkStatus();
  }

  void RunStep(const v1::StepPlanForWorker& p) {
    if (!job_ || job_->a.job_id() != p.job_id() || job_->a.generation() != p.generation()) {
      // A plan of an assignment that is gone (it was on its way when the job
      // was reset): the coordinator no longer waits for it.
      Log(absl::StrCat("ignoring step ", p.step(), " of job ", p.job_id(), " generation ",
                       p.generation(), ": not the assignment held"));
      return;
    }
    if (p.step() <= last_step_) {
      // Resent after a coordinator restart: answer with the kept report.
      if (job_->last_report && job_->last_report->step() == p.step()) {
        v1::WorkerMessage m;
        *m.mutable_step_report() = *job_->last_report;
        Send(m);
      }
      return;
    }
    if (p.step() != last_step_ + 1) {
      SendError(p.job_id(), p.step(),
                absl::FailedPreconditionError(absl::StrCat("step ", p.step(), " after step ",
                                                           last_step_, ": a step is missing")));
      Teardown();
      return;
    }
    const v1::RankAssignment& a = job_->a;
    absl::StatusOr<planner::Plan> plan = planner::FromWorkerPlanProto(p, a.dp(), a.pp());
    if (!plan.ok()) {
      SendError(p.job_id(), p.step(), plan.status());
      Teardown();
      return;
    }
    engine::StepData data;
    for (const v1::Chunk& c : p.chunks()) {
      for (const v1::Piece& piece : c.pieces()) {
        if (data.sequences.count(piece.seq())) continue;
        engine::SequenceData sd;
        sd.id = piece.seq();
        if (absl::Status s = job_->data->Read(piece.seq(), &sd.tokens, &sd.labels); !s.ok()) {
          SendError(p.job_id(), p.step(), s);
          Teardown();
          return;
        }
        data.sequences[sd.id] = std::move(sd);
      }
    }
    engine::TrainOptions o;
    o.chunk_size = p.params().chunk_size();
    o.k = p.params().k();
    o.optimizer = a.optimizer().name() == "sgd" ? engine::OptimizerKind::kSgd
                                                 : engine::OptimizerKind::kAdamW;
    o.lr = static_cast<float>(a.optimizer().lr());
    o.beta1 = static_cast<float>(a.optimizer().beta1());
    o.beta2 = static_cast<float>(a.optimizer().beta2());
    o.eps = static_cast<float>(a.optimizer().eps());
    o.weight_decay = static_cast<float>(a.optimizer().weight_decay());
    o.clip = static_cast<float>(a.optimizer().clip_norm());
    state_ = v1::WORKER_STATE_TRAINING;
    const absl::Time t0 = absl::Now();
    absl::StatusOr<WorkerStepResult> r =
        job_->runner->RunStep(*plan, a.dp_index(), data, p.loss_tokens(), o);
    const double seconds = absl::ToDoubleSeconds(absl::Now() - t0);
    if (!r.ok()) {
      SendError(p.job_id(), p.step(), r.status());
      if (job_->runner->on_device()) {
        if (const std::string lost = job_->runner->DeviceLost(); !lost.empty()) {
          // A sticky CUDA error: nothing in this process can use the GPU
          // again. Exit (non-zero) so the supervisor or Kubernetes restarts
          // the worker, which rejoins as a new incarnation.
          Fail(absl::InternalError(
              absl::StrCat("the CUDA device is lost (", lost, "); exiting to restart")));
          return;
        }
      }
      Teardown();  // the communicators are broken after an error
      return;
    }
    bool checkpoint_saved = false;
    if (p.checkpoint_after() && a.dp_index() == 0) {
      if (absl::Status s = job_->runner->SaveShard(p.checkpoint_path(), a.stage(), a.pp());
          !s.ok()) {
        SendError(p.job_id(), p.step(), s);
        Teardown();
        return;
      }
      checkpoint_saved = true;
      v1::WorkerMessage m;
      v1::CheckpointDone* d = m.mutable_checkpoint_done();
      d->set_job_id(p.job_id());
      d->set_step(p.step());
      d->set_path(p.checkpoint_path());
      Send(m);
    }
    v1::StepReport rep;
    rep.set_job_id(p.job_id());
    rep.set_step(p.step());
    rep.set_dp(a.dp_index());
    rep.set_stage(a.stage());
    rep.set_peak_memory_bytes(r->peak_bytes);
    rep.set_loss_sum(r->loss_sum);
    rep.set_loss_tokens(r->loss_count);
    rep.set_step_seconds(seconds);
    rep.set_grad_norm(r->grad_norm);
    rep.set_offloaded_sequences(r->offloaded_sequences);
    rep.set_generation(a.generation());
    rep.set_checkpoint_saved(checkpoint_saved);
    if (checkpoint_saved) rep.set_checkpoint_path(p.checkpoint_path());
    int64_t tokens = 0;
    const std::vector<planner::Op>& ops = plan->ops(a.dp_index(), a.stage()).ops;
    for (size_t i = 0; i < ops.size() && i < r->op_seconds.size(); ++i) {
      const planner::Chunk& c = plan->chunks[ops[i].chunk];
      v1::OpTiming* t = rep.add_timings();
      t->set_op_index(static_cast<int32_t>(i));
      t->set_seconds(r->op_seconds[i]);
      t->set_tokens(c.compute_tokens);
      t->set_attention_pairs(c.compute_pairs);
      t->set_type(ops[i].type == planner::OpType::kForward ? v1::OP_TYPE_FORWARD
                                                           : v1::OP_TYPE_BACKWARD);
      t->set_recompute(ops[i].recompute);
      const char* name = ops[i].type == planner::OpType::kBackward ? "backward"
                         : ops[i].recompute                        ? "recompute"
                                                                   : "forward";
      (void)metrics_->OnOp(name, a.stage(), r->op_seconds[i]);
      if (ops[i].type == planner::OpType::kForward && !ops[i].recompute) tokens += c.tokens;
    }
    rep.set_tokens(tokens);
    const engine::MemoryTracker& tracker = job_->runner->memory();
    metrics::MemorySample mem;
    mem.activations_bytes = tracker.current(engine::MemoryTracker::kActivations);
    mem.state_bytes = tracker.current(engine::MemoryTracker::kState);
    mem.scratch_bytes = tracker.current(engine::MemoryTracker::kScratch);
    mem.peak_bytes = r->peak_bytes;
    (void)metrics_->SetMemory(mem);
    (void)metrics_->OnStateOffloaded(r->offloaded_sequences, r->pinned_mid_step_bytes);
    if (r->pinned_mid_step_bytes > 0) {
      Log(absl::StrFormat(
          "step %d: pinned %.1f MiB of host memory for offloaded state mid-step (the step-start "
          "prediction missed it; each pin synchronises the device)",
          p.step(), static_cast<double>(r->pinned_mid_step_bytes) / (1 << 20)));
    }
    last_step_ = p.step();
    SetHeld(job_.get(), last_step_);
    job_->last_report = rep;
    state_ = v1::WORKER_STATE_ASSIGNED;
    v1::WorkerMessage m;
    *m.mutable_step_report() = std::move(rep);
    Send(m);
  }

  const WorkerDaemonOptions options_;
  absl::Mutex fatal_mu_;
  absl::Status fatal_ ABSL_GUARDED_BY(fatal_mu_);
  uint64_t incarnation_ = 0;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::string worker_id_;
  std::atomic<bool> stopping_{false};
  std::atomic<v1::WorkerState> state_{v1::WORKER_STATE_IDLE};
  absl::Mutex log_mu_;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics::WorkerMetrics> metrics_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;

  absl::Mutex stream_mu_;  // before ctx_mu_ when both are held
  absl::Mutex ctx_mu_;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(ctx_mu_) = nullptr;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>> stream_
      ABSL_GUARDED_BY(stream_mu_);

  // What Hello claims on a reconnect.
  absl::Mutex state_mu_;
  std::string held_job_ ABSL_GUARDED_BY(state_mu_);
  int32_t held_stage_ ABSL_GUARDED_BY(state_mu_) = -1;
  int32_t held_dp_ ABSL_GUARDED_BY(state_mu_) = -1;
  int64_t held_generation_ ABSL_GUARDED_BY(state_mu_) = 0;
  int64_t held_last_step_ ABSL_GUARDED_BY(state_mu_) = -1;

  absl::Mutex q_mu_;
  absl::CondVar q_cv_;
  std::deque<v1::CoordinatorMessage> queue_ ABSL_GUARDED_BY(q_mu_);
  std::thread job_thread_;

  // Job thread only.
  std::unique_ptr<JobState> job_;
  // job_ while it is set up, for the stream thread to abort its
  // communicators (an ABORT of the job, Stop) while the job thread waits
  // in them: set after the setup, cleared before job_ is torn down.
  absl::Mutex abort_mu_;
  JobState* abortable_ ABSL_GUARDED_BY(abort_mu_) = nullptr;
  std::optional<v1::RankAssignment> pending_;
  int64_t last_step_ = -1;
};

}  // namespace

std::unique_ptr<comm::KeyValueStore> CreateRemoteKeyValueStore(const std::string& coordinator) {
  return std::make_unique<RemoteKeyValueStore>(coordinator);
}

absl::StatusOr<std::unique_ptr<WorkerDaemon>> WorkerDaemon::Create(
    const WorkerDaemonOptions& options) {
  if (options.coordinator.empty()) {
    return absl::InvalidArgumentError("--coordinator is empty (host:port of the coordinator)");
  }
  if (options.device != "cpu" && options.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda, got '", options.device, "'"));
  }
  if (options.precision != "bf16" && options.precision != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("--precision must be bf16 or fp32, got '", options.precision, "'"));
  }
  if (options.links != "nccl" && options.links != "gloo") {
    return absl::InvalidArgumentError(
        absl::StrCat("--links must be nccl or gloo, got '", options.links, "'"));
  }
  if (absl::StatusOr<engine::cuda::StateOffload> o =
          engine::cuda::ParseStateOffload(options.offload_state);
      !o.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--offload_state: ", o.status().message()));
  }
  if (options.device == "cuda") {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      return absl::UnavailableError("--device=cuda but this machine has no CUDA device");
    }
    if (options.cuda_device < 0 || options.cuda_device >= count) {
      return absl::InvalidArgumentError(absl::StrCat("--cuda_device ", options.cuda_device,
                                                     " does not exist (", count, " devices)"));
    }
  }
  auto d = std::make_unique<Daemon>(options);
  if (absl::Status s = d->Init(); !s.ok()) return s;
  return std::unique_ptr<WorkerDaemon>(std::move(d));
}

}  // namespace chunkflow::worker
