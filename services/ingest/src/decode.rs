//! Turns a payload (JSON or protobuf) into a `RawEvent`, naming the field when a value has
//! the wrong type, so that every refusal can say exactly what was wrong.

use crate::event::{RawContact, RawEvent};
use contracts::{Refusal, values::RawTime};
use leads_proto::v1 as pb;
use prost::Message;
use serde_json::{Map, Value};

pub fn from_json(payload: &[u8]) -> Result<RawEvent, Refusal> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| Refusal::new("payload", format!("is not valid JSON: {e}")))?;
    let Value::Object(root) = value else {
        return Err(Refusal::new("payload", "must be a JSON object"));
    };
    let contact = match root.get("contact") {
        None | Some(Value::Null) => None,
        Some(Value::Object(contact)) => Some(RawContact {
            phone: string_at(contact, "contact.phone", "phone")?,
            external_id: string_at(contact, "contact.external_id", "external_id")?,
            name: string_at(contact, "contact.name", "name")?,
            email: string_at(contact, "contact.email", "email")?,
        }),
        Some(_) => return Err(Refusal::new("contact", "must be an object")),
    };
    let broadcast = match root.get("broadcast") {
        None | Some(Value::Null) => None,
        Some(Value::Object(b)) => Some((
            string_at(b, "broadcast.message_id", "message_id")?,
            string_at(b, "broadcast.campaign_id", "campaign_id")?,
        )),
        Some(_) => return Err(Refusal::new("broadcast", "must be an object")),
    };
    let integration = match root.get("integration") {
        None | Some(Value::Null) => None,
        Some(Value::Object(i)) => {
            Some((string_at(i, "integration.name", "name")?, string_at(i, "integration.reference", "reference")?))
        }
        Some(_) => return Err(Refusal::new("integration", "must be an object")),
    };
    let attributes = match root.get("attributes") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(map)) => {
            let mut attributes = std::collections::BTreeMap::new();
            for (key, value) in map {
                match value {
                    Value::String(s) => {
                        attributes.insert(key.clone(), s.clone());
                    }
                    _ => {
                        return Err(Refusal::new(
                            format!("attributes.{key}"),
                            "must be a string (attributes is a flat string map)",
                        ));
                    }
                }
            }
            attributes
        }
        Some(_) => return Err(Refusal::new("attributes", "must be an object of strings")),
    };
    Ok(RawEvent {
        event_id: string_at(&root, "event_id", "event_id")?,
        occurred_at: string_at(&root, "occurred_at", "occurred_at")?.map(RawTime::Text),
        kind: string_at(&root, "kind", "kind")?,
        direction: string_at(&root, "direction", "direction")?,
        channel: string_at(&root, "channel", "channel")?,
        contact,
        agent_id: string_at(&root, "agent_id", "agent_id")?,
        text: string_at(&root, "text", "text")?,
        conversation_id: string_at(&root, "conversation_id", "conversation_id")?,
        broadcast,
        integration,
        attributes,
    })
}

fn string_at(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<String>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::new(path, "must be a string")),
    }
}

pub fn from_protobuf(payload: &[u8]) -> Result<RawEvent, Refusal> {
    let event = pb::InteractionEvent::decode(payload)
        .map_err(|e| Refusal::new("payload", format!("is not a valid leads.v1.InteractionEvent: {e}")))?;
    from_proto(event)
}

/// Empty proto3 strings mean "absent".
pub fn from_proto(event: pb::InteractionEvent) -> Result<RawEvent, Refusal> {
    fn opt(s: String) -> Option<String> {
        (!s.is_empty()).then_some(s)
    }
    let occurred_at = match event.occurred_at {
        None => None,
        Some(ts) => {
            let parsed = chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(u32::MAX))
                .ok_or_else(|| Refusal::new("occurred_at", "is not a valid timestamp"))?;
            Some(RawTime::Parsed(parsed))
        }
    };
    Ok(RawEvent {
        event_id: opt(event.event_id),
        occurred_at,
        kind: opt(event.kind),
        direction: opt(event.direction),
        channel: opt(event.channel),
        contact: event.contact.map(|c| RawContact {
            phone: opt(c.phone),
            external_id: opt(c.external_id),
            name: opt(c.name),
            email: opt(c.email),
        }),
        agent_id: opt(event.agent_id),
        text: opt(event.text),
        conversation_id: opt(event.conversation_id),
        broadcast: event.broadcast.map(|b| (opt(b.message_id), opt(b.campaign_id))),
        integration: event.integration.map(|i| (opt(i.name), opt(i.reference))),
        attributes: event.attributes.into_iter().collect(),
    })
}
