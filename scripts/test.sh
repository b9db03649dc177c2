#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Installs the command-line tools the tests drive (curl, openssl, redis-server, promtool,
# Python prometheus_client) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v promtool >/dev/null || need+=(prometheus)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: please install: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
