#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every decoder of bytes from the network or the disk:
# the targets in fuzz/fuzz_targets/, each on its committed seed corpus (fuzz/corpus/TARGET/). See
# docs/testing.md#fuzzing.
#
#   scripts/fuzz.sh                   every target for FUZZ_SECONDS (default 300) each, one after the other
#   scripts/fuzz.sh ci                what CI runs: every target for FUZZ_RUNS executions (default 2000)
#                                     with seed 1, within FUZZ_SECONDS (default 30) each, built unoptimised
#                                     (half the build's CPU time; the short runs do not need the speed)
#   scripts/fuzz.sh [ci] TARGET...    only these targets
#
#   FUZZ_SECONDS=N FUZZ_RUNS=N        time and executions per target (-1: unbounded, the wide default)
#   FUZZ_SEED=N                       libFuzzer's seed (CI: 1; wide: 0, a fresh one each run)
#   FUZZ_DEV=1|0                      build unoptimised (`cargo fuzz --dev`; CI's default) or optimised (the
#                                     wide default); both with debug assertions, overflow checks and ASan
#   FUZZ_TARGET_DIR=DIR               where the targets are built (default fuzz/target)
#   FUZZ_TOOLCHAIN=stable|nightly     which toolchain builds (default: nightly if rustup has it, else stable
#                                     with RUSTC_BOOTSTRAP=1: the sanitizer flags are nightly-only)
#
# Limits: 512 MB of RSS and 256 MB in one allocation (a decoder that allocates what its input claims trips
# them), 10 s for one input. New coverage goes to a scratch corpus (target/fuzz-corpus/TARGET/), never into the
# committed seeds. A crash leaves its input in fuzz/artifacts/TARGET/ and the exact command that replays it:
# turn it into a regression test in the crate that owns the decoder. Prints each target's total executions,
# then `fuzz: N passed, M failed`; exits 1 if any target failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

mode=wide
if [ "${1:-}" = ci ]; then
  mode=ci
  shift
fi
if [ "$mode" = ci ]; then
  seconds=${FUZZ_SECONDS:-30}
  runs=${FUZZ_RUNS:-2000}
  seed=${FUZZ_SEED:-1}
  dev=${FUZZ_DEV:-1}
else
  seconds=${FUZZ_SECONDS:-300}
  runs=${FUZZ_RUNS:--1}
  seed=${FUZZ_SEED:-0}
  dev=${FUZZ_DEV:-0}
fi
profile=()
if [ "$dev" = 1 ]; then profile=(--dev); fi
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then profile+=(--target-dir "$FUZZ_TARGET_DIR"); fi

toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=nightly; else toolchain=stable; fi
fi
if [ "$toolchain" = nightly ]; then
  cargo_fuzz=(cargo +nightly fuzz)
else
  # Stable rustc takes the -Z sanitizer flags cargo-fuzz passes only when told it may.
  export RUSTC_BOOTSTRAP=1
  cargo_fuzz=(cargo +stable fuzz)
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2 || exit 1

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cd fuzz/fuzz_targets && ls ./*.rs | sed 's|^\./||; s|\.rs$||' | sort)
fi

echo "fuzz: toolchain $toolchain ($(rustc "+$toolchain" --version)), ${#targets[@]} targets, mode $mode, $([ "$dev" = 1 ] && echo unoptimised || echo optimised) build"
started=$(date +%s)
# `cargo fuzz build` builds every target, or the one it is given.
if [ "$#" -eq 0 ]; then build=(""); else build=("${targets[@]}"); fi
for target in "${build[@]}"; do
  if ! "${cargo_fuzz[@]}" build "${profile[@]}" --fuzz-dir fuzz ${target:+"$target"} >"${TMPDIR:-/tmp}/fuzz-build.log" 2>&1; then
    grep -v '^ *Compiling ' "${TMPDIR:-/tmp}/fuzz-build.log" | tail -40
    echo "fuzz: 0 passed, 1 failed"
    exit 1
  fi
done
echo "fuzz: built in $(($(date +%s) - started)) s"

passed=0
failed=0
for target in "${targets[@]}"; do
  scratch="${CARGO_TARGET_DIR:-target}/fuzz-corpus/$target"
  # CI starts from the committed seeds alone, so a run's outcome depends on nothing left by an earlier one.
  if [ "$mode" = ci ]; then rm -rf "$scratch"; fi
  mkdir -p "$scratch" "fuzz/artifacts/$target"
  output=$(mktemp)
  "${cargo_fuzz[@]}" run "${profile[@]}" --fuzz-dir fuzz "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -runs="$runs" -seed="$seed" \
    -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=10 -print_final_stats=1 >"$output" 2>&1
  code=$?
  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$output" | grep -o '[0-9]*$' | tail -1)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$output" | tail -1)
  if [ "$code" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $target: ok, ${executions:-?} executions (${took:-no summary})"
  else
    failed=$((failed + 1))
    echo "fuzz $target: FAILED (exit $code) after ${executions:-?} executions"
    grep -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written|Reproduce with|cargo fuzz run' "$output" | head -20
  fi
  rm -f "$output"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
