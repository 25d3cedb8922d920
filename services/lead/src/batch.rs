//! Applies accepted interactions a batch at a time, with a fixed number of statements per
//! batch whatever its size: read the contacts and active leads the batch touches (locked),
//! decide everything in memory in arrival order, then write contacts, leads, status changes,
//! interactions and events with one multi-row statement each. One batch is one transaction;
//! a race with a concurrent batch (a contact or lead created meanwhile) retries it whole.
//!
//! The rules: an inbound event from a contact with no active lead opens one in New with its
//! source; with one it is added to it; an outbound event never opens a lead and moves a New
//! lead to Contacted, by the system. Name and email come from the newest event; a contact
//! found by one identity gains the other when no other contact holds it.
//!
//! An outbound message belongs to the contact's lead when it is at or after the lead's first
//! inbound message. One applied before that lead existed (events of one contact at the same
//! instant, or a backlog applied by concurrent batches) stays on the contact, unattached, and
//! the lead takes it when it opens or when an earlier inbound message moves its first touch
//! back: the lead ends the same in either order.

use crate::{
    LeadContext,
    apply::{SYSTEM_ACTOR, lead_envelope, lead_event},
    error::LeadError,
    lifecycle::{self, Act, Transition},
    model::LEAD_VIEW_COLUMNS,
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::interaction::{Direction, Interaction, Kind};
use contracts::lead::{INTERACTIONS_APPLIED, InteractionSummary, LeadChange, LeadEvent, LeadView, Status};
use sqlx::{Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

const PREVIEW_CHARS: usize = 140;

/// Applies a batch, skipping events already applied. Retries the whole batch on conflicts.
pub async fn apply_batch(ctx: &LeadContext, batch: &[AcceptedInteraction]) -> Result<(), LeadError> {
    platform::error::retry_transient(LeadError::is_transient, || try_apply_batch(ctx, batch)).await
}

/// An interaction the ingest service accepted, with the organisation it belongs to.
#[derive(Debug, Clone)]
pub struct AcceptedInteraction {
    pub org_id: String,
    pub interaction: Interaction,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Contact {
    id: Uuid,
    org_id: String,
    phone: Option<String>,
    external_id: Option<String>,
    name: Option<String>,
    email: Option<String>,
    profile_at: DateTime<Utc>,
}

#[derive(Debug)]
struct StatusChangeRow {
    org_id: String,
    lead_id: Uuid,
    from: Option<&'static str>,
    to: &'static str,
    reason: String,
    version: i64,
    at: DateTime<Utc>,
}

/// Everything one batch reads, decides and then writes.
#[derive(Default)]
struct BatchState {
    contacts: HashMap<Uuid, Contact>,
    by_phone: HashMap<(String, String), Uuid>,
    by_external_id: HashMap<(String, String), Uuid>,
    new_contacts: Vec<Uuid>,
    changed_contacts: HashSet<Uuid>,
    /// Active leads by contact, as they stand after the events applied so far.
    active: HashMap<Uuid, LeadView>,
    new_leads: Vec<Uuid>,
    changed_leads: HashSet<Uuid>,
    status_changes: Vec<StatusChangeRow>,
    interactions: PendingInteractions,
    /// Lead created and interaction recorded, in order: they leave batched by organisation.
    /// Status changes are in `messages`, alone on their own subjects, where the assignment
    /// and follow-up services filter for them.
    recorded: Vec<Envelope<LeadEvent>>,
    messages: Vec<platform::outbox::OutboxMessage>,
    /// Outbound messages of each contact that no lead holds yet, oldest first.
    unattached: HashMap<Uuid, Vec<Unattached>>,
    /// Stored unattached messages a lead took in this batch: (org, event id, lead).
    attached: Vec<(String, String, Uuid)>,
}

/// An outbound message recorded on its contact without a lead.
#[derive(Debug, Clone)]
struct Unattached {
    summary: InteractionSummary,
    /// Its row in this batch's pending interactions; `None` when it is stored already.
    pending: Option<usize>,
}

async fn try_apply_batch(ctx: &LeadContext, batch: &[AcceptedInteraction]) -> Result<(), LeadError> {
    let mut tx = ctx.pool.begin().await?;
    let todo = unseen(&mut tx, batch).await?;
    if todo.is_empty() {
        tx.rollback().await?;
        return Ok(());
    }
    let mut state = BatchState::default();
    load_contacts(&mut tx, &todo, &mut state).await?;
    load_active_leads(&mut tx, &mut state).await?;
    load_unattached(&mut tx, &mut state).await?;
    let now = Utc::now();
    // Arrival order: an event that links a phone to an external id comes before a later
    // event that names only the phone.
    for accepted in &todo {
        apply(ctx, &mut state, &accepted.org_id, &accepted.interaction, now);
    }
    write(&mut tx, &state).await?;
    let mut messages = std::mem::take(&mut state.messages);
    let recorded = state.recorded.iter().map(|event| (event.org_id.as_str(), event));
    messages.extend(platform::outbox::batched_by_org(recorded, INTERACTIONS_APPLIED, |org_id| {
        ctx.subjects.event("lead", org_id, INTERACTIONS_APPLIED)
    }));
    crate::apply::commit_with_events(ctx, tx, &messages).await?;
    metrics::counter!(platform::telemetry::names::LEAD_INTERACTIONS_APPLIED, "service" => "lead")
        .increment(todo.len() as u64);
    Ok(())
}

/// The batch's events not applied before, each once, in arrival order.
async fn unseen<'a>(
    tx: &mut Transaction<'_, Postgres>,
    batch: &'a [AcceptedInteraction],
) -> Result<Vec<&'a AcceptedInteraction>, LeadError> {
    let orgs: Vec<&str> = batch.iter().map(|e| e.org_id.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|e| e.interaction.event_id.as_str()).collect();
    let seen: HashSet<(String, String)> = sqlx::query_as(
        "SELECT i.org_id, i.event_id FROM interactions i \
         JOIN UNNEST($1::text[], $2::text[]) AS b(org_id, event_id) \
           ON i.org_id = b.org_id AND i.event_id = b.event_id",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let mut in_batch = HashSet::new();
    Ok(batch
        .iter()
        .filter(|e| {
            let key = (e.org_id.clone(), e.interaction.event_id.clone());
            !seen.contains(&key) && in_batch.insert(key)
        })
        .collect())
}

async fn load_contacts(
    tx: &mut Transaction<'_, Postgres>,
    todo: &[&AcceptedInteraction],
    state: &mut BatchState,
) -> Result<(), LeadError> {
    let (mut phone_orgs, mut phones, mut ext_orgs, mut exts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for accepted in todo {
        if let Some(phone) = &accepted.interaction.contact.phone {
            phone_orgs.push(accepted.org_id.as_str());
            phones.push(phone.as_str());
        }
        if let Some(external_id) = &accepted.interaction.contact.external_id {
            ext_orgs.push(accepted.org_id.as_str());
            exts.push(external_id.as_str());
        }
    }
    // Locked in id order so that concurrent batches over the same contacts queue up.
    let contacts: Vec<Contact> = sqlx::query_as(
        "SELECT c.id, c.org_id, c.phone, c.external_id, c.name, c.email, c.profile_at FROM contacts c \
         WHERE c.id IN ( \
           SELECT c1.id FROM contacts c1 JOIN UNNEST($1::text[], $2::text[]) AS k(org_id, phone) \
             ON c1.org_id = k.org_id AND c1.phone = k.phone \
           UNION \
           SELECT c2.id FROM contacts c2 JOIN UNNEST($3::text[], $4::text[]) AS k(org_id, external_id) \
             ON c2.org_id = k.org_id AND c2.external_id = k.external_id) \
         ORDER BY c.id FOR UPDATE",
    )
    .bind(&phone_orgs)
    .bind(&phones)
    .bind(&ext_orgs)
    .bind(&exts)
    .fetch_all(&mut **tx)
    .await?;
    for contact in contacts {
        state.index(contact);
    }
    Ok(())
}

async fn load_active_leads(tx: &mut Transaction<'_, Postgres>, state: &mut BatchState) -> Result<(), LeadError> {
    if state.contacts.is_empty() {
        return Ok(());
    }
    let (orgs, ids): (Vec<&str>, Vec<Uuid>) = state.contacts.values().map(|c| (c.org_id.as_str(), c.id)).unzip();
    let leads: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEAD_VIEW_COLUMNS} FROM leads l JOIN contacts c ON c.id = l.contact_id \
         JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, contact_id) \
           ON l.org_id = k.org_id AND l.contact_id = k.contact_id \
         WHERE l.active ORDER BY l.id FOR UPDATE OF l"
    )))
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for lead in leads {
        state.active.insert(lead.contact_id, lead);
    }
    Ok(())
}

