// The collectives without a GPU: the LocalCommunicator (world size 1) is the identity
// in and out of place; the rendezvous hands rank 0's bytes to every rank over TCP and
// fails with a clear message, not a hang, when a rank never comes.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <numeric>
#include <thread>

#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "dist/rendezvous.hpp"

namespace adept::dist {
namespace {

// A port free right now (bound to 0, read back, closed).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

LaunchEnv env_for(int rank, int world, int port) {
  LaunchEnv e;
  e.rank = rank, e.world = world, e.local_rank = rank, e.master_port = port, e.launcher = "torchrun";
  return e;
}

TEST(DistCommunicator, WorldOneIsALocalCommunicator) {
  std::unique_ptr<Communicator> c = make_communicator(LaunchEnv{});
  EXPECT_EQ(c->name(), "local");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->world(), 1);
  EXPECT_FALSE(c->device_buffers());
}

TEST(DistCommunicator, LocalCollectivesAreTheIdentity) {
  LocalCommunicator c;
  std::vector<float> a(100), b(100, -1.0f);
  std::iota(a.begin(), a.end(), 0.0f);
  c.all_reduce(a.data(), b.data(), a.size(), DataType::f32, ReduceOp::sum, nullptr);
  EXPECT_EQ(a, b);
  std::fill(b.begin(), b.end(), -1.0f);
  c.reduce_scatter(a.data(), b.data(), a.size(), DataType::f32, ReduceOp::sum, nullptr);
  EXPECT_EQ(a, b);
  std::fill(b.begin(), b.end(), -1.0f);
  c.all_gather(a.data(), b.data(), a.size(), DataType::f32, nullptr);
  EXPECT_EQ(a, b);
  std::vector<double> d{1.5, 2.5};
  c.all_reduce(d.data(), d.data(), 2, DataType::f64, ReduceOp::max, nullptr);  // in place
  EXPECT_EQ(d, (std::vector<double>{1.5, 2.5}));
  c.synchronize(nullptr);
  double host[2] = {3.0, 4.0};
  c.all_reduce_host(host, 2, ReduceOp::sum);
  EXPECT_EQ(host[0], 3.0);
  EXPECT_EQ(host[1], 4.0);
  c.barrier();
}

TEST(DistCommunicator, ManyRanksWithoutNcclIsAClearError) {
  if (nccl_available()) GTEST_SKIP() << "this build has NCCL";
  try {
    make_communicator(env_for(0, 2, 1));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no NCCL"), std::string::npos) << e.what();
  }
}

TEST(DistRendezvous, EveryRankGetsRankZerosBytes) {
  const int world = 4, port = free_port();
  std::vector<uint8_t> id(128);
  for (size_t i = 0; i < id.size(); ++i) id[i] = uint8_t(i * 7 + 3);
  std::vector<std::future<std::vector<uint8_t>>> ranks;
  // Ranks 1.. start first: they must retry until rank 0 listens.
  for (int r = world - 1; r >= 0; --r)
    ranks.push_back(std::async(std::launch::async, [&, r] {
      if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      return exchange_bytes(env_for(r, world, port), r == 0 ? id : std::vector<uint8_t>{}, 20.0);
    }));
  for (auto& f : ranks) EXPECT_EQ(f.get(), id);
}

TEST(DistRendezvous, AMissingRankIsATimeoutNamingIt) {
  const int port = free_port();
  try {
    exchange_bytes(env_for(0, 3, port), std::vector<uint8_t>(8, 1), 0.5);
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1, 2 of 3 never connected"), std::string::npos) << e.what();
  }
}

TEST(DistRendezvous, NoRankZeroIsATimeoutNamingTheAddress) {
  const int port = free_port();
  try {
    exchange_bytes(env_for(1, 2, port), {}, 0.5);
    FAIL() << "expected a timeout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("could not reach rank 0 at 127.0.0.1:" + std::to_string(port)),
              std::string::npos)
        << e.what();
  }
}

TEST(DistRendezvous, TheSameRankTwiceIsAnError) {
  const int port = free_port();
  auto server = std::async(std::launch::async, [&] {
    return exchange_bytes(env_for(0, 3, port), std::vector<uint8_t>(4, 9), 5.0);
  });
  auto a = std::async(std::launch::async, [&] { return exchange_bytes(env_for(1, 3, port), {}, 5.0); });
  EXPECT_EQ(a.get(), std::vector<uint8_t>(4, 9));
  auto b = std::async(std::launch::async, [&] {
    try {
      return exchange_bytes(env_for(1, 3, port), {}, 2.0);
    } catch (const Error&) {
      return std::vector<uint8_t>{};
    }
  });
  try {
    server.get();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a second rank 1"), std::string::npos) << e.what();
  }
  b.get();
}

}  // namespace
}  // namespace adept::dist
