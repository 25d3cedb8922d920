//! Follow-ups: created from an active lead (the lead service decides that, under the lead's
//! lock), kept here with the lead's contact, due on their own, completed or cancelled by
//! people, and cancelled by the system when their lead becomes inactive. Every change is
//! published through the outbox as `events.followup.<org>.<kind>`: the state it moved to, or
//! `rescheduled`, `edited` or `reassigned` for a change that keeps its state.

use crate::{FollowUpContext, error::FollowUpError};
use chrono::{DateTime, Utc};
use contracts::lead::{LeadChange, LeadEvent, LeadView};
use contracts::{Envelope, followup::FollowUpEvent};
use leads_proto::v1 as pb;
use platform::outbox::OutboxMessage;

use sqlx::{Postgres, Transaction};
use std::collections::HashSet;
use uuid::Uuid;

pub const SYSTEM_ACTOR: &str = "system";
pub const MAX_PAGE: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Due,
    Completed,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Due => "due",
            State::Completed => "completed",
            State::Cancelled => "cancelled",
        }
    }

    /// Pending and due follow-ups may still be completed or cancelled; closed ones are final.
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Due)
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => State::Pending,
            "due" => State::Due,
            "completed" => State::Completed,
            "cancelled" => State::Cancelled,
            _ => return None,
        })
    }

    pub fn to_proto(self) -> pb::FollowUpState {
        match self {
            State::Pending => pb::FollowUpState::Pending,
            State::Due => pb::FollowUpState::Due,
            State::Completed => pb::FollowUpState::Completed,
            State::Cancelled => pb::FollowUpState::Cancelled,
        }
    }

    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::FollowUpState::try_from(value).ok()? {
            pb::FollowUpState::Unspecified => return None,
            pb::FollowUpState::Pending => State::Pending,
            pb::FollowUpState::Due => State::Due,
            pb::FollowUpState::Completed => State::Completed,
            pb::FollowUpState::Cancelled => State::Cancelled,
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FollowUpRow {
    pub id: Uuid,
    pub org_id: String,
    pub lead_id: Uuid,
    pub contact_id: Uuid,
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub contact_name: Option<String>,
    pub email: Option<String>,
    pub due_at: DateTime<Utc>,
    pub note: Option<String>,
    pub agent_id: Option<String>,
    pub state: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_by: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// The agent was named on creation, so it stays when the lead is reassigned.
    pub agent_set_by_hand: bool,
}

impl FollowUpRow {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Pending)
    }
}

/// The event of a follow-up moving to its current state, named after that state.
fn event(ctx: &FollowUpContext, row: &FollowUpRow, actor: &str) -> OutboxMessage {
    event_of(ctx, row, &row.state, actor)
}

/// A change that keeps the follow-up's state (`rescheduled`, `edited`, `reassigned`): the
/// event is named after the change and carries the state the follow-up is in.
pub const RESCHEDULED: &str = "rescheduled";
pub const EDITED: &str = "edited";
pub const REASSIGNED: &str = "reassigned";

fn event_of(ctx: &FollowUpContext, row: &FollowUpRow, kind: &str, actor: &str) -> OutboxMessage {
    let data = FollowUpEvent {
        lead_id: row.lead_id,
        contact_id: row.contact_id,
        state: row.state.clone(),
        due_at: row.due_at,
        note: row.note.clone(),
        agent_id: row.agent_id.clone(),
        actor: actor.to_owned(),
        contact_name: row.contact_name.clone(),
        phone: row.phone.clone(),
    };
    let envelope = Envelope::new(&row.org_id, kind, row.id, row.version, data);
    OutboxMessage {
        org_id: row.org_id.clone(),
        subject: ctx.subjects.event("followup", &row.org_id, kind),
        msg_id: envelope.id.to_string(),
        payload: envelope.to_json(),
    }
}

#[derive(Debug, Clone)]
pub struct CreateFollowUp {
    pub org_id: String,
    pub lead_id: Uuid,
    pub due_at: DateTime<Utc>,
    pub note: Option<String>,
    pub agent_id: Option<String>,
    pub actor: String,
    pub request_id: Option<String>,
    /// The agent the caller is, when an agent creates it: only its own and unassigned leads.
    pub on_behalf_of_agent: Option<String>,
}

pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// How far in the past a due time may be: the time it took the request to arrive, not a
/// follow-up that is overdue as it is made.
pub const DUE_AT_SLACK: chrono::Duration = chrono::Duration::minutes(1);

fn check_due_at(due_at: DateTime<Utc>) -> Result<(), FollowUpError> {
    if due_at < Utc::now() - DUE_AT_SLACK {
        return Err(FollowUpError::invalid("due_at", "is more than a minute in the past"));
    }
    Ok(())
}