/// The stored outbound messages of the batch's contacts that no lead holds (the newest 100
/// of each contact: a lead opens within a conversation, not months after).
async fn load_unattached(tx: &mut Transaction<'_, Postgres>, state: &mut BatchState) -> Result<(), LeadError> {
    if state.contacts.is_empty() {
        return Ok(());
    }
    let (orgs, ids): (Vec<&str>, Vec<Uuid>) = state.contacts.values().map(|c| (c.org_id.as_str(), c.id)).unzip();
    type Row = (Uuid, String, String, DateTime<Utc>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.contact_id, i.event_id, i.kind, i.occurred_at, i.text, i.broadcast_message_id, i.campaign_id \
         FROM UNNEST($1::text[], $2::uuid[]) AS k(org_id, contact_id) \
         CROSS JOIN LATERAL ( \
           SELECT * FROM interactions i WHERE i.org_id = k.org_id AND i.contact_id = k.contact_id \
             AND i.lead_id IS NULL AND i.direction = 'outbound' ORDER BY i.occurred_at DESC LIMIT 100 \
         ) i ORDER BY i.occurred_at",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for (contact_id, event_id, kind, occurred_at, text, broadcast_message_id, campaign_id) in rows {
        let summary = InteractionSummary {
            event_id,
            kind,
            direction: Direction::Outbound.as_str().into(),
            occurred_at,
            text,
            broadcast_message_id,
            campaign_id,
        };
        state.unattached.entry(contact_id).or_default().push(Unattached { summary, pending: None });
    }
    Ok(())
}

