#!/usr/bin/env bash
# Issue 18's attacks measured against two builds side by side, in one run:
# for each attack, each build gets a fresh server, an unloaded probe
# (`none`), then the attack with the probe running (examples/abuse.rs).
# Prints one line per run: server CPU seconds, probe Put p50/p99/max, RSS
# and peak RSS, and what the attack saw.
#
#   cargo build --release --bin metastore --example abuse
#   scripts/abuse/measure.sh OLD_METASTORE NEW_METASTORE [target/release/examples/abuse]
#
# Server logs are kept in $KEEP_LOGS if set.
# Attacks (override with ATTACKS="hpack:3222 hpack_rate:200 hpack_for:10 txn:3 flood:12000"):
#   hpack N  N connections, each sending one 16 KiB HPACK bomb block
#   hpack_for S  the same, kept up for S seconds (as fast as the server goes)
#   hpack_rate R the same for 10 s at R connections a second
#   txn N    N nested txns of 1.6 MB (98,304 ops, default --max-txn-ops)
#   flood N  N connections held open, then a fresh client tries a Put;
#            both servers run with an open file limit of 10,000
set -euo pipefail
old=${1:?old metastore binary}
new=${2:?new metastore binary}
driver=${3:-${CARGO_TARGET_DIR:-target}/release/examples/abuse}
attacks=${ATTACKS:-"hpack:3222 hpack_rate:200 hpack_for:10 txn:3 flood:12000"}
cores=${CORES:-2}
# More server flags, e.g. EXTRA_ARGS="--warning-unary-request-duration 1ms"
# to have the server log each call's own duration.
read -r -a extra_args <<<"${EXTRA_ARGS:-}"
work=$(mktemp -d /tmp/metastore-abuse.XXXXXX)
trap 'kill "${server_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

port=$((23000 + RANDOM % 2000))
run_side() {
    local side=$1 binary=$2 attack=$3 count=$4
    local wrapper=()
    if [ "$attack" = flood ]; then
        wrapper=(prlimit --nofile=10000:10000 --)
    fi
    port=$((port + 2))
    rm -rf "$work/data"
    "${wrapper[@]}" "$binary" --data-dir "$work/data" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --listen-metrics-urls "http://127.0.0.1:$((port + 1))" \
        --cores "$cores" --shards "$cores" --log-level warn "${extra_args[@]}" \
        >"$work/server-$side-$attack.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$((port + 1))/health" >/dev/null 2>&1; then break; fi
        sleep 0.1
    done
    echo "$side $("$driver" --endpoint "127.0.0.1:$port" --pid "$server_pid" none 3)"
    echo "$side $("$driver" --endpoint "127.0.0.1:$port" --pid "$server_pid" "$attack" "$count")"
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS"
        cp "$work/server-$side-$attack.log" "$KEEP_LOGS/"
    fi
}

for spec in $attacks; do
    attack=${spec%%:*}
    count=${spec#*:}
    for side in old new; do
        if [ "$side" = old ]; then binary=$old; else binary=$new; fi
        run_side "$side" "$binary" "$attack" "$count"
    done
done
