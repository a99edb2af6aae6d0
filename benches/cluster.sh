#!/usr/bin/env bash
# The cluster benchmark: Domicile vs etcd on loopback, the same load generator and workload for both.
#
#   bash benches/cluster.sh            # compare: 3-node Domicile (1 group, 3 EEA sites) vs 3-member etcd
#   bash benches/cluster.sh groups     # Domicile alone: 1, 4 and 16 groups on the same 3 nodes, 256 clients
#   bash benches/cluster.sh all        # both
#
# From a fresh Debian machine it installs what it needs (etcd-server, etcd-client, protobuf-compiler),
# builds the release binaries, starts the clusters in a temporary directory (TLS on everywhere, fsync on:
# Domicile's log acknowledges only after fdatasync, etcd runs with its defaults), runs the steps, prints
# the Markdown report and keeps it, with the raw JSON lines, in $RESULTS (default target/cluster-bench).
# Every process it starts is stopped by pid on exit, on Ctrl-C and on timeout; the whole run is bounded by
# TIME_LIMIT seconds (default 1200).
#
# Knobs (environment): ROUNDS (3), CONNECTIONS (4: clients share at most this many connections, for both
# systems), SCALE_PERCENT (100: operation counts per step), BENCH_DIR (where the temporary directory goes;
# must not be tmpfs, or fsync would be free), ETCD_ALL_ENDPOINTS=1 (etcd clients talk to all members
# instead of the leader alone), STEPS (op:clients:operations,...), SYSTEMS ("domicile etcd"), DOMICILE_BIN
# (the node binary to run instead of the one just built), WORKER_THREADS (each node's runtime workers: by
# default `default`, which writes nothing and leaves the node's own default, one per core, as users run it;
# a number sets `worker_threads`, e.g. 1 to give three nodes on 2 cores a worker each, as runs before
# 2026-12-04 did).
set -euo pipefail

MODE=${1:-compare}
case "$MODE" in compare | groups | all) ;; *) echo "usage: $0 [compare|groups|all]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Bound the whole run: re-run this script under timeout(1), which signals us (and our process group).
if [[ -z "${CLUSTER_BENCH_BOUNDED:-}" ]]; then
    export CLUSTER_BENCH_BOUNDED=1
    exec timeout --kill-after=30 "${TIME_LIMIT:-1200}" bash "${BASH_SOURCE[0]}" "$@"
fi

ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-4}
SCALE_PERCENT=${SCALE_PERCENT:-100}
RESULTS=${RESULTS:-$ROOT/target/cluster-bench}
scaled() { echo $(( $1 * SCALE_PERCENT / 100 )); }

log() { printf '\n== %s\n' "$*" >&2; }

# ---- what the machine needs ---------------------------------------------------------------------------
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