impl BatchState {
    fn index(&mut self, contact: Contact) {
        if let Some(phone) = &contact.phone {
            self.by_phone.insert((contact.org_id.clone(), phone.clone()), contact.id);
        }
        if let Some(external_id) = &contact.external_id {
            self.by_external_id.insert((contact.org_id.clone(), external_id.clone()), contact.id);
        }
        self.contacts.insert(contact.id, contact);
    }

    /// Finds (or creates) the event's contact, links identities and refreshes its profile.
    fn resolve_contact(&mut self, org_id: &str, event: &Interaction) -> Uuid {
        let phone_key = event.contact.phone.as_ref().map(|p| (org_id.to_owned(), p.clone()));
        let ext_key = event.contact.external_id.as_ref().map(|e| (org_id.to_owned(), e.clone()));
        let by_phone = phone_key.as_ref().and_then(|k| self.by_phone.get(k).copied());
        let by_ext = ext_key.as_ref().and_then(|k| self.by_external_id.get(k).copied());
        let Some(id) = by_phone.or(by_ext) else {
            let contact = Contact {
                id: Uuid::now_v7(),
                org_id: org_id.to_owned(),
                phone: event.contact.phone.clone(),
                external_id: event.contact.external_id.clone(),
                name: event.contact.name.clone(),
                email: event.contact.email.clone(),
                profile_at: event.occurred_at,
            };
            let id = contact.id;
            self.new_contacts.push(id);
            self.index(contact);
            return id;
        };
        let mut link_phone = None;
        let mut link_ext = None;
        let contact = self.contacts.get_mut(&id).expect("indexed contacts are loaded");
        if contact.phone.is_none() && by_phone.is_none() {
            link_phone = phone_key;
        }
        if contact.external_id.is_none() && by_ext.is_none() {
            link_ext = ext_key;
        }
        let mut changed = false;
        if let Some((_, phone)) = &link_phone {
            contact.phone = Some(phone.clone());
            changed = true;
        }
        if let Some((_, external_id)) = &link_ext {
            contact.external_id = Some(external_id.clone());
            changed = true;
        }
        if event.occurred_at >= contact.profile_at {
            for (slot, value) in [(&mut contact.name, &event.contact.name), (&mut contact.email, &event.contact.email)]
            {
                if value.is_some() && slot != value {
                    slot.clone_from(value);
                    changed = true;
                }
            }
            if changed {
                contact.profile_at = event.occurred_at;
            }
        }
        if changed {
            self.changed_contacts.insert(id);
        }
        if let Some(key) = link_phone {
            self.by_phone.insert(key, id);
        }
        if let Some(key) = link_ext {
            self.by_external_id.insert(key, id);
        }
        id
    }
}

