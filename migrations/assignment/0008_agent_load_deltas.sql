-- Load changes are appended as deltas instead of updating the agents' counters in the
-- transaction that moves a lead. A bulk assignment changes the counters of the new agent and
-- of every agent it takes a lead from (most of a small team), so with counters updated in
-- place, concurrent assignments (and the queue's batches applying their events) waited on one
-- another's commits, one after another. The service folds the deltas into `agent_loads` every
-- second in one statement, and readers add the deltas not folded yet (`agent_loads_now`), so
-- any snapshot sees each change exactly once.
CREATE TABLE agent_load_deltas (
    id       bigserial PRIMARY KEY,
    org_id   text   NOT NULL,
    agent_id text   NOT NULL,
    held     bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0
)
-- Emptied every second: a vacuum would otherwise take the table's exclusive lock to cut off
-- its empty pages, holding up the assignments that append to it.
WITH (vacuum_truncate = false);
CREATE INDEX agent_load_deltas_by_agent ON agent_load_deltas (org_id, agent_id);

-- An agent's load as of the reader's snapshot: its counter plus its pending deltas. A filter on
-- `org_id` and `agent_id` reaches both tables' indexes through the grouping.
CREATE VIEW agent_loads_now AS
SELECT org_id, agent_id, sum(held)::bigint AS held, sum(reserved)::bigint AS reserved FROM (
    SELECT org_id, agent_id, held, reserved FROM agent_loads
    UNION ALL
    SELECT org_id, agent_id, held, reserved FROM agent_load_deltas
) loads
GROUP BY org_id, agent_id;

CREATE OR REPLACE FUNCTION agent_loads_count_held() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO agent_load_deltas (org_id, agent_id, held)
        SELECT org_id, agent_id, count(*) FROM new_rows WHERE active AND agent_id IS NOT NULL
        GROUP BY org_id, agent_id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO agent_load_deltas (org_id, agent_id, held)
        SELECT org_id, agent_id, -count(*) FROM old_rows WHERE active AND agent_id IS NOT NULL
        GROUP BY org_id, agent_id;
    ELSE
        INSERT INTO agent_load_deltas (org_id, agent_id, held)
        SELECT org_id, agent_id, sum(delta) FROM (
            SELECT org_id, agent_id, 1 AS delta FROM new_rows WHERE active AND agent_id IS NOT NULL
            UNION ALL
            SELECT org_id, agent_id, -1 FROM old_rows WHERE active AND agent_id IS NOT NULL
        ) d
        GROUP BY org_id, agent_id HAVING sum(delta) <> 0;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION agent_loads_count_reserved() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO agent_load_deltas (org_id, agent_id, reserved)
        SELECT org_id, reserved_for, count(*) FROM new_rows WHERE reserved_for IS NOT NULL
        GROUP BY org_id, reserved_for;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO agent_load_deltas (org_id, agent_id, reserved)
        SELECT org_id, reserved_for, -count(*) FROM old_rows WHERE reserved_for IS NOT NULL
        GROUP BY org_id, reserved_for;
    ELSE
        INSERT INTO agent_load_deltas (org_id, agent_id, reserved)
        SELECT org_id, agent_id, sum(delta) FROM (
            SELECT org_id, reserved_for AS agent_id, 1 AS delta FROM new_rows WHERE reserved_for IS NOT NULL
            UNION ALL
            SELECT org_id, reserved_for, -1 FROM old_rows WHERE reserved_for IS NOT NULL
        ) d
        GROUP BY org_id, agent_id HAVING sum(delta) <> 0;
    END IF;
    RETURN NULL;
END $$;
