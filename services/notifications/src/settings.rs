//! Each organisation's notification settings: when a follow-up's reminder and overdue alert
//! come, and whether overdue is escalated to the admins. Changing them moves the alerts of
//! every open follow-up in the same transaction.

use crate::{NotificationContext, error::NotificationError, followups};
use platform::org_settings;
use sqlx::PgConnection;

const DOMAIN: &str = "notifications";

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct OrgSettings {
    pub remind_before_minutes: i32,
    pub overdue_after_minutes: i32,
    pub escalate_overdue: bool,
    pub version: i64,
}

impl Default for OrgSettings {
    /// A reminder 15 minutes before, overdue an hour after, told to the admins too.
    fn default() -> Self {
        Self { remind_before_minutes: 15, overdue_after_minutes: 60, escalate_overdue: true, version: 0 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Update {
    pub remind_before_minutes: Option<i32>,
    pub overdue_after_minutes: Option<i32>,
    pub escalate_overdue: Option<bool>,
    pub expected_version: Option<i64>,
}

pub async fn read(conn: &mut PgConnection, org_id: &str) -> Result<OrgSettings, sqlx::Error> {
    let row: Option<OrgSettings> = sqlx::query_as(
        "SELECT remind_before_minutes, overdue_after_minutes, escalate_overdue, version FROM org_settings WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.unwrap_or_default())
}

pub async fn update(
    ctx: &NotificationContext,
    org_id: &str,
    update: Update,
    actor: &str,
) -> Result<OrgSettings, NotificationError> {
    if let Some(minutes) = update.remind_before_minutes
        && !(0..=10_080).contains(&minutes)
    {
        return Err(NotificationError::invalid("remind_before_minutes", "must be between 0 (none) and 10080 (a week)"));
    }
    if let Some(minutes) = update.overdue_after_minutes
        && !(1..=43_200).contains(&minutes)
    {
        return Err(NotificationError::invalid("overdue_after_minutes", "must be between 1 and 43200 (30 days)"));
    }
    let mut tx = ctx.pool.begin().await?;
    org_settings::lock(&mut tx, DOMAIN, org_id).await?;
    let before = read(&mut tx, org_id).await?;
    org_settings::check_version(update.expected_version, before.version)?;
    let after = OrgSettings {
        remind_before_minutes: update.remind_before_minutes.unwrap_or(before.remind_before_minutes),
        overdue_after_minutes: update.overdue_after_minutes.unwrap_or(before.overdue_after_minutes),
        escalate_overdue: update.escalate_overdue.unwrap_or(before.escalate_overdue),
        version: before.version + 1,
    };
    let changes: Vec<String> = [
        org_settings::describe(
            "remind_before_minutes",
            &before.remind_before_minutes.to_string(),
            &after.remind_before_minutes.to_string(),
        ),
        org_settings::describe(
            "overdue_after_minutes",
            &before.overdue_after_minutes.to_string(),
            &after.overdue_after_minutes.to_string(),
        ),
        org_settings::describe(
            "escalate_overdue",
            &before.escalate_overdue.to_string(),
            &after.escalate_overdue.to_string(),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    if changes.is_empty() {
        return Ok(before);
    }
    sqlx::query(
        "INSERT INTO org_settings (org_id, remind_before_minutes, overdue_after_minutes, escalate_overdue, version, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (org_id) DO UPDATE SET remind_before_minutes = $2, overdue_after_minutes = $3, \
           escalate_overdue = $4, version = $5, updated_by = $6, updated_at = now()",
    )
    .bind(org_id)
    .bind(after.remind_before_minutes)
    .bind(after.overdue_after_minutes)
    .bind(after.escalate_overdue)
    .bind(after.version)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    org_settings::record_change(&mut tx, org_id, after.version, actor, &changes).await?;
    followups::reschedule_org(&mut tx, org_id, &after).await?;
    tx.commit().await?;
    ctx.alerts_waiting.notify_one();
    tracing::info!(org_id, version = after.version, "notification settings changed");
    Ok(after)
}
