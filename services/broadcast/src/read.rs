//! The read side: a contact's broadcast history (newest first, keyset-paginated, each
//! message with its status timeline), a campaign's counts and rates, and an organisation's
//! campaigns with theirs (most recently sent first, keyset-paginated).

use crate::{
    error::BroadcastError,
    event::{ErrorClass, StatusKind, state_name},
};
use chrono::{DateTime, Utc};
use leads_proto::v1 as pb;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
/// Campaigns per ListCampaigns page: each costs what GetCampaignStats does.
pub const DEFAULT_CAMPAIGN_PAGE_SIZE: i64 = 50;
pub const MAX_CAMPAIGN_PAGE_SIZE: i64 = 200;

/// Whose broadcasts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Lead(Uuid),
    Contact(Uuid),
}

pub struct HistoryPage {
    pub messages: Vec<pb::BroadcastMessageView>,
    pub next_page_token: String,
}

pub fn page_size(requested: i32) -> Result<i64, BroadcastError> {
    sized(requested, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

pub fn campaign_page_size(requested: i32) -> Result<i64, BroadcastError> {
    sized(requested, DEFAULT_CAMPAIGN_PAGE_SIZE, MAX_CAMPAIGN_PAGE_SIZE)
}

fn sized(requested: i32, default: i64, max: i64) -> Result<i64, BroadcastError> {
    match i64::from(requested) {
        0 => Ok(default),
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(BroadcastError::invalid("page_size", format!("must be between 1 and {max}"))),
    }
}

/// Where a page ends: the send time and message id of its last message. Hex of
/// `<micros>|<message_id>`, so that callers treat it as opaque and any id survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub sent_at: DateTime<Utc>,
    pub message_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        encode_key(self.sent_at, &self.message_id)
    }

    pub fn decode(token: &str) -> Result<Self, BroadcastError> {
        let (sent_at, message_id) = decode_key(token)?;
        Ok(Self { sent_at, message_id })
    }
}

/// Where a page of campaigns ends: its last campaign's newest send and id, encoded as `Cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignCursor {
    pub last_sent_at: DateTime<Utc>,
    pub campaign_id: String,
}

impl CampaignCursor {
    pub fn encode(&self) -> String {
        encode_key(self.last_sent_at, &self.campaign_id)
    }

    pub fn decode(token: &str) -> Result<Self, BroadcastError> {
        let (last_sent_at, campaign_id) = decode_key(token)?;
        Ok(Self { last_sent_at, campaign_id })
    }
}

fn encode_key(at: DateTime<Utc>, id: &str) -> String {
    platform::token::encode(&format!("{}|{id}", at.timestamp_micros()))
}

