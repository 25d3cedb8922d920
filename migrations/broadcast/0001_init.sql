-- The broadcast-tracking service: campaigns, templates, each broadcast message, each
-- distinct (message, status) once, the message's current state, refused events, and the
-- projections of the lead service's events it needs (contacts of leads, broadcast replies).
--
-- Everything here is written so that the final state does not depend on arrival order:
-- statuses are kept by (message, status) whether or not their message has arrived, the
-- current state only moves forward (GREATEST on a rank), and where two versions of one
-- fact meet, a fixed rule (newest name, earliest status timestamp) picks the survivor.

CREATE TABLE campaigns (
    org_id      text        NOT NULL,
    campaign_id text        NOT NULL,
    -- From the newest message that named the campaign (name_at), so replays agree.
    name        text,
    name_at     timestamptz,
    PRIMARY KEY (org_id, campaign_id)
);

CREATE TABLE templates (
    org_id      text        NOT NULL,
    name        text        NOT NULL,
    language    text        NOT NULL,
    -- From the newest message that gave a category (category_at).
    category    text,
    category_at timestamptz,
    PRIMARY KEY (org_id, name, language)
);

CREATE TABLE messages (
    org_id            text        NOT NULL,
    message_id        text        NOT NULL,
    -- E.164, as ingest normalises it, so that it matches the lead service's contacts.
    phone             text,
    external_id       text,
    campaign_id       text,
    template_name     text,
    template_language text,
    sent_at           timestamptz NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, message_id),
    CONSTRAINT messages_need_a_recipient CHECK (phone IS NOT NULL OR external_id IS NOT NULL)
);

CREATE INDEX messages_by_phone ON messages (org_id, phone, sent_at DESC, message_id DESC) WHERE phone IS NOT NULL;
CREATE INDEX messages_by_external_id ON messages (org_id, external_id, sent_at DESC, message_id DESC)
    WHERE external_id IS NOT NULL;
CREATE INDEX messages_by_campaign ON messages (org_id, campaign_id) WHERE campaign_id IS NOT NULL;

-- Each distinct (message, status) once. No foreign key to messages: a status may arrive
-- before its message, or without one ever arriving, and is kept either way.
CREATE TABLE statuses (
    org_id      text        NOT NULL,
    message_id  text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    at          timestamptz NOT NULL,
    error_code  bigint,
    error_title text,
    error_class text CHECK (error_class IN ('undeliverable', 'frequency_cap', 'opted_out', 'window_closed', 'other')),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, message_id, status),
    CONSTRAINT statuses_error_only_when_failed CHECK (status = 'failed' OR (error_code IS NULL AND error_title IS NULL))
);

-- The current state of a message, derived on write: the furthest of sent (1) < delivered
-- (2) < read (3), and whether it failed. Both only ever grow, so any arrival order ends in
-- the same row. Keyed like statuses, so it exists before its message does.
CREATE TABLE message_states (
    org_id     text     NOT NULL,
    message_id text     NOT NULL,
    rank       smallint NOT NULL CHECK (rank BETWEEN 0 AND 3),
    failed     boolean  NOT NULL,
    PRIMARY KEY (org_id, message_id)
);

-- Statuses whose message has not arrived (yet): kept, and visible to operators here.
CREATE VIEW orphan_statuses AS
    SELECT s.* FROM statuses s
    WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.org_id = s.org_id AND m.message_id = s.message_id);

CREATE TABLE rejections (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      text        NOT NULL,
    message_id  text,
    subject     text        NOT NULL,
    field       text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL,
    -- The stream sequence of the refused message, so that a redelivered refusal is kept once.
    source_key  text        NOT NULL UNIQUE,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rejections_by_org ON rejections (org_id, received_at DESC, id DESC);

-- Projection of the lead service's leads: who each lead's contact is, at the lead's
-- highest version seen (older events are dropped).
CREATE TABLE lead_contacts (
    org_id      text   NOT NULL,
    lead_id     uuid   NOT NULL,
    contact_id  uuid   NOT NULL,
    phone       text,
    external_id text,
    version     bigint NOT NULL,
    PRIMARY KEY (org_id, lead_id)
);

CREATE INDEX lead_contacts_by_contact ON lead_contacts (org_id, contact_id);

-- Replies to broadcast messages, one per interaction (event_id), so that a repeated lead
-- event counts once. created_lead: this reply opened a new lead.
CREATE TABLE replies (
    org_id       text        NOT NULL,
    event_id     text        NOT NULL,
    message_id   text        NOT NULL,
    lead_id      uuid        NOT NULL,
    created_lead boolean     NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (org_id, event_id)
);

CREATE INDEX replies_by_message ON replies (org_id, message_id);

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
