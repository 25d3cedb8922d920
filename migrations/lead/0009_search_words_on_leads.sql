-- A search of a common word ("lovelace", one name in 40) is best answered by walking the leads
-- in the page's order and keeping the matching ones; checking each lead's contact for the
-- word cost one contact lookup per lead walked, 2,600 of them for a page of 50 (24 ms at a
-- million leads). So each lead carries a copy of its contact's words, checked on the lead row
-- the walk reads anyway. There is no index on the copy: a rare word still starts from the
-- contacts' index (migration 0008), and an index here would be rewritten by every
-- interaction, as the lead row is. `lead::read` chooses between the two per search.
ALTER TABLE leads ADD COLUMN search_words tsvector;

UPDATE leads l SET search_words = c.search_words FROM contacts c WHERE c.id = l.contact_id;

-- The copy is kept by the database, so that no way of writing a lead or a contact (the
-- service, an import, a repair by hand) can leave it stale. The functions find the tables
-- in this schema whatever the caller's search_path.
CREATE FUNCTION leads_take_contact_search_words() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    NEW.search_words := (SELECT c.search_words FROM contacts c WHERE c.id = NEW.contact_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER leads_take_contact_search_words
    BEFORE INSERT ON leads
    FOR EACH ROW EXECUTE FUNCTION leads_take_contact_search_words();

CREATE FUNCTION contacts_give_search_words_to_leads() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE leads SET search_words = NEW.search_words WHERE org_id = NEW.org_id AND contact_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER contacts_give_search_words_to_leads
    AFTER UPDATE OF name, email ON contacts
    FOR EACH ROW WHEN (OLD.search_words IS DISTINCT FROM NEW.search_words)
    EXECUTE FUNCTION contacts_give_search_words_to_leads();
