//! Where the organisations' status rules act: the moves `lifecycle::rule_move` decides are
//! written here, in the transaction of the change that set them off (an AI score, a
//! follow-up), with actor `system` and the rule's name in the history; and idle leads are
//! archived by a sweep every lead process runs.

use crate::{
    LeadContext,
    apply::{SYSTEM_ACTOR, column, lead_event},
    error::LeadError,
    lifecycle::{RuleMove, RuleSubject, StatusRules, Trigger, rule_move},
    model::LEAD_VIEW_COLUMNS,
};
use chrono::{DateTime, Duration, Utc};
use contracts::lead::{LeadChange, LeadView, Status};
use platform::outbox::OutboxMessage;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the rules read of a lead, under its lock: `held_by_hand` is true when a person set its
/// status after its last interaction.
pub const RULE_SUBJECT_COLUMNS: &str = "l.status, \
     coalesce(l.status_set_by_hand_at > l.last_interaction_at, false) AS held_by_hand";

/// Writes the rules' moves of leads the transaction holds locked, records each in the history
/// and queues its `status_changed` event; answers the leads as they now are.
pub async fn write_moves(
    ctx: &LeadContext,
    tx: &mut Transaction<'_, Postgres>,
    moves: &[(Uuid, RuleMove)],
    messages: &mut Vec<OutboxMessage>,
) -> Result<Vec<LeadView>, LeadError> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let moved: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH k AS (SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS k(lead_id, to_status)), \
         l AS ( \
           UPDATE leads SET status = k.to_status, version = leads.version + 1, updated_at = now() \
           FROM k WHERE leads.id = k.lead_id RETURNING leads.* \
         ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id ORDER BY l.id"
    )))
    .bind(column(moves, |(id, _)| *id))
    .bind(column(moves, |(_, m)| m.to.as_str()))
    .fetch_all(&mut **tx)
    .await?;
    let by_id: std::collections::HashMap<Uuid, &RuleMove> = moves.iter().map(|(id, m)| (*id, m)).collect();
    sqlx::query(
        "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, rule, lead_version) \
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                              $8::bigint[])",
    )
    .bind(column(&moved, |l| l.org_id.as_str()))
    .bind(column(&moved, |l| l.id))
    .bind(column(&moved, |l| by_id[&l.id].from.as_str()))
    .bind(column(&moved, |l| by_id[&l.id].to.as_str()))
    .bind(column(&moved, |_| SYSTEM_ACTOR))
    .bind(column(&moved, |l| by_id[&l.id].reason.as_str()))
    .bind(column(&moved, |l| by_id[&l.id].rule.as_str()))
    .bind(column(&moved, |l| l.version))
    .execute(&mut **tx)
    .await?;
    for lead in &moved {
        let decided = by_id[&lead.id];
        let change = LeadChange::StatusChanged {
            from: decided.from.as_str().into(),
            to: decided.to.as_str().into(),
            actor: SYSTEM_ACTOR.into(),
            reason: Some(decided.reason.clone()),
            rule: Some(decided.rule.as_str().into()),
        };
        messages.push(lead_event(&ctx.subjects, lead, change));
    }
    metrics::counter!(platform::telemetry::names::LEAD_RULE_MOVES, "service" => "lead").increment(moved.len() as u64);
    Ok(moved)
}

/// Moves leads of `org_id` whose last follow-up just closed on, where the rule says so. The
/// leads must be locked by the transaction.
pub async fn after_follow_ups_closed(
    ctx: &LeadContext,
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    rules: &StatusRules,
    lead_ids: &[Uuid],
    messages: &mut Vec<OutboxMessage>,
) -> Result<(), LeadError> {
    // The leads with no follow-up still open, with the status each had before its last move
    // to Follow-up.
    let rows: Vec<(Uuid, String, bool, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT l.id, {RULE_SUBJECT_COLUMNS}, \
           (SELECT s.from_status FROM status_changes s WHERE s.lead_id = l.id AND s.to_status = 'follow_up' \
             ORDER BY s.id DESC LIMIT 1) \
         FROM leads l WHERE l.org_id = $1 AND l.id = ANY($2) AND NOT EXISTS ( \
           SELECT 1 FROM follow_up_entries p WHERE p.lead_id = l.id AND p.state = 'pending' AND NOT EXISTS ( \
             SELECT 1 FROM follow_up_entries e WHERE e.follow_up_id = p.follow_up_id \
               AND e.state IN ('completed', 'cancelled'))) \
         ORDER BY l.id"
    )))
    .bind(org_id)
    .bind(lead_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut moves = Vec::new();
    for (id, status, held_by_hand, before) in rows {
        let lead = RuleSubject { status: Status::try_from(status)?, held_by_hand };
        let before = before.and_then(|s| Status::try_from(s).ok());
        if let Some(decided) = rule_move(rules, lead, Trigger::LastFollowUpClosed { before }) {
            moves.push((id, decided));
        }
    }
    write_moves(ctx, tx, &moves, messages).await?;
    Ok(())
}

