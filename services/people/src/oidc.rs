//! Sign-in at an organisation's OpenID Connect provider: the authorization code flow with
//! PKCE (RFC 7636, S256). An admin sets the provider (`SetOidcProvider`); `BeginOidcSignIn`
//! keeps a PKCE verifier and a nonce under a random state (only its SHA-256 is the key) for
//! ten minutes and answers where to send the browser; `CompleteOidcSignIn` uses the state up,
//! exchanges the code at the provider's token endpoint with the verifier, verifies the ID token
//! (signature against the provider's published keys, issuer, audience, expiry, nonce), and
//! signs in the active person of the organisation whose email the token carries. Signing in
//! creates no account.
//!
//! The provider's discovery document and keys are read over HTTPS (plain HTTP only to an
//! address inside `people.oidc_allowed_networks`) through `platform::egress`, which reaches no
//! private, loopback or otherwise internal address outside those networks, and kept for an
//! hour; keys are read again at once when a token names one that is not known, as after a
//! rotation.

use crate::{
    PeopleContext,
    directory::{self, Actor, Session},
    error::PeopleError,
    password::{self, OneTimeCode},
};
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use contracts::values::mask::mask_email;
use http_body_util::Full;
use hyper::{
    Request, StatusCode,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, Jwk, PublicKeyUse},
};
use platform::egress::{EgressError, EgressPolicy, GuardedClient};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How long a begun sign-in may take to complete.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The claim an ID token carries the person's email in unless the provider's settings say.
pub const DEFAULT_EMAIL_CLAIM: &str = "email";
/// What is asked of the provider: the ID token, with the email and name.
const SCOPE: &str = "openid email profile";
/// How long a provider's discovery document and keys are used before they are read again.
const CACHE_FOR: Duration = Duration::from_secs(3600);
/// A token naming an unknown key makes the keys be read again, at most this often.
const KEYS_REREAD_AFTER: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// An answer of the provider longer than this is refused unread.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Clock difference allowed with the provider on `exp`.
const LEEWAY_SECS: u64 = 60;
/// Asymmetric algorithms only: a key the provider publishes can never serve as an HMAC secret.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// An organisation's provider as `SetOidcProvider` gives it, checked.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub org_id: String,
    pub issuer: String,
    pub client_id: String,
    /// None: keep the secret set earlier for the same issuer and client, if any.
    pub client_secret: Option<String>,
    pub redirect_uri: String,
    pub email_claim: String,
}

/// An organisation's provider as it is answered: without its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderRow {
    pub org_id: String,
    pub issuer: String,
    pub client_id: String,
    pub has_client_secret: bool,
    pub redirect_uri: String,
    pub email_claim: String,
    pub updated_at: DateTime<Utc>,
}

/// Why `url` cannot be a provider's: it must be https, or http to an address inside the
/// allowed networks (a name could resolve anywhere, and plain HTTP across the internet would
/// hand the client secret and the codes to whoever is on the way), with no credentials in it.
/// An address outside the allowed networks that `policy` refuses is refused here already;
/// a name's addresses are checked when it is called.
pub fn check_provider_url(url: &str, policy: &EgressPolicy) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    let authority = uri.authority().ok_or_else(|| "is not an absolute URL".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("must not hold credentials".into());
    }
    let address = authority.host().trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
    if let Some(address) = address
        && let Some(reason) = policy.refusal(address)
    {
        return Err(format!("names {address}, which is {reason} and outside people.oidc_allowed_networks"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if address.is_some_and(|address| policy.allows(address)) => Ok(()),
        _ => Err("must start with https:// (http:// only to an address in people.oidc_allowed_networks)".into()),
    }
}

/// Why `url` cannot be a redirect URI: the provider sends a browser there, so any http(s) URL
/// without a fragment will do.
pub fn check_redirect_uri(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if url.contains('#') {
        return Err("must not hold a fragment".into());
    }
    Ok(())
}

/// `value` percent-encoded for a query string or a form body: everything but RFC 3986's
/// unreserved characters.
fn encode(value: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect::<Vec<_>>().join("&")
}

/// What of a provider's discovery document the flow uses.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

impl Discovery {
    /// The provider takes a client secret only in the form body: it lists client_secret_post
    /// and not client_secret_basic (the default when it lists nothing).
    fn secret_in_body(&self) -> bool {
        self.token_endpoint_auth_methods_supported.as_ref().is_some_and(|methods| {
            methods.iter().any(|m| m == "client_secret_post") && !methods.iter().any(|m| m == "client_secret_basic")
        })
    }
}

type Cache<T> = Mutex<HashMap<String, (Instant, Arc<T>)>>;

/// The provider's answers kept for `fresh_for`.
fn cached<T>(cache: &Cache<T>, key: &str, fresh_for: Duration) -> Option<Arc<T>> {
    let cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.get(key).filter(|(at, _)| at.elapsed() < fresh_for).map(|(_, value)| value.clone())
}

fn keep<T>(cache: &Cache<T>, key: &str, value: T) -> Arc<T> {
    let value = Arc::new(value);
    cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key.to_owned(), (Instant::now(), value.clone()));
    value
}

