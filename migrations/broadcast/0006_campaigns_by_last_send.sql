-- ListCampaigns orders an organisation's campaigns by when each last sent a message, and every
-- campaign's figures say when it first and last did. With the send time in the key of the index
-- GetCampaignStats already walks, a campaign's first and newest sends are one probe at either
-- end of its range, and the figures stay index-only (org, campaign, send time, message id: all
-- the messages columns they read).
CREATE INDEX messages_by_campaign_sent ON messages (org_id, campaign_id, sent_at) INCLUDE (message_id)
    WHERE campaign_id IS NOT NULL;
DROP INDEX messages_by_campaign;
ALTER INDEX messages_by_campaign_sent RENAME TO messages_by_campaign;