/// The follow-up's id: derived from the caller's request id when there is one, so that a
/// repeated request names the same follow-up (which the lead service and this service each
/// keep once), else a fresh one.
fn follow_up_id(cmd: &CreateFollowUp) -> Uuid {
    match &cmd.request_id {
        Some(key) => {
            let name = format!("{}\u{1f}{}\u{1f}{key}", cmd.org_id, cmd.lead_id);
            Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes())
        }
        None => Uuid::now_v7(),
    }
}

/// How long a question to another service may take before the caller is answered UNAVAILABLE.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks the follow-up's agent (see `follow_up_agent`), asks the lead service to record the
/// follow-up on the lead (refused when the lead is inactive), then keeps it here. Should this
/// process stop between the last two, the lead's `follow_up_opened` event brings the
/// follow-up here all the same.
pub async fn create(ctx: &FollowUpContext, cmd: CreateFollowUp) -> Result<FollowUpRow, FollowUpError> {
    if let Some(note) = &cmd.note {
        contracts::values::validate_note(note)?;
    }
    if let Some(agent) = &cmd.agent_id {
        contracts::values::validate_agent_id(agent)?;
    }
    if let Some(key) = &cmd.request_id
        && key.chars().count() > MAX_REQUEST_ID_CHARS
    {
        return Err(FollowUpError::invalid("request_id", format!("must be at most {MAX_REQUEST_ID_CHARS} characters")));
    }
    let id = follow_up_id(&cmd);
    let agent_set_by_hand = cmd.agent_id.is_some();
    // A repeated request answers the follow-up it made, whose agent and due time were checked
    // then: the agent's state and the clock since must not turn the repeat into a refusal.
    let agent_id = if cmd.request_id.is_some() && kept(ctx, &cmd.org_id, id).await? {
        cmd.agent_id.clone()
    } else {
        check_due_at(cmd.due_at)?;
        follow_up_agent(ctx, &cmd).await?
    };
    let cmd = CreateFollowUp { agent_id, ..cmd };
    let mut request = tonic::Request::new(pb::OpenFollowUpRequest {
        org_id: cmd.org_id.clone(),
        lead_id: cmd.lead_id.to_string(),
        follow_up_id: id.to_string(),
        due_at: Some(contracts::time::timestamp(cmd.due_at)),
        note: cmd.note.clone().unwrap_or_default(),
        agent_id: cmd.agent_id.clone().unwrap_or_default(),
        actor: cmd.actor.clone(),
        on_behalf_of_agent: cmd.on_behalf_of_agent.clone().unwrap_or_default(),
    });
    request.set_timeout(CALL_TIMEOUT);
    let lead = match ctx.lead.clone().open_follow_up(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status)
            if status.code() == tonic::Code::InvalidArgument && status.message().starts_with("follow_up_id") =>
        {
            return Err(FollowUpError::invalid(
                "request_id",
                "was used before for a follow-up with another due time or note",
            ));
        }
        Err(status) => return Err(status.into()),
    };
    let contact = lead.contact.unwrap_or_default();
    let opened = Opened {
        id,
        org_id: cmd.org_id,
        lead_id: cmd.lead_id,
        contact_id: lead.contact_id.parse().map_err(|_| FollowUpError::internal("the lead has no contact id"))?,
        phone: non_empty(contact.phone),
        external_id: non_empty(contact.external_id),
        contact_name: non_empty(contact.name),
        email: non_empty(contact.email),
        due_at: cmd.due_at,
        note: cmd.note,
        // The lead service fills in the lead's agent when none was named; its event carries it.
        agent_id: cmd.agent_id.or_else(|| non_empty(lead.agent_id)),
        created_by: cmd.actor,
        lead_version: lead.version,
        agent_set_by_hand,
    };
    let org_id = opened.org_id.clone();
    let kept = async {
        let mut tx = ctx.pool.begin().await?;
        let mut messages = Vec::new();
        let inserted = keep_opened(ctx, &mut tx, std::slice::from_ref(&opened), &mut messages).await?;
        let row = match inserted.into_iter().next() {
            Some(row) => Some(row),
            // The lead's event brought it first, not knowing the agent was named.
            None if agent_set_by_hand => {
                sqlx::query_as(
                    "UPDATE follow_ups SET agent_set_by_hand = true WHERE id = $1 AND NOT agent_set_by_hand \
                     RETURNING *",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => None,
        };
        platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
        match row {
            Some(row) => Ok(row),
            None => get(ctx, &org_id, id).await,
        }
    };
    metrics::counter!(platform::telemetry::names::FOLLOW_UPS_CREATED, "service" => "followup").increment(1);
    match kept.await {
        Ok(row) => Ok(row),
        // The lead service has accepted it and its event will bring it here: the caller is
        // answered with what was accepted rather than told to retry (and make a second one).
        Err(error) => {
            tracing::warn!(%error, follow_up_id = %id, "follow-up accepted but not kept yet, its event will bring it");
            Ok(opened.into_pending_row())
        }
    }
}

/// The agent a follow-up goes to, once the assignment service has said the organisation
/// knows it and it is active: the one the request names, else the lead's (as the lead service
/// would fill it in, and then named to it, so that the agent recorded is the one checked).
/// Asked before the lead service records anything, so that a refusal leaves nothing behind.
/// An agent deactivated between the check and the record keeps that follow-up, as it keeps
/// its leads.
async fn follow_up_agent(ctx: &FollowUpContext, cmd: &CreateFollowUp) -> Result<Option<String>, FollowUpError> {
    let (agent_id, named) = match &cmd.agent_id {
        Some(agent_id) => (agent_id.clone(), true),
        None => match lead_agent(ctx, cmd).await? {
            Some(agent_id) => (agent_id, false),
            None => return Ok(None),
        },
    };
    let mut request =
        tonic::Request::new(pb::GetAgentRequest { org_id: cmd.org_id.clone(), agent_id: agent_id.clone() });
    request.set_timeout(CALL_TIMEOUT);
    match (ctx.assignment.clone().get_agent(request).await, named) {
        (Ok(agent), _) if agent.get_ref().active => Ok(Some(agent_id)),
        (Ok(_), true) => Err(FollowUpError::InactiveAgent(agent_id)),
        (Ok(_), false) => Err(FollowUpError::InactiveLeadAgent(agent_id)),
        (Err(status), true) if status.code() == tonic::Code::NotFound => Err(FollowUpError::UnknownAgent(agent_id)),
        (Err(status), false) if status.code() == tonic::Code::NotFound => {
            Err(FollowUpError::UnknownLeadAgent(agent_id))
        }
        (Err(status), _) => {
            Err(FollowUpError::Assignment(platform::grpc::UpstreamError::from_status("assignment", status)))
        }
    }
}

/// The agent of an active lead, whom a follow-up naming none goes to. None for an inactive
/// lead: the lead service refuses it with its status, which says more than its agent would.
async fn lead_agent(ctx: &FollowUpContext, cmd: &CreateFollowUp) -> Result<Option<String>, FollowUpError> {
    let lead_id = cmd.lead_id.to_string();
    let mut request = tonic::Request::new(pb::GetLeadRequest { org_id: cmd.org_id.clone(), lead_id: lead_id.clone() });
    request.set_timeout(CALL_TIMEOUT);
    let lead = ctx.lead.clone().get_lead(request).await?.into_inner();
    let agent_id = non_empty(lead.agent_id);
    // This service asks as itself: an agent's rule (its own and unassigned leads) is applied
    // here as the lead service applies it, so that another's lead is not found rather than
    // described by its agent.
    if let (Some(own), Some(holder)) = (&cmd.on_behalf_of_agent, &agent_id)
        && own != holder
    {
        return Err(tonic::Status::not_found(format!("lead {lead_id} not found")).into());
    }
    Ok(agent_id.filter(|_| lead.active))
}

/// Whether this service keeps the follow-up `id`.
async fn kept(ctx: &FollowUpContext, org_id: &str, id: Uuid) -> Result<bool, FollowUpError> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM follow_ups WHERE org_id = $1 AND id = $2)")
        .bind(org_id)
        .bind(id)
        .fetch_one(&ctx.pool)
        .await?)
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// A follow-up the lead service has accepted.
#[derive(Debug, Clone)]
struct Opened {
    id: Uuid,
    org_id: String,
    lead_id: Uuid,
    contact_id: Uuid,
    phone: Option<String>,
    external_id: Option<String>,
    contact_name: Option<String>,
    email: Option<String>,
    due_at: DateTime<Utc>,
    note: Option<String>,
    agent_id: Option<String>,
    created_by: String,
    lead_version: i64,
    agent_set_by_hand: bool,
}

