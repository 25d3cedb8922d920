//! A model per organisation, learned from its own outcomes (Converted positive, Lost
//! negative; Archived is no label). Training runs beside scoring, never in its way: on
//! `TrainModel`, and in every process's retrainer when an organisation's outcomes have grown
//! enough since its last model; an advisory lock per organisation makes one process train
//! while the others go on scoring. Each model is stored with its version and held-out AUC
//! beside the prior's on the same hold-out; scoring uses the newest model only when it beats
//! the prior.

use crate::{
    QualificationContext,
    engine::{self, Scorer},
    error::QualificationError,
};
use chrono::{DateTime, Utc};
use qualification_model::{LeadFeatures, Model, TrainConfig, TrainOutcome};
use sqlx::{PgPool, types::Json};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// How long a process scores with the model it read before looking for a newer one.
const MODEL_REFRESH: Duration = Duration::from_secs(5);

/// The scorer of each organisation, read from `models` and kept for `MODEL_REFRESH`.
#[derive(Clone, Default)]
pub struct Models {
    cached: Arc<Mutex<HashMap<String, (Instant, Scorer)>>>,
}

impl Models {
    /// The scorers of `orgs`, read before a transaction begins so that no second connection
    /// is taken while it holds its locks.
    pub async fn scorers(
        &self,
        pool: &PgPool,
        orgs: &[&str],
    ) -> Result<std::collections::BTreeMap<String, Scorer>, QualificationError> {
        let mut scorers = std::collections::BTreeMap::new();
        for &org_id in orgs {
            if !scorers.contains_key(org_id) {
                scorers.insert(org_id.to_owned(), self.scorer(pool, org_id).await?);
            }
        }
        Ok(scorers)
    }

    pub async fn scorer(&self, pool: &PgPool, org_id: &str) -> Result<Scorer, QualificationError> {
        if let Some((read_at, scorer)) = self.lock().get(org_id)
            && read_at.elapsed() < MODEL_REFRESH
        {
            return Ok(scorer.clone());
        }
        let stored: Option<Json<Model>> =
            sqlx::query_scalar("SELECT model FROM models WHERE org_id = $1 AND in_use ORDER BY version DESC LIMIT 1")
                .bind(org_id)
                .fetch_optional(pool)
                .await?;
        let scorer = stored.map_or(Scorer::Prior, |model| Scorer::Learned(Arc::new(model.0)));
        self.lock().insert(org_id.to_owned(), (Instant::now(), scorer.clone()));
        Ok(scorer)
    }

