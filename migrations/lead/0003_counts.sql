-- Totals for the Leads page without counting a million rows: lead counts kept per
-- (org, status, agent, source kind, score source, score decile) in the same transactions
-- that change leads, so a count from them agrees with count(*) in any snapshot. Filters on
-- other columns (times, campaign, search, score ranges off the deciles) count rows instead.

CREATE TABLE lead_counts (
    org_id       text     NOT NULL,
    status       text     NOT NULL,
    -- '' when unassigned / unscored: primary key columns cannot be NULL.
    agent_id     text     NOT NULL,
    source_kind  text     NOT NULL,
    score_source text     NOT NULL,
    -- score / 10 (100 is 10), -1 when unscored
    score_bucket smallint NOT NULL,
    n            bigint   NOT NULL,
    PRIMARY KEY (org_id, status, agent_id, source_kind, score_source, score_bucket)
);

CREATE FUNCTION count_leads_inserted() RETURNS trigger LANGUAGE plpgsql
    -- The search path of the migration (this schema), whoever changes the leads table.
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO lead_counts AS c (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
    SELECT org_id, status, coalesce(agent_id, ''), source_kind, coalesce(score_source, ''),
           coalesce(score / 10, -1), count(*)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (org_id, status, agent_id, source_kind, score_source, score_bucket)
    DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION count_leads_deleted() RETURNS trigger LANGUAGE plpgsql
    -- The search path of the migration (this schema), whoever changes the leads table.
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE lead_counts c SET n = c.n - d.n
    FROM (SELECT org_id, status, coalesce(agent_id, '') AS agent_id, source_kind,
                 coalesce(score_source, '') AS score_source, coalesce(score / 10, -1) AS score_bucket, count(*) AS n
          FROM deleted GROUP BY 1, 2, 3, 4, 5, 6) d
    WHERE c.org_id = d.org_id AND c.status = d.status AND c.agent_id = d.agent_id
      AND c.source_kind = d.source_kind AND c.score_source = d.score_source AND c.score_bucket = d.score_bucket;
    RETURN NULL;
END $$;

CREATE FUNCTION count_lead_changed() RETURNS trigger LANGUAGE plpgsql
    -- The search path of the migration (this schema), whoever changes the leads table.
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE lead_counts SET n = n - 1
    WHERE org_id = OLD.org_id AND status = OLD.status AND agent_id = coalesce(OLD.agent_id, '')
      AND source_kind = OLD.source_kind AND score_source = coalesce(OLD.score_source, '')
      AND score_bucket = coalesce(OLD.score / 10, -1);
    INSERT INTO lead_counts AS c (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
    VALUES (NEW.org_id, NEW.status, coalesce(NEW.agent_id, ''), NEW.source_kind, coalesce(NEW.score_source, ''),
            coalesce(NEW.score / 10, -1), 1)
    ON CONFLICT (org_id, status, agent_id, source_kind, score_source, score_bucket)
    DO UPDATE SET n = c.n + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER leads_counted_on_insert AFTER INSERT ON leads
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION count_leads_inserted();
CREATE TRIGGER leads_counted_on_delete AFTER DELETE ON leads
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION count_leads_deleted();
CREATE TRIGGER leads_counted_on_change AFTER UPDATE OF status, agent_id, score, score_source, org_id, source_kind
    ON leads FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.agent_id IS DISTINCT FROM NEW.agent_id
          OR OLD.score IS DISTINCT FROM NEW.score OR OLD.score_source IS DISTINCT FROM NEW.score_source
          OR OLD.org_id IS DISTINCT FROM NEW.org_id OR OLD.source_kind IS DISTINCT FROM NEW.source_kind)
    EXECUTE FUNCTION count_lead_changed();

INSERT INTO lead_counts (org_id, status, agent_id, source_kind, score_source, score_bucket, n)
SELECT org_id, status, coalesce(agent_id, ''), source_kind, coalesce(score_source, ''), coalesce(score / 10, -1), count(*)
FROM leads GROUP BY 1, 2, 3, 4, 5, 6;
