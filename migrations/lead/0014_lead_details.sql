-- What a lead carries beyond its counts, for the people working it: the reasons of its
-- current AI score (NULL for a score set by hand, or none yet), the attributes its
-- interactions brought (an integration's flat string map, each key from the latest
-- interaction that gave it) and the chat system's conversation of its latest interaction
-- that named one.
ALTER TABLE leads
    ADD COLUMN score_reasons    jsonb,
    ADD COLUMN attributes       jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN conversation_id  text,
    -- Where each of those came from: the time and event id of the interaction that set the
    -- conversation and each attribute (`lead::model::DetailPositions`), so that an interaction
    -- applied late, older than ones applied before it, changes only what it is the latest for.
    ADD COLUMN detail_positions jsonb NOT NULL DEFAULT '{}';

-- Leads that existed before: their details from the interactions they hold. Positions are
-- written the way `DetailPositions` serialises them: [RFC 3339 time, event id].
WITH latest_attributes AS (
    SELECT DISTINCT ON (i.lead_id, a.key) i.lead_id, a.key, a.value, i.occurred_at, i.event_id
    FROM interactions i CROSS JOIN LATERAL jsonb_each_text(i.attributes) AS a(key, value)
    WHERE i.lead_id IS NOT NULL AND i.attributes <> '{}'
    ORDER BY i.lead_id, a.key, i.occurred_at DESC, i.event_id COLLATE "C" DESC
), attributes AS (
    SELECT lead_id, jsonb_object_agg(key, value) AS attributes,
           jsonb_object_agg(key, jsonb_build_array(
               to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), event_id)) AS positions
    FROM latest_attributes GROUP BY lead_id
), conversations AS (
    SELECT DISTINCT ON (i.lead_id) i.lead_id, i.conversation_id,
           jsonb_build_array(to_char(i.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                             i.event_id) AS position
    FROM interactions i
    WHERE i.lead_id IS NOT NULL AND i.conversation_id IS NOT NULL
    ORDER BY i.lead_id, i.occurred_at DESC, i.event_id COLLATE "C" DESC
)
UPDATE leads l SET
    attributes = coalesce(d.attributes, '{}'),
    conversation_id = d.conversation_id,
    detail_positions = jsonb_strip_nulls(jsonb_build_object(
        'conversation_id', d.position, 'attributes', coalesce(d.positions, '{}')))
FROM (SELECT coalesce(a.lead_id, c.lead_id) AS lead_id, a.attributes, a.positions, c.conversation_id, c.position
      FROM attributes a FULL JOIN conversations c ON c.lead_id = a.lead_id) d
WHERE l.id = d.lead_id;

-- The reasons of each AI score standing on a lead: those of its newest score change.
UPDATE leads l SET score_reasons = s.reasons
FROM (SELECT DISTINCT ON (lead_id) lead_id, reasons FROM score_changes ORDER BY lead_id, at DESC, id DESC) s
WHERE s.lead_id = l.id AND l.score_source = 'ai';
