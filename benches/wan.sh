#!/usr/bin/env bash
# The WAN benchmark (issue 17 part 4): put latency against the physical limit, and failover time, on nodes
# in network namespaces with the multi-host suite's WAN shape (benches/wan.rs, tests/common/netns.rs,
# docs/testing.md).
#
#   sudo bash benches/wan.sh             # optimised build; prints a Markdown table and the failover rounds
#
# An EEA group led from Dublin A with voters in Dublin B (1.5 ms each way) and Hamar (30 ms), and an EU
# group led from Dublin A with both other voters in Frankfurt (20 ms), each written by one client in
# Dublin A, one put at a time (20 warm-up puts, then WAN_PUTS, default 300); the limit is the round trip
# to the nearest quorum member plus the median of 200 4-KiB fdatasyncs in the run's directory (TMPDIR:
# put it on the disk the nodes would use, not tmpfs). Then the EEA leader's process is SIGKILLed three
# times and the time to the client's next acknowledged put printed (each call's deadline
# WAN_CALL_TIMEOUT_MS, default 2000; WAN_FAILOVER_ROUNDS rounds, default 3; WAN_PROMPT_ELECTIONS=0 runs the
# nodes without election prompts, for a before/after in one sitting; DOMICILE_BIN=PATH runs that build of the
# node instead of this one's).
#
# Needs root, iproute2, iptables and /dev/net/tun. Everything it starts (namespaces, node processes, by
# pid) is removed when the run ends; the run is bounded by 15 minutes. MULTIHOST_LOGS=DIR keeps the
# nodes' logs there (their RUST_LOG: the caller's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "wan bench: $(date -u +%FT%TZ), $(uname -n), $(nproc) cores, $(git rev-parse --short HEAD)" >&2
DOMICILE_MULTIHOST=1 timeout 900 cargo bench -p domicile --bench wan
