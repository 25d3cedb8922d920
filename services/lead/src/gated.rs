//! The acts other services ask of a lead that are gated on it being active: assigning an
//! agent and opening a follow-up. Each locks the lead's row, decides against its status and
//! writes the change with its event in one transaction, exactly as a status change does, so
//! a lead that is being converted can never be assigned or followed up a moment later.

use crate::{
    LeadContext,
    apply::{column, event_message, lead_envelope, lead_event},
    commands::{BulkLeads, BulkOutcome, VISIBLE_TO},
    error::LeadError,
    lifecycle::{self, Act, Inactive, RuleSubject, StatusRules, Trigger, rule_move},
    model::LEAD_VIEW_COLUMNS,
    rules, settings,
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::followup::FollowUpEvent;
use contracts::lead::{ASSIGNMENTS_APPLIED, FollowUpOpened, LeadChange, LeadView, Status};
use sqlx::{FromRow, Row, types::Json};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What became of one lead of an assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignOutcome {
    pub outcome: BulkOutcome,
    pub agent_id: Option<String>,
    pub previous_agent_id: Option<String>,
    /// The lead's version after the assignment, or its current one when nothing changed.
    pub lead_version: i64,
    pub at: Option<DateTime<Utc>>,
}

impl AssignOutcome {
    fn not_found() -> Self {
        Self { outcome: BulkOutcome::NotFound, agent_id: None, previous_agent_id: None, lead_version: 0, at: None }
    }
}

fn validate_agent_id(agent_id: &str) -> Result<(), LeadError> {
    contracts::values::validate_agent_id(agent_id).map_err(LeadError::from)
}

/// id, status, agent, version, updated_at
type LockedRow = (Uuid, String, Option<String>, i64, DateTime<Utc>);

/// Sets `agent` (or none) on every active lead of `leads` that is at the version it is
/// expected at (where the request names one); the others are answered. Results are in request
/// order.
pub async fn assign_leads(
    ctx: &LeadContext,
    org_id: &str,
    leads: &BulkLeads,
    agent: Option<&str>,
    actor: &str,
    reason: Option<&str>,
    visible_to: Option<&str>,
) -> Result<Vec<AssignOutcome>, LeadError> {
    if let Some(agent) = agent {
        validate_agent_id(agent)?;
    }
    let mut tx = ctx.pool.begin().await?;
    let rows: Vec<LockedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, status, agent_id, version, updated_at FROM leads \
         WHERE org_id = $1 AND id = ANY($2) AND {VISIBLE_TO} ORDER BY id FOR UPDATE"
    )))
    .bind(org_id)
    .bind(&leads.ids)
    .bind(visible_to)
    .fetch_all(&mut *tx)
    .await?;
    let mut outcomes: HashMap<Uuid, AssignOutcome> = HashMap::with_capacity(rows.len());
    let mut to_change = Vec::new();
    for (id, status, current_agent, version, updated_at) in rows {
        // As for a status change: an inactive lead is refused whatever its version, and a stale
        // one is refused even when it already has the agent asked for.
        let outcome = match (lifecycle::decide(Status::try_from(status)?, Act::Assign), leads.stale(id, version)) {
            (Err(Inactive(status)), _) => BulkOutcome::Inactive(status),
            (Ok(_), Some(stale)) => stale,
            (Ok(_), None) if current_agent.as_deref() == agent => BulkOutcome::Unchanged,
            (Ok(_), None) => {
                to_change.push(id);
                BulkOutcome::Changed
            }
        };
        outcomes.insert(
            id,
            AssignOutcome {
                outcome,
                agent_id: current_agent.clone(),
                previous_agent_id: current_agent,
                lead_version: version,
                at: Some(updated_at),
            },
        );
    }
    let mut events = Vec::with_capacity(to_change.len());
    if !to_change.is_empty() {
        let froms: Vec<Option<String>> = to_change.iter().map(|id| outcomes[id].previous_agent_id.clone()).collect();
        // The change and its history row in one statement: one round trip fewer a call.
        let changed: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH changed AS ( \
               UPDATE leads SET agent_id = $2, updated_at = now(), version = version + 1 \
               WHERE id = ANY($1) RETURNING * \
             ), history AS ( \
               INSERT INTO assignment_changes (org_id, lead_id, from_agent, to_agent, actor, reason, lead_version, at) \
               SELECT $4, l.id, t.from_agent, $2, $5, $6, l.version, now() \
               FROM changed l JOIN UNNEST($1::uuid[], $3::text[]) AS t(id, from_agent) ON t.id = l.id \
             ) SELECT {LEAD_VIEW_COLUMNS} FROM changed l JOIN contacts c ON c.id = l.contact_id"
        )))
        .bind(&to_change)
        .bind(agent)
        .bind(&froms)
        .bind(org_id)
        .bind(actor)
        .bind(reason)
        .fetch_all(&mut *tx)
        .await?;
        for lead in &changed {
            let outcome = outcomes.get_mut(&lead.id).expect("locked above");
            outcome.agent_id.clone_from(&lead.agent_id);
            outcome.lead_version = lead.version;
            outcome.at = Some(lead.updated_at);
            let change = LeadChange::Assigned {
                from: outcome.previous_agent_id.clone(),
                to: lead.agent_id.clone(),
                actor: actor.into(),
                reason: reason.map(Into::into),
            };
            events.push(lead_envelope(lead, change));
        }
    }
    // Several leads' events leave as one message: a bulk assignment of ten told one event at a
    // time was ten JetStream writes, each delivered to and acked by four consumers.
    let messages = match events.as_slice() {
        [event] => vec![event_message(&ctx.subjects, event)],
        _ => {
            let subject = ctx.subjects.event("lead", org_id, ASSIGNMENTS_APPLIED);
            platform::outbox::batched(org_id, &subject, ASSIGNMENTS_APPLIED, &events)
        }
    };
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::LEAD_ASSIGNMENTS, "service" => "lead").increment(events.len() as u64);
    Ok(leads
        .requested
        .iter()
        .map(|id| id.and_then(|id| outcomes.get(&id).cloned()).unwrap_or_else(AssignOutcome::not_found))
        .collect())
}