impl Opened {
    /// The follow-up as it will be kept, before it is.
    fn into_pending_row(self) -> FollowUpRow {
        let now = Utc::now();
        FollowUpRow {
            id: self.id,
            org_id: self.org_id,
            lead_id: self.lead_id,
            contact_id: self.contact_id,
            phone: self.phone,
            external_id: self.external_id,
            contact_name: self.contact_name,
            email: self.email,
            due_at: self.due_at,
            note: self.note,
            agent_id: self.agent_id,
            state: State::Pending.as_str().into(),
            created_by: self.created_by,
            created_at: now,
            updated_at: now,
            closed_by: None,
            closed_at: None,
            version: 1,
            agent_set_by_hand: self.agent_set_by_hand,
        }
    }

    fn from_lead(lead: &LeadView, opened: &contracts::lead::FollowUpOpened, version: i64) -> Self {
        Self {
            id: opened.follow_up_id,
            org_id: lead.org_id.clone(),
            lead_id: lead.id,
            contact_id: lead.contact_id,
            phone: lead.phone.clone(),
            external_id: lead.external_id.clone(),
            contact_name: lead.name.clone(),
            email: lead.email.clone(),
            due_at: opened.due_at,
            note: opened.note.clone(),
            agent_id: opened.agent_id.clone(),
            created_by: opened.actor.clone(),
            lead_version: version,
            // The event does not say whether the agent was named: one other than the lead's
            // was; the lead's own is taken as following the lead (its creator corrects that).
            agent_set_by_hand: opened.agent_id.is_some() && opened.agent_id != lead.agent_id,
        }
    }
}

