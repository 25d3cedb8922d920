//! Turns a payload (JSON or protobuf) into a validated BroadcastMessage or DeliveryStatus.
//! Every refusal names the field at fault, so that a publisher can fix exactly that.

use crate::event::{
    BroadcastMessage, CampaignInfo, DeliveryError, DeliveryStatus, MAX_BATCH_ITEMS, MAX_SHORT_CHARS, Refusal,
    StatusKind, TemplateInfo,
};
use chrono::{DateTime, Utc};
use contracts::values::RawTime;
use leads_proto::v1 as pb;
use prost::Message;
use serde_json::{Map, Value, error::Category, value::RawValue};
use std::collections::HashMap;

/// A message as received: every field optional, every string raw.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub message_id: Option<String>,
    pub occurred_at: Option<RawTime>,
    /// (id, name)
    pub campaign: Option<(Option<String>, Option<String>)>,
    /// (name, language, category)
    pub template: Option<(Option<String>, Option<String>, Option<String>)>,
    /// (phone, external_id)
    pub contact: Option<(Option<String>, Option<String>)>,
}

/// A status as received.
#[derive(Debug, Clone, Default)]
pub struct RawStatus {
    pub message_id: Option<String>,
    pub status: Option<String>,
    pub timestamp: Option<RawTime>,
    /// (code, title)
    pub error: Option<(Option<i64>, Option<String>)>,
}

fn json_object(payload: &[u8]) -> Result<Map<String, Value>, Refusal> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| Refusal::new("payload", format!("is not valid JSON: {e}")))?;
    match value {
        Value::Object(root) => Ok(root),
        _ => Err(Refusal::new("payload", "must be a JSON object")),
    }
}

fn object_at<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(Refusal::new(key, "must be an object")),
    }
}

fn string_at(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<String>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::new(path, "must be a string")),
    }
}

/// The fast way through the two payloads that arrive by the million: read straight into
/// borrowed fields, no tree of values built first. It takes only what is plainly well formed
/// (the right types, strings without escapes, no repeated keys); anything else goes the slow
/// way, which reads the same payloads the same way and names the field at fault. A test holds
/// both ways to the same answers.
mod fast {
    use serde::{
        Deserialize, Deserializer,
        de::{MapAccess, Visitor, value::MapAccessDeserializer},
    };
    use std::{fmt, marker::PhantomData};

    /// A JSON object and nothing else: a derived struct would also take an array of its
    /// fields in order, which the slow way refuses.
    pub(super) struct Object<T>(pub T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct OnlyMaps<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMaps<T> {
                type Value = T;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                    T::deserialize(MapAccessDeserializer::new(map))
                }
            }
            deserializer.deserialize_map(OnlyMaps(PhantomData)).map(Object)
        }
    }

    #[derive(Deserialize)]
    pub(super) struct Status<'a> {
        pub message_id: Option<&'a str>,
        pub status: Option<&'a str>,
        pub timestamp: Option<&'a str>,
        pub error: Option<Object<Error<'a>>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Error<'a> {
        pub code: Option<i64>,
        pub title: Option<&'a str>,
    }

    #[derive(Deserialize)]
    pub(super) struct Message<'a> {
        pub message_id: Option<&'a str>,
        pub occurred_at: Option<&'a str>,
        pub campaign: Option<Object<Campaign<'a>>>,
        pub template: Option<Object<Template<'a>>>,
        pub contact: Option<Object<Contact<'a>>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Campaign<'a> {
        pub id: Option<&'a str>,
        pub name: Option<&'a str>,
    }

    #[derive(Deserialize)]
    pub(super) struct Template<'a> {
        pub name: Option<&'a str>,
        pub language: Option<&'a str>,
        pub category: Option<&'a str>,
    }

    #[derive(Deserialize)]
    pub(super) struct Contact<'a> {
        pub phone: Option<&'a str>,
        pub external_id: Option<&'a str>,
    }
}

fn owned(text: Option<&str>) -> Option<String> {
    text.map(str::to_owned)
}

pub fn message_from_json(payload: &[u8]) -> Result<RawMessage, Refusal> {
    if let Ok(fast::Object(m)) = serde_json::from_slice::<fast::Object<fast::Message>>(payload) {
        return Ok(RawMessage {
            message_id: owned(m.message_id),
            occurred_at: m.occurred_at.map(|t| RawTime::Text(t.to_owned())),
            campaign: m.campaign.map(|fast::Object(c)| (owned(c.id), owned(c.name))),
            template: m.template.map(|fast::Object(t)| (owned(t.name), owned(t.language), owned(t.category))),
            contact: m.contact.map(|fast::Object(c)| (owned(c.phone), owned(c.external_id))),
        });
    }
    message_from_object(&json_object(payload)?)
}

