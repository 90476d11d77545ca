// Fresh random inputs for every test run, with the seed printed so a failure can be
// replayed: ADEPT_TEST_SEED=<seed> reruns with the same inputs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

namespace testing_support {

inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* env = std::getenv("ADEPT_TEST_SEED")) return uint64_t(std::strtoull(env, nullptr, 10));
    return uint64_t(std::random_device{}()) << 32 | std::random_device{}();
  }();
  return seed;
}

// A generator seeded from the run's seed and a per-test salt; records the seed in the
// test's output (and XML) so it is visible on failure.
inline std::mt19937_64 make_rng(uint64_t salt = 0) {
  ::testing::Test::RecordProperty("seed", std::to_string(test_seed()));
  std::printf("[ seed ] ADEPT_TEST_SEED=%llu\n", static_cast<unsigned long long>(test_seed()));
  return std::mt19937_64(test_seed() ^ (salt * 0x9E3779B97F4A7C15ull));
}

template <typename T>
std::vector<T> random_vector(std::mt19937_64& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<T> v(n);
  for (T& x : v) x = T(normal(rng));
  return v;
}

}  // namespace testing_support
