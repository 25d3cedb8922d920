-- What the service could not process, kept with its reason instead of being dropped: a
-- consumed message that failed on every delivery allowed, or an outbox event NATS can never
-- take (larger than the server's max_payload). Each is also announced on deadletter.*.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    -- 'delivery' or 'outbox'.
    source          text        NOT NULL,
    -- The durable consumer that gave up on a delivery; the service for an outbox event.
    consumer        text        NOT NULL,
    subject         text        NOT NULL,
    -- A delivery's stream sequence; an outbox event's id.
    sequence        bigint      NOT NULL,
    msg_id          text,
    error           text        NOT NULL,
    payload         bytea       NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, consumer, sequence)
);
