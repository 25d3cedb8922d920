//! The directory: people, their passwords and setup codes, sign-in with its lockout, and the
//! audit of every change. A change that ends a person's sessions (deactivation, password reset,
//! new role or agent) commits with its `sessions_ended` event in the outbox, so the services
//! learn of it exactly when it happens (`platform::sessions`).
//!
//! When a person's sessions end is taken from this process's clock after their row is locked,
//! and a token is signed while the row that allows it is locked, before that commits: a token
//! signed before the end is issued at or before it (and refused), one signed after reads the
//! change (and is not signed, or carries the new role).

use crate::{
    PeopleContext,
    error::PeopleError,
    password::{self, OneTimeCode},
};
use chrono::{DateTime, Utc};
use contracts::people::{SESSIONS_ENDED, SOURCE, SessionsEnded, person_id};
use contracts::values::mask::mask_email;
use platform::{
    auth::{Role, Signer},
    outbox::OutboxMessage,
};
use serde_json::json;
use sqlx::{PgConnection, Postgres, Transaction};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Failed sign-ins count toward a lockout for this long after the first of them.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest email taken: it becomes the subject of the person's tokens.
pub const MAX_EMAIL_CHARS: usize = platform::auth::MAX_SUBJECT_CHARS;
/// Sign-ins by `outcome`: signed_in, refused, locked (a refusal that locked the account, or one
/// while it is locked).
pub const SIGN_INS: &str = "leads_people_sign_ins_total";

const SELECT_PERSON: &str = "SELECT p.org_id, p.email, p.name, p.role, p.agent_id, p.active, \
       p.password_hash IS NOT NULL AS has_password, p.created_at, p.updated_at, p.last_sign_in_at, \
       CASE WHEN f.locked_until > now() THEN f.locked_until END AS locked_until \
     FROM people p LEFT JOIN sign_in_failures f ON f.org_id = p.org_id AND f.email = p.email";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PersonRow {
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub agent_id: Option<String>,
    pub active: bool,
    pub has_password: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub locked_until: Option<DateTime<Utc>>,
}

/// The person as locked for a change.
#[derive(Debug, sqlx::FromRow)]
struct Locked {
    name: String,
    role: String,
    agent_id: Option<String>,
    active: bool,
    sessions_ended_at: Option<i64>,
}

/// An email as the directory keys it: trimmed and lowercased, one `@` between a non-empty
/// local part and domain, no spaces or control characters, at most `MAX_EMAIL_CHARS`.
pub fn normalize_email(email: &str) -> Result<String, PeopleError> {
    let email = email.trim().to_lowercase();
    if email.is_empty() {
        return Err(PeopleError::invalid("email", "is required"));
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(PeopleError::invalid("email", format!("must be at most {MAX_EMAIL_CHARS} characters")));
    }
    let well_formed = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.starts_with('.')
    }) && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !well_formed {
        return Err(PeopleError::invalid("email", "is not an email address"));
    }
    Ok(email)
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Who acts: what the audit records, and the caller's own account (their token's subject),
/// which they may not deactivate or take the admin role from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub recorded: String,
    pub own_email: Option<String>,
}

impl Actor {
    fn is(&self, email: &str) -> bool {
        self.own_email.as_deref() == Some(email)
    }
}

pub async fn read(conn: &mut PgConnection, org_id: &str, email: &str) -> Result<PersonRow, PeopleError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PERSON} WHERE p.org_id = $1 AND p.email = $2")))
        .bind(org_id)
        .bind(email)
        .fetch_optional(conn)
        .await?
        .ok_or(PeopleError::NotFound)
}

pub async fn list(ctx: &PeopleContext, org_id: &str) -> Result<Vec<PersonRow>, PeopleError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_PERSON} WHERE p.org_id = $1 ORDER BY p.email")))
        .bind(org_id)
        .fetch_all(&ctx.pool)
        .await?)
}

async fn lock(tx: &mut Transaction<'_, Postgres>, org_id: &str, email: &str) -> Result<Locked, PeopleError> {
    sqlx::query_as(
        "SELECT name, role, agent_id, active, sessions_ended_at FROM people \
         WHERE org_id = $1 AND email = $2 FOR UPDATE",
    )
    .bind(org_id)
    .bind(email)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(PeopleError::NotFound)
}

