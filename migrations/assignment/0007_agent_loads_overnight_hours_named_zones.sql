-- Each agent's load as a counter, so that choosing an agent reads one row per agent instead of
-- counting every lead held: `held` is its active leads in `lead_agents`, `reserved` the waiting
-- leads being handed to it. Statement triggers keep both in the transaction that changes the
-- projection or a reservation, whatever code path does it; deltas are applied per agent in key
-- order so that concurrent transactions lock the counters in one order. The dispatcher
-- recounts an agent when it settles a reservation from the lead, and the sweep recounts every
-- agent now and then, fixing (and counting) any drift.
CREATE TABLE agent_loads (
    org_id   text   NOT NULL,
    agent_id text   NOT NULL,
    held     bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, agent_id)
);

-- The functions keep the schema they were created in: the triggers also fire for statements
-- run with another search path (an operator's, a test's). PL/pgSQL plans a statement when it
-- first runs it, so each branch names only the transition tables its event has.
CREATE FUNCTION agent_loads_count_held() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO agent_loads AS c (org_id, agent_id, held)
        SELECT org_id, agent_id, count(*) FROM new_rows WHERE active AND agent_id IS NOT NULL
        GROUP BY org_id, agent_id ORDER BY org_id, agent_id
        ON CONFLICT (org_id, agent_id) DO UPDATE SET held = c.held + excluded.held;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO agent_loads AS c (org_id, agent_id, held)
        SELECT org_id, agent_id, -count(*) FROM old_rows WHERE active AND agent_id IS NOT NULL
        GROUP BY org_id, agent_id ORDER BY org_id, agent_id
        ON CONFLICT (org_id, agent_id) DO UPDATE SET held = c.held + excluded.held;
    ELSE
        INSERT INTO agent_loads AS c (org_id, agent_id, held)
        SELECT org_id, agent_id, sum(delta) FROM (
            SELECT org_id, agent_id, 1 AS delta FROM new_rows WHERE active AND agent_id IS NOT NULL
            UNION ALL
            SELECT org_id, agent_id, -1 FROM old_rows WHERE active AND agent_id IS NOT NULL
        ) d
        GROUP BY org_id, agent_id HAVING sum(delta) <> 0 ORDER BY org_id, agent_id
        ON CONFLICT (org_id, agent_id) DO UPDATE SET held = c.held + excluded.held;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION agent_loads_count_reserved() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO agent_loads AS c (org_id, agent_id, reserved)
        SELECT org_id, reserved_for, count(*) FROM new_rows WHERE reserved_for IS NOT NULL
        GROUP BY org_id, reserved_for ORDER BY org_id, reserved_for
        ON CONFLICT (org_id, agent_id) DO UPDATE SET reserved = c.reserved + excluded.reserved;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO agent_loads AS c (org_id, agent_id, reserved)
        SELECT org_id, reserved_for, -count(*) FROM old_rows WHERE reserved_for IS NOT NULL
        GROUP BY org_id, reserved_for ORDER BY org_id, reserved_for
        ON CONFLICT (org_id, agent_id) DO UPDATE SET reserved = c.reserved + excluded.reserved;
    ELSE
        INSERT INTO agent_loads AS c (org_id, agent_id, reserved)
        SELECT org_id, agent_id, sum(delta) FROM (
            SELECT org_id, reserved_for AS agent_id, 1 AS delta FROM new_rows WHERE reserved_for IS NOT NULL
            UNION ALL
            SELECT org_id, reserved_for, -1 FROM old_rows WHERE reserved_for IS NOT NULL
        ) d
        GROUP BY org_id, agent_id HAVING sum(delta) <> 0 ORDER BY org_id, agent_id
        ON CONFLICT (org_id, agent_id) DO UPDATE SET reserved = c.reserved + excluded.reserved;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER lead_agents_held_insert AFTER INSERT ON lead_agents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_held();
CREATE TRIGGER lead_agents_held_update AFTER UPDATE ON lead_agents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_held();
CREATE TRIGGER lead_agents_held_delete AFTER DELETE ON lead_agents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_held();
CREATE TRIGGER waiting_leads_reserved_insert AFTER INSERT ON waiting_leads
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_reserved();
CREATE TRIGGER waiting_leads_reserved_update AFTER UPDATE ON waiting_leads
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_reserved();
CREATE TRIGGER waiting_leads_reserved_delete AFTER DELETE ON waiting_leads
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION agent_loads_count_reserved();

-- From what is there now, in the transaction that starts counting.
INSERT INTO agent_loads (org_id, agent_id, held, reserved)
SELECT org_id, agent_id, sum(held), sum(reserved) FROM (
    SELECT org_id, agent_id, count(*) AS held, 0 AS reserved FROM lead_agents
    WHERE active AND agent_id IS NOT NULL GROUP BY org_id, agent_id
    UNION ALL
    SELECT org_id, reserved_for, 0, count(*) FROM waiting_leads
    WHERE reserved_for IS NOT NULL GROUP BY org_id, reserved_for
) t
GROUP BY org_id, agent_id
ON CONFLICT (org_id, agent_id) DO UPDATE SET held = excluded.held, reserved = excluded.reserved;

-- Working hours may cross midnight (22:00-06:00: start after end), the window's weekday being
-- the day it starts on; an empty window (start = end) is refused.
ALTER TABLE agents DROP CONSTRAINT agents_hours_whole;
ALTER TABLE agents ADD CONSTRAINT agents_hours_whole CHECK ((work_days IS NULL) = (work_start_minute IS NULL)
    AND (work_days IS NULL) = (work_end_minute IS NULL) AND work_start_minute <> work_end_minute);

-- A named IANA zone (`Europe/Berlin`, with its daylight saving time) read from the system's
-- tz database; a fixed offset stays in `utc_offset_minutes`. At most one of the two is set.
ALTER TABLE agents ADD COLUMN time_zone text;
ALTER TABLE agents ADD CONSTRAINT agents_one_time_zone CHECK (time_zone IS NULL OR utc_offset_minutes IS NULL);
