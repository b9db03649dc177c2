#!/usr/bin/env bash
# keygate vs nginx vs the upstream alone, on loopback, bounded in time.
# Prints one throughput table and a resource table on stdout (progress on stderr).
# See bench/README.md for what is measured and the BENCH_* knobs.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
HELPER=(python3 "$BENCH_DIR/helper.py")

DURATION=${BENCH_DURATION:-10}
DURATION=${DURATION%s}
RUNS=${BENCH_RUNS:-3}
CONNS=${BENCH_CONNECTIONS:-50}
THREADS=${BENCH_THREADS:-1}
TARGETS=${BENCH_TARGETS:-direct nginx keygate}
SCENARIOS=${BENCH_SCENARIOS:-plain-1key plain-1000keys plain-invalid plain-close tls-1key tls-h2 tls-close tls-resumed plain-100kkeys plain-redis plain-redis-down plain-token grpc plain-h2up plain-token-cold}
RESOURCES=${BENCH_RESOURCES:-1}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
BIG_KEYS=100000
COLD_TOKENS=${BENCH_COLD_TOKENS:-20000}   # more than keygate's 10,000-token cache
GRPC_PATH=/bench.v1.Bench/Call
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
KEEP_TMP=${BENCH_KEEP_TMP:-0}

TMP=""
PIDS=()          # every process this script started, stopped by PID on exit
CHILD_PIDS=()    # their children (nginx workers)
declare -A NOISE=()   # "scenario target" -> worst % of CPU $PROXY_CPU used by other processes
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
# Warnings go to a file too, so those raised inside $(...) subshells are kept.
warn() { printf '%s\n' "$*" >>"$TMP/warnings"; printf '[bench] WARNING: %s\n' "$*" >&2; }
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
has_scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- setup

ensure_tools() {
    local -A pkg_of=([wrk]=wrk [nginx]=nginx [h2load]=nghttp2-client [openssl]=openssl
                     [python3]=python3 [taskset]=util-linux [curl]=curl [pgrep]=procps
                     [redis-server]=redis-server)
    local missing=() cmd
    for cmd in "${!pkg_of[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# stop_pids PIDS...: SIGTERM, up to 5 s grace, then SIGKILL for those still there.
stop_pids() {
    local pid i
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || continue 2
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local pid left=()
    stop_pids "${PIDS[@]}"
    # nginx workers normally leave with their master; stop any that did not.
    for pid in "${CHILD_PIDS[@]}"; do
        grep -qs nginx "/proc/$pid/cmdline" && left+=("$pid")
    done
    stop_pids "${left[@]}"
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
}

make_tmp() {
    TMP=$(mktemp -d -t keygate-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$TMP/upstream" "$TMP/nginx" "$TMP/keygate" "$TMP/res" "$TMP/h2"
}

raise_nofile() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    local n
    n=$(ulimit -n)
    if [[ $n != unlimited ]] && ((n < IDLE_CONNS + 1000)); then
        warn "open-file limit is $n; the $IDLE_CONNS idle-connection figures may fail"
    fi
}

build_keygate() {
    if [[ -n ${KEYGATE_BIN:-} ]]; then
        log "using KEYGATE_BIN=$KEYGATE_BIN"
        return 0
    fi
    log "cargo build --release (in $ROOT)"
    (cd "$ROOT" && cargo build --release >&2)
    KEYGATE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/keygate"
    [[ -x $KEYGATE_BIN ]] || die "no binary at $KEYGATE_BIN"
}

# The h2c (gRPC) upstream of the grpc and plain-h2up rows: examples/bench_upstream.rs.
needs_h2_upstream() { has_scenario grpc || has_scenario plain-h2up; }
build_h2_upstream() {
    H2UP_BIN=${BENCH_H2_UPSTREAM_BIN:-}
    if [[ -z $H2UP_BIN ]]; then
        log "cargo build --release --example bench_upstream (in $ROOT)"
        (cd "$ROOT" && cargo build --release --example bench_upstream >&2)
        H2UP_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench_upstream"
    fi
    [[ -x $H2UP_BIN ]] || die "no h2c upstream binary at $H2UP_BIN"
}

make_material() {
    log "generating keys, configs and an ECDSA P-256 certificate in $TMP"
    "${HELPER[@]}" gen "$TMP" --clients 1000 --big-keys "$BIG_KEYS" --cold-tokens "$COLD_TOKENS"
    KEY1=$(head -n 1 "$TMP/keys.txt")
    BAD1=$(head -n 1 "$TMP/invalid.txt")
    TOKEN1=$(head -n 1 "$TMP/token.txt")             # an HS256 token of client c0001
    BENCH_JWT_SECRET=$(cat "$TMP/jwt.secret") && export BENCH_JWT_SECRET
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/server.key" -out "$TMP/server.crt" -days 2 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        2>/dev/null
}

alloc_ports() {
    local ports
    mapfile -t ports < <("${HELPER[@]}" ports 14)
    UP_PORT=${ports[0]}
    UP_TLS_PORT=${ports[1]}
    NGINX_PORT=${ports[2]}
    NGINX_TLS_PORT=${ports[3]}
    KG_PORT=${ports[4]}
    KG_TLS_PORT=${ports[5]}
    KG_BIG_PORT=${ports[6]}
    KG_100K_PORT=${ports[7]}
    REDIS_PORT=${ports[8]}
    KG_REDIS_PORT=${ports[9]}
    UP_H2C_PORT=${ports[10]}     # examples/bench_upstream (h2c, gRPC)
    NGINX_GRPC_PORT=${ports[11]} # nginx grpc_pass
    KG_H2_PORT=${ports[12]}      # keygate with protocol = "http2" to UP_H2C_PORT
    KG_H2_ADMIN_PORT=${ports[13]}
}

render() { # template output
    sed -e "s|@TMP@|$TMP|g" -e "s|@UP_PORT@|$UP_PORT|g" -e "s|@UP_TLS_PORT@|$UP_TLS_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NGINX_TLS_PORT@|$NGINX_TLS_PORT|g" \
        -e "s|@UP_H2C_PORT@|$UP_H2C_PORT|g" -e "s|@NGINX_GRPC_PORT@|$NGINX_GRPC_PORT|g" \
        "$1" >"$2"
}

write_keygate_config() { # file port tls(0|1) clients-file [extra-toml [upstream-toml]]
    {
        printf '[listen]\naddress = "127.0.0.1:%s"\nmax_connections = %d\n' "$2" $((IDLE_CONNS * 2))
        if [[ $3 == 1 ]]; then
            printf '\n[listen.tls]\ncert = "%s"\nkey = "%s"\n' "$TMP/server.crt" "$TMP/server.key"
        fi
        printf '\n[auth]\nmax_failures_per_minute = 1000000\n'
        printf '\n[rate_limit]\nper_second = 1000000\nburst = 1000000\n'
        printf '%b' "${5:-}"
        printf '\n[upstreams.bench]\n%b' "${6:-servers = [\"http://127.0.0.1:$UP_PORT\"]\n}"
        printf '\n[[routes]]\nname = "all"\npath = "/"\nupstream = "bench"\n\n'
        cat "$4"
        cat "$TMP/jwt.toml"
    } >"$1"
}

# ---------------------------------------------------------------- processes

# start_bg NAME CMD...: run CMD in the background, logs in $TMP/NAME.{out,err};
# sets LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port pid what
    local deadline=$((SECONDS + 30))
    until port_open "$1"; do
        kill -0 "$2" 2>/dev/null || die "$3 exited at start-up; see above"
        ((SECONDS < deadline)) || die "$3 not accepting on port $1 after 30 s"
        sleep 0.05
    done
}

