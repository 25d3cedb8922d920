//! Each organisation's assignment settings: whether and how new leads find an agent by
//! themselves, and the capacity of an agent who has none of its own. Admins change them; every
//! change is kept in words with who made it. The dispatcher reads them under the
//! organisation's lock, so a change holds from the next lead handed out, in every process.

use crate::error::AssignmentError;
use crate::routing::{self, SkillRoute};
use chrono::{DateTime, Utc};
use leads_proto::v1 as pb;
use sqlx::{PgExecutor, PgPool};

pub const DEFAULT_CAPACITY: i32 = 10;
pub const MAX_CAPACITY: i32 = 1000;
/// A week: the longest a lead may sit untouched before it goes to another agent.
pub const MAX_UNTOUCHED_MINUTES: i32 = 10_080;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentSettings {
    pub policy: Policy,
    pub default_capacity: i32,
    /// A lead the platform assigned and no person acted on for this many minutes goes to
    /// another agent; `None`: never.
    pub reassign_untouched_after_minutes: Option<i32>,
    /// An agent offline past the presence grace period hands back its untouched leads.
    pub release_offline_after_grace: bool,
    /// Which leads need a skill, first match wins.
    pub skill_routes: Vec<SkillRoute>,
}

impl Default for AssignmentSettings {
    fn default() -> Self {
        Self {
            policy: Policy::Off,
            default_capacity: DEFAULT_CAPACITY,
            reassign_untouched_after_minutes: None,
            release_offline_after_grace: false,
            skill_routes: Vec::new(),
        }
    }
}

/// policy, default_capacity, reassign_untouched_after_minutes, release_offline_after_grace,
/// skill_routes
type SettingsRow = (String, i32, Option<i32>, bool, sqlx::types::Json<Vec<SkillRoute>>);
const SETTINGS_COLUMNS: &str =
    "policy, default_capacity, reassign_untouched_after_minutes, release_offline_after_grace, skill_routes";

fn from_row(
    (policy, default_capacity, reassign_untouched_after_minutes, release_offline_after_grace, skill_routes): SettingsRow,
) -> Result<AssignmentSettings, AssignmentError> {
    Ok(AssignmentSettings {
        policy: Policy::from_name(&policy)?,
        default_capacity,
        reassign_untouched_after_minutes,
        release_offline_after_grace,
        skill_routes: skill_routes.0,
    })
}

/// The organisation's settings; the defaults when it never set any.
pub async fn of_org<'e>(executor: impl PgExecutor<'e>, org_id: &str) -> Result<AssignmentSettings, AssignmentError> {
    let row: Option<SettingsRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {SETTINGS_COLUMNS} FROM org_settings WHERE org_id = $1")))
            .bind(org_id)
            .fetch_optional(executor)
            .await?;
    row.map_or_else(|| Ok(AssignmentSettings::default()), from_row)
}

