// The SIMT emulation's scheduler: see simt.h.
#include "kernels/cuda/simt.h"

#include <sys/mman.h>

#include <boost/context/fiber.hpp>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/host_emulation.h"

namespace chunkflow::kernels::cuda::simt {
namespace {

constexpr size_t kStackBytes = size_t{128} << 10;  // per CUDA thread
constexpr size_t kGuardBytes = 4096;              // below each stack, PROT_NONE
constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultSharedBytes = size_t{48} << 10;
constexpr size_t kMaxSharedBytes = 227 * 1024;  // sm_90's opt-in maximum per block
constexpr size_t kSharedGuardBytes = 256;       // after the dynamic shared memory
constexpr unsigned char kSharedGuard = 0xFE;    // not the 0xFF poison: NaN += NaN keeps it

enum class State { kRunnable, kBarrier, kWarp, kDone };
enum class WarpOp { kShfl32, kShfl64, kMma, kLdMatrix, kLdMatrixTrans };

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kShfl32: return "__shfl_xor_sync (32-bit)";
    case WarpOp::kShfl64: return "__shfl_xor_sync (64-bit)";
    case WarpOp::kMma: return "mma.sync.m16n8k16";
    case WarpOp::kLdMatrix: return "ldmatrix.m8n8";
    case WarpOp::kLdMatrixTrans: return "ldmatrix.m8n8.trans";
  }
  return "?";
}

namespace context = boost::context;

struct Fiber {
  context::fiber self;  // the suspended CUDA thread, as the scheduler resumes it
  context::fiber sink;  // the scheduler, as the CUDA thread yields to it
  State state = State::kRunnable;
  uint3 idx{};
  // At a barrier: where.
  const char* file = nullptr;
  int line = 0;
  // At a warp collective: which, its operands and (after) its result.
  WarpOp op = WarpOp::kShfl32;
  unsigned mask = 0;
  int lane_mask = 0;
  int width = 32;
  uint64_t value = 0;
  float c[4] = {};
  uint32_t a[4] = {};  // also ldmatrix's result
  uint32_t b[2] = {};
  const unsigned char* row = nullptr;  // ldmatrix: this lane's row address
  int count = 0;                       // ldmatrix: matrices (1, 2 or 4)
  // cp.async copies in flight, oldest first, with the ends of the committed
  // groups (indices into `copies`).
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
  };
  std::vector<Copy> copies;
  std::vector<size_t> group_ends;
};

// Fiber stacks, made once per OS thread and reused by every block.
class Stacks {
 public:
  // A Boost.Context stack allocator handing out one of these stacks.
  struct Slot {
    char* base;
    context::stack_context allocate() {
      context::stack_context sc;
      sc.size = kStackBytes;
      sc.sp = base + kStackBytes;
      return sc;
    }
    void deallocate(context::stack_context&) noexcept {}
  };

  ~Stacks() {
    if (base_ != nullptr) munmap(base_, count_ * (kStackBytes + kGuardBytes));
  }
  char* Get(int i) {
    if (base_ == nullptr) {
      count_ = kMaxThreads;
      void* p = mmap(nullptr, count_ * (kStackBytes + kGuardBytes), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        std::fprintf(stderr, "simt: cannot map %d fiber stacks\n", kMaxThreads);
        std::abort();
      }
      base_ = static_cast<char*>(p);
      for (int j = 0; j < count_; ++j) {
        if (mprotect(base_ + j * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE) != 0) {
          std::fprintf(stderr, "simt: cannot protect the guard page of fiber stack %d\n", j);
          std::abort();
        }
      }
    }
    return base_ + i * (kStackBytes + kGuardBytes) + kGuardBytes;
  }

 private:
  char* base_ = nullptr;
  int count_ = 0;
};

struct Block {
  const std::function<void()>* body = nullptr;
  uint3 block_idx{};
  dim3 grid;
  dim3 block;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  std::string error;  // the first fault, for the launch's message
};

thread_local Block* active = nullptr;
thread_local uint64_t block_serial = 0;
thread_local Stacks stacks;