pub(crate) async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    actor: &str,
    action: &str,
    email: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit (org_id, actor, action, email, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(actor)
        .bind(action)
        .bind(email)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends the person's sessions as of now (never before an earlier end), in the row and in an
/// outbox event the caller commits with the change.
async fn end_sessions(
    ctx: &PeopleContext,
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    email: &str,
    previous: Option<i64>,
    reason: &str,
) -> Result<OutboxMessage, PeopleError> {
    let ended_at = now_secs().max(previous.unwrap_or(0));
    let version: i64 = sqlx::query_scalar(
        "UPDATE people SET sessions_ended_at = $3, version = version + 1, updated_at = now() \
         WHERE org_id = $1 AND email = $2 RETURNING version",
    )
    .bind(org_id)
    .bind(email)
    .bind(ended_at)
    .fetch_one(&mut **tx)
    .await?;
    let data = SessionsEnded {
        org_id: org_id.to_owned(),
        sub: email.to_owned(),
        ended_at: u64::try_from(ended_at).unwrap_or_default(),
        reason: reason.to_owned(),
    };
    let envelope = contracts::Envelope::new(org_id, SESSIONS_ENDED, person_id(org_id, email), version, data);
    Ok(OutboxMessage {
        org_id: org_id.to_owned(),
        subject: ctx.subjects.event(SOURCE, org_id, SESSIONS_ENDED),
        msg_id: envelope.id.to_string(),
        payload: envelope.to_json(),
    })
}

#[derive(Debug, Clone)]
pub struct NewPerson {
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub agent_id: Option<String>,
}

/// A person and the setup code they choose a password with, and until when it may be used.
pub struct WithCode {
    pub person: PersonRow,
    pub setup_code: String,
    pub expires_at: DateTime<Utc>,
}

fn check_agent(role: Role, agent_id: Option<&String>) -> Result<(), PeopleError> {
    if role == Role::Agent && agent_id.is_none() {
        return Err(PeopleError::invalid("agent_id", "is required for an agent"));
    }
    Ok(())
}

pub async fn add(ctx: &PeopleContext, actor: &Actor, person: NewPerson) -> Result<WithCode, PeopleError> {
    check_agent(person.role, person.agent_id.as_ref())?;
    let code = OneTimeCode::new()?;
    let mut tx = ctx.pool.begin().await?;
    let expires_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO people (org_id, email, name, role, agent_id, setup_code_hash, setup_code_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) \
         ON CONFLICT (org_id, email) DO NOTHING RETURNING setup_code_expires_at",
    )
    .bind(&person.org_id)
    .bind(&person.email)
    .bind(&person.name)
    .bind(person.role.as_str())
    .bind(&person.agent_id)
    .bind(&code.hash)
    .bind(ctx.settings.setup_code_ttl_secs as f64)
    .fetch_optional(&mut *tx)
    .await?;
    let expires_at = expires_at.ok_or(PeopleError::AlreadyExists)?;
    let detail = json!({ "name": person.name, "role": person.role.as_str(), "agent_id": person.agent_id });
    audit(&mut tx, &person.org_id, &actor.recorded, "added", &person.email, detail).await?;
    let row = read(&mut tx, &person.org_id, &person.email).await?;
    tx.commit().await?;
    tracing::info!(org_id = %person.org_id, email = %mask_email(&person.email), role = person.role.as_str(), "person added");
    Ok(WithCode { person: row, setup_code: code.code, expires_at })
}

/// What UpdatePerson changes: each `None` leaves the field as it is (`agent_id: Some(None)`
/// takes the agent away).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub agent_id: Option<Option<String>>,
}

