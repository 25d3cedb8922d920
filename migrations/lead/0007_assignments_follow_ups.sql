-- Assignments and follow-ups are decided here, under the lead's row lock, because both are
-- gated on the lead being active. These tables are the lead's own record of them, for its
-- timeline; the assignment and follow-up services keep projections of the events.

CREATE TABLE assignment_changes (
    id           bigserial   PRIMARY KEY,
    org_id       text        NOT NULL,
    lead_id      uuid        NOT NULL REFERENCES leads (id),
    from_agent   text,
    to_agent     text,
    actor        text        NOT NULL,
    reason       text,
    lead_version bigint      NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignment_changes_by_lead ON assignment_changes (lead_id, at DESC);

-- One row per (follow-up, state) it went through: opened here, the later states (due,
-- completed, cancelled) from the follow-up service's events, each kept once.
CREATE TABLE follow_up_entries (
    org_id       text        NOT NULL,
    follow_up_id uuid        NOT NULL,
    lead_id      uuid        NOT NULL REFERENCES leads (id),
    state        text        NOT NULL CHECK (state IN ('pending', 'due', 'completed', 'cancelled')),
    due_at       timestamptz NOT NULL,
    note         text,
    agent_id     text,
    actor        text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follow_up_id, state)
);
CREATE INDEX follow_up_entries_by_lead ON follow_up_entries (lead_id, at DESC);
