-- Identifiers compare as bytes. Under a database collation other than "C" (C.UTF-8 and
-- en_US.UTF-8 included) every comparison of a text key in a B-tree went through strcoll: a
-- profile of the backlog drain had Postgres spend more time comparing keys than writing them.
-- Ids, codes and names of a closed set have no linguistic order to respect, so their columns
-- use "C"; the views over them are rebuilt because a column they read cannot change type.
DROP VIEW orphan_statuses;
DROP VIEW message_states;

ALTER TABLE statuses
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN error_class TYPE text COLLATE "C";

ALTER TABLE messages
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C",
    ALTER COLUMN phone TYPE text COLLATE "C",
    ALTER COLUMN external_id TYPE text COLLATE "C",
    ALTER COLUMN campaign_id TYPE text COLLATE "C",
    ALTER COLUMN template_name TYPE text COLLATE "C",
    ALTER COLUMN template_language TYPE text COLLATE "C";

ALTER TABLE campaigns
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN campaign_id TYPE text COLLATE "C";

ALTER TABLE templates
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN name TYPE text COLLATE "C",
    ALTER COLUMN language TYPE text COLLATE "C";

ALTER TABLE lead_contacts
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN phone TYPE text COLLATE "C",
    ALTER COLUMN external_id TYPE text COLLATE "C";

ALTER TABLE replies
    ALTER COLUMN org_id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C";

ALTER TABLE rejections
    ALTER COLUMN source_key TYPE text COLLATE "C";

CREATE VIEW orphan_statuses AS
    SELECT s.* FROM statuses s
    WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.org_id = s.org_id AND m.message_id = s.message_id);

CREATE VIEW message_states AS
    SELECT org_id, message_id,
           max(CASE status WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1 ELSE 0 END)::smallint
               AS rank,
           bool_or(status = 'failed') AS failed
    FROM statuses
    GROUP BY org_id, message_id;