#[derive(Debug, Clone)]
pub struct OpenFollowUp {
    pub org_id: String,
    pub lead_id: Uuid,
    pub follow_up_id: Uuid,
    pub due_at: DateTime<Utc>,
    pub note: Option<String>,
    pub agent_id: Option<String>,
    pub actor: String,
    /// The agent on whose behalf the follow-up is opened, when that is an agent: a lead of
    /// another agent is not found.
    pub visible_to: Option<String>,
}

/// A lead locked to open a follow-up on it, with its organisation's status rules (none set:
/// every rule off).
#[derive(FromRow)]
struct LockedForFollowUp {
    #[sqlx(try_from = "String")]
    status: Status,
    agent_id: Option<String>,
    status_rules: Option<Json<StatusRules>>,
}

/// Records a follow-up on an active lead and answers the lead as it now is. Opening the same
/// follow-up id again answers the lead without a second record, even once the lead has
/// become inactive: the first call's decision stands.
pub async fn open_follow_up(ctx: &LeadContext, cmd: OpenFollowUp) -> Result<LeadView, LeadError> {
    if let Some(note) = &cmd.note {
        contracts::values::validate_note(note)?;
    }
    if let Some(agent) = &cmd.agent_id {
        validate_agent_id(agent)?;
    }
    let mut tx = ctx.pool.begin().await?;
    // The organisation's status rules are read with the lock, in the transaction that applies
    // them, as every writer of leads reads them.
    let LockedForFollowUp { status, agent_id: lead_agent, status_rules } =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT status, agent_id, (SELECT status_rules FROM org_settings WHERE org_id = $1) AS status_rules \
             FROM leads WHERE org_id = $1 AND id = $2 AND {VISIBLE_TO} FOR UPDATE"
        )))
        .bind(&cmd.org_id)
        .bind(cmd.lead_id)
        .bind(cmd.visible_to.as_deref())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| LeadError::NotFound(cmd.lead_id.to_string()))?;
    let decided = lifecycle::decide(status, Act::OpenFollowUp);
    // A follow-up without an agent goes to whoever holds the lead.
    let agent_id = cmd.agent_id.clone().or(lead_agent);
    // The record (unless this follow-up was opened before), the lead's new version and the lead
    // as its event carries it, in one statement: a follow-up is opened at the desk, one round
    // trip to Postgres at a time. Its snapshot is taken after the lock, so it sees a repeat of
    // this request that committed while this one waited.
    let opened = match decided {
        Ok(_) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH entry AS ( \
                   INSERT INTO follow_up_entries (org_id, follow_up_id, lead_id, state, due_at, note, agent_id, actor) \
                   SELECT $1, $2, $3, 'pending', $4, $5, $6, $7 \
                   WHERE NOT EXISTS (SELECT 1 FROM follow_up_entries \
                                     WHERE org_id = $1 AND follow_up_id = $2 AND state = 'pending') \
                   RETURNING lead_id \
                 ), l AS ( \
                   UPDATE leads SET version = version + 1, updated_at = now() \
                   WHERE id = (SELECT lead_id FROM entry) RETURNING * \
                 ) \
                 SELECT {LEAD_VIEW_COLUMNS}, coalesce(l.status_set_by_hand_at > l.last_interaction_at, false) AS held_by_hand \
                 FROM l JOIN contacts c ON c.id = l.contact_id"
            )))
            .bind(&cmd.org_id)
            .bind(cmd.follow_up_id)
            .bind(cmd.lead_id)
            .bind(cmd.due_at)
            .bind(&cmd.note)
            .bind(&agent_id)
            .bind(&cmd.actor)
            .fetch_optional(&mut *tx)
            .await?
        }
        Err(_) => None,
    };
    let Some(opened) = opened else {
        let opened_before: Option<(Uuid, DateTime<Utc>, Option<String>)> = sqlx::query_as(
            "SELECT lead_id, due_at, note FROM follow_up_entries \
             WHERE org_id = $1 AND follow_up_id = $2 AND state = 'pending'",
        )
        .bind(&cmd.org_id)
        .bind(cmd.follow_up_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.rollback().await?;
        let Some((lead_id, due_at, note)) = opened_before else {
            return Err(match decided {
                Err(Inactive(status)) => LeadError::Inactive { id: cmd.lead_id, status },
                // Found by the insert and gone since, in one transaction: never seen.
                Ok(_) => LeadError::Conflict,
            });
        };
        // A repeat must name the same follow-up, or the two records would disagree.
        if lead_id != cmd.lead_id || due_at.timestamp_micros() != cmd.due_at.timestamp_micros() || note != cmd.note {
            return Err(LeadError::invalid("follow_up_id", "names a follow-up opened with other details"));
        }
        return crate::read::get_lead(&ctx.pool, &cmd.org_id, cmd.lead_id).await;
    };
    let mut lead = LeadView::from_row(&opened)?;
    let held_by_hand: bool = opened.try_get("held_by_hand")?;
    let change = LeadChange::FollowUpOpened {
        follow_up: FollowUpOpened {
            follow_up_id: cmd.follow_up_id,
            due_at: cmd.due_at,
            note: cmd.note.clone(),
            agent_id,
            actor: cmd.actor.clone(),
        },
    };
    let mut messages = vec![lead_event(&ctx.subjects, &lead, change)];
    let rules = status_rules.map(|Json(rules)| rules).unwrap_or_default();
    let subject = RuleSubject { status: lead.status, held_by_hand };
    if let Some(decided) = rule_move(&rules, subject, Trigger::FollowUpOpened) {
        let moved = rules::write_moves(ctx, &mut tx, &[(cmd.lead_id, decided)], &mut messages).await?;
        lead = moved.into_iter().next().unwrap_or(lead);
    }
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(lead)
}

