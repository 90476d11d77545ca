# shellcheck shell=bash
# The parts shared by the device checks of adept on whole GPUs, scripts/dp_check.sh and
# scripts/backend_gap_check.sh: sourced by them, not run. The check sets LOG (its log), START
# (when it started) and BUDGET (the seconds it may take) and reads status (0, 1 after a fail).

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
