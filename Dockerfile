# keygate container image.
#
#   docker build -t keygate .
#
# Sidecar, configured from the environment alone (see config/sidecar.env):
#   docker run --env-file config/sidecar.env --network container:orders-app \
#     -v "$PWD/tls:/etc/keygate/tls:ro" keygate
#
# Gateway, configured from a mounted file (see config/gateway.toml):
#   docker run -v "$PWD/config/gateway.toml:/etc/keygate/keygate.toml:ro" \
#     -v "$PWD/tls:/etc/keygate/tls:ro" -p 8443:8443 \
#     keygate serve -c /etc/keygate/keygate.toml
#   (or -e KEYGATE_CONFIG=/etc/keygate/keygate.toml instead of -c)
#
# Mounted files must be readable by uid 65532.
# No KEYGATE_CONFIG is set here on purpose: with none, keygate reads its
# config from KEYGATE_* variables, which is what a sidecar wants.

ARG RUST_VERSION=1

# ---------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Dependencies only, so they stay cached until Cargo.toml/Cargo.lock change.
#    Every target the manifest declares gets a stub (cargo refuses a manifest
#    whose [[bench]]/[[test]]/[[example]] files are missing), then keygate's
#    own artifacts are cleaned so the real build below always recompiles it.
COPY Cargo.toml Cargo.lock ./
RUN set -eu; \
    mkdir -p src; : > src/lib.rs; echo 'fn main() {}' > src/main.rs; \
    awk 'BEGIN { d["bench"] = "benches"; d["test"] = "tests"; d["example"] = "examples" } \
         function flush() { if (kind != "" && path == "" && name != "") print d[kind] "/" name ".rs"; kind = ""; name = ""; path = "" } \
         /^\[/ { flush() } \
         /^\[\[(bench|test|example)\]\]/ { kind = $0; gsub(/[][ \t]/, "", kind) } \
         /^[ \t]*path[ \t]*=.*\.rs"/ { p = $0; sub(/^[^"]*"/, "", p); sub(/".*/, "", p); print p; path = p } \
         /^[ \t]*name[ \t]*=/ { n = $0; sub(/^[^"]*"/, "", n); sub(/".*/, "", n); name = n } \
         END { flush() }' Cargo.toml \
    | while read -r f; do \
        [ -e "$f" ] || { mkdir -p "$(dirname "$f")"; echo 'fn main() {}' > "$f"; }; \
      done; \
    cargo build --release --locked; \
    cargo clean --release --locked -p keygate

# 2. The real source. .dockerignore keeps target/, .git/ and secrets out.
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/keygate /out/keygate

# ---------------------------------------------------------------- runtime
# distroless "cc" rather than debian-slim: it has exactly what a Rust binary
# linked against glibc needs (glibc, libgcc_s, CA certificates for https
# upstreams, tzdata) and no shell or package manager, so there is little to
# patch or exploit. Its ":nonroot" variant defines the user nonroot, uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="TLS-terminating reverse proxy that authenticates server-to-server calls with API keys" \
      org.opencontainers.image.licenses="Apache-2.0"

# Owned by root and not writable by the runtime user.
COPY --from=builder /out/keygate /usr/local/bin/keygate

# Numeric form of "nonroot" (uid 65532): Kubernetes' runAsNonRoot can only
# verify a numeric user.
USER 65532:65532

ENV KEYGATE_LISTEN=0.0.0.0:8443 \
    KEYGATE_ADMIN=0.0.0.0:9901

# 8443: the proxy (TLS when a certificate is configured). 9901: /healthz,
# /readyz, /metrics; for probes and scraping, do not publish it publicly.
EXPOSE 8443 9901

# Exits 0 when /healthz answers 200. Assumes the admin port above; if you move
# KEYGATE_ADMIN, override with --health-cmd.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/keygate", "healthcheck", "http://127.0.0.1:9901/healthz"]

ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
