//! Applies one batch of broadcast events in one transaction: refusals, messages, statuses,
//! then campaigns and templates, each as one multi-row upsert. A message's current state is
//! not written: it is derived from its statuses when read (see `read`).
//!
//! Order independence comes from the SQL, not from arrival: statuses are keyed by (message,
//! status) with no dependency on the message row, and where two versions of one fact meet a
//! fixed rule picks the survivor. Deadlock freedom comes from every batch touching the tables in the same
//! order and the rows of each table in key order; keys are deduplicated first because an
//! upsert may not touch one row twice in a statement.

use crate::{
    BroadcastContext,
    error::BroadcastError,
    event::{BroadcastMessage, DeliveryStatus, Refusal},
};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// One event on its way in, already decoded and validated.
#[derive(Debug, Clone)]
pub enum Candidate {
    Message {
        org_id: String,
        message: BroadcastMessage,
    },
    Status {
        org_id: String,
        status: DeliveryStatus,
    },
    Refused {
        /// Empty when the subject did not name a valid organisation.
        org_id: String,
        message_id: Option<String>,
        subject: String,
        refusal: Refusal,
        payload: Vec<u8>,
        /// Identifies the stream message itself, so a redelivered refusal is kept once.
        source_key: String,
    },
}

/// What a batch did, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub messages: usize,
    pub statuses: usize,
    pub refused: usize,
}

/// The statements that store a batch, by table name alone (the schema is the connection's
/// search path): public so that the benchmark's raw baseline runs exactly these.
pub mod sql {
    pub const INSERT_MESSAGES: &str = "INSERT INTO messages (org_id, message_id, phone, external_id, campaign_id, template_name, \
               template_language, sent_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
               $7::text[], $8::timestamptz[]) \
             ON CONFLICT (org_id, message_id) DO NOTHING";
    pub const INSERT_STATUSES: &str = "INSERT INTO statuses (org_id, message_id, status, at, error_code, error_title, error_class) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::text[], \
               $7::text[]) \
             ON CONFLICT (org_id, message_id, status) DO UPDATE SET at = EXCLUDED.at, \
               error_code = EXCLUDED.error_code, error_title = EXCLUDED.error_title, \
               error_class = EXCLUDED.error_class \
             WHERE (EXCLUDED.at, coalesce(EXCLUDED.error_code, -1), coalesce(EXCLUDED.error_title, '') COLLATE \"C\") \
                 < (statuses.at, coalesce(statuses.error_code, -1), coalesce(statuses.error_title, '') COLLATE \"C\")";
    pub const INSERT_CAMPAIGNS: &str = "INSERT INTO campaigns (org_id, campaign_id, name, name_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
             ON CONFLICT (org_id, campaign_id) DO NOTHING";
    pub const RENAME_CAMPAIGNS: &str = "WITH given AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) \
                 AS g(org_id, campaign_id, name, name_at) WHERE name IS NOT NULL), \
             renamed AS ( \
               SELECT c.org_id, c.campaign_id FROM campaigns c JOIN given g USING (org_id, campaign_id) \
               WHERE c.name IS NULL OR (g.name_at, g.name COLLATE \"C\") > (c.name_at, c.name COLLATE \"C\") \
               ORDER BY c.org_id, c.campaign_id FOR UPDATE OF c) \
             UPDATE campaigns c SET name = g.name, name_at = g.name_at \
             FROM given g JOIN renamed r USING (org_id, campaign_id) \
             WHERE c.org_id = g.org_id AND c.campaign_id = g.campaign_id \
               AND (c.name IS NULL OR (g.name_at, g.name COLLATE \"C\") > (c.name_at, c.name COLLATE \"C\"))";
    pub const INSERT_TEMPLATES: &str = "INSERT INTO templates (org_id, name, language, category, category_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
             ON CONFLICT (org_id, name, language) DO NOTHING";
    pub const RECATEGORISE_TEMPLATES: &str = "WITH given AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
                 AS g(org_id, name, language, category, category_at) WHERE category IS NOT NULL), \
             recategorised AS ( \
               SELECT t.org_id, t.name, t.language FROM templates t JOIN given g USING (org_id, name, language) \
               WHERE t.category IS NULL \
                 OR (g.category_at, g.category COLLATE \"C\") > (t.category_at, t.category COLLATE \"C\") \
               ORDER BY t.org_id, t.name, t.language FOR UPDATE OF t) \
             UPDATE templates t SET category = g.category, category_at = g.category_at \
             FROM given g JOIN recategorised r USING (org_id, name, language) \
             WHERE t.org_id = g.org_id AND t.name = g.name AND t.language = g.language \
               AND (t.category IS NULL \
                 OR (g.category_at, g.category COLLATE \"C\") > (t.category_at, t.category COLLATE \"C\"))";
}

/// A refused event, by reference into the batch.
struct Refused<'a> {
    org_id: &'a str,
    message_id: Option<&'a str>,
    subject: &'a str,
    refusal: &'a Refusal,
    payload: &'a [u8],
}

