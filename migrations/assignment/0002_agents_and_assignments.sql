-- Agents are this service's own; assignments are decided by the lead service (which alone
-- knows whether a lead is active) and kept here as a projection of its `assigned` events,
-- written straight away by AssignLead as well so that a caller reads its own change.

CREATE TABLE agents (
    org_id     text        NOT NULL,
    agent_id   text        NOT NULL,
    name       text        NOT NULL DEFAULT '',
    email      text,
    active     boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, agent_id)
);

-- Each assignment once: the lead's version after it identifies it.
CREATE TABLE assignments (
    org_id            text        NOT NULL,
    lead_id           uuid        NOT NULL,
    lead_version      bigint      NOT NULL,
    agent_id          text,
    previous_agent_id text,
    actor             text        NOT NULL,
    reason            text,
    at                timestamptz NOT NULL,
    PRIMARY KEY (org_id, lead_id, lead_version)
);

-- Who holds each lead and whether it is still active, at the newest lead version seen:
-- an agent's open leads.
CREATE TABLE lead_agents (
    org_id   text    NOT NULL,
    lead_id  uuid    NOT NULL,
    agent_id text,
    active   boolean NOT NULL,
    version  bigint  NOT NULL,
    PRIMARY KEY (org_id, lead_id)
);
CREATE INDEX lead_agents_open_by_agent ON lead_agents (org_id, agent_id) WHERE active;
