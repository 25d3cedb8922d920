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
    apply::{SYSTEM_ACTOR, column, lead_envelope, lead_event},
    error::LeadError,
    lifecycle::{self, Act, StatusRules, Transition},
    model::{DetailPositions, LEAD_VIEW_COLUMNS, Position},
    settings,
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::interaction::{Direction, Interaction, Kind};
use contracts::lead::{INTERACTIONS_APPLIED, InteractionSummary, LeadChange, LeadEvent, LeadView, SourceKind, Status};
use platform::nats::Subjects;
use sqlx::{Postgres, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

const PREVIEW_CHARS: usize = 140;

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
    /// The organisation's status rule that made the change, if one did.
    rule: Option<&'static str>,
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
    /// Where each active lead's conversation and attributes came from, by lead id.
    details: HashMap<Uuid, DetailPositions>,
    new_leads: Vec<Uuid>,
    changed_leads: HashSet<Uuid>,
    status_changes: Vec<StatusChangeRow>,
    /// Interaction rows, written with one statement at the batch's end.
    interactions: Vec<PendingInteraction>,
    /// Lead created and interaction recorded, in order: they leave batched by organisation.
    /// Status changes are in `messages`, alone on their own subjects, where the assignment
    /// and follow-up services filter for them.
    recorded: Vec<Envelope<LeadEvent>>,
    messages: Vec<platform::outbox::OutboxMessage>,
    /// Outbound messages of each contact that no lead holds yet, oldest first.
    unattached: HashMap<Uuid, Vec<Unattached>>,
    /// Stored unattached messages a lead took in this batch: (org, event id, lead).
    attached: Vec<(String, String, Uuid)>,
    /// The status rules of the batch's organisations that set any.
    rules: HashMap<String, StatusRules>,
}

/// An outbound message recorded on its contact without a lead.
#[derive(Debug, Clone)]
struct Unattached {
    summary: InteractionSummary,
    /// Its row in this batch's pending interactions; `None` when it is stored already.
    pending: Option<usize>,
    conversation_id: Option<String>,
    attributes: BTreeMap<String, String>,
}

/// Applies a batch in one transaction, skipping events already applied; the consumer retries it
/// whole on conflicts (`platform::consumer::apply_decoded`).
pub async fn apply_batch(ctx: &LeadContext, batch: &[AcceptedInteraction]) -> Result<(), LeadError> {
    let mut tx = ctx.pool.begin().await?;
    let todo = unseen(&mut tx, batch).await?;
    if todo.is_empty() {
        tx.rollback().await?;
        return Ok(());
    }
    let mut state = BatchState::default();
    // A batch looks up a few hundred keys: one index probe each. While the tables are small
    // (tens of thousands of rows) the planner would rather hash them whole on every batch,
    // three to four times slower (measured by the bench's ingest profile).
    sqlx::raw_sql("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off").execute(&mut *tx).await?;
    load_contacts(&mut tx, &todo, &mut state).await?;
    load_active_leads(&mut tx, &mut state).await?;
    load_unattached(&mut tx, &mut state).await?;
    sqlx::raw_sql("SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT")
        .execute(&mut *tx)
        .await?;
    let orgs: Vec<&str> = todo.iter().map(|a| a.org_id.as_str()).collect::<HashSet<_>>().into_iter().collect();
    state.rules = settings::rules_of(&mut *tx, &orgs).await?;
    let now = Utc::now();
    // Arrival order: an event that links a phone to an external id comes before a later
    // event that names only the phone.
    for accepted in &todo {
        apply(&ctx.subjects, &mut state, &accepted.org_id, &accepted.interaction, now);
    }
    write(&mut tx, &state).await?;
    let mut messages = std::mem::take(&mut state.messages);
    let recorded = state.recorded.iter().map(|event| (event.org_id.as_str(), event));
    messages.extend(platform::outbox::batched_by_org(recorded, INTERACTIONS_APPLIED, |org_id| {
        ctx.subjects.event("lead", org_id, INTERACTIONS_APPLIED)
    }));
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::LEAD_INTERACTIONS_APPLIED, "service" => "lead")
        .increment(todo.len() as u64);
    Ok(())
}