fn apply(ctx: &LeadContext, state: &mut BatchState, org_id: &str, event: &Interaction, now: DateTime<Utc>) {
    let contact_id = state.resolve_contact(org_id, event);
    let contact = state.contacts[&contact_id].clone();
    let preview = event.text.as_deref().map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
    let belongs = |lead: &LeadView| event.direction == Direction::Inbound || event.occurred_at >= lead.first_touch_at;
    let lead_id = match state.active.get_mut(&contact_id) {
        Some(lead) if belongs(lead) => {
            (lead.phone, lead.external_id, lead.name, lead.email) =
                (contact.phone.clone(), contact.external_id.clone(), contact.name.clone(), contact.email.clone());
            lead.first_touch_at = lead.first_touch_at.min(event.occurred_at);
            let mut out = Changes {
                status_changes: &mut state.status_changes,
                recorded: &mut state.recorded,
                messages: &mut state.messages,
            };
            record_on_lead(ctx, &mut out, lead, &summary(event), event.direction, now);
            state.changed_leads.insert(lead.id);
            Some(lead.id)
        }
        Some(_) => None,
        None if event.direction == Direction::Outbound => None,
        None => {
            let lead = open_lead(state, org_id, &contact, event, preview, now);
            let id = lead.id;
            state.active.insert(contact_id, lead);
            Some(id)
        }
    };
    let index = state.interactions.len();
    state.interactions.push(org_id, event, lead_id, contact_id);
    if lead_id.is_none() {
        let unattached = Unattached { summary: summary(event), pending: Some(index) };
        state.unattached.entry(contact_id).or_default().push(unattached);
    } else if event.direction == Direction::Inbound {
        attach_unattached(ctx, state, org_id, contact_id, now);
    }
}

/// The event's lead: a new one in New, opened by an inbound message.
fn open_lead(
    state: &mut BatchState,
    org_id: &str,
    contact: &Contact,
    event: &Interaction,
    preview: Option<String>,
    now: DateTime<Utc>,
) -> LeadView {
    let lead = LeadView {
        id: Uuid::now_v7(),
        org_id: org_id.to_owned(),
        contact_id: contact.id,
        phone: contact.phone.clone(),
        external_id: contact.external_id.clone(),
        name: contact.name.clone(),
        email: contact.email.clone(),
        status: Status::New,
        active: true,
        source_kind: event.kind.as_str().to_owned(),
        channel: event.channel.clone(),
        campaign_id: event.broadcast.as_ref().and_then(|b| b.campaign_id.clone()),
        broadcast_message_id: event.broadcast.as_ref().map(|b| b.message_id.clone()),
        integration_name: event.integration.as_ref().map(|i| i.name.clone()),
        integration_reference: event.integration.as_ref().and_then(|i| i.reference.clone()),
        score: None,
        score_source: None,
        agent_id: None,
        interaction_count: 1,
        last_message_preview: preview,
        first_touch_at: event.occurred_at,
        last_interaction_at: event.occurred_at,
        created_at: now,
        updated_at: now,
        version: 1,
    };
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
    state.status_changes.push(StatusChangeRow {
        org_id: org_id.to_owned(),
        lead_id: lead.id,
        from: None,
        to: Status::New.as_str(),
        reason: source,
        version: 1,
        at: now,
    });
    state.recorded.push(lead_envelope(&lead, LeadChange::Created { interaction: summary(event) }));
    state.new_leads.push(lead.id);
    lead
}

