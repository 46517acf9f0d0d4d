// Every CUDA op of ops.h against its CPU twin (kernels/cpu) on fresh random
// inputs. Forward outputs are poisoned (all bits set: NaN) before each run, so
// an element the kernel never writes fails; accumulated gradients start from
// random values on both sides, so the += contract is checked too. Without a
// CUDA device every test prints SKIPPED (GTEST_SKIP) and passes visibly.
//
// Tolerances (fp32 paths): the same operations in the same order give
// bit-identical results where the kernel follows the CPU's summation order
// (embedding_backward). The column sums (rmsnorm's dweight, the linear
// bias gradient) add 32 interleaved row lanes in double, then the lanes:
// not the CPU's order, but exact on these inputs (a few dozen to a few
// thousand fp32 terms of similar size fit double's mantissa), so they are
// compared bit for bit. Block-tree sums in double (rmsnorm's rows,
// sum_of_squares), nvcc's fused multiply-adds (one rounding where the host
// rounds twice) and the device's expf / sqrtf differ from the host's by a
// few ulps: relative 1e-6 (1e-7 for SGD's one FMA, 1e-12 for the double
// sum).

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cpu/test_util.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/status.h"
#include "kernels/cuda/test_util.h"

namespace chunkflow::kernels {
namespace {

using cpu::testing::RandomVector;
using cpu::testing::RelativeError;

using cuda::testing::DeviceBuffer;
using cuda::testing::HostFromBf16;
using cuda::testing::HostToBf16;

void Sync() {
  absl::Status s = cuda::CudaSync(nullptr, "test");
  ASSERT_TRUE(s.ok()) << s;
}

std::vector<int32_t> RandomTokens(int64_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

TEST(CudaOps, Embedding_MatchesCpu) {
  REQUIRE_GPU();
  // Tokens repeat (the backward's sums matter); C = 300 spans two column
  // blocks of the grouped backward.
  const int64_t T = 300, C = 300, V = 50;
  const std::vector<int32_t> tokens = RandomTokens(T, V, 1);
  const std::vector<float> wte = RandomVector(V * C, 2);
  std::vector<float> out(T * C);
  cpu::embedding_forward(out.data(), tokens.data(), wte.data(), T, C);
  DeviceBuffer<int32_t> d_tok(tokens);
  DeviceBuffer<float> d_wte(wte);
  auto d_out = DeviceBuffer<float>::Poisoned(T * C);
  ASSERT_EQ(cuda::embedding_forward(d_out.get(), d_tok.get(), d_wte.get(), T, C, nullptr),
            cudaSuccess);
  Sync();
  EXPECT_EQ(d_out.Host(), out);

  const std::vector<float> dout = RandomVector(T * C, 3);
  std::vector<float> dwte = RandomVector(V * C, 4);  // accumulate onto this
  DeviceBuffer<float> d_dwte(dwte), d_dout(dout);
  cpu::embedding_backward(dwte.data(), dout.data(), tokens.data(), T, C);
  ASSERT_EQ(cuda::embedding_backward(d_dwte.get(), d_dout.get(), d_tok.get(), T, C, nullptr),
            cudaSuccess);
  Sync();
  EXPECT_EQ(d_dwte.Host(), dwte) << "same order of additions: bit-identical";

  // Grouped by token (what the engine runs): the same additions, bit-identical.
  const std::vector<float> dwte0 = RandomVector(V * C, 4);
  std::vector<float> want = dwte0;
  cpu::embedding_backward(want.data(), dout.data(), tokens.data(), T, C);
  const cuda::TokenGroups groups = cuda::GroupRowsByToken(tokens.data(), T);
  ASSERT_EQ(groups.begin.size(), groups.token.size() + 1);
  DeviceBuffer<float> d_dwte2(dwte0);
  DeviceBuffer<int32_t> d_rows(groups.rows), d_begin(groups.begin), d_token(groups.token);
  ASSERT_EQ(cuda::embedding_backward_grouped(d_dwte2.get(), d_dout.get(), d_rows.get(),
                                             d_begin.get(), d_token.get(),
                                             static_cast<int64_t>(groups.token.size()), C, nullptr),
            cudaSuccess);
  Sync();
  EXPECT_EQ(d_dwte2.Host(), want) << "grouped: the CPU's additions in its order";
}

TEST(CudaOps, Rmsnorm_MatchesCpu) {
  REQUIRE_GPU();
  for (auto [T, C] : {std::pair<int64_t, int64_t>{37, 64}, {37, 896}, {37, 1000}, {3001, 896}}) {
    const std::vector<float> x = RandomVector(T * C, 5), w = RandomVector(C, 6);
    std::vector<float> y(T * C), rstd(T);
    cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), T, C, 1e-6f);
    DeviceBuffer<float> d_x(x), d_w(w);
    auto d_y = DeviceBuffer<float>::Poisoned(T * C);
    auto d_r = DeviceBuffer<float>::Poisoned(T);
    ASSERT_EQ(cuda::rmsnorm_forward(d_y.get(), d_r.get(), d_x.get(), d_w.get(), T, C, 1e-6f,
                                    nullptr),
              cudaSuccess);
    Sync();
    const std::vector<float> gy = d_y.Host(), gr = d_r.Host();
    EXPECT_LT(RelativeError(gy.data(), y.data(), T * C), 1e-6) << "C " << C;
    EXPECT_LT(RelativeError(gr.data(), rstd.data(), T), 1e-6) << "C " << C;

    const std::vector<float> dy = RandomVector(T * C, 7);
    std::vector<float> dx = RandomVector(T * C, 8), dw = RandomVector(C, 9);
    DeviceBuffer<float> d_dx(dx), d_dw(dw), d_dy(dy), d_rstd(rstd);
    cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), T, C);
    ASSERT_EQ(cuda::rmsnorm_backward(d_dx.get(), d_dw.get(), d_dy.get(), d_x.get(), d_w.get(),
                                     d_rstd.get(), T, C, nullptr),
              cudaSuccess);
    Sync();
    const std::vector<float> gdx = d_dx.Host(), gdw = d_dw.Host();
    EXPECT_LT(RelativeError(gdx.data(), dx.data(), T * C), 1e-6) << "C " << C;
    EXPECT_LT(RelativeError(gdw.data(), dw.data(), C), 1e-6) << "T " << T << " C " << C;
  }
}

