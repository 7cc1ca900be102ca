#!/usr/bin/env bash
# Issue 18, slow readers and handler cancellation: before/after figures,
# measured side by side in one run (see lib.sh for OLD_COMMIT, WORK).
#
# For the old and the new binary, each against a fresh server started with
# the same flags:
#   1. examples/abuse_slow_watchers with --connections 0: the write load
#      alone, with one reading watcher (the baseline);
#   2. the same with 1,000 watchers on 100 connections that advertise
#      2^31-1 byte windows and stop reading: server RSS idle and peak,
#      server CPU seconds during the load, and whether every watcher got
#      every event in order once it read again;
#   3. examples/abuse_orphaned_lock: how long an abandoned Lock waiter's
#      key lives (stream reset / connection dropped), and how long the next
#      client waits for the lock once the holder unlocks.
#
# Usage: scripts/abuse/watch-flow.sh [rounds]    (SLOW_ARGS="..." adds
# arguments to abuse_slow_watchers, e.g. "--seconds 10")
set -euo pipefail
rounds=${1:-1}
# shellcheck source=scripts/abuse/lib.sh
source "$(dirname "$0")/lib.sh"
build_binaries --example abuse_slow_watchers --example abuse_orphaned_lock
slow_watchers="$target/release/examples/abuse_slow_watchers"
orphaned_lock="$target/release/examples/abuse_orphaned_lock"

slow() { # connections
    # shellcheck disable=SC2086 # SLOW_ARGS is a list of arguments
    "$slow_watchers" --endpoint "127.0.0.1:$port" --pid "$server_pid" \
        --connections "$1" ${SLOW_ARGS:-} 2>&1 | tail -1
}

for round in $(seq "$rounds"); do
    for version in old new; do
        start_server "$version" "$version-baseline-$round"
        echo "round=$round version=$version run=baseline $(slow 0)"
        stop_server
        start_server "$version" "$version-slow-$round"
        echo "round=$round version=$version run=slow-readers $(slow 100)"
        stop_server
        start_server "$version" "$version-lock-$round"
        lock=$("$orphaned_lock" --endpoint "127.0.0.1:$port" --patience 30 2>&1 | tail -1)
        echo "round=$round version=$version run=orphaned-lock $lock"
        stop_server
    done
done
