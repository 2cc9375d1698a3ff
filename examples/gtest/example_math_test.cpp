// Example suite for the dtest demo: a few numeric helpers and their tests.
// Everything that is not skipped or disabled passes.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <thread>
#include <vector>

namespace mathutil {

std::uint64_t factorial(unsigned n) {
  std::uint64_t r = 1;
  for (unsigned i = 2; i <= n; ++i) r *= i;
  return r;
}

bool is_prime(std::uint64_t n) {
  if (n < 2) return false;
  for (std::uint64_t d = 2; d * d <= n; ++d)
    if (n % d == 0) return false;
  return true;
}

template <typename T>
T clamp_add(T a, T b) {
  if (b > 0 && a > std::numeric_limits<T>::max() - b) return std::numeric_limits<T>::max();
  if (b < 0 && a < std::numeric_limits<T>::lowest() - b) return std::numeric_limits<T>::lowest();
  return static_cast<T>(a + b);
}

}  // namespace mathutil

namespace {

void simulate_work(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// ---- plain tests ----------------------------------------------------------

TEST(Factorial, Zero) { EXPECT_EQ(mathutil::factorial(0), 1u); }
TEST(Factorial, Small) { EXPECT_EQ(mathutil::factorial(5), 120u); }
TEST(Factorial, Twenty) { EXPECT_EQ(mathutil::factorial(20), 2432902008176640000u); }

TEST(Primes, SmallNumbers) {
  EXPECT_FALSE(mathutil::is_prime(1));
  EXPECT_TRUE(mathutil::is_prime(2));
  EXPECT_FALSE(mathutil::is_prime(9));
}
TEST(Primes, CountBelowOneHundredThousand) {
  int count = 0;
  for (std::uint64_t n = 0; n < 100000; ++n) count += mathutil::is_prime(n) ? 1 : 0;
  EXPECT_EQ(count, 9592);
  simulate_work(200);
}
TEST(Primes, LargePrime) {
  EXPECT_TRUE(mathutil::is_prime(1000000007u));
  simulate_work(120);
}

TEST(Floating, SqrtOfTwo) { EXPECT_NEAR(std::sqrt(2.0), 1.41421356, 1e-8); }
TEST(Floating, Accumulate) {
  std::vector<double> v(10, 0.1);
  EXPECT_DOUBLE_EQ(std::accumulate(v.begin(), v.end(), 0.0), 1.0);
}
TEST(Floating, LongDoubleSupport) {
  if (sizeof(long double) == sizeof(double)) {
    GTEST_SKIP() << "long double is the same as double on this platform";
  }
  EXPECT_GT(std::numeric_limits<long double>::digits, std::numeric_limits<double>::digits);
}

TEST(Primes, DISABLED_MersenneSearch) {
  // Disabled: takes hours.
  EXPECT_TRUE(mathutil::is_prime((std::uint64_t{1} << 61) - 1));
}

// ---- a fixture ------------------------------------------------------------

class Accumulator : public ::testing::Test {
 protected:
  void SetUp() override { values_ = {3, 1, 4, 1, 5, 9, 2, 6}; }
  std::vector<int> values_;
};

TEST_F(Accumulator, Sum) { EXPECT_EQ(std::accumulate(values_.begin(), values_.end(), 0), 31); }
TEST_F(Accumulator, Product) {
  EXPECT_EQ(std::accumulate(values_.begin(), values_.end(), 1, std::multiplies<>()), 6480);
}
TEST_F(Accumulator, SlowReduction) {
  EXPECT_EQ(std::reduce(values_.begin(), values_.end()), 31);
  simulate_work(300);
}

// ---- typed tests ----------------------------------------------------------

template <typename T>
class ClampAdd : public ::testing::Test {};

using IntegerTypes = ::testing::Types<std::int8_t, std::int16_t, std::int32_t, std::int64_t>;
TYPED_TEST_SUITE(ClampAdd, IntegerTypes);

TYPED_TEST(ClampAdd, Ordinary) {
  EXPECT_EQ(mathutil::clamp_add<TypeParam>(2, 3), TypeParam{5});
}
TYPED_TEST(ClampAdd, SaturatesHigh) {
  const TypeParam max = std::numeric_limits<TypeParam>::max();
  EXPECT_EQ(mathutil::clamp_add<TypeParam>(max, 1), max);
}
TYPED_TEST(ClampAdd, SaturatesLow) {
  const TypeParam low = std::numeric_limits<TypeParam>::lowest();
  EXPECT_EQ(mathutil::clamp_add<TypeParam>(low, -1), low);
  simulate_work(50);
}

}  // namespace
