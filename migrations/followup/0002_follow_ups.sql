-- Follow-ups. Creation is decided by the lead service (only it knows whether the lead is
-- active); a follow-up it accepted is kept here, with its contact filled in from the lead,
-- and comes due on its own.

CREATE TABLE follow_ups (
    id           uuid        PRIMARY KEY,
    org_id       text        NOT NULL,
    lead_id      uuid        NOT NULL,
    contact_id   uuid        NOT NULL,
    phone        text,
    external_id  text,
    contact_name text,
    email        text,
    due_at       timestamptz NOT NULL,
    note         text,
    agent_id     text,
    state        text        NOT NULL CHECK (state IN ('pending', 'due', 'completed', 'cancelled')),
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    closed_by    text,
    closed_at    timestamptz,
    version      bigint      NOT NULL DEFAULT 1
);
CREATE INDEX follow_ups_by_due ON follow_ups (org_id, due_at, id);
CREATE INDEX follow_ups_by_lead ON follow_ups (org_id, lead_id, due_at, id);
CREATE INDEX follow_ups_by_agent ON follow_ups (org_id, agent_id, due_at, id);
-- What the scheduler scans: only follow-ups still waiting.
CREATE INDEX follow_ups_waiting ON follow_ups (due_at) WHERE state = 'pending';

-- Whether each lead with follow-ups is still active, from the lead service's events.
-- Inactive is final, so once false it stays false. Its row is also the lock that orders a
-- follow-up's arrival against its lead's closing.
CREATE TABLE lead_states (
    org_id  text    NOT NULL,
    lead_id uuid    NOT NULL,
    active  boolean NOT NULL,
    version bigint  NOT NULL,
    PRIMARY KEY (org_id, lead_id)
);
