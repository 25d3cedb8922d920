-- The ingest service: the idempotency record of every accepted event, every refused event
-- with its reason, and the outbox that forwards accepted events to the lead service.

CREATE TABLE accepted_events (
    org_id      text        NOT NULL,
    event_id    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, event_id)
);

CREATE TABLE rejections (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      text        NOT NULL,
    event_id    text,
    subject     text        NOT NULL,
    field       text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    -- Where the refused message came from (stream sequence or gRPC call), so that a
    -- redelivered refusal is kept once.
    source_key  text        NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rejections_by_org ON rejections (org_id, received_at DESC, id DESC);

CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    org_id      text        NOT NULL,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
