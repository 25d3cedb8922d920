-- The Leads page's search matches words by prefix, in order: "ada lov" finds Ada Lovelace.
-- Trigram matching of whole names cost a dozen posting lists per query (20+ ms at a million
-- contacts for "Ada Lovelace", whose two words are each common). Here a contact's words are
-- the letter runs of its name and email (digits and punctuation split them: "lovelace12" is
-- "lovelace"), and each pair of neighbouring words is a word of its own ("ada lovelace"),
-- so a search of several words looks up one rare entry instead of intersecting common ones.
-- `lead::query::search_query` splits a search the same way. Phone digits keep their trigram
-- index (migration 0006).
CREATE FUNCTION contact_search_words(name text, email text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH words AS (
        SELECT w, row_number() OVER (ORDER BY n) AS i
        FROM regexp_split_to_table(
               regexp_replace(lower(coalesce(name, '') || ' ' || coalesce(email, '')),
                              '([[:digit:]]|[^[:alnum:]])+', ' ', 'g'),
               ' ') WITH ORDINALITY AS t(w, n)
        WHERE w <> ''
    )
    SELECT array_to_tsvector(coalesce(array_agg(lexeme), '{}'))
    FROM (SELECT w AS lexeme FROM words
          UNION ALL
          SELECT a.w || ' ' || b.w FROM words a JOIN words b ON b.i = a.i + 1) AS lexemes
$$;

ALTER TABLE contacts
    ADD COLUMN search_words tsvector GENERATED ALWAYS AS (contact_search_words(name, email)) STORED;

CREATE INDEX contacts_search_words ON contacts USING gin (search_words);

DROP INDEX contacts_name_trgm;
DROP INDEX contacts_email_trgm;
