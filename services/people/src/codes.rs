//! One-time sign-in codes: what a one-click sign-in link carries. An admin or one of the
//! platform's services asks for one for an active person (`CreateSignInCode`); whoever holds
//! it signs in as that person once (`SignInWithCode`), within `people.sign_in_code_ttl_secs`.
//! Only the code's SHA-256 is kept, and deactivating the person or resetting their password
//! voids their unused codes. Codes are 256 random bits, so unlike passwords they need no
//! lockout: no one guesses one.

use crate::{
    PeopleContext,
    directory::{self, Actor, Session},
    error::PeopleError,
    password::{self, OneTimeCode},
};
use chrono::{DateTime, Utc};
use contracts::values::mask::mask_email;
use serde_json::json;

/// A new sign-in code for the active person (org_id, email), and until when it signs them in.
pub async fn create(
    ctx: &PeopleContext,
    actor: &Actor,
    org_id: &str,
    email: &str,
) -> Result<(String, DateTime<Utc>), PeopleError> {
    let code = OneTimeCode::new()?;
    let mut tx = ctx.pool.begin().await?;
    // Shared with a deactivation, which waits for this code to be in and then deletes it.
    let active: Option<bool> =
        sqlx::query_scalar("SELECT active FROM people WHERE org_id = $1 AND email = $2 FOR SHARE")
            .bind(org_id)
            .bind(email)
            .fetch_optional(&mut *tx)
            .await?;
    match active {
        None => return Err(PeopleError::NotFound),
        Some(false) => return Err(PeopleError::Deactivated),
        Some(true) => {}
    }
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO sign_in_codes (code_hash, org_id, email, created_by, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
    )
    .bind(&code.hash)
    .bind(org_id)
    .bind(email)
    .bind(&actor.recorded)
    .bind(ctx.settings.sign_in_code_ttl_secs as f64)
    .fetch_one(&mut *tx)
    .await?;
    let detail = json!({ "expires_at": expires_at });
    directory::audit(&mut tx, org_id, &actor.recorded, "sign_in_code_created", email, detail).await?;
    tx.commit().await?;
    tracing::info!(org_id, email = %mask_email(email), by = %actor.recorded, "sign-in code created");
    Ok((code.code, expires_at))
}

/// Signs in the person whose code `code` is, using it up: a second use, like an unknown code,
/// is `UnknownSignInCode`, and an expired one is used up too.
pub async fn sign_in(ctx: &PeopleContext, code: &str) -> Result<Session, PeopleError> {
    let signer = ctx.signer.clone().ok_or(PeopleError::NoSigningKey)?;
    let hash = password::lookup_hash(code).ok_or(PeopleError::UnknownSignInCode)?;
    let mut tx = ctx.pool.begin().await?;
    let used: Option<(String, String, bool)> =
        sqlx::query_as("DELETE FROM sign_in_codes WHERE code_hash = $1 RETURNING org_id, email, expires_at > now()")
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((org_id, email, valid)) = used else {
        return Err(PeopleError::UnknownSignInCode);
    };
    if !valid {
        tx.commit().await?;
        return Err(PeopleError::ExpiredSignInCode);
    }
    // A deactivation deletes the codes; one committed while this code was being read leaves
    // the person inactive here.
    let Some(admitted) = directory::admit(&mut tx, &org_id, &email).await? else {
        return Err(PeopleError::UnknownSignInCode);
    };
    directory::audit(&mut tx, &org_id, &email, "signed_in_with_code", &email, json!({})).await?;
    let session = directory::session(&signer, ctx, &mut tx, &org_id, &email, admitted).await?;
    tx.commit().await?;
    tracing::info!(org_id = %org_id, email = %mask_email(&email), "signed in with a sign-in code");
    Ok(session)
}

/// Deletes the codes that expired unused.
pub async fn prune(ctx: &PeopleContext) -> Result<u64, PeopleError> {
    let deleted = sqlx::query("DELETE FROM sign_in_codes WHERE expires_at < now()").execute(&ctx.pool).await?;
    Ok(deleted.rows_affected())
}
