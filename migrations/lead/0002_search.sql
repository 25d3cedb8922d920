-- Trigram indexes (pg_trgm, created in this schema at bootstrap) so that the Leads page's
-- search for part of a name, email or phone does not scan every contact.
CREATE INDEX contacts_name_trgm ON contacts USING gin (name gin_trgm_ops);
CREATE INDEX contacts_email_trgm ON contacts USING gin (email gin_trgm_ops);
CREATE INDEX contacts_phone_trgm ON contacts USING gin (phone gin_trgm_ops);
