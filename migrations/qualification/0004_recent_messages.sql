-- A lead's latest messages with text (at most 8, each cut to 500 characters, oldest first;
-- `engine::RecentMessage`), from which the optional language-model scorer builds its prompt.
-- Kept only while `qualification.llm_url` is set; NULL otherwise.
ALTER TABLE lead_state ADD COLUMN recent_messages jsonb;
