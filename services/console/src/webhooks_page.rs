//! The organisation's webhook endpoints (admins; the notifications service decides who may):
//! the list with each endpoint's state, creating one, enabling and disabling, deleting after a
//! confirmation, rotating the secret, and an endpoint's delivery log with replays. A secret is
//! shown once, in the answer to the request that made it, never in a URL or on a later page.

use crate::{
    AppState,
    backends::authorized,
    error::ConsoleError,
    notifications_page::refused_field,
    pages::{Chrome, Page, html, see_other},
    query,
    session::Session,
    views::When,
};
use askama::Template;
use axum::{
    Form,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse},
};
use leads_proto::v1 as pb;
use serde::Deserialize;

/// The most attempts a page of the delivery log lists.
const ATTEMPTS_PAGE: i32 = 50;

/// One endpoint as the pages show it.
struct EndpointLine {
    id: String,
    /// Its page, the id escaped for a path.
    href: String,
    url: String,
    description: String,
    event_types: String,
    enabled: bool,
    /// Why the platform disabled it; empty when enabled or disabled by a person.
    disabled_reason: String,
    failing_since: When,
    pending: i64,
    version: i64,
    created: When,
}

impl EndpointLine {
    fn of(endpoint: &pb::WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id.clone(),
            href: format!("/webhooks/{}", query::encode(&endpoint.id)),
            url: endpoint.url.clone(),
            description: endpoint.description.clone(),
            event_types: if endpoint.event_types.is_empty() {
                "every type".into()
            } else {
                endpoint.event_types.join(", ")
            },
            enabled: endpoint.enabled,
            disabled_reason: endpoint.disabled_reason.clone(),
            failing_since: When::of(endpoint.failing_since.as_ref()),
            pending: endpoint.pending,
            version: endpoint.version,
            created: When::of(endpoint.created_at.as_ref()),
        }
    }
}

/// A secret just made, shown this once.
struct NewSecret {
    url: String,
    secret: String,
}

/// What the create form holds: empty, or what was sent and refused.
#[derive(Default)]
struct CreateForm {
    url: String,
    description: String,
    /// (event type, ticked).
    event_types: Vec<(String, bool)>,
    /// The field the service refused, and its words.
    refused: Option<(String, String)>,
}

impl CreateForm {
    fn error_of(&self, field: &str) -> &str {
        self.refused.as_ref().filter(|(f, _)| f == field).map_or("", |(_, message)| message.as_str())
    }
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    endpoints: Vec<EndpointLine>,
    form: CreateForm,
    secret: Option<NewSecret>,
}

async fn endpoints(state: &AppState, session: &Session) -> Result<pb::ListWebhookEndpointsResponse, ConsoleError> {
    let request = pb::ListWebhookEndpointsRequest { org_id: session.org_id.clone() };
    Ok(state
        .backends
        .notifications
        .clone()
        .list_webhook_endpoints(authorized(&session.token, request))
        .await?
        .into_inner())
}

async fn webhooks_page(
    state: &AppState,
    session: &Session,
    mut form: CreateForm,
    secret: Option<NewSecret>,
) -> Result<WebhooksPage, ConsoleError> {
    let answer = endpoints(state, session).await?;
    let ticked: Vec<String> = form.event_types.iter().filter(|(_, on)| *on).map(|(t, _)| t.clone()).collect();
    form.event_types = answer.event_types.iter().map(|t| (t.clone(), ticked.contains(t))).collect();
    Ok(WebhooksPage {
        chrome: Chrome::of(session, "settings"),
        endpoints: answer.endpoints.iter().map(EndpointLine::of).collect(),
        form,
        secret,
    })
}

pub async fn webhooks(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let session = Session::from_headers(&headers)?;
    html(&webhooks_page(&state, &session, CreateForm::default(), None).await?)
}

/// The fields of the create form a refusal may name.
const CREATE_FIELDS: [&str; 3] = ["url", "description", "event_types"];

/// Creates an endpoint; the answer is the page with its secret, shown this once.
pub async fn create(State(state): State<AppState>, headers: HeaderMap, body: String) -> Page {
    let session = Session::from_headers(&headers)?;
    let pairs = query::pairs(&body);
    let value =
        |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    let event_types: Vec<String> = pairs.iter().filter(|(k, _)| k == "event_type").map(|(_, v)| v.clone()).collect();
    let request = pb::CreateWebhookEndpointRequest {
        org_id: session.org_id.clone(),
        url: value("url"),
        description: value("description"),
        event_types: event_types.clone(),
    };
    match state.backends.notifications.clone().create_webhook_endpoint(authorized(&session.token, request)).await {
        Ok(created) => {
            let created = created.into_inner();
            tracing::info!(endpoint = %created.id, "webhook endpoint created from the console");
            let secret = NewSecret { url: created.url, secret: created.secret };
            html(&webhooks_page(&state, &session, CreateForm::default(), Some(secret)).await?)
        }
        Err(status) => {
            let error = ConsoleError::from(status);
            let Some(refused) = refused_field(&error, &CREATE_FIELDS) else { return Err(error) };
            let form = CreateForm {
                url: value("url"),
                description: value("description"),
                event_types: event_types.into_iter().map(|t| (t, true)).collect(),
                refused: Some(refused),
            };
            let page = webhooks_page(&state, &session, form, None).await?;
            Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response())
        }
    }
}

