#!/usr/bin/env bash
# Slow readers, held connections and reloads: keygate's memory and latency
# figures for the README's "Slow readers and in-flight caps" section.
#
#   bench/slow_readers.sh          # about 3 minutes; KEYGATE_BIN=... skips the build
#
# keygate runs on CPU 0 (taskset), the Python upstream and clients on CPU 1,
# all on loopback, on kernel-chosen ports, in a mktemp -d folder; only the
# processes started here are stopped. Knobs: SLOW_CONNS (1000),
# SLOW_SEND_TIMEOUT (10, seconds), RELOADS (8), BIG_KEYS (100000).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=(python3 "$ROOT/bench/slow_readers.py")
CONNS=${SLOW_CONNS:-1000}
SEND_TIMEOUT=${SLOW_SEND_TIMEOUT:-10}
RELOADS=${RELOADS:-8}
BIG_KEYS=${BIG_KEYS:-100000}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -z ${KEYGATE_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    KEYGATE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

mapfile -t P < <(python3 "$ROOT/bench/helper.py" ports 3)
UP=${P[0]} KG=${P[1]} ADMIN=${P[2]}
taskset -c 1 "${PY[@]}" upstream --port "$UP" & PIDS+=($!)

wait_port() { # port
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}
wait_port "$UP"

KG_PID=
start_keygate() { # keys
    "${PY[@]}" config --dir "$TMP" --port "$KG" --admin "$ADMIN" --upstream "$UP" --keys "$1" \
        --send-timeout "${SEND_TIMEOUT}s"
    KEYGATE_LOG=info taskset -c 0 "$KEYGATE_BIN" serve -c "$TMP/keygate.toml" >"$TMP/out.log" 2>"$TMP/kg.log" &
    KG_PID=$!
    PIDS+=("$KG_PID")
    wait_port "$ADMIN"
    sleep 2 # let start-up allocations settle before the baseline
}
stop_keygate() {
    kill "$KG_PID"
    wait "$KG_PID" 2>/dev/null || true
}
run() { # subcommand args...
    taskset -c 1 "${PY[@]}" "$@" --port "$KG" --admin "$ADMIN" --pid "$KG_PID" --key "$TMP/key.txt" --log "$TMP/kg.log"
}

echo "== $CONNS callers that never read a 10 MiB response (send_timeout ${SEND_TIMEOUT}s)"
start_keygate 1
run slow --conns "$CONNS" --send-timeout "$SEND_TIMEOUT"
stop_keygate

echo "== RSS after $RELOADS reloads of $BIG_KEYS keys, without and with held connections (twice)"
for hold in "" --hold "" --hold; do
    start_keygate "$BIG_KEYS"
    run reloads --n "$RELOADS" $hold
    stop_keygate
done

echo "== latency (20 keep-alive connections) with $BIG_KEYS keys, keygate on one CPU"
start_keygate "$BIG_KEYS"
run latency --conns 20 --duration 10 --reload-every 0
run latency --conns 20 --duration 10 --reload-every 1
stop_keygate
