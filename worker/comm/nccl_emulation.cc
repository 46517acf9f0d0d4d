// Host emulation of the NCCL calls nccl_communicator.cc makes, for testing
// the NCCL communicator and the step runner's NCCL path in CI, where there
// is no GPU (let alone two). Ranks are threads of one test process; "device"
// buffers are the CUDA host emulation's (kernels/cuda/host_emulation.cc).
// Link it together with that emulation instead of libnccl and libcudart.
//
// What it keeps of NCCL's semantics (what the host code must get right):
//  - An operation is asynchronous: ncclSend / ncclRecv / ncclAllReduce
//    return at once and complete later on their stream; events, stream
//    queries and synchronizations see the completion.
//  - A stream runs its operations in order: an operation starts only when
//    the ones before it on its stream have completed. So two ranks whose
//    streams each hold a send to the other ahead of the matching receive
//    deadlock, as on a GPU; operations fused by ncclGroupStart/End start
//    together.
//  - Sends and receives between two ranks of a communicator match in the
//    order they start; a send completes when its receive has started (the
//    data is then copied), and vice versa. An all-reduce completes when
//    every rank started it; each element is summed over the ranks in rank
//    order, so all ranks get the same bits.
//  - ncclCommInitRankConfig with blocking = 0 stays ncclInProgress until
//    every rank joined; two ranks of one communicator on the same device are
//    refused (ncclInvalidUsage), as NCCL does.
//  - ncclCommAbort tears its operations down; the other ranks' communicators
//    then report ncclRemoteError.
// What it adds: a send / receive pair with different counts or types fails
// with ncclInvalidUsage on both ranks (NCCL's behaviour is undefined), and
// so does an operation on a device whose communicators another thread has
// already used (NCCL does not support several threads issuing to the
// communicators of one device; the emulation refuses it outright).
// With CHUNKFLOW_EMULATED_NCCL_SLOTS=N a device runs at most N NCCL kernels
// (items: one call, or one group's operations on one stream) at once; the
// others wait for a slot in the order they reached the front of their
// streams.
// Not emulated: every other NCCL call, reduction ops other than sum, types
// other than ncclFloat / ncclDouble, and the timing of anything.

#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cuda/host_emulation.h"

namespace emu = chunkflow::kernels::cuda::emulation;

struct ncclComm;

namespace {

struct Item;

struct Op {
  enum Kind { kSend, kRecv, kAllReduce };
  Kind kind = kSend;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;
  ncclDataType_t type = ncclFloat;
  int peer = -1;
  ncclComm* comm = nullptr;
  Item* item = nullptr;
  bool posted = false;
  bool done = false;
};

// The operations one call (or one group) put on one stream: one kernel.
struct Item {
  cudaStream_t stream = nullptr;
  std::vector<std::unique_ptr<Op>> ops;
  int remaining = 0;
  bool posted = false;
  int device = -1;
  bool admitted = false;  // holds one of its device's kernel slots
  bool waiting = false;   // in its device's queue for a slot
};

struct Clique;

}  // namespace

struct ncclComm {
  std::thread::id issuer;  // the thread of its first operation
  bool has_issuer = false;
  Clique* clique = nullptr;
  int rank = -1;
  int device = -1;
  ncclResult_t async = ncclInProgress;
  std::string last_error;
};

