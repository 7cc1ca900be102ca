# Shared by the scripts in scripts/abuse/: builds the "before" binary from
# an older commit and the "after" binary from this checkout, and starts
# and stops a fresh server with the same flags for either.
#
#   OLD_COMMIT=<rev>   the "before" commit (default 56b379b)
#   WORK=<dir>         binaries, data dirs and logs (default: a temp dir)
#   CARGO_TARGET_DIR   honoured for every build

old_commit=${OLD_COMMIT:-56b379b}
root=$(git rev-parse --show-toplevel)
work=${WORK:-$(mktemp -d /tmp/metastore-abuse.XXXXXX)}
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$work"
echo "work dir: $work" >&2

# build_binaries [extra cargo build arguments for this checkout...]
build_binaries() {
    if [ ! -x "$work/metastore-old" ]; then
        if [ ! -d "$work/old-src" ]; then
            git -C "$root" worktree add --detach "$work/old-src" "$old_commit" >&2
        fi
        (cd "$work/old-src" && cargo build --release --bin metastore >&2)
        cp "$target/release/metastore" "$work/metastore-old"
    fi
    (cd "$root" && cargo build --release --bin metastore "$@" >&2)
    cp "$target/release/metastore" "$work/metastore-new"
}

next_port=$((24000 + RANDOM % 2000))
port=
server_pid=

# start_server old|new label: a fresh data dir and fresh ports (the last
# server's closed connections keep its port in TIME_WAIT for a while);
# waits until it answers.
start_server() {
    port=$next_port
    next_port=$((next_port + 2))
    local data="$work/data-$2"
    rm -rf "$data"
    "$work/metastore-$1" --data-dir "$data" \
        --listen-client-urls "http://127.0.0.1:$port" \
        --listen-metrics-urls "http://127.0.0.1:$((port + 1))" \
        --log-level warn >"$work/$2.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 300); do
        if curl -sf "http://127.0.0.1:$((port + 1))/health" >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "server $2 did not start; see $work/$2.log" >&2
    exit 1
}

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT
