//! Who is calling: bearer JWTs on every gRPC call but health (and reflection, unless switched
//! off), verified against the configured keys, their claims handed to the handlers in the
//! request's extensions; and the service tokens the platform's services send each other.
//!
//! A token's claims: `sub` (who; recorded as the actor of what they change), `orgs` (the
//! organisations it may touch; `*`, every one, only for role `service`), `role` (`service`,
//! `operator` or `agent`), `iat` and `exp` (at most `auth.max_token_lifetime_secs` apart), and
//! `iss`/`aud` when `auth.issuer`/`auth.audience` ask for them. A key file's name declares its
//! algorithm, so that no key is ever read as another kind. docs/security.md has the threat
//! model.

use crate::grpc::{HttpRequest, HttpResponse, ResponseFuture};
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
/// Seconds of clock difference forgiven between a token's signer and its verifier.
const LEEWAY_SECS: u64 = 30;

/// What a token's holder is; docs/security.md has what each may call, and `roles` enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person who runs an organisation: its settings, people, agents and models, and
    /// everything an operator may do.
    Admin,
    /// A person running an organisation's desk: every lead, bulk changes, exports.
    Operator,
    /// A person working leads: the leads assigned to them (the token's `agent_id`) and the
    /// unassigned ones.
    Agent,
    /// One of the platform's services: the internal RPCs, and the only role that may hold
    /// `*` in `orgs`.
    Service,
    /// A chat or broadcast system of an organisation: ingests its events and reads what was
    /// refused.
    Integration,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Agent, Role::Service, Role::Integration];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Agent => "agent",
            Role::Service => "service",
            Role::Integration => "integration",
        }
    }

    /// Whether the role is held by a person (who signs in) rather than a system.
    pub fn is_person(self) -> bool {
        matches!(self, Role::Admin | Role::Operator | Role::Agent)
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; expected admin, operator, agent, service or integration"))
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
    /// The agent an `agent` token acts as (required for that role): which leads it sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
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
        match (&self.agent_id, self.role) {
            (None, Role::Agent) => return Err("an agent token must carry agent_id".into()),
            (Some(agent), _) if contracts::values::validate_agent_id(agent).is_err() => {
                return Err("the token's agent_id is not an agent id".into());
            }
            _ => {}
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

    /// Refuses a token that does not say when it was issued, says it was issued later than
    /// `now` (beyond the leeway), expires before it was issued, or lives longer than
    /// `max_lifetime_secs`.
    pub fn check_lifetime(&self, max_lifetime_secs: u64, now: u64) -> Result<(), String> {
        let iat = self.iat.ok_or("the token has no iat: its lifetime cannot be bounded")?;
        if iat > now.saturating_add(LEEWAY_SECS) {
            return Err("the token's iat is in the future".into());
        }
        let lifetime = self.exp.checked_sub(iat).ok_or("the token's exp is before its iat")?;
        if lifetime > max_lifetime_secs {
            return Err(format!(
                "the token lives {lifetime} s, longer than the {max_lifetime_secs} s allowed (auth.max_token_lifetime_secs)"
            ));
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

fn read_key(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{setting}: cannot read key file {}: {e}", path.display()))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

/// What a key file holds, as its extension declares: the algorithm is never guessed from
/// the contents, so that a public key cannot be taken for an HS256 secret (anyone holding
/// the public key could then sign tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyForm {
    /// `*.key`, `*.secret`: an HS256 secret.
    Secret,
    /// `*.pem`: an RS256 or EdDSA key in PEM.
    Pem,
}

fn key_form(setting: &str, path: &Path) -> anyhow::Result<KeyForm> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("key" | "secret") => Ok(KeyForm::Secret),
        Some("pem") => Ok(KeyForm::Pem),
        _ => anyhow::bail!(
            "{setting}: {} does not declare its algorithm: name an HS256 secret *.key or *.secret, and an RS256 or \
             EdDSA key in PEM *.pem",
            path.display()
        ),
    }
}

/// The DER encodings of the public-key algorithm identifiers (rsaEncryption, id-Ed25519,
/// id-ecPublicKey) that a key in DER, or its base64, holds near its start.
const PUBLIC_KEY_OIDS: [&[u8]; 3] = [
    &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
    &[0x06, 0x03, 0x2b, 0x65, 0x70],
    &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
];

/// The form of key `bytes` visibly hold when it is not a secret's: PEM, an OpenSSH public
/// key, a JWK, or DER (raw or in base64).
fn key_like(bytes: &[u8]) -> Option<&'static str> {
    let text = bytes.trim_ascii();
    if is_pem(text) {
        return Some("a PEM key");
    }
    if [&b"ssh-"[..], b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"].iter().any(|prefix| text.starts_with(prefix)) {
        return Some("an OpenSSH public key");
    }
    if text.starts_with(b"{") {
        return Some("a JSON key (JWK)");
    }
    let holds_oid = |der: &[u8]| {
        let head = &der[..der.len().min(32)];
        der.first() == Some(&0x30) && PUBLIC_KEY_OIDS.iter().any(|oid| head.windows(oid.len()).any(|w| w == *oid))
    };
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(text).ok();
    (holds_oid(text) || decoded.as_deref().is_some_and(holds_oid)).then_some("a DER key")
}

fn secret(setting: &str, bytes: &[u8], path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(form) = key_like(bytes) {
        anyhow::bail!(
            "{setting}: {} holds {form}, but its name declares an HS256 secret: a key in PEM goes in a *.pem file, \
             and no other form of public or private key is read",
            path.display()
        );
    }
    let trimmed = bytes.trim_ascii_end().to_vec();
    anyhow::ensure!(
        trimmed.len() >= MIN_SECRET_BYTES,
        "{setting}: the HS256 secret in {} is shorter than {MIN_SECRET_BYTES} bytes",
        path.display()
    );
    Ok(trimmed)
}

fn pem(setting: &str, bytes: &[u8], path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_pem(bytes),
        "{setting}: {} is named *.pem but holds no PEM key (an HS256 secret goes in a *.key or *.secret file)",
        path.display()
    );
    Ok(())
}

