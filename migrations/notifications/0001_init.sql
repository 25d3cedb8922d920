-- The service's outbox: notifications it publishes commit with the records they announce.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    org_id      text        NOT NULL,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- What the service could not process, kept with its reason instead of being dropped: a
-- consumed message that failed on every delivery allowed, or an outbox event NATS can never
-- take. Each is also announced on deadletter.*.
CREATE TABLE dead_letters (
    id       bigserial   PRIMARY KEY,
    source   text        NOT NULL,
    consumer text        NOT NULL,
    subject  text        NOT NULL,
    sequence bigint      NOT NULL,
    msg_id   text,
    error    text        NOT NULL,
    payload  bytea       NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, consumer, sequence)
);

-- Each organisation's settings: when reminders and overdue come, whether overdue is escalated.
CREATE TABLE org_settings (
    org_id                text        PRIMARY KEY,
    remind_before_minutes integer     NOT NULL CHECK (remind_before_minutes BETWEEN 0 AND 10080),
    overdue_after_minutes integer     NOT NULL CHECK (overdue_after_minutes BETWEEN 1 AND 43200),
    escalate_overdue      boolean     NOT NULL,
    version               bigint      NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    updated_by            text        NOT NULL
);

CREATE TABLE org_settings_changes (
    org_id  text        NOT NULL,
    version bigint      NOT NULL,
    actor   text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    changes jsonb       NOT NULL,
    PRIMARY KEY (org_id, version)
);

-- Follow-ups, from the lead service's `follow_up_opened` and the follow-up service's events.
-- A closed one stays as a tombstone (state 'closed', the highest version) until the retention,
-- so a late or concurrent `follow_up_opened` (a unique-key conflict with it, however the two
-- transactions interleave) never brings it back.
CREATE TABLE follow_ups (
    org_id            text        NOT NULL,
    id                uuid        NOT NULL,
    lead_id           uuid        NOT NULL,
    agent_id          text,
    due_at            timestamptz NOT NULL,
    note              text,
    contact_name      text,
    phone             text,
    -- 'pending', 'due' or 'closed'.
    state             text        NOT NULL,
    -- The follow-up's version; 0 while known only from the lead's event.
    version           bigint      NOT NULL,
    -- The due time whose overdue alert was told: not told again when the alerts are set anew.
    overdue_told_for  timestamptz,
    closed_at         timestamptz,
    PRIMARY KEY (org_id, id)
);

-- What the scheduler is to tell, and when: a reminder before a follow-up is due, the overdue
-- alert after. Claimed with SKIP LOCKED and deleted in the transaction that records what it
-- tells, so any number of processes tell each once.
CREATE TABLE alerts (
    org_id       text        NOT NULL,
    follow_up_id uuid        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('reminder', 'overdue')),
    fire_at      timestamptz NOT NULL,
    PRIMARY KEY (org_id, follow_up_id, kind)
);
CREATE INDEX alerts_by_time ON alerts (fire_at);

-- Every message told: notifications for an agent or the admins, and lifecycle events for
-- webhooks. `body` is the JSON published and delivered, byte for byte the same each time so
-- its signature is too. `dedupe_key` makes telling the same thing twice impossible.
CREATE TABLE messages (
    id          text        PRIMARY KEY,
    org_id      text        NOT NULL,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    dedupe_key  text        NOT NULL UNIQUE,
    -- The agent a notification is for; null for the admins' and for webhook-only events.
    agent_id    text,
    for_admins  boolean     NOT NULL DEFAULT false,
    lead_id     uuid,
    summary     text        NOT NULL DEFAULT '',
    body        bytea       NOT NULL,
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_for_agent ON messages (org_id, agent_id, created_at DESC, id) WHERE agent_id IS NOT NULL;
CREATE INDEX messages_for_admins ON messages (org_id, created_at DESC, id) WHERE for_admins;
CREATE INDEX messages_unread_agent ON messages (org_id, agent_id) WHERE agent_id IS NOT NULL AND read_at IS NULL;
CREATE INDEX messages_by_org_time ON messages (org_id, created_at);

CREATE TABLE webhook_endpoints (
    org_id                   text        NOT NULL,
    id                       uuid        PRIMARY KEY,
    url                      text        NOT NULL,
    description              text        NOT NULL DEFAULT '',
    -- Empty: every type.
    event_types              text[]      NOT NULL DEFAULT '{}',
    secret                   text        NOT NULL,
    previous_secret          text,
    previous_secret_until    timestamptz,
    enabled                  boolean     NOT NULL DEFAULT true,
    disabled_reason          text,
    failing_since            timestamptz,
    version                  bigint      NOT NULL DEFAULT 1,
    created_at               timestamptz NOT NULL DEFAULT now(),
    -- Which process delivers to it now, until when: one at a time per endpoint, so its
    -- concurrency is bounded across processes.
    leased_by                uuid,
    leased_until             timestamptz
);
CREATE INDEX webhook_endpoints_by_org ON webhook_endpoints (org_id, created_at);

-- A message to deliver to an endpoint: pending until it succeeds or its retries run out.
CREATE TABLE deliveries (
    id              bigserial   PRIMARY KEY,
    org_id          text        NOT NULL,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id      text        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    state           text        NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, message_id)
);
CREATE INDEX deliveries_due ON deliveries (endpoint_id, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_due_any ON deliveries (next_attempt_at) WHERE state = 'pending';

-- Every attempt, kept for the delivery log.
CREATE TABLE delivery_attempts (
    id               bigserial   PRIMARY KEY,
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id       text        NOT NULL,
    event_type       text        NOT NULL,
    attempt          integer     NOT NULL,
    attempted_at     timestamptz NOT NULL,
    status_code      integer,
    duration_ms      bigint      NOT NULL,
    response_excerpt text        NOT NULL DEFAULT '',
    error            text        NOT NULL DEFAULT '',
    succeeded        boolean     NOT NULL,
    next_attempt_at  timestamptz
);
CREATE INDEX delivery_attempts_by_endpoint ON delivery_attempts (endpoint_id, id DESC);
CREATE INDEX delivery_attempts_by_message ON delivery_attempts (endpoint_id, message_id, id DESC);
