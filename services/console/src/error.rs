//! What a page answers when a call fails: the service's own words where they are meant for
//! the caller (a refused field, an inactive lead), never internal detail.

use askama::Template;
use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
};
use tonic::Code;

#[derive(Debug)]
pub enum ConsoleError {
    /// No session, or one the services no longer accept: sign in again.
    SignedOut,
    /// A call the services answered with an error.
    Grpc(tonic::Status),
    /// A request the console itself refuses, with why.
    BadRequest(String),
    /// A state-changing request without the page's CSRF token.
    Forbidden(String),
    /// A page that does not exist.
    NotFound,
    /// Rendering failed: a fault of ours.
    Internal(String),
}

impl From<tonic::Status> for ConsoleError {
    fn from(status: tonic::Status) -> Self {
        ConsoleError::Grpc(status)
    }
}

impl From<askama::Error> for ConsoleError {
    fn from(error: askama::Error) -> Self {
        ConsoleError::Internal(error.to_string())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "flash.html")]
struct Flash<'a> {
    message: &'a str,
}

impl ConsoleError {
    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ConsoleError::SignedOut => (StatusCode::UNAUTHORIZED, "Sign in again.".into()),
            ConsoleError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            ConsoleError::Forbidden(message) => (StatusCode::FORBIDDEN, message.clone()),
            ConsoleError::NotFound => (StatusCode::NOT_FOUND, "There is no such page.".into()),
            ConsoleError::Internal(detail) => {
                tracing::error!(%detail, "console page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side.".into())
            }
            ConsoleError::Grpc(status) => match status.code() {
                Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Sign in again.".into()),
                Code::PermissionDenied => (StatusCode::FORBIDDEN, status.message().to_owned()),
                Code::NotFound => (StatusCode::NOT_FOUND, status.message().to_owned()),
                Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, status.message().to_owned()),
                Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
                    (StatusCode::CONFLICT, status.message().to_owned())
                }
                Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, status.message().to_owned()),
                code => {
                    tracing::warn!(?code, "a service did not answer the console");
                    (StatusCode::SERVICE_UNAVAILABLE, "A service is unavailable; try again shortly.".into())
                }
            },
        }
    }

    /// The answer to a request made by htmx: the message in the page's alert region, so that
    /// the part of the page being changed stays as it was.
    pub fn for_fragment(self) -> Response {
        if self.signs_out() {
            return signed_out(true);
        }
        let (_, message) = self.status_and_message();
        let body = Flash { message: &message }.render().unwrap_or_default();
        let mut response = Html(body).into_response();
        let headers = response.headers_mut();
        headers.insert("hx-retarget", HeaderValue::from_static("#flash"));
        headers.insert("hx-reswap", HeaderValue::from_static("innerHTML"));
        response
    }

    fn signs_out(&self) -> bool {
        matches!(self, ConsoleError::SignedOut)
            || matches!(self, ConsoleError::Grpc(status) if status.code() == Code::Unauthenticated)
    }
}

/// To the sign-in page, the session cookie cleared (an htmx request is redirected whole).
fn signed_out(fragment: bool) -> Response {
    let mut response = if fragment {
        let mut response = StatusCode::NO_CONTENT.into_response();
        response.headers_mut().insert("hx-redirect", HeaderValue::from_static("/sign-in"));
        response
    } else {
        Redirect::to("/sign-in").into_response()
    };
    if let Ok(cookie) = HeaderValue::from_str(&crate::session::clear_cookie()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if self.signs_out() {
            return signed_out(false);
        }
        let (status, message) = self.status_and_message();
        let title = status.canonical_reason().unwrap_or("Error");
        let body = ErrorPage { title, message: &message }.render().unwrap_or_else(|_| message.clone());
        (status, Html(body)).into_response()
    }
}
