//! What the follow-up service publishes: `events.followup.<org>.<state>`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload of `events.followup.<org>.<kind>`: a state the follow-up moved to (`due`,
/// `completed`, `cancelled`) or a change that kept its state (`rescheduled`, `edited`,
/// `reassigned`); the envelope's aggregate is the follow-up and its version the follow-up's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpEvent {
    /// The lead the follow-up was opened from.
    pub lead_id: Uuid,
    /// The lead's contact, whom the follow-up is about.
    pub contact_id: Uuid,
    /// The follow-up's state after the event: for `due`, `completed` and `cancelled` the same
    /// as the envelope's kind, else `pending` or `due`.
    pub state: String,
    /// When the agent is to act.
    pub due_at: DateTime<Utc>,
    /// What to do, at most `values::MAX_NOTE_CHARS` characters; absent when none was given.
    pub note: Option<String>,
    /// The agent who is to act; absent when neither the request nor the lead named one.
    pub agent_id: Option<String>,
    /// Who moved it to this state: `system` for the scheduler and for a follow-up cancelled
    /// because its lead closed, otherwise the caller as recorded (`alice (Alice Smith)`).
    pub actor: String,
    /// The contact's name, as the lead had it when the follow-up was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    /// The contact's phone in E.164, as the lead had it when the follow-up was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}
