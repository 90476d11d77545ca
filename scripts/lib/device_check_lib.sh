# shellcheck shell=bash
# The parts shared by the device checks of adept on whole GPUs (scripts/dp_check.sh,
# backend_gap_check.sh, train_loss_check.sh, step_kernels_check.sh): sourced by them, not run.
# The check sets LOG (its log), START (when it started), BUDGET (the seconds it may take) and,
# for build_sm90, BUILD (the build folder), and reads status (0, 1 after a fail).

# left LIMIT: seconds left of the budget, capped at LIMIT (at least 5).
left() {
  local l=$((BUDGET - ($(date +%s) - START)))
  ((l > $1)) && l=$1
  ((l < 5)) && l=5
  echo "$l"
}
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
# fail WHAT: said, and the check's status becomes 1; the check goes on.
status=0
# shellcheck disable=SC2034  # status is read by the check
fail() { say "FAILED: $*"; status=1; }

# cli_toml FILE EVAL_EVERY: the CLI checks' run config (the embedded tiny default, general
# held-out split by blocks, 8 rows a step, 600 steps unless --steps says otherwise, no
# checkpoints), held-out loss every EVAL_EVERY steps. Shared by dp_check.sh and
# backend_gap_check.sh so that their curves come from the same training.
cli_toml() {
  cat >"$1" <<TOML
[data]
general_split = "blocks"
[train]
backend = "cuda"
steps = 600
batch_size = 8
eval_every = $2
eval_batches = 4
checkpoint_every = 0
TOML
}

# build_sm90 TARGET...: the carried build dependencies unpacked (.device-carry/deps.tar), $BUILD
# configured for sm_90a (Release, Ninja) and the TARGETs built on every core; a fail names
# the step that broke.
build_sm90() {
  [ -f .device-carry/deps.tar ] && tar xf .device-carry/deps.tar -C / --skip-old-files 2>>"$LOG"
  say "configure and build $*"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" >>"$LOG" 2>&1 || { fail configure; return; }
  ninja -C "$BUILD" -j"$(nproc)" "$@" >>"$LOG" 2>&1 || fail "build $*"
}