/// Talks to the providers: HTTP, and what it keeps of their answers.
pub struct Oidc {
    client: GuardedClient,
    discovered: Cache<Discovery>,
    keys: Cache<Vec<Jwk>>,
}

impl Oidc {
    /// Reaches the providers where `policy` allows: public addresses, and its networks.
    pub fn new(policy: EgressPolicy) -> anyhow::Result<Self> {
        Ok(Self { client: GuardedClient::new(policy)?, discovered: Mutex::default(), keys: Mutex::default() })
    }

    pub fn policy(&self) -> &EgressPolicy {
        self.client.policy()
    }

    /// Sends `request` and reads the answer whole, within `HTTP_TIMEOUT`. A redirect is an
    /// answer like any other, never followed.
    async fn send(&self, request: Request<Full<Bytes>>, what: &str) -> Result<(StatusCode, Bytes), PeopleError> {
        let response = self.client.send(request, HTTP_TIMEOUT, MAX_REPLY_BYTES).await.map_err(|error| match error {
            // Where the provider is, as set, is not for the platform to reach: trying again will not help.
            EgressError::Forbidden { .. } | EgressError::InvalidUrl(_) => {
                PeopleError::OidcConfiguration(format!("{what}: {error}"))
            }
            EgressError::Resolve(_) | EgressError::Timeout | EgressError::Connect(_) => {
                PeopleError::OidcUnavailable(format!("{what}: {error}"))
            }
        })?;
        if response.truncated {
            return Err(PeopleError::OidcUnavailable(format!("{what}: the answer is longer than 1 MiB")));
        }
        Ok((response.status, response.body_excerpt))
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, PeopleError> {
        let request = Request::get(url)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| PeopleError::OidcConfiguration(format!("{what}: not a URL")))?;
        let (status, body) = self.send(request, what).await?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(PeopleError::OidcUnavailable(format!("{what} answered HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(PeopleError::OidcConfiguration(format!("{what} answered HTTP {}", status.as_u16())));
        }
        serde_json::from_slice(&body)
            .map_err(|e| PeopleError::OidcConfiguration(format!("{what} is not what OpenID Connect says: {e}")))
    }

    /// The discovery document of `issuer`, read again when `fresh` or older than `CACHE_FOR`.
    async fn discover(&self, issuer: &str, fresh: bool) -> Result<Arc<Discovery>, PeopleError> {
        if !fresh && let Some(known) = cached(&self.discovered, issuer, CACHE_FOR) {
            return Ok(known);
        }
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let found: Discovery = self.get_json(&url, "the discovery document").await?;
        // OpenID Connect Discovery 1.0, section 4.3: what a document for another issuer says
        // (its keys among it) is not this provider's.
        if found.issuer != issuer {
            return Err(PeopleError::OidcConfiguration("the discovery document names another issuer".into()));
        }
        for (name, url) in [
            ("authorization_endpoint", &found.authorization_endpoint),
            ("token_endpoint", &found.token_endpoint),
            ("jwks_uri", &found.jwks_uri),
        ] {
            check_provider_url(url, self.policy()).map_err(|reason| {
                PeopleError::OidcConfiguration(format!("the discovery document's {name} {reason}"))
            })?;
        }
        Ok(keep(&self.discovered, issuer, found))
    }

    /// The keys at `jwks_uri`; read again when `reread` (a token named an unknown key) unless
    /// they were read within `KEYS_REREAD_AFTER`. A key this crate cannot read is left out.
    async fn keys(&self, jwks_uri: &str, reread: bool) -> Result<Arc<Vec<Jwk>>, PeopleError> {
        let fresh_for = if reread { KEYS_REREAD_AFTER } else { CACHE_FOR };
        if let Some(known) = cached(&self.keys, jwks_uri, fresh_for) {
            return Ok(known);
        }
        #[derive(Deserialize)]
        struct KeySet {
            keys: Vec<Value>,
        }
        let set: KeySet = self.get_json(jwks_uri, "the provider's keys (jwks_uri)").await?;
        let keys = set.keys.into_iter().filter_map(|key| serde_json::from_value::<Jwk>(key).ok()).collect();
        Ok(keep(&self.keys, jwks_uri, keys))
    }

    /// Trades the authorization code (with the PKCE verifier) for the ID token.
    async fn exchange(
        &self,
        discovery: &Discovery,
        client: &RelyingParty,
        code: &str,
        begun: &Begun,
    ) -> Result<String, PeopleError> {
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", begun.redirect_uri.as_str()),
            ("code_verifier", begun.code_verifier.as_str()),
        ];
        let mut request = Request::post(&discovery.token_endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        match &client.secret {
            None => fields.push(("client_id", client.id.as_str())),
            Some(secret) if discovery.secret_in_body() => {
                fields.push(("client_id", client.id.as_str()));
                fields.push(("client_secret", secret.as_str()));
            }
            Some(secret) => {
                // RFC 6749, section 2.3.1: each part form-encoded before the two are joined.
                let pair = format!("{}:{}", encode(&client.id), encode(secret));
                let mut value =
                    HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
                        .map_err(|_| PeopleError::internal("a client secret that is no header value"))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
        }
        let request = request
            .body(Full::new(Bytes::from(form(&fields))))
            .map_err(|_| PeopleError::OidcConfiguration("the token endpoint is not a URL".into()))?;
        let (status, body) = self.send(request, "the token endpoint").await?;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(PeopleError::OidcUnavailable(format!("the token endpoint answered HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(PeopleError::OidcRefused(format!(
                "the token endpoint answered {}",
                token_error(status, &body)
            )));
        }
        #[derive(Deserialize)]
        struct Tokens {
            id_token: Option<String>,
        }
        let tokens: Tokens = serde_json::from_slice(&body)
            .map_err(|_| PeopleError::OidcRefused("the token endpoint's answer is not JSON".into()))?;
        tokens.id_token.ok_or_else(|| PeopleError::OidcRefused("the token endpoint answered no id_token".into()))
    }

    /// The claims of `id_token` once its signature, issuer, audience, expiry and nonce hold.
    async fn verify(
        &self,
        discovery: &Discovery,
        id_token: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<Value, PeopleError> {
        let refused = |reason: &str| PeopleError::OidcRefused(format!("the ID token {reason}"));
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| refused("is not a JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(&format!("is signed with {:?}, which is not accepted", header.alg)));
        }
        let kid = header.kid.as_deref();
        let keys = self.keys(&discovery.jwks_uri, false).await?;
        let jwk = match pick(&keys, kid, header.alg) {
            Some(jwk) => jwk.clone(),
            None => {
                let keys = self.keys(&discovery.jwks_uri, true).await?;
                pick(&keys, kid, header.alg)
                    .cloned()
                    .ok_or_else(|| refused("is signed with no key the provider publishes"))?
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| refused("is signed with a key that cannot be read"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&discovery.issuer]);
        validation.set_audience(&[client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
            .map_err(|error| refused(invalid_because(&error)))?
            .claims;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(refused("does not carry the nonce of this sign-in"));
        }
        // OpenID Connect Core 1.0, section 3.1.3.7: a token for several audiences names the
        // one it was issued to.
        if claims.get("aud").and_then(Value::as_array).is_some_and(|aud| aud.len() > 1)
            && claims.get("azp").and_then(Value::as_str) != Some(client_id)
        {
            return Err(refused("was issued to another client (azp)"));
        }
        Ok(claims)
    }
}

/// The key of `keys` that signs a token with `kid` and `alg`: the one with that id or, without
/// one, the only key of the algorithm's family. Secrets (`oct`) and encryption keys never do.
fn pick<'a>(keys: &'a [Jwk], kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    // Both enums name each algorithm alike (RS256...).
    let declares =
        |jwk: &Jwk| jwk.common.key_algorithm.is_none_or(|declared| format!("{declared:?}") == format!("{alg:?}"));
    let usable = |jwk: &&Jwk| {
        !matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            && !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            && declares(jwk)
    };
    if let Some(kid) = kid {
        return keys.iter().filter(usable).find(|jwk| jwk.common.key_id.as_deref() == Some(kid));
    }
    let family = |jwk: &&Jwk| match jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    };
    let mut candidates = keys.iter().filter(usable).filter(family);
    let only = candidates.next();
    if candidates.next().is_some() { None } else { only }
}

fn invalid_because(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "has expired",
        ErrorKind::InvalidIssuer => "is from another issuer",
        ErrorKind::InvalidAudience => "was issued to another client",
        ErrorKind::InvalidSignature => "has a signature that does not verify",
        ErrorKind::MissingRequiredClaim(_) => "lacks exp, iss, aud or sub",
        ErrorKind::InvalidAlgorithm => "is signed with an algorithm its key is not for",
        _ => "is not valid",
    }
}

/// What a token endpoint said when it refused: its `error` and `error_description` (RFC 6749,
/// section 5.2), cut short and without control characters, or its HTTP status.
fn token_error(status: StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    let clean = |text: &str| text.chars().filter(|c| !c.is_control()).take(200).collect::<String>();
    match serde_json::from_slice::<Refusal>(body) {
        Ok(Refusal { error, error_description: Some(description) }) => {
            format!("{}: {}", clean(&error), clean(&description))
        }
        Ok(Refusal { error, error_description: None }) => clean(&error),
        Err(_) => format!("HTTP {}", status.as_u16()),
    }
}

/// The email `claims` carry in `claim`, as the directory keys it. A provider that says it has
/// not verified the address is not taken at its word.
fn email_of(claims: &Value, claim: &str) -> Result<String, PeopleError> {
    let value = claims
        .get(claim)
        .and_then(Value::as_str)
        .ok_or_else(|| PeopleError::OidcRefused(format!("the ID token has no {claim} claim")))?;
    if claim == DEFAULT_EMAIL_CLAIM {
        let verified = claims.get("email_verified");
        if verified == Some(&Value::Bool(false)) || verified.and_then(Value::as_str) == Some("false") {
            return Err(PeopleError::OidcRefused("the provider has not verified the email".into()));
        }
    }
    directory::normalize_email(value)
        .map_err(|_| PeopleError::OidcRefused(format!("the ID token's {claim} claim is not an email address")))
}

/// The client the organisation is at its provider.
struct RelyingParty {
    id: String,
    secret: Option<String>,
}

/// A sign-in as `BeginOidcSignIn` left it.
#[derive(sqlx::FromRow)]
struct Begun {
    org_id: String,
    issuer: String,
    client_id: String,
    redirect_uri: String,
    code_verifier: String,
    nonce: String,
    valid: bool,
}

/// Sets the organisation's provider once its discovery document reads as it should.
pub async fn set_provider(
    ctx: &PeopleContext,
    actor: &Actor,
    provider: ProviderSettings,
) -> Result<ProviderRow, PeopleError> {
    ctx.oidc.discover(&provider.issuer, true).await?;
    let mut tx = ctx.pool.begin().await?;
    // A secret is the client's at its issuer: a new issuer or client without one is public.
    let row: ProviderRow = sqlx::query_as(
        "INSERT INTO oidc_providers AS p (org_id, issuer, client_id, client_secret, redirect_uri, email_claim, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (org_id) DO UPDATE SET issuer = EXCLUDED.issuer, client_id = EXCLUDED.client_id, \
           client_secret = COALESCE(EXCLUDED.client_secret, \
             CASE WHEN p.issuer = EXCLUDED.issuer AND p.client_id = EXCLUDED.client_id THEN p.client_secret END), \
           redirect_uri = EXCLUDED.redirect_uri, email_claim = EXCLUDED.email_claim, \
           updated_by = EXCLUDED.updated_by, updated_at = now() \
         RETURNING org_id, issuer, client_id, client_secret IS NOT NULL AS has_client_secret, redirect_uri, \
           email_claim, updated_at",
    )
    .bind(&provider.org_id)
    .bind(&provider.issuer)
    .bind(&provider.client_id)
    .bind(&provider.client_secret)
    .bind(&provider.redirect_uri)
    .bind(&provider.email_claim)
    .bind(&actor.recorded)
    .fetch_one(&mut *tx)
    .await?;
    let detail = json!({
        "issuer": row.issuer,
        "client_id": row.client_id,
        "client_secret": if provider.client_secret.is_some() { "set" } else if row.has_client_secret { "kept" } else { "none" },
        "redirect_uri": row.redirect_uri,
        "email_claim": row.email_claim,
    });
    sqlx::query(
        "INSERT INTO audit (org_id, actor, action, email, detail) VALUES ($1, $2, 'oidc_provider_set', NULL, $3)",
    )
    .bind(&provider.org_id)
    .bind(&actor.recorded)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(org_id = %row.org_id, issuer = %row.issuer, by = %actor.recorded, "openid connect provider set");
    Ok(row)
}

/// Begins a sign-in at the organisation's provider: the authorization URL and the state.
pub async fn begin(ctx: &PeopleContext, org_id: &str) -> Result<(String, String), PeopleError> {
    let provider: Option<(String, String, String)> =
        sqlx::query_as("SELECT issuer, client_id, redirect_uri FROM oidc_providers WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(&ctx.pool)
            .await?;
    let (issuer, client_id, redirect_uri) = provider.ok_or(PeopleError::NoOidcProvider)?;
    let discovery = ctx.oidc.discover(&issuer, false).await?;
    let state = OneTimeCode::new()?;
    let verifier = OneTimeCode::new()?.code;
    let nonce = OneTimeCode::new()?.code;
    sqlx::query(
        "INSERT INTO oidc_sign_ins (state_hash, org_id, issuer, client_id, redirect_uri, code_verifier, nonce, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(&state.hash)
    .bind(org_id)
    .bind(&issuer)
    .bind(&client_id)
    .bind(&redirect_uri)
    .bind(&verifier)
    .bind(&nonce)
    .bind(SIGN_IN_WINDOW.as_secs_f64())
    .execute(&ctx.pool)
    .await?;
    let challenge = password::sha256_base64url(&verifier);
    let query = form(&[
        ("response_type", "code"),
        ("client_id", &client_id),
        ("redirect_uri", &redirect_uri),
        ("scope", SCOPE),
        ("state", &state.code),
        ("nonce", &nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let endpoint = &discovery.authorization_endpoint;
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    tracing::debug!(org_id, "openid connect sign-in begun");
    Ok((format!("{endpoint}{separator}{query}"), state.code))
}

/// Completes a sign-in begun with `state`, using the state up whatever the outcome.
pub async fn complete(ctx: &PeopleContext, state: &str, code: &str) -> Result<Session, PeopleError> {
    let signer = ctx.signer.clone().ok_or(PeopleError::NoSigningKey)?;
    let hash = password::lookup_hash(state).ok_or(PeopleError::UnknownOidcState)?;
    let begun: Begun = sqlx::query_as(
        "DELETE FROM oidc_sign_ins WHERE state_hash = $1 \
         RETURNING org_id, issuer, client_id, redirect_uri, code_verifier, nonce, expires_at > now() AS valid",
    )
    .bind(&hash)
    .fetch_optional(&ctx.pool)
    .await?
    .ok_or(PeopleError::UnknownOidcState)?;
    if !begun.valid {
        return Err(PeopleError::ExpiredOidcState);
    }
    let provider: Option<(String, String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT issuer, client_id, client_secret, redirect_uri, email_claim FROM oidc_providers WHERE org_id = $1",
    )
    .bind(&begun.org_id)
    .fetch_optional(&ctx.pool)
    .await?;
    let Some((issuer, client_id, secret, _, email_claim)) =
        provider.filter(|(issuer, client_id, _, redirect_uri, _)| {
            *issuer == begun.issuer && *client_id == begun.client_id && *redirect_uri == begun.redirect_uri
        })
    else {
        return Err(PeopleError::OidcRefused("the organisation's provider changed since the sign-in began".into()));
    };
    let discovery = ctx.oidc.discover(&issuer, false).await?;
    let client = RelyingParty { id: client_id, secret };
    let id_token = ctx.oidc.exchange(&discovery, &client, code, &begun).await?;
    let claims = ctx.oidc.verify(&discovery, &id_token, &client.id, &begun.nonce).await?;
    let email = email_of(&claims, &email_claim)?;
    let org_id = begun.org_id.as_str();
    let mut tx = ctx.pool.begin().await?;
    let Some(admitted) = directory::admit(&mut tx, org_id, &email).await? else {
        tracing::info!(org_id, email = %mask_email(&email), "openid connect sign-in of no active person refused");
        return Err(PeopleError::NoOidcAccount);
    };
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    let detail = json!({ "issuer": issuer, "sub": subject });
    directory::audit(&mut tx, org_id, &email, "signed_in_with_oidc", &email, detail).await?;
    let session = directory::session(&signer, ctx, &mut tx, org_id, &email, admitted).await?;
    tx.commit().await?;
    tracing::info!(org_id, email = %mask_email(&email), "signed in with openid connect");
    Ok(session)
}

/// Deletes the sign-ins begun and never completed in time.
pub async fn prune(ctx: &PeopleContext) -> Result<u64, PeopleError> {
    let deleted = sqlx::query("DELETE FROM oidc_sign_ins WHERE expires_at < now()").execute(&ctx.pool).await?;
    Ok(deleted.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_reached_over_https_or_inside_the_allowed_networks_only() {
        let allowed = EgressPolicy::allowing(&["127.0.0.0/8", "::1", "10.20.0.0/16"]).unwrap();
        for good in [
            "https://login.example.com",
            "https://idp.example/realms/acme",
            "https://8.8.8.8/realms/acme",
            "http://127.0.0.1:9400",
            "http://[::1]:80",
            "http://10.20.0.5",
            "https://10.20.0.5",
        ] {
            assert_eq!(check_provider_url(good, &allowed), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("http://idp.example.com", "must start with https://"),
            ("http://localhost:8080", "must start with https://"),
            ("http://8.8.8.8", "must start with https://"),
            ("http://10.0.0.1", "which is private"),
            ("https://10.0.0.1", "which is private"),
            ("https://169.254.169.254", "which is link-local"),
            ("https://[fd00::1]", "which is unique-local"),
            ("ftp://idp.example", "must start with https://"),
            ("idp.example", "must start with https://"),
            ("https://user:pw@idp.example", "credentials"),
            ("http://127.0.0.1.example.com", "must start with https://"),
        ] {
            let error = check_provider_url(bad, &allowed).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
        let nothing_allowed = EgressPolicy::default();
        for bad in [
            "http://127.0.0.1:9400",
            "https://127.0.0.1:9400",
            "https://[::1]",
            "https://[::ffff:7f00:1]",
            "http://10.20.0.5",
        ] {
            let error = check_provider_url(bad, &nothing_allowed).expect_err(bad);
            assert!(error.contains("outside people.oidc_allowed_networks"), "{bad}: {error}");
        }
        assert_eq!(check_redirect_uri("http://console.acme.test/sign-in/oidc/callback"), Ok(()));
        assert!(check_redirect_uri("https://console.acme.test/cb#frag").is_err());
        assert!(check_redirect_uri("/sign-in/oidc/callback").is_err());
    }

    #[test]
    fn values_are_percent_encoded_but_for_unreserved_characters() {
        assert_eq!(encode("a-Z_0.9~"), "a-Z_0.9~");
        assert_eq!(encode("openid email"), "openid%20email");
        assert_eq!(encode("http://x/cb?y=1&z"), "http%3A%2F%2Fx%2Fcb%3Fy%3D1%26z");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(form(&[("a b", "c&d"), ("e", "")]), "a%20b=c%26d&e=");
    }

    #[test]
    fn an_unverified_email_or_none_at_all_signs_no_one_in() {
        let claims = json!({ "email": "Ann@Acme.Test", "upn": "ann@acme.test" });
        assert_eq!(email_of(&claims, "email").unwrap(), "ann@acme.test");
        assert_eq!(email_of(&claims, "upn").unwrap(), "ann@acme.test");
        assert!(email_of(&json!({ "email": "ann@acme.test", "email_verified": true }), "email").is_ok());
        for (claims, says) in [
            (json!({ "email": "ann@acme.test", "email_verified": false }), "not verified"),
            (json!({ "email": "ann@acme.test", "email_verified": "false" }), "not verified"),
            (json!({ "sub": "ann" }), "no email claim"),
            (json!({ "email": "ann" }), "not an email address"),
            (json!({ "email": 7 }), "no email claim"),
        ] {
            let error = email_of(&claims, "email").expect_err(says).to_string();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_token_is_verified_only_with_a_published_signing_key_of_its_algorithm() {
        let keys: Vec<Jwk> = serde_json::from_value(json!([
            { "kty": "RSA", "kid": "a", "n": "sXch", "e": "AQAB" },
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": "sXch", "e": "AQAB" },
            { "kty": "oct", "kid": "secret", "k": "c2VjcmV0" },
            { "kty": "RSA", "kid": "ps", "alg": "PS256", "n": "sXch", "e": "AQAB" },
        ]))
        .unwrap();
        let kid = |jwk: Option<&Jwk>| jwk.and_then(|jwk| jwk.common.key_id.clone());
        assert_eq!(kid(pick(&keys, Some("a"), Algorithm::RS256)), Some("a".into()));
        assert_eq!(kid(pick(&keys, Some("enc"), Algorithm::RS256)), None);
        assert_eq!(kid(pick(&keys, Some("secret"), Algorithm::RS256)), None);
        assert_eq!(kid(pick(&keys, Some("ps"), Algorithm::RS256)), None, "declared for PS256");
        assert_eq!(kid(pick(&keys, Some("missing"), Algorithm::RS256)), None);
        assert_eq!(kid(pick(&keys, None, Algorithm::RS256)), Some("a".into()), "the only RS256 key");
        assert_eq!(kid(pick(&keys, None, Algorithm::ES256)), None);
        let two = [keys[0].clone(), keys[0].clone()];
        assert_eq!(kid(pick(&two, None, Algorithm::RS256)), None, "no kid and two candidates: none is guessed");
    }

    #[test]
    fn a_token_endpoint_refusal_is_told_short_and_clean() {
        let body = br#"{"error":"invalid_grant","error_description":"Code challenge failed.\n"}"#;
        assert_eq!(token_error(StatusCode::BAD_REQUEST, body), "invalid_grant: Code challenge failed.");
        assert_eq!(token_error(StatusCode::UNAUTHORIZED, b"<html>"), "HTTP 401");
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(500));
        assert_eq!(token_error(StatusCode::BAD_REQUEST, long.as_bytes()).len(), 200);
    }

    #[test]
    fn the_secret_goes_in_the_body_only_when_the_provider_takes_it_nowhere_else() {
        let with = |methods: Option<&[&str]>| Discovery {
            issuer: String::new(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            jwks_uri: String::new(),
            token_endpoint_auth_methods_supported: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
        };
        assert!(!with(None).secret_in_body());
        assert!(!with(Some(&["client_secret_basic", "client_secret_post"])).secret_in_body());
        assert!(with(Some(&["client_secret_post", "private_key_jwt"])).secret_in_body());
    }
}
