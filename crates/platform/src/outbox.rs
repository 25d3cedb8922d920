//! The transactional outbox. A service writes the events it publishes into its own
//! `outbox` table in the transaction that changes its state; the relay publishes them to
//! JetStream with their id as `Nats-Msg-Id` and deletes them once the server has them.
//! A crash between publish and delete publishes again, which the stream's duplicate window
//! and idempotent consumers absorb. Services end a transaction that emits events with
//! `commit`, which stages them, commits and wakes the relay.

use async_nats::{HeaderMap, jetstream};
use sqlx::{PgPool, Postgres, Transaction};
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// An event waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub org_id: String,
    pub subject: String,
    pub msg_id: String,
    pub payload: Vec<u8>,
}

/// At most this many items travel in one batched message...
pub const MAX_ITEMS_PER_MESSAGE: usize = 100;
/// ...and at most this many bytes of them, well under NATS's default 1 MiB payload limit.
pub const MAX_ITEM_BYTES_PER_MESSAGE: usize = 256 * 1024;

/// Packs `items` of one organisation, in order, into as few messages of kind `kind` on
/// `subject` as the limits above allow: each an envelope whose data is an array of items.
/// One message per item costs a JetStream write, a delivery, an ack and an outbox row each;
/// at thousands of items a second that was a third of a pipeline's work. A batch is its own
/// aggregate (version 1); the items inside keep their own identities.
pub fn batched<T: serde::Serialize>(org_id: &str, subject: &str, kind: &str, items: &[T]) -> Vec<OutboxMessage> {
    let mut messages = Vec::new();
    let mut data: Vec<Box<serde_json::value::RawValue>> = Vec::new();
    let mut bytes = 0;
    let mut flush = |data: &mut Vec<_>| {
        let envelope = contracts::Envelope::new(org_id, kind, uuid::Uuid::now_v7(), 1, std::mem::take(data));
        messages.push(OutboxMessage {
            org_id: org_id.to_owned(),
            subject: subject.to_owned(),
            msg_id: envelope.id.to_string(),
            payload: envelope.to_json(),
        });
    };
    for item in items {
        // Event types are plain structs with string-keyed maps: serialising cannot fail.
        let json = serde_json::value::to_raw_value(item).expect("events serialise to JSON");
        if !data.is_empty()
            && (data.len() == MAX_ITEMS_PER_MESSAGE || bytes + json.get().len() > MAX_ITEM_BYTES_PER_MESSAGE)
        {
            flush(&mut data);
            bytes = 0;
        }
        bytes += json.get().len();
        data.push(json);
    }
    if !data.is_empty() {
        flush(&mut data);
    }
    messages
}

/// `batched` for the items of several organisations, each tagged with its own: grouped by
/// organisation (in the order each first appears, items in their order) and packed on
/// `subject(org_id)`.
pub fn batched_by_org<'a, T: serde::Serialize>(
    items: impl IntoIterator<Item = (&'a str, T)>,
    kind: &str,
    subject: impl Fn(&str) -> String,
) -> Vec<OutboxMessage> {
    let mut groups: Vec<(&str, Vec<T>)> = Vec::new();
    for (org_id, item) in items {
        match groups.iter_mut().find(|(org, _)| *org == org_id) {
            Some((_, group)) => group.push(item),
            None => groups.push((org_id, vec![item])),
        }
    }
    groups.iter().flat_map(|(org_id, group)| batched(org_id, &subject(org_id), kind, group)).collect()
}

/// Stages `messages` in the outbox, commits `tx` with them and the changes they announce, and
/// wakes the relay when there are any, so that they leave at once rather than at its next poll.
pub async fn commit(
    mut tx: Transaction<'_, Postgres>,
    messages: &[OutboxMessage],
    signal: &OutboxSignal,
) -> Result<(), sqlx::Error> {
    enqueue(&mut tx, messages).await?;
    tx.commit().await?;
    if !messages.is_empty() {
        signal.notify();
    }
    Ok(())
}

