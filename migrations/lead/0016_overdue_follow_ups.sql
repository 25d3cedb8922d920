-- Whether each follow-up is overdue (came due and is not completed, cancelled nor rescheduled
-- since), as the follow-up service's latest event about it said: what ListLeads'
-- has_overdue_follow_up reads. The version is the follow-up's, so that a redelivered or late
-- event never overrides a newer one.
CREATE TABLE follow_up_overdue (
    follow_up_id uuid    PRIMARY KEY,
    org_id       text    NOT NULL,
    lead_id      uuid    NOT NULL,
    overdue      boolean NOT NULL,
    version      bigint  NOT NULL
);
CREATE INDEX follow_up_overdue_by_lead ON follow_up_overdue (lead_id) WHERE overdue;

-- Follow-ups already due and not closed, at version 0: any event about them is newer.
INSERT INTO follow_up_overdue (follow_up_id, org_id, lead_id, overdue, version)
SELECT d.follow_up_id, d.org_id, d.lead_id, true, 0
FROM follow_up_entries d
WHERE d.state = 'due'
  AND NOT EXISTS (SELECT 1 FROM follow_up_entries c
                  WHERE c.follow_up_id = d.follow_up_id AND c.state IN ('completed', 'cancelled'));

-- The timeline also records a follow-up's new due time, and a follow-up rescheduled may come
-- due again: each event is kept once by the time it was written (a redelivery carries the
-- same), no longer once per state.
ALTER TABLE follow_up_entries DROP CONSTRAINT follow_up_entries_state_check;
ALTER TABLE follow_up_entries ADD CONSTRAINT follow_up_entries_state_check
    CHECK (state IN ('pending', 'due', 'completed', 'cancelled', 'rescheduled'));
ALTER TABLE follow_up_entries DROP CONSTRAINT follow_up_entries_pkey;
ALTER TABLE follow_up_entries ADD PRIMARY KEY (follow_up_id, state, at);
