#include "metrics/metrics.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <iterator>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "prometheus/labels.h"

namespace chunkflow::metrics {
namespace {

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// Debian's Abseil has its own absl::string_view (not std's), and absl::StrCat
// takes only that one.
absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <size_t N>
std::string JoinQuoted(const std::string_view (&values)[N]) {
  return absl::StrJoin(values, ", ", [](std::string* out, std::string_view v) {
    absl::StrAppend(out, "'", ToAbsl(v), "'");
  });
}

template <size_t N>
int IndexOf(const std::string_view (&values)[N], std::string_view value) {
  for (size_t i = 0; i < N; ++i) {
    if (values[i] == value) return static_cast<int>(i);
  }
  return -1;
}

absl::Status CheckSeconds(std::string_view what, double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(what), " must be finite and >= 0 seconds, got ", seconds));
  }
  return absl::OkStatus();
}

// Registration of one metric set. prometheus-cpp throws std::invalid_argument
// when a family name exists with another type or other constant labels; the
// caller catches that and names the family being registered (`current`).
class Registrar {
 public:
  explicit Registrar(prometheus::Registry& registry) : registry_(registry) {}

  template <typename T>
  prometheus::Family<T>& Family(prometheus::detail::Builder<T> builder, const char* name,
                                const char* help) {
    current_ = name;
    return builder.Name(name).Help(help).Register(registry_);
  }

  const char* current() const { return current_; }

 private:
  prometheus::Registry& registry_;
  const char* current_ = "";
};

absl::Status RegistrationError(std::string_view set, const Registrar& registrar,
                               const std::exception& e) {
  return absl::AlreadyExistsError(absl::StrCat(
      "cannot register ", ToAbsl(set), " metric '", registrar.current(), "': ", e.what(),
      "; does the registry already hold a family of that name with another type or labels?"));
}

template <typename T, size_t N>
std::map<std::string, T*, std::less<>> AddSeries(prometheus::Family<T>& family,
                                                   const char* label,
                                                   const std::string_view (&values)[N]) {
  std::map<std::string, T*, std::less<>> series;
  for (std::string_view v : values) {
    series.emplace(std::string(v), &family.Add({{label, std::string(v)}}));
  }
  return series;
}

// Sets every gauge of `gauges` (one per state) from `by_state`, 0 if absent.
template <size_t N>
absl::Status SetByState(std::string_view metric, const std::string_view (&states)[N],
                        const std::map<std::string, prometheus::Gauge*, std::less<>>& gauges,
                        const std::map<std::string, int>& by_state) {
  for (const auto& [state, count] : by_state) {
    if (IndexOf(states, state) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(ToAbsl(metric), ": unknown state '", state,
                                                     "'; expected one of ", JoinQuoted(states)));
    }
    if (count < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(ToAbsl(metric), ": count of state '", state, "' must be >= 0, got ", count));
    }
  }
  for (const auto& [state, gauge] : gauges) {
    auto it = by_state.find(state);
    gauge->Set(it == by_state.end() ? 0 : it->second);
  }
  return absl::OkStatus();
}

// "host:port", "[v6]:port" or "port"; port in 0..65535.
absl::Status CheckBindAddress(std::string_view address) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics bind address '", ToAbsl(address), "' ", ToAbsl(why),
                     "; expected 'host:port', '[v6]:port' or 'port', e.g. '0.0.0.0:9100' "
                     "(port 0 picks a free one)"));
  };
  if (address.empty()) return bad("is empty");
  if (address.find_first_of(", \t") != std::string_view::npos) {
    return bad("must be one address");
  }
  size_t colon = address.rfind(':');
  std::string_view port = address;
  if (colon != std::string_view::npos) {
    std::string_view host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.empty()) return bad("has an empty host");
    if (host.front() == '[' ? host.back() != ']'
                            : host.find(':') != std::string_view::npos) {
      return bad("has an IPv6 host without brackets");
    }
  }
  uint32_t value = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(ToAbsl(port), &value) || value > 65535) {
    return bad("has no port in 0..65535");
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<double> TimeBuckets() {
  std::vector<double> buckets;
  // Scaling by a power of two is exact, so the labels print as 0.001, 0.002,
  // ..., 524.288.
  for (int i = 0; i < 20; ++i) buckets.push_back(std::ldexp(0.001, i));
  return buckets;
}

// ---------------------------------------------------------------------------
// MetricsServer
// ---------------------------------------------------------------------------

MetricsServer::MetricsServer(std::shared_ptr<prometheus::Registry> registry,
                             std::unique_ptr<prometheus::Exposer> exposer, int port)
    : registry_(std::move(registry)), exposer_(std::move(exposer)), port_(port) {}

MetricsServer::~MetricsServer() = default;

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    std::string_view bind_address, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsServer::Start: the registry is null");
  }
  if (absl::Status s = CheckBindAddress(bind_address); !s.ok()) return s;
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // civetweb's CivetServer throws CivetException ("null context when
    // constructing CivetServer. Possible problem binding to port.") without
    // the address or errno; name the address here.
    exposer = std::make_unique<prometheus::Exposer>(std::string(bind_address),
                                                    /*num_threads=*/2);
    exposer->RegisterCollectable(registry);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve /metrics on ", ToAbsl(bind_address), ": ", e.what(),
                     " Is the port already in use, or the host not an address of this "
                     "machine?"));
  }
  std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.size() != 1 || ports[0] <= 0) {
    return absl::InternalError(absl::StrCat("serving /metrics on ", ToAbsl(bind_address), ": expected one ",
                                            "bound port, civetweb reports [",
                                            absl::StrJoin(ports, ", "), "]"));
  }
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(registry), std::move(exposer), ports[0]));
}