/// Adds messages to the outbox inside the caller's transaction, for a transaction that another
/// function commits (`commit` does both).
pub async fn enqueue(tx: &mut Transaction<'_, Postgres>, messages: &[OutboxMessage]) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let traceparent = crate::telemetry::current_traceparent();
    let mut orgs = Vec::with_capacity(messages.len());
    let mut subjects = Vec::with_capacity(messages.len());
    let mut ids = Vec::with_capacity(messages.len());
    let mut payloads = Vec::with_capacity(messages.len());
    for message in messages {
        orgs.push(message.org_id.as_str());
        subjects.push(message.subject.as_str());
        ids.push(message.msg_id.as_str());
        payloads.push(message.payload.as_slice());
    }
    sqlx::query(
        "INSERT INTO outbox (org_id, subject, msg_id, payload, traceparent) \
         SELECT o, s, m, p, $5 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[]) AS t(o, s, m, p)",
    )
    .bind(&orgs)
    .bind(&subjects)
    .bind(&ids)
    .bind(&payloads)
    .bind(traceparent)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Wakes the relay after a commit (`commit`) so that events leave at once rather than at the
/// next poll.
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    fn notify(&self) {
        self.0.notify_one();
    }
}

/// Publishes the outbox until `token` is cancelled, then drains what is committed.
/// `service` labels its metrics.
pub async fn relay(
    pool: PgPool,
    js: jetstream::Context,
    max_payload: usize,
    dead_letters: crate::deadletter::DeadLetters,
    signal: OutboxSignal,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let poll = Duration::from_millis(200);
    loop {
        match publish_batch(&pool, &js, max_payload, &dead_letters).await {
            // Rows were left behind, or the process is draining: the next round at once.
            Ok(round) if round.more || (round.sent > 0 && token.is_cancelled()) => {}
            // A round that took every row there was waits for the next commit's signal (kept
            // when it came meanwhile) rather than asking again, which at hundreds of commits a
            // second was an empty transaction after nearly every round.
            Ok(_) => {
                if token.is_cancelled() {
                    break;
                }
                tokio::select! {
                    () = signal.0.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                    () = token.cancelled() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay failed, retrying");
                if token.is_cancelled() {
                    break;
                }
                tokio::time::sleep(poll).await;
            }
        }
    }
    Ok(())
}

/// How many events wait in the outbox and how old the oldest is, in seconds (0 when empty).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - \
           (SELECT created_at FROM outbox ORDER BY id LIMIT 1))::float8, 0) FROM outbox",
    )
    .fetch_one(pool)
    .await
}

