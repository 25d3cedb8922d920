//! The envelope every internal event travels in. It names its organisation, has a stable id
//! (the NATS message id, so republishing is harmless) and its aggregate's version, so that a
//! projection can drop repeats and stale events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// One internal event, in JSON `{id, org_id, kind, aggregate_id, version, occurred_at, data}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    /// Unique per event (a UUIDv7) and sent as its `Nats-Msg-Id`: a republished copy has the
    /// same one, which is how consumers and the stream's duplicate window recognise it.
    pub id: Uuid,
    /// The organisation the event belongs to, as in its subject (`[A-Za-z0-9_-]{1,64}`).
    pub org_id: String,
    /// The event's type, also the last token of its subject.
    pub kind: String,
    /// What changed: a lead, a follow-up, a scored lead; a batch is its own aggregate.
    pub aggregate_id: Uuid,
    /// Version of the aggregate after this event; starts at 1 and only grows (a batch's is 1).
    pub version: i64,
    /// When the event was written, in RFC 3339 UTC.
    pub occurred_at: DateTime<Utc>,
    /// The payload: one of this crate's event types, or for a batch the array of envelopes.
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    /// An event of `kind` occurring now, with a fresh id.
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

    /// The JSON published on NATS; empty when `data` cannot be serialized (a map with
    /// non-string keys), which no payload of this crate has.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Reads one envelope; an enum name this version does not know is an error, as is a
    /// missing field that is not optional.
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
