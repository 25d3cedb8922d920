-- Automatic assignment beyond the policy: sticky contacts, replies that claim, untouched leads.

-- The contact each lead is with, so that a contact's new lead can go back to the agent of its
-- previous one; absent for leads seen before it was kept.
ALTER TABLE lead_agents ADD COLUMN contact_id uuid;
CREATE INDEX lead_agents_by_contact ON lead_agents (org_id, contact_id, lead_id) WHERE contact_id IS NOT NULL;

-- The agent who replied to the contact of a waiting lead: it gets the lead first while it
-- has room.
ALTER TABLE waiting_leads ADD COLUMN claimed_by text;

-- Since when a lead has sat with the agent the platform gave it, no person having acted on it
-- since (a message to the contact, a status change or an assignment by a person); absent
-- otherwise. `touch_version` is the lead version that last set it, so that events applied out
-- of order never undo a newer one.
ALTER TABLE lead_agents
    ADD COLUMN untouched_since timestamptz,
    ADD COLUMN touch_version   bigint NOT NULL DEFAULT 0;
CREATE INDEX lead_agents_untouched ON lead_agents (org_id, untouched_since) WHERE active AND untouched_since IS NOT NULL;

-- A lead left untouched waits to go to another agent while its agent still holds it:
-- `taken_from` is that agent (never chosen again), `expected_version` the version it must
-- still be at, `untouched_minutes` the setting that sent it.
ALTER TABLE waiting_leads
    ADD COLUMN taken_from        text,
    ADD COLUMN expected_version  bigint,
    ADD COLUMN untouched_minutes integer;

-- Off by default: a lead untouched this many minutes after an automatic assignment goes to
-- another agent; an agent offline past the presence grace period hands back its untouched leads.
ALTER TABLE org_settings
    ADD COLUMN reassign_untouched_after_minutes integer CHECK (reassign_untouched_after_minutes BETWEEN 1 AND 10080),
    ADD COLUMN release_offline_after_grace      boolean NOT NULL DEFAULT false;
