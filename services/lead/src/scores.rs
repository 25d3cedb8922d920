//! AI scores from the qualification service. The newest score (by the score's own version)
//! of an active lead is applied, unless an operator has set the score by hand. A batch of
//! scores is applied with a fixed number of statements whatever its size, its leads locked
//! in id order like every other writer of leads, and its `score_changed` events leave
//! batched by organisation (`SCORES_APPLIED`).

use crate::{LeadContext, apply::lead_envelope, error::LeadError, model::LEAD_VIEW_COLUMNS};
use contracts::lead::{LeadChange, LeadView, SCORES_APPLIED};
use contracts::{Envelope, qualification::Scored};
use std::collections::HashMap;
use uuid::Uuid;

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
    let orgs: Vec<&str> = newest.keys().map(|k| k.0).collect();
    let ids: Vec<Uuid> = newest.keys().map(|k| k.1).collect();
    let scores: Vec<i32> = newest.values().map(|e| e.data.score).collect();
    let versions: Vec<i64> = newest.values().map(|e| e.version).collect();
    let mut tx = ctx.pool.begin().await?;
    let updated: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH k AS ( \
           SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::bigint[]) AS k(org_id, lead_id, score, version) \
         ), newer AS ( \
           SELECT l.id, k.score, k.version FROM leads l JOIN k ON l.org_id = k.org_id AND l.id = k.lead_id \
           WHERE l.active AND l.score_version < k.version AND l.score_source IS DISTINCT FROM 'manual' \
           ORDER BY l.id FOR UPDATE OF l \
         ), l AS ( \
           UPDATE leads SET score = newer.score, score_source = 'ai', score_version = newer.version, \
             version = leads.version + 1, updated_at = now() \
           FROM newer WHERE leads.id = newer.id RETURNING leads.* \
         ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id ORDER BY l.id"
    )))
    .bind(&orgs)
    .bind(&ids)
    .bind(&scores)
    .bind(&versions)
    .fetch_all(&mut *tx)
    .await?;
    if updated.is_empty() {
        return Ok(());
    }
    let applied: Vec<(&LeadView, &Envelope<Scored>)> =
        updated.iter().filter_map(|lead| Some((lead, *newest.get(&(lead.org_id.as_str(), lead.id))?))).collect();
    let actors: Vec<String> =
        applied.iter().map(|(_, e)| format!("qualification ({})", e.data.model_version)).collect();
    sqlx::query(
        "INSERT INTO score_changes (org_id, lead_id, score, source, reasons, actor) \
         SELECT o, l, s, 'ai', r, a FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::jsonb[], $5::text[]) \
           AS t(o, l, s, r, a)",
    )
    .bind(applied.iter().map(|(lead, _)| lead.org_id.as_str()).collect::<Vec<_>>())
    .bind(applied.iter().map(|(lead, _)| lead.id).collect::<Vec<_>>())
    .bind(applied.iter().map(|(_, e)| e.data.score).collect::<Vec<_>>())
    .bind(applied.iter().map(|(_, e)| sqlx::types::Json(&e.data.reasons)).collect::<Vec<_>>())
    .bind(&actors)
    .execute(&mut *tx)
    .await?;
    let events = applied.iter().zip(actors).map(|((lead, envelope), actor)| {
        let change = LeadChange::ScoreChanged { score: Some(envelope.data.score), source: "ai".into(), actor };
        (lead.org_id.as_str(), lead_envelope(lead, change))
    });
    let messages = platform::outbox::batched_by_org(events, SCORES_APPLIED, |org_id| {
        ctx.subjects.event("lead", org_id, SCORES_APPLIED)
    });
    crate::apply::commit_with_events(ctx, tx, &messages).await
}