fn message_from_object(root: &Map<String, Value>) -> Result<RawMessage, Refusal> {
    let campaign = object_at(root, "campaign")?
        .map(|c| Ok::<_, Refusal>((string_at(c, "campaign.id", "id")?, string_at(c, "campaign.name", "name")?)))
        .transpose()?;
    let template = object_at(root, "template")?
        .map(|t| {
            Ok::<_, Refusal>((
                string_at(t, "template.name", "name")?,
                string_at(t, "template.language", "language")?,
                string_at(t, "template.category", "category")?,
            ))
        })
        .transpose()?;
    let contact = object_at(root, "contact")?
        .map(|c| {
            Ok::<_, Refusal>((
                string_at(c, "contact.phone", "phone")?,
                string_at(c, "contact.external_id", "external_id")?,
            ))
        })
        .transpose()?;
    Ok(RawMessage {
        message_id: string_at(root, "message_id", "message_id")?,
        occurred_at: string_at(root, "occurred_at", "occurred_at")?.map(RawTime::Text),
        campaign,
        template,
        contact,
    })
}

pub fn status_from_json(payload: &[u8]) -> Result<RawStatus, Refusal> {
    if let Ok(fast::Object(s)) = serde_json::from_slice::<fast::Object<fast::Status>>(payload) {
        return Ok(RawStatus {
            message_id: owned(s.message_id),
            status: owned(s.status),
            timestamp: s.timestamp.map(|t| RawTime::Text(t.to_owned())),
            error: s.error.map(|fast::Object(e)| (e.code, owned(e.title))),
        });
    }
    status_from_object(&json_object(payload)?)
}

fn status_from_object(root: &Map<String, Value>) -> Result<RawStatus, Refusal> {
    let error = object_at(root, "error")?
        .map(|e| {
            let code = match e.get("code") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => {
                    Some(n.as_i64().ok_or_else(|| Refusal::new("error.code", "must be an integer"))?)
                }
                // Some publishers quote numbers; a quoted integer means the same.
                Some(Value::String(s)) => {
                    Some(s.trim().parse().map_err(|_| Refusal::new("error.code", "must be an integer"))?)
                }
                Some(_) => return Err(Refusal::new("error.code", "must be an integer")),
            };
            Ok((code, string_at(e, "error.title", "title")?))
        })
        .transpose()?;
    Ok(RawStatus {
        message_id: string_at(root, "message_id", "message_id")?,
        status: string_at(root, "status", "status")?,
        timestamp: string_at(root, "timestamp", "timestamp")?.map(RawTime::Text),
        error,
    })
}

/// One item of a batch that was refused on its own: the rest of the batch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedItem {
    pub message_id: Option<String>,
    /// The field names the item: `statuses[3].status`.
    pub refusal: Refusal,
    /// The item alone: its JSON exactly as published, or its protobuf encoding.
    pub payload: Vec<u8>,
}

/// A batch's items, each validated or refused on its own.
pub type BatchItems<T> = Vec<Result<T, RefusedItem>>;

fn refused_item(
    key: &str,
    index: usize,
    message_id: Option<String>,
    refusal: Refusal,
    payload: Vec<u8>,
) -> RefusedItem {
    // An item-wide reason ("must be a JSON object") names the item itself.
    let field = match refusal.field.as_str() {
        "payload" => format!("{key}[{index}]"),
        field => format!("{key}[{index}].{field}"),
    };
    RefusedItem { message_id, refusal: Refusal::new(field, refusal.reason), payload }
}

fn batch_size_ok(key: &str, count: usize) -> Result<(), Refusal> {
    match count {
        0 => Err(Refusal::new(key, "must hold at least one item")),
        n if n > MAX_BATCH_ITEMS => {
            Err(Refusal::new(key, format!("holds {n} items, more than the {MAX_BATCH_ITEMS} allowed")))
        }
        _ => Ok(()),
    }
}

