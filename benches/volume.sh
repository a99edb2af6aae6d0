#!/usr/bin/env bash
# A legacy group migrated at volume (issue #16 part 4): five real `domicile node` processes on loopback,
# a group fenced to the EEA with two of its three voters in Ashburn, RECORDS records of VALUE_BYTES bytes
# loaded through the client library, then `domicile placement apply` moving it into the EEA while a client
# keeps writing. Prints the report (copy rate per new replica, peak RSS per node, write latency before and
# during, checksum, writes lost, purges, residency) and keeps it as JSON in $RESULTS.
#
#   bash benches/volume.sh                                   # 1,000,000 records x 1 KiB (about 1 GB)
#   RECORDS=100000 VALUE_BYTES=1024 bash benches/volume.sh   # a smaller run
#
# Knobs (environment): RECORDS (1000000), VALUE_BYTES (1024), IN_FLIGHT (128 puts at a time during the
# load), LIVE_WRITERS (8 closed-loop writers before and during the migration; 0: none, what a copy does
# with the machine to itself, a diagnostic that measures no latency) or LIVE_RATE (instead,
# this many writes a second on a fixed schedule, latency counted from when each was due), BASELINE_S (20),
# BENCH_DIR (where the cluster's data goes; must not be tmpfs), RESULTS (target/volume-bench), TIME_LIMIT
# (seconds for the whole run, 7200), COPIES (`placement apply --copies`: one-at-a-time or side-by-side;
# apply's default unless set), SNAPSHOT_BUILD_MB_PER_S (the nodes' `[raft] snapshot_build_mb_per_s`; their
# default unless set), KEEP_LOGS (1: the nodes' and apply's logs are kept beside the report),
# DOMICILE_BIN (another build of the node and CLI to run, for a before/after comparison; this checkout's
# release build by default). Every process is stopped by pid on exit (the program's own guards),
# and the whole run by timeout(1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECORDS=${RECORDS:-1000000}
VALUE_BYTES=${VALUE_BYTES:-1024}
RESULTS=${RESULTS:-$ROOT/target/volume-bench}
TIME_LIMIT=${TIME_LIMIT:-7200}

(cd "$ROOT" && cargo build --release --quiet -p domicile --bin domicile -p cluster-bench --bin volume-bench)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

mkdir -p "$RESULTS" "${BENCH_DIR:-$ROOT/target}"
WORK=$(mktemp -d "${BENCH_DIR:-$ROOT/target}/volume.XXXXXX")
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
keep_logs() {
    if [ "${KEEP_LOGS:-0}" = 1 ]; then
        mkdir -p "$RESULTS/volume-$STAMP-logs"
        cp "$WORK"/cluster/*.log "$WORK"/cluster/apply.stderr "$RESULTS/volume-$STAMP-logs/" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap keep_logs EXIT
echo "== $(date -u '+%F %T UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== records $RECORDS x $VALUE_BYTES B, data in $WORK" >&2
# A VM whose kernel reports free pages to its hypervisor pays a host fault for every page it touches again
# after handing it back: a copy, which fills page cache, then costs more CPU per byte than the same build on
# a machine (docs/performance.md, "why the second copy is slow here"). Said in the header, so runs on such a
# VM are not compared with others unawares.
REPORTING=/sys/module/page_reporting/parameters
reported_kib() { cat "$REPORTING/reported_kib" 2>/dev/null || echo 0; }
if [ -r "$REPORTING/page_reporting_order" ]; then
    echo "== free page reporting to the hypervisor: order $(cat "$REPORTING/page_reporting_order"), min_free_ms $(cat "$REPORTING/min_free_ms" 2>/dev/null || echo '?'), $(( $(reported_kib) / 1024 )) MiB reported so far" >&2
fi
REPORTED_BEFORE=$(reported_kib)
if [ -n "${LIVE_RATE:-}" ]; then LIVE=(--live-rate "$LIVE_RATE"); else LIVE=(--live-writers "${LIVE_WRITERS:-8}"); fi
timeout --kill-after=30 "$TIME_LIMIT" "$TARGET_DIR/release/volume-bench" \
    --domicile "${DOMICILE_BIN:-$TARGET_DIR/release/domicile}" \
    --dir "$WORK/cluster" \
    --records "$RECORDS" \
    --value-bytes "$VALUE_BYTES" \
    --in-flight "${IN_FLIGHT:-128}" \
    "${LIVE[@]}" \
    --baseline-s "${BASELINE_S:-20}" \
    --time-limit-s "$TIME_LIMIT" \
    ${COPIES:+--copies "$COPIES"} \
    ${SNAPSHOT_BUILD_MB_PER_S:+--snapshot-build-mb-per-s "$SNAPSHOT_BUILD_MB_PER_S"} \
    --out "$RESULTS/volume-$STAMP.json" | tee "$RESULTS/volume-$STAMP.txt"
echo "== done $(date -u '+%F %T UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg); $RESULTS/volume-$STAMP.json" >&2
if [ -r "$REPORTING/reported_kib" ]; then
    echo "== free memory reported to the hypervisor during the run: $(( ($(reported_kib) - REPORTED_BEFORE) / 1024 )) MiB" >&2
fi