pub async fn update(
    ctx: &PeopleContext,
    actor: &Actor,
    org_id: &str,
    email: &str,
    changes: Changes,
) -> Result<PersonRow, PeopleError> {
    let mut tx = ctx.pool.begin().await?;
    let current = lock(&mut tx, org_id, email).await?;
    let current_role: Role =
        current.role.parse().map_err(|e: String| PeopleError::internal(format!("stored role: {e}")))?;
    let name = changes.name.unwrap_or_else(|| current.name.clone());
    let role = changes.role.unwrap_or(current_role);
    let agent_id = changes.agent_id.unwrap_or_else(|| current.agent_id.clone());
    check_agent(role, agent_id.as_ref())?;
    if actor.is(email) && current_role == Role::Admin && role != Role::Admin {
        return Err(PeopleError::OwnAccount("an admin cannot take the admin role from themselves"));
    }
    let mut detail = serde_json::Map::new();
    if name != current.name {
        detail.insert("name".into(), json!({ "from": current.name, "to": name }));
    }
    if role != current_role {
        detail.insert("role".into(), json!({ "from": current_role.as_str(), "to": role.as_str() }));
    }
    if agent_id != current.agent_id {
        detail.insert("agent_id".into(), json!({ "from": current.agent_id, "to": agent_id }));
    }
    if detail.is_empty() {
        tx.rollback().await?;
        return read(&mut *ctx.pool.acquire().await?, org_id, email).await;
    }
    sqlx::query(
        "UPDATE people SET name = $3, role = $4, agent_id = $5, version = version + 1, updated_at = now() \
         WHERE org_id = $1 AND email = $2",
    )
    .bind(org_id)
    .bind(email)
    .bind(&name)
    .bind(role.as_str())
    .bind(&agent_id)
    .execute(&mut *tx)
    .await?;
    // Their tokens carry the old role and agent.
    let ends = detail.contains_key("role") || detail.contains_key("agent_id");
    audit(&mut tx, org_id, &actor.recorded, "updated", email, serde_json::Value::Object(detail)).await?;
    let mut messages = Vec::new();
    if ends {
        messages.push(end_sessions(ctx, &mut tx, org_id, email, current.sessions_ended_at, "role_changed").await?);
    }
    let row = read(&mut tx, org_id, email).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    tracing::info!(org_id, email = %mask_email(email), sessions_ended = ends, "person updated");
    Ok(row)
}

pub async fn deactivate(
    ctx: &PeopleContext,
    actor: &Actor,
    org_id: &str,
    email: &str,
) -> Result<PersonRow, PeopleError> {
    if actor.is(email) {
        return Err(PeopleError::OwnAccount("an admin cannot deactivate themselves"));
    }
    let mut tx = ctx.pool.begin().await?;
    let current = lock(&mut tx, org_id, email).await?;
    if !current.active {
        let row = read(&mut tx, org_id, email).await?;
        tx.rollback().await?;
        return Ok(row);
    }
    sqlx::query(
        "UPDATE people SET active = false, setup_code_hash = NULL, setup_code_expires_at = NULL \
         WHERE org_id = $1 AND email = $2",
    )
    .bind(org_id)
    .bind(email)
    .execute(&mut *tx)
    .await?;
    void_sign_in_codes(&mut tx, org_id, email).await?;
    let ended = end_sessions(ctx, &mut tx, org_id, email, current.sessions_ended_at, "deactivated").await?;
    audit(&mut tx, org_id, &actor.recorded, "deactivated", email, json!({})).await?;
    let row = read(&mut tx, org_id, email).await?;
    platform::outbox::commit(tx, &[ended], &ctx.outbox).await?;
    tracing::info!(org_id, email = %mask_email(email), "person deactivated");
    Ok(row)
}

