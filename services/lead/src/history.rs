//! GetLeadHistory: one timeline, newest first, over the lead and the contact's past leads.
//!
//! A lead's timeline is its own entries and those of the contact's leads created before it,
//! never those of a later lead. What belongs to the contact rather than to a lead (broadcast
//! messages, outbound messages no lead holds) is on the timeline of the lead that was the
//! contact's newest when it happened: an older lead shows what was sent before the contact's
//! next lead was created, the newest lead everything up to now. So a broadcast that a reply
//! answered, opening the next lead, shows on both: it was sent while the older lead was the
//! newest, and the next lead's timeline holds all that came before it.
//!
//! Entries of the lead schema and broadcast messages from the broadcast-tracking service
//! sort by one key, time then entry key (a broadcast's is `b:<message id>`, in the order
//! GetBroadcastHistory pages in), so a page token, the last entry's time and key, is also
//! the place in the broadcast history where the next page's broadcasts begin
//! (`GetBroadcastHistoryRequest.older_than`): each page asks for as many broadcasts as it
//! may show, and every broadcast appears once, in time order with the rest.

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

/// The largest page GetBroadcastHistory answers.
const BROADCAST_PAGE: usize = 500;

/// One timeline entry with its sort key, from either source.
struct Entry {
    at: DateTime<Utc>,
    key: String,
    entry: pb::HistoryEntry,
}

