#!/usr/bin/env bash
# Side-by-side benchmark: MetaStore and a real etcd on this machine, the
# same loadgen workloads against each in one run, results written to
# docs/benchmarks.md (numbers, ratios, machine, exact commands).
#
# Usage: scripts/compare-etcd.sh [output.md]
# Needs: etcd (Debian: apt-get install etcd-server), python3 (to format the
# tables). Optional: h2load (Debian: nghttp2-client) for a cross-check of
# read throughput with an independent client.
#
# Environment: SCALE=0.2 shrinks every request count (a quick smoke run);
# KEEP=1 keeps the data directories and raw JSON.
#
# Durability is equivalent: etcd fsyncs its WAL before acknowledging a
# write (its default); MetaStore fsyncs its O_DIRECT WAL before
# acknowledging. Both run with their defaults otherwise, one at a time, on
# the same cores as the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=${1:-docs/benchmarks.md}
SCALE=${SCALE:-1}

command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }

cargo build --release --quiet -p metastore -p loadgen
METASTORE=$PWD/target/release/metastore
LOADGEN=$PWD/target/release/loadgen
WORK=$(mktemp -d /tmp/compare-etcd.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
scaled() { python3 -c "print(max(1, int($1 * $SCALE)))"; }

start_server() { # name -> sets ENDPOINT, SERVER_PID
    local name=$1 port peer
    port=$(free_port)
    ENDPOINT=127.0.0.1:$port
    rm -rf "$WORK/$name-data"
    case $name in
    etcd)
        peer=$(free_port)
        etcd --name bench --data-dir "$WORK/$name-data" --log-level error \
            --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
            --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "bench=http://127.0.0.1:$peer" >"$WORK/$name.log" 2>&1 &
        ;;
    metastore)
        "$METASTORE" --data-dir "$WORK/$name-data" --log-level warn \
            --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
            >"$WORK/$name.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        if "$LOADGEN" --endpoints "$ENDPOINT" --quiet range probe --total 1 >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "$name did not start; log:" >&2; cat "$WORK/$name.log" >&2; exit 1
}

stop_server() {
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
}

COMMANDS=()
run() { # server label loadgen-args...
    local server=$1 label=$2; shift 2
    echo "[$server] $label: loadgen $*" >&2
    "$LOADGEN" --endpoints "$ENDPOINT" --quiet --json "$@" >"$WORK/$server-$label.json" || true
    if [ "$server" = etcd ]; then COMMANDS+=("$label: loadgen --endpoints \$ENDPOINT $*"); fi
}

PUT_TOTAL=$(scaled 100000)
RANGE_TOTAL=$(scaled 300000)
TXN_TOTAL=$(scaled 50000)
KEEPALIVE_TOTAL=$(scaled 300000)
WATCH_PUTS=$(scaled 500)
LATENCY_PUTS=$(scaled 2000)

workloads() { # server
    local server=$1
    run "$server" put --conns 16 --clients 256 put --total "$PUT_TOTAL" --key-size 8 --val-size 256 --key-space-size 100000
    run "$server" range-serializable --conns 16 --clients 256 range foo --consistency s --total "$RANGE_TOTAL"
    run "$server" range-linearizable --conns 16 --clients 256 range foo --consistency l --total "$RANGE_TOTAL"
    run "$server" txn-put --conns 16 --clients 256 txn-put --total "$TXN_TOTAL" --key-size 8 --val-size 256 --key-space-size 100000
    run "$server" lease-keepalive --conns 16 --clients 256 lease-keepalive --total "$KEEPALIVE_TOTAL"
    run "$server" watch-latency --conns 4 --clients 4 watch-latency --put-total "$LATENCY_PUTS" --put-rate 100 --streams 10 --watchers-per-stream 100
    run "$server" watch-fanout --conns 16 --clients 16 watch --streams 100 --watch-per-stream 100 --watch-prefix --put-total "$WATCH_PUTS" --val-size 32
}

# Half of etcd's measured maximum, offered open loop to both servers.
half_load() { # server label workload-json-of-etcd loadgen-args...
    local server=$1 label=$2 reference=$3; shift 3
    local rate
    rate=$(python3 -c "import json; r=json.load(open('$reference')); print(int(r['sections'][0]['requests_per_second'] / 2))")
    run "$server" "$label" --conns 16 --clients 256 --rate "$rate" --duration 10s "$@"
}

h2load_range() { # server
    command -v h2load >/dev/null || return 0
    local body="$WORK/range-request.bin"
    # A gRPC-framed RangeRequest{key: "foo", serializable: true}.
    printf '\x00\x00\x00\x00\x07\x0a\x03foo\x38\x01' >"$body"
    echo "[$1] h2load serializable range" >&2
    h2load -n "$(scaled 300000)" -c 16 -m 16 -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://$ENDPOINT/etcdserverpb.KV/Range" >"$WORK/$1-h2load.txt" 2>&1 || true
}

for server in etcd metastore; do
    start_server "$server"
    workloads "$server"
    half_load "$server" put-half-etcd-max "$WORK/etcd-put.json" put --key-size 8 --val-size 256 --key-space-size 100000
    half_load "$server" range-half-etcd-max "$WORK/etcd-range-serializable.json" range foo --consistency s
    h2load_range "$server"
    stop_server
done

MACHINE="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, Linux $(uname -r); client and server share the machine"
VERSIONS="$(etcd --version | head -1); MetaStore $(git rev-parse --short HEAD)"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands.txt"
python3 scripts/benchmark_report.py "$WORK" "$MACHINE" "$VERSIONS" "$SCALE" >"$OUTPUT"
echo "wrote $OUTPUT" >&2
