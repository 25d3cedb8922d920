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

-- What the service could not process, kept with its reason instead of being dropped: an
-- outbox event NATS can never take (larger than the server's max_payload). Each is also
-- announced on deadletter.*.
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

-- The people of each organisation. A person is (org_id, email), the email lowercased: the
-- same address in two organisations is two accounts.
CREATE TABLE people (
    org_id                text        NOT NULL,
    email                 text        NOT NULL CHECK (email = lower(email)),
    name                  text        NOT NULL DEFAULT '',
    role                  text        NOT NULL CHECK (role IN ('admin', 'operator', 'agent')),
    agent_id              text        CHECK (agent_id <> ''),
    active                boolean     NOT NULL DEFAULT true,
    -- An Argon2id hash in PHC form; none until a setup code is used, and after a reset.
    password_hash         text,
    -- SHA-256 of the one-time setup code: the code itself is never kept.
    setup_code_hash       bytea       UNIQUE,
    setup_code_expires_at timestamptz,
    -- Seconds since the epoch up to which the person's tokens are refused (sessions_ended).
    sessions_ended_at     bigint,
    last_sign_in_at       timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Grows with every change; the version of the person's events.
    version               bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (org_id, email),
    CHECK (role <> 'agent' OR agent_id IS NOT NULL),
    CHECK ((setup_code_hash IS NULL) = (setup_code_expires_at IS NULL))
);

-- Failed sign-ins per (org_id, email), whether or not such a person exists, so that locking
-- out tells nothing about which accounts exist. A row whose window and lock have passed
-- counts for nothing and is pruned.
CREATE TABLE sign_in_failures (
    org_id          text        NOT NULL,
    email           text        NOT NULL,
    failures        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    locked_until    timestamptz,
    PRIMARY KEY (org_id, email)
);
CREATE INDEX sign_in_failures_by_age ON sign_in_failures (first_failed_at);

-- Who changed which account, what and when: every change an admin makes, a password set
-- with a setup code, and an account locked by failed sign-ins. Kept for good.
CREATE TABLE audit (
    id     bigserial   PRIMARY KEY,
    org_id text        NOT NULL,
    -- The token's subject of an admin; the person themselves for a password set; `system`
    -- for a lockout.
    actor  text        NOT NULL,
    action text        NOT NULL
        CHECK (action IN ('added', 'updated', 'deactivated', 'password_reset', 'password_set', 'locked')),
    email  text        NOT NULL,
    -- What changed: `{"role": {"from": "agent", "to": "operator"}}` and the like.
    detail jsonb       NOT NULL DEFAULT '{}',
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_by_person ON audit (org_id, email, at);
CREATE INDEX audit_by_org ON audit (org_id, at);