/// Locks (creating when missing) the rows that say whether leads are active, given as
/// `$1`-`$4` (organisations, leads, active, versions) in the order `in_lock_order` leaves
/// them. Both a follow-up's arrival and its lead's closing take this lock first, so whichever
/// comes second sees the other: no follow-up stays open on a closed lead.
const LOCK_LEAD_STATES: &str = "INSERT INTO lead_states AS s (org_id, lead_id, active, version) \
     SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bool[], $4::bigint[]) \
     ON CONFLICT (org_id, lead_id) DO UPDATE \
       SET active = s.active AND excluded.active, version = greatest(s.version, excluded.version)";

/// Leads sorted, each once with its latest version: every writer locks them in this order.
fn in_lock_order(leads: &mut Vec<(String, Uuid, bool, i64)>) {
    leads.sort_by(|a, b| (&a.0, a.1, b.3).cmp(&(&b.0, b.1, a.3)));
    leads.dedup_by(|later, first| later.0 == first.0 && later.1 == first.1);
}

/// Takes `LOCK_LEAD_STATES` for `leads`.
async fn lock_leads(
    tx: &mut Transaction<'_, Postgres>,
    leads: &mut Vec<(String, Uuid, bool, i64)>,
) -> Result<(), FollowUpError> {
    in_lock_order(leads);
    sqlx::query(LOCK_LEAD_STATES)
        .bind(leads.iter().map(|l| l.0.as_str()).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.1).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.2).collect::<Vec<_>>())
        .bind(leads.iter().map(|l| l.3).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Keeps follow-ups the lead service opened, adding to `messages` the cancellation of each one
/// whose lead closed meanwhile; answers those it had not kept before, as written.
async fn keep_opened(
    ctx: &FollowUpContext,
    tx: &mut Transaction<'_, Postgres>,
    opened: &[Opened],
    messages: &mut Vec<OutboxMessage>,
) -> Result<Vec<FollowUpRow>, FollowUpError> {
    if opened.is_empty() {
        return Ok(Vec::new());
    }
    // The lead was active at the version that accepted the follow-up.
    let mut leads: Vec<(String, Uuid, bool, i64)> =
        opened.iter().map(|o| (o.org_id.clone(), o.lead_id, true, o.lead_version)).collect();
    in_lock_order(&mut leads);
    // The leads' rows locked and the follow-ups written in one statement, the lock first: the
    // insert reads the rows as the lock left them. A follow-up whose lead closed meanwhile
    // arrives cancelled by the system; one following its lead's agent whose lead was reassigned
    // after accepting it arrives with the new agent.
    let inserted: Vec<FollowUpRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH s AS ({LOCK_LEAD_STATES} RETURNING *) \
         INSERT INTO follow_ups AS f (id, org_id, lead_id, contact_id, phone, external_id, contact_name, email, \
                               due_at, note, agent_id, state, created_by, closed_by, closed_at, agent_set_by_hand) \
         SELECT t.id, t.org_id, t.lead_id, t.contact_id, t.phone, t.external_id, t.contact_name, t.email, \
                t.due_at, t.note, \
                CASE WHEN NOT t.by_hand AND s.agent_version > t.lead_version THEN s.agent_id ELSE t.agent_id END, \
                CASE WHEN s.active THEN 'pending' ELSE 'cancelled' END, t.created_by, \
                CASE WHEN s.active THEN NULL ELSE 'system' END, CASE WHEN s.active THEN NULL ELSE now() END, t.by_hand \
         FROM UNNEST($5::uuid[], $6::text[], $7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::text[], \
                     $12::text[], $13::timestamptz[], $14::text[], $15::text[], $16::text[], $17::bool[], $18::bigint[]) \
              AS t(id, org_id, lead_id, contact_id, phone, external_id, contact_name, email, due_at, note, agent_id, \
                   created_by, by_hand, lead_version) \
         JOIN s ON s.org_id = t.org_id AND s.lead_id = t.lead_id \
         ORDER BY t.id \
         ON CONFLICT (id) DO NOTHING RETURNING f.*"
    )))
    .bind(leads.iter().map(|l| l.0.as_str()).collect::<Vec<_>>())
    .bind(leads.iter().map(|l| l.1).collect::<Vec<_>>())
    .bind(leads.iter().map(|l| l.2).collect::<Vec<_>>())
    .bind(leads.iter().map(|l| l.3).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.id).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.org_id.as_str()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.lead_id).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.contact_id).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.phone.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.external_id.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.contact_name.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.email.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.due_at).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.note.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.agent_id.clone()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.created_by.as_str()).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.agent_set_by_hand).collect::<Vec<_>>())
    .bind(opened.iter().map(|o| o.lead_version).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    messages.extend(inserted.iter().filter(|f| f.state() == State::Cancelled).map(|f| event(ctx, f, SYSTEM_ACTOR)));
    Ok(inserted)
}