/// Deletes the person's unused sign-in codes: what ends their sessions ends those too.
async fn void_sign_in_codes(tx: &mut Transaction<'_, Postgres>, org_id: &str, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sign_in_codes WHERE org_id = $1 AND email = $2")
        .bind(org_id)
        .bind(email)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Clears the password, ends the sessions, lifts a lockout, voids the sign-in codes and issues
/// a new setup code.
pub async fn reset_password(
    ctx: &PeopleContext,
    actor: &Actor,
    org_id: &str,
    email: &str,
) -> Result<WithCode, PeopleError> {
    let code = OneTimeCode::new()?;
    let mut tx = ctx.pool.begin().await?;
    let current = lock(&mut tx, org_id, email).await?;
    if !current.active {
        return Err(PeopleError::Deactivated);
    }
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE people SET password_hash = NULL, setup_code_hash = $3, \
           setup_code_expires_at = now() + make_interval(secs => $4) \
         WHERE org_id = $1 AND email = $2 RETURNING setup_code_expires_at",
    )
    .bind(org_id)
    .bind(email)
    .bind(&code.hash)
    .bind(ctx.settings.setup_code_ttl_secs as f64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM sign_in_failures WHERE org_id = $1 AND email = $2")
        .bind(org_id)
        .bind(email)
        .execute(&mut *tx)
        .await?;
    void_sign_in_codes(&mut tx, org_id, email).await?;
    let ended = end_sessions(ctx, &mut tx, org_id, email, current.sessions_ended_at, "password_reset").await?;
    audit(&mut tx, org_id, &actor.recorded, "password_reset", email, json!({})).await?;
    let row = read(&mut tx, org_id, email).await?;
    platform::outbox::commit(tx, &[ended], &ctx.outbox).await?;
    tracing::info!(org_id, email = %mask_email(email), "password reset");
    Ok(WithCode { person: row, setup_code: code.code, expires_at })
}

/// Sets the password of the person whose setup code `code` is, using the code up; answers
/// whose it was.
pub async fn set_password(ctx: &PeopleContext, code: &str, password: String) -> Result<(String, String), PeopleError> {
    password::check_password(&password)?;
    let hash = password::lookup_hash(code).ok_or(PeopleError::UnknownSetupCode)?;
    // Checked before hashing, so that made-up codes cost no hash.
    let valid: Option<bool> =
        sqlx::query_scalar("SELECT setup_code_expires_at > now() FROM people WHERE setup_code_hash = $1 AND active")
            .bind(&hash)
            .fetch_optional(&ctx.pool)
            .await?;
    match valid {
        None => return Err(PeopleError::UnknownSetupCode),
        Some(false) => return Err(PeopleError::ExpiredSetupCode),
        Some(true) => {}
    }
    let phc = ctx.hasher.hash(password).await?;
    let mut tx = ctx.pool.begin().await?;
    let used: Option<(String, String)> = sqlx::query_as(
        "UPDATE people SET password_hash = $2, setup_code_hash = NULL, setup_code_expires_at = NULL, \
           version = version + 1, updated_at = now() \
         WHERE setup_code_hash = $1 AND active AND setup_code_expires_at > now() RETURNING org_id, email",
    )
    .bind(&hash)
    .bind(&phc)
    .fetch_optional(&mut *tx)
    .await?;
    // Used by a concurrent call meanwhile.
    let (org_id, email) = used.ok_or(PeopleError::UnknownSetupCode)?;
    sqlx::query("DELETE FROM sign_in_failures WHERE org_id = $1 AND email = $2")
        .bind(&org_id)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
    audit(&mut tx, &org_id, &email, "password_set", &email, json!({})).await?;
    tx.commit().await?;
    tracing::info!(org_id = %org_id, email = %mask_email(&email), "password set");
    Ok((org_id, email))
}

/// A signed-in person's token and when it expires.
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub person: PersonRow,
}

/// Checks the password and signs a token; every refusal but a lockout is the same
/// `WrongCredentials`, after the same work.
pub async fn sign_in(ctx: &PeopleContext, org_id: &str, email: &str, password: String) -> Result<Session, PeopleError> {
    let signer = ctx.signer.clone().ok_or(PeopleError::NoSigningKey)?;
    refuse_when_locked(ctx, org_id, email).await?;
    let stored: Option<(Option<String>, bool)> =
        sqlx::query_as("SELECT password_hash, active FROM people WHERE org_id = $1 AND email = $2")
            .bind(org_id)
            .bind(email)
            .fetch_optional(&ctx.pool)
            .await?;
    let hash = stored.and_then(|(hash, active)| if active { hash } else { None });
    let plausible = password.chars().count() <= password::MAX_PASSWORD_CHARS;
    let matches = ctx.hasher.verify(password, hash.clone().filter(|_| plausible)).await?;
    // Again after hashing, which waits its turn: guesses sent together all pass the first
    // check before any failure is counted, and once the lock lands they are all refused
    // alike, the right one too, so that the answer tells nothing.
    refuse_when_locked(ctx, org_id, email).await?;
    if !matches {
        return Err(refuse(ctx, org_id, email).await);
    }
    let mut tx = ctx.pool.begin().await?;
    // Still active, with the password just checked: a deactivation or reset that committed
    // meanwhile wins.
    let allowed: Option<Admitted> = sqlx::query_as(
        "UPDATE people SET last_sign_in_at = now() \
         WHERE org_id = $1 AND email = $2 AND active AND password_hash = $3 \
           AND NOT EXISTS (SELECT 1 FROM sign_in_failures f \
                           WHERE f.org_id = $1 AND f.email = $2 AND f.locked_until > now()) \
         RETURNING role, agent_id, sessions_ended_at",
    )
    .bind(org_id)
    .bind(email)
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(admitted) = allowed else {
        metrics::counter!(SIGN_INS, "outcome" => "refused").increment(1);
        return Err(PeopleError::WrongCredentials);
    };
    sqlx::query("DELETE FROM sign_in_failures WHERE org_id = $1 AND email = $2")
        .bind(org_id)
        .bind(email)
        .execute(&mut *tx)
        .await?;
    let session = session(&signer, ctx, &mut tx, org_id, email, admitted).await?;
    tx.commit().await?;
    metrics::counter!(SIGN_INS, "outcome" => "signed_in").increment(1);
    tracing::info!(org_id, email = %mask_email(email), role = %session.person.role, "signed in");
    Ok(session)
}

