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
use futures::StreamExt;
use leads_proto::v1 as pb;
use qualification_model::{LeadFeatures, Model, NAMED_FEATURES, TrainConfig, TrainOutcome, Vocabulary};
use sqlx::{PgConnection, PgPool, types::Json};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Each organisation's scorer, by the version of its newest model in use: a model is read and
/// parsed once per version and process, and a newer version is seen by the next transaction
/// that asks.
#[derive(Clone, Default)]
pub struct Models {
    cached: Arc<Mutex<HashMap<String, (i32, Scorer)>>>,
}

impl Models {
    /// The scorers of `orgs` as they are now, read on `conn`: inside a transaction that has
    /// locked its leads, so that a model committed before the lock scores them (a rescoring,
    /// which starts once its model is committed, then never races an older model's score), and
    /// without a second connection while the locks are held.
    pub async fn scorers(
        &self,
        conn: &mut PgConnection,
        orgs: &[&str],
    ) -> Result<BTreeMap<String, Scorer>, QualificationError> {
        let mut orgs = orgs.to_vec();
        orgs.sort_unstable();
        orgs.dedup();
        let newest: HashMap<String, i32> = sqlx::query_as::<_, (String, i32)>(
            "SELECT DISTINCT ON (org_id) org_id, version FROM models WHERE org_id = ANY($1) AND in_use \
             ORDER BY org_id, version DESC",
        )
        .bind(&orgs)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let mut scorers = BTreeMap::new();
        for org_id in orgs {
            // Version 0: the prior, no model in use.
            let version = newest.get(org_id).copied().unwrap_or(0);
            let cached = self.lock().get(org_id).filter(|(v, _)| *v == version).map(|(_, scorer)| scorer.clone());
            let scorer = match cached {
                Some(scorer) => scorer,
                None => {
                    let scorer = if version == 0 { Scorer::Prior } else { read_model(conn, org_id, version).await? };
                    self.lock().insert(org_id.to_owned(), (version, scorer.clone()));
                    scorer
                }
            };
            scorers.insert(org_id.to_owned(), scorer);
        }
        Ok(scorers)
    }

