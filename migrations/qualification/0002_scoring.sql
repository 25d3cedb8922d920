-- The qualification engine's projection of leads (fed by lead events) and its scores.

-- What scoring needs to know about a lead. State fields follow the lead's highest version
-- seen; interaction features accumulate once per interaction (see scored_interactions), so
-- an interaction event that arrives after a newer one still counts.
CREATE TABLE lead_features (
    org_id              text        NOT NULL,
    lead_id             uuid        NOT NULL,
    lead_version        bigint      NOT NULL,
    active              boolean     NOT NULL,
    source_kind         text        NOT NULL,
    has_name            boolean     NOT NULL,
    has_email           boolean     NOT NULL,
    -- The lead's own score when an operator set it by hand.
    manual_score        integer,
    inbound_count       integer     NOT NULL DEFAULT 0,
    outbound_count      integer     NOT NULL DEFAULT 0,
    pricing_hits        integer     NOT NULL DEFAULT 0,
    intent_hits         integer     NOT NULL DEFAULT 0,
    urgency_hits        integer     NOT NULL DEFAULT 0,
    negative_hits       integer     NOT NULL DEFAULT 0,
    last_interaction_at timestamptz,
    PRIMARY KEY (org_id, lead_id)
);

CREATE TABLE scored_interactions (
    org_id   text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (org_id, event_id)
);

CREATE TABLE scores (
    org_id        text        NOT NULL,
    lead_id       uuid        NOT NULL,
    score         integer     NOT NULL CHECK (score BETWEEN 0 AND 100),
    reasons       jsonb       NOT NULL,
    model_version text        NOT NULL,
    -- Grows with every new score of the lead: the lead service keeps only the newest.
    version       bigint      NOT NULL,
    scored_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, lead_id)
);
