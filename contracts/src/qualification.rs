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
