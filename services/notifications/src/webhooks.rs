//! Webhook endpoints of an organisation, and the Standard Webhooks signature their messages
//! carry: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//! bytes of a `whsec_` secret; while a secret rotates, the previous one signs beside it.

use crate::{NotificationContext, error::NotificationError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use contracts::notifications::EVENT_TYPES;
use ring::{hmac, rand::SecureRandom};
use uuid::Uuid;

/// How long a rotated-out secret keeps signing beside the new one.
pub const PREVIOUS_SECRET_HOURS: i64 = 24;
pub const MAX_URL_CHARS: usize = 2000;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Endpoints an organisation may have.
pub const MAX_ENDPOINTS: i64 = 50;

/// The signature of one message: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`
/// keyed with the secret's bytes (the base64 after `whsec_`). `None` for a secret that is not
/// of that form, which the platform never makes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok()?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut signed = Vec::with_capacity(id.len() + body.len() + 24);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    Some(format!("v1,{}", STANDARD.encode(hmac::sign(&key, &signed).as_ref())))
}

/// The `webhook-signature` header: one signature per secret in use, space-separated.
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().filter_map(|secret| sign(secret, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// A new secret: `whsec_` and the base64 of 24 random bytes.
pub fn new_secret() -> Result<String, NotificationError> {
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| NotificationError::Internal("the system's random source failed".into()))?;
    Ok(format!("whsec_{}", STANDARD.encode(bytes)))
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub org_id: String,
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The secrets that sign now: the current one, and the previous one while it overlaps.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }
}

pub(crate) const ENDPOINT_COLUMNS: &str = "org_id, id, url, description, event_types, secret, previous_secret, \
     previous_secret_until, enabled, disabled_reason, failing_since, version, created_at";

/// A URL an endpoint may have: http or https with a host, no credentials in it, and not an
/// address the platform may not reach (a name is checked each time it is resolved).
pub fn check_url(ctx: &NotificationContext, url: &str) -> Result<String, NotificationError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(NotificationError::invalid("url", "is required"));
    }
    if url.chars().count() > MAX_URL_CHARS {
        return Err(NotificationError::invalid("url", format!("must be at most {MAX_URL_CHARS} characters")));
    }
    let uri: hyper::Uri = url.parse().map_err(|_| NotificationError::invalid("url", "is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(NotificationError::invalid("url", "must start with http:// or https://"));
    }
    let authority = uri.authority().ok_or_else(|| NotificationError::invalid("url", "has no host"))?;
    if authority.as_str().contains('@') {
        return Err(NotificationError::invalid("url", "may not hold a user name or password"));
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && let Some(reason) = ctx.egress.policy().refusal(ip)
    {
        return Err(NotificationError::invalid("url", format!("is a {reason} address, where webhooks may not go")));
    }
    Ok(url.to_owned())
}

pub fn check_event_types(types: &[String]) -> Result<Vec<String>, NotificationError> {
    let mut checked: Vec<String> = Vec::new();
    for event_type in types {
        let event_type = event_type.trim();
        if !EVENT_TYPES.contains(&event_type) {
            return Err(NotificationError::invalid(
                "event_types",
                format!("unknown event type {event_type:?}; expected some of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if !checked.iter().any(|t| t == event_type) {
            checked.push(event_type.to_owned());
        }
    }
    Ok(checked)
}

fn check_description(description: &str) -> Result<String, NotificationError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(NotificationError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(description.trim().to_owned())
}

pub async fn create(
    ctx: &NotificationContext,
    org_id: &str,
    url: &str,
    description: &str,
    event_types: &[String],
) -> Result<EndpointRow, NotificationError> {
    let url = check_url(ctx, url)?;
    let description = check_description(description)?;
    let event_types = check_event_types(event_types)?;
    let secret = new_secret()?;
    let mut tx = ctx.pool.begin().await?;
    platform::org_settings::lock(&mut tx, "webhook endpoints", org_id).await?;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM webhook_endpoints WHERE org_id = $1")
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Err(NotificationError::invalid(
            "url",
            format!("an organisation may have at most {MAX_ENDPOINTS} endpoints"),
        ));
    }
    let row: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO webhook_endpoints (org_id, id, url, description, event_types, secret) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(org_id)
    .bind(Uuid::now_v7())
    .bind(&url)
    .bind(&description)
    .bind(&event_types)
    .bind(&secret)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(org_id, endpoint_id = %row.id, "webhook endpoint created");
    Ok(row)
}

pub async fn list(ctx: &NotificationContext, org_id: &str) -> Result<Vec<(EndpointRow, i64)>, NotificationError> {
    let rows: Vec<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 ORDER BY created_at, id"
    )))
    .bind(org_id)
    .fetch_all(&ctx.pool)
    .await?;
    let pending: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT endpoint_id, count(*) FROM deliveries WHERE org_id = $1 AND state = 'pending' GROUP BY endpoint_id",
    )
    .bind(org_id)
    .fetch_all(&ctx.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let waiting = pending.iter().find(|(id, _)| *id == row.id).map_or(0, |(_, n)| *n);
            (row, waiting)
        })
        .collect())
}