Fiber& Current() {
  if (active == nullptr || active->current == nullptr) {
    std::fprintf(stderr, "simt: a device-side call outside a kernel\n");
    std::abort();
  }
  return *active->current;
}

void Yield(State state) {
  Fiber& f = Current();
  f.state = state;
  f.sink = std::move(f.sink).resume();
}

std::string Where(const Block& b, const Fiber& f);

// A CUDA thread's life on its fiber.
context::fiber Entry(context::fiber&& scheduler) {
  Fiber& f = *active->current;
  f.sink = std::move(scheduler);
  (*active->body)();
  if (!f.copies.empty() && active->error.empty()) {
    active->error = Where(*active, f) + " ended with " + std::to_string(f.copies.size()) +
                    " cp.async copies in flight (no cp.async.wait_group for them)";
  }
  f.state = State::kDone;
  return std::move(f.sink);
}

std::string Where(const Block& b, const Fiber& f) {
  return "block (" + std::to_string(b.block_idx.x) + "," + std::to_string(b.block_idx.y) + "," +
         std::to_string(b.block_idx.z) + ") thread (" + std::to_string(f.idx.x) + "," +
         std::to_string(f.idx.y) + "," + std::to_string(f.idx.z) + ")";
}

float Bf16(uint32_t bits) {
  const uint32_t widened = bits << 16;
  float v;
  std::memcpy(&v, &widened, 4);
  return v;
}

// One warp's mma.m16n8k16 (row.col, bf16 x bf16 + fp32) from its lanes'
// fragments, laid out as the PTX ISA's "Matrix Fragments for mma.m16n8k16"
// says, with g = lane / 4 and t = lane % 4:
//   A: reg 0 (row g, cols 2t, 2t+1), reg 1 (row g+8, same cols),
//      reg 2 (row g, cols 2t+8, 2t+9), reg 3 (row g+8, cols 2t+8, 2t+9);
//   B: reg 0 (rows 2t, 2t+1, col g), reg 1 (rows 2t+8, 2t+9, col g);
//   C/D: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols);
// the lower half of a register is the lower column (A) or row (B).
void Mma(Fiber* lanes[32]) {
  float a[16][16], b[16][8], c[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const Fiber& f = *lanes[lane];
    const int g = lane / 4, t = lane % 4;
    for (int half = 0; half < 2; ++half) {
      const int shift = 16 * half;
      a[g][2 * t + half] = Bf16(f.a[0] >> shift);
      a[g + 8][2 * t + half] = Bf16(f.a[1] >> shift);
      a[g][2 * t + 8 + half] = Bf16(f.a[2] >> shift);
      a[g + 8][2 * t + 8 + half] = Bf16(f.a[3] >> shift);
      b[2 * t + half][g] = Bf16(f.b[0] >> shift);
      b[2 * t + 8 + half][g] = Bf16(f.b[1] >> shift);
    }
    c[g][2 * t] = f.c[0];
    c[g][2 * t + 1] = f.c[1];
    c[g + 8][2 * t] = f.c[2];
    c[g + 8][2 * t + 1] = f.c[3];
  }
  float d[16][8];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      float s = 0.0f;
      for (int k = 0; k < 16; ++k) s += a[i][k] * b[k][j];  // exact products, fp32 sum
      d[i][j] = s + c[i][j];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    Fiber& f = *lanes[lane];
    const int g = lane / 4, t = lane % 4;
    f.c[0] = d[g][2 * t];
    f.c[1] = d[g][2 * t + 1];
    f.c[2] = d[g + 8][2 * t];
    f.c[3] = d[g + 8][2 * t + 1];
  }
}