fn decode_key(token: &str) -> Result<(DateTime<Utc>, String), BroadcastError> {
    let bad = || BroadcastError::invalid("page_token", "is not a token this service issued");
    let text = platform::token::decode(token).ok_or_else(bad)?;
    let (micros, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((at, id.to_owned()))
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    message_id: String,
    phone: Option<String>,
    external_id: Option<String>,
    campaign_id: Option<String>,
    campaign_name: Option<String>,
    template_name: Option<String>,
    template_language: Option<String>,
    template_category: Option<String>,
    sent_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    message_id: String,
    status: String,
    at: DateTime<Utc>,
    error_code: Option<i64>,
    error_title: Option<String>,
    error_class: Option<String>,
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// The broadcasts sent to the target's contact, through every phone and external id the
/// lead service has known that contact by, after `after` (a page token's place) and after
/// `older_than` (a caller's own place in the same order), whichever is further.
pub async fn history(
    pool: &PgPool,
    org_id: &str,
    target: Target,
    page_size: i64,
    after: Option<Cursor>,
    older_than: Option<Cursor>,
) -> Result<HistoryPage, BroadcastError> {
    // Both are places in one order: the further of the two is the one bound the query needs.
    let after = match (after, older_than) {
        (Some(a), Some(b)) => Some(if (a.sent_at, &a.message_id) <= (b.sent_at, &b.message_id) { a } else { b }),
        (a, b) => a.or(b),
    };
    let contact_id = match target {
        Target::Lead(lead_id) => {
            sqlx::query_scalar::<_, Uuid>("SELECT contact_id FROM lead_contacts WHERE org_id = $1 AND lead_id = $2")
                .bind(org_id)
                .bind(lead_id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| BroadcastError::not_found("lead", lead_id.to_string()))?
        }
        Target::Contact(contact_id) => contact_id,
    };
    let (phones, external_ids): (Vec<Option<String>>, Vec<Option<String>>) =
        sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "SELECT phone, external_id FROM lead_contacts WHERE org_id = $1 AND contact_id = $2",
        )
        .bind(org_id)
        .bind(contact_id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .unzip();
    if phones.is_empty() {
        return Err(BroadcastError::not_found("contact", contact_id.to_string()));
    }
    let phones: Vec<String> = phones.into_iter().flatten().collect();
    let external_ids: Vec<String> = external_ids.into_iter().flatten().collect();
    let rows: Vec<MessageRow> = sqlx::query_as(
        "SELECT m.message_id, m.phone, m.external_id, m.campaign_id, c.name AS campaign_name, m.template_name, \
           m.template_language, t.category AS template_category, m.sent_at \
         FROM messages m \
         LEFT JOIN campaigns c ON c.org_id = m.org_id AND c.campaign_id = m.campaign_id \
         LEFT JOIN templates t ON t.org_id = m.org_id AND t.name = m.template_name \
           AND t.language = m.template_language \
         WHERE m.org_id = $1 AND (m.phone = ANY($2) OR m.external_id = ANY($3)) \
           AND ($4::timestamptz IS NULL OR (m.sent_at, m.message_id) < ($4, $5)) \
         ORDER BY m.sent_at DESC, m.message_id DESC LIMIT $6",
    )
    .bind(org_id)
    .bind(&phones)
    .bind(&external_ids)
    .bind(after.as_ref().map(|c| c.sent_at))
    .bind(after.as_ref().map(|c| c.message_id.as_str()))
    .bind(page_size + 1)
    .fetch_all(pool)
    .await?;
    let has_more = rows.len() as i64 > page_size;
    let rows = &rows[..rows.len().min(page_size as usize)];
    let next_page_token = match (has_more, rows.last()) {
        (true, Some(last)) => Cursor { sent_at: last.sent_at, message_id: last.message_id.clone() }.encode(),
        _ => String::new(),
    };
    let ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
    // Newest first; on equal times the further status first, so that the timeline reads
    // like the state.
    let statuses: Vec<StatusRow> = sqlx::query_as(
        "SELECT message_id, status, at, error_code, error_title, error_class FROM statuses \
         WHERE org_id = $1 AND message_id = ANY($2) \
         ORDER BY message_id, at DESC, \
           CASE status WHEN 'failed' THEN 4 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 ELSE 1 END DESC",
    )
    .bind(org_id)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut timelines: HashMap<&str, Vec<&StatusRow>> = HashMap::new();
    for status in &statuses {
        timelines.entry(status.message_id.as_str()).or_default().push(status);
    }
    let messages = rows
        .iter()
        .map(|row| {
            let timeline = timelines.get(row.message_id.as_str()).map(Vec::as_slice).unwrap_or_default();
            let failure = timeline.iter().find(|s| s.status == StatusKind::Failed.as_str());
            // The state is the furthest status that arrived, whatever the order they came in.
            let rank = timeline.iter().filter_map(|s| StatusKind::parse(&s.status)).map(StatusKind::rank).max();
            pb::BroadcastMessageView {
                message_id: row.message_id.clone(),
                campaign: row
                    .campaign_id
                    .as_ref()
                    .map(|id| pb::Campaign { id: id.clone(), name: row.campaign_name.clone().unwrap_or_default() }),
                template: row.template_name.as_ref().map(|name| pb::Template {
                    name: name.clone(),
                    language: row.template_language.clone().unwrap_or_default(),
                    category: row.template_category.clone().unwrap_or_default(),
                }),
                sent_at: Some(timestamp(row.sent_at)),
                state: state_name(rank.unwrap_or(0), failure.is_some()).to_owned(),
                failed: failure.is_some(),
                error: failure.and_then(|f| delivery_error(f)),
                error_class: failure.map(|f| error_class(f)).unwrap_or_default(),
                timeline: timeline
                    .iter()
                    .map(|s| pb::StatusEvent {
                        status: s.status.clone(),
                        at: Some(timestamp(s.at)),
                        error: delivery_error(s),
                        error_class: if s.status == StatusKind::Failed.as_str() {
                            error_class(s)
                        } else {
                            String::new()
                        },
                    })
                    .collect(),
                contact: Some(pb::Contact {
                    phone: row.phone.clone().unwrap_or_default(),
                    external_id: row.external_id.clone().unwrap_or_default(),
                    ..Default::default()
                }),
            }
        })
        .collect();
    Ok(HistoryPage { messages, next_page_token })
}

fn delivery_error(status: &StatusRow) -> Option<pb::DeliveryError> {
    (status.error_code.is_some() || status.error_title.is_some()).then(|| pb::DeliveryError {
        code: status.error_code.unwrap_or_default(),
        title: status.error_title.clone().unwrap_or_default(),
    })
}

fn error_class(status: &StatusRow) -> String {
    status.error_class.clone().unwrap_or_else(|| ErrorClass::Other.as_str().to_owned())
}

#[derive(Debug, Default, sqlx::FromRow)]
struct CountsRow {
    campaign_id: String,
    failure_class: Option<String>,
    messages: i64,
    sent: i64,
    delivered: i64,
    read: i64,
    failed: i64,
    first_sent_at: Option<DateTime<Utc>>,
    last_sent_at: Option<DateTime<Utc>>,
}

impl CountsRow {
    fn add(&mut self, other: &CountsRow) {
        self.messages += other.messages;
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.read += other.read;
        self.failed += other.failed;
        self.first_sent_at = self.first_sent_at.into_iter().chain(other.first_sent_at).min();
        self.last_sent_at = self.last_sent_at.into_iter().chain(other.last_sent_at).max();
    }
}

/// A campaign's counts. `messages` is every BroadcastMessage recorded for the campaign and
/// the base of every rate. A message counts as sent, delivered or read when it got at least
/// that far (a read message was delivered and sent, whether or not those statuses arrived),
/// as failed when a failed status arrived (whatever else did), as replied when its contact
/// replied to it, and `leads_created` counts the leads those replies opened.
pub async fn campaign_stats(
    pool: &PgPool,
    org_id: &str,
    campaign_id: &str,
) -> Result<pb::CampaignStats, BroadcastError> {
    // One snapshot for every count, so that they agree with each other.
    let mut tx = snapshot(pool).await?;
    let mut found = figures(&mut tx, org_id, &[campaign_id.to_owned()]).await?;
    tx.commit().await?;
    found.remove(campaign_id).ok_or_else(|| BroadcastError::not_found("campaign", campaign_id))
}

pub struct CampaignPage {
    pub campaigns: Vec<pb::CampaignStats>,
    pub next_page_token: String,
}

/// `org_id`'s campaigns, the one whose newest message was sent last first (ties by id,
/// descending), after `after`, each with the figures `campaign_stats` gives.
///
/// What a page costs: ordering reads each of the organisation's campaigns' newest send, one
/// probe at the end of its range of `messages_by_campaign` (about 11 ms for 1,000 campaigns);
/// the figures read every message of the page's campaigns and its statuses, as
/// GetCampaignStats does for one, index-only (about 2 ms per 1,000 messages). A page of 50
/// campaigns of 1,000 messages each took 0.1 s; the figures grow with the messages of the
/// page's campaigns, so a page of campaigns of 100,000 messages each would take seconds:
/// callers listing such campaigns ask for smaller pages. A campaign without a recorded
/// message has no send to order by and is left out.
pub async fn list_campaigns(
    pool: &PgPool,
    org_id: &str,
    page_size: i64,
    after: Option<CampaignCursor>,
) -> Result<CampaignPage, BroadcastError> {
    let mut tx = snapshot(pool).await?;
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.campaign_id, l.last_sent_at FROM campaigns c \
         CROSS JOIN LATERAL (SELECT m.sent_at AS last_sent_at FROM messages m \
                             WHERE m.org_id = c.org_id AND m.campaign_id = c.campaign_id \
                             ORDER BY m.sent_at DESC LIMIT 1) l \
         WHERE c.org_id = $1 AND ($2::timestamptz IS NULL OR (l.last_sent_at, c.campaign_id) < ($2, $3)) \
         ORDER BY l.last_sent_at DESC, c.campaign_id DESC LIMIT $4",
    )
    .bind(org_id)
    .bind(after.as_ref().map(|c| c.last_sent_at))
    .bind(after.as_ref().map(|c| c.campaign_id.as_str()))
    .bind(page_size + 1)
    .fetch_all(&mut *tx)
    .await?;
    let has_more = rows.len() as i64 > page_size;
    let rows = &rows[..rows.len().min(page_size as usize)];
    let ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    let mut found = figures(&mut tx, org_id, &ids).await?;
    tx.commit().await?;
    let next_page_token = match (has_more, rows.last()) {
        (true, Some((campaign_id, last_sent_at))) => {
            CampaignCursor { last_sent_at: *last_sent_at, campaign_id: campaign_id.clone() }.encode()
        }
        _ => String::new(),
    };
    // Read in the same snapshot, every campaign of the page has its figures.
    let campaigns = ids.iter().filter_map(|id| found.remove(id)).collect();
    Ok(CampaignPage { campaigns, next_page_token })
}

/// A read-only transaction whose statements all see one snapshot.
async fn snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, BroadcastError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    Ok(tx)
}

