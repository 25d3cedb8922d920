//! What every answer carries and every state-changing request must show: the security headers
//! (a Content-Security-Policy that allows no inline script), the CSRF check, and the assets
//! embedded in the binary (nothing is fetched from elsewhere at run time).

use crate::session::{self, PRE_SESSION_COOKIE, SESSION_COOKIE};
use axum::{
    body::{Body, Bytes},
    extract::{Path, Request},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Scripts, styles and connections from this origin only; no inline script or style, no
/// `eval`, no framing, forms posted here only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest form the console reads to find its CSRF token: a bulk change of the services'
/// most leads, by id.
const MAX_FORM_BYTES: usize = 1 << 20;

pub async fn headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !is_asset && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn forbidden(why: &str) -> Response {
    crate::error::ConsoleError::Forbidden(format!("{why}: reload the page and try again")).into_response()
}

/// Refuses a state-changing request that does not carry the token of its page, in the
/// `x-csrf-token` header (htmx) or the form's `_csrf` field: a page of another site can make a
/// browser post here, but cannot know the token, which is derived from the session cookie it
/// cannot read.
pub async fn csrf(request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let Some(cookie) = session::cookie(request.headers(), SESSION_COOKIE)
        .or_else(|| session::cookie(request.headers(), PRE_SESSION_COOKIE))
    else {
        return forbidden("This form has expired");
    };
    let expected = session::csrf_token_for(&cookie);
    let header_token = request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if header_token.as_deref().is_some_and(|token| same(token, &expected)) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response();
    };
    let form_token = crate::query::pairs(&String::from_utf8_lossy(&bytes))
        .into_iter()
        .find(|(key, _)| key == "_csrf")
        .map(|(_, value)| value);
    if !form_token.as_deref().is_some_and(|token| same(token, &expected)) {
        tracing::info!(path = %parts.uri.path(), "request without its page's csrf token refused");
        return forbidden("This request did not come from the console's own page");
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Compares in time independent of where the two differ.
fn same(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

const HTMX: &[u8] = include_bytes!("../assets/htmx.min.js");
/// The same file as htmx ships it gzipped (a third of the bytes): most browsers take this one.
const HTMX_GZIP: &[u8] = include_bytes!("../assets/htmx.min.js.gz");
const SCRIPT: &[u8] = include_bytes!("../assets/console.js");
const STYLE: &[u8] = include_bytes!("../assets/console.css");

pub async fn asset(Path(name): Path<String>, headers: axum::http::HeaderMap) -> Response {
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accepted| accepted.split(',').any(|e| e.trim().starts_with("gzip")));
    let (body, content_type, encoding) = match name.as_str() {
        "htmx.min.js" if gzip => (HTMX_GZIP, "text/javascript; charset=utf-8", Some("gzip")),
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8", None),
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8", None),
        "console.css" => (STYLE, "text/css; charset=utf-8", None),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "accept-encoding"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        Bytes::from_static(body),
    )
        .into_response();
    if let Some(encoding) = encoding {
        response.headers_mut().insert(header::CONTENT_ENCODING, axum::http::HeaderValue::from_static(encoding));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32 (IEEE), as a gzip trailer holds it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn the_gzipped_htmx_is_the_same_file() {
        let trailer = &HTMX_GZIP[HTMX_GZIP.len() - 8..];
        let crc = u32::from_le_bytes(trailer[..4].try_into().unwrap());
        let size = u32::from_le_bytes(trailer[4..].try_into().unwrap());
        assert_eq!((crc, size as usize), (crc32(HTMX), HTMX.len()), "replace both files together");
    }
}
