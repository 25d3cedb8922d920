-- The totals of a score range (the Leads page's "score >= 70"), with or without a status, from a
-- table keyed by status and score decile alone: about ninety rows an organisation, where the
-- same total summed the deciles' rows of `lead_counts` (tens of thousands at ten million
-- leads, 24 ms at a million). A score range with an agent, a source or a score source is
-- still summed from `lead_counts`.
--
-- The triggers that keep `lead_totals` keep this table too, from the same transition tables
-- and in the same statement: one order of upserts (`lead_totals` first, each in key order),
-- so concurrent folds cannot deadlock.

CREATE TABLE lead_score_totals (
    org_id       text     NOT NULL,
    status       text     NOT NULL,
    score_bucket smallint NOT NULL,
    n            bigint   NOT NULL,
    PRIMARY KEY (org_id, status, score_bucket)
);

INSERT INTO lead_score_totals (org_id, status, score_bucket, n)
SELECT org_id, status, score_bucket, sum(n) FROM lead_counts GROUP BY 1, 2, 3;

CREATE OR REPLACE FUNCTION lead_totals_follow_inserted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, sum(n) FROM inserted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    INSERT INTO lead_score_totals AS t (org_id, status, score_bucket, n)
    SELECT org_id, status, score_bucket, sum(n) FROM inserted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, score_bucket) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION lead_totals_follow_updated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, sum(n) FROM (
        SELECT org_id, status, agent_id, n FROM after_change
        UNION ALL
        SELECT org_id, status, agent_id, -n FROM before_change) changed
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    INSERT INTO lead_score_totals AS t (org_id, status, score_bucket, n)
    SELECT org_id, status, score_bucket, sum(n) FROM (
        SELECT org_id, status, score_bucket, n FROM after_change
        UNION ALL
        SELECT org_id, status, score_bucket, -n FROM before_change) changed
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, score_bucket) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION lead_totals_follow_deleted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_totals AS t (org_id, status, agent_id, n)
    SELECT org_id, status, agent_id, -sum(n) FROM deleted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, agent_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    INSERT INTO lead_score_totals AS t (org_id, status, score_bucket, n)
    SELECT org_id, status, score_bucket, -sum(n) FROM deleted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (org_id, status, score_bucket) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END $$;
