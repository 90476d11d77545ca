// Who this process is in a data-parallel job, read from the launcher's environment.
//
// One process per GPU. Three launchers are understood, so users keep the tool their
// cluster already has:
//   torchrun-style  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   Open MPI        OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (mpirun -np N); the master
//                   address is MASTER_ADDR (mpirun -x MASTER_ADDR=host), or 127.0.0.1 when
//                   every rank is on one node (OMPI_COMM_WORLD_LOCAL_SIZE == SIZE)
//   Slurm           SLURM_PROCID, SLURM_NTASKS (SLURM_STEP_NUM_TASKS inside a step),
//                   SLURM_LOCALID (srun); master from MASTER_ADDR, else
//                   SLURM_LAUNCH_NODE_IPADDR
// MASTER_PORT defaults to 29500 where the launcher does not set it. When none of these is
// set the job is one process (rank 0 of 1). A variable that is malformed, or two
// launchers that disagree about the rank or world size, is an adept::Error naming it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace adept::dist {

struct LaunchEnv {
  int rank = 0;
  int world = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "single";  // single | torchrun | openmpi | slurm
  bool distributed() const { return world > 1; }
};

// getenv stands in for ::getenv (tests pass a map). Throws adept::Error.
using EnvLookup = std::function<const char*(const char* name)>;
LaunchEnv read_launch_env(const EnvLookup& getenv);
LaunchEnv read_launch_env();  // the process environment

}  // namespace adept::dist
