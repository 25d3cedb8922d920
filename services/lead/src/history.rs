//! GetLeadHistory: one timeline, newest first, over the lead and the contact's past leads.

use crate::{LeadContext, error::LeadError};
use chrono::{DateTime, Utc};
use contracts::time::timestamp;
use leads_proto::v1 as pb;
use leads_proto::v1::broadcast_tracking_service_client::BroadcastTrackingServiceClient;
use platform::grpc::TracedChannel;
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
    pub broadcast_history_unavailable: bool,
}

/// A contact's broadcast messages beyond this many are left out of the timeline.
const MAX_BROADCASTS: usize = 1000;

/// One timeline entry with its sort key, from either source.
struct Entry {
    at: DateTime<Utc>,
    key: String,
    entry: pb::HistoryEntry,
}

const TIMELINE: &str = "\
WITH contact AS (SELECT contact_id FROM leads WHERE org_id = $1 AND id = $2), \
     related AS (SELECT id FROM leads WHERE org_id = $1 AND contact_id = (SELECT contact_id FROM contact) \
                   AND ($6::text IS NULL OR agent_id IS NULL OR agent_id = $6 OR id = $2)) \
SELECT * FROM ( \
  SELECT i.occurred_at AS at, i.lead_id, 'interaction' AS kind, 'i:' || i.event_id AS key, \
         i.direction || ' ' || i.kind || coalesce(': ' || left(i.text, 140), '') AS summary, \
         coalesce(i.agent_id, '') AS actor, \
         jsonb_build_object('event_id', i.event_id, 'channel', i.channel, 'text', i.text, \
           'conversation_id', i.conversation_id, 'broadcast_message_id', i.broadcast_message_id, \
           'campaign_id', i.campaign_id, 'integration', i.integration_name)::text AS details \
    FROM interactions i WHERE i.org_id = $1 AND i.contact_id = (SELECT contact_id FROM contact) \
      AND ($6::text IS NULL OR i.lead_id IN (SELECT id FROM related)) \
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
         CASE WHEN c.score IS NULL THEN 'manual score cleared, back to ' || c.source \
              ELSE c.source || ' score ' || c.score END, c.actor, \
         jsonb_build_object('score', c.score, 'source', c.source, 'reasons', c.reasons)::text \
    FROM score_changes c WHERE c.org_id = $1 AND c.lead_id IN (SELECT id FROM related) \
  UNION ALL \
  SELECT a.at, a.lead_id, 'assignment', 'a:' || lpad(a.id::text, 20, '0'), \
         CASE WHEN a.to_agent IS NULL THEN 'unassigned from ' || coalesce(a.from_agent, '') \
              WHEN a.from_agent IS NULL THEN 'assigned to ' || a.to_agent \
              ELSE 'reassigned from ' || a.from_agent || ' to ' || a.to_agent END \
           || coalesce(' (' || a.reason || ')', ''), \
         a.actor, \
         jsonb_build_object('from', a.from_agent, 'to', a.to_agent, 'reason', a.reason, \
           'version', a.lead_version)::text \
    FROM assignment_changes a WHERE a.org_id = $1 AND a.lead_id IN (SELECT id FROM related) \
  UNION ALL \
  SELECT f.at, f.lead_id, 'follow_up', 'f:' || f.follow_up_id || ':' || f.state, \
         'follow-up ' || CASE f.state \
           WHEN 'pending' THEN 'scheduled for ' || to_char(f.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' \
           ELSE f.state END || coalesce(': ' || left(f.note, 140), ''), \
         f.actor, \
         jsonb_build_object('follow_up_id', f.follow_up_id, 'state', f.state, 'due_at', f.due_at, \
           'note', f.note, 'agent_id', f.agent_id)::text \
    FROM follow_up_entries f WHERE f.org_id = $1 AND f.lead_id IN (SELECT id FROM related) \
) t \
WHERE $3::timestamptz IS NULL OR (t.at, t.key) < ($3, $4) \
ORDER BY t.at DESC, t.key DESC LIMIT $5";

pub async fn lead_history(
    ctx: &LeadContext,
    org_id: &str,
    lead_id: Uuid,
    page_size: i32,
    page_token: &str,
    visible_to: Option<&str>,
) -> Result<History, LeadError> {
    let page_size = match i64::from(page_size) {
        0 => 100,
        n if (1..=MAX_PAGE).contains(&n) => n,
        _ => {
            return Err(LeadError::invalid("page_size", format!("must be between 1 and {MAX_PAGE}")));
        }
    };
    let pool = &ctx.pool;
    let contact: Option<Uuid> = sqlx::query_scalar("SELECT contact_id FROM leads WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(lead_id)
        .fetch_optional(pool)
        .await?;
    let contact = contact.ok_or_else(|| LeadError::NotFound(lead_id.to_string()))?;
    let (after_at, after_key) = decode_token(page_token)?;
    let broadcasts = match &ctx.broadcast {
        Some(client) => broadcast_entries(client.clone(), org_id, contact).await,
        None => Err(()),
    };
    let broadcast_history_unavailable = broadcasts.is_err();
    let rows: Vec<EntryRow> = sqlx::query_as(TIMELINE)
        .bind(org_id)
        .bind(lead_id)
        .bind(after_at)
        .bind(after_key.clone())
        .bind(page_size + 1)
        .bind(visible_to)
        .fetch_all(pool)
        .await?;
    let mut merged: Vec<Entry> = rows
        .into_iter()
        .map(|row| Entry {
            at: row.at,
            entry: pb::HistoryEntry {
                at: Some(timestamp(row.at)),
                lead_id: row.lead_id.map(|id| id.to_string()).unwrap_or_default(),
                kind: row.kind,
                summary: row.summary,
                actor: row.actor,
                details_json: row.details,
            },
            key: row.key,
        })
        .collect();
    let after = after_at.zip(after_key);
    merged.extend(
        broadcasts
            .unwrap_or_default()
            .into_iter()
            .filter(|e| after.as_ref().is_none_or(|(at, key)| (e.at, &e.key) < (*at, key))),
    );
    merged.sort_by(|a, b| (b.at, &b.key).cmp(&(a.at, &a.key)));
    let has_more = merged.len() as i64 > page_size;
    merged.truncate(page_size as usize);
    let next_page_token = match (has_more, merged.last()) {
        (true, Some(last)) => platform::token::encode(&format!("{}|{}", last.at.timestamp_micros(), last.key)),
        _ => String::new(),
    };
    let past_lead_ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM leads p, leads l WHERE l.org_id = $1 AND l.id = $3 \
           AND p.org_id = $1 AND p.contact_id = $2 AND (p.created_at, p.id) < (l.created_at, l.id) \
           AND ($4::text IS NULL OR p.agent_id IS NULL OR p.agent_id = $4) \
         ORDER BY p.created_at DESC, p.id DESC",
    )
    .bind(org_id)
    .bind(contact)
    .bind(lead_id)
    .bind(visible_to)
    .fetch_all(pool)
    .await?;
    Ok(History {
        entries: merged.into_iter().map(|e| e.entry).collect(),
        next_page_token,
        past_lead_ids: past_lead_ids.iter().map(Uuid::to_string).collect(),
        broadcast_history_unavailable,
    })
}

/// The contact's broadcast messages, from the broadcast-tracking service, as entries.
async fn broadcast_entries(
    mut client: BroadcastTrackingServiceClient<TracedChannel>,
    org_id: &str,
    contact_id: Uuid,
) -> Result<Vec<Entry>, ()> {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let mut request = tonic::Request::new(pb::GetBroadcastHistoryRequest {
            org_id: org_id.into(),
            target: Some(pb::get_broadcast_history_request::Target::ContactId(contact_id.to_string())),
            page_size: 200,
            page_token: token.clone(),
        });
        request.set_timeout(std::time::Duration::from_secs(3));
        let page = match client.get_broadcast_history(request).await {
            Ok(page) => page.into_inner(),
            // The contact has no broadcast history yet.
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(entries),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = %status.message(), "broadcast history unavailable");
                return Err(());
            }
        };
        for message in page.messages {
            entries.push(broadcast_entry(message));
        }
        if page.next_page_token.is_empty() || entries.len() >= MAX_BROADCASTS {
            return Ok(entries);
        }
        token = page.next_page_token;
    }
}