    /// The scorer of one organisation (`scorers`).
    pub async fn scorer(&self, conn: &mut PgConnection, org_id: &str) -> Result<Scorer, QualificationError> {
        let mut scorers = self.scorers(conn, &[org_id]).await?;
        Ok(scorers.remove(org_id).unwrap_or(Scorer::Prior))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i32, Scorer)>> {
        // The map holds no invariant a panicking holder could break.
        self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn read_model(conn: &mut PgConnection, org_id: &str, version: i32) -> Result<Scorer, QualificationError> {
    let Json(model): Json<Model> = sqlx::query_scalar("SELECT model FROM models WHERE org_id = $1 AND version = $2")
        .bind(org_id)
        .bind(version)
        .fetch_one(conn)
        .await?;
    Ok(Scorer::Learned(Arc::new(model)))
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

/// A labelled lead: its features when decided, converted or lost, and when.
type Outcome = (LeadFeatures, bool, DateTime<Utc>);

/// Trains the organisation's next model on all its outcomes and stores it, with the words
/// behind its strongest text features; a model that scores from now on (it beats the prior)
/// is recorded with a rescoring of the organisation's active leads (`rescoring`), in the same
/// transaction. Answers `None` when another process is training the same organisation at
/// this moment.
pub async fn train_org(ctx: &QualificationContext, org_id: &str) -> Result<Option<ModelInfo>, QualificationError> {
    let mut tx = ctx.pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('qualification-train:' || $1))")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let rows: Vec<(Uuid, Json<LeadFeatures>, bool, DateTime<Utc>)> = sqlx::query_as(
        "SELECT lead_id, features, converted, decided_at FROM outcomes WHERE org_id = $1 ORDER BY lead_id",
    )
    .bind(org_id)
    .fetch_all(&mut *tx)
    .await?;
    let next: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM models WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    let (leads, outcomes): (Vec<Uuid>, Vec<Outcome>) =
        rows.into_iter().map(|(lead_id, f, c, at)| (lead_id, (f.0, c, at))).unzip();
    let config = TrainConfig {
        min_per_class: ctx.settings.min_labels_per_class,
        version: next as u32,
        trained_at: Some(engine::timestamp(Utc::now())),
        ..TrainConfig::default()
    };
    // Training is CPU work of up to seconds: off the runtime's threads, so scoring goes on.
    let (outcome, outcomes) = tokio::task::spawn_blocking(move || {
        let outcome = qualification_model::train(&engine::examples(&outcomes), &config);
        (outcome, outcomes)
    })
    .await
    .map_err(|e| QualificationError::Unreadable(format!("training task failed: {e}")))?;
    let mut model = match outcome {
        TrainOutcome::Trained(model) => model,
        TrainOutcome::Refused(refusal) => return Err(QualificationError::NotTrainable(refusal.reason)),
    };
    let features: Vec<(Uuid, LeadFeatures)> = leads.into_iter().zip(outcomes.into_iter().map(|o| o.0)).collect();
    name_words(ctx, org_id, &mut model, &features).await;
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
    if in_use {
        crate::rescoring::record(&mut tx, org_id, &engine::model_version(next as u32)).await?;
    }
    tx.commit().await?;
    tracing::info!(
        org_id,
        version = next,
        in_use,
        holdout_auc = model.holdout_auc,
        prior_holdout_auc = model.prior_holdout_auc,
        training_size = model.training_size,
        named_features = model.names.len(),
        "model trained"
    );
    metrics::counter!(platform::telemetry::names::QUALIFICATION_MODELS_TRAINED, "service" => "qualification")
        .increment(1);
    model_info(&ctx.pool, org_id).await.map(Some)
}

/// Leads whose conversations are read, at most, to name a model's words.
const NAMING_LEADS: usize = 200;
/// Leads read for each text feature still without a name.
const LEADS_PER_FEATURE: usize = 3;
/// Conversations read at once.
const NAMING_CONCURRENCY: usize = 8;
/// How long naming may take: the model is stored with the names found by then.
const NAMING_DEADLINE: Duration = Duration::from_secs(30);

/// Names the model's strongest hashed features: sources, channels and campaigns from the
/// outcomes' features, words from the conversations of a few outcome leads that use them,
/// read from the lead service (this service keeps no text). Only those names are kept, with
/// the model. A feature left unnamed (the lead service did not answer, or in time) is
/// explained with the other unnamed ones as "text features".
async fn name_words(ctx: &QualificationContext, org_id: &str, model: &mut Model, outcomes: &[(Uuid, LeadFeatures)]) {
    let mut vocabulary = Vocabulary::for_features(model.strongest_hashed(NAMED_FEATURES));
    for (_, features) in outcomes {
        vocabulary.observe_labels(features);
    }
    let mut leads: Vec<Uuid> = Vec::new();
    for index in vocabulary.unnamed() {
        let using: Vec<Uuid> = outcomes
            .iter()
            .filter(|(lead_id, features)| features.mentions(index) && !leads.contains(lead_id))
            .map(|(lead_id, _)| *lead_id)
            .take(LEADS_PER_FEATURE)
            .collect();
        leads.extend(using);
    }
    leads.truncate(NAMING_LEADS);
    let reads = leads.iter().map(|lead_id| inbound_texts(ctx.lead.clone(), org_id.to_owned(), *lead_id));
    let mut read = futures::stream::iter(reads.collect::<Vec<_>>()).buffer_unordered(NAMING_CONCURRENCY);
    let (mut answered, mut error) = (0usize, None);
    let reading = async {
        while let Some(texts) = read.next().await {
            match texts {
                Ok(texts) => {
                    answered += 1;
                    for text in &texts {
                        vocabulary.observe_text(text);
                    }
                }
                Err(message) => error = Some(message),
            }
        }
    };
    if tokio::time::timeout(NAMING_DEADLINE, reading).await.is_err() {
        error = Some("timed out".to_owned());
    }
    if let Some(error) = error {
        tracing::warn!(org_id, read = answered, of = leads.len(), %error, "conversations not read, some of the model's words left unnamed");
    }
    model.name_features(&vocabulary);
}

/// What the contact wrote on a lead, from the lead service's history of it (one page, the
/// newest messages).
async fn inbound_texts(
    mut lead: platform::visibility::LeadClient,
    org_id: String,
    lead_id: Uuid,
) -> Result<Vec<String>, String> {
    let request =
        pb::GetLeadHistoryRequest { org_id, lead_id: lead_id.to_string(), page_size: 500, page_token: String::new() };
    let history = lead.get_lead_history(request).await.map_err(|status| status.message().to_owned())?;
    let lead_id = lead_id.to_string();
    Ok(history
        .into_inner()
        .entries
        .into_iter()
        .filter(|e| e.kind == "interaction" && e.lead_id == lead_id && e.summary.starts_with("inbound"))
        .filter_map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details_json).ok()?;
            details.get("text")?.as_str().map(str::to_owned)
        })
        .collect())
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
