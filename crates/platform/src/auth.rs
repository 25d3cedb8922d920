//! Who is calling: bearer JWTs on every gRPC call but health (and reflection, unless switched
//! off), verified against the configured keys, their claims handed to the handlers in the
//! request's extensions; and the service tokens the platform's services send each other.
//!
//! A token's claims: `sub` (who; recorded as the actor of what they change), `orgs` (the
//! organisations it may touch; `*`, every one, only for role `service`), `role` (`service`,
//! `operator` or `agent`) and `exp`. docs/security.md has the threat model.

use crate::settings::AuthSettings;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tonic::Status;

/// The longest `sub` a token may carry (it is recorded in histories).
pub const MAX_SUBJECT_CHARS: usize = contracts::values::MAX_ACTOR_CHARS;
/// The shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One of the platform's services (or a trusted integration): the internal RPCs, and
    /// the only role that may hold `*` in `orgs`.
    Service,
    /// A person running an organisation's desk: every public RPC of its organisations.
    Operator,
    /// A person working leads: every public RPC of its organisations, not the internal ones.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "service" => Ok(Role::Service),
            "operator" => Ok(Role::Operator),
            "agent" => Ok(Role::Agent),
            other => Err(format!("unknown role {other:?}; expected service, operator or agent")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub orgs: Vec<String>,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Checks what a signature cannot: a usable subject, organisations that are ids (or `*`
    /// for a service).
    pub fn check(&self) -> Result<(), String> {
        if self.sub.trim().is_empty() {
            return Err("the token's sub is empty".into());
        }
        if self.sub.chars().count() > MAX_SUBJECT_CHARS || self.sub.chars().any(char::is_control) {
            return Err(format!("the token's sub must be at most {MAX_SUBJECT_CHARS} printable characters"));
        }
        for org in &self.orgs {
            if org == "*" {
                if self.role != Role::Service {
                    return Err("only a service token may hold * in orgs".into());
                }
            } else if contracts::values::validate_org_id(org).is_err() {
                return Err(format!("the token's orgs hold {org:?}, which is not an organisation id"));
            }
        }
        Ok(())
    }

    pub fn grants_org(&self, org_id: &str) -> bool {
        self.orgs.iter().any(|o| o == org_id || (o == "*" && self.role == Role::Service))
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The key id of a key file: its file name without extension.
fn kid_of(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

fn secret(bytes: &[u8], path: &Path) -> anyhow::Result<Vec<u8>> {
    let trimmed = bytes.trim_ascii_end().to_vec();
    anyhow::ensure!(
        trimmed.len() >= MIN_SECRET_BYTES,
        "the HS256 secret in {} is shorter than {MIN_SECRET_BYTES} bytes",
        path.display()
    );
    Ok(trimmed)
}

struct VerifyingKey {
    kid: String,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys that verify tokens.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| format!("{}:{:?}", k.kid, k.algorithm)).collect();
        f.debug_struct("Verifier").field("keys", &keys).finish()
    }
}

impl Verifier {
    /// The configured keys; `None` when there are none (authentication off).
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Option<Self>> {
        let mut keys = Vec::new();
        for path in &settings.key_files {
            keys.push(Self::load(path)?);
        }
        if let Some(path) = &settings.signing_key_file {
            let bytes = read_key(path)?;
            if !is_pem(&bytes) {
                keys.push(VerifyingKey {
                    kid: kid_of(path),
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(&secret(&bytes, path)?),
                });
            }
        }
        Ok((!keys.is_empty()).then_some(Self { keys }))
    }

    fn load(path: &Path) -> anyhow::Result<VerifyingKey> {
        let bytes = read_key(path)?;
        let kid = kid_of(path);
        if !is_pem(&bytes) {
            return Ok(VerifyingKey {
                kid,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&secret(&bytes, path)?),
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(
            !text.contains("PRIVATE KEY"),
            "{} holds a private key: verification needs only the public one",
            path.display()
        );
        if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
            return Ok(VerifyingKey { kid, algorithm: Algorithm::EdDSA, key });
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
            return Ok(VerifyingKey { kid, algorithm: Algorithm::RS256, key });
        }
        anyhow::bail!("{} is neither an RSA nor an Ed25519 public key in PEM", path.display())
    }

    /// The verified claims of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let by_kid: Vec<&VerifyingKey> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| &k.kid == kid && k.algorithm == header.alg).collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&VerifyingKey> =
            if by_kid.is_empty() { self.keys.iter().filter(|k| k.algorithm == header.alg).collect() } else { by_kid };
        if candidates.is_empty() {
            return Err(format!("no key verifies {:?} tokens", header.alg));
        }
        let mut last = String::new();
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.leeway = 30;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    data.claims.check()?;
                    return Ok(data.claims);
                }
                Err(error) => last = error.to_string(),
            }
        }
        Err(format!("invalid token: {last}"))
    }
}