# proc_pids PID: PID and its direct children (nginx master + workers).
proc_pids() {
    echo "$1"
    pgrep -P "$1" || true
}

# ticks WHICH PIDS...: summed clock ticks of PIDS, "all" (utime+stime) or "sys" (stime, the kernel's share)
ticks() {
    local user=0 pid line rest total=0
    local -a f
    [[ $1 == all ]] && user=1
    shift
    for pid in "$@"; do
        read -r line <"/proc/$pid/stat"
        rest=${line##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[12] + user * f[11]))
    done
    echo "$total"
}
cpu_ticks() { ticks all "$@"; }
sys_ticks() { ticks sys "$@"; }

core_busy() { # CPU: non-idle clock ticks of that core since boot (from /proc/stat)
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

rss_kib() { # PIDS...: summed VmRSS
    local pid total=0 kib
    for pid in "$@"; do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
        total=$((total + kib))
    done
    echo "$total"
}

start_nginx() { # name conf -> sets LAST_PIDS (master and workers)
    local name=$1 conf=$2 port=$3 master i
    start_bg "$name" taskset -c "$4" nginx -p "$TMP/$name" -c "$conf" \
        -e "$TMP/$name/error.log" -g 'daemon off;'
    master=$LAST_PID
    if ! (wait_port "$port" "$master" "$name"); then
        cat "$TMP/$name.err" "$TMP/$name/error.log" >&2 || true
        die "$name failed to start"
    fi
    for ((i = 0; i < 100; i++)); do
        [[ -n $(pgrep -P "$master" || true) ]] && break
        sleep 0.05
    done
    mapfile -t LAST_PIDS < <(proc_pids "$master")
    CHILD_PIDS+=("${LAST_PIDS[@]:1}")
}

start_upstream() {
    render "$BENCH_DIR/nginx-upstream.conf.in" "$TMP/upstream/nginx.conf"
    start_nginx upstream "$TMP/upstream/nginx.conf" "$UP_PORT" "$LOAD_CPU"
    UP_PIDS=("${LAST_PIDS[@]}")
    log "upstream nginx on :$UP_PORT (TLS :$UP_TLS_PORT), pids ${UP_PIDS[*]}"
}

start_nginx_proxy() {
    render "$BENCH_DIR/nginx-proxy.conf.in" "$TMP/nginx/nginx.conf"
    start_nginx nginx "$TMP/nginx/nginx.conf" "$NGINX_PORT" "$PROXY_CPU"
    NGINX_PIDS=("${LAST_PIDS[@]}")
    log "nginx proxy on :$NGINX_PORT (TLS :$NGINX_TLS_PORT), pids ${NGINX_PIDS[*]}"
}

start_keygate() { # name port tls(0|1) [clients-file [extra-toml [upstream-toml]]] -> LAST_PID
    local name=$1 port=$2 tls=$3
    write_keygate_config "$TMP/keygate/$name.toml" "$port" "$tls" "${4:-$TMP/clients.toml}" "${5:-}" "${6:-}"
    start_bg "$name" env KEYGATE_LOG=warn taskset -c "$PROXY_CPU" \
        "$KEYGATE_BIN" serve -c "$TMP/keygate/$name.toml"
    if ! (wait_port "$port" "$LAST_PID" "$name"); then
        cat "$TMP/$name.out" "$TMP/$name.err" >&2 || true
        die "$name failed to start"
    fi
}

start_keygates() {
    start_keygate keygate "$KG_PORT" 0
    KG_PID=$LAST_PID
    start_keygate keygate-tls "$KG_TLS_PORT" 1
    KG_TLS_PID=$LAST_PID
    log "keygate on :$KG_PORT (pid $KG_PID), keygate TLS on :$KG_TLS_PORT (pid $KG_TLS_PID)"
    if has_scenario plain-100kkeys; then
        start_keygate keygate-100k "$KG_100K_PORT" 0 "$TMP/clients-100k.toml"
        KG_100K_PID=$LAST_PID
        log "keygate with $BIG_KEYS keys on :$KG_100K_PORT (pid $KG_100K_PID)"
    fi
    if has_scenario plain-redis || has_scenario plain-redis-down; then
        start_redis
        start_keygate keygate-redis "$KG_REDIS_PORT" 0 "$TMP/clients.toml" \
            "store = \"redis\"\n\n[redis]\nurl = \"redis://127.0.0.1:$REDIS_PORT/0\"\n"
        KG_REDIS_PID=$LAST_PID
        log "keygate with the Redis store on :$KG_REDIS_PORT (pid $KG_REDIS_PID)"
    fi
    if needs_h2_upstream; then
        start_keygate keygate-h2 "$KG_H2_PORT" 0 "$TMP/clients.toml" \
            "\n[admin]\naddress = \"127.0.0.1:$KG_H2_ADMIN_PORT\"\n" \
            "servers = [\"http://127.0.0.1:$UP_H2C_PORT\"]\nprotocol = \"http2\"\n"
        KG_H2_PID=$LAST_PID
        log "keygate with an HTTP/2 upstream on :$KG_H2_PORT (pid $KG_H2_PID)"
    fi
}

start_h2_upstream() {
    start_bg h2-upstream taskset -c "$LOAD_CPU" "$H2UP_BIN" "127.0.0.1:$UP_H2C_PORT"
    H2UP_PID=$LAST_PID
    wait_port "$UP_H2C_PORT" "$H2UP_PID" "the h2c upstream"
    log "h2c upstream on :$UP_H2C_PORT (pid $H2UP_PID)"
}

# Redis for the plain-redis rows, pinned with the upstream and the load, no persistence.
start_redis() {
    start_bg redis taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no
    REDIS_PID=$LAST_PID
    wait_port "$REDIS_PORT" "$REDIS_PID" redis-server
    log "redis-server on :$REDIS_PORT (pid $REDIS_PID)"
}

# ---------------------------------------------------------------- checks

# expect WHAT WANT CURL-ARGS...: curl prints "status body"; compare with WANT (a glob).
expect() {
    local what=$1 want=$2 got
    shift 2
    got=$(curl -sk --max-time 5 -o - -w ' %{http_code} %{http_version}' "$@" 2>/dev/null | tr -d '\n' || true)
    # shellcheck disable=SC2053 # WANT is a glob on purpose
    if [[ $got != $want ]]; then
        warn "check failed: $what: got '$got', want '$want'"
    fi
}

sanity_checks() {
    log "sanity checks"
    if has_target direct; then
        expect "direct plain" 'ok 200 1.1' "http://127.0.0.1:$UP_PORT/"
        expect "direct h2" 'ok 200 2' --http2 "https://127.0.0.1:$UP_TLS_PORT/"
    fi
    local tg port tport
    for tg in nginx keygate; do
        has_target "$tg" || continue
        if [[ $tg == nginx ]]; then port=$NGINX_PORT tport=$NGINX_TLS_PORT; else port=$KG_PORT tport=$KG_TLS_PORT; fi
        expect "$tg valid key" 'ok 200 1.1' -H "X-API-Key: $KEY1" "http://127.0.0.1:$port/"
        expect "$tg forwards client id, strips key" 'client=c0001 key= 200 1.1' \
            -H "X-API-Key: $KEY1" "http://127.0.0.1:$port/echo"
        expect "$tg 1000th key" 'ok 200 1.1' -H "X-API-Key: $(tail -n 1 "$TMP/keys.txt")" \
            "http://127.0.0.1:$port/"
        expect "$tg unknown key" '*"invalid_api_key"* 401 1.1' \
            -H "X-API-Key: $BAD1" "http://127.0.0.1:$port/"
        expect "$tg TLS valid key" 'ok 200 1.1' --http1.1 -H "X-API-Key: $KEY1" "https://127.0.0.1:$tport/"
        expect "$tg TLS h2 valid key" 'ok 200 2' --http2 -H "X-API-Key: $KEY1" "https://127.0.0.1:$tport/"
    done
    if has_target keygate; then
        expect "keygate valid token" 'client=c0001 key= 200 1.1' \
            -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$KG_PORT/echo"
    fi
    if has_target keygate && has_scenario plain-100kkeys; then
        expect "keygate 100,000th key" 'ok 200 1.1' -H "X-API-Key: $(tail -n 1 "$TMP/keys-100k.txt")" \
            "http://127.0.0.1:$KG_100K_PORT/"
    fi
    if has_target nginx && has_scenario plain-100kkeys; then
        expect "nginx 100,000th key" 'ok 200 1.1' -H "X-API-Key: $(tail -n 1 "$TMP/keys-100k.txt")" \
            "http://127.0.0.1:$NGINX_PORT/"
    fi
    if has_target keygate && has_scenario plain-redis; then
        expect "keygate with Redis" 'ok 200 1.1' -H "X-API-Key: $KEY1" "http://127.0.0.1:$KG_REDIS_PORT/"
    fi
    if has_target keygate && has_scenario plain-token-cold; then
        [[ -s $TMP/tokens-es.txt ]] || warn "no ES256 tokens (python3 cryptography missing?)"
        expect "keygate ES256 token" 'client=c0001 key= 200 1.1' \
            -H "Authorization: Bearer $(head -n 1 "$TMP/tokens-es.txt")" "http://127.0.0.1:$KG_PORT/echo"
    fi
    if has_target keygate && has_scenario plain-h2up; then
        expect "keygate to an h2c upstream" 'client=c0001 key= 200 1.1' \
            -H "X-API-Key: $KEY1" "http://127.0.0.1:$KG_H2_PORT/echo"
    fi
    if has_scenario grpc; then
        local tg
        for tg in $TARGETS; do
            expect_grpc "$tg gRPC call" "$(target_url grpc "$tg")" 0
            [[ $tg == direct ]] || expect_grpc "$tg gRPC unknown key" "$(target_url grpc "$tg")" 16 "$BAD1"
        done
    fi
}

# expect_grpc WHAT URL GRPC-STATUS [KEY]: one unary call over h2c (curl), its grpc-status
# (a trailer, or a header in a trailers-only answer) must be GRPC-STATUS.
expect_grpc() {
    local got
    got=$(curl -s --max-time 5 --http2-prior-knowledge -o /dev/null -D - -X POST \
        -H 'content-type: application/grpc' -H 'te: trailers' -H "x-api-key: ${4:-$KEY1}" \
        --data-binary "@$TMP/grpc-request.bin" "$2" 2>/dev/null |
        tr -d '\r' | sed -n 's/^grpc-status: *//Ip' | tail -n 1 || true)
    [[ $got == "$3" ]] || warn "check failed: $1: grpc-status '$got', want '$3'"
}

# ---------------------------------------------------------------- resources

idle_conns() { # label port tls(0|1) pids... -> one table line
    local label=$1 port=$2 tls=$3 idle out opened open rss secs per
    shift 3
    idle=$(rss_kib "$@")
    local -a tlsarg=()
    [[ $tls == 1 ]] && tlsarg=(--tls)
    out=$(taskset -c "$LOAD_CPU" "${HELPER[@]}" idle --port "$port" "${tlsarg[@]}" --key "$KEY1" \
        --pids "$(IFS=,; echo "$*")" --count "$IDLE_CONNS") || {
        warn "$label: idle-connection helper failed"
        return 0
    }
    opened=$(sed -n 's/.*opened=\([0-9]*\).*/\1/p' <<<"$out")
    open=$(sed -n 's/.* open=\([0-9]*\).*/\1/p' <<<"$out")
    rss=$(sed -n 's/.*rss_kib=\([0-9]*\).*/\1/p' <<<"$out")
    secs=$(sed -n 's/.*open_s=\([0-9.]*\).*/\1/p' <<<"$out")
    [[ $opened == "$IDLE_CONNS" ]] || warn "$label: only $opened of $IDLE_CONNS connections opened"
    if [[ $open != "$opened" ]]; then
        warn "$label $([[ $tls == 1 ]] && echo TLS || echo plain): $((opened - open)) of $opened idle keep-alive connections were closed by the server within $secs s (opening) + 2 s; KiB/conn marked '?'"
    fi
    ((opened > 0)) || return 0
    per=$(awk -v a="$rss" -v b="$idle" -v n="$opened" 'BEGIN {printf "%.2f", (a - b) / n}')
    [[ $open == "$opened" ]] || per+="?"
    RESOURCE_LINES+=("$(printf '%-9s %-6s %12s %14s %14s %12s' "$label" \
        "$([[ $tls == 1 ]] && echo TLS || echo plain)" "$idle" "$rss" "$open/$opened" "$per")")
}

startup_100k() {
    local conf=$TMP/keygate/big.toml out r ms=() rss
    write_keygate_config "$conf" "$KG_BIG_PORT" 0 "$TMP/clients-100k.toml"
    log "keygate start-up with $BIG_KEYS keys ($RUNS runs)"
    for ((r = 1; r <= RUNS; r++)); do
        out=$(KEYGATE_LOG=warn "${HELPER[@]}" startup --port "$KG_BIG_PORT" --log "$TMP/keygate-big.log" \
            -- taskset -c "$PROXY_CPU" "$KEYGATE_BIN" serve -c "$conf") || {
            cat "$TMP/keygate-big.log" >&2 || true
            warn "keygate did not start with $BIG_KEYS keys"
            return 0
        }
        ms+=("$(sed -n 's/.*startup_ms=\([0-9]*\).*/\1/p' <<<"$out")")
        rss=$(sed -n 's/.*rss_kib=\([0-9]*\).*/\1/p' <<<"$out")
    done
    STARTUP_LINE="keygate start-up with $BIG_KEYS keys (1000 clients): $(printf '%s\n' "${ms[@]}" | median) ms from exec to accepting (median of ${ms[*]}); RSS then $rss KiB"
}

measure_resources() {
    RESOURCE_LINES=()
    STARTUP_LINE=""
    log "idle-connection memory ($IDLE_CONNS keep-alive connections, one request each)"
    if has_target keygate; then
        idle_conns keygate "$KG_PORT" 0 "$KG_PID"
        idle_conns keygate "$KG_TLS_PORT" 1 "$KG_TLS_PID"
    fi
    if has_target nginx; then
        idle_conns nginx "$NGINX_PORT" 0 "${NGINX_PIDS[@]}"
        idle_conns nginx "$NGINX_TLS_PORT" 1 "${NGINX_PIDS[@]}"
    fi
    has_target keygate && startup_100k
    return 0
}

# ---------------------------------------------------------------- load

# scenario_applies SCENARIO TARGET: the upstream alone does no key work, so its
# baseline is run once per transport shape (the 1000-key and 401 rows reuse plain-1key).
# The Redis rows compare keygate with itself (the local store's plain-1key row).
scenario_applies() {
    # A token (one reused per connection, as real clients do) is keygate's alone.
    [[ $1 == *-token ]] && { [[ $2 == keygate ]]; return; }
    [[ $1 == plain-redis* || $1 == plain-h2up || $1 == plain-token-cold ]] && { [[ $2 == keygate ]]; return; }
    [[ $2 != direct ]] && return 0
    [[ $1 != plain-1000keys && $1 != plain-invalid && $1 != plain-100kkeys && $1 != tls-resumed ]]
}

target_url() { # scenario target
    local tls=0
    [[ $1 == tls-* ]] && tls=1
    case $2:$1 in
        keygate:plain-100kkeys) echo "http://127.0.0.1:$KG_100K_PORT/"; return ;;
        keygate:plain-redis*) echo "http://127.0.0.1:$KG_REDIS_PORT/"; return ;;
        keygate:plain-h2up) echo "http://127.0.0.1:$KG_H2_PORT/"; return ;;
        direct:grpc) echo "http://127.0.0.1:$UP_H2C_PORT$GRPC_PATH"; return ;;
        nginx:grpc) echo "http://127.0.0.1:$NGINX_GRPC_PORT$GRPC_PATH"; return ;;
        keygate:grpc) echo "http://127.0.0.1:$KG_H2_PORT$GRPC_PATH"; return ;;
    esac
    case $2:$tls in
        direct:0) echo "http://127.0.0.1:$UP_PORT/" ;;
        direct:1) echo "https://127.0.0.1:$UP_TLS_PORT/" ;;
        nginx:0) echo "http://127.0.0.1:$NGINX_PORT/" ;;
        nginx:1) echo "https://127.0.0.1:$NGINX_TLS_PORT/" ;;
        keygate:0) echo "http://127.0.0.1:$KG_PORT/" ;;
        keygate:1) echo "https://127.0.0.1:$KG_TLS_PORT/" ;;
    esac
}

