//! Follow-ups that reach people. The open follow-ups are kept from the lead service's
//! `follow_up_opened` and the follow-up service's events; each has its alerts: a reminder
//! before it is due and the overdue alert after, by its organisation's settings. The
//! follow-up service's `due` event is told as it comes; the alerts are told by a scheduler that
//! claims them with SKIP LOCKED and deletes them in the transaction that records what they
//! tell, so that any number of processes, killed at any point, tell each once.

use crate::{
    NotificationContext,
    error::NotificationError,
    record::{self, Recipient, Tell, Told},
    settings::{self, OrgSettings},
};
use chrono::{DateTime, Utc};
use contracts::{
    Envelope,
    followup::FollowUpEvent,
    lead::{LeadChange, LeadEvent},
    notifications::{FOLLOWUP_DUE, FOLLOWUP_OVERDUE, FOLLOWUP_REMINDER},
};
use sqlx::{PgConnection, Postgres, Transaction};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One open follow-up as notifications need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenFollowUp {
    pub org_id: String,
    pub id: Uuid,
    pub lead_id: Uuid,
    pub agent_id: Option<String>,
    pub due_at: DateTime<Utc>,
    pub note: Option<String>,
    pub contact_name: Option<String>,
    pub phone: Option<String>,
    pub state: String,
    pub version: i64,
}

impl OpenFollowUp {
    /// The follow-up as one of the follow-up service's events has it, in `state` at `version`.
    fn of_event(event: &Envelope<FollowUpEvent>, state: &str, version: i64) -> Self {
        Self {
            org_id: event.org_id.clone(),
            id: event.aggregate_id,
            lead_id: event.data.lead_id,
            agent_id: event.data.agent_id.clone(),
            due_at: event.data.due_at,
            note: event.data.note.clone(),
            contact_name: event.data.contact_name.clone(),
            phone: event.data.phone.clone(),
            state: state.to_owned(),
            version,
        }
    }
}

/// The columns of `OpenFollowUp`.
const COLUMNS: &str = "org_id, id, lead_id, agent_id, due_at, note, contact_name, phone, state, version";

const CLOSED: [&str; 2] = ["completed", "cancelled"];

/// Keeps follow-ups opened on leads (`follow_up_opened`), unless the follow-up service's
/// events already told of them.
pub async fn apply_opened(ctx: &NotificationContext, events: &[Envelope<LeadEvent>]) -> Result<(), NotificationError> {
    let opened: Vec<OpenFollowUp> = events
        .iter()
        .filter_map(|e| match &e.data.change {
            LeadChange::FollowUpOpened { follow_up } => Some(OpenFollowUp {
                org_id: e.org_id.clone(),
                id: follow_up.follow_up_id,
                lead_id: e.data.lead.id,
                agent_id: follow_up.agent_id.clone(),
                due_at: follow_up.due_at,
                note: follow_up.note.clone(),
                contact_name: e.data.lead.name.clone(),
                phone: e.data.lead.phone.clone(),
                state: "pending".into(),
                version: 0,
            }),
            _ => None,
        })
        .collect();
    if opened.is_empty() {
        return Ok(());
    }
    let mut tx = ctx.pool.begin().await?;
    let changed = upsert(&mut tx, &opened).await?;
    schedule(&mut tx, &changed).await?;
    tx.commit().await?;
    ctx.alerts_waiting.notify_one();
    Ok(())
}

