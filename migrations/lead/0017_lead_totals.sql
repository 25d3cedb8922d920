-- The totals of the filters the Leads page uses most (status, active, agent, unassigned) from a
-- table keyed by those alone: `lead_counts` keeps a row per status, agent, source, score source
-- and score decile, about 100,000 rows for an organisation of ten million leads and two hundred
-- agents, and summing them for a page's total took 25-45 ms. Here the same organisation has a
-- row per status and agent (1,600).
--
-- Triggers on `lead_counts` keep it, in the statement that changes `lead_counts`, so whatever
-- folds the deltas (this version of the service or an older one during a rollout) keeps both
-- in step, and any snapshot sees the same totals in each.

CREATE TABLE lead_totals (
    org_id   text   NOT NULL,
    status   text   NOT NULL,
    agent_id text   NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (org_id, status, agent_id)
);

INSERT INTO lead_totals (org_id, status, agent_id, n)
SELECT org_id, status, agent_id, sum(n) FROM lead_counts GROUP BY 1, 2, 3;

-- Rows are upserted in key order, as the fold upserts `lead_counts`: concurrent folds cannot
-- deadlock on them.
CREATE FUNCTION lead_totals_follow_inserted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, sum(n) FROM inserted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION lead_totals_follow_updated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, sum(n) FROM (
        SELECT org_id, status, agent_id, n FROM after_change
        UNION ALL
        SELECT org_id, status, agent_id, -n FROM before_change) changed
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION lead_totals_follow_deleted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, -sum(n) FROM deleted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE TRIGGER lead_totals_follow_inserted AFTER INSERT ON lead_counts
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION lead_totals_follow_inserted();
CREATE TRIGGER lead_totals_follow_updated AFTER UPDATE ON lead_counts
    REFERENCING OLD TABLE AS before_change NEW TABLE AS after_change
    FOR EACH STATEMENT EXECUTE FUNCTION lead_totals_follow_updated();
CREATE TRIGGER lead_totals_follow_deleted AFTER DELETE ON lead_counts
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION lead_totals_follow_deleted();