/// The batch's events not applied before, each once, in arrival order.
async fn unseen<'a>(
    tx: &mut Transaction<'_, Postgres>,
    batch: &'a [AcceptedInteraction],
) -> Result<Vec<&'a AcceptedInteraction>, LeadError> {
    let seen: HashSet<(String, String)> = sqlx::query_as(
        "SELECT i.org_id, i.event_id FROM interactions i \
         JOIN UNNEST($1::text[], $2::text[]) AS b(org_id, event_id) \
           ON i.org_id = b.org_id AND i.event_id = b.event_id",
    )
    .bind(column(batch, |e| e.org_id.as_str()))
    .bind(column(batch, |e| e.interaction.event_id.as_str()))
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
    let phones: Vec<(&str, &str)> = todo
        .iter()
        .filter_map(|accepted| Some((accepted.org_id.as_str(), accepted.interaction.contact.phone.as_deref()?)))
        .collect();
    let external_ids: Vec<(&str, &str)> = todo
        .iter()
        .filter_map(|accepted| Some((accepted.org_id.as_str(), accepted.interaction.contact.external_id.as_deref()?)))
        .collect();
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
    .bind(column(&phones, |k| k.0))
    .bind(column(&phones, |k| k.1))
    .bind(column(&external_ids, |k| k.0))
    .bind(column(&external_ids, |k| k.1))
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
    let contacts: Vec<&Contact> = state.contacts.values().collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LEAD_VIEW_COLUMNS}, l.detail_positions FROM leads l JOIN contacts c ON c.id = l.contact_id \
         JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, contact_id) \
           ON l.org_id = k.org_id AND l.contact_id = k.contact_id \
         WHERE l.active ORDER BY l.id FOR UPDATE OF l"
    )))
    .bind(column(&contacts, |c| c.org_id.as_str()))
    .bind(column(&contacts, |c| c.id))
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let lead = <LeadView as sqlx::FromRow<_>>::from_row(&row)?;
        let positions: sqlx::types::Json<DetailPositions> = sqlx::Row::try_get(&row, "detail_positions")?;
        state.details.insert(lead.id, positions.0);
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
    let contacts: Vec<&Contact> = state.contacts.values().collect();
    type Row = (
        Uuid,
        String,
        String,
        DateTime<Utc>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        sqlx::types::Json<BTreeMap<String, String>>,
    );
    // `direction = 'outbound'` is written out, not bound: a generic plan can use the partial
    // index `interactions_unattached_outbound` only for a predicate that matches its own.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT i.contact_id, i.event_id, i.kind, i.occurred_at, i.text, i.broadcast_message_id, i.campaign_id, \
           i.conversation_id, i.attributes \
         FROM UNNEST($1::text[], $2::uuid[]) AS k(org_id, contact_id) \
         CROSS JOIN LATERAL ( \
           SELECT * FROM interactions i WHERE i.org_id = k.org_id AND i.contact_id = k.contact_id \
             AND i.lead_id IS NULL AND i.direction = 'outbound' ORDER BY i.occurred_at DESC LIMIT 100 \
         ) i ORDER BY i.occurred_at",
    )
    .bind(column(&contacts, |c| c.org_id.as_str()))
    .bind(column(&contacts, |c| c.id))
    .fetch_all(&mut **tx)
    .await?;
    for (
        contact_id,
        event_id,
        kind,
        occurred_at,
        text,
        broadcast_message_id,
        campaign_id,
        conversation_id,
        attributes,
    ) in rows
    {
        let summary = InteractionSummary {
            event_id,
            kind: Kind::try_from(kind).map_err(|e| LeadError::Unreadable(e.to_string()))?,
            direction: Direction::Outbound,
            occurred_at,
            text,
            broadcast_message_id,
            campaign_id,
            agent_id: None,
        };
        let unattached = Unattached { summary, pending: None, conversation_id, attributes: attributes.0 };
        state.unattached.entry(contact_id).or_default().push(unattached);
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

fn apply(subjects: &Subjects, state: &mut BatchState, org_id: &str, event: &Interaction, now: DateTime<Utc>) {
    let contact_id = state.resolve_contact(org_id, event);
    let contact = state.contacts[&contact_id].clone();
    let preview = event.text.as_deref().map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
    let belongs = |lead: &LeadView| event.direction == Direction::Inbound || event.occurred_at >= lead.first_touch_at;
    let lead_id = match state.active.get_mut(&contact_id) {
        Some(lead) if belongs(lead) => {
            (lead.phone, lead.external_id, lead.name, lead.email) =
                (contact.phone.clone(), contact.external_id.clone(), contact.name.clone(), contact.email.clone());
            lead.first_touch_at = lead.first_touch_at.min(event.occurred_at);
            let positions = state.details.entry(lead.id).or_default();
            positions.take(lead, &position(event), event.conversation_id.as_deref(), &event.attributes);
            let mut out = Changes {
                status_changes: &mut state.status_changes,
                recorded: &mut state.recorded,
                messages: &mut state.messages,
            };
            record_on_lead(subjects, &mut out, lead, &summary(event), now);
            state.changed_leads.insert(lead.id);
            Some(lead.id)
        }
        Some(_) => None,
        None if event.direction == Direction::Outbound => None,
        None => {
            let mut lead = open_lead(subjects, state, org_id, &contact, event, preview, now);
            let id = lead.id;
            let positions = state.details.entry(id).or_default();
            positions.take(&mut lead, &position(event), event.conversation_id.as_deref(), &event.attributes);
            state.active.insert(contact_id, lead);
            Some(id)
        }
    };
    let index = state.interactions.len();
    state.interactions.push(PendingInteraction {
        org_id: org_id.to_owned(),
        lead_id,
        contact_id,
        interaction: event.clone(),
    });
    if lead_id.is_none() {
        let unattached = Unattached {
            summary: summary(event),
            pending: Some(index),
            conversation_id: event.conversation_id.clone(),
            attributes: event.attributes.clone(),
        };
        state.unattached.entry(contact_id).or_default().push(unattached);
    } else if event.direction == Direction::Inbound {
        attach_unattached(subjects, state, org_id, contact_id, now);
    }
}

/// The event's lead: a new one in New (or where the organisation's opening rule puts it),
/// opened by an inbound message.
fn open_lead(
    subjects: &Subjects,
    state: &mut BatchState,
    org_id: &str,
    contact: &Contact,
    event: &Interaction,
    preview: Option<String>,
    now: DateTime<Utc>,
) -> LeadView {
    let mut lead = LeadView {
        id: Uuid::now_v7(),
        org_id: org_id.to_owned(),
        contact_id: contact.id,
        phone: contact.phone.clone(),
        external_id: contact.external_id.clone(),
        name: contact.name.clone(),
        email: contact.email.clone(),
        status: Status::New,
        active: true,
        source_kind: SourceKind::from(event.kind),
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
        score_reasons: Vec::new(),
        attributes: event.attributes.clone(),
        conversation_id: event.conversation_id.clone(),
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
        rule: None,
        version: 1,
        at: now,
    });
    state.recorded.push(lead_envelope(&lead, LeadChange::Created { interaction: summary(event) }));
    state.new_leads.push(lead.id);
    let rules = state.rules.get(org_id);
    if let Some(decided) = rules.and_then(|rules| lifecycle::opening_move(rules, lead.source_kind)) {
        lead.status = decided.to;
        lead.version += 1;
        state.status_changes.push(StatusChangeRow {
            org_id: org_id.to_owned(),
            lead_id: lead.id,
            from: Some(decided.from.as_str()),
            to: decided.to.as_str(),
            reason: decided.reason.clone(),
            rule: Some(decided.rule.as_str()),
            version: lead.version,
            at: now,
        });
        let change = LeadChange::StatusChanged {
            from: decided.from.as_str().into(),
            to: decided.to.as_str().into(),
            actor: SYSTEM_ACTOR.into(),
            reason: Some(decided.reason),
            rule: Some(decided.rule.as_str().into()),
        };
        state.messages.push(lead_event(subjects, &lead, change));
    }
    lead
}