/// Applies the follow-up service's events: a closed follow-up is forgotten with its alerts, a
/// changed one is kept at its newest version with its alerts moved, and a `due` one is told.
pub async fn apply_follow_up_events(
    ctx: &NotificationContext,
    events: &[Envelope<FollowUpEvent>],
) -> Result<(), NotificationError> {
    let mut newest: Vec<&Envelope<FollowUpEvent>> = events.iter().collect();
    newest.sort_by(|a, b| (&a.org_id, a.aggregate_id, b.version).cmp(&(&b.org_id, b.aggregate_id, a.version)));
    newest.dedup_by(|later, first| later.org_id == first.org_id && later.aggregate_id == first.aggregate_id);
    let (closing, open): (Vec<_>, Vec<_>) = newest.into_iter().partition(|e| CLOSED.contains(&e.data.state.as_str()));

    let mut tx = ctx.pool.begin().await?;
    if !closing.is_empty() {
        // A tombstone, not a deletion: a `follow_up_opened` inserting the same follow-up at the
        // same time conflicts with it on the key and waits, whichever of the two comes first.
        let tombstones: Vec<OpenFollowUp> =
            closing.iter().map(|e| OpenFollowUp::of_event(e, "closed", i64::MAX)).collect();
        upsert(&mut tx, &tombstones).await?;
        let orgs: Vec<&str> = closing.iter().map(|e| e.org_id.as_str()).collect();
        let ids: Vec<Uuid> = closing.iter().map(|e| e.aggregate_id).collect();
        sqlx::query(
            "DELETE FROM alerts WHERE (org_id, follow_up_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
        )
        .bind(&orgs)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    }
    let rows: Vec<OpenFollowUp> = open.iter().map(|e| OpenFollowUp::of_event(e, &e.data.state, e.version)).collect();
    let changed = upsert(&mut tx, &rows).await?;
    schedule(&mut tx, &changed).await?;

    // Every `due` in the batch is told, once, unless its follow-up has closed since.
    let closed: HashSet<(&str, Uuid)> = closing.iter().map(|e| (e.org_id.as_str(), e.aggregate_id)).collect();
    let mut due: Vec<&Envelope<FollowUpEvent>> =
        events.iter().filter(|e| e.kind == "due" && !closed.contains(&(e.org_id.as_str(), e.aggregate_id))).collect();
    if !due.is_empty() {
        // A `due` redelivered after its follow-up closed in an earlier batch tells nothing.
        let tombstones: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT org_id, id FROM follow_ups WHERE state = 'closed' \
               AND (org_id, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
        )
        .bind(due.iter().map(|e| e.org_id.as_str()).collect::<Vec<_>>())
        .bind(due.iter().map(|e| e.aggregate_id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        due.retain(|e| !tombstones.iter().any(|(org, id)| *org == e.org_id && *id == e.aggregate_id));
    }
    let mut told = Told::default();
    if !due.is_empty() {
        let tells = due
            .iter()
            .map(|e| {
                let follow_up = OpenFollowUp::of_event(e, "due", e.version);
                alert(&follow_up, FOLLOWUP_DUE, e.occurred_at, None)
            })
            .collect();
        told = record::tell(ctx, &mut tx, tells).await?;
    }
    record::commit(ctx, tx, told).await?;
    ctx.alerts_waiting.notify_one();
    Ok(())
}

/// Keeps `rows` at their newest version; a closed follow-up (its tombstone has the highest
/// version) is never brought back. Returns the follow-ups that changed.
async fn upsert(tx: &mut PgConnection, rows: &[OpenFollowUp]) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&OpenFollowUp) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let changed: Vec<(String, Uuid)> = sqlx::query_as(
        "INSERT INTO follow_ups (org_id, id, lead_id, agent_id, due_at, note, contact_name, phone, state, version) \
         SELECT t.* FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[], \
                                $7::text[], $8::text[], $9::text[], $10::bigint[]) \
              AS t(org_id, id, lead_id, agent_id, due_at, note, contact_name, phone, state, version) \
         ON CONFLICT (org_id, id) DO UPDATE SET agent_id = EXCLUDED.agent_id, due_at = EXCLUDED.due_at, \
           note = EXCLUDED.note, contact_name = COALESCE(EXCLUDED.contact_name, follow_ups.contact_name), \
           phone = COALESCE(EXCLUDED.phone, follow_ups.phone), state = EXCLUDED.state, version = EXCLUDED.version, \
           closed_at = CASE WHEN EXCLUDED.state = 'closed' THEN now() END \
         WHERE follow_ups.version < EXCLUDED.version \
         RETURNING org_id, id",
    )
    .bind(column(|r| Some(r.org_id.clone())))
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.lead_id).collect::<Vec<_>>())
    .bind(column(|r| r.agent_id.clone()))
    .bind(rows.iter().map(|r| r.due_at).collect::<Vec<_>>())
    .bind(column(|r| r.note.clone()))
    .bind(column(|r| r.contact_name.clone()))
    .bind(column(|r| r.phone.clone()))
    .bind(column(|r| Some(r.state.clone())))
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(changed)
}

