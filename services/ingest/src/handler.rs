//! The ingest handler: one batch of candidate events, one transaction. Accepted events are
//! recorded (their `(org, event_id)` is the idempotency key, forever) and forwarded to the
//! lead service through the outbox; refused ones are kept with their reason and dead-lettered.

use crate::IngestContext;
use chrono::Utc;
use contracts::{Refusal, interaction::Interaction};
use platform::outbox::{self, OutboxMessage};
use serde::Serialize;
use std::collections::HashSet;
use uuid::Uuid;

/// One event on its way in, already decoded and validated.
#[derive(Debug, Clone)]
pub enum Candidate {
    Valid {
        org_id: String,
        interaction: Box<Interaction>,
    },
    Refused {
        /// Empty when the subject did not name a valid organisation.
        org_id: String,
        event_id: Option<String>,
        subject: String,
        refusal: Refusal,
        payload: Vec<u8>,
        /// Identifies the message itself, so a redelivered refusal is kept once.
        source_key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected(Refusal),
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl platform::error::ServiceError for IngestError {
    fn code(&self) -> tonic::Code {
        match self {
            IngestError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            IngestError::Database(error) => platform::error::sql_code(error),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, IngestError::Database(error) if platform::error::is_transient(error))
    }
}

impl From<IngestError> for tonic::Status {
    fn from(error: IngestError) -> Self {
        platform::error::to_status("ingest", &error)
    }
}

pub use contracts::interaction::{INTERACTION_ACCEPTED, INTERACTIONS_ACCEPTED};

/// What a dead-lettered event carries.
#[derive(Debug, Serialize)]
struct DeadLetter<'a> {
    org_id: &'a str,
    event_id: Option<&'a str>,
    subject: &'a str,
    field: &'a str,
    reason: &'a str,
    received_at: chrono::DateTime<Utc>,
    payload_encoding: &'static str,
    /// The refused payload, or its first `DEAD_LETTER_EXCERPT_BYTES` when it is larger: a
    /// dead letter must stay well under NATS's message size, or it would hold up the outbox.
    payload: String,
    /// The whole payload's size; it is kept whole in `ingest.rejections`.
    payload_bytes: usize,
    payload_truncated: bool,
}

/// How much of a refused payload its dead letter carries.
pub const DEAD_LETTER_EXCERPT_BYTES: usize = 16 * 1024;

/// Keeps a batch in one transaction; its callers run it by the one retry policy
/// (`platform::error::retry_transient`).
pub async fn handle(ctx: &IngestContext, batch: &[Candidate]) -> Result<Vec<Outcome>, IngestError> {
    let mut tx = ctx.pool.begin().await?;
    let mut orgs = Vec::new();
    let mut event_ids = Vec::new();
    let mut refused_keys = Vec::new();
    let (mut r_orgs, mut r_events, mut r_subjects, mut r_fields, mut r_reasons, mut r_payloads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for candidate in batch {
        match candidate {
            Candidate::Valid { org_id, interaction } => {
                orgs.push(org_id.as_str());
                event_ids.push(interaction.event_id.as_str());
            }
            Candidate::Refused { org_id, event_id, subject, refusal, payload, source_key } => {
                refused_keys.push(source_key.as_str());
                r_orgs.push(org_id.as_str());
                r_events.push(event_id.as_deref());
                r_subjects.push(subject.as_str());
                r_fields.push(refusal.field.as_str());
                r_reasons.push(refusal.reason.as_str());
                r_payloads.push(payload.as_slice());
            }
        }
    }
    let inserted: HashSet<(String, String)> = if orgs.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_as::<_, (String, String)>(
            "INSERT INTO accepted_events (org_id, event_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING RETURNING org_id, event_id",
        )
        .bind(&orgs)
        .bind(&event_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let newly_refused: HashSet<String> = if refused_keys.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar::<_, String>(
            "INSERT INTO rejections (org_id, event_id, subject, field, reason, payload, source_key) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[]) \
             ON CONFLICT (source_key) DO NOTHING RETURNING source_key",
        )
        .bind(&r_orgs)
        .bind(&r_events)
        .bind(&r_subjects)
        .bind(&r_fields)
        .bind(&r_reasons)
        .bind(&r_payloads)
        .bind(&refused_keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut messages = Vec::new();
    let mut forwarded: HashSet<(&str, &str)> = HashSet::new();
    let mut accepted: Vec<(&str, &Interaction)> = Vec::new();
    for candidate in batch {
        match candidate {
            Candidate::Valid { org_id, interaction } => {
                let key = (org_id.as_str(), interaction.event_id.as_str());
                let is_new = inserted.contains(&(key.0.to_owned(), key.1.to_owned())) && forwarded.insert(key);
                if is_new {
                    accepted.push((org_id, interaction));
                    outcomes.push(Outcome::Accepted);
                } else {
                    outcomes.push(Outcome::Duplicate);
                }
            }
            Candidate::Refused { org_id, event_id, subject, refusal, payload, source_key } => {
                if newly_refused.contains(source_key) {
                    messages.push(dead_letter(ctx, org_id, event_id.as_deref(), subject, refusal, payload));
                }
                outcomes.push(Outcome::Rejected(refusal.clone()));
            }
        }
    }
    messages.extend(outbox::batched_by_org(accepted, INTERACTIONS_ACCEPTED, |org_id| {
        ctx.subjects.event("ingest", org_id, INTERACTIONS_ACCEPTED)
    }));
    outbox::commit(tx, &messages, &ctx.outbox).await?;
    let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count();
    metrics::counter!(platform::telemetry::names::EVENTS_ACCEPTED, "service" => "ingest").increment(accepted as u64);
    platform::telemetry::count_refused(
        "ingest",
        batch.iter().filter_map(|c| match c {
            Candidate::Refused { refusal, .. } => Some(refusal.field.as_str()),
            Candidate::Valid { .. } => None,
        }),
    );
    metrics::counter!(platform::telemetry::names::DEADLETTER, "service" => "ingest")
        .increment(newly_refused.len() as u64);
    Ok(outcomes)
}

fn dead_letter(
    ctx: &IngestContext,
    org_id: &str,
    event_id: Option<&str>,
    subject: &str,
    refusal: &Refusal,
    payload: &[u8],
) -> OutboxMessage {
    let excerpt = &payload[..payload.len().min(DEAD_LETTER_EXCERPT_BYTES)];
    let (payload_encoding, payload_text) = match std::str::from_utf8(excerpt) {
        Ok(text) => ("utf8", text.to_owned()),
        // Cut inside a character: the valid part stays text.
        Err(error) if error.error_len().is_none() && excerpt.len() < payload.len() => {
            ("utf8", String::from_utf8_lossy(&excerpt[..error.valid_up_to()]).into_owned())
        }
        Err(_) => ("hex", platform::token::hex(excerpt)),
    };
    let letter = DeadLetter {
        org_id,
        event_id,
        subject,
        field: &refusal.field,
        reason: &refusal.reason,
        received_at: Utc::now(),
        payload_encoding,
        payload: payload_text,
        payload_bytes: payload.len(),
        payload_truncated: excerpt.len() < payload.len(),
    };
    let target = if org_id.is_empty() {
        ctx.subjects.deadletter("malformed")
    } else {
        ctx.subjects.deadletter(&format!("interactions.{org_id}"))
    };
    OutboxMessage {
        org_id: org_id.to_owned(),
        subject: target,
        msg_id: Uuid::now_v7().to_string(),
        payload: serde_json::to_vec(&letter).unwrap_or_default(),
    }
}