target_pids() { # scenario target
    case $2 in
        direct) if [[ $1 == grpc ]]; then echo "$H2UP_PID"; else echo "${UP_PIDS[*]}"; fi ;;
        nginx) echo "${NGINX_PIDS[*]}" ;;
        keygate) case $1 in
                tls-*) echo "$KG_TLS_PID" ;;
                plain-100kkeys) echo "$KG_100K_PID" ;;
                plain-redis*) echo "$KG_REDIS_PID" ;;
                grpc | plain-h2up) echo "$KG_H2_PID" ;;
                *) echo "$KG_PID" ;;
            esac ;;
    esac
}

# run_wrk SCENARIO URL -> "requests duration_us p50 p99 errors"
run_wrk() {
    local sc=$1 url=$2 out
    local -a args=(-t "$THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 5s -s "$BENCH_DIR/wrk.lua")
    local -a script_args=()
    case $sc in
        *-1key | plain-redis* | plain-h2up) args+=(-H "X-API-Key: $KEY1") ;;
        *-token-cold) script_args=(-- "$TMP/tokens-es.txt" bearer) ;;
        *-token) args+=(-H "Authorization: Bearer $TOKEN1") ;;
        *-close) args+=(-H "X-API-Key: $KEY1" -H "Connection: close") ;;
        *-1000keys) script_args=(-- "$TMP/keys.txt") ;;
        *-100kkeys) script_args=(-- "$TMP/keys-100k.txt") ;;
        *-invalid) script_args=(-- "$TMP/invalid.txt") ;;
    esac
    out=$(taskset -c "$LOAD_CPU" wrk "${args[@]}" "$url" "${script_args[@]}" 2>&1) || true
    grep -q '^BENCH ' <<<"$out" || { warn "$sc $url: wrk failed: $out"; echo "0 1 0 0 1"; return 0; }
    awk -v expect_ok="$([[ $sc == *-invalid ]] && echo 0 || echo 1)" '/^BENCH / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        err = v["connect"] + v["read"] + v["write"] + v["timeout"]
        if (expect_ok) err += v["status"]; else err += v["requests"] - v["status"]
        print v["requests"], v["duration_us"], v["p50_us"], v["p99_us"], err
    }' <<<"$out"
}