pub async fn get(ctx: &NotificationContext, org_id: &str, id: Uuid) -> Result<EndpointRow, NotificationError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 AND id = $2"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(&ctx.pool)
    .await?
    .ok_or_else(|| NotificationError::NotFound(format!("webhook endpoint {id}")))
}

#[derive(Debug, Default)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub expected_version: Option<i64>,
}

pub async fn update(
    ctx: &NotificationContext,
    org_id: &str,
    id: Uuid,
    update: EndpointUpdate,
) -> Result<EndpointRow, NotificationError> {
    let url = update.url.as_deref().map(|url| check_url(ctx, url)).transpose()?;
    let description = update.description.as_deref().map(check_description).transpose()?;
    let event_types = update.event_types.as_deref().map(check_event_types).transpose()?;
    let mut tx = ctx.pool.begin().await?;
    let current: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 AND id = $2 FOR UPDATE"
    )))
    .bind(org_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| NotificationError::NotFound(format!("webhook endpoint {id}")))?;
    if let Some(expected) = update.expected_version
        && expected != current.version
    {
        return Err(NotificationError::StaleEndpoint { expected, actual: current.version });
    }
    let enabling = update.enabled == Some(true) && !current.enabled;
    let row: EndpointRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET url = COALESCE($3, url), description = COALESCE($4, description), \
           event_types = COALESCE($5, event_types), enabled = COALESCE($6, enabled), \
           disabled_reason = CASE WHEN COALESCE($6, enabled) THEN NULL \
                                  WHEN $6 = false THEN NULL ELSE disabled_reason END, \
           failing_since = CASE WHEN $7 OR $3::text IS NOT NULL THEN NULL ELSE failing_since END, \
           version = version + 1 \
         WHERE org_id = $1 AND id = $2 RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(org_id)
    .bind(id)
    .bind(url)
    .bind(description)
    .bind(event_types)
    .bind(update.enabled)
    .bind(enabling)
    .fetch_one(&mut *tx)
    .await?;
    if enabling {
        // What waited while it was disabled goes now, from the start of the retry schedule.
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = now(), attempts = 0 WHERE endpoint_id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if enabling {
        ctx.deliveries_waiting.notify_one();
    }
    tracing::info!(org_id, endpoint_id = %id, version = row.version, "webhook endpoint changed");
    Ok(row)
}

pub async fn delete(ctx: &NotificationContext, org_id: &str, id: Uuid) -> Result<(), NotificationError> {
    let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(id)
        .execute(&ctx.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(NotificationError::NotFound(format!("webhook endpoint {id}")));
    }
    tracing::info!(org_id, endpoint_id = %id, "webhook endpoint deleted");
    Ok(())
}

