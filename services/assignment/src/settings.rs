//! Each organisation's assignment settings: whether and how new leads find an agent by
//! themselves, and the capacity of an agent who has none of its own. Admins change them; every
//! change is kept in words with who made it. The dispatcher reads them under the
//! organisation's lock, so a change holds from the next lead handed out, in every process.

use crate::error::AssignmentError;
use chrono::{DateTime, Utc};
use leads_proto::v1 as pb;
use sqlx::{PgExecutor, PgPool, types::Json};

/// How many past changes GetAssignmentSettings answers.
const CHANGES_SHOWN: i64 = 50;
pub const DEFAULT_CAPACITY: i32 = 10;
pub const MAX_CAPACITY: i32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Off,
    RoundRobin,
    Balanced,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::RoundRobin => "round_robin",
            Policy::Balanced => "balanced",
        }
    }

    fn from_name(name: &str) -> Result<Self, AssignmentError> {
        match name {
            "off" => Ok(Policy::Off),
            "round_robin" => Ok(Policy::RoundRobin),
            "balanced" => Ok(Policy::Balanced),
            other => Err(AssignmentError::Protocol(format!("unknown assignment policy {other:?} in the database"))),
        }
    }

    fn to_proto(self) -> pb::AssignmentPolicy {
        match self {
            Policy::Off => pb::AssignmentPolicy::Off,
            Policy::RoundRobin => pb::AssignmentPolicy::RoundRobin,
            Policy::Balanced => pb::AssignmentPolicy::Balanced,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignmentSettings {
    pub policy: Policy,
    pub default_capacity: i32,
}

impl Default for AssignmentSettings {
    fn default() -> Self {
        Self { policy: Policy::Off, default_capacity: DEFAULT_CAPACITY }
    }
}

/// The organisation's settings; the defaults when it never set any.
pub async fn of_org<'e>(executor: impl PgExecutor<'e>, org_id: &str) -> Result<AssignmentSettings, AssignmentError> {
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT policy, default_capacity FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(executor)
            .await?;
    match row {
        Some((policy, default_capacity)) => {
            Ok(AssignmentSettings { policy: Policy::from_name(&policy)?, default_capacity })
        }
        None => Ok(AssignmentSettings::default()),
    }
}

/// One recorded change: version, when, who, what in words.
type ChangeRow = (i64, DateTime<Utc>, String, Json<Vec<String>>);

pub async fn get(pool: &PgPool, org_id: &str) -> Result<pb::AssignmentSettings, AssignmentError> {
    let row: Option<(String, i32, i64, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT policy, default_capacity, version, updated_at, updated_by FROM org_settings WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(pool)
    .await?;
    let changes: Vec<ChangeRow> = sqlx::query_as(
        "SELECT version, at, actor, changes FROM org_settings_changes \
         WHERE org_id = $1 ORDER BY version DESC LIMIT $2",
    )
    .bind(org_id)
    .bind(CHANGES_SHOWN)
    .fetch_all(pool)
    .await?;
    let (settings, version, updated_at, updated_by) = match row {
        Some((policy, default_capacity, version, updated_at, updated_by)) => (
            AssignmentSettings { policy: Policy::from_name(&policy)?, default_capacity },
            version,
            Some(updated_at),
            updated_by,
        ),
        None => (AssignmentSettings::default(), 0, None, String::new()),
    };
    Ok(pb::AssignmentSettings {
        org_id: org_id.to_owned(),
        policy: settings.policy.to_proto().into(),
        default_capacity: settings.default_capacity,
        version,
        updated_at: updated_at.map(contracts::time::timestamp),
        updated_by,
        changes: changes
            .into_iter()
            .map(|(version, at, actor, Json(changes))| pb::AssignmentSettingsChange {
                version,
                at: Some(contracts::time::timestamp(at)),
                actor,
                changes,
            })
            .collect(),
    })
}

/// Replaces the organisation's settings, recording what changed; nothing is recorded when
/// nothing changed.
pub async fn update(
    pool: &PgPool,
    org_id: &str,
    settings: AssignmentSettings,
    expected_version: Option<i64>,
    actor: &str,
) -> Result<pb::AssignmentSettings, AssignmentError> {
    let mut tx = pool.begin().await?;
    // One writer at a time per organisation, the first one included (the row may not exist).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assignment settings ' || $1, 0))")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let current: Option<(String, i32, i64)> =
        sqlx::query_as("SELECT policy, default_capacity, version FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (before, version) = match current {
        Some((policy, default_capacity, version)) => {
            (AssignmentSettings { policy: Policy::from_name(&policy)?, default_capacity }, version)
        }
        None => (AssignmentSettings::default(), 0),
    };
    if let Some(expected) = expected_version
        && expected != version
    {
        return Err(AssignmentError::SettingsVersionMismatch { expected, actual: version });
    }
    let changes = differences(before, settings);
    if changes.is_empty() {
        tx.rollback().await?;
        return get(pool, org_id).await;
    }
    let version = version + 1;
    sqlx::query(
        "INSERT INTO org_settings (org_id, policy, default_capacity, version, updated_by) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (org_id) DO UPDATE SET policy = $2, default_capacity = $3, version = $4, updated_by = $5, \
           updated_at = now()",
    )
    .bind(org_id)
    .bind(settings.policy.as_str())
    .bind(settings.default_capacity)
    .bind(version)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO org_settings_changes (org_id, version, actor, changes) VALUES ($1, $2, $3, $4)")
        .bind(org_id)
        .bind(version)
        .bind(actor)
        .bind(Json(&changes))
        .execute(&mut *tx)
        .await?;
    if settings.policy == Policy::Off {
        // Leads waiting when the policy is turned off stay unassigned, as new ones will.
        sqlx::query("DELETE FROM waiting_leads WHERE org_id = $1 AND reserved_for IS NULL")
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(org_id, version, actor, policy = settings.policy.as_str(), "assignment settings changed");
    get(pool, org_id).await
}

fn differences(before: AssignmentSettings, after: AssignmentSettings) -> Vec<String> {
    let pairs = [
        ("policy", before.policy.as_str().to_owned(), after.policy.as_str().to_owned()),
        ("default_capacity", before.default_capacity.to_string(), after.default_capacity.to_string()),
    ];
    pairs.into_iter().filter(|(_, b, a)| b != a).map(|(name, b, a)| format!("{name}: {b} -> {a}")).collect()
}

/// Reads and checks an UpdateAssignmentSettings request, naming the field at fault.
pub fn parse(request: &pb::UpdateAssignmentSettingsRequest) -> Result<AssignmentSettings, AssignmentError> {
    let policy = match pb::AssignmentPolicy::try_from(request.policy) {
        Ok(pb::AssignmentPolicy::Off) => Policy::Off,
        Ok(pb::AssignmentPolicy::RoundRobin) => Policy::RoundRobin,
        Ok(pb::AssignmentPolicy::Balanced) => Policy::Balanced,
        Ok(pb::AssignmentPolicy::Unspecified) => return Err(AssignmentError::invalid("policy", "is required")),
        Err(_) => return Err(AssignmentError::invalid("policy", "is not a known policy")),
    };
    if !(1..=MAX_CAPACITY).contains(&request.default_capacity) {
        return Err(AssignmentError::invalid("default_capacity", format!("must be between 1 and {MAX_CAPACITY}")));
    }
    Ok(AssignmentSettings { policy, default_capacity: request.default_capacity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(request: pb::UpdateAssignmentSettingsRequest) -> String {
        match parse(&request) {
            Err(AssignmentError::InvalidArgument { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_setting_is_refused_naming_its_field() {
        let request = |policy: i32, default_capacity| pb::UpdateAssignmentSettingsRequest {
            org_id: "acme".into(),
            policy,
            default_capacity,
            expected_version: None,
        };
        assert_eq!(field(request(0, 5)), "policy");
        assert_eq!(field(request(42, 5)), "policy");
        assert_eq!(field(request(pb::AssignmentPolicy::Balanced as i32, 0)), "default_capacity");
        assert_eq!(field(request(pb::AssignmentPolicy::Balanced as i32, 1001)), "default_capacity");
        let fine = parse(&request(pb::AssignmentPolicy::RoundRobin as i32, 3)).expect("valid");
        assert_eq!(fine, AssignmentSettings { policy: Policy::RoundRobin, default_capacity: 3 });
    }

    #[test]
    fn a_change_is_recorded_in_words() {
        let after = AssignmentSettings { policy: Policy::Balanced, default_capacity: 5 };
        assert_eq!(
            differences(AssignmentSettings::default(), after),
            vec!["policy: off -> balanced".to_owned(), "default_capacity: 10 -> 5".to_owned()]
        );
        assert!(differences(after, after).is_empty());
    }
}
