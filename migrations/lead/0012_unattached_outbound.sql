-- Outbound messages recorded while their contact had no lead at or before their time: a
-- lead opened later by an earlier (or simultaneous) inbound message takes them, whichever
-- order the two were applied in.
CREATE INDEX interactions_unattached_outbound ON interactions (org_id, contact_id, occurred_at DESC)
    WHERE lead_id IS NULL AND direction = 'outbound';