// One warp's ldmatrix.m8n8.x{count}[.trans].b16 (PTX ISA, "Warp-level
// matrix load instruction: ldmatrix"): lanes 8i..8i+7 give the rows of
// matrix i; lane L's register i holds row L / 4, columns 2 (L % 4) and
// 2 (L % 4) + 1 of matrix i (lower half: the lower column), or with .trans
// column L / 4, rows 2 (L % 4) and 2 (L % 4) + 1. False (with b.error) when
// a row is misaligned or outside the dynamic shared memory.
bool LdMatrix(Block& b, Fiber* lanes[32], bool trans) {
  const int count = lanes[0]->count;
  for (int l = 0; l < 8 * count; ++l) {
    const unsigned char* row = lanes[l]->row;
    const bool inside = row >= b.shared && row + 16 <= b.shared + b.shared_bytes;
    if (!inside || reinterpret_cast<uintptr_t>(row) % 16 != 0) {
      b.error = Where(b, *lanes[l]) + ": ldmatrix row address " +
                std::to_string(reinterpret_cast<intptr_t>(row) - reinterpret_cast<intptr_t>(b.shared)) +
                " bytes into the dynamic shared memory (" + std::to_string(b.shared_bytes) +
                " bytes): " + (inside ? "not 16-byte aligned" : "outside it");
      return false;
    }
  }
  auto at = [&](int matrix, int r, int c) {
    uint16_t v;
    std::memcpy(&v, lanes[8 * matrix + r]->row + 2 * c, 2);
    return static_cast<uint32_t>(v);
  };
  uint32_t out[32][4] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < count; ++i) {
      out[lane][i] = trans ? at(i, 2 * t, g) | at(i, 2 * t + 1, g) << 16
                           : at(i, g, 2 * t) | at(i, g, 2 * t + 1) << 16;
    }
  }
  for (int lane = 0; lane < 32; ++lane) std::memcpy(lanes[lane]->a, out[lane], sizeof(out[lane]));
  return true;
}

// Completes the collective of the warp of threads [w0, w0 + 32) when all
// its live lanes wait at it: true then. False when the warp cannot go on
// (a lane at a barrier, all done), or on a fault (b.error: lanes at
// different collectives, a mask that is not the live lanes).
bool ReleaseWarp(Block& b, int w0) {
  const int w_end = std::min(static_cast<int>(b.fibers.size()), w0 + 32);
  Fiber* first = nullptr;
  unsigned live = 0;
  for (int i = w0; i < w_end; ++i) {
    const Fiber& f = b.fibers[i];
    if (f.state == State::kDone) continue;
    if (f.state != State::kWarp) return false;
    if (first == nullptr) first = &b.fibers[i];
    live |= 1u << (i - w0);
  }
  if (first == nullptr) return false;
  for (int i = w0; i < w_end; ++i) {
    const Fiber& f = b.fibers[i];
    if (f.state == State::kDone) continue;
    if (f.op != first->op || f.mask != first->mask || f.count != first->count) {
      b.error = Where(b, f) + " is at " + OpName(f.op) + " while " + Where(b, *first) + " is at " +
                OpName(first->op) + " (divergent warp collective)";
      return false;
    }
  }
  const bool whole_warp = first->op == WarpOp::kMma || first->op == WarpOp::kLdMatrix ||
                          first->op == WarpOp::kLdMatrixTrans;
  if (whole_warp ? live != 0xffffffffu : first->mask != live) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), " with mask 0x%08x but live lanes 0x%08x", first->mask, live);
    b.error = Where(b, *first) + ": " + OpName(first->op) + buf;
    return false;
  }
  if (whole_warp) {
    Fiber* lanes[32];
    for (int i = 0; i < 32; ++i) lanes[i] = &b.fibers[w0 + i];
    if (first->op == WarpOp::kMma) {
      Mma(lanes);
    } else if (!LdMatrix(b, lanes, first->op == WarpOp::kLdMatrixTrans)) {
      return false;
    }
  } else {
    uint64_t in[32] = {};
    for (int i = w0; i < w_end; ++i) in[i - w0] = b.fibers[i].value;
    for (int i = w0; i < w_end; ++i) {
      Fiber& f = b.fibers[i];
      if (f.state == State::kDone) continue;
      const int lane = i - w0;
      const int src = lane ^ f.lane_mask;
      if (src / f.width > lane / f.width) {  // a later segment: the lane's own value
        f.value = in[lane];
      } else if (((live >> src) & 1u) == 0) {
        b.error = Where(b, f) + ": " + OpName(f.op) + " reads lane " + std::to_string(src) +
                  ", which has exited";
        return false;
      } else {
        f.value = in[src];
      }
    }
  }
  for (int i = w0; i < w_end; ++i) {
    if (b.fibers[i].state == State::kWarp) b.fibers[i].state = State::kRunnable;
  }
  return true;
}