/// `$7` is when the contact's next lead was created (NULL for its newest lead): an outbound
/// message no lead holds belongs to the timeline up to then.
const TIMELINE: &str = "\
WITH me AS (SELECT contact_id, created_at, id FROM leads WHERE org_id = $1 AND id = $2), \
     contact AS (SELECT contact_id FROM me), \
     related AS (SELECT l.id FROM leads l, me WHERE l.org_id = $1 AND l.contact_id = me.contact_id \
                   AND (l.created_at, l.id) <= (me.created_at, me.id) \
                   AND ($6::text IS NULL OR l.agent_id IS NULL OR l.agent_id = $6 OR l.id = $2)) \
SELECT * FROM ( \
  SELECT i.occurred_at AS at, i.lead_id, 'interaction' AS kind, 'i:' || i.event_id AS key, \
         i.direction || ' ' || i.kind || coalesce(': ' || left(i.text, 140), '') AS summary, \
         coalesce(i.agent_id, '') AS actor, \
         jsonb_build_object('event_id', i.event_id, 'channel', i.channel, 'text', i.text, \
           'conversation_id', i.conversation_id, 'broadcast_message_id', i.broadcast_message_id, \
           'campaign_id', i.campaign_id, 'integration', i.integration_name, \
           'attributes', nullif(i.attributes, '{}'))::text AS details \
    FROM interactions i WHERE i.org_id = $1 AND i.contact_id = (SELECT contact_id FROM contact) \
      AND (i.lead_id IN (SELECT id FROM related) \
           OR (i.lead_id IS NULL AND $6::text IS NULL AND ($7::timestamptz IS NULL OR i.occurred_at < $7))) \
  UNION ALL \
  SELECT s.at, s.lead_id, CASE WHEN s.from_status IS NULL THEN 'created' ELSE 'status_changed' END, \
         's:' || lpad(s.id::text, 20, '0'), \
         CASE WHEN s.from_status IS NULL THEN coalesce(s.reason, 'created') \
              ELSE s.from_status || ' -> ' || s.to_status || coalesce(' (' || s.reason || ')', '') \
                   || coalesce(', by rule ' || s.rule, '') END, \
         s.actor, \
         jsonb_build_object('from', s.from_status, 'to', s.to_status, 'reason', s.reason, \
           'manual_score', s.manual_score, 'version', s.lead_version, 'rule', s.rule)::text \
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
           WHEN 'rescheduled' THEN 'rescheduled to ' || to_char(f.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' \
           ELSE f.state END || coalesce(': ' || left(f.note, 140), ''), \
         f.actor, \
         jsonb_build_object('follow_up_id', f.follow_up_id, 'state', f.state, 'due_at', f.due_at, \
           'note', f.note, 'agent_id', f.agent_id)::text \
    FROM follow_up_entries f WHERE f.org_id = $1 AND f.lead_id IN (SELECT id FROM related) \
) t \
WHERE $3::timestamptz IS NULL OR t.at < $3 OR (t.at = $3 AND t.key COLLATE \"C\" < $4) \
ORDER BY t.at DESC, t.key COLLATE \"C\" DESC LIMIT $5";

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
    let span: Option<(Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT l.contact_id, \
           (SELECT n.created_at FROM leads n WHERE n.org_id = l.org_id AND n.contact_id = l.contact_id \
              AND (n.created_at, n.id) > (l.created_at, l.id) ORDER BY n.created_at, n.id LIMIT 1) \
         FROM leads l WHERE l.org_id = $1 AND l.id = $2",
    )
    .bind(org_id)
    .bind(lead_id)
    .fetch_optional(pool)
    .await?;
    let (contact, next_lead_began) = span.ok_or_else(|| LeadError::NotFound(lead_id.to_string()))?;
    let after = decode_token(page_token)?;
    let wanted = page_size as usize + 1;
    let broadcasts = match &ctx.broadcast {
        Some(client) => {
            let older_than = broadcast_place(after.as_ref(), next_lead_began);
            broadcast_entries(client.clone(), org_id, contact, older_than, wanted).await
        }
        None => Err(()),
    };
    let broadcast_history_unavailable = broadcasts.is_err();
    let rows: Vec<EntryRow> = sqlx::query_as(TIMELINE)
        .bind(org_id)
        .bind(lead_id)
        .bind(after.as_ref().map(|(at, _)| *at))
        .bind(after.as_ref().map(|(_, key)| key.as_str()))
        .bind(page_size + 1)
        .bind(visible_to)
        .bind(next_lead_began)
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
    merged.extend(broadcasts.unwrap_or_default());
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

/// Where this page's broadcasts begin in the broadcast history: after the page token's entry,
/// and before the contact's next lead was created (the module's doc), whichever is further.
/// A broadcast comes after the entry `(at, key)` when `(sent_at, "b:" + message id)` sorts
/// below it: for a broadcast's key, below its message id; for a key that sorts below every
/// broadcast's (`a:`), below `at`; for one above (`c:`, `i:`, ...), at `at` or earlier, which
/// is below the microsecond after it (Postgres keeps microseconds, as the token does).
fn broadcast_place(
    after: Option<&(DateTime<Utc>, String)>,
    next_lead_began: Option<DateTime<Utc>>,
) -> Option<(DateTime<Utc>, String)> {
    let from_token = after.map(|(at, key)| match key.strip_prefix(BROADCAST_KEY) {
        Some(message_id) => (*at, message_id.to_owned()),
        None if key.as_str() < BROADCAST_KEY => (*at, String::new()),
        None => (*at + chrono::Duration::microseconds(1), String::new()),
    });
    let before_next_lead = next_lead_began.map(|at| (at, String::new()));
    match (from_token, before_next_lead) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The prefix of a broadcast entry's key, before its message id.
const BROADCAST_KEY: &str = "b:";

/// Up to `wanted` of the contact's broadcast messages, newest first, from `older_than` on,
/// from the broadcast-tracking service, as entries.
async fn broadcast_entries(
    mut client: BroadcastTrackingServiceClient<TracedChannel>,
    org_id: &str,
    contact_id: Uuid,
    older_than: Option<(DateTime<Utc>, String)>,
    wanted: usize,
) -> Result<Vec<Entry>, ()> {
    let older_than =
        older_than.map(|(at, message_id)| pb::BroadcastHistoryPlace { sent_at: Some(timestamp(at)), message_id });
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page_size = (wanted - entries.len()).min(BROADCAST_PAGE) as i32;
        let mut request = tonic::Request::new(pb::GetBroadcastHistoryRequest {
            org_id: org_id.into(),
            target: Some(pb::get_broadcast_history_request::Target::ContactId(contact_id.to_string())),
            page_size,
            page_token: token.clone(),
            older_than: older_than.clone(),
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
        entries.extend(page.messages.into_iter().map(broadcast_entry));
        if page.next_page_token.is_empty() || entries.len() >= wanted {
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
        key: format!("{BROADCAST_KEY}{}", message.message_id),
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

/// The time and key of the last entry of the previous page; none for the first page.
fn decode_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, LeadError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || LeadError::invalid("page_token", "is not a token this service issued");
    let cursor = platform::token::decode(token).ok_or_else(bad)?;
    let (micros, key) = cursor.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((at, key.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-24T10:{minute:02}:00Z")).unwrap().with_timezone(&Utc)
    }

    /// Whether a broadcast sent at `sent_at` comes after `place` in the broadcast history, as
    /// `GetBroadcastHistoryRequest.older_than` reads it.
    fn after_place(place: &(DateTime<Utc>, String), sent_at: DateTime<Utc>, message_id: &str) -> bool {
        (sent_at, message_id) < (place.0, place.1.as_str())
    }

    #[test]
    fn the_broadcasts_after_a_page_token_are_those_after_its_entry_in_the_timeline() {
        let broadcasts = [(at(4), "m1"), (at(5), "m1"), (at(5), "m2"), (at(5), "m3"), (at(6), "m0")];
        for key in ["a:00000000000000000001", "b:m2", "c:00000000000000000001", "i:evt-1", "s:00000000000000000009"] {
            let entry = (at(5), key.to_owned());
            let place = broadcast_place(Some(&entry), None).expect("a place");
            for (sent_at, message_id) in broadcasts {
                let in_timeline = (sent_at, format!("{BROADCAST_KEY}{message_id}")) < entry;
                assert_eq!(
                    after_place(&place, sent_at, message_id),
                    in_timeline,
                    "{key} and {message_id} at {sent_at}"
                );
            }
        }
    }

    #[test]
    fn an_older_leads_broadcasts_end_where_the_next_lead_began_or_at_the_token() {
        let place = broadcast_place(None, Some(at(5))).expect("a place");
        assert!(after_place(&place, at(4), "m"));
        assert!(!after_place(&place, at(5), "m"), "sent as the next lead began: the next lead's");
        let token = (at(3), "b:m".to_owned());
        assert_eq!(broadcast_place(Some(&token), Some(at(5))), Some((at(3), "m".to_owned())), "the token is further");
        let token = (at(7), "i:evt".to_owned());
        assert_eq!(broadcast_place(Some(&token), Some(at(5))), Some((at(5), String::new())), "the next lead is");
        assert_eq!(broadcast_place(None, None), None);
    }
}