// Positions up to 16K with head dim 128 (where a differently computed
// inv_freq would show), and up to 131K with head dim 64 (a 128K sequence:
// the device sinf / cosf past their fast range reduction).
TEST(CudaOps, Rope_MatchesCpu_AtLongPositions) {
  REQUIRE_GPU();
  for (auto [H, D, stride] :
       {std::tuple<int64_t, int64_t, int64_t>{3, 128, 257}, {2, 64, 2081}}) {
    const int64_t T = 64;
    std::vector<int64_t> pos(T);
    for (int64_t t = 0; t < T; ++t) pos[t] = t * stride;  // up to 16191 / 131103
    const std::vector<float> x = RandomVector(T * H * D, 50);
    std::vector<float> y(T * H * D);
    cpu::rope_forward(y.data(), x.data(), pos.data(), T, H, D, 1e6f);
    DeviceBuffer<float> d_x(x);
    DeviceBuffer<int64_t> d_pos(pos);
    auto d_y = DeviceBuffer<float>::Poisoned(T * H * D);
    ASSERT_EQ(cuda::rope_forward(d_y.get(), d_x.get(), d_pos.get(), T, H, D, 1e6f, nullptr),
              cudaSuccess);
    Sync();
    const std::vector<float> gy = d_y.Host();
    EXPECT_LT(RelativeError(gy.data(), y.data(), T * H * D), 1e-6);
    // In place, as the engine calls it.
    ASSERT_EQ(cuda::rope_forward(d_x.get(), d_x.get(), d_pos.get(), T, H, D, 1e6f, nullptr),
              cudaSuccess);
    Sync();
    const std::vector<float> in_place = d_x.Host();
    EXPECT_EQ(in_place, gy);

    const std::vector<float> dy = RandomVector(T * H * D, 51);
    std::vector<float> dx = RandomVector(T * H * D, 52);
    DeviceBuffer<float> d_dx(dx), d_dy(dy);
    cpu::rope_backward(dx.data(), dy.data(), pos.data(), T, H, D, 1e6f);
    ASSERT_EQ(cuda::rope_backward(d_dx.get(), d_dy.get(), d_pos.get(), T, H, D, 1e6f, nullptr),
              cudaSuccess);
    Sync();
    const std::vector<float> gdx = d_dx.Host();
    EXPECT_LT(RelativeError(gdx.data(), dx.data(), T * H * D), 1e-6);
    EXPECT_EQ(cuda::rope_forward(d_y.get(), d_x.get(), d_pos.get(), T, H, 7, 1e6f, nullptr),
              cudaErrorInvalidValue)
        << "odd head_dim";
  }
}

TEST(CudaOps, CrossEntropy_MatchesCpu_WithIgnoredTargets) {
  REQUIRE_GPU();
  const int64_t T = 41, V = 5003;
  const std::vector<float> logits = RandomVector(T * V, 60, 8.0f);
  std::vector<int32_t> targets = RandomTokens(T, static_cast<int32_t>(V), 61);
  for (int64_t t = 0; t < T; t += 5) targets[t] = cpu::kIgnoreIndex;
  std::vector<float> losses(T);
  cpu::cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_targets(targets);
  auto d_losses = DeviceBuffer<float>::Poisoned(T);
  ASSERT_EQ(cuda::cross_entropy_forward(d_losses.get(), d_logits.get(), d_targets.get(), T, V,
                                        nullptr),
            cudaSuccess);
  Sync();
  const std::vector<float> got = d_losses.Host();
  EXPECT_LT(RelativeError(got.data(), losses.data(), T), 1e-6);
  for (int64_t t = 0; t < T; t += 5) EXPECT_EQ(got[t], 0.0f) << "ignored row " << t;

  const std::vector<float> dlosses = RandomVector(T, 62);
  std::vector<float> dlogits = RandomVector(T * V, 63);
  DeviceBuffer<float> d_dlogits(dlogits), d_dlosses(dlosses);
  cpu::cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  ASSERT_EQ(cuda::cross_entropy_backward(d_dlogits.get(), d_logits.get(), d_targets.get(),
                                         d_dlosses.get(), T, V, nullptr),
            cudaSuccess);
  Sync();
  const std::vector<float> gd = d_dlogits.Host();
  EXPECT_LT(RelativeError(gd.data(), dlogits.data(), T * V), 1e-6);
}

