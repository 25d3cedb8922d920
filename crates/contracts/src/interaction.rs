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

pub const MAX_EVENT_ID_CHARS: usize = 128;
pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_ATTRIBUTES: usize = 50;
/// Larger payloads are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ChatMessage,
    BroadcastReply,
    Integration,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::ChatMessage, Kind::BroadcastReply, Kind::Integration];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChatMessage => "chat_message",
            Kind::BroadcastReply => "broadcast_reply",
            Kind::Integration => "integration",
        }
    }
}

read_by_name!(Kind, "interaction kind");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

read_by_name!(Direction, "interaction direction");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactInfo {
    /// E.164.
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastInfo {
    pub message_id: String,
    pub campaign_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationInfo {
    pub name: String,
    pub reference: Option<String>,
}

/// A valid interaction, forwarded in `events.ingest.<org>.interactions_accepted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    pub kind: Kind,
    pub direction: Direction,
    pub channel: String,
    pub contact: ContactInfo,
    pub agent_id: Option<String>,
    pub text: Option<String>,
    pub conversation_id: Option<String>,
    pub broadcast: Option<BroadcastInfo>,
    pub integration: Option<IntegrationInfo>,
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