log "building (release)"
# `--bin` applies to every selected package: name both binaries, or cluster-bench's is not built.
(cd "$ROOT" && cargo build --release --quiet -p domicile --bin domicile -p cluster-bench --bin cluster-bench \
    --features cluster-bench/etcd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# DOMICILE_BIN runs another build of the node (e.g. a saved copy of the previous version) against the
# same load generator.
DOMICILE=${DOMICILE_BIN:-$TARGET_DIR/release/domicile}
BENCH=$TARGET_DIR/release/cluster-bench

# ---- processes: every pid we start, stopped on any exit --------------------------------------------------
PIDS=()
WORK=""

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        log "stopping ${#PIDS[@]} processes started by this run"
        stop_pids "${PIDS[@]}"
    fi
    [[ -n "$WORK" && -d "$WORK" ]] && rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so a signal's trap runs at once.
run() {
    "$@" &
    local pid=$! status=0
    PIDS+=("$pid")
    wait "$pid" || status=$?
    forget_pids "$pid"
    return "$status"
}

forget_pids() {
    local keep=() pid gone
    for pid in "${PIDS[@]}"; do
        for gone in "$@"; do [[ $pid == "$gone" ]] && continue 2; done
        keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

mkdir -p "$RESULTS"
base=${BENCH_DIR:-${TMPDIR:-/tmp}}
WORK=$(mktemp -d "$base/domicile-bench.XXXXXX")
fs=$(stat -f -c %T "$WORK")
if [[ $fs == tmpfs || $fs == ramfs ]]; then
    echo "$WORK is on $fs: fsync costs nothing there, the numbers would be meaningless. Set BENCH_DIR." >&2
    exit 2
fi

# ---- etcd: three members, TLS for clients and peers, default fsync -------------------------------------
ETCD_PIDS=()
ETCD_ENDPOINTS=""
start_etcd() {
    local dir=$WORK/etcd
    mkdir -p "$dir"
    "$BENCH" etcd-certs --dir "$dir/certs"
    local ports
    mapfile -t ports < <("$BENCH" free-ports --count 6)
    local cluster="" i
    for i in 0 1 2; do cluster+="${cluster:+,}e$i=https://127.0.0.1:${ports[i + 3]}"; done
    for i in 0 1 2; do
        etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "https://127.0.0.1:${ports[i]}" \
            --advertise-client-urls "https://127.0.0.1:${ports[i]}" \
            --listen-peer-urls "https://127.0.0.1:${ports[i + 3]}" \
            --initial-advertise-peer-urls "https://127.0.0.1:${ports[i + 3]}" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
            --cert-file "$dir/certs/server.pem" --key-file "$dir/certs/server.key" \
            --trusted-ca-file "$dir/certs/ca.pem" --client-cert-auth \
            --peer-cert-file "$dir/certs/server.pem" --peer-key-file "$dir/certs/server.key" \
            --peer-trusted-ca-file "$dir/certs/ca.pem" --peer-client-cert-auth \
            --logger zap --log-level warn >"$dir/e$i.log" 2>&1 &
        PIDS+=($!)
        ETCD_PIDS+=($!)
    done
    ETCD_ENDPOINTS=""
    for i in 0 1 2; do ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}https://127.0.0.1:${ports[i]}"; done
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --cacert "$dir/certs/ca.pem" \
            --cert "$dir/certs/client.pem" --key "$dir/certs/client.key" endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "etcd did not become healthy; logs in $dir" >&2
    tail -5 "$dir"/e*.log >&2
    exit 1
}

# ---- Domicile: three nodes in three EEA sites, `groups` groups fenced to the EEA -----------------------
DOMICILE_PIDS=()
# The node's own default (one runtime worker per core), as a user's first cluster runs: measured against one
# worker per node on 2026-12-04 (docs/performance.md, "The demo's write rate"), no slower.
WORKER_THREADS=${WORKER_THREADS:-default}
DOMICILE_ENDPOINTS=""
DOMICILE_CERTS=""
DOMICILE_STARTS=0
start_domicile() {
    DOMICILE_STARTS=$((DOMICILE_STARTS + 1))
    local groups=$1 dir=$WORK/domicile-$DOMICILE_STARTS-$1g
    mkdir -p "$dir"
    local sites=(dublin-a dublin-b hamar) countries=(IE IE NO) g i
    {
        for i in 0 1 2; do
            printf '[[site]]\nname = "%s"\ncountry = "%s"\nnodes = [%d]\n\n' "${sites[i]}" "${countries[i]}" $((i + 1))
        done
        # Leaders spread over the sites: group g prefers site g mod 3.
        for ((g = 0; g < groups; g++)); do
            printf '[[group]]\nname = "bench-%d"\njurisdiction = "EEA"\nvoters = 3\nleader_preference = ["%s"]\n\n' \
                "$g" "${sites[g % 3]}"
        done
        printf '[[grant]]\nservice = "bench"\njurisdiction = "EEA"\naccess = "read-write"\n\n'
    } >"$dir/topology.toml"
    DOMICILE_CERTS=$dir/certs
    "$DOMICILE" certs init --dir "$DOMICILE_CERTS" --cluster bench --days 2 >/dev/null
    for i in 0 1 2; do
        "$DOMICILE" certs node --id $((i + 1)) --site "${sites[i]}" --topology "$dir/topology.toml" \
            --dir "$DOMICILE_CERTS" --days 2 >/dev/null
    done
    "$DOMICILE" certs client --name bench --dir "$DOMICILE_CERTS" --days 2 >/dev/null
    local ports
    mapfile -t ports < <("$BENCH" free-ports --count 6)
    for i in 0 1 2; do
        {
            printf 'cluster = "bench"\nnode_id = %d\nsite = "%s"\ndata_dir = "data/n%d"\n' $((i + 1)) "${sites[i]}" $((i + 1))
            printf 'listen = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\ntopology = "topology.toml"\n\n' "${ports[i]}" "${ports[i + 3]}"
            # Three nodes share this machine: each gets its share of the cores as runtime workers.
            [[ $WORKER_THREADS == default ]] || printf 'worker_threads = %d\n\n' "$WORKER_THREADS"
            printf '[tls]\nca = "certs/ca.pem"\ncert = "certs/node-%d.pem"\nkey = "certs/node-%d.key"\n' $((i + 1)) $((i + 1))
            local j
            for j in 0 1 2; do
                ((j == i)) && continue
                printf '\n[[peer]]\nid = %d\naddr = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n' $((j + 1)) "${ports[j]}" "${ports[j + 3]}"
            done
        } >"$dir/node-$((i + 1)).toml"
    done
    DOMICILE_PIDS=()
    for i in 1 2 3; do
        RUST_LOG=${RUST_LOG:-warn} "$DOMICILE" node --config "$dir/node-$i.toml" >"$dir/node-$i.log" 2>&1 &
        PIDS+=($!)
        DOMICILE_PIDS+=($!)
    done
    DOMICILE_ENDPOINTS="n1@127.0.0.1:${ports[0]},n2@127.0.0.1:${ports[1]},n3@127.0.0.1:${ports[2]}"
    # Every group has a leader (the load generator also retries while the nodes come up).
    local pid
    for _ in $(seq 1 100); do
        for pid in "${DOMICILE_PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "a Domicile node exited at start-up; logs in $dir:" >&2
                tail -n 5 "$dir"/node-*.log >&2
                exit 1
            fi
        done
        local status
        status=$("$DOMICILE" status --admin "127.0.0.1:${ports[3]}" -o json 2>/dev/null || true)
        if [[ $status == *'"leader": '[0-9]* && $status != *'"leader": null'* ]]; then
            return 0
        fi
        sleep 0.2
    done
    echo "warning: not every Domicile group reported a leader yet; going on (logs in $dir)" >&2
}

stop_domicile() {
    stop_pids "${DOMICILE_PIDS[@]}"
    forget_pids "${DOMICILE_PIDS[@]}"
    DOMICILE_PIDS=()
}

joined() { local IFS=,; echo "$*"; }

title() {
    local cpu
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
    echo "$(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $(uname -sr), $(stat -f -c %T "$WORK") on $(df --output=source "$WORK" | tail -1), etcd $(etcd --version | head -1 | awk '{print $3}'), $ROUNDS rounds, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
}

STEPS=${STEPS:-put:1:$(scaled 2000),put:16:$(scaled 8000),put:256:$(scaled 40000),get:1:$(scaled 4000),get:256:$(scaled 80000)}
SYSTEMS=${SYSTEMS:-domicile etcd}
etcd_flags=()
[[ -n "${ETCD_ALL_ENDPOINTS:-}" ]] && etcd_flags+=(--etcd-all-endpoints)

compare() {
    local out=$RESULTS/compare.jsonl
    : >"$out"
    log "starting etcd (3 members) and Domicile (3 nodes, 1 group)"
    start_etcd
    start_domicile 1
    local header
    header="Domicile vs etcd, $(title)"
    local round preload
    for round in $(seq 1 "$ROUNDS"); do
        preload=()
        ((round == 1)) && preload=(--preload)
        # The disk is shared: the ceiling is measured every round, and the best of all is used.
        run "$BENCH" fsync-baseline --dir "$WORK/fsync" --batches 1,16,256 --seconds 1 --out "$out"
        if [[ " $SYSTEMS " == *" domicile "* ]]; then
            log "round $round/$ROUNDS: Domicile"
            run "$BENCH" run --system domicile --endpoints "$DOMICILE_ENDPOINTS" --certs "$DOMICILE_CERTS" \
                --steps "$STEPS" --connections "$CONNECTIONS" --round "$round" \
                --pids "$(joined "${DOMICILE_PIDS[@]}")" --out "$out" "${preload[@]}"
        fi
        if [[ " $SYSTEMS " == *" etcd "* ]]; then
            log "round $round/$ROUNDS: etcd"
            run "$BENCH" run --system etcd --endpoints "$ETCD_ENDPOINTS" --certs "$WORK/etcd/certs" \
                --steps "$STEPS" --connections "$CONNECTIONS" --round "$round" \
                --pids "$(joined "${ETCD_PIDS[@]}")" --out "$out" "${preload[@]}" "${etcd_flags[@]}"
        fi
    done
    "$BENCH" report --input "$out" --title "$header" | tee "$RESULTS/compare.md"
    stop_domicile
    stop_pids "${ETCD_PIDS[@]}"
    forget_pids "${ETCD_PIDS[@]}"
}

groups_mode() {
    local out=$RESULTS/groups.jsonl
    : >"$out"
    local header
    header="Domicile, groups on the same 3 nodes, $(title)"
    local groups round preload
    for groups in 1 4 16; do
        log "Domicile with $groups groups"
        start_domicile "$groups"
        for round in $(seq 1 "$ROUNDS"); do
            preload=()
            ((round == 1)) && preload=(--preload)
            run "$BENCH" fsync-baseline --dir "$WORK/fsync" --batches 256 --seconds 1 --out "$out"
            run "$BENCH" run --system domicile --endpoints "$DOMICILE_ENDPOINTS" --certs "$DOMICILE_CERTS" \
                --steps "put:256:$(scaled 40000)" --connections "$CONNECTIONS" --round "$round" \
                --groups "$groups" --pids "$(joined "${DOMICILE_PIDS[@]}")" --out "$out" "${preload[@]}"
        done
        stop_domicile
    done
    "$BENCH" report --input "$out" --title "$header" | tee "$RESULTS/groups.md"
}

case "$MODE" in
compare) compare ;;
groups) groups_mode ;;
all) compare; groups_mode ;;
esac
log "results in $RESULTS"
