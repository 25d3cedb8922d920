//! Automatic assignment: with an organisation's policy on, each new active unassigned lead
//! waits in `waiting_leads` until an available agent with room takes it, highest score first,
//! then oldest.
//!
//! Capacity holds under any number of processes: an organisation's next leads (up to
//! `LEADS_PER_BATCH`) are chosen and their agents' slots reserved (the waiting rows'
//! `reserved_for`) in one transaction under the organisation's advisory lock, each pick counted
//! against its agent before the next is weighed. An agent's load is a counter (`agent_loads`:
//! its active leads in the `lead_agents` projection plus the leads reserved for it) that
//! statement triggers keep in every transaction that changes either, as deltas folded into the
//! counter every second (so that no transaction waits on another's counter), so choosing reads
//! one row and a few deltas per agent, however many leads they hold. Only then is the lead
//! service asked, a call per lead, several at once; the answers turn the reservations into held
//! leads (in one transaction, so a slot is never counted zero times) or release them. A
//! reservation whose process died is settled from the lead service's answer after
//! `reservation_timeout_secs`, its agents recounted from the projection in the same commit; the
//! sweep recounts every agent every `RECONCILE_EVERY_SWEEPS` sweeps, correcting and counting
//! (`LOAD_CORRECTIONS_METRIC`) any drift.

use crate::{
    AssignmentContext,
    error::AssignmentError,
    handler::{self, AgentRow, LeadHolder, Presence, Recorded},
    routing::{self, AgentZone, WorkingHours},
    settings::{self, Policy},
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::interaction::Direction;
use contracts::lead::{LeadChange, LeadEvent};
use leads_proto::v1 as pb;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Who the lead's history names for an assignment made by the platform.
pub const SYSTEM_ACTOR: &str = "system";
/// Leads an organisation is handed in one go before the others get their turn.
const LEADS_PER_TURN: usize = 1000;
const MAX_WAITING_PAGE: i32 = 500;

/// Applies every lead event to the waiting queue: a new active unassigned lead of an
/// organisation whose policy is on starts waiting, recorded in the transaction that records
/// who holds it; a lead that found an agent or closed stops waiting; scores keep the order.
pub async fn apply_queue_events(
    ctx: &AssignmentContext,
    events: &[Envelope<LeadEvent>],
) -> Result<(), AssignmentError> {
    let mut newest: Vec<&Envelope<LeadEvent>> = events.iter().collect();
    newest.sort_by(|a, b| (&a.org_id, a.data.lead.id, b.version).cmp(&(&b.org_id, b.data.lead.id, a.version)));
    newest.dedup_by(|later, first| later.org_id == first.org_id && later.data.lead.id == first.data.lead.id);
    let holders: Vec<LeadHolder> = newest
        .iter()
        .map(|e| LeadHolder {
            org_id: e.org_id.clone(),
            lead_id: e.data.lead.id,
            agent_id: e.data.lead.agent_id.clone(),
            active: e.data.lead.active,
            version: e.version,
        })
        .collect();
    // A new lead, or one the platform took back from its agent (deactivated), looks for one.
    let created: Vec<&Envelope<LeadEvent>> = events
        .iter()
        .filter(|e| match &e.data.change {
            LeadChange::Created { .. } => true,
            LeadChange::Assigned { to: None, actor, .. } => actor == SYSTEM_ACTOR,
            _ => false,
        })
        .filter(|e| e.data.lead.active && e.data.lead.agent_id.is_none())
        .collect();
    let replies: Vec<(&Envelope<LeadEvent>, &str)> = events
        .iter()
        .filter_map(|e| match &e.data.change {
            LeadChange::InteractionRecorded { interaction } if interaction.direction == Direction::Outbound => {
                Some((e, interaction.agent_id.as_deref()?))
            }
            _ => None,
        })
        .filter(|(e, _)| e.data.lead.active && e.data.lead.agent_id.is_none())
        .collect();
    let touches = touches(events);
    let mut tx = ctx.pool.begin().await?;
    handler::upsert_holders(&mut tx, &holders).await?;
    // Most events touch, create and claim nothing: their statements are not sent at all.
    if !touches.is_empty() {
        sqlx::query(
            "UPDATE lead_agents l SET untouched_since = t.since, touch_version = t.version \
             FROM UNNEST($1::text[], $2::uuid[], $3::timestamptz[], $4::bigint[]) \
               AS t(org_id, lead_id, since, version) \
             WHERE l.org_id = t.org_id AND l.lead_id = t.lead_id AND l.touch_version < t.version",
        )
        .bind(touches.iter().map(|t| t.org_id.as_str()).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.lead_id).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.untouched_since).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.version).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    // The lead's contact, and where it came from for the organisation's skill routes: each
    // written once, the first time the lead is seen.
    sqlx::query(
        "UPDATE lead_agents l SET contact_id = coalesce(l.contact_id, t.contact_id), \
           channel = CASE WHEN l.source IS NULL THEN t.channel ELSE l.channel END, \
           source = coalesce(l.source, t.source) \
         FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[]) \
           AS t(org_id, lead_id, contact_id, channel, source) \
         WHERE l.org_id = t.org_id AND l.lead_id = t.lead_id AND (l.contact_id IS NULL OR l.source IS NULL)",
    )
    .bind(newest.iter().map(|e| e.org_id.as_str()).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| e.data.lead.id).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| e.data.lead.contact_id).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| e.data.lead.channel.as_str()).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| lead_source(&e.data.lead)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Whoever holds the lead now, at the newest version seen, decides: a lead assigned or
    // closed before its creation was read does not wait.
    let queued = if created.is_empty() {
        0
    } else {
        sqlx::query(
            "INSERT INTO waiting_leads (org_id, lead_id, score, lead_created_at) \
         SELECT t.org_id, t.lead_id, t.score, t.created_at \
         FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::timestamptz[]) AS t(org_id, lead_id, score, created_at) \
         JOIN lead_agents l ON l.org_id = t.org_id AND l.lead_id = t.lead_id AND l.agent_id IS NULL AND l.active \
         JOIN org_settings s ON s.org_id = t.org_id AND s.policy <> 'off' \
         ORDER BY t.org_id, t.lead_id \
         ON CONFLICT DO NOTHING",
        )
        .bind(created.iter().map(|e| e.org_id.as_str()).collect::<Vec<_>>())
        .bind(created.iter().map(|e| e.data.lead.id).collect::<Vec<_>>())
        .bind(created.iter().map(|e| e.data.lead.score).collect::<Vec<_>>())
        .bind(created.iter().map(|e| e.data.lead.created_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    // The active agent who last wrote to the contact of an unassigned lead claims it (one
    // claim per lead: an upsert may not touch a row twice); the lead waits, if it did not,
    // until the dispatcher sees whether that agent has room.
    let claimed = if replies.is_empty() {
        0
    } else {
        sqlx::query(
            "INSERT INTO waiting_leads (org_id, lead_id, score, lead_created_at, claimed_by) \
         SELECT DISTINCT ON (t.org_id, t.lead_id) t.org_id, t.lead_id, t.score, t.created_at, t.agent_id \
         FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::timestamptz[], $5::text[], $6::bigint[]) \
           AS t(org_id, lead_id, score, created_at, agent_id, version) \
         JOIN lead_agents l ON l.org_id = t.org_id AND l.lead_id = t.lead_id AND l.agent_id IS NULL AND l.active \
         JOIN org_settings s ON s.org_id = t.org_id AND s.policy <> 'off' \
         JOIN agents a ON a.org_id = t.org_id AND a.agent_id = t.agent_id AND a.active \
         ORDER BY t.org_id, t.lead_id, t.version DESC \
         ON CONFLICT (org_id, lead_id) DO UPDATE SET claimed_by = excluded.claimed_by",
        )
        .bind(replies.iter().map(|(e, _)| e.org_id.as_str()).collect::<Vec<_>>())
        .bind(replies.iter().map(|(e, _)| e.data.lead.id).collect::<Vec<_>>())
        .bind(replies.iter().map(|(e, _)| e.data.lead.score).collect::<Vec<_>>())
        .bind(replies.iter().map(|(e, _)| e.data.lead.created_at).collect::<Vec<_>>())
        .bind(replies.iter().map(|(_, agent)| *agent).collect::<Vec<_>>())
        .bind(replies.iter().map(|(e, _)| e.version).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    // Deleting a reservation here moves its slot to the holder written above, in one commit.
    // An untouched lead waits while the agent it is taken from holds it and nobody acted on it.
    let left = sqlx::query(
        "DELETE FROM waiting_leads w USING lead_agents l \
         WHERE l.org_id = w.org_id AND l.lead_id = w.lead_id \
           AND (NOT l.active OR (l.agent_id IS NOT NULL AND (w.taken_from IS NULL \
                OR l.agent_id <> w.taken_from OR l.untouched_since IS NULL))) \
           AND (w.org_id, w.lead_id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[]))",
    )
    .bind(holders.iter().map(|h| h.org_id.as_str()).collect::<Vec<_>>())
    .bind(holders.iter().map(|h| h.lead_id).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE waiting_leads w SET score = t.score \
         FROM UNNEST($1::text[], $2::uuid[], $3::int[]) AS t(org_id, lead_id, score) \
         WHERE w.org_id = t.org_id AND w.lead_id = t.lead_id AND w.score IS DISTINCT FROM t.score",
    )
    .bind(newest.iter().map(|e| e.org_id.as_str()).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| e.data.lead.id).collect::<Vec<_>>())
    .bind(newest.iter().map(|e| e.data.lead.score).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let freed = events.iter().any(|e| {
        matches!(e.data.change, LeadChange::Assigned { .. }) || (!e.data.lead.active && e.data.lead.agent_id.is_some())
    });
    if queued > 0 || claimed > 0 || left > 0 || freed {
        ctx.wake.notify_one();
    }
    Ok(())
}

/// A lead's source as skill routes name it: the source kind, `integration:<name>` for an
/// integration that gave its name.
fn lead_source(lead: &contracts::lead::LeadView) -> String {
    match (&lead.source_kind, &lead.integration_name) {
        (contracts::lead::SourceKind::Integration, Some(name)) => format!("integration:{name}"),
        (kind, _) => kind.as_str().to_owned(),
    }
}

/// Whether a person acted on a lead since the platform gave it an agent, as of one event.
struct Touch {
    org_id: String,
    lead_id: Uuid,
    /// When the platform gave it its agent; `None` once a person acted or it has no agent.
    untouched_since: Option<DateTime<Utc>>,
    version: i64,
}

/// The newest event of each lead that says whether a person acted on it: an assignment by the
/// platform starts the clock; a message to the contact, a status change by a person, or an
/// assignment by a person (or the platform taking the lead back) stops it. A status rule or
/// the lifecycle, acting as the platform, does not count.
fn touches(events: &[Envelope<LeadEvent>]) -> Vec<Touch> {
    let mut touches: Vec<Touch> = events
        .iter()
        .filter_map(|e| {
            let untouched_since = match &e.data.change {
                LeadChange::Assigned { to: Some(_), actor, .. } if actor == SYSTEM_ACTOR => {
                    Some(e.data.lead.updated_at)
                }
                LeadChange::Assigned { .. } => None,
                LeadChange::StatusChanged { actor, .. } if actor != SYSTEM_ACTOR => None,
                LeadChange::InteractionRecorded { interaction } if interaction.direction == Direction::Outbound => None,
                _ => return None,
            };
            Some(Touch { org_id: e.org_id.clone(), lead_id: e.data.lead.id, untouched_since, version: e.version })
        })
        .collect();
    touches.sort_by(|a, b| (&a.org_id, a.lead_id, b.version).cmp(&(&b.org_id, b.lead_id, a.version)));
    touches.dedup_by(|later, first| later.org_id == first.org_id && later.lead_id == first.lead_id);
    touches
}

/// An agent who may take a lead now, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Candidate {
    pub agent_id: String,
    pub capacity: i32,
    /// Active leads held plus leads being handed to it.
    pub load: i64,
    pub last_assigned_at: Option<DateTime<Utc>>,
    /// Set available with a fresh heartbeat, within its working hours; only the agent who
    /// replied is served without.
    pub available: bool,
    pub skills: Vec<String>,
}

/// An agent as read for the dispatcher, before its working hours are weighed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct CandidateRow {
    agent_id: String,
    capacity: i32,
    load: i64,
    last_assigned_at: Option<DateTime<Utc>>,
    available: bool,
    skills: Vec<String>,
    utc_offset_minutes: Option<i32>,
    time_zone: Option<String>,
    work_days: Option<i16>,
    work_start_minute: Option<i32>,
    work_end_minute: Option<i32>,
}

impl CandidateRow {
    /// Outside its working hours an agent counts as away.
    fn at(self, now: DateTime<Utc>) -> Candidate {
        let zone = AgentZone::from_columns(self.utc_offset_minutes, self.time_zone.as_deref());
        let working = WorkingHours::from_columns(self.work_days, self.work_start_minute, self.work_end_minute)
            .is_none_or(|hours| hours.contains(zone.offset_minutes_at(now), now));
        Candidate {
            agent_id: self.agent_id,
            capacity: self.capacity,
            load: self.load,
            last_assigned_at: self.last_assigned_at,
            available: self.available && working,
            skills: self.skills,
        }
    }
}

/// Who a waiting lead would rather go to, before the policy's pick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    /// The active agent who last wrote to the contact while the lead had no agent.
    pub claimed_by: Option<String>,
    /// The agent of the contact's most recent earlier lead.
    pub previous_agent: Option<String>,
}

pub const CLAIMED_REASON: &str = "replied to the contact";
pub const STICKY_REASON: &str = "sticky: the contact's previous agent";

/// Who gets the next lead and why, in words for the lead's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub agent_id: String,
    pub reason: String,
}

