# keygate container image.
#
#   docker build -t keygate .
#   podman build --format docker -t keygate .   # podman: keep the HEALTHCHECK (OCI drops it)
#
# Sidecar, configured from the environment alone (see config/sidecar.env):
#   docker run --env-file config/sidecar.env --network container:orders-app \
#     --stop-timeout 35 -v "$PWD/tls:/etc/keygate/tls:ro" keygate
#
# Gateway, configured from a mounted file (see config/gateway.toml):
#   docker run -v "$PWD/config/gateway.toml:/etc/keygate/keygate.toml:ro" \
#     -e KEYGATE_CONFIG=/etc/keygate/keygate.toml --stop-timeout 35 \
#     -v "$PWD/tls:/etc/keygate/tls:ro" -p 8443:8443 keygate
#   (KEYGATE_CONFIG rather than `serve -c`, so the health check reads the same file)
#
# --stop-timeout (compose: stop_grace_period: 35s) must exceed the drain,
# listen.shutdown_grace or KEYGATE_SHUTDOWN_GRACE (default 30s): engines send
# SIGKILL 10 s after `stop` otherwise, cutting requests in flight.
#
# Mounted files must be readable by uid 65532 (see certs/README.md).
# No KEYGATE_CONFIG is set here on purpose: with none, keygate reads its
# config from KEYGATE_* variables, which is what a sidecar wants.
#
# A smaller runtime without a shell or package manager:
#   docker build --target distroless -t keygate:distroless .

ARG RUST_VERSION=1

# ---------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# 1. Dependencies only, cached until the manifest changes: build against a
#    stub src/ (benches/ is copied because the manifest names its files),
#    then drop keygate's own artifacts so step 2 rebuilds it.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && : > src/lib.rs \
 && cargo build --release --locked --bin keygate \
 && rm -rf src target/release/.fingerprint/keygate-*

# 2. The real source. .dockerignore keeps target/, .git/ and secrets out.
COPY . .
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/keygate /out/keygate

# ------------------------------------------------------- distroless runtime
# Same binary on distroless "cc" (glibc, CA certificates, no shell), built only
# with --target distroless. Its nonroot user is uid 65532, like the default.
FROM gcr.io/distroless/cc-debian12:nonroot AS distroless
COPY --from=builder /out/keygate /usr/local/bin/keygate
USER 65532:65532
ENV KEYGATE_LISTEN=0.0.0.0:8443 \
    KEYGATE_ADMIN=0.0.0.0:9901
EXPOSE 8443 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/keygate", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]

# ---------------------------------------------------------------- runtime
# The default target (last stage). Debian slim, the same release the builder links against (glibc), plus CA
# certificates for https upstreams; nothing else is installed.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 keygate \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin keygate

LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="TLS-terminating reverse proxy that authenticates server-to-server calls with API keys" \
      org.opencontainers.image.licenses="Apache-2.0"

# Owned by root and not writable by the runtime user.
COPY --from=builder /out/keygate /usr/local/bin/keygate

# Numeric (uid 65532): Kubernetes' runAsNonRoot can only verify a numeric user.
USER 65532:65532

ENV KEYGATE_LISTEN=0.0.0.0:8443 \
    KEYGATE_ADMIN=0.0.0.0:9901

# 8443: the proxy (TLS when a certificate is configured). 9901: /healthz,
# /readyz, /metrics; for probes and scraping, do not publish it publicly.
EXPOSE 8443 9901

# Exits 0 when keygate's own /healthz answers on the admin address serve uses
# (KEYGATE_ADMIN, else [admin] of $KEYGATE_CONFIG): it follows a moved
# KEYGATE_ADMIN, and another server on that port does not count as healthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/keygate", "healthcheck"]

STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
