//! Scores that stay true without a new message. Two background tasks run in every
//! qualification process, paced together by `qualification.rescore_per_second`:
//!
//! - The rescorer works through the rescorings `training` records with each model that starts
//!   scoring an organisation: its active leads, a page at a time in lead id order. A page is
//!   claimed by locking the organisation's row (`FOR UPDATE SKIP LOCKED`: another process
//!   takes another organisation, or waits for the next page), its leads are locked in key
//!   order as a consumer batch locks them, and their scores, their events and the cursor
//!   commit together. A process killed mid-page leaves the page to the next; no lead is
//!   rescored twice for one model.
//! - The refresher, every `qualification.refresh_interval_secs`, scores again the active leads
//!   whose time-dependent features (recency, active in the last day or week) moved enough
//!   since their score (`scores.refresh_at`, from `LeadFeatures::refresh_at`), in pages of
//!   leads no batch holds (`SKIP LOCKED`), a bounded number per tick.
//!
//! Both publish a `scored` event only where the score or its reasons changed
//! (`handler::write_scores`); an unchanged score is recorded as checked, with the model that
//! checked it.
//! Which leads are active is this service's projection of the lead events; a lead the lead
//! service has closed meanwhile is refused the score there. Scores a language model gave are
//! left to it.

use crate::{
    QualificationContext,
    engine::{Conversation, LeadState, Scoring},
    error::QualificationError,
    handler,
};
use chrono::Utc;
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Leads per page, at most (fewer when the pace allows fewer a second, so that a page is at
/// most a second's work).
const PAGE: u32 = 500;
/// How often an idle rescorer looks for a rescoring to work on.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The pause after a failed page before the next try.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// Leads a refresher rescores per tick, at most: the rest wait for the next tick.
const REFRESH_PER_TICK: usize = 50_000;

/// Records that `model_version`, which now scores the organisation, rescores its active leads
/// from the first: in the transaction that stores the model, so that either both are or
/// neither is. A rescoring under way for an older model starts again with this one.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    model_version: &str,
) -> Result<(), QualificationError> {
    sqlx::query(
        "INSERT INTO rescorings (org_id, model_version) VALUES ($1, $2) \
         ON CONFLICT (org_id) DO UPDATE SET model_version = EXCLUDED.model_version, after_lead = NULL, \
           rescored = 0, started_at = now(), finished_at = NULL",
    )
    .bind(org_id)
    .bind(model_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How fast this process rescores, shared by the rescorer and the refresher.
pub struct Pace {
    per_second: u32,
    /// When the next lead may be rescored.
    next: tokio::sync::Mutex<Instant>,
}

impl Pace {
    pub fn new(per_second: u32) -> Self {
        Self { per_second: per_second.max(1), next: tokio::sync::Mutex::new(Instant::now()) }
    }

    /// Leads per page: at most a second's worth.
    fn page(&self) -> u32 {
        PAGE.min(self.per_second)
    }

    /// Waits until the `leads` just rescored fit the pace; false when `token` fired meanwhile.
    async fn spent(&self, leads: usize, token: &CancellationToken) -> bool {
        let until = {
            let mut next = self.next.lock().await;
            *next = (*next).max(Instant::now()) + Duration::from_secs_f64(leads as f64 / f64::from(self.per_second));
            *next
        };
        tokio::select! {
            () = token.cancelled() => false,
            () = tokio::time::sleep_until(until) => true,
        }
    }
}

/// Sleeps for `pause`; false when `token` fired first.
async fn idle(pause: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        () = token.cancelled() => false,
        () = tokio::time::sleep(pause) => true,
    }
}

/// Works through recorded rescorings, until `token` fires.
pub async fn rescore_until(ctx: QualificationContext, token: CancellationToken) -> anyhow::Result<()> {
    while !token.is_cancelled() {
        let going_on = match rescore_page(&ctx).await {
            Ok(Some(leads)) => ctx.pace.spent(leads, &token).await,
            Ok(None) => idle(IDLE_POLL, &token).await,
            Err(error) => {
                tracing::warn!(%error, "rescoring page failed, trying again");
                idle(ERROR_PAUSE, &token).await
            }
        };
        if !going_on {
            break;
        }
    }
    Ok(())
}

type PageRow = (Uuid, i64, Option<i32>, Vec<u8>);

/// Rescores the next page of a rescoring no other process is working on; answers how many
/// leads it rescored, or `None` when there was nothing to claim.
async fn rescore_page(ctx: &QualificationContext) -> Result<Option<usize>, QualificationError> {
    let mut tx = ctx.pool.begin().await?;
    let claimed: Option<(String, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT org_id, model_version, after_lead FROM rescorings WHERE finished_at IS NULL \
         ORDER BY started_at, org_id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org_id, model_version, after)) = claimed else { return Ok(None) };
    let page = ctx.pace.page();
    let rows: Vec<PageRow> = sqlx::query_as(
        "SELECT s.lead_id, s.lead_version, s.manual_score, f.features FROM lead_state s \
         JOIN lead_features f USING (org_id, lead_id) LEFT JOIN scores c USING (org_id, lead_id) \
         WHERE s.org_id = $1 AND ($2::uuid IS NULL OR s.lead_id > $2) AND s.active AND s.lead_version > 0 \
           AND (c.model_version IS NULL OR c.model_version NOT LIKE 'llm:%') \
         ORDER BY s.lead_id LIMIT $3 FOR UPDATE OF s",
    )
    .bind(&org_id)
    .bind(after)
    .bind(i64::from(page))
    .fetch_all(&mut *tx)
    .await?;
    let scorer = ctx.models.scorer(&mut tx, &org_id).await?;
    let now = Utc::now();
    let mut scored = Vec::with_capacity(rows.len());
    for (lead_id, lead_version, manual_score, features) in &rows {
        let state = LeadState { lead_version: *lead_version, active: true, manual_score: *manual_score };
        let conversation = conversation(*lead_id, features)?;
        scored.push(Scoring::new(&org_id, *lead_id, &state, &conversation, &scorer, now, false));
    }
    let messages = handler::write_scores(ctx, &mut tx, &scored).await?;
    let finished = rows.len() < page as usize;
    sqlx::query(
        "UPDATE rescorings SET after_lead = coalesce($2, after_lead), rescored = rescored + $3, \
           finished_at = CASE WHEN $4 THEN now() END \
         WHERE org_id = $1",
    )
    .bind(&org_id)
    .bind(rows.last().map(|row| row.0))
    .bind(rows.len() as i64)
    .bind(finished)
    .execute(&mut *tx)
    .await?;
    let published = messages.len();
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::QUALIFICATION_SCORINGS, "service" => "qualification")
        .increment(scored.len() as u64);
    tracing::debug!(org_id, model_version, leads = rows.len(), published, "rescoring page");
    if finished {
        tracing::info!(org_id, model_version, "rescoring with a new model finished");
    }
    Ok(Some(rows.len()))
}

