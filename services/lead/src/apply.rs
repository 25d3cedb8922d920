//! Applies accepted interactions: finds or creates the contact, adds the interaction to the
//! contact's active lead or opens a new one, and moves a New lead to Contacted on the first
//! outbound message. One batch is one transaction; the events it publishes commit with it.

use crate::{
    LeadContext,
    error::LeadError,
    model::{InteractionSummary, LEAD_VIEW_COLUMNS, LeadChange, LeadEvent, LeadView, Status},
};
use ingest::event::{Direction, Interaction, Kind};
use platform::{event::Envelope, outbox::OutboxMessage};
use sqlx::{Postgres, Transaction};
use std::collections::HashSet;
use uuid::Uuid;

const PREVIEW_CHARS: usize = 140;
pub const SYSTEM_ACTOR: &str = "system";

/// Applies a batch, skipping events already applied. Retries the whole batch on conflicts.
pub async fn apply_batch(ctx: &LeadContext, batch: &[Envelope<Interaction>]) -> Result<(), LeadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_apply_batch(ctx, batch).await {
            Err(error) if attempt < 8 && error.is_retryable() => {
                tracing::debug!(%error, attempt, "retrying interaction batch");
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            result => return result,
        }
    }
}

async fn try_apply_batch(ctx: &LeadContext, batch: &[Envelope<Interaction>]) -> Result<(), LeadError> {
    let mut tx = ctx.pool.begin().await?;
    let orgs: Vec<&str> = batch.iter().map(|e| e.org_id.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|e| e.data.event_id.as_str()).collect();
    let seen: HashSet<(String, String)> = sqlx::query_as(
        "SELECT i.org_id, i.event_id FROM interactions i \
         JOIN UNNEST($1::text[], $2::text[]) AS b(org_id, event_id) \
           ON i.org_id = b.org_id AND i.event_id = b.event_id",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut todo: Vec<&Envelope<Interaction>> = Vec::with_capacity(batch.len());
    let mut in_batch = HashSet::new();
    for envelope in batch {
        let key = (envelope.org_id.clone(), envelope.data.event_id.clone());
        if !seen.contains(&key) && in_batch.insert(key) {
            todo.push(envelope);
        }
    }
    // Arrival order, not a sorted order: an event that links a phone to an external id must
    // be applied before a later event that names only the phone. Deadlocks between
    // concurrent batches are rare and retried.
    let mut messages = Vec::new();
    let mut pending = PendingInteractions::default();
    for envelope in todo {
        apply_one(ctx, &mut tx, &envelope.org_id, &envelope.data, &mut messages, &mut pending).await?;
    }
    pending.write(&mut tx).await?;
    platform::outbox::enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    if !messages.is_empty() {
        ctx.outbox.notify();
    }
    metrics::counter!("lead_interactions_applied_total").increment(batch.len() as u64);
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    id: Uuid,
    phone: Option<String>,
    external_id: Option<String>,
}

async fn resolve_contact(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    event: &Interaction,
) -> Result<Uuid, LeadError> {
    let phone = event.contact.phone.as_deref();
    let external_id = event.contact.external_id.as_deref();
    let rows: Vec<ContactRow> = sqlx::query_as(
        "SELECT id, phone, external_id FROM contacts \
         WHERE org_id = $1 AND (phone = $2 OR external_id = $3) \
         ORDER BY (phone IS NOT DISTINCT FROM $2) DESC, id FOR UPDATE",
    )
    .bind(org_id)
    .bind(phone)
    .bind(external_id)
    .fetch_all(&mut **tx)
    .await?;
    let Some(found) = rows.first() else {
        let id: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO contacts (id, org_id, phone, external_id, name, email, profile_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(Uuid::now_v7())
        .bind(org_id)
        .bind(phone)
        .bind(external_id)
        .bind(event.contact.name.as_deref())
        .bind(event.contact.email.as_deref())
        .bind(event.occurred_at)
        .fetch_optional(&mut **tx)
        .await?;
        // None: another transaction created this contact since our read; start over.
        return id.ok_or(LeadError::Conflict);
    };
    // Link the identity the contact lacks, unless another contact already holds it.
    let link_phone = phone.filter(|_| found.phone.is_none() && rows.iter().all(|r| r.phone.as_deref() != phone));
    let link_external = external_id
        .filter(|_| found.external_id.is_none() && rows.iter().all(|r| r.external_id.as_deref() != external_id));
    sqlx::query(
        "UPDATE contacts SET \
           phone = coalesce(phone, $2), external_id = coalesce(external_id, $3), \
           name = CASE WHEN $6 >= profile_at THEN coalesce($4, name) ELSE name END, \
           email = CASE WHEN $6 >= profile_at THEN coalesce($5, email) ELSE email END, \
           profile_at = greatest(profile_at, $6) \
         WHERE id = $1 AND ($2::text IS NOT NULL OR $3::text IS NOT NULL \
           OR ($6 >= profile_at AND (($4::text IS NOT NULL AND $4 IS DISTINCT FROM name) \
                                  OR ($5::text IS NOT NULL AND $5 IS DISTINCT FROM email))))",
    )
    .bind(found.id)
    .bind(link_phone)
    .bind(link_external)
    .bind(event.contact.name.as_deref())
    .bind(event.contact.email.as_deref())
    .bind(event.occurred_at)
    .execute(&mut **tx)
    .await?;
    Ok(found.id)
}

async fn apply_one(
    ctx: &LeadContext,
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    event: &Interaction,
    messages: &mut Vec<OutboxMessage>,
    pending: &mut PendingInteractions,
) -> Result<(), LeadError> {
    let contact_id = resolve_contact(tx, org_id, event).await?;
    let active: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM leads WHERE org_id = $1 AND contact_id = $2 AND active FOR UPDATE")
            .bind(org_id)
            .bind(contact_id)
            .fetch_optional(&mut **tx)
            .await?;
    let preview = event.text.as_deref().map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
    let lead_id = match (active, event.direction) {
        (None, Direction::Outbound) => None,
        (None, Direction::Inbound) => {
            let lead_id = Uuid::now_v7();
            let inserted: Option<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "WITH l AS ( \
                   INSERT INTO leads (id, org_id, contact_id, status, source_kind, channel, campaign_id, \
                     broadcast_message_id, integration_name, integration_reference, interaction_count, \
                     last_message_preview, first_touch_at, last_interaction_at) \
                   VALUES ($1, $2, $3, 'new', $4, $5, $6, $7, $8, $9, 1, $10, $11, $11) \
                   ON CONFLICT DO NOTHING RETURNING * \
                 ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id"
            )))
            .bind(lead_id)
            .bind(org_id)
            .bind(contact_id)
            .bind(event.kind.as_str())
            .bind(&event.channel)
            .bind(event.broadcast.as_ref().and_then(|b| b.campaign_id.as_deref()))
            .bind(event.broadcast.as_ref().map(|b| b.message_id.as_str()))
            .bind(event.integration.as_ref().map(|i| i.name.as_str()))
            .bind(event.integration.as_ref().and_then(|i| i.reference.as_deref()))
            .bind(preview.as_deref())
            .bind(event.occurred_at)
            .fetch_optional(&mut **tx)
            .await?;
            // None: a concurrent transaction opened this contact's active lead first.
            let lead = inserted.ok_or(LeadError::Conflict)?;
            let source = match event.kind {
                Kind::ChatMessage => "created from a chat message".to_owned(),
                Kind::BroadcastReply => format!(
                    "created from a reply to broadcast {}",
                    event.broadcast.as_ref().map(|b| b.message_id.as_str()).unwrap_or_default()
                ),
                Kind::Integration => format!(
                    "created from integration {}",
                    event.integration.as_ref().map(|i| i.name.as_str()).unwrap_or_default()
                ),
            };
            record_status_change(tx, org_id, lead_id, None, Status::New, SYSTEM_ACTOR, Some(&source), None, 1).await?;
            messages.push(lead_event(ctx, &lead, LeadChange::Created { interaction: summary(event) }));
            Some(lead_id)
        }
        (Some((lead_id, status)), direction) => {
            let becomes_contacted = direction == Direction::Outbound && status == Status::New.as_str();
            let lead: LeadView = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "WITH l AS ( \
                   UPDATE leads SET interaction_count = interaction_count + 1, \
                     last_message_preview = CASE WHEN $2 >= last_interaction_at AND $3::text IS NOT NULL \
                                                 THEN $3 ELSE last_message_preview END, \
                     last_interaction_at = greatest(last_interaction_at, $2), \
                     status = CASE WHEN $4 THEN 'contacted' ELSE status END, \
                     updated_at = now(), version = version + 1 \
                   WHERE id = $1 RETURNING * \
                 ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id"
            )))
            .bind(lead_id)
            .bind(event.occurred_at)
            .bind(preview.as_deref())
            .bind(becomes_contacted)
            .fetch_one(&mut **tx)
            .await?;
            let version = lead.version;
            let change = if becomes_contacted {
                let reason = "first outbound message";
                record_status_change(
                    tx,
                    org_id,
                    lead_id,
                    Some(Status::New),
                    Status::Contacted,
                    SYSTEM_ACTOR,
                    Some(reason),
                    None,
                    version,
                )
                .await?;
                LeadChange::StatusChanged {
                    from: Status::New.as_str().into(),
                    to: Status::Contacted.as_str().into(),
                    actor: SYSTEM_ACTOR.into(),
                    reason: Some(reason.into()),
                }
            } else {
                LeadChange::InteractionRecorded { interaction: summary(event) }
            };
            messages.push(lead_event(ctx, &lead, change));
            Some(lead_id)
        }
    };
    pending.push(org_id, event, lead_id, contact_id);
    Ok(())
}