/// The follow-up events the timeline records, by kind: the states it moves to, and a new due
/// time. A follow-up rescheduled may come due again, so each event is kept once by the time it
/// was written (which a redelivery carries too), not once per state.
const TIMELINE_STATES: [&str; 4] = ["due", "completed", "cancelled", "rescheduled"];
/// The states that close a follow-up.
const CLOSED_STATES: [&str; 2] = ["completed", "cancelled"];

/// Adds the later states of follow-ups to their leads' timelines, each (follow-up, state)
/// once however often it is delivered; where the organisation's rule says so, a lead whose
/// last open follow-up closed moves on from Follow-up in the same transaction.
pub async fn record_follow_up_states(ctx: &LeadContext, events: &[Envelope<FollowUpEvent>]) -> Result<(), LeadError> {
    // Recorded by the event's kind: an edit or a reassignment carries the state the follow-up
    // is in, which the event that moved it there already recorded.
    let kept: Vec<&Envelope<FollowUpEvent>> =
        events.iter().filter(|e| TIMELINE_STATES.contains(&e.kind.as_str())).collect();
    if kept.is_empty() {
        if events.iter().any(changes_overdue) {
            let mut tx = ctx.pool.begin().await?;
            record_overdue(&mut tx, events).await?;
            tx.commit().await?;
        }
        return Ok(());
    }
    let orgs = column(&kept, |e| e.org_id.as_str());
    let states = column(&kept, |e| e.kind.as_str());
    let notes = column(&kept, |e| e.data.note.as_deref());
    let agents = column(&kept, |e| e.data.agent_id.as_deref());
    let actors = column(&kept, |e| e.data.actor.as_str());
    let follow_up_ids = column(&kept, |e| e.aggregate_id);
    let lead_ids = column(&kept, |e| e.data.lead_id);
    let due = column(&kept, |e| e.data.due_at);
    let at = column(&kept, |e| e.occurred_at);
    let mut tx = ctx.pool.begin().await?;
    let distinct_orgs: Vec<&str> = orgs.iter().copied().collect::<HashSet<_>>().into_iter().collect();
    let rules = settings::rules_of(&mut *tx, &distinct_orgs).await?;
    let closes = |e: &&&Envelope<FollowUpEvent>| {
        CLOSED_STATES.contains(&e.data.state.as_str()) && rules.get(&e.org_id).is_some_and(|r| r.follow_up_status)
    };
    let mut closing: Vec<Uuid> = kept.iter().filter(closes).map(|e| e.data.lead_id).collect();
    closing.sort_unstable();
    closing.dedup();
    if !closing.is_empty() {
        // Locked before the rows below take their key-share locks, in id order like every other
        // writer of leads: two batches closing follow-ups of one lead then wait, not deadlock.
        sqlx::query("SELECT id FROM leads WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&closing)
            .execute(&mut *tx)
            .await?;
    }
    // Joined to leads on org as well: an event naming another organisation's lead is dropped.
    // Rows go in lead order: each takes a key-share lock on its lead (the foreign key), and
    // every other writer locks leads in id order too, so they cannot deadlock.
    let inserted: Vec<(String, Uuid, String)> = sqlx::query_as(
        "INSERT INTO follow_up_entries (org_id, follow_up_id, lead_id, state, due_at, note, agent_id, actor, at) \
         SELECT t.org_id, t.follow_up_id, t.lead_id, t.state, t.due_at, t.note, t.agent_id, t.actor, t.at \
         FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], \
                     $8::text[], $9::timestamptz[]) \
              AS t(org_id, follow_up_id, lead_id, state, due_at, note, agent_id, actor, at) \
         JOIN leads l ON l.id = t.lead_id AND l.org_id = t.org_id \
         ORDER BY t.lead_id, t.follow_up_id, t.state \
         ON CONFLICT (follow_up_id, state, at) DO NOTHING \
         RETURNING org_id, lead_id, state",
    )
    .bind(&orgs)
    .bind(&follow_up_ids)
    .bind(&lead_ids)
    .bind(&states)
    .bind(&due)
    .bind(&notes)
    .bind(&agents)
    .bind(&actors)
    .bind(&at)
    .fetch_all(&mut *tx)
    .await?;
    // Only a close seen for the first time moves a lead: a redelivery changes nothing.
    let mut closed_by_org: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (org_id, lead_id, state) in &inserted {
        if CLOSED_STATES.contains(&state.as_str()) && closing.binary_search(lead_id).is_ok() {
            closed_by_org.entry(org_id.as_str()).or_default().push(*lead_id);
        }
    }
    let mut messages = Vec::new();
    for (org_id, mut lead_ids) in closed_by_org {
        lead_ids.sort_unstable();
        lead_ids.dedup();
        rules::after_follow_ups_closed(ctx, &mut tx, org_id, &rules[org_id], &lead_ids, &mut messages).await?;
    }
    record_overdue(&mut tx, events).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(())
}

/// Whether an event says something about a follow-up being overdue: a first event (a
/// follow-up opened, whether pending or cancelled at once) that is not `due` says what having
/// no row says, and no older event can come after it to be overruled.
fn changes_overdue(event: &Envelope<FollowUpEvent>) -> bool {
    event.version > 1 || event.data.state == "due"
}

/// Keeps whether each follow-up is overdue (its latest state is `due`) from the newest of its
/// events: a redelivered or late one is older than what is kept and changes nothing. Events
/// naming another organisation's lead are dropped, as for the timeline.
async fn record_overdue(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[Envelope<FollowUpEvent>],
) -> Result<(), LeadError> {
    let events: Vec<&Envelope<FollowUpEvent>> = events.iter().filter(|e| changes_overdue(e)).collect();
    if events.is_empty() {
        return Ok(());
    }
    let events = events.as_slice();
    sqlx::query(
        "INSERT INTO follow_up_overdue AS o (follow_up_id, org_id, lead_id, overdue, version) \
         SELECT DISTINCT ON (t.follow_up_id) t.follow_up_id, t.org_id, t.lead_id, t.overdue, t.version \
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bool[], $5::bigint[]) \
              AS t(follow_up_id, org_id, lead_id, overdue, version) \
         JOIN leads l ON l.id = t.lead_id AND l.org_id = t.org_id \
         ORDER BY t.follow_up_id, t.version DESC \
         ON CONFLICT (follow_up_id) DO UPDATE SET overdue = excluded.overdue, version = excluded.version \
         WHERE o.version < excluded.version",
    )
    .bind(column(events, |e| e.aggregate_id))
    .bind(column(events, |e| e.org_id.as_str()))
    .bind(column(events, |e| e.data.lead_id))
    .bind(column(events, |e| e.data.state == "due"))
    .bind(column(events, |e| e.version))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
