//! Webhook delivery. An endpoint is delivered to by one process at a time, which holds its
//! lease while it has messages due, so one slow or failing receiver delays only itself and its
//! concurrency holds across processes. Each attempt is kept in the delivery log; a failure is
//! retried on the configured schedule (spread by a fifth either way, or as `Retry-After` says),
//! 410 Gone disables the endpoint, and so does failing every attempt for too long; either is
//! told to the organisation's admins.

use crate::{
    NotificationContext,
    error::NotificationError,
    record::{self, Recipient, Tell},
    webhooks::{self, ENDPOINT_COLUMNS, EndpointRow},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use contracts::notifications::WEBHOOK_ENDPOINT_DISABLED;
use futures::StreamExt;
use http_body_util::Full;
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a process holds an endpoint without renewing it; it renews every third of that
/// while it delivers, so another process takes over within this long of a crash.
const LEASE: Duration = Duration::from_secs(30);
/// Endpoints one process delivers to at once; it leases no more than it has room for.
const ENDPOINTS_AT_ONCE: usize = 32;
/// Bytes of a response kept in the log.
pub const EXCERPT_BYTES: usize = 1000;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How deliveries are made, from the service's settings.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Seconds before each retry; after the last failure the message is given up.
    pub retry_schedule: Vec<u64>,
    pub timeout: Duration,
    pub disable_after_failing: chrono::Duration,
    pub concurrency_per_endpoint: usize,
    pub tick: Duration,
}