pub async fn rotate_secret(
    ctx: &NotificationContext,
    org_id: &str,
    id: Uuid,
) -> Result<EndpointRow, NotificationError> {
    let secret = new_secret()?;
    let row: Option<EndpointRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_endpoints SET previous_secret = secret, \
           previous_secret_until = now() + make_interval(hours => $4), secret = $3, version = version + 1 \
         WHERE org_id = $1 AND id = $2 RETURNING {ENDPOINT_COLUMNS}"
    )))
    .bind(org_id)
    .bind(id)
    .bind(&secret)
    .bind(PREVIOUS_SECRET_HOURS as i32)
    .fetch_optional(&ctx.pool)
    .await?;
    let row = row.ok_or_else(|| NotificationError::NotFound(format!("webhook endpoint {id}")))?;
    tracing::info!(org_id, endpoint_id = %id, "webhook secret rotated");
    Ok(row)
}

/// Queues `message_id` again, or every message since `since` of the types the endpoint takes:
/// each with a fresh schedule and its own id, so the receiver's dedupe still works.
pub async fn replay(
    ctx: &NotificationContext,
    org_id: &str,
    endpoint_id: Uuid,
    message_id: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<u64, NotificationError> {
    let endpoint = get(ctx, org_id, endpoint_id).await?;
    let queued = match (message_id, since) {
        (Some(message_id), _) => {
            let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM messages WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(message_id)
                .fetch_optional(&ctx.pool)
                .await?;
            if exists.is_none() {
                return Err(NotificationError::NotFound(format!("message {message_id}")));
            }
            sqlx::query(
                "INSERT INTO deliveries (org_id, endpoint_id, message_id, state) VALUES ($1, $2, $3, 'pending') \
                 ON CONFLICT (endpoint_id, message_id) DO UPDATE SET state = 'pending', attempts = 0, next_attempt_at = now()",
            )
            .bind(org_id)
            .bind(endpoint_id)
            .bind(message_id)
            .execute(&ctx.pool)
            .await?
            .rows_affected()
        }
        (None, Some(since)) => sqlx::query(
            "INSERT INTO deliveries (org_id, endpoint_id, message_id, state) \
             SELECT org_id, $2, id, 'pending' FROM messages \
             WHERE org_id = $1 AND created_at >= $3 AND (cardinality($4::text[]) = 0 OR event_type = ANY($4)) \
             ON CONFLICT (endpoint_id, message_id) DO UPDATE SET state = 'pending', attempts = 0, next_attempt_at = now()",
        )
        .bind(org_id)
        .bind(endpoint_id)
        .bind(since)
        .bind(&endpoint.event_types)
        .execute(&ctx.pool)
        .await?
        .rows_affected(),
        (None, None) => return Err(NotificationError::invalid("message_id", "name a message, or give since")),
    };
    ctx.deliveries_waiting.notify_one();
    tracing::info!(org_id, endpoint_id = %endpoint_id, queued, "webhook messages replayed");
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_reference_vector_verifies() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature.as_deref(), Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    }

    #[test]
    fn a_rotating_secret_signs_twice_and_each_signature_changes_with_what_it_signs() {
        let header = signature_header(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_AAAA"], "id", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        let one = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id", 1, b"{}");
        assert_ne!(one, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id", 2, b"{}"));
        assert_ne!(one, sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id2", 1, b"{}"));
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("whsec_") && STANDARD.decode(&secret[6..]).unwrap().len() == 24);
    }

    #[test]
    fn only_known_event_types_are_taken_once_each() {
        assert_eq!(check_event_types(&["lead.assigned".into(), "lead.assigned".into()]).unwrap(), ["lead.assigned"]);
        let error = check_event_types(&["lead.deleted".into()]).unwrap_err();
        assert!(matches!(error, NotificationError::InvalidArgument { ref field, .. } if field == "event_types"));
    }
}