/// The figures of those of `campaign_ids` that `org_id` has, by id.
async fn figures(
    tx: &mut sqlx::PgConnection,
    org_id: &str,
    campaign_ids: &[String],
) -> Result<HashMap<String, pb::CampaignStats>, BroadcastError> {
    if campaign_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let names: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT campaign_id, name FROM campaigns WHERE org_id = $1 AND campaign_id = ANY($2)")
            .bind(org_id)
            .bind(campaign_ids)
            .fetch_all(&mut *tx)
            .await?;
    // Each message's state from its own statuses (rank: sent 1 < delivered 2 < read 3; NULL
    // when none arrived yet, so it counts only as a message), grouped by campaign and by the
    // class of its failure. LATERAL keeps the plan to one primary-key probe per message of the
    // campaigns, whatever the statistics say while statuses pour in; a join let the planner
    // scan the whole statuses table for a campaign of a few thousand messages.
    let groups: Vec<CountsRow> = sqlx::query_as(
        "SELECT m.campaign_id, s.failure_class, count(*) AS messages, \
           count(*) FILTER (WHERE s.rank >= 1) AS sent, \
           count(*) FILTER (WHERE s.rank >= 2) AS delivered, \
           count(*) FILTER (WHERE s.rank >= 3) AS read, \
           count(*) FILTER (WHERE s.failed) AS failed, \
           min(m.sent_at) AS first_sent_at, max(m.sent_at) AS last_sent_at \
         FROM messages m \
         CROSS JOIN LATERAL ( \
           SELECT max(CASE st.status WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 WHEN 'sent' THEN 1 ELSE 0 END) \
                    AS rank, \
                  bool_or(st.status = 'failed') AS failed, \
                  max(st.error_class) FILTER (WHERE st.status = 'failed') AS failure_class \
           FROM statuses st WHERE st.org_id = m.org_id AND st.message_id = m.message_id) s \
         WHERE m.org_id = $1 AND m.campaign_id = ANY($2) \
         GROUP BY m.campaign_id, s.failure_class",
    )
    .bind(org_id)
    .bind(campaign_ids)
    .fetch_all(&mut *tx)
    .await?;
    let replies: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT m.campaign_id, count(DISTINCT r.message_id), count(DISTINCT r.lead_id) FILTER (WHERE r.created_lead) \
         FROM replies r JOIN messages m ON m.org_id = r.org_id AND m.message_id = r.message_id \
         WHERE m.org_id = $1 AND m.campaign_id = ANY($2) \
         GROUP BY m.campaign_id",
    )
    .bind(org_id)
    .bind(campaign_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_campaign: HashMap<&str, Vec<&CountsRow>> = HashMap::new();
    for group in &groups {
        by_campaign.entry(group.campaign_id.as_str()).or_default().push(group);
    }
    let replies: HashMap<&str, (i64, i64)> =
        replies.iter().map(|(id, replied, leads)| (id.as_str(), (*replied, *leads))).collect();
    Ok(names
        .into_iter()
        .map(|(campaign_id, name)| {
            let groups = by_campaign.get(campaign_id.as_str()).map(Vec::as_slice).unwrap_or_default();
            let (replied, leads_created) = replies.get(campaign_id.as_str()).copied().unwrap_or_default();
            let stats = stats_of(&campaign_id, name, groups, replied, leads_created);
            (campaign_id, stats)
        })
        .collect())
}