/// Leads archived per transaction by the idle sweep.
const ARCHIVE_BATCH: i64 = 500;

/// Archives the idle leads of every organisation whose rule is on, every `interval`, until
/// `token` fires. Several processes may sweep at once: each takes leads the others do not
/// hold (SKIP LOCKED).
pub async fn archive_idle_until(
    ctx: LeadContext,
    interval: std::time::Duration,
    token: CancellationToken,
) -> anyhow::Result<()> {
    platform::shutdown::every(interval, token, "idle lead sweep", || async {
        let archived = archive_idle(&ctx, Utc::now()).await?;
        if archived > 0 {
            tracing::info!(archived, "idle leads archived");
        }
        Ok::<_, LeadError>(())
    })
    .await
}

/// Archives, as of `now`, every active lead whose organisation archives idle leads and which
/// has been idle that long; answers how many.
pub async fn archive_idle(ctx: &LeadContext, now: DateTime<Utc>) -> Result<u64, LeadError> {
    let orgs: Vec<(String, sqlx::types::Json<StatusRules>)> = sqlx::query_as(
        "SELECT org_id, status_rules FROM org_settings WHERE status_rules ? 'archive_after_days' \
           AND status_rules ->> 'archive_after_days' IS NOT NULL",
    )
    .fetch_all(&ctx.pool)
    .await?;
    let mut archived = 0;
    for (org_id, sqlx::types::Json(rules)) in orgs {
        let Some(days) = rules.archive_after_days else { continue };
        let idle_since = now - Duration::days(i64::from(days));
        loop {
            let done = archive_idle_batch(ctx, &org_id, &rules, idle_since).await?;
            archived += done.moved;
            if done.seen < ARCHIVE_BATCH as usize {
                break;
            }
        }
    }
    Ok(archived)
}

struct SweepBatch {
    seen: usize,
    moved: u64,
}

async fn archive_idle_batch(
    ctx: &LeadContext,
    org_id: &str,
    rules: &StatusRules,
    idle_since: DateTime<Utc>,
) -> Result<SweepBatch, LeadError> {
    let mut tx = ctx.pool.begin().await?;
    // By status, so each active status's index range is read; a lead held by hand is left out
    // here rather than read again on every sweep.
    let rows: Vec<(Uuid, RuleSubject)> = sqlx::query_as::<_, (Uuid, String, bool)>(sqlx::AssertSqlSafe(format!(
        "SELECT l.id, {RULE_SUBJECT_COLUMNS} FROM leads l \
         WHERE l.org_id = $1 AND l.status = ANY($2) AND l.last_interaction_at < $3 \
           AND NOT coalesce(l.status_set_by_hand_at > l.last_interaction_at, false) \
         ORDER BY l.id LIMIT $4 FOR UPDATE SKIP LOCKED"
    )))
    .bind(org_id)
    .bind(Status::ALL.iter().filter(|s| !s.is_final()).map(|s| s.as_str()).collect::<Vec<_>>())
    .bind(idle_since)
    .bind(ARCHIVE_BATCH)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, status, held_by_hand)| Ok((id, RuleSubject { status: Status::try_from(status)?, held_by_hand })))
    .collect::<Result<_, LeadError>>()?;
    let seen = rows.len();
    let moves: Vec<(Uuid, RuleMove)> =
        rows.iter().filter_map(|(id, lead)| rule_move(rules, *lead, Trigger::Idle).map(|m| (*id, m))).collect();
    let mut messages = Vec::with_capacity(moves.len());
    let moved = write_moves(ctx, &mut tx, &moves, &mut messages).await?.len() as u64;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(SweepBatch { seen, moved })
}
