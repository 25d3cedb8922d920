-- The Leads page's search matches words by prefix ("ada lov" finds Ada Lovelace) and phone
-- digits anywhere, through one GIN index on the lead row itself. Trigram matching of names on
-- the contacts table needed a join per candidate lead and a dozen posting lists per query:
-- 20+ ms at a million leads. The words are the lead's contact's name and email split at
-- anything that is not a letter or digit and between letters and digits ("lovelace12" is
-- "lovelace" and "12"), so a prefix names few index entries; the phone contributes every
-- suffix of its digits of three or more, so that any run of its digits is the prefix of one.
-- `lead::query::search_query` splits the search the same way.
CREATE FUNCTION search_words(name text, email text, phone text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('simple',
             regexp_replace(regexp_replace(regexp_replace(
               lower(coalesce(name, '') || ' ' || coalesce(email, '')),
               '[[:punct:][:space:]]+', ' ', 'g'),
               '([[:alpha:]])([[:digit:]])', '\1 \2', 'g'),
               '([[:digit:]])([[:alpha:]])', '\1 \2', 'g'))
        || array_to_tsvector(ARRAY(
             SELECT substr(d, i)
             FROM (SELECT regexp_replace(coalesce(phone, ''), '[^0-9]', '', 'g') AS d) p,
                  generate_series(1, length(d) - 2) AS i))
$$;

-- Kept by the lead service whenever it writes a lead or changes a contact's name, email or
-- phone (every lead of that contact, past ones too).
ALTER TABLE leads ADD COLUMN search_words tsvector NOT NULL DEFAULT ''::tsvector;

UPDATE leads l SET search_words = search_words(c.name, c.email, c.phone)
FROM contacts c WHERE c.id = l.contact_id;

CREATE INDEX leads_search_words ON leads USING gin (search_words);

DROP INDEX contacts_name_trgm;
DROP INDEX contacts_email_trgm;
DROP INDEX contacts_phone_digits_trgm;
