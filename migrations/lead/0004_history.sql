-- The timeline reads a contact's interactions across all its leads.
CREATE INDEX interactions_by_contact ON interactions (org_id, contact_id, occurred_at DESC);