/// `{"<key>": [item, ...]}`. A payload that is not such an object is refused whole; inside
/// it, each item is read by `read` and validated by `validate` alone.
fn batch_from_json<R, T>(
    payload: &[u8],
    key: &str,
    read: fn(&[u8]) -> Result<R, Refusal>,
    id_of: fn(&R) -> Option<String>,
    validate: fn(R) -> Result<T, Refusal>,
) -> Result<BatchItems<T>, Refusal> {
    // Items stay raw until each is read alone, so that a refused one is kept byte for byte.
    let root: HashMap<String, &RawValue> = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => Refusal::new("payload", format!("is not valid JSON: {e}")),
        Category::Data => Refusal::new("payload", "must be a JSON object"),
    })?;
    let items = match root.get(key).map(|raw| raw.get()) {
        None | Some("null") => return Err(Refusal::new(key, "is required")),
        Some(raw) => serde_json::from_str::<Vec<&RawValue>>(raw).map_err(|_| Refusal::new(key, "must be an array"))?,
    };
    batch_size_ok(key, items.len())?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let raw = read(item.get().as_bytes());
            let hint = raw.as_ref().ok().and_then(id_of);
            raw.and_then(validate)
                .map_err(|refusal| refused_item(key, index, hint, refusal, item.get().as_bytes().to_vec()))
        })
        .collect())
}

/// Each item of a decoded protobuf batch, validated alone.
fn batch_from_protobuf<P: Message, R, T>(
    items: Vec<P>,
    key: &str,
    read: fn(P) -> Result<R, Refusal>,
    id_of: fn(&R) -> Option<String>,
    validate: fn(R) -> Result<T, Refusal>,
) -> Result<BatchItems<T>, Refusal> {
    batch_size_ok(key, items.len())?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let encoded = item.encode_to_vec();
            let raw = read(item);
            let hint = raw.as_ref().ok().and_then(id_of);
            raw.and_then(validate).map_err(|refusal| refused_item(key, index, hint, refusal, encoded))
        })
        .collect())
}

/// `{"statuses": [DeliveryStatus, ...]}`.
pub fn status_batch_from_json(payload: &[u8]) -> Result<BatchItems<DeliveryStatus>, Refusal> {
    batch_from_json(payload, "statuses", status_from_json, |r| r.message_id.clone(), validate_status)
}

/// A `leads.v1.DeliveryStatusBatch`.
pub fn status_batch_from_protobuf(payload: &[u8]) -> Result<BatchItems<DeliveryStatus>, Refusal> {
    let batch = pb::DeliveryStatusBatch::decode(payload)
        .map_err(|e| Refusal::new("payload", format!("is not a valid leads.v1.DeliveryStatusBatch: {e}")))?;
    batch_from_protobuf(batch.statuses, "statuses", status_from_pb, |r| r.message_id.clone(), validate_status)
}

/// `{"messages": [BroadcastMessage, ...]}`.
pub fn message_batch_from_json(payload: &[u8]) -> Result<BatchItems<BroadcastMessage>, Refusal> {
    batch_from_json(payload, "messages", message_from_json, |r| r.message_id.clone(), validate_message)
}

/// A `leads.v1.BroadcastMessageBatch`.
pub fn message_batch_from_protobuf(payload: &[u8]) -> Result<BatchItems<BroadcastMessage>, Refusal> {
    let batch = pb::BroadcastMessageBatch::decode(payload)
        .map_err(|e| Refusal::new("payload", format!("is not a valid leads.v1.BroadcastMessageBatch: {e}")))?;
    batch_from_protobuf(batch.messages, "messages", message_from_pb, |r| r.message_id.clone(), validate_message)
}

/// Empty proto3 strings mean "absent".
fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn proto_time(ts: Option<prost_types::Timestamp>, field: &str) -> Result<Option<RawTime>, Refusal> {
    ts.map(|ts| {
        DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(u32::MAX))
            .map(RawTime::Parsed)
            .ok_or_else(|| Refusal::new(field, "is not a valid timestamp"))
    })
    .transpose()
}

pub fn message_from_protobuf(payload: &[u8]) -> Result<RawMessage, Refusal> {
    let message = pb::BroadcastMessage::decode(payload)
        .map_err(|e| Refusal::new("payload", format!("is not a valid leads.v1.BroadcastMessage: {e}")))?;
    message_from_pb(message)
}

fn message_from_pb(message: pb::BroadcastMessage) -> Result<RawMessage, Refusal> {
    Ok(RawMessage {
        message_id: opt(message.message_id),
        occurred_at: proto_time(message.occurred_at, "occurred_at")?,
        campaign: message.campaign.map(|c| (opt(c.id), opt(c.name))),
        template: message.template.map(|t| (opt(t.name), opt(t.language), opt(t.category))),
        contact: message.contact.map(|c| (opt(c.phone), opt(c.external_id))),
    })
}

