//! AI scores from the qualification service. The newest score (by the score's own version)
//! of an active lead is applied, unless an operator has set the score by hand.

use crate::{LeadContext, apply::lead_event, error::LeadError, model::LEAD_VIEW_COLUMNS};
use contracts::lead::{LeadChange, LeadView};
use contracts::{Envelope, qualification::Scored};
use std::collections::HashMap;
use uuid::Uuid;

pub async fn apply_scores(ctx: &LeadContext, batch: &[Envelope<Scored>]) -> Result<(), LeadError> {
    // Only the newest score of each lead in the batch matters.
    let mut newest: HashMap<(&str, Uuid), &Envelope<Scored>> = HashMap::new();
    for envelope in batch {
        let key = (envelope.org_id.as_str(), envelope.data.lead_id);
        if newest.get(&key).is_none_or(|seen| seen.version < envelope.version) {
            newest.insert(key, envelope);
        }
    }
    let mut ordered: Vec<&Envelope<Scored>> = newest.into_values().collect();
    ordered.sort_by_key(|e| e.data.lead_id);
    let mut tx = ctx.pool.begin().await?;
    let mut messages = Vec::new();
    for envelope in ordered {
        let score = &envelope.data;
        if !(0..=100).contains(&score.score) {
            tracing::warn!(lead_id = %score.lead_id, score = score.score, "score out of range ignored");
            continue;
        }
        let updated: Option<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH l AS ( \
               UPDATE leads SET score = $3, score_source = 'ai', score_version = $4, version = version + 1, \
                 updated_at = now() \
               WHERE org_id = $1 AND id = $2 AND active AND score_version < $4 \
                 AND score_source IS DISTINCT FROM 'manual' RETURNING * \
             ) SELECT {LEAD_VIEW_COLUMNS} FROM l JOIN contacts c ON c.id = l.contact_id"
        )))
        .bind(&envelope.org_id)
        .bind(score.lead_id)
        .bind(score.score)
        .bind(envelope.version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(lead) = updated else { continue };
        let actor = format!("qualification ({})", score.model_version);
        sqlx::query(
            "INSERT INTO score_changes (org_id, lead_id, score, source, reasons, actor) VALUES ($1, $2, $3, 'ai', $4, $5)",
        )
        .bind(&envelope.org_id)
        .bind(score.lead_id)
        .bind(score.score)
        .bind(sqlx::types::Json(&score.reasons))
        .bind(&actor)
        .execute(&mut *tx)
        .await?;
        messages.push(lead_event(
            ctx,
            &lead,
            LeadChange::ScoreChanged { score: Some(score.score), source: "ai".into(), actor },
        ));
    }
    crate::apply::commit_with_events(ctx, tx, &messages).await
}
