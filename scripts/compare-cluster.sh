#!/usr/bin/env bash
# Side-by-side benchmark of a 3-member MetaStore cluster and a 3-member
# etcd cluster on this machine (issue 19 §7): the same loadgen workloads
# against each, one cluster at a time, the load spread over all three
# members' client URLs (as `benchmark --endpoints a,b,c` does, so two
# thirds of the writes reach a follower, which forwards them), then the
# failover time: SIGKILL of the member that takes writes to the first
# write acknowledged by another, over TRIALS trials at --heartbeat-interval
# 100 --election-timeout 500. Results go to docs/benchmarks-cluster.md.
#
# Usage: scripts/compare-cluster.sh [output.md]
# Needs: etcd (Debian: apt-get install etcd-server), etcdctl, python3.
# Environment: SCALE=0.2 shrinks every request count; TRIALS=20 failover
# trials per cluster; KEEP=1 keeps the data directories and raw JSON.
#
# All six members and the load generator share this machine's cores;
# every member fsyncs before acknowledging (both servers' defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=${1:-docs/benchmarks-cluster.md}
SCALE=${SCALE:-1}
TRIALS=${TRIALS:-20}

for tool in etcd etcdctl python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 2; }
done

cargo build --release --quiet -p metastore -p loadgen
METASTORE=$PWD/target/release/metastore
LOADGEN=$PWD/target/release/loadgen
WORK=$(mktemp -d /tmp/compare-cluster.XXXXXX)
declare -A PIDS=()
cleanup() {
    stop_cluster
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
scaled() { python3 -c "print(max(1, int($1 * $SCALE)))"; }

# One member of `kind` (etcd|metastore): name, client port, peer port,
# initial cluster, timing flags.
start_member() {
    local kind=$1 name=$2 client=$3 peer=$4 initial=$5; shift 5
    local data="$WORK/$kind-$name"
    local common=(--name "$name" --data-dir "$data"
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client"
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer"
        --initial-cluster "$initial" --initial-cluster-token bench "$@")
    case $kind in
    etcd) etcd "${common[@]}" --log-level error >"$data.log" 2>&1 & ;;
    metastore)
        "$METASTORE" "${common[@]}" --log-level warn \
            --listen-metrics-urls "http://127.0.0.1:$(free_port)" >"$data.log" 2>&1 &
        ;;
    esac
    PIDS[$name]=$!
}

# Starts a 3-member cluster of `kind`; sets ENDPOINTS (host:port list),
# CLIENT (member index -> port) and INITIAL.
start_cluster() {
    local kind=$1; shift
    declare -g -a CLIENT=() PEER=()
    local index
    for index in 0 1 2; do CLIENT[$index]=$(free_port); PEER[$index]=$(free_port); done
    INITIAL="m0=http://127.0.0.1:${PEER[0]},m1=http://127.0.0.1:${PEER[1]},m2=http://127.0.0.1:${PEER[2]}"
    rm -rf "$WORK/$kind-m"*
    for index in 0 1 2; do
        start_member "$kind" "m$index" "${CLIENT[$index]}" "${PEER[$index]}" "$INITIAL" "$@"
    done
    ENDPOINTS="127.0.0.1:${CLIENT[0]},127.0.0.1:${CLIENT[1]},127.0.0.1:${CLIENT[2]}"
    for _ in $(seq 300); do
        if etcdctl --endpoints "$ENDPOINTS" --command-timeout 1s put probe yes >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "the $kind cluster did not start; logs in $WORK" >&2; exit 1
}

restart_member() { # kind index timing-flags...
    local kind=$1 index=$2; shift 2
    start_member "$kind" "m$index" "${CLIENT[$index]}" "${PEER[$index]}" "$INITIAL" "$@"
}

stop_cluster() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    PIDS=()
    return 0
}

run() { # kind label loadgen-args...
    local kind=$1 label=$2; shift 2
    echo "[$kind] $label: loadgen $*" >&2
    "$LOADGEN" --endpoints "$ENDPOINTS" --quiet --json "$@" >"$WORK/$kind-$label.json" || true
}

PUT_TOTAL=$(scaled 50000)
RANGE_TOTAL=$(scaled 200000)
TXN_TOTAL=$(scaled 30000)
WATCH_PUTS=$(scaled 500)

# The member that names itself the leader in `endpoint status`.
leader_index() {
    local index
    for index in 0 1 2; do
        if etcdctl --endpoints "127.0.0.1:${CLIENT[$index]}" --command-timeout 1s endpoint status -w json 2>/dev/null |
            python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["header"]["member_id"] == s["leader"] else 1)'; then
            echo "$index"; return
        fi
    done
    echo -1
}

