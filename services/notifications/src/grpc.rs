use crate::{
    NotificationContext,
    error::NotificationError,
    settings::{self, OrgSettings, Update},
    webhooks::{self, EndpointRow, EndpointUpdate},
};
use chrono::{DateTime, Utc};
use contracts::notifications::EVENT_TYPES;
use contracts::time::{from_timestamp, timestamp};
use contracts::values::{MAX_AGENT_ID_CHARS, bounded, limits};
use leads_proto::v1::{self as pb, notification_service_server::NotificationService};
use platform::auth::Caller;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct NotificationApi {
    pub ctx: NotificationContext,
}

const MAX_PAGE: i64 = 200;
const MAX_MARKED: usize = 500;

fn org(caller: &Caller, org_id: &str) -> Result<(), Status> {
    caller.check_org(org_id)?;
    contracts::values::validate_org_id(org_id).map_err(|r| NotificationError::invalid("org_id", r.reason))?;
    Ok(())
}

/// Whose notifications a request reads or marks.
#[derive(Debug, Clone, PartialEq)]
enum Recipient {
    Agent(String),
    Admins,
}

/// An agent reads its own notifications only; the desk's people name an agent or the admins.
fn recipient(caller: &Caller, agent_id: &str, admins: bool) -> Result<Recipient, NotificationError> {
    bounded("agent_id", agent_id, MAX_AGENT_ID_CHARS)?;
    let agent_id = agent_id.trim();
    match (caller.agent_scope(), admins, agent_id) {
        (Some(_), true, _) => {
            Err(NotificationError::PermissionDenied("an agent reads its own notifications only".into()))
        }
        (Some(own), false, named) if !named.is_empty() && named != own => {
            Err(NotificationError::PermissionDenied("an agent reads its own notifications only".into()))
        }
        (Some(own), false, _) => Ok(Recipient::Agent(own.to_owned())),
        (None, true, "") => Ok(Recipient::Admins),
        (None, true, _) => {
            Err(NotificationError::invalid("agent_id", "name an agent or ask for the admins', not both"))
        }
        (None, false, "") => Err(NotificationError::invalid("agent_id", "is required unless admins is set")),
        (None, false, named) => Ok(Recipient::Agent(named.to_owned())),
    }
}

fn page_size(size: i32) -> Result<i64, NotificationError> {
    match i64::from(size) {
        0 => Ok(50),
        n if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(NotificationError::invalid("page_size", format!("must be between 1 and {MAX_PAGE}"))),
    }
}

fn endpoint_id(value: &str) -> Result<Uuid, NotificationError> {
    bounded("endpoint_id", value, limits::MAX_ID_CHARS)?;
    if value.is_empty() {
        return Err(NotificationError::invalid("endpoint_id", "is required"));
    }
    value.parse().map_err(|_| NotificationError::NotFound(format!("webhook endpoint {value}")))
}

/// `<created_at micros>.<id>` of the last row of a page, newest first.
fn decode_token(token: &str) -> Result<Option<(DateTime<Utc>, String)>, NotificationError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || NotificationError::invalid("page_token", "is not a token this service gave");
    let (micros, id) = token.split_once('.').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok(Some((at, id.to_owned())))
}

fn settings_to_proto(
    org_id: &str,
    settings: OrgSettings,
    changes: Vec<pb::SettingsChange>,
) -> pb::NotificationSettings {
    pb::NotificationSettings {
        org_id: org_id.to_owned(),
        remind_before_minutes: settings.remind_before_minutes,
        overdue_after_minutes: settings.overdue_after_minutes,
        escalate_overdue: settings.escalate_overdue,
        version: settings.version,
        changes,
    }
}

/// The endpoint as callers see it; its secret only where `with_secret`.
fn endpoint_to_proto(row: EndpointRow, pending: i64, with_secret: bool) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: row.id.to_string(),
        org_id: row.org_id,
        url: row.url,
        description: row.description,
        event_types: row.event_types,
        enabled: row.enabled,
        disabled_reason: row.disabled_reason.unwrap_or_default(),
        secret: if with_secret { row.secret } else { String::new() },
        version: row.version,
        created_at: Some(timestamp(row.created_at)),
        failing_since: row.failing_since.map(timestamp),
        pending,
    }
}

impl Recipient {
    /// The condition on `messages` that picks this recipient's, with its one parameter `$2`: a
    /// text of its own per recipient so that each uses its partial index.
    fn condition(&self) -> (&'static str, Option<&str>) {
        match self {
            Recipient::Agent(agent) => ("agent_id = $2", Some(agent.as_str())),
            Recipient::Admins => ("for_admins AND $2::text IS NULL", None),
        }
    }
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: String,
    event_type: String,
    occurred_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    agent_id: Option<String>,
    lead_id: Option<Uuid>,
    summary: String,
    body: Vec<u8>,
    read_at: Option<DateTime<Utc>>,
}