/// A key that signs tokens: the configured signing key.
pub struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = read_key(path)?;
        let kid = kid_of(path);
        if !is_pem(&bytes) {
            return Ok(Self {
                kid,
                algorithm: Algorithm::HS256,
                key: EncodingKey::from_secret(&secret(&bytes, path)?),
            });
        }
        if let Ok(key) = EncodingKey::from_ed_pem(&bytes) {
            return Ok(Self { kid, algorithm: Algorithm::EdDSA, key });
        }
        if let Ok(key) = EncodingKey::from_rsa_pem(&bytes) {
            return Ok(Self { kid, algorithm: Algorithm::RS256, key });
        }
        anyhow::bail!("{} is neither an HS256 secret nor an RSA or Ed25519 private key in PEM", path.display())
    }

    /// A signed token for these claims, its `kid` the key file's stem.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        claims.check().map_err(anyhow::Error::msg)?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// Signs a token for `sub` with `role` over `orgs`, valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, orgs: Vec<String>, ttl: Duration) -> anyhow::Result<String> {
        let now = now_secs();
        self.sign(&Claims { sub: sub.to_owned(), orgs, role, exp: now + ttl.as_secs(), iat: Some(now) })
    }
}

/// What a service sends on its calls to other services: a token it signs itself and renews
/// at half its life, or a configured one.
pub struct ServiceCredentials {
    source: CredentialSource,
    cached: Mutex<Option<(String, u64)>>,
}

enum CredentialSource {
    Sign { signer: Signer, sub: String, ttl: Duration },
    File(std::path::PathBuf),
}

impl ServiceCredentials {
    /// `None` when the settings give neither a signing key nor a token file.
    pub fn from_settings(settings: &AuthSettings, sub: &str) -> anyhow::Result<Option<Arc<Self>>> {
        let source = if let Some(path) = &settings.service_token_file {
            anyhow::ensure!(path.exists(), "service token file {} does not exist", path.display());
            CredentialSource::File(path.clone())
        } else if let Some(path) = &settings.signing_key_file {
            CredentialSource::Sign {
                signer: Signer::load(path)?,
                sub: sub.to_owned(),
                ttl: Duration::from_secs(settings.service_token_ttl_secs),
            }
        } else {
            return Ok(None);
        };
        let credentials = Arc::new(Self { source, cached: Mutex::new(None) });
        credentials.token()?;
        Ok(Some(credentials))
    }

    /// The current token, renewed when half its life has passed (a file is read again then,
    /// so a rotated file is picked up).
    pub fn token(&self) -> anyhow::Result<String> {
        let now = now_secs();
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, renew_at)) = cached.as_ref()
            && now < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, renew_at) = match &self.source {
            CredentialSource::Sign { signer, sub, ttl } => {
                let token = signer.mint(sub, Role::Service, vec!["*".into()], *ttl)?;
                (token, now + ttl.as_secs() / 2)
            }
            CredentialSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read service token file {}: {e}", path.display()))?;
                (text.trim().to_owned(), now + 60)
            }
        };
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }
}

/// Who a call comes from, as the auth layer found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off (no key configured): anyone may call anything.
    Open,
    Token(Arc<Claims>),
}

impl Caller {
    /// The caller of a request that went through the auth layer. A request without one
    /// (which the layer never lets through) is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
        request.extensions().get::<Caller>().cloned().ok_or_else(|| Status::unauthenticated("no credentials"))
    }

    /// PERMISSION_DENIED unless the token grants `org_id`.
    pub fn check_org(&self, org_id: &str) -> Result<(), Status> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(claims) if claims.grants_org(org_id) => Ok(()),
            Caller::Token(_) => Err(Status::permission_denied("the token does not grant this organisation")),
        }
    }

    /// PERMISSION_DENIED unless the caller is one of the platform's services.
    pub fn require_service(&self, rpc: &str) -> Result<(), Status> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(claims) if claims.role == Role::Service => Ok(()),
            Caller::Token(_) => Err(Status::permission_denied(format!("{rpc} is for the platform's services only"))),
        }
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Token(claims) if claims.role == Role::Service)
    }

    /// Who is recorded as having done something: the token's subject, with the display name
    /// the request gives in brackets (`alice (Alice Smith)`); without authentication, the
    /// request's name or `unknown`.
    pub fn actor(&self, display: &str) -> String {
        let display = display.trim();
        match self {
            Caller::Open if display.is_empty() => "unknown".into(),
            Caller::Open => display.to_owned(),
            Caller::Token(claims) if display.is_empty() || display == claims.sub => claims.sub.clone(),
            Caller::Token(claims) => format!("{} ({display})", claims.sub),
        }
    }
}

/// Every path a call may take without a token.
fn open_path(path: &str, reflection: bool) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || (reflection && path.starts_with("/grpc.reflection."))
}

