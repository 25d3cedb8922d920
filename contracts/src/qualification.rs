//! What the qualification service publishes: `events.qualification.<org>.scored`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SCORED: &str = "scored";

/// The payload of `events.qualification.<org>.scored`; the envelope's aggregate is the lead
/// and its version the score's (it only grows, so the lead service applies the newest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub lead_id: Uuid,
    /// 0-100.
    pub score: i32,
    /// The factors behind the score, most important first, each readable by a person.
    pub reasons: Vec<String>,
    pub model_version: String,
    pub scored_at: DateTime<Utc>,
}

/// The kind of the message that carries the `scored` events of one organisation written in
/// one transaction (`platform::outbox::batched`): a scoring batch publishes one message per
/// organisation, not one per lead.
pub const LEADS_SCORED: &str = "leads_scored";

/// Reads a message of `events.qualification.>`: one `scored` event, or a `LEADS_SCORED` batch.
pub fn read_scored(
    subject: &str,
    payload: &[u8],
    out: &mut Vec<crate::Envelope<Scored>>,
) -> Result<(), serde_json::Error> {
    crate::Envelope::read_into(subject, payload, LEADS_SCORED, out)
}
