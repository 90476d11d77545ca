# shellcheck shell=bash
# The parts shared by the device checks of flash4's Hopper (sm90a) kernels,
# scripts/hopper_{bwd,varlen,det,fwd256}_check.sh: sourced by them, not run.
#
# A check calls check_setup first; the functions then use
#   OUT      results folder (the OUT variable, default ./NAME given to check_setup), LOG its log
#   B        build folder (the BUILD variable, default build-gpu)
#   T        the flash4-only GPU test binary, $B/flash4_gpu_tests
#   summary  the lines that note() keeps for the summary printed last
#   START, BUDGET  (checks with a time budget, for budget / time_left / finish) when the check
#            started and the seconds it may take, both set by the check.

# check_setup NAME: $OUT (default ./NAME) created, $LOG, $B, $T and an empty summary.
check_setup() {
  OUT=${OUT:-$PWD/$1}
  mkdir -p "$OUT"
  LOG=$OUT/log
  B=${BUILD:-build-gpu}
  T=$B/flash4_gpu_tests
  summary=()
}

# check_options ARG...: a check's one option, --no-bench (BENCH=0, else BENCH=1); any other
# argument ends the check (exit 2).
check_options() {
  local arg
  BENCH=1
  for arg in "$@"; do
    case $arg in
      --no-bench) BENCH=0 ;;
      *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
  done
}

# check_start NAME SECONDS ARG...: check_setup NAME, BUDGET (default SECONDS), check_options ARG...,
# START now.
check_start() {
  check_setup "$1"
  BUDGET=${BUDGET:-$2}
  shift 2
  check_options "$@"
  START=$(date +%s)
}

say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
# note LINE: said now and printed again in the summary.
note() { summary+=("$*"); say "$*"; }
print_summary() { printf '%s\n' "${summary[@]}"; }

# time_left: seconds left of the check's BUDGET.
time_left() { echo $((BUDGET - ($(date +%s) - START))); }
# budget LIMIT: seconds for a stage: its own LIMIT, cut to what is left of the budget (at least 10).
budget() {
  local left=$(time_left)
  [ "$left" -lt "$1" ] && echo $((left > 10 ? left : 10)) || echo "$1"
}
# finish: the summary (with the check's seconds), then the bench table if there is one. Status 0:
# the summary, not the exit status, says what failed (a missing bench table is not a failure).
finish() {
  say "summary ($(($(date +%s) - START)) s)"
  print_summary
  if [ -f "$OUT/bench_table.md" ]; then cat "$OUT/bench_table.md"; fi
  return 0
}

# ---- build ------------------------------------------------------------------------------
# The test and bench binaries are built by nvcc against libflash4.a alone (no adept).
NV=(nvcc -std=c++20 -O2 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -Itests -Iflash4/include
    -Iflash4/src)

# unpack_device_deps: the carried Debian packages (.device-carry/deps.tar.xz, from
# scripts/make_device_carry.sh) unpacked over / once, when carried.
unpack_device_deps() {
  if [ ! -f .device-carry/deps.tar ] && [ -f .device-carry/deps.tar.xz ]; then
    xz -dc .device-carry/deps.tar.xz > .device-carry/deps.tar
  fi
  [ -f .device-carry/deps.tar ] && tar xf .device-carry/deps.tar -C / --skip-old-files 2>/dev/null
  return 0
}

# build_flash4: the carried build dependencies unpacked (deps.tar, or deps.tar.xz when only that
# was carried), GPU and nvcc versions logged, $B configured for sm_90a only and flash4 built with
# ninja -j$NINJA_JOBS (default 16; its time noted); exits on a failure.
build_flash4() {
  unpack_device_deps
  say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null); $(nvcc --version | tail -1)"
  cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DADEPT_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" \
    >>"$LOG" 2>&1 || { say "configure failed"; tail -30 "$LOG"; exit 1; }
  local t0=$(date +%s%N)
  ninja -C $B -j"${NINJA_JOBS:-16}" flash4 >>"$LOG" 2>&1 || { say "flash4 build failed"; grep -A12 -m3 "error" "$LOG"; exit 1; }
  note "flash4 built in $(( ($(date +%s%N) - t0) / 1000000 )) ms (-j${NINJA_JOBS:-16})"
}

# up_to_date OBJECT SOURCE: OBJECT is newer than SOURCE and than every header it may include
# (tests/, flash4/include, flash4/src), so two checks run back to back in one device call
# compile the tests once.
up_to_date() {
  [ -f "$1" ] && [ "$1" -nt "$2" ] &&
    [ -z "$(find tests flash4/include flash4/src \( -name '*.hpp' -o -name '*.cuh' -o -name '*.h' \) -newer "$1" -print -quit)" ]
}

