//! Live changes for the Leads page: `LeadService.WatchLeads` as Server-Sent Events. Each event
//! carries the lead's row as the page renders it, and the watch's cursor as its id, so that a
//! browser that reconnects (EventSource sends `Last-Event-ID`) resumes where it left off.

use crate::{AppState, error::ConsoleError, session::Session, views::LeadRow};
use askama::Template;
use axum::{
    extract::{RawQuery, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::StreamExt;
use leads_proto::v1 as pb;

#[derive(Template)]
#[template(path = "row.html")]
struct Row {
    lead: LeadRow,
}

/// What the page's script receives for one change.
#[derive(serde::Serialize)]
struct Change {
    kind: String,
    lead_id: String,
    /// The row as it now is; empty when the lead left the person's view.
    row: String,
}

/// The watch's `caught_up` marker: no change to show, but its cursor is where a reconnecting
/// browser resumes.
const CAUGHT_UP: &str = "caught_up";

fn event_of(change: pb::LeadWatchEvent) -> Event {
    if change.kind == CAUGHT_UP {
        // An event with an id and no data moves the browser's Last-Event-ID and shows nothing.
        return Event::default().id(change.cursor);
    }
    let row = change
        .lead
        .as_ref()
        .map(|lead| Row { lead: LeadRow::of(lead) }.render().unwrap_or_default())
        .unwrap_or_default();
    let name = if change.kind == "created" {
        "created"
    } else if row.is_empty() {
        "left"
    } else {
        "changed"
    };
    let data = Change { kind: change.kind, lead_id: change.lead_id, row };
    Event::default().id(change.cursor).event(name).data(serde_json::to_string(&data).unwrap_or_default())
}

/// What the page's script is told when the changes since its cursor are no longer kept.
fn reload() -> Event {
    Event::default().event("reload").data("the list changed too much while you were away: reload it")
}

pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ConsoleError> {
    let session = Session::from_headers(&headers)?;
    // A reconnecting browser's Last-Event-ID wins over the cursor of the page it loaded.
    let cursor = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| crate::query::field(query.as_deref(), "cursor"));
    let request = crate::backends::authorized_stream(
        &session.token,
        pb::WatchLeadsRequest { org_id: session.org_id.clone(), cursor },
    );
    let stopping = state.stopping.clone();
    let changes = match state.backends.lead.clone().watch_leads(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            let once = futures::stream::iter([Ok::<_, std::convert::Infallible>(reload())]);
            return Ok(Sse::new(once).into_response());
        }
        Err(status) => return Err(status.into()),
    };
    // A watch that ends (the lead service stopping, say) ends the stream: the browser comes
    // back with its Last-Event-ID and misses nothing.
    let events = changes
        .take_while(|change| {
            if let Err(status) = change {
                tracing::info!(code = ?status.code(), "lead watch ended");
            }
            futures::future::ready(change.is_ok())
        })
        .filter_map(|change| {
            futures::future::ready(change.ok().map(|c| Ok::<_, std::convert::Infallible>(event_of(c))))
        })
        .take_until(async move { stopping.cancelled().await });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}