/// Sets the alerts of `changed` follow-ups from their organisations' settings.
async fn schedule(tx: &mut PgConnection, changed: &[(String, Uuid)]) -> Result<(), sqlx::Error> {
    let mut by_org: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for (org, id) in changed {
        by_org.entry(org.as_str()).or_default().push(*id);
    }
    for (org, ids) in by_org {
        let settings = settings::read(&mut *tx, org).await?;
        set_alerts(&mut *tx, org, Some(&ids), &settings).await?;
    }
    Ok(())
}

/// Moves the alerts of every open follow-up of `org_id` to its new settings.
pub async fn reschedule_org(tx: &mut PgConnection, org_id: &str, settings: &OrgSettings) -> Result<(), sqlx::Error> {
    set_alerts(tx, org_id, None, settings).await
}

/// The alerts of `ids` (every open follow-up of the organisation when `None`): a reminder
/// while the follow-up is pending and not yet due, the overdue alert while it is open.
async fn set_alerts(
    tx: &mut PgConnection,
    org_id: &str,
    ids: Option<&[Uuid]>,
    settings: &OrgSettings,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alerts WHERE org_id = $1 AND ($2::uuid[] IS NULL OR follow_up_id = ANY($2))")
        .bind(org_id)
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    // ON CONFLICT: an alert a concurrent transaction inserted is invisible to the DELETE above.
    // An overdue alert already told for this due time is not set again.
    sqlx::query(
        "INSERT INTO alerts (org_id, follow_up_id, kind, fire_at) \
         SELECT org_id, id, 'reminder', due_at - make_interval(mins => $3) FROM follow_ups \
          WHERE org_id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2)) AND state = 'pending' AND $3 > 0 AND due_at > now() \
         UNION ALL \
         SELECT org_id, id, 'overdue', due_at + make_interval(mins => $4) FROM follow_ups \
          WHERE org_id = $1 AND ($2::uuid[] IS NULL OR id = ANY($2)) AND state IN ('pending', 'due') \
            AND overdue_told_for IS DISTINCT FROM due_at \
         ON CONFLICT (org_id, follow_up_id, kind) DO UPDATE SET fire_at = EXCLUDED.fire_at",
    )
    .bind(org_id)
    .bind(ids)
    .bind(settings.remind_before_minutes)
    .bind(settings.overdue_after_minutes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What a follow-up alert tells, to its agent or, when it has none, to the admins.
fn alert(follow_up: &OpenFollowUp, event_type: &'static str, at: DateTime<Utc>, admins: Option<()>) -> Tell {
    let who = follow_up.contact_name.as_deref().or(follow_up.phone.as_deref()).unwrap_or("a contact");
    let what = follow_up.note.as_deref().unwrap_or("follow up");
    let (headline, key_kind) = match event_type {
        FOLLOWUP_REMINDER => ("Follow-up due soon", "reminder"),
        FOLLOWUP_DUE => ("Follow-up due", "due"),
        _ => ("Follow-up overdue", "overdue"),
    };
    // The recipient is part of the key: a follow-up reassigned after its reminder reminds its
    // new agent too.
    let (recipient, key_kind, summary) = match (admins, &follow_up.agent_id) {
        (None, Some(agent)) => (
            Recipient::Agent(agent.clone()),
            format!("{key_kind}:agent:{agent}"),
            format!("{headline}: {what} ({who})"),
        ),
        (_, agent) => (
            Recipient::Admins,
            format!("{key_kind}:admins"),
            match agent {
                Some(agent) => format!("{headline} for {agent}: {what} ({who})"),
                None => format!("{headline}, no agent: {what} ({who})"),
            },
        ),
    };
    Tell {
        org_id: follow_up.org_id.clone(),
        event_type,
        occurred_at: at,
        dedupe_key: format!("fu:{}:{key_kind}:{}", follow_up.id, follow_up.due_at.timestamp_micros()),
        recipient,
        lead_id: Some(follow_up.lead_id),
        summary,
        data: serde_json::json!({
            "agent_id": follow_up.agent_id,
            "lead_id": follow_up.lead_id,
            "follow_up_id": follow_up.id,
            "due_at": follow_up.due_at,
            "note": follow_up.note,
            "contact": record::contact(follow_up.contact_name.as_deref(), follow_up.phone.as_deref()),
        }),
    }
}

/// Tells the alerts that have come, until `token` fires: at every tick and whenever a change
/// may have brought one closer.
pub async fn run_alerts(ctx: NotificationContext, tick: Duration, token: CancellationToken) -> anyhow::Result<()> {
    const BATCH: i64 = 500;
    while !token.is_cancelled() {
        let pause = match fire(&ctx, BATCH).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => tick,
            Err(error) => {
                tracing::warn!(%error, "telling follow-up alerts failed, retrying");
                tick * 4
            }
        };
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
            () = ctx.alerts_waiting.notified() => {}
        }
    }
    Ok(())
}