impl NotificationApi {
    async fn unread(&self, org_id: &str, recipient: &Recipient) -> Result<i64, NotificationError> {
        let (condition, parameter) = recipient.condition();
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM messages WHERE org_id = $1 AND read_at IS NULL AND {condition}"
        )))
        .bind(org_id)
        .bind(parameter)
        .fetch_one(&self.ctx.pool)
        .await?)
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let recipient = recipient(&caller, &request.agent_id, request.admins)?;
        let size = page_size(request.page_size)?;
        let after = decode_token(&request.page_token)?;
        let (condition, parameter) = recipient.condition();
        let mut rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, event_type, occurred_at, created_at, agent_id, lead_id, summary, body, read_at FROM messages \
             WHERE org_id = $1 AND {condition} AND (NOT $3 OR read_at IS NULL) \
               AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6"
        )))
        .bind(&request.org_id)
        .bind(parameter)
        .bind(request.unread_only)
        .bind(after.as_ref().map(|a| a.0))
        .bind(after.as_ref().map(|a| a.1.as_str()))
        .bind(size + 1)
        .fetch_all(&self.ctx.pool)
        .await
        .map_err(NotificationError::from)?;
        let next_page_token = if rows.len() as i64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| format!("{}.{}", r.created_at.timestamp_micros(), r.id)).unwrap_or_default()
        } else {
            String::new()
        };
        let unread = self.unread(&request.org_id, &recipient).await?;
        let notifications = rows
            .into_iter()
            .map(|row| {
                let data = serde_json::from_slice::<serde_json::Value>(&row.body)
                    .ok()
                    .and_then(|body| body.get("data").map(ToString::to_string))
                    .unwrap_or_default();
                pb::Notification {
                    id: row.id,
                    r#type: row.event_type,
                    occurred_at: Some(timestamp(row.occurred_at)),
                    agent_id: row.agent_id.unwrap_or_default(),
                    data_json: data,
                    read: row.read_at.is_some(),
                    summary: row.summary,
                    lead_id: row.lead_id.map(|id| id.to_string()).unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListNotificationsResponse { notifications, next_page_token, unread }))
    }

    async fn mark_notifications_read(
        &self,
        request: Request<pb::MarkNotificationsReadRequest>,
    ) -> Result<Response<pb::MarkNotificationsReadResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let recipient = recipient(&caller, &request.agent_id, request.admins)?;
        if request.ids.len() > MAX_MARKED {
            return Err(NotificationError::invalid("ids", format!("at most {MAX_MARKED} at once")).into());
        }
        contracts::values::bounded_each("ids", &request.ids, limits::MAX_ID_CHARS).map_err(NotificationError::from)?;
        let up_to = match &request.up_to {
            Some(ts) => {
                Some(from_timestamp(ts).ok_or_else(|| NotificationError::invalid("up_to", "is not a valid time"))?)
            }
            None => None,
        };
        if request.ids.is_empty() && up_to.is_none() {
            return Err(NotificationError::invalid("ids", "name notifications, or give up_to").into());
        }
        let (condition, parameter) = recipient.condition();
        let marked = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE messages SET read_at = now() \
             WHERE org_id = $1 AND {condition} AND read_at IS NULL \
               AND (id = ANY($3) OR ($4::timestamptz IS NOT NULL AND created_at <= $4))"
        )))
        .bind(&request.org_id)
        .bind(parameter)
        .bind(&request.ids)
        .bind(up_to)
        .execute(&self.ctx.pool)
        .await
        .map_err(NotificationError::from)?
        .rows_affected() as i64;
        let unread = self.unread(&request.org_id, &recipient).await?;
        Ok(Response::new(pb::MarkNotificationsReadResponse { marked, unread }))
    }

    async fn get_notification_settings(
        &self,
        request: Request<pb::GetNotificationSettingsRequest>,
    ) -> Result<Response<pb::NotificationSettings>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let mut conn = self.ctx.pool.acquire().await.map_err(NotificationError::from)?;
        let current = settings::read(&mut conn, &request.org_id).await.map_err(NotificationError::from)?;
        let changes = platform::org_settings::recent_changes(&self.ctx.pool, &request.org_id)
            .await
            .map_err(NotificationError::from)?;
        Ok(Response::new(settings_to_proto(&request.org_id, current, changes)))
    }

    async fn update_notification_settings(
        &self,
        request: Request<pb::UpdateNotificationSettingsRequest>,
    ) -> Result<Response<pb::NotificationSettings>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let update = Update {
            remind_before_minutes: request.remind_before_minutes,
            overdue_after_minutes: request.overdue_after_minutes,
            escalate_overdue: request.escalate_overdue,
            expected_version: request.expected_version,
        };
        let updated = settings::update(&self.ctx, &request.org_id, update, &caller.actor("")).await?;
        let changes = platform::org_settings::recent_changes(&self.ctx.pool, &request.org_id)
            .await
            .map_err(NotificationError::from)?;
        Ok(Response::new(settings_to_proto(&request.org_id, updated, changes)))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let row =
            webhooks::create(&self.ctx, &request.org_id, &request.url, &request.description, &request.event_types)
                .await?;
        Ok(Response::new(endpoint_to_proto(row, 0, true)))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let endpoints = webhooks::list(&self.ctx, &request.org_id)
            .await?
            .into_iter()
            .map(|(row, pending)| endpoint_to_proto(row, pending, false))
            .collect();
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            endpoints,
            event_types: EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
        }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let id = endpoint_id(&request.endpoint_id)?;
        let update = EndpointUpdate {
            url: request.url,
            description: request.description,
            event_types: request.set_event_types.then_some(request.event_types),
            enabled: request.enabled,
            expected_version: request.expected_version,
        };
        let row = webhooks::update(&self.ctx, &request.org_id, id, update).await?;
        Ok(Response::new(endpoint_to_proto(row, 0, false)))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        webhooks::delete(&self.ctx, &request.org_id, endpoint_id(&request.endpoint_id)?).await?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let row = webhooks::rotate_secret(&self.ctx, &request.org_id, endpoint_id(&request.endpoint_id)?).await?;
        Ok(Response::new(endpoint_to_proto(row, 0, true)))
    }

    async fn list_webhook_attempts(
        &self,
        request: Request<pb::ListWebhookAttemptsRequest>,
    ) -> Result<Response<pb::ListWebhookAttemptsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let id = endpoint_id(&request.endpoint_id)?;
        webhooks::get(&self.ctx, &request.org_id, id).await?;
        bounded("message_id", &request.message_id, limits::MAX_ID_CHARS).map_err(NotificationError::from)?;
        let size = page_size(request.page_size)?;
        let before: Option<i64> = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse()
                    .map_err(|_| NotificationError::invalid("page_token", "is not a token this service gave"))?,
            ),
        };
        let mut rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT id, message_id, event_type, attempt, attempted_at, status_code, duration_ms, response_excerpt, error, \
                    succeeded, next_attempt_at \
             FROM delivery_attempts WHERE endpoint_id = $1 AND ($2 = '' OR message_id = $2) \
               AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        )
        .bind(id)
        .bind(&request.message_id)
        .bind(before)
        .bind(size + 1)
        .fetch_all(&self.ctx.pool)
        .await
        .map_err(NotificationError::from)?;
        let next_page_token = if rows.len() as i64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let attempts = rows
            .into_iter()
            .map(|row| pb::WebhookAttempt {
                message_id: row.message_id,
                event_type: row.event_type,
                attempt: row.attempt,
                attempted_at: Some(timestamp(row.attempted_at)),
                status_code: row.status_code.unwrap_or_default(),
                duration_ms: row.duration_ms,
                response_excerpt: row.response_excerpt,
                error: row.error,
                succeeded: row.succeeded,
                next_attempt_at: row.next_attempt_at.map(timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListWebhookAttemptsResponse { attempts, next_page_token }))
    }

    async fn replay_webhooks(
        &self,
        request: Request<pb::ReplayWebhooksRequest>,
    ) -> Result<Response<pb::ReplayWebhooksResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        org(&caller, &request.org_id)?;
        let id = endpoint_id(&request.endpoint_id)?;
        bounded("message_id", &request.message_id, limits::MAX_ID_CHARS).map_err(NotificationError::from)?;
        let since = match &request.since {
            Some(ts) => {
                Some(from_timestamp(ts).ok_or_else(|| NotificationError::invalid("since", "is not a valid time"))?)
            }
            None => None,
        };
        let message = (!request.message_id.is_empty()).then_some(request.message_id.as_str());
        let queued = webhooks::replay(&self.ctx, &request.org_id, id, message, since).await?;
        Ok(Response::new(pb::ReplayWebhooksResponse { queued: queued as i64 }))
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: i64,
    message_id: String,
    event_type: String,
    attempt: i32,
    attempted_at: DateTime<Utc>,
    status_code: Option<i32>,
    duration_ms: i64,
    response_excerpt: String,
    error: String,
    succeeded: bool,
    next_attempt_at: Option<DateTime<Utc>>,
}
