#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer) for SECONDS each
# (default 60), one after the other, and prints one line of figures per target. Exits non-zero
# as soon as a target finds a crash, a panic, a leak or a hang (the input is kept under
# fuzz/artifacts/<target>/). New interesting inputs go to fuzz/work/<target>/ (not committed);
# the committed seeds in fuzz/corpus/<target>/ are read, never written.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_JOBS=2 nice -n 19 scripts/fuzz.sh 600     # the long campaign, two targets at a time
#
# On the stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take -Zsanitizer=address, which
# cargo-fuzz passes; no nightly toolchain is needed. FUZZ_SANITIZER=none builds without ASan
# (then nothing -Z is passed and RUSTC_BOOTSTRAP is not needed). See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
# Pinned: scripts/test.sh installs it once per machine; an installed copy of this version is reused.
cargo_fuzz_version=0.13.2
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
  echo "== installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install cargo-fuzz --version "=$cargo_fuzz_version" --locked
fi
export RUSTC_BOOTSTRAP=1
# Optimised, with debug assertions and overflow checks (cargo-fuzz's default); 16 codegen units
# instead of the default 1, so that each crate's build is spread over the cores.
build_flags=(--sanitizer "$sanitizer" --codegen-units 16)

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)" >&2
build_start=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "== built in $(( $(date +%s) - build_start )) s" >&2

logs=fuzz/work/logs
mkdir -p "$logs"

run_one() {
  local t=$1 seconds=$2
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
  local log="fuzz/work/logs/$t.log"
  local start rc=0
  start=$(date +%s)
  # -timeout: an input that takes over 10 s is a hang; -rss_limit_mb: over 2 GiB is a crash.
  cargo fuzz run "${build_flags[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
  local took=$(( $(date +%s) - start ))
  local done_line execs cov corpus per_s
  done_line=$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(grep -aoE 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  per_s=$(grep -aoE 'stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(echo "$done_line" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  corpus=$(echo "$done_line" | grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' | cut -d' ' -f2 || echo "?")
  if [ "$rc" -ne 0 ]; then
    echo "FAIL $t after ${took}s (exit $rc): see $log and fuzz/artifacts/$t/"
    grep -aE 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -5 || true
    return 1
  fi
  printf '%-18s %4ss  %9s execs  %6s exec/s  cov %5s  corpus %s (units/bytes)\n' "$t" "$took" "$execs" "$per_s" "$cov" "$corpus"
}
export -f run_one
export build_flags_str="${build_flags[*]}"

status=0
if [ "$jobs" -gt 1 ]; then
  # Each job re-declares the flags (arrays do not cross into the subshells xargs starts).
  printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'build_flags=($build_flags_str); run_one "$1" "$2"' _ {} "$seconds" || status=1
else
  for t in "${targets[@]}"; do
    run_one "$t" "$seconds" || { status=1; break; }
  done
fi
exit $status
