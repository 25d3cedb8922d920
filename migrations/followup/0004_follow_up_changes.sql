-- Whether a follow-up's agent was named when it was created. One that was not follows its
-- lead's agent when the lead is reassigned; follow-ups kept before this column existed do too.
ALTER TABLE follow_ups ADD COLUMN agent_set_by_hand boolean NOT NULL DEFAULT false;

-- Each lead's agent as its latest `assigned` event said, and that event's lead version: a
-- late redelivery of an older assignment changes nothing, and a follow-up accepted at an
-- earlier lead version than the assignment arrives with the new agent.
ALTER TABLE lead_states ADD COLUMN agent_id text;
ALTER TABLE lead_states ADD COLUMN agent_version bigint NOT NULL DEFAULT 0;
