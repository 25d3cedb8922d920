-- The learning engine replaces the keyword rules: features per lead kept as the model's
-- bounded JSON accumulator, outcomes (Converted or Lost) as labels, and a model per
-- organisation. Leads scored by the rules start their features afresh with their next
-- interaction.
DROP TABLE lead_features;

CREATE TABLE lead_state (
    org_id       text        NOT NULL,
    lead_id      uuid        NOT NULL,
    -- State fields follow the lead's highest version seen.
    lead_version bigint      NOT NULL DEFAULT 0,
    active       boolean     NOT NULL DEFAULT true,
    -- The score an operator set by hand, which wins over the engine's until handed back.
    manual_score integer,
    -- `model::LeadFeatures`, accumulated once per interaction (see scored_interactions).
    features     jsonb       NOT NULL DEFAULT '{}',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, lead_id)
);

-- A lead's outcome and its features when it was decided: the training set.
CREATE TABLE outcomes (
    org_id     text        NOT NULL,
    lead_id    uuid        NOT NULL,
    converted  boolean     NOT NULL,
    features   jsonb       NOT NULL,
    decided_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, lead_id)
);

CREATE TABLE models (
    org_id            text             NOT NULL,
    version           integer          NOT NULL,
    trained_at        timestamptz      NOT NULL,
    training_size     integer          NOT NULL,
    positives         integer          NOT NULL,
    negatives         integer          NOT NULL,
    holdout_auc       double precision NOT NULL,
    prior_holdout_auc double precision NOT NULL,
    -- Scoring uses the newest model in use; a model that does not beat the prior is kept
    -- (GetModel shows it) but not used.
    in_use            boolean          NOT NULL,
    model             jsonb            NOT NULL,
    PRIMARY KEY (org_id, version)
);
