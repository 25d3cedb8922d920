//! The envelope every internal event travels in. It names its organisation, has a stable id
//! (the NATS message id, so republishing is harmless) and its aggregate's version, so that a
//! projection can drop repeats and stale events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub id: Uuid,
    pub org_id: String,
    /// The event's type, also the last token of its subject.
    pub kind: String,
    pub aggregate_id: Uuid,
    /// Version of the aggregate after this event; starts at 1 and only grows.
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(org_id: &str, kind: &str, aggregate_id: Uuid, version: i64, data: T) -> Self {
        Self {
            id: Uuid::now_v7(),
            org_id: org_id.to_owned(),
            kind: kind.to_owned(),
            aggregate_id,
            version,
            occurred_at: Utc::now(),
            data,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Reads a message that is one envelope or, when its kind (the subject's last token) is
    /// one of `batch_kinds`, an envelope of envelopes (`outbox::batched`), and appends what it
    /// carries to `out` in order; nothing when it cannot be read.
    pub fn read_into(
        subject: &str,
        payload: &[u8],
        batch_kinds: &[&str],
        out: &mut Vec<Self>,
    ) -> Result<(), serde_json::Error> {
        if subject.rsplit('.').next().is_some_and(|kind| batch_kinds.contains(&kind)) {
            out.extend(Envelope::<Vec<Envelope<T>>>::from_json(payload)?.data);
        } else {
            out.push(Self::from_json(payload)?);
        }
        Ok(())
    }
}