struct VerifyingKey {
    kid: String,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The sessions that ended before their tokens expire (a person deactivated, their password
/// reset): every token of a person in an organisation issued up to the moment theirs ended is
/// refused. Fed by the people directory's events (`platform::sessions`), shared by every
/// verifier of the process.
#[derive(Debug, Default, Clone)]
pub struct EndedSessions(Arc<std::sync::RwLock<std::collections::HashMap<(String, String), u64>>>);

impl EndedSessions {
    /// Ends the sessions of `sub` in `org` issued at or before `at` (seconds since the epoch).
    pub fn end(&self, sub: &str, org: &str, at: u64) {
        let mut ended = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = ended.entry((sub.to_owned(), org.to_owned())).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// Whether the session `claims` belong to has ended: a person's token issued at or before
    /// the end of its sessions in one of its organisations.
    pub fn has_ended(&self, claims: &Claims) -> bool {
        if !claims.role.is_person() {
            return false;
        }
        let ended = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let issued = claims.iat.unwrap_or(0);
        claims.orgs.iter().any(|org| ended.get(&(claims.sub.clone(), org.clone())).is_some_and(|&at| issued <= at))
    }
}

/// The keys that verify tokens, and what a token must claim besides its signature.
pub struct Verifier {
    ended: EndedSessions,
    keys: Vec<VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| format!("{}:{:?}", k.kid, k.algorithm)).collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish()
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
            const SETTING: &str = "auth.signing_key_file";
            // A PEM signing key is private: its public half verifies, from `key_files`.
            if key_form(SETTING, path)? == KeyForm::Secret {
                let bytes = read_key(SETTING, path)?;
                keys.push(VerifyingKey {
                    kid: kid_of(path),
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(&secret(SETTING, &bytes, path)?),
                });
            }
        }
        Ok((!keys.is_empty()).then(|| Self {
            ended: EndedSessions::default(),
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_lifetime_secs: settings.max_token_lifetime_secs,
        }))
    }

