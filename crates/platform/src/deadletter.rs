//! Nothing silently dropped: what a service cannot process is kept in its `dead_letters` table
//! with the reason, counted, logged, and announced on `deadletter.<service>.<consumer>` with a
//! bounded excerpt (the whole payload stays in the table).

use crate::{
    nats::Subjects,
    outbox::{OutboxMessage, OutboxSignal},
    telemetry::names,
};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

/// How much of a payload an announcement on `deadletter.*` carries.
pub const EXCERPT_BYTES: usize = 16 * 1024;

/// The longest error text a dead letter keeps.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// `error` as a `text` column takes it: without NUL characters (a reader's error may quote the
/// input, and a dead letter that cannot be written would be delivered again forever) and cut
/// at `MAX_ERROR_BYTES` on a character boundary.
fn storable_error(error: &str) -> String {
    let mut end = error.len().min(MAX_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].replace('\0', "\u{fffd}")
}

/// A service's dead letters.
#[derive(Clone)]
pub struct DeadLetters {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub service: &'static str,
    /// Wakes the service's relay, so that an announcement leaves as soon as it is kept.
    pub outbox: OutboxSignal,
}

/// What is kept: where it came from and why it was not handled.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    /// `delivery` (a consumer's message) or `outbox` (an event the relay could not publish).
    pub source: &'a str,
    pub consumer: &'a str,
    pub subject: &'a str,
    /// The stream sequence of a delivery, the outbox row's id of an event.
    pub sequence: i64,
    pub msg_id: Option<&'a str>,
    pub payload: &'a [u8],
    pub error: &'a str,
}

/// What `deadletter.<service>.<consumer>` carries.
#[derive(Debug, Serialize)]
struct Announcement<'a> {
    service: &'a str,
    source: &'a str,
    consumer: &'a str,
    subject: &'a str,
    sequence: i64,
    error: &'a str,
    /// UTF-8 text of the first `EXCERPT_BYTES`, lossy where they are not text.
    payload_excerpt: String,
    payload_bytes: usize,
    kept_in: String,
}

impl DeadLetters {
    /// Keeps a delivery that will not be handled: it failed on every delivery allowed, or it
    /// cannot be read. Keeping it twice is harmless.
    pub async fn keep_delivery(
        &self,
        consumer: &str,
        subject: &str,
        stream_sequence: u64,
        payload: &[u8],
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let kept = Kept {
            source: "delivery",
            consumer,
            subject,
            sequence: stream_sequence as i64,
            msg_id: None,
            payload,
            error,
        };
        let announcement = self.keep(&mut tx, &kept).await?;
        crate::outbox::commit(tx, announcement.as_slice(), &self.outbox).await?;
        tracing::error!(
            service = self.service,
            consumer,
            subject,
            stream_sequence,
            %error,
            "message not handled, kept in dead_letters"
        );
        Ok(())
    }

    /// Moves what cannot be handled into `dead_letters`, in `tx`, and hands back its
    /// announcement for the caller to stage in the same transaction (none when it was kept
    /// before).
    pub async fn keep(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        kept: &Kept<'_>,
    ) -> Result<Option<OutboxMessage>, sqlx::Error> {
        let Kept { source, consumer, subject, sequence, msg_id, payload, error } = *kept;
        let error = storable_error(error);
        let error = error.as_str();
        let inserted = sqlx::query(
            "INSERT INTO dead_letters (source, consumer, subject, sequence, msg_id, error, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(consumer)
        .bind(subject)
        .bind(sequence)
        .bind(msg_id)
        .bind(error)
        .bind(payload)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let announcement = Announcement {
            service: self.service,
            source,
            consumer,
            subject,
            sequence,
            error,
            payload_excerpt: String::from_utf8_lossy(&payload[..payload.len().min(EXCERPT_BYTES)]).into_owned(),
            payload_bytes: payload.len(),
            kept_in: format!("{}.dead_letters", self.service),
        };
        let message = OutboxMessage {
            org_id: String::new(),
            subject: self.subjects.deadletter(&format!("{}.{consumer}", self.service)),
            msg_id: format!("{}:{source}:{consumer}:{sequence}", self.service),
            payload: serde_json::to_vec(&announcement).unwrap_or_default(),
        };
        metrics::counter!(names::DEADLETTER, "service" => self.service, "source" => source.to_owned()).increment(1);
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_stored_without_nul_and_bounded_on_a_character_boundary() {
        assert_eq!(storable_error("unknown variant `a\0b`"), "unknown variant `a\u{fffd}b`");
        let long = "é".repeat(MAX_ERROR_BYTES);
        let stored = storable_error(&long);
        assert!(stored.len() <= MAX_ERROR_BYTES && stored.len() >= MAX_ERROR_BYTES - 1);
        assert!(stored.chars().all(|c| c == 'é'));
    }
}
