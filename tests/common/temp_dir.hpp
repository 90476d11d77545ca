// A fresh directory for one test, removed with its contents when the test ends. The name
// carries the test's name, the process id and a salt (usually drawn from the test's
// seeded generator), so tests running in parallel under ctest -j never share one.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>

namespace testing_support {

struct TempDir {
  std::filesystem::path path;

  explicit TempDir(uint64_t salt) {
    std::string test = "test";
    if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info())
      test = std::string(info->test_suite_name()) + "." + info->name();
    for (char& ch : test)
      if (ch == '/') ch = '_';  // parameterised names
    path = std::filesystem::temp_directory_path() /
           ("adept-" + test + "-" + std::to_string(::getpid()) + "-" + std::to_string(salt));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  explicit TempDir(std::mt19937_64& rng) : TempDir(rng()) {}
  ~TempDir() {
    std::error_code ignored;  // a failed cleanup must not end the test run
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace testing_support