# compile_tests_in_background: every tests/gpu/flash4_*.cpp / .cu not up to date compiled into
# $B/t, all at once; their pids in $pids, for wait_for_compiles.
compile_tests_in_background() {
  local f o
  mkdir -p $B/t $B/bin
  pids=()
  for f in tests/gpu/flash4_*.cpp tests/gpu/flash4_*.cu; do
    o=$B/t/$(basename "$f").o
    up_to_date "$o" "$f" && continue
    "${NV[@]}" -c "$f" -o "$o" >>"$LOG" 2>&1 &
    pids+=($!)
  done
}

# compile_bench: $B/bin/flash4-bench (unless up to date); returns nvcc's status.
compile_bench() {
  up_to_date $B/bin/flash4-bench bench/flash4_bench.cu && [ $B/bin/flash4-bench -nt $B/flash4/libflash4.a ] && return 0
  "${NV[@]}" bench/flash4_bench.cu $B/flash4/libflash4.a -lgomp -o $B/bin/flash4-bench >>"$LOG" 2>&1
}

# wait_for_compiles MESSAGE: waits for $pids; if one failed, says MESSAGE, shows the errors, exits.
wait_for_compiles() {
  local p
  for p in "${pids[@]}"; do
    wait "$p" || { say "$1"; grep -B2 -A8 -m5 "error" "$LOG"; exit 1; }
  done
}

