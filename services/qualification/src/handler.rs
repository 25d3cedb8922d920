//! Keeps every lead's features from the lead service's events and scores the leads whose
//! conversation changed, a batch at a time with a fixed number of statements whatever its
//! size: new interactions are kept once (`scored_interactions`), the batch's leads are locked
//! in one order, `engine::fold` decides, and states, conversations, outcomes and scores are
//! written with one multi-row statement each. A lead's narrow state row follows every lead
//! event; its conversation (features in `qualification_model::stored`'s binary form) is read only for the
//! leads the batch scores or decides and written only when it took new interactions, so the
//! lead's own `score_changed` events cost a narrow update. A burst on one lead is one scoring
//! per batch. Scores go out through the outbox, one `events.qualification.<org>.leads_scored`
//! message per organisation and batch; the lead service applies the newest and keeps a score
//! set by hand over any of them.
//!
//! With a language model (`llm`), no row is locked and no second connection held while it is
//! asked: a batch asks about the conversations it will score before it locks their rows, and
//! uses the answers under the lock where the conversation is still the one asked about, so the
//! model is asked once per batch. A conversation another batch changed in between gets the
//! built-in score in the batch's transaction and is asked about again once that has committed;
//! the answer replaces the built-in score in a short transaction of its own if the conversation
//! is still the one asked about (a later change is the later batch's to score).

use crate::{
    QualificationContext,
    engine::{self, Conversation, Folded, LeadKey, LeadState, RecentMessage, Scoring},
    error::QualificationError,
    llm::{Answers, LlmScorer, Question},
};
use chrono::{DateTime, Utc};
use contracts::{
    Envelope,
    lead::LeadEvent,
    qualification::{LEADS_SCORED, SCORED, Scored},
};
use leads_proto::v1 as pb;
use platform::outbox::OutboxMessage;
use qualification_model::LeadFeatures;
use sqlx::{PgConnection, Postgres, Transaction, types::Json};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// The language model's answers about a batch, asked on its first try and kept for the tries
/// the consumer makes after a transient failure: the model is asked once per batch, not again
/// on each retry of the transaction.
pub type Asked = tokio::sync::OnceCell<Answers>;

/// Applies a batch of lead events in one transaction, which the consumer retries on conflicts
/// (`platform::consumer::apply_decoded`) with the same `asked`.
pub async fn apply_lead_events(
    ctx: &QualificationContext,
    batch: &[Envelope<LeadEvent>],
    asked: &Asked,
) -> Result<(), QualificationError> {
    let asked = match &ctx.llm {
        Some(llm) => Some((llm.as_ref(), asked.get_or_try_init(|| ask_first(ctx, llm, batch)).await?)),
        None => None,
    };
    let changed = try_apply(ctx, batch, asked).await?;
    if let Some((llm, _)) = asked {
        ask_again(ctx, llm, changed).await;
    }
    Ok(())
}

/// Applies the batch in one transaction; answers the conversations to ask the model about
/// again once it has committed (see the module's documentation).
async fn try_apply(
    ctx: &QualificationContext,
    batch: &[Envelope<LeadEvent>],
    asked: Option<(&LlmScorer, &Answers)>,
) -> Result<Vec<Question>, QualificationError> {
    let orgs: Vec<&str> = batch.iter().map(|e| e.org_id.as_str()).collect();
    let mut tx = ctx.pool.begin().await?;
    let fresh = fresh_interactions(&mut tx, batch, true).await?;
    let folded = fold_batch(&mut tx, batch, &fresh, true).await?;
    let scorers = ctx.models.scorers(&mut tx, &orgs).await?;
    write_states(&mut tx, &folded).await?;
    write_conversations(&mut tx, &folded, ctx.llm.is_some()).await?;
    write_outcomes(&mut tx, &folded).await?;
    let now = Utc::now();
    let (mut scored, mut recent) = (Vec::new(), Vec::new());
    for ((org_id, lead_id), lead) in &folded {
        if let Some(conversation) = lead.conversation.as_ref().filter(|_| lead.rescore && lead.state.active) {
            // Every organisation of the batch has its scorer: read above, once its leads were locked.
            let scorer = &scorers[org_id.as_str()];
            scored.push(Scoring::new(org_id, *lead_id, &lead.state, conversation, scorer, now, lead.handed_back));
            recent.push(conversation.recent.as_slice());
        }
    }
    let changed = match asked {
        Some((llm, answers)) => llm.apply(answers, &mut scored, &recent),
        None => Vec::new(),
    };
    let messages = write_scores(ctx, &mut tx, &scored).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    metrics::counter!(platform::telemetry::names::QUALIFICATION_SCORINGS, "service" => "qualification")
        .increment(scored.len() as u64);
    Ok(changed)
}

