//! The interaction as the platform forwards it once ingest has validated and normalised it:
//! the payload of `events.ingest.<org>.interactions_accepted`, and the contract's limits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The kind of the message that carries up to 100 accepted interactions of one organisation
/// (an envelope whose data is the array of `Interaction`s).
pub const INTERACTIONS_ACCEPTED: &str = "interactions_accepted";
/// One accepted interaction per message, as an earlier version of ingest published; still read
/// so that a stream written before the upgrade drains.
pub const INTERACTION_ACCEPTED: &str = "interaction_accepted";

/// `event_id`, the idempotency key of an organisation's interactions (1 to 128 characters).
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// `text`, and each value of `attributes`.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Keys of `attributes`.
pub const MAX_ATTRIBUTES: usize = 50;
/// Bytes of one published InteractionEvent; larger payloads are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// What sort of interaction it is; JSON `chat_message`, `broadcast_reply`, `integration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A message in a chat conversation.
    ChatMessage,
    /// A reply to a broadcast message; `broadcast` names the message replied to.
    BroadcastReply,
    /// An event from an integration (a shop, a CRM); `integration` names it.
    Integration,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::ChatMessage, Kind::BroadcastReply, Kind::Integration];

    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChatMessage => "chat_message",
            Kind::BroadcastReply => "broadcast_reply",
            Kind::Integration => "integration",
        }
    }
}

read_by_name!(Kind, "interaction kind");

/// Who wrote; JSON `inbound` or `outbound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The contact wrote to the business (the default when a publisher gives none). Only
    /// inbound interactions open leads.
    Inbound,
    /// The business wrote to the contact; never opens a lead, moves a New one to Contacted.
    Outbound,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    /// The snake_case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

read_by_name!(Direction, "interaction direction");

/// Who the interaction is with. At least one of `phone` and `external_id` is present: the
/// contact is found by either. Empty values are absent, never `""`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// E.164 (`+14155550100`), normalised by ingest.
    pub phone: Option<String>,
    /// The contact's id in the publisher's system, at most 256 characters.
    pub external_id: Option<String>,
    /// At most 256 characters.
    pub name: Option<String>,
    /// A syntactically checked address, at most 320 characters.
    pub email: Option<String>,
}

/// The broadcast message a `broadcast_reply` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastInfo {
    /// The broadcast message's id (a BroadcastMessage's `message_id`), at most 256 characters.
    pub message_id: String,
    /// The campaign it was sent in, when the publisher gives it; at most 256 characters.
    pub campaign_id: Option<String>,
}

/// The integration an `integration` interaction comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationInfo {
    /// Which integration (`shopify`), at most 256 characters.
    pub name: String,
    /// What in it the interaction is about (`order-1001`), when given; at most 256 characters.
    pub reference: Option<String>,
}

/// A valid interaction, forwarded in `events.ingest.<org>.interactions_accepted`: the
/// contract's InteractionEvent with its defaults filled in, its phone normalised and its empty
/// values absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// The publisher's id, unique per organisation: a repeat is a duplicate and changes nothing.
    pub event_id: String,
    /// When it happened, as the publisher says (RFC 3339, in UTC here).
    pub occurred_at: DateTime<Utc>,
    /// A `broadcast_reply` always has `broadcast`, an `integration` always `integration`.
    pub kind: Kind,
    /// Who wrote.
    pub direction: Direction,
    /// The messaging channel, lowercase, at most 64 characters; `whatsapp` when not given.
    pub channel: String,
    /// Who the interaction is with.
    pub contact: ContactInfo,
    /// The business's agent in the conversation, when the publisher names one; at most 256
    /// characters.
    pub agent_id: Option<String>,
    /// The message, at most `MAX_TEXT_CHARS` characters; absent for an interaction without text.
    pub text: Option<String>,
    /// The publisher's conversation, when it has one; at most 256 characters.
    pub conversation_id: Option<String>,
    /// Present for every `broadcast_reply`; the publisher may send it with other kinds too.
    pub broadcast: Option<BroadcastInfo>,
    /// Present for every `integration`; the publisher may send it with other kinds too.
    pub integration: Option<IntegrationInfo>,
    /// The publisher's flat string map (`utm_source`), at most `MAX_ATTRIBUTES` keys of 1 to
    /// 256 characters, values of at most `MAX_TEXT_CHARS`; empty when none.
    pub attributes: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_directions_read_back_from_the_names_serde_writes() {
        for kind in Kind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        for direction in Direction::ALL {
            assert_eq!(serde_json::to_string(&direction).unwrap(), format!("\"{}\"", direction.as_str()));
            assert_eq!(direction.as_str().parse(), Ok(direction));
        }
        let unknown = crate::UnknownValue { what: "interaction direction", value: "sideways".into() };
        assert_eq!("sideways".parse::<Direction>(), Err(unknown));
        assert!(Kind::try_from("voice_call".to_owned()).unwrap_err().to_string().contains("voice_call"));
    }
}
