//! What every change of a lead shares: its status history row and the event that
//! announces it. Interactions are applied in batches by `crate::batch`.

use crate::{LeadContext, error::LeadError, model::LEAD_VIEW_COLUMNS};
use contracts::Envelope;
use contracts::lead::{LeadChange, LeadEvent, LeadView};
use platform::nats::Subjects;
use platform::outbox::OutboxMessage;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub const SYSTEM_ACTOR: &str = "system";

/// Reads the lead as it now is and queues the event announcing `change`.
pub async fn publish(
    ctx: &LeadContext,
    tx: &mut Transaction<'_, Postgres>,
    messages: &mut Vec<OutboxMessage>,
    lead_id: Uuid,
    change: LeadChange,
) -> Result<LeadView, LeadError> {
    let lead: LeadView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEAD_VIEW_COLUMNS} FROM leads l JOIN contacts c ON c.id = l.contact_id WHERE l.id = $1"
    )))
    .bind(lead_id)
    .fetch_one(&mut **tx)
    .await?;
    messages.push(lead_event(&ctx.subjects, &lead, change));
    Ok(lead)
}

pub fn lead_envelope(lead: &LeadView, change: LeadChange) -> Envelope<LeadEvent> {
    Envelope::new(&lead.org_id, change.kind(), lead.id, lead.version, LeadEvent { change, lead: lead.clone() })
}

pub fn lead_event(subjects: &Subjects, lead: &LeadView, change: LeadChange) -> OutboxMessage {
    event_message(subjects, &lead_envelope(lead, change))
}

/// The message that tells one lead event alone, on the subject of its kind.
pub fn event_message(subjects: &Subjects, envelope: &Envelope<LeadEvent>) -> OutboxMessage {
    OutboxMessage {
        org_id: envelope.org_id.clone(),
        subject: subjects.event("lead", &envelope.org_id, &envelope.kind),
        msg_id: envelope.id.to_string(),
        payload: envelope.to_json(),
    }
}

/// One column of `rows`, bound as an array that `UNNEST($n::type[])` turns back into rows.
pub fn column<'a, T, U>(rows: &'a [T], value: impl FnMut(&'a T) -> U) -> Vec<U> {
    rows.iter().map(value).collect()
}