# run_s_time URL -> "requests duration_us 0 0 errors": openssl s_time -reuse, one
# connection at a time, each resuming the first one's session (HTTP/1.0 GET / without
# a key: the 401 and the close). It gives no latencies; a connection that did not
# resume counts as an error.
run_s_time() {
    local hostport=${1#https://} out n secs reused
    hostport=${hostport%/}
    out=$(taskset -c "$LOAD_CPU" openssl s_time -connect "$hostport" -reuse -time "$DURATION" -www / 2>&1) || true
    n=$(sed -n 's/^\([0-9]*\) connections in \([0-9.]*\)s;.*/\1/p' <<<"$out" | tail -n 1)
    secs=$(sed -n 's/^[0-9]* connections in \([0-9]*\) real seconds.*/\1/p' <<<"$out" | tail -n 1)
    # One character per connection: r = resumed.
    reused=$(grep -E '^[r*t3]+$' <<<"$out" | tr -cd 'r' | wc -c)
    if [[ -z $n || -z $secs ]] || ((n == 0)); then
        warn "s_time $1 failed: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        echo "0 1 0 0 1"
        return 0
    fi
    echo "$n $((secs * 1000000)) 0 0 $((n > reused ? n - reused : 0))"
}

# run_h2load URL [H2LOAD-ARGS...] -> "requests duration_us p50 p99 errors"
run_h2load() {
    local url=$1 log out
    shift
    log=$TMP/h2/$RANDOM.log
    out=$(taskset -c "$LOAD_CPU" h2load -t 1 -c 10 -m 10 -D "$DURATION" --log-file="$log" \
        -H "X-API-Key: $KEY1" "$@" "$url" 2>&1) || true
    local done_n secs p50 p99 ok
    done_n=$(sed -n 's/^requests: .* \([0-9]*\) done, \([0-9]*\) succeeded.*/\1/p' <<<"$out")
    ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
    secs=$(sed -n 's/^finished in \([0-9.]*\)s,.*/\1/p' <<<"$out")
    if [[ -z $done_n || -z $secs || -z $ok || ! -s $log ]]; then
        warn "h2load $url failed: $(tail -n 5 <<<"$out" | tr '\n' ' ')"
        echo "0 1 0 0 1"
        return 0
    fi
    read -r p50 p99 < <("${HELPER[@]}" percentiles "$log")
    rm -f "$log"
    awk -v n="$done_n" -v s="$secs" -v a="$p50" -v b="$p99" -v ok="$ok" \
        'BEGIN {printf "%d %d %d %d %d\n", n, s * 1e6, a, b, n - ok}'
}

# run_one SCENARIO TARGET: one measured run, appended to $TMP/res/SCENARIO.TARGET as
# "rps p50_us p99_us cpu_us_per_req errors"
run_one() {
    local sc=$1 tg=$2 url t0 t1 s0 b0 b1 other res cpid
    local -a pids
    url=$(target_url "$sc" "$tg")
    read -r -a pids <<<"$(target_pids "$sc" "$tg")"
    b0=$(core_busy "$PROXY_CPU")
    t0=$(cpu_ticks "${pids[@]}")
    s0=$(sys_ticks "${pids[@]}")
    r0=$([[ $sc == plain-redis ]] && cpu_ticks "$REDIS_PID" || echo 0)
    case $sc in
        tls-h2) res=$(run_h2load "$url") ;;
        grpc) cpid=""
            [[ $tg == direct ]] || { upstream_conns_later "$tg" "$UP_H2C_PORT" & cpid=$!; }
            res=$(run_h2load "$url" -d "$TMP/grpc-request.bin" -H 'content-type: application/grpc' \
                -H 'te: trailers')
            [[ -z $cpid ]] || wait "$cpid" ;;
        plain-h2up) upstream_conns_later "$tg" "$UP_H2C_PORT" &
            cpid=$!
            res=$(run_wrk "$sc" "$url")
            [[ -z $cpid ]] || wait "$cpid" ;;
        tls-resumed) res=$(run_s_time "$url") ;;
        plain-1key) cpid=""
            [[ $tg == direct ]] || { upstream_conns_later "$tg" "$UP_PORT" & cpid=$!; }
            res=$(run_wrk "$sc" "$url")
            [[ -z $cpid ]] || wait "$cpid" ;;
        *) res=$(run_wrk "$sc" "$url") ;;
    esac
    t1=$(cpu_ticks "${pids[@]}")
    # The kernel's share of that CPU time, reported below the table.
    (( t1 > t0 )) && echo "$(( ($(sys_ticks "${pids[@]}") - s0) * 100 / (t1 - t0) ))" >>"$TMP/res/sys.$sc.$tg"
    if [[ $sc == plain-redis ]]; then # Redis's own CPU per request, reported beside the table
        awk -v t="$(($(cpu_ticks "$REDIS_PID") - r0))" -v hz="$CLK_TCK" '$1 > 0 {printf "%.2f\n", t / hz * 1e6 / $1}' \
            <<<"$res" >>"$TMP/res/redis-cpu"
    fi
    b1=$(core_busy "$PROXY_CPU")
    # Anything else busy on the proxies' core skews their figures: note the worst run.
    if [[ $tg != direct ]]; then
        other=$(((b1 - b0 - (t1 - t0)) * 100 / (DURATION * CLK_TCK)))
        ((other > ${NOISE["$sc $tg"]:-0})) && NOISE["$sc $tg"]=$other
    fi
    awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" '{
        rps = $2 > 0 ? $1 / ($2 / 1e6) : 0
        cpu = $1 > 0 ? t / hz * 1e6 / $1 : 0
        printf "%.0f %d %d %.2f %d\n", rps, $3, $4, cpu, $5
    }' <<<"$res" | tee -a "$TMP/res/$sc.$tg" | {
        read -r rps p50 p99 cpu err
        log "  $sc $tg: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu} CPU us/req, errors $err"
    }
    # The proxies must still answer as expected after the load (e.g. no 429 throttling).
    if [[ $sc == grpc ]]; then
        expect_grpc "$tg still grpc-status 0 after $sc" "$url" 0
    elif [[ $tg != direct && ($sc == plain-invalid || $sc == tls-resumed) ]]; then
        expect "$tg still 401 after $sc" '*"invalid_api_key"* 401 *' \
            -H "X-API-Key: $BAD1" "$url"
    elif [[ $tg != direct && $sc == plain-100kkeys ]]; then
        expect "$tg still 200 after $sc" 'ok 200 *' -H "X-API-Key: $(tail -n 1 "$TMP/keys-100k.txt")" "$url"
    elif [[ $tg != direct ]]; then
        expect "$tg still 200 after $sc" 'ok 200 *' -H "X-API-Key: $KEY1" "$url"
    fi
}