/// A lead's agent as an `assigned` event left it.
struct Reassigned {
    org_id: String,
    lead_id: Uuid,
    agent_id: Option<String>,
    lead_version: i64,
    actor: String,
}

/// Applies the lead service's `follow_up_opened`, `status_changed` and `assigned` events:
/// follow-ups this service has not kept yet are kept, when a lead becomes inactive its open
/// follow-ups are cancelled by the system, and when it is reassigned its open follow-ups whose
/// agent was not named take the lead's new agent. One transaction, which the consumer retries
/// on conflicts (`platform::consumer::apply_decoded`).
pub async fn apply_lead_events(ctx: &FollowUpContext, events: &[Envelope<LeadEvent>]) -> Result<(), FollowUpError> {
    let mut opened = Vec::new();
    let mut closed: Vec<(String, Uuid, bool, i64)> = Vec::new();
    let mut reassigned = Vec::new();
    for event in events {
        let lead = &event.data.lead;
        match &event.data.change {
            LeadChange::FollowUpOpened { follow_up } => opened.push(Opened::from_lead(lead, follow_up, event.version)),
            LeadChange::StatusChanged { .. } if !lead.active => {
                closed.push((event.org_id.clone(), lead.id, false, event.version));
            }
            LeadChange::Assigned { to, actor, .. } => reassigned.push(Reassigned {
                org_id: event.org_id.clone(),
                lead_id: lead.id,
                agent_id: to.clone(),
                lead_version: event.version,
                actor: actor.clone(),
            }),
            _ => {}
        }
    }
    if !opened.is_empty() {
        // Most arrive after the call that opened them kept them: those are not locked and
        // written again. One kept meanwhile is left to the insert's conflict.
        let ids: Vec<Uuid> = opened.iter().map(|o| o.id).collect();
        let kept: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM follow_ups WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&ctx.pool)
            .await?
            .into_iter()
            .collect();
        opened.retain(|o| !kept.contains(&o.id));
    }
    if opened.is_empty() && closed.is_empty() && reassigned.is_empty() {
        return Ok(());
    }
    let mut tx = ctx.pool.begin().await?;
    let mut messages: Vec<OutboxMessage> = Vec::new();
    // Every lead's row locked in one statement, in one order, before any follow-up is touched.
    let mut touched: Vec<(String, Uuid, bool, i64)> = closed
        .iter()
        .cloned()
        .chain(reassigned.iter().map(|r| (r.org_id.clone(), r.lead_id, true, r.lead_version)))
        .collect();
    if !touched.is_empty() {
        lock_leads(&mut tx, &mut touched).await?;
    }
    if !closed.is_empty() {
        let cancelled: Vec<FollowUpRow> = sqlx::query_as(
            "UPDATE follow_ups f SET state = 'cancelled', closed_by = 'system', closed_at = now(), \
               updated_at = now(), version = version + 1 \
             FROM UNNEST($1::text[], $2::uuid[]) AS t(org_id, lead_id) \
             WHERE f.org_id = t.org_id AND f.lead_id = t.lead_id AND f.state IN ('pending', 'due') \
             RETURNING f.*",
        )
        .bind(closed.iter().map(|c| c.0.as_str()).collect::<Vec<_>>())
        .bind(closed.iter().map(|c| c.1).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        messages.extend(cancelled.iter().map(|f| event(ctx, f, SYSTEM_ACTOR)));
    }
    let cancelled_count = messages.len();
    follow_lead_agents(ctx, &mut tx, reassigned, &mut messages).await?;
    keep_opened(ctx, &mut tx, &opened, &mut messages).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    if cancelled_count > 0 {
        tracing::info!(follow_ups = cancelled_count, "open follow-ups of closed leads cancelled");
        metrics::counter!(platform::telemetry::names::FOLLOW_UPS_CLOSED, "service" => "followup", "state" => "cancelled").increment(cancelled_count as u64);
    }
    Ok(())
}