/// Gives the contact's lead the outbound messages recorded without one that are at or after
/// its first touch.
fn attach_unattached(ctx: &LeadContext, state: &mut BatchState, org_id: &str, contact_id: Uuid, now: DateTime<Utc>) {
    let Some(lead) = state.active.get_mut(&contact_id) else { return };
    let Some(waiting) = state.unattached.get_mut(&contact_id) else { return };
    let (mut taken, kept): (Vec<Unattached>, Vec<Unattached>) =
        std::mem::take(waiting).into_iter().partition(|u| u.summary.occurred_at >= lead.first_touch_at);
    *waiting = kept;
    taken.sort_by_key(|u| u.summary.occurred_at);
    for message in taken {
        let mut out = Changes {
            status_changes: &mut state.status_changes,
            recorded: &mut state.recorded,
            messages: &mut state.messages,
        };
        record_on_lead(ctx, &mut out, lead, &message.summary, Direction::Outbound, now);
        match message.pending {
            Some(index) => state.interactions.lead_id[index] = Some(lead.id),
            None => state.attached.push((org_id.to_owned(), message.summary.event_id.clone(), lead.id)),
        }
        state.changed_leads.insert(lead.id);
    }
}

/// Where recording messages on leads puts what it decides.
struct Changes<'a> {
    status_changes: &'a mut Vec<StatusChangeRow>,
    recorded: &'a mut Vec<Envelope<LeadEvent>>,
    messages: &'a mut Vec<platform::outbox::OutboxMessage>,
}

/// Adds a message to an active lead: counts, preview, its event, and the status change the
/// lifecycle decides (the first outbound message moves a New lead to Contacted).
fn record_on_lead(
    ctx: &LeadContext,
    out: &mut Changes<'_>,
    lead: &mut LeadView,
    interaction: &InteractionSummary,
    direction: Direction,
    now: DateTime<Utc>,
) {
    let preview = interaction.text.as_deref().map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
    lead.interaction_count += 1;
    if interaction.occurred_at >= lead.last_interaction_at && preview.is_some() {
        lead.last_message_preview = preview;
    }
    lead.last_interaction_at = lead.last_interaction_at.max(interaction.occurred_at);
    lead.version += 1;
    lead.updated_at = now;
    // Every message is recorded, the one that moves the lead as well, so projections
    // (qualification) see the whole conversation.
    out.recorded.push(lead_envelope(lead, LeadChange::InteractionRecorded { interaction: interaction.clone() }));
    let act = match direction {
        Direction::Inbound => Act::Inbound,
        Direction::Outbound => Act::Outbound,
    };
    // Only active leads are recorded on, so the act is allowed.
    if let Ok(Transition::Moves { from, to }) = lifecycle::decide(lead.status, act) {
        lead.status = to;
        lead.version += 1;
        let reason = "first outbound message";
        out.status_changes.push(StatusChangeRow {
            org_id: lead.org_id.clone(),
            lead_id: lead.id,
            from: Some(from.as_str()),
            to: to.as_str(),
            reason: reason.to_owned(),
            version: lead.version,
            at: now,
        });
        let change = LeadChange::StatusChanged {
            from: from.as_str().into(),
            to: to.as_str().into(),
            actor: SYSTEM_ACTOR.into(),
            reason: Some(reason.into()),
        };
        out.messages.push(lead_event(ctx, lead, change));
    }
}

async fn write(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    write_contacts(tx, state).await?;
    write_leads(tx, state).await?;
    write_status_changes(tx, state).await?;
    state.interactions.write(tx).await?;
    write_attached(tx, state).await
}

