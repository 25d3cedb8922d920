//! How a `contracts::lead::LeadView` is read from this service's tables.

/// Columns of `LeadView`, for `SELECT ... FROM leads l JOIN contacts c ON c.id = l.contact_id`.
pub const LEAD_VIEW_COLUMNS: &str = "l.id, l.org_id, l.contact_id, c.phone, c.external_id, c.name, c.email, \
     l.status, l.active, l.source_kind, l.channel, l.campaign_id, l.broadcast_message_id, \
     l.integration_name, l.integration_reference, l.score, l.score_source, l.agent_id, \
     l.interaction_count, l.last_message_preview, l.first_touch_at, l.last_interaction_at, \
     l.created_at, l.updated_at, l.version";
