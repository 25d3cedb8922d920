//! The one way a message is told: recorded once (its dedupe key), published on NATS when it is
//! for an agent or the admins, and queued for every webhook endpoint of its organisation that
//! subscribes to its type, all in the caller's transaction. A disabled endpoint's deliveries
//! wait: enabling it again delivers what it missed.

use crate::NotificationContext;
use chrono::{DateTime, Utc};
use contracts::notifications::OutboundMessage;
use platform::outbox::OutboxMessage;
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Agent(String),
    Admins,
    /// Webhook endpoints only (the lead lifecycle's own events).
    Webhooks,
}

/// Something to tell.
#[derive(Debug, Clone)]
pub struct Tell {
    pub org_id: String,
    pub event_type: &'static str,
    pub occurred_at: DateTime<Utc>,
    /// Told once whatever the redeliveries: the source event's id, or what a scheduled alert is.
    pub dedupe_key: String,
    pub recipient: Recipient,
    pub lead_id: Option<Uuid>,
    /// The line a person reads in the console.
    pub summary: String,
    pub data: serde_json::Value,
}

/// Which event types each organisation's endpoints (enabled or not) want: `None` for every type.
pub type Subscriptions = HashMap<String, Vec<Option<HashSet<String>>>>;

/// The subscriptions of `orgs`' endpoints.
pub async fn subscriptions(conn: &mut PgConnection, orgs: &[&str]) -> Result<Subscriptions, sqlx::Error> {
    let rows: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT org_id, event_types FROM webhook_endpoints WHERE org_id = ANY($1)")
            .bind(orgs)
            .fetch_all(conn)
            .await?;
    let mut subscriptions = Subscriptions::new();
    for (org, types) in rows {
        subscriptions.entry(org).or_default().push((!types.is_empty()).then(|| types.into_iter().collect()));
    }
    Ok(subscriptions)
}

/// Whether any endpoint of `org` wants `event_type`.
pub fn wanted(subscriptions: &Subscriptions, org: &str, event_type: &str) -> bool {
    subscriptions
        .get(org)
        .is_some_and(|endpoints| endpoints.iter().any(|types| types.as_ref().is_none_or(|t| t.contains(event_type))))
}

/// A fresh message id: `ntf_` and a UUIDv7, unique across organisations as the
/// NOTIFICATIONS stream's duplicate window needs.
pub fn new_id() -> String {
    format!("ntf_{}", Uuid::now_v7().simple())
}

/// What `tell` recorded: the NATS messages to stage and the deliveries it queued.
#[derive(Debug, Default)]
pub struct Told {
    pub published: Vec<OutboxMessage>,
    pub queued: u64,
}

/// Commits `tx` with what was told in it, then wakes the outbox relay and the deliveries.
pub async fn commit(ctx: &NotificationContext, tx: Transaction<'_, Postgres>, told: Told) -> Result<(), sqlx::Error> {
    platform::outbox::commit(tx, &told.published, &ctx.outbox).await?;
    if told.queued > 0 {
        ctx.deliveries_waiting.notify_one();
    }
    Ok(())
}

/// Records `tells` that were not told before and queues their deliveries; the NATS messages
/// they publish are returned for `commit` to stage.
pub async fn tell(
    ctx: &NotificationContext,
    tx: &mut Transaction<'_, Postgres>,
    tells: Vec<Tell>,
) -> Result<Told, sqlx::Error> {
    if tells.is_empty() {
        return Ok(Told::default());
    }
    let mut ids = Vec::with_capacity(tells.len());
    let mut bodies = Vec::with_capacity(tells.len());
    for tell in &tells {
        let id = new_id();
        let message = OutboundMessage {
            id: id.clone(),
            event_type: tell.event_type.to_owned(),
            org_id: tell.org_id.clone(),
            occurred_at: tell.occurred_at,
            data: tell.data.clone(),
        };
        // A JSON value with string keys always serialises.
        bodies.push(serde_json::to_vec(&message).unwrap_or_default());
        ids.push(id);
    }
    let orgs: Vec<&str> = tells.iter().map(|t| t.org_id.as_str()).collect();
    let types: Vec<&str> = tells.iter().map(|t| t.event_type).collect();
    let occurred: Vec<DateTime<Utc>> = tells.iter().map(|t| t.occurred_at).collect();
    let keys: Vec<&str> = tells.iter().map(|t| t.dedupe_key.as_str()).collect();
    let agents: Vec<Option<&str>> = tells
        .iter()
        .map(|t| match &t.recipient {
            Recipient::Agent(agent) => Some(agent.as_str()),
            _ => None,
        })
        .collect();
    let admins: Vec<bool> = tells.iter().map(|t| t.recipient == Recipient::Admins).collect();
    let leads: Vec<Option<Uuid>> = tells.iter().map(|t| t.lead_id).collect();
    let summaries: Vec<&str> = tells.iter().map(|t| t.summary.as_str()).collect();
    let inserted: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO messages (id, org_id, event_type, occurred_at, dedupe_key, agent_id, for_admins, lead_id, summary, body) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::bool[], \
                              $8::uuid[], $9::text[], $10::bytea[]) \
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&types)
    .bind(&occurred)
    .bind(&keys)
    .bind(&agents)
    .bind(&admins)
    .bind(&leads)
    .bind(&summaries)
    .bind(&bodies)
    .fetch_all(&mut **tx)
    .await?;
    if inserted.is_empty() {
        return Ok(Told::default());
    }
    let new: HashSet<&str> = inserted.iter().map(|(id,)| id.as_str()).collect();
    let mut published = Vec::new();
    let (mut new_ids, mut new_orgs, mut new_types) = (Vec::new(), Vec::new(), Vec::new());
    for ((tell, id), body) in tells.iter().zip(&ids).zip(bodies) {
        if !new.contains(id.as_str()) {
            continue;
        }
        let subject = match &tell.recipient {
            Recipient::Agent(agent) => Some(ctx.subjects.agent_notifications(&tell.org_id, agent)),
            Recipient::Admins => Some(ctx.subjects.admin_notifications(&tell.org_id)),
            Recipient::Webhooks => None,
        };
        if let Some(subject) = subject {
            published.push(OutboxMessage { org_id: tell.org_id.clone(), subject, msg_id: id.clone(), payload: body });
        }
        new_ids.push(id.as_str());
        new_orgs.push(tell.org_id.as_str());
        new_types.push(tell.event_type);
        metrics::counter!("leads_notifications_told_total", "type" => tell.event_type).increment(1);
    }
    let queued = sqlx::query(
        "INSERT INTO deliveries (org_id, endpoint_id, message_id, state) \
         SELECT m.org_id, e.id, m.id, 'pending' \
         FROM unnest($1::text[], $2::text[], $3::text[]) AS m(id, org_id, event_type) \
         JOIN webhook_endpoints e ON e.org_id = m.org_id \
          AND (cardinality(e.event_types) = 0 OR m.event_type = ANY(e.event_types)) \
         ON CONFLICT (endpoint_id, message_id) DO NOTHING",
    )
    .bind(&new_ids)
    .bind(&new_orgs)
    .bind(&new_types)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(Told { published, queued })
}

/// The contact as notifications carry it.
pub fn contact(name: Option<&str>, phone: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "name": name, "phone": phone })
}
