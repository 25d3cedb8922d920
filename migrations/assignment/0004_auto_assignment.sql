-- Automatic assignment: each organisation's policy (every change kept with who made it), each
-- agent's capacity and presence, and the leads waiting for an agent.

CREATE TABLE org_settings (
    org_id           text        PRIMARY KEY,
    policy           text        NOT NULL CHECK (policy IN ('off', 'round_robin', 'balanced')),
    default_capacity integer     NOT NULL CHECK (default_capacity BETWEEN 1 AND 1000),
    version          bigint      NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text        NOT NULL
);

CREATE TABLE org_settings_changes (
    org_id  text        NOT NULL,
    version bigint      NOT NULL,
    actor   text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    changes jsonb       NOT NULL,
    PRIMARY KEY (org_id, version)
);

-- No capacity of its own: the organisation's default. Presence counts only while its
-- heartbeat (presence_seen_at) is within the grace period.
ALTER TABLE agents
    ADD COLUMN capacity         integer CHECK (capacity BETWEEN 1 AND 1000),
    ADD COLUMN presence         text    NOT NULL DEFAULT 'offline' CHECK (presence IN ('available', 'away', 'offline')),
    ADD COLUMN presence_seen_at timestamptz,
    ADD COLUMN last_assigned_at timestamptz;

-- A new active unassigned lead of an organisation whose policy is on, until an agent holds it.
-- `reserved_for` is the agent it is being handed to: that slot counts against the agent's
-- capacity until the lead service has answered.
CREATE TABLE waiting_leads (
    org_id          text        NOT NULL,
    lead_id         uuid        NOT NULL,
    score           integer,
    lead_created_at timestamptz NOT NULL,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    reserved_for    text,
    reserved_at     timestamptz,
    PRIMARY KEY (org_id, lead_id)
);
CREATE INDEX waiting_leads_queue ON waiting_leads (org_id, score DESC NULLS LAST, lead_created_at, lead_id)
    WHERE reserved_for IS NULL;
CREATE INDEX waiting_leads_reserved ON waiting_leads (org_id, reserved_for) WHERE reserved_for IS NOT NULL;
