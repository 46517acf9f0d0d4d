#include "worker/comm/kv_store.h"

#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::comm {
namespace {

using ::testing::HasSubstr;

TEST(InMemoryKeyValueStoreTest, Get_AfterSet_ReturnsValue) {
  InMemoryKeyValueStore store;
  ASSERT_TRUE(store.Set("a/0", std::string("x\0y", 3)).ok());
  absl::StatusOr<std::string> value = store.Get("a/0", absl::ZeroDuration());
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, std::string("x\0y", 3));
}

TEST(InMemoryKeyValueStoreTest, Set_Twice_LastValueWins) {
  InMemoryKeyValueStore store;
  ASSERT_TRUE(store.Set("k", "1").ok());
  ASSERT_TRUE(store.Set("k", "2").ok());
  EXPECT_EQ(store.Get("k", absl::ZeroDuration()).value(), "2");
}

TEST(InMemoryKeyValueStoreTest,
     Get_KeySetLaterByAnotherThread_WaitsAndReturns) {
  InMemoryKeyValueStore store;
  std::thread setter([&store] {
    // Set only once the Get below is blocked (no sleeping).
    while (store.NumWaiters() == 0) std::this_thread::yield();
    ASSERT_TRUE(store.Set("late", "value").ok());
  });
  absl::StatusOr<std::string> value = store.Get("late", absl::Seconds(60));
  setter.join();
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "value");
  EXPECT_EQ(store.NumWaiters(), 0);
}

TEST(InMemoryKeyValueStoreTest, Get_KeyNeverSet_DeadlineExceededNamingKey) {
  InMemoryKeyValueStore store;
  ASSERT_TRUE(store.Set("other", "v").ok());
  absl::StatusOr<std::string> value =
      store.Get("missing/key", absl::Milliseconds(20));
  EXPECT_EQ(value.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(value.status().message()),
              HasSubstr("'missing/key'"));
  EXPECT_EQ(store.NumWaiters(), 0);
}

TEST(InMemoryKeyValueStoreTest, Get_ZeroTimeoutMissingKey_DeadlineExceeded) {
  InMemoryKeyValueStore store;
  EXPECT_EQ(store.Get("k", absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(InMemoryKeyValueStoreTest, SetAndGet_EmptyKey_InvalidArgument) {
  InMemoryKeyValueStore store;
  EXPECT_EQ(store.Set("", "v").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Get("", absl::Seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chunkflow::comm