/// Samples the outbox's backlog and the pool's connections into their gauges every
/// `every` until `token` is cancelled, the first time at once.
pub async fn sample_backlog(pool: PgPool, service: &'static str, every: Duration, token: CancellationToken) {
    use crate::telemetry::names;
    loop {
        // Before the query below, which holds a connection of its own for a moment.
        let size = pool.size();
        let in_use = size.saturating_sub(pool.num_idle() as u32);
        metrics::gauge!(names::DB_POOL_IN_USE, "service" => service).set(f64::from(in_use));
        metrics::gauge!(names::DB_POOL_SIZE, "service" => service).set(f64::from(size));
        match backlog(&pool).await {
            Ok((count, age)) => {
                metrics::gauge!(names::OUTBOX_BACKLOG, "service" => service).set(count as f64);
                metrics::gauge!(names::OUTBOX_OLDEST_AGE, "service" => service).set(age.max(0.0));
            }
            Err(error) => tracing::debug!(%error, "cannot sample the outbox backlog"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

const RELAY_BATCH: i64 = 1000;
/// Payload bytes per relay round, so that rows carrying batches of events do not add up to
/// hundreds of megabytes in memory. A first row larger than this still goes alone.
const RELAY_BATCH_BYTES: i64 = 8 * 1024 * 1024;

/// id, subject, msg_id, payload, traceparent, rows locked in the round
type PendingRow = (i64, String, String, Vec<u8>, Option<String>, i64);

/// What one round of the relay did.
struct Round {
    /// Rows published or kept as dead letters.
    sent: usize,
    /// Rows were left for the next round (the batch's row or byte limit), or may have been.
    more: bool,
}

/// Room left in a NATS message for the headers the relay adds.
const HEADER_ROOM: usize = 1024;

async fn publish_batch(
    pool: &PgPool,
    js: &jetstream::Context,
    max_payload: usize,
    dead_letters: &crate::deadletter::DeadLetters,
) -> anyhow::Result<Round> {
    let service = dead_letters.service;
    let mut tx = pool.begin().await?;
    // The rows past the byte budget stay locked, unread (a toasted payload is read only when
    // sent) and unpublished until the next round.
    let rows: Vec<PendingRow> = sqlx::query_as(
        "WITH locked AS ( \
           SELECT id, subject, msg_id, payload, traceparent, octet_length(payload) AS size FROM outbox \
           ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED), \
         sized AS (SELECT *, sum(size) OVER (ORDER BY id) - size AS before, count(*) OVER () AS locked FROM locked) \
         SELECT id, subject, msg_id, payload, traceparent, locked FROM sized WHERE before < $2 ORDER BY id",
    )
    .bind(RELAY_BATCH)
    .bind(RELAY_BATCH_BYTES)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Round { sent: 0, more: false });
    }
    let locked = rows[0].5;
    let more = locked > rows.len() as i64 || locked >= RELAY_BATCH;
    let mut acks = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut quarantined = 0;
    for (id, subject, msg_id, payload, traceparent, _) in rows {
        // NATS would refuse it on every try, and every event behind it, of every
        // organisation, would wait: it goes to the dead letters instead.
        if payload.len() + HEADER_ROOM > max_payload {
            let error = format!(
                "event of {} bytes is larger than the NATS server's max_payload of {max_payload} bytes",
                payload.len()
            );
            let kept = crate::deadletter::Kept {
                source: "outbox",
                consumer: service,
                subject: &subject,
                sequence: id,
                msg_id: Some(&msg_id),
                payload: &payload,
                error: &error,
            };
            // Staged in this round's transaction; the relay's next round publishes it.
            if let Some(announcement) = dead_letters.keep(&mut tx, &kept).await? {
                enqueue(&mut tx, std::slice::from_ref(&announcement)).await?;
            }
            tracing::error!(service, %subject, %msg_id, bytes = payload.len(), "outbox event too large for NATS, kept in dead_letters");
            ids.push(id);
            quarantined += 1;
            continue;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Content-Type", "application/json");
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent", traceparent.as_str());
        }
        acks.push(js.publish_with_headers(subject, headers, payload.into()).await?);
        ids.push(id);
    }
    for ack in acks {
        ack.await?;
    }
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await?;
    tx.commit().await?;
    metrics::counter!(crate::telemetry::names::OUTBOX_PUBLISHED, "service" => service)
        .increment((ids.len() - quarantined) as u64);
    // A row kept as a dead letter staged its announcement in the outbox.
    Ok(Round { sent: ids.len(), more: more || quarantined > 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::Envelope;

    #[test]
    fn batched_events_read_back_in_order_within_the_limits() {
        let small: Vec<Envelope<String>> =
            (0..250).map(|n| Envelope::new("acme", "noted", uuid::Uuid::now_v7(), n, format!("event {n}"))).collect();
        let large: Vec<Envelope<String>> =
            (0..5).map(|n| Envelope::new("acme", "noted", uuid::Uuid::now_v7(), n, "x".repeat(100_000))).collect();
        for events in [small, large] {
            let messages = batched("acme", "events.test.acme.noted_batch", "noted_batch", &events);
            let mut read = Vec::new();
            for message in &messages {
                let mut items = Vec::new();
                Envelope::read_into(&message.subject, &message.payload, &["noted_batch"], &mut items)
                    .expect("readable");
                assert!(items.len() <= MAX_ITEMS_PER_MESSAGE);
                assert!(items.len() == 1 || message.payload.len() <= MAX_ITEM_BYTES_PER_MESSAGE + 1024);
                read.extend(items);
            }
            assert_eq!(read, events);
            assert!(messages.len() > 1);
        }
        // Several organisations: one group each, in order of first appearance, items in order.
        let tagged = [("b", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)];
        let messages = batched_by_org(tagged, "noted_batch", |org| format!("events.test.{org}.noted_batch"));
        let groups: Vec<(String, String, Vec<i32>)> = messages
            .iter()
            .map(|m| {
                let envelope = Envelope::<Vec<i32>>::from_json(&m.payload).expect("readable");
                (m.subject.clone(), envelope.org_id, envelope.data)
            })
            .collect();
        let expected = [("b", vec![1, 3]), ("a", vec![2, 4]), ("c", vec![5])]
            .map(|(org, data)| (format!("events.test.{org}.noted_batch"), org.to_owned(), data));
        assert_eq!(groups, expected);
        // A message of another kind on the same stream is one event.
        let single = Envelope::new("acme", "noted", uuid::Uuid::now_v7(), 7, "alone".to_owned());
        let mut read = Vec::new();
        Envelope::read_into("events.test.acme.noted", &single.to_json(), &["noted_batch"], &mut read)
            .expect("readable");
        assert_eq!(read, [single]);
    }
}