/// Records each lead's newest agent and gives it to the lead's open follow-ups whose agent was
/// not named (none when the lead was unassigned). An assignment older than the one recorded
/// (a redelivery, or one overtaken) changes nothing. The leads' rows are locked already.
async fn follow_lead_agents(
    ctx: &FollowUpContext,
    tx: &mut Transaction<'_, Postgres>,
    mut reassigned: Vec<Reassigned>,
    messages: &mut Vec<OutboxMessage>,
) -> Result<(), FollowUpError> {
    if reassigned.is_empty() {
        return Ok(());
    }
    // The newest assignment of each lead.
    reassigned.sort_by(|a, b| (&a.org_id, a.lead_id, b.lead_version).cmp(&(&b.org_id, b.lead_id, a.lead_version)));
    reassigned.dedup_by(|later, first| later.org_id == first.org_id && later.lead_id == first.lead_id);
    let newer: Vec<(String, Uuid, Option<String>)> = sqlx::query_as(
        "UPDATE lead_states s SET agent_id = t.agent_id, agent_version = t.lead_version \
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::bigint[]) AS t(org_id, lead_id, agent_id, lead_version) \
         WHERE s.org_id = t.org_id AND s.lead_id = t.lead_id AND s.agent_version < t.lead_version \
         RETURNING s.org_id, s.lead_id, s.agent_id",
    )
    .bind(reassigned.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
    .bind(reassigned.iter().map(|r| r.lead_id).collect::<Vec<_>>())
    .bind(reassigned.iter().map(|r| r.agent_id.clone()).collect::<Vec<_>>())
    .bind(reassigned.iter().map(|r| r.lead_version).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    if newer.is_empty() {
        return Ok(());
    }
    let changed: Vec<FollowUpRow> = sqlx::query_as(
        "UPDATE follow_ups f SET agent_id = t.agent_id, updated_at = now(), version = f.version + 1 \
         FROM UNNEST($1::text[], $2::uuid[], $3::text[]) AS t(org_id, lead_id, agent_id) \
         WHERE f.org_id = t.org_id AND f.lead_id = t.lead_id AND f.state IN ('pending', 'due') \
           AND NOT f.agent_set_by_hand AND f.agent_id IS DISTINCT FROM t.agent_id \
         RETURNING f.*",
    )
    .bind(newer.iter().map(|n| n.0.as_str()).collect::<Vec<_>>())
    .bind(newer.iter().map(|n| n.1).collect::<Vec<_>>())
    .bind(newer.iter().map(|n| n.2.clone()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for follow_up in &changed {
        let actor =
            reassigned.iter().find(|r| r.lead_id == follow_up.lead_id).map_or(SYSTEM_ACTOR, |r| r.actor.as_str());
        messages.push(event_of(ctx, follow_up, REASSIGNED, actor));
    }
    if !changed.is_empty() {
        tracing::info!(follow_ups = changed.len(), "open follow-ups moved to their leads' new agents");
    }
    Ok(())
}

/// What UpdateFollowUp changes; at least one of them, and not both a due time and a snooze.
#[derive(Debug, Clone, Default)]
pub struct UpdateFollowUp {
    pub due_at: Option<DateTime<Utc>>,
    /// Some(None) clears the note.
    pub note: Option<Option<String>>,
    pub snooze_minutes: Option<i32>,
    pub expected_version: Option<i64>,
    pub actor: String,
}

pub const MAX_SNOOZE_MINUTES: i32 = 7 * 24 * 60;

impl UpdateFollowUp {
    /// The due time asked for, checked: the one given, or now plus the snooze.
    fn new_due_at(&self) -> Result<Option<DateTime<Utc>>, FollowUpError> {
        match (self.due_at, self.snooze_minutes) {
            (Some(_), Some(_)) => Err(FollowUpError::invalid("snooze_minutes", "cannot be given with due_at")),
            (None, None) if self.note.is_none() => {
                Err(FollowUpError::invalid("due_at", "or note or snooze_minutes is required"))
            }
            (Some(due_at), None) => check_due_at(due_at).map(|()| Some(due_at)),
            (None, Some(minutes)) if (1..=MAX_SNOOZE_MINUTES).contains(&minutes) => {
                Ok(Some(Utc::now() + chrono::Duration::minutes(i64::from(minutes))))
            }
            (None, Some(_)) => {
                Err(FollowUpError::invalid("snooze_minutes", format!("must be between 1 and {MAX_SNOOZE_MINUTES}")))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Reschedules, snoozes or edits the note of an open follow-up, at the version expected when
/// one is. A follow-up whose due time changes is pending again. Publishes `rescheduled` when
/// the due time changed, else `edited`; a request that changes nothing answers the follow-up
/// as it is.
pub async fn update(
    ctx: &FollowUpContext,
    org_id: &str,
    id: Uuid,
    change: &UpdateFollowUp,
) -> Result<FollowUpRow, FollowUpError> {
    let due_at = change.new_due_at()?;
    if let Some(Some(note)) = &change.note {
        contracts::values::validate_note(note)?;
    }
    let mut tx = ctx.pool.begin().await?;
    let current: FollowUpRow = sqlx::query_as("SELECT * FROM follow_ups WHERE org_id = $1 AND id = $2 FOR UPDATE")
        .bind(org_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| FollowUpError::NotFound(id.to_string()))?;
    if let Some(expected) = change.expected_version
        && expected != current.version
    {
        return Err(FollowUpError::VersionMismatch { id, expected, actual: current.version });
    }
    if !current.state().is_open() {
        return Err(FollowUpError::Closed { id, state: current.state });
    }
    let due_at = due_at.unwrap_or(current.due_at);
    let note = change.note.clone().unwrap_or_else(|| current.note.clone());
    let rescheduled = due_at != current.due_at;
    if !rescheduled && note == current.note {
        return Ok(current);
    }
    let updated: FollowUpRow = sqlx::query_as(
        "UPDATE follow_ups SET due_at = $2, note = $3, state = CASE WHEN $4 THEN 'pending' ELSE state END, \
           updated_at = now(), version = version + 1 \
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(due_at)
    .bind(&note)
    .bind(rescheduled)
    .fetch_one(&mut *tx)
    .await?;
    let kind = if rescheduled { RESCHEDULED } else { EDITED };
    platform::outbox::commit(tx, &[event_of(ctx, &updated, kind, &change.actor)], &ctx.outbox).await?;
    tracing::info!(follow_up_id = %id, change = kind, version = updated.version, "follow-up changed");
    Ok(updated)
}

pub async fn get(ctx: &FollowUpContext, org_id: &str, id: Uuid) -> Result<FollowUpRow, FollowUpError> {
    sqlx::query_as("SELECT * FROM follow_ups WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(id)
        .fetch_optional(&ctx.pool)
        .await?
        .ok_or_else(|| FollowUpError::NotFound(id.to_string()))
}

/// Completes or cancels an open (pending or due) follow-up.
pub async fn close(
    ctx: &FollowUpContext,
    org_id: &str,
    id: Uuid,
    to: State,
    actor: &str,
) -> Result<FollowUpRow, FollowUpError> {
    let mut tx = ctx.pool.begin().await?;
    let closed: Option<FollowUpRow> = sqlx::query_as(
        "UPDATE follow_ups SET state = $3, closed_by = $4, closed_at = now(), updated_at = now(), \
           version = version + 1 \
         WHERE org_id = $1 AND id = $2 AND state IN ('pending', 'due') RETURNING *",
    )
    .bind(org_id)
    .bind(id)
    .bind(to.as_str())
    .bind(actor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(closed) = closed else {
        tx.rollback().await?;
        let current = get(ctx, org_id, id).await?;
        return Err(FollowUpError::Closed { id, state: current.state });
    };
    platform::outbox::commit(tx, &[event(ctx, &closed, actor)], &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::FOLLOW_UPS_CLOSED, "service" => "followup", "state" => to.as_str())
        .increment(1);
    Ok(closed)
}

/// Moves follow-ups whose time has come from pending to due and announces them; not those of
/// a lead known to be closed (its cancellation is on its way). Several processes may run this
/// at once: each takes rows the others have not locked.
pub async fn mark_due(ctx: &FollowUpContext, limit: i64) -> Result<usize, FollowUpError> {
    let mut tx = ctx.pool.begin().await?;
    let due: Vec<FollowUpRow> = sqlx::query_as(
        "UPDATE follow_ups f SET state = 'due', updated_at = now(), version = version + 1 \
         FROM (SELECT id FROM follow_ups w WHERE state = 'pending' AND due_at <= now() \
                 AND NOT EXISTS (SELECT 1 FROM lead_states s \
                                 WHERE s.org_id = w.org_id AND s.lead_id = w.lead_id AND NOT s.active) \
               ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) d \
         WHERE f.id = d.id RETURNING f.*",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let messages: Vec<OutboxMessage> = due.iter().map(|f| event(ctx, f, SYSTEM_ACTOR)).collect();
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    if !due.is_empty() {
        metrics::counter!(platform::telemetry::names::FOLLOW_UPS_DUE, "service" => "followup")
            .increment(due.len() as u64);
    }
    Ok(due.len())
}

/// Runs `mark_due` until `token` fires: at once while there is a backlog, else every tick.
pub async fn schedule_due(
    ctx: FollowUpContext,
    tick: std::time::Duration,
    token: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    const BATCH: i64 = 500;
    while !token.is_cancelled() {
        let pause = match mark_due(&ctx, BATCH).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => tick,
            Err(error) => {
                tracing::warn!(%error, "marking follow-ups due failed, retrying");
                tick * 4
            }
        };
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub lead_id: Option<Uuid>,
    pub agent_id: Option<String>,
    pub states: Vec<State>,
    pub due_before: Option<DateTime<Utc>>,
}

pub struct Page {
    pub follow_ups: Vec<FollowUpRow>,
    pub next_page_token: String,
}

/// Follow-ups by due time, earliest first, in keyset pages.
pub async fn list(
    ctx: &FollowUpContext,
    org_id: &str,
    filter: &ListFilter,
    page_size: i32,
    page_token: &str,
) -> Result<Page, FollowUpError> {
    let page_size = match i64::from(page_size) {
        0 => 50,
        n if (1..=MAX_PAGE).contains(&n) => n,
        _ => return Err(FollowUpError::invalid("page_size", format!("must be between 1 and {MAX_PAGE}"))),
    };
    let after = decode_token(page_token)?;
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    let mut rows: Vec<FollowUpRow> = sqlx::query_as(
        "SELECT * FROM follow_ups WHERE org_id = $1 \
           AND ($2::uuid IS NULL OR lead_id = $2) \
           AND ($3::text IS NULL OR agent_id = $3) \
           AND (cardinality($4::text[]) = 0 OR state = ANY($4)) \
           AND ($5::timestamptz IS NULL OR due_at <= $5) \
           AND ($6::timestamptz IS NULL OR (due_at, id) > ($6, $7)) \
         ORDER BY due_at, id LIMIT $8",
    )
    .bind(org_id)
    .bind(filter.lead_id)
    .bind(&filter.agent_id)
    .bind(&states)
    .bind(filter.due_before)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(page_size + 1)
    .fetch_all(&ctx.pool)
    .await?;
    let has_more = rows.len() as i64 > page_size;
    rows.truncate(page_size as usize);
    let next_page_token = match (has_more, rows.last()) {
        (true, Some(last)) => platform::token::encode(&format!("{}|{}", last.due_at.timestamp_micros(), last.id)),
        _ => String::new(),
    };
    Ok(Page { follow_ups: rows, next_page_token })
}

fn decode_token(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, FollowUpError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FollowUpError::invalid("page_token", "is not a token this service issued");
    let cursor = platform::token::decode(token).ok_or_else(bad)?;
    let (micros, id) = cursor.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((at, id.parse().map_err(|_| bad())?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(request_id: Option<&str>, lead: Uuid) -> CreateFollowUp {
        CreateFollowUp {
            org_id: "acme".into(),
            lead_id: lead,
            due_at: Utc::now(),
            note: None,
            agent_id: None,
            request_id: request_id.map(Into::into),
            actor: "op".into(),
            on_behalf_of_agent: None,
        }
    }

    #[test]
    fn an_update_names_the_field_it_cannot_take() {
        let refused = |change: UpdateFollowUp| match change.new_due_at() {
            Err(FollowUpError::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let past = Utc::now() - chrono::Duration::minutes(2);
        assert_eq!(refused(UpdateFollowUp::default()), "due_at");
        assert_eq!(refused(UpdateFollowUp { due_at: Some(past), ..Default::default() }), "due_at");
        for minutes in [0, -5, MAX_SNOOZE_MINUTES + 1] {
            assert_eq!(
                refused(UpdateFollowUp { snooze_minutes: Some(minutes), ..Default::default() }),
                "snooze_minutes"
            );
        }
        let both = UpdateFollowUp { due_at: Some(Utc::now()), snooze_minutes: Some(5), ..Default::default() };
        assert_eq!(refused(both), "snooze_minutes");
        let note_only = UpdateFollowUp { note: Some(None), ..Default::default() };
        assert!(note_only.new_due_at().unwrap().is_none());
        let week = UpdateFollowUp { snooze_minutes: Some(MAX_SNOOZE_MINUTES), ..Default::default() };
        assert!(week.new_due_at().unwrap().unwrap() > Utc::now() + chrono::Duration::days(6));
    }

    #[test]
    fn only_pending_and_due_follow_ups_may_be_closed() {
        assert!(State::Pending.is_open() && State::Due.is_open());
        assert!(!State::Completed.is_open() && !State::Cancelled.is_open());
        for state in [State::Pending, State::Due, State::Completed, State::Cancelled] {
            assert_eq!(State::parse(state.as_str()), Some(state));
            assert_eq!(State::from_proto(state.to_proto() as i32), Some(state));
        }
    }

    #[test]
    fn a_repeated_request_names_the_same_follow_up_and_another_one_does_not() {
        let lead = Uuid::now_v7();
        assert_eq!(follow_up_id(&create(Some("r-1"), lead)), follow_up_id(&create(Some("r-1"), lead)));
        assert_ne!(follow_up_id(&create(Some("r-1"), lead)), follow_up_id(&create(Some("r-2"), lead)));
        assert_ne!(follow_up_id(&create(Some("r-1"), lead)), follow_up_id(&create(Some("r-1"), Uuid::now_v7())));
        assert_ne!(follow_up_id(&create(None, lead)), follow_up_id(&create(None, lead)));
    }
}
