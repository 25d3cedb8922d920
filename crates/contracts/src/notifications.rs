//! What the platform tells the systems around it (CONTRACT.md section 3): one message per
//! notification or lifecycle event, `{id, type, org_id, occurred_at, data}`, published on
//! `notifications.<org>.agents.<agent_key>` or `notifications.<org>.admins` and delivered to
//! webhook endpoints with the same `id` as `webhook-id`.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lead was assigned to the agent.
pub const LEAD_ASSIGNED: &str = "lead.assigned";
/// A follow-up of the agent's is due soon.
pub const FOLLOWUP_REMINDER: &str = "followup.reminder";
/// A follow-up of the agent's is due.
pub const FOLLOWUP_DUE: &str = "followup.due";
/// A follow-up is still open a while after it was due; also told to the admins.
pub const FOLLOWUP_OVERDUE: &str = "followup.overdue";
/// The platform stopped delivering to a webhook endpoint (it answered 410, or failed for days).
pub const WEBHOOK_ENDPOINT_DISABLED: &str = "webhook.endpoint_disabled";
/// A contact's first interaction opened a lead (webhooks only).
pub const LEAD_CREATED: &str = "lead.created";
/// A lead's status moved (webhooks only).
pub const LEAD_STATUS_CHANGED: &str = "lead.status_changed";
/// A lead's score was set, changed or handed back (webhooks only).
pub const LEAD_SCORED: &str = "lead.scored";

/// Every type a webhook endpoint may subscribe to, in the order the documentation lists them.
pub const EVENT_TYPES: [&str; 8] = [
    LEAD_CREATED,
    LEAD_STATUS_CHANGED,
    LEAD_ASSIGNED,
    LEAD_SCORED,
    FOLLOWUP_REMINDER,
    FOLLOWUP_DUE,
    FOLLOWUP_OVERDUE,
    WEBHOOK_ENDPOINT_DISABLED,
];

/// One message out, as JSON on NATS and as a webhook's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// `ntf_` and a UUID: the same on every redelivery, on NATS and in `webhook-id`.
    pub id: String,
    /// One of `EVENT_TYPES`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The organisation it is about.
    pub org_id: String,
    /// When what it tells happened.
    pub occurred_at: DateTime<Utc>,
    /// What it tells; for agents' and admins' notifications at least `agent_id`, `lead_id` and
    /// the contact, for follow-ups also `follow_up_id`, `due_at` and `note`.
    pub data: serde_json::Value,
}

/// The subject token of an agent: the id itself where it is `[A-Za-z0-9_-]{1,64}`, otherwise
/// `~` and the unpadded base64url of its UTF-8 bytes, so that any agent id makes one token.
pub fn agent_key(agent_id: &str) -> String {
    let plain = (1..=64).contains(&agent_id.len())
        && agent_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        agent_id.to_owned()
    } else {
        format!("~{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(agent_id.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_id_that_is_not_one_plain_token_is_encoded_as_the_contract_says() {
        assert_eq!(agent_key("ann"), "ann");
        assert_eq!(agent_key("ann_1-b"), "ann_1-b");
        assert_eq!(agent_key("ann.smith"), "~YW5uLnNtaXRo");
        assert_eq!(
            agent_key(&"a".repeat(65)),
            format!("~{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a".repeat(65)))
        );
        assert!(agent_key("José").starts_with('~'));
        assert!(!agent_key("a b>c*").contains(['.', ' ', '*', '>']));
    }
}