# upstream_conns_later TARGET PORT: halfway through a run, the proxy's open connections
# to the upstream's PORT (from ss), appended to $TMP/res/up-conns.$sc.$tg.
upstream_conns_later() {
    local pid n
    sleep $((DURATION / 2))
    n=0
    for pid in $(target_pids "$sc" "$1"); do
        n=$((n + $(ss -Htnp state established "( dport = :$2 )" 2>/dev/null | grep -c "pid=$pid," || true)))
    done
    echo "$n" >>"$TMP/res/up-conns.$sc.$1"
}

run_load() {
    local sc tg r n=0
    for sc in $SCENARIOS; do for tg in $TARGETS; do
        scenario_applies "$sc" "$tg" && n=$((n + 1))
    done; done
    log "load: $n scenario/target pairs x $RUNS runs x ${DURATION}s (about $((n * RUNS * (DURATION + 1) / 60 + 1)) min)"
    for sc in $SCENARIOS; do
        # The breaker-open row: Redis stopped, keygate falls back to its local store.
        if [[ $sc == plain-redis-down && -n ${REDIS_PID:-} ]]; then
            stop_pids "$REDIS_PID"
            REDIS_PID=""
            sleep 1
        fi
        for ((r = 1; r <= RUNS; r++)); do
            for tg in $TARGETS; do
                scenario_applies "$sc" "$tg" || continue
                run_one "$sc" "$tg"
                sleep 1
            done
        done
    done
}

