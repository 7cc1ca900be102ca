#!/usr/bin/env bash
# The request paths the send budget and call cancellation touch, old vs new
# binary side by side in one run (see lib.sh for OLD_COMMIT, WORK): loadgen
# serializable ranges, puts, a watch fan-out (100 streams x 100 watchers)
# and paced watch latency, each against a fresh server.
#
# Usage: scripts/abuse/hot-paths.sh [rounds] [workload...]
#   workloads: range put fanout latency (default: all four)
set -euo pipefail
rounds=${1:-3}
shift || true
workloads=${*:-range put fanout latency}
# shellcheck source=scripts/abuse/lib.sh
source "$(dirname "$0")/lib.sh"
build_binaries
(cd "$root" && cargo build --release -p loadgen >&2)
loadgen="$target/release/loadgen"

summary() {
    python3 -c '
import json, sys
report = json.load(sys.stdin)
print(" ".join(
    "%s=%.0f/s(p50=%.2fms,p99=%.2fms)" % (
        section["name"].replace(" ", "_"), section["requests_per_second"],
        section["latency"]["percentiles"]["p50"] * 1000,
        section["latency"]["percentiles"]["p99"] * 1000)
    for section in report["sections"] if section["name"] != "watch creation"))'
}

run() { # label loadgen-arguments...
    local label=$1
    shift
    case " $workloads " in
        *" $label "*) ;;
        *) return 0 ;;
    esac
    echo "$label: $("$loadgen" --endpoints "127.0.0.1:$port" --quiet --json "$@" | summary)"
}

for round in $(seq "$rounds"); do
    for version in old new; do
        start_server "$version" "$version-hot-$round"
        echo "round=$round version=$version" \
            "$(run range --conns 16 --clients 256 range foo --consistency s --total 300000)" \
            "$(run put --conns 16 --clients 256 put --total 100000 --key-size 8 --val-size 256 --key-space-size 100000)" \
            "$(run fanout --conns 16 --clients 16 watch --streams 100 --watch-per-stream 100 --watch-prefix --put-total 2000 --val-size 32)" \
            "$(run latency --conns 4 --clients 4 watch-latency --put-total 2000 --put-rate 100 --streams 10 --watchers-per-stream 100)"
        stop_server
    done
done
