# sluicegate: a drop-in rate limit service for Envoy.
#
#   docker build -t sluicegate .
#   docker run --rm -p 8080:8080 -p 8081:8081 -p 6070:6070 sluicegate
#
# The image serves config/ (the example rules) through the reference's runtime layout:
# RUNTIME_ROOT=/srv/runtime_data/current, RUNTIME_SUBDIRECTORY=sluicegate, rule files in
# its config/ directory. Mount your own rules there, or set RUNTIME_* as you do for
# envoyproxy/ratelimit: the variables work the same, so the image swaps in for it.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && echo 'fn main() {}' > examples/loadgen.rs && echo 'fn main() {}' > examples/noop_rls.rs \
    && cargo build --release --locked --bin sluicegate \
    && rm -rf src benches examples
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sluicegate

FROM debian:bookworm-slim
# ca-certificates: the system roots, for rediss:// without REDIS_TLS_CACERT.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sluicegate
COPY --from=build /src/target/release/sluicegate /usr/local/bin/sluicegate
# Envoy Gateway runs the reference's path, /bin/ratelimit (examples/envoy-gateway).
RUN ln -s /usr/local/bin/sluicegate /usr/bin/ratelimit
COPY config/ /srv/runtime_data/current/sluicegate/config/
ENV RUNTIME_ROOT=/srv/runtime_data/current \
    RUNTIME_SUBDIRECTORY=sluicegate \
    RUNTIME_WATCH_ROOT=false
USER 10001
# HTTP (/healthcheck, /json, /metrics), gRPC, debug.
EXPOSE 8080 8081 6070
ENTRYPOINT ["/usr/local/bin/sluicegate"]
