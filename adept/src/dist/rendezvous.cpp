#include "dist/rendezvous.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "core/error.hpp"

namespace adept::dist {

namespace {

constexpr uint32_t kMagic = 0xADE97D15u;
using Clock = std::chrono::steady_clock;

struct Socket {
  int fd = -1;
  explicit Socket(int f = -1) : fd(f) {}
  Socket(Socket&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      if (fd >= 0) ::close(fd);
      fd = o.fd, o.fd = -1;
    }
    return *this;
  }
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

int remaining_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms > 0 ? int(std::min<long long>(ms, 1 << 30)) : 0;
}

// Waits until fd is readable (events = POLLIN) or writable (POLLOUT); false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

void send_all(int fd, const void* data, size_t n, Clock::time_point deadline, const std::string& who) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    if (!wait_for(fd, POLLOUT, deadline)) fail("rendezvous: timed out sending to {}", who);
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k <= 0) fail("rendezvous: sending to {} failed: {}", who, std::strerror(errno));
    p += k, n -= size_t(k);
  }
}

void recv_all(int fd, void* data, size_t n, Clock::time_point deadline, const std::string& who) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    if (!wait_for(fd, POLLIN, deadline)) fail("rendezvous: timed out waiting for {}", who);
    ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k == 0) fail("rendezvous: {} closed the connection", who);
    if (k < 0) fail("rendezvous: reading from {} failed: {}", who, std::strerror(errno));
    p += k, n -= size_t(k);
  }
}

struct Hello {
  uint32_t magic, rank, world;
};

std::vector<uint8_t> serve(const LaunchEnv& env, const std::vector<uint8_t>& payload, Clock::time_point deadline) {
  Socket listener(::socket(AF_INET6, SOCK_STREAM, 0));
  bool v6 = listener.fd >= 0;
  if (!v6) listener = Socket(::socket(AF_INET, SOCK_STREAM, 0));
  if (listener.fd < 0) fail("rendezvous: socket() failed: {}", std::strerror(errno));
  int one = 1, zero = 0;
  ::setsockopt(listener.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int bound;
  if (v6) {
    ::setsockopt(listener.fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));  // IPv4 peers too
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(uint16_t(env.master_port));
    bound = ::bind(listener.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons(uint16_t(env.master_port));
    bound = ::bind(listener.fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  if (bound != 0)
    fail("rendezvous: rank 0 cannot listen on port {} ({}); set MASTER_PORT to a free port", env.master_port,
         std::strerror(errno));
  if (::listen(listener.fd, env.world) != 0) fail("rendezvous: listen() failed: {}", std::strerror(errno));

  std::set<uint32_t> served;
  while (int(served.size()) < env.world - 1) {
    if (!wait_for(listener.fd, POLLIN, deadline)) {
      std::string missing;
      for (int r = 1; r < env.world; ++r)
        if (!served.count(uint32_t(r))) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      fail("rendezvous: rank 0 waited on port {} but rank(s) {} of {} never connected (did every rank start, with "
           "the same MASTER_ADDR / MASTER_PORT?)",
           env.master_port, missing, env.world);
    }
    Socket peer(::accept(listener.fd, nullptr, nullptr));
    if (peer.fd < 0) continue;
    Hello h{};
    recv_all(peer.fd, &h, sizeof(h), deadline, "a connecting rank");
    if (h.magic != kMagic)
      fail("rendezvous: something that is not an adept rank connected to port {}", env.master_port);
    if (int(h.world) != env.world)
      fail("rendezvous: rank {} says the world has {} ranks, rank 0 says {}", h.rank, h.world, env.world);
    if (h.rank == 0 || int(h.rank) >= env.world || served.count(h.rank))
      fail("rendezvous: a second rank {} connected (each rank must be started once)", h.rank);
    uint32_t size = uint32_t(payload.size());
    send_all(peer.fd, &size, sizeof(size), deadline, "rank " + std::to_string(h.rank));
    send_all(peer.fd, payload.data(), payload.size(), deadline, "rank " + std::to_string(h.rank));
    // Wait for the peer's acknowledgement, so it has the bytes before this socket closes.
    uint8_t ack = 0;
    recv_all(peer.fd, &ack, 1, deadline, "rank " + std::to_string(h.rank));
    served.insert(h.rank);
  }
  return payload;
}

std::vector<uint8_t> join(const LaunchEnv& env, Clock::time_point deadline) {
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  std::string last_error = "no attempt";
  while (Clock::now() < deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    int rc = ::getaddrinfo(env.master_addr.c_str(), std::to_string(env.master_port).c_str(), &hints, &found);
    if (rc != 0) fail("rendezvous: cannot resolve MASTER_ADDR '{}': {}", env.master_addr, gai_strerror(rc));
    for (addrinfo* a = found; a; a = a->ai_next) {
      Socket s(::socket(a->ai_family, a->ai_socktype, a->ai_protocol));
      if (s.fd < 0) continue;
      if (::connect(s.fd, a->ai_addr, a->ai_addrlen) != 0) {
        last_error = std::strerror(errno);
        continue;
      }
      ::freeaddrinfo(found);
      const std::string who = "rank 0 at " + where;
      Hello h{kMagic, uint32_t(env.rank), uint32_t(env.world)};
      send_all(s.fd, &h, sizeof(h), deadline, who);
      uint32_t size = 0;
      recv_all(s.fd, &size, sizeof(size), deadline, who);
      if (size > (1u << 20)) fail("rendezvous: {} announced {} bytes; not an adept rank 0", who, size);
      std::vector<uint8_t> payload(size);
      recv_all(s.fd, payload.data(), size, deadline, who);
      uint8_t ack = 1;
      send_all(s.fd, &ack, 1, deadline, who);
      return payload;
    }
    ::freeaddrinfo(found);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 may not listen yet
  }
  fail("rendezvous: rank {} could not reach rank 0 at {} ({}); is rank 0 running, and MASTER_ADDR the address of "
       "its host?",
       env.rank, where, last_error);
}

}  // namespace

std::vector<uint8_t> exchange_bytes(const LaunchEnv& env, const std::vector<uint8_t>& payload,
                                    double timeout_seconds) {
  if (env.world <= 1) return payload;
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(timeout_seconds * 1000.0));
  return env.rank == 0 ? serve(env, payload, deadline) : join(env, deadline);
}

}  // namespace adept::dist
