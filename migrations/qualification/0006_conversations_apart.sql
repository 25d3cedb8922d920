-- A lead's conversation (its features and, while a language model scores, its latest messages)
-- changes only with its interactions, while its state follows every lead event, the lead's own
-- score changes among them. The conversation moves to a table of its own, written only when an
-- interaction is observed, so that a state change rewrites a narrow row. Features are stored in
-- the binary form of `model::stored`; the JSON of earlier rows is kept as its text, which that
-- form still reads.
CREATE TABLE lead_features (
    org_id          text  NOT NULL,
    lead_id         uuid  NOT NULL,
    features        bytea NOT NULL,
    recent_messages jsonb,
    PRIMARY KEY (org_id, lead_id)
);

INSERT INTO lead_features (org_id, lead_id, features, recent_messages)
SELECT org_id, lead_id, convert_to(features::text, 'UTF8'), recent_messages
FROM lead_state
WHERE features <> '{}'::jsonb OR recent_messages IS NOT NULL;

ALTER TABLE lead_state DROP COLUMN features, DROP COLUMN recent_messages;

-- Room on each page for the new version of a state row, so that its updates can stay on the
-- page (heap-only tuples) and leave the primary key alone. It applies to pages filled from now
-- on; an existing row sheds the dropped columns' bytes when it is next updated (a dropped
-- column is stored as null from then on), and VACUUM reclaims its old version.
ALTER TABLE lead_state SET (fillfactor = 70);
