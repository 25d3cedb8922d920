//! Keeps the features of every lead from the lead service's events and scores the leads
//! whose features changed. Scores go out through the outbox as
//! `events.qualification.<org>.scored`; the lead service applies the newest and keeps a
//! manual score over any of them.

use crate::scoring::{self, Features, MODEL_VERSION};
use chrono::Utc;
use contracts::lead::{LeadChange, LeadEvent};
use contracts::{
    Envelope,
    qualification::{SCORED, Scored},
};
use platform::{
    nats::Subjects,
    outbox::{OutboxMessage, OutboxSignal},
};

use sqlx::{PgPool, Postgres, Transaction};
use std::collections::BTreeSet;
use uuid::Uuid;

#[derive(Clone)]
pub struct QualificationContext {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub outbox: OutboxSignal,
}

#[derive(Debug, thiserror::Error)]
pub enum QualificationError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("lead {0} has not been qualified")]
    NotFound(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl QualificationError {
    pub fn is_transient(&self) -> bool {
        matches!(self, QualificationError::Database(error) if platform::error::is_transient(error))
    }
}

impl platform::error::ServiceError for QualificationError {
    fn code(&self) -> tonic::Code {
        match self {
            QualificationError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            QualificationError::NotFound(_) => tonic::Code::NotFound,
            QualificationError::Database(error) => platform::error::sql_code(error),
        }
    }
}

impl From<QualificationError> for tonic::Status {
    fn from(error: QualificationError) -> Self {
        platform::error::to_status("qualification", &error)
    }
}

pub async fn apply_lead_events(
    ctx: &QualificationContext,
    batch: &[Envelope<LeadEvent>],
) -> Result<(), QualificationError> {
    platform::error::retry_transient(QualificationError::is_transient, || try_apply(ctx, batch)).await
}

async fn try_apply(ctx: &QualificationContext, batch: &[Envelope<LeadEvent>]) -> Result<(), QualificationError> {
    let mut tx = ctx.pool.begin().await?;
    let mut touched = BTreeSet::new();
    for envelope in batch {
        let lead = &envelope.data.lead;
        let manual_score = (lead.score_source.as_deref() == Some("manual")).then_some(lead.score).flatten();
        sqlx::query(
            "INSERT INTO lead_features (org_id, lead_id, lead_version, active, source_kind, has_name, has_email, \
               manual_score) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (org_id, lead_id) DO UPDATE SET lead_version = EXCLUDED.lead_version, \
               active = EXCLUDED.active, has_name = EXCLUDED.has_name, has_email = EXCLUDED.has_email, \
               manual_score = EXCLUDED.manual_score \
             WHERE lead_features.lead_version < EXCLUDED.lead_version",
        )
        .bind(&envelope.org_id)
        .bind(lead.id)
        .bind(envelope.version)
        .bind(lead.active)
        .bind(&lead.source_kind)
        .bind(lead.name.is_some())
        .bind(lead.email.is_some())
        .bind(manual_score)
        .execute(&mut *tx)
        .await?;
        let interaction = match &envelope.data.change {
            LeadChange::Created { interaction } | LeadChange::InteractionRecorded { interaction } => interaction,
            _ => continue,
        };
        let fresh =
            sqlx::query("INSERT INTO scored_interactions (org_id, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&envelope.org_id)
                .bind(&interaction.event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !fresh {
            continue;
        }
        let inbound = interaction.direction == "inbound";
        let signals = match (&interaction.text, inbound) {
            (Some(text), true) => scoring::signals(text),
            _ => scoring::TextSignals::default(),
        };
        sqlx::query(
            "UPDATE lead_features SET inbound_count = inbound_count + $3, outbound_count = outbound_count + $4, \
               pricing_hits = pricing_hits + $5, intent_hits = intent_hits + $6, urgency_hits = urgency_hits + $7, \
               negative_hits = negative_hits + $8, \
               last_interaction_at = greatest(last_interaction_at, $9) \
             WHERE org_id = $1 AND lead_id = $2",
        )
        .bind(&envelope.org_id)
        .bind(lead.id)
        .bind(i32::from(inbound))
        .bind(i32::from(!inbound))
        .bind(i32::from(signals.pricing))
        .bind(i32::from(signals.intent))
        .bind(i32::from(signals.urgency))
        .bind(i32::from(signals.negative))
        .bind(interaction.occurred_at)
        .execute(&mut *tx)
        .await?;
        touched.insert((envelope.org_id.clone(), lead.id));
    }
    let mut messages = Vec::new();
    for (org_id, lead_id) in touched {
        if let Some(message) = rescore(ctx, &mut tx, &org_id, lead_id, false).await? {
            messages.push(message);
        }
    }
    platform::outbox::enqueue(&mut tx, &messages).await?;
    tx.commit().await?;
    if !messages.is_empty() {
        ctx.outbox.notify();
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct FeatureRow {
    active: bool,
    source_kind: String,
    has_name: bool,
    has_email: bool,
    inbound_count: i32,
    outbound_count: i32,
    pricing_hits: i32,
    intent_hits: i32,
    urgency_hits: i32,
    negative_hits: i32,
}

/// Scores an active lead; returns the event to publish when the score is new or `force`d.
pub async fn rescore(
    ctx: &QualificationContext,
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    lead_id: Uuid,
    force: bool,
) -> Result<Option<OutboxMessage>, QualificationError> {
    let row: Option<FeatureRow> = sqlx::query_as(
        "SELECT active, source_kind, has_name, has_email, inbound_count, outbound_count, pricing_hits, \
           intent_hits, urgency_hits, negative_hits FROM lead_features WHERE org_id = $1 AND lead_id = $2 FOR UPDATE",
    )
    .bind(org_id)
    .bind(lead_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Err(QualificationError::NotFound(lead_id.to_string())) };
    if !row.active && !force {
        return Ok(None);
    }
    let result = scoring::score(&Features {
        source_kind: row.source_kind,
        has_name: row.has_name,
        has_email: row.has_email,
        inbound_count: row.inbound_count,
        outbound_count: row.outbound_count,
        pricing_hits: row.pricing_hits,
        intent_hits: row.intent_hits,
        urgency_hits: row.urgency_hits,
        negative_hits: row.negative_hits,
    });
    let reasons = sqlx::types::Json(&result.reasons);
    let version: Option<i64> = sqlx::query_scalar(
        "INSERT INTO scores (org_id, lead_id, score, reasons, model_version, version) VALUES ($1, $2, $3, $4, $5, 1) \
         ON CONFLICT (org_id, lead_id) DO UPDATE SET score = EXCLUDED.score, reasons = EXCLUDED.reasons, \
           model_version = EXCLUDED.model_version, version = scores.version + 1, scored_at = now() \
         WHERE $6 OR scores.score <> EXCLUDED.score OR scores.reasons <> EXCLUDED.reasons \
           OR scores.model_version <> EXCLUDED.model_version \
         RETURNING version",
    )
    .bind(org_id)
    .bind(lead_id)
    .bind(result.score)
    .bind(reasons)
    .bind(MODEL_VERSION)
    .bind(force)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(version) = version else { return Ok(None) };
    let scored = Scored {
        lead_id,
        score: result.score,
        reasons: result.reasons,
        model_version: MODEL_VERSION.into(),
        scored_at: Utc::now(),
    };
    let envelope = Envelope::new(org_id, SCORED, lead_id, version, scored);
    metrics::counter!("qualification_scores_total").increment(1);
    Ok(Some(OutboxMessage {
        org_id: org_id.to_owned(),
        subject: ctx.subjects.event("qualification", org_id, SCORED),
        msg_id: envelope.id.to_string(),
        payload: envelope.to_json(),
    }))
}