/// Asks the model, with nothing locked or held, about the conversations that changed between
/// the first question and the lock, and stores its answers where they still apply. The
/// built-in scores those leads got stand if this fails: the batch is done either way.
async fn ask_again(ctx: &QualificationContext, llm: &LlmScorer, questions: Vec<Question>) {
    if questions.is_empty() {
        return;
    }
    let answers = llm.ask(questions).await;
    if let Err(error) = write_answers(ctx, llm, &answers).await {
        tracing::warn!(%error, "language model scores not stored, built-in scores kept");
    }
}

/// Scores the leads of `answers` with the model's answers, in a transaction that locks their
/// rows, where each conversation is still the one the model was asked about.
async fn write_answers(
    ctx: &QualificationContext,
    llm: &LlmScorer,
    answers: &Answers,
) -> Result<(), QualificationError> {
    let mut keys: Vec<LeadKey> = answers.leads().cloned().collect();
    keys.sort();
    let orgs: Vec<&str> = keys.iter().map(|(org_id, _)| org_id.as_str()).collect();
    let mut tx = ctx.pool.begin().await?;
    let states = read_states(&mut tx, &keys, true).await?;
    let conversations = read_conversations(&mut tx, &keys).await?;
    let scorers = ctx.models.scorers(&mut tx, &orgs).await?;
    let now = Utc::now();
    let (mut scored, mut recent) = (Vec::new(), Vec::new());
    for (key, conversation) in &conversations {
        let (Some(state), Some(scorer)) = (states.get(key), scorers.get(&key.0)) else { continue };
        if state.active && state.manual_score.is_none() && answers.asked_about(key) == Some(&conversation.recent) {
            scored.push(Scoring::new(&key.0, key.1, state, conversation, scorer, now, false));
            recent.push(conversation.recent.as_slice());
        }
    }
    llm.apply(answers, &mut scored, &recent);
    let messages = write_scores(ctx, &mut tx, &scored).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    Ok(())
}

/// Puts to the language model the conversations the batch would score, read without locking
/// anything and with the connection given back before the model is asked, so that no lead's
/// row waits on the model.
async fn ask_first(
    ctx: &QualificationContext,
    llm: &LlmScorer,
    batch: &[Envelope<LeadEvent>],
) -> Result<Answers, QualificationError> {
    let questions: Vec<(LeadKey, Vec<RecentMessage>)> = {
        let mut conn = ctx.pool.acquire().await?;
        let fresh = fresh_interactions(&mut conn, batch, false).await?;
        let folded = fold_batch(&mut conn, batch, &fresh, false).await?;
        folded
            .into_iter()
            .filter(|(_, lead)| lead.rescore && lead.state.active && lead.state.manual_score.is_none())
            .filter_map(|(key, lead)| Some((key, lead.conversation?.recent)))
            .collect()
    };
    Ok(llm.ask(questions).await)
}

/// The batch folded onto its leads' stored states (their rows locked in key order when
/// `lock`), with the conversations of the leads it scores or decides read and brought up to
/// date. `fresh` holds the interactions seen for the first time.
async fn fold_batch<'a>(
    conn: &mut PgConnection,
    batch: &'a [Envelope<LeadEvent>],
    fresh: &HashSet<(String, String)>,
    lock: bool,
) -> Result<BTreeMap<LeadKey, Folded<'a>>, QualificationError> {
    let mut keys: Vec<LeadKey> = batch.iter().map(|e| (e.org_id.clone(), e.data.lead.id)).collect();
    keys.sort();
    keys.dedup();
    let stored = read_states(conn, &keys, lock).await?;
    let mut folded = engine::fold(batch, &stored, |org, event| fresh.contains(&(org.to_owned(), event.to_owned())));
    let wanted: Vec<LeadKey> = folded.iter().filter(|(_, f)| f.needs_conversation()).map(|(k, _)| k.clone()).collect();
    let mut conversations = read_conversations(conn, &wanted).await?;
    for key in &wanted {
        if let Some(lead) = folded.get_mut(key) {
            lead.observe(conversations.remove(key).unwrap_or_default());
        }
    }
    Ok(folded)
}