/// The tower layer in front of a service's routes: takes the bearer token of every call but
/// health (and reflection when served), answers UNAUTHENTICATED when it is missing or does
/// not verify, and puts the `Caller` in the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Option<Arc<Verifier>>,
    reflection: bool,
}

impl AuthLayer {
    pub fn new(verifier: Option<Arc<Verifier>>, reflection: bool) -> Self {
        Self { verifier, reflection }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, layer: self.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// The bearer token of an `authorization` header.
pub fn bearer(headers: &tonic::codegen::http::HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<S> tonic::codegen::Service<HttpRequest> for AuthService<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        if !open_path(request.uri().path(), self.layer.reflection) {
            let caller = match &self.layer.verifier {
                None => Ok(Caller::Open),
                Some(verifier) => match bearer(request.headers()) {
                    None => Err(Status::unauthenticated("a bearer token is required (authorization: Bearer <jwt>)")),
                    Some(token) => verifier.verify(token).map(|c| Caller::Token(Arc::new(c))).map_err(|reason| {
                        tracing::debug!(path = %request.uri().path(), %reason, "token refused");
                        Status::unauthenticated(reason)
                    }),
                },
            };
            match caller {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// Logs, once per service, that its API is open to anyone who reaches it.
pub fn warn_when_open(service: &str, verifier: &Option<Arc<Verifier>>) {
    if verifier.is_none() {
        tracing::error!(
            service,
            "AUTHENTICATION IS OFF: no auth.key_files or auth.signing_key_file is configured, so anyone who reaches \
             this gRPC port may read and change every organisation's leads; configure keys (docs/security.md)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("leads-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tokens_verify_with_the_key_they_name_or_any_key_and_claims_are_checked() {
        let dir = temp_dir();
        let old = secret_file(&dir, "old.key", &[b'a'; 40]);
        let new = secret_file(&dir, "new.key", &[b'b'; 40]);
        let other = secret_file(&dir, "other.key", &[b'c'; 40]);
        let settings = AuthSettings { key_files: vec![old.clone(), new.clone()], ..Default::default() };
        let verifier = Verifier::from_settings(&settings).unwrap().expect("keys");
        let hour = Duration::from_secs(3600);
        for path in [&old, &new] {
            let token = Signer::load(path).unwrap().mint("alice", Role::Operator, vec!["acme".into()], hour).unwrap();
            let claims = verifier.verify(&token).expect("verifies");
            assert_eq!(
                (claims.sub.as_str(), claims.role, claims.orgs.as_slice()),
                ("alice", Role::Operator, &["acme".to_owned()][..])
            );
        }
        let forged = Signer::load(&other).unwrap().mint("mallory", Role::Service, vec!["*".into()], hour).unwrap();
        assert!(verifier.verify(&forged).is_err());
        // A kid naming no key: every key of the algorithm is tried, and none verifies it.
        let renamed = secret_file(&dir, "nothing.key", &[b'c'; 40]);
        let forged =
            Signer::load(&renamed).unwrap().mint("mallory", Role::Operator, vec!["acme".into()], hour).unwrap();
        assert!(verifier.verify(&forged).is_err());
        let signer = Signer::load(&old).unwrap();
        let expired = signer
            .sign(&Claims { sub: "alice".into(), orgs: vec!["acme".into()], role: Role::Agent, exp: 1000, iat: None })
            .unwrap();
        assert!(verifier.verify(&expired).unwrap_err().contains("Expired"));
        assert!(signer.mint("alice", Role::Operator, vec!["*".into()], hour).is_err(), "* is for services");
        assert!(verifier.verify("not.a.token").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn callers_are_confined_to_their_organisations_and_recorded_by_subject() {
        let claims = |role, orgs: &[&str]| {
            Caller::Token(Arc::new(Claims {
                sub: "alice".into(),
                orgs: orgs.iter().map(|&org| org.to_owned()).collect(),
                role,
                exp: u64::MAX,
                iat: None,
            }))
        };
        let agent = claims(Role::Agent, &["acme"]);
        assert!(agent.check_org("acme").is_ok());
        assert_eq!(agent.check_org("globex").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(agent.require_service("AssignLeads").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(agent.actor(""), "alice");
        assert_eq!(agent.actor("alice"), "alice");
        assert_eq!(agent.actor(" Alice Smith "), "alice (Alice Smith)");
        let service = claims(Role::Service, &["*"]);
        assert!(service.check_org("globex").is_ok() && service.require_service("AssignLeads").is_ok());
        assert_eq!(Caller::Open.actor(""), "unknown");
        assert_eq!(Caller::Open.actor("ann"), "ann");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = tonic::codegen::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def.ghi"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        assert!(open_path("/grpc.health.v1.Health/Check", false));
        assert!(open_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", true));
        assert!(!open_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", false));
        assert!(!open_path("/leads.v1.LeadService/ListLeads", true));
    }
}
