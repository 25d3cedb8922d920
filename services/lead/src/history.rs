//! GetLeadHistory: one timeline, newest first, over the lead and the contact's past leads.

use crate::{error::LeadError, model::timestamp};
use chrono::{DateTime, Utc};
use leads_proto::v1 as pb;
use sqlx::PgPool;
use uuid::Uuid;

pub const MAX_PAGE: i64 = 500;

#[derive(sqlx::FromRow)]
struct EntryRow {
    at: DateTime<Utc>,
    lead_id: Option<Uuid>,
    kind: String,
    key: String,
    summary: String,
    actor: String,
    details: String,
}

pub struct History {
    pub entries: Vec<pb::HistoryEntry>,
    pub next_page_token: String,
    pub past_lead_ids: Vec<String>,
}

const TIMELINE: &str = "\
WITH contact AS (SELECT contact_id FROM leads WHERE org_id = $1 AND id = $2), \
     related AS (SELECT id FROM leads WHERE org_id = $1 AND contact_id = (SELECT contact_id FROM contact)) \
SELECT * FROM ( \
  SELECT i.occurred_at AS at, i.lead_id, 'interaction' AS kind, 'i:' || i.event_id AS key, \
         i.direction || ' ' || i.kind || coalesce(': ' || left(i.text, 140), '') AS summary, \
         coalesce(i.agent_id, '') AS actor, \
         jsonb_build_object('event_id', i.event_id, 'channel', i.channel, 'text', i.text, \
           'conversation_id', i.conversation_id, 'broadcast_message_id', i.broadcast_message_id, \
           'campaign_id', i.campaign_id, 'integration', i.integration_name)::text AS details \
    FROM interactions i WHERE i.org_id = $1 AND i.contact_id = (SELECT contact_id FROM contact) \
  UNION ALL \
  SELECT s.at, s.lead_id, CASE WHEN s.from_status IS NULL THEN 'created' ELSE 'status_changed' END, \
         's:' || lpad(s.id::text, 20, '0'), \
         CASE WHEN s.from_status IS NULL THEN coalesce(s.reason, 'created') \
              ELSE s.from_status || ' -> ' || s.to_status || coalesce(' (' || s.reason || ')', '') END, \
         s.actor, \
         jsonb_build_object('from', s.from_status, 'to', s.to_status, 'reason', s.reason, \
           'manual_score', s.manual_score, 'version', s.lead_version)::text \
    FROM status_changes s WHERE s.org_id = $1 AND s.lead_id IN (SELECT id FROM related) \
  UNION ALL \
  SELECT c.at, c.lead_id, 'score', 'c:' || lpad(c.id::text, 20, '0'), \
         c.source || ' score ' || c.score, c.actor, \
         jsonb_build_object('score', c.score, 'source', c.source, 'reasons', c.reasons)::text \
    FROM score_changes c WHERE c.org_id = $1 AND c.lead_id IN (SELECT id FROM related) \
) t \
WHERE $3::timestamptz IS NULL OR (t.at, t.key) < ($3, $4) \
ORDER BY t.at DESC, t.key DESC LIMIT $5";

pub async fn lead_history(
    pool: &PgPool,
    org_id: &str,
    lead_id: Uuid,
    page_size: i32,
    page_token: &str,
) -> Result<History, LeadError> {
    let page_size = match i64::from(page_size) {
        0 => 100,
        n if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            return Err(LeadError::invalid("page_size", format!("must be between 1 and {MAX_PAGE}")));
        }
    };
    let contact: Option<Uuid> = sqlx::query_scalar("SELECT contact_id FROM leads WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(lead_id)
        .fetch_optional(pool)
        .await?;
    let contact = contact.ok_or_else(|| LeadError::NotFound(lead_id.to_string()))?;
    let (after_at, after_key) = decode_token(page_token)?;
    let rows: Vec<EntryRow> = sqlx::query_as(TIMELINE)
        .bind(org_id)
        .bind(lead_id)
        .bind(after_at)
        .bind(after_key)
        .bind(page_size + 1)
        .fetch_all(pool)
        .await?;
    let has_more = rows.len() as i64 > page_size;
    let rows = &rows[..rows.len().min(page_size as usize)];
    let next_page_token = match (has_more, rows.last()) {
        (true, Some(last)) => format!("{}|{}", last.at.timestamp_micros(), last.key),
        _ => String::new(),
    };
    let past_lead_ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM leads WHERE org_id = $1 AND contact_id = $2 AND id <> $3 ORDER BY created_at DESC",
    )
    .bind(org_id)
    .bind(contact)
    .bind(lead_id)
    .fetch_all(pool)
    .await?;
    Ok(History {
        entries: rows
            .iter()
            .map(|row| pb::HistoryEntry {
                at: Some(timestamp(row.at)),
                lead_id: row.lead_id.map(|id| id.to_string()).unwrap_or_default(),
                kind: row.kind.clone(),
                summary: row.summary.clone(),
                actor: row.actor.clone(),
                details_json: row.details.clone(),
            })
            .collect(),
        next_page_token,
        past_lead_ids: past_lead_ids.iter().map(Uuid::to_string).collect(),
    })
}

fn decode_token(token: &str) -> Result<(Option<DateTime<Utc>>, Option<String>), LeadError> {
    if token.is_empty() {
        return Ok((None, None));
    }
    let bad = || LeadError::invalid("page_token", "is not a token this service issued");
    let (micros, key) = token.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((Some(at), Some(key.to_owned())))
}
