-- Count changes are appended as deltas instead of updating a few hot rows of lead_counts in
-- every transaction: concurrent batches then never wait on (or deadlock over) the same
-- counter. The lead service folds deltas into lead_counts every second, in one statement,
-- so any snapshot sees each change either as a delta or in the total, never both.

CREATE TABLE lead_count_deltas (
    id           bigserial PRIMARY KEY,
    org_id       text      NOT NULL,
    status       text      NOT NULL,
    agent_id     text      NOT NULL,
    source_kind  text      NOT NULL,
    score_source text      NOT NULL,
    score_bucket smallint  NOT NULL,
    n            bigint    NOT NULL
);

DROP TRIGGER leads_counted_on_change ON leads;
DROP FUNCTION count_lead_changed();

CREATE OR REPLACE FUNCTION count_leads_inserted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_count_deltas (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
    SELECT org_id, status, coalesce(agent_id, ''), source_kind, coalesce(score_source, ''),
           coalesce(score / 10, -1), count(*)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_leads_deleted() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_count_deltas (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
    SELECT org_id, status, coalesce(agent_id, ''), source_kind, coalesce(score_source, ''),
           coalesce(score / 10, -1), -count(*)
    FROM deleted GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END $$;

CREATE FUNCTION count_leads_updated() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    -- A row whose counted columns did not change adds -1 and +1 to one key: no delta.
    INSERT INTO lead_count_deltas (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
    SELECT org_id, status, agent_id, source_kind, score_source, score_bucket, sum(d)
    FROM (
        SELECT org_id, status, coalesce(agent_id, '') AS agent_id, source_kind,
               coalesce(score_source, '') AS score_source, coalesce(score / 10, -1) AS score_bucket, -1 AS d
        FROM old_rows
        UNION ALL
        SELECT org_id, status, coalesce(agent_id, ''), source_kind, coalesce(score_source, ''),
               coalesce(score / 10, -1), 1
        FROM new_rows
    ) changes
    GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(d) <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER leads_counted_on_update AFTER UPDATE ON leads
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_leads_updated();