    fn load(path: &Path) -> anyhow::Result<VerifyingKey> {
        const SETTING: &str = "auth.key_files";
        let form = key_form(SETTING, path)?;
        let bytes = read_key(SETTING, path)?;
        let kid = kid_of(path);
        if form == KeyForm::Secret {
            return Ok(VerifyingKey {
                kid,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(&secret(SETTING, &bytes, path)?),
            });
        }
        pem(SETTING, &bytes, path)?;
        let text = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(
            !text.contains("PRIVATE KEY"),
            "{SETTING}: {} holds a private key: verification needs only the public one",
            path.display()
        );
        if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
            return Ok(VerifyingKey { kid, algorithm: Algorithm::EdDSA, key });
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
            return Ok(VerifyingKey { kid, algorithm: Algorithm::RS256, key });
        }
        anyhow::bail!("{SETTING}: {} is neither an RSA nor an Ed25519 public key in PEM", path.display())
    }

    /// Verifies with `ended` as the record of ended sessions (shared with whatever feeds it).
    #[must_use]
    pub fn with_ended_sessions(mut self, ended: EndedSessions) -> Self {
        self.ended = ended;
        self
    }

    /// The verified claims of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        self.verify_at(token, now_secs())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, String> {
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
            match jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm)) {
                Ok(data) => {
                    data.claims.check()?;
                    data.claims.check_lifetime(self.max_lifetime_secs, now)?;
                    if self.ended.has_ended(&data.claims) {
                        return Err("the session has ended: sign in again".into());
                    }
                    return Ok(data.claims);
                }
                Err(error) => last = error.to_string(),
            }
        }
        Err(format!("invalid token: {last}"))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = LEEWAY_SECS;
        validation
    }
}

/// What a signed token carries: the claims, and the issuer and audience of the settings.
#[derive(Serialize)]
struct SignedClaims<'a> {
    #[serde(flatten)]
    claims: &'a Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// A key that signs tokens: the configured signing key.
pub struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime_secs: u64,
}

