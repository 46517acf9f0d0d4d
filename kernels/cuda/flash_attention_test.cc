// The flash-style attention kernel against the CPU attention (the oracle the
// reference CUDA kernel equals within 1e-5), on inputs already rounded to
// bf16 (what the kernel's tile loads do), so the differences left are the
// kernel's own: the probabilities and dS rounded to bf16 before their
// products, and tensor-core summation order. Tolerances (relative L2 over the
// tensor): lse 1e-5 (S is exact products summed in fp32), out 1e-2, dq / dk
// / dv 2e-2. Segments cover a fresh sequence longer than a tile, a
// continuation with a prefix that is not a tile multiple, a one-row segment
// and a tile-exact one; GQA and MHA; head dims 16, 32, 64, 128;
// then as the engine calls it, the GPU forward feeding the GPU backward with
// an unrounded dout behind a 20000-row prefix (gradients to 3e-2). Outputs are
// poisoned (NaN) before the forward; gradients start from random values
// (the += contract). Skips visibly without a GPU.

#include "kernels/cuda/flash_attention.h"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/test_util.h"
#include "kernels/cuda/status.h"
#include "kernels/cuda/test_util.h"

namespace chunkflow::kernels {
namespace {

using cpu::testing::RandomVector;
using cpu::testing::RelativeError;

std::vector<float> RoundToBf16(std::vector<float> x) {
  for (float& f : x) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFF + ((u >> 16) & 1);
    u &= 0xFFFF0000u;
    std::memcpy(&f, &u, 4);
  }
  return x;
}

using Dev = cuda::testing::DeviceBuffer<float>;

struct Seg {
  int64_t offset, length;
};

struct Shape {
  int64_t H, Hk, D;
};

// Forward and backward against the CPU. `chain`: as the engine runs it - the
// GPU forward's out and lse feed the GPU backward, and dout is not rounded
// to bf16 first (the kernel rounds it for dP, keeps it fp32 for delta), so
// the gradients are held to 3e-2 instead of 2e-2.
// What the GPU computed (for comparing two runs).
struct GpuResults {
  std::vector<float> out, lse, dq;
  std::vector<std::vector<float>> dk, dv;
};

void ExpectMatchesCpu(const Shape& shape, const std::vector<Seg>& segs, bool chain,
                      GpuResults* results = nullptr) {
  const auto [H, Hk, D] = shape;
  int64_t T = 0;
  for (const Seg& s : segs) T += s.length;
  const std::vector<float> q = RoundToBf16(RandomVector(T * H * D, 1, 2.0f));
  const std::vector<float> dout =
      chain ? RandomVector(T * H * D, 2) : RoundToBf16(RandomVector(T * H * D, 2));
  const double grad_tol = chain ? 3e-2 : 2e-2;
  std::vector<std::vector<float>> k, v, dk, dv;
  std::vector<Dev> dk_d, dv_d, k_d, v_d;
  std::vector<cpu::AttentionSegment> cs;
  std::vector<cuda::AttentionSegment> gs;
  for (size_t i = 0; i < segs.size(); ++i) {
    const int64_t n = (segs[i].offset + segs[i].length) * Hk * D;
    k.push_back(RoundToBf16(RandomVector(n, 10 + i, 2.0f)));
    v.push_back(RoundToBf16(RandomVector(n, 20 + i)));
    dk.push_back(RandomVector(n, 30 + i));
    dv.push_back(RandomVector(n, 40 + i));
  }
  for (size_t i = 0; i < segs.size(); ++i) {
    k_d.emplace_back(k[i]);
    v_d.emplace_back(v[i]);
    dk_d.emplace_back(dk[i]);
    dv_d.emplace_back(dv[i]);
  }
  int64_t row = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    cs.push_back({row, segs[i].length, segs[i].offset, k[i].data(), v[i].data(), dk[i].data(),
                  dv[i].data()});
    gs.push_back({row, segs[i].length, segs[i].offset, k_d[i].get(), v_d[i].get(), dk_d[i].get(),
                  dv_d[i].get()});
    row += segs[i].length;
  }
  const int64_t n_segs = static_cast<int64_t>(segs.size());
  std::vector<float> out(T * H * D), lse(T * H);
  cpu::attention_forward(out.data(), lse.data(), q.data(), cs.data(), n_segs, H, Hk, D);
  Dev q_d(q), dout_d(dout);
  Dev out_d = Dev::Poisoned(T * H * D), lse_d = Dev::Poisoned(T * H);
  const absl::StatusOr<int64_t> fwd_floats =
      cuda::flash_attention_forward_workspace(gs.data(), n_segs, H, Hk, D);
  ASSERT_TRUE(fwd_floats.ok()) << fwd_floats.status();
  Dev fwd_ws = Dev::Poisoned(*fwd_floats);
  absl::Status s = cuda::flash_attention_forward(out_d.get(), lse_d.get(), q_d.get(), gs.data(),
                                                 n_segs, H, Hk, D, fwd_ws.get(), *fwd_floats,
                                                 nullptr);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(cuda::CudaSync(nullptr, "flash forward").ok());
  const std::vector<float> gout = out_d.Host(), glse = lse_d.Host();
  EXPECT_LT(RelativeError(glse.data(), lse.data(), T * H), 1e-5);
  EXPECT_LT(RelativeError(gout.data(), out.data(), T * H * D), 1e-2);

