# syntax=docker/dockerfile:1
# The `leads` binary in a small image that runs as a non-root user.
#
#   docker build -t leads .
#   docker run --rm -e LEADS_SERVICES=lead -e LEADS_AUTH_SIGNING_KEY_FILE=/keys/signing.key \
#     -v "$PWD/keys:/keys:ro" -e LEADS_DATABASE_URL=... -e LEADS_NATS_URL=... leads
#
# Dependencies are compiled in a layer of their own, keyed only by the manifests: the
# `skeleton` stage keeps every Cargo.toml of the tree (found, not listed, so a new workspace
# member needs no change here) with stub sources, and that layer is rebuilt only when a
# manifest or Cargo.lock changes. crates/proto/build.rs compiles the .proto files with protox, so
# no protoc is needed.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS skeleton
WORKDIR /src
COPY . .
RUN sh deploy/docker/skeleton.sh /skeleton

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p leads --bin leads
COPY . .
# The copied sources may be older than the stub build's outputs: touch them so that cargo
# rebuilds every workspace crate (sqlx::migrate! embeds migrations/ at this step).
RUN find . -path ./target -prune -o \( -name '*.rs' -o -name '*.proto' \) -exec touch {} + \
    && cargo build --release --locked -p leads --bin leads \
    && install -D -m 0755 target/release/leads /out/leads

# glibc, libgcc, CA certificates and tzdata (/usr/share/zoneinfo, where the assignment service
# reads agents' named time zones such as Europe/Berlin), no shell; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/leads /usr/local/bin/leads
ENV LEADS_GRPC_HOST=0.0.0.0 \
    LEADS_METRICS_ADDR=0.0.0.0:9464 \
    LEADS_SERVICES=all \
    RUST_LOG=info
USER 65532:65532
# gRPC: ingest, lead, qualification, assignment, followup, broadcast, people, notifications; the console's
# HTTP (8080; it holds no key and no credential); then Prometheus metrics. A service refuses to
# start without a key for tokens (LEADS_AUTH_SIGNING_KEY_FILE or LEADS_AUTH_KEY_FILES): mount
# one, never bake it into the image.
EXPOSE 50051 50052 50053 50054 50055 50056 50057 50058 8080 9464
ENTRYPOINT ["leads"]
CMD ["run"]