// Runs the lanes of the warp [w0, w0 + 32) from collective to collective
// until none can go on; lane order alternates every step.
void RunWarp(Block& b, int w0, bool ascending) {
  const int w_end = std::min(static_cast<int>(b.fibers.size()), w0 + 32);
  do {
    for (int k = w0; k < w_end; ++k) {
      Fiber& f = b.fibers[ascending ? k : w_end - 1 - (k - w0)];
      if (f.state != State::kRunnable) continue;
      b.current = &f;
      f.self = std::move(f.self).resume();
      b.current = nullptr;
    }
    ascending = !ascending;
  } while (ReleaseWarp(b, w0));
}

// Runs one block to its end; false (with b.error) on a fault. Between two
// barriers the warps run one after another, each as far as it can go, in
// ascending warp order in one phase and descending in the next, starting
// ascending in even blocks (by block_serial) and descending in odd ones: a
// warp (or lane) that reads shared memory another writes without a barrier
// (or collective) between them runs before the writer in some block.
bool RunBlock(Block& b) {
  const int n = static_cast<int>(b.block.x * b.block.y * b.block.z);
  b.fibers.clear();
  b.fibers.resize(n);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.idx = uint3{static_cast<unsigned>(i) % b.block.x,
                  static_cast<unsigned>(i) / b.block.x % b.block.y,
                  static_cast<unsigned>(i) / (b.block.x * b.block.y)};
    f.self = context::fiber(std::allocator_arg, Stacks::Slot{stacks.Get(i)}, Entry);
  }
  const int warps = (n + 31) / 32;
  for (int phase = 0;; ++phase) {
    const bool ascending = (phase + block_serial) % 2 == 0;
    for (int k = 0; k < warps; ++k) {
      RunWarp(b, 32 * (ascending ? k : warps - 1 - k), ascending);
      if (!b.error.empty()) return false;
    }
    // Every warp is stopped: at a barrier, done, or stuck at a collective.
    const Fiber* at_barrier = nullptr;
    const Fiber* elsewhere = nullptr;
    for (const Fiber& f : b.fibers) {
      if (f.state == State::kBarrier) {
        if (at_barrier == nullptr) at_barrier = &f;
        if (f.line != at_barrier->line || std::strcmp(f.file, at_barrier->file) != 0) {
          b.error = Where(b, f) + " is at __syncthreads() at " + f.file + ":" +
                    std::to_string(f.line) + " while " + Where(b, *at_barrier) + " is at " +
                    at_barrier->file + ":" + std::to_string(at_barrier->line) +
                    " (divergent barrier)";
          return false;
        }
      } else if (f.state == State::kWarp && elsewhere == nullptr) {
        elsewhere = &f;
      }
    }
    if (at_barrier == nullptr && elsewhere == nullptr) return true;  // all done
    if (elsewhere != nullptr) {  // its warp's other lanes wait at a barrier
      b.error = Where(b, *elsewhere) + " waits at " + OpName(elsewhere->op) +
                " for lanes that wait at __syncthreads() at " + at_barrier->file + ":" +
                std::to_string(at_barrier->line);
      return false;
    }
    for (Fiber& f : b.fibers) {
      if (f.state == State::kBarrier) f.state = State::kRunnable;
    }
  }
}

bool Within(const dim3& d, unsigned x, unsigned y, unsigned z) {
  return d.x >= 1 && d.y >= 1 && d.z >= 1 && d.x <= x && d.y <= y && d.z <= z;
}