/// The batch's interactions, as organisation and event id arrays.
fn interaction_ids(batch: &[Envelope<LeadEvent>]) -> (Vec<&str>, Vec<&str>) {
    batch
        .iter()
        .filter_map(|envelope| match &envelope.data.change {
            contracts::lead::LeadChange::Created { interaction }
            | contracts::lead::LeadChange::InteractionRecorded { interaction } => {
                Some((envelope.org_id.as_str(), interaction.event_id.as_str()))
            }
            _ => None,
        })
        .unzip()
}

/// The batch's interactions seen for the first time, by event id. With `record` they are
/// recorded, so that a redelivery finds them seen; without, nothing is written.
async fn fresh_interactions(
    conn: &mut PgConnection,
    batch: &[Envelope<LeadEvent>],
    record: bool,
) -> Result<HashSet<(String, String)>, QualificationError> {
    let (orgs, events) = interaction_ids(batch);
    if orgs.is_empty() {
        return Ok(HashSet::new());
    }
    let query = if record {
        "INSERT INTO scored_interactions (org_id, event_id) SELECT * FROM UNNEST($1::text[], $2::text[]) \
         ON CONFLICT DO NOTHING RETURNING org_id, event_id"
    } else {
        "SELECT k.org_id, k.event_id FROM UNNEST($1::text[], $2::text[]) AS k(org_id, event_id) \
         WHERE NOT EXISTS (SELECT 1 FROM scored_interactions s WHERE s.org_id = k.org_id AND s.event_id = k.event_id)"
    };
    let fresh: Vec<(String, String)> = sqlx::query_as(query).bind(&orgs).bind(&events).fetch_all(conn).await?;
    Ok(fresh.into_iter().collect())
}

/// Reads the leads' stored states. With `lock`, first creates the rows of new leads and locks
/// them all in key order, so that concurrent batches, in this process or another, take them
/// one after the other without deadlock.
async fn read_states(
    conn: &mut PgConnection,
    keys: &[LeadKey],
    lock: bool,
) -> Result<BTreeMap<LeadKey, LeadState>, QualificationError> {
    let orgs: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    if lock {
        sqlx::query(
            "INSERT INTO lead_state (org_id, lead_id) SELECT * FROM UNNEST($1::text[], $2::uuid[]) \
             ORDER BY 1, 2 ON CONFLICT DO NOTHING",
        )
        .bind(&orgs)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    }
    let query = if lock {
        "SELECT s.org_id, s.lead_id, s.lead_version, s.active, s.manual_score FROM lead_state s \
         JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) USING (org_id, lead_id) \
         ORDER BY s.org_id, s.lead_id FOR UPDATE OF s"
    } else {
        "SELECT s.org_id, s.lead_id, s.lead_version, s.active, s.manual_score FROM lead_state s \
         JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) USING (org_id, lead_id)"
    };
    let rows: Vec<(String, Uuid, i64, bool, Option<i32>)> =
        sqlx::query_as(query).bind(&orgs).bind(&ids).fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(org, id, lead_version, active, manual_score)| {
            ((org, id), LeadState { lead_version, active, manual_score })
        })
        .collect())
}

type ConversationRow = (String, Uuid, Vec<u8>, Option<Json<Vec<RecentMessage>>>);

