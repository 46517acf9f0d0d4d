// gRPC in front of the coordinator's core (coordinator/core): WorkerService
// and AdminService on the callback API, one ServerBidiReactor per worker
// stream and one ServerWriteReactor per WatchJob. Reactions call the core and
// return; the core delivers outgoing messages after releasing its lock,
// through sinks that queue them and start the next write when the previous
// one is done (gRPC allows one outstanding write per stream). The sink's own
// small mutex guards only its queue; it is never held while calling the core.
//
//   absl::StatusOr<std::unique_ptr<CoordinatorServer>> s =
//       CoordinatorServer::Start({.listen = "0.0.0.0:50051", .db_dir = "/var/lib/chunkflow"});
//   (*s)->port();  (*s)->Wait();   // until Shutdown()
//
// The server also answers the standard grpc.health.v1.Health/Check (service
// "": SERVING while up, NOT_SERVING once Shutdown begins), which Kubernetes'
// gRPC probes call (deploy/k8s/coordinator.yaml).

#ifndef CHUNKFLOW_COORDINATOR_SERVICE_SERVICE_H_
#define CHUNKFLOW_COORDINATOR_SERVICE_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "coordinator/core/coordinator.h"
#include "coordinator/store/store.h"
#include "grpcpp/grpcpp.h"
#include "metrics/metrics.h"

namespace chunkflow::coordinator {

struct ServerOptions {
  std::string listen = "127.0.0.1:0";  // host:port; port 0 picks a free one
  std::string db_dir;                  // RocksDB directory (required)
  // Prometheus /metrics; empty: none. "127.0.0.1:0" picks a free port.
  std::string metrics_listen;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration comm_timeout = absl::Seconds(600);  // CoordinatorOptions says why
};

class CoordinatorServer {
 public:
  // Opens the store, reloads the coordinator from it, starts serving.
  // Errors: the store's (FAILED_PRECONDITION when another coordinator holds
  // it); UNAVAILABLE when `listen` cannot be bound (naming it).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const ServerOptions& options);
  ~CoordinatorServer();  // Shutdown()

  int port() const { return port_; }
  int metrics_port() const;
  Coordinator* coordinator() { return coordinator_.get(); }

  // Stops accepting calls, ends every stream (workers see UNAVAILABLE and
  // reconnect to the next coordinator) and closes the store. Calls in
  // flight get `grace` to finish (their streams keep serving the job that
  // long); zero cancels them at once, as a crash would. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(2));
  void Wait();

 private:
  CoordinatorServer() = default;

  std::unique_ptr<Store> store_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics::CoordinatorMetrics> metrics_;
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<grpc::Service> worker_service_, admin_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread ticker_;
  absl::Notification stop_;
  std::atomic<bool> shut_down_{false};
};

// absl::Status <-> grpc::Status, keeping the code and message.
grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace chunkflow::coordinator

#endif  // CHUNKFLOW_COORDINATOR_SERVICE_SERVICE_H_