/// Gives the contact's lead the outbound messages recorded without one that are at or after
/// its first touch.
fn attach_unattached(subjects: &Subjects, state: &mut BatchState, org_id: &str, contact_id: Uuid, now: DateTime<Utc>) {
    let Some(lead) = state.active.get_mut(&contact_id) else { return };
    let Some(waiting) = state.unattached.get_mut(&contact_id) else { return };
    let (mut taken, kept): (Vec<Unattached>, Vec<Unattached>) =
        std::mem::take(waiting).into_iter().partition(|u| u.summary.occurred_at >= lead.first_touch_at);
    *waiting = kept;
    taken.sort_by_key(|u| u.summary.occurred_at);
    for message in taken {
        let at = (message.summary.occurred_at, message.summary.event_id.clone());
        let positions = state.details.entry(lead.id).or_default();
        positions.take(lead, &at, message.conversation_id.as_deref(), &message.attributes);
        let mut out = Changes {
            status_changes: &mut state.status_changes,
            recorded: &mut state.recorded,
            messages: &mut state.messages,
        };
        record_on_lead(subjects, &mut out, lead, &message.summary, now);
        match message.pending {
            Some(index) => state.interactions[index].lead_id = Some(lead.id),
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
    subjects: &Subjects,
    out: &mut Changes<'_>,
    lead: &mut LeadView,
    interaction: &InteractionSummary,
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
    let act = match interaction.direction {
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
            rule: None,
            version: lead.version,
            at: now,
        });
        let change = LeadChange::StatusChanged {
            from: from.as_str().into(),
            to: to.as_str().into(),
            actor: SYSTEM_ACTOR.into(),
            reason: Some(reason.into()),
            rule: None,
        };
        out.messages.push(lead_event(subjects, lead, change));
    }
}