/// The policy's pick among the agents with room; `None` when nobody has room. Never assigned
/// counts as longest ago.
pub fn choose(policy: Policy, candidates: &[Candidate]) -> Option<Choice> {
    let with_room: Vec<&Candidate> =
        candidates.iter().filter(|c| c.available && c.load < i64::from(c.capacity)).collect();
    let longest_ago = |a: &&Candidate, b: &&Candidate| {
        a.last_assigned_at.cmp(&b.last_assigned_at).then_with(|| a.agent_id.cmp(&b.agent_id))
    };
    // load / capacity, compared without division.
    let lighter =
        |a: &&Candidate, b: &&Candidate| (a.load * i64::from(b.capacity)).cmp(&(b.load * i64::from(a.capacity)));
    match policy {
        Policy::Off => None,
        Policy::RoundRobin => with_room.into_iter().min_by(longest_ago).map(|c| Choice {
            agent_id: c.agent_id.clone(),
            reason: format!("round_robin: longest since last lead, {} of {} open", c.load, c.capacity),
        }),
        Policy::Balanced => {
            let best = with_room.iter().min_by(|a, b| lighter(a, b).then_with(|| longest_ago(a, b)))?;
            let tied = with_room.iter().filter(|c| lighter(c, best).is_eq()).count() > 1;
            let why = if tied { "longest idle of the least loaded" } else { "least loaded" };
            Some(Choice {
                agent_id: best.agent_id.clone(),
                reason: format!("balanced: {} of {} open, {why}", best.load, best.capacity),
            })
        }
    }
}

/// The agent who replied to the contact when it has room (present or not: it just wrote),
/// else the contact's previous agent when it is available with room, else the policy's pick.
/// `candidates` are the organisation's active agents. With the policy off, only the agent who
/// replied.
pub fn choose_for(policy: Policy, candidates: &[Candidate], preferences: &Preferences) -> Option<Choice> {
    let has_room = |c: &&Candidate| c.load < i64::from(c.capacity);
    let named = |agent: &Option<String>| candidates.iter().find(|c| Some(&c.agent_id) == agent.as_ref());
    if let Some(claimer) = named(&preferences.claimed_by).filter(has_room) {
        return Some(Choice { agent_id: claimer.agent_id.clone(), reason: CLAIMED_REASON.into() });
    }
    if policy == Policy::Off {
        return None;
    }
    if let Some(previous) = named(&preferences.previous_agent).filter(|c| c.available).filter(has_room) {
        return Some(Choice { agent_id: previous.agent_id.clone(), reason: STICKY_REASON.into() });
    }
    choose(policy, candidates)
}

