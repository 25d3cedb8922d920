//! Agents, and assignments of leads to them. Whether a lead may be assigned (it is active)
//! is the lead service's decision, taken under the lead's lock; this service checks the
//! agent, asks the lead service, and keeps the history and each agent's open leads from the
//! lead service's events.

use crate::{
    AssignmentContext,
    error::AssignmentError,
    routing::{AgentZone, WorkingHours},
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::lead::{LeadChange, LeadEvent};
use leads_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_EMAIL_CHARS: usize = 320;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub org_id: String,
    pub agent_id: String,
    pub name: String,
    pub email: Option<String>,
    pub active: bool,
    pub updated_at: DateTime<Utc>,
    pub open_leads: i64,
    /// The agent's own capacity; `None` when the organisation's default applies.
    pub capacity: Option<i32>,
    pub effective_capacity: i32,
    /// As set, `available`, `away` or `offline`; `Presence::effective` applies the grace period.
    pub presence: String,
    pub presence_seen_at: Option<DateTime<Utc>>,
    pub last_assigned_at: Option<DateTime<Utc>>,
    pub skills: Vec<String>,
    /// Minutes east of UTC; `None`: UTC, or the named zone.
    pub utc_offset_minutes: Option<i32>,
    /// A named IANA zone.
    pub time_zone: Option<String>,
    pub work_days: Option<i16>,
    pub work_start_minute: Option<i32>,
    pub work_end_minute: Option<i32>,
}

impl AgentRow {
    /// `None`: always working.
    pub fn working_hours(&self) -> Option<WorkingHours> {
        WorkingHours::from_columns(self.work_days, self.work_start_minute, self.work_end_minute)
    }

    pub fn zone(&self) -> AgentZone {
        AgentZone::from_columns(self.utc_offset_minutes, self.time_zone.as_deref())
    }
}

