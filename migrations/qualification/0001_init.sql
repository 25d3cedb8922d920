-- The service's outbox: events it publishes commit with the state changes they announce.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    org_id      text        NOT NULL,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