// The fused head op against the CPU forward + backward (dlosses all equal,
// into zeros), on the same logits; ignored rows get 0 loss and 0 gradient.
TEST(CudaOps, CrossEntropyFused_MatchesCpuForwardAndBackward) {
  REQUIRE_GPU();
  const int64_t T = 37, V = 4099;
  const float dloss = 0.0123f;
  const std::vector<float> logits = RandomVector(T * V, 64, 8.0f);
  std::vector<int32_t> targets = RandomTokens(T, static_cast<int32_t>(V), 65);
  for (int64_t t = 1; t < T; t += 4) targets[t] = cpu::kIgnoreIndex;
  std::vector<float> losses(T), dlogits(T * V, 0.0f);
  const std::vector<float> dlosses(T, dloss);
  cpu::cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
  cpu::cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_targets(targets);
  auto d_losses = DeviceBuffer<float>::Poisoned(T);
  ASSERT_EQ(cuda::cross_entropy_fused(d_losses.get(), d_logits.get(), d_targets.get(), dloss, T,
                                      V, nullptr),
            cudaSuccess);
  Sync();
  const std::vector<float> got = d_losses.Host(), gd = d_logits.Host();
  EXPECT_LT(RelativeError(got.data(), losses.data(), T), 1e-6);
  EXPECT_LT(RelativeError(gd.data(), dlogits.data(), T * V), 1e-6);
  for (int64_t t = 1; t < T; t += 4) {
    EXPECT_EQ(got[t], 0.0f) << "ignored row " << t;
    for (int64_t v = 0; v < V; ++v) ASSERT_EQ(gd[t * V + v], 0.0f) << "ignored row " << t;
  }
  // Without a losses pointer only the gradient is written.
  DeviceBuffer<float> d_logits2(logits);
  ASSERT_EQ(cuda::cross_entropy_fused(nullptr, d_logits2.get(), d_targets.get(), dloss, T, V,
                                      nullptr),
            cudaSuccess);
  Sync();
  EXPECT_EQ(d_logits2.Host(), gd);
}