# link_tests: $T from the compiled tests; exits on a failure.
link_tests() {
  "${NV[@]}" $B/t/*.o $B/flash4/libflash4.a -lgtest -lgtest_main -lgomp -lpthread -o $T >>"$LOG" 2>&1 ||
    { say "test link failed"; tail -20 "$LOG"; exit 1; }
}

# build_tests_and_bench: the tests and flash4-bench compiled side by side, the tests linked;
# exits on a failure.
build_tests_and_bench() {
  compile_tests_in_background
  compile_bench &
  pids+=($!)
  wait_for_compiles "a test / bench compile failed"
  link_tests
  say "tests and bench built"
}

# ---- bench ------------------------------------------------------------------------------
# bwd_bench_rows D ENV...: flash4-bench --d D under ENV (NAME=value ...), rows "S causal bwd
# bwd-det" (TFLOP/s), for A/B tables of backward switches.
# BIN=PATH first among ENV runs that flash4-bench instead (build_baseline's).
bwd_bench_rows() {
  local d=$1 bin=$B/bin/flash4-bench
  shift
  [[ ${1:-} == BIN=* ]] && { bin=${1#BIN=}; shift; }
  env "$@" timeout "$(budget 40)" "$bin" --d "$d" --repeats 10 --csv /tmp/flash4_bwd_rows.csv >>"$LOG" 2>&1
  awk -F, 'NR > 1 && $6 == "default" {print $2, $5, $10, $12}' /tmp/flash4_bwd_rows.csv
}

# bwd_ab_rows D ENV_A ENV_B LABEL_A LABEL_B: bwd_bench_rows D under ENV_A, then under ENV_B
# (NAME=value ..., words), as rows "| D | S | causal | bwd A | bwd B | B / A | bwd-det A | bwd-det B |
# B / A | fwd A | fwd B | B / A |" appended to $OUT/bench_table.md (its header first when the
# table does not exist); the forward's TFLOP/s come from the same runs (a backward switch should
# leave them alone; a change to shared code, e.g. wgmma descriptors, shows there).
bwd_ab_rows() {
  local d=$1
  if [ ! -f "$OUT/bench_table.md" ]; then
    { echo "| d | S | causal | bwd $4 | bwd $5 | ratio | bwd-det $4 | bwd-det $5 | ratio | fwd $4 | fwd $5 | ratio |"
      echo "|---|---|---|---|---|---|---|---|---|---|---|---|"; } >"$OUT/bench_table.md"
  fi
  # shellcheck disable=SC2086  # ENV_A / ENV_B: several words
  bwd_bench_rows "$d" $2 >"$OUT/bench_d${d}_a.txt"
  awk -F, 'NR > 1 && $6 == "default" {print $8}' /tmp/flash4_bwd_rows.csv >"$OUT/bench_d${d}_a_fwd.txt"
  # shellcheck disable=SC2086
  bwd_bench_rows "$d" $3 >"$OUT/bench_d${d}_b.txt"
  awk -F, 'NR > 1 && $6 == "default" {print $8}' /tmp/flash4_bwd_rows.csv >"$OUT/bench_d${d}_b_fwd.txt"
  paste -d' ' "$OUT/bench_d${d}_a.txt" "$OUT/bench_d${d}_b.txt" "$OUT/bench_d${d}_a_fwd.txt" "$OUT/bench_d${d}_b_fwd.txt" |
    awk -v d="$d" '{printf "| %s | %s | %s | %s | %s | %.3f | %s | %s | %.3f | %s | %s | %.3f |\n", d, $1, $2, $3, $7,
      ($3 > 0 ? $7 / $3 : 0), $4, $8, ($4 > 0 ? $8 / $4 : 0), $9, $10, ($9 > 0 ? $10 / $9 : 0)}' >>"$OUT/bench_table.md"
}

# bwd_ab_geomean: "bwd X bwd-det Y fwd Z (N rows)", the geometric means of bwd_ab_rows' ratios.
bwd_ab_geomean() {
  awk -F'|' 'NR > 2 && $7 + 0 > 0 {b += log($7); n++; if ($10 + 0 > 0) {x += log($10); m++}
    if ($13 + 0 > 0) {f += log($13); k++}}
    END {if (n) printf "bwd %.3f bwd-det %.3f fwd %.3f (%d rows)", exp(b / n), (m ? exp(x / m) : 0),
      (k ? exp(f / k) : 0), n}' "$OUT/bench_table.md"
}

# copy_sources DIR: DIR emptied and filled with this tree's sources (no build folders, no carried
# dependencies), for a second build beside this one.
copy_sources() {
  rm -rf "$1" && mkdir -p "$1"
  tar --exclude='./build*' --exclude=./.device-carry -cf - . | tar -xf - -C "$1"
}

# build_baseline PATCH: flash4-bench of this tree with PATCH reversed (the change under test
# undone; PATCH made here by `git diff > PATCH`, untracked so that it travels), built at
# /tmp/baseline/$B/bin/flash4-bench (absent when the patch or the build failed; run it in the
# background beside the tests, then look for that file).
build_baseline() {
  copy_sources /tmp/baseline
  (cd /tmp/baseline && patch -R -p1 -s <"$OLDPWD/$1" >>"$LOG" 2>&1) || { say "baseline: $1 does not reverse"; return; }
  (cd /tmp/baseline && build_flash4 && compile_bench) || { say "baseline build failed"; return; }
  say "baseline built ($1 reversed)"
}

# shared_lib BUILD SO: libflash4.so (SO) from BUILD's static library, cudart linked in, for the
# ctypes callers (bench/peers.py --ctypes, bench/env_ab.py); the linker's output to the log.
shared_lib() {
  g++ -shared -o "$2" -Wl,--whole-archive "$1"/flash4/libflash4.a -Wl,--no-whole-archive \
    -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread -lgomp >>"$LOG" 2>&1
}

# peers_with FILE LIMIT ENV... -- PEERS_ARGS...: bench/peers.py through the C ABI (a libflash4.so
# linked from $B's libflash4.a, removed after) under ENV (NAME=value words, may be none), no
# FA4, 10 repeats, PEERS_ARGS added, into $OUT/FILE within LIMIT seconds cut to the budget; the
# row count noted.
peers_with() {
  local file=$1 limit=$2 envs=()
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  if shared_lib "$B" "$OUT/libflash4.so"; then
    env ${envs[@]+"${envs[@]}"} timeout "$(budget "$limit")" python3 bench/peers.py --ctypes --lib "$OUT/libflash4.so" --no-fa4 \
      --repeats 10 "$@" > "$OUT/$file" 2>&1
    note "peers: $(grep -c '^ *[0-9]' "$OUT/$file") rows in $file"
    rm -f "$OUT/libflash4.so"
  else
    note "peers: libflash4.so did not link (see log)"
  fi
}

# pack_results: everything in $OUT but bench_table.md into $OUT/results.tar.gz (the device tool
# brings back only a few files).
pack_results() {
  (cd "$OUT" && tar czf /tmp/check_results.tar.gz --exclude=bench_table.md --exclude=results.tar.gz . &&
    find . -maxdepth 1 -type f ! -name bench_table.md -delete && mv /tmp/check_results.tar.gz results.tar.gz)
}

# ---- SASS -------------------------------------------------------------------------------
# hopper_object NAME: the object flash4's build made of src/hopper/NAME.cu.
hopper_object() { echo "$B/flash4/CMakeFiles/flash4.dir/src/hopper/$1.cu.o"; }
# dump_sass NAME: NAME's SASS into $OUT/sass_NAME.txt (pack_sass gathers the dumps).
dump_sass() { cuobjdump -sass "$(hopper_object "$1")" > "$OUT/sass_$1.txt" 2>&1; }
# sass_count ERE NAME: how many lines of NAME's SASS match ERE.
sass_count() { grep -cE "$1" "$OUT/sass_$2.txt"; }
# registers NAME: "COUNT REG:r STACK:s" for each register / stack use over NAME's kernels.
registers() {
  cuobjdump -res-usage "$(hopper_object "$1")" 2>&1 | grep -o "REG:[0-9]* STACK:[0-9]*" | sort | uniq -c | tr '\n' ' '
}
# pack_sass: the SASS dumps into $OUT/sass.txt.gz.
pack_sass() {
  cat "$OUT"/sass_*.txt | gzip > "$OUT/sass.txt.gz"
  rm -f "$OUT"/sass_*.txt
}

# ---- tests and sanitizers ---------------------------------------------------------------
# gtest_result FILE: gtest's PASSED / FAILED lines of FILE, on one line.
gtest_result() { grep -E '^\[  PASSED|^\[  FAILED' "$1" | head -2 | tr '\n' ' '; }

# max_after WORD: the largest number that follows WORD on the lines read (the worst error).
max_after() { awk -v f="$1" '{for (i = 1; i < NF; i++) if ($i == f) {print $(i + 1); break}}' | sort -g | tail -1; }

# worst_error SUITE FIELD DTYPE: the largest FIELD error (out, lse, dq, dk, dv) on the DTYPE
# (bf16 / fp16) error lines run_suite SUITE wrote to $OUT/tests_SUITE.txt.
worst_error() { grep -hE "^\[ errors \]" "$OUT/tests_$1.txt" 2>/dev/null | grep "$3" | max_after "$2"; }

# smoke FILTER SECONDS [ERE]: FILTER's tests with FLASH4_LOG=1 under a timeout of SECONDS into
# $OUT/smoke.txt, their error / result lines (and lines matching ERE) logged; returns their status.
smoke() {
  FLASH4_LOG=1 timeout "$2" $T --gtest_filter="$1" > "$OUT/smoke.txt" 2>&1
  local rc=$?
  grep -E "errors|flash4:|OK \]|FAILED|Failure|Expected|Which is${3:+|$3}" "$OUT/smoke.txt" | head -30 | tee -a "$LOG"
  return $rc
}

# smoke_says TEXT MEANING: after a smoke that passed, notes whether its FLASH4_LOG lines said
# TEXT (the path under test ran), or MEANING (what it means that they did not).
smoke_says() {
  if grep -q "$1" "$OUT/smoke.txt"; then
    note "smoke passed (FLASH4_LOG: $1)"
  else
    note "smoke passed, but FLASH4_LOG never said '$1': $2"
  fi
}

# stop_after_smoke NOTE FILTER SECONDS: after a failed smoke: NOTE noted, memcheck of FILTER's
# tests under a timeout of SECONDS (the end of its report into $OUT/memcheck.txt and shown), the
# summary; exits 1.
stop_after_smoke() {
  note "$1"
  timeout "$3" compute-sanitizer --tool memcheck $T --gtest_filter="$2" 2>&1 | tail -80 |
    tee "$OUT/memcheck.txt" | tail -30
  finish
  exit 1
}

# smoke_or_stop FILTER LIMIT MEMCHECK_LIMIT LIKELY [ERE [WHAT]]: smoke FILTER ERE under LIMIT seconds
# cut to the budget; if it fails, stop_after_smoke with a note naming LIKELY as the likely cause
# of a hang and memcheck ("of WHAT") under MEMCHECK_LIMIT seconds cut to the budget.
smoke_or_stop() {
  smoke "$1" "$(budget "$2")" "${5:-}"
  local rc=$?
  if [ $rc -ne 0 ]; then
    stop_after_smoke "SMOKE FAILED (rc $rc, 124 = timeout: a hang, likely $4); memcheck${6:+ of $6}:" \
      "$1" "$(budget "$3")"
  fi
}

# run_suite NAME FILTER LIMIT: one gtest run into $OUT/tests_NAME.txt under LIMIT seconds cut to
# the budget, its pass / fail counts and time noted; on a timeout (rc 124) the note says how to
# rerun the suite alone.
run_suite() {
  local name=$1 filter=$2 limit=$3 t=$(date +%s) rc=0 i
  say "tests: $name ($filter)${SHARDS:+ in $SHARDS shards}"
  if [ "${SHARDS:-1}" -gt 1 ]; then
    # SHARDS gtest processes side by side on the one GPU (most tests leave it idle between
    # kernels): the Hopper suites in ~4 minutes instead of ~10. Their outputs concatenated;
    # the status is the worst shard's.
    local pids=()
    for ((i = 0; i < SHARDS; i++)); do
      GTEST_TOTAL_SHARDS=$SHARDS GTEST_SHARD_INDEX=$i timeout "$(budget "$limit")" $T --gtest_filter="$filter" \
        > "$OUT/tests_${name}_shard$i.txt" 2>&1 &
      pids+=($!)
    done
    for i in "${!pids[@]}"; do
      wait "${pids[$i]}" || { local r=$?; ((r > rc)) && rc=$r; }
    done
    cat "$OUT"/tests_"${name}"_shard*.txt > "$OUT/tests_$name.txt" && rm -f "$OUT"/tests_"${name}"_shard*.txt
  else
    timeout "$(budget "$limit")" $T --gtest_filter="$filter" > "$OUT/tests_$name.txt" 2>&1
    rc=$?
  fi
  grep -E -A4 "Failure$" "$OUT/tests_$name.txt" | head -24 | tee -a "$LOG"
  note "$name: rc $rc in $(($(date +%s) - t)) s ($(grep -cE '^\[  (PASSED|FAILED)  \] [0-9]+ test' "$OUT/tests_$name.txt") result lines, $(grep -c '^\[       OK' "$OUT/tests_$name.txt") ok, $(grep -c '^\[  FAILED  \] .*(' "$OUT/tests_$name.txt") failed)"
  [ $rc -eq 124 ] && note "  $name timed out: rerun alone with $T --gtest_filter='$filter'"
}

# sanitize TOOL FILTER SECONDS: compute-sanitizer TOOL (exit status 9 on an error) on FILTER's
# tests under a timeout of SECONDS, into $OUT/TOOL.txt; returns its status.
sanitize() {
  timeout "$3" compute-sanitizer --tool $1 --error-exitcode 9 $T --gtest_filter="$2" > "$OUT/$1.txt" 2>&1
}

# The small cases the one-call checks run under compute-sanitizer: causal / window backward
# at d 64 / 128 / 256 (the split-query d 256 step among them), and two forward window cases.
SANITIZE_BWD_CASES='Window/Flash4HopperBackward.*/0_*:Window/Flash4HopperBackward.*/1_*:Window/Flash4HopperBackward.*/2_*'
SANITIZE_BWD_CASES+=':D256/Flash4HopperBackwardD256FlatDq.WithQueriesSplit*/1_*'
SANITIZE_FWD_CASES='Window/Flash4Hopper.*/0_*:Window/Flash4Hopper.*/4_*'

# sanitize_checks FILTER: memcheck, then racecheck, of FILTER's tests (90 s each at most).
sanitize_checks() {
  sanitize_stage memcheck "$1" 90
  sanitize_stage racecheck "$1" 90
}

# sanitize_stage TOOL FILTER LIMIT: sanitize under LIMIT seconds cut to the budget; its status,
# time and ERROR SUMMARY noted.
sanitize_stage() {
  local t=$(date +%s)
  sanitize "$1" "$2" "$(budget "$3")"
  note "$1 rc $? in $(($(date +%s) - t)) s ($(grep -E '(ERROR|RACECHECK) SUMMARY' "$OUT/$1.txt" | tail -1))"
}

# kernel_counts NAME ERE...: per kernel of NAME's SASS dump (dump_sass first), a line
# "KERNEL: ERE=count ..." for each ERE, the kernel named by its template arguments
# (attention_backward_sm90_kernel<D, T, deterministic, DqAdd> -> "d128 bf16 det0 bulk1").
kernel_counts() {
  local name=$1
  shift
  awk -v pats="$*" '
    function flush() { if (k != "") { line = k ":"; for (i = 1; i <= n; i++) line = line " " p[i] "=" (c[i] + 0); print line } }
    BEGIN { n = split(pats, p, " ") }
    /Function :/ {
      flush(); k = $NF; delete c
      if (match(k, /ILi[0-9]+E/)) d = substr(k, RSTART + 3, RLENGTH - 4); else d = "?"
      t = (k ~ /bfloat16/) ? "bf16" : "fp16"
      det = (k ~ /Lb1E/) ? "det1" : "det0"
      bulk = (k ~ /DqAddE1E/) ? "bulk1" : "bulk0"
      k = (k ~ /attention_backward/) ? "d" d " " t " " det " " bulk : substr(k, 1, 40)
      next
    }
    { for (i = 1; i <= n; i++) if ($0 ~ p[i]) c[i]++ }
    END { flush() }' "$OUT/sass_$name.txt"
}
