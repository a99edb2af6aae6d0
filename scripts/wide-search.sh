#!/usr/bin/env bash
# The wide random search that CI does not run (docs/testing.md): every property test with a fresh seed and
# many cases, the storage crash test with a fresh seed, and a window of simulator seeds past CI's, round after
# round with new seeds until the time is up. CI replays fixed seeds only, so a new case is found here, never
# by a submission that did not cause it.
#
#   scripts/wide-search.sh                  rounds with fresh seeds for MINUTES (default 10) minutes
#   SEED=N scripts/wide-search.sh           one round with seed N: replays a round this script printed
#   CASES=N                                 cases per property test (default 100000)
#   SIM_SEEDS=N                             simulator seeds per fault scenario (default 64)
#
# Each round prints its seed. A failing property test appends its case to the test's regression file
# (`*.proptest-regressions`, beside it): commit that line with the fix, and CI replays it from then on. Every
# failure's replay command is also appended to target/wide-search-failures.txt. Exits 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
minutes=${MINUTES:-10}
cases=${CASES:-100000}
sim_seeds=${SIM_SEEDS:-64}
failures="${CARGO_TARGET_DIR:-target}/wide-search-failures.txt"
mkdir -p "$(dirname "$failures")"
failed=0

fail() {
  echo "wide search: FAILED: $1" | tee -a "$failures"
  failed=1
}

# Every test target with a proptest! block, as "package target" ("package --lib" for one in src/).
property_targets() {
  grep -rl --include='*.rs' --exclude-dir=target 'proptest!' . | sort | while read -r file; do
    crate=${file%%/src/*}
    crate=${crate%%/tests/*}
    package=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$crate/Cargo.toml" | head -1)
    case $file in
      */tests/*) echo "$package --test=$(basename "$file" .rs)" ;;
      *) echo "$package --lib" ;;
    esac
  done | sort -u
}

round() {
  local seed=$1
  echo "wide search: seed $seed (replay this round: SEED=$seed scripts/wide-search.sh)"
  property_targets | while read -r package target; do
    echo "wide search: $package $target, $cases cases"
    PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases cargo test -q --release -p "$package" "$target" ||
      echo "PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases cargo test --release -p $package $target" >"$round_failed"
  done
  if [ -s "$round_failed" ]; then
    fail "$(cat "$round_failed")"
    : >"$round_failed"
  fi

  echo "wide search: storage crash test"
  DOMICILE_CRASH_SEED=$seed cargo test -q --release -p storage --test crash ||
    fail "DOMICILE_CRASH_SEED=$seed cargo test -p storage --test crash"

  # CI sweeps seeds 1..65; this window starts past them and moves with the round's seed.
  local first=$((1000 + seed % 1000000000))
  local last=$((first + sim_seeds))
  for scenario in failover site-outage chaos; do
    echo "wide search: sim sweep --scenario $scenario --seeds $first..$last"
    "$sim" sweep --scenario "$scenario" --seeds "$first..$last" ||
      fail "sim sweep --scenario $scenario --seeds $first..$last (each failure above prints its replay command)"
  done
}

cargo build -q --release -p simulator --bin sim || exit 1
sim="${CARGO_TARGET_DIR:-target}/release/sim"
round_failed=$(mktemp)
trap 'rm -f "$round_failed"' EXIT

if [ -n "${SEED:-}" ]; then
  round "$SEED"
else
  deadline=$((SECONDS + minutes * 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    round "$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')"
  done
fi
if [ "$failed" -eq 0 ]; then
  echo "wide search: nothing found"
else
  echo "wide search: failures listed in $failures"
fi
exit "$failed"