/// One campaign's figures from its groups of messages (by failure class) and its replies.
fn stats_of(
    campaign_id: &str,
    name: Option<String>,
    groups: &[&CountsRow],
    replied: i64,
    leads_created: i64,
) -> pb::CampaignStats {
    // Every class is present, zero or not, so that callers need not guess the keys.
    let mut failed_by_class: HashMap<String, i64> =
        ErrorClass::ALL.iter().map(|c| (c.as_str().to_owned(), 0)).collect();
    let mut counts = CountsRow::default();
    for group in groups {
        if group.failed > 0 {
            let class = group.failure_class.clone().unwrap_or_else(|| ErrorClass::Other.as_str().to_owned());
            *failed_by_class.entry(class).or_default() += group.failed;
        }
        counts.add(group);
    }
    let rate = |count: i64| if counts.messages == 0 { 0.0 } else { count as f64 / counts.messages as f64 };
    pb::CampaignStats {
        campaign_id: campaign_id.to_owned(),
        name: name.unwrap_or_default(),
        messages: counts.messages,
        sent: counts.sent,
        delivered: counts.delivered,
        read: counts.read,
        failed: counts.failed,
        failed_by_class,
        replied,
        leads_created,
        delivery_rate: rate(counts.delivered),
        read_rate: rate(counts.read),
        failure_rate: rate(counts.failed),
        reply_rate: rate(replied),
        first_sent_at: counts.first_sent_at.map(timestamp),
        last_sent_at: counts.last_sent_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            sent_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
            message_id: "wamid.|x".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        for token in ["zz", "abc", "7c", "31327c"] {
            match Cursor::decode(token) {
                Err(BroadcastError::InvalidArgument { field, .. }) => assert_eq!(field, "page_token"),
                other => panic!("{token}: {:?}", other.map(|c| c.message_id)),
            }
        }
    }
}
