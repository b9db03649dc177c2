#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a
# repeatable figure (unlike CPU time on a shared machine) for before/after
# comparisons of hot-path changes. Loopback only, bounded in time.
#
#   bench/callgrind.sh            # a valid key (the 200 path)
#   bench/callgrind.sh invalid    # an unknown key (the 401 path)
#   bench/callgrind.sh tls-new    # a full TLS handshake per connection (openssl s_time -new)
#   bench/callgrind.sh tls-reuse  # a resumed TLS session per connection (openssl s_time -reuse)
#   bench/callgrind.sh keys1000   # 1,000 clients' keys rotating per request (bench/wrk.lua)
#   bench/callgrind.sh keys100k   # 100,000 keys (1,000 clients) rotating per request
#
# KEYGATE_BIN picks the binary (default: target/release/keygate, built if
# missing). CALLGRIND_KEEP=1 keeps the profile for callgrind_annotate.
# CALLGRIND_CACHE=1 simulates the caches too and adds data-cache misses per request.
# Heap allocations per request are counted from the same profile (bench/alloc_calls.py;
# CALLGRIND_ALLOC_TOP=N lists the N callers that allocate most).
# STRACE=1 counts system calls per request instead (strace -c -f on keygate, no valgrind).
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
TLS_TABLE=""
if [[ $MODE == tls-* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/server.key" -out "$TMP/server.crt" -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
    TLS_TABLE=$(printf '[listen.tls]\ncert = "%s"\nkey = "%s"' "$TMP/server.crt" "$TMP/server.key")
fi
cat >"$TMP/keygate.toml" <<EOF
[listen]
address = "127.0.0.1:$KG_PORT"
$TLS_TABLE
[auth]
max_failures_per_minute = 1000000
[upstreams.bench]
servers = ["http://127.0.0.1:$UP_PORT"]
[[routes]]
name = "all"
path = "/"
upstream = "bench"
[clients.cg]
routes = ["*"]
rate_limit = { per_second = 1000000, burst = 1000000 }
keys = [{ hash = "$HASH" }]
EOF
[[ $MODE == invalid ]] && KEY=cg-unknown-key-0002
KEYS_FILE=""
if [[ $MODE == keys1000 || $MODE == keys100k ]]; then
    python3 "$ROOT/bench/helper.py" gen "$TMP/gen" --clients 1000 --big-keys 100000 >/dev/null
    printf '\n[rate_limit]\nper_second = 1000000\nburst = 1000000\n\n' >>"$TMP/keygate.toml"
    if [[ $MODE == keys1000 ]]; then
        cat "$TMP/gen/clients.toml" >>"$TMP/keygate.toml"
        KEYS_FILE=$TMP/gen/keys.txt
    else
        cat "$TMP/gen/clients-100k.toml" >>"$TMP/keygate.toml"
        KEYS_FILE=$TMP/gen/keys-100k.txt
    fi
fi

nginx -c "$TMP/up/nginx.conf" -p "$TMP/up" -g 'daemon off;' >/dev/null 2>&1 &
PIDS+=($!)
CACHE_SIM=()
[[ ${CALLGRIND_CACHE:-0} == 1 ]] && CACHE_SIM=(--cache-sim=yes)
if [[ ${STRACE:-0} == 1 ]]; then
    KEYGATE_LOG=warn "$BIN" serve -c "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 &
else
    KEYGATE_LOG=warn valgrind --tool=callgrind "${CACHE_SIM[@]}" --instr-atstart=no --callgrind-out-file="$TMP/callgrind.out" \
        "$BIN" serve -c "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 &
fi
KG=$!
PIDS+=("$KG")
for _ in $(seq 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$KG_PORT") 2>/dev/null && break
    sleep 0.1
done
# load SECONDS: prints the number of requests (connections for tls-*) it completed
load() {
    case $MODE in
        tls-new | tls-reuse)
            # HTTP/1.0 without a key: a 401 and the close, so the handshake dominates.
            { openssl s_time -connect "127.0.0.1:$KG_PORT" "-${MODE#tls-}" -time "${1%s}" -www / 2>>"$TMP/s_time.err" || true; } |
                awk '/connections in .* real seconds/ {print $1}' ;;
        keys1000 | keys100k)
            wrk -t1 -c20 -d"$1" --timeout 5s -s "$ROOT/bench/wrk.lua" "http://127.0.0.1:$KG_PORT/" -- "$KEYS_FILE" |
                awk '/requests in/ {print $1}' ;;
        *)
            wrk -t1 -c20 -d"$1" --timeout 5s -H "X-API-Key: $KEY" "http://127.0.0.1:$KG_PORT/" |
                awk '/requests in/ {print $1}' ;;
    esac
}
load 2s >/dev/null                      # warm-up, not counted
if [[ ${STRACE:-0} == 1 ]]; then
    strace -c -f -p "$KG" -o "$TMP/strace.txt" &
    ST=$!
    sleep 1                             # strace attaches to every thread
    N=$(load 5s)
    kill -INT "$ST"
    wait "$ST" 2>/dev/null || true
    awk -v n="$N" -v m="$MODE" '
        # "% time  seconds  usecs/call  calls  [errors]  syscall": calls is the 4th field.
        $1 ~ /^[0-9.]+$/ && $NF == "total" { total = $4; next }
        $1 ~ /^[0-9.]+$/ { calls[$NF] = $4 }
        END {
            printf "%s key: %d requests, %.2f system calls per request", m, n, total / n
            for (c in calls) if (calls[c] / n >= 0.01) printf ", %s %.2f", c, calls[c] / n
            printf "\n"
        }' "$TMP/strace.txt"
    exit 0
fi
callgrind_control -i on "$KG" >/dev/null 2>&1
N=$(load 5s)
callgrind_control -d "$KG" >/dev/null 2>&1
# The dump of the measured window (callgrind.out is the exit's: the shutdown, which
# with 100,000 keys costs more than the window itself).
OUT=$TMP/callgrind.out.1
awk -v n="$N" -v m="$MODE" '
    /^events:/ { for (i = 2; i <= NF; i++) ev[$i] = i }
    /^summary:/ {
        printf "%s key: %d requests, %.0f user-space instructions per request", m, n, $(ev["Ir"]) / n
        if ("D1mr" in ev) printf ", D1 misses %.0f, LL misses %.0f per request", ($(ev["D1mr"]) + $(ev["D1mw"])) / n, ($(ev["DLmr"]) + $(ev["DLmw"])) / n
        printf "\n"
    }' "$OUT"
python3 "$ROOT/bench/alloc_calls.py" "$OUT" "$N" "${CALLGRIND_ALLOC_TOP:-0}"
