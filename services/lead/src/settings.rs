//! Each organisation's lead settings: its status rules (`lifecycle::StatusRules`) and the link
//! template to its chat system's conversations. Admins change them; every change is kept in
//! words with who made it. Writers of leads read them in the transaction that applies the
//! rules, so a change holds from the next write on, in every process.

use crate::{error::LeadError, lifecycle::StatusRules};
use chrono::{DateTime, Utc};
use contracts::lead::Status;
use leads_proto::v1 as pb;
use sqlx::{PgExecutor, PgPool, types::Json};
use std::collections::HashMap;

const MAX_TEMPLATE_CHARS: usize = 512;
pub const CONVERSATION_PLACEHOLDER: &str = "{conversation_id}";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadSettings {
    pub status_rules: StatusRules,
    pub conversation_url_template: Option<String>,
}

/// The status rules of each of `orgs` that set any; an organisation missing from the answer
/// has every rule off.
pub async fn rules_of<'e>(
    executor: impl PgExecutor<'e>,
    orgs: &[&str],
) -> Result<HashMap<String, StatusRules>, LeadError> {
    let rows: Vec<(String, Json<StatusRules>)> =
        sqlx::query_as("SELECT org_id, status_rules FROM org_settings WHERE org_id = ANY($1)")
            .bind(orgs)
            .fetch_all(executor)
            .await?;
    Ok(rows.into_iter().map(|(org, Json(rules))| (org, rules)).collect())
}

/// The link to `conversation_id` through the organisation's template.
pub fn conversation_url(template: &str, conversation_id: &str) -> String {
    let encoded: String = conversation_id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    template.replace(CONVERSATION_PLACEHOLDER, &encoded)
}

