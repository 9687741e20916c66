# syntax=docker/dockerfile:1
# The ws-echo image: WebSocket echo/broadcast server on wsrt.
#
#   docker build -t wsrt/ws-echo .
#   docker run --rm -p 8080:8080 -e WSRT_PREFIX=hostname wsrt/ws-echo
#
# Every option is an environment variable WSRT_<NAME> (`ws-echo --help` lists them all).
# tests/deploy.rs reads the ENV, ENTRYPOINT, CMD and HEALTHCHECK lines of this file and runs
# the same binary with them, so keep each ENV value free of spaces and quotes.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin ws-echo \
 && strip target/release/ws-echo \
 && cp target/release/ws-echo /usr/local/bin/ws-echo

FROM debian:bookworm-slim
# No packages needed: ws-echo is linked against glibc only, and the health check uses bash.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wsrt
COPY --from=build /usr/local/bin/ws-echo /usr/local/bin/ws-echo
USER 10001:10001

# Defaults for a container; override any of them with `docker run -e WSRT_...`.
# Shutdown (docker stop sends SIGTERM): health checks fail and upgrades get 503 at once,
# connections keep being served for WSRT_DRAIN_DELAY, then get close 1001 spread over
# WSRT_DRAIN_WINDOW; the process exits within WSRT_DRAIN_DELAY + WSRT_SHUTDOWN_TIMEOUT,
# inside docker stop's default 10 s grace period (raise it with --stop-timeout or compose's
# stop_grace_period when you raise these).
ENV WSRT_LISTEN=0.0.0.0:8080 \
    WSRT_HEALTH_PATH=/healthz \
    WSRT_PING_INTERVAL=30s \
    WSRT_DRAIN_DELAY=2s \
    WSRT_DRAIN_WINDOW=2s \
    WSRT_SHUTDOWN_TIMEOUT=6s \
    WSRT_LOG_LEVEL=info

EXPOSE 8080
STOPSIGNAL SIGTERM

# GET the health path on the port of WSRT_LISTEN, with bash's /dev/tcp (no curl in the slim
# image). When PROXY protocol is required, the check sends a header that means "use the
# socket's own addresses" (v1 UNKNOWN, v2 LOCAL); 127.0.0.1 must then be in
# WSRT_TRUSTED_PROXIES.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${WSRT_LISTEN##*:} || exit 1; case ${WSRT_PROXY_PROTOCOL:-off} in v1) printf "PROXY UNKNOWN\r\n" >&3;; v2|any) printf "\r\n\r\n\0\r\nQUIT\n\x20\0\0\0" >&3;; esac; printf "GET ${WSRT_HEALTH_PATH:-/healthz} HTTP/1.0\r\n\r\n" >&3; head -n 1 <&3 | grep -q " 200 "'

ENTRYPOINT ["/usr/local/bin/ws-echo"]
CMD []