// The bf16 fusion: the same losses, the gradient rounded into its own tile
// bit for bit (ignored rows too), the logits left as they are.
TEST(CudaOps, CrossEntropyFusedBf16_EqualsFusedThenRounding) {
  REQUIRE_GPU();
  const int64_t T = 37, V = 4099;
  const float dloss = 0.0123f;
  const std::vector<float> logits = RandomVector(T * V, 66, 8.0f);
  std::vector<int32_t> targets = RandomTokens(T, static_cast<int32_t>(V), 67);
  for (int64_t t = 2; t < T; t += 5) targets[t] = cpu::kIgnoreIndex;
  DeviceBuffer<int32_t> d_targets(targets);
  DeviceBuffer<float> in_place(logits), d_logits(logits);
  auto want_losses = DeviceBuffer<float>::Poisoned(T), got_losses = DeviceBuffer<float>::Poisoned(T);
  auto want = DeviceBuffer<uint16_t>::Poisoned(T * V), got = DeviceBuffer<uint16_t>::Poisoned(T * V);
  auto* want16 = reinterpret_cast<__nv_bfloat16*>(want.get());
  auto* got16 = reinterpret_cast<__nv_bfloat16*>(got.get());
  ASSERT_EQ(cuda::cross_entropy_fused(want_losses.get(), in_place.get(), d_targets.get(), dloss, T,
                                      V, nullptr),
            cudaSuccess);
  ASSERT_EQ(cuda::float_to_bf16(want16, in_place.get(), T * V, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::cross_entropy_fused_bf16(got_losses.get(), got16, d_logits.get(),
                                           d_targets.get(), dloss, T, V, nullptr),
            cudaSuccess);
  Sync();
  EXPECT_EQ(got_losses.Host(), want_losses.Host());
  EXPECT_EQ(got.Host(), want.Host());
  EXPECT_EQ(d_logits.Host(), logits) << "the fp32 logits are read, not written";
}

TEST(CudaOps, AddTo_Accumulates) {
  REQUIRE_GPU();
  const int64_t n = 100003;
  std::vector<float> a = RandomVector(n, 66);
  const std::vector<float> b = RandomVector(n, 67);
  DeviceBuffer<float> d_a(a), d_b(b);
  ASSERT_EQ(cuda::add_to(d_a.get(), d_b.get(), n, nullptr), cudaSuccess);
  Sync();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
  EXPECT_EQ(d_a.Host(), a);
}

// Shapes that are not multiples of anything; with and without bias and dinp.
TEST(CudaOps, Linear_MatchesCpu) {
  REQUIRE_GPU();
  absl::StatusOr<cuda::CublasHandle> h = cuda::CublasHandle::Create(nullptr);
  ASSERT_TRUE(h.ok()) << h.status();
  const int64_t T = 77, IC = 130, OC = 93;
  const std::vector<float> x = RandomVector(T * IC, 70), w = RandomVector(OC * IC, 71, 0.1f),
                           b = RandomVector(OC, 72);
  for (bool with_bias : {true, false}) {
    std::vector<float> y(T * OC);
    cpu::linear_forward(y.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, T, IC, OC);
    DeviceBuffer<float> d_x(x), d_w(w), d_b(b);
    auto d_y = DeviceBuffer<float>::Poisoned(T * OC);
    absl::Status s = cuda::linear_forward(d_y.get(), d_x.get(), d_w.get(),
                                          with_bias ? d_b.get() : nullptr, T, IC, OC, *h);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    const std::vector<float> gy = d_y.Host();
    EXPECT_LT(RelativeError(gy.data(), y.data(), T * OC), 1e-5) << "bias " << with_bias;

    const std::vector<float> dy = RandomVector(T * OC, 73);
    std::vector<float> dx = RandomVector(T * IC, 74), dw = RandomVector(OC * IC, 75),
                       db = RandomVector(OC, 76);
    DeviceBuffer<float> d_dx(dx), d_dw(dw), d_db(db), d_dy(dy);
    cpu::linear_backward(with_bias ? dx.data() : nullptr, dw.data(),
                         with_bias ? db.data() : nullptr, dy.data(), x.data(), w.data(), T, IC,
                         OC);
    s = cuda::linear_backward(with_bias ? d_dx.get() : nullptr, d_dw.get(),
                              with_bias ? d_db.get() : nullptr, d_dy.get(), d_x.get(), d_w.get(),
                              T, IC, OC, *h);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    const std::vector<float> gdx = d_dx.Host(), gdw = d_dw.Host(), gdb = d_db.Host();
    EXPECT_LT(RelativeError(gdx.data(), dx.data(), T * IC), 1e-5);
    EXPECT_LT(RelativeError(gdw.data(), dw.data(), OC * IC), 1e-5);
    EXPECT_EQ(gdb, db) << "column sums, exact in double on these inputs";
  }
  EXPECT_EQ(cuda::linear_forward(nullptr, nullptr, nullptr, nullptr, 1, 0, 3, *h).code(),
            absl::StatusCode::kInvalidArgument);
}

// Two packed segments: one continuing a sequence (prefix tokens from the
// state store), one starting fresh. First GQA 4 query heads on 2 kv heads
// with 50 prefix tokens; then Qwen2's 14 on 2 with 300, more keys than a
// block's 128 threads cover at once, at head dims 64 and 160 (two
// accumulator slots per thread).
TEST(CudaOps, Attention_MatchesCpu_PackedWithPrefix) {
  REQUIRE_GPU();
  struct Config {
    int64_t H, Hkv, D, len0, off0, len1;
  };
  for (const Config& cfg : {Config{4, 2, 64, 40, 50, 30}, Config{14, 2, 64, 200, 300, 150},
                            Config{14, 2, 160, 200, 300, 150}}) {
    const auto [H, Hkv, D, len0, off0, len1] = cfg;
    SCOPED_TRACE("H " + std::to_string(H) + " D " + std::to_string(D));
    const int64_t T = len0 + len1;
    const std::vector<float> q = RandomVector(T * H * D, 80);
    const std::vector<float> k0 = RandomVector((off0 + len0) * Hkv * D, 81),
                             v0 = RandomVector((off0 + len0) * Hkv * D, 82),
                             k1 = RandomVector(len1 * Hkv * D, 83),
                             v1 = RandomVector(len1 * Hkv * D, 84);
    std::vector<float> dk0 = RandomVector(k0.size(), 85), dv0 = RandomVector(v0.size(), 86),
                       dk1 = RandomVector(k1.size(), 87), dv1 = RandomVector(v1.size(), 88);
    DeviceBuffer<float> d_q(q), d_k0(k0), d_v0(v0), d_k1(k1), d_v1(v1), d_dk0(dk0), d_dv0(dv0),
        d_dk1(dk1), d_dv1(dv1);
    cpu::AttentionSegment cs[2] = {{0, len0, off0, k0.data(), v0.data(), dk0.data(), dv0.data()},
                                   {len0, len1, 0, k1.data(), v1.data(), dk1.data(), dv1.data()}};
    cuda::AttentionSegment gs[2] = {
        {0, len0, off0, d_k0.get(), d_v0.get(), d_dk0.get(), d_dv0.get()},
        {len0, len1, 0, d_k1.get(), d_v1.get(), d_dk1.get(), d_dv1.get()}};
    std::vector<float> out(T * H * D), lse(T * H);
    cpu::attention_forward(out.data(), lse.data(), q.data(), cs, 2, H, Hkv, D);
    auto d_out = DeviceBuffer<float>::Poisoned(T * H * D);
    auto d_lse = DeviceBuffer<float>::Poisoned(T * H);
    absl::Status s =
        cuda::attention_forward(d_out.get(), d_lse.get(), d_q.get(), gs, 2, H, Hkv, D, nullptr);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    const std::vector<float> gout = d_out.Host(), glse = d_lse.Host();
    EXPECT_LT(RelativeError(gout.data(), out.data(), T * H * D), 1e-5);
    EXPECT_LT(RelativeError(glse.data(), lse.data(), T * H), 1e-6);

    const std::vector<float> dout = RandomVector(T * H * D, 89);
    std::vector<float> dq = RandomVector(T * H * D, 90);
    DeviceBuffer<float> d_dq(dq), d_dout(dout), d_outc(out), d_lsec(lse);
    cpu::attention_backward(dq.data(), cs, 2, dout.data(), q.data(), out.data(), lse.data(), H,
                            Hkv, D);
    s = cuda::attention_backward(d_dq.get(), gs, 2, d_dout.get(), d_q.get(), d_outc.get(),
                                 d_lsec.get(), H, Hkv, D, nullptr);
    ASSERT_TRUE(s.ok()) << s;
    Sync();
    const std::vector<float> gdq = d_dq.Host(), gdk0 = d_dk0.Host(), gdv0 = d_dv0.Host(),
                             gdk1 = d_dk1.Host(), gdv1 = d_dv1.Host();
    EXPECT_LT(RelativeError(gdq.data(), dq.data(), T * H * D), 1e-5);
    EXPECT_LT(RelativeError(gdk0.data(), dk0.data(), dk0.size()), 1e-5) << "prefix keys included";
    EXPECT_LT(RelativeError(gdv0.data(), dv0.data(), dv0.size()), 1e-5);
    EXPECT_LT(RelativeError(gdk1.data(), dk1.data(), dk1.size()), 1e-5);
    EXPECT_LT(RelativeError(gdv1.data(), dv1.data(), dv1.size()), 1e-5);
    EXPECT_EQ(cuda::attention_forward(d_out.get(), d_lse.get(), d_q.get(), gs, 2, 3, 2, D, nullptr)
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << "3 heads on 2 kv heads";
  }
}

TEST(CudaOps, Bf16Conversions_RoundToNearestEven) {
  REQUIRE_GPU();
  const int64_t n = 10'007;
  std::vector<float> x = RandomVector(n, 95, 100.0f);
  x[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even (1.0)
  DeviceBuffer<float> d_x(x);
  auto d_b = DeviceBuffer<uint16_t>::Poisoned(n);
  ASSERT_EQ(cuda::float_to_bf16(reinterpret_cast<__nv_bfloat16*>(d_b.get()), d_x.get(), n,
                                nullptr),
            cudaSuccess);
  auto d_back = DeviceBuffer<float>::Poisoned(n);
  ASSERT_EQ(cuda::bf16_to_float(d_back.get(), reinterpret_cast<__nv_bfloat16*>(d_b.get()), n,
                                nullptr),
            cudaSuccess);
  Sync();
  const std::vector<uint16_t> bits = d_b.Host();
  const std::vector<float> back = d_back.Host();
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bits[i], HostToBf16(x[i])) << i;
    ASSERT_EQ(back[i], HostFromBf16(bits[i])) << i;
  }
  EXPECT_EQ(back[0], 1.0f);
}

// More elements than one grid covers (a stage's parameters: hundreds of
// millions), so the grid-stride loops of the elementwise ops wrap.
TEST(CudaOps, ElementwiseOps_BeyondOneGrid) {
  REQUIRE_GPU();
  const int64_t n = 140'000'003;  // > 524,280 blocks x 256 threads
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 1000) - 500.0f;
  DeviceBuffer<float> d_x(x);
  ASSERT_EQ(cuda::scale(d_x.get(), n, 0.5f, nullptr), cudaSuccess);
  Sync();
  const std::vector<float> got = d_x.Host();
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += got[i] != x[i] * 0.5f;
  EXPECT_EQ(wrong, 0);
  auto d_b = DeviceBuffer<uint16_t>::Poisoned(n);
  ASSERT_EQ(cuda::float_to_bf16(reinterpret_cast<__nv_bfloat16*>(d_b.get()), d_x.get(), n,
                                nullptr),
            cudaSuccess);
  Sync();
  const std::vector<uint16_t> bits = d_b.Host();
  wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += bits[i] != HostToBf16(got[i]);
  EXPECT_EQ(wrong, 0);
}

