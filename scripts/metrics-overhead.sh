#!/usr/bin/env bash
# What recording metrics costs: the same loadgen workloads against MetaStore
# with `--metrics basic` and with `--metrics off`, alternating, ROUNDS times
# each, on this machine. Prints each run and the median throughput ratio
# (off / basic) per workload; the target is a cost under 2%.
#
# Usage: scripts/metrics-overhead.sh        (ROUNDS=5 by default)
# A noisy, shared machine moves single runs by ±10%; read the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
TOTAL=${TOTAL:-100000}

cargo build --release --quiet -p metastore -p loadgen
METASTORE=$PWD/target/release/metastore
LOADGEN=$PWD/target/release/loadgen
WORK=$(mktemp -d /tmp/metrics-overhead.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_server() { # metrics level -> sets ENDPOINT, SERVER_PID
    local port metrics_port
    port=$(free_port)
    metrics_port=$(free_port)
    ENDPOINT=127.0.0.1:$port
    rm -rf "$WORK/data"
    "$METASTORE" --data-dir "$WORK/data" --log-level warn --metrics "$1" \
        --listen-client-urls "http://$ENDPOINT" --listen-metrics-urls "http://127.0.0.1:$metrics_port" \
        >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if "$LOADGEN" --endpoints "$ENDPOINT" --quiet --clients 1 --conns 1 range k --total 1 >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "MetaStore did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}

stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

throughput() { # workload args... -> requests per second
    "$LOADGEN" --endpoints "$ENDPOINT" --json --quiet --clients 256 --conns 32 "$@" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(sum(s["requests_per_second"] for s in r["sections"])))'
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
    for level in basic off; do
        start_server "$level"
        put=$(throughput put --total "$TOTAL" --key-space-size 100000 --val-size 256)
        range=$(throughput range k --consistency s --total $((TOTAL * 2)))
        stop_server
        echo "round $round metrics=$level put=$put/s range=$range/s"
        RESULTS[$level-put]+="$put "
        RESULTS[$level-range]+="$range "
    done
done
for workload in put range; do
    python3 - "$workload" "${RESULTS[basic-$workload]}" "${RESULTS[off-$workload]}" <<'PY'
import statistics, sys
name, on, off = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
on_median, off_median = statistics.median(on), statistics.median(off)
print(f"{name}: metrics on {on_median:.0f}/s, off {off_median:.0f}/s, cost {100 * (1 - on_median / off_median):+.1f}%")
PY
done