pub fn status_from_protobuf(payload: &[u8]) -> Result<RawStatus, Refusal> {
    let status = pb::DeliveryStatus::decode(payload)
        .map_err(|e| Refusal::new("payload", format!("is not a valid leads.v1.DeliveryStatus: {e}")))?;
    status_from_pb(status)
}

fn status_from_pb(status: pb::DeliveryStatus) -> Result<RawStatus, Refusal> {
    Ok(RawStatus {
        message_id: opt(status.message_id),
        status: opt(status.status),
        timestamp: proto_time(status.timestamp, "timestamp")?,
        // proto3 cannot tell an empty error from none: an all-default one is none.
        error: status
            .error
            .filter(|e| e.code != 0 || !e.title.is_empty())
            .map(|e| ((e.code != 0).then_some(e.code), opt(e.title))),
    })
}

pub fn validate_message(raw: RawMessage) -> Result<BroadcastMessage, Refusal> {
    let message_id = required(raw.message_id, "message_id")?;
    let sent_at = time(raw.occurred_at, "occurred_at")?;
    let campaign = match raw.campaign {
        None => None,
        Some((id, name)) => Some(CampaignInfo {
            id: required(id, "campaign.id")?,
            name: non_empty(name).map(|n| bounded(n, "campaign.name")).transpose()?,
        }),
    };
    let template = match raw.template {
        None => None,
        Some((name, language, category)) => Some(TemplateInfo {
            name: required(name, "template.name")?,
            language: non_empty(language).map(|l| bounded(l, "template.language")).transpose()?.unwrap_or_default(),
            category: non_empty(category).map(|c| bounded(c, "template.category")).transpose()?,
        }),
    };
    let (phone, external_id) = raw.contact.ok_or_else(|| Refusal::new("contact", "is required"))?;
    // The same normalisation as ingest, so that a message's recipient matches the contact
    // the lead service keeps for the same number.
    let phone = non_empty(phone).map(|p| contracts::values::normalize_phone(&p)).transpose()?;
    let external_id = non_empty(external_id).map(|e| bounded(e, "contact.external_id")).transpose()?;
    if phone.is_none() && external_id.is_none() {
        return Err(Refusal::new("contact", "needs at least one of phone or external_id"));
    }
    Ok(BroadcastMessage { message_id, sent_at, campaign, template, phone, external_id })
}

pub fn validate_status(raw: RawStatus) -> Result<DeliveryStatus, Refusal> {
    let message_id = required(raw.message_id, "message_id")?;
    let status_text = required(raw.status, "status")?;
    let status = StatusKind::parse(&status_text).ok_or_else(|| {
        Refusal::new("status", format!("must be one of sent, delivered, read, failed; got {status_text:?}"))
    })?;
    let at = time(raw.timestamp, "timestamp")?;
    let error = match raw.error {
        None => None,
        Some(_) if status != StatusKind::Failed => {
            return Err(Refusal::new("error", format!("is only allowed with status failed, not {status_text}")));
        }
        Some((code, title)) => {
            Some(DeliveryError { code, title: non_empty(title).map(|t| bounded(t, "error.title")).transpose()? })
        }
    };
    Ok(DeliveryStatus { message_id, status, at, error })
}

fn time(raw: Option<RawTime>, field: &str) -> Result<DateTime<Utc>, Refusal> {
    match raw {
        None => Err(Refusal::new(field, "is required")),
        Some(RawTime::Parsed(at)) => Ok(at),
        Some(RawTime::Text(text)) => DateTime::parse_from_rfc3339(text.trim())
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| Refusal::new(field, format!("must be an RFC 3339 timestamp: {e}"))),
    }
}

