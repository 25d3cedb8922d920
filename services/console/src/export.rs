//! Exports as CSV downloads, streamed from `LeadService.ExportLeads` as it answers: the
//! current page (the rows shown) or every lead matching the filters.

use crate::{AppState, error::ConsoleError, query::ListView, session::Session};
use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use leads_proto::v1 as pb;

pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ConsoleError> {
    let session = Session::from_headers(&headers)?;
    let query = query.unwrap_or_default();
    let all = crate::query::pairs(&query).iter().any(|(k, v)| k == "scope" && v == "all");
    let view = ListView::parse(&query)?;
    let scope = if all { pb::ExportScope::All } else { pb::ExportScope::CurrentPage };
    let request = crate::backends::authorized_stream(
        &session.token,
        pb::ExportLeadsRequest { query: Some(view.to_request(&session.org_id)), scope: scope as i32 },
    );
    let chunks = state.backends.lead.clone().export_leads(request).await?.into_inner();
    let body = Body::from_stream(chunks.map(|chunk| {
        chunk.map(|c| axum::body::Bytes::from(c.csv)).map_err(|status| {
            tracing::warn!(code = ?status.code(), "export ended early");
            std::io::Error::other(status.message().to_owned())
        })
    }));
    let name = format!(
        "leads-{}-{}-{}.csv",
        session.org_id,
        if all { "all" } else { "page" },
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    );
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
