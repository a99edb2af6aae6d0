#!/usr/bin/env bash
# A shard split at volume (issue 19): three real `domicile node` processes on loopback, a group of RECORDS
# records of VALUE_BYTES bytes loaded through the client library, then `domicile shard split` (the CLI, as
# a process) moving half its range into a reserve group while clients keep writing. Prints the report (copy
# rate, the moving range's unavailability from fence to publication, client write p50/p99 before and
# during, peak RSS per node, and the checks: checksum, acknowledged writes, the moved range gone from the
# old group, bad input) and keeps it as JSON in $RESULTS.
#
#   bash benches/split.sh                                   # 1,000,000 records x 1 KiB (about 1 GB)
#   RECORDS=100000 bash benches/split.sh                    # a smaller run
#   INTERRUPT=1 bash benches/split.sh                       # kill the CLI mid-copy and after the fence
#
# Knobs (environment): RECORDS (1000000), VALUE_BYTES (1024), IN_FLIGHT (128 puts at a time during the
# load), LIVE_WRITERS (8 closed-loop writers before and during the split), BASELINE_S (20), INTERRUPT
# (unset), BENCH_DIR (where the cluster's data goes; must not be tmpfs), RESULTS (target/split-bench),
# TIME_LIMIT (seconds for the whole run, 7200). Every process is stopped by pid on exit (the program's own
# guards), and the whole run by timeout(1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECORDS=${RECORDS:-1000000}
VALUE_BYTES=${VALUE_BYTES:-1024}
RESULTS=${RESULTS:-$ROOT/target/split-bench}
TIME_LIMIT=${TIME_LIMIT:-7200}

(cd "$ROOT" && cargo build --release --quiet -p domicile --bin domicile -p cluster-bench --bin split-bench)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

mkdir -p "$RESULTS" "${BENCH_DIR:-$ROOT/target}"
WORK=$(mktemp -d "${BENCH_DIR:-$ROOT/target}/split.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
echo "== $(date -u '+%F %T UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== records $RECORDS x $VALUE_BYTES B, data in $WORK" >&2
INTERRUPT_FLAG=()
if [[ -n "${INTERRUPT:-}" ]]; then INTERRUPT_FLAG=(--interrupt); fi
timeout --kill-after=30 "$TIME_LIMIT" "$TARGET_DIR/release/split-bench" \
    --domicile "$TARGET_DIR/release/domicile" \
    --dir "$WORK/cluster" \
    --records "$RECORDS" \
    --value-bytes "$VALUE_BYTES" \
    --in-flight "${IN_FLIGHT:-128}" \
    --live-writers "${LIVE_WRITERS:-8}" \
    --baseline-s "${BASELINE_S:-20}" \
    --time-limit-s "$TIME_LIMIT" \
    "${INTERRUPT_FLAG[@]}" \
    --out "$RESULTS/split-$STAMP.json" | tee "$RESULTS/split-$STAMP.txt"
echo "== done $(date -u '+%F %T UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg); $RESULTS/split-$STAMP.json" >&2
