//! What this service needs to know of the lead service, built from its events: each lead's
//! contact (to find a lead's broadcasts) and the replies to broadcast messages (for the
//! campaign's reply and lead counts). One batch is one transaction.

use crate::{BroadcastContext, error::BroadcastError};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::interaction::{Direction, Kind};
use contracts::lead::{InteractionSummary, LeadChange, LeadEvent};
use std::collections::BTreeMap;
use uuid::Uuid;

struct LeadRow<'a> {
    contact_id: Uuid,
    phone: Option<&'a str>,
    external_id: Option<&'a str>,
    version: i64,
}

struct ReplyRow<'a> {
    message_id: &'a str,
    lead_id: Uuid,
    created_lead: bool,
    occurred_at: DateTime<Utc>,
}

/// The reply an event announces, when its interaction answered a broadcast message.
fn reply(change: &LeadChange) -> Option<(&InteractionSummary, bool)> {
    let (interaction, created) = match change {
        LeadChange::Created { interaction } => (interaction, true),
        LeadChange::InteractionRecorded { interaction } => (interaction, false),
        _ => return None,
    };
    // Only the contact's own messages are replies; an outbound one is the business writing.
    let is_reply = interaction.kind == Kind::BroadcastReply
        && interaction.direction == Direction::Inbound
        && interaction.broadcast_message_id.as_deref().is_some_and(|id| !id.is_empty());
    is_reply.then_some((interaction, created))
}

/// Applies a batch of lead events in one transaction (retried on conflicts by the consumer,
/// `platform::consumer::apply_decoded`).
pub async fn apply_batch(ctx: &BroadcastContext, batch: &[Envelope<LeadEvent>]) -> Result<(), BroadcastError> {
    // Keyed maps: deduplicated and in key order, so concurrent batches lock rows in one order.
    let mut leads: BTreeMap<(&str, Uuid), LeadRow> = BTreeMap::new();
    let mut replies: BTreeMap<(&str, &str), ReplyRow> = BTreeMap::new();
    for envelope in batch {
        let lead = &envelope.data.lead;
        let row = LeadRow {
            contact_id: lead.contact_id,
            phone: lead.phone.as_deref(),
            external_id: lead.external_id.as_deref(),
            version: envelope.version,
        };
        // Within the batch as across batches: the highest version of a lead wins.
        match leads.get(&(envelope.org_id.as_str(), lead.id)) {
            Some(seen) if seen.version >= row.version => {}
            _ => {
                leads.insert((envelope.org_id.as_str(), lead.id), row);
            }
        }
        if let Some((interaction, created)) = reply(&envelope.data.change) {
            let slot = replies.entry((envelope.org_id.as_str(), interaction.event_id.as_str())).or_insert(ReplyRow {
                message_id: interaction.broadcast_message_id.as_deref().unwrap_or_default(),
                lead_id: lead.id,
                created_lead: created,
                occurred_at: interaction.occurred_at,
            });
            slot.created_lead |= created;
        }
    }
    let mut tx = ctx.pool.begin().await?;
    if !leads.is_empty() {
        let (keys, rows) = crate::handler::columns(&leads);
        sqlx::query(
            "INSERT INTO lead_contacts (org_id, lead_id, contact_id, phone, external_id, version) \
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int8[]) \
             ON CONFLICT (org_id, lead_id) DO UPDATE SET contact_id = EXCLUDED.contact_id, \
               phone = EXCLUDED.phone, external_id = EXCLUDED.external_id, version = EXCLUDED.version \
             WHERE EXCLUDED.version > lead_contacts.version",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.contact_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.phone).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.external_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !replies.is_empty() {
        let (keys, rows) = crate::handler::columns(&replies);
        sqlx::query(
            "INSERT INTO replies (org_id, event_id, message_id, lead_id, created_lead, occurred_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::bool[], $6::timestamptz[]) \
             ON CONFLICT (org_id, event_id) DO UPDATE SET created_lead = true \
             WHERE EXCLUDED.created_lead AND NOT replies.created_lead",
        )
        .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.lead_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_lead).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    use platform::telemetry::names;
    metrics::counter!(names::BROADCAST_LEAD_EVENTS_APPLIED, "service" => "broadcast").increment(batch.len() as u64);
    metrics::counter!(names::BROADCAST_REPLIES_SEEN, "service" => "broadcast").increment(replies.len() as u64);
    Ok(())
}
