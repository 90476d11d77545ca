#include "dist/launch_env.hpp"

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <optional>

#include "core/error.hpp"

namespace adept::dist {

namespace {

constexpr int kDefaultPort = 29500;

std::optional<std::string> lookup(const EnvLookup& getenv, const char* name) {
  const char* v = getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

std::optional<int> integer(const EnvLookup& getenv, const char* name, int min_value) {
  std::optional<std::string> v = lookup(getenv, name);
  if (!v) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  long x = std::strtol(v->c_str(), &end, 10);
  if (errno != 0 || end == v->c_str() || *end != '\0' || x < min_value || x > INT_MAX)
    fail("launch environment: {}='{}' is not an integer >= {}", name, *v, min_value);
  return int(x);
}

// One launcher's view: its rank / world / local rank variables, all or none present.
struct View {
  std::string launcher;
  std::optional<int> rank, world, local_rank;
};

View read_view(const EnvLookup& getenv, const char* launcher, const char* rank_var, const char* world_var,
               const char* local_var) {
  View v;
  v.launcher = launcher;
  v.rank = integer(getenv, rank_var, 0);
  v.world = integer(getenv, world_var, 1);
  v.local_rank = local_var ? integer(getenv, local_var, 0) : std::nullopt;
  if (v.rank.has_value() != v.world.has_value())
    fail("launch environment ({}): {} and {} must be set together ({} is missing)", launcher, rank_var, world_var,
         v.rank ? world_var : rank_var);
  if (v.rank && *v.rank >= *v.world)
    fail("launch environment ({}): {}={} is not below {}={}", launcher, rank_var, *v.rank, world_var, *v.world);
  return v;
}

}  // namespace

LaunchEnv read_launch_env(const EnvLookup& getenv) {
  View torchrun = read_view(getenv, "torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK");
  View mpi = read_view(getenv, "openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK");
  const char* slurm_world = lookup(getenv, "SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
  View slurm = read_view(getenv, "slurm", "SLURM_PROCID", slurm_world, "SLURM_LOCALID");

  // The first launcher present decides; any other present must agree with it (torchrun
  // inside an srun allocation sets both, and they must describe the same process).
  LaunchEnv env;
  const View* chosen = nullptr;
  for (const View* v : {&torchrun, &mpi, &slurm}) {
    if (!v->rank) continue;
    if (!chosen) {
      chosen = v;
      continue;
    }
    if (*v->rank != *chosen->rank || *v->world != *chosen->world)
      fail("launch environment: {} says rank {} of {}, {} says rank {} of {}; launch with one of them", chosen->launcher,
           *chosen->rank, *chosen->world, v->launcher, *v->rank, *v->world);
  }
  if (!chosen) return env;  // one process
  env.launcher = chosen->launcher;
  env.rank = *chosen->rank;
  env.world = *chosen->world;
  env.local_rank = chosen->local_rank.value_or(env.world == 1 ? 0 : -1);
  if (env.local_rank < 0)
    fail("launch environment ({}): rank {} of {} has no local rank (LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_RANK / "
         "SLURM_LOCALID), so it cannot pick its GPU",
         env.launcher, env.rank, env.world);

  std::optional<std::string> addr = lookup(getenv, "MASTER_ADDR");
  if (!addr && env.launcher == "slurm") addr = lookup(getenv, "SLURM_LAUNCH_NODE_IPADDR");
  if (!addr && env.launcher == "openmpi") {
    std::optional<int> local_size = integer(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", 1);
    if (local_size && *local_size == env.world) addr = "127.0.0.1";
  }
  if (!addr && env.launcher == "torchrun" && env.world > 1)
    fail("launch environment (torchrun): WORLD_SIZE={} but MASTER_ADDR is not set", env.world);
  if (!addr && env.world > 1)
    fail("launch environment ({}): {} ranks over several nodes need MASTER_ADDR (the host of rank 0){}", env.launcher,
         env.world, env.launcher == "openmpi" ? "; pass it with mpirun -x MASTER_ADDR=<host>" : "");
  if (addr) env.master_addr = *addr;
  std::optional<int> port = integer(getenv, "MASTER_PORT", 1);
  if (port && *port > 65535) fail("launch environment: MASTER_PORT={} is not a TCP port", *port);
  if (!port && env.launcher == "torchrun" && env.world > 1)
    fail("launch environment (torchrun): WORLD_SIZE={} but MASTER_PORT is not set", env.world);
  env.master_port = port.value_or(kDefaultPort);
  return env;
}

LaunchEnv read_launch_env() {
  return read_launch_env([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace adept::dist
