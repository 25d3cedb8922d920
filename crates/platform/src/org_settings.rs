//! What every service's per-organisation settings share (the lead service's status rules, the
//! assignment policy, ...): one writer at a time per organisation, an update made from a
//! stated version refused when the settings moved on, and every change kept in words with who
//! made it, in the service's own `org_settings_changes`:
//!
//! ```sql
//! CREATE TABLE org_settings_changes (
//!     org_id text NOT NULL, version bigint NOT NULL, actor text NOT NULL,
//!     at timestamptz NOT NULL DEFAULT now(), changes jsonb NOT NULL,
//!     PRIMARY KEY (org_id, version));
//! ```

use leads_proto::v1 as pb;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, types::Json};

/// A kept change: the version it made, when, who, what in words.
type ChangeRow = (i64, DateTime<Utc>, String, Json<Vec<String>>);

/// How many past changes a settings answer shows, newest first.
pub const CHANGES_SHOWN: i64 = 50;

/// An update made from `expected` while the settings are at `actual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleSettings {
    pub expected: i64,
    pub actual: i64,
}

/// Waits for any other writer of `domain`'s settings of `org_id` (the settings' row may not
/// exist yet, so no row lock would do); held until the transaction ends.
pub async fn lock(conn: &mut PgConnection, domain: &str, org_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ' settings ' || $2, 0))")
        .bind(domain)
        .bind(org_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Refuses an update made from another version than the current one.
pub fn check_version(expected: Option<i64>, actual: i64) -> Result<(), StaleSettings> {
    match expected {
        Some(expected) if expected != actual => Err(StaleSettings { expected, actual }),
        _ => Ok(()),
    }
}

/// One setting's change in words (`name: before -> after`); none when it did not change.
pub fn describe(name: &str, before: &str, after: &str) -> Option<String> {
    (before != after).then(|| format!("{name}: {before} -> {after}"))
}

/// Keeps the change that made `version`.
pub async fn record_change(
    conn: &mut PgConnection,
    org_id: &str,
    version: i64,
    actor: &str,
    changes: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO org_settings_changes (org_id, version, actor, changes) VALUES ($1, $2, $3, $4)")
        .bind(org_id)
        .bind(version)
        .bind(actor)
        .bind(Json(changes))
        .execute(conn)
        .await?;
    Ok(())
}

/// The organisation's latest changes, newest first.
pub async fn recent_changes(pool: &PgPool, org_id: &str) -> Result<Vec<pb::SettingsChange>, sqlx::Error> {
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "SELECT version, at, actor, changes FROM org_settings_changes \
         WHERE org_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(org_id)
    .bind(CHANGES_SHOWN)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, at, actor, Json(changes))| pb::SettingsChange {
            version,
            at: Some(contracts::time::timestamp(at)),
            actor,
            changes,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stale_version_is_refused_and_only_a_change_is_described() {
        assert_eq!(check_version(None, 3), Ok(()));
        assert_eq!(check_version(Some(3), 3), Ok(()));
        assert_eq!(check_version(Some(2), 3), Err(StaleSettings { expected: 2, actual: 3 }));
        assert_eq!(describe("policy", "off", "balanced").as_deref(), Some("policy: off -> balanced"));
        assert_eq!(describe("policy", "off", "off"), None);
    }
}
