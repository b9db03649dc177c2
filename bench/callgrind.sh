#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# repeatable figure (unlike CPU time on a shared machine) for before/after
# comparisons of hot-path changes. Loopback only, bounded in time.
#
#   bench/callgrind.sh            # a valid key (the 200 path)
#   bench/callgrind.sh invalid    # an unknown key (the 401 path)
#
# KEYGATE_BIN picks the binary (default: target/release/keygate, built if
# missing). CALLGRIND_KEEP=1 keeps the profile for callgrind_annotate.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${KEYGATE_BIN:-$ROOT/target/release/keygate}
MODE=${1:-valid}
TMP=$(mktemp -d)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${CALLGRIND_KEEP:-0} == 1 ]]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

missing=()
for cmd in valgrind:valgrind wrk:wrk nginx:nginx python3:python3; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd##*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release >&2)

mapfile -t PORTS < <(python3 "$ROOT/bench/helper.py" ports 2)
UP_PORT=${PORTS[0]}
KG_PORT=${PORTS[1]}
KEY=cg-bench-key-0001
HASH=$(printf %s "$KEY" | "$BIN" hash | tail -n 1)
mkdir -p "$TMP/up"
cat >"$TMP/up/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/up; proxy_temp_path $TMP/up; fastcgi_temp_path $TMP/up;
    uwsgi_temp_path $TMP/up; scgi_temp_path $TMP/up;
    keepalive_requests 100000;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
}
EOF
cat >"$TMP/keygate.toml" <<EOF
[listen]
address = "127.0.0.1:$KG_PORT"
[auth]
max_failures_per_minute = 1000000000
[upstreams.bench]
servers = ["http://127.0.0.1:$UP_PORT"]
[[routes]]
name = "all"
path = "/"
upstream = "bench"
[clients.c0001]
routes = ["*"]
rate_limit = { per_second = 1000000, burst = 1000000 }
keys = [{ hash = "$HASH" }]
EOF
[[ $MODE == invalid ]] && KEY=cg-unknown-key-0002

nginx -c "$TMP/up/nginx.conf" -p "$TMP/up" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
KEYGATE_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/callgrind.out" \
    "$BIN" serve -c "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 &
KG=$!
PIDS+=("$KG")
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$KG_PORT") 2>/dev/null && break
    sleep 0.1
done
load() { wrk -t1 -c20 -d"$1" --timeout 5s -H "X-API-Key: $KEY" "http://127.0.0.1:$KG_PORT/"; }
load 2s >/dev/null                      # warm-up, not counted
callgrind_control -i on "$KG" >/dev/null 2>&1
N=$(load 5s | awk '/requests in/ {print $1}')
callgrind_control -d "$KG" >/dev/null 2>&1
IR=$(for f in "$TMP"/callgrind.out*; do grep -h '^summary:' "$f" | awk '{print $2}'; done | sort -n | tail -n 1)
awk -v ir="$IR" -v n="$N" -v m="$MODE" \
    'BEGIN { printf "%s key: %d requests, %.0f user-space instructions per request\n", m, n, ir / n }'