// bf16 GEMMs against the fp32 CPU op on the same bf16-rounded values: the
// products are exact in fp32, only the summation order differs (1e-5). On
// cuBLASLt (with a workspace, as the engine runs it, and without one) and
// on the cublasGemmEx fallback.
class LinearBf16 : public ::testing::TestWithParam<std::pair<cuda::GemmBackend, bool>> {};

TEST_P(LinearBf16, MatchesCpuOnRoundedInputs) {
  REQUIRE_GPU();
  const auto [backend, with_workspace] = GetParam();
  auto ws = DeviceBuffer<uint8_t>::Poisoned(size_t{32} << 20);
  cuda::CublasOptions options;
  options.bf16 = backend;
  if (with_workspace) {
    options.workspace = ws.get();
    options.workspace_bytes = size_t{32} << 20;
  }
  absl::StatusOr<cuda::CublasHandle> h = cuda::CublasHandle::Create(nullptr, options);
  ASSERT_TRUE(h.ok()) << h.status();
  if (std::getenv("CHUNKFLOW_BF16_GEMM") == nullptr) EXPECT_EQ(h->bf16_backend(), backend);
  const int64_t T = 96, IC = 136, OC = 72;
  auto rounded = [](std::vector<float> v, std::vector<uint16_t>* bits) {
    bits->resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      (*bits)[i] = HostToBf16(v[i]);
      v[i] = HostFromBf16((*bits)[i]);
    }
    return v;
  };
  std::vector<uint16_t> xb, wb, dyb;
  const std::vector<float> x = rounded(RandomVector(T * IC, 96), &xb);
  const std::vector<float> w = rounded(RandomVector(OC * IC, 97, 0.1f), &wb);
  const std::vector<float> dy = rounded(RandomVector(T * OC, 98), &dyb);
  const std::vector<float> b = RandomVector(OC, 99);
  DeviceBuffer<uint16_t> d_x(xb), d_w(wb), d_dy(dyb);
  DeviceBuffer<float> d_b(b);
  auto bf = [](DeviceBuffer<uint16_t>& d) { return reinterpret_cast<__nv_bfloat16*>(d.get()); };
  std::vector<float> y(T * OC);
  cpu::linear_forward(y.data(), x.data(), w.data(), b.data(), T, IC, OC);
  auto d_y = DeviceBuffer<float>::Poisoned(T * OC);
  absl::Status s = cuda::linear_forward_bf16(d_y.get(), bf(d_x), bf(d_w), d_b.get(), T, IC, OC, *h);
  ASSERT_TRUE(s.ok()) << s;
  Sync();
  const std::vector<float> gy = d_y.Host();
  EXPECT_LT(RelativeError(gy.data(), y.data(), T * OC), 1e-5);

  std::vector<float> dx = RandomVector(T * IC, 100), dw = RandomVector(OC * IC, 101),
                     db = RandomVector(OC, 102);
  DeviceBuffer<float> d_dx(dx), d_dw(dw), d_db(db);
  cpu::linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), T, IC, OC);
  s = cuda::linear_backward_bf16(d_dx.get(), d_dw.get(), d_db.get(), bf(d_dy), bf(d_x), bf(d_w), T,
                                 IC, OC, *h);
  ASSERT_TRUE(s.ok()) << s;
  Sync();
  const std::vector<float> gdx = d_dx.Host(), gdw = d_dw.Host(), gdb = d_db.Host();
  EXPECT_LT(RelativeError(gdx.data(), dx.data(), T * IC), 1e-5);
  EXPECT_LT(RelativeError(gdw.data(), dw.data(), OC * IC), 1e-5);
  EXPECT_EQ(gdb, db);
  // Again with the plans kept from the first calls: the same results.
  auto d_y2 = DeviceBuffer<float>::Poisoned(T * OC);
  s = cuda::linear_forward_bf16(d_y2.get(), bf(d_x), bf(d_w), d_b.get(), T, IC, OC, *h);
  ASSERT_TRUE(s.ok()) << s;
  Sync();
  EXPECT_EQ(d_y2.Host(), gy);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, LinearBf16,
    ::testing::Values(std::pair{cuda::GemmBackend::kLt, true},
                      std::pair{cuda::GemmBackend::kLt, false},
                      std::pair{cuda::GemmBackend::kGemmEx, true}),
    [](const auto& info) {
      return std::string(info.param.first == cuda::GemmBackend::kLt ? "CublasLt" : "GemmEx") +
             (info.param.second ? "_Workspace" : "_NoWorkspace");
    });