  // Backward from the CPU's forward outputs on both sides (chain: the GPU's
  // on the GPU).
  std::vector<float> dq = RandomVector(T * H * D, 3);
  const absl::StatusOr<int64_t> ws_floats =
      cuda::flash_attention_backward_workspace(gs.data(), n_segs, H, Hk, D, T);
  ASSERT_TRUE(ws_floats.ok()) << ws_floats.status();
  Dev dq_d(dq), outc_d(chain ? gout : out), lsec_d(chain ? glse : lse),
      ws_d = Dev::Poisoned(*ws_floats);
  cpu::attention_backward(dq.data(), cs.data(), n_segs, dout.data(), q.data(), out.data(),
                          lse.data(), H, Hk, D);
  s = cuda::flash_attention_backward(dq_d.get(), gs.data(), n_segs, dout_d.get(), q_d.get(),
                                     outc_d.get(), lsec_d.get(), H, Hk, D, T, ws_d.get(),
                                     *ws_floats, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_TRUE(cuda::CudaSync(nullptr, "flash backward").ok());
  const std::vector<float> gdq = dq_d.Host();
  EXPECT_LT(RelativeError(gdq.data(), dq.data(), T * H * D), grad_tol);
  if (results != nullptr) {
    results->out = gout;
    results->lse = glse;
    results->dq = gdq;
    for (size_t i = 0; i < segs.size(); ++i) {
      results->dk.push_back(dk_d[i].Host());
      results->dv.push_back(dv_d[i].Host());
    }
  }
  for (size_t i = 0; i < segs.size(); ++i) {
    const std::vector<float> gdk = dk_d[i].Host(), gdv = dv_d[i].Host();
    EXPECT_LT(RelativeError(gdk.data(), dk[i].data(), dk[i].size()), grad_tol) << "segment " << i;
    EXPECT_LT(RelativeError(gdv.data(), dv[i].data(), dv[i].size()), grad_tol) << "segment " << i;
  }

  // Deterministic: the same inputs (dk / dv starting from the same values)
  // give a bit-identical dq, dk and dv.
  Dev dq3_d(RandomVector(T * H * D, 3));
  std::vector<Dev> dk3_d, dv3_d;
  std::vector<cuda::AttentionSegment> gs3 = gs;
  for (size_t i = 0; i < segs.size(); ++i) {
    dk3_d.emplace_back(RandomVector(dk[i].size(), 30 + i));
    dv3_d.emplace_back(RandomVector(dv[i].size(), 40 + i));
    gs3[i].dk = dk3_d[i].get();
    gs3[i].dv = dv3_d[i].get();
  }
  s = cuda::flash_attention_backward(dq3_d.get(), gs3.data(), n_segs, dout_d.get(), q_d.get(),
                                     outc_d.get(), lsec_d.get(), H, Hk, D, T, ws_d.get(),
                                     *ws_floats, nullptr);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(dq3_d.Host(), gdq) << "same inputs, bit-identical dq";
  for (size_t i = 0; i < segs.size(); ++i) {
    EXPECT_EQ(dk3_d[i].Host(), dk_d[i].Host()) << "segment " << i << ": bit-identical dk";
    EXPECT_EQ(dv3_d[i].Host(), dv_d[i].Host()) << "segment " << i << ": bit-identical dv";
  }
}

// An environment variable set for one scope, unset after it however the
// scope ends (a failed ASSERT too).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

class FlashAttentionTest : public ::testing::TestWithParam<Shape> {};

// Both ways of loading the streamed tiles: staged bf16 by cp.async, and
// fp32 converted as loaded (CHUNKFLOW_FLASH_STAGING=0), bit for bit equal.
void ExpectStagingOnAndOffMatch(const Shape& shape, const std::vector<Seg>& segs,
                                bool chain = false) {
  GpuResults on, off;
  ExpectMatchesCpu(shape, segs, chain, &on);
  {
    ScopedEnv zero("CHUNKFLOW_FLASH_STAGING", "0");
    ExpectMatchesCpu(shape, segs, chain, &off);
  }
  EXPECT_EQ(on.out, off.out);
  EXPECT_EQ(on.lse, off.lse);
  EXPECT_EQ(on.dq, off.dq);
  EXPECT_EQ(on.dk, off.dk);
  EXPECT_EQ(on.dv, off.dv);
}

TEST_P(FlashAttentionTest, MatchesCpuOnBf16Inputs_StagingOnAndOff) {
  REQUIRE_GPU();
  ExpectStagingOnAndOffMatch(GetParam(), {{0, 150}, {70, 37}, {0, 1}, {130, 64}, {1000, 90}});
}

// As the engine calls it: GPU forward into GPU backward, fp32 dout, and a
// continuation chunk behind a 20000-row prefix (313 key tiles).
TEST(FlashAttention, GpuForwardIntoBackward_LongPrefix_MatchesCpu) {
  REQUIRE_GPU();
  ExpectMatchesCpu(Shape{14, 2, 64}, {{0, 100}, {20000, 64}}, /*chain=*/true);
}


// The 64-row query tiles (4 warps) of the forward and dq kernels, which
// CHUNKFLOW_FLASH_QUERY_WARPS=4 picks instead of the default 128 rows.
TEST(FlashAttention, FourWarpQueryTiles_MatchCpu) {
  REQUIRE_GPU();
  ScopedEnv four("CHUNKFLOW_FLASH_QUERY_WARPS", "4");
  ExpectStagingOnAndOffMatch(Shape{14, 2, 64}, {{0, 150}, {70, 37}, {0, 1}, {130, 64}, {1000, 90}});
}

// Checked before anything runs, in the forward and in the backward.
TEST(FlashAttention, BadQueryWarps_IsInvalidArgumentNamingTheValue) {
  ScopedEnv six("CHUNKFLOW_FLASH_QUERY_WARPS", "6");
  const cuda::AttentionSegment seg{0, 1, 0, nullptr, nullptr, nullptr, nullptr};
  alignas(16) float x[64] = {};
  absl::Status s = cuda::flash_attention_forward(x, x, x, &seg, 0, 1, 1, 64, x, 16, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'6'"), std::string::npos) << s;
  s = cuda::flash_attention_backward(x, &seg, 0, x, x, x, x, 1, 1, 64, 0, x, 16, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'6'"), std::string::npos) << s;
}

// The dk/dv kernel's query heads split over blocks. The small shapes above
// have few key tiles, so they split every kv head's group all the way
// (auto: fewer blocks than 4 per multiprocessor); here one split (a block
// adds its own sums into dk / dv) and a split into two of a group of four.
TEST(FlashAttention, DkDvOneSplit_MatchesCpu) {
  REQUIRE_GPU();
  ScopedEnv one("CHUNKFLOW_FLASH_DKDV_SPLITS", "1");
  ExpectMatchesCpu(Shape{14, 2, 64}, {{0, 150}, {70, 37}, {0, 1}, {130, 64}, {1000, 90}},
                   /*chain=*/false);
}

TEST(FlashAttention, DkDvTwoSplitsOfFour_MatchCpu) {
  REQUIRE_GPU();
  ScopedEnv two("CHUNKFLOW_FLASH_DKDV_SPLITS", "2");
  // With an empty continuation (5000 prefix keys, no queries): skipped, and
  // it sizes no workspace.
  ExpectMatchesCpu(Shape{8, 2, 32}, {{0, 150}, {70, 37}, {5000, 0}, {0, 1}, {130, 64}},
                   /*chain=*/false);
}

// A split count that does not divide the group, and a workspace smaller
// than flash_attention_backward_workspace() says, are refused before any
// launch, naming the values.
TEST(FlashAttention, BadDkDvSplitsOrWorkspace_IsInvalidArgument) {
  const cuda::AttentionSegment seg{0, 1, 0, nullptr, nullptr, nullptr, nullptr};
  alignas(16) float x[64] = {};
  {
    ScopedEnv three("CHUNKFLOW_FLASH_DKDV_SPLITS", "3");
    const absl::StatusOr<int64_t> ws =
        cuda::flash_attention_backward_workspace(&seg, 1, 14, 2, 64, 1);
    EXPECT_EQ(ws.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ws.status().message().find("'3'"), std::string::npos) << ws.status();
    EXPECT_NE(ws.status().message().find("= 7"), std::string::npos) << ws.status();
    const absl::Status s =
        cuda::flash_attention_backward(x, &seg, 1, x, x, x, x, 14, 2, 64, 1, x, 64, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'3'"), std::string::npos) << s;
  }
  ScopedEnv seven("CHUNKFLOW_FLASH_DKDV_SPLITS", "7");
  const absl::StatusOr<int64_t> ws =
      cuda::flash_attention_backward_workspace(&seg, 1, 14, 2, 64, 1);
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_EQ(*ws, 16 + 14 * 64 + 2 * 64 + 2 * 7 * 1 * 2 * 64)
      << "delta (14 floats, to 16), Q and dO in bf16 (1 row x 14 heads x 64, two a float), K "
         "and V in bf16 (1 key x 2 heads x 64), then 7 splits of fp32 dk and dv";
  const absl::Status s =
      cuda::flash_attention_backward(x, &seg, 1, x, x, x, x, 14, 2, 64, 1, x, *ws - 1, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(std::to_string(*ws - 1) + " floats"), std::string::npos) << s;
}

// Staging off as the engine calls it (GPU forward into GPU backward, fp32
// dout): the same results, bit for bit.
TEST(FlashAttention, StagingOffChained_BitIdenticalToStagingOn) {
  REQUIRE_GPU();
  ExpectStagingOnAndOffMatch(Shape{4, 2, 32}, {{0, 150}, {70, 37}, {0, 1}, {130, 64}},
                             /*chain=*/true);
}

// The forward's workspace: K and V of the segment with the most keys in
// bf16 (two a float), none with staging off; one float short is refused
// naming the sizes. Queries past q's rows are refused by the backward.
TEST(FlashAttention, WorkspaceSizesAndQueryRows_AreChecked) {
  const cuda::AttentionSegment segs[] = {{0, 10, 100, nullptr, nullptr, nullptr, nullptr},
                                         {10, 20, 0, nullptr, nullptr, nullptr, nullptr},
                                         {30, 0, 900, nullptr, nullptr, nullptr, nullptr}};
  const absl::StatusOr<int64_t> ws = cuda::flash_attention_forward_workspace(segs, 3, 4, 2, 64);
  ASSERT_TRUE(ws.ok()) << ws.status();
  EXPECT_EQ(*ws, 110 * 2 * 64) << "110 keys x 2 kv heads x 64, K and V at half a float each";
  {
    ScopedEnv zero("CHUNKFLOW_FLASH_STAGING", "0");
    const absl::StatusOr<int64_t> none = cuda::flash_attention_forward_workspace(segs, 3, 4, 2, 64);
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_EQ(*none, 0);
  }
  absl::Status s = cuda::flash_attention_forward(nullptr, nullptr, nullptr, segs, 3, 4, 2, 64,
                                                 nullptr, *ws - 1, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(std::to_string(*ws - 1) + " floats"), std::string::npos) << s;
  EXPECT_NE(s.message().find(std::to_string(*ws)), std::string::npos) << s;
  // 30 rows hold both segments' queries; 29 do not. (One dk/dv split: the
  // automatic count asks the device for its SMs, and this test runs
  // without one too.)
  ScopedEnv one("CHUNKFLOW_FLASH_DKDV_SPLITS", "1");
  EXPECT_TRUE(cuda::flash_attention_backward_workspace(segs, 3, 4, 2, 64, 30).ok());
  const absl::StatusOr<int64_t> short_rows =
      cuda::flash_attention_backward_workspace(segs, 3, 4, 2, 64, 29);
  EXPECT_EQ(short_rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_rows.status().message().find("[10, 30)"), std::string::npos)
      << short_rows.status();
  alignas(16) float x[64] = {};
  s = cuda::flash_attention_backward(x, segs, 3, x, x, x, x, 4, 2, 64, 29, x, 64, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("29 rows"), std::string::npos) << s;
}

TEST(FlashAttention, BadStaging_IsInvalidArgumentNamingTheValue) {
  ScopedEnv yes("CHUNKFLOW_FLASH_STAGING", "yes");
  const cuda::AttentionSegment seg{0, 1, 0, nullptr, nullptr, nullptr, nullptr};
  const absl::StatusOr<int64_t> f = cuda::flash_attention_forward_workspace(&seg, 1, 4, 2, 64);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("'yes'"), std::string::npos) << f.status();
  const absl::StatusOr<int64_t> b =
      cuda::flash_attention_backward_workspace(&seg, 1, 4, 2, 64, 1);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("'yes'"), std::string::npos) << b.status();
}

INSTANTIATE_TEST_SUITE_P(Shapes, FlashAttentionTest,
                         ::testing::Values(Shape{4, 2, 16}, Shape{4, 2, 32}, Shape{4, 2, 64},
                                           Shape{14, 2, 64}, Shape{2, 2, 128}),
                         [](const auto& info) {
                           return "H" + std::to_string(info.param.H) + "_Hk" +
                                  std::to_string(info.param.Hk) + "_D" +
                                  std::to_string(info.param.D);
                         });

TEST(FlashAttention, UnsupportedHeadDim_IsInvalidArgument) {
  EXPECT_FALSE(cuda::flash_attention_supported(8));
  EXPECT_FALSE(cuda::flash_attention_supported(96));
  EXPECT_TRUE(cuda::flash_attention_supported(64));
  cuda::AttentionSegment seg;
  EXPECT_EQ(cuda::flash_attention_forward(nullptr, nullptr, nullptr, &seg, 1, 4, 2, 8, nullptr, 0,
                                          nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::flash_attention_forward(nullptr, nullptr, nullptr, &seg, 1, 3, 2, 64, nullptr, 0,
                                          nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Misaligned inputs are refused before any launch (the tiles load 16 bytes at a time).
  const float* odd = reinterpret_cast<const float*>(uintptr_t{4});
  absl::Status s =
      cuda::flash_attention_forward(nullptr, nullptr, odd, &seg, 1, 4, 2, 64, nullptr, 0, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  cuda::AttentionSegment bad;
  bad.k = odd;
  s = cuda::flash_attention_forward(nullptr, nullptr, nullptr, &bad, 1, 4, 2, 64, nullptr, 0,
                                    nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

}  // namespace
}  // namespace chunkflow::kernels