/// Finds endpoints with messages due and delivers to each in a task of its own, until `token`
/// fires.
pub async fn run(ctx: NotificationContext, token: CancellationToken) -> anyhow::Result<()> {
    let process = Uuid::now_v7();
    let working: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    while !token.is_cancelled() {
        let room = ENDPOINTS_AT_ONCE.saturating_sub(working.lock().expect("not poisoned").len());
        match lease_endpoints(&ctx, process, room).await {
            Ok(endpoints) => {
                for endpoint in endpoints {
                    if !working.lock().expect("not poisoned").insert(endpoint.id) {
                        continue;
                    }
                    let guard = Working { id: endpoint.id, set: working.clone() };
                    let (ctx, token) = (ctx.clone(), token.clone());
                    workers.spawn(async move {
                        let id = guard.id;
                        if let Err(error) = deliver_to(&ctx, process, endpoint, &token).await {
                            tracing::warn!(endpoint_id = %id, %error, "delivering to a webhook endpoint failed, retrying");
                        }
                        release(&ctx, process, id).await;
                        drop(guard);
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "finding webhook deliveries failed, retrying"),
        }
        while workers.try_join_next().is_some() {}
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(ctx.delivery.tick) => {}
            () = ctx.deliveries_waiting.notified() => {}
        }
    }
    while workers.join_next().await.is_some() {}
    Ok(())
}

/// An endpoint this process is delivering to; forgotten when its task ends, however it ends.
struct Working {
    id: Uuid,
    set: Arc<Mutex<HashSet<Uuid>>>,
}

impl Drop for Working {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
    }
}

/// Takes the lease of endpoints that have messages due and no live lease.
async fn lease_endpoints(
    ctx: &NotificationContext,
    process: Uuid,
    room: usize,
) -> Result<Vec<EndpointRow>, sqlx::Error> {
    if room == 0 {
        return Ok(Vec::new());
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET leased_by = $1, leased_until = now() + make_interval(secs => $2) \
         WHERE id IN ( \
           SELECT e.id FROM webhook_endpoints e \
           WHERE e.enabled AND (e.leased_until IS NULL OR e.leased_until < now()) \
             AND EXISTS (SELECT 1 FROM deliveries d \
                         WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_at <= now()) \
           LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(process)
    .bind(LEASE.as_secs_f64())
    .bind(room as i64)
    .fetch_all(&ctx.pool)
    .await
}

/// Extends this process's lease of an endpoint; `false` when it no longer holds it.
async fn renew(ctx: &NotificationContext, process: Uuid, endpoint_id: Uuid) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query(
        "UPDATE webhook_endpoints SET leased_until = now() + make_interval(secs => $3) \
         WHERE id = $1 AND leased_by = $2 AND leased_until > now() AND enabled",
    )
    .bind(endpoint_id)
    .bind(process)
    .bind(LEASE.as_secs_f64())
    .execute(&ctx.pool)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

async fn release(ctx: &NotificationContext, process: Uuid, endpoint_id: Uuid) {
    let released = sqlx::query("UPDATE webhook_endpoints SET leased_until = NULL WHERE id = $1 AND leased_by = $2")
        .bind(endpoint_id)
        .bind(process)
        .execute(&ctx.pool)
        .await;
    if let Err(error) = released {
        // The lease runs out by itself.
        tracing::warn!(endpoint_id = %endpoint_id, %error, "releasing a webhook endpoint failed");
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: i64,
    message_id: String,
    attempts: i32,
    event_type: String,
    body: Vec<u8>,
}

/// What one attempt came to.
#[derive(Debug)]
struct Attempt {
    delivery_id: i64,
    message_id: String,
    event_type: String,
    attempt: i32,
    at: DateTime<Utc>,
    status: Option<u16>,
    duration: Duration,
    excerpt: String,
    error: String,
    retry_after: Option<Duration>,
}

impl Attempt {
    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Delivers what is due to one endpoint, batch after batch, while it holds the lease. Each batch
/// is claimed (its deliveries' next attempt moved past the time the batch may take), so a
/// process that took the endpoint over after a lost lease never sends the same ones meanwhile;
/// after a crash they are due again once the claim runs out.
async fn deliver_to(
    ctx: &NotificationContext,
    process: Uuid,
    mut endpoint: EndpointRow,
    token: &CancellationToken,
) -> Result<(), NotificationError> {
    let batch = (ctx.delivery.concurrency_per_endpoint * 2) as i64;
    let claim = LEASE.max(ctx.delivery.timeout * 2 + Duration::from_secs(5));
    while !token.is_cancelled() {
        // Renewing reads the endpoint again: its URL, secrets or state may have changed.
        let renewed: Option<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_endpoints SET leased_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND leased_by = $2 AND leased_until > now() AND enabled RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(endpoint.id)
        .bind(process)
        .bind(LEASE.as_secs_f64())
        .fetch_optional(&ctx.pool)
        .await?;
        let Some(current) = renewed else { return Ok(()) };
        endpoint = current;
        let due: Vec<Due> = sqlx::query_as(
            "WITH claimed AS ( \
               UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => $3) \
               WHERE d.id IN (SELECT id FROM deliveries \
                              WHERE endpoint_id = $1 AND state = 'pending' AND next_attempt_at <= now() \
                              ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
               RETURNING d.id, d.message_id, d.attempts) \
             SELECT c.id, c.message_id, c.attempts, m.event_type, m.body \
             FROM claimed c JOIN messages m ON m.id = c.message_id ORDER BY c.id",
        )
        .bind(endpoint.id)
        .bind(batch)
        .bind(claim.as_secs_f64())
        .fetch_all(&ctx.pool)
        .await?;
        if due.is_empty() {
            return Ok(());
        }
        let sending = futures::stream::iter(due)
            .map(|due| attempt(ctx, &endpoint, due))
            .buffer_unordered(ctx.delivery.concurrency_per_endpoint)
            .collect::<Vec<Attempt>>();
        tokio::pin!(sending);
        let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + LEASE / 3, LEASE / 3);
        let attempts = loop {
            tokio::select! {
                attempts = &mut sending => break attempts,
                _ = renewal.tick() => {
                    if !renew(ctx, process, endpoint.id).await? {
                        tracing::warn!(endpoint_id = %endpoint.id, "lost the lease of a webhook endpoint during a batch");
                    }
                }
            }
        };
        if !record_attempts(ctx, &endpoint, attempts).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// One signed POST of one message.
async fn attempt(ctx: &NotificationContext, endpoint: &EndpointRow, due: Due) -> Attempt {
    let at = Utc::now();
    let timestamp = at.timestamp();
    let signature = webhooks::signature_header(&endpoint.signing_secrets(at), &due.message_id, timestamp, &due.body);
    let request = hyper::Request::post(endpoint.url.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "leads-webhooks/1")
        .header("webhook-id", due.message_id.as_str())
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(Bytes::from(due.body)));
    let mut attempt = Attempt {
        delivery_id: due.id,
        message_id: due.message_id,
        event_type: due.event_type,
        attempt: due.attempts + 1,
        at,
        status: None,
        duration: Duration::ZERO,
        excerpt: String::new(),
        error: String::new(),
        retry_after: None,
    };
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            attempt.error = format!("the URL cannot be requested: {error}");
            return attempt;
        }
    };
    let started = std::time::Instant::now();
    match ctx.egress.send(request, ctx.delivery.timeout, EXCERPT_BYTES).await {
        Ok(response) => {
            attempt.status = Some(response.status.as_u16());
            attempt.excerpt = String::from_utf8_lossy(&response.body_excerpt).into_owned();
            attempt.retry_after = response
                .headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| retry_after(value, at));
            if response.status.is_redirection() {
                let location =
                    response.headers.get(hyper::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
                attempt.error = format!("redirects are not followed (to {location})");
            }
        }
        Err(error) => attempt.error = error.to_string(),
    }
    attempt.duration = started.elapsed();
    let outcome = match (&attempt.status, attempt.succeeded()) {
        (_, true) => "succeeded",
        (Some(_), false) => "refused",
        (None, _) => "failed",
    };
    metrics::counter!("leads_webhook_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("leads_webhook_attempt_seconds").record(attempt.duration.as_secs_f64());
    attempt
}

/// `Retry-After` as seconds or an HTTP date, within a day.
fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => (DateTime::parse_from_rfc2822(value.trim()).ok()?.with_timezone(&Utc) - now).to_std().ok()?,
    };
    Some(wait.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

/// When a failed attempt is tried again: `Retry-After` when the receiver said, else the
/// schedule's step spread by up to a fifth either way; `None` once the schedule is spent.
fn next_attempt(schedule: &[u64], attempt: i32, retry_after: Option<Duration>) -> Option<Duration> {
    let step = *schedule.get(usize::try_from(attempt - 1).ok()?)?;
    Some(retry_after.unwrap_or_else(|| Duration::from_secs(step).mul_f64(rand::rng().random_range(0.8..=1.2))))
}

/// Keeps the attempts and their consequences; `false` when the endpoint is now disabled.
async fn record_attempts(
    ctx: &NotificationContext,
    endpoint: &EndpointRow,
    attempts: Vec<Attempt>,
) -> Result<bool, NotificationError> {
    let now = Utc::now();
    let gone = attempts.iter().find(|a| a.status == Some(410));
    let mut ids = Vec::new();
    let mut states = Vec::new();
    let mut counts = Vec::new();
    let mut next = Vec::new();
    for attempt in &attempts {
        let (state, next_at) = if attempt.succeeded() {
            ("succeeded", None)
        } else if attempt.status == Some(410) {
            // Kept pending: enabling the endpoint again delivers it.
            ("pending", Some(now))
        } else {
            match next_attempt(&ctx.delivery.retry_schedule, attempt.attempt, attempt.retry_after) {
                Some(wait) => ("pending", Some(now + chrono::Duration::from_std(wait).unwrap_or_default())),
                None => ("failed", None),
            }
        };
        ids.push(attempt.delivery_id);
        states.push(state);
        counts.push(attempt.attempt);
        next.push(next_at);
    }
    let mut tx = ctx.pool.begin().await?;
    sqlx::query(
        "UPDATE deliveries d SET state = t.state, attempts = t.attempts, next_attempt_at = COALESCE(t.next, d.next_attempt_at) \
         FROM unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[]) AS t(id, state, attempts, next) \
         WHERE d.id = t.id AND d.state = 'pending' AND d.attempts = t.attempts - 1",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&counts)
    .bind(&next)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO delivery_attempts (endpoint_id, message_id, event_type, attempt, attempted_at, status_code, \
           duration_ms, response_excerpt, error, succeeded, next_attempt_at) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::int[], $7::bigint[], \
                                  $8::text[], $9::text[], $10::bool[], $11::timestamptz[])",
    )
    .bind(endpoint.id)
    .bind(attempts.iter().map(|a| a.message_id.as_str()).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.event_type.as_str()).collect::<Vec<_>>())
    .bind(&counts)
    .bind(attempts.iter().map(|a| a.at).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.status.map(i32::from)).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.duration.as_millis() as i64).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.excerpt.replace('\0', "")).collect::<Vec<_>>())
    .bind(attempts.iter().map(|a| a.error.as_str()).collect::<Vec<_>>())
    .bind(attempts.iter().map(Attempt::succeeded).collect::<Vec<_>>())
    .bind(states.iter().zip(&next).map(|(s, n)| if *s == "pending" { *n } else { None }).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let any_succeeded = attempts.iter().any(Attempt::succeeded);
    let failing_since: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET failing_since = CASE WHEN $2 THEN NULL ELSE COALESCE(failing_since, $3) END \
         WHERE id = $1 RETURNING failing_since",
    )
    .bind(endpoint.id)
    .bind(any_succeeded)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let disabled_because = match (gone, failing_since) {
        (Some(_), _) => Some("the endpoint answered 410 Gone".to_owned()),
        (None, Some(since)) if now - since >= ctx.delivery.disable_after_failing => {
            Some(format!("every attempt failed since {}", since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        }
        _ => None,
    };
    let Some(reason) = disabled_because else {
        tx.commit().await?;
        return Ok(true);
    };
    // Only the endpoint as it was sent to: one an admin changed or disabled meanwhile is theirs.
    let disabled = sqlx::query(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, version = version + 1, leased_until = NULL \
         WHERE id = $1 AND enabled AND version = $3",
    )
    .bind(endpoint.id)
    .bind(&reason)
    .bind(endpoint.version)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if disabled == 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let last = attempts.last();
    let last_error = last
        .map(|a| match a.status {
            Some(status) => format!("HTTP {status}"),
            None => a.error.clone(),
        })
        .unwrap_or_default();
    // Scheme, host and port only: a URL's path or query often holds a credential, and admins'
    // notifications reach operators and other endpoints.
    let destination = endpoint
        .url
        .parse::<hyper::Uri>()
        .ok()
        .and_then(|uri| Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?)))
        .unwrap_or_default();
    let tell = Tell {
        org_id: endpoint.org_id.clone(),
        event_type: WEBHOOK_ENDPOINT_DISABLED,
        occurred_at: now,
        dedupe_key: format!("endpoint:{}:disabled:{}", endpoint.id, now.timestamp_micros()),
        recipient: Recipient::Admins,
        lead_id: None,
        summary: format!("Webhook endpoint {destination} disabled: {reason}"),
        data: serde_json::json!({
            "endpoint_id": endpoint.id, "destination": destination, "reason": reason, "last_error": last_error,
        }),
    };
    let told = record::tell(ctx, &mut tx, vec![tell]).await?;
    record::commit(ctx, tx, told).await?;
    metrics::counter!("leads_webhook_endpoints_disabled_total").increment(1);
    tracing::warn!(org_id = %endpoint.org_id, endpoint_id = %endpoint.id, %reason, "webhook endpoint disabled");
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_schedule_spread_or_what_the_receiver_asked_and_then_stop() {
        let schedule = [5, 300];
        for _ in 0..100 {
            let wait = next_attempt(&schedule, 1, None).unwrap();
            assert!(wait >= Duration::from_secs(4) && wait <= Duration::from_secs(6), "{wait:?}");
        }
        assert_eq!(next_attempt(&schedule, 2, Some(Duration::from_secs(42))), Some(Duration::from_secs(42)));
        assert_eq!(next_attempt(&schedule, 3, None), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_a_day() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(retry_after("0", now), Some(Duration::from_secs(1)));
        assert_eq!(retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
    }
}