// ---------------------------------------------------------------------------
// CoordinatorMetrics
// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> CoordinatorMetrics::Create(
    std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("CoordinatorMetrics::Create: the registry is null");
  }
  std::unique_ptr<CoordinatorMetrics> m(new CoordinatorMetrics());
  Registrar r(*registry);
  try {
    m->steps_ = &r.Family(prometheus::BuildCounter(), "chunkflow_steps_total",
                          "Training steps committed.")
                     .Add({});
    m->tokens_ = &r.Family(prometheus::BuildCounter(), "chunkflow_tokens_trained_total",
                           "Tokens trained in committed steps.")
                      .Add({});
    m->step_seconds_ = &r.Family(prometheus::BuildHistogram(), "chunkflow_step_seconds",
                                 "Wall time of one committed training step.")
                            .Add({}, TimeBuckets());
    m->bubble_ratio_ = &r.Family(prometheus::BuildGauge(), "chunkflow_bubble_ratio",
                                 "Idle share of (dp rank, stage) slots in the last committed "
                                 "step, 0..1: pipeline bubbles and dp imbalance together.")
                            .Add({});
    m->dp_imbalance_ = &r.Family(prometheus::BuildGauge(), "chunkflow_dp_imbalance",
                                 "Max over mean of per-dp-rank busy time in the last committed "
                                 "step; 1 is perfectly balanced.")
                            .Add({});
    m->workers_ = AddSeries(r.Family(prometheus::BuildGauge(), "chunkflow_workers",
                                     "Registered workers by state."),
                            "state", kWorkerStates);
    m->jobs_ = AddSeries(
        r.Family(prometheus::BuildGauge(), "chunkflow_jobs", "Jobs by state."), "state",
        kJobStates);
    m->replans_ = AddSeries(r.Family(prometheus::BuildCounter(), "chunkflow_replans_total",
                                     "Replanning events by reason: the memory budget "
                                     "(K, chunk size) or a refitted cost model."),
                            "reason", kReplanReasons);
  } catch (const std::exception& e) {
    return RegistrationError("coordinator", r, e);
  }
  m->registry_ = std::move(registry);
  return m;
}

absl::Status CoordinatorMetrics::OnStepCommitted(double seconds, int64_t tokens, double bubble,
                                                 double imbalance) {
  if (absl::Status s = CheckSeconds("step time", seconds); !s.ok()) return s;
  if (tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("step tokens must be >= 0, got ", tokens));
  }
  if (!(bubble >= 0 && bubble <= 1)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("bubble ratio must be in [0, 1], got ", bubble));
  }
  if (!std::isfinite(imbalance) || imbalance < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dp imbalance must be finite and >= 0, got ", imbalance));
  }
  steps_->Increment();
  tokens_->Increment(static_cast<double>(tokens));  // exact up to 2^53 tokens
  step_seconds_->Observe(seconds);
  bubble_ratio_->Set(bubble);
  dp_imbalance_->Set(imbalance);
  return absl::OkStatus();
}

absl::Status CoordinatorMetrics::SetWorkers(const std::map<std::string, int>& by_state) {
  return SetByState("chunkflow_workers", kWorkerStates, workers_, by_state);
}

absl::Status CoordinatorMetrics::SetJobs(const std::map<std::string, int>& by_state) {
  return SetByState("chunkflow_jobs", kJobStates, jobs_, by_state);
}