/// Interaction rows of one batch, written with one statement at its end.
#[derive(Default)]
struct PendingInteractions {
    org_id: Vec<String>,
    event_id: Vec<String>,
    lead_id: Vec<Option<Uuid>>,
    contact_id: Vec<Uuid>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    kind: Vec<&'static str>,
    direction: Vec<&'static str>,
    channel: Vec<String>,
    text: Vec<Option<String>>,
    agent_id: Vec<Option<String>>,
    conversation_id: Vec<Option<String>>,
    broadcast_message_id: Vec<Option<String>>,
    campaign_id: Vec<Option<String>>,
    integration_name: Vec<Option<String>>,
    integration_reference: Vec<Option<String>>,
    attributes: Vec<sqlx::types::Json<std::collections::BTreeMap<String, String>>>,
}

impl PendingInteractions {
    fn push(&mut self, org_id: &str, event: &Interaction, lead_id: Option<Uuid>, contact_id: Uuid) {
        self.org_id.push(org_id.to_owned());
        self.event_id.push(event.event_id.clone());
        self.lead_id.push(lead_id);
        self.contact_id.push(contact_id);
        self.occurred_at.push(event.occurred_at);
        self.kind.push(event.kind.as_str());
        self.direction.push(event.direction.as_str());
        self.channel.push(event.channel.clone());
        self.text.push(event.text.clone());
        self.agent_id.push(event.agent_id.clone());
        self.conversation_id.push(event.conversation_id.clone());
        self.broadcast_message_id.push(event.broadcast.as_ref().map(|b| b.message_id.clone()));
        self.campaign_id.push(event.broadcast.as_ref().and_then(|b| b.campaign_id.clone()));
        self.integration_name.push(event.integration.as_ref().map(|i| i.name.clone()));
        self.integration_reference.push(event.integration.as_ref().and_then(|i| i.reference.clone()));
        self.attributes.push(sqlx::types::Json(event.attributes.clone()));
    }

