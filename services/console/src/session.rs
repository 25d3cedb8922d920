//! The signed-in person: their tokens, one per organisation they signed in to, in an HttpOnly,
//! SameSite=Strict cookie (Secure under TLS). The console cannot verify a token (it holds no
//! key) and does not need to: it only reads who the token says it is, to shape the page, and
//! the services verify it on every call.

use crate::error::ConsoleError;
use axum::http::{HeaderMap, header};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SESSION_COOKIE: &str = "leads_session";
/// A random value given before sign-in, so that the sign-in form has a CSRF token too.
pub const PRE_SESSION_COOKIE: &str = "leads_presession";

/// What a token says of its holder (read, not verified).
#[derive(Debug, Clone, Deserialize)]
pub struct Holder {
    pub sub: String,
    pub role: String,
    #[serde(default)]
    pub agent_id: Option<String>,
    pub exp: i64,
}

/// The cookie's contents: the organisation shown, and a token per organisation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    current: String,
    tokens: BTreeMap<String, String>,
}

/// A signed-in person, as the request's cookie says.
#[derive(Debug, Clone)]
pub struct Session {
    pub org_id: String,
    pub token: String,
    pub holder: Holder,
    /// The other organisations the person is signed in to.
    pub other_orgs: Vec<String>,
    /// The cookie's value, from which the CSRF token is derived.
    raw: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.holder.role == "admin"
    }

    /// Whether the person may change leads in bulk and export every lead.
    pub fn runs_the_desk(&self) -> bool {
        matches!(self.holder.role.as_str(), "admin" | "operator")
    }

    /// The token every form of the page carries against cross-site requests.
    pub fn csrf_token(&self) -> String {
        csrf_token_for(&self.raw)
    }

    /// The session, from the request's cookie; `SignedOut` without one, or when the shown
    /// organisation's token has expired.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ConsoleError> {
        let raw = cookie(headers, SESSION_COOKIE).ok_or(ConsoleError::SignedOut)?;
        let stored = decode_stored(&raw).ok_or(ConsoleError::SignedOut)?;
        let token = stored.tokens.get(&stored.current).cloned().ok_or(ConsoleError::SignedOut)?;
        let holder = read_holder(&token).ok_or(ConsoleError::SignedOut)?;
        if holder.exp <= chrono::Utc::now().timestamp() {
            return Err(ConsoleError::SignedOut);
        }
        let other_orgs = stored.tokens.keys().filter(|org| **org != stored.current).cloned().collect();
        Ok(Self { org_id: stored.current, token, holder, other_orgs, raw })
    }
}

/// The cookie value after signing in to `org_id` with `token`, keeping the tokens of the
/// other organisations the request's cookie holds.
pub fn signed_in_cookie(headers: &HeaderMap, org_id: &str, token: &str, secure: bool) -> String {
    let mut stored = cookie(headers, SESSION_COOKIE).and_then(|raw| decode_stored(&raw)).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    stored.tokens.retain(|_, token| read_holder(token).is_some_and(|holder| holder.exp > now));
    stored.tokens.insert(org_id.to_owned(), token.to_owned());
    org_id.clone_into(&mut stored.current);
    session_cookie(&encode_stored(&stored), secure)
}

/// The cookie value that shows `org_id`, one of the organisations already signed in to.
pub fn switched_cookie(headers: &HeaderMap, org_id: &str, secure: bool) -> Option<String> {
    let mut stored = cookie(headers, SESSION_COOKIE).and_then(|raw| decode_stored(&raw))?;
    stored.tokens.contains_key(org_id).then(|| {
        org_id.clone_into(&mut stored.current);
        session_cookie(&encode_stored(&stored), secure)
    })
}

/// The value of a session cookie holding `token` for `org_id` alone: what a browser sends after
/// signing in there (for tools that call the console without a browser).
pub fn session_cookie_value(org_id: &str, token: &str) -> String {
    let tokens = BTreeMap::from([(org_id.to_owned(), token.to_owned())]);
    encode_stored(&Stored { current: org_id.to_owned(), tokens })
}

fn session_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A fresh pre-session cookie and its value.
pub fn pre_session_cookie(secure: bool) -> (String, String) {
    let value = random_token();
    let secure = if secure { "; Secure" } else { "" };
    (format!("{PRE_SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"), value)
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The CSRF token of a cookie value: a hash no other site can compute, since it cannot read
/// the cookie (HttpOnly, and the browser sends it only to this origin).
pub fn csrf_token_for(cookie_value: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("leads-console-csrf:{cookie_value}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18])
}

/// The value of the request's cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

fn encode_stored(stored: &Stored) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(stored).unwrap_or_default())
}

fn decode_stored(raw: &str) -> Option<Stored> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The claims of a JWT, read without verifying its signature.
pub fn read_holder(token: &str) -> Option<Holder> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(org: &str, exp: i64) -> String {
        let claims =
            serde_json::json!({"sub": "ann@acme.test", "orgs": [org], "role": "agent", "agent_id": "ann", "exp": exp});
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("e30.{payload}.sig")
    }

    fn headers_with(cookie_line: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = cookie_line.split(';').next().unwrap().to_owned();
        headers.insert(header::COOKIE, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_person_signed_in_to_two_organisations_switches_between_them() {
        let later = chrono::Utc::now().timestamp() + 3600;
        let first = signed_in_cookie(&HeaderMap::new(), "acme", &token("acme", later), true);
        assert!(first.contains("HttpOnly") && first.contains("SameSite=Strict") && first.contains("Secure"));
        let second = signed_in_cookie(&headers_with(&first), "globex", &token("globex", later), false);
        assert!(!second.contains("Secure"));
        let session = Session::from_headers(&headers_with(&second)).unwrap();
        assert_eq!((session.org_id.as_str(), session.other_orgs.as_slice()), ("globex", &["acme".to_owned()][..]));
        assert_eq!(session.holder.agent_id.as_deref(), Some("ann"));
        let back = switched_cookie(&headers_with(&second), "acme", false).unwrap();
        assert_eq!(Session::from_headers(&headers_with(&back)).unwrap().org_id, "acme");
        assert!(switched_cookie(&headers_with(&second), "initech", false).is_none(), "not signed in there");
        assert_ne!(session.csrf_token(), Session::from_headers(&headers_with(&back)).unwrap().csrf_token());
    }

    #[test]
    fn an_expired_or_garbled_session_is_signed_out() {
        let past = chrono::Utc::now().timestamp() - 1;
        let expired = signed_in_cookie(&HeaderMap::new(), "acme", &token("acme", past), false);
        assert!(matches!(Session::from_headers(&headers_with(&expired)), Err(ConsoleError::SignedOut)));
        assert!(matches!(Session::from_headers(&headers_with("leads_session=garbage")), Err(ConsoleError::SignedOut)));
        assert!(matches!(Session::from_headers(&HeaderMap::new()), Err(ConsoleError::SignedOut)));
    }
}