fn conversation(lead_id: Uuid, features: &[u8]) -> Result<Conversation, QualificationError> {
    let features = crate::engine::stored_features(features)
        .map_err(|e| QualificationError::Unreadable(format!("features of lead {lead_id}: {e}")))?;
    Ok(Conversation { features, recent: Vec::new() })
}

/// Scores again, every `refresh_interval_secs`, the active leads whose time-dependent
/// features moved enough since their score, until `token` fires.
pub async fn refresh_until(ctx: QualificationContext, token: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_secs(ctx.settings.refresh_interval_secs);
    loop {
        let mut refreshed = 0;
        while refreshed < REFRESH_PER_TICK {
            match refresh_page(&ctx).await {
                Ok(0) => break,
                Ok(leads) => {
                    refreshed += leads;
                    if !ctx.pace.spent(leads, &token).await {
                        return Ok(());
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "refreshing scores failed, trying at the next tick");
                    break;
                }
            }
        }
        if refreshed > 0 {
            tracing::info!(leads = refreshed, "scores refreshed for time-dependent features");
        }
        if !idle(every, &token).await {
            return Ok(());
        }
    }
}

type DueRow = (String, Uuid, i64, bool, Option<i32>, Option<Vec<u8>>, String);

/// Rescores one page of leads due for a refresh that no batch holds; answers how many it
/// took (0: none is due).
async fn refresh_page(ctx: &QualificationContext) -> Result<usize, QualificationError> {
    let mut tx = ctx.pool.begin().await?;
    let due: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT s.org_id, s.lead_id FROM scores c JOIN lead_state s USING (org_id, lead_id) \
         WHERE c.refresh_at <= now() ORDER BY c.refresh_at LIMIT $1 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(i64::from(ctx.pace.page()))
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let orgs: Vec<&str> = due.iter().map(|d| d.0.as_str()).collect();
    let ids: Vec<Uuid> = due.iter().map(|d| d.1).collect();
    // Read again under the lock: another process may have refreshed some of them just before.
    let rows: Vec<DueRow> = sqlx::query_as(
        "SELECT s.org_id, s.lead_id, s.lead_version, s.active, s.manual_score, f.features, c.model_version \
         FROM UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) JOIN lead_state s USING (org_id, lead_id) \
         JOIN scores c USING (org_id, lead_id) LEFT JOIN lead_features f USING (org_id, lead_id) \
         WHERE c.refresh_at <= now()",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let scorers = ctx.models.scorers(&mut tx, &orgs).await?;
    let now = Utc::now();
    let (mut scored, mut settled) = (Vec::new(), Vec::new());
    for (org_id, lead_id, lead_version, active, manual_score, features, model_version) in &rows {
        match (features, scorers.get(org_id)) {
            (Some(features), Some(scorer)) if *active && !model_version.starts_with("llm:") => {
                let state = LeadState { lead_version: *lead_version, active: true, manual_score: *manual_score };
                let conversation = conversation(*lead_id, features)?;
                scored.push(Scoring::new(org_id, *lead_id, &state, &conversation, scorer, now, false));
            }
            // An inactive lead is never scored again; a language model's score does not age.
            _ => settled.push((org_id.as_str(), *lead_id)),
        }
    }
    settle(&mut tx, &settled).await?;
    let messages = handler::write_scores(ctx, &mut tx, &scored).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::QUALIFICATION_SCORINGS, "service" => "qualification")
        .increment(scored.len() as u64);
    Ok(due.len())
}

/// Takes leads that no longer follow the clock off the refresher's list.
async fn settle(tx: &mut Transaction<'_, Postgres>, leads: &[(&str, Uuid)]) -> Result<(), QualificationError> {
    if leads.is_empty() {
        return Ok(());
    }
    let orgs: Vec<&str> = leads.iter().map(|l| l.0).collect();
    let ids: Vec<Uuid> = leads.iter().map(|l| l.1).collect();
    sqlx::query(
        "UPDATE scores c SET refresh_at = NULL FROM UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) \
         WHERE c.org_id = k.org_id AND c.lead_id = k.lead_id",
    )
    .bind(&orgs)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
