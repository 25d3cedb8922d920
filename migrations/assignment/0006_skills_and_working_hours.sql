-- Skills and working hours: a lead whose channel or source needs a skill goes only to agents
-- with it, and an agent outside its working hours counts as away for automatic assignment.

-- `utc_offset_minutes`: the agent's fixed offset from UTC (no tz database in the workspace);
-- absent means UTC. `work_days`: ISO weekdays as bits (Monday = bit 0); with the daily window
-- [work_start_minute, work_end_minute) in the agent's local time. Absent hours: always working.
ALTER TABLE agents
    ADD COLUMN skills             text[]   NOT NULL DEFAULT '{}',
    ADD COLUMN utc_offset_minutes integer  CHECK (utc_offset_minutes BETWEEN -1080 AND 1080),
    ADD COLUMN work_days          smallint CHECK (work_days BETWEEN 1 AND 127),
    ADD COLUMN work_start_minute  integer  CHECK (work_start_minute BETWEEN 0 AND 1439),
    ADD COLUMN work_end_minute    integer  CHECK (work_end_minute BETWEEN 1 AND 1440),
    ADD CONSTRAINT agents_hours_whole CHECK ((work_days IS NULL) = (work_start_minute IS NULL)
        AND (work_days IS NULL) = (work_end_minute IS NULL) AND work_start_minute < work_end_minute);

-- Where each lead came from, for its skill route: the channel and the source (`chat_message`,
-- `broadcast_reply`, `integration:<name>`); absent for leads seen before they were kept.
ALTER TABLE lead_agents
    ADD COLUMN channel text,
    ADD COLUMN source  text;

-- [{"match": "whatsapp", "skill": "whatsapp"}, ...], first match wins.
ALTER TABLE org_settings ADD COLUMN skill_routes jsonb NOT NULL DEFAULT '[]';
