//! Status changes, single and bulk. The lead row is locked while the "is it active?" decision
//! is made and the change is written, so no concurrent writer can slip in between.

use crate::{
    LeadContext,
    apply::{lead_event, publish},
    error::LeadError,
    lifecycle::{self, Act, Inactive, Transition},
    model::LEAD_VIEW_COLUMNS,
};
use contracts::lead::{LeadChange, LeadView, ScoreSource, Status};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

pub const MAX_BULK: usize = contracts::values::limits::MAX_BULK_LEADS;

/// A lead's row as read under its lock: what "is it active?" is decided on, with nothing
/// able to change it before the transaction ends.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedLead {
    #[sqlx(try_from = "String")]
    pub status: Status,
    pub version: i64,
    pub agent_id: Option<String>,
}

/// Who may see a lead, as SQL over `leads`: `$3` is the agent a caller is confined to (with
/// the unassigned leads), or NULL for every lead.
pub const VISIBLE_TO: &str = "($3::text IS NULL OR agent_id IS NULL OR agent_id = $3)";

/// Locks the lead, which must exist and be visible to `visible_to` (`None`: to everyone).
pub async fn lock_lead(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: &str,
    lead_id: Uuid,
    visible_to: Option<&str>,
) -> Result<LockedLead, LeadError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, version, agent_id FROM leads WHERE org_id = $1 AND id = $2 AND {VISIBLE_TO} FOR UPDATE"
    )))
    .bind(org_id)
    .bind(lead_id)
    .bind(visible_to)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| LeadError::NotFound(lead_id.to_string()))
}

#[derive(Debug, Clone)]
pub struct ChangeStatus {
    pub org_id: String,
    pub lead_id: Uuid,
    /// `None` keeps the current status: the request changes the score alone.
    pub status: Option<Status>,
    pub manual_score: Option<i32>,
    /// Clears a score set by hand, so that the qualification engine's next score applies.
    pub clear_manual_score: bool,
    pub reason: Option<String>,
    pub actor: String,
    pub expected_version: Option<i64>,
    /// The agent the caller is confined to: a lead of another agent is not found.
    pub visible_to: Option<String>,
}