fn broadcast_entry(message: pb::BroadcastMessageView) -> Entry {
    let first_status = message.timeline.iter().filter_map(|s| s.at.as_ref()).min_by_key(|t| (t.seconds, t.nanos));
    let at = message
        .sent_at
        .as_ref()
        .or(first_status)
        .and_then(contracts::time::from_timestamp)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let campaign = message.campaign.clone().unwrap_or_default();
    let template = message.template.clone().unwrap_or_default();
    let campaign_label = if campaign.name.is_empty() { campaign.id.clone() } else { campaign.name.clone() };
    let state = if message.failed { format!("failed ({})", message.error_class) } else { message.state.clone() };
    let timeline: Vec<serde_json::Value> = message
        .timeline
        .iter()
        .map(|s| {
            serde_json::json!({
                "status": s.status,
                "at": s.at.as_ref().and_then(contracts::time::from_timestamp),
                "error_code": s.error.as_ref().map(|e| e.code),
                "error_title": s.error.as_ref().map(|e| e.title.clone()),
                "error_class": (!s.error_class.is_empty()).then_some(&s.error_class),
            })
        })
        .collect();
    let details = serde_json::json!({
        "message_id": message.message_id,
        "campaign_id": campaign.id,
        "campaign_name": campaign.name,
        "template": template.name,
        "template_language": template.language,
        "template_category": template.category,
        "state": message.state,
        "failed": message.failed,
        "error_class": message.error_class,
        "timeline": timeline,
    });
    Entry {
        at,
        key: format!("b:{}", message.message_id),
        entry: pb::HistoryEntry {
            at: Some(timestamp(at)),
            lead_id: String::new(),
            kind: "broadcast".into(),
            summary: format!("broadcast {campaign_label} / {}: {state}", template.name),
            actor: String::new(),
            details_json: details.to_string(),
        },
    }
}

fn decode_token(token: &str) -> Result<(Option<DateTime<Utc>>, Option<String>), LeadError> {
    if token.is_empty() {
        return Ok((None, None));
    }
    let bad = || LeadError::invalid("page_token", "is not a token this service issued");
    let cursor = platform::token::decode(token).ok_or_else(bad)?;
    let (micros, key) = cursor.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((Some(at), Some(key.to_owned())))
}
