#!/usr/bin/env bash
# Hosts for the multi-host suite (tests/multihost.rs): one network namespace per host. Their links are
# TUN devices named eth0, one in each namespace, whose packets the suite's WAN router (in the test
# process) carries from host to host after each pair's delay: this machine's kernel has no sch_netem
# (CONFIG_NET_SCH_NETEM is not set), so `tc netem` is not available. Nothing here touches the
# machine's own interfaces, routes or firewall: every `ip` and `iptables` runs inside a namespace this
# script made (`ip -n NS`, `ip netns exec NS`), and `down` deletes them all.
#
#   netns.sh up PREFIX NAME...             namespaces PREFIX-NAME, loopback up
#   netns.sh addr PREFIX NAME ADDR         NAME's eth0 gets ADDR/24 and is brought up
#   netns.sh down PREFIX                   SIGKILL every process left in PREFIX-* namespaces, delete them
#
# Faults, for a drill's --fault-command/--heal-command (nodes named by id, as DOMICILE_DRILL_NODES gives
# them: `1,3`); MH_PREFIX and MH_DIR name the run's namespaces and its directory, whose `hosts` file maps
# `nID ADDR` a line and whose `pid-ID` files hold each node's pid:
#   netns.sh cut MODE IDS     MODE both: the nodes drop what they send to and receive from every other
#                             node; out: only what they send (a one-way partition); all: everything on
#                             eth0, clients too (the site is off the network)
#   netns.sh uncut IDS        flush the nodes' filter rules
#   netns.sh signal SIG IDS   kill -SIG each node's process (KILL, STOP, CONT)
#   netns.sh start IDS        start each node again (MH_DIR/start-ID.sh)
#   netns.sh flap IDS         cut both ways and heal again every 700 ms, in the background (at most 200
#                             times; its pid in MH_DIR/flap.pid); `netns.sh unflap IDS` stops it and heals
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 2; }

each_id() { tr ',' ' ' <<<"$1"; }

addr_of() { awk -v host="n$1" '$1 == host { print $2 }' "$MH_DIR/hosts"; }

others_of() { # every node address but those of the ids in $1
  local skip=" $(each_id "$1") "
  while read -r host addr; do
    case "$host" in n*) ;; *) continue ;; esac
    [[ "$skip" == *" ${host#n} "* ]] || echo "$addr"
  done <"$MH_DIR/hosts"
}

# The pid in MH_DIR/pid-ID, if that process is still node ID's (a pid is reused once its process ends,
# as a thread's id too: never signal a number without checking whose it is).
node_pid() {
  local pid
  pid=$(cat "$MH_DIR/pid-$1" 2>/dev/null || true)
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "node --config node-$1.toml"; then
    echo "$pid"
  else
    die "n$1 is not running (pid file: ${pid:-none})"
  fi
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cut() {
  local mode=$1 ids=$2 id ns addr
  for id in $(each_id "$ids"); do
    ns="$MH_PREFIX-n$id"
    case "$mode" in
      all)
        in_ns "$ns" iptables -A INPUT -i eth0 -j DROP
        in_ns "$ns" iptables -A OUTPUT -o eth0 -j DROP
        ;;
      both | out)
        for addr in $(others_of "$ids"); do
          in_ns "$ns" iptables -A OUTPUT -d "$addr" -j DROP
          [ "$mode" = out ] || in_ns "$ns" iptables -A INPUT -s "$addr" -j DROP
        done
        ;;
      *) die "cut: MODE is both, out or all, not $mode" ;;
    esac
  done
}

uncut() {
  local id
  for id in $(each_id "$1"); do
    in_ns "$MH_PREFIX-n$id" iptables -F INPUT
    in_ns "$MH_PREFIX-n$id" iptables -F OUTPUT
  done
}

command=${1:-}
[ -n "$command" ] || die "usage: netns.sh up|addr|down|cut|uncut|signal|start|flap|unflap ..."
shift
case "$command" in
  up)
    prefix=$1; shift
    for name in "$@"; do
      ip netns add "$prefix-$name"
      ip -n "$prefix-$name" link set lo up
    done
    ;;
  addr)
    # The host's eth0 (a TUN device the WAN router opened inside the namespace) gets its address.
    prefix=$1 name=$2 addr=$3
    ip -n "$prefix-$name" addr add "$addr/24" dev eth0
    ip -n "$prefix-$name" link set eth0 up
    ;;
  down)
    prefix=$1
    for ns in $(ip netns list | awk '{ print $1 }' | grep "^$prefix-" || true); do
      for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
        kill -CONT "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
      done
      ip netns del "$ns" 2>/dev/null || true
    done
    ;;
  cut) : "${MH_PREFIX:?}" "${MH_DIR:?}"; cut "$1" "$2" ;;
  uncut) : "${MH_PREFIX:?}" "${MH_DIR:?}"; uncut "$1" ;;
  signal)
    : "${MH_DIR:?}"
    for id in $(each_id "$2"); do kill "-$1" "$(node_pid "$id")"; done
    ;;
  start)
    : "${MH_DIR:?}"
    for id in $(each_id "$1"); do sh "$MH_DIR/start-$id.sh"; done
    ;;
  flap)
    : "${MH_PREFIX:?}" "${MH_DIR:?}"
    ids=$1
    (
      for _ in $(seq 1 100); do
        cut both "$ids"; sleep 0.7
        uncut "$ids"; sleep 0.7
      done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$MH_DIR/flap.pid"
    ;;
  unflap)
    : "${MH_PREFIX:?}" "${MH_DIR:?}"
    if [ -f "$MH_DIR/flap.pid" ]; then kill "$(cat "$MH_DIR/flap.pid")" 2>/dev/null || true; rm -f "$MH_DIR/flap.pid"; fi
    sleep 0.1
    uncut "$1"
    ;;
  *) die "unknown command $command" ;;
esac