async fn write(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    write_contacts(tx, state).await?;
    write_leads(tx, state).await?;
    write_status_changes(tx, state).await?;
    write_interactions(tx, &state.interactions).await?;
    write_attached(tx, state).await
}

async fn write_attached(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    if state.attached.is_empty() {
        return Ok(());
    }
    let attached = &state.attached;
    sqlx::query(
        "UPDATE interactions i SET lead_id = u.lead_id \
         FROM UNNEST($1::text[], $2::text[], $3::uuid[]) AS u(org_id, event_id, lead_id) \
         WHERE i.org_id = u.org_id AND i.event_id = u.event_id AND i.lead_id IS NULL",
    )
    .bind(column(attached, |a| a.0.as_str()))
    .bind(column(attached, |a| a.1.as_str()))
    .bind(column(attached, |a| a.2))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_contacts(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    if !state.new_contacts.is_empty() {
        let new: Vec<&Contact> = state.new_contacts.iter().map(|id| &state.contacts[id]).collect();
        let inserted = sqlx::query(
            "INSERT INTO contacts (id, org_id, phone, external_id, name, email, profile_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::timestamptz[]) ON CONFLICT DO NOTHING",
        )
        .bind(column(&new, |c| c.id))
        .bind(column(&new, |c| c.org_id.as_str()))
        .bind(column(&new, |c| c.phone.as_deref()))
        .bind(column(&new, |c| c.external_id.as_deref()))
        .bind(column(&new, |c| c.name.as_deref()))
        .bind(column(&new, |c| c.email.as_deref()))
        .bind(column(&new, |c| c.profile_at))
        .execute(&mut **tx)
        .await?;
        // Fewer rows: another batch created one of these contacts since we read; start over.
        if inserted.rows_affected() != new.len() as u64 {
            return Err(LeadError::Conflict);
        }
    }
    let new: HashSet<&Uuid> = state.new_contacts.iter().collect();
    let changed: Vec<&Contact> =
        state.changed_contacts.iter().filter(|id| !new.contains(id)).map(|id| &state.contacts[id]).collect();
    if !changed.is_empty() {
        sqlx::query(
            "UPDATE contacts c SET phone = u.phone, external_id = u.external_id, name = u.name, email = u.email, \
               profile_at = u.profile_at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
               AS u(id, phone, external_id, name, email, profile_at) \
             WHERE c.id = u.id",
        )
        .bind(column(&changed, |c| c.id))
        .bind(column(&changed, |c| c.phone.as_deref()))
        .bind(column(&changed, |c| c.external_id.as_deref()))
        .bind(column(&changed, |c| c.name.as_deref()))
        .bind(column(&changed, |c| c.email.as_deref()))
        .bind(column(&changed, |c| c.profile_at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn write_leads(tx: &mut Transaction<'_, Postgres>, state: &BatchState) -> Result<(), LeadError> {
    let by_id: HashMap<Uuid, &LeadView> = state.active.values().map(|l| (l.id, l)).collect();
    if !state.new_leads.is_empty() {
        let leads: Vec<&LeadView> = state.new_leads.iter().map(|id| by_id[id]).collect();
        let inserted = sqlx::query(
            "INSERT INTO leads (id, org_id, contact_id, status, source_kind, channel, campaign_id, \
               broadcast_message_id, integration_name, integration_reference, interaction_count, \
               last_message_preview, first_touch_at, last_interaction_at, created_at, updated_at, version, \
               attributes, conversation_id, detail_positions) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::timestamptz[], \
               $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], $17::bigint[], $18::jsonb[], $19::text[], \
               $20::jsonb[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(column(&leads, |l| l.id))
        .bind(column(&leads, |l| l.org_id.as_str()))
        .bind(column(&leads, |l| l.contact_id))
        .bind(column(&leads, |l| l.status.as_str()))
        .bind(column(&leads, |l| l.source_kind.as_str()))
        .bind(column(&leads, |l| l.channel.as_str()))
        .bind(column(&leads, |l| l.campaign_id.as_deref()))
        .bind(column(&leads, |l| l.broadcast_message_id.as_deref()))
        .bind(column(&leads, |l| l.integration_name.as_deref()))
        .bind(column(&leads, |l| l.integration_reference.as_deref()))
        .bind(column(&leads, |l| l.interaction_count))
        .bind(column(&leads, |l| l.last_message_preview.as_deref()))
        .bind(column(&leads, |l| l.first_touch_at))
        .bind(column(&leads, |l| l.last_interaction_at))
        .bind(column(&leads, |l| l.created_at))
        .bind(column(&leads, |l| l.updated_at))
        .bind(column(&leads, |l| l.version))
        .bind(column(&leads, |l| sqlx::types::Json(&l.attributes)))
        .bind(column(&leads, |l| l.conversation_id.as_deref()))
        .bind(column(&leads, |l| sqlx::types::Json(state.details.get(&l.id).cloned().unwrap_or_default())))
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
               status = u.status, updated_at = u.updated_at, version = u.version, first_touch_at = u.first_touch_at, \
               attributes = u.attributes, conversation_id = u.conversation_id, \
               detail_positions = coalesce(u.detail_positions, l.detail_positions) \
             FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], \
               $6::timestamptz[], $7::bigint[], $8::timestamptz[], $9::jsonb[], $10::text[], $11::jsonb[]) \
               AS u(id, interaction_count, last_message_preview, last_interaction_at, status, updated_at, version, \
                    first_touch_at, attributes, conversation_id, detail_positions) \
             WHERE l.id = u.id",
        )
        .bind(column(&changed, |l| l.id))
        .bind(column(&changed, |l| l.interaction_count))
        .bind(column(&changed, |l| l.last_message_preview.as_deref()))
        .bind(column(&changed, |l| l.last_interaction_at))
        .bind(column(&changed, |l| l.status.as_str()))
        .bind(column(&changed, |l| l.updated_at))
        .bind(column(&changed, |l| l.version))
        .bind(column(&changed, |l| l.first_touch_at))
        .bind(column(&changed, |l| sqlx::types::Json(&l.attributes)))
        .bind(column(&changed, |l| l.conversation_id.as_deref()))
        .bind(column(&changed, |l| state.details.get(&l.id).map(sqlx::types::Json)))
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
        "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, lead_version, at, rule) \
         SELECT o, l, f, t, $8, r, v, a, ru FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
           $6::bigint[], $7::timestamptz[], $9::text[]) AS u(o, l, f, t, r, v, a, ru)",
    )
    .bind(column(rows, |r| r.org_id.as_str()))
    .bind(column(rows, |r| r.lead_id))
    .bind(column(rows, |r| r.from))
    .bind(column(rows, |r| r.to))
    .bind(column(rows, |r| r.reason.as_str()))
    .bind(column(rows, |r| r.version))
    .bind(column(rows, |r| r.at))
    .bind(SYSTEM_ACTOR)
    .bind(column(rows, |r| r.rule))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The interaction's place among its lead's, for what the latest one decides.
fn position(event: &Interaction) -> Position {
    (event.occurred_at, event.event_id.clone())
}

fn summary(event: &Interaction) -> InteractionSummary {
    InteractionSummary {
        event_id: event.event_id.clone(),
        kind: event.kind,
        direction: event.direction,
        occurred_at: event.occurred_at,
        text: event.text.clone(),
        broadcast_message_id: event.broadcast.as_ref().map(|b| b.message_id.clone()),
        campaign_id: event.broadcast.as_ref().and_then(|b| b.campaign_id.clone()),
        agent_id: event.agent_id.clone(),
    }
}

/// An interaction row of the batch, with the lead it belongs to (none while no lead holds it).
#[derive(Debug)]
struct PendingInteraction {
    org_id: String,
    lead_id: Option<Uuid>,
    contact_id: Uuid,
    interaction: Interaction,
}

async fn write_interactions(tx: &mut Transaction<'_, Postgres>, rows: &[PendingInteraction]) -> Result<(), LeadError> {
    if rows.is_empty() {
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
    .bind(column(rows, |r| r.org_id.as_str()))
    .bind(column(rows, |r| r.interaction.event_id.as_str()))
    .bind(column(rows, |r| r.lead_id))
    .bind(column(rows, |r| r.contact_id))
    .bind(column(rows, |r| r.interaction.occurred_at))
    .bind(column(rows, |r| r.interaction.kind.as_str()))
    .bind(column(rows, |r| r.interaction.direction.as_str()))
    .bind(column(rows, |r| r.interaction.channel.as_str()))
    .bind(column(rows, |r| r.interaction.text.as_deref()))
    .bind(column(rows, |r| r.interaction.agent_id.as_deref()))
    .bind(column(rows, |r| r.interaction.conversation_id.as_deref()))
    .bind(column(rows, |r| r.interaction.broadcast.as_ref().map(|b| b.message_id.as_str())))
    .bind(column(rows, |r| r.interaction.broadcast.as_ref().and_then(|b| b.campaign_id.as_deref())))
    .bind(column(rows, |r| r.interaction.integration.as_ref().map(|i| i.name.as_str())))
    .bind(column(rows, |r| r.interaction.integration.as_ref().and_then(|i| i.reference.as_deref())))
    .bind(column(rows, |r| sqlx::types::Json(&r.interaction.attributes)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The apply step's rules, without Postgres: a batch state starts empty (no stored contact
    //! or lead), events are applied in the order given, and the leads are compared.
    use super::*;
    use contracts::interaction::ContactInfo;

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
        let subjects = Subjects::new("");
        let mut state = BatchState::default();
        let now = Utc::now();
        for event in events {
            apply(&subjects, &mut state, "acme", event, now);
        }
        state.active.values().next().map(|l| (l.status, l.interaction_count, l.first_touch_at))
    }

    #[test]
    fn an_inbound_message_opens_a_new_lead_and_an_outbound_one_alone_opens_none() {
        let opened = lead_after(&[event("in", Direction::Inbound, 0)]).expect("a lead");
        assert_eq!((opened.0, opened.1), (Status::New, 1));
        assert_eq!(lead_after(&[event("out", Direction::Outbound, 0)]), None);
    }

    #[test]
    fn the_first_outbound_message_makes_the_lead_contacted_in_either_order() {
        let inbound = event("in", Direction::Inbound, 0);
        let answer = event("out", Direction::Outbound, 0);
        let forward = lead_after(&[inbound.clone(), answer.clone()]);
        let backward = lead_after(&[answer, inbound]);
        assert_eq!(forward, backward);
        assert_eq!(forward.map(|l| (l.0, l.1)), Some((Status::Contacted, 2)));
    }

    #[test]
    fn an_outbound_message_before_the_first_inbound_stays_outside_the_lead() {
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

    #[test]
    fn an_earlier_inbound_message_moves_the_first_touch_back_and_takes_what_follows_it() {
        let late_inbound = event("late", Direction::Inbound, 5);
        let answer = event("answer", Direction::Outbound, 2);
        let early_inbound = event("early", Direction::Inbound, 1);
        let lead = lead_after(&[late_inbound, answer, early_inbound]).expect("a lead");
        assert_eq!((lead.0, lead.1), (Status::Contacted, 3));
        assert_eq!(lead.2, event("x", Direction::Inbound, 1).occurred_at);
    }
}