/// Fills each lead's `conversation_url` from the organisation's template; asks for the
/// template only when a lead has a conversation.
pub async fn link_conversations(pool: &PgPool, org_id: &str, leads: &mut [pb::Lead]) -> Result<(), LeadError> {
    if leads.iter().all(|l| l.conversation_id.is_empty()) {
        return Ok(());
    }
    let template: Option<String> =
        sqlx::query_scalar("SELECT conversation_url_template FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(pool)
            .await?
            .flatten();
    let Some(template) = template else { return Ok(()) };
    for lead in leads.iter_mut().filter(|l| !l.conversation_id.is_empty()) {
        lead.conversation_url = conversation_url(&template, &lead.conversation_id);
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct SettingsRow {
    status_rules: Json<StatusRules>,
    conversation_url_template: Option<String>,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

pub async fn get(pool: &PgPool, org_id: &str) -> Result<pb::LeadSettings, LeadError> {
    let row: Option<SettingsRow> = sqlx::query_as(
        "SELECT status_rules, conversation_url_template, version, updated_at, updated_by \
         FROM org_settings WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(pool)
    .await?;
    let mut answer = match row {
        Some(row) => to_proto(
            org_id,
            &LeadSettings {
                status_rules: row.status_rules.0,
                conversation_url_template: row.conversation_url_template,
            },
            row.version,
            Some(row.updated_at),
            row.updated_by,
        ),
        None => to_proto(org_id, &LeadSettings::default(), 0, None, String::new()),
    };
    answer.changes = platform::org_settings::recent_changes(pool, org_id).await?;
    Ok(answer)
}

/// Replaces the organisation's settings, recording what changed; nothing is recorded when
/// nothing changed.
pub async fn update(
    pool: &PgPool,
    org_id: &str,
    settings: LeadSettings,
    expected_version: Option<i64>,
    actor: &str,
) -> Result<pb::LeadSettings, LeadError> {
    let mut tx = pool.begin().await?;
    platform::org_settings::lock(&mut tx, "lead", org_id).await?;
    let current: Option<(Json<StatusRules>, Option<String>, i64)> =
        sqlx::query_as("SELECT status_rules, conversation_url_template, version FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (before, version) = match current {
        Some((Json(status_rules), conversation_url_template, version)) => {
            (LeadSettings { status_rules, conversation_url_template }, version)
        }
        None => (LeadSettings::default(), 0),
    };
    platform::org_settings::check_version(expected_version, version)
        .map_err(|stale| LeadError::SettingsVersionMismatch { expected: stale.expected, actual: stale.actual })?;
    let changes = differences(&before, &settings);
    if changes.is_empty() {
        tx.rollback().await?;
        return get(pool, org_id).await;
    }
    let version = version + 1;
    sqlx::query(
        "INSERT INTO org_settings (org_id, status_rules, conversation_url_template, version, updated_by) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (org_id) DO UPDATE SET status_rules = $2, conversation_url_template = $3, version = $4, \
           updated_by = $5, updated_at = now()",
    )
    .bind(org_id)
    .bind(Json(&settings.status_rules))
    .bind(&settings.conversation_url_template)
    .bind(version)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    platform::org_settings::record_change(&mut tx, org_id, version, actor, &changes).await?;
    tx.commit().await?;
    tracing::info!(org_id, version, actor, "lead settings changed");
    get(pool, org_id).await
}

fn differences(before: &LeadSettings, after: &LeadSettings) -> Vec<String> {
    fn number(value: Option<i32>) -> String {
        value.map_or_else(|| "off".to_owned(), |v| v.to_string())
    }
    fn switch(value: bool) -> String {
        (if value { "on" } else { "off" }).to_owned()
    }
    fn status(value: Option<Status>) -> String {
        value.map_or_else(|| "back where it was".to_owned(), |s| s.display_name().to_owned())
    }
    fn text(value: Option<&String>) -> String {
        value.cloned().unwrap_or_else(|| "none".to_owned())
    }
    let (b, a) = (&before.status_rules, &after.status_rules);
    let pairs = [
        ("qualifying_at", number(b.qualifying_at), number(a.qualifying_at)),
        ("qualified_at", number(b.qualified_at), number(a.qualified_at)),
        ("follow_up_status", switch(b.follow_up_status), switch(a.follow_up_status)),
        ("after_follow_ups", status(b.after_follow_ups), status(a.after_follow_ups)),
        ("broadcast_reply_contacted", switch(b.broadcast_reply_contacted), switch(a.broadcast_reply_contacted)),
        ("archive_after_days", number(b.archive_after_days), number(a.archive_after_days)),
        (
            "conversation_url_template",
            text(before.conversation_url_template.as_ref()),
            text(after.conversation_url_template.as_ref()),
        ),
    ];
    pairs.into_iter().filter_map(|(name, b, a)| platform::org_settings::describe(name, &b, &a)).collect()
}

/// Reads and checks an UpdateLeadSettings request, naming the field at fault.
pub fn parse(request: &pb::UpdateLeadSettingsRequest) -> Result<LeadSettings, LeadError> {
    let rules = request.status_rules.unwrap_or_default();
    let percent = |field: &str, value: Option<i32>| match value {
        Some(v) if !(0..=100).contains(&v) => Err(LeadError::invalid(field, "must be between 0 and 100")),
        _ => Ok(value),
    };
    let qualifying_at = percent("status_rules.qualifying_at", rules.qualifying_at)?;
    let qualified_at = percent("status_rules.qualified_at", rules.qualified_at)?;
    if let (Some(qualifying), Some(qualified)) = (qualifying_at, qualified_at)
        && qualified < qualifying
    {
        return Err(LeadError::invalid("status_rules.qualified_at", "must be at least qualifying_at"));
    }
    let after_follow_ups = match pb::LeadStatus::try_from(rules.after_follow_ups) {
        Ok(pb::LeadStatus::Unspecified) => None,
        Ok(_) => match Status::from_proto(rules.after_follow_ups) {
            Some(status) if !status.is_final() && status != Status::FollowUp => Some(status),
            _ => {
                return Err(LeadError::invalid(
                    "status_rules.after_follow_ups",
                    "must be an active status other than Follow-up, or unspecified",
                ));
            }
        },
        Err(_) => return Err(LeadError::invalid("status_rules.after_follow_ups", "is not a known status")),
    };
    if let Some(days) = rules.archive_after_days
        && !(1..=3650).contains(&days)
    {
        return Err(LeadError::invalid("status_rules.archive_after_days", "must be between 1 and 3650"));
    }
    let template = request.conversation_url_template.trim();
    let conversation_url_template = if template.is_empty() {
        None
    } else {
        if template.chars().count() > MAX_TEMPLATE_CHARS {
            return Err(LeadError::invalid("conversation_url_template", "must be at most 512 characters"));
        }
        if !(template.starts_with("https://") || template.starts_with("http://")) {
            return Err(LeadError::invalid("conversation_url_template", "must start with https:// or http://"));
        }
        if !template.contains(CONVERSATION_PLACEHOLDER) {
            return Err(LeadError::invalid("conversation_url_template", "must contain {conversation_id}"));
        }
        if template.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>') {
            return Err(LeadError::invalid("conversation_url_template", "must not contain spaces, quotes or < >"));
        }
        Some(template.to_owned())
    };
    Ok(LeadSettings {
        status_rules: StatusRules {
            qualifying_at,
            qualified_at,
            follow_up_status: rules.follow_up_status,
            after_follow_ups,
            broadcast_reply_contacted: rules.broadcast_reply_contacted,
            archive_after_days: rules.archive_after_days,
        },
        conversation_url_template,
    })
}

fn to_proto(
    org_id: &str,
    settings: &LeadSettings,
    version: i64,
    updated_at: Option<DateTime<Utc>>,
    updated_by: String,
) -> pb::LeadSettings {
    let rules = &settings.status_rules;
    pb::LeadSettings {
        org_id: org_id.to_owned(),
        status_rules: Some(pb::StatusRules {
            qualifying_at: rules.qualifying_at,
            qualified_at: rules.qualified_at,
            follow_up_status: rules.follow_up_status,
            after_follow_ups: rules.after_follow_ups.map_or(pb::LeadStatus::Unspecified, Status::to_proto).into(),
            broadcast_reply_contacted: rules.broadcast_reply_contacted,
            archive_after_days: rules.archive_after_days,
        }),
        conversation_url_template: settings.conversation_url_template.clone().unwrap_or_default(),
        version,
        updated_at: updated_at.map(contracts::time::timestamp),
        updated_by,
        changes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_id_is_encoded_into_the_template() {
        let template = "https://chat.example.com/c/{conversation_id}?from=leads";
        assert_eq!(conversation_url(template, "conv-991"), "https://chat.example.com/c/conv-991?from=leads");
        assert_eq!(conversation_url(template, "a/b c&d"), "https://chat.example.com/c/a%2Fb%20c%26d?from=leads");
    }

    #[test]
    fn each_bad_setting_is_refused_naming_its_field() {
        let request = |rules: pb::StatusRules, template: &str| pb::UpdateLeadSettingsRequest {
            org_id: "acme".into(),
            status_rules: Some(rules),
            conversation_url_template: template.into(),
            expected_version: None,
        };
        let field = |request: pb::UpdateLeadSettingsRequest| match parse(&request) {
            Err(LeadError::InvalidArgument { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let rules = pb::StatusRules::default;
        assert_eq!(
            field(request(pb::StatusRules { qualifying_at: Some(101), ..rules() }, "")),
            "status_rules.qualifying_at"
        );
        assert_eq!(
            field(request(pb::StatusRules { qualifying_at: Some(70), qualified_at: Some(60), ..rules() }, "")),
            "status_rules.qualified_at"
        );
        assert_eq!(
            field(request(pb::StatusRules { after_follow_ups: pb::LeadStatus::Lost.into(), ..rules() }, "")),
            "status_rules.after_follow_ups"
        );
        assert_eq!(
            field(request(pb::StatusRules { archive_after_days: Some(0), ..rules() }, "")),
            "status_rules.archive_after_days"
        );
        for template in ["ftp://x/{conversation_id}", "https://chat.example.com/c/", "https://x/{conversation_id} y"] {
            assert_eq!(field(request(rules(), template)), "conversation_url_template", "{template}");
        }
        let fine = parse(&request(
            pb::StatusRules { qualified_at: Some(80), archive_after_days: Some(30), ..rules() },
            "https://chat.example.com/c/{conversation_id}",
        ))
        .expect("valid");
        assert_eq!(fine.status_rules.archive_after_days, Some(30));
    }

    #[test]
    fn a_change_is_recorded_in_words() {
        let before = LeadSettings::default();
        let after = LeadSettings {
            status_rules: StatusRules { archive_after_days: Some(30), ..StatusRules::default() },
            conversation_url_template: None,
        };
        assert_eq!(differences(&before, &after), vec!["archive_after_days: off -> 30".to_owned()]);
        assert!(differences(&after, &after).is_empty());
    }
}
