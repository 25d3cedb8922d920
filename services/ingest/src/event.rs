//! The InteractionEvent of the contract as parsed from JSON or protobuf, before validation.
//! Its validated, normalised form (`contracts::interaction::Interaction`) is the only shape
//! the rest of the platform sees.

use contracts::values::RawTime;
use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
pub struct RawContact {
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}