cudaError_t Fail(cudaError_t e, const std::string& why) {
  std::fprintf(stderr, "simt: %s\n", why.c_str());
  emulation::SetLastError(e);
  return e;
}

std::string Dims(const dim3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

}  // namespace

const uint3& ThreadIdx() { return Current().idx; }
const uint3& BlockIdx() {
  Current();
  return active->block_idx;
}
const dim3& BlockDim() {
  Current();
  return active->block;
}
const dim3& GridDim() {
  Current();
  return active->grid;
}
unsigned char* DynamicShared() {
  Current();
  return active->shared;
}
uint64_t BlockSerial() {
  Current();  // a __shared__ array outside a kernel (file scope) is not emulated
  return block_serial;
}

void SyncThreads(const char* file, int line) {
  Fiber& f = Current();
  f.file = file;
  f.line = line;
  Yield(State::kBarrier);
}

namespace {

uint64_t ShflXor(WarpOp op, unsigned mask, uint64_t v, int lane_mask, int width) {
  Fiber& f = Current();
  f.op = op;
  f.mask = mask;
  f.lane_mask = lane_mask;
  f.width = width;
  f.value = v;
  Yield(State::kWarp);
  return f.value;
}

}  // namespace

uint32_t ShflXor32(unsigned mask, uint32_t v, int lane_mask, int width) {
  return static_cast<uint32_t>(ShflXor(WarpOp::kShfl32, mask, v, lane_mask, width));
}

uint64_t ShflXor64(unsigned mask, uint64_t v, int lane_mask, int width) {
  return ShflXor(WarpOp::kShfl64, mask, v, lane_mask, width);
}

void MmaM16N8K16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  Fiber& f = Current();
  f.op = WarpOp::kMma;
  f.mask = 0xffffffffu;
  std::memcpy(f.a, a, sizeof(f.a));
  std::memcpy(f.b, b, sizeof(f.b));
  std::memcpy(f.c, c, sizeof(f.c));
  Yield(State::kWarp);
  std::memcpy(c, f.c, sizeof(f.c));
}

void LdMatrix(uint32_t* r, const void* row, int count, bool trans) {
  Fiber& f = Current();
  f.op = trans ? WarpOp::kLdMatrixTrans : WarpOp::kLdMatrix;
  f.mask = 0xffffffffu;
  f.row = static_cast<const unsigned char*>(row);
  f.count = count;
  Yield(State::kWarp);
  std::memcpy(r, f.a, sizeof(uint32_t) * count);
  f.count = 0;
}

void CpAsync(void* dst, const void* src, int src_bytes) {
  Fiber& f = Current();
  Block& b = *active;
  unsigned char* d = static_cast<unsigned char*>(dst);
  const bool inside = d >= b.shared && d + 16 <= b.shared + b.shared_bytes;
  // The source must be aligned even when no byte of it is read (PTX ISA).
  const bool bad_src =
      (src_bytes != 0 && src_bytes != 16) || reinterpret_cast<uintptr_t>(src) % 16 != 0;
  if (!inside || reinterpret_cast<uintptr_t>(d) % 16 != 0 || bad_src) {
    if (b.error.empty()) {
      const intptr_t at = reinterpret_cast<intptr_t>(d) - reinterpret_cast<intptr_t>(b.shared);
      const char* why = !inside  ? "outside it"
                        : bad_src ? "bad source size or alignment"
                                  : "not 16-byte aligned";
      b.error = Where(b, f) + ": cp.async to " + std::to_string(at) +
                " bytes into the dynamic shared memory (" + std::to_string(b.shared_bytes) +
                " bytes), " + std::to_string(src_bytes) + " source bytes: " + why;
    }
    return;
  }
  Fiber::Copy c{d, {}};
  if (src_bytes == 16) std::memcpy(c.bytes, src, 16);
  // A copy lands at its wait in even blocks (a read before the wait, or
  // before the barrier after it, sees the old bytes) and at once in odd
  // ones (a refill before every reader of the old tile is past a barrier
  // overwrites what it reads).
  if (BlockSerial() % 2 == 1) {
    std::memcpy(c.dst, c.bytes, 16);
    c.dst = nullptr;  // landed
  }
  f.copies.push_back(c);
}