/// Where an agent stands for automatic assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Available,
    Away,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }

    pub fn from_proto(value: i32) -> Result<Self, AssignmentError> {
        match pb::Presence::try_from(value) {
            Ok(pb::Presence::Available) => Ok(Presence::Available),
            Ok(pb::Presence::Away) => Ok(Presence::Away),
            Ok(pb::Presence::Offline) => Ok(Presence::Offline),
            Ok(pb::Presence::Unspecified) => Err(AssignmentError::invalid("presence", "is required")),
            Err(_) => Err(AssignmentError::invalid("presence", "is not a known presence")),
        }
    }

    pub fn to_proto(self) -> pb::Presence {
        match self {
            Presence::Available => pb::Presence::Available,
            Presence::Away => pb::Presence::Away,
            Presence::Offline => pb::Presence::Offline,
        }
    }

    /// The presence that counts: offline once the last heartbeat is older than `grace`,
    /// whatever was set, so that an agent who closed the page stops receiving leads.
    pub fn effective(
        set: &str,
        seen_at: Option<DateTime<Utc>>,
        grace: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Self {
        let fresh =
            seen_at.is_some_and(|seen| now.signed_duration_since(seen).to_std().map_or(true, |age| age <= grace));
        match set {
            "available" if fresh => Presence::Available,
            "away" if fresh => Presence::Away,
            _ => Presence::Offline,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpsertAgent {
    pub org_id: String,
    pub agent_id: String,
    pub name: String,
    pub email: Option<String>,
    pub active: Option<bool>,
    /// `Some(0)` returns to the organisation's default; `None` keeps the agent's.
    pub capacity: Option<i32>,
    /// Replaces the agent's skills; `None` keeps them.
    pub skills: Option<Vec<String>>,
    /// `None` keeps the agent's.
    pub time_zone: Option<AgentZone>,
    /// `Some(None)`: always working; `None` keeps the agent's.
    pub working_hours: Option<Option<WorkingHours>>,
}

pub fn validate_agent_id(agent_id: &str) -> Result<(), AssignmentError> {
    if agent_id.trim().is_empty() {
        return Err(AssignmentError::invalid("agent_id", "is required"));
    }
    contracts::values::validate_agent_id(agent_id).map_err(AssignmentError::from)
}

fn validate_email(email: &str) -> Result<(), AssignmentError> {
    let well_formed = email.chars().count() <= MAX_EMAIL_CHARS
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if well_formed { Ok(()) } else { Err(AssignmentError::invalid("email", "is not an email address")) }
}

/// An agent's open leads are its load counter's (kept by `lead_agents`' triggers in the
/// transactions that move them), not counted over its leads on every read.
const AGENT_COLUMNS: &str = "a.org_id, a.agent_id, a.name, a.email, a.active, a.updated_at, \
     coalesce((SELECT c.held FROM agent_loads_now c WHERE c.org_id = a.org_id AND c.agent_id = a.agent_id), 0) \
       AS open_leads, a.capacity, \
     coalesce(a.capacity, (SELECT s.default_capacity FROM org_settings s WHERE s.org_id = a.org_id), 10) \
       AS effective_capacity, a.presence, a.presence_seen_at, a.last_assigned_at, a.skills, a.utc_offset_minutes, \
     a.time_zone, a.work_days, a.work_start_minute, a.work_end_minute";

/// Creates the agent, or changes what the request names: an empty name or email keeps the
/// agent's, an absent `active` keeps its state (a new agent is active).
pub async fn upsert_agent(ctx: &AssignmentContext, cmd: UpsertAgent) -> Result<AgentRow, AssignmentError> {
    validate_agent_id(&cmd.agent_id)?;
    if cmd.name.chars().count() > MAX_NAME_CHARS {
        return Err(AssignmentError::invalid("name", format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    if let Some(email) = &cmd.email {
        validate_email(email)?;
    }
    if let Some(capacity) = cmd.capacity
        && !(0..=crate::settings::MAX_CAPACITY).contains(&capacity)
    {
        return Err(AssignmentError::invalid(
            "capacity",
            format!("must be between 1 and {}, or 0 for the organisation's default", crate::settings::MAX_CAPACITY),
        ));
    }
    let hours = cmd.working_hours.flatten();
    sqlx::query(
        "INSERT INTO agents (org_id, agent_id, name, email, active, capacity, skills, utc_offset_minutes, \
           work_days, work_start_minute, work_end_minute, time_zone) \
         VALUES ($1, $2, $3, $4, coalesce($5, true), nullif($6, 0), coalesce($7, '{}'), $9, $11, $12, $13, $14) \
         ON CONFLICT (org_id, agent_id) DO UPDATE SET name = coalesce(nullif($3, ''), agents.name), \
           email = coalesce($4, agents.email), active = coalesce($5, agents.active), \
           capacity = CASE WHEN $6::int IS NULL THEN agents.capacity ELSE nullif($6, 0) END, \
           skills = coalesce($7, agents.skills), \
           utc_offset_minutes = CASE WHEN $8 THEN $9 ELSE agents.utc_offset_minutes END, \
           time_zone = CASE WHEN $8 THEN $14 ELSE agents.time_zone END, \
           work_days = CASE WHEN $10 THEN $11 ELSE agents.work_days END, \
           work_start_minute = CASE WHEN $10 THEN $12 ELSE agents.work_start_minute END, \
           work_end_minute = CASE WHEN $10 THEN $13 ELSE agents.work_end_minute END, updated_at = now()",
    )
    .bind(&cmd.org_id)
    .bind(&cmd.agent_id)
    .bind(&cmd.name)
    .bind(&cmd.email)
    .bind(cmd.active)
    .bind(cmd.capacity)
    .bind(&cmd.skills)
    .bind(cmd.time_zone.is_some())
    .bind(cmd.time_zone.as_ref().and_then(AgentZone::offset_column))
    .bind(cmd.working_hours.is_some())
    .bind(hours.map(|h| h.days))
    .bind(hours.map(|h| h.start))
    .bind(hours.map(|h| h.end))
    .bind(cmd.time_zone.as_ref().and_then(AgentZone::name_column))
    .execute(&ctx.pool)
    .await?;
    if cmd.active == Some(false) {
        crate::auto::release_leads_of_inactive(ctx, &cmd.org_id, &cmd.agent_id).await?;
    }
    // More room, or an agent back at work, may take waiting leads.
    ctx.wake.notify_one();
    get_agent(ctx, &cmd.org_id, &cmd.agent_id).await?.ok_or_else(|| AssignmentError::AgentNotFound(cmd.agent_id))
}

pub async fn get_agent(
    ctx: &AssignmentContext,
    org_id: &str,
    agent_id: &str,
) -> Result<Option<AgentRow>, AssignmentError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents a WHERE a.org_id = $1 AND a.agent_id = $2"
    )))
    .bind(org_id)
    .bind(agent_id)
    .fetch_optional(&ctx.pool)
    .await?)
}

pub async fn list_agents(
    ctx: &AssignmentContext,
    org_id: &str,
    active_only: bool,
) -> Result<Vec<AgentRow>, AssignmentError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents a WHERE a.org_id = $1 AND (a.active OR NOT $2) ORDER BY a.agent_id"
    )))
    .bind(org_id)
    .bind(active_only)
    .fetch_all(&ctx.pool)
    .await?)
}