async fn write_attached(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    if state.attached.is_empty() {
        return Ok(());
    }
    let orgs: Vec<&str> = state.attached.iter().map(|a| a.0.as_str()).collect();
    let events: Vec<&str> = state.attached.iter().map(|a| a.1.as_str()).collect();
    let leads: Vec<Uuid> = state.attached.iter().map(|a| a.2).collect();
    sqlx::query(
        "UPDATE interactions i SET lead_id = u.lead_id \
         FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS u(org_id, event_id, lead_id) \
         WHERE i.org_id = u.org_id AND i.event_id = u.event_id AND i.lead_id IS NULL",
    )
    .bind(&orgs)
    .bind(&events)
    .bind(&leads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_contacts(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    let columns = |ids: &mut dyn Iterator<Item = &Uuid>| {
        let mut out = ContactColumns::default();
        for id in ids {
            let c = &state.contacts[id];
            out.id.push(c.id);
            out.org_id.push(c.org_id.clone());
            out.phone.push(c.phone.clone());
            out.external_id.push(c.external_id.clone());
            out.name.push(c.name.clone());
            out.email.push(c.email.clone());
            out.profile_at.push(c.profile_at);
        }
        out
    };
    if !state.new_contacts.is_empty() {
        let new = columns(&mut state.new_contacts.iter());
        let inserted = sqlx::query(
            "INSERT INTO contacts (id, org_id, phone, external_id, name, email, profile_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::timestamptz[]) ON CONFLICT DO NOTHING",
        )
        .bind(&new.id)
        .bind(&new.org_id)
        .bind(&new.phone)
        .bind(&new.external_id)
        .bind(&new.name)
        .bind(&new.email)
        .bind(&new.profile_at)
        .execute(&mut **tx)
        .await?;
        // Fewer rows: another batch created one of these contacts since we read; start over.
        if inserted.rows_affected() != new.id.len() as u64 {
            return Err(LeadError::Conflict);
        }
    }
    let new: HashSet<&Uuid> = state.new_contacts.iter().collect();
    let changed: Vec<&Uuid> = state.changed_contacts.iter().filter(|id| !new.contains(id)).collect();
    if !changed.is_empty() {
        let rows = columns(&mut changed.into_iter());
        sqlx::query(
            "UPDATE contacts c SET phone = u.phone, external_id = u.external_id, name = u.name, email = u.email, \
               profile_at = u.profile_at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
               AS u(id, phone, external_id, name, email, profile_at) \
             WHERE c.id = u.id",
        )
        .bind(&rows.id)
        .bind(&rows.phone)
        .bind(&rows.external_id)
        .bind(&rows.name)
        .bind(&rows.email)
        .bind(&rows.profile_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[derive(Default)]
struct ContactColumns {
    id: Vec<Uuid>,
    org_id: Vec<String>,
    phone: Vec<Option<String>>,
    external_id: Vec<Option<String>>,
    name: Vec<Option<String>>,
    email: Vec<Option<String>>,
    profile_at: Vec<DateTime<Utc>>,
}

async fn write_leads(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    let by_id: HashMap<Uuid, &LeadView> = state.active.values().map(|l| (l.id, l)).collect();
    if !state.new_leads.is_empty() {
        let leads: Vec<&LeadView> = state.new_leads.iter().map(|id| by_id[id]).collect();
        let inserted = sqlx::query(
            "INSERT INTO leads (id, org_id, contact_id, status, source_kind, channel, campaign_id, \
               broadcast_message_id, integration_name, integration_reference, interaction_count, \
               last_message_preview, first_touch_at, last_interaction_at, created_at, updated_at, version) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::timestamptz[], \
               $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], $17::bigint[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(leads.iter().map(|l| l.id).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.org_id.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.contact_id).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.status.as_str()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.source_kind.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.channel.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.campaign_id.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.broadcast_message_id.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.integration_name.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.integration_reference.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.interaction_count).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.last_message_preview.clone()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.first_touch_at).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.last_interaction_at).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.created_at).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.updated_at).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.version).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        // Fewer rows: a concurrent batch opened one of these contacts' active lead first.
        if inserted.rows_affected() != leads.len() as u64 {
            return Err(LeadError::Conflict);
        }
    }
    let new_leads: HashSet<&Uuid> = state.new_leads.iter().collect();
    let changed: Vec<&LeadView> =
        state.changed_leads.iter().filter(|id| !new_leads.contains(id)).map(|id| by_id[id]).collect();
    if !changed.is_empty() {
        sqlx::query(
            "UPDATE leads l SET interaction_count = u.interaction_count, \
               last_message_preview = u.last_message_preview, last_interaction_at = u.last_interaction_at, \
               status = u.status, updated_at = u.updated_at, version = u.version, first_touch_at = u.first_touch_at \
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], \
               $6::timestamptz[], $7::bigint[], $8::timestamptz[]) \
               AS u(id, interaction_count, last_message_preview, last_interaction_at, status, updated_at, version, \
                    first_touch_at) \
             WHERE l.id = u.id",
        )
        .bind(changed.iter().map(|l| l.id).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.interaction_count).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.last_message_preview.clone()).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.last_interaction_at).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.status.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.updated_at).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.version).collect::<Vec<_>>())
        .bind(changed.iter().map(|l| l.first_touch_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn write_status_changes(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    let rows = &state.status_changes;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, lead_version, at) \
         SELECT o, l, f, t, $8, r, v, a FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
           $6::bigint[], $7::timestamptz[]) AS u(o, l, f, t, r, v, a)",
    )
    .bind(rows.iter().map(|r| r.org_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.from).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.to).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(SYSTEM_ACTOR)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
    fn len(&self) -> usize {
        self.org_id.len()
    }

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

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), LeadError> {
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

#[cfg(test)]
mod tests {
    //! The apply step's rules, without Postgres: a batch state starts empty (no stored contact
    //! or lead), events are applied in the order given, and the leads are compared.
    use super::*;
    use contracts::interaction::ContactInfo;

    fn ctx() -> LeadContext {
        LeadContext {
            pool: sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:9/none").expect("a lazy pool"),
            subjects: platform::nats::Subjects::new(""),
            outbox: Default::default(),
            broadcast: None,
        }
    }

    fn event(id: &str, direction: Direction, minute: i64) -> Interaction {
        Interaction {
            event_id: id.into(),
            occurred_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().with_timezone(&Utc)
                + chrono::Duration::minutes(minute),
            kind: Kind::ChatMessage,
            direction,
            channel: "whatsapp".into(),
            contact: ContactInfo { phone: Some("+14155550100".into()), external_id: None, name: None, email: None },
            agent_id: None,
            text: Some(format!("{id} text")),
            conversation_id: None,
            broadcast: None,
            integration: None,
            attributes: Default::default(),
        }
    }

    /// The contact's lead after applying `events` in order: status, messages, first touch.
    fn lead_after(events: &[Interaction]) -> Option<(Status, i64, DateTime<Utc>)> {
        let ctx = ctx();
        let mut state = BatchState::default();
        let now = Utc::now();
        for event in events {
            apply(&ctx, &mut state, "acme", event, now);
        }
        state.active.values().next().map(|l| (l.status, l.interaction_count, l.first_touch_at))
    }

    #[tokio::test]
    async fn an_inbound_message_opens_a_new_lead_and_an_outbound_one_alone_opens_none() {
        let opened = lead_after(&[event("in", Direction::Inbound, 0)]).expect("a lead");
        assert_eq!((opened.0, opened.1), (Status::New, 1));
        assert_eq!(lead_after(&[event("out", Direction::Outbound, 0)]), None);
    }

    #[tokio::test]
    async fn the_first_outbound_message_makes_the_lead_contacted_in_either_order() {
        let inbound = event("in", Direction::Inbound, 0);
        let answer = event("out", Direction::Outbound, 0);
        let forward = lead_after(&[inbound.clone(), answer.clone()]);
        let backward = lead_after(&[answer, inbound]);
        assert_eq!(forward, backward);
        assert_eq!(forward.map(|l| (l.0, l.1)), Some((Status::Contacted, 2)));
    }

    #[tokio::test]
    async fn an_outbound_message_before_the_first_inbound_stays_outside_the_lead() {
        let early = event("early", Direction::Outbound, -1);
        let inbound = event("in", Direction::Inbound, 0);
        for order in [[early.clone(), inbound.clone()], [inbound, early]] {
            let lead = lead_after(&order).expect("a lead");
            assert_eq!(
                (lead.0, lead.1),
                (Status::New, 1),
                "{:?}",
                order.iter().map(|e| &e.event_id).collect::<Vec<_>>()
            );
        }
    }

    #[tokio::test]
    async fn an_earlier_inbound_message_moves_the_first_touch_back_and_takes_what_follows_it() {
        let late_inbound = event("late", Direction::Inbound, 5);
        let answer = event("answer", Direction::Outbound, 2);
        let early_inbound = event("early", Direction::Inbound, 1);
        let lead = lead_after(&[late_inbound, answer, early_inbound]).expect("a lead");
        assert_eq!((lead.0, lead.1), (Status::Contacted, 3));
        assert_eq!(lead.2, event("x", Direction::Inbound, 1).occurred_at);
    }
}
