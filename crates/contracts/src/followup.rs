//! What the follow-up service publishes: `events.followup.<org>.<state>`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The payload of `events.followup.<org>.<state>` (`due`, `completed`, `cancelled`); the
/// envelope's aggregate is the follow-up and its version the follow-up's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpEvent {
    pub lead_id: Uuid,
    pub contact_id: Uuid,
    pub state: String,
    pub due_at: DateTime<Utc>,
    pub note: Option<String>,
    pub agent_id: Option<String>,
    /// Who moved it to this state.
    pub actor: String,
}