    /// Forgets an organisation's scorer, so that the next batch reads its newest model.
    pub fn forget(&self, org_id: &str) {
        self.lock().remove(org_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Scorer)>> {
        // The map holds no invariant a panicking holder could break.
        self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What `GetModel` and `TrainModel` answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub version: i32,
    pub in_use: bool,
    pub training_size: i64,
    pub positives: i64,
    pub negatives: i64,
    pub holdout_auc: f64,
    pub prior_holdout_auc: f64,
    pub trained_at: Option<DateTime<Utc>>,
    pub scoring_model: String,
    pub labelled_positives: i64,
    pub labelled_negatives: i64,
}

type ModelRow = (i32, bool, i32, i32, i32, f64, f64, DateTime<Utc>);

pub async fn model_info(pool: &PgPool, org_id: &str) -> Result<ModelInfo, QualificationError> {
    let newest: Option<ModelRow> = sqlx::query_as(
        "SELECT version, in_use, training_size, positives, negatives, holdout_auc, prior_holdout_auc, trained_at \
         FROM models WHERE org_id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(pool)
    .await?;
    let in_use: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM models WHERE org_id = $1 AND in_use")
        .bind(org_id)
        .fetch_one(pool)
        .await?;
    let (labelled_positives, labelled_negatives): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE converted), count(*) FILTER (WHERE NOT converted) FROM outcomes WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_one(pool)
    .await?;
    let scoring_model = in_use.map_or_else(|| engine::PRIOR_VERSION.to_owned(), |v| engine::model_version(v as u32));
    let mut info = ModelInfo { scoring_model, labelled_positives, labelled_negatives, ..ModelInfo::default() };
    if let Some((version, in_use, size, positives, negatives, auc, prior_auc, trained_at)) = newest {
        info.version = version;
        info.in_use = in_use;
        info.training_size = i64::from(size);
        info.positives = i64::from(positives);
        info.negatives = i64::from(negatives);
        info.holdout_auc = auc;
        info.prior_holdout_auc = prior_auc;
        info.trained_at = Some(trained_at);
    }
    Ok(info)
}

/// Trains the organisation's next model on all its outcomes and stores it. Answers `None`
/// when another process is training the same organisation at this moment.
pub async fn train_org(ctx: &QualificationContext, org_id: &str) -> Result<Option<ModelInfo>, QualificationError> {
    let mut tx = ctx.pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('qualification-train:' || $1))")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let rows: Vec<(Json<LeadFeatures>, bool, DateTime<Utc>)> =
        sqlx::query_as("SELECT features, converted, decided_at FROM outcomes WHERE org_id = $1 ORDER BY lead_id")
            .bind(org_id)
            .fetch_all(&mut *tx)
            .await?;
    let next: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM models WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    let outcomes: Vec<(LeadFeatures, bool, DateTime<Utc>)> = rows.into_iter().map(|(f, c, at)| (f.0, c, at)).collect();
    let config = TrainConfig {
        min_per_class: ctx.settings.min_labels_per_class,
        version: next as u32,
        trained_at: Some(engine::timestamp(Utc::now())),
        ..TrainConfig::default()
    };
    // Training is CPU work of up to seconds: off the runtime's threads, so scoring goes on.
    let outcome =
        tokio::task::spawn_blocking(move || qualification_model::train(&engine::examples(&outcomes), &config))
            .await
            .map_err(|e| QualificationError::Unreadable(format!("training task failed: {e}")))?;
    let model = match outcome {
        TrainOutcome::Trained(model) => model,
        TrainOutcome::Refused(refusal) => return Err(QualificationError::NotTrainable(refusal.reason)),
    };
    let in_use = model.beats_prior();
    sqlx::query(
        "INSERT INTO models (org_id, version, trained_at, training_size, positives, negatives, holdout_auc, \
           prior_holdout_auc, in_use, model) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(org_id)
    .bind(next)
    .bind(engine::date_time(model.trained_at))
    // Every labelled lead it saw, hold-out included: what retraining compares growth with.
    .bind((model.training_size + model.holdout_size) as i32)
    .bind(model.positives as i32)
    .bind(model.negatives as i32)
    .bind(model.holdout_auc)
    .bind(model.prior_holdout_auc)
    .bind(in_use)
    .bind(Json(&*model))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    ctx.models.forget(org_id);
    tracing::info!(
        org_id,
        version = next,
        in_use,
        holdout_auc = model.holdout_auc,
        prior_holdout_auc = model.prior_holdout_auc,
        training_size = model.training_size,
        "model trained"
    );
    metrics::counter!(platform::telemetry::names::QUALIFICATION_MODELS_TRAINED, "service" => "qualification")
        .increment(1);
    model_info(&ctx.pool, org_id).await.map(Some)
}

/// Organisations with enough outcomes of each kind whose outcomes grew by the configured
/// share since their newest model (or that have none).
async fn due_for_training(ctx: &QualificationContext) -> Result<Vec<String>, QualificationError> {
    let min = ctx.settings.min_labels_per_class as i64;
    Ok(sqlx::query_scalar(
        "SELECT o.org_id FROM outcomes o \
         LEFT JOIN LATERAL (SELECT training_size FROM models m WHERE m.org_id = o.org_id \
                            ORDER BY version DESC LIMIT 1) m ON true \
         GROUP BY o.org_id, m.training_size \
         HAVING count(*) FILTER (WHERE o.converted) >= $1 AND count(*) FILTER (WHERE NOT o.converted) >= $1 \
            AND (m.training_size IS NULL OR count(*) >= m.training_size * (1 + $2))",
    )
    .bind(min)
    .bind(ctx.settings.retrain_growth)
    .fetch_all(&ctx.pool)
    .await?)
}

/// Retrains organisations as their outcomes accumulate, until `token` fires.
pub async fn retrain_until(ctx: QualificationContext, token: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_secs(ctx.settings.retrain_interval_secs);
    loop {
        tokio::select! {
            () = token.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        let orgs = match due_for_training(&ctx).await {
            Ok(orgs) => orgs,
            Err(error) => {
                tracing::warn!(%error, "cannot look for organisations to retrain");
                continue;
            }
        };
        for org_id in orgs {
            if token.is_cancelled() {
                return Ok(());
            }
            if let Err(error) = train_org(&ctx, &org_id).await {
                tracing::warn!(%error, org_id, "retraining failed");
            }
        }
    }
}
