//! AI scores from the qualification service. The newest score (by the score's own version)
//! of each lead is offered to `lifecycle::decide`, which refuses an inactive lead and leaves
//! a lead scored by hand unchanged; what it allows is written. A batch of scores is applied
//! with a fixed number of statements whatever its size, its leads locked in id order like
//! every other writer of leads, and its `score_changed` events leave batched by organisation
//! (`SCORES_APPLIED`). Where the organisation set score thresholds (`StatusRules`), the leads
//! that reach one move on in the same transaction.

use crate::{
    LeadContext,
    apply::{column, lead_envelope},
    error::LeadError,
    lifecycle::{self, Act, RuleMove, RuleSubject, Transition, Trigger, rule_move},
    model::LEAD_VIEW_COLUMNS,
    rules, settings,
};
use contracts::lead::{LeadChange, LeadView, SCORES_APPLIED, ScoreSource, Status};
use contracts::{Envelope, qualification::Scored};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What deciding on a score reads of its lead, under the lead's lock.
#[derive(Debug, sqlx::FromRow)]
struct ScoredLead {
    id: Uuid,
    org_id: String,
    #[sqlx(try_from = "String")]
    status: Status,
    score_source: Option<ScoreSource>,
    score_version: i64,
    held_by_hand: bool,
}

pub async fn apply_scores(ctx: &LeadContext, batch: &[Envelope<Scored>]) -> Result<(), LeadError> {
    // Only the newest score of each lead in the batch matters.
    let mut newest: HashMap<(&str, Uuid), &Envelope<Scored>> = HashMap::new();
    for envelope in batch {
        let score = &envelope.data;
        if !(0..=100).contains(&score.score) {
            tracing::warn!(lead_id = %score.lead_id, score = score.score, "score out of range ignored");
            continue;
        }
        let key = (envelope.org_id.as_str(), score.lead_id);
        if newest.get(&key).is_none_or(|seen| seen.version < envelope.version) {
            newest.insert(key, envelope);
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let keys: Vec<(&str, Uuid)> = newest.keys().copied().collect();
    let mut tx = ctx.pool.begin().await?;
    let leads: Vec<ScoredLead> = sqlx::query_as(
        "SELECT l.id, l.org_id, l.status, l.score_source, l.score_version, \
           coalesce(l.status_set_by_hand_at > l.last_interaction_at, false) AS held_by_hand \
         FROM leads l JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) \
           ON l.org_id = k.org_id AND l.id = k.lead_id \
         ORDER BY l.id FOR UPDATE OF l",
    )
    .bind(column(&keys, |k| k.0))
    .bind(column(&keys, |k| k.1))
    .fetch_all(&mut *tx)
    .await?;
    // A score older than the one the lead has is a redelivery or arrived out of order.
    let allowed: Vec<&Envelope<Scored>> = leads
        .iter()
        .filter_map(|lead| {
            let envelope = *newest.get(&(lead.org_id.as_str(), lead.id))?;
            let act = Act::AiScore { scored_by: lead.score_source };
            let applies = matches!(lifecycle::decide(lead.status, act), Ok(Transition::Stays(_)));
            (applies && lead.score_version < envelope.version).then_some(envelope)
        })
        .collect();
    if allowed.is_empty() {
        tx.rollback().await?;
        return Ok(());
    }
    let actors: HashMap<Uuid, String> =
        allowed.iter().map(|e| (e.data.lead_id, format!("qualification ({})", e.data.model_version))).collect();
    // The leads and their score changes in one statement: the rows are locked and decided.
    let updated: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH k AS ( \
           SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::bigint[], $5::jsonb[], $6::text[]) \
             AS k(org_id, lead_id, score, version, reasons, actor) \
         ), l AS ( \
           UPDATE leads SET score = k.score, score_source = $7, score_version = k.version, score_reasons = k.reasons, \
             version = leads.version + 1, updated_at = now() \
           FROM k WHERE leads.org_id = k.org_id AND leads.id = k.lead_id RETURNING leads.* \
         ), changes AS ( \
           INSERT INTO score_changes (org_id, lead_id, score, source, reasons, actor) \
           SELECT k.org_id, k.lead_id, k.score, $7, k.reasons, k.actor FROM k \
         ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id ORDER BY l.id"
    )))
    .bind(column(&allowed, |e| e.org_id.as_str()))
    .bind(column(&allowed, |e| e.data.lead_id))
    .bind(column(&allowed, |e| e.data.score))
    .bind(column(&allowed, |e| e.version))
    .bind(column(&allowed, |e| sqlx::types::Json(&e.data.reasons)))
    .bind(column(&allowed, |e| actors[&e.data.lead_id].as_str()))
    .bind(ScoreSource::Ai.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let events = updated.iter().map(|lead| {
        let change =
            LeadChange::ScoreChanged { score: lead.score, source: ScoreSource::Ai, actor: actors[&lead.id].clone() };
        (lead.org_id.as_str(), lead_envelope(lead, change))
    });
    let mut messages = platform::outbox::batched_by_org(events, SCORES_APPLIED, |org_id| {
        ctx.subjects.event("lead", org_id, SCORES_APPLIED)
    });
    // The organisations' score thresholds, on the leads as the scores left them.
    let orgs: Vec<&str> = updated.iter().map(|l| l.org_id.as_str()).collect::<HashSet<_>>().into_iter().collect();
    let rules = settings::rules_of(&mut *tx, &orgs).await?;
    let held: HashSet<Uuid> = leads.iter().filter(|l| l.held_by_hand).map(|l| l.id).collect();
    let moves: Vec<(Uuid, RuleMove)> = updated
        .iter()
        .filter_map(|lead| {
            let (rules, score) = (rules.get(&lead.org_id)?, lead.score?);
            let subject = RuleSubject { status: lead.status, held_by_hand: held.contains(&lead.id) };
            rule_move(rules, subject, Trigger::AiScore(score)).map(|m| (lead.id, m))
        })
        .collect();
    rules::write_moves(ctx, &mut tx, &moves, &mut messages).await?;
    Ok(platform::outbox::commit(tx, &messages, &ctx.outbox).await?)
}
