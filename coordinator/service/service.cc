#include "coordinator/service/service.h"

#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/chunkflow.grpc.pb.h"

namespace chunkflow::coordinator {
namespace v1 = ::chunkflow::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

namespace {

// The write queue of one server stream. `Reactor` is a ServerBidiReactor or
// ServerWriteReactor whose writes carry `Msg`. Shared between the reactor and
// the core (which may hold it after the stream ended: Detach makes it inert).
template <typename Reactor, typename Msg>
class StreamQueue {
 public:
  explicit StreamQueue(Reactor* r) : reactor_(r) {}

  // A client that stops reading is cut off rather than buffered forever.
  static constexpr size_t kMaxQueued = 4096;

  void Push(const Msg& msg) {
    absl::MutexLock lock(&mu_);
    if (reactor_ == nullptr || finish_requested_) return;
    if (queue_.size() >= kMaxQueued) {
      // Keep only the write in flight; the rest is never sent.
      queue_.erase(queue_.begin() + (writing_ ? 1 : 0), queue_.end());
      finish_requested_ = true;
      status_ = absl::ResourceExhaustedError(
          absl::StrCat(kMaxQueued, " messages queued: the client is not reading"));
      if (!writing_) FinishLocked();
      return;
    }
    queue_.push_back(msg);
    if (!writing_) {
      writing_ = true;
      reactor_->StartWrite(&queue_.front());  // deque keeps the reference valid
    }
  }

  void Finish(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (reactor_ == nullptr || finish_requested_) return;
    finish_requested_ = true;
    status_ = status;
    if (!writing_) FinishLocked();
  }

  void WriteDone(bool ok) {
    absl::MutexLock lock(&mu_);
    if (!queue_.empty()) queue_.pop_front();
    if (!ok) queue_.clear();  // the stream is gone
    if (reactor_ != nullptr && !queue_.empty()) {
      reactor_->StartWrite(&queue_.front());
      return;
    }
    writing_ = false;
    if (finish_requested_) FinishLocked();
  }

  void Detach() {
    absl::MutexLock lock(&mu_);
    reactor_ = nullptr;
  }

  bool Done() {
    absl::MutexLock lock(&mu_);
    return reactor_ == nullptr || finish_requested_;
  }

 private:
  void FinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || reactor_ == nullptr) return;
    finished_ = true;
    reactor_->Finish(ToGrpc(status_));
  }

  absl::Mutex mu_;
  Reactor* reactor_ ABSL_GUARDED_BY(mu_);
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

using WorkerReactor = grpc::ServerBidiReactor<v1::WorkerMessage, v1::CoordinatorMessage>;

class WorkerStreamSink final : public WorkerSink {
 public:
  explicit WorkerStreamSink(WorkerReactor* r) : queue_(r) {}
  void Send(const v1::CoordinatorMessage& msg) override { queue_.Push(msg); }
  void Close(const absl::Status& status) override { queue_.Finish(status); }
  StreamQueue<WorkerReactor, v1::CoordinatorMessage>& queue() { return queue_; }

 private:
  StreamQueue<WorkerReactor, v1::CoordinatorMessage> queue_;
};

// One worker's Connect stream: Hello first, then heartbeats and reports.
class WorkerStream final : public WorkerReactor {
 public:
  explicit WorkerStream(Coordinator* c) : core_(c), sink_(std::make_shared<WorkerStreamSink>(this)) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the worker closed its side or the connection broke
      if (!worker_id_.empty()) core_->OnDisconnect(worker_id_, sink_.get());
      sink_->Close(absl::OkStatus());
      return;
    }
    absl::Status s;
    if (worker_id_.empty()) {
      if (!in_.has_hello()) {
        s = absl::UnauthenticatedError("the first message of Connect must be a Hello");
      } else {
        s = core_->Connect(in_.hello(), sink_);
        if (s.ok()) worker_id_ = in_.hello().worker_id();
      }
    } else {
      s = core_->OnMessage(worker_id_, in_);
    }
    if (!s.ok()) {
      if (!worker_id_.empty()) core_->OnDisconnect(worker_id_, sink_.get());
      sink_->Close(s);
      return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override { sink_->queue().WriteDone(ok); }

  void OnDone() override {
    sink_->queue().Detach();
    if (!worker_id_.empty()) core_->OnDisconnect(worker_id_, sink_.get());
    delete this;
  }

 private:
  Coordinator* core_;
  std::shared_ptr<WorkerStreamSink> sink_;
  v1::WorkerMessage in_;
  std::string worker_id_;
};

class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  explicit WorkerServiceImpl(Coordinator* c) : core_(c) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const v1::RegisterRequest* req,
                                     v1::RegisterResponse* resp) override {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    absl::StatusOr<v1::RegisterResponse> out = core_->Register(*req);
    if (out.ok()) *resp = std::move(*out);
    r->Finish(ToGrpc(out.status()));
    return r;
  }

  WorkerReactor* Connect(grpc::CallbackServerContext*) override { return new WorkerStream(core_); }

  grpc::ServerUnaryReactor* KvSet(grpc::CallbackServerContext* ctx, const v1::KvSetRequest* req,
                                  v1::KvSetResponse*) override {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(core_->KvSet(req->key(), req->value())));
    return r;
  }

  grpc::ServerUnaryReactor* KvGet(grpc::CallbackServerContext* ctx, const v1::KvGetRequest* req,
                                  v1::KvGetResponse* resp) override {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    absl::StatusOr<std::string> v = core_->KvGet(req->key());
    if (v.ok()) resp->set_value(std::move(*v));
    r->Finish(ToGrpc(v.status()));
    return r;
  }

 private:
  Coordinator* core_;
};