/// A value that may be absent and the time it was given at: a name, a category.
type Named<'a> = (Option<&'a str>, Option<DateTime<Utc>>);

/// The surviving version of each fact in the batch, keyed and so sorted by primary key.
#[derive(Default)]
struct Plan<'a> {
    refusals: BTreeMap<&'a str, Refused<'a>>,
    /// (org, campaign) -> (name, at): the newest named version wins, as in SQL.
    campaigns: BTreeMap<(&'a str, &'a str), Named<'a>>,
    /// (org, name, language) -> (category, at)
    templates: BTreeMap<(&'a str, &'a str, &'a str), Named<'a>>,
    /// (org, message_id) -> the first version: message ids are unique, repeats are redeliveries.
    messages: BTreeMap<(&'a str, &'a str), &'a BroadcastMessage>,
    /// (org, message_id, status) -> the earliest version.
    statuses: BTreeMap<(&'a str, &'a str, &'static str), &'a DeliveryStatus>,
}

/// A keyed map as two parallel columns, keys in order, for binding to UNNEST.
pub(crate) fn columns<K: Copy, V>(map: &BTreeMap<K, V>) -> (Vec<K>, Vec<&V>) {
    map.iter().map(|(k, v)| (*k, v)).unzip()
}

/// Keeps the newer of two named versions: a name beats no name, then the later time, then
/// the greater name (bytewise, as COLLATE "C" compares), exactly as the SQL upsert decides.
fn newer<'a>(current: Named<'a>, candidate: Named<'a>) -> Named<'a> {
    match (current.0, candidate.0) {
        (_, None) => current,
        (None, Some(_)) => candidate,
        (Some(a), Some(b)) => {
            if (candidate.1, b) > (current.1, a) {
                candidate
            } else {
                current
            }
        }
    }
}

/// The order in which two versions of one status compete: earliest time, then error.
fn status_order(status: &DeliveryStatus) -> (DateTime<Utc>, i64, &str) {
    let error = status.error.as_ref();
    (status.at, error.and_then(|e| e.code).unwrap_or(-1), error.and_then(|e| e.title.as_deref()).unwrap_or(""))
}

impl<'a> Plan<'a> {
    fn new(batch: &'a [Candidate]) -> Self {
        let mut plan = Plan::default();
        for candidate in batch {
            match candidate {
                Candidate::Refused { org_id, message_id, subject, refusal, payload, source_key } => {
                    plan.refusals.entry(source_key.as_str()).or_insert(Refused {
                        org_id,
                        message_id: message_id.as_deref(),
                        subject,
                        refusal,
                        payload,
                    });
                }
                Candidate::Message { org_id, message } => {
                    let org = org_id.as_str();
                    plan.messages.entry((org, message.message_id.as_str())).or_insert(message);
                    if let Some(campaign) = &message.campaign {
                        let named = (campaign.name.as_deref(), campaign.name.as_ref().map(|_| message.sent_at));
                        let slot = plan.campaigns.entry((org, campaign.id.as_str())).or_insert((None, None));
                        *slot = newer(*slot, named);
                    }
                    if let Some(template) = &message.template {
                        let named = (template.category.as_deref(), template.category.as_ref().map(|_| message.sent_at));
                        let key = (org, template.name.as_str(), template.language.as_str());
                        let slot = plan.templates.entry(key).or_insert((None, None));
                        *slot = newer(*slot, named);
                    }
                }
                Candidate::Status { org_id, status } => {
                    let org = org_id.as_str();
                    let key = (org, status.message_id.as_str(), status.status.as_str());
                    let slot = plan.statuses.entry(key).or_insert(status);
                    if status_order(status) < status_order(slot) {
                        *slot = status;
                    }
                }
            }
        }
        plan
    }
}

/// Applies a batch in one transaction; the consumer runs it again on a conflict or deadlock by
/// the one retry policy (`platform::error::retry_transient`).
pub async fn apply_batch(ctx: &BroadcastContext, batch: &[Candidate]) -> Result<Applied, BroadcastError> {
    let plan = Plan::new(batch);
    let mut tx = ctx.pool.begin().await?;
    let mut applied = Applied { refused: plan.refusals.len(), ..Default::default() };

    if !plan.refusals.is_empty() {
        let (keys, rows) = columns(&plan.refusals);
        sqlx::query(
            "INSERT INTO rejections (org_id, message_id, subject, field, reason, payload, source_key) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[]) \
             ON CONFLICT (source_key) DO NOTHING",
        )
        .bind(rows.iter().map(|r| r.org_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.message_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.subject).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.refusal.field.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.refusal.reason.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.payload).collect::<Vec<_>>())
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    }

    if !plan.messages.is_empty() {
        let (keys, messages) = columns(&plan.messages);
        let result = sqlx::query(sql::INSERT_MESSAGES)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.phone.as_deref()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.external_id.as_deref()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.campaign.as_ref().map(|c| c.id.as_str())).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.template.as_ref().map(|t| t.name.as_str())).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.template.as_ref().map(|t| t.language.as_str())).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.sent_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        applied.messages = result.rows_affected() as usize;
    }

    if !plan.statuses.is_empty() {
        let (keys, statuses) = columns(&plan.statuses);
        let result = sqlx::query(sql::INSERT_STATUSES)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
            .bind(statuses.iter().map(|s| s.at).collect::<Vec<_>>())
            .bind(statuses.iter().map(|s| s.error.as_ref().and_then(|e| e.code)).collect::<Vec<_>>())
            .bind(statuses.iter().map(|s| s.error.as_ref().and_then(|e| e.title.as_deref())).collect::<Vec<_>>())
            .bind(statuses.iter().map(|s| s.error_class().map(super::event::ErrorClass::as_str)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        applied.statuses = result.rows_affected() as usize;
    }

    // Campaigns and templates last: a few rows that nearly every batch names. An upsert with
    // `DO UPDATE ... WHERE` locks every conflicting row even when it changes nothing, which
    // made concurrent batches queue behind each other's commit; so existing rows are left
    // alone by the insert, and only the rows this batch really renames are updated, locked in
    // key order so that two batches renaming the same rows cannot deadlock. The UPDATE states
    // the newer-name condition again because, when it waited for another batch's rename, it
    // re-checks only its own WHERE against the row that batch committed.
    if !plan.campaigns.is_empty() {
        let (keys, values) = columns(&plan.campaigns);
        let orgs: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let names: Vec<Option<&str>> = values.iter().map(|v| v.0).collect();
        let name_ats: Vec<Option<DateTime<Utc>>> = values.iter().map(|v| v.1).collect();
        for statement in [sql::INSERT_CAMPAIGNS, sql::RENAME_CAMPAIGNS] {
            sqlx::query(statement).bind(&orgs).bind(&ids).bind(&names).bind(&name_ats).execute(&mut *tx).await?;
        }
    }

    if !plan.templates.is_empty() {
        let (keys, values) = columns(&plan.templates);
        let orgs: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let names: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let languages: Vec<&str> = keys.iter().map(|k| k.2).collect();
        let categories: Vec<Option<&str>> = values.iter().map(|v| v.0).collect();
        let category_ats: Vec<Option<DateTime<Utc>>> = values.iter().map(|v| v.1).collect();
        for statement in [sql::INSERT_TEMPLATES, sql::RECATEGORISE_TEMPLATES] {
            sqlx::query(statement)
                .bind(&orgs)
                .bind(&names)
                .bind(&languages)
                .bind(&categories)
                .bind(&category_ats)
                .execute(&mut *tx)
                .await?;
        }
    }

    tx.commit().await?;
    use platform::telemetry::names;
    metrics::counter!(names::BROADCAST_MESSAGES_RECORDED, "service" => "broadcast").increment(applied.messages as u64);
    metrics::counter!(names::BROADCAST_STATUSES_RECORDED, "service" => "broadcast").increment(applied.statuses as u64);
    platform::telemetry::count_refused("broadcast", plan.refusals.values().map(|r| r.refusal.field.as_str()));
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{CampaignInfo, DeliveryError, StatusKind};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap_or_default()
    }

    fn status(kind: StatusKind, seconds: i64, code: Option<i64>) -> Candidate {
        Candidate::Status {
            org_id: "acme".into(),
            status: DeliveryStatus {
                message_id: "m".into(),
                status: kind,
                at: at(seconds),
                error: code.map(|code| DeliveryError { code: Some(code), title: None }),
            },
        }
    }

    fn message(name: Option<&str>, seconds: i64) -> Candidate {
        Candidate::Message {
            org_id: "acme".into(),
            message: BroadcastMessage {
                message_id: format!("m{seconds}"),
                sent_at: at(seconds),
                campaign: Some(CampaignInfo { id: "c".into(), name: name.map(str::to_owned) }),
                template: None,
                phone: Some("+14155550100".into()),
                external_id: None,
            },
        }
    }

    #[test]
    fn a_batch_keeps_one_version_of_each_fact_whatever_its_order() {
        let batch = [
            status(StatusKind::Read, 30, None),
            status(StatusKind::Sent, 20, None),
            status(StatusKind::Sent, 10, None),
            status(StatusKind::Failed, 40, Some(131049)),
            status(StatusKind::Sent, 15, None),
        ];
        for order in [batch.to_vec(), batch.iter().rev().cloned().collect()] {
            let plan = Plan::new(&order);
            assert_eq!(plan.statuses.len(), 3);
            assert_eq!(plan.statuses[&("acme", "m", "sent")].at, at(10), "the earliest time");
        }
        let messages = [message(Some("Old"), 1), message(None, 5), message(Some("New"), 3)];
        for order in [messages.to_vec(), messages.iter().rev().cloned().collect()] {
            let plan = Plan::new(&order);
            assert_eq!(plan.campaigns[&("acme", "c")], (Some("New"), Some(at(3))), "the newest name");
            assert_eq!(plan.messages.len(), 3);
        }
    }
}