# Milliseconds from SIGKILL of the leader to the first write another member
# acknowledges, TRIALS times (the killed member is restarted between).
failover() { # kind timing-flags...
    local kind=$1; shift
    local trial lead other started
    for trial in $(seq "$TRIALS"); do
        lead=$(leader_index)
        if [ "$lead" -lt 0 ]; then sleep 0.5; continue; fi
        other=$(((lead + 1) % 3))
        started=$(date +%s%N)
        kill -9 "${PIDS[m$lead]}"; wait "${PIDS[m$lead]}" 2>/dev/null || true
        until etcdctl --endpoints "127.0.0.1:${CLIENT[$other]}" --command-timeout 200ms put failover "$trial" >/dev/null 2>&1; do :; done
        echo $((($(date +%s%N) - started) / 1000000)) >>"$WORK/$kind-failover.txt"
        restart_member "$kind" "$lead" "$@"
        sleep 2
    done
}

for kind in etcd metastore; do
    start_cluster "$kind"
    run "$kind" put --conns 16 --clients 256 put --total "$PUT_TOTAL" --key-size 8 --val-size 256 --key-space-size 100000
    run "$kind" txn-put --conns 16 --clients 256 txn-put --total "$TXN_TOTAL" --key-size 8 --val-size 256 --key-space-size 100000
    run "$kind" range-linearizable --conns 16 --clients 256 range foo --consistency l --total "$RANGE_TOTAL"
    run "$kind" range-serializable --conns 16 --clients 256 range foo --consistency s --total "$RANGE_TOTAL"
    run "$kind" watch-fanout --conns 16 --clients 16 watch --streams 30 --watch-per-stream 100 --watch-prefix --put-total "$WATCH_PUTS" --val-size 32
    stop_cluster
    timing=(--heartbeat-interval 100 --election-timeout 500)
    start_cluster "$kind" "${timing[@]}"
    failover "$kind" "${timing[@]}"
    stop_cluster
done

MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r); six members and the client share the machine"
VERSIONS="$(etcd --version | head -1); MetaStore $(git rev-parse --short HEAD)"
python3 - "$WORK" "$MACHINE" "$VERSIONS" "$SCALE" "$TRIALS" >"$OUTPUT" <<'EOF'
import json, os, statistics, sys
work, machine, versions, scale, trials = sys.argv[1:]

def load(kind, label):
    try:
        with open(os.path.join(work, f"{kind}-{label}.json")) as file:
            return json.load(file)["sections"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None

def rate(found):
    return found and found["requests_per_second"]

def p99(found):
    return found and found.get("latency") and found["latency"]["percentiles"].get("p99")

print("# 3-member clusters: MetaStore and etcd side by side\n")
print(f"Generated by `scripts/compare-cluster.sh` (SCALE={scale}). {machine}. {versions}.\n")
print("Load spread over all three members' client URLs; one cluster at a time.\n")
print("| workload | etcd | MetaStore | ratio | etcd p99 | MetaStore p99 |")
print("|---|---|---|---|---|---|")
for label in ["put", "txn-put", "range-linearizable", "range-serializable", "watch-fanout"]:
    etcd, ours = load("etcd", label), load("metastore", label)
    ratio = f"{rate(ours) / rate(etcd):.2f}x" if rate(etcd) and rate(ours) else "n/a"
    fmt = lambda value: "n/a" if value is None else f"{value:,.0f}/s"
    ms = lambda value: "n/a" if value is None else f"{value * 1e3:.1f} ms"
    print(f"| {label} | {fmt(rate(etcd))} | {fmt(rate(ours))} | {ratio} | {ms(p99(etcd))} | {ms(p99(ours))} |")
print(f"\n## Failover ({trials} trials, --heartbeat-interval 100 --election-timeout 500)\n")
print("SIGKILL of the member that leads, to the first write another member acknowledges.\n")
print("| cluster | trials | median | max |")
print("|---|---|---|---|")
for kind in ["etcd", "metastore"]:
    try:
        with open(os.path.join(work, f"{kind}-failover.txt")) as file:
            times = [int(line) for line in file if line.strip()]
    except OSError:
        times = []
    if times:
        print(f"| {kind} | {len(times)} | {statistics.median(times):.0f} ms | {max(times)} ms |")
    else:
        print(f"| {kind} | 0 | n/a | n/a |")
EOF
echo "wrote $OUTPUT" >&2