/// One delivery attempt as the log shows it.
struct AttemptLine {
    at: When,
    message_id: String,
    /// The log of this message alone.
    message_href: String,
    event_type: String,
    attempt: i32,
    /// The answer's status code, or that none came.
    status: String,
    succeeded: bool,
    duration: String,
    /// Why it failed without an answer, else the start of the answer's body.
    detail: String,
    next_attempt: When,
}

impl AttemptLine {
    fn of(attempt: &pb::WebhookAttempt, endpoint_href: &str) -> Self {
        Self {
            at: When::of(attempt.attempted_at.as_ref()),
            message_id: attempt.message_id.clone(),
            message_href: format!("{endpoint_href}?message={}", query::encode(&attempt.message_id)),
            event_type: attempt.event_type.clone(),
            attempt: attempt.attempt,
            status: if attempt.status_code == 0 { "no answer".into() } else { attempt.status_code.to_string() },
            succeeded: attempt.succeeded,
            duration: format!("{} ms", attempt.duration_ms),
            detail: if attempt.error.is_empty() { attempt.response_excerpt.clone() } else { attempt.error.clone() },
            next_attempt: When::of(attempt.next_attempt_at.as_ref()),
        }
    }
}

/// What the replay forms hold: empty, or what was sent and refused.
#[derive(Default)]
struct ReplayForm {
    message_id: String,
    since: String,
    refused: Option<(String, String)>,
}

impl ReplayForm {
    fn error_of(&self, field: &str) -> &str {
        self.refused.as_ref().filter(|(f, _)| f == field).map_or("", |(_, message)| message.as_str())
    }
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct EndpointPage {
    chrome: Chrome,
    endpoint: EndpointLine,
    attempts: Vec<AttemptLine>,
    /// The log filtered to one message, when it is.
    message_filter: String,
    next_page: String,
    secret: Option<NewSecret>,
    /// What the last action did ("3 messages queued again").
    notice: String,
    replay: ReplayForm,
}

/// An endpoint's id from the path, as the service names it.
fn endpoint_id(id: &str) -> Result<String, ConsoleError> {
    let id = id.trim();
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ConsoleError::NotFound);
    }
    Ok(id.to_owned())
}

async fn endpoint(state: &AppState, session: &Session, id: &str) -> Result<pb::WebhookEndpoint, ConsoleError> {
    endpoints(state, session).await?.endpoints.into_iter().find(|e| e.id == id).ok_or(ConsoleError::NotFound)
}

async fn endpoint_page(
    state: &AppState,
    session: &Session,
    id: &str,
    message_filter: &str,
    page_token: &str,
) -> Result<EndpointPage, ConsoleError> {
    let request = pb::ListWebhookAttemptsRequest {
        org_id: session.org_id.clone(),
        endpoint_id: id.to_owned(),
        message_id: message_filter.to_owned(),
        page_size: ATTEMPTS_PAGE,
        page_token: page_token.to_owned(),
    };
    let mut notifications = state.backends.notifications.clone();
    let (found, attempts) = tokio::join!(
        endpoint(state, session, id),
        notifications.list_webhook_attempts(authorized(&session.token, request))
    );
    let endpoint = EndpointLine::of(&found?);
    let attempts = attempts?.into_inner();
    let next_page = match attempts.next_page_token.as_str() {
        "" => String::new(),
        token => {
            let filter = if message_filter.is_empty() {
                String::new()
            } else {
                format!("&message={}", query::encode(message_filter))
            };
            format!("{}?page={}{filter}", endpoint.href, query::encode(token))
        }
    };
    Ok(EndpointPage {
        chrome: Chrome::of(session, "settings"),
        attempts: attempts.attempts.iter().map(|a| AttemptLine::of(a, &endpoint.href)).collect(),
        endpoint,
        message_filter: message_filter.to_owned(),
        next_page,
        secret: None,
        notice: String::new(),
        replay: ReplayForm::default(),
    })
}

/// An endpoint's page: its state, actions and delivery log (`message` filters it to one
/// message, `page` a later page).
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    let (message, page) = (query::field(raw.as_deref(), "message"), query::field(raw.as_deref(), "page"));
    html(&endpoint_page(&state, &session, &id, message.trim(), &page).await?)
}

#[derive(Deserialize)]
pub struct EnabledForm {
    enabled: String,
    version: i64,
}

/// Enables or disables an endpoint; enabling one the platform disabled resumes its deliveries.
pub async fn set_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<EnabledForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    let request = pb::UpdateWebhookEndpointRequest {
        org_id: session.org_id.clone(),
        endpoint_id: id.clone(),
        enabled: Some(form.enabled == "true"),
        expected_version: Some(form.version),
        ..Default::default()
    };
    state.backends.notifications.clone().update_webhook_endpoint(authorized(&session.token, request)).await?;
    Ok(see_other(&format!("/webhooks/{}", query::encode(&id))))
}

