-- The lead service: the one authority on a lead's status. Contacts, leads (at most one
-- active per contact, enforced here), every interaction with its text, the status and
-- score history, and the outbox of lead events.

CREATE TABLE contacts (
    id          uuid        PRIMARY KEY,
    org_id      text        NOT NULL,
    phone       text,
    external_id text,
    name        text,
    email       text,
    -- occurred_at of the newest event that set name or email: older events do not overwrite
    profile_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT contacts_need_an_identity CHECK (phone IS NOT NULL OR external_id IS NOT NULL)
);
CREATE UNIQUE INDEX contacts_by_phone ON contacts (org_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX contacts_by_external_id ON contacts (org_id, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE leads (
    id                    uuid        PRIMARY KEY,
    org_id                text        NOT NULL,
    contact_id            uuid        NOT NULL REFERENCES contacts (id),
    status                text        NOT NULL CHECK (status IN
        ('new', 'contacted', 'qualifying', 'qualified', 'follow_up', 'converted', 'lost', 'archived')),
    active                boolean     GENERATED ALWAYS AS (status NOT IN ('converted', 'lost', 'archived')) STORED,
    source_kind           text        NOT NULL,
    channel               text        NOT NULL,
    campaign_id           text,
    broadcast_message_id  text,
    integration_name      text,
    integration_reference text,
    score                 integer     CHECK (score BETWEEN 0 AND 100),
    score_source          text        CHECK (score_source IN ('ai', 'manual')),
    score_version         bigint      NOT NULL DEFAULT 0,
    agent_id              text,
    interaction_count     bigint      NOT NULL DEFAULT 0,
    last_message_preview  text,
    first_touch_at        timestamptz NOT NULL,
    last_interaction_at   timestamptz NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    version               bigint      NOT NULL DEFAULT 1
);
-- The rule "a contact has at most one active lead", held by the database itself.
CREATE UNIQUE INDEX leads_one_active_per_contact ON leads (org_id, contact_id) WHERE active;
CREATE INDEX leads_by_contact ON leads (org_id, contact_id, created_at DESC);
CREATE INDEX leads_by_last_interaction ON leads (org_id, last_interaction_at DESC, id DESC);
CREATE INDEX leads_by_created ON leads (org_id, created_at DESC, id DESC);
CREATE INDEX leads_by_score ON leads (org_id, (coalesce(score, -1)) DESC, id DESC);
CREATE INDEX leads_by_status ON leads (org_id, status, last_interaction_at DESC, id DESC);
CREATE INDEX leads_by_agent ON leads (org_id, agent_id, last_interaction_at DESC, id DESC);

CREATE TABLE interactions (
    org_id                text        NOT NULL,
    event_id              text        NOT NULL,
    -- NULL for an outbound message to a contact with no active lead
    lead_id               uuid        REFERENCES leads (id),
    contact_id            uuid        NOT NULL REFERENCES contacts (id),
    occurred_at           timestamptz NOT NULL,
    kind                  text        NOT NULL,
    direction             text        NOT NULL,
    channel               text        NOT NULL,
    text                  text,
    agent_id              text,
    conversation_id       text,
    broadcast_message_id  text,
    campaign_id           text,
    integration_name      text,
    integration_reference text,
    attributes            jsonb       NOT NULL DEFAULT '{}',
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, event_id)
);
CREATE INDEX interactions_by_lead ON interactions (lead_id, occurred_at DESC);

CREATE TABLE status_changes (
    id           bigserial   PRIMARY KEY,
    org_id       text        NOT NULL,
    lead_id      uuid        NOT NULL REFERENCES leads (id),
    from_status  text,
    to_status    text        NOT NULL,
    actor        text        NOT NULL,
    reason       text,
    manual_score integer,
    lead_version bigint      NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_changes_by_lead ON status_changes (lead_id, at DESC);

CREATE TABLE score_changes (
    id           bigserial   PRIMARY KEY,
    org_id       text        NOT NULL,
    lead_id      uuid        NOT NULL REFERENCES leads (id),
    score        integer     NOT NULL,
    source       text        NOT NULL,
    reasons      jsonb       NOT NULL DEFAULT '[]',
    actor        text        NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX score_changes_by_lead ON score_changes (lead_id, at DESC);

CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    org_id      text        NOT NULL,
    subject     text        NOT NULL,
    msg_id      text        NOT NULL,
    payload     bytea       NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