/// The status history's row for `cmd`, which moved the lead from `from` to `to` at
/// `lead_version`.
async fn record_status_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    cmd: &ChangeStatus,
    from: Status,
    to: Status,
    lead_version: i64,
) -> Result<(), LeadError> {
    sqlx::query(
        "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, manual_score, lead_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&cmd.org_id)
    .bind(cmd.lead_id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(&cmd.actor)
    .bind(cmd.reason.as_deref())
    .bind(cmd.manual_score)
    .bind(lead_version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn change_status(ctx: &LeadContext, cmd: ChangeStatus) -> Result<LeadView, LeadError> {
    if let Some(score) = cmd.manual_score
        && !(0..=100).contains(&score)
    {
        return Err(LeadError::invalid("manual_score", "must be between 0 and 100"));
    }
    if cmd.clear_manual_score && cmd.manual_score.is_some() {
        return Err(LeadError::invalid("clear_manual_score", "cannot be combined with manual_score"));
    }
    let with_score = cmd.manual_score.is_some() || cmd.clear_manual_score;
    let act = match cmd.status {
        Some(to) => Act::ChangeStatus { to, with_score },
        None if with_score => Act::SetScore,
        None => {
            return Err(LeadError::invalid("status", "is required unless manual_score or clear_manual_score is given"));
        }
    };
    let mut tx = ctx.pool.begin().await?;
    let LockedLead { status: from, version, .. } =
        lock_lead(&mut tx, &cmd.org_id, cmd.lead_id, cmd.visible_to.as_deref()).await?;
    let transition =
        lifecycle::decide(from, act).map_err(|Inactive(status)| LeadError::Inactive { id: cmd.lead_id, status })?;
    if let Some(expected) = cmd.expected_version
        && expected != version
    {
        return Err(LeadError::VersionMismatch { id: cmd.lead_id, expected, actual: version });
    }
    let mut messages = Vec::new();
    if transition == Transition::Unchanged {
        tx.rollback().await?;
        return crate::read::get_lead(&ctx.pool, &cmd.org_id, cmd.lead_id).await;
    }
    let new_version: i64 = sqlx::query_scalar(
        "UPDATE leads SET status = $2, \
           score = CASE WHEN $4 AND score_source = $5 THEN NULL ELSE coalesce($3, score) END, \
           score_source = CASE WHEN $4 AND score_source = $5 THEN NULL \
                               WHEN $3::int IS NULL THEN score_source ELSE $5 END, \
           score_reasons = CASE WHEN $3::int IS NULL THEN score_reasons END, \
           status_set_by_hand_at = CASE WHEN status <> $2 THEN now() ELSE status_set_by_hand_at END, \
           updated_at = now(), version = version + 1 \
         WHERE id = $1 RETURNING version",
    )
    .bind(cmd.lead_id)
    .bind(transition.status(from).as_str())
    .bind(cmd.manual_score)
    .bind(cmd.clear_manual_score)
    .bind(ScoreSource::Manual.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if let Transition::Moves { from, to } = transition {
        record_status_change(&mut tx, &cmd, from, to, new_version).await?;
    }
    // A score set by hand is recorded as such; one handed back is recorded as the engine's,
    // with no score until the engine's next one.
    let score_change = match (cmd.manual_score, cmd.clear_manual_score) {
        (Some(score), _) => Some((Some(score), ScoreSource::Manual)),
        (None, true) => Some((None, ScoreSource::Ai)),
        (None, false) => None,
    };
    if let Some((score, source)) = score_change {
        sqlx::query("INSERT INTO score_changes (org_id, lead_id, score, source, actor) VALUES ($1, $2, $3, $4, $5)")
            .bind(&cmd.org_id)
            .bind(cmd.lead_id)
            .bind(score)
            .bind(source.as_str())
            .bind(&cmd.actor)
            .execute(&mut *tx)
            .await?;
    }
    let change = if let Transition::Moves { from, to } = transition {
        LeadChange::StatusChanged {
            from: from.as_str().into(),
            to: to.as_str().into(),
            actor: cmd.actor.clone(),
            reason: cmd.reason.clone(),
            rule: None,
        }
    } else {
        // A status left as it is: the request changed the score alone.
        let (score, source) = score_change.expect("a transition that stays comes with a score");
        LeadChange::ScoreChanged { score, source, actor: cmd.actor.clone() }
    };
    let lead = publish(ctx, &mut tx, &mut messages, cmd.lead_id, change).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(lead)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOutcome {
    Changed,
    Unchanged,
    Inactive(Status),
    NotFound,
    /// The lead was not at the version the caller expected, so it was left as it is.
    VersionMismatch {
        expected: i64,
    },
}

impl BulkOutcome {
    /// Why a lead was left as it is, for the caller; empty for a change.
    pub fn detail(&self, unchanged: &str, lead_version: i64) -> String {
        match self {
            BulkOutcome::Changed => String::new(),
            BulkOutcome::Unchanged => unchanged.to_owned(),
            BulkOutcome::Inactive(status) => format!("lead is inactive: its status is {}", status.display_name()),
            BulkOutcome::NotFound => "no such lead".into(),
            BulkOutcome::VersionMismatch { expected } => {
                format!("lead is at version {lead_version}, not the expected {expected}: someone changed it meanwhile")
            }
        }
    }
}

/// What became of one lead of a bulk status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkChange {
    pub outcome: BulkOutcome,
    /// The lead's version after the change, or its current one; 0 when not found.
    pub lead_version: i64,
}

/// The leads a bulk request names, ready to lock and decide on.
#[derive(Debug, Clone, Default)]
pub struct BulkLeads {
    /// Each requested id, parsed, in request order (one that does not parse is answered "not
    /// found").
    pub requested: Vec<Option<Uuid>>,
    /// The distinct valid ids sorted: the order their rows are locked in, so that two bulk acts
    /// over overlapping leads cannot deadlock.
    pub ids: Vec<Uuid>,
    /// The version a lead must still be at to be changed, for the leads the request names one.
    pub expected: HashMap<Uuid, i64>,
}

impl BulkLeads {
    /// Reads `lead_ids` and `expected_versions` (keyed by lead id). Each key must be one of
    /// `lead_ids`, so that a guard meant for a lead the request does not name is refused rather
    /// than ignored; a key that is no lead id at all guards a lead answered "not found" anyway.
    pub fn parse(lead_ids: &[String], expected_versions: &HashMap<String, i64>) -> Result<Self, LeadError> {
        if lead_ids.is_empty() {
            return Err(LeadError::invalid("lead_ids", "must name at least one lead"));
        }
        if lead_ids.len() > MAX_BULK {
            return Err(LeadError::invalid("lead_ids", format!("must name at most {MAX_BULK} leads")));
        }
        let requested: Vec<Option<Uuid>> = lead_ids.iter().map(|id| id.parse().ok()).collect();
        let mut ids: Vec<Uuid> = requested.iter().flatten().copied().collect();
        ids.sort();
        ids.dedup();
        let named: HashSet<&str> = lead_ids.iter().map(String::as_str).collect();
        let mut expected = HashMap::with_capacity(expected_versions.len());
        for (key, version) in expected_versions {
            if !named.contains(key.as_str()) {
                let key: String = key.chars().take(contracts::values::limits::MAX_ID_CHARS).collect();
                return Err(LeadError::invalid("expected_versions", format!("names {key:?}, which lead_ids does not")));
            }
            if let Ok(id) = key.parse::<Uuid>() {
                expected.insert(id, *version);
            }
        }
        Ok(Self { requested, ids, expected })
    }

    /// Whether a lead found at `version` is one the request expected at another.
    pub fn stale(&self, id: Uuid, version: i64) -> Option<BulkOutcome> {
        self.expected
            .get(&id)
            .filter(|expected| **expected != version)
            .map(|expected| BulkOutcome::VersionMismatch { expected: *expected })
    }
}

/// Changes every active lead of `leads` that is at the version it is expected at (where the
/// request names one); the others are answered, not failed. Results are in request order.
pub async fn bulk_change_status(
    ctx: &LeadContext,
    org_id: &str,
    leads: &BulkLeads,
    to: Status,
    reason: Option<&str>,
    actor: &str,
    visible_to: Option<&str>,
) -> Result<Vec<BulkChange>, LeadError> {
    let mut tx = ctx.pool.begin().await?;
    // Sorted ids and ORDER BY id: two bulk changes over overlapping leads lock in one order.
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, status, version FROM leads \
         WHERE org_id = $1 AND id = ANY($2) AND {VISIBLE_TO} ORDER BY id FOR UPDATE"
    )))
    .bind(org_id)
    .bind(&leads.ids)
    .bind(visible_to)
    .fetch_all(&mut *tx)
    .await?;
    let act = Act::ChangeStatus { to, with_score: false };
    // Decided as a single change is: an inactive lead is refused whatever its version, and a
    // stale one is refused even when it already has the status asked for.
    let mut decided: HashMap<Uuid, BulkChange> = HashMap::with_capacity(rows.len());
    let mut moved: HashMap<Uuid, Status> = HashMap::new();
    for (id, status, version) in rows {
        let outcome = match (lifecycle::decide(Status::try_from(status)?, act), leads.stale(id, version)) {
            (Err(Inactive(status)), _) => BulkOutcome::Inactive(status),
            (Ok(_), Some(stale)) => stale,
            (Ok(Transition::Moves { from, .. }), None) => {
                moved.insert(id, from);
                BulkOutcome::Changed
            }
            (Ok(_), None) => BulkOutcome::Unchanged,
        };
        decided.insert(id, BulkChange { outcome, lead_version: version });
    }
    let to_change: Vec<Uuid> = moved.keys().copied().collect();
    let mut messages = Vec::with_capacity(to_change.len());
    if !to_change.is_empty() {
        let changed: Vec<LeadView> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH changed AS ( \
               UPDATE leads SET status = $2, status_set_by_hand_at = now(), updated_at = now(), version = version + 1 \
               WHERE id = ANY($1) RETURNING * \
             ) SELECT {LEAD_VIEW_COLUMNS} FROM changed l JOIN contacts c ON c.id = l.contact_id"
        )))
        .bind(&to_change)
        .bind(to.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let froms: Vec<&str> = changed.iter().map(|l| moved[&l.id].as_str()).collect();
        let changed_ids: Vec<Uuid> = changed.iter().map(|l| l.id).collect();
        let versions: Vec<i64> = changed.iter().map(|l| l.version).collect();
        sqlx::query(
            "INSERT INTO status_changes (org_id, lead_id, from_status, to_status, actor, reason, lead_version) \
             SELECT $1, id, from_status, $4, $5, $6, version \
             FROM UNNEST($2::uuid[], $3::text[], $7::bigint[]) AS t(id, from_status, version)",
        )
        .bind(org_id)
        .bind(&changed_ids)
        .bind(&froms)
        .bind(to.as_str())
        .bind(actor)
        .bind(reason)
        .bind(&versions)
        .execute(&mut *tx)
        .await?;
        for lead in &changed {
            decided.get_mut(&lead.id).expect("locked above").lead_version = lead.version;
            let change = LeadChange::StatusChanged {
                from: moved[&lead.id].as_str().into(),
                to: to.as_str().into(),
                actor: actor.into(),
                reason: reason.map(Into::into),
                rule: None,
            };
            messages.push(lead_event(&ctx.subjects, lead, change));
        }
    }
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(leads
        .requested
        .iter()
        .map(|id| {
            id.and_then(|id| decided.get(&id).cloned())
                .unwrap_or(BulkChange { outcome: BulkOutcome::NotFound, lead_version: 0 })
        })
        .collect())
}
