//! The InteractionEvent of the contract, as parsed from JSON or protobuf, and its validated,
//! normalised form: the only shape the rest of the platform sees.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MAX_EVENT_ID_CHARS: usize = 128;
pub const MAX_TEXT_CHARS: usize = 4096;
pub const MAX_ATTRIBUTES: usize = 50;
/// Larger payloads are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ChatMessage,
    BroadcastReply,
    Integration,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ChatMessage => "chat_message",
            Kind::BroadcastReply => "broadcast_reply",
            Kind::Integration => "integration",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

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

/// Why an event was refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// The event as received, before validation: every field optional, every string raw.
#[derive(Debug, Clone, Default)]
pub struct RawEvent {
    pub event_id: Option<String>,
    pub occurred_at: Option<RawTime>,
    pub kind: Option<String>,
    pub direction: Option<String>,
    pub channel: Option<String>,
    pub contact: Option<RawContact>,
    pub agent_id: Option<String>,
    pub text: Option<String>,
    pub conversation_id: Option<String>,
    pub broadcast: Option<(Option<String>, Option<String>)>,
    pub integration: Option<(Option<String>, Option<String>)>,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum RawTime {
    Text(String),
    Parsed(DateTime<Utc>),
}

#[derive(Debug, Clone, Default)]
pub struct RawContact {
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}