absl::Status CoordinatorMetrics::OnReplan(std::string_view reason) {
  auto it = replans_.find(reason);
  if (it == replans_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown replan reason '", ToAbsl(reason), "'; expected one of ", JoinQuoted(kReplanReasons)));
  }
  it->second->Increment();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// WorkerMetrics
// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<WorkerMetrics>> WorkerMetrics::Create(
    std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("WorkerMetrics::Create: the registry is null");
  }
  std::unique_ptr<WorkerMetrics> m(new WorkerMetrics());
  Registrar r(*registry);
  try {
    m->op_seconds_family_ = &r.Family(prometheus::BuildHistogram(), "chunkflow_op_seconds",
                                      "Time of one op (forward, backward, recompute) of one "
                                      "chunk, by pipeline stage.");
    m->chunks_ = AddSeries(r.Family(prometheus::BuildCounter(), "chunkflow_chunks_total",
                                    "Chunk ops executed, by op."),
                           "op", kOps);
    m->memory_ = AddSeries(r.Family(prometheus::BuildGauge(), "chunkflow_memory_bytes",
                                    "Current device memory by kind: activations, state store "
                                    "(K/V and their gradients), scratch."),
                           "kind", kMemoryKinds);
    m->memory_peak_ = &r.Family(prometheus::BuildGauge(), "chunkflow_memory_peak_bytes",
                                "High-water mark of device memory, all kinds together.")
                           .Add({});
    m->heartbeats_ = &r.Family(prometheus::BuildCounter(), "chunkflow_heartbeats_total",
                               "Heartbeats sent to the coordinator.")
                          .Add({});
    m->offloaded_ =
        &r.Family(prometheus::BuildCounter(), "chunkflow_offloaded_sequences_total",
                  "Sequences whose K/V state a step kept in pinned host memory on this "
                  "worker's stage because it did not fit the device (GPU workers; a sequence "
                  "offloaded on several stages counts once per stage).")
             .Add({});
    m->pinned_mid_step_ =
        &r.Family(prometheus::BuildCounter(), "chunkflow_state_pinned_mid_step_bytes_total",
                  "Host memory pinned for offloaded state during a step's ops, where the "
                  "step-start prediction missed it; each such pin synchronises the device "
                  "while the step's NCCL work may be in flight (GPU workers; 0 when the "
                  "prediction holds).")
             .Add({});
  } catch (const std::exception& e) {
    return RegistrationError("worker", r, e);
  }
  m->registry_ = std::move(registry);
  return m;
}

absl::Status WorkerMetrics::OnOp(std::string_view op, int stage, double seconds) {
  int op_index = IndexOf(kOps, op);
  if (op_index < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown op '", ToAbsl(op), "'; expected one of ", JoinQuoted(kOps)));
  }
  if (stage < 0 || stage >= kMaxStages) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline stage must be in [0, ", kMaxStages, "), got ", stage));
  }
  if (absl::Status s = CheckSeconds(absl::StrCat("'", ToAbsl(op), "' op time"), seconds); !s.ok()) {
    return s;
  }
  prometheus::Histogram* histogram = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = op_seconds_.try_emplace({op_index, stage}, nullptr);
    if (inserted) {
      // Cannot throw: the label names are valid and the buckets sorted.
      it->second = &op_seconds_family_->Add(
          {{"op", std::string(op)}, {"stage", std::to_string(stage)}}, TimeBuckets());
    }
    histogram = it->second;
  }
  histogram->Observe(seconds);
  chunks_.find(op)->second->Increment();
  return absl::OkStatus();
}

absl::Status WorkerMetrics::SetMemory(const MemorySample& sample) {
  const std::pair<const char*, int64_t> fields[] = {
      {"activations_bytes", sample.activations_bytes},
      {"state_bytes", sample.state_bytes},
      {"scratch_bytes", sample.scratch_bytes},
      {"peak_bytes", sample.peak_bytes}};
  for (const auto& [name, value] : fields) {
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory sample ", name, " must be >= 0, got ", value));
    }
  }
  memory_.find("activations")->second->Set(static_cast<double>(sample.activations_bytes));
  memory_.find("state")->second->Set(static_cast<double>(sample.state_bytes));
  memory_.find("scratch")->second->Set(static_cast<double>(sample.scratch_bytes));
  double total = static_cast<double>(sample.activations_bytes) +
                 static_cast<double>(sample.state_bytes) +
                 static_cast<double>(sample.scratch_bytes);
  absl::MutexLock lock(&mu_);
  peak_bytes_ = std::max({peak_bytes_, total, static_cast<double>(sample.peak_bytes)});
  memory_peak_->Set(peak_bytes_);
  return absl::OkStatus();
}

void WorkerMetrics::OnHeartbeat() { heartbeats_->Increment(); }

absl::Status WorkerMetrics::OnStateOffloaded(int64_t sequences, int64_t pinned_mid_step_bytes) {
  if (sequences < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("offloaded sequences must be >= 0, got ", sequences));
  }
  if (pinned_mid_step_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bytes pinned mid-step must be >= 0, got ", pinned_mid_step_bytes));
  }
  offloaded_->Increment(static_cast<double>(sequences));
  pinned_mid_step_->Increment(static_cast<double>(pinned_mid_step_bytes));
  return absl::OkStatus();
}

}  // namespace chunkflow::metrics
