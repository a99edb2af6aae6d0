#!/usr/bin/env bash
# Failover time on loopback (issue 17 part 4): three real `domicile node` processes (Dublin A, Dublin B,
# Hamar; one EEA group, base timing 100 ms / 0.5-1 s), the leader SIGKILLed FAILOVER_ROUNDS times; prints
# each round's time to a new leader (as a survivor's status reports it) and to the client's next
# acknowledged put, then the median and max of each: `cargo bench --bench failover` (benches/failover.rs),
# an optimised build (until 2026-12-06 an `#[ignore]`d test in the debug build; docs/performance.md).
#
#   bash benches/failover.sh                                        # 5 rounds
#   FAILOVER_ROUNDS=9 DOMICILE_BIN=/path/to/old/domicile bash benches/failover.sh   # another build's nodes
#
# Knobs: FAILOVER_ROUNDS (5, at most 50), FAILOVER_CALL_TIMEOUT_MS (each call's deadline, 2000),
# DOMICILE_BIN (the node binary; default the one cargo builds), FAILOVER_LOG_DIR (append each node's log to
# node-ID.log there, filtered by RUST_LOG), FAILOVER_PROMPT_ELECTIONS=0 (nodes without election prompts),
# TIME_LIMIT (seconds, 900). Loopback
# only; every node is stopped by pid when the test ends (its guards), and the whole run by timeout(1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
echo "== $(date -u '+%F %T UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git -C "$ROOT" rev-parse --short HEAD)" >&2
cd "$ROOT"
timeout --kill-after=30 "${TIME_LIMIT:-900}" cargo bench --quiet -p domicile --bench failover
echo "== done $(date -u '+%F %T UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
