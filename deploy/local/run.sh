#!/usr/bin/env bash
# `make run`: the whole system on this machine, in one process, until Ctrl-C.
set -euo pipefail
eval "$(deploy/local/infra.sh)"
cargo build --release -p leads --bin leads >&2
export LEADS_METRICS_ADDR="${LEADS_METRICS_ADDR:-127.0.0.1:9464}"
cat >&2 <<INFO

  lead platform starting (Ctrl-C stops it)
    gRPC        ingest 127.0.0.1:50051  lead 127.0.0.1:50052  qualification 127.0.0.1:50053
                assignment 127.0.0.1:50054  followup 127.0.0.1:50055  broadcast 127.0.0.1:50056
                (each serves grpc.health.v1.Health and server reflection)
    NATS        $LEADS_NATS_URL   publish InteractionEvents on interactions.<org_id>
    Postgres    $LEADS_DATABASE_URL
    metrics     http://$LEADS_METRICS_ADDR/metrics

INFO
exec ./target/release/leads run --services "${LEADS_SERVICES:-all}"
