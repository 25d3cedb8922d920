-- Each organisation's lead settings (status rules, conversation link), every change kept with
-- who made it, and what the rules read: when a person last set a lead's status, and which
-- rule moved a lead.

CREATE TABLE org_settings (
    org_id                    text        PRIMARY KEY,
    status_rules              jsonb       NOT NULL,
    conversation_url_template text,
    version                   bigint      NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    updated_by                text        NOT NULL
);

CREATE TABLE org_settings_changes (
    org_id  text        NOT NULL,
    version bigint      NOT NULL,
    actor   text        NOT NULL,
    at      timestamptz NOT NULL DEFAULT now(),
    changes jsonb       NOT NULL,
    PRIMARY KEY (org_id, version)
);

-- A rule never overrides a status a person set after the lead's last interaction.
ALTER TABLE leads ADD COLUMN status_set_by_hand_at timestamptz;

ALTER TABLE status_changes ADD COLUMN rule text;