/// A waiting lead reserved for an agent, until the lead service answers.
#[derive(Debug, Clone)]
struct Reservation {
    org_id: String,
    lead_id: Uuid,
    agent_id: String,
    reserved_at: DateTime<Utc>,
    reason: String,
    /// The agent an untouched lead is taken from, who holds it until the lead service answers.
    taken_from: Option<String>,
    /// The version an untouched lead must still be at: a person who acted meanwhile keeps it.
    expected_version: Option<i64>,
}

/// Leads reserved together under the organisation's lock, handed over concurrently and settled
/// in one transaction, in the order they were chosen.
struct Batch {
    policy: Policy,
    reservations: Vec<Reservation>,
}

/// A lead waiting to be handed out, as the dispatcher weighs it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Waiting {
    lead_id: Uuid,
    claimed_by: Option<String>,
    /// The agent of the contact's most recent earlier lead that had one.
    #[sqlx(default)]
    previous_agent: Option<String>,
    taken_from: Option<String>,
    expected_version: Option<i64>,
    untouched_minutes: Option<i32>,
    channel: Option<String>,
    source: Option<String>,
}

/// Why an untouched lead went to another agent, in the lead's history.
pub fn untouched_reason(minutes: i32) -> String {
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    format!("untouched for {minutes} {unit}")
}

/// Leads reserved in one transaction: three commits and one lock serve this many.
const LEADS_PER_BATCH: usize = 100;
/// Waiting leads weighed beyond a batch: a lead nobody can take (its agent who replied is
/// full, or only the agent it is taken from has room) does not hold up the ones behind it.
const WEIGHED_BEYOND_BATCH: i64 = 50;
/// AssignLeads calls in flight for one batch: the lead service answers each under the lead's
/// lock, so they run side by side.
const CALLS_IN_FLIGHT: usize = 16;

impl Waiting {
    /// The policy's pick among the agents with the skill the lead needs, if any; the agent who
    /// replied to the contact is already talking to it and needs none.
    fn choice(&self, policy: Policy, candidates: &[Candidate], needs_skill: Option<&str>) -> Option<Choice> {
        let Some(skill) = needs_skill else { return self.choice_among(policy, candidates) };
        let skilled: Vec<Candidate> = candidates
            .iter()
            .filter(|c| c.skills.iter().any(|s| s == skill) || self.claimed_by.as_ref() == Some(&c.agent_id))
            .cloned()
            .collect();
        let choice = self.choice_among(policy, &skilled)?;
        if choice.reason == CLAIMED_REASON {
            return Some(choice);
        }
        Some(Choice { reason: format!("{}, skill {skill}", choice.reason), ..choice })
    }

    fn choice_among(&self, policy: Policy, candidates: &[Candidate]) -> Option<Choice> {
        let Some(from) = &self.taken_from else {
            let preferences =
                Preferences { claimed_by: self.claimed_by.clone(), previous_agent: self.previous_agent.clone() };
            return choose_for(policy, candidates, &preferences);
        };
        // Never back to the agent who left it untouched.
        let others: Vec<Candidate> = candidates.iter().filter(|c| &c.agent_id != from).cloned().collect();
        let preferences = Preferences { claimed_by: None, previous_agent: self.previous_agent.clone() };
        let choice = choose_for(policy, &others, &preferences)?;
        Some(Choice { agent_id: choice.agent_id, reason: untouched_reason(self.untouched_minutes.unwrap_or_default()) })
    }
}