/// A new secret, shown this once on the endpoint's page; the old one signs beside it for a day.
pub async fn rotate(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    let request = pb::RotateWebhookSecretRequest { org_id: session.org_id.clone(), endpoint_id: id.clone() };
    let rotated =
        state.backends.notifications.clone().rotate_webhook_secret(authorized(&session.token, request)).await?;
    let rotated = rotated.into_inner();
    let mut page = endpoint_page(&state, &session, &id, "", "").await?;
    page.secret = Some(NewSecret { url: rotated.url, secret: rotated.secret });
    page.notice = "A new secret: the previous one keeps signing beside it for 24 hours.".into();
    html(&page)
}

#[derive(Template)]
#[template(path = "webhook_delete.html")]
struct DeletePage {
    chrome: Chrome,
    endpoint: EndpointLine,
}

/// Asks before deleting: the endpoint and its pending messages go for good.
pub async fn confirm_delete(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    let endpoint = EndpointLine::of(&endpoint(&state, &session, &id).await?);
    html(&DeletePage { chrome: Chrome::of(&session, "settings"), endpoint })
}

pub async fn delete(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    let request = pb::DeleteWebhookEndpointRequest { org_id: session.org_id.clone(), endpoint_id: id.clone() };
    state.backends.notifications.clone().delete_webhook_endpoint(authorized(&session.token, request)).await?;
    tracing::info!(endpoint = %id, "webhook endpoint deleted from the console");
    Ok(see_other("/webhooks"))
}

#[derive(Deserialize)]
pub struct ReplayRequestForm {
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    since: String,
    /// Minutes east of UTC of the person's time zone, as the page's script sets it.
    #[serde(default)]
    tz_offset: String,
}

/// A `datetime-local` value in the person's time zone (minutes east of UTC; UTC without the
/// page's script) as a timestamp.
fn since_at(local: &str, offset_minutes: &str) -> Result<prost_types::Timestamp, ConsoleError> {
    let naive = chrono::NaiveDateTime::parse_from_str(local.trim(), "%Y-%m-%dT%H:%M")
        .map_err(|_| ConsoleError::BadRequest("since: a date and time, such as 2026-12-24T09:30".into()))?;
    let offset: i64 = offset_minutes.trim().parse().unwrap_or(0);
    if offset.abs() > 18 * 60 {
        return Err(ConsoleError::BadRequest("since: the time zone is not one that exists".into()));
    }
    let utc = naive.and_utc() - chrono::Duration::minutes(offset);
    Ok(prost_types::Timestamp { seconds: utc.timestamp(), nanos: 0 })
}

/// The fields of the replay forms a refusal may name.
const REPLAY_FIELDS: [&str; 2] = ["message_id", "since"];

async fn queue_replay(
    state: &AppState,
    session: &Session,
    id: &str,
    form: &ReplayRequestForm,
) -> Result<i64, ConsoleError> {
    let message_id = form.message_id.trim().to_owned();
    let since = match (message_id.is_empty(), form.since.trim()) {
        (false, _) => None,
        (true, "") => {
            return Err(ConsoleError::BadRequest("since: give a time, or replay one message by its id".into()));
        }
        (true, since) => Some(since_at(since, &form.tz_offset)?),
    };
    let request =
        pb::ReplayWebhooksRequest { org_id: session.org_id.clone(), endpoint_id: id.to_owned(), message_id, since };
    Ok(state
        .backends
        .notifications
        .clone()
        .replay_webhooks(authorized(&session.token, request))
        .await?
        .into_inner()
        .queued)
}

/// Delivers again one message (`message_id`) or every one since a time (`since`).
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ReplayRequestForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let id = endpoint_id(&id)?;
    match queue_replay(&state, &session, &id, &form).await {
        Ok(queued) => {
            let mut page = endpoint_page(&state, &session, &id, "", "").await?;
            page.notice = match queued {
                1 => "1 message queued again.".into(),
                n => format!("{n} messages queued again."),
            };
            html(&page)
        }
        Err(error) => {
            let Some(refused) = refused_field(&error, &REPLAY_FIELDS) else { return Err(error) };
            let mut page = endpoint_page(&state, &session, &id, "", "").await?;
            page.replay = ReplayForm { message_id: form.message_id, since: form.since, refused: Some(refused) };
            Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_id_the_service_could_have_given_reaches_it() {
        assert_eq!(
            endpoint_id("0b6f3c1e-5d7a-4c11-9a0e-2f4b8d9c1a2b").unwrap(),
            "0b6f3c1e-5d7a-4c11-9a0e-2f4b8d9c1a2b"
        );
        assert!(matches!(endpoint_id("../settings"), Err(ConsoleError::NotFound)));
        assert!(matches!(endpoint_id(""), Err(ConsoleError::NotFound)));
    }

    #[test]
    fn a_replay_time_is_read_in_the_persons_time_zone() {
        let at = since_at("2026-12-24T09:30", "60").unwrap();
        assert_eq!(at.seconds, chrono::DateTime::parse_from_rfc3339("2026-12-24T08:30:00Z").unwrap().timestamp());
        assert!(since_at("yesterday", "0").is_err());
    }
}