    async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), LeadError> {
        if self.org_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO interactions (org_id, event_id, lead_id, contact_id, occurred_at, kind, direction, \
               channel, text, agent_id, conversation_id, broadcast_message_id, campaign_id, integration_name, \
               integration_reference, attributes) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
               $14::text[], $15::text[], $16::jsonb[])",
        )
        .bind(&self.org_id)
        .bind(&self.event_id)
        .bind(&self.lead_id)
        .bind(&self.contact_id)
        .bind(&self.occurred_at)
        .bind(&self.kind)
        .bind(&self.direction)
        .bind(&self.channel)
        .bind(&self.text)
        .bind(&self.agent_id)
        .bind(&self.conversation_id)
        .bind(&self.broadcast_message_id)
        .bind(&self.campaign_id)
        .bind(&self.integration_name)
        .bind(&self.integration_reference)
        .bind(&self.attributes)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn summary(event: &Interaction) -> InteractionSummary {
    InteractionSummary {
        event_id: event.event_id.clone(),
        kind: event.kind.as_str().into(),
        direction: event.direction.as_str().into(),
        occurred_at: event.occurred_at,
        text: event.text.clone(),
        broadcast_message_id: event.broadcast.as_ref().map(|b| b.message_id.clone()),
        campaign_id: event.broadcast.as_ref().and_then(|b| b.campaign_id.clone()),
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn record_status_change(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    lead_id: Uuid,
    from: Option<Status>,
    to: Status,
    actor: &str,
    reason: Option<&str>,
    manual_score: Option<i32>,
    lead_version: i64,
) -> Result<(), LeadError> {
    sqlx::query(
        "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, manual_score, lead_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(org_id)
    .bind(lead_id)
    .bind(from.map(Status::as_str))
    .bind(to.as_str())
    .bind(actor)
    .bind(reason)
    .bind(manual_score)
    .bind(lead_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

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
    messages.push(lead_event(ctx, &lead, change));
    Ok(lead)
}

pub fn lead_event(ctx: &LeadContext, lead: &LeadView, change: LeadChange) -> OutboxMessage {
    let kind = change.kind();
    let envelope = Envelope::new(&lead.org_id, kind, lead.id, lead.version, LeadEvent { change, lead: lead.clone() });
    OutboxMessage {
        org_id: lead.org_id.clone(),
        subject: ctx.subjects.event("lead", &lead.org_id, kind),
        msg_id: envelope.id.to_string(),
        payload: envelope.to_json(),
    }
}
