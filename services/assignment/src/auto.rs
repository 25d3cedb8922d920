//! Automatic assignment: with an organisation's policy on, each new active unassigned lead
//! waits in `waiting_leads` until an available agent with room takes it, highest score first,
//! then oldest.
//!
//! Capacity holds under any number of processes: an organisation's next lead is chosen and its
//! agent's slot reserved (the waiting row's `reserved_for`) in one transaction under the
//! organisation's advisory lock, an agent's load being its active leads in the `lead_agents`
//! projection plus the leads reserved for it. Only then is the lead service asked; its answer
//! turns the reservation into a held lead (in one transaction, so the slot is never counted
//! zero times) or releases it. A reservation whose process died is settled from the lead
//! service's answer after `reservation_timeout_secs`. There is no counter to drift: the load
//! is counted from the projection each time.

use crate::{
    AssignmentContext,
    error::AssignmentError,
    handler::{self, AgentRow, LeadHolder, Presence, Recorded},
    settings::{self, Policy},
};
use chrono::{DateTime, Utc};
use contracts::Envelope;
use contracts::lead::{LeadChange, LeadEvent};
use leads_proto::v1 as pb;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Who the lead's history names for an assignment made by the platform.
pub const SYSTEM_ACTOR: &str = "system";
/// Leads an organisation is handed in one go before the others get their turn.
const LEADS_PER_TURN: usize = 200;
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
    let created: Vec<&Envelope<LeadEvent>> = events
        .iter()
        .filter(|e| matches!(e.data.change, LeadChange::Created { .. }))
        .filter(|e| e.data.lead.active && e.data.lead.agent_id.is_none())
        .collect();
    let mut tx = ctx.pool.begin().await?;
    handler::upsert_holders(&mut tx, &holders).await?;
    // Whoever holds the lead now, at the newest version seen, decides: a lead assigned or
    // closed before its creation was read does not wait.
    let queued = sqlx::query(
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
    .rows_affected();
    // Deleting a reservation here moves its slot to the holder written above, in one commit.
    let left = sqlx::query(
        "DELETE FROM waiting_leads w USING lead_agents l \
         WHERE l.org_id = w.org_id AND l.lead_id = w.lead_id AND (l.agent_id IS NOT NULL OR NOT l.active) \
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
    if queued > 0 || left > 0 || freed {
        ctx.wake.notify_one();
    }
    Ok(())
}

/// An agent who may take a lead now, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Candidate {
    pub agent_id: String,
    pub capacity: i32,
    /// Active leads held plus leads being handed to it.
    pub load: i64,
    pub last_assigned_at: Option<DateTime<Utc>>,
}

/// Who gets the next lead and why, in words for the lead's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub agent_id: String,
    pub reason: String,
}