/// Reads the leads' conversations.
async fn read_conversations(
    conn: &mut PgConnection,
    keys: &[LeadKey],
) -> Result<BTreeMap<LeadKey, Conversation>, QualificationError> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let orgs: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    let rows: Vec<ConversationRow> = sqlx::query_as(
        "SELECT f.org_id, f.lead_id, f.features, f.recent_messages FROM lead_features f \
         JOIN UNNEST($1::text[], $2::uuid[]) AS k(org_id, lead_id) USING (org_id, lead_id)",
    )
    .bind(&orgs)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(org, id, features, recent)| {
            let features = engine::stored_features(&features)
                .map_err(|e| QualificationError::Unreadable(format!("features of lead {id}: {e}")))?;
            Ok(((org, id), Conversation { features, recent: recent.map(|r| r.0).unwrap_or_default() }))
        })
        .collect()
}

/// Writes the states the batch made newer.
async fn write_states(
    tx: &mut Transaction<'_, Postgres>,
    folded: &BTreeMap<LeadKey, Folded<'_>>,
) -> Result<(), QualificationError> {
    let changed: Vec<(&LeadKey, &LeadState)> =
        folded.iter().filter(|(_, f)| f.state_changed).map(|(k, f)| (k, &f.state)).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let orgs: Vec<&str> = changed.iter().map(|c| c.0.0.as_str()).collect();
    let ids: Vec<Uuid> = changed.iter().map(|c| c.0.1).collect();
    let versions: Vec<i64> = changed.iter().map(|c| c.1.lead_version).collect();
    let active: Vec<bool> = changed.iter().map(|c| c.1.active).collect();
    let manual: Vec<Option<i32>> = changed.iter().map(|c| c.1.manual_score).collect();
    sqlx::query(
        "UPDATE lead_state s SET lead_version = u.lead_version, active = u.active, manual_score = u.manual_score, \
           updated_at = now() \
         FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::bool[], $5::int[]) \
           AS u(org_id, lead_id, lead_version, active, manual_score) \
         WHERE s.org_id = u.org_id AND s.lead_id = u.lead_id",
    )
    .bind(&orgs)
    .bind(&ids)
    .bind(&versions)
    .bind(&active)
    .bind(&manual)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the conversations that took new interactions; the latest messages only when
/// `keep_text` (a language model scores).
async fn write_conversations(
    tx: &mut Transaction<'_, Postgres>,
    folded: &BTreeMap<LeadKey, Folded<'_>>,
    keep_text: bool,
) -> Result<(), QualificationError> {
    let observed: Vec<(&LeadKey, &Conversation)> =
        folded.iter().filter(|(_, f)| f.observed).filter_map(|(k, f)| Some((k, f.conversation.as_ref()?))).collect();
    if observed.is_empty() {
        return Ok(());
    }
    let orgs: Vec<&str> = observed.iter().map(|o| o.0.0.as_str()).collect();
    let ids: Vec<Uuid> = observed.iter().map(|o| o.0.1).collect();
    let features: Vec<Vec<u8>> = observed.iter().map(|o| o.1.features.to_bytes()).collect();
    let recent: Vec<Option<Json<&Vec<RecentMessage>>>> =
        observed.iter().map(|o| (keep_text && !o.1.recent.is_empty()).then_some(Json(&o.1.recent))).collect();
    sqlx::query(
        "INSERT INTO lead_features AS f (org_id, lead_id, features, recent_messages) \
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bytea[], $4::jsonb[]) \
         ON CONFLICT (org_id, lead_id) DO UPDATE SET features = EXCLUDED.features, \
           recent_messages = EXCLUDED.recent_messages",
    )
    .bind(&orgs)
    .bind(&ids)
    .bind(&features)
    .bind(&recent)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_outcomes(
    tx: &mut Transaction<'_, Postgres>,
    folded: &BTreeMap<LeadKey, Folded<'_>>,
) -> Result<(), QualificationError> {
    let decided: Vec<(&LeadKey, &Folded)> = folded.iter().filter(|(_, f)| f.outcome.is_some()).collect();
    if decided.is_empty() {
        return Ok(());
    }
    let outcome = |f: &Folded| f.outcome.unwrap_or((false, Utc::now()));
    let orgs: Vec<&str> = decided.iter().map(|d| d.0.0.as_str()).collect();
    let ids: Vec<Uuid> = decided.iter().map(|d| d.0.1).collect();
    let converted: Vec<bool> = decided.iter().map(|d| outcome(d.1).0).collect();
    let at: Vec<DateTime<Utc>> = decided.iter().map(|d| outcome(d.1).1).collect();
    let empty = LeadFeatures::default();
    let features: Vec<Json<&LeadFeatures>> =
        decided.iter().map(|d| Json(d.1.conversation.as_ref().map_or(&empty, |c| &c.features))).collect();
    sqlx::query(
        "INSERT INTO outcomes (org_id, lead_id, converted, decided_at, features) \
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bool[], $4::timestamptz[], $5::jsonb[]) \
         ON CONFLICT (org_id, lead_id) DO UPDATE SET converted = EXCLUDED.converted, \
           decided_at = EXCLUDED.decided_at, features = EXCLUDED.features",
    )
    .bind(&orgs)
    .bind(&ids)
    .bind(&converted)
    .bind(&at)
    .bind(&features)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores the scores. A score whose value or reasons changed (or that is forced: a
/// requalification, a hand-back) gets the next version and, unless the lead's score was set by
/// hand, its event; an unchanged one is recorded as checked, with the model that checked it
/// and when it is due again, and publishes nothing.
pub async fn write_scores(
    ctx: &QualificationContext,
    tx: &mut Transaction<'_, Postgres>,
    scored: &[Scoring],
) -> Result<Vec<OutboxMessage>, QualificationError> {
    let mut written: Vec<(String, Uuid, i64, bool)> = Vec::new();
    for forced in [false, true] {
        let part: Vec<&Scoring> = scored.iter().filter(|s| s.force == forced).collect();
        if part.is_empty() {
            continue;
        }
        let orgs: Vec<&str> = part.iter().map(|s| s.org_id.as_str()).collect();
        let ids: Vec<Uuid> = part.iter().map(|s| s.lead_id).collect();
        let scores: Vec<i32> = part.iter().map(|s| s.score).collect();
        let reasons: Vec<Json<&Vec<String>>> = part.iter().map(|s| Json(&s.reasons)).collect();
        let versions: Vec<&str> = part.iter().map(|s| s.model_version.as_str()).collect();
        let refresh_at: Vec<Option<DateTime<Utc>>> = part.iter().map(|s| s.refresh_at).collect();
        // Every part of the statement sees the rows as they were before it: `before` is the
        // stored score the new one is compared with.
        let rows: Vec<(String, Uuid, i64, bool)> = sqlx::query_as(
            "WITH u AS ( \
               SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int[], $4::jsonb[], $5::text[], $6::timestamptz[]) \
                 AS u(org_id, lead_id, score, reasons, model_version, refresh_at)), \
             before AS (SELECT s.org_id, s.lead_id, s.score, s.reasons FROM scores s JOIN u USING (org_id, lead_id)), \
             written AS ( \
               INSERT INTO scores AS s (org_id, lead_id, score, reasons, model_version, version, checked_at, refresh_at) \
               SELECT org_id, lead_id, score, reasons, model_version, 1, now(), refresh_at FROM u \
               ON CONFLICT (org_id, lead_id) DO UPDATE SET score = EXCLUDED.score, reasons = EXCLUDED.reasons, \
                 model_version = EXCLUDED.model_version, checked_at = now(), refresh_at = EXCLUDED.refresh_at, \
                 version = s.version \
                   + CASE WHEN $7 OR s.score <> EXCLUDED.score OR s.reasons <> EXCLUDED.reasons THEN 1 ELSE 0 END, \
                 scored_at = CASE WHEN $7 OR s.score <> EXCLUDED.score OR s.reasons <> EXCLUDED.reasons \
                   THEN now() ELSE s.scored_at END \
               RETURNING org_id, lead_id, version, score, reasons) \
             SELECT w.org_id, w.lead_id, w.version, \
               (b.lead_id IS NULL OR $7 OR b.score <> w.score OR b.reasons <> w.reasons) \
             FROM written w LEFT JOIN before b USING (org_id, lead_id)",
        )
        .bind(&orgs)
        .bind(&ids)
        .bind(&scores)
        .bind(&reasons)
        .bind(&versions)
        .bind(&refresh_at)
        .bind(forced)
        .fetch_all(&mut **tx)
        .await?;
        written.extend(rows);
    }
    let by_key: BTreeMap<(&str, Uuid), &Scoring> = scored.iter().map(|s| ((s.org_id.as_str(), s.lead_id), s)).collect();
    let now = Utc::now();
    let events: Vec<(&str, Envelope<Scored>)> = written
        .iter()
        .filter(|(_, _, _, changed)| *changed)
        .filter_map(|(org_id, lead_id, version, _)| {
            let scoring = by_key.get(&(org_id.as_str(), *lead_id))?;
            (!scoring.manual).then(|| {
                let data = Scored {
                    lead_id: *lead_id,
                    score: scoring.score,
                    reasons: scoring.reasons.clone(),
                    model_version: scoring.model_version.clone(),
                    scored_at: now,
                };
                (org_id.as_str(), Envelope::new(org_id, SCORED, *lead_id, *version, data))
            })
        })
        .collect();
    Ok(platform::outbox::batched_by_org(events, LEADS_SCORED, |org_id| {
        ctx.subjects.event("qualification", org_id, LEADS_SCORED)
    }))
}

/// Scores one lead now (`Requalify`): refused for an inactive lead, answered with the hand-set
/// score for a lead whose score was set by hand. A language model is asked before the lead's
/// row is locked, and again after the commit if the conversation changed meanwhile, as for a
/// batch.
pub async fn requalify(ctx: &QualificationContext, org_id: &str, lead_id: Uuid) -> Result<(), QualificationError> {
    ensure_active(ctx, org_id, lead_id).await?;
    let key = (org_id.to_owned(), lead_id);
    let asked = match &ctx.llm {
        Some(llm) => {
            let (state, conversation) = lead_conversation(&mut *ctx.pool.acquire().await?, &key, false).await?;
            let question = state.manual_score.is_none().then(|| (key.clone(), conversation.recent));
            Some((llm.as_ref(), llm.ask(question.into_iter().collect()).await))
        }
        None => None,
    };
    let mut tx = ctx.pool.begin().await?;
    let (state, conversation) = lead_conversation(&mut tx, &key, true).await?;
    let scorer = ctx.models.scorer(&mut tx, org_id).await?;
    let mut scoring = [Scoring::new(org_id, lead_id, &state, &conversation, &scorer, Utc::now(), true)];
    let changed = match &asked {
        Some((llm, answers)) => llm.apply(answers, &mut scoring, &[conversation.recent.as_slice()]),
        None => Vec::new(),
    };
    let messages = write_scores(ctx, &mut tx, &scoring).await?;
    platform::outbox::commit(tx, &messages, &ctx.outbox).await?;
    if let Some((llm, _)) = asked {
        ask_again(ctx, llm, changed).await;
    }
    Ok(())
}

/// Asks the lead service, the one authority on a lead's status, whether the lead is still
/// active: this service's projection of it may not have caught up with a close yet.
async fn ensure_active(ctx: &QualificationContext, org_id: &str, lead_id: Uuid) -> Result<(), QualificationError> {
    let request = pb::GetLeadRequest { org_id: org_id.to_owned(), lead_id: lead_id.to_string() };
    let lead = ctx.lead.clone().get_lead(request).await?.into_inner();
    if lead.active {
        return Ok(());
    }
    let status = pb::LeadStatus::try_from(lead.status).map_or("LEAD_STATUS_UNSPECIFIED", |s| s.as_str_name());
    Err(QualificationError::LeadInactive { lead_id: lead_id.to_string(), status: status.to_owned() })
}

/// One lead's state (its row locked when `lock`) and conversation: not found unless the lead
/// service has told of it, refused when it is inactive.
async fn lead_conversation(
    conn: &mut PgConnection,
    key: &LeadKey,
    lock: bool,
) -> Result<(LeadState, Conversation), QualificationError> {
    let state = match read_states(conn, std::slice::from_ref(key), lock).await?.get(key) {
        Some(state) if state.lead_version > 0 => *state,
        _ => return Err(QualificationError::NotFound(key.1.to_string())),
    };
    if !state.active {
        return Err(QualificationError::Inactive(key.1.to_string()));
    }
    let conversation = read_conversations(conn, std::slice::from_ref(key)).await?.remove(key).unwrap_or_default();
    Ok((state, conversation))
}
