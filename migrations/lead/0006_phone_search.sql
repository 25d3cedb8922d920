-- A trigram index on the phone column itself was chosen by the planner for the exact phone
-- lookups that find contacts, where it is far slower than the unique btree. Search matches
-- phone digits through this expression index instead, which exact lookups cannot pick.
DROP INDEX contacts_phone_trgm;
CREATE INDEX contacts_phone_digits_trgm ON contacts USING gin ((substr(phone, 2)) gin_trgm_ops);