/// The policy's pick among the agents with room; `None` when nobody has room. Never assigned
/// counts as longest ago.
pub fn choose(policy: Policy, candidates: &[Candidate]) -> Option<Choice> {
    let with_room: Vec<&Candidate> = candidates.iter().filter(|c| c.load < i64::from(c.capacity)).collect();
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

/// A waiting lead reserved for an agent, until the lead service answers.
#[derive(Debug, Clone)]
struct Reservation {
    org_id: String,
    lead_id: Uuid,
    agent_id: String,
    reserved_at: DateTime<Utc>,
    reason: String,
}

/// Chooses the organisation's next waiting lead and its agent and reserves the slot, under the
/// organisation's lock; `None` when nothing waits, nobody has room, or the policy is off.
async fn reserve_next(ctx: &AssignmentContext, org_id: &str) -> Result<Option<Reservation>, AssignmentError> {
    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assignment dispatch ' || $1, 0))")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let settings = settings::of_org(&mut *tx, org_id).await?;
    if settings.policy == Policy::Off {
        return Ok(None);
    }
    let lead: Option<Uuid> = sqlx::query_scalar(
        "SELECT lead_id FROM waiting_leads WHERE org_id = $1 AND reserved_for IS NULL \
         ORDER BY score DESC NULLS LAST, lead_created_at, lead_id LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(lead_id) = lead else { return Ok(None) };
    let candidates: Vec<Candidate> = sqlx::query_as(
        "SELECT a.agent_id, coalesce(a.capacity, $2) AS capacity, a.last_assigned_at, \
           (SELECT count(*) FROM ( \
              SELECT l.lead_id FROM lead_agents l WHERE l.org_id = a.org_id AND l.agent_id = a.agent_id AND l.active \
              UNION SELECT w.lead_id FROM waiting_leads w WHERE w.org_id = a.org_id AND w.reserved_for = a.agent_id \
            ) held) AS load \
         FROM agents a \
         WHERE a.org_id = $1 AND a.active AND a.presence = 'available' \
           AND a.presence_seen_at > now() - make_interval(secs => $3)",
    )
    .bind(org_id)
    .bind(settings.default_capacity)
    .bind(ctx.settings.presence_grace_secs as f64)
    .fetch_all(&mut *tx)
    .await?;
    let Some(choice) = choose(settings.policy, &candidates) else { return Ok(None) };
    // Stamped now rather than when the lead service answers, so that the next choice, in this
    // process or another, already sees this agent as the most recently served.
    let reserved_at: DateTime<Utc> = sqlx::query_scalar(
        "WITH reserved AS ( \
           UPDATE waiting_leads SET reserved_for = $3, reserved_at = now() WHERE org_id = $1 AND lead_id = $2 \
           RETURNING reserved_at \
         ), stamped AS ( \
           UPDATE agents SET last_assigned_at = now() WHERE org_id = $1 AND agent_id = $3 \
         ) SELECT reserved_at FROM reserved",
    )
    .bind(org_id)
    .bind(lead_id)
    .bind(&choice.agent_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Reservation {
        org_id: org_id.to_owned(),
        lead_id,
        agent_id: choice.agent_id,
        reserved_at,
        reason: choice.reason,
    }))
}

/// Hands out the organisation's waiting leads while agents have room.
async fn dispatch_org(ctx: &AssignmentContext, org_id: &str, token: &CancellationToken) -> Result<(), AssignmentError> {
    for _ in 0..LEADS_PER_TURN {
        if token.is_cancelled() {
            break;
        }
        let Some(reservation) = platform::error::retry_transient(|| reserve_next(ctx, org_id)).await? else { break };
        hand_over(ctx, &reservation).await?;
    }
    Ok(())
}

/// Asks the lead service to assign the reserved lead, then turns the reservation into a held
/// lead or releases it.
async fn hand_over(ctx: &AssignmentContext, r: &Reservation) -> Result<(), AssignmentError> {
    let mut request = tonic::Request::new(pb::AssignLeadsRequest {
        org_id: r.org_id.clone(),
        lead_ids: vec![r.lead_id.to_string()],
        agent_id: r.agent_id.clone(),
        actor: SYSTEM_ACTOR.into(),
        reason: r.reason.clone(),
        // Only a lead still unassigned (or already this agent's) is assigned: one a person
        // gave someone else meanwhile answers NOT_FOUND and stays theirs.
        on_behalf_of_agent: r.agent_id.clone(),
        expected_versions: Default::default(),
    });
    request.set_timeout(ctx.call_timeout());
    let answer = match ctx.lead.clone().assign_leads(request).await {
        Ok(answer) => answer.into_inner().results.into_iter().next(),
        Err(status) => {
            // It may have been assigned before the answer was lost: the lead service knows.
            tracing::warn!(org_id = %r.org_id, lead_id = %r.lead_id, agent_id = %r.agent_id, error = %status,
                "automatic assignment unanswered, settling it from the lead");
            return settle_from_lead(ctx, r).await;
        }
    };
    let Some(result) = answer else {
        return Err(AssignmentError::Protocol("AssignLeads answered no result".into()));
    };
    let answer = match pb::BulkOutcome::try_from(result.outcome) {
        Ok(outcome @ (pb::BulkOutcome::Changed | pb::BulkOutcome::Unchanged)) => Answer::Held {
            changed: outcome == pb::BulkOutcome::Changed,
            version: result.lead_version,
            at: result.at.as_ref().and_then(contracts::time::from_timestamp).unwrap_or_else(Utc::now),
        },
        // Someone else's by now, or closed: it waits no more.
        Ok(pb::BulkOutcome::NotFound | pb::BulkOutcome::Inactive) => Answer::Gone,
        _ => Answer::Release,
    };
    platform::error::retry_transient(|| apply_answer(ctx, r, &answer)).await?;
    if let Answer::Held { changed: true, .. } = answer {
        tracing::info!(org_id = %r.org_id, lead_id = %r.lead_id, agent_id = %r.agent_id, reason = %r.reason,
            "lead assigned automatically");
    }
    Ok(())
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

async fn apply_answer(ctx: &AssignmentContext, r: &Reservation, answer: &Answer) -> Result<(), AssignmentError> {
    let mut tx = ctx.pool.begin().await?;
    match *answer {
        Answer::Held { changed: true, version, at } => {
            let held = Recorded {
                org_id: r.org_id.clone(),
                lead_id: r.lead_id,
                lead_version: version,
                agent_id: Some(r.agent_id.clone()),
                previous_agent_id: None,
                actor: SYSTEM_ACTOR.into(),
                reason: Some(r.reason.clone()),
                at,
                active: true,
            };
            handler::record_assignments_in(&mut tx, vec![held]).await?;
            forget(&mut tx, r).await?;
        }
        Answer::Held { changed: false, version, .. } => {
            let holder = LeadHolder {
                org_id: r.org_id.clone(),
                lead_id: r.lead_id,
                agent_id: Some(r.agent_id.clone()),
                active: true,
                version,
            };
            handler::upsert_holders(&mut tx, &[holder]).await?;
            forget(&mut tx, r).await?;
        }
        Answer::Gone => forget(&mut tx, r).await?,
        Answer::Release => {
            sqlx::query(
                "UPDATE waiting_leads SET reserved_for = NULL, reserved_at = NULL \
                 WHERE org_id = $1 AND lead_id = $2 AND reserved_for = $3 AND reserved_at = $4",
            )
            .bind(&r.org_id)
            .bind(r.lead_id)
            .bind(&r.agent_id)
            .bind(r.reserved_at)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The lead waits no more.
async fn forget(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, r: &Reservation) -> Result<(), AssignmentError> {
    sqlx::query("DELETE FROM waiting_leads WHERE org_id = $1 AND lead_id = $2")
        .bind(&r.org_id)
        .bind(r.lead_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Settles a reservation whose hand-over went unanswered from the lead as the lead service
/// has it: held by an agent (who is recorded as holding it in the same commit that ends the
/// reservation), closed or gone, or still unassigned (waiting again).
async fn settle_from_lead(ctx: &AssignmentContext, r: &Reservation) -> Result<(), AssignmentError> {
    let mut request =
        tonic::Request::new(pb::GetLeadRequest { org_id: r.org_id.clone(), lead_id: r.lead_id.to_string() });
    request.set_timeout(ctx.call_timeout());
    let lead = match ctx.lead.clone().get_lead(request).await {
        Ok(lead) => Some(lead.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return Err(status.into()),
    };
    let answer = match lead {
        Some(lead) if lead.active && lead.agent_id.is_empty() => Answer::Release,
        Some(lead) if !lead.agent_id.is_empty() => {
            // Held by someone: recorded as held (closed or not) in the commit that ends the
            // reservation, the history left to the lead's events.
            let holder = LeadHolder {
                org_id: r.org_id.clone(),
                lead_id: r.lead_id,
                agent_id: Some(lead.agent_id),
                active: lead.active,
                version: lead.version,
            };
            return platform::error::retry_transient(|| async {
                let mut tx = ctx.pool.begin().await?;
                handler::upsert_holders(&mut tx, std::slice::from_ref(&holder)).await?;
                forget(&mut tx, r).await?;
                tx.commit().await?;
                Ok::<_, AssignmentError>(())
            })
            .await;
        }
        Some(_) | None => Answer::Gone,
    };
    platform::error::retry_transient(|| apply_answer(ctx, r, &answer)).await
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
        let r = Reservation { org_id, lead_id, agent_id, reserved_at, reason: String::new() };
        tracing::warn!(org_id = %r.org_id, lead_id = %r.lead_id, agent_id = %r.agent_id, "settling a stale reservation");
        settle_from_lead(ctx, &r).await?;
    }
    Ok(())
}

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
    loop {
        if tokio::time::Instant::now() >= next_sweep {
            if let Err(error) = settle_stale(&ctx).await {
                tracing::warn!(%error, "stale reservations not settled yet");
            }
            next_sweep = tokio::time::Instant::now() + sweep;
        }
        if let Err(error) = dispatch_all(&ctx, &token).await {
            tracing::warn!(%error, "automatic assignment interrupted, trying again");
        }
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = ctx.wake.notified() => {}
            () = tokio::time::sleep_until(next_sweep) => {}
        }
    }
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
    let rows = sqlx::query_as(
        "SELECT lead_id, score, lead_created_at, queued_at, reserved_for FROM waiting_leads WHERE org_id = $1 \
         ORDER BY score DESC NULLS LAST, lead_created_at, lead_id LIMIT $2",
    )
    .bind(org_id)
    .bind(i64::from(limit))
    .fetch_all(&ctx.pool)
    .await?;
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
        }
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