# ---------------------------------------------------------------- report

# median: of the numbers on stdin, one per line
median() {
    sort -g | awk '{a[NR] = $1} END {print ((NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'
}

# median_row FILE -> per-column medians of "rps p50 p99 cpu err" lines (err: the max)
median_row() {
    local col vals=()
    for col in 1 2 3 4; do
        vals+=("$(cut -d' ' -f"$col" "$1" | median)")
    done
    vals+=("$(cut -d' ' -f5 "$1" | sort -g | tail -n 1)")
    echo "${vals[*]}"
}

# print_ranges: keygate's CPU per request and p99 over the row it is compared
# with, run by run (the runs alternate targets, so run i of each was measured
# within seconds of the other), and the range: the figures the targets are held to.
print_ranges() {
    local sc k b label cpu p99 per_core
    printf '\nRun by run (keygate / the compared row; range = min-max over the %s runs):\n' "$RUNS"
    for sc in $SCENARIOS; do
        k=$TMP/res/$sc.keygate
        case $sc in
            plain-redis*) b=$TMP/res/plain-1key.keygate label=keygate/local ;;
            plain-h2up | plain-token-cold) b=$TMP/res/plain-1key.keygate label=keygate/1key ;;
            *) b=$TMP/res/$sc.nginx label=keygate/nginx ;;
        esac
        [[ -s $k && -s $b ]] || continue
        cpu=$(paste -d' ' "$k" "$b" | awk '$9 > 0 {printf "%.2f\n", $4 / $9}' | ratio_list)
        p99=$(paste -d' ' "$k" "$b" | awk '$8 > 0 {printf "%.2f\n", $3 / $8}' | ratio_list)
        per_core=""
        [[ $sc == tls-close || $sc == tls-resumed ]] &&
            per_core="  per core $(paste -d' ' "$k" "$b" | awk '$4 > 0 {printf "%.2f\n", $9 / $4}' | ratio_list)"
        printf '%-16s %-14s CPU %s  p99 %s%s\n' "$sc" "$label" "$cpu" "${p99:-"-"}" "$per_core"
    done
}