void CpAsyncCommit() {
  Fiber& f = Current();
  f.group_ends.push_back(f.copies.size());
}

void CpAsyncWait(int pending_groups) {
  Fiber& f = Current();
  const int groups = static_cast<int>(f.group_ends.size());
  if (groups <= pending_groups) return;
  const size_t landed = f.group_ends[groups - pending_groups - 1];
  for (size_t i = 0; i < landed; ++i) {
    if (f.copies[i].dst != nullptr) std::memcpy(f.copies[i].dst, f.copies[i].bytes, 16);
  }
  f.copies.erase(f.copies.begin(), f.copies.begin() + static_cast<std::ptrdiff_t>(landed));
  f.group_ends.erase(f.group_ends.begin(), f.group_ends.begin() + (groups - pending_groups));
  for (size_t& e : f.group_ends) e -= landed;
}

cudaError_t RunGrid(const LaunchConfig& config, const std::function<void()>& body) {
  if (active != nullptr) return Fail(cudaErrorNotSupported, "a kernel launched from a kernel");
  const dim3& g = config.grid;
  const dim3& bl = config.block;
  if (!Within(bl, 1024, 1024, 64) || bl.x * bl.y * bl.z > kMaxThreads) {
    return Fail(cudaErrorInvalidConfiguration, "block " + Dims(bl) + " is not a valid block");
  }
  if (!Within(g, 0x7fffffffu, 65535, 65535)) {
    return Fail(cudaErrorInvalidConfiguration, "grid " + Dims(g) + " is not a valid grid");
  }
  const size_t smem = config.dynamic_shared;
  const size_t allowed = config.kernel != nullptr
                             ? emulation::MaxDynamicSharedBytes(config.kernel)
                             : kDefaultSharedBytes;
  if (smem > kMaxSharedBytes || smem > allowed) {
    return Fail(cudaErrorInvalidValue,
                std::to_string(smem) + " bytes of dynamic shared memory, the kernel allows " +
                    std::to_string(std::min(allowed, kMaxSharedBytes)) +
                    " (cudaFuncAttributeMaxDynamicSharedMemorySize)");
  }
  std::vector<unsigned char> shared(smem + kSharedGuardBytes + 16);
  unsigned char* base = shared.data() + (16 - reinterpret_cast<uintptr_t>(shared.data()) % 16) % 16;
  Block b;
  b.body = &body;
  b.grid = g;
  b.block = bl;
  b.shared = base;
  b.shared_bytes = smem;
  active = &b;
  for (unsigned z = 0; z < g.z; ++z) {
    for (unsigned y = 0; y < g.y; ++y) {
      for (unsigned x = 0; x < g.x; ++x) {
        b.block_idx = uint3{x, y, z};
        ++block_serial;
        std::memset(base, 0xFF, smem);
        std::memset(base + smem, kSharedGuard, kSharedGuardBytes);
        const bool ok = RunBlock(b);
        for (size_t i = smem; ok && i < smem + kSharedGuardBytes; ++i) {
          if (base[i] != kSharedGuard) {
            b.error = "block " + Dims(dim3(x, y, z)) + " wrote past its " + std::to_string(smem) +
                      " bytes of dynamic shared memory (at byte " + std::to_string(i) + ")";
            break;
          }
        }
        if (!b.error.empty()) {
          active = nullptr;
          return Fail(cudaErrorLaunchFailure, b.error);
        }
      }
    }
  }
  active = nullptr;
  std::string overrun;
  if (!emulation::CheckDeviceGuards(&overrun)) {
    return Fail(cudaErrorLaunchFailure,
                "after the grid " + Dims(g) + " x " + Dims(bl) + ": " + overrun +
                    " (by this grid, or by host code or another thread since the last check)");
  }
  return cudaSuccess;
}

}  // namespace chunkflow::kernels::cuda::simt