using WatchReactor = grpc::ServerWriteReactor<v1::JobEvent>;

class WatchSink final : public JobEventSink {
 public:
  explicit WatchSink(WatchReactor* r) : queue_(r) {}
  void Send(const v1::JobEvent& e) override { queue_.Push(e); }
  void Close(const absl::Status& status) override { queue_.Finish(status); }
  bool Closed() const override { return const_cast<WatchSink*>(this)->queue_.Done(); }
  StreamQueue<WatchReactor, v1::JobEvent>& queue() { return queue_; }

 private:
  StreamQueue<WatchReactor, v1::JobEvent> queue_;
};

class WatchStream final : public WatchReactor {
 public:
  WatchStream(Coordinator* c, const std::string& job_id) : sink_(std::make_shared<WatchSink>(this)) {
    absl::Status s = c->WatchJob(job_id, sink_);
    if (!s.ok()) sink_->Close(s);
  }
  void OnWriteDone(bool ok) override { sink_->queue().WriteDone(ok); }
  void OnCancel() override { sink_->Close(absl::CancelledError("the watcher went away")); }
  void OnDone() override {
    sink_->queue().Detach();
    delete this;
  }

 private:
  std::shared_ptr<WatchSink> sink_;
};

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  explicit AdminServiceImpl(Coordinator* c) : core_(c) {}

  template <typename T>
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, absl::StatusOr<T> out, T* resp) {
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    if (out.ok()) *resp = std::move(*out);
    r->Finish(ToGrpc(out.status()));
    return r;
  }

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx,
                                      const v1::SubmitJobRequest* req, v1::Job* resp) override {
    return Reply(ctx, core_->SubmitJob(req->spec()), resp);
  }
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                   v1::Job* resp) override {
    return Reply(ctx, core_->GetJob(req->job_id()), resp);
  }
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const v1::ListJobsRequest*,
                                     v1::ListJobsResponse* resp) override {
    absl::StatusOr<std::vector<v1::Job>> jobs = core_->ListJobs();
    if (!jobs.ok()) return Reply(ctx, absl::StatusOr<v1::ListJobsResponse>(jobs.status()), resp);
    v1::ListJobsResponse r;
    for (v1::Job& j : *jobs) *r.add_jobs() = std::move(j);
    return Reply(ctx, absl::StatusOr<v1::ListJobsResponse>(std::move(r)), resp);
  }
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const v1::CancelJobRequest* req, v1::Job* resp) override {
    return Reply(ctx, core_->CancelJob(req->job_id(), req->reason()), resp);
  }
  grpc::ServerUnaryReactor* ListWorkers(grpc::CallbackServerContext* ctx,
                                        const v1::ListWorkersRequest*,
                                        v1::ListWorkersResponse* resp) override {
    v1::ListWorkersResponse r;
    for (v1::Worker& w : core_->ListWorkers()) *r.add_workers() = std::move(w);
    return Reply(ctx, absl::StatusOr<v1::ListWorkersResponse>(std::move(r)), resp);
  }
  grpc::ServerUnaryReactor* DrainWorker(grpc::CallbackServerContext* ctx,
                                        const v1::DrainWorkerRequest* req,
                                        v1::Worker* resp) override {
    return Reply(ctx, core_->DrainWorker(req->worker_id()), resp);
  }
  grpc::ServerUnaryReactor* UpdateSchedule(grpc::CallbackServerContext* ctx,
                                           const v1::UpdateScheduleRequest* req,
                                           v1::Job* resp) override {
    return Reply(ctx, core_->UpdateSchedule(req->job_id(), req->schedule()), resp);
  }
  grpc::ServerUnaryReactor* CheckpointJob(grpc::CallbackServerContext* ctx,
                                          const v1::CheckpointJobRequest* req,
                                          v1::Job* resp) override {
    return Reply(ctx, core_->CheckpointJob(req->job_id()), resp);
  }
  WatchReactor* WatchJob(grpc::CallbackServerContext*, const v1::WatchJobRequest* req) override {
    return new WatchStream(core_, req->job_id());
  }
  grpc::ServerUnaryReactor* ListSteps(grpc::CallbackServerContext* ctx,
                                      const v1::ListStepsRequest* req,
                                      v1::ListStepsResponse* resp) override {
    absl::StatusOr<std::vector<v1::StepSummary>> steps = core_->ListSteps(req->job_id());
    if (!steps.ok()) return Reply(ctx, absl::StatusOr<v1::ListStepsResponse>(steps.status()), resp);
    v1::ListStepsResponse r;
    for (v1::StepSummary& s : *steps) *r.add_steps() = std::move(s);
    return Reply(ctx, absl::StatusOr<v1::ListStepsResponse>(std::move(r)), resp);
  }

 private:
  Coordinator* core_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const ServerOptions& options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(options.db_dir);
  if (!store.ok()) return store.status();
  s->store_ = std::move(*store);
  s->registry_ = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<metrics::CoordinatorMetrics>> m =
      metrics::CoordinatorMetrics::Create(s->registry_);
  if (!m.ok()) return m.status();
  s->metrics_ = std::move(*m);
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> ms =
        metrics::MetricsServer::Start(options.metrics_listen, s->registry_);
    if (!ms.ok()) return ms.status();
    s->metrics_server_ = std::move(*ms);
  }
  CoordinatorOptions co;
  co.store = s->store_.get();
  co.metrics = s->metrics_.get();
  co.heartbeat_interval = options.heartbeat_interval;
  co.heartbeat_timeout = options.heartbeat_timeout;
  co.comm_timeout = options.comm_timeout;
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Create(co);
  if (!c.ok()) return c.status();
  s->coordinator_ = std::move(*c);
  s->worker_service_ = std::make_unique<WorkerServiceImpl>(s->coordinator_.get());
  s->admin_service_ = std::make_unique<AdminServiceImpl>(s->coordinator_.get());
  // The standard grpc.health.v1.Health service, for Kubernetes' gRPC probes
  // (deploy/k8s) and load balancers: SERVING ("" = the whole server) from
  // the start, NOT_SERVING once Shutdown begins. gRPC's own implementation;
  // the switch is process-wide and read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->worker_service_.get());
  builder.RegisterService(s->admin_service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  // Workers ping every 10 s to notice a vanished coordinator
  // (worker/agent/worker_daemon.cc); gRPC's default would answer pings more
  // often than every 5 minutes with GOAWAY (too_many_pings).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen,
                                               " (address in use or not local?)"));
  }
  const absl::Duration tick = options.heartbeat_interval / 2;
  s->ticker_ = std::thread([srv = s.get(), tick] {
    while (!srv->stop_.WaitForNotificationWithTimeout(tick)) srv->coordinator_->Tick();
  });
  return s;
}

int CoordinatorServer::metrics_port() const {
  return metrics_server_ ? metrics_server_->port() : 0;
}

void CoordinatorServer::Shutdown(absl::Duration grace) {
  if (shut_down_.exchange(true)) return;
  stop_.Notify();
  if (ticker_.joinable()) ticker_.join();
  if (server_ && server_->GetHealthCheckService() != nullptr) {
    server_->GetHealthCheckService()->Shutdown();  // NOT_SERVING from now on
  }
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

CoordinatorServer::~CoordinatorServer() {
  Shutdown();
  server_.reset();
  coordinator_.reset();
  metrics_server_.reset();
  store_.reset();
}

}  // namespace chunkflow::coordinator