pub async fn get(pool: &PgPool, org_id: &str) -> Result<pb::AssignmentSettings, AssignmentError> {
    let settings = of_org(pool, org_id).await?;
    let row: Option<(i64, DateTime<Utc>, String)> =
        sqlx::query_as("SELECT version, updated_at, updated_by FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(pool)
            .await?;
    let (version, updated_at, updated_by) = match row {
        Some((version, updated_at, updated_by)) => (version, Some(updated_at), updated_by),
        None => (0, None, String::new()),
    };
    Ok(pb::AssignmentSettings {
        org_id: org_id.to_owned(),
        policy: settings.policy.to_proto().into(),
        default_capacity: settings.default_capacity,
        reassign_untouched_after_minutes: settings.reassign_untouched_after_minutes.unwrap_or(0),
        release_offline_after_grace: settings.release_offline_after_grace,
        skill_routes: settings
            .skill_routes
            .iter()
            .map(|r| pb::SkillRoute { r#match: r.matches.clone(), skill: r.skill.clone() })
            .collect(),
        version,
        updated_at: updated_at.map(contracts::time::timestamp),
        updated_by,
        changes: platform::org_settings::recent_changes(pool, org_id).await?,
    })
}

/// Replaces the organisation's settings, recording what changed; nothing is recorded when
/// nothing changed.
pub async fn update(
    pool: &PgPool,
    org_id: &str,
    change: SettingsChange,
    expected_version: Option<i64>,
    actor: &str,
) -> Result<pb::AssignmentSettings, AssignmentError> {
    let mut tx = pool.begin().await?;
    platform::org_settings::lock(&mut tx, "assignment", org_id).await?;
    let before = of_org(&mut *tx, org_id).await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM org_settings WHERE org_id = $1")
        .bind(org_id)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(0);
    let settings = change.applied_to(before.clone());
    platform::org_settings::check_version(expected_version, version)
        .map_err(|stale| AssignmentError::SettingsVersionMismatch { expected: stale.expected, actual: stale.actual })?;
    let changes = differences(&before, &settings);
    if changes.is_empty() {
        tx.rollback().await?;
        return get(pool, org_id).await;
    }
    let version = version + 1;
    sqlx::query(
        "INSERT INTO org_settings (org_id, policy, default_capacity, version, updated_by, \
           reassign_untouched_after_minutes, release_offline_after_grace, skill_routes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (org_id) DO UPDATE SET policy = $2, default_capacity = $3, version = $4, updated_by = $5, \
           updated_at = now(), reassign_untouched_after_minutes = $6, release_offline_after_grace = $7, \
           skill_routes = $8",
    )
    .bind(org_id)
    .bind(settings.policy.as_str())
    .bind(settings.default_capacity)
    .bind(version)
    .bind(actor)
    .bind(settings.reassign_untouched_after_minutes)
    .bind(settings.release_offline_after_grace)
    .bind(sqlx::types::Json(&settings.skill_routes))
    .execute(&mut *tx)
    .await?;
    platform::org_settings::record_change(&mut tx, org_id, version, actor, &changes).await?;
    if before.policy == Policy::Off && settings.policy != Policy::Off {
        let queued = queue_unassigned(&mut tx, org_id).await?;
        tracing::info!(org_id, queued, "unassigned leads waiting since the policy was turned on");
    }
    if settings.policy == Policy::Off {
        // Leads waiting when the policy is turned off stay unassigned, as new ones will.
        sqlx::query("DELETE FROM waiting_leads WHERE org_id = $1 AND reserved_for IS NULL")
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
    }
    if settings.reassign_untouched_after_minutes.is_none() {
        // Untouched leads not yet on their way to another agent stay with theirs.
        sqlx::query("DELETE FROM waiting_leads WHERE org_id = $1 AND reserved_for IS NULL AND taken_from IS NOT NULL")
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(org_id, version, actor, policy = settings.policy.as_str(), "assignment settings changed");
    get(pool, org_id).await
}

/// Puts the organisation's active unassigned leads in the waiting queue, as the projection of
/// the lead events knows them: turned on, the policy serves the leads already waiting for a
/// person as well as new ones. Their score is not in the projection: they wait behind scored
/// leads until an event of theirs brings it. A lead id is a UUIDv7, its first 48 bits its
/// creation in milliseconds.
async fn queue_unassigned(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: &str,
) -> Result<u64, AssignmentError> {
    Ok(sqlx::query(
        "INSERT INTO waiting_leads (org_id, lead_id, lead_created_at) \
         SELECT l.org_id, l.lead_id, \
           to_timestamp(('x' || lpad(replace(left(l.lead_id::text, 13), '-', ''), 16, '0'))::bit(64)::bigint / 1000.0) \
         FROM lead_agents l WHERE l.org_id = $1 AND l.active AND l.agent_id IS NULL \
         ORDER BY l.lead_id \
         ON CONFLICT DO NOTHING",
    )
    .bind(org_id)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

fn differences(before: &AssignmentSettings, after: &AssignmentSettings) -> Vec<String> {
    let pairs = [
        ("policy", before.policy.as_str().to_owned(), after.policy.as_str().to_owned()),
        ("default_capacity", before.default_capacity.to_string(), after.default_capacity.to_string()),
        (
            "reassign_untouched_after_minutes",
            minutes(before.reassign_untouched_after_minutes),
            minutes(after.reassign_untouched_after_minutes),
        ),
        (
            "release_offline_after_grace",
            before.release_offline_after_grace.to_string(),
            after.release_offline_after_grace.to_string(),
        ),
        ("skill_routes", routing::describe_routes(&before.skill_routes), routing::describe_routes(&after.skill_routes)),
    ];
    pairs.into_iter().filter_map(|(name, b, a)| platform::org_settings::describe(name, &b, &a)).collect()
}

fn minutes(value: Option<i32>) -> String {
    value.map_or_else(|| "off".to_owned(), |m| m.to_string())
}

/// What an update sets: policy and capacity always, the rest only when the request names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsChange {
    pub policy: Policy,
    pub default_capacity: i32,
    /// `Some(None)` turns it off.
    pub reassign_untouched_after_minutes: Option<Option<i32>>,
    pub release_offline_after_grace: Option<bool>,
    pub skill_routes: Option<Vec<SkillRoute>>,
}

impl SettingsChange {
    fn applied_to(self, before: AssignmentSettings) -> AssignmentSettings {
        AssignmentSettings {
            policy: self.policy,
            default_capacity: self.default_capacity,
            reassign_untouched_after_minutes: self
                .reassign_untouched_after_minutes
                .unwrap_or(before.reassign_untouched_after_minutes),
            release_offline_after_grace: self.release_offline_after_grace.unwrap_or(before.release_offline_after_grace),
            skill_routes: self.skill_routes.unwrap_or(before.skill_routes),
        }
    }
}

/// Reads and checks an UpdateAssignmentSettings request, naming the field at fault.
pub fn parse(request: &pb::UpdateAssignmentSettingsRequest) -> Result<SettingsChange, AssignmentError> {
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
    let reassign_untouched_after_minutes = match request.reassign_untouched_after_minutes {
        None => None,
        Some(0) => Some(None),
        Some(m) if (1..=MAX_UNTOUCHED_MINUTES).contains(&m) => Some(Some(m)),
        Some(_) => {
            return Err(AssignmentError::invalid(
                "reassign_untouched_after_minutes",
                format!("must be between 1 and {MAX_UNTOUCHED_MINUTES}, or 0 for never"),
            ));
        }
    };
    let skill_routes = request.skill_routes.as_ref().map(|r| routing::parse_routes(&r.routes)).transpose()?;
    Ok(SettingsChange {
        policy,
        default_capacity: request.default_capacity,
        reassign_untouched_after_minutes,
        release_offline_after_grace: request.release_offline_after_grace,
        skill_routes,
    })
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
            ..Default::default()
        };
        assert_eq!(field(request(0, 5)), "policy");
        assert_eq!(field(request(42, 5)), "policy");
        assert_eq!(field(request(pb::AssignmentPolicy::Balanced as i32, 0)), "default_capacity");
        assert_eq!(field(request(pb::AssignmentPolicy::Balanced as i32, 1001)), "default_capacity");
        let untouched = |minutes| pb::UpdateAssignmentSettingsRequest {
            reassign_untouched_after_minutes: Some(minutes),
            ..request(pb::AssignmentPolicy::Balanced as i32, 5)
        };
        assert_eq!(field(untouched(-1)), "reassign_untouched_after_minutes");
        assert_eq!(field(untouched(MAX_UNTOUCHED_MINUTES + 1)), "reassign_untouched_after_minutes");
        let routed = |skill: &str| pb::UpdateAssignmentSettingsRequest {
            skill_routes: Some(pb::SkillRoutes {
                routes: vec![pb::SkillRoute { r#match: "whatsapp".into(), skill: skill.into() }],
            }),
            ..request(pb::AssignmentPolicy::Balanced as i32, 5)
        };
        assert_eq!(field(routed("Not A Skill")), "skill_routes.skill");
        assert_eq!(parse(&routed("whatsapp")).expect("valid").skill_routes.expect("set").len(), 1);
        let fine = parse(&request(pb::AssignmentPolicy::RoundRobin as i32, 3)).expect("valid");
        let kept = SettingsChange {
            policy: Policy::RoundRobin,
            default_capacity: 3,
            reassign_untouched_after_minutes: None,
            release_offline_after_grace: None,
            skill_routes: None,
        };
        assert_eq!(fine, kept, "absent options keep what is set");
        assert_eq!(parse(&untouched(0)).expect("off").reassign_untouched_after_minutes, Some(None));
        assert_eq!(parse(&untouched(30)).expect("on").reassign_untouched_after_minutes, Some(Some(30)));
    }

    #[test]
    fn a_change_is_recorded_in_words() {
        let after = AssignmentSettings { policy: Policy::Balanced, default_capacity: 5, ..Default::default() };
        assert_eq!(
            differences(&AssignmentSettings::default(), &after),
            vec!["policy: off -> balanced".to_owned(), "default_capacity: 10 -> 5".to_owned()]
        );
        let untouched = AssignmentSettings {
            reassign_untouched_after_minutes: Some(15),
            release_offline_after_grace: true,
            ..after.clone()
        };
        assert_eq!(
            differences(&after, &untouched),
            vec![
                "reassign_untouched_after_minutes: off -> 15".to_owned(),
                "release_offline_after_grace: false -> true".to_owned()
            ]
        );
        assert!(differences(&after, &after).is_empty());
        let routed = AssignmentSettings {
            skill_routes: vec![SkillRoute { matches: "whatsapp".into(), skill: "whatsapp".into() }],
            ..after.clone()
        };
        assert_eq!(differences(&after, &routed), vec!["skill_routes: none -> whatsapp => whatsapp".to_owned()]);
    }
}