/// Claims up to `limit` alerts that have come and tells them; returns how many were claimed.
async fn fire(ctx: &NotificationContext, limit: i64) -> Result<usize, NotificationError> {
    let mut tx: Transaction<'_, Postgres> = ctx.pool.begin().await?;
    let claimed: Vec<(String, Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "WITH claimed AS ( \
           SELECT org_id, follow_up_id, kind FROM alerts WHERE fire_at <= now() \
           ORDER BY fire_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         DELETE FROM alerts a USING claimed c \
         WHERE a.org_id = c.org_id AND a.follow_up_id = c.follow_up_id AND a.kind = c.kind \
         RETURNING a.org_id, a.follow_up_id, a.kind, a.fire_at",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if claimed.is_empty() {
        return Ok(0);
    }
    let orgs: Vec<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
    let ids: Vec<Uuid> = claimed.iter().map(|c| c.1).collect();
    let open: Vec<OpenFollowUp> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM follow_ups WHERE state <> 'closed' \
               AND (org_id, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
    )))
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    let mut escalates: BTreeMap<String, bool> = BTreeMap::new();
    let mut tells = Vec::new();
    for (org, id, kind, fire_at) in &claimed {
        let Some(follow_up) = open.iter().find(|f| &f.org_id == org && f.id == *id) else { continue };
        match kind.as_str() {
            // A reminder the scheduler reaches only after the due time is no reminder: `due` tells it.
            "reminder" if follow_up.state == "pending" && follow_up.due_at > now => {
                tells.push(alert(follow_up, FOLLOWUP_REMINDER, *fire_at, None));
            }
            "overdue" => {
                if follow_up.agent_id.is_some() {
                    tells.push(alert(follow_up, FOLLOWUP_OVERDUE, *fire_at, None));
                }
                let escalate = match escalates.get(org) {
                    Some(escalate) => *escalate,
                    None => {
                        let escalate = settings::read(&mut tx, org).await?.escalate_overdue;
                        escalates.insert(org.clone(), escalate);
                        escalate
                    }
                };
                if escalate || follow_up.agent_id.is_none() {
                    tells.push(alert(follow_up, FOLLOWUP_OVERDUE, *fire_at, Some(())));
                }
            }
            _ => {}
        }
    }
    let overdue: Vec<(&str, Uuid)> = claimed.iter().filter(|c| c.2 == "overdue").map(|c| (c.0.as_str(), c.1)).collect();
    if !overdue.is_empty() {
        sqlx::query(
            "UPDATE follow_ups SET overdue_told_for = due_at \
             WHERE (org_id, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
        )
        .bind(overdue.iter().map(|o| o.0).collect::<Vec<_>>())
        .bind(overdue.iter().map(|o| o.1).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let told = record::tell(ctx, &mut tx, tells).await?;
    let count = claimed.len();
    record::commit(ctx, tx, told).await?;
    Ok(count)
}