/// The agent a lead may be given: known in the organisation and active.
async fn assignable_agent(ctx: &AssignmentContext, org_id: &str, agent_id: &str) -> Result<(), AssignmentError> {
    validate_agent_id(agent_id)?;
    // Whether it is known and active only: its open leads would add a read of its counters.
    let active: Option<bool> = sqlx::query_scalar("SELECT active FROM agents WHERE org_id = $1 AND agent_id = $2")
        .bind(org_id)
        .bind(agent_id)
        .fetch_optional(&ctx.pool)
        .await?;
    may_take_leads(agent_id, active)
}

/// The assignment rule: leads go only to a known agent (`active` is `None` for an unknown one)
/// who is active.
pub fn may_take_leads(agent_id: &str, active: Option<bool>) -> Result<(), AssignmentError> {
    match active {
        None => Err(AssignmentError::AgentNotFound(agent_id.to_owned())),
        Some(false) => {
            Err(AssignmentError::FailedPrecondition(format!("agent {agent_id} is inactive and takes no leads")))
        }
        Some(true) => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub struct Assign {
    pub org_id: String,
    pub lead_ids: Vec<String>,
    /// `None` unassigns.
    pub agent_id: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    /// The agent the caller is, when an agent assigns: only its own and unassigned leads move.
    pub on_behalf_of_agent: Option<String>,
    /// The version a lead must still be at to be assigned, by lead id; the lead service
    /// decides under the lead's lock.
    pub expected_versions: HashMap<String, i64>,
}

/// Asks the lead service to assign, then records what changed. Results in request order.
pub async fn assign(ctx: &AssignmentContext, cmd: Assign) -> Result<Vec<pb::LeadAssignment>, AssignmentError> {
    if let Some(agent) = &cmd.agent_id {
        assignable_agent(ctx, &cmd.org_id, agent).await?;
    }
    let mut request = tonic::Request::new(pb::AssignLeadsRequest {
        org_id: cmd.org_id.clone(),
        lead_ids: cmd.lead_ids.clone(),
        agent_id: cmd.agent_id.clone().unwrap_or_default(),
        actor: cmd.actor.clone(),
        reason: cmd.reason.clone().unwrap_or_default(),
        on_behalf_of_agent: cmd.on_behalf_of_agent.clone().unwrap_or_default(),
        expected_versions: cmd.expected_versions.clone(),
    });
    request.set_timeout(std::time::Duration::from_secs(30));
    let results = ctx.lead.clone().assign_leads(request).await?.into_inner().results;
    let changed: Vec<&pb::LeadAssignment> =
        results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).collect();
    // The lead service has committed; recording here too (its event will find the rows
    // there) lets the caller read its own change at once. Should that fail, the caller still
    // gets the results of what happened, and the events record it.
    let recorded = record_assignments(
        ctx,
        changed
            .iter()
            .filter_map(|r| {
                Some(Recorded {
                    org_id: cmd.org_id.clone(),
                    lead_id: r.lead_id.parse().ok()?,
                    lead_version: r.lead_version,
                    agent_id: non_empty(&r.agent_id),
                    previous_agent_id: non_empty(&r.previous_agent_id),
                    actor: cmd.actor.clone(),
                    reason: cmd.reason.clone(),
                    at: r.at.as_ref().and_then(contracts::time::from_timestamp).unwrap_or_else(Utc::now),
                    active: true,
                })
            })
            .collect(),
    )
    .await;
    if let Err(error) = recorded {
        tracing::warn!(%error, "assignments made but not recorded yet, their events will record them");
    }
    Ok(results)
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// An assignment as this service keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub org_id: String,
    pub lead_id: Uuid,
    pub lead_version: i64,
    pub agent_id: Option<String>,
    pub previous_agent_id: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub active: bool,
}

async fn record_assignments(ctx: &AssignmentContext, rows: Vec<Recorded>) -> Result<(), AssignmentError> {
    if rows.is_empty() {
        return Ok(());
    }
    // One statement, so atomic without a transaction of its own.
    record_assignments_in(&ctx.pool, rows).await?;
    // A lead taken from an agent frees room for waiting leads.
    ctx.wake.notify_one();
    Ok(())
}

/// Records the assignments in one statement: the history (each once), who holds each lead, and
/// when each agent was last given one. An assignment already in the history was recorded whole
/// by the statement that put it there (the call that made it, or its event arriving first), so
/// only the new ones go on: a redelivered event writes and locks nothing. One statement, so
/// that a call's recording is one round trip and an implicit commit.
pub(crate) async fn record_assignments_in<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    rows: Vec<Recorded>,
) -> Result<(), AssignmentError> {
    // Rows in key order (newest version of a lead first), so that concurrent recordings lock
    // in one order, and each lead's holder is its newest new assignment (an upsert may not
    // touch a row twice). An assignment by the platform starts the lead's untouched clock,
    // any other stops it, as the lead's events would (`auto::apply_queue_events`).
    sqlx::query(
        "WITH given AS ( \
           SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                                $7::text[], $8::timestamptz[], $9::bool[], $10::timestamptz[]) \
             AS t(org_id, lead_id, lead_version, agent_id, previous_agent_id, actor, reason, at, active, \
                  untouched_since) \
         ), new AS ( \
           INSERT INTO assignments (org_id, lead_id, lead_version, agent_id, previous_agent_id, actor, reason, at) \
           SELECT org_id, lead_id, lead_version, agent_id, previous_agent_id, actor, reason, at FROM given \
           ORDER BY org_id, lead_id, lead_version DESC \
           ON CONFLICT DO NOTHING RETURNING org_id, lead_id, lead_version \
         ), new_given AS ( \
           SELECT g.* FROM given g JOIN new n USING (org_id, lead_id, lead_version) \
         ), holders AS ( \
           INSERT INTO lead_agents (org_id, lead_id, agent_id, active, version, untouched_since, touch_version) \
           SELECT DISTINCT ON (org_id, lead_id) org_id, lead_id, agent_id, active, lead_version, untouched_since, \
                  lead_version \
           FROM new_given t \
           WHERE NOT EXISTS (SELECT 1 FROM lead_agents l \
                             WHERE l.org_id = t.org_id AND l.lead_id = t.lead_id AND l.version >= t.lead_version) \
           ORDER BY org_id, lead_id, lead_version DESC \
           ON CONFLICT (org_id, lead_id) DO UPDATE \
             SET agent_id = excluded.agent_id, active = excluded.active, version = excluded.version, \
                 untouched_since = CASE WHEN lead_agents.touch_version < excluded.touch_version \
                                        THEN excluded.untouched_since ELSE lead_agents.untouched_since END, \
                 touch_version = greatest(lead_agents.touch_version, excluded.touch_version) \
             WHERE lead_agents.version < excluded.version \
           RETURNING 1 \
         ), last_given AS ( \
           UPDATE agents a SET last_assigned_at = t.at \
           FROM (SELECT org_id, agent_id, max(at) AS at FROM new_given WHERE agent_id IS NOT NULL \
                 GROUP BY org_id, agent_id ORDER BY org_id, agent_id) t \
           WHERE a.org_id = t.org_id AND a.agent_id = t.agent_id \
             AND (a.last_assigned_at IS NULL OR a.last_assigned_at < t.at) \
           RETURNING 1 \
         ) SELECT (SELECT count(*) FROM holders), (SELECT count(*) FROM last_given)",
    )
    .bind(rows.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.agent_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.previous_agent_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.active).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| (r.actor == crate::auto::SYSTEM_ACTOR && r.agent_id.is_some()).then_some(r.at))
            .collect::<Vec<_>>(),
    )
    .execute(executor)
    .await?;
    Ok(())
}

