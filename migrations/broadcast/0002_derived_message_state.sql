-- A message's current state is derived from its statuses when it is read, instead of kept
-- in a row that nearly every status event updated: that upsert cost about as much as
-- storing the status itself, while the statuses already hold everything the state says.
-- The view keeps the old shape (rank: sent 1 < delivered 2 < read 3, 0 for none; failed)
-- for operators and tests. A state derived from a set that only grows cannot go backwards.
DROP TABLE message_states;

CREATE VIEW message_states AS
    SELECT org_id, message_id,
           max(CASE status WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1 ELSE 0 END)::smallint
               AS rank,
           bool_or(status = 'failed') AS failed
    FROM statuses
    GROUP BY org_id, message_id;