/// Chooses the organisation's next waiting leads and their agents and reserves the slots, up to
/// `LEADS_PER_BATCH`, in one transaction under the organisation's lock; `None` when nothing
/// waits, nobody has room, or the policy is off. Each pick counts against its agent's load and
/// stamps it as the most recently served before the next pick is weighed, so a batch hands out
/// leads exactly as one lead at a time would.
async fn reserve_batch(ctx: &AssignmentContext, org_id: &str) -> Result<Option<Batch>, AssignmentError> {
    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assignment dispatch ' || $1, 0))")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let settings = settings::of_org(&mut *tx, org_id).await?;
    if settings.policy == Policy::Off {
        return Ok(None);
    }
    // The counters, less any lead reserved for the agent that already holds it (its event
    // recorded the holder before the reservation was settled): counted once, as it is one.
    let rows: Vec<CandidateRow> = sqlx::query_as(
        "SELECT a.agent_id, coalesce(a.capacity, $2) AS capacity, a.last_assigned_at, a.skills, \
           a.utc_offset_minutes, a.time_zone, a.work_days, a.work_start_minute, a.work_end_minute, \
           coalesce(c.held + c.reserved, 0) - coalesce(twice.leads, 0) AS load, \
           (a.presence = 'available' AND a.presence_seen_at > now() - make_interval(secs => $3)) AS available \
         FROM agents a \
         LEFT JOIN (SELECT agent_id, held, reserved FROM agent_loads_now WHERE org_id = $1) c \
           ON c.agent_id = a.agent_id \
         LEFT JOIN (SELECT w.reserved_for AS agent_id, count(*) AS leads FROM waiting_leads w \
                    JOIN lead_agents l ON l.org_id = w.org_id AND l.lead_id = w.lead_id \
                      AND l.agent_id = w.reserved_for AND l.active \
                    WHERE w.org_id = $1 AND w.reserved_for IS NOT NULL GROUP BY w.reserved_for) twice \
           ON twice.agent_id = a.agent_id \
         WHERE a.org_id = $1 AND a.active",
    )
    .bind(org_id)
    .bind(settings.default_capacity)
    .bind(ctx.settings.presence_grace_secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    let mut candidates: Vec<Candidate> = rows.into_iter().map(|row| row.at(now)).collect();
    let has_room = |candidates: &[Candidate]| candidates.iter().any(|c| c.load < i64::from(c.capacity));
    if !has_room(&candidates) {
        return Ok(None);
    }
    // The first leads in turn, then any later one an agent who replied to may take.
    let waiting: Vec<Waiting> = sqlx::query_as(
        "SELECT q.*, \
           (SELECT p.agent_id FROM lead_agents me \
            JOIN lead_agents p ON p.org_id = me.org_id AND p.contact_id = me.contact_id AND p.lead_id < me.lead_id \
            WHERE me.org_id = $1 AND me.lead_id = q.lead_id AND p.agent_id IS NOT NULL \
            ORDER BY p.lead_id DESC LIMIT 1) AS previous_agent \
         FROM ( \
          (SELECT w.lead_id, w.claimed_by, w.taken_from, w.expected_version, w.untouched_minutes, w.score, \
             w.lead_created_at, l.channel, l.source FROM waiting_leads w \
            LEFT JOIN lead_agents l ON l.org_id = w.org_id AND l.lead_id = w.lead_id \
            WHERE w.org_id = $1 AND w.reserved_for IS NULL \
            ORDER BY w.score DESC NULLS LAST, w.lead_created_at, w.lead_id LIMIT $2) \
          UNION \
          (SELECT w.lead_id, w.claimed_by, w.taken_from, w.expected_version, w.untouched_minutes, w.score, \
             w.lead_created_at, l.channel, l.source FROM waiting_leads w \
            LEFT JOIN lead_agents l ON l.org_id = w.org_id AND l.lead_id = w.lead_id \
            WHERE w.org_id = $1 AND w.reserved_for IS NULL AND w.claimed_by IS NOT NULL \
            ORDER BY w.score DESC NULLS LAST, w.lead_created_at, w.lead_id LIMIT $3) \
         ) q ORDER BY q.score DESC NULLS LAST, q.lead_created_at, q.lead_id",
    )
    .bind(org_id)
    .bind(LEADS_PER_BATCH as i64 + WEIGHED_BEYOND_BATCH)
    .bind(i64::from(MAX_WAITING_PAGE))
    .fetch_all(&mut *tx)
    .await?;
    // Later than any agent was served, so that each pick of this batch is the latest.
    let served_from = candidates.iter().filter_map(|c| c.last_assigned_at).max().map_or(now, |last| last.max(now));
    let mut picks: Vec<(Waiting, Choice, DateTime<Utc>)> = Vec::new();
    for lead in waiting {
        if picks.len() == LEADS_PER_BATCH || !has_room(&candidates) {
            break;
        }
        let needs_skill =
            routing::needed_skill(&settings.skill_routes, lead.channel.as_deref(), lead.source.as_deref());
        let Some(choice) = lead.choice(settings.policy, &candidates, needs_skill) else { continue };
        let served_at = served_from + chrono::Duration::microseconds(picks.len() as i64 + 1);
        if let Some(agent) = candidates.iter_mut().find(|c| c.agent_id == choice.agent_id) {
            agent.load += 1;
            agent.last_assigned_at = Some(served_at);
        }
        picks.push((lead, choice, served_at));
    }
    if picks.is_empty() {
        return Ok(None);
    }
    // Stamped now rather than when the lead service answers, so that the next choice, in this
    // process or another, already sees these agents as the most recently served. Agents first,
    // then the counters (through the reservations), as a settlement locks them.
    let mut served: Vec<(&str, DateTime<Utc>)> = picks.iter().map(|(_, c, at)| (c.agent_id.as_str(), *at)).collect();
    served.sort();
    served.reverse();
    served.dedup_by(|later, first| later.0 == first.0);
    served.reverse();
    sqlx::query(
        "UPDATE agents a SET last_assigned_at = greatest(a.last_assigned_at, t.at) \
         FROM UNNEST($2::text[], $3::timestamptz[]) AS t(agent_id, at) \
         WHERE a.org_id = $1 AND a.agent_id = t.agent_id",
    )
    .bind(org_id)
    .bind(served.iter().map(|(agent, _)| *agent).collect::<Vec<_>>())
    .bind(served.iter().map(|(_, at)| *at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let reserved: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE waiting_leads w SET reserved_for = t.agent_id, reserved_at = now() \
         FROM UNNEST($2::uuid[], $3::text[]) AS t(lead_id, agent_id) \
         WHERE w.org_id = $1 AND w.lead_id = t.lead_id AND w.reserved_for IS NULL \
         RETURNING w.lead_id, w.reserved_at",
    )
    .bind(org_id)
    .bind(picks.iter().map(|(lead, _, _)| lead.lead_id).collect::<Vec<_>>())
    .bind(picks.iter().map(|(_, choice, _)| choice.agent_id.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let reserved_at: std::collections::HashMap<Uuid, DateTime<Utc>> = reserved.into_iter().collect();
    let reservations = picks
        .into_iter()
        .filter_map(|(lead, choice, _)| {
            Some(Reservation {
                org_id: org_id.to_owned(),
                lead_id: lead.lead_id,
                reserved_at: *reserved_at.get(&lead.lead_id)?,
                agent_id: choice.agent_id,
                reason: choice.reason,
                taken_from: lead.taken_from,
                expected_version: lead.expected_version,
            })
        })
        .collect();
    Ok(Some(Batch { policy: settings.policy, reservations }))
}

/// Hands out the organisation's waiting leads while agents have room.
async fn dispatch_org(ctx: &AssignmentContext, org_id: &str, token: &CancellationToken) -> Result<(), AssignmentError> {
    let mut handed = 0;
    while handed < LEADS_PER_TURN && !token.is_cancelled() {
        let Some(batch) = platform::error::retry_transient(|| reserve_batch(ctx, org_id)).await? else { break };
        if batch.reservations.is_empty() {
            break;
        }
        handed += batch.reservations.len();
        hand_over(ctx, &batch).await?;
    }
    Ok(())
}

/// Asks the lead service to assign each reserved lead (`CALLS_IN_FLIGHT` at a time), then turns
/// the reservations into held leads or releases them, in one transaction; a call that went
/// unanswered is settled from the lead afterwards.
async fn hand_over(ctx: &AssignmentContext, batch: &Batch) -> Result<(), AssignmentError> {
    let mut calls = tokio::task::JoinSet::new();
    let mut answers: Vec<Option<Result<pb::LeadAssignment, tonic::Status>>> =
        (0..batch.reservations.len()).map(|_| None).collect();
    let mut next = batch.reservations.iter().enumerate();
    loop {
        while calls.len() < CALLS_IN_FLIGHT
            && let Some((index, r)) = next.next()
        {
            let (ctx, r) = (ctx.clone(), r.clone());
            calls.spawn(async move { (index, call_assign(&ctx, &r).await) });
        }
        let Some(done) = calls.join_next().await else { break };
        let (index, answer) =
            done.map_err(|error| AssignmentError::Protocol(format!("assign call panicked: {error}")))?;
        answers[index] = Some(answer);
    }
    let mut settled = Vec::with_capacity(answers.len());
    let mut unanswered = Vec::new();
    for (r, answer) in batch.reservations.iter().zip(answers) {
        match answer {
            Some(Ok(result)) => settled.push((r, answer_of(r, &result))),
            Some(Err(status)) => {
                // It may have been assigned before the answer was lost: the lead service knows.
                tracing::warn!(org_id = %r.org_id, lead_id = %r.lead_id, agent_id = %r.agent_id, error = %status,
                    "automatic assignment unanswered, settling it from the lead");
                unanswered.push(r);
            }
            None => unanswered.push(r),
        }
    }
    let assigned = platform::error::retry_transient(|| apply_answers(ctx, &settled)).await?;
    if assigned > 0 {
        metrics::counter!(AUTO_ASSIGNMENTS_METRIC, "service" => "assignment", "policy" => batch.policy.as_str())
            .increment(assigned);
        tracing::info!(org_id = %batch.reservations[0].org_id, assigned, reserved = batch.reservations.len(),
            "leads assigned automatically");
    }
    for r in unanswered {
        settle_from_lead(ctx, r).await?;
    }
    Ok(())
}

/// Automatic assignments made, by policy.
pub const AUTO_ASSIGNMENTS_METRIC: &str = "leads_auto_assignments_total";
/// Agents whose load counter was found off the projection and corrected.
pub const LOAD_CORRECTIONS_METRIC: &str = "leads_assignment_load_corrections_total";

async fn call_assign(ctx: &AssignmentContext, r: &Reservation) -> Result<pb::LeadAssignment, tonic::Status> {
    let mut request = tonic::Request::new(pb::AssignLeadsRequest {
        org_id: r.org_id.clone(),
        lead_ids: vec![r.lead_id.to_string()],
        agent_id: r.agent_id.clone(),
        actor: SYSTEM_ACTOR.into(),
        reason: r.reason.clone(),
        // Only a lead still unassigned (or already this agent's; for an untouched one, still
        // its agent's, at the version it was left at) is assigned: one a person gave someone
        // else meanwhile answers NOT_FOUND and stays theirs.
        on_behalf_of_agent: r.taken_from.clone().unwrap_or_else(|| r.agent_id.clone()),
        expected_versions: r.expected_version.map(|v| (r.lead_id.to_string(), v)).into_iter().collect(),
    });
    request.set_timeout(ctx.call_timeout());
    let answer = ctx.lead.clone().assign_leads(request).await?.into_inner().results.into_iter().next();
    answer.ok_or_else(|| tonic::Status::internal("AssignLeads answered no result"))
}

fn answer_of(r: &Reservation, result: &pb::LeadAssignment) -> Answer {
    match pb::BulkOutcome::try_from(result.outcome) {
        Ok(outcome @ (pb::BulkOutcome::Changed | pb::BulkOutcome::Unchanged)) => Answer::Held {
            changed: outcome == pb::BulkOutcome::Changed,
            version: result.lead_version,
            at: result.at.as_ref().and_then(contracts::time::from_timestamp).unwrap_or_else(Utc::now),
        },
        // Someone else's by now, or closed: it waits no more.
        Ok(pb::BulkOutcome::NotFound | pb::BulkOutcome::Inactive) => Answer::Gone,
        // An untouched lead that moved meanwhile stays where it is; the sweep looks again.
        _ if r.taken_from.is_some() => Answer::Gone,
        _ => Answer::Release,
    }
}

/// What the lead service's answer means for a reservation.
enum Answer {
    /// The agent holds the lead (`changed`: by this assignment).
    Held {
        changed: bool,
        version: i64,
        at: DateTime<Utc>,
    },
    Gone,
    Release,
}

/// Settles the reservations in one transaction; answers how many leads this assigned.
async fn apply_answers(ctx: &AssignmentContext, settled: &[(&Reservation, Answer)]) -> Result<u64, AssignmentError> {
    if settled.is_empty() {
        return Ok(0);
    }
    let mut tx = ctx.pool.begin().await?;
    let assigned = apply_answers_in(&mut tx, settled).await?;
    tx.commit().await?;
    Ok(assigned)
}

async fn apply_answers_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    settled: &[(&Reservation, Answer)],
) -> Result<u64, AssignmentError> {
    let mut assigned = Vec::new();
    let mut holders = Vec::new();
    let mut released = Vec::new();
    for (r, answer) in settled {
        match *answer {
            Answer::Held { changed: true, version, at } => assigned.push(Recorded {
                org_id: r.org_id.clone(),
                lead_id: r.lead_id,
                lead_version: version,
                agent_id: Some(r.agent_id.clone()),
                previous_agent_id: r.taken_from.clone(),
                actor: SYSTEM_ACTOR.into(),
                reason: Some(r.reason.clone()),
                at,
                active: true,
            }),
            Answer::Held { changed: false, version, .. } => holders.push(LeadHolder {
                org_id: r.org_id.clone(),
                lead_id: r.lead_id,
                agent_id: Some(r.agent_id.clone()),
                active: true,
                version,
            }),
            Answer::Gone => {}
            Answer::Release => released.push(*r),
        }
    }
    let count = assigned.len() as u64;
    // The lead service's times order the agents as the calls happened to finish; restamped in
    // the order they were chosen, so that round robin goes on where the batch left off.
    let mut served: Vec<(&str, &str, usize)> = settled
        .iter()
        .enumerate()
        .filter(|(_, (_, answer))| matches!(answer, Answer::Held { changed: true, .. }))
        .map(|(order, (r, _))| (r.org_id.as_str(), r.agent_id.as_str(), order))
        .collect();
    let latest = assigned.iter().map(|a| a.at).max();
    if !assigned.is_empty() {
        handler::record_assignments_in(&mut **tx, assigned).await?;
    }
    if !holders.is_empty() {
        holders.sort_by(|a, b| (&a.org_id, a.lead_id).cmp(&(&b.org_id, b.lead_id)));
        handler::upsert_holders(tx, &holders).await?;
    }
    if let Some(latest) = latest {
        served.sort_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
        served.dedup_by(|later, first| later.0 == first.0 && later.1 == first.1);
        sqlx::query(
            "UPDATE agents a SET last_assigned_at = greatest(a.last_assigned_at, t.at) \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS t(org_id, agent_id, at) \
             WHERE a.org_id = t.org_id AND a.agent_id = t.agent_id",
        )
        .bind(served.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(served.iter().map(|s| s.1).collect::<Vec<_>>())
        .bind(served.iter().map(|s| latest + chrono::Duration::microseconds(s.2 as i64 + 1)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    let forgotten: Vec<&Reservation> =
        settled.iter().filter(|(_, answer)| !matches!(answer, Answer::Release)).map(|(r, _)| *r).collect();
    if !forgotten.is_empty() {
        sqlx::query(
            "DELETE FROM waiting_leads w USING UNNEST($1::text[], $2::uuid[]) AS t(org_id, lead_id) \
             WHERE w.org_id = t.org_id AND w.lead_id = t.lead_id",
        )
        .bind(forgotten.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
        .bind(forgotten.iter().map(|r| r.lead_id).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !released.is_empty() {
        sqlx::query(
            "UPDATE waiting_leads w SET reserved_for = NULL, reserved_at = NULL \
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::timestamptz[]) AS t(org_id, lead_id, agent_id, at) \
             WHERE w.org_id = t.org_id AND w.lead_id = t.lead_id AND w.reserved_for = t.agent_id \
               AND w.reserved_at = t.at",
        )
        .bind(released.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
        .bind(released.iter().map(|r| r.lead_id).collect::<Vec<_>>())
        .bind(released.iter().map(|r| r.agent_id.as_str()).collect::<Vec<_>>())
        .bind(released.iter().map(|r| r.reserved_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(count)
}

/// An agent's load counter as it was and as the projection has it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LoadDrift {
    pub agent_id: String,
    pub counted_held: i64,
    pub counted_reserved: i64,
    pub held: i64,
    pub reserved: i64,
}

/// Recounts the load of the organisation's `agents` (all with `None`) from the projection and
/// the reservations, and corrects the counters that drifted; answers those. One statement reads
/// the truth, the counters and their pending deltas in one snapshot, takes those deltas and
/// writes the truth in their place; a change committed after that snapshot stays a delta. The
/// fold lock keeps folds from moving deltas into the counters meanwhile.
pub async fn recount_loads(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: &str,
    agents: Option<&[String]>,
) -> Result<Vec<LoadDrift>, AssignmentError> {
    sqlx::query(LOCK_LOAD_FOLDS).execute(&mut **tx).await?;
    let drifts: Vec<LoadDrift> = sqlx::query_as(
        "WITH truth AS ( \
           SELECT agent_id, sum(held)::bigint AS held, sum(reserved)::bigint AS reserved FROM ( \
             SELECT agent_id, count(*) AS held, 0::bigint AS reserved FROM lead_agents \
             WHERE org_id = $1 AND active AND agent_id IS NOT NULL AND ($2::text[] IS NULL OR agent_id = ANY($2)) \
             GROUP BY agent_id \
             UNION ALL \
             SELECT reserved_for, 0, count(*) FROM waiting_leads \
             WHERE org_id = $1 AND reserved_for IS NOT NULL AND ($2::text[] IS NULL OR reserved_for = ANY($2)) \
             GROUP BY reserved_for \
           ) t GROUP BY agent_id \
         ), taken AS ( \
           DELETE FROM agent_load_deltas WHERE org_id = $1 AND ($2::text[] IS NULL OR agent_id = ANY($2)) \
           RETURNING agent_id, held, reserved \
         ), counted AS ( \
           SELECT agent_id, sum(held)::bigint AS held, sum(reserved)::bigint AS reserved, \
             bool_or(pending) AS pending FROM ( \
             SELECT agent_id, held, reserved, false AS pending FROM agent_loads \
             WHERE org_id = $1 AND ($2::text[] IS NULL OR agent_id = ANY($2)) \
             UNION ALL \
             SELECT agent_id, held, reserved, true FROM taken \
           ) c GROUP BY agent_id \
         ), compared AS ( \
           SELECT coalesce(t.agent_id, c.agent_id) AS agent_id, coalesce(c.held, 0) AS counted_held, \
             coalesce(c.reserved, 0) AS counted_reserved, coalesce(t.held, 0) AS held, \
             coalesce(t.reserved, 0) AS reserved, coalesce(c.pending, false) AS pending \
           FROM truth t FULL JOIN counted c ON c.agent_id = t.agent_id \
         ), written AS ( \
           INSERT INTO agent_loads (org_id, agent_id, held, reserved) \
           SELECT $1, agent_id, held, reserved FROM compared \
           WHERE pending OR counted_held <> held OR counted_reserved <> reserved ORDER BY agent_id \
           ON CONFLICT (org_id, agent_id) DO UPDATE SET held = excluded.held, reserved = excluded.reserved \
         ) \
         SELECT agent_id, counted_held, counted_reserved, held, reserved FROM compared \
         WHERE counted_held <> held OR counted_reserved <> reserved ORDER BY 1",
    )
    .bind(org_id)
    .bind(agents)
    .fetch_all(&mut **tx)
    .await?;
    for d in &drifts {
        tracing::warn!(org_id, agent_id = %d.agent_id, counted_held = d.counted_held, held = d.held,
            counted_reserved = d.counted_reserved, reserved = d.reserved, "agent load counter drifted, corrected");
    }
    if !drifts.is_empty() {
        metrics::counter!(LOAD_CORRECTIONS_METRIC, "service" => "assignment").increment(drifts.len() as u64);
    }
    Ok(drifts)
}

/// Taken by whatever moves load deltas into the counters (the fold, a recount) for the rest of
/// its transaction: a recount then writes counters no fold changes under it.
const LOCK_LOAD_FOLDS: &str = "SELECT pg_advisory_xact_lock(hashtextextended('assignment load folds', 0))";

/// Moves every pending load delta into its agent's counter, in one statement so that each
/// snapshot sees a change once; counters are upserted in key order, so that concurrent folds
/// of other processes queue rather than deadlock.
pub async fn fold_load_deltas(pool: &sqlx::PgPool) -> Result<u64, AssignmentError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_LOAD_FOLDS).execute(&mut *tx).await?;
    let folded = sqlx::query(
        "WITH moved AS (DELETE FROM agent_load_deltas RETURNING org_id, agent_id, held, reserved) \
         INSERT INTO agent_loads AS c (org_id, agent_id, held, reserved) \
         SELECT org_id, agent_id, sum(held), sum(reserved) FROM moved \
         GROUP BY org_id, agent_id ORDER BY org_id, agent_id \
         ON CONFLICT (org_id, agent_id) DO UPDATE SET held = c.held + excluded.held, reserved = c.reserved + excluded.reserved",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(folded)
}

/// Recounts every organisation's agents, one organisation per transaction.
async fn reconcile_loads(ctx: &AssignmentContext) -> Result<usize, AssignmentError> {
    let orgs: Vec<String> =
        sqlx::query_scalar("SELECT org_id FROM agents UNION SELECT org_id FROM agent_loads_now ORDER BY 1")
            .fetch_all(&ctx.pool)
            .await?;
    let mut corrected = 0;
    for org_id in orgs {
        corrected += platform::error::retry_transient(|| async {
            let mut tx = ctx.pool.begin().await?;
            let drifts = recount_loads(&mut tx, &org_id, None).await?;
            tx.commit().await?;
            Ok::<_, AssignmentError>(drifts.len())
        })
        .await?;
    }
    Ok(corrected)
}

/// Settles a reservation whose hand-over went unanswered from the lead as the lead service
/// has it: held by an agent (who is recorded as holding it in the same commit that ends the
/// reservation), closed or gone, or still unassigned (waiting again). The agents involved are
/// recounted from the projection in that commit: whatever a dead process left half done, their
/// counters come out right.
async fn settle_from_lead(ctx: &AssignmentContext, r: &Reservation) -> Result<(), AssignmentError> {
    let mut request =
        tonic::Request::new(pb::GetLeadRequest { org_id: r.org_id.clone(), lead_id: r.lead_id.to_string() });
    request.set_timeout(ctx.call_timeout());
    let lead = match ctx.lead.clone().get_lead(request).await {
        Ok(lead) => Some(lead.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return Err(status.into()),
    };
    platform::error::retry_transient(|| async {
        let mut tx = ctx.pool.begin().await?;
        let mut agents = vec![r.agent_id.clone()];
        match &lead {
            Some(lead) if lead.active && lead.agent_id.is_empty() => {
                apply_answers_in(&mut tx, &[(r, Answer::Release)]).await?;
            }
            Some(lead) if !lead.agent_id.is_empty() => {
                // Held by someone: recorded as held (closed or not) in the commit that ends the
                // reservation, the history left to the lead's events.
                let holder = LeadHolder {
                    org_id: r.org_id.clone(),
                    lead_id: r.lead_id,
                    agent_id: Some(lead.agent_id.clone()),
                    active: lead.active,
                    version: lead.version,
                };
                handler::upsert_holders(&mut tx, std::slice::from_ref(&holder)).await?;
                apply_answers_in(&mut tx, &[(r, Answer::Gone)]).await?;
                agents.push(lead.agent_id.clone());
            }
            Some(_) | None => {
                apply_answers_in(&mut tx, &[(r, Answer::Gone)]).await?;
            }
        }
        agents.sort();
        agents.dedup();
        recount_loads(&mut tx, &r.org_id, Some(&agents)).await?;
        tx.commit().await?;
        Ok::<_, AssignmentError>(())
    })
    .await
}

/// Reservations older than the timeout: their process died or lost its way.
async fn settle_stale(ctx: &AssignmentContext) -> Result<(), AssignmentError> {
    let stale: Vec<(String, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT org_id, lead_id, reserved_for, reserved_at FROM waiting_leads \
         WHERE reserved_for IS NOT NULL AND reserved_at < now() - make_interval(secs => $1) \
         ORDER BY reserved_at LIMIT 100",
    )
    .bind(ctx.settings.reservation_timeout_secs as f64)
    .fetch_all(&ctx.pool)
    .await?;
    for (org_id, lead_id, agent_id, reserved_at) in stale {
        let r = Reservation {
            org_id,
            lead_id,
            agent_id,
            reserved_at,
            reason: String::new(),
            taken_from: None,
            expected_version: None,
        };
        tracing::warn!(org_id = %r.org_id, lead_id = %r.lead_id, agent_id = %r.agent_id, "settling a stale reservation");
        settle_from_lead(ctx, &r).await?;
    }
    Ok(())
}

/// Every agent's load counter is checked against the projection once in this many sweeps (a
/// minute at the default sweep): it counts every lead held.
const RECONCILE_EVERY_SWEEPS: u32 = 12;

/// One pass over every organisation with leads waiting.
async fn dispatch_all(ctx: &AssignmentContext, token: &CancellationToken) -> Result<(), AssignmentError> {
    let orgs: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT org_id FROM waiting_leads WHERE reserved_for IS NULL ORDER BY org_id")
            .fetch_all(&ctx.pool)
            .await?;
    for org_id in orgs {
        if token.is_cancelled() {
            break;
        }
        dispatch_org(ctx, &org_id, token).await?;
    }
    Ok(())
}

/// Hands out waiting leads whenever something may have changed (a lead waiting, room freed,
/// an agent available: `AssignmentContext::wake`) and on a sweep, which also settles the
/// reservations of processes that died, until `token` fires.
pub async fn dispatch_until(ctx: AssignmentContext, token: CancellationToken) -> anyhow::Result<()> {
    let sweep = Duration::from_secs(ctx.settings.sweep_interval_secs);
    let mut next_sweep = tokio::time::Instant::now();
    let reconcile_every = sweep * RECONCILE_EVERY_SWEEPS;
    let mut next_reconcile = tokio::time::Instant::now() + reconcile_every;
    loop {
        if tokio::time::Instant::now() >= next_reconcile {
            match reconcile_loads(&ctx).await {
                Ok(0) => {}
                Ok(corrected) => tracing::warn!(corrected, "agent load counters corrected from the projection"),
                Err(error) => tracing::warn!(%error, "agent load counters not reconciled yet"),
            }
            next_reconcile = tokio::time::Instant::now() + reconcile_every;
        }
        if tokio::time::Instant::now() >= next_sweep {
            if let Err(error) = settle_stale(&ctx).await {
                tracing::warn!(%error, "stale reservations not settled yet");
            }
            if let Err(error) = queue_untouched(&ctx).await {
                tracing::warn!(%error, "untouched leads not queued yet");
            }
            if let Err(error) = release_offline(&ctx).await {
                tracing::warn!(%error, "offline agents' untouched leads not released yet");
            }
            next_sweep = tokio::time::Instant::now() + sweep;
        }
        let pass_started = tokio::time::Instant::now();
        if let Err(error) = dispatch_all(&ctx, &token).await {
            tracing::warn!(%error, "automatic assignment interrupted, trying again");
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = ctx.wake.notified() => {}
            () = tokio::time::sleep_until(next_sweep) => {}
        }
        // The wakes of the gap come to one pass.
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(pass_started + DISPATCH_GAP) => {}
        }
    }
}

/// The shortest time between two passes of the dispatcher. Every assignment and every batch
/// of lead events wakes it, hundreds of times a second at a busy desk, and each pass asks
/// Postgres which organisations have leads waiting; a lead waits at most this much longer.
const DISPATCH_GAP: Duration = Duration::from_millis(20);

/// Why the platform took a lead back from a deactivated agent, in the lead's history.
pub const DEACTIVATED_REASON: &str = "agent deactivated";
/// Leads asked of the lead service in one call when an agent's leads are taken back.
const RELEASE_CHUNK: usize = 1000;

/// With the organisation's policy on, takes a deactivated agent's active leads back; their
/// `assigned` events put them in the queue (`apply_queue_events`), to be handed out again.
/// Only leads the agent still holds move (asked on its behalf), so one a person gave someone
/// else meanwhile stays theirs. Deactivating again retries what a failure left behind.
pub async fn release_leads_of_inactive(
    ctx: &AssignmentContext,
    org_id: &str,
    agent_id: &str,
) -> Result<usize, AssignmentError> {
    if settings::of_org(&ctx.pool, org_id).await?.policy == Policy::Off {
        return Ok(0);
    }
    let leads: Vec<Uuid> = sqlx::query_scalar(
        "SELECT lead_id FROM lead_agents WHERE org_id = $1 AND agent_id = $2 AND active ORDER BY lead_id",
    )
    .bind(org_id)
    .bind(agent_id)
    .fetch_all(&ctx.pool)
    .await?;
    let mut released = 0;
    for chunk in leads.chunks(RELEASE_CHUNK) {
        let results = handler::assign(
            ctx,
            handler::Assign {
                org_id: org_id.to_owned(),
                lead_ids: chunk.iter().map(Uuid::to_string).collect(),
                agent_id: None,
                actor: SYSTEM_ACTOR.into(),
                reason: Some(DEACTIVATED_REASON.into()),
                on_behalf_of_agent: Some(agent_id.to_owned()),
                expected_versions: Default::default(),
            },
        )
        .await?;
        released += results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).count();
    }
    if released > 0 {
        tracing::info!(org_id, agent_id, released, "a deactivated agent's leads went back to the queue");
    }
    Ok(released)
}

/// Why the platform took a lead back from an agent whose heartbeat lapsed.
pub const OFFLINE_REASON: &str = "agent offline past the grace period";

/// Where the organisation asks for it, queues each lead untouched for longer than its
/// setting, to go to another agent; its agent keeps it until then.
async fn queue_untouched(ctx: &AssignmentContext) -> Result<(), AssignmentError> {
    // A lead id is a UUIDv7: its first 48 bits are its creation, in milliseconds.
    let queued = sqlx::query(
        "INSERT INTO waiting_leads (org_id, lead_id, lead_created_at, taken_from, expected_version, untouched_minutes) \
         SELECT l.org_id, l.lead_id, \
           to_timestamp(('x' || lpad(replace(left(l.lead_id::text, 13), '-', ''), 16, '0'))::bit(64)::bigint / 1000.0), \
           l.agent_id, l.version, s.reassign_untouched_after_minutes \
         FROM lead_agents l \
         JOIN org_settings s ON s.org_id = l.org_id AND s.policy <> 'off' \
           AND s.reassign_untouched_after_minutes IS NOT NULL \
         WHERE l.active AND l.agent_id IS NOT NULL \
           AND l.untouched_since < now() - make_interval(mins => s.reassign_untouched_after_minutes) \
         ORDER BY l.org_id, l.lead_id \
         ON CONFLICT DO NOTHING",
    )
    .execute(&ctx.pool)
    .await?
    .rows_affected();
    if queued > 0 {
        tracing::info!(queued, "untouched leads waiting for another agent");
        ctx.wake.notify_one();
    }
    Ok(())
}

/// Where the organisation asks for it, takes back the untouched leads of each agent whose last
/// heartbeat is older than the grace period; their `assigned` events queue them.
async fn release_offline(ctx: &AssignmentContext) -> Result<(), AssignmentError> {
    let held: Vec<(String, String, Vec<Uuid>, Vec<i64>)> = sqlx::query_as(
        "SELECT l.org_id, l.agent_id, array_agg(l.lead_id ORDER BY l.lead_id), array_agg(l.version ORDER BY l.lead_id) \
         FROM lead_agents l \
         JOIN org_settings s ON s.org_id = l.org_id AND s.policy <> 'off' AND s.release_offline_after_grace \
         JOIN agents a ON a.org_id = l.org_id AND a.agent_id = l.agent_id \
         WHERE l.active AND l.untouched_since IS NOT NULL \
           AND (a.presence_seen_at IS NULL OR a.presence_seen_at < now() - make_interval(secs => $1)) \
         GROUP BY l.org_id, l.agent_id ORDER BY l.org_id, l.agent_id",
    )
    .bind(ctx.settings.presence_grace_secs as f64)
    .fetch_all(&ctx.pool)
    .await?;
    for (org_id, agent_id, leads, versions) in held {
        for (leads, versions) in leads.chunks(RELEASE_CHUNK).zip(versions.chunks(RELEASE_CHUNK)) {
            let lead_ids: Vec<String> = leads.iter().map(Uuid::to_string).collect();
            let results = handler::assign(
                ctx,
                handler::Assign {
                    org_id: org_id.clone(),
                    expected_versions: lead_ids.iter().cloned().zip(versions.iter().copied()).collect(),
                    lead_ids,
                    agent_id: None,
                    actor: SYSTEM_ACTOR.into(),
                    reason: Some(OFFLINE_REASON.into()),
                    // Only leads it still holds, at the version seen untouched.
                    on_behalf_of_agent: Some(agent_id.clone()),
                },
            )
            .await?;
            let released = results.iter().filter(|r| r.outcome == pb::BulkOutcome::Changed as i32).count();
            if released > 0 {
                tracing::info!(org_id, agent_id, released, "an offline agent's untouched leads went back to the queue");
            }
        }
    }
    Ok(())
}

/// Sets an agent's presence, which is also its heartbeat.
pub async fn set_presence(
    ctx: &AssignmentContext,
    org_id: &str,
    agent_id: &str,
    presence: Presence,
) -> Result<AgentRow, AssignmentError> {
    handler::validate_agent_id(agent_id)?;
    let updated =
        sqlx::query("UPDATE agents SET presence = $3, presence_seen_at = now() WHERE org_id = $1 AND agent_id = $2")
            .bind(org_id)
            .bind(agent_id)
            .bind(presence.as_str())
            .execute(&ctx.pool)
            .await?
            .rows_affected();
    if updated == 0 {
        return Err(AssignmentError::AgentNotFound(agent_id.to_owned()));
    }
    if presence == Presence::Available {
        ctx.wake.notify_one();
    }
    handler::get_agent(ctx, org_id, agent_id).await?.ok_or_else(|| AssignmentError::AgentNotFound(agent_id.to_owned()))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WaitingRow {
    pub lead_id: Uuid,
    pub score: Option<i32>,
    pub lead_created_at: DateTime<Utc>,
    pub queued_at: DateTime<Utc>,
    pub reserved_for: Option<String>,
    channel: Option<String>,
    source: Option<String>,
    /// The skill the lead needs under the organisation's routes.
    #[sqlx(default)]
    pub needs_skill: Option<String>,
}

/// The organisation's waiting leads in the order they are handed out, and how many there are.
pub async fn list_waiting(
    ctx: &AssignmentContext,
    org_id: &str,
    page_size: i32,
) -> Result<(Vec<WaitingRow>, i64), AssignmentError> {
    let limit = match page_size {
        0 => 100,
        n if (1..=MAX_WAITING_PAGE).contains(&n) => n,
        _ => return Err(AssignmentError::invalid("page_size", format!("must be between 0 and {MAX_WAITING_PAGE}"))),
    };
    let mut rows: Vec<WaitingRow> = sqlx::query_as(
        "SELECT w.lead_id, w.score, w.lead_created_at, w.queued_at, w.reserved_for, l.channel, l.source \
         FROM waiting_leads w LEFT JOIN lead_agents l ON l.org_id = w.org_id AND l.lead_id = w.lead_id \
         WHERE w.org_id = $1 ORDER BY w.score DESC NULLS LAST, w.lead_created_at, w.lead_id LIMIT $2",
    )
    .bind(org_id)
    .bind(i64::from(limit))
    .fetch_all(&ctx.pool)
    .await?;
    let routes = settings::of_org(&ctx.pool, org_id).await?.skill_routes;
    for row in &mut rows {
        row.needs_skill =
            routing::needed_skill(&routes, row.channel.as_deref(), row.source.as_deref()).map(str::to_owned);
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM waiting_leads WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(&ctx.pool)
        .await?;
    Ok((rows, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, load: i64, capacity: i32, last_minutes_ago: Option<i64>) -> Candidate {
        Candidate {
            agent_id: id.into(),
            capacity,
            load,
            last_assigned_at: last_minutes_ago.map(|m| Utc::now() - chrono::Duration::minutes(m)),
            available: true,
            skills: Vec::new(),
        }
    }

    fn away(mut candidate: Candidate) -> Candidate {
        candidate.available = false;
        candidate
    }

    #[test]
    fn the_agent_who_replied_comes_first_then_the_previous_one_then_the_policy() {
        let agents = [agent("ann", 0, 5, Some(60)), away(agent("bob", 1, 5, None)), agent("cy", 4, 5, Some(1))];
        let prefer = |claimed: Option<&str>, previous: Option<&str>| Preferences {
            claimed_by: claimed.map(Into::into),
            previous_agent: previous.map(Into::into),
        };
        let pick = |p: &Preferences| choose_for(Policy::Balanced, &agents, p).expect("room");
        assert_eq!(
            pick(&prefer(Some("bob"), Some("cy"))),
            Choice { agent_id: "bob".into(), reason: CLAIMED_REASON.into() }
        );
        assert_eq!(
            pick(&prefer(Some("nobody"), Some("cy"))),
            Choice { agent_id: "cy".into(), reason: STICKY_REASON.into() }
        );
        assert_eq!(pick(&prefer(None, Some("bob"))).agent_id, "ann", "the previous agent must be available");
        let full = [agent("ann", 0, 5, None), agent("cy", 5, 5, None)];
        let choice = choose_for(Policy::RoundRobin, &full, &prefer(Some("cy"), Some("cy"))).expect("ann has room");
        assert_eq!(choice.agent_id, "ann", "a full agent is passed over: {choice:?}");
        assert_eq!(choose_for(Policy::Off, &agents, &prefer(None, Some("cy"))), None);
        assert_eq!(choose_for(Policy::Off, &agents, &prefer(Some("ann"), None)).expect("claimed").agent_id, "ann");
    }

    #[test]
    fn a_lead_needing_a_skill_goes_only_to_agents_with_it_and_says_so() {
        let skilled = |mut c: Candidate| {
            c.skills = vec!["whatsapp".into()];
            c
        };
        let agents =
            [agent("ann", 0, 5, None), skilled(agent("bob", 2, 5, None)), away(skilled(agent("cy", 0, 5, None)))];
        let lead = Waiting {
            lead_id: Uuid::nil(),
            claimed_by: None,
            previous_agent: Some("ann".into()),
            taken_from: None,
            expected_version: None,
            untouched_minutes: None,
            channel: Some("whatsapp".into()),
            source: Some("chat_message".into()),
        };
        let choice = lead.choice(Policy::Balanced, &agents, Some("whatsapp")).expect("bob has the skill");
        assert_eq!(choice.agent_id, "bob", "ann lacks the skill, even as the previous agent; cy is away");
        assert_eq!(choice.reason, "balanced: 2 of 5 open, least loaded, skill whatsapp");
        assert_eq!(lead.choice(Policy::Balanced, &agents, Some("spanish")), None, "nobody has it: the lead waits");
        assert_eq!(lead.choice(Policy::Balanced, &agents, None).expect("any").reason, STICKY_REASON);
        let claimed = Waiting { claimed_by: Some("ann".into()), ..lead };
        let choice = claimed.choice(Policy::Balanced, &agents, Some("spanish")).expect("ann replied");
        assert_eq!(choice, Choice { agent_id: "ann".into(), reason: CLAIMED_REASON.into() });
    }

    #[test]
    fn an_agent_outside_its_working_hours_counts_as_away() {
        use chrono::TimeZone;
        let row = |days: Option<i16>| CandidateRow {
            agent_id: "ann".into(),
            capacity: 5,
            load: 0,
            last_assigned_at: None,
            available: true,
            skills: Vec::new(),
            utc_offset_minutes: Some(120),
            time_zone: None,
            work_days: days,
            work_start_minute: days.map(|_| 9 * 60),
            work_end_minute: days.map(|_| 17 * 60),
        };
        // Monday 2026-12-07: 08:00 UTC is 10:00 at +02:00; 16:00 UTC is 18:00.
        let morning = Utc.with_ymd_and_hms(2026, 12, 7, 8, 0, 0).unwrap();
        let evening = Utc.with_ymd_and_hms(2026, 12, 7, 16, 0, 0).unwrap();
        let weekdays = Some(0b001_1111);
        assert!(row(weekdays).at(morning).available);
        assert!(!row(weekdays).at(evening).available);
        assert!(!row(Some(0b110_0000)).at(morning).available, "a weekend-only agent on a Monday");
        assert!(row(None).at(evening).available, "no hours: always working");
    }

    #[test]
    fn round_robin_serves_the_agent_assigned_longest_ago_with_room() {
        let agents = [agent("ann", 0, 5, Some(1)), agent("bob", 4, 5, Some(10)), agent("cy", 5, 5, Some(60))];
        let choice = choose(Policy::RoundRobin, &agents).expect("bob has room");
        assert_eq!(choice.agent_id, "bob", "cy is full");
        assert_eq!(choice.reason, "round_robin: longest since last lead, 4 of 5 open");
        let never = [agent("bob", 0, 5, Some(10)), agent("ann", 0, 5, None), agent("al", 0, 5, None)];
        assert_eq!(choose(Policy::RoundRobin, &never).expect("room").agent_id, "al", "never served first, then id");
    }

    #[test]
    fn balanced_serves_the_lowest_share_of_capacity_then_longest_ago() {
        let agents = [agent("ann", 2, 5, Some(1)), agent("bob", 3, 10, Some(1)), agent("cy", 1, 2, None)];
        let choice = choose(Policy::Balanced, &agents).expect("room");
        assert_eq!(choice.agent_id, "bob", "3/10 is below 2/5 and 1/2");
        assert_eq!(choice.reason, "balanced: 3 of 10 open, least loaded");
        let tied = [agent("ann", 2, 5, Some(1)), agent("bob", 2, 5, Some(30))];
        let choice = choose(Policy::Balanced, &tied).expect("room");
        assert_eq!(choice.agent_id, "bob");
        assert_eq!(choice.reason, "balanced: 2 of 5 open, longest idle of the least loaded");
    }

    #[test]
    fn nobody_full_or_policy_off_gets_a_lead() {
        let full = [agent("ann", 5, 5, None), agent("bob", 7, 5, None)];
        assert_eq!(choose(Policy::Balanced, &full), None);
        assert_eq!(choose(Policy::RoundRobin, &full), None);
        assert_eq!(choose(Policy::Off, &[agent("ann", 0, 5, None)]), None);
    }

    #[test]
    fn presence_lapses_after_the_grace_period() {
        let grace = Duration::from_secs(90);
        let now = Utc::now();
        let seen = |secs| Some(now - chrono::Duration::seconds(secs));
        assert_eq!(Presence::effective("available", seen(10), grace, now), Presence::Available);
        assert_eq!(Presence::effective("away", seen(10), grace, now), Presence::Away);
        assert_eq!(Presence::effective("available", seen(91), grace, now), Presence::Offline);
        assert_eq!(Presence::effective("available", None, grace, now), Presence::Offline);
        assert_eq!(Presence::effective("offline", seen(1), grace, now), Presence::Offline);
    }
}
