-- An agent's own leads sorted by creation or by score ("my newest", "my hottest"), as they are
-- by last interaction (`leads_by_agent`): without these, a page of an agent holding a few
-- thousand of ten million leads either sorted all of them or walked the organisation's order
-- until fifty of theirs turned up, 100-150 ms either way.
CREATE INDEX leads_by_agent_created ON leads (org_id, agent_id, created_at DESC, id DESC);
CREATE INDEX leads_by_agent_score ON leads (org_id, agent_id, (coalesce(score, -1)) DESC, id DESC);