fn required(value: Option<String>, field: &str) -> Result<String, Refusal> {
    let value = non_empty(value).ok_or_else(|| Refusal::new(field, "is required"))?;
    bounded(value, field)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn bounded(value: String, field: &str) -> Result<String, Refusal> {
    if value.chars().count() > MAX_SHORT_CHARS {
        return Err(Refusal::new(field, format!("must be at most {MAX_SHORT_CHARS} characters")));
    }
    contracts::values::no_nul(&value, field)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(json: &str) -> Result<BroadcastMessage, Refusal> {
        message_from_json(json.as_bytes()).and_then(validate_message)
    }

    fn status(json: &str) -> Result<DeliveryStatus, Refusal> {
        status_from_json(json.as_bytes()).and_then(validate_status)
    }

    #[test]
    fn the_contract_examples_are_accepted() {
        let m = message(
            r#"{"message_id": "wamid.HBgL", "occurred_at": "2026-11-24T09:00:00Z",
                "campaign": { "id": "cmp-42", "name": "Black Friday" },
                "template": { "name": "bf_offer", "language": "en_US", "category": "MARKETING" },
                "contact": { "phone": "+1 415 555 0100", "external_id": "crm-123" }}"#,
        )
        .expect("valid message");
        assert_eq!(m.phone.as_deref(), Some("+14155550100"));
        assert_eq!(m.campaign.as_ref().map(|c| c.id.as_str()), Some("cmp-42"));
        let s = status(
            r#"{"message_id": "wamid.HBgL", "status": "failed", "timestamp": "2026-11-24T09:00:03Z",
                "error": { "code": 131026, "title": "Message undeliverable" }}"#,
        )
        .expect("valid status");
        assert_eq!(s.status, StatusKind::Failed);
        assert_eq!(s.error_class(), Some(crate::event::ErrorClass::Undeliverable));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let statuses = [
            ("not json", "payload"),
            (r#"{"status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#, "message_id"),
            (r#"{"message_id":"m","status":"bounced","timestamp":"2026-11-24T09:00:03Z"}"#, "status"),
            (r#"{"message_id":"m","status":"sent","timestamp":"soon"}"#, "timestamp"),
            (r#"{"message_id":"m","status":"sent"}"#, "timestamp"),
            (r#"{"message_id":"m","status":"read","timestamp":"2026-11-24T09:00:03Z","error":{"code":1}}"#, "error"),
            (
                r#"{"message_id":"m","status":"failed","timestamp":"2026-11-24T09:00:03Z","error":{"code":"x"}}"#,
                "error.code",
            ),
        ];
        for (json, field) in statuses {
            assert_eq!(status(json).expect_err(json).field, field, "{json}");
        }
        let messages = [
            (r#"{"occurred_at":"2026-11-24T09:00:00Z","contact":{"phone":"+14155550100"}}"#, "message_id"),
            (r#"{"message_id":"m","contact":{"phone":"+14155550100"}}"#, "occurred_at"),
            (r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z"}"#, "contact"),
            (r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":{"phone":"12"}}"#, "contact.phone"),
            (
                r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":{"phone":"+14155550100"},"campaign":{"name":"x"}}"#,
                "campaign.id",
            ),
        ];
        for (json, field) in messages {
            assert_eq!(message(json).expect_err(json).field, field, "{json}");
        }
    }

    /// Every payload read the fast way must come out exactly as the slow way reads it.
    #[test]
    fn the_fast_way_agrees_with_the_slow_way() {
        let statuses = [
            r#"{"message_id":"m","status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#,
            r#"{"message_id":" m ","status":"failed","timestamp":"2026-11-24T09:00:03+01:00","error":{"code":131026,"title":"Message undeliverable"}}"#,
            r#"{"message_id":"m","status":"failed","timestamp":"2026-11-24T09:00:03Z","error":{"code":"131049"}}"#,
            r#"{"message_id":"m","status":"failed","timestamp":"2026-11-24T09:00:03Z","error":{"code":1.5}}"#,
            r#"{"message_id":"m","status":"failed","timestamp":"2026-11-24T09:00:03Z","error":{"code":18446744073709551615}}"#,
            r#"{"message_id":"m","status":"read","timestamp":"2026-11-24T09:00:03Z","error":null,"extra":[1,2]}"#,
            r#"{"message_id":"m","status":"read","timestamp":"2026-11-24T09:00:03Z","error":{}}"#,
            r#"{"message_id":"m\u0041","status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#,
            r#"{"message_id":"a","message_id":"b","status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#,
            r#"{"message_id":7,"status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#,
            r#"{"message_id":"m","status":"sent","timestamp":"2026-11-24T09:00:03Z","error":"x"}"#,
            r#"{"message_id":"m","status":null,"timestamp":"2026-11-24T09:00:03Z"}"#,
            r#"{"message_id":"m\u0000","status":"sent","timestamp":"2026-11-24T09:00:03Z"}"#,
            r"{}",
            r"[]",
            r#"["m","sent","2026-11-24T09:00:03Z",null]"#,
            r#"{"message_id":"m","status":"failed","timestamp":"2026-11-24T09:00:03Z","error":[131026,"x"]}"#,
            r#""m""#,
            r#"{"message_id":"m""#,
        ];
        let plain = statuses[1].as_bytes();
        assert!(
            serde_json::from_slice::<fast::Object<fast::Status>>(plain).is_ok(),
            "a plain status takes the fast way"
        );
        for json in statuses {
            let slow = status_from_object_only(json.as_bytes()).and_then(validate_status);
            assert_eq!(status(json), slow, "{json}");
        }
        let messages = [
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":{"phone":"+1 415 555 0100"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","campaign":{"id":"c","name":"Black Friday"},
                "template":{"name":"t","language":"en_US","category":"MARKETING"},"contact":{"phone":"+14155550100","external_id":"crm-1"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","campaign":{"name":"x"},"contact":{"external_id":"e"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","campaign":"c","contact":{"external_id":"e"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","template":{"name":"t","language":5},"contact":{"external_id":"e"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":{"phone":"12"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":{"external_id":"\u00e9"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":null}"#,
            r#"{"message_id":"m","occurred_at":"soon","contact":{"external_id":"e"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","contact":["+14155550100",null]}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","campaign":["c","n"],"contact":{"external_id":"e"}}"#,
            r#"{"message_id":"m","occurred_at":"2026-11-24T09:00:00Z","template":["t","en","M"],"contact":{"external_id":"e"}}"#,
            r#"["m","2026-11-24T09:00:00Z",null,null,{"external_id":"e"}]"#,
        ];
        assert!(
            serde_json::from_slice::<fast::Object<fast::Message>>(messages[1].as_bytes()).is_ok(),
            "so does a plain message"
        );
        for json in messages {
            let slow = message_from_object_only(json.as_bytes()).and_then(validate_message);
            assert_eq!(message(json), slow, "{json}");
        }
    }

    fn status_from_object_only(payload: &[u8]) -> Result<RawStatus, Refusal> {
        status_from_object(&json_object(payload)?)
    }

    fn message_from_object_only(payload: &[u8]) -> Result<RawMessage, Refusal> {
        message_from_object(&json_object(payload)?)
    }

    #[test]
    fn protobuf_is_read_like_json() {
        let encoded = pb::DeliveryStatus {
            message_id: "m".into(),
            status: "failed".into(),
            timestamp: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            error: Some(pb::DeliveryError { code: 131049, title: "cap".into() }),
        }
        .encode_to_vec();
        let s = status_from_protobuf(&encoded).and_then(validate_status).expect("valid");
        assert_eq!(s.error, Some(DeliveryError { code: Some(131049), title: Some("cap".into()) }));
    }

    #[test]
    fn a_batch_refuses_its_bad_items_alone_and_a_bad_batch_whole() {
        let items = status_batch_from_json(
            br#"{"statuses": [{"message_id": "a", "status": "sent", "timestamp": "2026-11-24T09:00:01Z"},
                               {"message_id": "a", "status": "seen", "timestamp": "2026-11-24T09:00:02Z"},
                               "a"]}"#,
        )
        .expect("a batch");
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().map(|s| s.status), Ok(StatusKind::Sent));
        let second = items[1].as_ref().expect_err("an unknown status");
        assert_eq!((second.refusal.field.as_str(), second.message_id.as_deref()), ("statuses[1].status", Some("a")));
        assert_eq!(
            second.payload, br#"{"message_id": "a", "status": "seen", "timestamp": "2026-11-24T09:00:02Z"}"#,
            "kept byte for byte"
        );
        assert_eq!(items[2].as_ref().map_err(|r| r.refusal.field.as_str()).err(), Some("statuses[2]"));
        let too_many = format!(r#"{{"statuses": [{}]}}"#, vec!["{}"; MAX_BATCH_ITEMS + 1].join(","));
        for (payload, field) in [
            (r#"{"statuses": []}"#, "statuses"),
            (r#"{"statuses": {}}"#, "statuses"),
            (r#"{"status": "sent"}"#, "statuses"),
            ("[]", "payload"),
            (too_many.as_str(), "statuses"),
        ] {
            let refusal = status_batch_from_json(payload.as_bytes()).expect_err(payload);
            assert_eq!(refusal.field, field, "{payload}");
        }
    }
}