namespace {

struct Clique {
  int nranks = 0;
  int joined = 0;
  std::vector<ncclComm*> members;
  // Posted, unmatched point-to-point operations per (sender, receiver).
  std::map<std::pair<int, int>, std::deque<Op*>> sends, recvs;
  // Posted all-reduces per rank, in order.
  std::vector<std::deque<Op*>> collectives;
};

// CHUNKFLOW_EMULATED_NCCL_SLOTS: the NCCL kernels a device runs at once.
struct Slots {
  int running = 0;
  std::deque<Item*> waiting;  // at the front of their streams, oldest first
};

struct State {
  std::mutex mu;
  std::map<int, Slots> devices;
  std::condition_variable joined;
  std::map<std::string, std::unique_ptr<Clique>> cliques;
  // Each stream's items, oldest first; the front one is posted.
  std::map<cudaStream_t, std::deque<std::unique_ptr<Item>>> streams;
  std::set<ncclComm*> live;
};

State& S() {
  static State* s = new State;
  return *s;
}

thread_local int group_depth = 0;
thread_local std::vector<std::unique_ptr<Op>>* group_ops = nullptr;
thread_local std::vector<cudaStream_t>* group_streams = nullptr;
thread_local std::string last_error;

size_t TypeSize(ncclDataType_t type) {
  switch (type) {
    case ncclFloat:
      return sizeof(float);
    case ncclDouble:
      return sizeof(double);
    default:
      return 0;
  }
}

void Post(Op* op);
void Advance(cudaStream_t stream);

// How many NCCL kernels a device runs at once (CHUNKFLOW_EMULATED_NCCL_SLOTS,
// read at each admission: set it before the communicators are created;
// unset or 0: no limit). With a limit, a kernel at the front of its stream
// waits for a slot behind the device's older waiting kernels (by the time
// they reached the front of their streams, an approximation of launches
// sharing a GPU's hardware queues); 1 is a device that runs one NCCL kernel
// at a time, the case NCCL's documentation warns deadlocks communicators
// used concurrently.
int SlotLimit() {
  const char* e = std::getenv("CHUNKFLOW_EMULATED_NCCL_SLOTS");
  return e != nullptr ? std::atoi(e) : 0;
}

void Unwait(Slots& d, Item* item) {
  if (!item->waiting) return;
  d.waiting.erase(std::find(d.waiting.begin(), d.waiting.end(), item));
  item->waiting = false;
}

// Whether the item may start now; if not, it waits for a slot.
bool Admit(Item* item) {
  if (item->admitted) return true;
  const int limit = SlotLimit();
  Slots& d = S().devices[item->device];
  if (limit > 0 &&
      (d.running >= limit || (!d.waiting.empty() && d.waiting.front() != item))) {
    if (!item->waiting) {
      item->waiting = true;
      d.waiting.push_back(item);
    }
    return false;
  }
  Unwait(d, item);
  item->admitted = true;
  ++d.running;
  return true;
}

// A finished (or torn down) item gives its slot to the oldest waiting one.
void Leave(Item* item) {
  Slots& d = S().devices[item->device];
  Unwait(d, item);
  if (!item->admitted) return;
  --d.running;
  while (!d.waiting.empty()) {
    Item* next = d.waiting.front();
    Advance(next->stream);  // posts it: it is the front of its stream
    if (!d.waiting.empty() && d.waiting.front() == next) break;  // no slot after all
  }
}

// Marks `op` done and lets its stream move on when its item is complete.
void Complete(Op* op) {
  if (op->done) return;
  op->done = true;
  Item* item = op->item;
  if (--item->remaining == 0) Advance(item->stream);
}

// Pops the stream's completed items and posts the next one.
void Advance(cudaStream_t stream) {
  auto& q = S().streams[stream];
  while (!q.empty() && q.front()->remaining == 0) {
    std::unique_ptr<Item> done = std::move(q.front());
    q.pop_front();
    emu::CompleteAsync(stream);
    Leave(done.get());
  }
  if (!q.empty() && !q.front()->posted) {
    Item* item = q.front().get();
    if (!Admit(item)) return;
    item->posted = true;
    std::vector<Op*> ops;
    for (auto& op : item->ops) {
      if (!op->done) ops.push_back(op.get());
    }
    // Posting may complete the item (and free it): count down first.
    ++item->remaining;
    for (Op* op : ops) Post(op);
    if (--item->remaining == 0) Advance(stream);
  }
}

void Fail(ncclComm* comm, ncclResult_t result, const std::string& why) {
  if (comm->async == ncclSuccess || comm->async == ncclInProgress) comm->async = result;
  comm->last_error = why;
}

void MatchP2p(Clique* c, int src, int dst) {
  auto& sq = c->sends[{src, dst}];
  auto& rq = c->recvs[{src, dst}];
  while (!sq.empty() && !rq.empty()) {
    Op* s = sq.front();
    Op* r = rq.front();
    sq.pop_front();
    rq.pop_front();
    if (s->count != r->count || s->type != r->type) {
      const std::string why = "emulated NCCL: rank " + std::to_string(src) + " sent " +
                              std::to_string(s->count) + " elements, rank " + std::to_string(dst) +
                              " receives " + std::to_string(r->count);
      Fail(s->comm, ncclInvalidUsage, why);
      Fail(r->comm, ncclInvalidUsage, why);
    } else if (s->count > 0) {
      std::memmove(r->recv, s->send, s->count * TypeSize(s->type));
    }
    Complete(s);
    Complete(r);
  }
}

void MatchCollective(Clique* c) {
  for (;;) {
    for (const auto& q : c->collectives) {
      if (q.empty()) return;
    }
    std::vector<Op*> ops;
    for (auto& q : c->collectives) {
      ops.push_back(q.front());
      q.pop_front();
    }
    const size_t n = ops[0]->count;
    bool same = true;
    for (Op* op : ops) same = same && op->count == n && op->type == ops[0]->type;
    if (!same) {
      for (Op* op : ops) Fail(op->comm, ncclInvalidUsage, "emulated NCCL: all-reduce counts differ");
    } else if (ops[0]->type == ncclFloat) {
      std::vector<float> sum(n, 0.0f);
      for (Op* op : ops) {
        const float* x = static_cast<const float*>(op->send);
        for (size_t i = 0; i < n; ++i) sum[i] += x[i];
      }
      for (Op* op : ops) std::memcpy(op->recv, sum.data(), n * sizeof(float));
    } else {
      std::vector<double> sum(n, 0.0);
      for (Op* op : ops) {
        const double* x = static_cast<const double*>(op->send);
        for (size_t i = 0; i < n; ++i) sum[i] += x[i];
      }
      for (Op* op : ops) std::memcpy(op->recv, sum.data(), n * sizeof(double));
    }
    for (Op* op : ops) Complete(op);
  }
}

void Post(Op* op) {
  op->posted = true;
  ncclComm* comm = op->comm;
  Clique* c = comm->clique;
  if (comm->async != ncclSuccess) {  // broken: nothing will match
    Complete(op);
    return;
  }
  switch (op->kind) {
    case Op::kSend:
      c->sends[{comm->rank, op->peer}].push_back(op);
      MatchP2p(c, comm->rank, op->peer);
      break;
    case Op::kRecv:
      c->recvs[{op->peer, comm->rank}].push_back(op);
      MatchP2p(c, op->peer, comm->rank);
      break;
    case Op::kAllReduce:
      c->collectives[comm->rank].push_back(op);
      MatchCollective(c);
      break;
  }
}

// Queues one item on each stream the ops use and posts it if it is first.
void Submit(std::vector<std::unique_ptr<Op>> ops, const std::vector<cudaStream_t>& streams) {
  std::map<cudaStream_t, std::unique_ptr<Item>> items;
  std::vector<cudaStream_t> order;
  for (size_t i = 0; i < ops.size(); ++i) {
    std::unique_ptr<Item>& item = items[streams[i]];
    if (item == nullptr) {
      item = std::make_unique<Item>();
      item->stream = streams[i];
      item->device = ops[i]->comm->device;
      order.push_back(streams[i]);
    }
    ops[i]->item = item.get();
    ++item->remaining;
    item->ops.push_back(std::move(ops[i]));
  }
  for (cudaStream_t stream : order) {
    emu::EnqueueAsync(stream);
    S().streams[stream].push_back(std::move(items[stream]));
    Advance(stream);
  }
}

std::unique_ptr<Op> MakeOp(Op::Kind kind, const void* send, void* recv, size_t count,
                           ncclDataType_t type, int peer, ncclComm* comm) {
  auto op = std::make_unique<Op>();
  op->kind = kind;
  op->send = send;
  op->recv = recv;
  op->count = count;
  op->type = type;
  op->peer = peer;
  op->comm = comm;
  return op;
}

ncclResult_t Enqueue(std::unique_ptr<Op> op, cudaStream_t stream) {
  if (op->comm == nullptr || op->comm->clique == nullptr) return ncclInvalidArgument;
  if (TypeSize(op->type) == 0) {
    last_error = "emulated NCCL: only ncclFloat and ncclDouble";
    return ncclInvalidArgument;
  }
  if (op->kind != Op::kAllReduce &&
      (op->peer < 0 || op->peer >= op->comm->clique->nranks || op->peer == op->comm->rank)) {
    last_error = "emulated NCCL: invalid peer " + std::to_string(op->peer);
    return ncclInvalidArgument;
  }
  std::lock_guard<std::mutex> lock(S().mu);
  const ncclResult_t state = op->comm->async;
  if (state == ncclInProgress) {
    last_error = "emulated NCCL: communicator still initializing";
    return ncclInvalidUsage;
  }
  if (state != ncclSuccess) return state;
  // NCCL does not support driving communicators of one device from several
  // threads; the emulation refuses it outright.
  ncclComm* comm = op->comm;
  for (ncclComm* m : S().live) {
    if (m->device == comm->device && m->has_issuer &&
        m->issuer != std::this_thread::get_id()) {
      last_error = "emulated NCCL: communicators of CUDA device " + std::to_string(comm->device) +
                   " used from two threads (NCCL does not support it)";
      comm->last_error = last_error;
      return ncclInvalidUsage;
    }
  }
  comm->issuer = std::this_thread::get_id();
  comm->has_issuer = true;
  if (group_depth > 0) {
    group_ops->push_back(std::move(op));
    group_streams->push_back(stream);
    return ncclSuccess;
  }
  std::vector<std::unique_ptr<Op>> ops;
  ops.push_back(std::move(op));
  Submit(std::move(ops), {stream});
  return ncclSuccess;
}

// Completes `m`'s posted, unmatched operations (`m` is broken: anything it
// posts later completes at once).
void DrainPosted(Clique* c, ncclComm* m) {
  for (;;) {
    Op* found = nullptr;
    for (auto* table : {&c->sends, &c->recvs}) {
      for (auto& entry : *table) {
        auto& q = entry.second;
        auto it = std::find_if(q.begin(), q.end(), [&](Op* op) { return op->comm == m; });
        if (it != q.end()) {
          found = *it;
          q.erase(it);
          break;
        }
      }
      if (found != nullptr) break;
    }
    if (found == nullptr && !c->collectives[m->rank].empty()) {
      found = c->collectives[m->rank].front();
      c->collectives[m->rank].pop_front();
    }
    if (found == nullptr) return;
    Complete(found);  // may free other items: search again
  }
}

// Completes every operation of `comm` (posted or queued) and removes it
// from its clique, before it is freed.
void TearDown(ncclComm* comm) {
  Clique* c = comm->clique;
  comm->async = ncclInvalidUsage;  // closing: later posts complete at once
  DrainPosted(c, comm);
  for (;;) {
    Op* found = nullptr;
    for (auto& entry : S().streams) {
      for (auto& item : entry.second) {
        for (auto& op : item->ops) {
          if (op->comm == comm && !op->done) found = op.get();
        }
      }
    }
    if (found == nullptr) break;
    found->done = true;
    if (--found->item->remaining == 0) Advance(found->item->stream);
  }
  c->members[comm->rank] = nullptr;
  S().live.erase(comm);
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  static std::atomic<int64_t> next{0};
  std::memset(id->internal, 0, sizeof(id->internal));
  const std::string name = "emulated-nccl-" + std::to_string(next++);
  std::memcpy(id->internal, name.data(), std::min(name.size(), sizeof(id->internal) - 1));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* out, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t* config) {
  *out = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  const std::string key(id.internal, strnlen(id.internal, sizeof(id.internal)));
  std::unique_lock<std::mutex> lock(S().mu);
  std::unique_ptr<Clique>& c = S().cliques[key];
  if (c == nullptr) {
    c = std::make_unique<Clique>();
    c->nranks = nranks;
    c->members.assign(nranks, nullptr);
    c->collectives.resize(nranks);
  }
  if (c->nranks != nranks || c->members[rank] != nullptr) {
    last_error = "emulated NCCL: rank " + std::to_string(rank) + " of " + std::to_string(nranks) +
                 " does not fit the communicator";
    return ncclInvalidUsage;
  }
  const int device = emu::CurrentDevice();
  for (ncclComm* m : c->members) {
    if (m != nullptr && m->device == device) {
      last_error = "emulated NCCL: Duplicate GPU detected: rank " + std::to_string(rank) +
                   " and rank " + std::to_string(m->rank) + " both on CUDA device " +
                   std::to_string(device);
      return ncclInvalidUsage;
    }
  }
  auto* comm = new ncclComm;
  comm->clique = c.get();
  comm->rank = rank;
  comm->device = device;
  c->members[rank] = comm;
  S().live.insert(comm);
  *out = comm;
  if (++c->joined == nranks) {
    for (ncclComm* m : c->members) {
      if (m != nullptr) m->async = ncclSuccess;
    }
    S().joined.notify_all();
  }
  const bool blocking = config == nullptr || config->blocking != 0;
  if (!blocking) return comm->async == ncclSuccess ? ncclSuccess : ncclInProgress;
  S().joined.wait(lock, [&] { return comm->async != ncclInProgress; });
  return comm->async;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async) {
  if (comm == nullptr) return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(S().mu);
  *async = comm->async;
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  return comm == nullptr ? ncclInvalidArgument : ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  std::lock_guard<std::mutex> lock(S().mu);
  TearDown(comm);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  std::lock_guard<std::mutex> lock(S().mu);
  Clique* c = comm->clique;
  const int rank = comm->rank;
  TearDown(comm);
  delete comm;
  // The other ranks see the connection go (what NCCL's proxies report).
  for (ncclComm* m : c->members) {
    if (m == nullptr) continue;
    Fail(m, ncclRemoteError, "emulated NCCL: rank " + std::to_string(rank) + " aborted");
    DrainPosted(c, m);
  }
  return ncclSuccess;
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return Enqueue(MakeOp(Op::kSend, sendbuff, nullptr, count, type, peer, comm), stream);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t type, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return Enqueue(MakeOp(Op::kRecv, nullptr, recvbuff, count, type, peer, comm), stream);
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                           ncclDataType_t type, ncclRedOp_t red, ncclComm_t comm,
                           cudaStream_t stream) {
  if (red != ncclSum) {
    last_error = "emulated NCCL: only ncclSum";
    return ncclInvalidArgument;
  }
  return Enqueue(MakeOp(Op::kAllReduce, sendbuff, recvbuff, count, type, -1, comm), stream);
}

ncclResult_t ncclGroupStart() {
  std::lock_guard<std::mutex> lock(S().mu);
  if (group_depth++ == 0) {
    group_ops = new std::vector<std::unique_ptr<Op>>;
    group_streams = new std::vector<cudaStream_t>;
  }
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  std::lock_guard<std::mutex> lock(S().mu);
  if (group_depth == 0) return ncclInvalidUsage;
  if (--group_depth == 0) {
    std::unique_ptr<std::vector<std::unique_ptr<Op>>> ops(group_ops);
    std::unique_ptr<std::vector<cudaStream_t>> streams(group_streams);
    Submit(std::move(*ops), *streams);
    group_ops = nullptr;
    group_streams = nullptr;
  }
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error (emulated)";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (emulated)";
    case ncclSystemError:
      return "unhandled system error (emulated)";
    case ncclInternalError:
      return "internal error (emulated)";
    case ncclInvalidArgument:
      return "invalid argument (emulated)";
    case ncclInvalidUsage:
      return "invalid usage (emulated)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (emulated)";
    case ncclInProgress:
      return "NCCL operation in progress (emulated)";
    default:
      return "unknown result code (emulated)";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  if (comm != nullptr) {
    std::lock_guard<std::mutex> lock(S().mu);
    if (!comm->last_error.empty()) {
      last_error = comm->last_error;
    }
  }
  return last_error.c_str();
}

}  // extern "C"
