//! What the notifications service tells the signed-in person: the bell in every page's header
//! (its unread count, polled by htmx), the list of notifications with read and unread, and the
//! notification part of the Settings page. An agent reads its own; admins and operators read
//! the admins' ones, or an agent's they pick. The service decides who may read whose.

use crate::{
    AppState,
    backends::authorized,
    error::ConsoleError,
    pages::{Chrome, Page, agents_of, html, see_other},
    query,
    session::Session,
    views::When,
};
use askama::Template;
use axum::{
    Form,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Response},
};
use leads_proto::v1 as pb;
use serde::Deserialize;

/// The most notifications a page lists.
const PAGE_SIZE: i32 = 50;

/// The event htmx raises on the page once notifications are marked read: the bell listens.
const READ_EVENT: &str = "notifications-read";

/// Whose notifications a request reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reader {
    /// The agent; empty for an agent token (the service reads its own from the token) and for
    /// the admins' ones.
    agent_id: String,
    admins: bool,
}

impl Reader {
    /// An agent reads its own (its id from the session when the token carries one: the
    /// service accepts its own id or none). Admins and operators read the agent they picked,
    /// or the admins' notifications.
    fn of(session: &Session, picked_agent: &str) -> Self {
        if session.holder.role == "agent" {
            return Self { agent_id: session.holder.agent_id.clone().unwrap_or_default(), admins: false };
        }
        match picked_agent.trim() {
            "" => Self { agent_id: String::new(), admins: true },
            agent => Self { agent_id: agent.to_owned(), admins: false },
        }
    }
}