impl Signer {
    /// The key file at `path`, signing tokens without `iss` or `aud` that live at most the
    /// default maximum lifetime.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        const SETTING: &str = "auth.signing_key_file";
        let form = key_form(SETTING, path)?;
        let bytes = read_key(SETTING, path)?;
        let (algorithm, key) = match form {
            KeyForm::Secret => (Algorithm::HS256, EncodingKey::from_secret(&secret(SETTING, &bytes, path)?)),
            KeyForm::Pem => {
                pem(SETTING, &bytes, path)?;
                if let Ok(key) = EncodingKey::from_ed_pem(&bytes) {
                    (Algorithm::EdDSA, key)
                } else if let Ok(key) = EncodingKey::from_rsa_pem(&bytes) {
                    (Algorithm::RS256, key)
                } else {
                    anyhow::bail!("{SETTING}: {} is neither an RSA nor an Ed25519 private key in PEM", path.display())
                }
            }
        };
        Ok(Self {
            kid: kid_of(path),
            algorithm,
            key,
            issuer: None,
            audience: None,
            max_lifetime_secs: crate::settings::DEFAULT_MAX_TOKEN_LIFETIME_SECS,
        })
    }

    /// The key file at `path`, signing tokens as the settings' verifiers accept them: with
    /// their `iss` and `aud`, living at most their maximum lifetime.
    pub fn with_settings(path: &Path, settings: &AuthSettings) -> anyhow::Result<Self> {
        Ok(Self {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            max_lifetime_secs: settings.max_token_lifetime_secs,
            ..Self::load(path)?
        })
    }

    /// The longest lifetime `mint` gives a token.
    pub fn max_lifetime(&self) -> Duration {
        Duration::from_secs(self.max_lifetime_secs)
    }

    /// A signed token for these claims, its `kid` the key file's stem.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        claims.check().map_err(anyhow::Error::msg)?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let signed = SignedClaims { claims, iss: self.issuer.as_deref(), aud: self.audience.as_deref() };
        Ok(jsonwebtoken::encode(&header, &signed, &self.key)?)
    }

    /// Signs a token for `sub` with `role` over `orgs`, valid for `ttl`, which may not exceed
    /// the maximum lifetime.
    pub fn mint(&self, sub: &str, role: Role, orgs: Vec<String>, ttl: Duration) -> anyhow::Result<String> {
        self.mint_for(sub, role, orgs, None, ttl)
    }

    /// `mint`, for a token that acts as `agent_id` (which an `agent` token must name).
    pub fn mint_for(
        &self,
        sub: &str,
        role: Role,
        orgs: Vec<String>,
        agent_id: Option<String>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(
            ttl.as_secs() <= self.max_lifetime_secs,
            "a token may live at most {} s (auth.max_token_lifetime_secs), not {} s",
            self.max_lifetime_secs,
            ttl.as_secs()
        );
        let now = now_secs();
        let exp = now.checked_add(ttl.as_secs()).ok_or_else(|| anyhow::anyhow!("the token's expiry overflows"))?;
        self.sign(&Claims { sub: sub.to_owned(), orgs, role, exp, iat: Some(now), agent_id })
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
                signer: Signer::with_settings(path, settings)?,
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

    pub fn is_service(&self) -> bool {
        matches!(self, Caller::Token(claims) if claims.role == Role::Service)
    }

    /// Whether the caller is one of the platform's own services (a service token over every
    /// organisation), the only caller whose word on who did something is taken as it is.
    pub fn is_platform_service(&self) -> bool {
        matches!(self, Caller::Token(claims) if claims.role == Role::Service && claims.orgs.iter().any(|o| o == "*"))
    }

    /// The agent whose leads alone (with the unassigned ones) the caller may see and act on:
    /// an agent token's `agent_id`; `None` for every other caller.
    pub fn agent_scope(&self) -> Option<&str> {
        match self {
            Caller::Token(claims) if claims.role == Role::Agent => claims.agent_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the caller may see a lead assigned to `agent_id` (`None`: unassigned).
    pub fn sees_lead_of(&self, agent_id: Option<&str>) -> bool {
        match (self.agent_scope(), agent_id) {
            (None, _) | (Some(_), None) => true,
            (Some(own), Some(agent)) => own == agent,
        }
    }

    /// UNAUTHENTICATED once the caller's token has expired or its session has ended: what a
    /// long-lived stream checks before each message, as every call does when it starts.
    pub fn still_valid(&self, ended: &EndedSessions) -> Result<(), Status> {
        match self {
            Caller::Token(claims) if claims.exp <= now_secs() => Err(Status::unauthenticated("the token has expired")),
            Caller::Token(claims) if ended.has_ended(claims) => {
                Err(Status::unauthenticated("the session has ended: sign in again"))
            }
            Caller::Open | Caller::Token(_) => Ok(()),
        }
    }

    /// The caller's role; `None` when authentication is off.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Open => None,
            Caller::Token(claims) => Some(claims.role),
        }
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

/// The RPCs a person calls before they hold a token: signing in (with a password, a one-time
/// sign-in code, or the organisation's OpenID Connect provider), and setting a password with a
/// one-time setup code.
pub const SIGN_IN_PATHS: [&str; 5] = [
    "/leads.v1.PeopleService/SignIn",
    "/leads.v1.PeopleService/SetPassword",
    "/leads.v1.PeopleService/SignInWithCode",
    "/leads.v1.PeopleService/BeginOidcSignIn",
    "/leads.v1.PeopleService/CompleteOidcSignIn",
];

/// Every path a call may take without a token.
fn open_path(path: &str, reflection: bool) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || (reflection && path.starts_with("/grpc.reflection."))
        || SIGN_IN_PATHS.contains(&path)
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
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        if !open_path(request.uri().path(), self.layer.reflection) {
            let caller = match &self.layer.verifier {
                None => Ok(Caller::Open),
                Some(verifier) => match bearer(request.headers()) {
                    None => Err(Status::unauthenticated("a bearer token is required (authorization: Bearer <jwt>)")),
                    Some(token) => match verifier.verify(token) {
                        Err(reason) => {
                            tracing::debug!(path = %request.uri().path(), %reason, "token refused");
                            Err(Status::unauthenticated(reason))
                        }
                        Ok(claims) => match crate::roles::refusal(request.uri().path(), claims.role) {
                            Some(reason) => Err(Status::permission_denied(reason)),
                            None => Ok(Caller::Token(Arc::new(claims))),
                        },
                    },
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

/// A service without keys refuses to start unless authentication was switched off
/// explicitly (`auth.disabled`), and then logs at ERROR, once, that its API is open to anyone
/// who reaches it.
pub fn refuse_or_warn_when_open(
    service: &str,
    settings: &AuthSettings,
    verifier: &Option<Arc<Verifier>>,
) -> anyhow::Result<()> {
    match (verifier, settings.disabled) {
        (Some(_), _) => Ok(()),
        (None, false) => anyhow::bail!(
            "the {service} service has no key to verify tokens with: set LEADS_AUTH_KEY_FILES or \
             LEADS_AUTH_SIGNING_KEY_FILE (docs/security.md), or LEADS_AUTH_DISABLED=true to serve every \
             organisation's leads to anyone who reaches the port"
        ),
        (None, true) => {
            tracing::error!(
                service,
                "AUTHENTICATION IS OFF (auth.disabled): anyone who reaches this gRPC port may read and change every \
                 organisation's leads"
            );
            Ok(())
        }
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
            .sign(&Claims {
                sub: "alice".into(),
                orgs: vec!["acme".into()],
                role: Role::Operator,
                exp: 1000,
                iat: None,
                agent_id: None,
            })
            .unwrap();
        assert!(verifier.verify(&expired).unwrap_err().contains("Expired"));
        assert!(signer.mint("alice", Role::Operator, vec!["*".into()], hour).is_err(), "* is for services");
        assert!(verifier.verify("not.a.token").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An Ed25519 key pair from a fixed seed: the private key in PKCS#8 DER, the public key
    /// in SubjectPublicKeyInfo DER.
    fn ed25519_der() -> (Vec<u8>, Vec<u8>) {
        use ring::signature::KeyPair;
        let seed = [7u8; 32];
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let private = [
            &[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20][..],
            &seed,
        ]
        .concat();
        let public =
            [&[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00][..], pair.public_key().as_ref()]
                .concat();
        (private, public)
    }

    fn base64(der: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    fn pem_of(label: &str, der: &[u8]) -> Vec<u8> {
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", base64(der)).into_bytes()
    }

    fn load_error(path: &Path) -> String {
        let settings = AuthSettings { key_files: vec![path.to_owned()], ..Default::default() };
        Verifier::from_settings(&settings).expect_err("refused").to_string()
    }

    #[test]
    fn a_key_file_is_read_as_the_algorithm_its_name_declares() {
        let dir = temp_dir();
        let (private, public) = ed25519_der();
        // Accepted: a secret named as one, and an Ed25519 pair in PEM that signs and verifies.
        let secret = secret_file(&dir, "shared.secret", &[b's'; 40]);
        let signing = secret_file(&dir, "signing.pem", &pem_of("PRIVATE KEY", &private));
        let verifying = secret_file(&dir, "signing-public.pem", &pem_of("PUBLIC KEY", &public));
        let settings = AuthSettings { key_files: vec![secret.clone(), verifying], ..Default::default() };
        let verifier = Verifier::from_settings(&settings).unwrap().expect("keys");
        let hour = Duration::from_secs(3600);
        for key in [&secret, &signing] {
            let token = Signer::load(key).unwrap().mint("alice", Role::Operator, vec!["acme".into()], hour).unwrap();
            assert_eq!(verifier.verify(&token).expect("verifies").sub, "alice", "{}", key.display());
        }

        // Refused, each naming its file: a public key in any other form named as a secret,
        // something else named as PEM, and a name that declares nothing.
        let ssh = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@host\n";
        for (name, bytes) in [
            ("der-public.key", public.clone()),
            ("base64-public.key", base64(&public).into_bytes()),
            ("pem-public.key", pem_of("PUBLIC KEY", &public)),
            ("openssh.secret", ssh.to_vec()),
            ("jwk.key", br#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#.to_vec()),
        ] {
            let path = secret_file(&dir, name, &bytes);
            let error = load_error(&path);
            assert!(error.contains(name) && error.contains("declares an HS256 secret"), "{name}: {error}");
            assert!(Signer::load(&path).is_err(), "{name} signs nothing");
        }
        let not_pem = secret_file(&dir, "secret.pem", &[b's'; 40]);
        let error = load_error(&not_pem);
        assert!(error.contains("secret.pem") && error.contains("holds no PEM key"), "{error}");
        for name in ["public.der", "public.pub", "secret"] {
            let path = secret_file(&dir, name, &[b's'; 40]);
            let error = load_error(&path);
            assert!(error.contains(name) && error.contains("does not declare its algorithm"), "{name}: {error}");
        }
        let private_pem = load_error(&signing);
        assert!(private_pem.contains("signing.pem") && private_pem.contains("private key"), "{private_pem}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let dir = temp_dir();
        let key = secret_file(&dir, "local.key", &[b'k'; 40]);
        let settings = AuthSettings {
            signing_key_file: Some(key.clone()),
            issuer: Some("leads".into()),
            audience: Some("leads-api".into()),
            ..Default::default()
        };
        let verifier = Verifier::from_settings(&settings).unwrap().expect("keys");
        let hour = Duration::from_secs(3600);
        let mint = |settings: &AuthSettings| {
            Signer::with_settings(&key, settings)
                .unwrap()
                .mint("alice", Role::Operator, vec!["acme".into()], hour)
                .unwrap()
        };
        assert_eq!(verifier.verify(&mint(&settings)).expect("both claims match").sub, "alice");
        for (what, signed_with) in [
            ("neither claim", AuthSettings::default()),
            ("no aud", AuthSettings { audience: None, ..settings.clone() }),
            ("no iss", AuthSettings { issuer: None, ..settings.clone() }),
            ("another iss", AuthSettings { issuer: Some("elsewhere".into()), ..settings.clone() }),
            ("another aud", AuthSettings { audience: Some("billing".into()), ..settings.clone() }),
        ] {
            assert!(verifier.verify(&mint(&signed_with)).is_err(), "a token with {what}");
        }
        // Without the settings, neither claim is asked for.
        let open = Verifier::from_settings(&AuthSettings { signing_key_file: Some(key.clone()), ..Default::default() })
            .unwrap()
            .expect("keys");
        assert!(open.verify(&mint(&AuthSettings { audience: None, ..settings.clone() })).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_token_lives_at_most_the_maximum_lifetime() {
        let dir = temp_dir();
        let key = secret_file(&dir, "local.key", &[b'k'; 40]);
        let settings =
            AuthSettings { signing_key_file: Some(key.clone()), max_token_lifetime_secs: 3600, ..Default::default() };
        let verifier = Verifier::from_settings(&settings).unwrap().expect("keys");
        let signer = Signer::with_settings(&key, &settings).unwrap();
        let now = now_secs();
        let token = |iat: Option<u64>, exp: u64| {
            signer
                .sign(&Claims {
                    sub: "alice".into(),
                    orgs: vec!["acme".into()],
                    role: Role::Operator,
                    exp,
                    iat,
                    agent_id: None,
                })
                .unwrap()
        };
        assert!(verifier.verify(&token(Some(now), now + 3600)).is_ok(), "exactly the maximum");
        assert!(verifier.verify(&token(Some(now - 60), now + 60)).is_ok(), "shorter");
        for (what, iat, exp, reason) in [
            ("no iat", None, now + 60, "no iat"),
            ("longer than the maximum", Some(now), now + 3601, "longer than the 3600 s"),
            ("an exp before its iat", Some(now + 20), now + 10, "before its iat"),
            ("an iat in the future", Some(now + 600), now + 700, "in the future"),
            ("an exp at the end of time", Some(now), u64::MAX, "longer than"),
        ] {
            let error = verifier.verify(&token(iat, exp)).expect_err(what);
            assert!(error.contains(reason), "{what}: {error}");
        }
        let missing_exp = jsonwebtoken::encode(
            &Header { kid: Some("local".into()), ..Header::new(Algorithm::HS256) },
            &serde_json::json!({"sub": "alice", "orgs": ["acme"], "role": "operator", "iat": now}),
            &EncodingKey::from_secret(&[b'k'; 40]),
        )
        .unwrap();
        assert!(verifier.verify(&missing_exp).is_err(), "no exp");

        let over = signer.mint("alice", Role::Operator, vec!["acme".into()], Duration::from_secs(3601));
        assert!(over.unwrap_err().to_string().contains("auth.max_token_lifetime_secs"));
        assert!(signer.mint("alice", Role::Operator, vec!["acme".into()], Duration::from_secs(u64::MAX)).is_err());
        assert_eq!(signer.max_lifetime(), Duration::from_secs(3600));
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
                agent_id: None,
            }))
        };
        let agent = claims(Role::Agent, &["acme"]);
        assert!(agent.check_org("acme").is_ok());
        assert_eq!(agent.check_org("globex").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(agent.actor(""), "alice");
        assert_eq!(agent.actor("alice"), "alice");
        assert_eq!(agent.actor(" Alice Smith "), "alice (Alice Smith)");
        let service = claims(Role::Service, &["*"]);
        assert!(service.check_org("globex").is_ok() && service.is_platform_service());
        assert_eq!(Caller::Open.actor(""), "unknown");
        assert_eq!(Caller::Open.actor("ann"), "ann");
    }

    #[test]
    fn a_long_lived_call_stops_when_its_token_expires_or_its_session_ends() {
        let now = now_secs();
        let person = |exp: u64| {
            Caller::Token(Arc::new(Claims {
                sub: "ann@acme.test".into(),
                orgs: vec!["acme".into()],
                role: Role::Agent,
                exp,
                iat: Some(now - 10),
                agent_id: Some("ann".into()),
            }))
        };
        let ended = EndedSessions::default();
        assert!(person(now + 3600).still_valid(&ended).is_ok());
        assert_eq!(person(now - 1).still_valid(&ended).unwrap_err().code(), tonic::Code::Unauthenticated);
        ended.end("ann@acme.test", "acme", now - 5);
        let refused = person(now + 3600).still_valid(&ended).unwrap_err();
        assert!(refused.message().contains("session has ended"), "{refused:?}");
        assert!(Caller::Open.still_valid(&ended).is_ok());
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
