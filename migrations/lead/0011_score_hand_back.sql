-- A score set by hand can be handed back to the qualification engine: the history records
-- the hand-back as a score change without a score.
ALTER TABLE score_changes ALTER COLUMN score DROP NOT NULL;