# print_sys_shares: the kernel's share (stime) of each target's CPU, run by run.
print_sys_shares() {
    local sc tg f line
    printf '\nKernel share of CPU (stime / (utime + stime), %%, run by run):\n'
    for sc in $SCENARIOS; do
        line=""
        for tg in $TARGETS; do
            f=$TMP/res/sys.$sc.$tg
            [[ -s $f ]] && line+=" $tg $(tr '\n' ' ' <"$f")"
        done
        [[ -n $line ]] && printf '%-16s%s\n' "$sc" "$line"
    done
}

# ratio_list: "a b c (min-max)" of the numbers on stdin, one per line
ratio_list() {
    awk '{v[NR] = $1; if (NR == 1 || $1 < lo) lo = $1; if (NR == 1 || $1 > hi) hi = $1}
        END {if (NR == 0) exit; for (i = 1; i <= NR; i++) printf "%s ", v[i]; printf "(%s-%s)", lo, hi}'
}

print_table() {
    local fmt='%-15s %-15s %10s %9s %9s %11s %11s %7s\n'
    printf '\n'
    printf 'keygate bench: %s, %d core(s), load average at start %s; %s s x %s runs (median), wrk -t%s -c%s, h2load -c 10 -m 10; proxies on CPU %s, load + upstream on CPU %s\n' \
        "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$LOADAVG_START" "$DURATION" "$RUNS" "$THREADS" "$CONNS" "$PROXY_CPU" "$LOAD_CPU"
    # shellcheck disable=SC2059 # the format is a variable on purpose
    printf "$fmt" scenario target 'req/s' 'p50 us' 'p99 us' 'CPU us/req' 'req/CPU-s' errors
    local sc tg base f label rps p50 p99 cpu err
    local -a ratio
    local -A row
    for sc in $SCENARIOS; do
        for tg in $TARGETS; do
            f=$TMP/res/$sc.$tg
            [[ -s $f ]] || continue
            row[$tg]=$(median_row "$f")
            read -r rps p50 p99 cpu err <<<"${row[$tg]}"
            # shellcheck disable=SC2059
            printf "$fmt" "$sc" "$tg" "$rps" "$p50" "$p99" "$cpu" \
                "$(awk -v c="$cpu" 'BEGIN {print (c > 0 ? sprintf("%.0f", 1e6 / c) : "-")}')" "$err"
        done
        # The Redis, HTTP/2-upstream and cold-token rows: keygate against itself with
        # one key, the local store and the HTTP/1 upstream (its plain-1key row).
        if [[ ($sc == plain-redis* || $sc == plain-h2up || $sc == plain-token-cold) && -s $TMP/res/plain-1key.keygate ]]; then
            row[nginx]="" row[local]=$(median_row "$TMP/res/plain-1key.keygate")
            read -r -a ratio < <(awk -v a="${row[keygate]:-0 0 0 0 0}" -v b="${row[local]}" 'BEGIN {
                split(a, x, " "); split(b, y, " ")
                for (i = 1; i <= 4; i++) printf "%s ", (y[i] > 0 ? sprintf("%.2f", x[i] / y[i]) : "-")
                printf "%s\n", (x[4] > 0 ? sprintf("%.2f", y[4] / x[4]) : "-")
            }')
            # shellcheck disable=SC2059
            printf "$fmt" "$sc" "$([[ $sc == plain-redis* ]] && echo keygate/local || echo keygate/1key)" "${ratio[@]}" ''
            row=()
            continue
        fi
        # The upstream alone: the same-transport keep-alive baseline where it was not run.
        base=$TMP/res/$sc.direct
        [[ -s $base ]] || base=$TMP/res/plain-1key.direct
        [[ -s $base ]] && row[direct]=$(median_row "$base")
        for tg in nginx direct; do
            [[ -n ${row[keygate]:-} && -n ${row[$tg]:-} ]] || continue
            [[ $tg == direct && $sc == tls-resumed ]] && continue # no baseline of that shape
            read -r -a ratio < <(awk -v a="${row[keygate]}" -v b="${row[$tg]}" 'BEGIN {
                split(a, x, " "); split(b, y, " ")
                for (i = 1; i <= 4; i++) printf "%s ", (y[i] > 0 ? sprintf("%.2f", x[i] / y[i]) : "-")
                printf "%s\n", (x[4] > 0 ? sprintf("%.2f", y[4] / x[4]) : "-")
            }')
            label=keygate/$tg
            [[ $tg == direct && $base != "$TMP/res/$sc.direct" ]] && label+='*'
            # shellcheck disable=SC2059
            printf "$fmt" "$sc" "$label" "${ratio[@]}" ''
        done
        row=()
    done
    printf '(req/CPU-s: on *-close rows every request is a new connection, so on tls-close it is TLS handshakes per CPU second.\n'
    printf ' CPU: utime+stime of the target process(es) only - nginx master+worker, keygate one process, direct = upstream nginx.\n'
    printf ' keygate/direct*: the upstream alone does no key work; compared with its plain-1key row.\n'
    printf ' tls-resumed: openssl s_time -reuse, one connection at a time, HTTP/1.0 without a key (401), no latencies;\n'
    printf '   errors = connections that did not resume. plain-100kkeys: keygate and nginx with 100,000 keys (1,000 clients).\n'
    printf ' plain-redis: store = "redis", Redis on CPU %s; plain-redis-down: Redis stopped, breaker open, local fallback;\n' "$LOAD_CPU"
    printf '   keygate/local: against keygate'"'"'s plain-1key row (the local store).\n'
    printf ' grpc: h2load -c 10 -m 10 unary calls over h2c (x-api-key, a 15-byte message), to examples/bench_upstream\n'
    printf '   (h2c, on CPU %s; direct = that upstream), nginx grpc_pass, keygate protocol = "http2".\n' "$LOAD_CPU"
    printf ' plain-h2up: HTTP/1 wrk through keygate to that h2c upstream; plain-token-cold: a new ES256 token per request\n'
    printf '   (%s tokens round-robin, cache 10,000); keygate/1key: against keygate'"'"'s plain-1key row.)\n' "$COLD_TOKENS"
    print_ranges
    print_sys_shares
    local cf
    for cf in "$TMP"/res/up-conns.*; do
        [[ -s $cf ]] || continue
        printf 'upstream connections open halfway through %s: %s\n' "${cf##*/up-conns.}" "$(tr '\n' ' ' <"$cf")"
    done
    if [[ -s $TMP/res/redis-cpu ]]; then
        printf 'Redis CPU us/request on plain-redis (median of %d runs): %s\n' "$(wc -l <"$TMP/res/redis-cpu")" \
            "$(median <"$TMP/res/redis-cpu")"
    fi
    if [[ $RESOURCES == 1 ]]; then
        printf '\n%-9s %-6s %12s %14s %14s %12s\n' target listen 'RSS idle KiB' \
            "RSS +${IDLE_CONNS}c KiB" 'still open' 'KiB/conn'
        local line
        for line in "${RESOURCE_LINES[@]}"; do printf '%s\n' "$line"; done
        [[ -n $STARTUP_LINE ]] && printf '%s\n' "$STARTUP_LINE"
    fi
    local noisy=()
    for sc in $SCENARIOS; do for tg in nginx keygate; do
        ((${NOISE["$sc $tg"]:-0} >= 5)) && noisy+=("$sc $tg ${NOISE["$sc $tg"]}%")
    done; done
    if ((${#noisy[@]} > 0)); then
        printf '\nOther processes used CPU %s during these runs (worst run, %% of its time); their figures are less reliable:\n' "$PROXY_CPU"
        local joined
        joined=$(printf '%s, ' "${noisy[@]}")
        printf '%s\n' "${joined%, }" | fold -s -w 96 | sed 's/^/  /'
    fi
    if [[ -s $TMP/warnings ]]; then
        printf '\nWARNINGS (%d):\n' "$(wc -l <"$TMP/warnings")"
        sed 's/^/  /' "$TMP/warnings"
    fi
    return 0
}

main() {
    LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg)
    ensure_tools
    make_tmp
    raise_nofile
    has_target keygate && build_keygate
    needs_h2_upstream && build_h2_upstream
    make_material
    alloc_ports
    start_upstream
    needs_h2_upstream && start_h2_upstream
    has_target nginx && start_nginx_proxy
    has_target keygate && start_keygates
    sanity_checks
    [[ $RESOURCES == 1 ]] && measure_resources
    run_load
    print_table
    [[ ! -s $TMP/warnings ]]
}

main "$@"