/// What a session is signed from: the person's role, agent and when their sessions last
/// ended, as the update that noted the sign-in (and locked their row) read them.
pub(crate) type Admitted = (String, Option<String>, Option<i64>);

/// Notes a sign-in of (org_id, email) if the person is active, locking their row until `tx`
/// ends; none when no active person has that email.
pub(crate) async fn admit(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    email: &str,
) -> Result<Option<Admitted>, PeopleError> {
    Ok(sqlx::query_as(
        "UPDATE people SET last_sign_in_at = now() WHERE org_id = $1 AND email = $2 AND active \
         RETURNING role, agent_id, sessions_ended_at",
    )
    .bind(org_id)
    .bind(email)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Signs the token of an admitted person while `tx` holds their row, so that an end of their
/// sessions committed meanwhile is seen (see the module's comment).
pub(crate) async fn session(
    signer: &Signer,
    ctx: &PeopleContext,
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    email: &str,
    (role, agent_id, sessions_ended_at): Admitted,
) -> Result<Session, PeopleError> {
    let role: Role = role.parse().map_err(|e: String| PeopleError::internal(format!("stored role: {e}")))?;
    after_end(sessions_ended_at).await;
    let token = signer
        .mint_for(email, role, vec![org_id.to_owned()], agent_id, ctx.session_ttl)
        .map_err(|e| PeopleError::internal(format!("signing a token: {e}")))?;
    let expires_at = expiry(&token).ok_or_else(|| PeopleError::internal("a signed token without exp"))?;
    let person = read(tx, org_id, email).await?;
    Ok(Session { token, expires_at, person })
}

/// A token is refused when issued in the second its person's sessions ended (`iat` at or
/// before the end): one signed right after a role change waits for the next second.
async fn after_end(sessions_ended_at: Option<i64>) {
    let Some(ended) = sessions_ended_at else { return };
    let next = Duration::from_secs(u64::try_from(ended.saturating_add(1)).unwrap_or_default());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    if let Some(wait) = next.checked_sub(now) {
        // Clocks of two processes a few seconds apart would wait that long; a second is
        // the most an end in this process's clock asks.
        tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
    }
}

/// The `exp` of a token this process signed.
fn expiry(token: &str) -> Option<DateTime<Utc>> {
    use base64::Engine;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()?;
    DateTime::from_timestamp(exp, 0)
}

/// Counts a failed sign-in of (org_id, email), whether or not such a person exists, locking it
/// at `people.max_failed_sign_ins` within `FAILURE_WINDOW`; answers the refusal.
/// `Locked` while the account is locked out.
async fn refuse_when_locked(ctx: &PeopleContext, org_id: &str, email: &str) -> Result<(), PeopleError> {
    let locked_for: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 FROM sign_in_failures \
         WHERE org_id = $1 AND email = $2 AND locked_until > now()",
    )
    .bind(org_id)
    .bind(email)
    .fetch_optional(&ctx.pool)
    .await?;
    match locked_for {
        Some(seconds) => {
            metrics::counter!(SIGN_INS, "outcome" => "locked").increment(1);
            Err(PeopleError::Locked { retry_after_secs: seconds.ceil() as i64 })
        }
        None => Ok(()),
    }
}

async fn refuse(ctx: &PeopleContext, org_id: &str, email: &str) -> PeopleError {
    match count_failure(ctx, org_id, email).await {
        Ok(locked) => {
            let outcome = if locked { "locked" } else { "refused" };
            metrics::counter!(SIGN_INS, "outcome" => outcome).increment(1);
            tracing::debug!(org_id, email = %mask_email(email), "sign-in refused");
            PeopleError::WrongCredentials
        }
        Err(error) => error,
    }
}

async fn count_failure(ctx: &PeopleContext, org_id: &str, email: &str) -> Result<bool, PeopleError> {
    let window = FAILURE_WINDOW.as_secs_f64();
    let mut tx = ctx.pool.begin().await?;
    let failures: i32 = sqlx::query_scalar(
        "INSERT INTO sign_in_failures AS f (org_id, email, failures, first_failed_at) VALUES ($1, $2, 1, now()) \
         ON CONFLICT (org_id, email) DO UPDATE SET \
           failures = CASE WHEN f.first_failed_at <= now() - make_interval(secs => $3) THEN 1 ELSE f.failures + 1 END, \
           first_failed_at = CASE WHEN f.first_failed_at <= now() - make_interval(secs => $3) \
                                  THEN now() ELSE f.first_failed_at END \
         RETURNING failures",
    )
    .bind(org_id)
    .bind(email)
    .bind(window)
    .fetch_one(&mut *tx)
    .await?;
    let locked = i64::from(failures) >= i64::from(ctx.settings.max_failed_sign_ins);
    if locked {
        sqlx::query(
            "UPDATE sign_in_failures SET failures = 0, first_failed_at = now(), \
               locked_until = now() + make_interval(secs => $3) \
             WHERE org_id = $1 AND email = $2",
        )
        .bind(org_id)
        .bind(email)
        .bind(ctx.settings.lockout_secs as f64)
        .execute(&mut *tx)
        .await?;
        let detail = json!({ "failures": failures, "lockout_secs": ctx.settings.lockout_secs });
        sqlx::query(
            "INSERT INTO audit (org_id, actor, action, email, detail) \
             SELECT $1, 'system', 'locked', $2, $3 WHERE EXISTS (SELECT 1 FROM people WHERE org_id = $1 AND email = $2)",
        )
        .bind(org_id)
        .bind(email)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        tracing::warn!(org_id, email = %mask_email(email), failures, "account locked after failed sign-ins");
    }
    tx.commit().await?;
    Ok(locked)
}

/// Deletes the failure counts that count for nothing any more: window and lockout passed.
pub async fn prune_failures(ctx: &PeopleContext) -> Result<u64, PeopleError> {
    let deleted = sqlx::query(
        "DELETE FROM sign_in_failures WHERE first_failed_at < now() - make_interval(secs => $1) \
           AND (locked_until IS NULL OR locked_until < now())",
    )
    .bind(FAILURE_WINDOW.as_secs_f64())
    .execute(&ctx.pool)
    .await?;
    Ok(deleted.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_keyed_lowercased_and_must_look_like_one() {
        assert_eq!(normalize_email("  Ann.Smith@Acme.TEST ").unwrap(), "ann.smith@acme.test");
        for bad in ["", "ann", "@acme.test", "ann@", "ann@@acme.test", "ann smith@acme.test", "ann@.acme", "a\u{7}@x.y"]
        {
            let error = normalize_email(bad).expect_err(bad).to_string();
            assert!(error.starts_with("email: "), "{bad}: {error}");
        }
        let long = format!("{}@acme.test", "a".repeat(MAX_EMAIL_CHARS));
        assert!(normalize_email(&long).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn an_agent_needs_its_agent() {
        assert!(check_agent(Role::Agent, None).is_err());
        assert!(check_agent(Role::Agent, Some(&"ann".to_owned())).is_ok());
        assert!(check_agent(Role::Operator, None).is_ok());
    }

    #[test]
    fn the_expiry_is_read_from_the_token() {
        use base64::Engine;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":1900000000}"#);
        let token = format!("e30.{claims}.sig");
        assert_eq!(expiry(&token), DateTime::from_timestamp(1_900_000_000, 0));
        assert_eq!(expiry("nonsense"), None);
    }
}