// The bf16 column sums equal widening then the fp32 ones, to the bit.
TEST(CudaOps, ColumnSumsBf16_EqualWidenedFp32) {
  REQUIRE_GPU();
  const int64_t T = 1'000, C = 77;
  std::vector<uint16_t> bits(T * C);
  const std::vector<float> x = RandomVector(T * C, 103, 4.0f);
  for (int64_t i = 0; i < T * C; ++i) bits[i] = HostToBf16(x[i]);
  DeviceBuffer<uint16_t> d_x(bits);
  const std::vector<float> start = RandomVector(C, 104);
  DeviceBuffer<float> d_got(start), d_want(start);
  auto d_wide = DeviceBuffer<float>::Poisoned(T * C);
  auto* xb = reinterpret_cast<__nv_bfloat16*>(d_x.get());
  ASSERT_EQ(cuda::column_sums(d_got.get(), xb, T, C, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::bf16_to_float(d_wide.get(), xb, T * C, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::column_sums(d_want.get(), d_wide.get(), T, C, nullptr), cudaSuccess);
  Sync();
  EXPECT_EQ(d_got.Host(), d_want.Host());
  EXPECT_NE(d_got.Host(), start);
}

TEST(CudaOps, Swiglu_MatchesCpu) {
  REQUIRE_GPU();
  const int64_t N = 100'003;
  const std::vector<float> g = RandomVector(N, 10, 4.0f), u = RandomVector(N, 11);
  std::vector<float> out(N);
  cpu::swiglu_forward(out.data(), g.data(), u.data(), N);
  DeviceBuffer<float> d_g(g), d_u(u);
  auto d_out = DeviceBuffer<float>::Poisoned(N);
  ASSERT_EQ(cuda::swiglu_forward(d_out.get(), d_g.get(), d_u.get(), N, nullptr), cudaSuccess);
  Sync();
  const std::vector<float> got = d_out.Host();
  EXPECT_LT(RelativeError(got.data(), out.data(), N), 1e-6);

  const std::vector<float> dout = RandomVector(N, 12);
  std::vector<float> dg = RandomVector(N, 13), du = RandomVector(N, 14);
  DeviceBuffer<float> d_dg(dg), d_du(du), d_dout(dout);
  cpu::swiglu_backward(dg.data(), du.data(), dout.data(), g.data(), u.data(), N);
  ASSERT_EQ(cuda::swiglu_backward(d_dg.get(), d_du.get(), d_dout.get(), d_g.get(), d_u.get(), N,
                                  nullptr),
            cudaSuccess);
  Sync();
  const std::vector<float> gdg = d_dg.Host(), gdu = d_du.Host();
  EXPECT_LT(RelativeError(gdg.data(), dg.data(), N), 1e-6);
  EXPECT_LT(RelativeError(gdu.data(), du.data(), N), 1e-6);
}

// The bf16 engine's fusions against the fp32 ops and float_to_bf16 (both
// already held to their CPU twins above), bit for bit. Element 0 has a
// zero gate and a negative-zero output gradient: signed zeros included.
TEST(CudaOps, Bf16Fusions_EqualTheFp32OpThenRounding) {
  REQUIRE_GPU();
  using Bits = std::vector<uint16_t>;
  auto bf = [](DeviceBuffer<uint16_t>& b) { return reinterpret_cast<__nv_bfloat16*>(b.get()); };
  for (auto [T, C] : {std::pair<int64_t, int64_t>{37, 896}, {300, 64}}) {
    const std::vector<float> x = RandomVector(T * C, 61, 3.0f), w = RandomVector(C, 62);
    DeviceBuffer<float> d_x(x), d_w(w);
    auto d_y = DeviceBuffer<float>::Poisoned(T * C);
    auto d_r = DeviceBuffer<float>::Poisoned(T), d_r16 = DeviceBuffer<float>::Poisoned(T);
    auto want = DeviceBuffer<uint16_t>::Poisoned(T * C), got = DeviceBuffer<uint16_t>::Poisoned(T * C);
    ASSERT_EQ(cuda::rmsnorm_forward(d_y.get(), d_r.get(), d_x.get(), d_w.get(), T, C, 1e-6f,
                                    nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::float_to_bf16(bf(want), d_y.get(), T * C, nullptr), cudaSuccess);
    ASSERT_EQ(cuda::rmsnorm_forward_bf16(bf(got), d_r16.get(), d_x.get(), d_w.get(), T, C, 1e-6f,
                                         nullptr),
              cudaSuccess);
    Sync();
    EXPECT_EQ(got.Host(), want.Host()) << "rmsnorm_forward_bf16, C " << C;
    EXPECT_EQ(d_r16.Host(), d_r.Host()) << "rmsnorm_forward_bf16's rstd, C " << C;
  }

  const int64_t N = 70'001;
  std::vector<float> g = RandomVector(N, 63, 4.0f), u = RandomVector(N, 64),
                     dout = RandomVector(N, 65);
  g[0] = 0.0f;
  dout[0] = -0.0f;
  DeviceBuffer<float> d_g(g), d_u(u), d_dout(dout);
  auto rounded = [&](const float* src) {
    auto b = DeviceBuffer<uint16_t>::Poisoned(N);
    EXPECT_EQ(cuda::float_to_bf16(bf(b), src, N, nullptr), cudaSuccess);
    return b;
  };
  DeviceBuffer<uint16_t> g16 = rounded(d_g.get()), u16 = rounded(d_u.get());
  // The widened bf16 inputs, for the unfused side of the bf16-input overloads.
  auto d_gw = DeviceBuffer<float>::Poisoned(N), d_uw = DeviceBuffer<float>::Poisoned(N);
  ASSERT_EQ(cuda::bf16_to_float(d_gw.get(), bf(g16), N, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::bf16_to_float(d_uw.get(), bf(u16), N, nullptr), cudaSuccess);

  for (bool bf16_in : {false, true}) {
    const std::string what = bf16_in ? "bf16 gate / up" : "fp32 gate / up";
    const float* gate = bf16_in ? d_gw.get() : d_g.get();
    const float* up = bf16_in ? d_uw.get() : d_u.get();
    // Forward.
    auto act = DeviceBuffer<float>::Poisoned(N);
    ASSERT_EQ(cuda::swiglu_forward(act.get(), gate, up, N, nullptr), cudaSuccess);
    DeviceBuffer<uint16_t> want = rounded(act.get());
    auto got = DeviceBuffer<uint16_t>::Poisoned(N);
    auto got_g = DeviceBuffer<uint16_t>::Poisoned(N), got_u = DeviceBuffer<uint16_t>::Poisoned(N);
    if (bf16_in) {
      ASSERT_EQ(cuda::swiglu_forward_bf16(bf(got), bf(g16), bf(u16), N, nullptr), cudaSuccess);
    } else {
      ASSERT_EQ(cuda::swiglu_forward_bf16(bf(got), bf(got_g), bf(got_u), d_g.get(), d_u.get(), N,
                                          nullptr),
                cudaSuccess);
    }
    // Backward, onto zeroed fp32 gradients.
    DeviceBuffer<float> dg(std::vector<float>(N, 0.0f)), du(std::vector<float>(N, 0.0f));
    ASSERT_EQ(cuda::swiglu_backward(dg.get(), du.get(), d_dout.get(), gate, up, N, nullptr),
              cudaSuccess);
    DeviceBuffer<uint16_t> want_dg = rounded(dg.get()), want_du = rounded(du.get());
    auto got_dg = DeviceBuffer<uint16_t>::Poisoned(N), got_du = DeviceBuffer<uint16_t>::Poisoned(N);
    if (bf16_in) {
      ASSERT_EQ(cuda::swiglu_backward_bf16(bf(got_dg), bf(got_du), d_dout.get(), bf(g16), bf(u16),
                                           N, nullptr),
                cudaSuccess);
    } else {
      ASSERT_EQ(cuda::swiglu_backward_bf16(bf(got_dg), bf(got_du), d_dout.get(), d_g.get(),
                                           d_u.get(), N, nullptr),
                cudaSuccess);
    }
    Sync();
    EXPECT_EQ(got.Host(), want.Host()) << "swiglu_forward_bf16, " << what;
    if (!bf16_in) {
      EXPECT_EQ(got_g.Host(), g16.Host()) << "swiglu_forward_bf16's gate copy";
      EXPECT_EQ(got_u.Host(), u16.Host()) << "swiglu_forward_bf16's up copy";
    }
    const Bits gdg = got_dg.Host(), gdu = got_du.Host();
    EXPECT_EQ(gdg, want_dg.Host()) << "swiglu_backward_bf16's dgate, " << what;
    EXPECT_EQ(gdu, want_du.Host()) << "swiglu_backward_bf16's dup, " << what;
    EXPECT_EQ(gdg[0], 0u) << "0 + (-0) is +0, as onto zeroed fp32 gradients";
  }
  // Without the storage copies: the same activation, the copies untouched.
  auto got = DeviceBuffer<uint16_t>::Poisoned(N);
  ASSERT_EQ(cuda::swiglu_forward_bf16(bf(got), nullptr, nullptr, d_g.get(), d_u.get(), N, nullptr),
            cudaSuccess);
  auto act = DeviceBuffer<float>::Poisoned(N);
  ASSERT_EQ(cuda::swiglu_forward(act.get(), d_g.get(), d_u.get(), N, nullptr), cudaSuccess);
  DeviceBuffer<uint16_t> want = rounded(act.get());
  Sync();
  EXPECT_EQ(got.Host(), want.Host()) << "swiglu_forward_bf16 without gate16 / up16";
}

TEST(CudaOps, OptimizerAndNorm_MatchCpu) {
  REQUIRE_GPU();
  const int64_t n = 70'001;
  std::vector<float> p = RandomVector(n, 20), m(n, 0.0f), v(n, 0.0f);
  DeviceBuffer<float> d_p(p), d_m(m), d_v(v);
  cpu::AdamWConfig c;
  c.weight_decay = 0.1f;
  cuda::AdamWConfig g;
  g.weight_decay = 0.1f;
  for (int64_t step = 1; step <= 3; ++step) {
    const std::vector<float> grad = RandomVector(n, 30 + step);
    DeviceBuffer<float> d_grad(grad);
    cpu::adamw_update(p.data(), grad.data(), m.data(), v.data(), n, step, c);
    ASSERT_EQ(cuda::adamw_update(d_p.get(), d_grad.get(), d_m.get(), d_v.get(), n, step, g,
                                 nullptr),
              cudaSuccess);
    Sync();
  }
  const std::vector<float> gp = d_p.Host(), gm = d_m.Host(), gv = d_v.Host();
  EXPECT_LT(RelativeError(gp.data(), p.data(), n), 1e-6);
  EXPECT_LT(RelativeError(gm.data(), m.data(), n), 1e-6);
  EXPECT_LT(RelativeError(gv.data(), v.data(), n), 1e-6);

  const std::vector<float> grad = RandomVector(n, 40);
  DeviceBuffer<float> d_grad(grad);
  // From the CPU's parameters (AdamW's FMAs left the two a few ulps apart).
  DeviceBuffer<float> d_p_sgd(p);
  cpu::sgd_update(p.data(), grad.data(), n, 0.05f);
  ASSERT_EQ(cuda::sgd_update(d_p_sgd.get(), d_grad.get(), n, 0.05f, nullptr), cudaSuccess);
  Sync();
  const std::vector<float> sgd = d_p_sgd.Host();
  // nvcc contracts p + (-lr) * g into one FMA (one rounding, not two).
  EXPECT_LT(RelativeError(sgd.data(), p.data(), n), 1e-7);

  const double want = cpu::sum_of_squares(grad.data(), n);
  auto d_out = DeviceBuffer<double>::Poisoned(1);
  auto d_scratch = DeviceBuffer<double>::Poisoned(cuda::kSumOfSquaresBlocks);
  ASSERT_EQ(cuda::sum_of_squares(d_out.get(), d_grad.get(), n, d_scratch.get(), nullptr),
            cudaSuccess);
  Sync();
  EXPECT_NEAR(d_out.Host()[0], want, 1e-12 * want);

  std::vector<float> x = RandomVector(n, 41);
  DeviceBuffer<float> d_x(x);
  cpu::scale(x.data(), n, 0.37f);
  ASSERT_EQ(cuda::scale(d_x.get(), n, 0.37f, nullptr), cudaSuccess);
  Sync();
  EXPECT_EQ(d_x.Host(), x);
}

// Several tensors in one flat buffer, decay on some: one launch equals the
// CPU twin applied tensor by tensor (engine::ApplyUpdate's loop).
TEST(CudaOps, AdamWMultiTensor_MatchesPerTensorCpu) {
  REQUIRE_GPU();
  const std::vector<cuda::TensorSpan> spans = {
      {0, 4096, 1}, {4096, 64, 0}, {4160, 70000, 1}, {74160, 3, 0}};
  const int64_t n = 74163;
  std::vector<float> p = RandomVector(n, 110), m(n, 0.0f), v(n, 0.0f);
  DeviceBuffer<float> d_p(p), d_m(m), d_v(v);
  DeviceBuffer<cuda::TensorSpan> d_spans(spans);
  for (int64_t step = 1; step <= 2; ++step) {
    const std::vector<float> g = RandomVector(n, 120 + step);
    DeviceBuffer<float> d_g(g);
    for (const cuda::TensorSpan& s : spans) {
      cpu::AdamWConfig c;
      c.weight_decay = s.decay ? 0.1f : 0.0f;
      cpu::adamw_update(p.data() + s.offset, g.data() + s.offset, m.data() + s.offset,
                        v.data() + s.offset, s.numel, step, c);
    }
    cuda::AdamWConfig gc;
    gc.weight_decay = 0.1f;
    ASSERT_EQ(cuda::adamw_update_multi(d_p.get(), d_g.get(), d_m.get(), d_v.get(), d_spans.get(),
                                       static_cast<int64_t>(spans.size()), step, gc, nullptr),
              cudaSuccess);
    Sync();
  }
  const std::vector<float> gp = d_p.Host();
  EXPECT_LT(RelativeError(gp.data(), p.data(), n), 1e-6);
  // The undecayed tensors alone (a decay applied by mistake would show).
  EXPECT_LT(RelativeError(gp.data() + 4096, p.data() + 4096, 64), 1e-6);
}

TEST(CudaOps, BadLaunch_IsReportedNamingTheOp) {
  REQUIRE_GPU();
  // C larger than a grid can cover is fine (grid-stride); a null stream of a
  // destroyed context is not testable portably, so check the status mapping.
  EXPECT_EQ(cuda::CudaCheck(cudaErrorInvalidConfiguration, "swiglu_forward").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cuda::CudaCheck(cudaErrorMemoryAllocation, "alloc").message().find("alloc"),
            std::string::npos);
}

}  // namespace
}  // namespace chunkflow::kernels
