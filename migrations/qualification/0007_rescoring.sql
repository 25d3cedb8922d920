-- Scores that stay true: an organisation's new model rescores its active leads in the
-- background, and leads whose time-dependent features (recency, active in the last day or
-- week) moved enough are scored again on a schedule.

-- One rescoring per organisation, recorded with the model that starts it (a newer model
-- starts it again from the first lead). Every qualification process works through it a page
-- at a time, the page's scores and the new cursor committed together, while it holds the row
-- locked: a process killed mid-page leaves the page to the next, and no two rescore a lead
-- twice for one model.
CREATE TABLE rescorings (
    org_id        text        PRIMARY KEY,
    model_version text        NOT NULL,
    -- The last lead of the last page rescored (pages go in lead id order); NULL before the first.
    after_lead    uuid,
    rescored      bigint      NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- When the score was last computed, changed or not (scored_at is when it last changed), and
-- when its time-dependent features will have moved enough to be worth computing again
-- (`LeadFeatures::refresh_at`; NULL: never, as for a score a language model gave).
ALTER TABLE scores ADD COLUMN checked_at timestamptz, ADD COLUMN refresh_at timestamptz;

-- Scores from before this version are due at once: the refresher gives each its time.
UPDATE scores SET refresh_at = scored_at WHERE model_version NOT LIKE 'llm:%';

CREATE INDEX scores_due_for_refresh ON scores (refresh_at) WHERE refresh_at IS NOT NULL;