async fn list(
    state: &AppState,
    session: &Session,
    reader: &Reader,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListNotificationsResponse, ConsoleError> {
    let request = pb::ListNotificationsRequest {
        org_id: session.org_id.clone(),
        agent_id: reader.agent_id.clone(),
        admins: reader.admins,
        unread_only: false,
        page_size,
        page_token: page_token.to_owned(),
    };
    Ok(state.backends.notifications.clone().list_notifications(authorized(&session.token, request)).await?.into_inner())
}

#[derive(Template)]
#[template(path = "bell.html")]
struct Bell {
    unread: i64,
}

/// The bell with the person's unread count, as htmx polls it. Anything but a count (signed
/// out, the service not answering) leaves the bell as it is: a poll is no place for an error.
pub async fn bell(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Ok(session) = Session::from_headers(&headers) else { return StatusCode::NO_CONTENT.into_response() };
    let reader = Reader::of(&session, "");
    match list(&state, &session, &reader, 1, "").await {
        Ok(answer) => match (Bell { unread: answer.unread }).render() {
            Ok(body) => Html(body).into_response(),
            Err(error) => ConsoleError::from(error).into_response(),
        },
        Err(error) => {
            tracing::debug!(?error, "the bell's unread count is not known");
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// One notification as the list shows it.
struct Line {
    id: String,
    summary: String,
    at: When,
    read: bool,
    /// The lead's page (the list with its drawer open); empty when it names no lead.
    lead_href: String,
}

/// The list part of the page: what htmx polls and swaps.
#[derive(Template)]
#[template(path = "notification_list.html")]
struct ListPart {
    csrf: String,
    /// The agent picked (the forms send it back); empty for an agent's own and the admins'.
    agent: String,
    whose: String,
    unread: i64,
    lines: Vec<Line>,
    /// This view's query, which the poll asks for again.
    query: String,
    /// The next page's query; empty on the last page.
    next_page: String,
    /// Only the first page follows what arrives: a later page would shift under the reader.
    live: bool,
}

#[derive(Template)]
#[template(path = "notifications.html")]
struct NotificationsPage {
    chrome: Chrome,
    /// (agent id, label) an admin or operator may pick.
    agents: Vec<(String, String)>,
    /// The agent picked.
    agent: String,
    /// The list part, rendered (escaped) on its own: the same part the poll answers.
    list: String,
}

async fn list_part(
    state: &AppState,
    session: &Session,
    picked_agent: &str,
    page_token: &str,
) -> Result<ListPart, ConsoleError> {
    let reader = Reader::of(session, picked_agent);
    let answer = list(state, session, &reader, PAGE_SIZE, page_token).await?;
    let agent = if session.runs_the_desk() { reader.agent_id.clone() } else { String::new() };
    let view = |page: &str| {
        let mut pairs = Vec::new();
        if !agent.is_empty() {
            pairs.push(format!("agent={}", query::encode(&agent)));
        }
        if !page.is_empty() {
            pairs.push(format!("page={}", query::encode(page)));
        }
        pairs.join("&")
    };
    let whose = match (reader.admins, agent.is_empty()) {
        (true, _) => "The admins' notifications".to_owned(),
        (false, true) => "Your notifications".to_owned(),
        (false, false) => format!("Notifications of agent {agent}"),
    };
    let lines = answer
        .notifications
        .iter()
        .map(|n| Line {
            id: n.id.clone(),
            summary: if n.summary.is_empty() { n.r#type.clone() } else { n.summary.clone() },
            at: When::of(n.occurred_at.as_ref()),
            read: n.read,
            lead_href: if n.lead_id.is_empty() {
                String::new()
            } else {
                format!("/leads/{}", query::encode(&n.lead_id))
            },
        })
        .collect();
    Ok(ListPart {
        csrf: session.csrf_token(),
        whose,
        unread: answer.unread,
        lines,
        query: view(page_token),
        next_page: if answer.next_page_token.is_empty() { String::new() } else { view(&answer.next_page_token) },
        live: page_token.is_empty(),
        agent,
    })
}

/// The Notifications page: `agent` (admins and operators) picks whose, `page` a later page.
pub async fn notifications(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = Session::from_headers(&headers)?;
    let (picked, page_token) = (query::field(raw.as_deref(), "agent"), query::field(raw.as_deref(), "page"));
    let agents = async {
        if !session.runs_the_desk() {
            return Vec::new();
        }
        // The page still serves without the assignment service: only the choice of agent lacks.
        agents_of(&state, &session, false).await.unwrap_or_default()
    };
    let (part, agents) = tokio::join!(list_part(&state, &session, &picked, &page_token), agents);
    let agents = agents
        .into_iter()
        .map(|a| {
            let label = if a.name.is_empty() { a.agent_id.clone() } else { format!("{} ({})", a.name, a.agent_id) };
            (a.agent_id, label)
        })
        .collect();
    let part = part?;
    let page = NotificationsPage {
        chrome: Chrome::of(&session, "notifications"),
        agents,
        agent: part.agent.clone(),
        list: part.render()?,
    };
    html(&page)
}

/// The list alone, as the page's poll asks for it.
pub async fn notification_list(State(state): State<AppState>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = Session::from_headers(&headers)?;
    let (picked, page_token) = (query::field(raw.as_deref(), "agent"), query::field(raw.as_deref(), "page"));
    html(&list_part(&state, &session, &picked, &page_token).await?)
}

#[derive(Deserialize)]
pub struct ReadForm {
    #[serde(default)]
    agent: String,
    /// One notification to mark.
    #[serde(default)]
    id: String,
    /// Present: every notification up to now.
    all: Option<String>,
}

pub async fn mark_read(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<ReadForm>) -> Response {
    let fragment = headers.contains_key("hx-request");
    let answer = mark(&state, &headers, &form).await;
    match (answer, fragment) {
        (Ok(part), true) => match part.render() {
            Ok(body) => {
                let mut response = Html(body).into_response();
                response.headers_mut().insert("hx-trigger", HeaderValue::from_static(READ_EVENT));
                response
            }
            Err(error) => ConsoleError::from(error).for_fragment(),
        },
        (Ok(part), false) => see_other(&if part.agent.is_empty() {
            "/notifications".into()
        } else {
            format!("/notifications?{}", part.query)
        }),
        (Err(error), true) => error.for_fragment(),
        (Err(error), false) => error.into_response(),
    }
}

/// Marks what the form names, then the first page of the same list as it now is.
async fn mark(state: &AppState, headers: &HeaderMap, form: &ReadForm) -> Result<ListPart, ConsoleError> {
    let session = Session::from_headers(headers)?;
    let reader = Reader::of(&session, &form.agent);
    let (ids, up_to) = match (form.all.is_some(), form.id.trim()) {
        (true, _) => {
            let now = chrono::Utc::now();
            // To the nanosecond: a notification of this very second is one the person saw.
            let nanos = i32::try_from(now.timestamp_subsec_nanos()).unwrap_or_default();
            (Vec::new(), Some(prost_types::Timestamp { seconds: now.timestamp(), nanos }))
        }
        (false, "") => return Err(ConsoleError::BadRequest("Choose a notification to mark read.".into())),
        (false, id) => (vec![id.to_owned()], None),
    };
    let request = pb::MarkNotificationsReadRequest {
        org_id: session.org_id.clone(),
        agent_id: reader.agent_id.clone(),
        admins: reader.admins,
        ids,
        up_to,
    };
    state.backends.notifications.clone().mark_notifications_read(authorized(&session.token, request)).await?;
    list_part(state, &session, &form.agent, "").await
}

/// A refusal that names one of `fields` first (`url: is a loopback address, ...`), as the
/// services' invalid arguments do: (field, the service's words).
pub(crate) fn refused_field(error: &ConsoleError, fields: &[&str]) -> Option<(String, String)> {
    let message = match error {
        ConsoleError::Grpc(status) if status.code() == tonic::Code::InvalidArgument => status.message(),
        ConsoleError::BadRequest(message) => message.as_str(),
        _ => return None,
    };
    let (field, _) = message.split_once(": ")?;
    fields.contains(&field).then(|| (field.to_owned(), message.to_owned()))
}

/// The notification part of the Settings page, kept by the notifications service.
pub struct NotificationsSection {
    /// False when the service did not answer: the rest of the page still serves.
    pub available: bool,
    pub version: i64,
    pub remind_before_minutes: String,
    pub overdue_after_minutes: String,
    pub escalate_overdue: bool,
    /// The field the service refused, and its words.
    pub refused: Option<(String, String)>,
}

impl NotificationsSection {
    /// The refusal's words when it names `field`, else empty.
    pub fn error_of(&self, field: &str) -> &str {
        self.refused.as_ref().filter(|(f, _)| f == field).map_or("", |(_, message)| message.as_str())
    }
}

/// The fields of the notifications form a refusal may name.
const SETTINGS_FIELDS: [&str; 3] = ["remind_before_minutes", "overdue_after_minutes", "escalate_overdue"];

pub(crate) async fn notifications_section(state: &AppState, session: &Session) -> NotificationsSection {
    let request = pb::GetNotificationSettingsRequest { org_id: session.org_id.clone() };
    match state.backends.notifications.clone().get_notification_settings(authorized(&session.token, request)).await {
        Ok(settings) => {
            let settings = settings.into_inner();
            NotificationsSection {
                available: true,
                version: settings.version,
                remind_before_minutes: settings.remind_before_minutes.to_string(),
                overdue_after_minutes: settings.overdue_after_minutes.to_string(),
                escalate_overdue: settings.escalate_overdue,
                refused: None,
            }
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), "the notification settings are not known");
            NotificationsSection {
                available: false,
                version: 0,
                remind_before_minutes: String::new(),
                overdue_after_minutes: String::new(),
                escalate_overdue: false,
                refused: None,
            }
        }
    }
}

#[derive(Deserialize)]
pub struct NotificationSettingsForm {
    version: i64,
    #[serde(default)]
    remind_before_minutes: String,
    #[serde(default)]
    overdue_after_minutes: String,
    /// A checkbox: present when ticked.
    escalate_overdue: Option<String>,
}

fn minutes(field: &str, value: &str) -> Result<i32, ConsoleError> {
    value.trim().parse().map_err(|_| ConsoleError::BadRequest(format!("{field}: give a whole number of minutes")))
}

async fn save_notification_settings(
    state: &AppState,
    session: &Session,
    form: &NotificationSettingsForm,
) -> Result<(), ConsoleError> {
    let request = pb::UpdateNotificationSettingsRequest {
        org_id: session.org_id.clone(),
        remind_before_minutes: Some(minutes("remind_before_minutes", &form.remind_before_minutes)?),
        overdue_after_minutes: Some(minutes("overdue_after_minutes", &form.overdue_after_minutes)?),
        escalate_overdue: Some(form.escalate_overdue.is_some()),
        // Two admins editing at once: the second is told, rather than undoing the first.
        expected_version: Some(form.version),
    };
    state.backends.notifications.clone().update_notification_settings(authorized(&session.token, request)).await?;
    Ok(())
}

pub async fn update_notification_settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<NotificationSettingsForm>,
) -> Page {
    let session = Session::from_headers(&headers)?;
    let error = match save_notification_settings(&state, &session, &form).await {
        Ok(()) => return Ok(see_other("/settings")),
        Err(error) => error,
    };
    let Some(refused) = refused_field(&error, &SETTINGS_FIELDS) else { return Err(error) };
    let mut page = crate::settings_page::settings_page(&state, &session).await?;
    // What the person sent, on the version it was sent against.
    page.notifications = NotificationsSection {
        available: true,
        version: form.version,
        remind_before_minutes: form.remind_before_minutes,
        overdue_after_minutes: form.overdue_after_minutes,
        escalate_overdue: form.escalate_overdue.is_some(),
        refused: Some(refused),
    };
    crate::settings_page::offer_new_routes(&mut page);
    crate::settings_page::refused(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_found_by_the_field_it_names() {
        let loopback = ConsoleError::Grpc(tonic::Status::invalid_argument(
            "url: is a loopback address, where webhooks may not go",
        ));
        assert_eq!(
            refused_field(&loopback, &["url", "description"]),
            Some(("url".into(), "url: is a loopback address, where webhooks may not go".into()))
        );
        assert_eq!(refused_field(&loopback, &["description"]), None);
        let conflict = ConsoleError::Grpc(tonic::Status::aborted("url: changed meanwhile"));
        assert_eq!(refused_field(&conflict, &["url"]), None, "a conflict is not a field's refusal");
    }
}