pub(crate) struct LeadHolder {
    pub org_id: String,
    pub lead_id: Uuid,
    pub agent_id: Option<String>,
    pub active: bool,
    pub version: i64,
}

/// Keeps who holds each lead at the newest version seen; older versions change nothing.
/// `holders` holds one row per lead. A row already at the version (or past it) is left out
/// before the upsert, which would otherwise lock it to change nothing; one that moves past it
/// meanwhile is caught by the upsert's own condition.
pub(crate) async fn upsert_holders(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    holders: &[LeadHolder],
) -> Result<(), AssignmentError> {
    sqlx::query(
        "INSERT INTO lead_agents (org_id, lead_id, agent_id, active, version) \
         SELECT t.* FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::bool[], $5::bigint[]) \
           AS t(org_id, lead_id, agent_id, active, version) \
         WHERE NOT EXISTS (SELECT 1 FROM lead_agents l \
                           WHERE l.org_id = t.org_id AND l.lead_id = t.lead_id AND l.version >= t.version) \
         ON CONFLICT (org_id, lead_id) DO UPDATE \
           SET agent_id = excluded.agent_id, active = excluded.active, version = excluded.version \
           WHERE lead_agents.version < excluded.version",
    )
    .bind(holders.iter().map(|h| h.org_id.as_str()).collect::<Vec<_>>())
    .bind(holders.iter().map(|h| h.lead_id).collect::<Vec<_>>())
    .bind(holders.iter().map(|h| h.agent_id.clone()).collect::<Vec<_>>())
    .bind(holders.iter().map(|h| h.active).collect::<Vec<_>>())
    .bind(holders.iter().map(|h| h.version).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies the lead service's `assigned` and `status_changed` events: the history of
/// assignments (each once) and who holds which active lead. Redelivery and reordering are
/// harmless: history rows are keyed by lead version, holders only move forward. One
/// transaction, which the consumer retries on conflicts (`platform::consumer::apply_decoded`).
pub async fn apply_lead_events(ctx: &AssignmentContext, events: &[Envelope<LeadEvent>]) -> Result<(), AssignmentError> {
    let mut assignments = Vec::new();
    let mut holders = Vec::new();
    for event in events {
        let lead = &event.data.lead;
        match &event.data.change {
            LeadChange::Assigned { from, to, actor, reason } => assignments.push(Recorded {
                org_id: event.org_id.clone(),
                lead_id: lead.id,
                lead_version: event.version,
                agent_id: to.clone(),
                previous_agent_id: from.clone(),
                actor: actor.clone(),
                reason: reason.clone(),
                at: lead.updated_at,
                active: lead.active,
            }),
            LeadChange::StatusChanged { .. } => holders.push(LeadHolder {
                org_id: event.org_id.clone(),
                lead_id: lead.id,
                agent_id: lead.agent_id.clone(),
                active: lead.active,
                version: event.version,
            }),
            _ => {}
        }
    }
    let assignments = not_recorded(ctx, assignments).await?;
    record_assignments(ctx, assignments).await?;
    if !holders.is_empty() {
        holders.sort_by(|a, b| (&a.org_id, a.lead_id, b.version).cmp(&(&b.org_id, b.lead_id, a.version)));
        holders.dedup_by(|later, first| later.org_id == first.org_id && later.lead_id == first.lead_id);
        let mut tx = ctx.pool.begin().await?;
        upsert_holders(&mut tx, &holders).await?;
        tx.commit().await?;
        // A lead closed (or reopened) changes its agent's room for waiting leads.
        ctx.wake.notify_one();
    }
    Ok(())
}

/// The assignments not in the history yet. Most events arrive after the call that made their
/// assignment recorded it: a read outside any transaction leaves those out, so that they are
/// not written, locked and committed again. One recorded meanwhile is left to the insert's
/// conflict.
async fn not_recorded(ctx: &AssignmentContext, mut rows: Vec<Recorded>) -> Result<Vec<Recorded>, AssignmentError> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let recorded: HashSet<(Uuid, i64)> = sqlx::query_as(
        "SELECT lead_id, lead_version FROM assignments \
         WHERE (org_id, lead_id, lead_version) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[]))",
    )
    .bind(rows.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_version).collect::<Vec<_>>())
    .fetch_all(&ctx.pool)
    .await?
    .into_iter()
    .collect();
    rows.retain(|r| !recorded.contains(&(r.lead_id, r.lead_version)));
    Ok(rows)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignmentRow {
    pub lead_id: Uuid,
    pub lead_version: i64,
    pub agent_id: Option<String>,
    pub previous_agent_id: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn history(
    ctx: &AssignmentContext,
    org_id: &str,
    lead_id: Uuid,
) -> Result<Vec<AssignmentRow>, AssignmentError> {
    let rows: Vec<AssignmentRow> = sqlx::query_as(
        "SELECT lead_id, lead_version, agent_id, previous_agent_id, actor, reason, at FROM assignments \
         WHERE org_id = $1 AND lead_id = $2 ORDER BY lead_version DESC",
    )
    .bind(org_id)
    .bind(lead_id)
    .fetch_all(&ctx.pool)
    .await?;
    if rows.is_empty() {
        // Never assigned, or no such lead: the lead service knows which.
        let request = pb::GetLeadRequest { org_id: org_id.into(), lead_id: lead_id.to_string() };
        ctx.lead.clone().get_lead(request).await?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_go_only_to_known_active_agents() {
        assert!(may_take_leads("ann", Some(true)).is_ok());
        assert!(matches!(may_take_leads("ann", Some(false)), Err(AssignmentError::FailedPrecondition(_))));
        assert!(matches!(may_take_leads("bob", None), Err(AssignmentError::AgentNotFound(id)) if id == "bob"));
    }

    #[test]
    fn agent_ids_and_emails_are_checked_naming_the_field() {
        assert!(validate_agent_id("ann").is_ok());
        for bad in ["", "  ", "a\u{7}b"] {
            assert!(
                matches!(validate_agent_id(bad), Err(AssignmentError::InvalidArgument { field, .. }) if field == "agent_id"),
                "{bad:?}"
            );
        }
        assert!(validate_email("ann@example.com").is_ok());
        for bad in ["ann", "ann@local", "a b@example.com", "@example.com"] {
            assert!(
                matches!(validate_email(bad), Err(AssignmentError::InvalidArgument { field, .. }) if field == "email"),
                "{bad:?}"
            );
        }
    }
}
