#!/usr/bin/env bash
# The WAN benchmark (issue 17 part 4): put latency against the physical limit, and failover time, on nodes
# in network namespaces with the multi-host suite's WAN shape (tests/multihost.rs, docs/testing.md).
#
#   sudo bash benches/wan.sh             # release build; prints a Markdown table and the failover rounds
#
# An EEA group led from Dublin A with voters in Dublin B (1.5 ms each way) and Hamar (30 ms), and an EU
# group led from Dublin A with both other voters in Frankfurt (20 ms), each written by one client in
# Dublin A, one put at a time (20 warm-up puts, then WAN_PUTS, default 300); the limit is the round trip
# to the nearest quorum member plus the median of 200 4-KiB fdatasyncs in the run's directory (TMPDIR:
# put it on the disk the nodes would use, not tmpfs). Then the EEA leader's process is SIGKILLed three
# times and the time to the client's next acknowledged put printed (each call's deadline
# WAN_CALL_TIMEOUT_MS, default 2000; WAN_FAILOVER_ROUNDS rounds, default 3; WAN_PROMPT_ELECTIONS=0 runs the
# nodes without election prompts, for a before/after in one sitting). PROFILE=debug runs the debug build.
#
# Needs root, iproute2, iptables and /dev/net/tun. Everything it starts (namespaces, node processes, by
# pid) is removed when the run ends; the run is bounded by 15 minutes. MULTIHOST_LOGS=DIR keeps the
# nodes' logs there (their RUST_LOG: the caller's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=()
[ "${PROFILE:-release}" = debug ] || profile=(--release)
echo "wan bench: $(date -u +%FT%TZ), $(uname -n), $(nproc) cores, $(git rev-parse --short HEAD), ${PROFILE:-release} build" >&2
DOMICILE_MULTIHOST=1 timeout 900 cargo test "${profile[@]}" --test multihost wan_put_latency_and_failover \
  -- --ignored --nocapture --test-threads=1 2>&1 | grep -E '^\||^fdatasync|^failover|^test result|panicked'
