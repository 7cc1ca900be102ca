#!/usr/bin/env bash
# Two MetaStore builds side by side: the same loadgen workloads against a
# fresh server of each, in turn (A B A B ...), so a drift of the machine's
# speed hits both. Prints one line per run and the medians.
#
# Usage: scripts/compare-builds.sh OLD_METASTORE NEW_METASTORE [PAIRS]
# Environment: LOADGEN (default target/release/loadgen), TOTAL (puts per
# run, default 100000), WORKLOADS (default "put range").
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 PAIRS=${3:-3}
LOADGEN=${LOADGEN:-$PWD/target/release/loadgen}
TOTAL=${TOTAL:-100000}
WORKLOADS=${WORKLOADS:-put range}
WORK=$(mktemp -d /tmp/compare-builds.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # binary
    local port metrics
    port=$(free_port) metrics=$(free_port)
    ENDPOINT=127.0.0.1:$port
    rm -rf "$WORK/data"
    "$1" --data-dir "$WORK/data" --log-level warn --listen-client-urls "http://$ENDPOINT" \
        --listen-metrics-urls "http://127.0.0.1:$metrics" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if "$LOADGEN" --endpoints "$ENDPOINT" put --total 1 >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "server did not start: $(tail -5 "$WORK/server.log")" >&2
    exit 1
}
stop() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

run() { # label binary workload
    start "$2"
    local common=(--endpoints "$ENDPOINT" --clients 64 --conns 8 --json)
    case $3 in
    put) "$LOADGEN" "${common[@]}" put --total "$TOTAL" --val-size 256 --key-space-size 100000 >"$WORK/out.json" ;;
    range)
        "$LOADGEN" --endpoints "$ENDPOINT" put --total 1000 --key-space-size 1000 >/dev/null
        "$LOADGEN" "${common[@]}" range key --consistency s --total "$((TOTAL * 2))" >"$WORK/out.json" ;;
    esac
    stop
    python3 - "$1" "$3" "$WORK/out.json" <<'PY' | tee -a "$WORK/results"
import json, sys
label, workload, path = sys.argv[1:]
report = json.load(open(path))
section = report["sections"][0]
rate = section["requests_per_second"]
p99 = section["latency"]["percentiles"]["p99"] * 1000
print(f"{label} {workload} rate={rate:.0f} p99_ms={p99:.2f}")
PY
}

for workload in $WORKLOADS; do
    for _ in $(seq "$PAIRS"); do
        run old "$OLD" "$workload"
        run new "$NEW" "$workload"
    done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys, collections
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, workload, rate, _ = line.split()
    rates[(workload, label)].append(float(rate.split("=")[1]))
for workload in sorted({w for w, _ in rates}):
    old, new = statistics.median(rates[(workload, "old")]), statistics.median(rates[(workload, "new")])
    print(f"{workload}: median old {old:.0f}/s, new {new:.0f}/s, new/old {new / old:.3f}")
PY
