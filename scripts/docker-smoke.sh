#!/usr/bin/env bash
# Smoke-test the container image: build it (podman: in docker format, which
# keeps HEALTHCHECK), check it carries a health check, run it as a sidecar
# configured from env alone in front of a tiny upstream, run its health check
# once, and make one authenticated call.
#
#   scripts/docker-smoke.sh                    # skips (exit 0) when no engine runs
#   REQUIRE_DOCKER=1 scripts/docker-smoke.sh   # fails instead of skipping
#   CONTAINER_ENGINE=podman scripts/docker-smoke.sh
#   IMAGE=keygate:test scripts/docker-smoke.sh
#
# Needs: a running docker or podman engine on Linux (uses --network host),
# curl and python3 on the host.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${IMAGE:-keygate:smoke}

say() { printf 'docker-smoke: %s\n' "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }

# ------------------------------------------------------------ engine or skip
engine=""
for candidate in ${CONTAINER_ENGINE:-docker podman}; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
done
if [[ -z $engine ]]; then
  say "no container engine available (docker info failed); skipping"
  [[ ${REQUIRE_DOCKER:-0} == 1 ]] && { say "REQUIRE_DOCKER=1: failing" >&2; exit 1; }
  exit 0
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done

# ------------------------------------------ cleanup of what we started only
work=$(mktemp -d)
cid=""
upstream_pid=""
cleanup() {
  local rc=$?
  if [[ -n $cid ]]; then
    if ((rc != 0)); then
      say "container logs:" >&2
      "$engine" logs "$cid" >&2 || true
    fi
    "$engine" rm -f "$cid" >/dev/null 2>&1 || true
  fi
  if [[ -n $upstream_pid ]]; then kill "$upstream_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------- build
say "building $image with $engine"
build_args=()
# podman and buildah build OCI images by default, which have no HEALTHCHECK:
# it is dropped with only a warning. The docker format keeps it.
[[ $engine == podman ]] && build_args+=(--format docker)
"$engine" build "${build_args[@]}" -t "$image" "$root"

case $engine in
  podman) health_format='{{json .HealthCheck}}' ;;
  *) health_format='{{json .Config.Healthcheck}}' ;;
esac
health=$("$engine" image inspect -f "$health_format" "$image")
[[ $health == *healthcheck* ]] || fail "image carries no health check (got: $health)"
say "image health check: $health"

user=$("$engine" inspect -f '{{.Config.User}}' "$image")
case ${user%%:*} in
  "" | 0 | root) fail "image runs as root (User=\"$user\")" ;;
esac
say "image user: $user"

# ---------------------------------------------------------- tiny upstream
# Answers every GET with what keygate forwarded: the client id and whether
# the key leaked through.
cat >"$work/upstream.py" <<'PY'
import http.server, json, sys

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "path": self.path,
            "client": self.headers.get("X-Client-Id"),
            "key_forwarded": "X-API-Key" in self.headers,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
python3 "$work/upstream.py" >"$work/upstream.port" &
upstream_pid=$!
for _ in $(seq 50); do [[ -s $work/upstream.port ]] && break; sleep 0.1; done
upstream_port=$(<"$work/upstream.port")
[[ -n $upstream_port ]] || fail "upstream did not start"

# ------------------------------------------------------------ run keygate
# Host network so the container reaches the loopback upstream; random ports
# so nothing on the host clashes. The key is passed by name (-e VAR), so its
# value is not on the engine's command line. Runs locked down like the
# Kubernetes example: read-only root, no capabilities.
listen_port=$(free_port)
admin_port=$(free_port)
KEYGATE_KEY_SMOKE=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export KEYGATE_KEY_SMOKE
cid=$(KEYGATE_UPSTREAM="http://127.0.0.1:$upstream_port" \
  KEYGATE_LISTEN="127.0.0.1:$listen_port" \
  KEYGATE_ADMIN="127.0.0.1:$admin_port" \
  "$engine" run -d --network host --read-only --cap-drop ALL \
  --security-opt no-new-privileges --stop-timeout 35 \
  -e KEYGATE_UPSTREAM -e KEYGATE_LISTEN -e KEYGATE_ADMIN -e KEYGATE_KEY_SMOKE \
  -e KEYGATE_LOG=info \
  "$image")
say "started container ${cid:0:12}"

ready=0
for _ in $(seq 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  [[ $("$engine" inspect -f '{{.State.Running}}' "$cid") == true ]] || fail "container exited"
  sleep 0.2
done
((ready)) || fail "keygate not ready after 20s"

# ------------------------------------------------------------------ checks
# The image's own health check, once: it must find the moved admin port
# (KEYGATE_ADMIN) by itself.
if [[ $engine == podman ]]; then
  "$engine" healthcheck run "$cid" || fail "podman healthcheck run: unhealthy"
else
  health=""
  for _ in $(seq 150); do
    health=$("$engine" inspect -f '{{.State.Health.Status}}' "$cid")
    [[ $health == healthy || $health == unhealthy ]] && break
    sleep 0.2
  done
  [[ $health == healthy ]] || fail "health status after 30s: $health"
fi
say "health check: healthy"

# Header from a file, so the key is not in curl's argv either.
printf 'X-API-Key: %s\n' "$KEYGATE_KEY_SMOKE" >"$work/auth.header"
status=$(curl -sS -o "$work/body" -w '%{http_code}' -H "@$work/auth.header" \
  "http://127.0.0.1:$listen_port/smoke")
[[ $status == 200 ]] || fail "authenticated request: expected 200, got $status: $(<"$work/body")"
grep -q '"client": "smoke"' "$work/body" || fail "upstream did not see X-Client-Id: smoke: $(<"$work/body")"
grep -q '"key_forwarded": false' "$work/body" || fail "key was forwarded upstream: $(<"$work/body")"

status=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$listen_port/smoke")
[[ $status == 401 ]] || fail "request without key: expected 401, got $status"

say "OK: non-root image with a health check that passes, 200 with key, 401 without"
